package engine_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// receiver plays a device: it checks every session property as events
// arrive, and remembers what it holds.
type receiver struct {
	t        *testing.T
	held     map[ulid.ULID]map[uint64]ulid.ULID // conv -> seq -> op id
	lastSeen map[ulid.ULID]map[engine.Phase]uint64
	infos    map[ulid.ULID]engine.ConvInfo
	events   []engine.Event
	pos      uint64
	caught   bool
}

func newReceiver(t *testing.T) *receiver {
	return &receiver{t: t, held: map[ulid.ULID]map[uint64]ulid.ULID{}, lastSeen: map[ulid.ULID]map[engine.Phase]uint64{}, infos: map[ulid.ULID]engine.ConvInfo{}}
}

// take checks one event against the session properties: each op once;
// batches contiguous, ascending and bounded; within a phase each
// conversation ascends; ops only for conversations described first.
func (r *receiver) take(ev engine.Event, maxOps int) {
	r.t.Helper()
	r.events = append(r.events, ev)
	switch ev.Kind {
	case engine.EventConversations:
		for _, c := range ev.Conversations {
			r.infos[c.ID] = c
		}
	case engine.EventOps:
		n := 0
		for _, b := range ev.Batches {
			if _, ok := r.infos[b.Conv]; !ok {
				r.t.Fatalf("ops of %s before its conversation info", b.Conv)
			}
			if r.held[b.Conv] == nil {
				r.held[b.Conv] = map[uint64]ulid.ULID{}
				r.lastSeen[b.Conv] = map[engine.Phase]uint64{}
			}
			for i, op := range b.Ops {
				n++
				if i > 0 && op.Seq != b.Ops[i-1].Seq+1 {
					r.t.Fatalf("batch of %s not contiguous: %d after %d", b.Conv, op.Seq, b.Ops[i-1].Seq)
				}
				if op.Seq <= r.lastSeen[b.Conv][ev.Phase] {
					r.t.Fatalf("%s phase %v: seq %d after %d", b.Conv, ev.Phase, op.Seq, r.lastSeen[b.Conv][ev.Phase])
				}
				r.lastSeen[b.Conv][ev.Phase] = op.Seq
				if _, dup := r.held[b.Conv][op.Seq]; dup {
					r.t.Fatalf("%s seq %d delivered twice", b.Conv, op.Seq)
				}
				r.held[b.Conv][op.Seq] = op.ID
			}
		}
		if n > maxOps {
			r.t.Fatalf("an Ops event carried %d ops, over the limit of %d", n, maxOps)
		}
		if ev.FeedPos != 0 {
			r.pos = ev.FeedPos
		}
	case engine.EventCaughtUp:
		r.caught, r.pos = true, ev.FeedPos
	}
}

// drain takes events until the session has nothing to send.
func (r *receiver) drain(s *engine.Session, maxOps int) {
	r.t.Helper()
	for range 100000 {
		ev, ok, err := s.Next()
		if err != nil {
			r.t.Fatalf("next: %v", err)
		}
		if !ok {
			return
		}
		r.take(ev, maxOps)
	}
	r.t.Fatal("session never went quiet")
}

// openCaughtUp opens d's session and takes its catch-up; the session closes
// with the test.
func openCaughtUp(t *testing.T, e *engine.Engine, d *enginetest.Device) (*engine.Session, *receiver) {
	t.Helper()
	s, err := e.OpenSession(d.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	return s, r
}

// holdsExactly checks that the receiver holds seqs from..to of conv, no
// more and no less.
func (r *receiver) holdsExactly(conv ulid.ULID, from, to uint64) {
	r.t.Helper()
	got := r.held[conv]
	if uint64(len(got)) != to-from+1 {
		r.t.Fatalf("%s: holds %d ops, want seqs %d..%d", conv, len(got), from, to)
	}
	for s := from; s <= to; s++ {
		if _, ok := got[s]; !ok {
			r.t.Fatalf("%s: missing seq %d", conv, s)
		}
	}
}

func (r *receiver) ack(d *enginetest.Device) {
	r.t.Helper()
	var marks []engine.Marker
	for conv, seqs := range r.held {
		// Acknowledge the contiguous prefix held.
		n := uint64(0)
		for {
			if _, ok := seqs[n+1]; !ok {
				break
			}
			n++
		}
		marks = append(marks, engine.Marker{Conv: conv, Delivered: n})
	}
	if err := d.E.Mark(ctx, d.Actor, marks); err != nil {
		r.t.Fatal(err)
	}
}

func TestCatchUpOrderAndBounds(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	var convs []ulid.ULID
	for i := range 5 {
		convs = append(convs, alice.Create(fmt.Sprintf("c%d", i), bob))
	}
	// Bob is caught up, then goes offline.
	s, err := e.OpenSession(bob.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	r.ack(bob)
	// Like a real client, stay for the live round the ack causes, so the
	// saved position includes it.
	r.drain(s, engine.DefaultBatchOps)
	s.Close()
	if !r.caught {
		t.Fatal("no CaughtUp")
	}
	// 300 ops arrive in four conversations; one stays unchanged.
	for i := range 300 {
		alice.Send(convs[i%4], fmt.Sprintf("m%d", i))
	}
	s, err = e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: e.Epoch(), FeedPos: r.pos, PageSize: 10, MaxBatchOps: 25})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w := s.Welcome()
	if w.Changed != 4 || w.MissingOps != 300 {
		t.Fatalf("welcome: %+v, want 4 changed and 300 missing", w)
	}
	r2 := newReceiver(t)
	r2.infos = r.infos
	r2.held = r.held
	r2.lastSeen = map[ulid.ULID]map[engine.Phase]uint64{}
	for c := range r2.held {
		r2.lastSeen[c] = map[engine.Phase]uint64{}
	}
	r2.drain(s, 25)
	// Order: conversations, then every newest page, then backfill, then
	// caught up.
	var kinds []string
	for _, ev := range r2.events {
		k := fmt.Sprint(ev.Kind)
		if ev.Kind == engine.EventOps {
			k = ev.Phase.String()
		}
		if len(kinds) == 0 || kinds[len(kinds)-1] != k {
			kinds = append(kinds, k)
		}
	}
	if want := fmt.Sprint([]string{fmt.Sprint(engine.EventConversations), "newest", "backfill", fmt.Sprint(engine.EventCaughtUp)}); fmt.Sprint(kinds) != want {
		t.Fatalf("event order %v, want %v", kinds, want)
	}
	for _, ev := range r2.events[:1] {
		if len(ev.Conversations) != 4 {
			t.Fatalf("changed list has %d conversations", len(ev.Conversations))
		}
		for _, c := range ev.Conversations {
			if c.Unread != 75 || c.ResumeAfter != 2 || c.Head != 77 {
				t.Fatalf("info %+v: want unread 75, resume after 2, head 77", c)
			}
		}
	}
	for _, c := range convs[:4] {
		r2.holdsExactly(c, 1, 77)
	}
	if len(r2.held[convs[4]]) != 2 {
		t.Fatalf("unchanged conversation was resent")
	}
	// The newest page of every conversation came before any backfill.
	firstBackfill := -1
	for i, ev := range r2.events {
		if ev.Phase == engine.PhaseBackfill && firstBackfill < 0 {
			firstBackfill = i
		}
		if ev.Phase == engine.PhaseNewest && firstBackfill >= 0 {
			t.Fatal("a newest page after backfill started")
		}
	}
	enginetest.MustCheck(t, e)
}

func TestLiveAndRemoval(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	s, r := openCaughtUp(t, e, bob)
	select {
	case <-s.Changed():
		t.Fatal("Changed is closed with nothing new")
	default:
	}
	alice.Send(conv, "live one")
	<-s.Changed() // closed by the commit; a test timeout catches a lost wake-up
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, 3)
	if last := r.events[len(r.events)-1]; last.Kind != engine.EventOps || last.Phase != engine.PhaseLive || last.FeedPos == 0 {
		t.Fatalf("live round did not end with a feed position: %+v", last)
	}

	rm := alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
	alice.Send(conv, "after removal")
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, rm[0].Seq)
	if info := r.infos[conv]; !info.Removed || info.Head != rm[0].Seq {
		t.Fatalf("info after removal: %+v", info)
	}
	// Nothing more reaches bob, however much alice writes.
	alice.Send(conv, "more")
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, rm[0].Seq)
}

// TestQuietRoundsSendNothing: a session asked for its next event after
// other users' commits, none of which woke it, runs no round and sends
// nothing, not even a feed position. Its next change still comes with a
// position past them all.
// TestSessionMapsMadeWithTheirFirstEntry: a session of a user in no
// conversation holds no map per conversation; one in a conversation has
// them once its rounds remember something of it.
func TestSessionMapsMadeWithTheirFirstEntry(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	s, r := openCaughtUp(t, e, bob)
	if n := s.Maps(); n != 0 {
		t.Fatalf("a session of a user in no conversation holds %d maps", n)
	}
	conv := alice.Create("c", bob)
	alice.Send(conv, "one")
	<-s.Changed()
	r.drain(s, engine.DefaultBatchOps)
	if len(r.held[conv]) == 0 {
		t.Fatal("the conversation's ops did not arrive")
	}
	if n := s.Maps(); n == 0 {
		t.Fatal("a session that sent a conversation's ops holds no map")
	}
}

func TestQuietRoundsSendNothing(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	conv := alice.Create("c", bob)
	elsewhere := carol.Create("elsewhere")
	s, r := openCaughtUp(t, e, bob)
	quiet := func(when string) {
		t.Helper()
		if ev, ok, err := s.Next(); err != nil || ok {
			t.Fatalf("%s: Next = %+v, %v, %v; want nothing", when, ev, ok, err)
		}
		select {
		case <-s.Changed():
			t.Fatalf("%s: Changed is closed", when)
		default:
		}
	}
	start := r.pos
	for i := range 3 {
		carol.Send(elsewhere, fmt.Sprintf("not for bob %d", i))
	}
	quiet("after other users' commits")
	if got := s.Pos(); got != start {
		t.Fatalf("a session no commit woke ran a round: it moved to position %d from %d", got, start)
	}

	alice.Send(conv, "one")
	<-s.Changed()
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, 3)
	if r.pos < start+4 {
		t.Fatalf("live round ended at feed position %d; carol's and alice's commits reach %d", r.pos, start+4)
	}
	quiet("after its own round")
	alice.Send(conv, "two")
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, 4)
}

func TestResumeAfterAcked(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	for i := range 100 {
		alice.Send(conv, fmt.Sprint(i))
	}
	s, err := e.OpenSession(bob.Actor, engine.SessionOptions{PageSize: 10, MaxBatchOps: 10})
	if err != nil {
		t.Fatal(err)
	}
	r := newReceiver(t)
	// Take the conversation list, the newest page and three backfill
	// batches, then drop the stream.
	for range 5 {
		ev, _, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		r.take(ev, 10)
	}
	s.Close()
	r.ack(bob) // delivered = 30: the contiguous prefix
	s, err = e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: e.Epoch()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r2 := newReceiver(t)
	r2.drain(s, engine.DefaultBatchOps)
	if c := r2.infos[conv]; c.ResumeAfter != 30 {
		t.Fatalf("resumed after %d, want 30", c.ResumeAfter)
	}
	r2.holdsExactly(conv, 31, 102)
}

func TestSessionResets(t *testing.T) {
	e := enginetest.New(t)
	bob := enginetest.Register(t, e, "bob")
	conv := bob.Create("c")
	var re *engine.ResetError
	if _, err := e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: ulid.Make(), FeedPos: 1}); !errors.As(err, &re) || re.Reason != engine.ResetEpochMismatch || re.Epoch != e.Epoch().String() {
		t.Fatalf("other epoch: %v", err)
	}
	if _, err := e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: e.Epoch(), FeedPos: 1 << 40}); !errors.As(err, &re) || re.Reason != engine.ResetPositionAhead {
		t.Fatalf("position ahead: %v", err)
	}
	if _, err := e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: e.Epoch(), Cursors: map[ulid.ULID]uint64{conv: 99}}); !errors.As(err, &re) || re.Reason != engine.ResetPositionAhead {
		t.Fatalf("cursor ahead: %v", err)
	}
}

// TestAfterChange: a session waiting by callback is called once per
// change, at once when the change came before it armed, and not after a
// later call replaced the callback or the session closed.
func TestAfterChange(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	s, r := openCaughtUp(t, e, bob)
	tablet := enginetest.Login(t, e, "bob")
	s2, _ := openCaughtUp(t, e, tablet)
	var calls [4]atomic.Int32
	s.AfterChange(func() { calls[0].Add(1) })
	s.AfterChange(func() { calls[1].Add(1) }) // replaces the first
	s2.AfterChange(func() { calls[2].Add(1) })
	if n := calls[1].Load() + calls[2].Load(); n != 0 {
		t.Fatalf("%d calls with nothing new", n)
	}
	// The writer calls back once it has answered the commit, before it
	// takes the next: once "two" is sent, "one"'s callbacks have run. Both
	// woke bob, and nothing was armed again in between.
	alice.Send(conv, "one")
	alice.Send(conv, "two")
	if got := [3]int32{calls[0].Load(), calls[1].Load(), calls[2].Load()}; got != [3]int32{0, 1, 1} {
		t.Fatalf("calls after two changes: %v, want [0 1 1]", got)
	}
	// bob's session has not read since: arming calls back at once.
	s.AfterChange(func() { calls[3].Add(1) })
	if calls[3].Load() != 1 {
		t.Fatal("armed after a change it had not read, and not called at once")
	}
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, 4) // the creation, bob's joining and both messages
	s.AfterChange(func() { calls[3].Add(1) })
	s.Close()
	alice.Send(conv, "three")
	alice.Send(conv, "four") // after "three"'s callbacks
	if calls[3].Load() != 1 {
		t.Fatal("a closed session's callback ran")
	}
}

// TestPushAnsweredBeforeCallbacks: the writer answers a commit before it
// calls back the sessions the commit woke, so that a push to a large
// conversation is acknowledged once durable, not once every member's
// sender is kicked. A callback that holds the writer does not hold the
// answer; and a round planned at once, as a push's result plans one,
// reaches the ops already.
func TestPushAnsweredBeforeCallbacks(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	s, r := openCaughtUp(t, e, bob)
	called, release := make(chan struct{}), make(chan struct{})
	s.AfterChange(func() {
		close(called)
		<-release
	})
	op := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("hi"), ContentType: "text/plain"})
	answered := make(chan error, 1)
	go func() {
		_, err := e.Append(ctx, alice.Actor, []model.Op{op})
		answered <- err
	}()
	<-called // the commit is done, and its callback holds the writer
	select {
	case err := <-answered:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second): // a bound on the failure, not a wait for an event
		close(release)
		t.Fatal("the push was not answered while a callback of its commit ran")
	}
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, 3) // the creation, bob's joining and the message
	close(release)
}

func TestRevokedDeviceSessionEnds(t *testing.T) {
	e := enginetest.New(t)
	bob := enginetest.Register(t, e, "bob")
	laptop := enginetest.Login(t, e, "bob")
	s, _ := openCaughtUp(t, e, laptop)
	if err := e.RevokeDevice(ctx, bob.Actor, laptop.Actor.Device); err != nil {
		t.Fatal(err)
	}
	<-s.Changed() // the revocation alone wakes the session
	if _, _, err := s.Next(); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("revoked device's session: %v", err)
	}
	if _, err := e.Authenticate(laptop.Token); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("revoked token still works: %v", err)
	}
	if _, err := e.OpenSession(laptop.Actor, engine.SessionOptions{}); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("revoked device opens a session: %v", err)
	}
	// An actor obtained before the revocation can no longer write.
	conv := bob.Create("c")
	if _, err := e.Append(ctx, laptop.Actor, []model.Op{laptop.Op(conv, model.Op{Kind: model.KindMessage})}); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("revoked device appends: %v", err)
	}
	if err := e.Mark(ctx, laptop.Actor, []engine.Marker{{Conv: conv, Read: 1}}); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("revoked device marks: %v", err)
	}
}

// TestRevocationTellsNoStranger: after a revocation, every session checks
// its own device when next asked. One whose user's feeds did not move sends
// nothing:
// a round then would carry the feed position alone, and tell the device
// that someone, somewhere, revoked a device after someone committed.
func TestRevocationTellsNoStranger(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	carol, dave := enginetest.Register(t, e, "carol"), enginetest.Register(t, e, "dave")
	phone := enginetest.Login(t, e, "carol")
	theirs := carol.Create("theirs", dave)
	s, _ := openCaughtUp(t, e, alice)
	carol.Send(theirs, "not for alice")
	if err := e.RevokeDevice(ctx, carol.Actor, phone.Actor.Device); err != nil {
		t.Fatal(err)
	}
	// The server asks its session again at each heartbeat, and the
	// session checks its device when anyone's was revoked.
	if ev, ok, err := s.Next(); err != nil || ok {
		t.Fatalf("alice's session after a stranger's commit and revocation: %+v, %v, %v; want nothing", ev, ok, err)
	}
	// Her own conversation's next change still comes, with its position.
	bob := enginetest.Register(t, e, "bob")
	alice.Create("ours", bob)
	events := drain(t, s)
	if len(events) == 0 || events[len(events)-1].FeedPos == 0 {
		t.Fatalf("alice's own change: %+v; want a round ending on its position", events)
	}
}

// TestOwnRevocationTellsNothingOfAnother: a revocation shares its group
// commit with a stranger's message. The revoking user is woken at the
// group's position, and none of their feeds moved: their session sends
// nothing, where a round would say that someone committed with it.
func TestOwnRevocationTellsNothingOfAnother(t *testing.T) {
	hold := newSyncHold()
	e := enginetest.New(t, func(o *engine.Options) { o.FS = hold.fs() })
	alice := enginetest.Register(t, e, "alice")
	laptop := enginetest.Login(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol, dave := enginetest.Register(t, e, "carol"), enginetest.Register(t, e, "dave")
	alice.Create("ours", bob)
	theirs := carol.Create("theirs", dave)
	s, r := openCaughtUp(t, e, alice)
	before := s.Pos()

	// A commit held in its sync, while the revocation and carol's
	// message queue behind it: the next group takes both.
	done := hold.during(func() { dave.Send(theirs, "held") })
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := e.RevokeDevice(ctx, alice.Actor, laptop.Actor.Device); err != nil {
			t.Error(err)
		}
	})
	wg.Go(func() { carol.Send(theirs, "not for alice") })
	awaitQueued(e, 2)
	hold.release()
	wg.Wait()
	<-done

	n := len(r.events)
	r.drain(s, engine.DefaultBatchOps)
	if evs := r.events[n:]; len(evs) != 0 || s.Pos() != before {
		t.Fatalf("alice's session after her revocation grouped with carol's message: %+v (position %d, then %d); want nothing", evs, before, s.Pos())
	}
}

// TestPositionsAreTheUsersOwn: the feed position a session reports is
// that of its user's latest change, not the server's, which moves with
// every commit: it stays put while only other users write, and resuming
// from it is resuming from the server's (nothing comes again).
func TestPositionsAreTheUsersOwn(t *testing.T) {
	e := enginetest.New(t)
	alice, bob := enginetest.Register(t, e, "alice"), enginetest.Register(t, e, "bob")
	carol, dave := enginetest.Register(t, e, "carol"), enginetest.Register(t, e, "dave")
	ours, theirs := alice.Create("ours", bob), carol.Create("theirs", dave)
	s, r := openCaughtUp(t, e, alice)
	before := r.pos
	if s.Pos() != before || s.Welcome().FeedPos != before {
		t.Fatalf("Pos %d, welcome %d; want the catch-up's %d", s.Pos(), s.Welcome().FeedPos, before)
	}
	for range 5 {
		carol.Send(theirs, "not for alice")
	}
	if before >= engine.ServerFeedPos(e) {
		t.Fatalf("alice's catch-up reported %d; the server is at %d", before, engine.ServerFeedPos(e))
	}
	bob.Send(ours, "for alice")
	at := engine.ServerFeedPos(e) // bob's message's commit
	carol.Send(theirs, "after it")
	evs := drain(t, s)
	if len(evs) == 0 || evs[len(evs)-1].FeedPos != at || s.Pos() != at {
		t.Fatalf("alice's round after bob's message: %+v, Pos %d; want it to end at that commit's position %d (the server's is %d)", evs, s.Pos(), at, engine.ServerFeedPos(e))
	}
	// Carol goes on writing; alice comes back from her position.
	carol.Send(theirs, "still not for alice")
	again, err := e.OpenSession(alice.Actor, engine.SessionOptions{Epoch: e.Epoch(), FeedPos: at})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if w := again.Welcome(); w.FeedPos != at || w.Changed != 0 || w.MissingOps != 0 {
		t.Fatalf("resuming from %d: welcome %+v; want nothing changed, at the same position", at, w)
	}
	evs = drain(t, again)
	if len(evs) != 1 || evs[0].Kind != engine.EventCaughtUp || evs[0].FeedPos != at {
		t.Fatalf("resuming from %d: %+v; want only a CaughtUp at %d", at, evs, at)
	}
}

// TestRevokedDeviceCatchUpEnds: a device revoked while its catch-up is on
// its way gets no more of it: the next event is the error, not the rest
// of the history.
func TestRevokedDeviceCatchUpEnds(t *testing.T) {
	e := enginetest.New(t)
	bob := enginetest.Register(t, e, "bob")
	conv := bob.Create("c")
	for i := range 20 {
		bob.Send(conv, fmt.Sprintf("message %d", i))
	}
	laptop := enginetest.Login(t, e, "bob")
	s, err := e.OpenSession(laptop.Actor, engine.SessionOptions{MaxBatchOps: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	got := 0
	for got == 0 { // bounded: the catch-up's first ops come within a few events
		ev, ok, err := s.Next()
		if err != nil || !ok {
			t.Fatalf("catch-up: %v, %v", ok, err)
		}
		for _, b := range ev.Batches {
			got += len(b.Ops)
		}
	}
	if err := e.RevokeDevice(ctx, bob.Actor, laptop.Actor.Device); err != nil {
		t.Fatal(err)
	}
	if ev, _, err := s.Next(); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("after the revocation, with %d of 21 ops sent, the session went on: %+v, %v", got, ev, err)
	}
}

// TestCursorForUnchangedConversation: a hello cursor for a conversation
// that has not changed is where later live rounds resume, not the older
// delivered marker.
func TestCursorForUnchangedConversation(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	alice.Send(conv, "one")
	s, err := e.OpenSession(bob.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	s.Close() // no ack: the server's delivered marker stays at 0
	s, err = e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: e.Epoch(), FeedPos: r.pos, Cursors: map[ulid.ULID]uint64{conv: 3}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r2 := newReceiver(t)
	r2.infos = r.infos
	r2.drain(s, engine.DefaultBatchOps)
	alice.Send(conv, "two")
	r2.drain(s, engine.DefaultBatchOps)
	r2.holdsExactly(conv, 4, 4)
}

// TestOpsEventsRespectTheByteBound: an Ops event stays within the session's
// byte bound unless a single op is larger.
func TestOpsEventsRespectTheByteBound(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	for range 40 {
		alice.Push(alice.Op(conv, model.Op{Kind: model.KindMessage, Body: make([]byte, 10<<10)}))
	}
	s, err := e.OpenSession(bob.Actor, engine.SessionOptions{MaxBatchBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, 42)
	// A live round brings 20 more in one commit: it is split the same way.
	var more []model.Op
	for range 20 {
		more = append(more, alice.Op(conv, model.Op{Kind: model.KindMessage, Body: make([]byte, 10<<10)}))
	}
	alice.Push(more...)
	r.drain(s, engine.DefaultBatchOps)
	r.holdsExactly(conv, 1, 62)
	// And by the op bound.
	s2, err := e.OpenSession(bob.Actor, engine.SessionOptions{MaxBatchOps: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	r2 := newReceiver(t)
	r2.drain(s2, 3)
	var small []model.Op
	for range 10 {
		small = append(small, alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("short")}))
	}
	alice.Push(small...)
	r2.drain(s2, 3) // take fails on an event of more than 3 ops
	r2.holdsExactly(conv, 1, 72)
	// A live round larger than one shared read (maxMemoBytes, 256 KiB):
	// read in parts, each op once.
	var large []model.Op
	for range 40 {
		large = append(large, alice.Op(conv, model.Op{Kind: model.KindMessage, Body: make([]byte, 10<<10)}))
	}
	alice.Push(large...)
	for _, rs := range []struct {
		r *receiver
		s *engine.Session
		n int
	}{{r, s, engine.DefaultBatchOps}, {r2, s2, 3}} {
		rs.r.drain(rs.s, rs.n)
		rs.r.holdsExactly(conv, 1, 112)
	}
	for _, ev := range r.events {
		size := 0
		for _, b := range ev.Batches {
			for _, op := range b.Ops {
				size += len(op.Body)
			}
		}
		if size > 64<<10 {
			t.Fatalf("an Ops event carried %d body bytes, over the 64 KiB bound", size)
		}
	}
}

// TestReconnectWorkIsProportionalToChanges counts store reads for a
// reconnect: a user in 1000 conversations costs what a user in 50 does
// when the same 5 conversations changed. The conversations that changed
// within MaxEntryLag feed positions before the device's position are read
// too (the members' entries may sit that far below, see moveConvFeed):
// here a busy conversation moves the feed past the rest before the device
// leaves.
func TestReconnectWorkIsProportionalToChanges(t *testing.T) {
	reads := func(total int) uint64 {
		e := enginetest.New(t)
		alice := enginetest.Register(t, e, "alice")
		bob := enginetest.Register(t, e, "bob")
		var convs []ulid.ULID
		for i := range total {
			convs = append(convs, alice.Create(fmt.Sprint(i), bob))
			alice.Send(convs[i], "hello")
		}
		s, err := e.OpenSession(bob.Actor, engine.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r := newReceiver(t)
		r.drain(s, engine.DefaultBatchOps)
		r.ack(bob)
		r.drain(s, engine.DefaultBatchOps)
		busy := alice.Create("busy", bob)
		for i := range engine.MaxEntryLag {
			alice.Send(busy, fmt.Sprint(i))
		}
		r.drain(s, engine.DefaultBatchOps)
		s.Close()
		for i := range 5 {
			for j := range 20 {
				alice.Send(convs[i*total/5], fmt.Sprint(j))
			}
		}
		before := e.Metrics().Reads
		s, err = e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: e.Epoch(), FeedPos: r.pos})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		r2 := newReceiver(t)
		r2.infos = r.infos
		r2.drain(s, engine.DefaultBatchOps)
		if !r2.caught || len(r2.events[0].Conversations) != 5 {
			t.Fatalf("reconnect did not catch up 5 conversations")
		}
		return e.Metrics().Reads - before
	}
	small, large := reads(50), reads(1000)
	t.Logf("reads per reconnect: %d with 50 conversations, %d with 1000", small, large)
	if large > small+small/10 {
		t.Fatalf("reconnect work grows with total conversations: %d reads for 1000, %d for 50", large, small)
	}
	// 5 changed conversations × 20 new ops: a few reads per op and per
	// conversation, nothing per unchanged conversation.
	if large > 5*20*2+5*30 {
		t.Fatalf("reconnect took %d reads for 100 missing ops in 5 conversations", large)
	}
}

// TestCloseUnderAnOpenSession: closing the engine while a session is open
// fails the session's reads with ErrClosed; nothing panics or races.
func TestCloseUnderAnOpenSession(t *testing.T) {
	o := enginetest.Options(t, 3)
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	bob := enginetest.Register(t, e, "bob")
	bob.Create("c")
	s, err := e.OpenSession(bob.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// Steps already planned may still come out; the first read fails.
	for i := 0; ; i++ {
		_, ok, err := s.Next()
		if err != nil {
			if !errors.Is(err, engine.ErrClosed) {
				t.Fatalf("Next after Close: %v, want ErrClosed", err)
			}
			break
		}
		if !ok || i == 10 {
			t.Fatal("a session on a closed engine went on without an error")
		}
	}
	if _, err := e.History(bob.Actor, ulid.Make(), engine.HistoryQuery{}); !errors.Is(err, engine.ErrClosed) {
		t.Fatalf("History after Close: %v, want ErrClosed", err)
	}
}

// A read on one device reaches the user's other devices in their live
// rounds: the user's own feed moves, with no new op.
func TestReadReachesOtherDevicesLive(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	laptop := enginetest.Login(t, e, "bob")
	conv := alice.Create("c", bob)
	alice.Send(conv, "one")
	alice.Send(conv, "two")
	s, r := openCaughtUp(t, e, laptop)
	// Adding bob read up to his addition (seq 2): alice's two messages,
	// seqs 3 and 4, are unread.
	if info := r.infos[conv]; info.Unread != 2 {
		t.Fatalf("laptop's unread before the read: %d, want 2", info.Unread)
	}
	// Delivered moves the conversation's feed (a receipt for alice); the
	// private reads after it move only bob's own feed.
	if err := bob.E.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Delivered: 4}}); err != nil {
		t.Fatal(err)
	}
	<-s.Changed()
	r.drain(s, engine.DefaultBatchOps)
	for round, read := range []uint64{3, 4} {
		if err := bob.E.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Read: read, Private: true}}); err != nil {
			t.Fatal(err)
		}
		<-s.Changed()
		r.drain(s, engine.DefaultBatchOps)
		if info := r.infos[conv]; info.Read != read || info.Unread != 1-uint64(round) {
			t.Fatalf("round %d: laptop sees read %d, unread %d; want read %d, unread %d", round, info.Read, info.Unread, read, 1-round)
		}
	}
}

// liveConversation has an author create a conversation with members
// users, each with a caught-up session open.
func liveConversation(t *testing.T, e *engine.Engine, members int) (author *enginetest.Device, devs []*enginetest.Device, conv ulid.ULID, sessions []*engine.Session) {
	t.Helper()
	author = enginetest.Register(t, e, "author")
	devs = make([]*enginetest.Device, members)
	for i := range devs {
		devs[i] = enginetest.Register(t, e, fmt.Sprintf("member%d", i))
	}
	conv = author.Create("live", devs...)
	sessions = make([]*engine.Session, members)
	for i, d := range devs {
		sessions[i], _ = openCaughtUp(t, e, d)
	}
	return author, devs, conv, sessions
}

// TestLiveRoundBehindTheJournal counts store reads for a live round whose
// session fell behind its user's feed journal, which then reads the feed
// from the store: the conversations that changed, and the records of
// those whose entries sit within MaxEntryLag positions before the round's
// start (see moveConvFeed), not every conversation of its user.
func TestLiveRoundBehindTheJournal(t *testing.T) {
	engine.MeasureWithoutChecks(t) // the checks read everything again
	const changed = 100            // past the journal's 64 moves
	reads := func(total int) uint64 {
		t.Helper()
		e := enginetest.New(t)
		alice := enginetest.Register(t, e, "alice")
		bob := enginetest.Register(t, e, "bob")
		convs := make([]ulid.ULID, total)
		for i := range convs {
			convs[i] = alice.Create(fmt.Sprint(i), bob)
		}
		s, _ := openCaughtUp(t, e, bob)
		for _, c := range convs[:changed] {
			alice.Send(c, "hello")
		}
		before := e.Metrics().Reads
		r := newReceiver(t)
		r.drain(s, engine.DefaultBatchOps)
		if len(r.held) != changed {
			t.Fatalf("the live round brought ops of %d conversations, want %d", len(r.held), changed)
		}
		return e.Metrics().Reads - before
	}
	// The band holds the user's last MaxEntryLag conversations made in
	// both (each made at a position of its own, the last just before the
	// round's start): 579 reads in 150 and 607 in 1,100, where a band of
	// 1,024 read 2,479 in 1,100.
	const few, many = changed + 50, changed + 1000
	small, large := reads(few), reads(many)
	t.Logf("store reads in a live round of %d changed conversations: %d in %d conversations, %d in %d", changed, small, few, large, many)
	if large > small+small/10 {
		t.Fatalf("a live round behind the journal read more with more conversations: %d reads in %d, %d in %d", large, many, small, few)
	}
}

// TestLiveRoundSharesReads counts store reads for a live round: sessions
// woken by one commit share the conversation's record and the new ops
// (read once per durable view); what is each user's own, the member record,
// the marker and the message count at it, a session remembers from its
// previous round, or takes from the writer when the user's device changed
// the marker since: by acknowledging the round, or by sending a message
// (which reads everything before it).
func TestLiveRoundSharesReads(t *testing.T) {
	engine.MeasureWithoutChecks(t) // the checks read everything again
	const members = 60             // past ReceiptMembers, so that no receipts are read
	for _, since := range []string{"nothing", "acks", "a message"} {
		t.Run("since "+since, func(t *testing.T) {
			e := enginetest.New(t)
			author, devs, conv, sessions := liveConversation(t, e, members)
			round := func(from *enginetest.Device, ack bool) {
				t.Helper()
				sent := from.Send(conv, "to everyone")
				for i, s := range sessions {
					r := newReceiver(t)
					r.drain(s, engine.DefaultBatchOps)
					if n := len(r.held[conv]); n != 1 {
						t.Fatalf("a round brought %d ops, want 1", n)
					}
					if ack {
						if err := e.Mark(ctx, devs[i].Actor, []engine.Marker{{Conv: conv, Delivered: sent.Seq}}); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			// The first round reads the user's own records; the last is
			// measured.
			round(author, since == "acks")
			if since == "a message" {
				round(devs[0], false)
			}
			before := e.Metrics().Reads
			round(author, false)
			// Without the memo, the remembered records and the writer's
			// markers, 5 reads per session.
			got := e.Metrics().Reads - before
			t.Logf("store reads in a live round of %d members: %d", members, got)
			if got > 1 {
				t.Fatalf("a live round of %d sessions took %d store reads; want at most 1: the record and the op remembered by the writer, each user's own records remembered or taken from the writer", members, got)
			}
		})
	}
}

// TestLiveRoundOverSeveralCommits: sessions that were up to date before
// several commits read the ops of all of them from what the writer handed
// the view, not from the store, also when the view they read is that of a
// later commit to another conversation; and a message erased by a later
// commit reaches them erased, from the memo as from the store.
func TestLiveRoundOverSeveralCommits(t *testing.T) {
	t.Run("reads", func(t *testing.T) {
		engine.MeasureWithoutChecks(t) // the checks read everything again
		const members = 60             // past ReceiptMembers, so that no receipts are read
		e := enginetest.New(t)
		author, _, conv, sessions := liveConversation(t, e, members)
		other := enginetest.Register(t, e, "other")
		elsewhere := other.Create("elsewhere")
		round := func(messages int) {
			t.Helper()
			for range messages {
				author.Send(conv, "to everyone")
			}
			// A commit that leaves the conversation as it was: the
			// sessions read the view it published.
			other.Send(elsewhere, "not for them")
			for _, s := range sessions {
				r := newReceiver(t)
				r.drain(s, engine.DefaultBatchOps)
				if n := len(r.held[conv]); n != messages {
					t.Fatalf("a round brought %d ops, want %d", n, messages)
				}
			}
		}
		round(1)
		before := e.Metrics().Reads
		round(3)
		got := e.Metrics().Reads - before
		t.Logf("store reads in a live round of %d members over 3 commits: %d", members, got)
		if got > 1 {
			t.Fatalf("a live round of %d sessions over 3 commits took %d store reads; want at most 1, as over one", members, got)
		}
	})
	t.Run("erased", func(t *testing.T) {
		withAndWithoutChecks(t, func(t *testing.T) {
			e := enginetest.New(t)
			alice := enginetest.Register(t, e, "alice")
			bob := enginetest.Register(t, e, "bob")
			conv := alice.Create("c", bob)
			s, _ := openCaughtUp(t, e, bob)
			m := alice.Send(conv, "secret")
			alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: m.ID}))
			var got []model.Op
			for _, ev := range drain(t, s) {
				for _, b := range ev.Batches {
					got = append(got, b.Ops...)
				}
			}
			if len(got) != 2 || got[0].ID != m.ID || !got[0].Erased || len(got[0].Body) != 0 {
				t.Fatalf("bob's round after a message and its deletion: %+v; want the message erased, then the delete", got)
			}
		})
	})
}

// TestWriterDropsOldRuns: the writer keeps the runs of the conversations
// written in its last few commits only.
func TestWriterDropsOldRuns(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	for range 50 {
		alice.Send(alice.Create("one of many"), "hello")
	}
	if n := e.Runs(); n == 0 || n > engine.CarryCommits {
		t.Fatalf("after 100 commits to 50 conversations the writer holds %d runs; want the last %d commits' at most", n, engine.CarryCommits)
	}
}

// TestLiveRoundTakesReceiptsFromTheWriter: in a conversation that shares
// receipts, the writer, which holds the members' markers once they acked,
// hands the woken sessions the receipts at the new feed position: a live
// round reads none of the members' records or markers.
func TestLiveRoundTakesReceiptsFromTheWriter(t *testing.T) {
	engine.MeasureWithoutChecks(t) // the checks read everything again
	const members = 10
	e := enginetest.New(t)
	author, devs, conv, sessions := liveConversation(t, e, members)
	round := func(ack bool) uint64 {
		t.Helper()
		before := e.Metrics().Reads
		author.Send(conv, "to everyone")
		for i, s := range sessions {
			r := newReceiver(t)
			r.drain(s, engine.DefaultBatchOps)
			if info := r.infos[conv]; !info.ReceiptsShared || len(info.Receipts) != members {
				t.Fatalf("a member's round: receipts shared %v, %d receipts; want %d", info.ReceiptsShared, len(info.Receipts), members)
			}
			if ack {
				r.ack(devs[i])
				r.drain(s, engine.DefaultBatchOps)
			}
		}
		return e.Metrics().Reads - before
	}
	round(true) // every member acks: the writer holds their markers
	got := round(false)
	t.Logf("store reads in a live round of %d members sharing receipts: %d", members, got)
	if got > 1 {
		t.Fatalf("a live round of %d members sharing receipts took %d store reads; want at most 1: the receipts from the writer", members, got)
	}
}

// withAndWithoutChecks runs test with the engine's cache checks and
// without them: with them, what a session takes from memory is compared
// with the store; without, what it remembers is what the test sees.
func withAndWithoutChecks(t *testing.T, test func(t *testing.T)) {
	for _, checked := range []bool{true, false} {
		t.Run(fmt.Sprintf("checked=%v", checked), func(t *testing.T) {
			if !checked {
				engine.MeasureWithoutChecks(t)
			}
			test(t)
		})
	}
}

// TestLiveRoundFollowsMarkers: a session that remembers its user's marker
// between live rounds shows every change of it, made by another device
// of the user, with a message or alone. Run with the cache checks and
// without, so that the remembered marker is what is tested.
func TestLiveRoundFollowsMarkers(t *testing.T) {
	withAndWithoutChecks(t, func(t *testing.T) {
		e := enginetest.New(t)
		alice := enginetest.Register(t, e, "alice")
		bob := enginetest.Register(t, e, "bob")
		tablet := enginetest.Login(t, e, "bob")
		conv := alice.Create("c", bob)
		s, r := openCaughtUp(t, e, bob)
		want := func(step string, read, unread uint64) {
			t.Helper()
			r.drain(s, engine.DefaultBatchOps)
			if info := r.infos[conv]; info.Read != read || info.Unread != unread {
				t.Fatalf("%s: bob's phone sees read %d, unread %d; want %d, %d", step, info.Read, info.Unread, read, unread)
			}
		}
		mark := func(read uint64) {
			t.Helper()
			if err := e.Mark(ctx, tablet.Actor, []engine.Marker{{Conv: conv, Read: read}}); err != nil {
				t.Fatal(err)
			}
		}
		one := alice.Send(conv, "one")
		want("a message", one.Seq-1, 1) // bob has read what came before he joined, and his joining
		mark(one.Seq)
		want("read on the tablet", one.Seq, 0)
		alice.Send(conv, "two")
		want("another message", one.Seq, 1)
		three := alice.Send(conv, "three")
		mark(three.Seq)
		alice.Send(conv, "four")
		want("read on the tablet among messages", three.Seq, 1)
	})
}

// TestSessionOpenedDuringAMarkerCommitFollowsMarkers: the laptop connects
// while the commit that adds bob to alice's conversation (which sets bob's
// read marker) is under way, the first session of bob's to do so; a read
// on bob's phone later must still clear the laptop's unread count. The hub
// had counted that commit done for bob and never begun, so the laptop's
// session took the marker it remembered from before the read for the
// store's.
func TestSessionOpenedDuringAMarkerCommitFollowsMarkers(t *testing.T) {
	withAndWithoutChecks(t, func(t *testing.T) {
		e := enginetest.New(t)
		alice := enginetest.Register(t, e, "alice")
		phone := enginetest.Register(t, e, "bob")
		laptop := enginetest.Login(t, e, "bob")
		var s *engine.Session
		var openErr error
		engine.DuringMarkerCommit(e, func() {
			if s == nil && openErr == nil {
				s, openErr = e.OpenSession(laptop.Actor, engine.SessionOptions{})
			}
		})
		conv := alice.Create("c", phone)
		engine.DuringMarkerCommit(e, nil)
		if s == nil {
			t.Fatalf("the laptop's session did not open during the commit: %v", openErr)
		}
		t.Cleanup(s.Close)
		r := newReceiver(t)
		want := func(step string, read, unread uint64) {
			t.Helper()
			r.drain(s, engine.DefaultBatchOps)
			if info := r.infos[conv]; info.Read != read || info.Unread != unread {
				t.Fatalf("%s: the laptop sees read %d, unread %d; want %d, %d", step, info.Read, info.Unread, read, unread)
			}
		}
		want("the conversation", 2, 0) // bob has read up to his addition
		alice.Send(conv, "one")
		two := alice.Send(conv, "two")
		want("two messages", 2, 2)
		if err := e.Mark(ctx, phone.Actor, []engine.Marker{{Conv: conv, Delivered: two.Seq, Read: two.Seq}}); err != nil {
			t.Fatal(err)
		}
		want("read on the phone", two.Seq, 0)
	})
}

// TestLiveRoundDuringAMarkerCommitFollowsMarkers: a live round that runs
// while a commit moving its user's marker is in the store but not yet
// counted done shows the marker its view holds, not the one the hub kept
// from the commit before. Run with the cache checks and without.
func TestLiveRoundDuringAMarkerCommitFollowsMarkers(t *testing.T) {
	withAndWithoutChecks(t, func(t *testing.T) {
		e := enginetest.New(t)
		alice := enginetest.Register(t, e, "alice")
		phone := enginetest.Register(t, e, "bob")
		laptop := enginetest.Login(t, e, "bob")
		conv := alice.Create("c", phone)
		s, r := openCaughtUp(t, e, laptop)
		mark := func(read uint64) {
			t.Helper()
			if err := e.Mark(ctx, phone.Actor, []engine.Marker{{Conv: conv, Read: read}}); err != nil {
				t.Fatal(err)
			}
		}
		one := alice.Send(conv, "one")
		mark(one.Seq) // the hub keeps this marker for bob
		r.drain(s, engine.DefaultBatchOps)
		two := alice.Send(conv, "two") // wakes the laptop; its round waits
		// On the writer's goroutine, which must not stop: what the round
		// sends is checked after the commit.
		var events []engine.Event
		var roundErr error
		engine.DuringMarkerCommit(e, func() {
			for range 100 {
				ev, ok, err := s.Next()
				if err != nil || !ok {
					roundErr = err
					return
				}
				events = append(events, ev)
			}
		})
		mark(two.Seq)
		engine.DuringMarkerCommit(e, nil)
		if roundErr != nil {
			t.Fatalf("the round during the read's commit: %v", roundErr)
		}
		for _, ev := range events {
			r.take(ev, engine.DefaultBatchOps)
		}
		if info := r.infos[conv]; info.Read != two.Seq || info.Unread != 0 {
			t.Fatalf("the round during the read's commit shows read %d, unread %d; want %d, 0", info.Read, info.Unread, two.Seq)
		}
	})
}

// TestLiveRoundFollowsMembership: a session that remembers its user's member
// record between live rounds shows every change of it, whether the round
// brings one op or several, with other ops around it. Run with the cache
// checks and without, so that the remembered record is what is tested.
func TestLiveRoundFollowsMembership(t *testing.T) {
	withAndWithoutChecks(t, func(t *testing.T) {
		e := enginetest.New(t)
		alice := enginetest.Register(t, e, "alice")
		bob := enginetest.Register(t, e, "bob")
		carol := enginetest.Register(t, e, "carol")
		conv := alice.Create("c", bob, carol)
		s, r := openCaughtUp(t, e, bob)
		role := func(u ulid.ULID, to model.Role) model.Op {
			return alice.Op(conv, model.Op{Kind: model.KindMemberRole, Member: u, Role: to})
		}
		want := func(step string, role model.Role, removed bool) {
			t.Helper()
			r.drain(s, engine.DefaultBatchOps)
			if info := r.infos[conv]; info.Role != role || info.Removed != removed {
				t.Fatalf("%s: bob sees role %v, removed %v; want %v, %v", step, info.Role, info.Removed, role, removed)
			}
		}
		alice.Send(conv, "one")
		want("a message", model.RoleMember, false)
		alice.Push(role(bob.Actor.User, model.RoleAdmin))
		want("bob made admin alone", model.RoleAdmin, false)
		alice.Send(conv, "two")
		alice.Push(role(carol.Actor.User, model.RoleAdmin))
		want("carol made admin", model.RoleAdmin, false)
		alice.Send(conv, "three")
		alice.Push(role(bob.Actor.User, model.RoleMember))
		alice.Send(conv, "four")
		want("bob made member among messages", model.RoleMember, false)
		rm := alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
		alice.Send(conv, "after removal")
		want("bob removed", model.RoleNone, true)
		r.holdsExactly(conv, 1, rm[0].Seq)
	})
}

// TestPushingOpsLeftOut: a session given the ops its device is pushing
// (SessionOptions.Pushing) leaves them out of its live rounds, in runs
// around them, and leaves out an info whose only change is the head they
// moved; what else changed still comes. The user's other device, and
// ops of the same device that are not in the set, come as before.
func TestPushingOpsLeftOut(t *testing.T) {
	e := enginetest.New(t)
	phone := enginetest.Register(t, e, "alice")
	laptop := enginetest.Login(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := phone.Create("c", bob) // seqs 1 and 2
	var pushing engine.Pushing
	s, err := e.OpenSession(phone.Actor, engine.SessionOptions{Pushing: &pushing})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	ls, lr := openCaughtUp(t, e, laptop)

	// push appends the phone's ops as its stream would: in the set until
	// their result is sent. It returns their seqs.
	push := func(ops ...model.Op) []uint64 {
		t.Helper()
		pushing.Add(ops)
		var seqs []uint64
		for _, res := range phone.Push(ops...) {
			seqs = append(seqs, res.Seq)
		}
		return seqs
	}
	// round takes the session's next round and returns its events.
	round := func() []engine.Event {
		t.Helper()
		n := len(r.events)
		r.drain(s, engine.DefaultBatchOps)
		return r.events[n:]
	}
	sent := func(evs []engine.Event) (infos int, seqs []uint64) {
		for _, ev := range evs {
			infos += len(ev.Conversations)
			for _, b := range ev.Batches {
				for _, op := range b.Ops {
					seqs = append(seqs, op.Seq)
				}
			}
		}
		return infos, seqs
	}
	msg := func(d *enginetest.Device, text string) model.Op {
		return d.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(text), ContentType: "text/plain"})
	}

	// Only the phone's own op: the round is its feed position alone.
	own := msg(phone, "mine")
	mine := map[uint64]bool{push(own)[0]: true}
	evs := round()
	if infos, seqs := sent(evs); infos != 0 || len(seqs) != 0 || len(evs) != 1 || evs[0].FeedPos == 0 {
		t.Fatalf("a round of the device's own op sent %d infos and seqs %v in %d events; want its feed position alone", infos, seqs, len(evs))
	}
	if s.Pos() != evs[0].FeedPos {
		t.Fatalf("Pos %d, want the round's %d", s.Pos(), evs[0].FeedPos)
	}
	pushing.Remove([]model.Op{own})

	// Own ops on both sides of bob's, in one round: bob's alone, with the
	// info its head needs.
	a1, a2 := msg(phone, "before bob"), msg(phone, "after bob")
	mine[push(a1)[0]] = true
	b := bob.Send(conv, "bob's")
	mine[push(a2)[0]] = true
	if infos, seqs := sent(round()); infos != 1 || fmt.Sprint(seqs) != fmt.Sprint([]uint64{b.Seq}) {
		t.Fatalf("round around bob's op sent %d infos and seqs %v; want 1 and [%d]", infos, seqs, b.Seq)
	}
	pushing.Remove([]model.Op{a1, a2})

	// An op of the phone's that is not in the set comes, in one run with
	// bob's before it.
	a3 := msg(phone, "in the set")
	mine[push(a3)[0]] = true
	b2 := bob.Send(conv, "bob's second")
	a4 := phone.Send(conv, "not in the set")
	if _, seqs := sent(round()); fmt.Sprint(seqs) != fmt.Sprint([]uint64{b2.Seq, a4.Seq}) {
		t.Fatalf("round sent seqs %v; want [%d %d]", seqs, b2.Seq, a4.Seq)
	}
	for _, ev := range r.events[len(r.events)-2:] {
		if len(ev.Batches) > 1 {
			t.Fatalf("two runs for consecutive seqs: %+v", ev.Batches)
		}
	}
	pushing.Remove([]model.Op{a3})

	// A title the phone sets: the op stays out, the new title comes.
	title := phone.Op(conv, model.Op{Kind: model.KindSetTitle, Title: "renamed"})
	mine[push(title)[0]] = true
	evs = round()
	if infos, seqs := sent(evs); infos != 1 || len(seqs) != 0 || r.infos[conv].Title != "renamed" {
		t.Fatalf("title round sent %d infos (title %q) and seqs %v; want the info alone", infos, r.infos[conv].Title, seqs)
	}
	pushing.Remove([]model.Op{title})

	// An op pushed again before the first push is answered (a client that
	// renumbers its pending ops sends them again): it stays in the set,
	// and rounds wait behind it, until the last push is answered. The
	// first answer may refuse the old numbering, and give no seq.
	twice := msg(phone, "pushed twice")
	mine[push(twice)[0]] = true
	if _, seqs := sent(round()); len(seqs) != 0 || !pushing.LeftOut() {
		t.Fatalf("round sent seqs %v, left out %v; want none, and rounds to wait", seqs, pushing.LeftOut())
	}
	pushing.Add([]model.Op{twice})    // the second push
	pushing.Remove([]model.Op{twice}) // the first one's result
	if !pushing.LeftOut() || pushing.Len() != 1 {
		t.Fatalf("one push answered of two: left out %v, %d ops in the set; want true and 1", pushing.LeftOut(), pushing.Len())
	}
	pushing.Remove([]model.Op{twice})
	if pushing.LeftOut() || pushing.Len() != 0 {
		t.Fatalf("both pushes answered: left out %v (rounds wait for good), %d ops in the set; want false and 0", pushing.LeftOut(), pushing.Len())
	}

	// The phone holds what it was sent and what it pushed, each once; the
	// laptop was sent everything.
	_, head, err := e.Vector(phone.Actor, conv)
	if err != nil {
		t.Fatal(err)
	}
	for q := uint64(1); q <= head; q++ {
		_, got := r.held[conv][q]
		if got == mine[q] {
			t.Fatalf("seq %d: sent %v, pushed by the phone %v", q, got, mine[q])
		}
	}
	lr.drain(ls, engine.DefaultBatchOps)
	lr.holdsExactly(conv, 1, head)
}
