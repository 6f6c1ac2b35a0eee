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
		if got := addrKey(r.RemoteAddr, r.Header.Values, clientIP{header: c.header}).String(); got != c.want {
			t.Errorf("remote %q, header %q %q: %s, want %s", c.remote, c.header, c.headers, got, c.want)
		}
	}
}

// TestTrustedProxies: with trusted proxies, the header counts only from
// them, and the client is the last address in it that is not a proxy.
func TestTrustedProxies(t *testing.T) {
	ci := clientIP{header: "X-Forwarded-For", trusted: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48"), netip.MustParsePrefix("fe80::/10")}}
	for _, c := range []struct {
		name, remote string
		headers      []string
		want         string
	}{
		{"one proxy", "10.0.0.1:1", []string{"198.51.100.7"}, "198.51.100.7/32"},
		{"a client reaching the server directly cannot choose its address", "203.0.113.5:1", []string{"198.51.100.7"}, "203.0.113.5/32"},
		{"a chain of proxies", "10.0.0.1:1", []string{"198.51.100.7, 10.1.2.3"}, "198.51.100.7/32"},
		{"what the client wrote lies left of the proxies'", "10.0.0.1:1", []string{"192.0.2.66, 198.51.100.7, 10.1.2.3"}, "198.51.100.7/32"},
		{"over several header lines", "10.0.0.1:1", []string{"192.0.2.66", "198.51.100.7", "10.1.2.3"}, "198.51.100.7/32"},
		{"an IPv6 proxy", "[2001:db8:ffff::9]:1", []string{"2001:db8:1:2::3"}, "2001:db8:1:2::/64"},
		{"an IPv4 client through an IPv6-mapped proxy address", "[::ffff:10.0.0.1]:1", []string{"::ffff:198.51.100.7"}, "198.51.100.7/32"},
		{"a proxy's link-local address, with its zone", "[fe80::1%eth0]:1", []string{"198.51.100.7, fe80::2%eth1"}, "198.51.100.7/32"},
		{"garbage stops the walk at the last proxy", "10.0.0.1:1", []string{"nonsense, 10.1.2.3"}, "10.1.2.3/32"},
		{"no header: the proxy itself", "10.0.0.1:1", nil, "10.0.0.1/32"},
		{"only proxies: the first of them", "10.0.0.1:1", []string{"10.9.9.9, 10.1.2.3"}, "10.9.9.9/32"},
	} {
		r := &http.Request{RemoteAddr: c.remote, Header: http.Header{}}
		for _, h := range c.headers {
			r.Header.Add("X-Forwarded-For", h)
		}
		if got := addrKey(r.RemoteAddr, r.Header.Values, ci).String(); got != c.want {
			t.Errorf("%s: remote %q, header %q: %s, want %s", c.name, c.remote, c.headers, got, c.want)
		}
	}
}

// registerFrom is the keys of a registration from the i-th address of
// 10.0.0.0/8.
func registerFrom(i int) []signInKey {
	return signInKeys(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32), signInRegister, "")
}

// TestSignInLimiterStaysBounded: past maxSignInBuckets buckets the table
// drops buckets, refilled ones first, so an address still spending keeps
// its count.
func TestSignInLimiterStaysBounded(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(2, time.Minute, fake)
	spent := signInKeys(netip.MustParsePrefix("198.51.100.7/32"), signInRegister, "")
	for i := range maxSignInBuckets / 2 {
		l.take(registerFrom(i))
	}
	fake.Advance(time.Hour) // those refill
	l.take(spent)
	l.take(spent)
	for i := maxSignInBuckets / 2; i < maxSignInBuckets+10; i++ {
		l.take(registerFrom(i))
	}
	if n := len(l.buckets); n > maxSignInBuckets {
		t.Fatalf("%d buckets, want at most %d", n, maxSignInBuckets)
	}
	if empty, _, _ := l.take(spent); empty < 0 {
		t.Fatal("an address that spent its attempts got another: its bucket was dropped before refilled ones")
	}
	if empty, _, _ := l.take(registerFrom(0)); empty >= 0 {
		t.Fatal("a dropped bucket comes back full")
	}
}

// TestSignInLimiterKeepsGuessersWhenFull: with the table full of buckets
// still spending, a flood of new addresses (each bucket nearly full)
// pushes out the fullest, not the emptied buckets of the addresses that
// are guessing: a tenth of the flood spends both its attempts, and every
// one of those is still refused after the table overflowed.
func TestSignInLimiterKeepsGuessersWhenFull(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(2, time.Minute, fake)
	const flood = maxSignInBuckets + maxSignInBuckets/5
	for i := range flood {
		l.take(registerFrom(i))
		if i%10 == 0 {
			l.take(registerFrom(i)) // a guesser: its bucket is empty
		}
	}
	if n := len(l.buckets); n > maxSignInBuckets {
		t.Fatalf("%d buckets, want at most %d", n, maxSignInBuckets)
	}
	for i := 0; i < flood; i += 10 {
		if empty, _, _ := l.take(registerFrom(i)); empty < 0 {
			t.Fatalf("guessing address %d got another attempt: the overflow pushed its emptied bucket out", i)
		}
	}
}

// TestSignInLimiterKeepsEarlierGuessers: a flood that empties every
// bucket it makes, as full as the guessers' then, pushes out its own
// buckets before those of the addresses that were guessing before it.
func TestSignInLimiterKeepsEarlierGuessers(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(2, time.Minute, fake)
	const guessers = 1000
	for i := range guessers {
		l.take(registerFrom(i))
		l.take(registerFrom(i))
	}
	fake.Advance(time.Millisecond)
	for i := guessers; i < guessers+maxSignInBuckets+maxSignInBuckets/5; i++ {
		l.take(registerFrom(i))
		l.take(registerFrom(i))
	}
	for i := range guessers {
		if empty, _, _ := l.take(registerFrom(i)); empty < 0 {
			t.Fatalf("guessing address %d got another attempt: a flood of emptied buckets pushed its own out", i)
		}
	}
}

// TestSignInRefusalsLogOncePerRefill: a guesser's refusals are logged once
// per refill period, not once each.
func TestSignInRefusalsLogOncePerRefill(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(1, time.Minute, fake)
	a := signInKeys(netip.MustParsePrefix("198.51.100.7/32"), signInLogin, "alice")
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

// TestSignInLimiterKeys: a login spends from its username's bucket at its
// address and from the address's, which holds loginsPerAddress times as
// many; a refusal spends from neither and names the empty bucket; a
// malformed username spends only from the address's.
func TestSignInLimiterKeys(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(2, time.Minute, fake)
	addr := netip.MustParsePrefix("198.51.100.7/32")
	alice := signInKeys(addr, signInLogin, "Alice")
	if len(alice) != 2 || alice[1].user != "alice" {
		t.Fatalf("keys of a login as Alice: %+v, want the address's and alice's", alice)
	}
	if k := signInKeys(addr, signInLogin, "no spaces allowed"); len(k) != 1 || k[0].user != "" {
		t.Fatalf("keys of a malformed username: %+v, want the address's only", k)
	}
	if k := signInKeys(netip.Prefix{}, signInLogin, "alice"); len(k) != 0 {
		t.Fatalf("keys of an unknown address: %+v, want none", k)
	}
	for range 2 {
		if empty, _, _ := l.take(alice); empty >= 0 {
			t.Fatal("alice's first two attempts were refused")
		}
	}
	empty, _, _ := l.take(alice)
	if empty != 1 || alice[empty].what() != `failed logins as "alice" from this address` {
		t.Fatalf("alice's third attempt: empty bucket %d, want alice's (1)", empty)
	}
	// The refusal spent nothing: the address's bucket has 20 - 2 left.
	if b := l.buckets[alice[0]]; b.tokens != 18 {
		t.Fatalf("the address's bucket has %v attempts, want 18", b.tokens)
	}
	for i := range 9 {
		for range 2 {
			if empty, _, _ := l.take(signInKeys(addr, signInLogin, fmt.Sprintf("user%d", i))); empty >= 0 {
				t.Fatalf("user%d refused while the address had attempts left", i)
			}
		}
	}
	before := len(l.buckets)
	bob := signInKeys(addr, signInLogin, "bob")
	empty, _, _ = l.take(bob)
	if empty != 0 || alice[0].what() != "failed logins from this address" {
		t.Fatalf("bob after 20 failures from the address: empty bucket %d, want the address's (0)", empty)
	}
	if _, made := l.buckets[bob[1]]; made || len(l.buckets) != before {
		t.Fatalf("a refusal added buckets: %d, was %d", len(l.buckets), before)
	}
	l.refund(alice)
	if b := l.buckets[alice[1]]; b.tokens != 1 {
		t.Fatalf("after a refund alice has %v attempts, want 1", b.tokens)
	}
}

// TestSignInLimiterIPv6Sites: an IPv6 sign-in spends from its /64's bucket
// and from its /48's, which holds addressesPerSite times as many, so a
// site cannot rotate through its 65,536 /64s for as many budgets.
func TestSignInLimiterIPv6Sites(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	l := newSignInLimiter(1, time.Minute, fake)
	net64 := func(site, i int) netip.Prefix {
		return netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x:%x::/64", site, i))
	}
	keys := signInKeys(net64(1, 0), signInLogin, "alice")
	if len(keys) != 3 || keys[1].addr.String() != "2001:db8:1::/48" || keys[1].user != "" || keys[2].user != "alice" {
		t.Fatalf("keys of an IPv6 login: %+v, want the /64's, the /48's and alice's at the /64", keys)
	}
	if k := signInKeys(netip.MustParsePrefix("198.51.100.7/32"), signInRegister, ""); len(k) != 1 {
		t.Fatalf("keys of an IPv4 registration: %+v, want the address's only", k)
	}
	for i := range addressesPerSite {
		if empty, _, _ := l.take(signInKeys(net64(1, i), signInRegister, "")); empty >= 0 {
			t.Fatalf("registration from /64 %d of the site refused", i)
		}
	}
	next := signInKeys(net64(1, addressesPerSite), signInRegister, "")
	empty, wait, _ := l.take(next)
	if empty != 1 || next[empty].what() != "registrations from this network (an IPv6 /48)" {
		t.Fatalf("registration from /64 %d of a spent site: empty bucket %d, want the site's (1)", addressesPerSite, empty)
	}
	// The site regains attempts as fast as its addresses together (the
	// wait is told in whole seconds, rounded up: 3.75s is 4s).
	if want := 4 * time.Second; wait != want {
		t.Fatalf("a spent site waits %v for an attempt, want %v", wait, want)
	}
	fake.Advance(time.Minute / addressesPerSite)
	if empty, _, _ := l.take(next); empty >= 0 {
		t.Fatalf("registration after the site regained an attempt: empty bucket %d", empty)
	}
	if empty, _, _ := l.take(signInKeys(net64(2, 0), signInRegister, "")); empty >= 0 {
		t.Fatal("another site's registration refused")
	}
}
