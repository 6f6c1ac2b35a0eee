package engine

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
)

// TestIDWindow: an idWindow, empty or loaded with a set's greatest id as
// loadConv does, then fed the set's new ids in any order, holds every id
// of the set from its least on, and answers for every id it claims to
// know as the set does.
func TestIDWindow(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	id := func() ulid.ULID {
		var u ulid.ULID
		_ = u.SetTime(uint64(rnd.IntN(200)))
		u[15] = byte(rnd.IntN(4)) // few values, so that queries hit
		return u
	}
	for round := range 300 {
		var w idWindow
		set := map[ulid.ULID]bool{}
		if round%2 == 1 { // loaded
			for range 1 + rnd.IntN(2*windowIDs) {
				set[id()] = true
			}
			w.ids = []ulid.ULID{slices.MaxFunc(slices.Collect(maps.Keys(set)), ulid.ULID.Compare)}
		}
		for range rnd.IntN(3 * windowIDs) {
			if u := id(); !set[u] {
				w.add(u)
				set[u] = true
			}
			sorted := slices.SortedFunc(maps.Keys(set), ulid.ULID.Compare)
			from, _ := slices.BinarySearchFunc(sorted, w.ids[0], ulid.ULID.Compare)
			if !slices.Equal(w.ids, sorted[from:]) || len(w.ids) > windowIDs {
				t.Fatalf("round %d: window %v; the set from its least on is %v", round, w.ids, sorted[from:])
			}
			for range 8 {
				q := id()
				if known, has := w.knows(q); known && has != set[q] {
					t.Fatalf("round %d: window says has=%v of %s, the set %v", round, has, q, set[q])
				}
			}
		}
	}
}

// TestOpsRun: a run extended commit by commit keeps at most runHeads
// heads, reaching back at most maxMemoOps ops unless the last commit
// alone added more; holds exactly the ops after its first head; and never
// changes ops it handed out before.
func TestOpsRun(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	var r convRun
	type handed struct {
		ops  []model.Op
		from uint64
	}
	var out []handed
	head := uint64(7)
	for commit := range 500 {
		n := 1 + rnd.IntN(8)
		if rnd.IntN(50) == 0 {
			n = maxMemoOps + rnd.IntN(20) // a large commit
		}
		added := make([]model.Op, n)
		for i := range added {
			added[i] = model.Op{Seq: head + 1 + uint64(i), Body: []byte{byte(commit)}}
		}
		r.extend(head, added)
		head += uint64(n)
		if len(r.heads) == 0 || len(r.heads) > runHeads || !slices.IsSorted(r.heads) {
			t.Fatalf("commit %d: heads %v", commit, r.heads)
		}
		if len(r.heads) > 1 && head-r.heads[0] > maxMemoOps {
			t.Fatalf("commit %d: %d heads reach back %d ops", commit, len(r.heads), head-r.heads[0])
		}
		if uint64(len(r.ops)) != head-r.heads[0] || r.ops[0].Seq != r.heads[0]+1 || r.through() != head {
			t.Fatalf("commit %d: %d ops from seq %d through %d; heads %v, head %d", commit, len(r.ops), r.ops[0].Seq, r.through(), r.heads, head)
		}
		for _, h := range r.heads {
			ops := r.from(h)
			if ops[0].Seq != h+1 {
				t.Fatalf("commit %d: ops from head %d start at seq %d", commit, h, ops[0].Seq)
			}
			out = append(out, handed{slices.Clip(ops), h})
		}
		for _, o := range out {
			for i := range o.ops {
				if o.ops[i].Seq != o.from+1+uint64(i) {
					t.Fatalf("commit %d: ops handed out from head %d changed: seq %d at %d", commit, o.from, o.ops[i].Seq, i)
				}
			}
		}
	}
}
