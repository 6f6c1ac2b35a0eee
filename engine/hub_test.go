package engine

import (
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"
)

func TestJournal(t *testing.T) {
	id := func(b byte) ulid.ULID { var u ulid.ULID; u[0], u[15] = b, b; return u }
	alice, bob, c1, c2, c3 := id(1), id(2), id(11), id(12), id(13)
	entries := func(es ...feedEntry) []feedEntry { return es }
	check := func(w *watch, after, through uint64, want []feedEntry, wantOK bool) {
		t.Helper()
		got, ok, _ := w.changed(after, through)
		if ok != wantOK || (ok && !slices.Equal(got, want)) {
			t.Fatalf("changed(%d, %d) = %v, %v; want %v, %v", after, through, got, ok, want, wantOK)
		}
	}

	h := newHub()
	h.record(1, []idPair{{alice, c1}}) // before any watch: not journaled
	w := h.watch(alice)
	check(w, 0, 1, nil, false) // the journal starts after position 1
	check(w, 1, 1, nil, true)
	h.record(2, []idPair{{alice, c1}, {bob, c1}})
	h.record(3, []idPair{{alice, c2}, {alice, c3}})
	check(w, 1, 3, entries(feedEntry{c2, 3}, feedEntry{c3, 3}, feedEntry{c1, 2}), true)
	check(w, 1, 2, entries(feedEntry{c1, 2}), true) // position 3 is not in the reader's view yet
	check(w, 2, 3, entries(feedEntry{c2, 3}, feedEntry{c3, 3}), true)
	h.record(4, []idPair{{alice, c1}, {alice, c1}}) // c1 moves again (both of alice's feeds): only its latest position counts
	if sig := h.shard(alice).users[alice]; len(sig.moves) != 4 {
		t.Fatalf("journal holds %d moves after 4 distinct ones", len(sig.moves))
	}
	check(w, 1, 4, entries(feedEntry{c1, 4}, feedEntry{c2, 3}, feedEntry{c3, 3}), true)
	check(w, 1, 3, entries(feedEntry{c2, 3}, feedEntry{c3, 3}, feedEntry{c1, 2}), true)

	// A second session of the user shares the journal; a new user's
	// journal starts at the last position recorded.
	w2 := h.watch(alice)
	check(w2, 1, 4, entries(feedEntry{c1, 4}, feedEntry{c2, 3}, feedEntry{c3, 3}), true)
	wb := h.watch(bob)
	check(wb, 3, 4, nil, false)
	check(wb, 4, 4, nil, true)

	// Past journalMoves, the oldest moves go and the journal says so.
	for pos := uint64(5); pos < 5+journalMoves; pos++ {
		h.record(pos, []idPair{{alice, c2}})
	}
	check(w, 4, 5+journalMoves, entries(feedEntry{c2, 4 + journalMoves}), true)
	check(w, 3, 5+journalMoves, nil, false)

	// The journal goes with the last watch of the user.
	w.close()
	w2.close()
	if h.watching() != 1 {
		t.Fatalf("watching %d users after alice's sessions closed; want 1", h.watching())
	}
	h.record(100, []idPair{{alice, c1}})
	w = h.watch(alice)
	check(w, 99, 100, nil, false)
	check(w, 100, 100, nil, true)
}
