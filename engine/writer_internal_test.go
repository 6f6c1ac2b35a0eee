package engine

import (
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"
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
