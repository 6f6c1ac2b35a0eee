package keys

import (
	"bytes"
	"testing"

	"github.com/oklog/ulid/v2"
)

func id(n byte) ulid.ULID { return ulid.ULID{0: 1, 15: n} }

func TestOrder(t *testing.T) {
	// Byte order is scan order: seqs, positions and dots sort numerically
	// within their conversation or user, never across.
	ordered := [][]byte{
		Op(id(1), 1), Op(id(1), 2), Op(id(1), 256), Op(id(1), 1<<40), Op(id(2), 0),
	}
	for i := 1; i < len(ordered); i++ {
		if bytes.Compare(ordered[i-1], ordered[i]) >= 0 {
			t.Fatalf("key %d does not sort before key %d", i-1, i)
		}
	}
	lo, hi := FeedSpan(TFeed, id(1), 5, 9)
	for pos, in := range map[uint64]bool{5: false, 6: true, 9: true, 10: false} {
		k := Feed(TFeed, id(1), pos, id(7))
		if got := bytes.Compare(k, lo) >= 0 && bytes.Compare(k, hi) < 0; got != in {
			t.Errorf("feed pos %d in span (5, 9]: %v, want %v", pos, got, in)
		}
	}
}

func TestPrefix(t *testing.T) {
	lo, hi := Prefix([]byte{1, 0xff})
	if !bytes.Equal(lo, []byte{1, 0xff}) || !bytes.Equal(hi, []byte{2}) {
		t.Fatalf("Prefix: %x %x", lo, hi)
	}
	if _, hi := Prefix([]byte{0xff}); hi != nil {
		t.Fatalf("Prefix of 0xff has upper bound %x", hi)
	}
}

func TestParse(t *testing.T) {
	if c, s, ok := ParseOp(Op(id(3), 77)); !ok || c != id(3) || s != 77 {
		t.Errorf("ParseOp: %v %v %v", c, s, ok)
	}
	if c, d, n, ok := ParseDot(Dot(id(3), id(4), 5)); !ok || c != id(3) || d != id(4) || n != 5 {
		t.Errorf("ParseDot: %v %v %v %v", c, d, n, ok)
	}
	if u, p, c, ok := ParseFeed(Feed(TUFeed, id(1), 9, id(2))); !ok || u != id(1) || p != 9 || c != id(2) {
		t.Errorf("ParseFeed: %v %v %v %v", u, p, c, ok)
	}
	if c, tg, s, ok := ParseEdit(Edit(id(1), id(2), 3)); !ok || c != id(1) || tg != id(2) || s != 3 {
		t.Errorf("ParseEdit: %v %v %v %v", c, tg, s, ok)
	}
	if a, b, ok := ParseID2(ID2(TMember, id(1), id(2))); !ok || a != id(1) || b != id(2) {
		t.Errorf("ParseID2: %v %v %v", a, b, ok)
	}
	if _, _, ok := ParseOp(Dot(id(1), id(2), 3)); ok {
		t.Error("ParseOp accepted a dot key")
	}
}

// FuzzParse checks that no key panics the parsers and that every key they
// accept re-encodes to itself.
func FuzzParse(f *testing.F) {
	f.Add(Op(id(1), 2))
	f.Add(Dot(id(1), id(2), 3))
	f.Add(Feed(TFeed, id(1), 2, id(3)))
	f.Add(Edit(id(1), id(2), 3))
	f.Add(ID2(TMember, id(1), id(2)))
	f.Fuzz(func(t *testing.T, k []byte) {
		if c, s, ok := ParseOp(k); ok && !bytes.Equal(Op(c, s), k) {
			t.Fatalf("op key %x re-encodes differently", k)
		}
		if c, d, n, ok := ParseDot(k); ok && !bytes.Equal(Dot(c, d, n), k) {
			t.Fatalf("dot key %x re-encodes differently", k)
		}
		if u, p, c, ok := ParseFeed(k); ok && !bytes.Equal(Feed(k[0], u, p, c), k) {
			t.Fatalf("feed key %x re-encodes differently", k)
		}
		if c, tg, s, ok := ParseEdit(k); ok && !bytes.Equal(Edit(c, tg, s), k) {
			t.Fatalf("edit key %x re-encodes differently", k)
		}
		if a, b, ok := ParseID2(k); ok && !bytes.Equal(ID2(k[0], a, b), k) {
			t.Fatalf("id2 key %x re-encodes differently", k)
		}
	})
}

// TestOneAllocation: each key is made in one allocation, of its length.
func TestOneAllocation(t *testing.T) {
	a, b := id(1), id(2)
	for _, c := range []struct {
		name string
		make func() []byte
	}{
		{"ID1", func() []byte { return ID1(TConv, a) }},
		{"ID2", func() []byte { return ID2(TMember, a, b) }},
		{"Op", func() []byte { return Op(a, 7) }},
		{"Dot", func() []byte { return Dot(a, b, 7) }},
		{"Edit", func() []byte { return Edit(a, b, 7) }},
		{"Feed", func() []byte { return Feed(TUFeed, a, 7, b) }},
	} {
		var k []byte
		if n := testing.AllocsPerRun(10, func() { k = c.make() }); n != 1 {
			t.Errorf("%s: %v allocations; want 1", c.name, n)
		}
		if len(k) != cap(k) {
			t.Errorf("%s: %d bytes in a key of capacity %d", c.name, len(k), cap(k))
		}
	}
	if n := testing.AllocsPerRun(10, func() { _, _ = FeedSpan(TUFeed, a, 1, 2) }); n != 2 {
		t.Errorf("FeedSpan: %v allocations; want 2", n)
	}
}
