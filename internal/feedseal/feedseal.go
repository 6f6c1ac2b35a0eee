// Package feedseal seals the server's feed positions, so that clients
// learn nothing from them.
//
// A feed position counts the store's commits: every commit that changes a
// conversation takes the next one, whoever's conversation it is. A client
// sees positions on its own rounds (Ops, CaughtUp, PushResult) and so, by
// subtracting one from the next, how many commits the whole server made
// between them: how busy it is, and, on a quiet server, when users in no
// conversation of its user's write, which is what a client must not learn.
//
// A client needs a position only to give it back when it reconnects, so
// the server sends each one sealed: encrypted under a key of the server's
// with a keyed permutation (a Feistel network over 62 bits, AES as its
// round function, eight rounds), and the top bit set. Sealed positions of
// consecutive commits look unrelated, and without the key one says
// nothing of another. A value without the top bit is a plain position, as
// servers sent before they sealed them: a client that saved one still
// resumes from it, up to the last position the server sent plain. A
// plain value above that was never sent, and opens as malformed: taking
// it would let a client probe, value by value, which positions are beyond
// the server's, and so count its commits.
//
// The seal is deterministic: a position seals the same each time, so a
// server must seal only positions that say nothing of other users (the
// engine reports the position of the user's own latest change).
package feedseal

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	// sealed marks a sealed position; plain ones are below it.
	sealed = uint64(1) << 63
	// halfBits is each Feistel half: positions below 2^62 are sealed.
	halfBits = 31
	halfMask = uint64(1)<<halfBits - 1
	domain   = uint64(1) << (2 * halfBits)
	rounds   = 8
)

// KeySize is the length of a Codec's key.
const KeySize = 16

// ErrMalformed is a sealed value that no position seals to: made up, or
// cut, by the client.
var ErrMalformed = errors.New("feedseal: not a position this server sealed")

// Codec seals positions and opens them. It is safe for concurrent use.
type Codec struct {
	block    cipher.Block
	plainMax uint64
}

// New returns a Codec keyed with key, of KeySize bytes, that opens plain
// positions up to plainMax: the last a server sent plain (zero for a store
// that never did).
func New(key []byte, plainMax uint64) (*Codec, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("feedseal: key of %d bytes, want %d", len(key), KeySize)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return &Codec{block: b, plainMax: plainMax}, nil
}

// Seal returns pos sealed. Zero, which means no position on the wire,
// stays zero. Positions from 2^62 on (a commit each nanosecond for 146
// years) would go plain.
func (c *Codec) Seal(pos uint64) uint64 {
	if pos == 0 || pos >= domain {
		return pos
	}
	return sealed | c.permute(pos)
}

// SealAll is Seal, but seals zero too: for a position a client must tell
// from none on the wire (the end of a live round, a push's result), which
// may be zero (a session held below every change). Open gives zero back.
func (c *Codec) SealAll(pos uint64) uint64 {
	if pos == 0 {
		return sealed | c.permute(0)
	}
	return c.Seal(pos)
}

// permute is the Feistel network, on x below domain.
func (c *Codec) permute(x uint64) uint64 {
	buf := new(roundBuf)
	l, r := x>>halfBits, x&halfMask
	for i := range rounds {
		l, r = r, l^c.round(buf, i, r)
	}
	return l<<halfBits | r
}

// Open returns the position v stands for: the one sealed in it, or v
// itself when it is plain (zero, or from a server before sealing).
func (c *Codec) Open(v uint64) (uint64, error) {
	if v&sealed == 0 {
		if v > c.plainMax && v < domain {
			return 0, ErrMalformed // never sent plain
		}
		return v, nil
	}
	v &^= sealed
	if v >= domain {
		return 0, ErrMalformed
	}
	buf := new(roundBuf)
	l, r := v>>halfBits, v&halfMask
	for i := rounds - 1; i >= 0; i-- {
		l, r = r^c.round(buf, i, l), l
	}
	return l<<halfBits | r, nil // zero too: SealAll's
}

// roundBuf is a round's AES input and output: one allocation for all the
// rounds of a call (passed to an interface's method, arrays on the stack
// would each move to the heap).
type roundBuf struct{ in, out [aes.BlockSize]byte }

// round is the Feistel round function: AES of the round's number and half,
// cut to a half.
func (c *Codec) round(b *roundBuf, i int, half uint64) uint64 {
	b.in = [aes.BlockSize]byte{0: byte(i)}
	binary.BigEndian.PutUint32(b.in[1:], uint32(half))
	c.block.Encrypt(b.out[:], b.in[:])
	return uint64(binary.BigEndian.Uint32(b.out[:])) & halfMask
}
