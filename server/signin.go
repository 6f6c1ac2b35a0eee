package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/clock"
)

// Sign-in throttling. A password guess costs the server an argon2 hash and
// the guesser nothing, so failed logins and registrations spend from a
// token bucket per client address: SignInLimit of them at once, then one
// more every SignInRefill. A successful login spends nothing, so a user who
// mistypes a few times is not held up; an address that keeps guessing gets
// one guess a minute by default, refused before any hash is computed. The
// limit is per address, not per account: users behind one address (a NAT,
// a proxy without ClientIPHeader) share it, and while it is spent their
// correct passwords wait too.
//
// Addresses are IPv4 addresses or IPv6 /64 networks (one host usually
// holds a whole /64). Behind a reverse proxy every client has the proxy's
// address: set Options.ClientIPHeader to the header the proxy writes the
// client's address into.

// maxSignInAddrs bounds the limiter's memory (about 15 MB). Past it,
// buckets that have refilled are dropped first; if too many are still
// spending, arbitrary ones go (failing open for them rather than growing
// without bound).
const maxSignInAddrs = 100_000

type signInLimiter struct {
	limit  int
	refill time.Duration
	clock  clock.Clock

	mu      sync.Mutex
	buckets map[netip.Prefix]*bucket
}

// bucket holds tokens as of at.
type bucket struct {
	tokens float64
	at     time.Time
	warned time.Time // when a refusal was last logged
}

func newSignInLimiter(limit int, refill time.Duration, c clock.Clock) *signInLimiter {
	if limit <= 0 {
		return nil // off
	}
	return &signInLimiter{limit: limit, refill: refill, clock: c, buckets: map[netip.Prefix]*bucket{}}
}

// take spends one attempt of addr. When none is left it reports how long
// until one is, and whether to log the refusal: once per refill period per
// address, so a guesser cannot flood the log.
func (l *signInLimiter) take(addr netip.Prefix) (ok bool, wait time.Duration, warn bool) {
	if l == nil || !addr.IsValid() {
		return true, 0, false
	}
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[addr]
	if b == nil {
		l.makeRoom(now)
		b = &bucket{tokens: float64(l.limit), at: now}
		l.buckets[addr] = b
	}
	l.fill(b, now)
	if b.tokens < 1 {
		wait := time.Duration((1 - b.tokens) * float64(l.refill))
		warn := b.warned.IsZero() || now.Sub(b.warned) >= l.refill
		if warn {
			b.warned = now
		}
		return false, (wait + time.Second - 1).Truncate(time.Second), warn // whole seconds, rounded up
	}
	b.tokens--
	return true, 0, false
}

// refund gives back the attempt a successful login took.
func (l *signInLimiter) refund(addr netip.Prefix) {
	if l == nil || !addr.IsValid() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[addr]; b != nil {
		b.tokens = min(b.tokens+1, float64(l.limit))
	}
}

func (l *signInLimiter) fill(b *bucket, now time.Time) {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(float64(l.limit), b.tokens+float64(d)/float64(l.refill))
		b.at = now
	}
}

// makeRoom keeps the table under maxSignInAddrs. It drops the buckets that
// have refilled, then, if that freed less than a tenth of the table, more
// until a tenth is free, so that its sweeps stay rare under a flood of new
// addresses. l.mu is held.
func (l *signInLimiter) makeRoom(now time.Time) {
	if len(l.buckets) < maxSignInAddrs {
		return
	}
	for a, b := range l.buckets {
		if l.fill(b, now); b.tokens >= float64(l.limit) {
			delete(l.buckets, a)
		}
	}
	for a := range l.buckets {
		if len(l.buckets) <= maxSignInAddrs*9/10 {
			break
		}
		delete(l.buckets, a)
	}
}

// signIn runs a sign-in (login or registration) of the caller's address
// under the limiter: refused at once when the address has no attempt left.
// The attempt is given back when counts says its outcome does not count
// against the address, and always when the server, not the client, failed
// it (too many sign-ins at once, a cancelled call, a stopping store).
func (s *Server) signIn(ctx context.Context, what string, attempt func() error, counts func(error) bool) error {
	addr := clientAddr(ctx)
	ok, wait, warn := s.signIns.take(addr)
	if !ok {
		if warn {
			s.log.Warn("sign-ins throttled: too many failed logins or registrations from one address", "client", addr, "rpc", what, "retry_in", wait)
		}
		return connect.NewError(connect.CodeResourceExhausted, fmt.Sprintf(
			"too many failed sign-ins and registrations from this address; retry in %s", wait))
	}
	err := attempt()
	if serverSide(err) || !counts(err) {
		s.signIns.refund(addr)
	}
	return err
}

// failedLogin: a login counts against its address when its credentials
// were wrong.
func failedLogin(err error) bool { return errors.Is(err, engine.ErrUnauthenticated) }

// anyRegistration: every registration counts, made or refused: accounts
// are not free to make either.
func anyRegistration(error) bool { return true }

func serverSide(err error) bool {
	return errors.Is(err, engine.ErrTooMany) || errors.Is(err, engine.ErrFailed) || errors.Is(err, engine.ErrClosed) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

type clientAddrKey struct{}

// clientAddr is the caller's address as the limiter keys it; invalid when
// unknown.
func clientAddr(ctx context.Context) netip.Prefix {
	p, _ := ctx.Value(clientAddrKey{}).(netip.Prefix)
	return p
}

// withClientAddr puts the client's address in the request's context: the
// last address in header when set (the one the proxy appended), else the
// connection's peer.
func withClientAddr(next http.Handler, header string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := addrKey(r, header)
		if a.IsValid() {
			r = r.WithContext(context.WithValue(r.Context(), clientAddrKey{}, a))
		}
		next.ServeHTTP(w, r)
	})
}

func addrKey(r *http.Request, header string) netip.Prefix {
	var ip netip.Addr
	if header != "" {
		if vs := r.Header.Values(header); len(vs) > 0 {
			ip = lastAddr(vs[len(vs)-1])
		}
	}
	if !ip.IsValid() {
		ip = lastAddr(r.RemoteAddr)
	}
	if !ip.IsValid() {
		return netip.Prefix{}
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.WithZone("").Prefix(bits)
	return p
}

// lastAddr parses the last non-empty entry of a comma-separated address
// list, with or without a port ("198.51.100.7", "198.51.100.7:5000",
// "[2001:db8::1]:5000"); invalid when it is none of these.
func lastAddr(list string) netip.Addr {
	entries := strings.Split(list, ",")
	for i := len(entries) - 1; i >= 0; i-- {
		e := strings.TrimSpace(entries[i])
		if e == "" {
			continue
		}
		if ip, err := netip.ParseAddr(e); err == nil {
			return ip
		}
		if host, _, err := net.SplitHostPort(e); err == nil {
			ip, _ := netip.ParseAddr(host)
			return ip
		}
		return netip.Addr{}
	}
	return netip.Addr{}
}
