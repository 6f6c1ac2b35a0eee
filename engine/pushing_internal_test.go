package engine

import (
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
)

// TestPushingFullSet: an op a full set could not count for one push, and
// that a later push of it counted, stays until that later push is
// answered: the first push's answer removes only what Add counted for it.
func TestPushingFullSet(t *testing.T) {
	device, conv := ulid.Make(), ulid.Make()
	op := func(i uint64) model.Op {
		var id ulid.ULID
		id[0], id[15] = 1, byte(i) // distinct ids, in order
		id[14] = byte(i >> 8)
		return model.Op{Conv: conv, ID: id, Seq: i, Kind: model.KindMessage, Dot: model.Dot{Device: device, N: i}}
	}
	var p Pushing
	fill := make([]model.Op, maxPushing)
	for i := range fill {
		fill[i] = op(uint64(i + 1))
	}
	if got := p.Add(fill); len(got) != maxPushing {
		t.Fatalf("counted %d ops of a push that fills the set; want %d", len(got), maxPushing)
	}
	x := op(maxPushing + 1)
	first := p.Add([]model.Op{fill[0], x}) // x finds no room; fill[0] is counted again
	if len(first) != 1 || first[0].ID != fill[0].ID {
		t.Fatalf("a full set counted %v; want only the op it holds", first)
	}
	p.Remove(fill[1:2]) // room for one
	second := p.Add([]model.Op{x})
	if len(second) != 1 {
		t.Fatalf("the re-push was not counted: %v", second)
	}
	if _, seq := p.appendRuns(nil, device, []model.Op{x}); seq != x.Seq || !p.LeftOut() {
		t.Fatalf("a round did not leave the re-pushed op out (seq %d, left out %v)", seq, p.LeftOut())
	}
	p.Remove(first) // the first push's answer
	if !p.LeftOut() {
		t.Fatal("the first push's answer took away the count of the second, which holds the op left out")
	}
	p.Remove(second)
	if p.LeftOut() {
		t.Fatal("both pushes answered, and rounds still wait")
	}
	p.Remove(fill[:1])
	p.Remove(fill[2:])
	if p.Len() != 0 {
		t.Fatalf("%d ops in the set after every push was answered; want 0", p.Len())
	}
}
