package opid

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"testing"

	"github.com/oklog/ulid/v2"
)

func newSource(t *testing.T, seed uint64) *Source {
	t.Helper()
	t.Logf("seed %d", seed)
	s, err := New(mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func next(t *testing.T, s *Source, ms uint64) ulid.ULID {
	t.Helper()
	id, err := s.Next(ms)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func tail(id ulid.ULID) uint32 { return uint32(id[13])<<16 | uint32(id[14])<<8 | uint32(id[15]) }

func TestIdsOfOneMillisecondCountUp(t *testing.T) {
	s := newSource(t, 1)
	first := next(t, s, 1000)
	if tail(first) >= firstTail {
		t.Fatalf("first tail %#x, want below %#x so the millisecond cannot overflow it", tail(first), firstTail)
	}
	prev := first
	for i := 1; i <= 100; i++ {
		id := next(t, s, 1000)
		if id.Time() != 1000 {
			t.Fatalf("id %d has time %d, want 1000", i, id.Time())
		}
		if !bytes.Equal(id[6:13], first[6:13]) {
			t.Fatalf("id %d has prefix %x, want the source's %x", i, id[6:13], first[6:13])
		}
		if tail(id) != tail(prev)+1 {
			t.Fatalf("id %d has tail %#x after %#x, want the next", i, tail(id), tail(prev))
		}
		prev = id
	}
}

func TestANewMillisecondDrawsANewTail(t *testing.T) {
	s := newSource(t, 2)
	seen := map[uint32]bool{}
	var prefix []byte
	for ms := uint64(1); ms <= 64; ms++ {
		id := next(t, s, ms)
		if id.Time() != ms {
			t.Fatalf("id at %d has time %d", ms, id.Time())
		}
		if prefix == nil {
			prefix = bytes.Clone(id[6:13])
		} else if !bytes.Equal(id[6:13], prefix) {
			t.Fatalf("prefix changed at %d: %x, was %x", ms, id[6:13], prefix)
		}
		if tail(id) >= firstTail {
			t.Fatalf("tail %#x at %d, want below %#x", tail(id), ms, firstTail)
		}
		seen[tail(id)] = true
	}
	// 64 draws of 23 bits: a repeat is possible but a counter (all
	// distinct and consecutive) or a constant is what this catches.
	if len(seen) < 60 {
		t.Fatalf("%d distinct tails over 64 milliseconds: the tail is not drawn at random", len(seen))
	}
}

// TestAClockSteppingBackDrawsANewPrefix: ids keep the clock's time and
// stay unique, and the tail stays unguessable: a device whose clock was
// set back an hour must not count up from its last id for that hour.
func TestAClockSteppingBackDrawsANewPrefix(t *testing.T) {
	s := newSource(t, 3)
	a := next(t, s, 5000)
	b := next(t, s, 4000) // the clock stepped back a second
	c := next(t, s, 4000)
	d := next(t, s, 4001)
	if b.Time() != 4000 || d.Time() != 4001 {
		t.Fatalf("times %d, %d: want the clock's, 4000 and 4001", b.Time(), d.Time())
	}
	if bytes.Equal(a[6:13], b[6:13]) {
		t.Fatalf("the id after the step back kept the prefix %x", a[6:13])
	}
	if tail(b) >= firstTail {
		t.Fatalf("tail %#x after the step back, want a first tail (below %#x)", tail(b), firstTail)
	}
	if tail(c) != tail(b)+1 || !bytes.Equal(b[6:13], c[6:13]) || !bytes.Equal(c[6:13], d[6:13]) {
		t.Fatalf("b %s, c %s, d %s: want the new prefix kept, counting up within 4000", b, c, d)
	}
	// Back to a millisecond the source made ids in, under the new
	// prefix too: another prefix again.
	if e := next(t, s, 4000); bytes.Equal(e[6:13], d[6:13]) || e == b || e == c {
		t.Fatalf("e %s after d %s at an earlier time: want a new prefix", e, d)
	}
}

func TestAFullMillisecondGoesOnUnderANewPrefix(t *testing.T) {
	s := newSource(t, 4)
	a := next(t, s, 7)
	s.tail = 1<<tailBits - 2
	b := next(t, s, 7)
	c := next(t, s, 7) // the tail is full: a new prefix
	if tail(b) != 1<<tailBits-1 || !bytes.Equal(a[6:13], b[6:13]) {
		t.Fatalf("b = %s, want a's prefix and the last tail", b)
	}
	if bytes.Equal(c[6:13], b[6:13]) {
		t.Fatalf("the id after a full tail kept the prefix %x", c[6:13])
	}
	if c.Time() != 7 || tail(c) >= firstTail || c == a || c == b {
		t.Fatalf("c = %s (time %d, tail %#x): want time 7, a first tail, a new id", c, c.Time(), tail(c))
	}
	if d := next(t, s, 7); tail(d) != tail(c)+1 || !bytes.Equal(d[6:13], c[6:13]) {
		t.Fatalf("d = %s, want c's prefix and the next tail", d)
	}
}

func TestSourcesHaveTheirOwnPrefixes(t *testing.T) {
	a, err := New(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	x, y := next(t, a, 1), next(t, b, 1)
	if bytes.Equal(x[6:13], y[6:13]) {
		t.Fatalf("two sources share the prefix %x", x[6:13])
	}
}

func TestNextIsSafeForConcurrentUse(t *testing.T) {
	s := newSource(t, 5)
	const workers, each = 4, 200
	ids := make(chan ulid.ULID, workers*each)
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for range each {
				id, err := s.Next(42)
				if err != nil {
					t.Error(err)
					return
				}
				ids <- id
			}
		}()
	}
	for range workers {
		<-done
	}
	close(ids)
	seen := map[ulid.ULID]bool{}
	for id := range ids {
		if seen[id] {
			t.Fatalf("id %s made twice", id)
		}
		seen[id] = true
	}
	if len(seen) != workers*each {
		t.Fatalf("%d ids, want %d", len(seen), workers*each)
	}
}

func TestErrors(t *testing.T) {
	if _, err := New(io.LimitReader(rand.Reader, 3)); err == nil {
		t.Fatal("New with 3 bytes of entropy succeeded")
	}
	s, err := New(io.MultiReader(bytes.NewReader(make([]byte, prefixBytes)), iotest{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Next(1); !errors.Is(err, errBroken) {
		t.Fatalf("Next with broken entropy: %v, want %v", err, errBroken)
	}
	if _, err := newSource(t, 6).Next(ulid.MaxTime() + 1); err == nil {
		t.Fatal("Next past the largest ULID time succeeded")
	}
}

var errBroken = errors.New("broken entropy")

type iotest struct{}

func (iotest) Read([]byte) (int, error) { return 0, errBroken }
