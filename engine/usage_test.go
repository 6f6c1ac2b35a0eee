package engine_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestUserQuota: an op whose body would take its user past UserQuota is
// rejected, saying how much they hold and what to do; the quota is each
// user's; ops without a body go; a retry of an op stored before is still
// answered; deleting a message (and its edit) makes room; and the count
// outlives a restart.
func TestUserQuota(t *testing.T) {
	o := enginetest.Options(t, 5)
	o.UserQuota = 100
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	usage := func(d *enginetest.Device, want int64) {
		t.Helper()
		if got, err := e.Usage(d.Actor.User); err != nil || got != want {
			t.Fatalf("usage: %d %v; want %d", got, err, want)
		}
	}
	body := func(n int) []byte { return []byte(strings.Repeat("x", n)) }
	msg := func(n int) model.Op {
		return model.Op{Kind: model.KindMessage, Body: body(n), ContentType: "text/plain"}
	}

	first := alice.Op(conv, msg(60))
	stored := alice.Push(first)[0]
	usage(alice, 60)
	r := alice.Try(conv, msg(41))
	if !errors.Is(r.Err, engine.ErrQuota) || !strings.Contains(r.Err.Error(), "hold 60 bytes of the 100 bytes each user may store here") ||
		!strings.Contains(r.Err.Error(), "delete messages to make room") {
		t.Fatalf("a message past the quota: %v; want ErrQuota saying what alice holds", r.Err)
	}
	alice.Push(alice.Op(conv, msg(40))) // up to it exactly
	usage(alice, 100)
	bob.Push(bob.Op(conv, msg(60))) // the quota is each user's
	usage(bob, 60)
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindReactionAdd, Target: first.ID, ReactionKey: "👍"}))
	if res := alice.Push(first); !res[0].Duplicate || res[0].Seq != stored.Seq {
		t.Fatalf("a retry of a message stored before, the user at the quota: %+v; want it a duplicate", res[0])
	}
	// An edit counts; the edit that would pass the quota is refused.
	if r := alice.Try(conv, model.Op{Kind: model.KindEdit, Target: first.ID, Body: body(10), ContentType: "text/plain"}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("an edit past the quota: %v", r.Err)
	}

	// Deleting the message erases it and its edits: room again.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: first.ID}))
	usage(alice, 40)
	second := alice.Op(conv, msg(50))
	alice.Push(second)
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindEdit, Target: second.ID, Body: body(10), ContentType: "text/plain"}))
	usage(alice, 100)
	// bob, an admin now, deletes alice's message: her bodies count no more.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRole, Member: bob.Actor.User, Role: model.RoleAdmin}))
	bob.Push(bob.Op(conv, model.Op{Kind: model.KindDelete, Target: second.ID}))
	usage(alice, 40)
	usage(bob, 60)
	enginetest.MustCheck(t, e)

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if e, err = engine.Open("db", o); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	alice.E, bob.E = e, e
	usage(alice, 40)
	if r := bob.Try(conv, msg(41)); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("bob past the quota after a restart: %v", r.Err)
	}
	enginetest.MustCheck(t, e)
}

// TestNoQuotaStillCounts: without a quota every user's usage is kept, so
// that a quota set later applies at once; a store written before usage
// was kept (format 5) counts it from its ops when it opens.
func TestNoQuotaStillCounts(t *testing.T) {
	o := enginetest.Options(t, 6)
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	for range 20 {
		alice.Send(conv, strings.Repeat("y", 1000))
	}
	gone := alice.Send(conv, "gone")
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: gone.ID}))
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// A format 6 store without it: Check says so.
	if err := engine.ForgetUsage(o.FS, "db", 6); err != nil {
		t.Fatal(err)
	}
	if e, err = engine.Open("db", o); err != nil {
		t.Fatal(err)
	}
	if rep, err := e.Check(); err != nil || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "no usage recorded; their ops hold 20000 bytes") {
		t.Fatalf("check of a store that lost its usage: %v %q", err, rep.Problems)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.ForgetUsage(o.FS, "db", 5); err != nil {
		t.Fatal(err)
	}
	o.UserQuota = 20_500
	if e, err = engine.Open("db", o); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	alice.E = e
	if got, err := e.Usage(alice.Actor.User); err != nil || got != 20_000 {
		t.Fatalf("usage after the upgrade: %d %v; want 20000, the deleted message's body not counted", got, err)
	}
	if r := alice.Try(conv, model.Op{Kind: model.KindMessage, Body: []byte(strings.Repeat("z", 501)), ContentType: "text/plain"}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("a message past a quota set on an upgraded store: %v", r.Err)
	}
	enginetest.MustCheck(t, e)
}
