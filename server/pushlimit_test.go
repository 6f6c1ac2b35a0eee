package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestPushLimit: a user over the push limit is slowed down, not failed:
// a push waits for the user's bucket, on a unary call and on a Sync
// stream, whose session outlives three heartbeat intervals of waiting.
// Only pushes that pile up more than ten seconds of debt are refused, and
// they store nothing.
func TestPushLimit(t *testing.T) {
	const rate = 100 // ops a second
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.PushLimit, o.PushBurst = rate, 1000
		o.HeartbeatInterval = time.Second
	}})
	alice := newDev(t, srv.Register("alice"))
	bob := newDev(t, srv.Register("bob"))
	conv := alice.createConv("room", bob)              // 2 ops of alice's 1000
	alice.push(conv, messages(alice, conv, 998, 0)...) // the burst, at once
	if m := srv.Server.Metrics(); m.PushesThrottled != 0 {
		t.Fatalf("%d pushes throttled within the burst", m.PushesThrottled)
	}
	bob.send(conv, "bob's bucket is his own")

	// waitThrottled waits until a push waits for the limit, its timer
	// armed.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	throttled := make(chan struct{}, 10)
	server.OnThrottle(srv.Server, func() { throttled <- struct{}{} })
	waitThrottled := func() {
		t.Helper()
		select {
		case <-throttled:
		case <-ctx.Done():
			t.Fatalf("no push waited for the limit")
		}
	}

	// A unary push of 50 more waits half a second.
	done := make(chan []*ferryv1.OpResult, 1)
	go func() {
		resp, err := alice.Sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(alice, conv, 50, 0)}}})
		if err != nil {
			t.Errorf("throttled push: %v", err)
		}
		done <- resp.GetResults()
	}()
	waitThrottled()
	// Meanwhile, a push in parallel that would wait more than ten seconds
	// is refused, and stores nothing.
	_, err := alice.Sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(alice, conv, 1000, 0)}}})
	mustCode(t, "a push of 10 s past the limit", err, connect.CodeResourceExhausted)
	if !strings.Contains(err.Error(), "push limit, 100 ops a second") || !strings.Contains(err.Error(), "retry in") {
		t.Fatalf("refusal says %q: want the limit and when to retry", err)
	}
	// 1,000 ops at 100 a second, behind the 50 waiting: 10.5 s, of which
	// the 10 a push may wait are not the client's.
	if d, ok := retryDelay(err); !ok || d < 400*time.Millisecond || d > 600*time.Millisecond {
		t.Fatalf("refusal's retry delay %v (%v), want about half a second, as a detail", d, ok)
	}
	alice.dots[conv] -= 1000 // not taken: the next op reuses them
	if m := srv.Server.Metrics(); m.PushesRefused != 1 {
		t.Fatalf("%d pushes refused, want 1", m.PushesRefused)
	}
	// On a Sync stream whose client asked for it, the same refusal answers
	// each op RETRY_LATER, with the delay, and the session goes on.
	h := hello("", 0)
	h.RetryLater = true
	s := alice.open(h)
	s.untilCaughtUp()
	s.push(6, conv, messages(alice, conv, 1000, 0)...)
	r := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
	if len(r.GetResults()) != 1000 {
		t.Fatalf("a stream's push of 10 s past the limit: %d results, want 1000", len(r.GetResults()))
	}
	for i, res := range r.GetResults() {
		// The first result names the limit, once for the push.
		if res.GetStatus() != ferryv1.OpStatus_OP_STATUS_RETRY_LATER || (i == 0) != strings.Contains(res.GetMessage(), "push limit, 100 ops a second") || i > 0 && res.GetMessage() != "" {
			t.Fatalf("a stream's push of 10 s past the limit answered op %d %v, want RETRY_LATER, naming the limit in the first result only", i, res)
		}
	}
	if d := r.GetRetryAfterMs(); d < 400 || d > 600 {
		t.Fatalf("a stream's refused push: retry_after_ms %d, want about 500", d)
	}
	alice.dots[conv] -= 1000
	seq := bob.send(conv, "the session is live")
	s.until(func(m *ferryv1.SyncResponse) bool { _, ok := s.held[conv][seq]; return ok })
	s.close()
	if m := srv.Server.Metrics(); m.PushesRefused != 2 || m.PushOps["retry_later"] != 1000 {
		t.Fatalf("%d pushes refused, %d ops to retry later; want 2 and 1000", m.PushesRefused, m.PushOps["retry_later"])
	}
	page, err := alice.Sync.History(ctx, &ferryv1.HistoryRequest{ConversationId: conv, Range: &ferryv1.HistoryRequest_AfterSeq{AfterSeq: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	// 2 + 998 + bob's 2; the 50 are still waiting.
	if page.GetHead() != 1002 {
		t.Fatalf("head %d after the refused pushes, want 1002", page.GetHead())
	}

	srv.Clock.Advance(499 * time.Millisecond)
	select {
	case <-done:
		t.Fatal("the push went ahead before the bucket had its ops")
	default:
	}
	srv.Clock.Advance(time.Millisecond)
	if res := <-done; len(res) != 50 || res[0].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED {
		t.Fatalf("throttled push answered %v", res)
	}

	// On a Sync stream, a push of 500 waits five seconds: more than three
	// heartbeat intervals without a message from the client, who cannot
	// send while the server does not read. The session lives on, answers
	// the push, and still ends a client that then falls silent.
	s = alice.open(hello("", 0))
	s.untilCaughtUp()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{RequestId: 7,
		Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(alice, conv, 500, 0)}}}}})
	waitThrottled()
	for range 5 {
		srv.Clock.Advance(time.Second)
	}
	r = s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
	if r.GetRequestId() != 7 || len(r.GetResults()) != 500 || r.GetResults()[499].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED {
		t.Fatalf("push result %d with %d results", r.GetRequestId(), len(r.GetResults()))
	}
	msgs, errs := reader(s)
	var end error
	for round := 0; round < 20 && end == nil; round++ {
		armed := srv.Clock.Armed()
		srv.Clock.Advance(time.Second)
		select {
		case <-msgs:
		case end = <-errs:
		case <-armed:
		}
	}
	// Twenty seconds are past the silence's limit: its end is on its way
	// (on a loaded machine, the rounds can pass before it comes).
	for timeout := time.After(time.Minute); end == nil; {
		select {
		case <-msgs:
		case end = <-errs:
		case <-timeout:
			end = errors.New("no end within a minute")
		}
	}
	mustCode(t, "a client silent after its throttled push", end, connect.CodeDeadlineExceeded)

	// Pushes waiting when the server goes away store nothing. A Sync
	// session still says Goaway, and so when to reconnect; a unary push is
	// told to push again after reconnecting.
	srv.Clock.Advance(time.Hour)                        // the bucket refills
	alice.push(conv, messages(alice, conv, 1000, 0)...) // and empties
	s = alice.open(hello("", 0))
	s.untilCaughtUp()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{RequestId: 8,
		Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(alice, conv, 10, 0)}}}}})
	waitThrottled()
	errc := make(chan error, 1)
	go func() {
		_, err := alice.Sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(alice, conv, 10, 0)}}})
		errc <- err
	}()
	waitThrottled()
	srv.Server.GoAway()
	mustCode(t, "a throttled push as the server goes away", <-errc, connect.CodeUnavailable)
	if m := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetGoaway() != nil || m.GetPushResult() != nil }); m.GetGoaway() == nil {
		t.Fatalf("a Sync session with a throttled push got %v, not Goaway, as the server went away", m)
	}
	if m := srv.Server.Metrics(); m.PushOps["accepted"] != 2+998+2+50+500+1000 {
		t.Fatalf("%d ops accepted, want 2552: the last pushes stored nothing", m.PushOps["accepted"])
	}
}

// TestAcksSpendThePushLimit: an ack is a write, and spends one op of its
// user's push limit, on a unary Ack and on a Sync stream: a client that
// acks in a loop waits like one that pushes in a loop.
func TestAcksSpendThePushLimit(t *testing.T) {
	const rate = 10 // ops a second
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.PushLimit, o.PushBurst = rate, 1000
	}})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("room")                   // 1 op of the 1000
	alice.push(conv, messages(alice, conv, 996, 0)...) // 997
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	throttled := make(chan struct{}, 10)
	server.OnThrottle(srv.Server, func() { throttled <- struct{}{} })
	ack := func() error {
		_, err := alice.Sync.Ack(ctx, &ferryv1.AckRequest{Markers: []*ferryv1.Marker{{ConversationId: conv, Delivered: 1, Read: 1}}})
		return err
	}
	for i := range 3 { // the rest of the burst
		if err := ack(); err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
	}
	if m := srv.Server.Metrics(); m.PushesThrottled != 0 {
		t.Fatalf("%d calls throttled within the burst", m.PushesThrottled)
	}

	// The next ack waits a tenth of a second.
	done := make(chan error, 1)
	go func() { done <- ack() }()
	select {
	case <-throttled:
	case <-ctx.Done():
		t.Fatal("an ack past the burst did not wait for the limit")
	}
	select {
	case err := <-done:
		t.Fatalf("the ack was answered before the bucket had its op: %v", err)
	default:
	}
	srv.Clock.Advance(100 * time.Millisecond)
	if err := <-done; err != nil {
		t.Fatalf("throttled ack: %v", err)
	}

	// On a Sync stream too.
	s := alice.open(hello("", 0))
	s.untilCaughtUp()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Ack{Ack: &ferryv1.Ack{
		Markers: []*ferryv1.Marker{{ConversationId: conv, Delivered: 1}}}}})
	select {
	case <-throttled:
	case <-ctx.Done():
		t.Fatal("an ack on the stream past the burst did not wait for the limit")
	}
	srv.Clock.Advance(100 * time.Millisecond)
	if m := srv.Server.Metrics(); m.PushesThrottled != 2 {
		t.Fatalf("%d calls throttled, want the two acks", m.PushesThrottled)
	}
	// The stream goes on: a push a second later is answered at once.
	srv.Clock.Advance(time.Second)
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{RequestId: 1,
		Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{alice.op(conv, msg("after the acks"))}}}}}})
	r := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
	if r.GetResults()[0].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED {
		t.Fatalf("push after the acks: %v", r)
	}
	if m := srv.Server.Metrics(); m.PushesThrottled != 2 || m.PushesRefused != 0 {
		t.Fatalf("%d throttled, %d refused; want the two acks and none", m.PushesThrottled, m.PushesRefused)
	}
}

// TestAnOversizedAckSpendsNothing: an ack of more markers than one ack
// takes is refused before it spends the push limit, on the unary Ack and
// on a Sync stream: it does not leave the user's other devices in debt.
func TestAnOversizedAckSpendsNothing(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.PushLimit, o.PushBurst = 100, 1000
	}})
	alice := newDev(t, srv.Register("alice"))
	phone := newDev(t, srv.Login("alice", "phone"))
	conv := alice.createConv("room") // 1 op of the 1000
	marks := make([]*ferryv1.Marker, 1001)
	for i := range marks {
		marks[i] = &ferryv1.Marker{ConversationId: ulid.Make().String(), Delivered: 1}
	}
	// The old server made the ack wait for the debt it had taken, on a
	// clock that does not move: it would not answer.
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	_, err := alice.Sync.Ack(ctx, &ferryv1.AckRequest{Markers: marks})
	mustCode(t, "an ack of 1001 markers", err, connect.CodeResourceExhausted)
	if !strings.Contains(err.Error(), "1001 markers in one ack; the limit is 1000: split the ack") {
		t.Fatalf("an ack of 1001 markers: %v, want it to say the limit", err)
	}
	s := phone.open(hello("", 0))
	s.untilCaughtUp()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Ack{Ack: &ferryv1.Ack{Markers: marks}}})
	mustCode(t, "a stream's ack of 1001 markers", s.endErr(), connect.CodeResourceExhausted)
	// The rest of the burst is there: 999 ops go at once.
	alice.push(conv, messages(alice, conv, 999, 0)...)
	if m := srv.Server.Metrics(); m.PushesThrottled != 0 || m.PushesRefused != 0 {
		t.Fatalf("%d calls throttled, %d refused; want none", m.PushesThrottled, m.PushesRefused)
	}
}

// TestPushLimitCountsBodies: an op costs one more for every 4 KiB of its
// body, so that the push limit bounds the bytes a user writes, not only
// the ops: 100 messages of 40 KiB spend 1,100 of a burst of 1,000, where
// 100 chat messages spend 100.
func TestPushLimitCountsBodies(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.PushLimit, o.PushBurst = 100, 1000
	}})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("room")                   // 1
	alice.push(conv, messages(alice, conv, 100, 0)...) // 101 spent
	if m := srv.Server.Metrics(); m.PushesThrottled != 0 {
		t.Fatalf("100 short messages were throttled")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	throttled := make(chan struct{}, 1)
	server.OnThrottle(srv.Server, func() { throttled <- struct{}{} })
	done := make(chan error, 1)
	go func() {
		_, err := alice.Sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(alice, conv, 100, 40<<10)}}})
		done <- err
	}()
	select {
	case <-throttled: // 101 + 1,100 is past the burst: 201 ops' worth to wait for
	case err := <-done:
		t.Fatalf("100 messages of 40 KiB went through a bucket of 899 without waiting (%v)", err)
	case <-ctx.Done():
		t.Fatal("no push waited")
	}
	srv.Clock.Advance(2010 * time.Millisecond)
	if err := <-done; err != nil {
		t.Fatalf("the throttled push: %v", err)
	}
}

// TestAckWaitsAtMostTheLongestPushWait: an ack on a Sync stream whose
// user's other devices left a debt of minutes waits ten seconds, as long
// as a push may, not the whole debt: the push behind it is then answered
// at once (RETRY_LATER), not minutes later.
func TestAckWaitsAtMostTheLongestPushWait(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.PushLimit, o.PushBurst = 1, 1000
	}})
	throttled := make(chan struct{}, 10)
	server.OnThrottle(srv.Server, func() { throttled <- struct{}{} })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitThrottled := func(what string) {
		t.Helper()
		select {
		case <-throttled:
		case <-ctx.Done():
			t.Fatalf("%s did not wait for the limit", what)
		}
	}
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("room")                   // 1 op of the 1000
	alice.push(conv, messages(alice, conv, 999, 0)...) // the rest of the burst
	// Another device of alice's pushes 300 more: its push goes ahead, and
	// waits 300 s for the debt.
	laptop := newDev(t, srv.Login("alice", "laptop"))
	go func() {
		_, _ = laptop.Sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(laptop, conv, 300, 0)}}})
	}()
	waitThrottled("the laptop's push")

	h := hello("", 0)
	h.RetryLater = true
	s := alice.open(h)
	s.untilCaughtUp()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Ack{Ack: &ferryv1.Ack{
		Markers: []*ferryv1.Marker{{ConversationId: conv, Delivered: 1000}}}}})
	waitThrottled("the ack")
	s.push(1, conv, alice.op(conv, msg("behind the ack")))
	srv.Clock.Advance(server.MaxPushWait)
	r := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
	if got := r.GetResults()[0].GetStatus(); got != ferryv1.OpStatus_OP_STATUS_RETRY_LATER {
		t.Fatalf("the push behind the ack answered %v, want RETRY_LATER", got)
	}
}
