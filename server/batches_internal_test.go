package server

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/feedseal"
	"github.com/ferrysync/ferry/internal/wire"
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
	s := &Server{seal: testSeal(t)}
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

// TestLiveFieldsAllocateOnce: a live round of several batches, each
// encoded already, costs one buffer of their total size, whatever their
// number, holding them in order.
func TestLiveFieldsAllocateOnce(t *testing.T) {
	s := &Server{seal: testSeal(t)}
	conv, user := ulid.Make(), ulid.Make()
	var bs []engine.Batch
	var want []byte
	for i := range 5 {
		bs = append(bs, batchOf(conv, user, ulid.Make(), uint64(1+10*i), chatOf(fmt.Sprint("device ", i), 10)...))
		f, err := s.batches.field(&bs[i], true) // encoded, as by an earlier session
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, f...)
	}
	got, err := s.batches.fields(bs, true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || cap(got) != len(want) {
		t.Fatalf("fields gave %d bytes in a buffer of %d, want the %d bytes of the batches' fields in order", len(got), cap(got), len(want))
	}
	if n := testing.AllocsPerRun(20, func() { _, _ = s.batches.fields(bs, true) }); n != 1 {
		t.Fatalf("a round of %d encoded batches took %v allocations, want 1", len(bs), n)
	}
}

// chatOf returns n message bodies of a chat's length.
func chatOf(who string, n int) []string {
	bodies := make([]string, n)
	for i := range bodies {
		bodies[i] = fmt.Sprintf("%s says: message %d of a burst, long enough to be worth compressing", who, i)
	}
	return bodies
}

// run joins batches of consecutive seqs into one, as a session reads a
// conversation's range.
func run(bs ...engine.Batch) engine.Batch {
	out := engine.Batch{Conv: bs[0].Conv}
	for _, b := range bs {
		out.Ops = append(out.Ops, b.Ops...)
	}
	return out
}

// TestLiveRoundsShareEachAuthorsBatch: a conversation of three whose
// members each pushed a burst in one commit. Each member's live round
// holds the two others' ops, one range of seqs for the first and third
// members: the round is cut where the author changes, each author's batch
// goes as a zstd frame of its own, and the batch two rounds share is
// compressed once. Both rounds arrive whole, in seq order.
func TestLiveRoundsShareEachAuthorsBatch(t *testing.T) {
	s := &Server{seal: testSeal(t)}
	conv := ulid.Make()
	users := []ulid.ULID{ulid.Make(), ulid.Make(), ulid.Make()}
	devs := []ulid.ULID{ulid.Make(), ulid.Make(), ulid.Make()}
	burst := make([]engine.Batch, 3)
	for i := range burst {
		burst[i] = batchOf(conv, users[i], devs[i], uint64(1+10*i), chatOf(users[i].String(), 10)...)
	}
	rounds := []struct {
		batches []engine.Batch
		want    []engine.Batch // as the member reads them
	}{
		{[]engine.Batch{run(burst[1], burst[2])}, []engine.Batch{burst[1], burst[2]}},
		{[]engine.Batch{burst[0], burst[2]}, []engine.Batch{burst[0], burst[2]}}, // the second member's ops split the range
	}
	z := compression.NewZstd(compression.WithMemo(), compression.WithShared(sharedBatches))
	var third [][]byte // the third member's batch, as each round holds it
	for i, r := range rounds {
		ev := engine.Event{Kind: engine.EventOps, Phase: engine.PhaseLive, FeedPos: 9, Batches: r.batches}
		m, err := s.opsMessage(ev, true, true)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := proto.Marshal(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Ops{Ops: m}})
		if err != nil {
			t.Fatal(err)
		}
		spans := sharedBatches(msg, nil)
		if len(spans) != 2 {
			t.Fatalf("round %d: %d shared spans; want one for each author's batch", i, len(spans))
		}
		third = append(third, msg[spans[1].Start:spans[1].End])

		var buf bytes.Buffer
		w, _ := z.Compress(&buf)
		w.Write(msg)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if frames := bytes.Count(buf.Bytes(), []byte{0x28, 0xb5, 0x2f, 0xfd}); frames != 3 {
			t.Errorf("round %d went as %d zstd frames; want 3: the message's start, and each batch", i, frames)
		}
		r2, _ := z.Decompress(&buf)
		plain, err := io.ReadAll(r2)
		r2.Close()
		if err != nil || !bytes.Equal(plain, msg) {
			t.Fatalf("round %d came back as %d bytes (%v); want %d", i, len(plain), err, len(msg))
		}
		var got ferryv1.SyncResponse
		if err := proto.Unmarshal(plain, &got); err != nil {
			t.Fatal(err)
		}
		packed := got.GetOps().GetPacked()
		if pos, err := s.seal.Open(got.GetOps().GetFeedPos()); len(packed) != len(r.want) || err != nil || pos != 9 {
			t.Fatalf("round %d: %d packed batches, feed position %d (%v); want %d, 9", i, len(packed), pos, err, len(r.want))
		}
		for j, p := range packed {
			_, ops, err := wire.UnpackBatch("packed", p)
			if err != nil {
				t.Fatal(err)
			}
			want := r.want[j].Ops
			if len(ops) != len(want) || ops[0].Seq != want[0].Seq || ops[0].ID != want[0].ID || string(ops[9].Body) != string(want[9].Body) {
				t.Fatalf("round %d, batch %d: %d ops from seq %d; want %d from %d", i, j, len(ops), ops[0].Seq, len(want), want[0].Seq)
			}
		}
	}
	// What lets the compressor's memo compress it once.
	if !bytes.Equal(third[0], third[1]) {
		t.Error("the third member's batch is not the same bytes in both rounds")
	}
}

// TestByAuthorCutsLongRuns: a live batch is cut where its author changes
// between runs of minRun ops or more, and only there.
func TestByAuthorCutsLongRuns(t *testing.T) {
	conv := ulid.Make()
	var devs [3]ulid.ULID
	for i := range devs {
		devs[i] = ulid.Make()
	}
	// runs gives a batch of runs of n[i] ops by author i%3, and the
	// lengths byAuthor cuts it into.
	cut := func(n ...int) []int {
		var b engine.Batch
		b.Conv = conv
		seq := uint64(1)
		for i, k := range n {
			for range k {
				b.Ops = append(b.Ops, model.Op{Conv: conv, Seq: seq, Dot: model.Dot{Device: devs[i%3], N: seq}})
				seq++
			}
		}
		var lens []int
		for _, x := range byAuthor([]engine.Batch{b}) {
			lens = append(lens, len(x.Ops))
		}
		return lens
	}
	for _, c := range []struct {
		runs, want []int
	}{
		{[]int{16}, []int{16}},
		{[]int{8, 8}, []int{8, 8}},
		{[]int{7, 9}, []int{16}},
		{[]int{9, 7}, []int{16}},
		{[]int{16, 16, 16}, []int{16, 16, 16}},
		{[]int{16, 1, 16}, []int{16, 17}},
		{[]int{4, 16, 16}, []int{20, 16}},
		{[]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, []int{10}},
	} {
		if got := cut(c.runs...); !slices.Equal(got, c.want) {
			t.Errorf("runs %v cut into %v; want %v", c.runs, got, c.want)
		}
	}
	// A round whose batches are not cut is the same slice.
	bs := []engine.Batch{batchOf(conv, ulid.Make(), devs[0], 1, "a", "b")}
	if got := byAuthor(bs); &got[0] != &bs[0] {
		t.Error("a round with nothing to cut was copied")
	}
}

// TestSharedBatchesOfOtherMessages: only a live round's batches are
// shared; a catch-up's are compressed together, as is any other message.
func TestSharedBatchesOfOtherMessages(t *testing.T) {
	s := &Server{seal: testSeal(t)}
	conv, user, dev := ulid.Make(), ulid.Make(), ulid.Make()
	big := batchOf(conv, user, dev, 1, chatOf("someone", 10)...)
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	backfill, err := s.opsMessage(engine.Event{Kind: engine.EventOps, Phase: engine.PhaseBackfill, Batches: []engine.Batch{big}}, true, true)
	if err != nil {
		t.Fatal(err)
	}
	live, err := s.opsMessage(engine.Event{Kind: engine.EventOps, Phase: engine.PhaseLive, FeedPos: 3, Batches: []engine.Batch{big}}, true, true)
	if err != nil {
		t.Fatal(err)
	}
	liveMsg := marshal(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Ops{Ops: live}})
	if n := len(sharedBatches(liveMsg, nil)); n != 1 {
		t.Fatalf("a live round of one batch had %d shared spans; want 1", n)
	}
	for name, msg := range map[string][]byte{
		"catch-up":        marshal(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Ops{Ops: backfill}}),
		"conversations":   marshal(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Conversations{Conversations: &ferryv1.Conversations{}}}),
		"live, truncated": liveMsg[:len(liveMsg)-1],
		"live, trailing":  append(slices.Clone(liveMsg), 0),
		"json":            []byte(`{"ops":{"phase":"PHASE_LIVE"}}`),
	} {
		if spans := sharedBatches(msg, nil); len(spans) != 0 {
			t.Errorf("%s: shared spans %v; want none", name, spans)
		}
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
			seal := testSeal(b)
			for b.Loop() {
				s := &Server{seal: seal} // an empty cache: every live batch is encoded
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
		if _, _, err := opsFromBatches(batches, maxOpsPerPush); err != nil {
			b.Fatal(err)
		}
	}
}

// testSeal seals feed positions with a fixed key.
func testSeal(t testing.TB) *feedseal.Codec {
	c, err := feedseal.New([]byte("0123456789abcdef"), 0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
