package model

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/oklog/ulid/v2"
)

// Vector is a version vector for one conversation: for each authoring device,
// the highest dot N such that the replica holds that device's ops 1..N.
//
// A Vector is a value: its methods never modify it, and the canonical form
// (entries sorted by device, no zero entries, no duplicates) is the only form
// the constructors produce, so == on encodings and [Vector.Equal] agree.
// The zero Vector is empty and ready to use.
type Vector struct {
	entries []Dot // sorted by Device; every N > 0
}

// NewVector builds a canonical vector from entries in any order, dropping
// zero entries and keeping the highest N of duplicate devices.
func NewVector(entries ...Dot) Vector {
	es := make([]Dot, 0, len(entries))
	for _, e := range entries {
		if e.N > 0 {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, func(a, b Dot) int {
		if c := a.Device.Compare(b.Device); c != 0 {
			return c
		}
		return -compareUint(a.N, b.N) // highest first, so Compact keeps it
	})
	es = slices.CompactFunc(es, func(a, b Dot) bool { return a.Device == b.Device })
	if len(es) == 0 {
		return Vector{}
	}
	return Vector{entries: es}
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Len is the number of devices with a non-zero entry.
func (v Vector) Len() int { return len(v.entries) }

// Entries returns a copy of the entries, sorted by device.
func (v Vector) Entries() []Dot { return slices.Clone(v.entries) }

// Get returns the entry of device, 0 when absent.
func (v Vector) Get(device ulid.ULID) uint64 {
	i, ok := slices.BinarySearchFunc(v.entries, device, func(e Dot, d ulid.ULID) int { return e.Device.Compare(d) })
	if !ok {
		return 0
	}
	return v.entries[i].N
}

// Contains reports whether the vector covers dot d.
func (v Vector) Contains(d Dot) bool { return d.N > 0 && d.N <= v.Get(d.Device) }

// With returns v with device's entry raised to n (entries never go down).
func (v Vector) With(device ulid.ULID, n uint64) Vector {
	if n <= v.Get(device) {
		return v
	}
	return NewVector(append(slices.Clone(v.entries), Dot{Device: device, N: n})...)
}

// Merge returns the entry-wise maximum of v and w.
func (v Vector) Merge(w Vector) Vector {
	out := make([]Dot, 0, len(v.entries)+len(w.entries))
	i, j := 0, 0
	for i < len(v.entries) || j < len(w.entries) {
		switch {
		case j == len(w.entries) || (i < len(v.entries) && v.entries[i].Device.Compare(w.entries[j].Device) < 0):
			out = append(out, v.entries[i])
			i++
		case i == len(v.entries) || w.entries[j].Device.Compare(v.entries[i].Device) < 0:
			out = append(out, w.entries[j])
			j++
		default:
			out = append(out, Dot{Device: v.entries[i].Device, N: max(v.entries[i].N, w.entries[j].N)})
			i++
			j++
		}
	}
	if len(out) == 0 {
		return Vector{}
	}
	return Vector{entries: out}
}

// Ordering is how two vectors compare.
type Ordering int8

// The orderings of two vectors.
const (
	Equal      Ordering = iota // same entries
	Before                     // v < w: w holds everything v holds, and more
	After                      // v > w
	Concurrent                 // each holds something the other lacks
)

func (o Ordering) String() string {
	switch o {
	case Equal:
		return "equal"
	case Before:
		return "before"
	case After:
		return "after"
	case Concurrent:
		return "concurrent"
	}
	return fmt.Sprintf("ordering(%d)", int8(o))
}

// Compare orders v against w.
func (v Vector) Compare(w Vector) Ordering {
	less, more := false, false
	i, j := 0, 0
	for i < len(v.entries) || j < len(w.entries) {
		switch {
		case j == len(w.entries) || (i < len(v.entries) && v.entries[i].Device.Compare(w.entries[j].Device) < 0):
			more = true
			i++
		case i == len(v.entries) || w.entries[j].Device.Compare(v.entries[i].Device) < 0:
			less = true
			j++
		default:
			if v.entries[i].N < w.entries[j].N {
				less = true
			} else if v.entries[i].N > w.entries[j].N {
				more = true
			}
			i++
			j++
		}
	}
	switch {
	case less && more:
		return Concurrent
	case less:
		return Before
	case more:
		return After
	}
	return Equal
}

// Equal reports whether v and w have the same entries.
func (v Vector) Equal(w Vector) bool { return v.Compare(w) == Equal }

// DotRange is the dots From..To (inclusive) of one device.
type DotRange struct {
	Device   ulid.ULID
	From, To uint64
}

// Lacks returns the dots that w holds and v does not, one range per device,
// sorted by device.
func (v Vector) Lacks(w Vector) []DotRange {
	var out []DotRange
	for _, e := range w.entries {
		if have := v.Get(e.Device); have < e.N {
			out = append(out, DotRange{Device: e.Device, From: have + 1, To: e.N})
		}
	}
	return out
}

func (v Vector) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range v.entries {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s:%d", e.Device, e.N)
	}
	b.WriteByte('}')
	return b.String()
}

// MarshalBinary encodes v canonically: a uvarint count, then for each entry
// in device order the 16-byte device id and a uvarint N.
func (v Vector) MarshalBinary() ([]byte, error) { return v.AppendBinary(nil) }

// AppendBinary appends the canonical encoding of v to b.
func (v Vector) AppendBinary(b []byte) ([]byte, error) {
	b = binary.AppendUvarint(b, uint64(len(v.entries)))
	for _, e := range v.entries {
		b = append(b, e.Device[:]...)
		b = binary.AppendUvarint(b, e.N)
	}
	return b, nil
}

// ErrBadVector is wrapped by errors decoding a vector.
var ErrBadVector = errors.New("malformed version vector")

// DecodeVector decodes a canonical encoding made by MarshalBinary. Anything
// else (unsorted or duplicate devices, zero entries, trailing bytes) is an
// error, so every vector has exactly one encoding.
func DecodeVector(b []byte) (Vector, error) {
	count, n := uvarint(b)
	if n <= 0 {
		return Vector{}, fmt.Errorf("%w: bad entry count", ErrBadVector)
	}
	b = b[n:]
	// Each entry takes at least 17 bytes: refuse counts the input cannot hold
	// before allocating for them.
	if count > uint64(len(b)/17) {
		return Vector{}, fmt.Errorf("%w: %d entries cannot fit in %d bytes", ErrBadVector, count, len(b))
	}
	if count == 0 {
		if len(b) != 0 {
			return Vector{}, fmt.Errorf("%w: trailing bytes", ErrBadVector)
		}
		return Vector{}, nil
	}
	es := make([]Dot, 0, count)
	for range count {
		var e Dot
		copy(e.Device[:], b[:16])
		b = b[16:]
		e.N, n = uvarint(b)
		if n <= 0 {
			return Vector{}, fmt.Errorf("%w: bad dot", ErrBadVector)
		}
		b = b[n:]
		if e.N == 0 {
			return Vector{}, fmt.Errorf("%w: zero entry for %s", ErrBadVector, e.Device)
		}
		if len(es) > 0 && bytes.Compare(es[len(es)-1].Device[:], e.Device[:]) >= 0 {
			return Vector{}, fmt.Errorf("%w: devices out of order", ErrBadVector)
		}
		es = append(es, e)
		if len(b) < 17 && len(es) < int(count) {
			return Vector{}, fmt.Errorf("%w: truncated", ErrBadVector)
		}
	}
	if len(b) != 0 {
		return Vector{}, fmt.Errorf("%w: trailing bytes", ErrBadVector)
	}
	return Vector{entries: es}, nil
}

// uvarint is binary.Uvarint that also refuses overlong encodings (a final
// zero byte), so that every number has one encoding.
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n > 1 && b[n-1] == 0 {
		return 0, -1
	}
	return v, n
}
