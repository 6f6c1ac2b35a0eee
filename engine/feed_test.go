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

// catchUpFrom opens a session of d from feed position pos, takes what it
// sends until caught up and closes it: the conversations it described, and
// the feed position to resume from.
func catchUpFrom(t *testing.T, e *engine.Engine, d *enginetest.Device, pos uint64) (map[ulid.ULID]engine.ConvInfo, uint64) {
	t.Helper()
	s, err := e.OpenSession(d.Actor, engine.SessionOptions{Epoch: e.Epoch(), FeedPos: pos})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := newReceiver(t)
	r.drain(s, engine.DefaultBatchOps)
	if !r.caught {
		t.Fatal("the session did not catch up")
	}
	return r.infos, r.pos
}

// TestFeedMovesLeaveNoTombstones: a message moves each member's feed entry
// to a new position, and the old entry, set once, is deleted with a single
// deletion, which drops out with its set when the memtable flushes. A
// plain deletion would stay in the tables as a tombstone until compactions
// carry it to the last level, and every catch-up's scan of the member's
// feed would step over it meanwhile: three per message here, where the
// members each have an entry of their own (SharedFeedMembers).
func TestFeedMovesLeaveNoTombstones(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.SharedFeedMembers = 3 })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	conv := alice.Create("c", bob, carol)
	entries := func() int {
		t.Helper()
		n, err := engine.FeedEntries(e)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := entries()
	const messages = 100
	for range messages {
		alice.Send(conv, "hello")
	}
	if got := entries(); got > before+messages/10 {
		t.Fatalf("after %d messages to 3 members a scan of the feeds steps over %d entries, %d before; want about as many, as the feeds hold no more", messages, got, before)
	}
	for _, d := range []*enginetest.Device{alice, bob, carol} {
		if infos, _ := catchUpFrom(t, e, d, 0); len(infos) != 1 {
			t.Fatalf("%s's catch-up found %d conversations, want 1", d.Actor.User, len(infos))
		}
	}
	enginetest.MustCheck(t, e)
}

// TestFeedEntriesThroughFlushes: messages, markers, and members removed and
// added again, with the memtable flushed after every step, then every user
// added to a conversation, which takes it past SharedFeedMembers: under the
// tests' checks the writer fails a group that sets a feed key twice or
// single-deletes one an earlier group did not set (setFeedEntry), and
// Check finds every feed entry where the membership says, with no misuse
// of a single deletion reported by a flush or compaction, after a full
// compaction too.
func TestFeedEntriesThroughFlushes(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 0))
	e := enginetest.New(t, func(o *engine.Options) { o.SharedFeedMembers = 3 })
	admin := enginetest.Register(t, e, "admin")
	users := make([]*enginetest.Device, 4)
	for i := range users {
		users[i] = enginetest.Register(t, e, fmt.Sprint("user", i))
	}
	convs := make([]ulid.ULID, 3)
	member := make([]map[int]bool, len(convs))
	head := make([]uint64, len(convs))
	for c := range convs {
		convs[c] = admin.Create(fmt.Sprint("c", c), users[0])
		member[c] = map[int]bool{0: true}
	}
	for range 200 {
		c, u := rnd.IntN(len(convs)), rnd.IntN(len(users))
		switch rnd.IntN(4) {
		case 0:
			head[c] = admin.Send(convs[c], "from the admin").Seq
		case 1:
			if member[c][u] {
				head[c] = users[u].Send(convs[c], "from a member").Seq
			}
		case 2:
			op := model.Op{Kind: model.KindMemberAdd, Member: users[u].Actor.User, Role: model.RoleMember}
			if member[c][u] {
				op = model.Op{Kind: model.KindMemberRemove, Member: users[u].Actor.User}
			}
			head[c] = admin.Push(admin.Op(convs[c], op))[0].Seq
			member[c][u] = !member[c][u]
		case 3:
			if member[c][u] && head[c] > 0 {
				if err := e.Mark(ctx, users[u].Actor, []engine.Marker{{Conv: convs[c], Delivered: head[c], Read: head[c]}}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if _, err := engine.FeedEntries(e); err != nil { // flushes
			t.Fatal(err)
		}
	}
	for u := range users { // past SharedFeedMembers: the entries go
		if !member[0][u] {
			admin.Push(admin.Op(convs[0], model.Op{Kind: model.KindMemberAdd, Member: users[u].Actor.User, Role: model.RoleMember}))
		}
	}
	admin.Send(convs[0], "to all")
	if _, err := engine.FeedEntries(e); err != nil {
		t.Fatal(err)
	}
	enginetest.MustCheck(t, e)
	if err := e.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	enginetest.MustCheck(t, e)
}

// TestSharedFeed: past Options.SharedFeedMembers a conversation's members
// share its feed entry. A message then writes as many keys whatever the
// number of members, where below it every member's entry moves; and
// catch-up still finds the conversation for every member, new or old, and
// for a removed member once, until they are added again.
func TestSharedFeed(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.SharedFeedMembers = 3 })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	var others []*enginetest.Device
	for i := range 22 {
		others = append(others, enginetest.Register(t, e, fmt.Sprint("user", i)))
	}
	conv := alice.Create("c", bob)
	writes := func() uint64 {
		t.Helper()
		before := e.Metrics().Writes
		alice.Send(conv, "hello")
		return e.Metrics().Writes - before
	}
	add := func(ds ...*enginetest.Device) {
		t.Helper()
		for _, d := range ds {
			alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: d.Actor.User, Role: model.RoleMember}))
		}
	}
	_, bobPos := catchUpFrom(t, e, bob, 0)

	two := writes()
	add(others[0], others[1]) // four members: shared from here
	enginetest.MustCheck(t, e)
	four := writes()
	add(others[2:]...)
	enginetest.MustCheck(t, e)
	many := writes()
	t.Logf("keys written per message: %d with 2 members, %d with 4 (shared), %d with 24", two, four, many)
	if four != many {
		t.Errorf("a message wrote %d keys with 4 members, %d with 24: a shared feed writes nothing per member", four, many)
	}
	// Below the bound each member's entry moves: two keys per member.
	if two != four+4 {
		t.Errorf("a message wrote %d keys with 2 members and %d with 4 sharing a feed; want 4 more, the 2 members' entries moving", two, four)
	}

	// Catch-up finds the conversation for an old member from before the
	// change, for a member added after it, and from zero.
	infos, pos := catchUpFrom(t, e, bob, bobPos)
	if info, ok := infos[conv]; !ok || info.Removed || info.Members != 24 {
		t.Fatalf("bob's catch-up from %d: %+v, %v; want the conversation with 24 members", bobPos, info, ok)
	}
	bobPos = pos
	last := others[len(others)-1]
	infos, lastPos := catchUpFrom(t, e, last, 0)
	if _, ok := infos[conv]; !ok {
		t.Fatal("a member added to a shared conversation does not find it from feed position 0")
	}
	// Nothing changed since: nothing to catch up on.
	if infos, _ := catchUpFrom(t, e, last, lastPos); len(infos) != 0 {
		t.Errorf("a caught-up member's catch-up described %d conversations, want none", len(infos))
	}

	// A removed member hears of the removal once, then nothing more.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
	alice.Send(conv, "without bob")
	enginetest.MustCheck(t, e)
	infos, pos = catchUpFrom(t, e, bob, bobPos)
	if info, ok := infos[conv]; !ok || !info.Removed {
		t.Fatalf("removed bob's catch-up: %+v, %v; want the conversation, removed", info, ok)
	}
	alice.Send(conv, "still without bob")
	if infos, _ := catchUpFrom(t, e, bob, pos); len(infos) != 0 {
		t.Errorf("after his removal bob's catch-up still describes %d conversations", len(infos))
	}

	// Added again, he follows it again.
	add(bob)
	alice.Send(conv, "bob is back")
	enginetest.MustCheck(t, e)
	infos, pos = catchUpFrom(t, e, bob, pos)
	if info, ok := infos[conv]; !ok || info.Removed {
		t.Fatalf("re-added bob's catch-up: %+v, %v; want the conversation", info, ok)
	}
	alice.Send(conv, "once more")
	if infos, _ := catchUpFrom(t, e, bob, pos); len(infos) != 1 {
		t.Error("re-added bob's catch-up misses the next message")
	}
}

// TestCatchUpReadsSharedRecordsOnce: a catch-up finds which conversations
// on a shared feed changed by reading their records, and takes each one's
// info from that read instead of reading the record again.
func TestCatchUpReadsSharedRecordsOnce(t *testing.T) {
	engine.MeasureWithoutChecks(t) // the checks read everything again
	reads := func(convs int) uint64 {
		t.Helper()
		e := enginetest.New(t, func(o *engine.Options) { o.SharedFeedMembers = 2 })
		alice := enginetest.Register(t, e, "alice")
		bob := enginetest.Register(t, e, "bob")
		carol := enginetest.Register(t, e, "carol")
		for i := range convs {
			conv := alice.Create(fmt.Sprint("c", i), bob, carol) // three members: a shared feed
			alice.Send(conv, "hello")
		}
		before := e.Metrics().Reads
		if infos, _ := catchUpFrom(t, e, bob, 0); len(infos) != convs {
			t.Fatalf("bob's catch-up brought %d conversations, want %d", len(infos), convs)
		}
		return e.Metrics().Reads - before
	}
	one, six := reads(1), reads(6)
	per := float64(six-one) / 5
	t.Logf("store reads in a catch-up per shared conversation: %.1f", per)
	// 12 when the record was read twice: to find the conversation changed,
	// and for its info.
	if per > 11 {
		t.Fatalf("a catch-up took %.1f store reads per shared conversation; want at most 11, its record read once", per)
	}
}
