package engine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// rebuildStore fills a store in "db" with what Rebuild rebuilds:
// conversations on members' own feed entries and on a shared one, each
// with a former member; messages, edits, a reaction, a message
// deleted after an edit; read markers, public and private. It returns the
// store's options, closed.
func rebuildStore(t *testing.T) engine.Options {
	t.Helper()
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	o := enginetest.Options(t, seed)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	alice2 := enginetest.Login(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	dave := enginetest.Register(t, e, "dave")
	ctx := context.Background()

	pair := alice.Create("pair", bob, dave)
	alice.Push(alice.Op(pair, model.Op{Kind: model.KindMemberRemove, Member: dave.Actor.User}))
	m1 := alice.Send(pair, "hello bob")
	bob.Send(pair, "hello alice")
	alice.Push(alice.Op(pair, model.Op{Kind: model.KindEdit, Target: m1.ID, Body: []byte("hello, bob")}))
	alice.Push(alice.Op(pair, model.Op{Kind: model.KindDelete, Target: m1.ID}))
	m3 := alice2.Send(pair, "from my phone")
	bob.Push(bob.Op(pair, model.Op{Kind: model.KindReactionAdd, Target: m3.ID, ReactionKey: "👍"}))

	group := alice.Create("group", bob, carol, dave)
	carol.Send(group, "hi all")
	g2 := dave.Send(group, "bye all")
	dave.Push(dave.Op(group, model.Op{Kind: model.KindEdit, Target: g2.ID, Body: []byte("bye, all")}))
	alice.Push(alice.Op(group, model.Op{Kind: model.KindSetTitle, Title: "the group"}))
	dave.Push(dave.Op(group, model.Op{Kind: model.KindMemberRemove, Member: dave.Actor.User}))
	bob.Send(group, "where did dave go")
	// A device that wrote, then was revoked: only its ops say whose it was.
	tablet := enginetest.Login(t, e, "bob")
	tablet.Send(group, "from bob's tablet")
	if err := e.RevokeDevice(ctx, bob.Actor, tablet.Actor.Device); err != nil {
		t.Fatal(err)
	}
	duo := carol.Create("duo")
	for _, op := range []model.Op{
		{Kind: model.KindMemberAdd, Member: dave.Actor.User, Role: model.RoleMember},
		{Kind: model.KindMemberRemove, Member: dave.Actor.User},
		{Kind: model.KindMemberAdd, Member: alice.Actor.User, Role: model.RoleMember},
	} {
		carol.Push(carol.Op(duo, op))
	}
	alice.Send(duo, "just us")

	for _, g := range []struct {
		d *enginetest.Device
		m engine.Marker
	}{
		{bob, engine.Marker{Conv: pair, Delivered: m3.Seq, Read: m3.Seq}},
		{carol, engine.Marker{Conv: group, Delivered: g2.Seq, Read: g2.Seq, Private: true}},
	} {
		if err := e.Mark(ctx, g.d.Actor, []engine.Marker{g.m}); err != nil {
			t.Fatalf("mark: %v", err)
		}
	}
	enginetest.MustCheck(t, e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return o
}

func snapshot(t *testing.T, o engine.Options) map[string]string {
	t.Helper()
	s, err := engine.Snapshot(o.FS, "db")
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return s
}

// differences lists the keys whose values differ between a and b, but
// for keys with one of the prefixes skip.
func differences(a, b map[string]string, skip [][]byte) []string {
	var diff []string
	for _, m := range []map[string]string{a, b} {
		for k := range m {
			va, ina := a[k]
			vb, inb := b[k]
			if va == vb && ina == inb || slices.Contains(diff, k) ||
				slices.ContainsFunc(skip, func(p []byte) bool { return bytes.HasPrefix([]byte(k), p) }) {
				continue
			}
			diff = append(diff, k)
		}
	}
	for i, k := range diff {
		diff[i] = fmt.Sprintf("%x: %x -> %x", k, a[k], b[k])
	}
	slices.Sort(diff)
	return diff
}

// damage applies the Corruptions of these names, in turn, to the closed
// store.
func damage(t *testing.T, o engine.Options, names ...string) {
	t.Helper()
	for _, name := range names {
		i := slices.IndexFunc(engine.Corruptions, func(c engine.Corruption) bool { return c.Name == name })
		if i < 0 {
			t.Fatalf("no damage %q", name)
		}
		if _, err := engine.Corruptions[i].Apply(o.FS, "db"); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func rebuild(t *testing.T, o engine.Options) engine.RebuildReport {
	t.Helper()
	rep, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if err := rep.Check.Err(); err != nil {
		t.Fatalf("rebuilt store is inconsistent: %v", err)
	}
	if len(rep.Unfixed) > 0 {
		t.Fatalf("rebuild left unfixed: %q", rep.Unfixed)
	}
	return rep
}

// TestRebuild damages a store in each way Rebuild must repair, one at a
// time (each of which Check sees), and checks, with all its fixes in one commit and in a commit each, that Rebuild brings back the very bytes the damage
// changed, where the log implies them, and a consistent store where it
// does not; and that a second Rebuild finds nothing to fix.
func TestRebuild(t *testing.T) {
	t.Run("in one commit", testRebuild)
	t.Run("in a commit per change", func(t *testing.T) {
		engine.RebuildInCommitsOf(t, 1)
		testRebuild(t)
	})
}

func testRebuild(t *testing.T) {
	o := rebuildStore(t)
	want := snapshot(t, o)
	if rep := rebuild(t, o); len(rep.Fixes) > 0 {
		t.Fatalf("rebuild of a sound store fixed %v", rep.Fixes)
	}
	if d := differences(want, snapshot(t, o), nil); len(d) > 0 {
		t.Fatalf("rebuild of a sound store changed it: %q", d)
	}
	for _, c := range engine.Corruptions {
		t.Run(c.Name, func(t *testing.T) {
			inexact, err := c.Apply(o.FS, "db")
			if err != nil {
				t.Fatalf("damage: %v", err)
			}
			if d := differences(want, snapshot(t, o), nil); len(d) == 0 {
				t.Fatal("the damage changed nothing")
			}
			if rep, err := engine.CheckStopped("db", o); err == nil && len(rep.Problems) == 0 {
				t.Fatal("check does not see the damage")
			}
			rep := rebuild(t, o)
			if len(rep.Fixes) == 0 {
				t.Fatal("rebuild fixed nothing")
			}
			t.Logf("fixes: %v", rep.Fixes)
			got := snapshot(t, o)
			if d := differences(want, got, inexact); len(d) > 0 {
				t.Errorf("rebuild did not bring back the store: %q", d)
			}
			if rep := rebuild(t, o); len(rep.Fixes) > 0 {
				t.Errorf("second rebuild fixed %v", rep.Fixes)
			}
			want = got
		})
	}
}

// TestRebuildLeavesBrokenLog checks that a conversation whose log has a
// gap, which Rebuild cannot fill, is left as it was, said so, while
// Rebuild goes on.
func TestRebuildLeavesBrokenLog(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("pair", bob)
	for _, text := range []string{"one", "two", "three"} {
		alice.Send(conv, text)
	}
	if err := engine.MoveOp(e, conv, 3, 9); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	want := snapshot(t, o)
	rep, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	if len(rep.Unfixed) != 1 || !strings.Contains(rep.Unfixed[0], conv.String()) || !strings.Contains(rep.Unfixed[0], "gap after seq 2") {
		t.Errorf("unfixed %q, want the gap in %s", rep.Unfixed, conv)
	}
	if len(rep.Fixes) > 0 {
		t.Errorf("fixed %v", rep.Fixes)
	}
	if len(rep.Check.Problems) == 0 {
		t.Error("check after rebuild finds the gap no more")
	}
	if d := differences(want, snapshot(t, o), nil); len(d) > 0 {
		t.Errorf("rebuild changed the store: %q", d)
	}
}

// TestRebuildStoppedPartWay stops a Rebuild of a store damaged in several
// ways (two sets of them) after each of its commits in turn, as a crash would, and checks
// that running it again leaves the very store one uninterrupted Rebuild
// does.
func TestRebuildStoppedPartWay(t *testing.T) {
	engine.RebuildInCommitsOf(t, 1)
	for _, damages := range [][]string{
		{"op-id index entry lost", "dot index run lost", "former member's record lost",
			"former member's record in the members' table", "conversation record lost with receipts waiting",
			"usage wrong", "stray feed entry", "user feed index entry lost", "deleted message's body back"},
		// No record to hold the greatest position but the store's.
		{"store's feed position garbled", "stray feed entry past every position", "usage wrong", "member record lost"},
	} {
		t.Run(strings.Join(damages, ", "), func(t *testing.T) { stopPartWay(t, damages) })
	}
}

func stopPartWay(t *testing.T, damages []string) {
	o := rebuildStore(t)
	damage(t, o, damages...)
	damaged := o.FS
	clone := func() engine.Options {
		t.Helper()
		c := o
		c.FS = vfs.NewMem()
		if _, err := vfs.Clone(damaged, c.FS, "db", "db"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	ref := clone()
	rebuild(t, ref)
	want := snapshot(t, ref)
	for n := 1; ; n++ {
		c := clone()
		crash := engine.CrashRebuildAfter(t, n)
		_, err := engine.Rebuild("db", c)
		if err == nil {
			if n < 3 {
				t.Fatalf("rebuild took %d commits; the test wants more", n-1)
			}
			t.Logf("stopped after each of %d commits", n-1)
			break
		}
		if !errors.Is(err, crash) {
			t.Fatalf("rebuild stopped after commit %d: %v", n, err)
		}
		engine.CrashRebuildAfter(t, 0)
		rebuild(t, c)
		if d := differences(want, snapshot(t, c), nil); len(d) > 0 {
			t.Fatalf("rebuilt again after a stop after commit %d, the store differs from one rebuilt at once: %q", n, d)
		}
	}
}

// TestRebuiltRecordsReachDevices: a conversation whose record was lost,
// made anew at a new feed position, reaches its members' caught-up
// devices again, whole; a former member whose record was lost with it is
// detached at that position, where his device is told again that he
// left.
func TestRebuiltRecordsReachDevices(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	dave := enginetest.Register(t, e, "dave")
	conv := alice.Create("duo")
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: dave.Actor.User, Role: model.RoleMember}))
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: dave.Actor.User}))
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: bob.Actor.User, Role: model.RoleMember}))
	alice.Send(conv, "hello bob")
	_, bobPos := catchUpFrom(t, e, bob, 0)
	_, davePos := catchUpFrom(t, e, dave, 0)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	damage(t, o, "former member's record lost, own feed entries", "conversation record lost")
	rebuild(t, o)
	e = enginetest.Open(t, o)
	infos, pos := catchUpFrom(t, e, bob, bobPos)
	if info, ok := infos[conv]; len(infos) != 1 || !ok || info.Title != "duo" || info.Head != 5 || info.Removed || info.Role != model.RoleMember {
		t.Errorf("bob's catch-up from %d after the rebuild: %+v; want the conversation, whole", bobPos, infos)
	}
	if infos, _ := catchUpFrom(t, e, bob, pos); len(infos) != 0 {
		t.Errorf("bob's catch-up from %d, where the last ended: %+v; want nothing", pos, infos)
	}
	infos, _ = catchUpFrom(t, e, dave, davePos)
	if info, ok := infos[conv]; len(infos) != 1 || !ok || !info.Removed || info.Head != 3 {
		t.Errorf("dave's catch-up from %d after the rebuild: %+v; want the conversation he left at seq 3", davePos, infos)
	}
	// The conversation goes on as before.
	alice.E, bob.E = e, e
	alice.Send(conv, "still here")
	if infos, _ := catchUpFrom(t, e, bob, pos); infos[conv].Head != 6 {
		t.Errorf("bob's catch-up after a new message: %+v", infos)
	}
	enginetest.MustCheck(t, e)
}

// TestRebuildStaleFormerRecord: a former member's record of an earlier
// removal does not keep its detach position, from before the device's
// last catch-up: the device is told of the later removal.
func TestRebuildStaleFormerRecord(t *testing.T) {
	o := enginetest.Options(t, 1)
	o.SharedFeedMembers = 10
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	dave := enginetest.Register(t, e, "dave")
	conv := alice.Create("c")
	add := model.Op{Kind: model.KindMemberAdd, Member: dave.Actor.User, Role: model.RoleMember}
	remove := model.Op{Kind: model.KindMemberRemove, Member: dave.Actor.User}
	alice.Push(alice.Op(conv, add))
	alice.Push(alice.Op(conv, remove))
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	former := string(engine.FormerKey(conv, dave.Actor.User))
	stale, ok := snapshot(t, o)[former]
	if !ok {
		t.Fatal("no record of dave's removal")
	}
	e = enginetest.Open(t, o, alice, dave)
	alice.Push(alice.Op(conv, add))
	_, davePos := catchUpFrom(t, e, dave, 0)
	alice.Push(alice.Op(conv, remove))
	alice.Send(conv, "after dave")
	closeDamaged(t, e, o, setKey([]byte(former), []byte(stale)))
	rebuild(t, o)
	e = enginetest.Open(t, o, alice, dave)
	infos, _ := catchUpFrom(t, e, dave, davePos)
	if info, ok := infos[conv]; !ok || !info.Removed || info.Head != 5 {
		t.Errorf("dave's catch-up from %d after the rebuild: %+v; want the conversation he left at seq 5", davePos, infos)
	}
}

// TestRebuildLostRecordPastEveryPosition: a conversation whose record was
// lost is placed past every position in use, even where the store's own
// position fell behind them: a device that caught up before its last
// message takes that message.
func TestRebuildLostRecordPastEveryPosition(t *testing.T) {
	o := enginetest.Options(t, 1)
	o.SharedFeedMembers = 10
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	one := alice.Create("one", bob)
	m := alice.Send(one, "in one")
	two := alice.Create("two", bob)
	alice.Send(two, "m1")
	_, bobPos := catchUpFrom(t, e, bob, 0)
	alice.Send(two, "m2")
	// A private read: an entry in bob's own feed, past two's.
	if err := e.Mark(context.Background(), bob.Actor, []engine.Marker{{Conv: one, Read: m.Seq, Private: true}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.LoseConversation(o.FS, "db", two, 1); err != nil {
		t.Fatal(err)
	}
	rebuild(t, o)
	e = enginetest.Open(t, o, alice, bob)
	infos, _ := catchUpFrom(t, e, bob, bobPos)
	if info, ok := infos[two]; !ok || info.Head != 4 {
		t.Errorf("bob's catch-up from %d: %+v; want conversation two to its seq 4", bobPos, infos)
	}
}

// TestWritesAfterRebuild: after each damage and its rebuild, the writer
// goes on: messages, and a member added and removed, in every
// conversation, with the tests' cache checks, and the store stays
// consistent.
func TestWritesAfterRebuild(t *testing.T) {
	for _, c := range engine.Corruptions {
		t.Run(c.Name, func(t *testing.T) {
			o := rebuildStore(t)
			if _, err := c.Apply(o.FS, "db"); err != nil {
				t.Fatal(err)
			}
			rebuild(t, o)
			e := enginetest.Open(t, o)
			alice := enginetest.Login(t, e, "alice")
			erin := enginetest.Register(t, e, "erin")
			infos, _, err := e.Conversations(alice.Actor, ulid.ULID{}, 100)
			if err != nil {
				t.Fatal(err)
			}
			if len(infos) != 3 {
				t.Fatalf("alice is in %d conversations after the rebuild, want 3", len(infos))
			}
			for _, in := range infos {
				alice.Send(in.ID, "after the rebuild")
				if in.Role < model.RoleAdmin {
					continue
				}
				alice.Push(alice.Op(in.ID, model.Op{Kind: model.KindMemberAdd, Member: erin.Actor.User, Role: model.RoleMember}))
				alice.Send(in.ID, "hello erin")
				alice.Push(alice.Op(in.ID, model.Op{Kind: model.KindMemberRemove, Member: erin.Actor.User}))
			}
			enginetest.MustCheck(t, e)
		})
	}
}

// TestRebuildLeavesLogThatLostItsEnd: a log that lost its last ops (a
// lost table, a hand on the files) has no gap, but its record, its
// indexes and its members' markers go further: Rebuild leaves the
// conversation as found rather than take the shorter log for the truth,
// where the next op would take a seq devices hold, or a member removed by
// a lost op could send again.
func TestRebuildLeavesLogThatLostItsEnd(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	dave := enginetest.Register(t, e, "dave")
	pair := alice.Create("pair", bob)
	alice.Send(pair, "one")
	last := alice.Send(pair, "two")
	if infos, _ := catchUpFrom(t, e, bob, 0); infos[pair].Head != last.Seq {
		t.Fatalf("bob has %+v", infos)
	}
	left := alice.Create("left", dave)
	alice.Send(left, "one")
	removal := alice.Push(alice.Op(left, model.Op{Kind: model.KindMemberRemove, Member: dave.Actor.User}))[0].Seq
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, k := range [][]byte{engine.OpKey(pair, last.Seq), engine.OpKey(left, removal)} {
		if err := engine.DeleteKey(o.FS, "db", k); err != nil {
			t.Fatal(err)
		}
	}
	want := snapshot(t, o)
	rep, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unfixed) != 2 || !strings.Contains(rep.Unfixed[0], "ops were lost from its end") {
		t.Errorf("not fixed: %q; want both conversations left as found, said so", rep.Unfixed)
	}
	// Alice's usage counts the ops there are.
	if d := differences(want, snapshot(t, o), [][]byte{{engine.TableUsage}}); len(d) > 0 {
		t.Errorf("rebuild changed the store: %q", d)
	}
	e = enginetest.Open(t, o, alice, bob, dave)
	if next := bob.Send(pair, "three"); next.Seq <= last.Seq {
		t.Errorf("bob's next message took seq %d, which his device holds", next.Seq)
	}
	if r := dave.Try(left, model.Op{Kind: model.KindMessage, Body: []byte("back in"), ContentType: "text/plain"}); r.Err == nil {
		t.Errorf("dave, removed, sent at seq %d", r.Seq)
	}
}

// TestRebuildLostRecordPastLaggingEntries: the members' entries of a
// conversation whose record was lost may sit up to the entry lag below
// its feed position, which was lost with it: the record made anew goes
// past that, and a device that caught up before the messages that did
// not move the entries takes them.
func TestRebuildLostRecordPastLaggingEntries(t *testing.T) {
	o := enginetest.Options(t, 1)
	o.SharedFeedMembers = 10
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	one := alice.Create("one", bob)
	alice.Send(one, "in one")
	two := alice.Create("two", bob)
	alice.Send(two, "m0")
	alice.Send(two, "m1")
	_, bobPos := catchUpFrom(t, e, bob, 0)
	for _, text := range []string{"m2", "m3", "m4"} { // the entries stay behind
		alice.Send(two, text)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.LoseConversation(o.FS, "db", two, 1); err != nil {
		t.Fatal(err)
	}
	rebuild(t, o)
	e = enginetest.Open(t, o, alice, bob)
	for i := range 4 { // the server goes on past bob's position
		alice.Send(one, fmt.Sprint("later ", i))
	}
	infos, _ := catchUpFrom(t, e, bob, bobPos)
	if info, ok := infos[two]; !ok || info.Head != 7 {
		t.Errorf("bob's catch-up from %d: %+v; want conversation two to its seq 7", bobPos, infos)
	}
}

// TestRebuildIndexesUserFeedAgain: a user feed entry whose index entry
// was lost is indexed again, and the user's other device takes the
// private read it holds.
func TestRebuildIndexesUserFeedAgain(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	bob2 := enginetest.Login(t, e, "bob")
	conv := alice.Create("c", bob)
	m := alice.Send(conv, "hello")
	_, pos := catchUpFrom(t, e, bob2, 0)
	if err := e.Mark(context.Background(), bob.Actor, []engine.Marker{{Conv: conv, Read: m.Seq, Private: true}}); err != nil {
		t.Fatal(err)
	}
	closeDamaged(t, e, o, loseKey(engine.UFeedIdxKey(bob.Actor.User, conv)))
	rebuild(t, o)
	e = enginetest.Open(t, o, alice, bob, bob2)
	if infos, _ := catchUpFrom(t, e, bob2, pos); infos[conv].Read != m.Seq {
		t.Errorf("bob2's catch-up from %d: %+v; want the private read of seq %d", pos, infos, m.Seq)
	}
}

// TestRebuildOpensAnUpgradeWithGarbledMember: a store of format 7, whose
// upgrade moves its former members' records as it opens, with a member
// record that does not decode: a server does not start on it, and
// Rebuild's upgrade leaves that one where it is, and repairs it.
func TestRebuildOpensAnUpgradeWithGarbledMember(t *testing.T) {
	o := rebuildStore(t)
	if err := engine.AsFormat7(o.FS, "db"); err != nil {
		t.Fatal(err)
	}
	var k string
	for kk := range snapshot(t, o) {
		if kk[0] == engine.TableMember {
			k = kk
			break
		}
	}
	if err := engine.SetKey(o.FS, "db", []byte(k), []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if err := engine.SetFormat(o.FS, "db", 7); err != nil {
		t.Fatal(err)
	}
	// A server does not start on it, where a write would stop the engine,
	// before or after a tool (check, backup) opened it; a tool does, and
	// Check lists the record.
	serve := func() error {
		e, err := engine.Open("db", o)
		if err == nil {
			err = e.Close()
		}
		return err
	}
	for range 2 {
		if err := serve(); err == nil || !strings.Contains(err.Error(), "ferryd rebuild repairs") {
			t.Fatalf("a server's open of the store: %v; want a refusal that names ferryd rebuild", err)
		}
		tool := o
		tool.Existing = true
		e, err := engine.Open("db", tool)
		if err != nil {
			t.Fatalf("a tool's open of the store: %v", err)
		}
		rep, err := e.Check()
		if err != nil || !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, "member") }) {
			t.Errorf("check: %v, %q; want the garbled member record", err, rep.Problems)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if rep := rebuild(t, o); !slices.ContainsFunc(rep.Fixes, func(f engine.Fix) bool { return strings.HasPrefix(f.What, "member records") }) {
		t.Errorf("fixes %v; want the garbled member record's", rep.Fixes)
	}
	if err := serve(); err != nil {
		t.Errorf("a server's open of the rebuilt store: %v", err)
	}
}

// TestRebuildIndexPastHeadIsNoLostEnd: an index entry of the newest op
// that points past the head, its op id or its dot being in the log, is a
// wrong entry, not ops lost from the log's end: it is fixed, and the
// message can be edited.
func TestRebuildIndexPastHeadIsNoLostEnd(t *testing.T) {
	for _, which := range []string{"op-id", "dot"} {
		t.Run(which, func(t *testing.T) {
			o := enginetest.Options(t, 1)
			e := enginetest.Open(t, o)
			alice := enginetest.Register(t, e, "alice")
			bob := enginetest.Register(t, e, "bob")
			pair := alice.Create("pair", bob)
			alice.Send(pair, "one")
			last := alice.Send(pair, "two")
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			k := engine.OpIDKey(pair, last.ID)
			if which == "dot" {
				k = engine.DotKey(pair, alice.Actor.Device, last.Dot.N)
			}
			if _, ok := snapshot(t, o)[string(k)]; !ok {
				t.Fatalf("no %s entry of the last message", which)
			}
			if err := engine.SetKey(o.FS, "db", k, engine.Uint(last.Seq+1)); err != nil {
				t.Fatal(err)
			}
			if rep := rebuild(t, o); len(rep.Fixes) == 0 {
				t.Error("rebuild fixed nothing")
			}
			e = enginetest.Open(t, o, alice, bob)
			alice.Push(alice.Op(pair, model.Op{Kind: model.KindEdit, Target: last.ID, Body: []byte("two!")}))
		})
	}
}

// TestRebuildNewEpochForLostSharedRecord: a shared-feed conversation's
// record, which held the greatest position, lost, and the store's
// position behind another conversation's: nothing says where the lost
// one was (its members' shared entries hold no position, a former
// member's entry only where they left), so devices may hold positions
// past any Rebuild could give it. The store starts a new epoch at its
// next start, where devices start again, also when the rebuild was
// stopped and run again; not with the store's position right, nor when
// the record is not made (its log has a gap). (Were the store's position
// behind with nothing else past it, nothing would show it.)
func TestRebuildNewEpochForLostSharedRecord(t *testing.T) {
	for _, c := range []struct {
		behind, former, gap bool
		garbled             bool // the former member's record, in a format 7 store, does not decode
		stop                int  // stop the rebuild after this commit, and run it again
	}{
		{behind: true}, {behind: true, stop: 1}, {behind: true, stop: 2},
		{behind: true, former: true}, {behind: true, former: true, garbled: true},
		{behind: true, gap: true}, {},
	} {
		want := c.behind && !c.gap
		t.Run(fmt.Sprintf("%+v", c), func(t *testing.T) {
			engine.RebuildInCommitsOf(t, 1)
			o := enginetest.Options(t, 1) // SharedFeedMembers 2: three members share
			e := enginetest.Open(t, o)
			alice := enginetest.Register(t, e, "alice")
			bob := enginetest.Register(t, e, "bob")
			carol := enginetest.Register(t, e, "carol")
			dave := enginetest.Register(t, e, "dave")
			pair := alice.Create("pair", bob)
			alice.Send(pair, "in pair")
			big := alice.Create("big", bob, carol, dave)
			if c.former {
				alice.Push(alice.Op(big, model.Op{Kind: model.KindMemberRemove, Member: dave.Actor.User}))
			}
			for i := range 10 {
				alice.Send(big, fmt.Sprint("big ", i))
			}
			epoch, pos := e.Epoch(), engine.ServerFeedPos(e)
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if c.behind {
				pos = 1
			}
			if err := engine.LoseConversation(o.FS, "db", big, pos); err != nil {
				t.Fatal(err)
			}
			if c.gap {
				if err := engine.DeleteKey(o.FS, "db", engine.OpKey(big, 6)); err != nil {
					t.Fatal(err)
				}
			}
			if c.garbled { // left in the current members' table by the upgrade
				if err := engine.AsFormat7(o.FS, "db"); err != nil {
					t.Fatal(err)
				}
				if err := engine.SetKey(o.FS, "db", engine.MemberKey(big, dave.Actor.User), []byte("garbage")); err != nil {
					t.Fatal(err)
				}
				if err := engine.SetFormat(o.FS, "db", 7); err != nil {
					t.Fatal(err)
				}
			}
			var fixes []engine.Fix
			if c.stop > 0 {
				engine.CrashRebuildAfter(t, c.stop)
				rep, _ := engine.Rebuild("db", o)
				if rep.Check.Conversations > 0 {
					t.Fatal("the rebuild was not stopped")
				}
				fixes = rep.Fixes
				engine.CrashRebuildAfter(t, 0)
			}
			rep, err := engine.Rebuild("db", o)
			if err != nil {
				t.Fatal(err)
			}
			fixes = append(fixes, rep.Fixes...)
			marked := slices.ContainsFunc(fixes, func(f engine.Fix) bool { return strings.HasPrefix(f.What, "new epoch") })
			e = enginetest.Open(t, o, alice, bob, carol, dave)
			if renewed := e.Epoch() != epoch; marked != want || renewed != want {
				t.Errorf("fixes %v; a new epoch: %v, want %v", fixes, renewed, want)
			}
		})
	}
}

// TestRebuildEndsAnUpgradeItCannotRepair: a format 7 store with a member
// record that does not decode, of a conversation Rebuild cannot rebuild
// (its log has a gap) or that has neither a record nor a log: Rebuild
// leaves the first as found and deletes the second, and ends the upgrade,
// whose mark keeps a server from starting: a server starts after it.
func TestRebuildEndsAnUpgradeItCannotRepair(t *testing.T) {
	for _, c := range []string{"log gap", "no conversation"} {
		t.Run(c, func(t *testing.T) {
			o := enginetest.Options(t, 1)
			e := enginetest.Open(t, o)
			alice := enginetest.Register(t, e, "alice")
			bob := enginetest.Register(t, e, "bob")
			pair := alice.Create("pair", bob)
			for i := range 3 {
				alice.Send(pair, fmt.Sprint("m", i))
			}
			other := alice.Create("other", bob)
			alice.Send(other, "fine")
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if err := engine.AsFormat7(o.FS, "db"); err != nil {
				t.Fatal(err)
			}
			damage := [][]byte{engine.MemberKey(pair, alice.Actor.User)}
			if c == "log gap" {
				damage = [][]byte{engine.OpKey(pair, 2)}
			} else {
				for s := uint64(1); s <= 5; s++ { // a lost range took its record and log
					damage = append(damage, engine.OpKey(pair, s))
				}
				damage = append(damage, engine.ConvKey(pair))
			}
			for _, k := range damage {
				if err := engine.DeleteKey(o.FS, "db", k); err != nil {
					t.Fatal(err)
				}
			}
			if err := engine.SetKey(o.FS, "db", engine.MemberKey(pair, bob.Actor.User), []byte("garbage")); err != nil {
				t.Fatal(err)
			}
			if err := engine.SetFormat(o.FS, "db", 7); err != nil {
				t.Fatal(err)
			}
			rep, err := engine.Rebuild("db", o)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(rep.Fixes, func(f engine.Fix) bool { return strings.Contains(f.What, "upgrade") }) {
				t.Errorf("fixes %v; want the upgrade ended", rep.Fixes)
			}
			if clean := len(rep.Check.Problems) == 0; clean != (c == "no conversation") {
				t.Errorf("check after the rebuild: %q", rep.Check.Problems)
			}
			e, err = engine.Open("db", o)
			if err != nil {
				t.Fatalf("a server's open after the rebuild: %v", err)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRebuildUserFeedPositionBehind: the greatest position is a user's own
// feed entry, whose index entry was lost, with the store's position
// behind: the store's goes past it, and the user's other device, which
// holds it, takes a later message.
func TestRebuildUserFeedPositionBehind(t *testing.T) {
	o := enginetest.Options(t, 1)
	o.SharedFeedMembers = 10
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	bob2 := enginetest.Login(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	pair := alice.Create("pair", bob)
	side := alice.Create("side", carol)
	for i := range 5 {
		m := alice.Send(pair, fmt.Sprint("pair ", i))
		if err := e.Mark(context.Background(), bob.Actor, []engine.Marker{{Conv: pair, Read: m.Seq, Private: true}}); err != nil {
			t.Fatal(err)
		}
	}
	_, bob2Pos := catchUpFrom(t, e, bob2, 0)
	closeDamaged(t, e, o, loseKey(engine.UFeedIdxKey(bob.Actor.User, pair)), setKey(engine.FeedPosKey(), engine.Uint(1)))
	rebuild(t, o)
	e = enginetest.Open(t, o, alice, bob, bob2, carol)
	last := alice.Send(pair, "after the rebuild")
	for i := range 12 { // past bob2's position, in a conversation not his
		alice.Send(side, fmt.Sprint("side ", i))
	}
	if infos, _ := catchUpFrom(t, e, bob2, bob2Pos); infos[pair].Head != last.Seq {
		t.Errorf("bob2's catch-up from %d: %+v; want pair to seq %d", bob2Pos, infos, last.Seq)
	}
}

// TestRebuildAccountsWithoutTheirTruth: account records that nothing
// else holds. A device's record and its token's that both do not decode
// are deleted: the device is revoked, and signs in again. A username
// whose user's record is gone is kept (so that no one else takes the
// name) and reported. A device's record of its user that does not
// decode, of a revoked device that wrote nothing, is deleted.
func TestRebuildAccountsWithoutTheirTruth(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	phone := enginetest.Login(t, e, "alice")
	alice.Create("pair", bob)
	if err := e.RevokeDevice(context.Background(), alice.Actor, phone.Actor.Device); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for _, k := range [][]byte{engine.DeviceKey(bob.Actor.User, bob.Actor.Device), engine.TokenKey(bob.Token), engine.DeviceOfKey(phone.Actor.Device)} {
		if err := engine.SetKey(o.FS, "db", k, garbled); err != nil {
			t.Fatal(err)
		}
	}
	if err := engine.DeleteKey(o.FS, "db", engine.UserKey(carol.Actor.User)); err != nil {
		t.Fatal(err)
	}
	rep, err := engine.CheckStopped("db", o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 4 {
		t.Errorf("check: %q; want 4 problems", rep.Problems)
	}
	rebuilt, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fixes: %v", rebuilt.Fixes)
	if len(rebuilt.Fixes) != 3 {
		t.Errorf("fixes: %v; want the device's record, its token's and the phone's record of its user", rebuilt.Fixes)
	}
	if len(rebuilt.Unfixed) != 1 || !strings.Contains(rebuilt.Unfixed[0], `username "carol" names user `+carol.Actor.User.String()+", who has no record") {
		t.Errorf("unfixed: %q; want carol's username alone", rebuilt.Unfixed)
	}
	if len(rebuilt.Check.Problems) != 1 {
		t.Errorf("check after the rebuild: %q; want carol's username alone", rebuilt.Check.Problems)
	}
	e = enginetest.Open(t, o)
	if _, err := e.Authenticate(bob.Token); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("bob's token after the rebuild: %v; want ErrUnauthenticated", err)
	}
	back := enginetest.Login(t, e, "bob")
	if devs, err := e.Devices(back.Actor); err != nil || len(devs) != 1 {
		t.Errorf("bob's devices: %+v, %v; want the new one alone", devs, err)
	}
	if _, err := e.Register(context.Background(), engine.NewAccount{Username: "carol", Password: "correct horse"}); !errors.Is(err, engine.ErrExists) {
		t.Errorf("registering carol's name: %v; want ErrExists", err)
	}
}

// TestRebuildGivesNoDeviceAnotherDevicesToken: a device's record that does
// not decode is not made anew from a token record whose hash another
// device's sound record holds (here alice's token record, damaged to name
// bob's tablet, whose own token record is lost): alice's token stays
// hers, and the tablet, with no token of its own, is revoked.
func TestRebuildGivesNoDeviceAnotherDevicesToken(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	tablet := enginetest.Login(t, e, "bob")
	closeDamaged(t, e, o, setKey(engine.DeviceKey(bob.Actor.User, tablet.Actor.Device), garbled), loseKey(engine.TokenKey(tablet.Token)),
		setKey(engine.TokenKey(alice.Token), engine.IDsRecord(bob.Actor.User, tablet.Actor.Device)))
	rep, err := engine.Rebuild("db", o)
	if err != nil || len(rep.Unfixed) > 0 || len(rep.Check.Problems) > 0 {
		t.Fatalf("rebuild: %v; unfixed %q, check after it %q", err, rep.Unfixed, rep.Check.Problems)
	}
	t.Logf("fixes: %v", rep.Fixes)
	e = enginetest.Open(t, o)
	if a, err := e.Authenticate(alice.Token); err != nil || a != alice.Actor {
		t.Errorf("alice's token after the rebuild: %+v, %v; want hers", a, err)
	}
	if _, err := e.Authenticate(tablet.Token); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("the tablet's token after the rebuild: %v; want ErrUnauthenticated", err)
	}
}

// TestRebuildLeavesADeviceInDoubt: a device whose record (keyed under
// bob) and ops (written as alice: a damaged op) disagree on its user is
// left as found, its record and its record of its user, and reported; a
// second rebuild fixes nothing more, and moves it to no one. (Its token's
// record, which does not decode either, names no one and goes.)
func TestRebuildLeavesADeviceInDoubt(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("pair", bob)
	tablet := enginetest.Login(t, e, "bob")
	msg := tablet.Send(conv, "from bob's tablet")
	closeDamaged(t, e, o, setKey(engine.DeviceKey(bob.Actor.User, tablet.Actor.Device), garbled), setKey(engine.TokenKey(tablet.Token), garbled))
	if err := engine.SetOpUser(o.FS, "db", conv, msg.Seq, alice.Actor.User); err != nil {
		t.Fatal(err)
	}
	before, err := engine.Snapshot(o.FS, "db")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		rep, err := engine.Rebuild("db", o)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(rep.Unfixed, func(u string) bool {
			return strings.Contains(u, "device "+tablet.Actor.Device.String()+" is user "+bob.Actor.User.String()+"'s by its record, and wrote ops as user "+alice.Actor.User.String())
		}) {
			t.Errorf("rebuild %d: unfixed %q; want the tablet's doubt", i+1, rep.Unfixed)
		}
		after, err := engine.Snapshot(o.FS, "db")
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range [][]byte{engine.DeviceKey(bob.Actor.User, tablet.Actor.Device), engine.DeviceOfKey(tablet.Actor.Device)} {
			if before[string(k)] != after[string(k)] {
				t.Errorf("rebuild %d changed %x: %x -> %x", i+1, k, before[string(k)], after[string(k)])
			}
		}
		if i == 1 && len(rep.Fixes) > 0 {
			t.Errorf("the second rebuild fixed %v", rep.Fixes)
		}
	}
}

// TestRebuildKeepsANameAnUnreadableUserMayHold: while a user's record
// does not decode, a username record naming another user who is named
// otherwise is kept (reported): the name may be the unreadable user's,
// whose record a backup brings back, and must not be free to register.
func TestRebuildKeepsANameAnUnreadableUserMayHold(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	carol := enginetest.Register(t, e, "carol")
	closeDamaged(t, e, o, setKey(engine.UserKey(carol.Actor.User), garbled), setKey(engine.UsernameKey("carol"), engine.IDRecord(alice.Actor.User)))
	rep, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Unfixed) != 2 {
		t.Errorf("unfixed %q; want carol's record and her name's", rep.Unfixed)
	}
	e = enginetest.Open(t, o)
	if _, err := e.Register(context.Background(), engine.NewAccount{Username: "carol", Password: "correct horse"}); !errors.Is(err, engine.ErrExists) {
		t.Errorf("registering carol's name after the rebuild: %v; want ErrExists", err)
	}
}
