package server

import (
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/internal/clock"
)

func TestPushLimiterBucket(t *testing.T) {
	c := clock.NewFake(time.Unix(1_000_000, 0))
	l := newPushLimiter(Options{PushLimit: 100, PushBurst: 1000, Clock: c})
	alice, bob := ulid.Make(), ulid.Make()

	step := func(what string, user ulid.ULID, n int, wantWait time.Duration, wantOK bool) {
		t.Helper()
		wait, ok := l.reserve(user, n, true)
		if wait != wantWait || ok != wantOK {
			t.Fatalf("%s: reserve %d = %v, %v; want %v, %v", what, n, wait, ok, wantWait, wantOK)
		}
	}
	step("a full bucket", alice, 1000, 0, true)
	step("an empty one goes into debt", alice, 50, 500*time.Millisecond, true)
	step("more debt, more wait", alice, 150, 2*time.Second, true)
	step("another user's bucket is full", bob, 1000, 0, true)
	// 200 ops of debt; 1000 more would wait 12 s: refused, taking nothing,
	// and told the 2 s until they would fit.
	step("past the longest wait", alice, 1000, 2*time.Second, false)
	step("the refusal took nothing", alice, 800, 10*time.Second, true)
	l.refund(alice, 800)

	// The debt is repaid at 100 ops a second, and the bucket fills to its
	// burst, no further.
	c.Advance(2 * time.Second)
	step("debt repaid", alice, 1, 10*time.Millisecond, true)
	c.Advance(time.Hour)
	step("full again", alice, 1000, 0, true)
	step("and no fuller", alice, 1, 10*time.Millisecond, true)

	// A push into a bucket that is not in debt goes ahead however long it
	// waits: a client pushing one request at a time is never refused.
	slow := newPushLimiter(Options{PushLimit: 10, PushBurst: 1000, Clock: c})
	wait, ok := slow.reserve(alice, 1000, true)
	if wait != 0 || !ok {
		t.Fatalf("a full slow bucket: %v, %v", wait, ok)
	}
	if wait, ok = slow.reserve(alice, 1000, true); wait != 100*time.Second || !ok {
		t.Fatalf("an empty slow bucket: %v, %v; want a 100s wait", wait, ok)
	}
	if wait, ok = slow.reserve(alice, 1, true); ok {
		t.Fatalf("a slow bucket 100s in debt let a push in to wait %v", wait)
	}
	if wait, ok = slow.reserve(alice, 1, false); !ok || wait != 100*time.Second+100*time.Millisecond {
		t.Fatalf("an ack into a bucket 100s in debt: %v, %v; want a wait of 100.1s, never a refusal", wait, ok)
	}
	slow.refund(alice, 1)

	// A debt repaid by waiting out its timer exactly is repaid, whatever
	// floating point leaves of it.
	odd := newPushLimiter(Options{PushLimit: 15, PushBurst: 1000, Clock: c})
	odd.reserve(alice, 1000, true)
	wait, _ = odd.reserve(alice, 123, true)
	c.Advance(wait)
	if wait, ok = odd.reserve(alice, 1000, true); !ok {
		t.Fatalf("a push after the last one's wait was refused, %v from fitting", wait)
	}

	var off *pushLimiter
	if wait, ok := off.reserve(alice, 1000, true); wait != 0 || !ok {
		t.Fatalf("no limiter: %v, %v", wait, ok)
	}
}

// The limiter drops the buckets that have refilled once it holds many,
// and keeps those still spending.
func TestPushLimiterForgetsFullBuckets(t *testing.T) {
	c := clock.NewFake(time.Unix(1_000_000, 0))
	l := newPushLimiter(Options{PushLimit: 100, PushBurst: 1000, Clock: c})
	spender := ulid.Make()
	l.reserve(spender, 1000, true)
	for range maxPushBuckets - 1 {
		l.reserve(ulid.Make(), 1, true)
	}
	c.Advance(time.Second) // the others refill; spender regains 100 of 1000
	l.reserve(ulid.Make(), 1, true)
	if n := len(l.buckets); n != 2 {
		t.Fatalf("%d buckets after pruning, want the spender's and the new one", n)
	}
	if wait, _ := l.reserve(spender, 200, true); wait != time.Second {
		t.Fatalf("the spender's bucket was lost: wait %v, want 1s", wait)
	}
}
