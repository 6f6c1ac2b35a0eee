package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestSignInLimit: failed logins spend the attempts of their username at
// their address, registrations their address's; a spent username is
// refused at that address (even with the right password) until the clock
// gives it another, while other users behind the address log in;
// successful logins spend nothing; addresses are told apart by the proxy's
// header, IPv6 by /64.
func TestSignInLimit(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.SignInLimit, o.SignInRefill, o.ClientIPHeader = 3, time.Minute, "X-Forwarded-For"
	}})
	acc := srv.Clients("").Account
	// The proxy appends the client's address: the last one counts.
	from := func(addr string) context.Context {
		ctx, info := connect.NewClientContext(context.Background())
		info.RequestHeader().Set("X-Forwarded-For", "10.9.9.9, "+addr)
		return ctx
	}
	register := func(addr, username string) error {
		_, err := acc.Register(from(addr), &ferryv1.RegisterRequest{Username: username, Password: "correct horse", DeviceName: "d"})
		return err
	}
	loginAs := func(addr, username, password string) error {
		_, err := acc.Login(from(addr), &ferryv1.LoginRequest{Username: username, Password: password, DeviceName: "d"})
		return err
	}
	login := func(addr, password string) error { return loginAs(addr, "alice", password) }
	code := func(err error) connect.Code {
		var ce *connect.Error
		if errors.As(err, &ce) {
			return ce.Code()
		}
		return 0
	}
	if err := register("192.0.2.1", "alice"); err != nil {
		t.Fatal(err)
	}
	if err := register("192.0.2.2", "erin"); err != nil {
		t.Fatal(err)
	}
	const a = "198.51.100.7"
	for i := range 5 {
		if err := login(a, "correct horse"); err != nil {
			t.Fatalf("login %d: %v: successful logins must not be limited", i, err)
		}
	}
	for i := range 3 {
		if err := login(a, "wrong"); code(err) != connect.CodeUnauthenticated {
			t.Fatalf("wrong password %d: %v, want unauthenticated", i, err)
		}
	}
	err := login(a, "correct horse")
	if d, ok := retryDelay(err); !ok || d != time.Minute {
		t.Errorf("refusal's retry delay %v (%v), want 1m as a detail", d, ok)
	}
	if code(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), `failed logins as "alice" from this address; retry in 1m0s`) {
		t.Fatalf("fourth attempt after three failures: %v, want resource_exhausted saying what and when to retry", err)
	}
	if n := srv.Server.Metrics().SignInsLimited; n != 1 {
		t.Fatalf("metrics count %d sign-ins limited, want 1", n)
	}
	if err := loginAs(a, "Erin", "correct horse"); err != nil {
		t.Fatalf("another user behind the same address: %v", err)
	}
	if err := login("198.51.100.8", "correct horse"); err != nil {
		t.Fatalf("another address: %v", err)
	}

	// Only wrong credentials count: a malformed login does not.
	for i := range 5 {
		_, err := acc.Login(from("198.51.100.9"), &ferryv1.LoginRequest{Username: "alice", Password: "correct horse", DeviceName: strings.Repeat("x", 1000)})
		if code(err) != connect.CodeInvalidArgument {
			t.Fatalf("login %d with a device name of 1000 bytes: %v, want invalid_argument", i, err)
		}
	}
	if err := login("198.51.100.9", "correct horse"); err != nil {
		t.Fatalf("after malformed logins: %v", err)
	}

	// A minute gives one attempt back.
	srv.Clock.Advance(time.Minute)
	if err := login(a, "wrong"); code(err) != connect.CodeUnauthenticated {
		t.Fatalf("after a minute: %v, want one more attempt", err)
	}
	if err := login(a, "correct horse"); code(err) != connect.CodeResourceExhausted {
		t.Fatalf("after spending it: %v, want resource_exhausted", err)
	}
	srv.Clock.Advance(time.Minute)
	if err := login(a, "correct horse"); err != nil {
		t.Fatalf("after another minute, the right password: %v", err)
	}

	// One IPv6 /64 is one address.
	for i := range 3 {
		if err := login("2001:db8::1", "wrong"); code(err) != connect.CodeUnauthenticated {
			t.Fatalf("IPv6 failure %d: %v", i, err)
		}
	}
	if err := login("2001:db8::2", "correct horse"); code(err) != connect.CodeResourceExhausted {
		t.Fatalf("same /64: %v, want resource_exhausted", err)
	}
	if err := login("2001:db8:0:1::2", "correct horse"); err != nil {
		t.Fatalf("another /64: %v", err)
	}

	// Every registration counts, not only failed ones (the two minutes
	// above gave 192.0.2.1 back the attempt alice's took).
	for _, name := range []string{"bob", "carol"} {
		if err := register("192.0.2.1", name); err != nil {
			t.Fatal(err)
		}
	}
	// A malformed one does not count: refused before anything is looked
	// up or hashed, it costs the server nothing (a mistyped name behind a
	// carrier's NAT should not use up its addresses' registrations).
	for range 5 {
		if err := register("192.0.2.1", "no spaces allowed"); code(err) != connect.CodeInvalidArgument {
			t.Fatalf("a malformed name: %v", err)
		}
	}
	if err := register("192.0.2.1", "bob"); code(err) != connect.CodeAlreadyExists {
		t.Fatalf("a taken name: %v", err)
	}
	if err := register("192.0.2.1", "dave"); code(err) != connect.CodeResourceExhausted {
		t.Fatalf("fourth registration: %v, want resource_exhausted", err)
	}
}

// TestSignInLimitOffAndPeerAddress: without the header option the
// connection's address counts (every test client is 127.0.0.1, whatever it
// writes in X-Forwarded-For), and a negative limit turns the limit off.
func TestSignInLimitOffAndPeerAddress(t *testing.T) {
	for _, limit := range []int{2, -1} {
		srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.SignInLimit = limit }})
		srv.Register("alice")
		var last error
		for i := range 3 {
			ctx, info := connect.NewClientContext(context.Background())
			info.RequestHeader().Set("X-Forwarded-For", "203.0.113."+string(rune('1'+i)))
			_, last = srv.Clients("").Account.Login(ctx, &ferryv1.LoginRequest{Username: "alice", Password: "wrong", DeviceName: "d"})
		}
		var ce *connect.Error
		errors.As(last, &ce)
		want := connect.CodeResourceExhausted
		if limit < 0 {
			want = connect.CodeUnauthenticated
		}
		if ce == nil || ce.Code() != want {
			t.Errorf("limit %d: third failure from 127.0.0.1: %v, want %v", limit, last, want)
		}
	}
}

// TestSignInLimitTrustsOnlyItsProxies: with trusted proxies, the header
// counts on requests from them only. The test's requests come from
// loopback: when loopback is not a trusted proxy, a client cannot escape
// its address's limit by writing another address in the header each time.
func TestSignInLimitTrustsOnlyItsProxies(t *testing.T) {
	for _, c := range []struct {
		trusted  string
		refusals int
	}{{"192.0.2.0/24", 2}, {"127.0.0.0/8", 0}} {
		srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
			o.SignInLimit, o.SignInRefill, o.ClientIPHeader = 2, time.Minute, "X-Forwarded-For"
			o.TrustedProxies = []netip.Prefix{netip.MustParsePrefix(c.trusted)}
		}})
		acc := srv.Clients("").Account
		refused := 0
		for i := range 4 {
			ctx, info := connect.NewClientContext(context.Background())
			info.RequestHeader().Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", i+1))
			_, err := acc.Register(ctx, &ferryv1.RegisterRequest{Username: fmt.Sprintf("user%d", i), Password: "correct horse", DeviceName: "d"})
			switch {
			case err == nil:
			case connect.CodeOf(err) == connect.CodeResourceExhausted:
				refused++
			default:
				t.Fatalf("trusted %s, registration %d: %v", c.trusted, i, err)
			}
		}
		if refused != c.refusals {
			t.Errorf("trusted proxies %s: %d of 4 registrations from four header addresses refused, want %d", c.trusted, refused, c.refusals)
		}
	}
}
