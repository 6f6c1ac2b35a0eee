package clientsdk

import (
	"testing"

	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// memoryDevice opens a device on an in-memory store, closed with the test.
func memoryDevice(t *testing.T) *Device {
	t.Helper()
	d, err := OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// acceptedOp hands s a push result accepting a pending op of conv at seq,
// without a feed position, and takes the op out of the outbox as results
// does, moving the conversation's head to it.
func acceptedOp(s *session, conv ulid.ULID, seq uint64) {
	d := s.d
	op := ulid.Make()
	d.mu.Lock()
	d.pending[op] = pendingRef{conv: conv}
	d.mu.Unlock()
	s.accepted([]*ferryv1.OpResult{{ConversationId: conv.String(), OpId: op.String(), Status: ferryv1.OpStatus_OP_STATUS_ACCEPTED, Seq: seq}})
	d.mu.Lock()
	delete(d.pending, op)
	d.convs[conv].Head = max(d.convs[conv].Head, seq)
	d.mu.Unlock()
}

// TestSyncOnceWaitsForItsPushesRound: SyncOnce ends once the round that
// brings a push's change has ended, in whichever order the server sends
// the push's result and that round's messages (a result can come between
// them). The server sends no round when nothing changed, so SyncOnce must
// not wait for another after a round that came first.
func TestSyncOnceWaitsForItsPushesRound(t *testing.T) {
	d := memoryDevice(t)
	conv := ulid.Make()
	s := &session{d: d, inflight: map[uint64][]ulid.ULID{}, sent: map[ulid.ULID]uint64{}}
	push := func(seq uint64) { acceptedOp(s, conv, seq) }
	// A live round: its infos, then (after end) its ops with a feed
	// position.
	info := func(head uint64) {
		t.Helper()
		d.mu.Lock()
		d.convs[conv].Head = max(d.convs[conv].Head, head)
		d.mu.Unlock()
		s.seen([]*ferryv1.ConversationInfo{{Id: conv.String(), Head: head}})
	}
	end := func() { s.opsArrived(&ferryv1.Ops{Phase: ferryv1.Phase_PHASE_LIVE, FeedPos: 9}) }
	// wantIdle checks whether SyncOnce could end now; failure says why not.
	wantIdle := func(want bool, failure string) {
		t.Helper()
		if s.idle() != want {
			t.Fatal(failure)
		}
	}
	d.mu.Lock()
	d.convs[conv] = &convRecord{Head: 1}
	d.mu.Unlock()

	// The result first: wait for the round.
	push(2)
	wantIdle(false, "idle with the round of an accepted push still to come")
	info(1) // an older round
	end()
	wantIdle(false, "idle after a round that does not reach the accepted op")
	info(2)
	wantIdle(false, "idle in the middle of the round of the accepted op")
	end()
	wantIdle(true, "not idle after the round of the accepted op")

	// The result between the round's infos and its ops: wait for its end.
	info(3)
	push(3)
	wantIdle(false, "idle in the middle of a round, after a push result")
	end()
	wantIdle(true, "not idle after the round, its push result in the middle")

	// The round first: nothing more to wait for.
	info(4)
	end()
	push(4)
	wantIdle(true, "waiting for a round that came before the push's result")
}

// TestSyncOnceEndsWithoutALeftOutInfo: the ops accepted by results that
// came before CaughtUp wait for the first live round only: a server plans
// it after those commits, so an info it did not bring is of a
// conversation the server leaves out (damaged in its store), and SyncOnce
// ends without it. Results after CaughtUp still wait for their round.
func TestSyncOnceEndsWithoutALeftOutInfo(t *testing.T) {
	d := memoryDevice(t)
	left, other := ulid.Make(), ulid.Make()
	s := &session{d: d, inflight: map[uint64][]ulid.ULID{}, sent: map[ulid.ULID]uint64{}}
	push := func(conv ulid.ULID, seq uint64) { acceptedOp(s, conv, seq) }
	end := func() { s.opsArrived(&ferryv1.Ops{Phase: ferryv1.Phase_PHASE_LIVE, FeedPos: 9}) }
	d.mu.Lock()
	d.convs[left], d.convs[other] = &convRecord{Head: 1}, &convRecord{Head: 1}
	d.mu.Unlock()

	push(left, 2) // in the catch-up
	s.caughtUp(5)
	if s.idle() {
		t.Fatal("idle with the first live round still to come")
	}
	end() // it brings no info of left
	if !s.idle() {
		t.Fatal("not idle after the first live round, which left the conversation out")
	}
	push(other, 2) // after CaughtUp: an older round may end first
	end()
	if s.idle() {
		t.Fatal("idle after a round that need not reach a result that came after CaughtUp")
	}

	// The first live round's end in a push's result (its position left to
	// the result while the push was in flight): a position other than
	// CaughtUp's says a round ended since; CaughtUp's does not.
	s = &session{d: d, inflight: map[uint64][]ulid.ULID{}, sent: map[ulid.ULID]uint64{}}
	push(left, 3)
	s.caughtUp(5)
	s.resultEnds(5) // answered with no round since CaughtUp
	if s.idle() {
		t.Fatal("idle after a result at CaughtUp's position, no round since")
	}
	s.resultEnds(7)
	if !s.idle() {
		t.Fatal("not idle after a result that ended the first live round")
	}
}

// TestRepushStaysInFlight: an op pushed again before its first push is
// answered (renumbered ops go again, in flight or not) stays in flight
// until the later push is answered: the earlier answer does not free it
// for flush to push a third time.
func TestRepushStaysInFlight(t *testing.T) {
	d := memoryDevice(t)
	op := ulid.Make()
	s := &session{d: d, inflight: map[uint64][]ulid.ULID{1: {op}, 2: {op}}, sent: map[ulid.ULID]uint64{op: 2}}
	if err := s.results(&ferryv1.PushResult{RequestId: 1}); err != nil {
		t.Fatal(err)
	}
	if s.sent[op] != 2 {
		t.Fatalf("after the first push's answer the op is in flight with push %d; want 2, which holds it still", s.sent[op])
	}
	if err := s.results(&ferryv1.PushResult{RequestId: 2}); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.sent[op]; ok || len(s.inflight) != 0 {
		t.Fatalf("both pushes answered: in flight %v, pushes %v; want neither", s.sent, s.inflight)
	}
}
