package h2

import (
	"slices"
	"testing"
)

// TestStreamSet: the set holds streams by id whether they take its own
// field or its map, forgets the ones deleted, and counts and yields what
// it holds, also when the loop deletes the stream it is given.
func TestStreamSet(t *testing.T) {
	var s streamSet
	if s.get(1) != nil || s.len() != 0 {
		t.Fatal("an empty set holds a stream")
	}
	sts := []*stream{{id: 1}, {id: 3}, {id: 5}}
	for _, st := range sts {
		s.put(st)
	}
	for _, st := range sts {
		if s.get(st.id) != st {
			t.Fatalf("stream %d not found", st.id)
		}
	}
	ids := func() []uint32 {
		var out []uint32
		for st := range s.all() {
			out = append(out, st.id)
		}
		slices.Sort(out)
		return out
	}
	if got := ids(); !slices.Equal(got, []uint32{1, 3, 5}) || s.len() != 3 {
		t.Fatalf("holds %v (len %d), want [1 3 5]", got, s.len())
	}
	s.del(1) // the one in its own field
	if s.get(1) != nil || s.len() != 2 {
		t.Fatalf("stream 1 still held, or len %d after deleting it", s.len())
	}
	s.put(&stream{id: 7}) // takes the free field
	if got := ids(); !slices.Equal(got, []uint32{3, 5, 7}) {
		t.Fatalf("holds %v, want [3 5 7]", got)
	}
	for st := range s.all() {
		s.del(st.id)
	}
	if s.len() != 0 || s.get(3) != nil || s.get(5) != nil || s.get(7) != nil {
		t.Fatalf("%d streams left after deleting each as it was yielded", s.len())
	}
}
