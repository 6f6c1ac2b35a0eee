package engine_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// garbled is a record that decodes as nothing: a format version alone.
var garbled = []byte{1, 2, 3}

// pair is a store where alice and bob share two conversations, good and
// bad, bad changed last, with one message each at seq 3, after the
// create and bob's add (bad's is b1).
type pair struct {
	e          *engine.Engine
	alice, bob *enginetest.Device
	good, bad  ulid.ULID
	b1         ulid.ULID
	was        map[string]string // the garbled keys' values before
}

// damagedPair makes a pair, runs then on it, closes its store, garbles
// the keys damage names, and opens it again.
func damagedPair(t *testing.T, o engine.Options, damage func(p *pair) [][]byte, then ...func(p *pair)) *pair {
	t.Helper()
	p := &pair{e: enginetest.Open(t, o)}
	p.alice = enginetest.Register(t, p.e, "alice")
	p.bob = enginetest.Register(t, p.e, "bob")
	p.good = p.alice.Create("good", p.bob)
	p.bad = p.alice.Create("bad", p.bob)
	p.alice.Send(p.good, "g1")
	p.b1 = p.alice.Send(p.bad, "b1").ID
	for _, f := range then {
		f(p)
	}
	if err := p.e.Close(); err != nil {
		t.Fatal(err)
	}
	all, err := engine.Snapshot(o.FS, "db")
	if err != nil {
		t.Fatal(err)
	}
	p.was = map[string]string{}
	for _, k := range damage(p) {
		p.was[string(k)] = all[string(k)]
		if err := engine.SetKey(o.FS, "db", k, garbled); err != nil {
			t.Fatal(err)
		}
	}
	p.e = enginetest.Open(t, o, p.alice, p.bob)
	return p
}

// repair closes p's store, puts back what damagedPair garbled, and opens
// it again.
func (p *pair) repair(t *testing.T, o engine.Options) {
	t.Helper()
	if err := p.e.Close(); err != nil {
		t.Fatal(err)
	}
	for k, v := range p.was {
		if err := engine.SetKey(o.FS, "db", []byte(k), []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	p.e = enginetest.Open(t, o, p.alice, p.bob)
}

// bobsMember garbles bob's member record in bad.
func bobsMember(p *pair) [][]byte { return [][]byte{engine.MemberKey(p.bad, p.bob.Actor.User)} }

// TestDamagedConversationFencedOff: a conversation with a member record
// that does not decode is fenced off: its ops are refused with
// ErrDamaged, its markers dropped, its reads fail, and its members'
// sessions leave it out; every other conversation goes on, and the store
// does not fail. Once the store is rebuilt, a device caught up meanwhile
// takes the conversation whole: its sessions held it below its entry.
func TestDamagedConversationFencedOff(t *testing.T) {
	o := enginetest.Options(t, 1)
	p := damagedPair(t, o, bobsMember)
	e, alice, bob, good, bad := p.e, p.alice, p.bob, p.good, p.bad

	// Bob's catch-up leaves bad out, and holds his position below it.
	infos, pos := catchUpFrom(t, e, bob, 0)
	if _, ok := infos[bad]; ok || len(infos) != 1 || infos[good].Head != 3 {
		t.Fatalf("bob's catch-up: %+v; want good alone", infos)
	}
	// Pushes: one op of each conversation, in one call, and another of
	// good after it. Bad's is refused, the others are stored.
	ops := []model.Op{
		alice.Op(good, model.Op{Kind: model.KindMessage, Body: []byte("g2")}),
		alice.Op(bad, model.Op{Kind: model.KindMessage, Body: []byte("b2")}),
		alice.Op(good, model.Op{Kind: model.KindMessage, Body: []byte("g3")}),
	}
	res, err := e.Append(context.Background(), alice.Actor, ops)
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if res[0].Err != nil || res[0].Seq != 4 || res[2].Err != nil || res[2].Seq != 5 {
		t.Errorf("good's ops: %+v, %+v; want seqs 4 and 5", res[0], res[2])
	}
	if !errors.Is(res[1].Err, engine.ErrDamaged) || res[1].Seq != 0 {
		t.Errorf("bad's op: %+v; want ErrDamaged", res[1])
	}
	if err := e.Failed(); err != nil {
		t.Fatalf("the store failed: %v", err)
	}
	if got := e.Damaged(); !slices.Equal(got, []ulid.ULID{bad}) {
		t.Errorf("damaged %v, want [%s]", got, bad)
	}
	// Markers: bad's dropped, good's moved, no error.
	if err := e.Mark(context.Background(), bob.Actor, []engine.Marker{{Conv: bad, Delivered: 3, Read: 3}, {Conv: good, Delivered: 5, Read: 5}}); err != nil {
		t.Fatalf("mark: %v", err)
	}
	// Reads of bad fail with ErrDamaged; the list leaves it out.
	if _, err := e.History(bob.Actor, bad, engine.HistoryQuery{}); !errors.Is(err, engine.ErrDamaged) {
		t.Errorf("history of bad: %v; want ErrDamaged", err)
	}
	if _, _, _, err := e.Conversation(bob.Actor, bad); !errors.Is(err, engine.ErrDamaged) {
		t.Errorf("conversation bad: %v; want ErrDamaged", err)
	}
	if _, err := e.Repair(bob.Actor, bad, model.Vector{}, 10); !errors.Is(err, engine.ErrDamaged) {
		t.Errorf("repair of bad: %v; want ErrDamaged", err)
	}
	list, _, err := e.Conversations(bob.Actor, ulid.ULID{}, 10)
	if err != nil || len(list) != 1 || list[0].ID != good || list[0].Read != 5 {
		t.Errorf("bob's conversations: %+v, %v; want good alone, read to 5", list, err)
	}
	// Bob's next catch-up, from where the first left him, takes good's new
	// messages, and still not bad.
	infos, pos2 := catchUpFrom(t, e, bob, pos)
	if _, ok := infos[bad]; ok || infos[good].Head != 5 {
		t.Fatalf("bob's second catch-up: %+v; want good at head 5 alone", infos)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	rebuild(t, o)
	e = enginetest.Open(t, o, alice, bob)
	infos, _ = catchUpFrom(t, e, bob, pos2)
	if info, ok := infos[bad]; !ok || info.Head != 3 || info.Role != model.RoleMember {
		t.Fatalf("bob's catch-up after the rebuild: %+v; want bad, whole", infos)
	}
	if got := e.Damaged(); len(got) != 0 {
		t.Errorf("damaged after the rebuild: %v", got)
	}
	bob.Send(bad, "b2")
	enginetest.MustCheck(t, e)
}

// TestDamagedConversationLiveRounds: a session whose catch-up left a
// damaged conversation out goes on live, and tells its device no
// position past the damaged conversation's entry.
func TestDamagedConversationLiveRounds(t *testing.T) {
	for _, damage := range []struct {
		name string
		keys func(p *pair) [][]byte
	}{
		{"member record", bobsMember},
		{"conversation record", func(p *pair) [][]byte { return [][]byte{engine.ConvKey(p.bad)} }},
	} {
		for _, shared := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, shared feed %v", damage.name, shared), func(t *testing.T) {
				o := enginetest.Options(t, 1)
				if shared {
					o.SharedFeedMembers = 1
				}
				p := damagedPair(t, o, damage.keys)
				s, r := openCaughtUp(t, p.e, p.bob)
				if _, ok := r.infos[p.bad]; ok {
					t.Fatalf("bob's catch-up took bad: %+v", r.infos)
				}
				held := r.pos
				for i := range 3 {
					p.alice.Send(p.good, fmt.Sprint("g", i+2))
					sent := 0
					for range 10 {
						ev, ok, err := s.Next()
						if err != nil {
							t.Fatalf("next: %v", err)
						}
						if !ok {
							break
						}
						for _, b := range ev.Batches {
							if b.Conv == p.bad {
								t.Fatalf("a live round sent bad's ops")
							}
							sent += len(b.Ops)
						}
						if ev.FeedPos > held {
							t.Fatalf("a live round told position %d, past the hold %d", ev.FeedPos, held)
						}
					}
					if sent != 1 {
						t.Errorf("live round %d sent %d ops, want good's new message", i, sent)
					}
				}
			})
		}
	}
}

// TestDamagedRecordsFenceTheirConversation: each record the writer reads
// of a conversation before it changes anything (the conversation's
// record, a member record, the sender's marker, the op an edit names, an
// op-id index entry) fences the conversation off when it does not decode,
// and the store goes on. A member's catch-up goes on too, with or without
// a shared feed: it leaves the conversation out where it reads the
// damage, and its device takes it once the store is repaired.
func TestDamagedRecordsFenceTheirConversation(t *testing.T) {
	message := func(p *pair) model.Op {
		return p.alice.Op(p.bad, model.Op{Kind: model.KindMessage, Body: []byte("b2")})
	}
	for _, tc := range []struct {
		name   string
		damage func(p *pair) [][]byte
		op     func(p *pair) model.Op
		seen   bool // a catch-up reads the damage
		held   bool // and holds the device below it, for a repair
	}{
		{"conversation record", func(p *pair) [][]byte { return [][]byte{engine.ConvKey(p.bad)} }, message, true, true},
		{"member record", bobsMember, message, true, true},
		{"sender's marker", func(p *pair) [][]byte { return [][]byte{engine.UserMarkKey(p.bad, p.alice.Actor.User)} }, message, true, true},
		// An op of the log: no rebuild makes it anew, and no hold waits.
		{"edited message", func(p *pair) [][]byte { return [][]byte{engine.OpKey(p.bad, 3)} }, func(p *pair) model.Op {
			return p.alice.Op(p.bad, model.Op{Kind: model.KindEdit, Target: p.b1, Body: []byte("b1, edited")})
		}, true, false},
		{"op-id index entry", func(p *pair) [][]byte { return [][]byte{engine.OpIDKey(p.bad, p.b1)} }, func(p *pair) model.Op {
			return p.alice.Op(p.bad, model.Op{Kind: model.KindReactionAdd, Target: p.b1, ReactionKey: "+1"})
		}, false, false},
	} {
		for _, shared := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, shared feed %v", tc.name, shared), func(t *testing.T) {
				o := enginetest.Options(t, 1)
				if shared {
					o.SharedFeedMembers = 1
				}
				p := damagedPair(t, o, tc.damage)

				ops := []model.Op{tc.op(p), p.alice.Op(p.good, model.Op{Kind: model.KindMessage, Body: []byte("g2")})}
				res, err := p.e.Append(context.Background(), p.alice.Actor, ops)
				if err != nil {
					t.Fatalf("append: %v", err)
				}
				if !errors.Is(res[0].Err, engine.ErrDamaged) {
					t.Errorf("bad's op: %+v; want ErrDamaged", res[0])
				}
				if res[1].Err != nil || res[1].Seq != 4 {
					t.Errorf("good's op: %+v; want seq 4", res[1])
				}
				if err := p.e.Failed(); err != nil {
					t.Fatalf("the store failed: %v", err)
				}

				s, err := p.e.OpenSession(p.bob.Actor, engine.SessionOptions{})
				if err != nil {
					t.Fatalf("bob's session: %v", err)
				}
				r := newReceiver(t)
				r.drain(s, engine.DefaultBatchOps)
				s.Close()
				if !r.caught {
					t.Fatal("bob's session did not catch up")
				}
				r.holdsExactly(p.good, 1, 4)
				if _, ok := r.held[p.bad][3]; ok == tc.seen {
					t.Errorf("bob's catch-up took b1: %v; want %v", ok, !tc.seen)
				}

				// Fenced: the next op is refused, whatever it reads.
				if r := p.bob.Try(p.bad, model.Op{Kind: model.KindMessage, Body: []byte("b3")}); !errors.Is(r.Err, engine.ErrDamaged) {
					t.Errorf("bad's next op: %+v; want ErrDamaged", r)
				}
				p.alice.Send(p.good, "g3")

				// Repaired, the store gives bob's device what it left out,
				// where it held the device for it.
				p.repair(t, o)
				again, _ := catchUpFrom(t, p.e, p.bob, r.pos)
				if info, ok := again[p.bad]; ok != tc.held || ok && info.Head != 3 {
					t.Errorf("bob's catch-up from %d after the repair: %+v; want bad at head 3: %v", r.pos, again, tc.held)
				}
				if err := p.e.Failed(); err != nil {
					t.Fatalf("the store failed: %v", err)
				}
			})
		}
	}
}

// TestDamagedRecordLaggingEntry: a member's feed entry may sit below its
// conversation's position (the record's EntryPos), even below where the
// device's last catch-up left it. With the record garbled, that position
// is not known: the catch-up holds the device below where it starts, and
// once the record is repaired the device takes what the conversation
// changed.
func TestDamagedRecordLaggingEntry(t *testing.T) {
	o := enginetest.Options(t, 1)
	var from uint64
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.ConvKey(p.bad)} }, func(p *pair) {
		_, from = catchUpFrom(t, p.e, p.bob, 0)
		p.alice.Send(p.bad, "b2") // moves bad's position, not bob's entry
		p.alice.Send(p.good, "g2")
	})
	infos, pos := catchUpFrom(t, p.e, p.bob, from)
	if _, ok := infos[p.bad]; ok || infos[p.good].Head != 4 {
		t.Fatalf("bob's catch-up from %d: %+v; want good at head 4 alone", from, infos)
	}
	p.repair(t, o)
	infos, _ = catchUpFrom(t, p.e, p.bob, pos)
	if info, ok := infos[p.bad]; !ok || info.Head != 4 {
		t.Fatalf("bob's catch-up from %d after the repair: %+v; want bad at head 4", pos, infos)
	}
}

// TestDamagedEditOfDeletedMessage: a delete reads the edits of the
// message it erases before it changes anything: an edit that does not
// decode fences the conversation off, and the store goes on.
func TestDamagedEditOfDeletedMessage(t *testing.T) {
	o := enginetest.Options(t, 1)
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.OpKey(p.bad, 4)} }, func(p *pair) {
		p.alice.Push(p.alice.Op(p.bad, model.Op{Kind: model.KindEdit, Target: p.b1, Body: []byte("b1, edited")})) // seq 4
	})
	ops := []model.Op{
		p.alice.Op(p.bad, model.Op{Kind: model.KindDelete, Target: p.b1}),
		p.alice.Op(p.good, model.Op{Kind: model.KindMessage, Body: []byte("g2")}),
	}
	res, err := p.e.Append(context.Background(), p.alice.Actor, ops)
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if !errors.Is(res[0].Err, engine.ErrDamaged) || res[1].Err != nil || res[1].Seq != 4 {
		t.Errorf("results %+v; want the delete refused, ErrDamaged, and good's message at seq 4", res)
	}
	if err := p.e.Failed(); err != nil {
		t.Fatalf("the store failed: %v", err)
	}
}

// TestDamagedHoldAtZero: a session held below every change (a new
// device, in a shared-feed conversation whose record does not decode:
// its position is not known) still ends each live round, at position
// zero, which the server then seals as a position, not as none.
func TestDamagedHoldAtZero(t *testing.T) {
	o := enginetest.Options(t, 1)
	o.SharedFeedMembers = 1
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.ConvKey(p.bad)} })
	s, r := openCaughtUp(t, p.e, p.bob)
	if r.pos != 0 {
		t.Fatalf("bob's catch-up ended at %d, want held at 0", r.pos)
	}
	p.alice.Send(p.good, "g2")
	var last engine.Event
	for range 10 {
		ev, ok, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		last = ev
	}
	if last.Kind != engine.EventOps || !last.RoundEnd || last.FeedPos != 0 {
		t.Fatalf("the live round's last event %+v; want its end, at 0", last)
	}
}

// TestDamagedUserFeedIndex: a user feed index entry that does not decode
// fails no ack: the new entry goes in, the old stays (Check sees it).
func TestDamagedUserFeedIndex(t *testing.T) {
	o := enginetest.Options(t, 1)
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.UFeedIdxKey(p.bob.Actor.User, p.bad)} }, func(p *pair) {
		if err := p.e.Mark(context.Background(), p.bob.Actor, []engine.Marker{{Conv: p.bad, Delivered: 3, Read: 3}}); err != nil {
			t.Fatal(err)
		}
		p.alice.Send(p.bad, "b2")
	})
	err := p.e.Mark(context.Background(), p.bob.Actor, []engine.Marker{{Conv: p.bad, Delivered: 4, Read: 4}, {Conv: p.good, Delivered: 3, Read: 3}})
	if err != nil || p.e.Failed() != nil {
		t.Fatalf("mark: %v; store failed: %v", err, p.e.Failed())
	}
	infos, _ := catchUpFrom(t, p.e, p.bob, 0)
	if infos[p.bad].Read != 4 || infos[p.good].Read != 3 {
		t.Errorf("bob's reads %d and %d, want 4 and 3", infos[p.bad].Read, infos[p.good].Read)
	}
}

// TestDamagedDeviceMarker: a device's marker that does not decode fences
// nothing off: it only says where the device's sessions resume. The
// device takes the conversation from the start, its next ack writes the
// marker anew, and the conversation takes ops.
func TestDamagedDeviceMarker(t *testing.T) {
	o := enginetest.Options(t, 1)
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.DevMarkKey(p.bad, p.bob.Actor.Device)} }, func(p *pair) {
		if err := p.e.Mark(context.Background(), p.bob.Actor, []engine.Marker{{Conv: p.bad, Delivered: 3, Read: 3}}); err != nil {
			t.Fatal(err)
		}
	})
	if rep, err := p.e.Check(); err != nil || len(rep.Problems) != 1 {
		t.Fatalf("check: %v, %v; want the device marker", rep.Problems, err)
	}
	s, err := p.e.OpenSession(p.bob.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	s.Close()
	r.holdsExactly(p.bad, 1, 3)
	if err := p.e.Mark(context.Background(), p.bob.Actor, []engine.Marker{{Conv: p.bad, Delivered: 3, Read: 3}}); err != nil {
		t.Fatal(err)
	}
	p.alice.Send(p.bad, "b2")
	if got := p.e.Damaged(); len(got) != 0 {
		t.Errorf("damaged %v, want none", got)
	}
	enginetest.MustCheck(t, p.e) // the ack wrote the marker anew
}

// TestRebuiltReadMarker: a user's read marker that does not decode is made
// anew by Rebuild as far as the log says they read: here alice's own
// message, the last, so nothing is unread for her.
func TestRebuiltReadMarker(t *testing.T) {
	o := enginetest.Options(t, 1)
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.UserMarkKey(p.bad, p.alice.Actor.User)} })
	if err := p.e.Close(); err != nil {
		t.Fatal(err)
	}
	rebuild(t, o)
	p.e = enginetest.Open(t, o, p.alice, p.bob)
	infos, _ := catchUpFrom(t, p.e, p.alice, 0)
	if info := infos[p.bad]; info.Read != 3 || info.Delivered != 3 || info.Unread != 0 {
		t.Errorf("alice's bad after the rebuild: %+v; want read and delivered to 3, nothing unread", info)
	}
	infos, _ = catchUpFrom(t, p.e, p.bob, 0)
	if rs := infos[p.bad].Receipts; len(rs) != 1 || rs[0].User != p.alice.Actor.User || rs[0].Read != 3 {
		t.Errorf("bob's receipts in bad: %+v; want alice's, read to 3", rs)
	}
}

// TestDamagedOpFoundAfterAPush: a member's push lands in a conversation
// after their session planned its catch-up and before the catch-up reads
// the op there that does not decode: the catch-up leaves the conversation
// out, and the next live round, which the push moved it into, still ends
// (its position past the conversation's: no hold for an op), so a device
// waiting for that round's end is not kept waiting.
func TestDamagedOpFoundAfterAPush(t *testing.T) {
	o := enginetest.Options(t, 1)
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.OpKey(p.bad, 3)} })
	s, err := p.e.OpenSession(p.bob.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r := p.bob.Try(p.bad, model.Op{Kind: model.KindMessage, Body: []byte("b2")}); r.Err != nil || r.Seq != 4 {
		t.Fatalf("bob's push: %+v; want it stored at seq 4", r)
	}
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	if !r.caught {
		t.Fatal("bob's session did not catch up")
	}
	if _, ok := r.held[p.bad]; ok {
		t.Fatalf("the catch-up sent ops of bad: %v", r.held[p.bad])
	}
	// The drain went on into the live round.
	i := slices.IndexFunc(r.events, func(ev engine.Event) bool { return ev.Kind == engine.EventCaughtUp })
	if live := r.events[i+1:]; len(live) != 1 || live[0].Kind != engine.EventOps || !live[0].RoundEnd || len(live[0].Batches) != 0 || live[0].FeedPos <= r.events[i].FeedPos {
		t.Fatalf("the live round %+v; want its end alone, past %d", live, r.events[i].FeedPos)
	}
	if got := p.e.Damaged(); !slices.Equal(got, []ulid.ULID{p.bad}) {
		t.Errorf("damaged %v, want [%s]", got, p.bad)
	}
}

// TestDamagedOpAtReadMarker: an op that does not decode, met by a
// member's info (the message count at their read marker, short of the
// head), leaves the conversation out without a hold, as any op does: the
// member's catch-up ends where it would on a sound store.
func TestDamagedOpAtReadMarker(t *testing.T) {
	o := enginetest.Options(t, 1)
	var want uint64
	p := damagedPair(t, o, func(p *pair) [][]byte { return [][]byte{engine.OpKey(p.bad, 3)} }, func(p *pair) {
		p.alice.Send(p.bad, "b2")
		if err := p.e.Mark(context.Background(), p.bob.Actor, []engine.Marker{{Conv: p.bad, Delivered: 4, Read: 3}}); err != nil {
			t.Fatal(err)
		}
		_, want = catchUpFrom(t, p.e, p.bob, 0)
	})
	infos, pos := catchUpFrom(t, p.e, p.bob, 0)
	if _, ok := infos[p.bad]; ok || pos != want {
		t.Fatalf("bob's catch-up: %+v, at %d; want bad left out, at %d", infos, pos, want)
	}
	if got := p.e.Damaged(); !slices.Equal(got, []ulid.ULID{p.bad}) {
		t.Errorf("damaged %v, want [%s]", got, p.bad)
	}
}

// TestRebuildPastGarbledDeviceOwner: the record naming a device's user
// that does not decode stops no rebuild: rebuild reads it only to make a
// read marker anew, and then counts that device for nobody.
func TestRebuildPastGarbledDeviceOwner(t *testing.T) {
	o := enginetest.Options(t, 1)
	p := damagedPair(t, o, func(p *pair) [][]byte {
		return [][]byte{engine.DeviceOfKey(p.bob.Actor.Device), engine.UserMarkKey(p.good, p.bob.Actor.User)}
	}, func(p *pair) {
		if err := p.e.Mark(context.Background(), p.bob.Actor, []engine.Marker{{Conv: p.good, Delivered: 3, Read: 3}}); err != nil {
			t.Fatal(err)
		}
	})
	if err := p.e.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if !slices.ContainsFunc(rep.Fixes, func(f engine.Fix) bool { return strings.Contains(f.What, "read markers that did not decode") }) {
		t.Errorf("fixes %v; want bob's read marker made anew", rep.Fixes)
	}
}

// TestDamagedDeviceRecords: a device's record, or its token's, that does
// not decode fails no write and stops nothing else: the device is refused
// as if revoked (it signs in again), and a re-upload naming a device
// whose owner record does not decode is refused alone.
func TestDamagedDeviceRecords(t *testing.T) {
	o := enginetest.Options(t, 1)
	var phone *enginetest.Device
	p := damagedPair(t, o, func(p *pair) [][]byte {
		return [][]byte{engine.DeviceKey(p.bob.Actor.User, p.bob.Actor.Device), engine.TokenKey(phone.Token), engine.DeviceOfKey(phone.Actor.Device)}
	}, func(p *pair) {
		phone = enginetest.Login(t, p.e, "alice")
	})
	_, err := p.e.Append(context.Background(), p.bob.Actor, []model.Op{p.bob.Op(p.good, model.Op{Kind: model.KindMessage, Body: []byte("bob")})})
	if !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("bob's append: %v; want ErrUnauthenticated", err)
	}
	if _, err := p.e.OpenSession(p.bob.Actor, engine.SessionOptions{}); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("bob's session: %v; want ErrUnauthenticated", err)
	}
	if _, err := p.e.Authenticate(phone.Token); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("the phone's token: %v; want ErrUnauthenticated", err)
	}
	// Alice's laptop re-uploads an op of her phone's: refused alone.
	op := phone.Op(p.good, model.Op{Kind: model.KindMessage, Body: []byte("from the phone")})
	res, err := p.e.Append(context.Background(), p.alice.Actor, []model.Op{op, p.alice.Op(p.good, model.Op{Kind: model.KindMessage, Body: []byte("g2")})})
	if err != nil || !errors.Is(res[0].Err, engine.ErrForbidden) || res[1].Err != nil {
		t.Fatalf("alice's append: %+v, %v; want the re-upload refused, her message stored", res, err)
	}
	if err := p.e.Failed(); err != nil {
		t.Fatalf("the store failed: %v", err)
	}
	// Check sees each.
	rep, err := p.e.Check()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"device " + p.bob.Actor.Device.String() + " of user", "token record", "record of a device's user"} {
		if !slices.ContainsFunc(rep.Problems, func(pr string) bool { return strings.Contains(pr, want) }) {
			t.Errorf("check: %q; want one of %q", rep.Problems, want)
		}
	}
}

// TestCheckDeviceRecords: check sees a device's record of its user lost,
// or naming another user.
func TestCheckDeviceRecords(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := engine.CheckStopped("db", o); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("check of the sound store: %q, %v", rep.Problems, err)
	}
	for _, c := range []struct {
		damage func() error
		want   string
	}{
		{func() error { return engine.DeleteKey(o.FS, "db", engine.DeviceOfKey(bob.Actor.Device)) }, "no record of its user"},
		{func() error {
			return engine.SetKey(o.FS, "db", engine.DeviceOfKey(bob.Actor.Device), engine.IDRecord(alice.Actor.User))
		}, "its record of its user names " + alice.Actor.User.String()},
	} {
		if err := c.damage(); err != nil {
			t.Fatal(err)
		}
		rep, err := engine.CheckStopped("db", o)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], c.want) {
			t.Errorf("check: %q; want %q", rep.Problems, c.want)
		}
	}
}

// TestDamagedAccountRecords: a device's record, a user's record and a
// username's record that do not decode fail no more than their own
// user's calls, and no conversation: not Login (which counts the user's
// devices in the writer, and so failed the store), RevokeDevice (the
// same), Devices, Account, LookupUsers, Conversation (which lists the
// members' usernames). Check reports each; Rebuild makes anew the
// device's record from its token (the device signs in as before) and the
// username's from its user's record, and says it cannot make the user's.
func TestDamagedAccountRecords(t *testing.T) {
	ctx := context.Background()
	o := enginetest.Options(t, 1)
	var carol, dave *enginetest.Device
	p := damagedPair(t, o, func(p *pair) [][]byte {
		return [][]byte{engine.DeviceKey(p.bob.Actor.User, p.bob.Actor.Device), engine.UserKey(carol.Actor.User), engine.UsernameKey("dave")}
	}, func(p *pair) {
		carol = enginetest.Register(t, p.e, "carol")
		dave = enginetest.Register(t, p.e, "dave")
		p.alice.Push(p.alice.Op(p.good, model.Op{Kind: model.KindMemberAdd, Member: carol.Actor.User, Role: model.RoleMember}))
	})

	// Bob's device, whose record does not decode, is refused as if
	// revoked: its token signs in nowhere, and it is not counted among
	// his devices (he signs in anew), but listed, so that he can revoke
	// it.
	if _, err := p.e.Authenticate(p.bob.Token); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("the unreadable device's token: %v; want ErrUnauthenticated", err)
	}
	if _, _, err := p.e.Account(p.bob.Actor); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("the unreadable device's account: %v; want ErrUnauthenticated", err)
	}
	tablet := enginetest.Login(t, p.e, "bob")
	devs, err := p.e.Devices(tablet.Actor)
	if err != nil || len(devs) != 2 || !slices.ContainsFunc(devs, func(d engine.Device) bool {
		return d.ID == p.bob.Actor.Device && d.Name == engine.UnreadableDeviceName
	}) {
		t.Errorf("bob's devices: %+v, %v; want the tablet and the unreadable one, saying so", devs, err)
	}
	// Carol's record and dave's username's do not decode: they cannot
	// sign in, and lookups leave them out.
	for _, name := range []string{"carol", "dave"} {
		if _, err := p.e.Login(ctx, name, "correct horse", "phone"); !errors.Is(err, engine.ErrAccountDamaged) {
			t.Errorf("login %s: %v; want ErrAccountDamaged", name, err)
		}
	}
	if _, _, err := p.e.Account(carol.Actor); !errors.Is(err, engine.ErrAccountDamaged) {
		t.Errorf("carol's account: %v; want ErrAccountDamaged", err)
	}
	if us, err := p.e.LookupUsers(p.alice.Actor, []string{"carol", "dave", "bob"}); err != nil || len(us) != 1 || us[0].Username != "bob" {
		t.Errorf("lookup: %+v, %v; want bob alone", us, err)
	}
	// The conversation carol is in lists her by id, and stays open.
	_, members, _, err := p.e.Conversation(p.alice.Actor, p.good)
	if err != nil {
		t.Fatalf("conversation: %v", err)
	}
	i := slices.IndexFunc(members, func(m engine.Member) bool { return m.ID == carol.Actor.User })
	if len(members) != 3 || i < 0 || members[i].Username != "" {
		t.Errorf("members: %+v; want carol's listed by id alone, among 3", members)
	}
	p.alice.Send(p.good, "still open")
	if d := p.e.Damaged(); len(d) > 0 {
		t.Errorf("conversations fenced off: %v", d)
	}
	if err := p.e.Failed(); err != nil {
		t.Fatalf("the store failed: %v", err)
	}
	rep, err := p.e.Check()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"device " + p.bob.Actor.Device.String() + " of user", "user " + carol.Actor.User.String() + ":", `username "dave"`} {
		if !slices.ContainsFunc(rep.Problems, func(pr string) bool { return strings.Contains(pr, want) }) {
			t.Errorf("check: %q; want one of %q", rep.Problems, want)
		}
	}

	if err := p.e.Close(); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rebuilt.Unfixed) != 1 || !strings.Contains(rebuilt.Unfixed[0], "user "+carol.Actor.User.String()) {
		t.Errorf("rebuild left unfixed %q; want carol's record alone", rebuilt.Unfixed)
	}
	if len(rebuilt.Check.Problems) != 1 {
		t.Errorf("check after rebuild: %q; want carol's record alone", rebuilt.Check.Problems)
	}
	p.e = enginetest.Open(t, o, p.alice, p.bob, dave)
	// Bob's device signs in with its token as before, under a name that
	// says what happened; dave signs in.
	if a, err := p.e.Authenticate(p.bob.Token); err != nil || a != p.bob.Actor {
		t.Fatalf("bob's token after the rebuild: %+v, %v", a, err)
	}
	p.bob.Send(p.good, "back")
	devs, err = p.e.Devices(p.bob.Actor)
	if err != nil || !slices.ContainsFunc(devs, func(d engine.Device) bool {
		return d.ID == p.bob.Actor.Device && d.Name == engine.LostDeviceName && d.Created.UnixMilli() == int64(p.bob.Actor.Device.Time())
	}) {
		t.Errorf("bob's devices after the rebuild: %+v, %v", devs, err)
	}
	if _, err := p.e.Login(ctx, "dave", "correct horse", "phone"); err != nil {
		t.Errorf("dave's login after the rebuild: %v", err)
	}
}

// TestRevokedUnreadableDeviceStaysRevoked: a device whose record does not
// decode can be revoked, by its user or by the operator's revoke-devices
// (which lists the user's devices, then revokes them), and then stays
// revoked: the rebuild after it does not make its record anew from the
// token the record held.
func TestRevokedUnreadableDeviceStaysRevoked(t *testing.T) {
	for _, by := range []string{"its user", "the operator"} {
		t.Run(by, func(t *testing.T) {
			ctx := context.Background()
			o := enginetest.Options(t, 1)
			e := enginetest.Open(t, o)
			alice := enginetest.Register(t, e, "alice")
			stolen := enginetest.Login(t, e, "alice")
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if err := engine.SetKey(o.FS, "db", engine.DeviceKey(alice.Actor.User, stolen.Actor.Device), garbled); err != nil {
				t.Fatal(err)
			}
			e = enginetest.Open(t, o)
			if by == "its user" {
				if err := e.RevokeDevice(ctx, alice.Actor, stolen.Actor.Device); err != nil {
					t.Fatalf("revoke: %v", err)
				}
			} else {
				id, err := e.UserNamed("Alice")
				if err != nil || id != alice.Actor.User {
					t.Fatalf("user named alice: %s, %v", id, err)
				}
				op := engine.Actor{User: id}
				devs, err := e.Devices(op)
				if err != nil || len(devs) != 2 {
					t.Fatalf("devices: %+v, %v", devs, err)
				}
				for _, d := range devs {
					if err := e.RevokeDevice(ctx, op, d.ID); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := e.Failed(); err != nil {
				t.Fatalf("the store failed: %v", err)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			rep, err := engine.Rebuild("db", o)
			if err != nil || len(rep.Check.Problems) > 0 {
				t.Fatalf("rebuild: %v, check after it %q", err, rep.Check.Problems)
			}
			e = enginetest.Open(t, o)
			if _, err := e.Authenticate(stolen.Token); !errors.Is(err, engine.ErrUnauthenticated) {
				t.Errorf("the revoked device's token after the rebuild: %v; want ErrUnauthenticated", err)
			}
		})
	}
}

// TestUnreadableDeviceReadsNothing: a device whose record does not decode
// is refused as if revoked by every call, reads too: its token signs in
// nowhere.
func TestUnreadableDeviceReadsNothing(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	stolen := enginetest.Login(t, e, "alice")
	conv := alice.Create("pair", bob)
	bob.Send(conv, "secret")
	closeDamaged(t, e, o, setKey(engine.DeviceKey(alice.Actor.User, stolen.Actor.Device), garbled))
	e = enginetest.Open(t, o)
	if _, err := e.Authenticate(stolen.Token); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("the token of a device whose record does not decode: %v; want ErrUnauthenticated", err)
	}
	if _, err := e.Authenticate(alice.Token); err != nil {
		t.Errorf("her other device's token: %v", err)
	}
}

// TestRepairSkipsADeviceOfUnreadableUser: a device whose record of its
// user does not decode is not asked for in Repair (not known to be the
// caller's), and fences nothing.
func TestRepairSkipsADeviceOfUnreadableUser(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("pair", bob)
	bob.Send(conv, "hi")
	closeDamaged(t, e, o, setKey(engine.DeviceOfKey(bob.Actor.Device), garbled))
	e = enginetest.Open(t, o)
	// Alice's device says it holds more of bob's device's ops than the
	// server does.
	have := model.NewVector(model.Dot{Device: bob.Actor.Device, N: 9})
	if _, err := e.Repair(alice.Actor, conv, have, 100); err != nil {
		t.Errorf("alice's repair: %v", err)
	}
	if d := e.Damaged(); len(d) > 0 {
		t.Errorf("fenced: %v", d)
	}
}

// TestConversationMemberWithoutUserRecord: a member whose user record is
// missing is listed by id alone.
func TestConversationMemberWithoutUserRecord(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("pair", bob)
	closeDamaged(t, e, o, loseKey(engine.UserKey(bob.Actor.User)))
	e = enginetest.Open(t, o)
	_, members, _, err := e.Conversation(alice.Actor, conv)
	if err != nil || len(members) != 2 || !slices.ContainsFunc(members, func(m engine.Member) bool { return m.ID == bob.Actor.User && m.Username == "" }) {
		t.Errorf("members with bob's user record lost: %+v, %v; want bob by id alone", members, err)
	}
}

// keyDamage sets a key of a closed store to val, or deletes it (val nil).
type keyDamage struct{ key, val []byte }

func setKey(k, val []byte) keyDamage { return keyDamage{k, val} }
func loseKey(k []byte) keyDamage     { return keyDamage{k, nil} }

// closeDamaged closes e, whose store is o's "db", and damages the store
// so.
func closeDamaged(t *testing.T, e *engine.Engine, o engine.Options, ds ...keyDamage) {
	t.Helper()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		var err error
		if d.val == nil {
			err = engine.DeleteKey(o.FS, "db", d.key)
		} else {
			err = engine.SetKey(o.FS, "db", d.key, d.val)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
