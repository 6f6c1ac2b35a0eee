// Package opid makes the ids devices give their ops: ULIDs whose 80 bits
// of entropy are a random prefix, drawn once per Source, and a per-op tail.
//
// An op id is the idempotency key of one op in one conversation, and
// every member's device receives it. With 80 fresh random bits per op, the
// ids were the one part of a catch-up that compression could not touch:
// 10 bytes per op, against about 30 for the compressed text of a chat
// message, and mixed in with that text they made its literals cost more
// too. The ops of one device share their prefix, which zstd then finds
// again at every op, so an id costs about 3 bytes on the wire rather than
// 10, the way CRDT systems name ops by actor and counter.
//
// The tail is what keeps ids unguessable. Op ids are not secret, but an id
// taken first by another user's op makes the owner's op fail as a
// conflict, so a member who could predict a device's next id could squat
// it. The tail of the first id in each millisecond is 23 random bits: to
// take a device's next id, a member would have to push millions of ops for
// each millisecond in which it might be made. Within one millisecond the
// tail counts up, so a Source never repeats an id; no one sees those ids
// before the millisecond is over. When the clock steps back, the Source
// draws a new prefix: its ids keep the clock's time and stay unique, and
// a device's ops are ordered by their dots, not their ids. So does a tail
// that fills (2^23 ids or more in one millisecond).
//
// A conversation's id is not an op id: it names the conversation to
// everyone who is ever added, and is a plain random ULID (ulid.New).
package opid

import (
	"fmt"
	"io"
	"sync"

	"github.com/oklog/ulid/v2"
)

const (
	prefixBytes = 7
	tailBits    = 24
	// firstTail bounds a millisecond's first tail, so that the 2^23 ids
	// after it in the same millisecond cannot overflow the tail.
	firstTail = 1 << (tailBits - 1)
)

// Source makes op ids. It is safe for concurrent use.
type Source struct {
	mu     sync.Mutex
	rand   io.Reader
	prefix [prefixBytes]byte
	ms     uint64 // the time of the last id made
	tail   uint32 // the tail of the last id made
	made   bool
}

// New returns a Source that draws its prefix and tails from rand, such
// as crypto/rand.Reader.
func New(rand io.Reader) (*Source, error) {
	s := &Source{rand: rand}
	if err := s.newPrefix(); err != nil {
		return nil, err
	}
	return s, nil
}

// Next returns a new id for time ms (Unix milliseconds).
func (s *Source) Next(ms uint64) (ulid.ULID, error) {
	if ms > ulid.MaxTime() {
		return ulid.ULID{}, fmt.Errorf("opid: time %d is past the largest ULID time", ms)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.made && ms == s.ms && s.tail+1 < 1<<tailBits {
		s.tail++
	} else {
		// A new millisecond draws a tail. A millisecond the Source has
		// made ids in before (the clock stepped back, or the tail is
		// full) also draws a prefix, which no id made before has.
		if s.made && ms <= s.ms {
			if err := s.newPrefix(); err != nil {
				return ulid.ULID{}, err
			}
		}
		t, err := s.randomTail()
		if err != nil {
			return ulid.ULID{}, err
		}
		s.ms, s.tail = ms, t
	}
	s.made = true
	var id ulid.ULID
	if err := id.SetTime(s.ms); err != nil {
		return ulid.ULID{}, err
	}
	copy(id[6:6+prefixBytes], s.prefix[:])
	id[13], id[14], id[15] = byte(s.tail>>16), byte(s.tail>>8), byte(s.tail)
	return id, nil
}

func (s *Source) newPrefix() error {
	if _, err := io.ReadFull(s.rand, s.prefix[:]); err != nil {
		return fmt.Errorf("opid: read entropy: %w", err)
	}
	return nil
}

func (s *Source) randomTail() (uint32, error) {
	var b [3]byte
	if _, err := io.ReadFull(s.rand, b[:]); err != nil {
		return 0, fmt.Errorf("opid: read entropy: %w", err)
	}
	return (uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])) % firstTail, nil
}
