package compression

import (
	"bytes"
	"hash/maphash"
	"sync/atomic"
)

// memo remembers recent compressions so that a message sent on many
// streams is not compressed for each.
//
// A live round sends the same Ops message, byte for byte, to every
// member's stream: the same ops, phase and feed position. Each stream
// compresses on its own (Connect compresses per stream, after marshaling),
// so a batch of 16 ops to a conversation of 4 was compressed 4 times, and
// zstd was a fifth of the server's CPU in batched ingest. The memo is a
// direct-mapped table of recent (input, output) pairs keyed by a hash of
// the input; a hit is checked against the whole input, so a collision
// costs a compression, never a wrong message.
//
// An input is kept when it is compressed a second time in a row in its
// slot: most inputs are never sent alike (a round of a small conversation
// differs per member, who is spared their own ops: in the bench's batched
// ingest one compression in ten was a hit), and keeping a copy of every
// one was a tenth of the bytes the server allocated there. A round to a
// thousand members is compressed twice instead of once.
//
// A part of a message that other messages repeat (WithShared) is kept the
// first time: it was marked because it is likely sent again.
//
// It is bounded: memoSlots entries of at most memoMaxInput bytes each (a
// live round; catch-up batches, up to a MiB and rarely alike, are not
// kept). Safe for concurrent use: entries are immutable and swapped
// atomically.
type memo struct {
	seed  maphash.Seed
	slots [memoSlots]atomic.Pointer[memoEntry]
	seen  [memoSlots]atomic.Uint64 // the hash last compressed in each slot
	hits  atomic.Uint64
}

const (
	memoSlots    = 256
	memoMaxInput = 16 << 10
)

type memoEntry struct {
	hash    uint64
	in, out []byte
}

func newMemo() *memo { return &memo{seed: maphash.MakeSeed()} }

// compress appends the compression of in to dst: the memo's, or fn's,
// which must append a deterministic compression of in to its dst. A nil
// memo compresses every time.
func (m *memo) compress(dst, in []byte, fn func(dst, in []byte) []byte) []byte {
	return m.lookup(dst, in, fn, false)
}

// share is compress for a part of a message that others likely repeat:
// it is kept the first time.
func (m *memo) share(dst, in []byte, fn func(dst, in []byte) []byte) []byte {
	return m.lookup(dst, in, fn, true)
}

func (m *memo) lookup(dst, in []byte, fn func(dst, in []byte) []byte, first bool) []byte {
	if m == nil || len(in) > memoMaxInput {
		return fn(dst, in)
	}
	h := maphash.Bytes(m.seed, in)
	slot := &m.slots[h%memoSlots]
	if e := slot.Load(); e != nil && e.hash == h && bytes.Equal(e.in, in) {
		m.hits.Add(1)
		return append(dst, e.out...)
	}
	out := fn(dst, in)
	if m.seen[h%memoSlots].Swap(h) != h && !first {
		return out
	}
	z := out[len(dst):]
	kept := make([]byte, len(in)+len(z)) // the entry's input and output
	copy(kept, in)
	copy(kept[len(in):], z)
	slot.Store(&memoEntry{hash: h, in: kept[:len(in):len(in)], out: kept[len(in):]})
	return out
}
