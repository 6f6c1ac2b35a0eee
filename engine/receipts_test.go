package engine_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/clock"
)

// drain takes the session's events until it has nothing to send.
func drain(t *testing.T, s *engine.Session) []engine.Event {
	t.Helper()
	var evs []engine.Event
	for range 1000 {
		ev, ok, err := s.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return evs
		}
		evs = append(evs, ev)
	}
	t.Fatal("session never went quiet")
	return nil
}

// receiptsOf drains the session and returns the receipts it sent for conv,
// or nil if it sent no news of conv.
func receiptsOf(t *testing.T, s *engine.Session, conv ulid.ULID) []engine.Receipt {
	t.Helper()
	var got []engine.Receipt
	for _, ev := range drain(t, s) {
		for _, c := range ev.Conversations {
			if c.ID == conv {
				got = c.Receipts
			}
		}
	}
	return got
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func delivered(rs []engine.Receipt, u ulid.ULID) uint64 {
	for _, r := range rs {
		if r.User == u {
			return r.Delivered
		}
	}
	return 0
}

// TestReceiptsWaitAndMoveTheFeedOnce: the delivered acks of a message's
// recipients are durable at once but reach the sender's session together,
// one feed move after ReceiptDelay, not one wake-up per ack. A new message
// carries waiting receipts with it at once.
func TestReceiptsWaitAndMoveTheFeedOnce(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	e := enginetest.New(t, func(o *engine.Options) { o.Clock, o.ReceiptDelay = fake, 50*time.Millisecond })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	conv := alice.Create("trio", bob, carol)
	lunch := alice.Send(conv, "lunch?").Seq // the adds before it count as read (TestJoinerHasReadWhatCameBefore)

	s, err := e.OpenSession(alice.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	receiptsOf(t, s, conv)
	changed := s.Changed()
	armed := fake.Armed()
	for _, d := range []*enginetest.Device{bob, carol} {
		if err := e.Mark(ctx, d.Actor, []engine.Marker{{Conv: conv, Delivered: lunch}}); err != nil {
			t.Fatal(err)
		}
	}
	waitClosed(t, armed, "the receipt timer")
	fake.Advance(49 * time.Millisecond)
	select {
	case <-changed:
		t.Fatal("alice's session was woken before the receipt delay passed")
	default:
	}
	// The markers are durable already: a read sees them.
	info, _, _, err := e.Conversation(alice.Actor, conv)
	if err != nil {
		t.Fatal(err)
	}
	if got := delivered(info.Receipts, bob.Actor.User); got != lunch {
		t.Fatalf("bob's delivered receipt reads %d before the feed moved, want %d", got, lunch)
	}
	fake.Advance(time.Millisecond)
	waitClosed(t, changed, "the receipts to move alice's feed")
	rs := receiptsOf(t, s, conv)
	if delivered(rs, bob.Actor.User) != lunch || delivered(rs, carol.Actor.User) != lunch {
		t.Fatalf("alice's session sent receipts %+v, want bob and carol at %d", rs, lunch)
	}
	if next := s.Changed(); len(receiptsOf(t, s, conv)) != 0 {
		t.Fatal("the two acks moved the feed more than once")
	} else {
		select {
		case <-next:
			t.Fatal("alice's session was woken again with nothing new")
		default:
		}
	}

	// A receipt waiting when a message arrives goes out with the message,
	// and the later timer has nothing left to move.
	changed = s.Changed()
	if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Read: lunch}}); err != nil {
		t.Fatal(err)
	}
	carol.Send(conv, "yes")
	waitClosed(t, changed, "carol's message")
	if got := receiptsOf(t, s, conv); len(got) == 0 {
		t.Fatal("the new message did not carry the conversation's news")
	}
	enginetest.MustCheck(t, e)
}

// TestEachConversationsReceiptsWaitTheDelay: a conversation's receipts wait
// ReceiptDelay from their own first ack, not from another conversation's,
// so that a message in the meantime can carry them; receipts due go out in
// one commit with those that have waited half the delay.
func TestEachConversationsReceiptsWaitTheDelay(t *testing.T) {
	const delay = 100 * time.Millisecond
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	fake := clock.NewFake(start)
	e := enginetest.New(t, func(o *engine.Options) { o.Clock, o.ReceiptDelay = fake, delay })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	var convs [3]ulid.ULID
	for i := range convs {
		convs[i] = alice.Create("pair", bob)
		alice.Send(convs[i], "ping")
	}
	s, err := e.OpenSession(alice.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	receiptsOf(t, s, convs[0])
	ack := func(conv ulid.ULID) {
		t.Helper()
		armed := fake.Armed()
		if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Delivered: 3}}); err != nil {
			t.Fatal(err)
		}
		if conv == convs[0] {
			waitClosed(t, armed, "the receipt timer")
		}
	}
	// news drains the session: the conversations each Conversations event
	// carried news of, event by event.
	news := func() [][]ulid.ULID {
		t.Helper()
		var out [][]ulid.ULID
		for _, ev := range drain(t, s) {
			var ids []ulid.ULID
			for _, c := range ev.Conversations {
				if delivered(c.Receipts, bob.Actor.User) == 3 {
					ids = append(ids, c.ID)
				}
			}
			if len(ids) > 0 {
				out = append(out, ids)
			}
		}
		return out
	}
	ack(convs[0]) // waits from 0 ms
	fake.Advance(40 * time.Millisecond)
	ack(convs[1]) // from 40 ms: half the delay has passed when the first are due
	fake.Advance(20 * time.Millisecond)
	ack(convs[2]) // from 60 ms
	if next, ok := fake.Next(); !ok || !next.Equal(start.Add(delay)) {
		t.Fatalf("receipt timer at %v (armed %v), want %v", next, ok, start.Add(delay))
	}
	changed, armed := s.Changed(), fake.Armed()
	fake.Advance(40 * time.Millisecond)
	waitClosed(t, changed, "the first receipts due")
	waitClosed(t, armed, "the timer for the receipts still waiting")
	if next, ok := fake.Next(); !ok || !next.Equal(start.Add(60*time.Millisecond+delay)) {
		t.Fatalf("receipt timer at %v (armed %v), want %v: when the last conversation's receipts are due", next, ok, start.Add(60*time.Millisecond+delay))
	}
	got := news()
	if len(got) != 1 || len(got[0]) != 2 || !slices.Contains(got[0], convs[0]) || !slices.Contains(got[0], convs[1]) {
		t.Fatalf("at 100 ms alice heard of receipts in %v; want one round with %v and %v", got, convs[0], convs[1])
	}
	// A message before the last receipts are due carries them.
	changed = s.Changed()
	alice.Send(convs[2], "pong")
	waitClosed(t, changed, "alice's message")
	if got := news(); len(got) != 1 || !slices.Equal(got[0], convs[2:]) {
		t.Fatalf("alice's message brought receipts of %v; want %v", got, convs[2:])
	}
	enginetest.MustCheck(t, e)
}

// TestWaitingReceiptsSurviveARestart: receipts acked just before the
// server stopped reach the members after it restarts.
func TestWaitingReceiptsSurviveARestart(t *testing.T) {
	o := enginetest.Options(t, 7)
	o.Clock, o.ReceiptDelay = clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), time.Hour
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("pair", bob)
	ping := alice.Send(conv, "ping").Seq
	s, err := e.OpenSession(alice.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	receiptsOf(t, s, conv)
	pos := s.Welcome().FeedPos
	s.Close()
	if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Delivered: ping}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	fake := clock.NewFake(time.Date(2026, 1, 2, 4, 0, 0, 0, time.UTC))
	o.Clock, o.Rand = fake, enginetest.Options(t, 8).Rand
	armed := fake.Armed()
	if e, err = engine.Open("db", o); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	waitClosed(t, armed, "the receipt timer after the restart")
	s, err = e.OpenSession(alice.Actor, engine.SessionOptions{Epoch: s.Welcome().Epoch, FeedPos: pos})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rs := receiptsOf(t, s, conv); rs != nil {
		t.Fatalf("receipts %+v reached alice before the delay", rs)
	}
	changed := s.Changed()
	fake.Advance(time.Hour)
	waitClosed(t, changed, "the waiting receipts to move alice's feed")
	if rs := receiptsOf(t, s, conv); delivered(rs, bob.Actor.User) != ping {
		t.Fatalf("after the restart alice got receipts %+v, want bob delivered %d", rs, ping)
	}
	enginetest.MustCheck(t, e)
}

// TestSessionsShareReceiptsUnderLoad: members' sessions read the receipts
// of one feed position concurrently while acks keep moving the markers
// (with a receipt delay, a position's receipts lag the markers): no session
// fails, and every member ends with every message and everyone's final
// receipts.
func TestSessionsShareReceiptsUnderLoad(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.ReceiptDelay = time.Millisecond })
	var members []*enginetest.Device
	for _, name := range []string{"alice", "bob", "carol", "dave", "erin", "frank"} {
		members = append(members, enginetest.Register(t, e, name))
	}
	conv := members[0].Create("six", members[1:]...)
	const messages = 60
	head := uint64(len(members)) + messages // create, five additions, the messages

	var wg sync.WaitGroup
	// A member that fails stops the others, which would wait for its acks.
	failed := make(chan struct{})
	var failOnce sync.Once
	fail := func(format string, args ...any) {
		t.Errorf(format, args...)
		failOnce.Do(func() { close(failed) })
	}
	for _, m := range members {
		s, err := e.OpenSession(m.Actor, engine.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		wg.Go(func() {
			held := uint64(0)
			var infos map[ulid.ULID]uint64 // member -> delivered, from the last receipts
			for range 100_000 {
				for {
					ev, ok, err := s.Next()
					if err != nil {
						fail("%s: next: %v", m.Actor.User, err)
						return
					}
					if !ok {
						break
					}
					for _, b := range ev.Batches {
						held = max(held, b.Ops[len(b.Ops)-1].Seq)
					}
					for _, c := range ev.Conversations {
						infos = map[ulid.ULID]uint64{}
						for _, r := range c.Receipts {
							infos[r.User] = r.Delivered
						}
					}
				}
				if err := e.Mark(ctx, m.Actor, []engine.Marker{{Conv: conv, Delivered: held, Read: held}}); err != nil {
					fail("mark: %v", err)
					return
				}
				done := held == head && len(infos) == len(members)-1
				for _, d := range infos {
					done = done && d == head
				}
				if done {
					return
				}
				select {
				case <-s.Changed():
				case <-failed:
					return
				}
			}
			fail("%s never caught up", m.Actor.User)
		})
	}
	for i := range messages {
		members[i%2].Send(conv, "message")
	}
	wg.Wait()
	enginetest.MustCheck(t, e)
}

// TestReceiptsSharedSaysWhetherDeliveredMarkersTravel: a conversation of up
// to ReceiptMembers members shares receipts and says so (clients then ack
// delivered markers soon); a larger one, or one the user left, does not
// (clients may gather those acks for longer).
func TestReceiptsSharedSaysWhetherDeliveredMarkersTravel(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.ReceiptMembers = 2 })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	pair := alice.Create("pair", bob)
	trio := alice.Create("trio", bob, carol)
	for _, c := range []struct {
		conv ulid.ULID
		who  *enginetest.Device
		want bool
	}{{pair, alice, true}, {pair, bob, true}, {trio, alice, false}, {trio, carol, false}} {
		info, _, _, err := e.Conversation(c.who.Actor, c.conv)
		if err != nil {
			t.Fatal(err)
		}
		if info.ReceiptsShared != c.want {
			t.Errorf("%s in a conversation of %d: ReceiptsShared %v, want %v", c.who.Actor.User, info.Members, info.ReceiptsShared, c.want)
		}
	}
	bob.Push(bob.Op(pair, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
	info, _, _, err := e.Conversation(bob.Actor, pair)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Removed || info.ReceiptsShared {
		t.Errorf("after leaving: removed %v, ReceiptsShared %v; want removed, not shared", info.Removed, info.ReceiptsShared)
	}
}

// TestStartMarkReturnsBeforeItsCommit: StartMark queues the markers'
// write and returns while its commit is under way; Wait returns once the
// markers are stored, and the errors Mark returns.
func TestStartMarkReturnsBeforeItsCommit(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	seq := alice.Send(conv, "hello").Seq

	inCommit, held := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(held) })
	defer release() // a failure below leaves no commit held
	engine.DuringMarkerCommit(e, func() {
		inCommit <- struct{}{}
		<-held
	})
	// Were StartMark to wait for its commit, it would not return until
	// the release below.
	p := e.StartMark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Delivered: seq, Read: seq}})
	<-inCommit // the markers' commit is under way, and waits
	engine.DuringMarkerCommit(e, nil)
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if err := p.Wait(canceled); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait while the commit is held: %v, want %v", err, context.Canceled)
	}
	release()
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if info, _, _, err := e.Conversation(bob.Actor, conv); err != nil || info.Read != seq || info.Delivered != seq {
		t.Fatalf("after Wait, bob's markers are delivered %d, read %d (%v); want %d", info.Delivered, info.Read, err, seq)
	}

	// Wait returns what Mark would.
	eve := enginetest.Register(t, e, "eve")
	for _, c := range []struct {
		what  string
		who   *enginetest.Device
		marks []engine.Marker
		want  error
	}{
		{"a stranger", eve, []engine.Marker{{Conv: conv, Read: seq}}, engine.ErrNotFound},
		{"no conversation", bob, []engine.Marker{{Read: seq}}, engine.ErrInvalid},
		{"no markers", bob, nil, nil},
	} {
		if err := e.StartMark(ctx, c.who.Actor, c.marks).Wait(ctx); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
	}
	var zero engine.Pending
	if err := zero.Wait(ctx); err != nil {
		t.Errorf("a zero Pending waits with %v", err)
	}
}

// TestJoinerHasReadWhatCameBefore: a member added to a conversation counts,
// in the others' receipts, as having received and read everything before
// their addition, as their unread count does: a message everyone there
// had read does not go back to unread by someone (its sender's ✓✓ to ✓)
// when someone joins.
func TestJoinerHasReadWhatCameBefore(t *testing.T) {
	ctx := context.Background()
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	conv := alice.Create("c", bob) // seqs 1-2
	hi := alice.Send(conv, "hi")   // 3
	if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Delivered: hi.Seq, Read: hi.Seq}}); err != nil {
		t.Fatal(err)
	}
	add := alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: carol.Actor.User, Role: model.RoleMember}))[0]
	if add.Err != nil {
		t.Fatal(add.Err)
	}
	info, _, _, err := e.Conversation(alice.Actor, conv)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range info.Receipts {
		if r.Delivered < hi.Seq || r.Read < hi.Seq {
			got = append(got, r.User.String())
		}
	}
	if len(info.Receipts) != 2 || len(got) != 0 {
		t.Fatalf("receipts %+v: %v have not read alice's message; want bob and carol both past seq %d", info.Receipts, got, hi.Seq)
	}
	// Carol's own marker says the same, and her later messages start her
	// receipt from there.
	cinfo, _, _, err := e.Conversation(carol.Actor, conv)
	if err != nil {
		t.Fatal(err)
	}
	if cinfo.Unread != 0 || cinfo.Read != add.Seq {
		t.Fatalf("carol: unread %d, read %d; want 0, %d", cinfo.Unread, cinfo.Read, add.Seq)
	}
}

// TestOwnAcksMoveNoReceipt: a sender has received and read their own
// message (both in the receipts the others see), so their device's ack
// of it changes no receipt, and wakes no member's session.
func TestOwnAcksMoveNoReceipt(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	e := enginetest.New(t, func(o *engine.Options) { o.Clock, o.ReceiptDelay = fake, 50*time.Millisecond })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("pair", bob)
	hi := alice.Send(conv, "hi").Seq
	info, _, _, err := e.Conversation(bob.Actor, conv)
	if err != nil {
		t.Fatal(err)
	}
	if got := delivered(info.Receipts, alice.Actor.User); got != hi {
		t.Fatalf("alice's delivered receipt %d after her message at %d", got, hi)
	}
	s, err := e.OpenSession(bob.Actor, engine.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	drain(t, s)
	changed := s.Changed()
	if err := e.Mark(ctx, alice.Actor, []engine.Marker{{Conv: conv, Delivered: hi, Read: hi}}); err != nil {
		t.Fatal(err)
	}
	fake.Advance(time.Second) // past the receipt delay: a receipt waiting would go now
	if evs := drain(t, s); len(evs) != 0 {
		t.Fatalf("alice's ack of her own message sent bob %+v", evs)
	}
	select {
	case <-changed:
		t.Fatal("alice's ack of her own message woke bob's session")
	default:
	}
}
