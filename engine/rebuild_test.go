package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// rebuildStore fills a store in "db" with what Rebuild rebuilds: two
// conversations, one on members' own feed entries and one on a shared
// one, each with a former member; messages, edits, a reaction, a message
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
// time, and checks, with all its fixes in one commit and in a commit each, that Rebuild brings back the very bytes the damage
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
