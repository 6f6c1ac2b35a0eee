package engine_test

import (
	"errors"
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
// number of members, as below it a message right after another does; and
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
	// Below the bound each member's entry is the member's own, which a
	// message so soon after the last change leaves where it is
	// (TestFeedEntriesLag).
	if two != four {
		t.Errorf("a message wrote %d keys with 2 members and %d with 4 sharing a feed; want as many", two, four)
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

// TestFeedEntriesLag: a change to a conversation leaves its members' own
// feed entries where they are while they sit no more than MaxEntryLag
// positions below it, and a catch-up from any position between finds the
// conversation changed, with the change's position; past the lag, or when
// the membership changes, the entries move, two keys per member. A removed
// member's entry, which sits where the members' did at the removal, is
// not taken for theirs when later changes leave theirs there.
func TestFeedEntriesLag(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.SharedFeedMembers = 3 })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	dave := enginetest.Register(t, e, "dave")
	elsewhere := dave.Create("elsewhere")
	conv := alice.Create("c", bob, carol)
	_, start := catchUpFrom(t, e, bob, 0)
	send := func(what string) uint64 {
		t.Helper()
		before := e.Metrics().Writes
		alice.Send(conv, what)
		return e.Metrics().Writes - before
	}
	// pass moves the feed on by MaxEntryLag positions, elsewhere.
	pass := func() {
		t.Helper()
		for range engine.MaxEntryLag {
			dave.Send(elsewhere, "busy elsewhere")
		}
	}
	stays := send("soon after")
	pass()
	moves := send("long after")
	t.Logf("keys written per message to 3 members: %d soon after the last change, %d past the lag", stays, moves)
	if moves != stays+6 {
		t.Errorf("a message past the lag wrote %d keys, one soon after the last change %d; want 6 more, the 3 members' entries moving", moves, stays)
	}
	enginetest.MustCheck(t, e)

	// Entries left below the conversation's position: a catch-up from
	// anywhere below the last change finds it, at the change's position,
	// and from the change on finds nothing.
	var positions []uint64
	for i := range 5 {
		send(fmt.Sprint("message ", i))
		_, pos := catchUpFrom(t, e, carol, start)
		positions = append(positions, pos)
	}
	enginetest.MustCheck(t, e)
	last := positions[len(positions)-1]
	for _, from := range append([]uint64{start}, positions[:len(positions)-1]...) {
		infos, pos := catchUpFrom(t, e, bob, from)
		if _, ok := infos[conv]; !ok || pos != last {
			t.Errorf("bob's catch-up from %d: %d conversations, up to %d; want the conversation, up to %d", from, len(infos), pos, last)
		}
	}
	if infos, pos := catchUpFrom(t, e, bob, last); len(infos) != 0 || pos != last {
		t.Errorf("bob's catch-up from the last change, %d: %d conversations, up to %d; want none", last, len(infos), pos)
	}

	// A removal moves the entries, the removed member's to the same
	// position; the change after it moves the members' again, and carol
	// hears of neither of the changes after her removal.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: carol.Actor.User}))
	infos, removedAt := catchUpFrom(t, e, carol, last)
	if info, ok := infos[conv]; !ok || !info.Removed {
		t.Fatalf("removed carol's catch-up: %+v, %v; want the conversation, removed", info, ok)
	}
	afterRemoval, later := send("without carol"), send("still without carol")
	if afterRemoval != later+4 {
		t.Errorf("the message after a removal wrote %d keys, the next one %d; want 4 more, the 2 members' entries moving away from the removed member's", afterRemoval, later)
	}
	if infos, _ := catchUpFrom(t, e, carol, removedAt); len(infos) != 0 {
		t.Errorf("after her removal carol's catch-up still describes %d conversations", len(infos))
	}
	if infos, _ := catchUpFrom(t, e, bob, removedAt); len(infos) != 1 {
		t.Errorf("bob's catch-up after carol's removal describes %d conversations, want 1", len(infos))
	}
	enginetest.MustCheck(t, e)
}

// TestFeedEntriesOfFormat3: a format 3 store's records do not say whether
// a removed member's entry sits where the members' do, at the record's
// feed position; the first change after the upgrade moves the members'
// entries, so that the removed member does not hear of it or of the
// changes after it, which leave them below.
func TestFeedEntriesOfFormat3(t *testing.T) {
	o := enginetest.Options(t, 2)
	o.SharedFeedMembers = 3
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	conv := alice.Create("c", bob, carol)
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: carol.Actor.User}))
	_, removedAt := catchUpFrom(t, e, carol, 0)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.AsFormat3(o.FS, "db"); err != nil {
		t.Fatal(err)
	}
	e = enginetest.Open(t, o, alice, bob, carol)
	enginetest.MustCheck(t, e)
	for i := range 3 {
		alice.Send(conv, fmt.Sprint("after the upgrade ", i))
		if infos, _ := catchUpFrom(t, e, carol, removedAt); len(infos) != 0 {
			t.Fatalf("after %d messages carol, removed before the upgrade, has a catch-up of %d conversations; want none", i+1, len(infos))
		}
		if infos, _ := catchUpFrom(t, e, bob, removedAt); len(infos) != 1 {
			t.Fatalf("after %d messages bob's catch-up describes %d conversations, want 1", i+1, len(infos))
		}
	}
	enginetest.MustCheck(t, e)
}

// TestFeedCatchUpsAgainstAModel: random messages, additions and removals
// in a few conversations, with bursts elsewhere that move the feed past
// MaxEntryLag, so that members' entries sit at, below and far below
// their conversations' positions, and conversations grow past
// SharedFeedMembers now and then. After each step the test knows the feed
// position; a catch-up of a user from positions reached so far, and from
// either side of each change they heard of, must describe exactly the
// conversations that changed for them after it: a message or a
// membership change while they were a member, their own addition and
// their removal, nothing after it. It fails when the reader does not scan
// below its position, when it takes entries at their own position, and
// when a removal does not mark the record.
func TestFeedCatchUpsAgainstAModel(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 1))
	// Shared once all five are members: most of the time a conversation
	// has entries of its members' own.
	e := enginetest.New(t, func(o *engine.Options) { o.SharedFeedMembers = 4 })
	admin := enginetest.Register(t, e, "admin")
	users := []*enginetest.Device{admin}
	for i := range 4 {
		users = append(users, enginetest.Register(t, e, fmt.Sprint("user", i)))
	}
	outsider := enginetest.Register(t, e, "outsider")
	elsewhere := outsider.Create("elsewhere")
	convs := make([]ulid.ULID, 3)
	member := make([]map[int]bool, len(convs)) // by index in users; the admin, 0, always
	// last[u][c]: the feed position of the last change of c that user u
	// hears of.
	last := make([]map[int]uint64, len(users))
	for u := range last {
		last[u] = map[int]uint64{}
	}
	pos := engine.ServerFeedPos(e)
	step := func() { // one group committed: the feed moved by one
		t.Helper()
		p := engine.ServerFeedPos(e)
		if p != pos+1 {
			t.Fatalf("the feed went from %d to %d in one step", pos, p)
		}
		pos = p
	}
	changed := func(c int) { // a change every member of c hears of
		for u := range member[c] {
			last[u][c] = pos
		}
	}
	for c := range convs {
		convs[c] = admin.Create(fmt.Sprint("c", c))
		member[c] = map[int]bool{0: true}
		step()
		changed(c)
	}
	positions := []uint64{0, pos}
	check := func() {
		t.Helper()
		for u, d := range users {
			// A few positions reached so far, and the edges of the last
			// change of each conversation the user heard of.
			froms := []uint64{positions[rnd.IntN(len(positions))], positions[rnd.IntN(len(positions))]}
			for _, p := range last[u] {
				froms = append(froms, p-1, p)
			}
			for _, from := range froms {
				infos, _ := catchUpFrom(t, e, d, from)
				for c, id := range convs {
					_, got := infos[id]
					if want := last[u][c] > from; got != want {
						t.Fatalf("user %d's catch-up from %d describes conversation %d: %v; want %v (last change for them at %d; feed at %d)", u, from, c, got, want, last[u][c], pos)
					}
				}
			}
		}
	}
	for i := range 300 {
		if i%100 == 50 { // a burst elsewhere: past the lag
			for range engine.MaxEntryLag + rnd.IntN(8) {
				outsider.Send(elsewhere, "busy elsewhere")
				step()
			}
		}
		c, u := rnd.IntN(len(convs)), 1+rnd.IntN(len(users)-1)
		switch rnd.IntN(3) {
		case 0:
			admin.Send(convs[c], "from the admin")
			step()
			changed(c)
		case 1:
			if member[c][u] {
				users[u].Send(convs[c], "from a member")
				step()
				changed(c)
			}
		case 2:
			op := model.Op{Kind: model.KindMemberAdd, Member: users[u].Actor.User, Role: model.RoleMember}
			if member[c][u] {
				op = model.Op{Kind: model.KindMemberRemove, Member: users[u].Actor.User}
			}
			admin.Push(admin.Op(convs[c], op))
			step()
			member[c][u] = true // the removed member hears of their removal
			changed(c)
			if op.Kind == model.KindMemberRemove {
				delete(member[c], u)
			}
		}
		positions = append(positions, pos)
		if i%25 == 24 {
			check()
		}
	}
	enginetest.MustCheck(t, e)
}

// TestChurnMovesOnlyWhatItMust: the writer walks a conversation's current
// members on each change, and those the change removed, not everyone who
// was ever a member. A member added and removed in one push, who had left
// before, still hears of it: their entry moves from their last removal
// to the new one. Members who left before and did not come back keep
// their entries where they left.
func TestChurnMovesOnlyWhatItMust(t *testing.T) {
	e := enginetest.New(t)
	alice, bob, carol := enginetest.Register(t, e, "alice"), enginetest.Register(t, e, "bob"), enginetest.Register(t, e, "carol")
	conv := alice.Create("c", bob, carol)
	remove := func(d *enginetest.Device) model.Op {
		return alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: d.Actor.User})
	}
	add := func(d *enginetest.Device) model.Op {
		return alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: d.Actor.User, Role: model.RoleMember})
	}
	alice.Push(remove(bob), remove(carol))
	left := engine.ServerFeedPos(e)
	alice.Send(conv, "after they left")
	// Bob comes and goes in one push; carol stays away.
	alice.Push(add(bob), remove(bob))
	again := engine.ServerFeedPos(e)
	alice.Send(conv, "after bob's visit")
	for _, tc := range []struct {
		who  *enginetest.Device
		from uint64
		want bool
	}{
		{bob, left, true},       // his visit, after his first removal
		{bob, again, false},     // nothing after his second removal
		{carol, left, false},    // nothing after hers
		{alice, again, true},    // the message after it
		{carol, left - 1, true}, // her removal
	} {
		infos, _ := catchUpFrom(t, e, tc.who, tc.from)
		if _, got := infos[conv]; got != tc.want {
			t.Errorf("%s's catch-up from %d describes the conversation: %v; want %v", tc.who.Actor.User, tc.from, got, tc.want)
		}
	}
	enginetest.MustCheck(t, e)
}

// TestFormerMembersAreKeptApart: the records of members who left are kept
// apart from the current members' (format 8), so that a conversation's
// member list and receipts read its current members only, however many
// came and went. One who comes back moves back; one who leaves still
// reads the conversation up to their removal. A format 7 store, with
// both together, has its former members' records moved on its upgrade.
func TestFormerMembersAreKeptApart(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice, bob := enginetest.Register(t, e, "alice"), enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	var passers []*enginetest.Device
	for i := range 20 {
		d := enginetest.Register(t, e, fmt.Sprint("passer", i))
		passers = append(passers, d)
		alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: d.Actor.User, Role: model.RoleMember}))
		alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: d.Actor.User}))
	}
	records := func(wantCurrent, wantFormer int) {
		t.Helper()
		current, former, err := engine.MemberRecords(e, conv)
		if err != nil || current != wantCurrent || former != wantFormer {
			t.Fatalf("member records: %d current, %d former (%v); want %d and %d", current, former, err, wantCurrent, wantFormer)
		}
		_, members, _, err := e.Conversation(alice.Actor, conv)
		if err != nil || len(members) != wantCurrent {
			t.Fatalf("alice's member list: %d members (%v); want %d", len(members), err, wantCurrent)
		}
		enginetest.MustCheck(t, e)
	}
	records(2, 20)
	// One comes back, in a push that also sends a message.
	back := passers[3]
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: back.Actor.User, Role: model.RoleMember}),
		alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("welcome back")}))
	records(3, 19)
	// One who left sees the conversation as of their removal.
	gone := passers[7]
	if info, _, _, err := e.Conversation(gone.Actor, conv); err != nil || !info.Removed {
		t.Fatalf("a former member's view of the conversation: %+v, %v; want it, removed", info, err)
	}

	// The same store as format 7 left it: every record together.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.AsFormat7(o.FS, "db"); err != nil {
		t.Fatal(err)
	}
	// The upgrade moves them 5 a commit, and stops after the first, as a
	// crash would: the next open goes on.
	engine.StopFormerMoveAfter(5)
	t.Cleanup(func() { engine.StopFormerMoveAfter(0) })
	if _, err := engine.Open("db", o); err == nil {
		t.Fatal("the upgrade did not stop")
	}
	engine.StopFormerMoveAfter(0)
	e = enginetest.Open(t, o, alice, back, gone)
	records(3, 19)
	if info, _, _, err := e.Conversation(gone.Actor, conv); err != nil || !info.Removed {
		t.Fatalf("after the upgrade, a former member's view of the conversation: %+v, %v; want it, removed", info, err)
	}
	back.Send(conv, "still here")
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: back.Actor.User}))
	records(2, 20)
	// The writer, newly opened, knows its former members from their
	// table: one is refused as a former member, not as a stranger, and
	// one comes back, whose record moves.
	if r := gone.Try(conv, model.Op{Kind: model.KindMessage, Body: []byte("let me in")}); !errors.Is(r.Err, engine.ErrForbidden) {
		t.Fatalf("a former member's message after the reopen: %+v; want refused, forbidden", r)
	}
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: gone.Actor.User, Role: model.RoleMember}))
	records(3, 19)
}
