package server

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

func TestAddrKey(t *testing.T) {
	for _, c := range []struct {
		remote, header string
		headers        []string
		want           string
	}{
		{remote: "192.0.2.1:5000", want: "192.0.2.1/32"},
		{remote: "[2001:db8::7]:5000", want: "2001:db8::/64"},
		{remote: "[::ffff:192.0.2.1]:5000", want: "192.0.2.1/32"},
		{remote: "[fe80::1%eth0]:5000", want: "fe80::/64"},
		{remote: "not an address", want: "invalid Prefix"},
		// The header counts only when configured, and then its last entry.
		{remote: "10.0.0.1:1", headers: []string{"198.51.100.7"}, want: "10.0.0.1/32"},
		{remote: "10.0.0.1:1", header: "X-Forwarded-For", headers: []string{"203.0.113.9, 198.51.100.7"}, want: "198.51.100.7/32"},
		{remote: "10.0.0.1:1", header: "X-Forwarded-For", headers: []string{"203.0.113.9", " 198.51.100.8 "}, want: "198.51.100.8/32"},
		{remote: "10.0.0.1:1", header: "X-Forwarded-For", headers: []string{"garbage"}, want: "10.0.0.1/32"},
		{remote: "10.0.0.1:1", header: "X-Forwarded-For", headers: []string{"203.0.113.9, 198.51.100.7:5000"}, want: "198.51.100.7/32"},
		{remote: "10.0.0.1:1", header: "X-Forwarded-For", headers: []string{"[2001:db8::1]:443"}, want: "2001:db8::/64"},
		{remote: "10.0.0.1:1", header: "X-Forwarded-For", headers: []string{"198.51.100.7, "}, want: "198.51.100.7/32"},
		{remote: "10.0.0.1:1", header: "X-Forwarded-For", want: "10.0.0.1/32"},
	} {
		r := &http.Request{RemoteAddr: c.remote, Header: http.Header{}}
		for _, h := range c.headers {
			r.Header.Add("X-Forwarded-For", h)
		}
		if got := addrKey(r, c.header).String(); got != c.want {
			t.Errorf("remote %q, header %q %q: %s, want %s", c.remote, c.header, c.headers, got, c.want)
		}
	}
}

// TestSignInLimiterStaysBounded: past maxSignInAddrs addresses the table
// drops buckets, refilled ones first, so an address still spending keeps
// its count.
func TestSignInLimiterStaysBounded(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(2, time.Minute, fake)
	spent := netip.MustParsePrefix("198.51.100.7/32")
	addr := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
	}
	for i := range maxSignInAddrs / 2 {
		l.take(addr(i))
	}
	fake.Advance(time.Hour) // those refill
	l.take(spent)
	l.take(spent)
	for i := maxSignInAddrs / 2; i < maxSignInAddrs+10; i++ {
		l.take(addr(i))
	}
	if n := len(l.buckets); n > maxSignInAddrs {
		t.Fatalf("%d buckets, want at most %d", n, maxSignInAddrs)
	}
	if ok, _, _ := l.take(spent); ok {
		t.Fatal("an address that spent its attempts got another: its bucket was dropped before refilled ones")
	}
	if ok, _, _ := l.take(addr(0)); !ok {
		t.Fatal("a dropped bucket comes back full")
	}
}

// TestSignInRefusalsLogOncePerRefill: a guesser's refusals are logged once
// per refill period, not once each.
func TestSignInRefusalsLogOncePerRefill(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(1, time.Minute, fake)
	a := netip.MustParsePrefix("198.51.100.7/32")
	var warns []bool
	for range 4 {
		_, _, warn := l.take(a)
		warns = append(warns, warn)
	}
	fake.Advance(time.Minute) // one attempt back, spent by the first take
	for range 2 {
		_, _, warn := l.take(a)
		warns = append(warns, warn)
	}
	_, _, warn := l.take(a)
	warns = append(warns, warn)
	want := []bool{false, true, false, false, false, true, false}
	if fmt.Sprint(warns) != fmt.Sprint(want) {
		t.Fatalf("warnings %v, want %v", warns, want)
	}
}
