package server

import (
	"fmt"
	"testing"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

func batchOf(conv, user, dev ulid.ULID, first uint64, bodies ...string) engine.Batch {
	b := engine.Batch{Conv: conv}
	for i, body := range bodies {
		b.Ops = append(b.Ops, model.Op{ID: ulid.Make(), Conv: conv, Seq: first + uint64(i), User: user,
			Dot: model.Dot{Device: dev, N: first + uint64(i)}, Kind: model.KindMessage, Body: []byte(body), ContentType: "text/plain"})
	}
	return b
}

// TestLiveBatchesEncodeAsSent: a live Ops message whose batches come
// encoded reads, on the client's side, exactly as the message built and
// marshaled whole, rows or packed, with one batch or several, and so does
// a catch-up's packed message; the second
// session to send a batch gets the first's encoding; and a batch read again
// after a delete for everyone erased one of its messages is encoded anew,
// never served with the body from before.
func TestLiveBatchesEncodeAsSent(t *testing.T) {
	s := &Server{}
	conv, other, user, dev := ulid.Make(), ulid.Make(), ulid.Make(), ulid.Make()
	one := batchOf(conv, user, dev, 7, "hello", "how are you?")
	two := batchOf(other, user, dev, 3, "lunch?")
	roundTrip := func(m *ferryv1.Ops) *ferryv1.Ops {
		t.Helper()
		b, err := proto.Marshal(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Ops{Ops: m}})
		if err != nil {
			t.Fatal(err)
		}
		var got ferryv1.SyncResponse
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		return got.GetOps()
	}
	check := func(ev engine.Event, packed bool) {
		t.Helper()
		whole, err := s.opsMessage(ev, packed, false)
		if err != nil {
			t.Fatal(err)
		}
		encoded, err := s.opsMessage(ev, packed, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(encoded.GetBatches())+len(encoded.GetPacked()) != 0 || len(encoded.ProtoReflect().GetUnknown()) == 0 {
			t.Fatalf("packed %v, phase %v: the message was not sent encoded", packed, ev.Phase)
		}
		if got, want := roundTrip(encoded), roundTrip(whole); !proto.Equal(got, want) {
			t.Fatalf("packed %v: encoded once, the client reads\n%v\nwant\n%v", packed, got, want)
		}
	}
	for _, packed := range []bool{true, false} {
		check(engine.Event{Kind: engine.EventOps, Phase: engine.PhaseLive, FeedPos: 41, Batches: []engine.Batch{one}}, packed)
		check(engine.Event{Kind: engine.EventOps, Phase: engine.PhaseLive, FeedPos: 42, Batches: []engine.Batch{one, two}}, packed)
	}
	// A catch-up's packed batches are encoded straight into the message
	// too (not cached).
	check(engine.Event{Kind: engine.EventOps, Phase: engine.PhaseBackfill, Batches: []engine.Batch{one, two}}, true)

	// Another session's round: the same encoding, not a new one.
	a, err := s.batches.field(&one, true)
	if err != nil {
		t.Fatal(err)
	}
	again := engine.Batch{Conv: conv, Ops: append([]model.Op(nil), one.Ops...)} // as another session read it
	b, err := s.batches.field(&again, true)
	if err != nil {
		t.Fatal(err)
	}
	if &a[0] != &b[0] {
		t.Fatal("a second session's round encoded the batch again")
	}

	// "hello" is deleted for everyone: a round that reads the range again
	// sends it erased.
	erased := engine.Batch{Conv: conv, Ops: append([]model.Op(nil), one.Ops...)}
	erased.Ops[0].Body, erased.Ops[0].ContentType, erased.Ops[0].Erased = nil, "", true
	for _, packed := range []bool{true, false} {
		check(engine.Event{Kind: engine.EventOps, Phase: engine.PhaseLive, FeedPos: 43, Batches: []engine.Batch{erased}}, packed)
	}
}

// BenchmarkOpsMessagePacked measures packing a batch of chat messages into
// an Ops message, as a live round (16 ops, encoded for the cache) and as a
// catch-up's (1,000 ops), then marshaling it as Connect does.
func BenchmarkOpsMessagePacked(b *testing.B) {
	conv, user, dev := ulid.Make(), ulid.Make(), ulid.Make()
	for _, n := range []int{16, 1000} {
		bodies := make([]string, n)
		for i := range bodies {
			bodies[i] = fmt.Sprintf("message %d: are we still on for lunch tomorrow at the usual place?", i)
		}
		batch := batchOf(conv, user, dev, 1, bodies...)
		phase := engine.PhaseBackfill
		if n == 16 {
			phase = engine.PhaseLive
		}
		b.Run(fmt.Sprintf("ops=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s := &Server{} // an empty cache: every live batch is encoded
				m, err := s.opsMessage(engine.Event{Kind: engine.EventOps, Phase: phase, Batches: []engine.Batch{batch}}, true, true)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := proto.Marshal(m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpsFromBatches measures decoding a push of 16 messages: ids
// parsed, fields named only for an error.
func BenchmarkOpsFromBatches(b *testing.B) {
	dev := ulid.Make().String()
	ops := make([]*ferryv1.Op, 16)
	for i := range ops {
		ops[i] = &ferryv1.Op{Id: ulid.Make().String(), DeviceId: dev, Dot: uint64(i + 1),
			Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: []byte("hello there, how are you today?"), ContentType: "text/plain"}}}
	}
	batches := []*ferryv1.OpBatch{{ConversationId: ulid.Make().String(), Ops: ops}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := opsFromBatches(batches, maxOpsPerPush); err != nil {
			b.Fatal(err)
		}
	}
}
