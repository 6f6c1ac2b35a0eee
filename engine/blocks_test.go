package engine_test

import (
	"errors"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestBlock: a user who blocks another cannot be added to a conversation
// by them (the add is rejected, the rest of the push stored), while
// anyone else adds them; conversations they share stay; a retry of an
// add stored before the block is a duplicate; unblocking lets the adds
// through again.
func TestBlock(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	before := alice.Op(alice.Create("before"), model.Op{Kind: model.KindMemberAdd, Member: bob.Actor.User, Role: model.RoleMember})
	alice.Push(before)

	if err := e.Block(ctx, bob.Actor, bob.Actor.User); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("blocking oneself: %v; want ErrInvalid", err)
	}
	if err := e.Block(ctx, bob.Actor, ulid.Make()); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("blocking no one: %v; want ErrNotFound", err)
	}
	for range 2 { // twice: the same
		if err := e.Block(ctx, bob.Actor, alice.Actor.User); err != nil {
			t.Fatalf("block: %v", err)
		}
	}
	if us, err := e.Blocked(bob.Actor); err != nil || len(us) != 1 || us[0].ID != alice.Actor.User || us[0].Username != "alice" {
		t.Fatalf("blocked: %+v, %v; want alice", us, err)
	}

	conv := ulid.Make()
	res, err := e.Append(ctx, alice.Actor, []model.Op{
		alice.Op(conv, model.Op{Kind: model.KindCreate, Title: "spam"}),
		alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: bob.Actor.User, Role: model.RoleMember}),
	})
	if err != nil || res[0].Err != nil || !errors.Is(res[1].Err, engine.ErrForbidden) {
		t.Fatalf("alice creates a conversation and adds bob: %+v, %v; want the create stored, the add forbidden", res, err)
	}
	// The add stored before the block, sent again: a duplicate.
	if res, err := e.Append(ctx, alice.Actor, []model.Op{before}); err != nil || res[0].Err != nil || !res[0].Duplicate {
		t.Fatalf("the add stored before, again: %+v, %v; want a duplicate", res, err)
	}
	carol.Create("fine", bob)

	if err := e.Unblock(ctx, bob.Actor, alice.Actor.User); err != nil {
		t.Fatal(err)
	}
	if us, err := e.Blocked(bob.Actor); err != nil || len(us) != 0 {
		t.Fatalf("blocked after unblocking: %+v, %v", us, err)
	}
	alice.Create("welcome", bob)
	enginetest.MustCheck(t, e)
}
