package compression

import (
	"bytes"
	"hash/maphash"
	"sync/atomic"
)

// memo remembers recent compressions so that a message sent on many
// streams is compressed once.
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
// It is bounded: memoSlots entries of at most memoMaxInput bytes each (a
// live round; catch-up batches, up to a MiB and rarely alike, are not
// kept). Safe for concurrent use: entries are immutable and swapped
// atomically.
type memo struct {
	seed  maphash.Seed
	slots [memoSlots]atomic.Pointer[memoEntry]
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

// compress returns the compression of in, from the memo or from fn, which
// must be deterministic. The result must not be modified. A nil memo
// compresses every time.
func (m *memo) compress(in []byte, fn func([]byte) []byte) []byte {
	if m == nil || len(in) > memoMaxInput {
		return fn(in)
	}
	h := maphash.Bytes(m.seed, in)
	slot := &m.slots[h%memoSlots]
	if e := slot.Load(); e != nil && e.hash == h && bytes.Equal(e.in, in) {
		m.hits.Add(1)
		return e.out
	}
	out := fn(in)
	slot.Store(&memoEntry{hash: h, in: bytes.Clone(in), out: out})
	return out
}
