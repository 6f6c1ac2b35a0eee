package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"unsafe"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
)

func id(n byte) ulid.ULID { return ulid.ULID{0: 1, 15: n} }

func sampleOps() []Op {
	base := model.Op{ID: id(1), Conv: id(2), Seq: 7, Dot: model.Dot{Device: id(3), N: 300}, User: id(4)}
	with := func(f func(*Op)) Op { o := Op{Op: base, Messages: 12}; f(&o); return o }
	return []Op{
		with(func(o *Op) { o.Kind = model.KindCreate; o.Title = "team" }),
		with(func(o *Op) { o.Kind = model.KindMessage; o.Body = []byte("hello"); o.ContentType = "text/plain" }),
		with(func(o *Op) { o.Kind = model.KindMessage; o.Erased = true; o.Hash = [16]byte{9, 9} }),
		with(func(o *Op) { o.Kind = model.KindEdit; o.Target = id(5); o.Body = []byte("x") }),
		with(func(o *Op) { o.Kind = model.KindEdit; o.Target = id(5); o.Erased = true; o.Hash = [16]byte{1} }),
		with(func(o *Op) { o.Kind = model.KindDelete; o.Target = id(5) }),
		with(func(o *Op) { o.Kind = model.KindReactionAdd; o.Target = id(5); o.ReactionKey = "👍" }),
		with(func(o *Op) { o.Kind = model.KindReactionRemove; o.Target = id(5); o.ReactionKey = "👍" }),
		with(func(o *Op) { o.Kind = model.KindMemberAdd; o.Member = id(6); o.Role = model.RoleAdmin }),
		with(func(o *Op) { o.Kind = model.KindMemberRemove; o.Member = id(6) }),
		with(func(o *Op) { o.Kind = model.KindMemberRole; o.Member = id(6); o.Role = model.RoleOwner }),
		with(func(o *Op) { o.Kind = model.KindSetTitle }),
	}
}

func TestOpRoundTrip(t *testing.T) {
	for _, op := range sampleOps() {
		got, err := DecodeOp(op.Conv, op.Seq, AppendOp(nil, &op))
		if err != nil {
			t.Fatalf("%s: %v", op.Kind, err)
		}
		if !reflect.DeepEqual(got, op) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", op.Kind, got, op)
		}
	}
}

// TestOpDecoderSharesChunksSafely decodes a run of ops with one OpDecoder:
// they must equal DecodeOp's, bodies past the first few must share chunks,
// and an append to one body must not reach the next.
func TestOpDecoderSharesChunksSafely(t *testing.T) {
	const n = 100
	records := make([][]byte, n)
	for i := range records {
		op := sampleOps()[1]
		op.Seq = uint64(i + 1)
		op.Body = []byte(fmt.Sprintf("message %d", i))
		records[i] = AppendOp(nil, &op)
	}
	var d OpDecoder
	got := make([]Op, n)
	for i, b := range records {
		want, err := DecodeOp(id(2), uint64(i+1), b)
		if err != nil {
			t.Fatal(err)
		}
		if got[i], err = d.Decode(id(2), uint64(i+1), b); err != nil || !reflect.DeepEqual(got[i], want) {
			t.Fatalf("op %d: Decode = %+v, %v; DecodeOp = %+v", i, got[i], err, want)
		}
	}
	for i := arenaAfter + 1; i < n; i++ {
		prev, cur := got[i-1].Body, got[i].Body
		if cap(prev) != len(prev) {
			t.Fatalf("body %d has room for %d more bytes", i-1, cap(prev)-len(prev))
		}
		if unsafe.Pointer(unsafe.SliceData(cur)) != unsafe.Add(unsafe.Pointer(unsafe.SliceData(prev)), len(prev)) {
			t.Fatalf("bodies %d and %d are not side by side in a chunk", i-1, i)
		}
	}
	last := string(got[n-1].Body)
	_ = append(got[n-2].Body, "XX"...)
	if string(got[n-1].Body) != last {
		t.Fatalf("an append to body %d changed body %d to %q", n-2, n-1, got[n-1].Body)
	}
	// The content type is interned and the bodies take a few chunks: far
	// fewer allocations than one per op.
	allocs := testing.AllocsPerRun(10, func() {
		var d OpDecoder
		for i, b := range records {
			if _, err := d.Decode(id(2), uint64(i+1), b); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs > arenaAfter+2 {
		t.Errorf("decoding %d ops took %.0f allocations, want at most %d", n, allocs, arenaAfter+2)
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	c := Conv{Head: 1 << 40, FeedPos: 9, EntryPos: 7, Messages: 3, Members: 70000, Title: "t"}
	if got, err := DecodeConv(AppendConv(nil, &c)); err != nil || got != c {
		t.Errorf("conv: %+v %v", got, err)
	}
	c.SharedFeed, c.MoveEntries, c.EntryPos = true, true, 9
	if got, err := DecodeConv(AppendConv(nil, &c)); err != nil || got != c {
		t.Errorf("shared-feed conv: %+v %v", got, err)
	}
	// Records written before EntryPos: no flags, or the byte 1 for a
	// shared feed. Their entries sit at FeedPos, and may share it with a
	// removed member's.
	legacy := []byte{Version, 5, 9, 3, 2, 1, 't'}
	want := Conv{Head: 5, FeedPos: 9, EntryPos: 9, Messages: 3, Members: 2, Title: "t", MoveEntries: true}
	if got, err := DecodeConv(legacy); err != nil || got != want {
		t.Errorf("conv written before EntryPos: %+v %v; want %+v", got, err, want)
	}
	want.SharedFeed = true
	if got, err := DecodeConv(append(slices.Clip(legacy), 1)); err != nil || got != want {
		t.Errorf("shared-feed conv written before EntryPos: %+v %v; want %+v", got, err, want)
	}
	for _, bad := range [][]byte{
		append(slices.Clip(legacy), 0),          // no flag set
		append(slices.Clip(legacy), 4),          // MoveEntries without EntryPos
		append(slices.Clip(legacy), 0x0a, 0),    // an unknown flag
		append(slices.Clip(legacy), 2),          // the lag missing
		append(slices.Clip(legacy), 2, 10),      // entries below position 0
		append(slices.Clip(legacy), 2, 1, 0x55), // trailing bytes
	} {
		if got, err := DecodeConv(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("conv ending % x: %+v, %v; want ErrCorrupt", bad[len(legacy):], got, err)
		}
	}
	m := Member{Role: model.RoleNone, Since: 5, DetachedPos: 8, Title: "as it was"}
	if got, err := DecodeMember(AppendMember(nil, &m)); err != nil || got != m {
		t.Errorf("member: %+v %v", got, err)
	}
	u := User{Username: "alice", DisplayName: "Alice", PasswordHash: "$argon2id$...", CreatedMs: 1700000000000}
	if got, err := DecodeUser(AppendUser(nil, &u)); err != nil || got != u {
		t.Errorf("user: %+v %v", got, err)
	}
	d := Device{Name: "phone", CreatedMs: 5, Revoked: true, TokenHash: [32]byte{1, 31: 2}}
	if got, err := DecodeDevice(AppendDevice(nil, &d)); err != nil || got != d {
		t.Errorf("device: %+v %v", got, err)
	}
	mk := Marker{Delivered: 9, Read: 8, PublicRead: 7}
	if got, err := DecodeMarker(AppendMarker(nil, &mk)); err != nil || got != mk {
		t.Errorf("marker: %+v %v", got, err)
	}
	// A count of zero messages is a count: it must not read back as none.
	for _, n := range []uint64{0, 5} {
		counted := Marker{Delivered: 9, Read: 8, PublicRead: 7, ReadMessages: n, ReadCounted: true}
		if got, err := DecodeMarker(AppendMarker(nil, &counted)); err != nil || got != counted {
			t.Errorf("counted marker: %+v %v", got, err)
		}
	}
	// A marker written before counts were kept: three uvarints.
	if got, err := DecodeMarker([]byte{Version, 9, 8, 7}); err != nil || got != mk {
		t.Errorf("marker without a count: %+v %v, want %+v", got, err, mk)
	}
	if a, b, err := DecodeIDs(AppendIDs(nil, id(1), id(2))); err != nil || a != id(1) || b != id(2) {
		t.Errorf("ids: %v %v %v", a, b, err)
	}
	if v, err := DecodeUint(AppendUint(nil, 1<<63)); err != nil || v != 1<<63 {
		t.Errorf("uint: %v %v", v, err)
	}
}

func TestDecodeRejectsCorruption(t *testing.T) {
	op := sampleOps()[1]
	good := AppendOp(nil, &op)
	for name, b := range map[string][]byte{
		"empty":           nil,
		"unknown version": append([]byte{9}, good[1:]...),
		"unknown kind":    append([]byte{Version, 77}, good[2:]...),
		"unknown flag":    append([]byte{Version, good[1], 4}, good[3:]...),
		"truncated":       good[:len(good)-1],
		"trailing":        append(append([]byte(nil), good...), 0),
		"body too long":   append(append([]byte(nil), good[:len(good)-6]...), 0xff, 0x7f),
	} {
		if _, err := DecodeOp(op.Conv, op.Seq, b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got %v, want ErrCorrupt", name, err)
		}
	}
	if _, err := DecodeMember([]byte{Version, 9, 0, 0, 0}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("member with role 9: got %v", err)
	}
	if _, err := DecodeDevice(append([]byte{Version, 0, 0, 2}, make([]byte, 32)...)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("device with revoked=2: got %v", err)
	}
}

// FuzzDecodeOp checks that no input panics the decoder and that whatever
// decodes re-encodes to something that decodes the same.
func FuzzDecodeOp(f *testing.F) {
	for _, op := range sampleOps() {
		f.Add(AppendOp(nil, &op))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := DecodeOp(id(2), 7, b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		again, err := DecodeOp(id(2), 7, AppendOp(nil, &op))
		if err != nil || !reflect.DeepEqual(again, op) {
			t.Fatalf("re-encoding changed the op: %+v -> %+v (%v)", op, again, err)
		}
	})
}

func FuzzDecodeRecords(f *testing.F) {
	f.Add(AppendConv(nil, &Conv{Head: 3, Title: "x"}))
	f.Add(AppendMember(nil, &Member{Role: 1, Since: 2}))
	f.Add(AppendUser(nil, &User{Username: "a"}))
	f.Add(AppendDevice(nil, &Device{Name: "d"}))
	f.Add(AppendMarker(nil, &Marker{Read: 1}))
	f.Add(AppendMarker(nil, &Marker{Read: 1, ReadMessages: 1, ReadCounted: true}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := DecodeConv(b); err == nil {
			if got, err := DecodeConv(AppendConv(nil, &c)); err != nil || got != c {
				t.Fatalf("conv re-encoding: %+v -> %+v", c, got)
			}
		}
		if m, err := DecodeMember(b); err == nil {
			if got, err := DecodeMember(AppendMember(nil, &m)); err != nil || got != m {
				t.Fatalf("member re-encoding: %+v -> %+v", m, got)
			}
		}
		if u, err := DecodeUser(b); err == nil {
			if got, err := DecodeUser(AppendUser(nil, &u)); err != nil || got != u {
				t.Fatalf("user re-encoding: %+v -> %+v", u, got)
			}
		}
		if d, err := DecodeDevice(b); err == nil {
			if got, err := DecodeDevice(AppendDevice(nil, &d)); err != nil || got != d {
				t.Fatalf("device re-encoding: %+v -> %+v", d, got)
			}
		}
		if m, err := DecodeMarker(b); err == nil {
			if got, err := DecodeMarker(AppendMarker(nil, &m)); err != nil || got != m {
				t.Fatalf("marker re-encoding: %+v -> %+v", m, got)
			}
		}
	})
}

// TestDotRun: a run of one is the number a format 4 store holds for every
// dot, and reads back as a run of one; longer runs carry their length;
// a length under 2, one past the seqs, or trailing bytes are corrupt.
func TestDotRun(t *testing.T) {
	for _, c := range []struct{ seq, count uint64 }{{1, 1}, {7, 2}, {1 << 40, 16}, {3, 1 << 20}} {
		seq, count, err := DecodeDotRun(AppendDotRun(nil, c.seq, c.count))
		if err != nil || seq != c.seq || count != c.count {
			t.Errorf("run of %d from %d read back as %d from %d (%v)", c.count, c.seq, count, seq, err)
		}
	}
	if !bytes.Equal(AppendDotRun(nil, 9, 1), AppendUint(nil, 9)) {
		t.Error("a run of one is not encoded as a number")
	}
	for name, b := range map[string][]byte{
		"length 1":      binary.AppendUvarint(AppendUint(nil, 9), 1),
		"length 0":      binary.AppendUvarint(AppendUint(nil, 9), 0),
		"past the seqs": binary.AppendUvarint(AppendUint(nil, ^uint64(0)-1), 3),
		"trailing":      append(AppendDotRun(nil, 9, 2), 0),
		"empty":         nil,
	} {
		if _, _, err := DecodeDotRun(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %v; want ErrCorrupt", name, err)
		}
	}
}
