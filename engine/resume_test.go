package engine_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestResumeFromTheGivenPosition: alice's phone follows live, and now and then
// disconnects and resumes from the position it was last told (acking or
// giving cursors), while others write in her conversations and elsewhere,
// members come and go, conversations grow past SharedFeedMembers, read
// markers and receipts move, bursts move entries past maxEntryLag and the
// live journal. After each resume the phone must hold exactly what a full
// catch-up describes (no op twice: the receiver fails on a duplicate).
// Also: told never goes down within a session, never passes the session's
// server position, and stays put across commits elsewhere.
func TestResumeFromTheGivenPosition(t *testing.T) {
	withAndWithoutChecks(t, resumeFromTheGivenPosition)
}

func resumeFromTheGivenPosition(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 7))
	e := enginetest.New(t, func(o *engine.Options) { o.SharedFeedMembers = 2 + rnd.IntN(3) })
	alice := enginetest.Register(t, e, "alice")
	other := enginetest.Login(t, e, "alice")
	tablet := enginetest.Login(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	dave := enginetest.Register(t, e, "dave")
	outsider := enginetest.Register(t, e, "outsider")
	elsewhere := outsider.Create("elsewhere")
	people := []*enginetest.Device{alice, bob, carol, dave}
	convs := make([]ulid.ULID, 4)
	member := make([]map[int]bool, len(convs)) // people index; bob (1) owns all
	for c := range convs {
		member[c] = map[int]bool{1: true}
		var ms []*enginetest.Device
		if c != 3 { // c3 starts without alice
			ms = append(ms, alice)
			member[c][0] = true
		}
		if c == 2 {
			ms = append(ms, carol, dave)
			member[c][2], member[c][3] = true, true
		}
		convs[c] = bob.Create(fmt.Sprint("c", c), ms...)
	}
	heads := func(c int) uint64 {
		infos, _ := catchUpFrom(t, e, bob, 0)
		return infos[convs[c]].Head
	}

	phone := alice
	var pushing engine.Pushing
	var s *engine.Session
	r := newReceiver(t)
	told := uint64(0)
	open := func(from uint64, cursors bool) {
		t.Helper()
		o := engine.SessionOptions{Pushing: &pushing}
		if told != 0 || from != 0 {
			o.Epoch, o.FeedPos = e.Epoch(), from
		}
		if cursors {
			o.Cursors = map[ulid.ULID]uint64{}
			for conv, seqs := range r.held {
				n := uint64(0)
				for seqs[n+1] != (ulid.ULID{}) {
					n++
				}
				o.Cursors[conv] = n
			}
		}
		var err error
		if s, err = e.OpenSession(phone.Actor, o); err != nil {
			t.Fatal(err)
		}
		if w := s.Welcome(); w.FeedPos < from {
			t.Fatalf("welcome at %d, below the position resumed from %d", w.FeedPos, from)
		}
	}
	open(0, false)
	drainPhone := func() {
		t.Helper()
		for range 100000 {
			ev, ok, err := s.Next()
			if err != nil {
				t.Fatalf("next: %v", err)
			}
			if !ok {
				break
			}
			r.take(ev, engine.DefaultBatchOps)
			if !s.Live() {
				continue // Pos is the session's once caught up
			}
			if p := s.Pos(); p < told {
				t.Fatalf("told went down within a session: %d after %d", p, told)
			} else {
				told = p
			}
		}
		if sp := engine.SessionServerPos(s); told > sp {
			t.Fatalf("told %d beyond the session's server position %d", told, sp)
		}
	}
	drainPhone()
	check := func(when string) {
		t.Helper()
		full, _ := catchUpFrom(t, e, tablet, 0)
		for id, want := range full {
			got, ok := r.infos[id]
			if !ok {
				t.Fatalf("%s: the phone has no info of conversation %s (head %d)", when, id, want.Head)
			}
			got.ResumeAfter, want.ResumeAfter = 0, 0
			got.Delivered, want.Delivered = 0, 0
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("%s: the phone's info of %s\n %+v\nfull catch-up's\n %+v", when, id, got, want)
			}
			for q := uint64(1); q <= want.Head; q++ {
				if _, ok := r.held[id][q]; !ok {
					t.Fatalf("%s: the phone misses seq %d of %s (head %d)", when, q, id, want.Head)
				}
			}
			if n := uint64(len(r.held[id])); n != want.Head {
				t.Fatalf("%s: the phone holds %d ops of %s; head %d", when, n, id, want.Head)
			}
		}
		for id := range r.infos {
			if _, ok := full[id]; !ok {
				t.Fatalf("%s: the phone has conversation %s the full catch-up lacks", when, id)
			}
		}
	}
	connected := true
	resumes, ownPushes, leftOut, equivalent := 0, 0, 0, 0
	for i := range 500 {
		c := rnd.IntN(len(convs))
		switch k := rnd.IntN(14); {
		case k < 3:
			bob.Send(convs[c], "from bob")
		case k == 3:
			if member[c][2] {
				carol.Send(convs[c], "from carol")
			}
		case k == 4:
			if member[c][0] {
				other.Send(convs[c], "from alice's other device")
			}
		case k == 5:
			if member[c][0] {
				h := heads(c)
				if err := e.Mark(ctx, other.Actor, []engine.Marker{{Conv: convs[c], Read: h - uint64(rnd.IntN(2)), Private: rnd.IntN(3) == 0}}); err != nil {
					t.Fatal(err)
				}
			}
		case k == 6:
			h := heads(c)
			if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: convs[c], Delivered: h, Read: h - uint64(rnd.IntN(2))}}); err != nil {
				t.Fatal(err)
			}
		case k == 7 || k == 8:
			u := []int{0, 2, 3}[rnd.IntN(3)]
			op := model.Op{Kind: model.KindMemberAdd, Member: people[u].Actor.User, Role: model.RoleMember}
			if member[c][u] {
				op = model.Op{Kind: model.KindMemberRemove, Member: people[u].Actor.User}
			}
			bob.Push(bob.Op(convs[c], op))
			member[c][u] = !member[c][u]
		case k == 9:
			if connected {
				drainPhone()
			}
			before := told
			for range engine.MaxEntryLag + rnd.IntN(8) {
				outsider.Send(elsewhere, "busy elsewhere")
			}
			if connected {
				drainPhone()
				if told != before {
					t.Fatalf("commits elsewhere moved alice's position from %d to %d", before, told)
				}
			}
		case k == 10:
			for range 66 + rnd.IntN(8) {
				bob.Send(convs[rnd.IntN(len(convs))], "burst")
			}
		case k == 11:
			if connected {
				drainPhone()
				// Resuming from told is resuming from the server's position.
				a, _ := catchUpFrom(t, e, tablet, told)
				b, _ := catchUpFrom(t, e, tablet, engine.SessionServerPos(s))
				equivalent++
				if len(a) != len(b) {
					t.Fatalf("step %d: a catch-up from told %d describes %d conversations, from the session's position %d %d", i, told, len(a), engine.SessionServerPos(s), len(b))
				}
			}
			if connected && member[c][0] && rnd.IntN(2) == 0 {
				// The phone pushes with its own ops left out of its
				// rounds (skip_own_ops): the round goes first, then the
				// result, which says the op is held at its seq, and
				// carries the position (Pos).
				conv := convs[c]
				op := phone.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("the phone's own"), ContentType: "text/plain"})
				pushing.Add([]model.Op{op})
				seq := phone.Push(op)[0].Seq
				ownPushes++
				drainPhone()
				if _, sent := r.held[conv][seq]; !sent {
					leftOut++
				}
				pushing.Remove([]model.Op{op})
				if r.held[conv] == nil {
					r.held[conv] = map[uint64]ulid.ULID{}
					r.lastSeen[conv] = map[engine.Phase]uint64{}
				}
				r.held[conv][seq] = op.ID
				if info := r.infos[conv]; info.Head < seq {
					info.Head, info.Read, info.Unread = seq, seq, 0
					r.infos[conv] = info
				}
				r.pos = s.Pos() // the push result's position
			}
		default:
			if connected {
				// Cut the stream after a few events (maybe mid-round or
				// mid-catch-up): the device keeps the last position given.
				for range rnd.IntN(3) {
					ev, ok, err := s.Next()
					if err != nil {
						t.Fatal(err)
					}
					if !ok {
						break
					}
					r.take(ev, engine.DefaultBatchOps)
				}
				told = r.pos
				s.Close()
				connected = false
				if rnd.IntN(2) == 0 {
					r.ack(phone)
				}
			} else {
				cursors := rnd.IntN(2) == 0
				if !cursors {
					r.ack(phone)
				}
				open(told, cursors)
				connected = true
				resumes++
				told = 0 // the new session's, once caught up
				drainPhone()
				check(fmt.Sprintf("step %d, resumed from %d (cursors %v)", i, told, cursors))
			}
		}
	}
	if !connected {
		r.ack(phone)
		open(told, false)
	}
	drainPhone()
	check("at the end")
	// A resume with nothing new says the same position.
	r.ack(phone) // her own change: a receipt moves the feed
	drainPhone()
	p := told
	s.Close()
	open(p, false)
	if w := s.Welcome(); w.FeedPos != p || w.Changed != 0 {
		t.Fatalf("resume from %d with nothing new: welcome %+v", p, w)
	}
	s.Close()
	t.Logf("%d resumes, %d own pushes, %d left out, %d equivalence checks", resumes, ownPushes, leftOut, equivalent)
	enginetest.MustCheck(t, e)
}
