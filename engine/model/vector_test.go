package model

import (
	"bytes"
	"testing"

	"github.com/oklog/ulid/v2"
	"pgregory.net/rapid"
)

// devices is a small pool so that generated vectors share devices often.
var devices = func() []ulid.ULID {
	ds := make([]ulid.ULID, 5)
	for i := range ds {
		ds[i][15] = byte(i + 1)
		ds[i][0] = byte(i * 40)
	}
	return ds
}()

// genVector draws vectors including empty ones, zero entries and duplicate
// devices, which NewVector must canonicalise.
func genVector() *rapid.Generator[Vector] {
	return rapid.Custom(func(t *rapid.T) Vector {
		n := rapid.IntRange(0, 7).Draw(t, "entries")
		es := make([]Dot, n)
		for i := range es {
			es[i] = Dot{
				Device: rapid.SampledFrom(devices).Draw(t, "device"),
				N:      rapid.Uint64Range(0, 6).Draw(t, "n"),
			}
		}
		return NewVector(es...)
	})
}

func TestVectorLaws(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		a, b, c := genVector().Draw(t, "a"), genVector().Draw(t, "b"), genVector().Draw(t, "c")
		if !a.Merge(b).Equal(b.Merge(a)) {
			t.Fatalf("merge not commutative: %v, %v", a, b)
		}
		if !a.Merge(b).Merge(c).Equal(a.Merge(b.Merge(c))) {
			t.Fatalf("merge not associative: %v, %v, %v", a, b, c)
		}
		if !a.Merge(a).Equal(a) {
			t.Fatalf("merge not idempotent: %v", a)
		}
		if o := a.Compare(a.Merge(b)); o != Before && o != Equal {
			t.Fatalf("merge not monotone: %v vs %v is %v", a, a.Merge(b), o)
		}
		// Compare is antisymmetric.
		want := map[Ordering]Ordering{Equal: Equal, Before: After, After: Before, Concurrent: Concurrent}
		if got := b.Compare(a); got != want[a.Compare(b)] {
			t.Fatalf("Compare(%v, %v) = %v but reversed = %v", a, b, a.Compare(b), got)
		}
		// Canonical form: no zero entries, sorted, unique.
		es := a.Entries()
		for i, e := range es {
			if e.N == 0 {
				t.Fatalf("zero entry in %v", a)
			}
			if i > 0 && es[i-1].Device.Compare(e.Device) >= 0 {
				t.Fatalf("entries not sorted and unique: %v", a)
			}
		}
		// Encoding round-trips and is canonical.
		enc, _ := a.MarshalBinary()
		dec, err := DecodeVector(enc)
		if err != nil {
			t.Fatalf("decode %x: %v", enc, err)
		}
		if !dec.Equal(a) {
			t.Fatalf("round trip: %v became %v", a, dec)
		}
		encB, _ := b.MarshalBinary()
		if a.Equal(b) != bytes.Equal(enc, encB) {
			t.Fatalf("equal vectors must have equal encodings: %v %v", a, b)
		}
		// Applying what a lacks from b gives the merge.
		got := a
		for _, r := range a.Lacks(b) {
			if r.From != a.Get(r.Device)+1 {
				t.Fatalf("lacks range %v does not start after %d", r, a.Get(r.Device))
			}
			got = got.With(r.Device, r.To)
		}
		if !got.Equal(a.Merge(b)) {
			t.Fatalf("a + lacks(b) = %v, want %v", got, a.Merge(b))
		}
		// Contains agrees with Get.
		for _, d := range devices {
			n := a.Get(d)
			if n > 0 && !a.Contains(Dot{Device: d, N: n}) || a.Contains(Dot{Device: d, N: n + 1}) {
				t.Fatalf("Contains disagrees with Get for %s in %v", d, a)
			}
		}
	})
}

func TestVectorZeroValue(t *testing.T) {
	var v Vector
	if v.Len() != 0 || v.Get(devices[0]) != 0 || !v.Equal(NewVector()) || !v.Equal(NewVector(Dot{Device: devices[0]})) {
		t.Fatalf("zero vector is not the empty vector: %v", v)
	}
	if got := v.With(devices[1], 3).Get(devices[1]); got != 3 {
		t.Fatalf("With on zero vector: got %d", got)
	}
	if s := NewVector(Dot{devices[1], 2}, Dot{devices[1], 5}).String(); s != "{"+devices[1].String()+":5}" {
		t.Fatalf("String = %s", s)
	}
}

func TestDecodeVectorRejectsNonCanonical(t *testing.T) {
	d1, d2 := devices[1], devices[2]
	enc := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty input", nil},
		{"trailing bytes after empty", []byte{0, 1}},
		{"zero entry", enc([]byte{1}, d1[:], []byte{0})},
		{"unsorted", enc([]byte{2}, d2[:], []byte{1}, d1[:], []byte{1})},
		{"duplicate", enc([]byte{2}, d1[:], []byte{1}, d1[:], []byte{2})},
		{"count too large", enc([]byte{3}, d1[:], []byte{1})},
		{"truncated dot", enc([]byte{1}, d1[:])},
		{"trailing bytes", enc([]byte{1}, d1[:], []byte{1, 9})},
		{"huge count", []byte{0xff, 0xff, 0xff, 0xff, 0x0f}},
	}
	for _, tt := range tests {
		if v, err := DecodeVector(tt.in); err == nil {
			t.Errorf("%s: decoded %x as %v, want an error", tt.name, tt.in, v)
		}
	}
}

func FuzzDecodeVector(f *testing.F) {
	for _, v := range []Vector{{}, NewVector(Dot{devices[0], 1}), NewVector(Dot{devices[1], 300}, Dot{devices[3], 1 << 40})} {
		b, _ := v.MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte{2, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := DecodeVector(in)
		if err != nil {
			return
		}
		out, _ := v.MarshalBinary()
		if !bytes.Equal(in, out) {
			t.Fatalf("decoded %x as %v, which encodes as %x: not canonical", in, v, out)
		}
	})
}
