package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestQuotaSetForAUser: a quota the operator sets for a user replaces the
// server's for them alone, at once and after a restart: more room, less
// (what they hold stays, their next ops are refused, saying it is their
// quota), none at all; ServerQuota gives them the server's again. A quota
// set in a commit group applies to the ops after it in that group.
func TestQuotaSetForAUser(t *testing.T) {
	const quota = 1000
	o := enginetest.Options(t, 7)
	o.UserQuota = quota
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	ctx := context.Background()
	msg := func(n int) model.Op {
		return model.Op{Kind: model.KindMessage, Body: []byte(strings.Repeat("x", n)), ContentType: "text/plain"}
	}
	set := func(name string, q int64) {
		t.Helper()
		if _, err := e.SetUserQuota(ctx, name, q); err != nil {
			t.Fatalf("set %s's quota to %d: %v", name, q, err)
		}
	}
	refused := func(d *enginetest.Device, n int) error {
		t.Helper()
		return d.Try(conv, msg(n)).Err
	}

	if err := refused(alice, 1500); !errors.Is(err, engine.ErrQuota) {
		t.Fatalf("1.5 kB under the server's quota of 1 kB: %v", err)
	}
	set("alice", 4000)
	if got := e.QuotaOf(alice.Actor.User); got != 4000 {
		t.Errorf("QuotaOf alice: %d, want 4000", got)
	}
	if got := e.QuotaOf(bob.Actor.User); got != quota {
		t.Errorf("QuotaOf bob: %d, want the server's %d", got, quota)
	}
	if err := refused(alice, 1500); err != nil {
		t.Fatalf("1.5 kB under a quota of 4 kB set for alice: %v", err)
	}
	if err := refused(bob, 1500); !errors.Is(err, engine.ErrQuota) {
		t.Fatalf("bob, the server's quota his: %v", err)
	}

	// Lowered below what she holds: it stays, her next op is refused.
	set("alice", 500)
	held := usageOf(t, alice)
	err := refused(alice, 10)
	if !errors.Is(err, engine.ErrQuota) || !strings.Contains(err.Error(), "of the 500 bytes you may store here") {
		t.Fatalf("alice past a quota lowered for her: %v; want ErrQuota naming her quota", err)
	}
	if usageOf(t, alice) != held {
		t.Errorf("alice's usage moved from %d to %d", held, usageOf(t, alice))
	}

	set("alice", 0) // none for her
	if err := refused(alice, 3000); err != nil {
		t.Fatalf("alice with no quota: %v", err)
	}

	// After a restart, the quotas set are as they were.
	set("bob", 5000)
	e.Close()
	e = enginetest.Open(t, o, alice, bob)
	if got := e.QuotaOf(alice.Actor.User); got != 0 {
		t.Errorf("alice's quota after a restart: %d, want none (0)", got)
	}
	if got := e.QuotaOf(bob.Actor.User); got != 5000 {
		t.Errorf("bob's quota after a restart: %d, want 5000", got)
	}
	if err := refused(bob, 1500); err != nil {
		t.Fatalf("bob under the quota set for him, after a restart: %v", err)
	}
	set("alice", engine.ServerQuota)
	if err := refused(alice, 10); !errors.Is(err, engine.ErrQuota) || !strings.Contains(err.Error(), "each user may store here") {
		t.Fatalf("alice, given the server's quota again: %v", err)
	}
	if got := e.QuotaOf(alice.Actor.User); got != quota {
		t.Errorf("QuotaOf alice, given the server's again: %d", got)
	}

	// Refused: no such user, a quota out of bounds.
	if _, err := e.SetUserQuota(ctx, "carol", 10); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("a quota for no one: %v", err)
	}
	for _, q := range []int64{-2, engine.MaxQuota + 1} {
		if _, err := e.SetUserQuota(ctx, "bob", q); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("a quota of %d: %v", q, err)
		}
	}
	enginetest.MustCheck(t, e)
}

// TestQuotaSetInAGroup: a quota set in a commit group holds the pushes
// after it in that group to it.
func TestQuotaSetInAGroup(t *testing.T) {
	hold := newSyncHold()
	o := enginetest.Options(t, 8)
	o.UserQuota, o.FS = 1000, hold.fs()
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	other := alice.Create("held")
	var setErr, pushErr error
	var res []engine.AppendResult
	op := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(strings.Repeat("x", 2000)), ContentType: "text/plain"})
	hold.inOneGroup(e, func() { alice.Send(other, "held") },
		func() { _, setErr = e.SetUserQuota(context.Background(), "alice", 5000) },
		func() { res, pushErr = e.Append(context.Background(), alice.Actor, []model.Op{op}) })
	if setErr != nil || pushErr != nil || res[0].Err != nil {
		t.Fatalf("2 kB after a quota of 5 kB set in the same group: %v, %v, %+v", setErr, pushErr, res)
	}
}

// TestDamagedQuotaRecord: a quota record that does not decode gives its
// user the server's quota, and check reports it; setting the quota again
// writes it anew.
func TestDamagedQuotaRecord(t *testing.T) {
	o := enginetest.Options(t, 9)
	o.UserQuota = 1000
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	if _, err := e.SetUserQuota(context.Background(), "alice", 5000); err != nil {
		t.Fatal(err)
	}
	closeDamaged(t, e, o, setKey(engine.QuotaKey(alice.Actor.User), []byte{0xff, 0xff}))
	e = enginetest.Open(t, o, alice)
	if got := e.QuotaOf(alice.Actor.User); got != 1000 {
		t.Errorf("alice's quota, its record garbled: %d, want the server's", got)
	}
	rep, err := e.Check()
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err == nil || !strings.Contains(err.Error(), "the quota of user "+alice.Actor.User.String()+" does not decode") {
		t.Errorf("check of a garbled quota record: %v", err)
	}
	if _, err := e.SetUserQuota(context.Background(), "alice", 5000); err != nil {
		t.Fatal(err)
	}
	enginetest.MustCheck(t, e)
	if got := e.QuotaOf(alice.Actor.User); got != 5000 {
		t.Errorf("alice's quota set anew: %d", got)
	}
}

// TestRebuildMendsQuotaRecords: rebuild deletes the quota records check
// reports, which no tool could otherwise reach (a user with no record,
// nor username, for one): a record that does not decode, a malformed
// key, a quota of a user with no record. The server's quota applies to
// their users already. Sound quotas stay as they were.
func TestRebuildMendsQuotaRecords(t *testing.T) {
	o := enginetest.Options(t, 21)
	o.UserQuota = 1000
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	for name, q := range map[string]int64{"alice": 5000, "bob": 0, "carol": 7000} {
		if _, err := e.SetUserQuota(context.Background(), name, q); err != nil {
			t.Fatal(err)
		}
	}
	ghost := ulid.MustParse("01J00000000000000000000000")
	closeDamaged(t, e, o,
		setKey(engine.QuotaKey(ghost), []byte{1, 0x88, 0x27}),
		setKey(engine.QuotaKey(carol.Actor.User), []byte{0xff, 0xff}),
		setKey([]byte{0x09, 0x01, 0x02}, []byte{0x01}))
	rep, err := engine.Rebuild("db", o)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Check.Err(); err != nil {
		t.Fatalf("check after rebuild: %v\nfixes %v, unfixed %q", err, rep.Fixes, rep.Unfixed)
	}
	e = enginetest.Open(t, o)
	for _, c := range []struct {
		who  *enginetest.Device
		want int64
	}{{alice, 5000}, {bob, 0}, {carol, 1000}} {
		if got := e.QuotaOf(c.who.Actor.User); got != c.want {
			t.Errorf("a quota after rebuild: %d, want %d", got, c.want)
		}
	}
}

// TestSetQuotaOfAUserWithoutRecord: a user whose record is lost, their
// name kept, gets no quota (check would report one more problem); giving
// them the server's again is no harm.
func TestSetQuotaOfAUserWithoutRecord(t *testing.T) {
	o := enginetest.Options(t, 24)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	closeDamaged(t, e, o, loseKey(engine.UserKey(alice.Actor.User)))
	e = enginetest.Open(t, o)
	before, _ := e.Check()
	if _, err := e.SetUserQuota(context.Background(), "alice", 5000); !errors.Is(err, engine.ErrAccountDamaged) {
		t.Errorf("a quota for a user with no record: %v; want ErrAccountDamaged", err)
	}
	if _, err := e.SetUserQuota(context.Background(), "alice", engine.ServerQuota); err != nil {
		t.Errorf("the server's quota again for a user with no record: %v", err)
	}
	if after, _ := e.Check(); len(after.Problems) != len(before.Problems) {
		t.Errorf("check had %d problems, has %d: %q", len(before.Problems), len(after.Problems), after.Problems)
	}
}

// TestDamagedUsageStopsNoOne: a user's usage count that does not decode
// fails neither the store (it did: the writer stopped at their next op,
// and again after each restart) nor their ops: the count starts again
// from 0, written by their next op; check reports it, and rebuild counts
// it from their ops.
func TestDamagedUsageStopsNoOne(t *testing.T) {
	o := enginetest.Options(t, 25)
	o.UserQuota = 1 << 20
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	alice.Send(conv, "before")
	closeDamaged(t, e, o, setKey(engine.UsageKey(alice.Actor.User), []byte{0xff, 0xff, 0xff}))
	e = enginetest.Open(t, o, alice, bob)
	if _, err := e.Usage(alice.Actor.User); !errors.Is(err, engine.ErrAccountDamaged) {
		t.Errorf("the usage of a count that does not decode: %v; want ErrAccountDamaged", err)
	}
	alice.Send(conv, "after") // fails the test if refused
	bob.Send(conv, "and bob")
	if err := e.Failed(); err != nil {
		t.Fatalf("the store failed on a user's usage count: %v", err)
	}
	if rep, err := e.Check(); err != nil || rep.Err() == nil {
		t.Errorf("check of a usage counted from 0: %v, %v; want it reported", rep.Err(), err)
	}
	e.Close()
	rep, err := engine.Rebuild("db", o)
	if err != nil || rep.Check.Err() != nil {
		t.Fatalf("rebuild: %v, %v", err, rep.Check.Err())
	}
	e = enginetest.Open(t, o, alice, bob)
	if n, err := e.Usage(alice.Actor.User); err != nil || n < 2*engine.UsagePerOp {
		t.Errorf("alice's usage after rebuild: %d, %v; want all her ops counted", n, err)
	}
}
