package compression

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"sync"
	"testing"

	"connectrpc.com/connect/v2"
)

// TestMemoCompressesOnce sends one live-round-sized message on one
// stream, then on 16 at once: the 16 take it from the memo, and every
// stream gets it back intact.
func TestMemoCompressesOnce(t *testing.T) {
	msg := bytes.Repeat([]byte("a live round of ops, the same for every member; "), 40)
	for _, c := range []interface {
		connect.Compressor
		memoHits() uint64
	}{NewZstd(WithMemo()), NewGzip(WithMemo())} {
		if out := roundTrip(t, c, msg); !bytes.Equal(out, msg) {
			t.Fatalf("%s: round trip changed the message", c.Name())
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
	out := m.compress(in, func(b []byte) []byte { calls++; return append([]byte("z:"), b...) })
	if string(out) != "z:the real message" || calls != 1 {
		t.Fatalf("compress gave %q after %d calls; want a fresh compression", out, calls)
	}
	if out := m.compress(in, func([]byte) []byte { t.Fatal("compressed again"); return nil }); string(out) != "z:the real message" {
		t.Fatalf("second compress gave %q", out)
	}
}

// TestMemoEvictsAndSkipsLargeInputs: inputs that share a slot replace
// each other, and inputs over memoMaxInput are never kept.
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
	fn := func(in []byte) []byte { calls++; return bytes.ToUpper(in) }
	for _, in := range [][]byte{a, b, a, a} {
		if out := m.compress(in, fn); !bytes.Equal(out, bytes.ToUpper(in)) {
			t.Fatalf("compress(%q) = %q", in, out)
		}
	}
	if calls != 3 {
		t.Errorf("%d compressions for a, b, a, a in one slot; want 3", calls)
	}
	big := bytes.Repeat([]byte("x"), memoMaxInput+1)
	calls = 0
	m.compress(big, fn)
	m.compress(big, fn)
	if calls != 2 {
		t.Errorf("a message over %d bytes was compressed %d times for 2 sends; want 2 (not kept)", memoMaxInput, calls)
	}
}
