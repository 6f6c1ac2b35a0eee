package compression

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"io"
	"slices"
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

// TestSharedSpansCompressOnce: two messages that differ but for a part
// they share (a live round to two members, each spared their own ops)
// arrive intact, each part in a zstd frame of its own, and the shared part
// is compressed once: the second message takes it from the memo.
func TestSharedSpansCompressOnce(t *testing.T) {
	part := func(s string) []byte { return bytes.Repeat([]byte(s), 1024/len(s)+1) }
	mine, yours, theirs := part("mine: my own ops; "), part("yours: your ops; "), part("theirs: the third author's ops; ")
	header := func(b byte) []byte { return []byte{b, b, b} }
	// Each message is a header of its own, then two parts; spans finds
	// the parts from their first bytes, as a server finds a round's
	// batches from their fields.
	spans := func(msg []byte, dst []Span) []Span {
		for _, p := range [][]byte{mine, yours, theirs} {
			if i := bytes.Index(msg, p); i >= 0 {
				dst = append(dst, Span{i, i + len(p)})
			}
		}
		slices.SortFunc(dst, func(a, b Span) int { return a.Start - b.Start })
		return dst
	}
	// The memo keeps one entry a slot, by a hash of random seed: parts
	// that share a slot push each other out (1 seed in 128 here), so the
	// memo's seed is one that gives each part its own.
	z := NewZstd(WithMemo(), WithShared(spans))
	for range 100 {
		slot := func(p []byte) uint64 { return maphash.Bytes(z.memo.seed, p) % memoSlots }
		if a, b, c := slot(mine), slot(yours), slot(theirs); a != b && b != c && a != c {
			break
		}
		z.memo.seed = maphash.MakeSeed()
	}
	toMe := slices.Concat(header(1), yours, theirs)
	toYou := slices.Concat(header(2), mine, theirs)
	for i, msg := range [][]byte{toMe, toYou} {
		var buf bytes.Buffer
		w, _ := z.Compress(&buf)
		w.Write(msg)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if frames := bytes.Count(buf.Bytes(), zstdMagic); frames != 3 {
			t.Errorf("message %d went as %d zstd frames; want 3 (its header, and a frame for each part)", i, frames)
		}
		r, _ := z.Decompress(bytes.NewReader(buf.Bytes()))
		out, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(out, msg) {
			t.Fatalf("message %d came back as %d bytes (%v); want its %d", i, len(out), err, len(msg))
		}
	}
	if hits := z.memoHits(); hits != 1 {
		t.Errorf("the shared part was taken from the memo %d times; want once, for the second message", hits)
	}
}

// zstdMagic starts every zstd frame.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// TestSpansOutOfOrder: spans that overlap, run backwards or past the
// message, or cover all of it leave the message compressed whole.
func TestSpansOutOfOrder(t *testing.T) {
	msg := bytes.Repeat([]byte("a round of ops "), 200)
	n := len(msg)
	for _, spans := range [][]Span{
		{{10, 20}, {15, 30}},
		{{30, 40}, {10, 20}},
		{{10, 5}},
		{{10, n + 1}},
		{{-1, 10}},
		{{0, n}},
		{},
	} {
		z := NewZstd(WithMemo(), WithShared(func(_ []byte, dst []Span) []Span { return append(dst, spans...) }))
		var buf bytes.Buffer
		w, _ := z.Compress(&buf)
		w.Write(msg)
		w.Close()
		if frames := bytes.Count(buf.Bytes(), zstdMagic); frames != 1 {
			t.Errorf("spans %v: %d frames; want the message compressed whole", spans, frames)
		}
		if out := roundTrip(t, z, msg); !bytes.Equal(out, msg) {
			t.Errorf("spans %v: the message came back changed", spans)
		}
	}
}
