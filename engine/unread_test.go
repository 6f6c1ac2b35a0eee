package engine_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// TestReadMarkerCounts: a user's read marker carries the number of
// messages up to it wherever the writer knows it (the user's own message,
// joining, a read up to the head), so that an unread count reads no op;
// a marker without it (a read short of the head, as every marker was
// before format 3) still counts right; and Check catches a wrong count.
// The engine's tests check every count a read takes from a marker against
// the op it counts (verifyCaches).
func TestReadMarkerCounts(t *testing.T) {
	ctx := context.Background()
	o := enginetest.Options(t, 1)
	fs := o.FS
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("t", bob) // seqs 1 and 2: bob joins at 2, with nothing unread
	for _, text := range []string{"one", "two", "three"} {
		alice.Send(conv, text) // seqs 3 to 5
	}
	unread := func(e *engine.Engine, want uint64) {
		t.Helper()
		info, _, _, err := e.Conversation(bob.Actor, conv)
		if err != nil || info.Unread != want {
			t.Fatalf("bob's unread count: %d, %v; want %d", info.Unread, err, want)
		}
	}
	unread(e, 3)
	if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Read: 4}}); err != nil {
		t.Fatal(err)
	}
	unread(e, 1)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	aliceMark, bobMark := keys.ID2(keys.TUserMark, conv, alice.Actor.User), keys.ID2(keys.TUserMark, conv, bob.Actor.User)
	withStore(t, fs, func(st *store.Store) {
		if m := readMarker(t, st, aliceMark); m.Read != 5 || !m.ReadCounted || m.ReadMessages != 3 {
			t.Errorf("alice's marker after her third message: %+v; want read 5 counted as 3 messages", m)
		}
		// Short of the head, the count is left to readers.
		if m := readMarker(t, st, bobMark); m.Read != 4 || m.ReadCounted {
			t.Errorf("bob's marker after reading to seq 4 of 5: %+v; want read 4, not counted", m)
		}
	})
	o.Rand = enginetest.Options(t, 2).Rand
	e2, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	unread(e2, 1)
	enginetest.MustCheck(t, e2)
	// A read up to the head is counted, and the next message is unread.
	if err := e2.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Read: 5}}); err != nil {
		t.Fatal(err)
	}
	alice.E = e2
	alice.Send(conv, "four")
	unread(e2, 1)
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}
	withStore(t, fs, func(st *store.Store) {
		m := readMarker(t, st, bobMark)
		if m.Read != 5 || !m.ReadCounted || m.ReadMessages != 3 {
			t.Errorf("bob's marker after reading to the head: %+v; want read 5 counted as 3 messages", m)
		}
		m.ReadMessages = 7
		b := st.NewBatch()
		b.Set(bobMark, record.AppendMarker(nil, &m))
		if err := st.Commit(b); err != nil {
			t.Fatal(err)
		}
	})
	o.Rand = enginetest.Options(t, 3).Rand
	e3, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	defer e3.Close()
	rep, err := e3.Check()
	if err != nil {
		t.Fatal(err)
	}
	if want := "read up to seq 5, counted as 7 messages; the log has 3"; rep.Err() == nil || !strings.Contains(rep.Err().Error(), want) {
		t.Errorf("Check of a marker with a wrong count: %v; want a problem saying %q", rep.Err(), want)
	}
}

// TestDeviceMarkersKeepDelivered: a device's marker holds what the device
// holds (Delivered, where its next session resumes), and what its user
// read goes to the user's marker alone, the only one readers ask: a push
// writes no device marker (it once raised the sender's device's Read, a
// key nothing read, one in six of a single-op push's), and an ack's read
// moves the user's marker, not the device's.
func TestDeviceMarkersKeepDelivered(t *testing.T) {
	ctx := context.Background()
	o := enginetest.Options(t, 1)
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("t", bob)
	alice.Send(conv, "one")
	alice.Send(conv, "two") // seq 4
	if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Delivered: 4, Read: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	withStore(t, o.FS, func(st *store.Store) {
		v := st.View()
		_, err := v.Get(keys.ID2(keys.TDevMark, conv, alice.Actor.Device))
		v.Release()
		if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("alice's device marker after her pushes: %v; want none written", err)
		}
		if m := readMarker(t, st, keys.ID2(keys.TUserMark, conv, alice.Actor.User)); m.Read != 4 {
			t.Errorf("alice's user marker after her message at seq 4: %+v; want read 4", m)
		}
		if m := readMarker(t, st, keys.ID2(keys.TDevMark, conv, bob.Actor.Device)); m != (record.Marker{Delivered: 4}) {
			t.Errorf("bob's device marker after his ack: %+v; want delivered 4 alone", m)
		}
		if m := readMarker(t, st, keys.ID2(keys.TUserMark, conv, bob.Actor.User)); m.Delivered != 4 || m.Read != 3 || m.PublicRead != 3 {
			t.Errorf("bob's user marker after his ack: %+v; want delivered 4, read 3, shown", m)
		}
	})
}

// withStore opens the store of a closed engine on fs for f.
func withStore(t *testing.T, fs vfs.FS, f func(*store.Store)) {
	t.Helper()
	st, err := store.Open("db", store.Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	f(st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
}

func readMarker(t *testing.T, st *store.Store, key []byte) record.Marker {
	t.Helper()
	v := st.View()
	defer v.Release()
	raw, err := v.Get(key)
	if err != nil {
		t.Fatalf("read marker %x: %v", key, err)
	}
	m, err := record.DecodeMarker(raw)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestCountedReadMarkerReadsNoOp: as production runs (without the tests'
// checks), the unread count of a conversation whose read marker counts
// its messages takes one store read fewer than one whose marker does not
// (a read short of the head): the op at the marker.
func TestCountedReadMarkerReadsNoOp(t *testing.T) {
	engine.MeasureWithoutChecks(t)
	e, err := engine.Open("db", enginetest.Options(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	counted, uncounted := alice.Create("counted", bob), alice.Create("uncounted", bob)
	for _, conv := range []ulid.ULID{counted, uncounted} {
		for _, text := range []string{"one", "two", "three"} {
			alice.Send(conv, text) // seqs 3 to 5
		}
	}
	if err := e.Mark(context.Background(), bob.Actor, []engine.Marker{{Conv: uncounted, Read: 4}}); err != nil {
		t.Fatal(err)
	}
	reads := func(conv ulid.ULID, want uint64) uint64 {
		t.Helper()
		var n uint64
		for range 2 { // the second, with what the first cached
			before := e.Metrics().Reads
			info, _, _, err := e.Conversation(bob.Actor, conv)
			if err != nil || info.Unread != want {
				t.Fatalf("bob's unread count: %d, %v; want %d", info.Unread, err, want)
			}
			n = e.Metrics().Reads - before
		}
		return n
	}
	c, u := reads(counted, 3), reads(uncounted, 1)
	if u != c+1 {
		t.Errorf("the unread count took %d store reads with a counted marker and %d without; want one fewer", c, u)
	}
}

// TestRevokeDropsDeviceMarkers: revoking a device deletes its device
// markers, which nothing reads again and nothing else would delete: in its
// user's conversations, in one the user left, and in one the user joined
// in the revoking group itself, where the device's ack shares the group
// with the revocation. Other devices' markers stay.
func TestRevokeDropsDeviceMarkers(t *testing.T) {
	hold := newSyncHold()
	o := enginetest.Options(t, 1)
	o.FS = hold.fs()
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	phone := enginetest.Login(t, e, "bob")
	kept := alice.Create("kept", bob)
	left := alice.Create("left", bob)
	joined := alice.Create("joined") // seq 1
	alice.Send(kept, "one")          // seq 3
	alice.Send(left, "one")
	if err := e.Mark(ctx, phone.Actor, []engine.Marker{{Conv: kept, Delivered: 3}, {Conv: left, Delivered: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: kept, Delivered: 3}}); err != nil {
		t.Fatal(err)
	}
	alice.Push(alice.Op(left, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))

	// One group: bob joins, the phone acks there, bob revokes the phone.
	held := hold.during(func() { alice.Send(kept, "held") })
	add := alice.Op(joined, model.Op{Kind: model.KindMemberAdd, Member: bob.Actor.User, Role: model.RoleMember}) // seq 2
	added := make(chan error, 1)
	go func() { _, err := e.Append(ctx, alice.Actor, []model.Op{add}); added <- err }()
	awaitQueued(e, 1)
	ack := e.StartMark(ctx, phone.Actor, []engine.Marker{{Conv: joined, Delivered: 2}})
	awaitQueued(e, 2)
	revoked := make(chan error, 1)
	go func() { revoked <- e.RevokeDevice(ctx, bob.Actor, phone.Actor.Device) }()
	awaitQueued(e, 3)
	hold.release()
	<-held
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	if err := ack.Wait(ctx); err != nil {
		t.Fatalf("the phone's ack, before its revocation in the group: %v", err)
	}
	if err := <-revoked; err != nil {
		t.Fatal(err)
	}
	enginetest.MustCheck(t, e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	withStore(t, o.FS, func(st *store.Store) {
		v := st.View()
		defer v.Release()
		lo, hi := keys.Prefix([]byte{keys.TDevMark})
		it, err := v.Iter(lo, hi)
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		var bobs int
		for ok := it.First(); ok; ok = it.Next() {
			conv, dev, _ := keys.ParseID2(it.Key())
			switch dev {
			case phone.Actor.Device:
				t.Errorf("the revoked phone's marker in %v is still stored", conv)
			case bob.Actor.Device:
				bobs++
			}
		}
		if bobs != 1 {
			t.Errorf("bob's other device has %d markers stored; want its one in kept", bobs)
		}
	})
}
