package clientsdk

import (
	"context"
	"errors"
	"testing"

	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// signedInDevice is a device on an in-memory store, signed in as a
// made-up user, holding conv, and a session of it that has sent nothing.
func signedInDevice(t *testing.T) (*Device, ulid.ULID, *session) {
	t.Helper()
	d := memoryDevice(t)
	conv := ulid.Make()
	d.mu.Lock()
	d.creds = &credentials{User: ulid.Make().String(), Device: ulid.Make().String(), Username: "me"}
	d.convs[conv] = &convRecord{Title: "c", Role: ferryv1.Role_ROLE_MEMBER}
	d.mu.Unlock()
	s := &session{d: d, flushWake: make(chan struct{}, 1), inflight: map[uint64][]ulid.ULID{}, sent: map[ulid.ULID]uint64{}}
	t.Cleanup(func() {
		if s.wait != nil {
			s.wait.Stop()
		}
	})
	return d, conv, s
}

// sendTexts puts texts in d's outbox, in order, and returns their ids.
func sendTexts(t *testing.T, d *Device, conv ulid.ULID, texts ...string) []ulid.ULID {
	t.Helper()
	var ids []ulid.ULID
	for _, text := range texts {
		id, err := d.SendText(context.Background(), conv, text)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// dotOf is the dot of a pending op.
func dotOf(t *testing.T, d *Device, id ulid.ULID) uint64 {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	_, op, err := d.outboxOp(d.pending[id].local)
	if err != nil {
		t.Fatal(err)
	}
	return op.GetDot()
}

// TestRefusedOpAmongDeferredOnesKeepsTheirDots: a push whose valid ops
// the server turns away for now (RETRY_LATER) and whose malformed op it
// refuses for good frees only the refused op's dot: the op before it,
// never stored, keeps its dot, and the one after it takes the freed one.
// (Numbering from the refused op's dot moved the first op too, leaving a
// gap that the next push was refused for.)
func TestRefusedOpAmongDeferredOnesKeepsTheirDots(t *testing.T) {
	d, conv, s := signedInDevice(t)
	ids := sendTexts(t, d, conv, "o1", "o2", "o3")
	if err := s.results(&ferryv1.PushResult{RetryAfterMs: 1000, Results: []*ferryv1.OpResult{
		{OpId: ids[0].String(), Status: ferryv1.OpStatus_OP_STATUS_RETRY_LATER, Message: "the disk is nearly full"},
		{OpId: ids[1].String(), Status: ferryv1.OpStatus_OP_STATUS_REJECTED, Reason: ferryv1.RejectReason_REJECT_REASON_INVALID},
		{OpId: ids[2].String(), Status: ferryv1.OpStatus_OP_STATUS_RETRY_LATER},
	}}); err != nil {
		t.Fatal(err)
	}
	if d1, d3 := dotOf(t, d, ids[0]), dotOf(t, d, ids[2]); d1 != 1 || d3 != 2 {
		t.Fatalf("o1 has dot %d and o3 dot %d; want 1 and 2 (o1 was not stored, o2 took no dot)", d1, d3)
	}
	if next := d.convs[conv].NextDot; next != 2 {
		t.Fatalf("the conversation's last dot is %d, want 2", next)
	}
}

// TestAnAnswerThatTookNothingKeepsTheHold: while the server holds a
// device's pushes back (RETRY_LATER), the answer to a push sent before
// that, whose ops it refused as dot gaps behind the held ones, does not
// end the hold: the server took nothing, so the status still says ops
// wait, and the held ops wait for their time.
func TestAnAnswerThatTookNothingKeepsTheHold(t *testing.T) {
	d, conv, s := signedInDevice(t)
	ids := sendTexts(t, d, conv, "o1", "o2")
	s.inflight[1], s.inflight[2] = ids[:1], ids[1:]
	s.sent[ids[0]], s.sent[ids[1]] = 1, 2
	if err := s.results(&ferryv1.PushResult{RequestId: 1, RetryAfterMs: 60_000, Results: []*ferryv1.OpResult{
		{OpId: ids[0].String(), Status: ferryv1.OpStatus_OP_STATUS_RETRY_LATER, Message: "the push limit"}}}); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); !errors.Is(st.Err, ErrPushDeferred) {
		t.Fatalf("status %+v after RETRY_LATER, want ErrPushDeferred", st)
	}
	if err := s.results(&ferryv1.PushResult{RequestId: 2, Results: []*ferryv1.OpResult{
		{OpId: ids[1].String(), Status: ferryv1.OpStatus_OP_STATUS_REJECTED, Reason: ferryv1.RejectReason_REJECT_REASON_DOT_GAP}}}); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	held := !s.pushAt.IsZero()
	s.mu.Unlock()
	if st := d.Status(); !held || !errors.Is(st.Err, ErrPushDeferred) {
		t.Fatalf("after an answer that took nothing: held %v, status %+v; want the hold and its status", held, st)
	}
	// An answer that takes an op ends it.
	if err := s.results(&ferryv1.PushResult{RequestId: 3, Results: []*ferryv1.OpResult{
		{OpId: ids[0].String(), Status: ferryv1.OpStatus_OP_STATUS_ACCEPTED, Seq: 2}}}); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); errors.Is(st.Err, ErrPushDeferred) {
		t.Fatalf("status %+v after the server took an op, want the hold over", st)
	}
}

// TestAnAnswerForAnEchoedOpEndsTheHold: an answer that took an op whose
// echo came first (the op then no longer pending) ends a hold as any
// answer that took an op does.
func TestAnAnswerForAnEchoedOpEndsTheHold(t *testing.T) {
	d, conv, s := signedInDevice(t)
	ids := sendTexts(t, d, conv, "o1", "o2")
	if err := s.results(&ferryv1.PushResult{RequestId: 1, RetryAfterMs: 1, Results: []*ferryv1.OpResult{
		{OpId: ids[0].String(), Status: ferryv1.OpStatus_OP_STATUS_RETRY_LATER, Message: "the push limit"},
		{OpId: ids[1].String(), Status: ferryv1.OpStatus_OP_STATUS_RETRY_LATER}}}); err != nil {
		t.Fatal(err)
	}
	// o1 goes again and is taken; its echo lands first, which takes it
	// out of the outbox as applying ops does.
	d.mu.Lock()
	b := d.db.NewBatch()
	b.Delete(seqKey(tOutbox, d.pending[ids[0]].local))
	if err := d.db.Commit(b); err != nil {
		t.Fatal(err)
	}
	delete(d.pending, ids[0])
	d.mu.Unlock()
	if err := s.results(&ferryv1.PushResult{RequestId: 2, Results: []*ferryv1.OpResult{
		{OpId: ids[0].String(), Status: ferryv1.OpStatus_OP_STATUS_ACCEPTED, Seq: 2}}}); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); errors.Is(st.Err, ErrPushDeferred) {
		t.Fatalf("status %+v after the server took the held op, want the hold over", st)
	}
}
