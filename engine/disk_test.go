package engine_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestDiskPerOp guards the storage format's cost: after a full compaction,
// the live files of a log of chat messages take at most 30 bytes per op
// more than the message bodies (the target), with either of the
// store's compressions. The op id, the dot, the indexes and the feed all
// fit in that because Pebble prefix-compresses keys and compresses blocks.
// A field added to every op record, or another index per op, shows here;
// and CompressSmall, zstd in the bottom levels, must take less room than
// CompressFast.
func TestDiskPerOp(t *testing.T) {
	perOp := map[engine.Compression]float64{}
	for _, c := range []engine.Compression{engine.CompressFast, engine.CompressSmall} {
		perOp[c] = diskPerOp(t, c)
	}
	if small, fast := perOp[engine.CompressSmall], perOp[engine.CompressFast]; small >= fast {
		t.Errorf("disk per op %.1f B with CompressSmall, %.1f B with CompressFast: want less", small, fast)
	}
}

// An unknown compression is refused when the engine opens.
func TestOpenRefusesUnknownCompression(t *testing.T) {
	o := enginetest.Options(t, 1)
	o.Compression = 7
	e, err := engine.Open("db", o)
	if err == nil {
		e.Close()
		t.Fatal("opened with Compression 7")
	}
	if !strings.Contains(err.Error(), "Compression must be CompressFast or CompressSmall, got Compression(7)") {
		t.Errorf("error %q does not name the option and its value", err)
	}
}

// diskPerOp writes 10,000 chat messages to a store with the compression
// c and returns the disk they took per op, checking it against the target.
func diskPerOp(t *testing.T, c engine.Compression) float64 {
	e := enginetest.New(t, func(o *engine.Options) { o.Compression = c })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	convs := make([]ulid.ULID, 10)
	for i := range convs {
		convs[i] = alice.Create("chat", bob)
	}
	before, err := e.DiskUsage(true)
	if err != nil {
		t.Fatal(err)
	}
	const n = 10_000
	text := chatText(rand.New(rand.NewPCG(1, 2)), n)
	payload := 0
	for k := 0; k < n; k += 100 {
		ops := make([]model.Op, 0, 100)
		for _, body := range text[k : k+100] {
			payload += len(body)
			ops = append(ops, alice.Op(convs[(k/100)%len(convs)], model.Op{Kind: model.KindMessage, Body: body, ContentType: "text/plain"}))
		}
		alice.Push(ops...)
	}
	after, err := e.DiskUsage(true)
	if err != nil {
		t.Fatal(err)
	}
	perOp := float64(after.Live()-before.Live()) / n
	meanPayload := float64(payload) / n
	t.Logf("compression %v: disk per op %.1f B for %.1f B of payload (%+.1f B); tables %d B, WAL %d B, obsolete %d B, other %d B",
		c, perOp, meanPayload, perOp-meanPayload, after.Tables, after.WAL, after.Obsolete, after.Other)
	if perOp > meanPayload+30 {
		t.Errorf("compression %v: disk per op is %.1f B for %.1f B of payload: more than 30 B over", c, perOp, meanPayload)
	}
	if after.Tables == 0 || after.Tables > after.Live() {
		t.Errorf("compression %v: usage %+v: no tables, or tables beyond the live bytes", c, after)
	}
	return perOp
}

// chatText returns n chat lines of random everyday words, 1 to 40 words
// each.
func chatText(r *rand.Rand, n int) [][]byte {
	words := strings.Fields(`ok yes no thanks see you later lunch coffee meeting deploy release bug fix
		test review merge branch today tomorrow tonight morning great good cool done ready what when where
		why how who this that here there alice bob carol 10am noon 2pm 👍 😂 🎉 the a and or but so to of in on
		at for with is are was be have do will can should sorry hi hey hello`)
	out := make([][]byte, n)
	for i := range out {
		k := 1 + r.IntN(40)
		var b strings.Builder
		for j := range k {
			if j > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(words[r.IntN(len(words))])
		}
		out[i] = []byte(b.String())
	}
	return out
}

// A store written with one compression opens with the other and reads
// what it holds, as reopened and after compacting it with the other.
func TestReopenWithTheOtherCompression(t *testing.T) {
	o := enginetest.Options(t, 1)
	o.Compression = engine.CompressSmall
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("chat")
	text := chatText(rand.New(rand.NewPCG(3, 4)), 200)
	ops := make([]model.Op, len(text))
	for i, body := range text {
		ops[i] = alice.Op(conv, model.Op{Kind: model.KindMessage, Body: body})
	}
	alice.Push(ops...)
	if _, err := e.DiskUsage(true); err != nil { // into tables compressed small
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	o.Compression = engine.CompressFast
	for range 2 { // as reopened, then compacted again
		e, err = engine.Open("db", o)
		if err != nil {
			t.Fatal(err)
		}
		page, err := e.History(alice.Actor, conv, engine.HistoryQuery{After: 0, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, op := range page.Ops {
			if op.Kind == model.KindMessage {
				got = append(got, string(op.Body))
			}
		}
		if len(got) != len(text) || got[0] != string(text[0]) || got[len(got)-1] != string(text[len(text)-1]) {
			t.Fatalf("read %d messages back, want %d", len(got), len(text))
		}
		enginetest.MustCheck(t, e)
		if _, err := e.DiskUsage(true); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
