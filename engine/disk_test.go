package engine_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestDiskPerOp guards the storage format's cost: after a full compaction,
// the live files of a log of chat messages take at most 30 bytes per op
// more than the message bodies (the target). The op id, the dot,
// the indexes and the feed all fit in that because Pebble prefix-compresses
// keys and zstd-compresses the bottom levels. A field added to every op
// record, or another index per op, shows here.
func TestDiskPerOp(t *testing.T) {
	e := enginetest.New(t)
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
	t.Logf("disk per op %.1f B for %.1f B of payload (%+.1f B); tables %d B, WAL %d B, obsolete %d B, other %d B",
		perOp, meanPayload, perOp-meanPayload, after.Tables, after.WAL, after.Obsolete, after.Other)
	if perOp > meanPayload+30 {
		t.Errorf("disk per op is %.1f B for %.1f B of payload: more than 30 B over", perOp, meanPayload)
	}
	if after.Tables == 0 || after.Tables > after.Live() {
		t.Errorf("usage %+v: no tables, or tables beyond the live bytes", after)
	}
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
