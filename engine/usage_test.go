package engine_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestUserQuota: an op that would take its user past UserQuota is
// rejected, saying how much they hold and what to do; the quota is each
// user's; ops without a body count too; deletes and leaving always go; a
// retry of an op stored before is still answered; deleting a message (and
// its edit) makes room; and the count outlives a restart.
func TestUserQuota(t *testing.T) {
	const quota = 1000
	o := enginetest.Options(t, 5)
	o.UserQuota = quota
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	const per, ct = engine.UsagePerOp, int64(len("text/plain"))
	if got, want := usageOf(t, alice), int64(2*per+len("c")); got != want {
		t.Fatalf("alice's usage after creating c and adding bob: %d, want %d (two ops and the title)", got, want)
	}
	body := func(n int64) []byte { return []byte(strings.Repeat("x", int(n))) }
	msg := func(n int64) model.Op {
		return model.Op{Kind: model.KindMessage, Body: body(n), ContentType: "text/plain"}
	}

	first := alice.Op(conv, msg(500))
	stored := alice.Push(first)[0]
	room := quota - usageOf(t, alice)
	r := alice.Try(conv, msg(room-per-ct+1))
	if !errors.Is(r.Err, engine.ErrQuota) || !strings.Contains(r.Err.Error(), fmt.Sprintf("hold %d bytes of the 1000 bytes each user may store here", quota-room)) ||
		!strings.Contains(r.Err.Error(), "delete some of your messages to make room") {
		t.Fatalf("a message past the quota: %v; want ErrQuota saying what alice holds", r.Err)
	}
	alice.Push(alice.Op(conv, msg(room-per-ct))) // up to it exactly
	if usageOf(t, alice) != quota {
		t.Fatalf("alice's usage %d, want the quota", usageOf(t, alice))
	}
	bob.Push(bob.Op(conv, msg(500))) // the quota is each user's
	if r := alice.Try(conv, model.Op{Kind: model.KindReactionAdd, Target: first.ID, ReactionKey: "👍"}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("a reaction at the quota: %v; want it refused too: ops without a body count", r.Err)
	}
	if res := alice.Push(first); !res[0].Duplicate || res[0].Seq != stored.Seq {
		t.Fatalf("a retry of a message stored before, the user at the quota: %+v; want it a duplicate", res[0])
	}

	// Deleting the message erases it: it counts nothing more, and the
	// delete counts its own.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: first.ID}))
	if got, want := usageOf(t, alice), int64(quota-500-ct); got != want {
		t.Fatalf("alice's usage after deleting her 500 bytes: %d, want %d", got, want)
	}
	second := alice.Op(conv, msg(100))
	alice.Push(second)
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindEdit, Target: second.ID, Body: body(50), ContentType: "text/plain"}))
	before := usageOf(t, alice)
	// bob, an admin now, deletes alice's message: it and its edit count
	// nothing more to her, and the delete counts to him.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRole, Member: bob.Actor.User, Role: model.RoleAdmin}))
	bobBefore := usageOf(t, bob)
	bob.Push(bob.Op(conv, model.Op{Kind: model.KindDelete, Target: second.ID}))
	if got, want := usageOf(t, alice), before+per-(2*per+150+2*ct); got != want {
		t.Fatalf("alice's usage after bob deleted her message: %d, want %d", got, want)
	}
	if got, want := usageOf(t, bob), bobBefore+per; got != want {
		t.Fatalf("bob's usage after his delete: %d, want %d", got, want)
	}
	enginetest.MustCheck(t, e)

	alice.Push(alice.Op(conv, msg(quota-usageOf(t, alice)-per-ct))) // at the quota again
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = enginetest.Open(t, o, alice, bob)
	if r := alice.Try(conv, msg(1)); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("alice past the quota after a restart: %v", r.Err)
	}
	// A member removal always goes (a user leaving, too).
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
	enginetest.MustCheck(t, e)
}

// TestNoQuotaStillCounts: without a quota every user's usage is kept, so
// that a quota set later applies at once; a store written before usage
// was kept (format 5) counts it from its ops when it opens, and Check
// tells a store whose counts are wrong.
func TestNoQuotaStillCounts(t *testing.T) {
	o := enginetest.Options(t, 6)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	var sent []model.Op
	for range 20 {
		sent = append(sent, alice.Send(conv, strings.Repeat("y", 1000)))
	}
	gone := alice.Send(conv, "gone")
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: gone.ID}))
	want, err := e.Usage(alice.Actor.User)
	if err != nil || want != 20*(1000+int64(len("text/plain")))+22*engine.UsagePerOp+1 {
		t.Fatalf("usage: %d %v; want the create, its title, the 20 messages and the delete, the deleted message not", want, err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// A store of the current format without it: Check says so.
	if err := engine.ForgetUsage(o.FS, "db", 7); err != nil {
		t.Fatal(err)
	}
	e = enginetest.Open(t, o, alice)
	if rep, err := e.Check(); err != nil || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], fmt.Sprintf("no usage recorded; their ops hold %d bytes", want)) {
		t.Fatalf("check of a store that lost its usage: %v %q", err, rep.Problems)
	}
	// A count below the truth that a delete would take below zero is
	// set to zero, not fatal: derived data, which Check reports.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: sent[0].ID}))
	if got, err := e.Usage(alice.Actor.User); e.Failed() != nil || err != nil || got != 0 {
		t.Fatalf("a delete that took a lost count below zero: usage %d %v, the engine failed: %v; want 0 and going on", got, err, e.Failed())
	}
	want -= 1000 + int64(len("text/plain")) // the truth: the delete, less the message it erased
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.ForgetUsage(o.FS, "db", 5); err != nil {
		t.Fatal(err)
	}
	o.UserQuota = want + 500
	e = enginetest.Open(t, o, alice)
	if got, err := e.Usage(alice.Actor.User); err != nil || got != want {
		t.Fatalf("usage after the upgrade: %d %v; want %d, the deleted bodies not counted", got, err, want)
	}
	if r := alice.Try(conv, model.Op{Kind: model.KindMessage, Body: []byte(strings.Repeat("z", 500-engine.UsagePerOp+1)), ContentType: "text/plain"}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("a message past a quota set on an upgraded store: %v", r.Err)
	}
	enginetest.MustCheck(t, e)
}

// TestQuotaLeavesAWayOut: at the quota a user can always make room or
// leave: deleting even short messages frees their bodies, a last owner
// can make another member owner and leave. What would let the count grow
// without end goes through the quota: a delete that erases nothing, or
// another's message, and making an owner owner again.
func TestQuotaLeavesAWayOut(t *testing.T) {
	const quota = 2000
	o := enginetest.Options(t, 7)
	o.UserQuota = quota
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	// Up to the quota exactly: short messages, then one that fills the
	// room left.
	short := model.Op{Kind: model.KindMessage, Body: []byte("ok, see you then"), ContentType: "text/plain"}
	shortUsage := int64(engine.UsagePerOp + len(short.Body) + len(short.ContentType))
	var sent []ulid.ULID
	for quota-usageOf(t, alice) >= 2*shortUsage+1 {
		sent = append(sent, alice.Try(conv, short).Op)
	}
	fill := quota - usageOf(t, alice) - engine.UsagePerOp - int64(len("text/plain"))
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(strings.Repeat("f", int(fill))), ContentType: "text/plain"}))
	if usageOf(t, alice) != quota {
		t.Fatalf("usage %d, want the quota", usageOf(t, alice))
	}
	if r := alice.Try(conv, short); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("a message at the quota: %v", r.Err)
	}
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: sent[0]}))
	if got, want := usageOf(t, alice), quota-int64(len(short.Body)+len(short.ContentType)); got != want {
		t.Fatalf("usage after deleting a short message: %d, want %d: its body and content type freed", got, want)
	}
	if r := alice.Try(conv, model.Op{Kind: model.KindDelete, Target: sent[0]}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("a second delete of the message, erasing nothing, with less room than an op: %v; want it refused", r.Err)
	}
	// Hand the conversation to bob and leave: neither is refused.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRole, Member: bob.Actor.User, Role: model.RoleOwner}))
	// Making an owner owner again changes nothing, and is an op like
	// another: refused, or owners could make it without end.
	if r := alice.Try(conv, model.Op{Kind: model.KindMemberRole, Member: bob.Actor.User, Role: model.RoleOwner}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("making bob owner again at the quota: %v; want it refused", r.Err)
	}
	// Deleting another's message is an op like another too, or moderators
	// could erase, and so refund, their friends' messages without end.
	theirs := bob.Send(conv, "from bob")
	if r := alice.Try(conv, model.Op{Kind: model.KindDelete, Target: theirs.ID}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("alice deleting bob's message at the quota: %v; want it refused", r.Err)
	}
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: alice.Actor.User}))
	// Taking back a reaction is an op like another: at the quota it waits
	// for room.
	other := bob.Create("d", alice)
	m := bob.Send(other, "hello")
	if r := alice.Try(other, model.Op{Kind: model.KindReactionRemove, Target: m.ID, ReactionKey: "x"}); !errors.Is(r.Err, engine.ErrQuota) {
		t.Fatalf("a reaction taken back at the quota: %v; want it refused", r.Err)
	}
	enginetest.MustCheck(t, e)
}

// TestUpgradeReplacesOldCounts: a store of format 6, whose counts a build
// before made by other rules (an erased message counted 32 bytes), is
// counted again when it opens, its old counts replaced, those of users
// whose ops now count nothing too.
func TestUpgradeReplacesOldCounts(t *testing.T) {
	o := enginetest.Options(t, 8)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRole, Member: bob.Actor.User, Role: model.RoleAdmin}))
	m := alice.Send(conv, "hello")
	bob.Push(bob.Op(conv, model.Op{Kind: model.KindDelete, Target: m.ID}))
	carol := enginetest.Register(t, e, "carol")
	want := map[*enginetest.Device]int64{}
	for _, d := range []*enginetest.Device{alice, bob, carol} {
		n, err := e.Usage(d.Actor.User)
		if err != nil {
			t.Fatal(err)
		}
		want[d] = n
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.SetUsage(o.FS, "db", alice.Actor.User, 999, 6); err != nil {
		t.Fatal(err)
	}
	if err := engine.SetUsage(o.FS, "db", carol.Actor.User, 32, 6); err != nil { // no ops at all
		t.Fatal(err)
	}
	e = enginetest.Open(t, o)
	for d, n := range want {
		if got, err := e.Usage(d.Actor.User); err != nil || got != n {
			t.Errorf("usage of %s after the upgrade: %d %v; want %d", d.Actor.User, got, err, n)
		}
	}
	enginetest.MustCheck(t, e)
}

// usageOf is d's user's usage, on the engine d pushes to.
func usageOf(t *testing.T, d *enginetest.Device) int64 {
	t.Helper()
	n, err := d.E.Usage(d.Actor.User)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
