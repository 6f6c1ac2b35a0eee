package server

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/clock"
)

// Push throttling. Every op a user pushes, from any of their devices,
// spends from the user's token bucket, which holds Options.PushBurst ops
// and regains Options.PushLimit a second: one user, or one buggy device
// in a loop, cannot take the writer from everyone else.
//
// A push that finds too few tokens waits for them rather than failing:
// the bucket goes into debt, and the push waits until the debt is repaid.
// On a Sync stream the wait holds the stream's reader, so HTTP/2's flow
// control slows the client's sending down, and nothing fails. A push into
// a bucket that is not in debt always goes ahead, however long it waits,
// so a client that pushes one request at a time never sees an error. A
// push that finds the bucket in debt (pushes made in parallel, by several
// devices or calls) and would wait more than maxPushWait is refused with
// ResourceExhausted, spending nothing, and says when to retry.

// pushCost is what a push of ops spends from its user's bucket: an op
// one, and one more for every pushCostBytes of its body, so that the limit
// bounds the bytes a user can write as well as the ops. A chat message
// costs 1; a push of bodies at the 64 KiB limit, 17 an op, goes at about
// 4 MiB a second at the default limit instead of 64.
func pushCost(ops []model.Op) int {
	n := len(ops)
	for i := range ops {
		n += len(ops[i].Body) / pushCostBytes
	}
	return n
}

// pushCostBytes is the body size that costs one op more.
const pushCostBytes = 4 << 10

// ackCost is what an ack spends from its user's bucket: an op a marker,
// as each marker is a write (a catch-up's ack has one per conversation,
// well within the burst). An ack is a write like a push, and a client
// that acks in a loop must not take the writer either; the SDKs gather
// theirs, a few a second.
func ackCost(markers int) int { return max(markers, 1) }

// maxPushWait is the longest a push waits for its user's bucket.
const maxPushWait = 10 * time.Second

// debtSlack is the debt that does not count as debt: what floating point
// leaves of a debt repaid exactly, when a push waited out its timer.
const debtSlack = 1e-6

// maxPushBuckets is the bucket count past which the limiter drops the
// buckets that have refilled (which are as good as none) as it adds one.
const maxPushBuckets = 10_000

type pushLimiter struct {
	rate  float64 // ops a second
	burst float64
	clock clock.Clock

	mu      sync.Mutex
	buckets map[ulid.ULID]*bucket
	prune   int // prune the full buckets when there are this many
}

// newPushLimiter returns the limiter for opts; nil (no limit) when
// opts.PushLimit is negative.
func newPushLimiter(opts Options) *pushLimiter {
	if opts.PushLimit < 0 {
		return nil
	}
	return &pushLimiter{rate: float64(opts.PushLimit), burst: float64(opts.PushBurst), clock: opts.Clock,
		buckets: map[ulid.ULID]*bucket{}, prune: maxPushBuckets}
}

// reserve takes n ops from user's bucket. It returns how long the push
// must wait before it goes ahead, or ok false, having taken nothing, when
// the bucket is in debt already and the wait would be longer than
// maxPushWait; wait then says when the push would fit.
func (l *pushLimiter) reserve(user ulid.ULID, n int, refuse bool) (wait time.Duration, ok bool) {
	if l == nil {
		return 0, true
	}
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[user]
	if b == nil {
		if len(l.buckets) >= l.prune {
			l.pruneFull(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[user] = b
	}
	b.fill(now, l.burst, l.rate, time.Second)
	left := b.tokens - float64(n)
	if left >= 0 {
		b.tokens = left
		return 0, true
	}
	wait = l.seconds(-left)
	if refuse && b.tokens < -debtSlack && wait > maxPushWait {
		return wait - maxPushWait, false
	}
	b.tokens = left
	return wait, true
}

// refund gives back n ops of a reservation whose push did not happen.
func (l *pushLimiter) refund(user ulid.ULID, n int) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[user]; b != nil {
		b.tokens = min(b.tokens+float64(n), l.burst)
	}
}

// seconds is how long the bucket takes to regain ops.
func (l *pushLimiter) seconds(ops float64) time.Duration {
	return time.Duration(math.Ceil(ops / l.rate * float64(time.Second)))
}

// pruneFull drops the buckets that have refilled, and sets the size of
// the next pruning to twice what is left, so that pruning stays amortized
// when most buckets are spending.
func (l *pushLimiter) pruneFull(now time.Time) {
	for u, b := range l.buckets {
		if b.fill(now, l.burst, l.rate, time.Second); b.tokens >= l.burst {
			delete(l.buckets, u)
		}
	}
	l.prune = max(maxPushBuckets, 2*len(l.buckets))
}

// throttlePush waits until user may push n ops, or refuses the push. The
// wait ends early, giving the ops back, when ctx ends, or stop is closed
// (errSenderEnded): a Sync session's end, which sends its Goaway first. A
// unary push (stop nil) ends its wait when the server goes away.
// A refusal is a *deferral, which push answers as its call needs.
func (s *Server) throttlePush(ctx context.Context, user ulid.ULID, n int, stop <-chan struct{}) error {
	return s.throttle(ctx, user, n, stop, true)
}

// throttleAck waits until user may write an ack of n markers. An ack is
// never refused, however deep the debt others' pushes left: refusing it
// would end a device's Sync stream for what its siblings pushed. Nor does
// it wait longer than maxPushWait, the debt staying the user's: on a Sync
// stream the wait holds the stream's reader, and the pushes behind the
// ack, which the limit answers at once (RETRY_LATER, or a refusal that
// ends the session), would wait out the siblings' whole debt with it. A
// client acking in a loop still gets at most one ack through a stream
// every maxPushWait once the debt is that deep.
func (s *Server) throttleAck(ctx context.Context, user ulid.ULID, n int, stop <-chan struct{}) error {
	return s.throttle(ctx, user, ackCost(n), stop, false)
}

func (s *Server) throttle(ctx context.Context, user ulid.ULID, n int, stop <-chan struct{}, refuse bool) error {
	wait, ok := s.pushes.reserve(user, n, refuse)
	if !ok {
		s.stats.pushesRefused.Add(1)
		return &deferral{after: wait, msg: fmt.Sprintf(
			"this user's devices push more than the push limit, %d ops a second (an op counting one more per 4 KiB of its body), from several calls at once; retry in %s",
			s.opts.PushLimit, wait.Round(time.Millisecond))}
	}
	if wait <= 0 {
		return nil
	}
	if !refuse {
		wait = min(wait, maxPushWait)
	}
	t := s.opts.Clock.NewTimer(wait)
	defer t.Stop()
	s.stats.pushesThrottled.Add(1)
	if f := s.testThrottled.Load(); f != nil {
		(*f)() // the timer is armed
	}
	goaway := s.goaway.Done()
	if stop != nil {
		goaway = nil // the session's sender says Goaway, then ends it: stop
	}
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		s.pushes.refund(user, n)
		return connectError(ctx.Err())
	case <-goaway:
		s.pushes.refund(user, n)
		return connect.NewError(connect.CodeUnavailable, "the server is shutting down; send again after reconnecting")
	case <-stop:
		s.pushes.refund(user, n)
		return errSenderEnded
	}
}

// retryAfterMs is PushResult.retry_after_ms for d: rounded up to whole
// milliseconds, so that a client waiting it finds the push fits.
func retryAfterMs(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	return uint32(min((d+time.Millisecond-1)/time.Millisecond, math.MaxUint32))
}
