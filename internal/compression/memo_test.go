package compression

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"sync"
	"testing"

	"connectrpc.com/connect/v2"
)

// TestMemoCompressesOnce sends one live-round-sized message on two
// streams, then on 16 at once: the 16 take it from the memo, and every
// stream gets it back intact.
func TestMemoCompressesOnce(t *testing.T) {
	msg := bytes.Repeat([]byte("a live round of ops, the same for every member; "), 40)
	for _, c := range []interface {
		connect.Compressor
		memoHits() uint64
	}{NewZstd(WithMemo()), NewGzip(WithMemo())} {
		for range 2 { // kept the second time
			if out := roundTrip(t, c, msg); !bytes.Equal(out, msg) {
				t.Fatalf("%s: round trip changed the message", c.Name())
			}
		}
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				if out := roundTrip(t, c, msg); !bytes.Equal(out, msg) {
					t.Errorf("%s: round trip changed the message", c.Name())
				}
			})
		}
		wg.Wait()
		if hits := c.memoHits(); hits != 16 {
			t.Errorf("%s: %d of 16 identical messages came from the memo", c.Name(), hits)
		}
	}
}

func (z *Zstd) memoHits() uint64 { return z.memo.hits.Load() }
func (g *Gzip) memoHits() uint64 { return g.memo.hits.Load() }

// TestNoMemoByDefault: a client's compressor keeps nothing.
func TestNoMemoByDefault(t *testing.T) {
	z, g := NewZstd(), NewGzip()
	if z.memo != nil || g.memo != nil {
		t.Fatal("compressors remember compressions without WithMemo")
	}
	msg := bytes.Repeat([]byte("not kept "), 200)
	for range 2 {
		if out := roundTrip(t, z, msg); !bytes.Equal(out, msg) {
			t.Fatal("round trip without a memo changed the message")
		}
	}
}

// TestMemoChecksTheWholeInput plants an entry whose hash matches a message
// but whose input does not: the memo must compress the message, not
// answer with the planted output.
func TestMemoChecksTheWholeInput(t *testing.T) {
	m := newMemo()
	in := []byte("the real message")
	h := maphash.Bytes(m.seed, in)
	m.slots[h%memoSlots].Store(&memoEntry{hash: h, in: []byte("another message!"), out: []byte("wrong")})
	calls := 0
	out := m.compress(nil, in, func(dst, b []byte) []byte { calls++; return append(append(dst, "z:"...), b...) })
	if string(out) != "z:the real message" || calls != 1 {
		t.Fatalf("compress gave %q after %d calls; want a fresh compression", out, calls)
	}
	m.compress(nil, in, func(dst, b []byte) []byte { calls++; return append(append(dst, "z:"...), b...) }) // kept now
	if out := m.compress([]byte("dst:"), in, func(dst, _ []byte) []byte { t.Fatal("compressed again"); return dst }); string(out) != "dst:z:the real message" {
		t.Fatalf("second compress gave %q", out)
	}
}

// TestMemoKeepsItsOwnCopy: compress appends to the caller's buffer, which
// the caller then reuses (a pooled buffer), and so may the input's: the
// memo must answer later from copies of its own.
func TestMemoKeepsItsOwnCopy(t *testing.T) {
	m := newMemo()
	in := []byte("a round for every member")
	fn := func(dst, in []byte) []byte { return append(dst, bytes.ToUpper(in)...) }
	scratch := make([]byte, 0, 64)
	m.compress(nil, in, fn)
	out := m.compress(scratch, in, fn) // kept
	want := string(bytes.ToUpper(in))
	for i := range out[:cap(out)] {
		out[:cap(out)][i] = '#'
	}
	again := append([]byte(nil), in...)
	for i := range in {
		in[i] = '#'
	}
	if got := m.compress(nil, again, func(dst, _ []byte) []byte { t.Fatal("compressed again"); return dst }); string(got) != want {
		t.Fatalf("after its caller reused the buffers, the memo gave %q; want %q", got, want)
	}
}

// TestMemoEvictsAndSkipsLargeInputs: an input is kept when compressed
// twice in a row in its slot, inputs that share a slot replace each other,
// and inputs over memoMaxInput are never kept.
func TestMemoEvictsAndSkipsLargeInputs(t *testing.T) {
	m := newMemo()
	// Two inputs in the same slot.
	a := []byte("message 0")
	var b []byte
	for i := 1; b == nil; i++ {
		c := []byte(fmt.Sprintf("message %d", i))
		if maphash.Bytes(m.seed, c)%memoSlots == maphash.Bytes(m.seed, a)%memoSlots {
			b = c
		}
	}
	calls := 0
	fn := func(dst, in []byte) []byte { calls++; return append(dst, bytes.ToUpper(in)...) }
	for _, c := range []struct {
		in    []byte
		calls int // compressions so far
	}{
		{a, 1}, {b, 2}, {a, 3}, // each new in a row
		{a, 4}, {a, 4}, // kept, then a hit
		{b, 5}, {b, 6}, {b, 6}, // b kept in a's place, then a hit
		{a, 7}, // a's entry went
	} {
		if out := m.compress(nil, c.in, fn); !bytes.Equal(out, bytes.ToUpper(c.in)) {
			t.Fatalf("compress(%q) = %q", c.in, out)
		}
		if calls != c.calls {
			t.Fatalf("after compressing %q, %d compressions; want %d", c.in, calls, c.calls)
		}
	}
	big := bytes.Repeat([]byte("x"), memoMaxInput+1)
	calls = 0
	m.compress(nil, big, fn)
	m.compress(nil, big, fn)
	if calls != 2 {
		t.Errorf("a message over %d bytes was compressed %d times for 2 sends; want 2 (not kept)", memoMaxInput, calls)
	}
}
