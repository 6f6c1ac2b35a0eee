package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/clock"
)

// Sign-in throttling. A password guess costs the server an argon2 hash and
// the guesser nothing, so failed logins and registrations spend from token
// buckets keyed by the client's address: SignInLimit of them at once, then
// one more every SignInRefill, refused before any hash is computed.
//
//   - A failed login spends from the bucket of its username at its address,
//     and from its address's bucket for logins, which holds
//     loginsPerAddress times as many. Users behind one address (a NAT, an
//     office) do not lock each other out: one who mistypes spends only
//     their own attempts, while an address that tries many usernames is
//     stopped by the address's bucket.
//   - A registration, made or refused, spends from its address's bucket
//     for registrations.
//   - A successful login spends nothing, so a user who mistypes a few
//     times is not held up; a guesser gets one guess a minute by default.
//
// Addresses are IPv4 addresses or IPv6 /64 networks (one host usually
// holds a whole /64). A site usually holds a /48, which is 65,536 /64s: so
// that they are not as many budgets, an IPv6 sign-in also spends from its
// /48's bucket, which holds addressesPerSite addresses' worth and refills
// as many times as fast. Behind a reverse proxy every client has the
// proxy's address: set Options.ClientIPHeader to the header the proxy
// writes the client's address into, and Options.TrustedProxies when
// clients can also reach the server without the proxy.

// loginsPerAddress is how many times SignInLimit failed logins an address
// may make over all usernames.
const loginsPerAddress = 10

// An IPv6 site is a /48; its buckets hold addressesPerSite times an
// address's.
const (
	ipv6SiteBits     = 48
	addressesPerSite = 16
)

// maxSignInBuckets bounds the limiter's memory (about 20 MB). Past it,
// buckets that have refilled are dropped first; if too many are still
// spending, the fullest go, and among as full the last spent (failing
// open for them rather than growing without bound): a flood of new
// addresses cannot push out the emptied buckets of the addresses that
// were guessing before it.
const maxSignInBuckets = 100_000

// signInKey names a bucket.
type signInKey struct {
	addr netip.Prefix
	kind signInKind
	// user is the normalized username of a login bucket of one user; empty
	// for the address's.
	user string
}

type signInKind uint8

const (
	signInLogin signInKind = iota + 1
	signInRegister
)

type signInLimiter struct {
	limit  int
	refill time.Duration
	clock  clock.Clock

	mu      sync.Mutex
	buckets map[signInKey]*bucket
}

// bucket holds tokens as of at. The sign-in and push limiters fill it.
type bucket struct {
	tokens float64
	at     time.Time
	warned time.Time // when a refusal was last logged (sign-ins)
	spent  time.Time // when an attempt was last taken (sign-ins)
}

// fill adds the tokens the bucket regained since it was last filled, at
// rate tokens per period, up to size.
func (b *bucket) fill(now time.Time, size, rate float64, period time.Duration) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(size, b.tokens+rate*float64(d)/float64(period))
		b.at = now
	}
}

func newSignInLimiter(limit int, refill time.Duration, c clock.Clock) *signInLimiter {
	if limit <= 0 {
		return nil // off
	}
	return &signInLimiter{limit: limit, refill: refill, clock: c, buckets: map[signInKey]*bucket{}}
}

// signInKeys are the buckets a sign-in of kind (by username, for a login)
// from addr spends from; none when the address is unknown. A login whose
// username is malformed spends only from its address's bucket.
func signInKeys(addr netip.Prefix, kind signInKind, username string) []signInKey {
	if !addr.IsValid() {
		return nil
	}
	keys := []signInKey{{addr: addr, kind: kind}}
	if addr.Addr().Is6() && addr.Bits() > ipv6SiteBits {
		site, _ := addr.Addr().Prefix(ipv6SiteBits)
		keys = append(keys, signInKey{addr: site, kind: kind})
	}
	if kind == signInLogin {
		if u, err := engine.NormalizeUsername(username); err == nil {
			keys = append(keys, signInKey{addr: addr, kind: kind, user: u})
		}
	}
	return keys
}

// size is how many tokens k's bucket holds when full.
func (l *signInLimiter) size(k signInKey) float64 {
	n := l.limit
	if k.kind == signInLogin && k.user == "" {
		n *= loginsPerAddress
	}
	if k.site() {
		n *= addressesPerSite
	}
	return float64(n)
}

// site reports whether k is an IPv6 site's bucket.
func (k signInKey) site() bool { return k.addr.Addr().Is6() && k.addr.Bits() == ipv6SiteBits }

// take spends one attempt from every bucket of keys, or from none when one
// is empty. Then it reports which (its index in keys; -1 when none is),
// how long until it has an attempt again, and whether to log the refusal:
// once per refill period per bucket, so a guesser cannot flood the log.
func (l *signInLimiter) take(keys []signInKey) (empty int, wait time.Duration, warn bool) {
	if l == nil || len(keys) == 0 {
		return -1, 0, false
	}
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// Buckets are made only for an attempt that goes ahead: refusals add
	// nothing to the table.
	bs := make([]*bucket, len(keys))
	for i, k := range keys {
		if b := l.buckets[k]; b != nil {
			l.fill(b, k, now)
			bs[i] = b
		}
	}
	for i, b := range bs {
		if b != nil && b.tokens < 1 {
			wait := time.Duration((1 - b.tokens) * float64(l.refill) / keys[i].rate())
			warn := b.warned.IsZero() || now.Sub(b.warned) >= l.refill
			if warn {
				b.warned = now
			}
			return i, (wait + time.Second - 1).Truncate(time.Second), warn // whole seconds, rounded up
		}
	}
	l.makeRoom(now, len(keys))
	for i, k := range keys {
		if bs[i] == nil || l.buckets[k] == nil {
			bs[i] = &bucket{tokens: l.size(k), at: now}
			l.buckets[k] = bs[i]
		}
		bs[i].tokens--
		bs[i].spent = now
	}
	return -1, 0, false
}

// what says what k's bucket counts, for messages and logs.
func (k signInKey) what() string {
	from := "this address"
	if k.site() {
		from = "this network (an IPv6 /48)"
	}
	switch {
	case k.kind == signInRegister:
		return "registrations from " + from
	case k.user != "":
		return fmt.Sprintf("failed logins as %q from %s", k.user, from)
	}
	return "failed logins from " + from
}

// refund gives back the attempt a sign-in took.
func (l *signInLimiter) refund(keys []signInKey) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if b := l.buckets[k]; b != nil {
			b.tokens = min(b.tokens+1, l.size(k))
		}
	}
}

// fill adds the attempts k's bucket regained since it was last filled.
func (l *signInLimiter) fill(b *bucket, k signInKey, now time.Time) {
	b.fill(now, l.size(k), k.rate(), l.refill)
}

// rate is how many attempts k's bucket regains per refill period: an
// IPv6 site's as many as its addresses', the rest one.
func (k signInKey) rate() float64 {
	if k.site() {
		return addressesPerSite
	}
	return 1
}

// makeRoom makes room for n more buckets under maxSignInBuckets. It drops
// the buckets that have refilled, then, if that freed less than a tenth of
// the table, the fullest of the rest (by the share of their attempts left)
// until a tenth is free, so that its sweeps stay rare under a flood of new
// addresses. l.mu is held.
func (l *signInLimiter) makeRoom(now time.Time, n int) {
	if len(l.buckets)+n <= maxSignInBuckets {
		return
	}
	for k, b := range l.buckets {
		if l.fill(b, k, now); b.tokens >= l.size(k) {
			delete(l.buckets, k)
		}
	}
	excess := len(l.buckets) - maxSignInBuckets*9/10
	if excess <= 0 {
		return
	}
	type held struct {
		k     signInKey
		full  float64
		spent time.Time
	}
	all := make([]held, 0, len(l.buckets))
	for k, b := range l.buckets {
		// Whole attempts: what a bucket regained since it was spent
		// does not make it fuller than one spent later.
		all = append(all, held{k, math.Floor(b.tokens) / l.size(k), b.spent})
	}
	// The fullest first; among as full, the last spent: a flood that
	// empties its buckets too pushes out its own before the buckets of the
	// addresses that were guessing before it.
	slices.SortFunc(all, func(a, b held) int {
		if c := cmp.Compare(b.full, a.full); c != 0 {
			return c
		}
		return b.spent.Compare(a.spent)
	})
	for _, h := range all[:excess] {
		delete(l.buckets, h.k)
	}
}

// login runs a login under the limiter: refused at once when the
// username at the caller's address, the address, or its IPv6 site has no
// attempt left.
// Only wrong credentials count: the attempt is given back otherwise.
func (s *Server) login(ctx context.Context, username string, attempt func() error) error {
	return s.signIn(signInKeys(s.clientAddr(ctx), signInLogin, username), attempt,
		func(err error) bool { return errors.Is(err, engine.ErrUnauthenticated) })
}

// register runs a registration under the limiter. Every registration
// counts, made or refused for a taken username (accounts are not free to
// make, and names not free to probe), but a malformed one, refused before
// anything is looked up or hashed.
func (s *Server) register(ctx context.Context, attempt func() error) error {
	return s.signIn(signInKeys(s.clientAddr(ctx), signInRegister, ""), attempt,
		func(err error) bool { return !errors.Is(err, engine.ErrInvalid) })
}

// signIn runs a sign-in spending from keys' buckets: refused at once when
// one has no attempt left. The attempt is given back when counts says its
// outcome does not count, and always when the server, not the client,
// failed it (too many sign-ins at once, a cancelled call, a stopping
// store).
func (s *Server) signIn(keys []signInKey, attempt func() error, counts func(error) bool) error {
	if i, wait, warn := s.signIns.take(keys); i >= 0 {
		s.stats.signInsLimited.Add(1)
		if warn {
			s.log.Warn("sign-ins throttled: too many "+keys[i].what(), "client", keys[i].addr, "retry_in", wait)
		}
		return throttled(fmt.Sprintf("too many %s; retry in %s", keys[i].what(), wait), wait)
	}
	err := attempt()
	if serverSide(err) || !counts(err) {
		s.signIns.refund(keys)
	}
	return err
}

func serverSide(err error) bool {
	return errors.Is(err, engine.ErrTooMany) || errors.Is(err, engine.ErrFailed) || errors.Is(err, engine.ErrClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// clientAddr is the caller's address as the limiter keys it; invalid when
// unknown. It is worked out where a handler asks, from the call's peer and
// headers: the sign-in calls only, not every request.
func (s *Server) clientAddr(ctx context.Context) netip.Prefix {
	info, ok := connect.CallInfoForServerContext(ctx)
	if !ok {
		return netip.Prefix{}
	}
	return addrKey(info.PeerAddr, info.RequestHeader().Values, s.clientIP)
}

// clientIP says where a request's client address comes from: the
// connection's peer, or the header a reverse proxy writes it into
// (Options.ClientIPHeader and TrustedProxies).
type clientIP struct {
	header  string
	trusted []netip.Prefix
}

func (c clientIP) isTrusted(ip netip.Addr) bool {
	for _, p := range c.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// addr returns the client's address. Without a header it is the peer's.
// With a header, the client is the last address in it that is not a
// proxy: each proxy appended the address it was reached from, and what a
// client wrote itself lies left of them all. Without trusted proxies every
// request comes through one, which is its peer, and the header's last
// entry is the client; with them, the header counts only when the peer is
// one of them. An entry that is not an address ends the walk at the last
// proxy.
func (c clientIP) addr(peerAddr string, header func(key string) []string) netip.Addr {
	peer := parseAddr(peerAddr)
	if c.header == "" || !peer.IsValid() || (len(c.trusted) > 0 && !c.isTrusted(peer)) {
		return peer
	}
	last := peer
	vs := header(c.header)
	for i := len(vs) - 1; i >= 0; i-- {
		entries := strings.Split(vs[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			e := strings.TrimSpace(entries[j])
			if e == "" {
				continue
			}
			ip := parseAddr(e)
			if !ip.IsValid() {
				return last
			}
			if !c.isTrusted(ip) {
				return ip
			}
			last = ip
		}
	}
	return last
}

// addrKey is the limiter's key for a call's client, given the call's peer
// and its header's values: its IPv4 address or IPv6 /64.
func addrKey(peerAddr string, header func(key string) []string, ci clientIP) netip.Prefix {
	ip := ci.addr(peerAddr, header)
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// parseAddr parses an address with or without a port ("198.51.100.7",
// "198.51.100.7:5000", "[2001:db8::1]:5000"), unmapped and without its
// zone; invalid when it is none of these.
func parseAddr(s string) netip.Addr {
	ip, err := netip.ParseAddr(s)
	if err != nil {
		host, _, err := net.SplitHostPort(s)
		if err != nil {
			return netip.Addr{}
		}
		ip, _ = netip.ParseAddr(host)
	}
	return ip.Unmap().WithZone("")
}
