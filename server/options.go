package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"runtime"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

// Options configure a Server. The zero value is valid: every field has a
// default, written in its comment.
type Options struct {
	// Logger receives request failures and session events. Default
	// slog.Default().
	Logger *slog.Logger
	// Clock drives heartbeats. Default: the system clock.
	Clock clock.Clock
	// MaxMessageBytes caps one message, after decompression; an account
	// service request is capped at 64 KiB, or this when less. Default 4 MiB.
	MaxMessageBytes int
	// MaxStreamsPerDevice caps a device's concurrent Sync and Subscribe
	// sessions. Default 4.
	MaxStreamsPerDevice int
	// HeartbeatInterval is how long a session may be quiet before the server
	// sends a heartbeat; a Sync session that hears nothing from its client
	// for three intervals is ended. Default 30s.
	HeartbeatInterval time.Duration
	// SendTimeout is how long one write to a Sync or Subscribe stream may
	// take before the server resets the stream. A write waits while the
	// client's flow-control window is full, so a client that stops reading,
	// or a connection that stops moving, would otherwise hold its session
	// for good. Leave room for the slowest links: a write carries up to
	// 1 MiB of a catch-up. Default 2m; negative: no limit.
	SendTimeout time.Duration
	// BodyTimeout is how long a unary call's request body (Login,
	// Register, Push, ...) may send nothing before the call fails, as
	// nginx's client_body_timeout: a client that opens a request and stalls
	// would otherwise hold its connection for good. It bounds each wait
	// for the next bytes, not the whole body, so a slow link that keeps
	// sending is never cut off. Sync and Subscribe streams are not bounded
	// by it. Default 1m; negative: no limit.
	BodyTimeout time.Duration
	// ReconnectAfter is the delay a Goaway asks clients to wait before
	// reconnecting: each session is told a share of it drawn evenly from
	// a half to one and a half times it, so that a server's devices, sent
	// away together, do not all come back in the same moment. Default 1s.
	ReconnectAfter time.Duration
	// MaxReadAheads is how many catch-ups may read and pack their next Ops
	// message while the previous one is compressed and sent, at once. Each
	// holds one more message in memory (up to 1 MiB of ops); more than a
	// few per core gain nothing. Default 4 × GOMAXPROCS; negative: none.
	MaxReadAheads int
	// SignInLimit is how many logins with wrong credentials as one
	// username, and how many registrations (made, or refused for a taken
	// username), one client
	// address (an IPv4 address, an IPv6 /64) may make at once; after that
	// it gets one more every SignInRefill, and is refused with
	// ResourceExhausted before any password is hashed. An address may fail
	// ten times as many logins over all usernames, so users behind one
	// address do not lock each other out. An IPv6 /48 (a site, with
	// 65,536 /64s) may make sixteen times an address's, and regains them
	// sixteen times as fast. Successful logins, malformed
	// requests and attempts the server failed do not count. Default 10;
	// negative turns the limit off.
	SignInLimit int
	// SignInRefill is how often a throttled address regains an attempt.
	// Default 1m.
	SignInRefill time.Duration
	// ClientIPHeader names the header a reverse proxy in front of the
	// server writes the client's address into (X-Forwarded-For, say): the
	// sign-in limit then counts the last address in it. Empty: the
	// connection's peer address, which behind a proxy is the proxy's.
	// Only set it when every request comes through that proxy, or list the
	// proxies in TrustedProxies: a client that reaches the server directly
	// could write any address there.
	ClientIPHeader string
	// CORSOrigins are the origins (scheme://host[:port], as browsers send
	// them in Origin) of web apps served elsewhere that may call the server
	// from a browser; "*" lets any origin (the API takes bearer tokens, not
	// cookies, so a page learns nothing a token does not give it). Empty:
	// only pages the server itself serves (same origin).
	CORSOrigins []string
	// TrustedProxies are the addresses of the reverse proxies in front of
	// the server. With them, ClientIPHeader counts only on a request whose
	// peer is one of them, and its client is the last address in the
	// header that is not one of them (proxies in a chain each append the
	// address they were reached from). Empty: every request comes through
	// a proxy. Needs ClientIPHeader.
	TrustedProxies []netip.Prefix
	// PushLimit is how many ops a second one user's devices may push
	// together, after a burst of PushBurst. An op with a body counts one
	// more for every 4 KiB of it, so that the limit bounds bytes too; an
	// ack (Ack, or an ack on a Sync stream) counts as an op a marker, and
	// waits but is never refused. A push over the limit waits
	// for it (on a Sync stream, flow control then slows the client down).
	// Only a push that finds its user's bucket in debt, left by pushes made
	// in parallel, and would wait more than 10s, is refused with
	// ResourceExhausted. Default 1000; negative: no limit.
	PushLimit int
	// PushBurst is how many ops a user may push at once before PushLimit
	// applies; at least a push's most (1000). Default ten seconds' worth
	// (10 × PushLimit), at least 1000.
	PushBurst int
}

func (o *Options) ensureDefaults() {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 4 << 20
	}
	if o.MaxStreamsPerDevice == 0 {
		o.MaxStreamsPerDevice = 4
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = 30 * time.Second
	}
	if o.SendTimeout == 0 {
		o.SendTimeout = 2 * time.Minute
	}
	if o.BodyTimeout == 0 {
		o.BodyTimeout = time.Minute
	}
	if o.ReconnectAfter == 0 {
		o.ReconnectAfter = time.Second
	}
	if o.MaxReadAheads == 0 {
		o.MaxReadAheads = 4 * runtime.GOMAXPROCS(0)
	}
	if o.SignInLimit == 0 {
		o.SignInLimit = 10
	}
	if o.SignInRefill == 0 {
		o.SignInRefill = time.Minute
	}
	if o.PushLimit == 0 {
		o.PushLimit = 1000
	}
	if o.PushBurst == 0 && o.PushLimit > 0 {
		o.PushBurst = max(10*o.PushLimit, maxOpsPerPush)
	}
}

// Check reports every problem with the options at once, defaults filled
// in: what New would refuse.
func (o Options) Check() error {
	o.ensureDefaults()
	return o.validate()
}

func (o *Options) validate() error {
	var errs []error
	if o.MaxMessageBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("MaxMessageBytes must be at least 64 KiB, got %d", o.MaxMessageBytes))
	}
	if o.MaxStreamsPerDevice < 1 {
		errs = append(errs, fmt.Errorf("MaxStreamsPerDevice must be at least 1, got %d", o.MaxStreamsPerDevice))
	}
	if o.SignInRefill < 0 {
		errs = append(errs, fmt.Errorf("SignInRefill must not be negative, got %s", o.SignInRefill))
	}
	if len(o.TrustedProxies) > 0 && o.ClientIPHeader == "" {
		errs = append(errs, errors.New("TrustedProxies needs ClientIPHeader, the header they write the client's address into"))
	}
	for _, origin := range o.CORSOrigins {
		if u, err := url.Parse(origin); origin != "*" && (err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil) {
			errs = append(errs, fmt.Errorf("CORSOrigins holds %q: an origin is scheme://host[:port] with no path, or *", origin))
		}
	}
	for _, p := range o.TrustedProxies {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("TrustedProxies holds an invalid prefix %v", p))
		}
	}
	if o.PushLimit > 0 && o.PushBurst < maxOpsPerPush {
		errs = append(errs, fmt.Errorf("PushBurst must be at least %d, a push's most, got %d", maxOpsPerPush, o.PushBurst))
	}
	if o.ReconnectAfter < time.Millisecond || o.ReconnectAfter > maxReconnectAfter {
		errs = append(errs, fmt.Errorf("ReconnectAfter must be between 1ms and %s, got %s", maxReconnectAfter, o.ReconnectAfter))
	}
	if o.HeartbeatInterval < 100*time.Millisecond || o.HeartbeatInterval > time.Hour {
		// At most an hour: a client is cut off after three intervals of
		// silence, a deadline that longer ones overflow, and clients are
		// told the interval in a uint32 of milliseconds.
		errs = append(errs, fmt.Errorf("HeartbeatInterval must be between 100ms and 1h, got %s", o.HeartbeatInterval))
	}
	return errors.Join(errs...)
}
