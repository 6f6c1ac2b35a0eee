package engine_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestGroupCommit holds one WAL sync while 16 devices append, then checks
// that their 16 appends share one commit, and that the log is dense and
// consistent.
func TestGroupCommit(t *testing.T) {
	hold := newSyncHold()
	e := enginetest.New(t, func(o *engine.Options) { o.FS = hold.fs() })
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("busy")
	devices := make([]*enginetest.Device, 16)
	for i := range devices {
		devices[i] = enginetest.Login(t, e, "alice")
	}

	// The first append's commit blocks in its WAL sync.
	done := hold.during(func() { alice.Send(conv, "first") })
	before := e.Metrics()

	var wg sync.WaitGroup
	results := make([][]engine.AppendResult, len(devices))
	errs := make([]error, len(devices))
	for i, d := range devices {
		op := d.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(fmt.Sprint(i))})
		wg.Go(func() { results[i], errs[i] = e.Append(ctx, d.Actor, []model.Op{op}) })
	}
	awaitQueued(e, len(devices))
	hold.release()
	wg.Wait()
	<-done
	after := e.Metrics()
	if commits := after.Commits - before.Commits; commits != 2 {
		t.Fatalf("%d commits for the held append and 16 queued ones, want 2 (group commit)", commits)
	}
	seqs := map[uint64]ulid.ULID{}
	for i, r := range results {
		if errs[i] != nil || r[0].Err != nil {
			t.Fatalf("append %d: %v %v", i, errs[i], r[0].Err)
		}
		seqs[r[0].Seq] = r[0].Op
	}
	for s := uint64(3); s <= 18; s++ {
		if _, ok := seqs[s]; !ok {
			t.Fatalf("seqs not dense: missing %d in %v", s, seqs)
		}
	}
	enginetest.MustCheck(t, e)
}

// runtimeGosched yields while polling a counter that other goroutines move;
// it never sleeps.
func runtimeGosched() { runtime.Gosched() }

// syncHold holds a commit in its WAL sync, so that the requests queued
// meanwhile form the next group: during starts f, whose commit's sync
// then waits for release.
type syncHold struct {
	armed   atomic.Bool
	entered chan struct{}
	gate    chan struct{}
}

func newSyncHold() *syncHold {
	return &syncHold{entered: make(chan struct{}, 1), gate: make(chan struct{})}
}

// fs is the engine's file system: in memory, with the hold.
func (h *syncHold) fs() vfs.FS {
	return errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) && vfsIsWAL(op.Path) && h.armed.CompareAndSwap(true, false) {
			h.entered <- struct{}{}
			<-h.gate
		}
		return nil
	}))
}

// during runs f on a goroutine of its own and returns once f's commit
// waits in its sync; the channel closes when f returns.
func (h *syncHold) during(f func()) <-chan struct{} {
	h.armed.Store(true)
	done := make(chan struct{})
	go func() { f(); close(done) }()
	<-h.entered
	return done
}

// release lets the held sync go on.
func (h *syncHold) release() { close(h.gate) }

// again makes the hold ready for another during, after a release.
func (h *syncHold) again() { h.gate = make(chan struct{}) }

// inOneGroup runs calls in the commit group after held's (a write whose
// sync the hold keeps), each queued after the one before, and returns once
// all have returned, the hold ready for another group.
func (h *syncHold) inOneGroup(e *engine.Engine, held func(), calls ...func()) {
	done := h.during(held)
	var wg sync.WaitGroup
	for i, call := range calls {
		wg.Go(call)
		awaitQueued(e, i+1)
	}
	h.release()
	wg.Wait()
	<-done
	h.again()
}

// awaitQueued waits, without sleeping, until n write requests wait for
// the writer.
func awaitQueued(e *engine.Engine, n int) {
	for e.Metrics().Queued < n {
		runtimeGosched()
	}
}

// TestLoginsInOneGroupKeepTheDeviceLimit: logins of one user that share a
// group commit count each other's new devices against MaxDevicesPerUser;
// each read the store as it was before the group, and all were taken.
func TestLoginsInOneGroupKeepTheDeviceLimit(t *testing.T) {
	hold := newSyncHold()
	e := enginetest.New(t, func(o *engine.Options) { o.FS, o.MaxDevicesPerUser = hold.fs(), 2 })
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	done := hold.during(func() { alice.Send(conv, "held") })
	const logins = 5
	errs := make([]error, logins)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { _, errs[i] = e.Login(ctx, "alice", "correct horse", fmt.Sprint("device ", i)) })
	}
	awaitQueued(e, logins)
	hold.release()
	wg.Wait()
	<-done
	taken := 0
	for _, err := range errs {
		switch {
		case err == nil:
			taken++
		case !errors.Is(err, engine.ErrTooMany):
			t.Fatalf("login: %v", err)
		}
	}
	devices, err := e.Devices(alice.Actor)
	if err != nil {
		t.Fatal(err)
	}
	if taken != 1 || len(devices) != 2 {
		t.Fatalf("%d of %d logins taken, %d devices; want 1 taken and the limit of 2", taken, logins, len(devices))
	}
}

// TestPasswordChangeAndLoginInOneGroup: a login and a password change of
// one user that share a group commit, in either order. A change after the
// login in the group (whose device its scan of the store before the group
// would miss) asks to be tried again, and then signs that device out too;
// a login after the change in the group, which checked the old password,
// is refused.
func TestPasswordChangeAndLoginInOneGroup(t *testing.T) {
	for _, loginFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("login first %v", loginFirst), func(t *testing.T) {
			hold := newSyncHold()
			e := enginetest.New(t, func(o *engine.Options) { o.FS = hold.fs() })
			alice := enginetest.Register(t, e, "alice")
			conv := alice.Create("c")
			var (
				loginErr  error
				creds     engine.Credentials
				changeErr error
			)
			login := func() { creds, loginErr = e.Login(ctx, "alice", "correct horse", "new") }
			change := func() {
				_, changeErr = e.ChangePassword(ctx, alice.Actor, "correct horse", "battery staple", true)
			}
			first, second := change, login
			if loginFirst {
				first, second = login, change
			}
			hold.inOneGroup(e, func() { alice.Send(conv, "held") }, first, second)
			if loginFirst {
				if loginErr != nil || !errors.Is(changeErr, engine.ErrPrecondition) {
					t.Fatalf("login %v, change %v; want the login in, the change asked to go again", loginErr, changeErr)
				}
				if n, err := e.ChangePassword(ctx, alice.Actor, "correct horse", "battery staple", true); err != nil || n != 1 {
					t.Fatalf("the change again: %d, %v; want the new device signed out", n, err)
				}
				if _, err := e.Authenticate(creds.Token); !errors.Is(err, engine.ErrUnauthenticated) {
					t.Fatalf("the device the login added, after the change: %v", err)
				}
			} else if changeErr != nil || !errors.Is(loginErr, engine.ErrUnauthenticated) {
				t.Fatalf("change %v, login %v; want the change in, the login refused", changeErr, loginErr)
			}
			enginetest.MustCheck(t, e)
		})
	}
}

// TestLoginAfterARefusedChangeInOneGroup: a password change that asks to
// be tried again (a login before it in the group) claims nothing: a login
// after it in the same group, with the password unchanged, is taken.
func TestLoginAfterARefusedChangeInOneGroup(t *testing.T) {
	hold := newSyncHold()
	e := enginetest.New(t, func(o *engine.Options) { o.FS = hold.fs() })
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	var login1, login2, change error
	hold.inOneGroup(e, func() { alice.Send(conv, "held") },
		func() { _, login1 = e.Login(ctx, "alice", "correct horse", "one") },
		func() { _, change = e.ChangePassword(ctx, alice.Actor, "correct horse", "battery staple", true) },
		func() { _, login2 = e.Login(ctx, "alice", "correct horse", "two") })
	if login1 != nil || !errors.Is(change, engine.ErrPrecondition) || login2 != nil {
		t.Fatalf("login %v, change %v, login %v; want both logins in, the change asked to go again", login1, change, login2)
	}
}

// TestBlocksInOneGroup: later requests of a group see its blocks: an add
// after the added user's block of its author is rejected, one after an
// unblock goes; and blocks of one user in one group count each other
// against MaxBlocked.
func TestBlocksInOneGroup(t *testing.T) {
	hold := newSyncHold()
	e := enginetest.New(t, func(o *engine.Options) { o.FS = hold.fs() })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c")
	other := alice.Create("held")
	inGroup := func(first, second func()) {
		hold.inOneGroup(e, func() { alice.Send(other, "held") }, first, second)
	}
	add := alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: bob.Actor.User, Role: model.RoleMember})
	var blockErr, addErr error
	var res []engine.AppendResult
	inGroup(func() { blockErr = e.Block(ctx, bob.Actor, alice.Actor.User) },
		func() { res, addErr = e.Append(ctx, alice.Actor, []model.Op{add}) })
	if blockErr != nil || addErr != nil || !errors.Is(res[0].Err, engine.ErrForbidden) {
		t.Fatalf("block %v; the add after it in the group: %+v, %v; want it rejected", blockErr, res, addErr)
	}
	inGroup(func() { blockErr = e.Unblock(ctx, bob.Actor, alice.Actor.User) },
		func() { res, addErr = e.Append(ctx, alice.Actor, []model.Op{add}) })
	if blockErr != nil || addErr != nil || res[0].Err != nil {
		t.Fatalf("unblock %v; the add after it in the group: %+v, %v; want it stored", blockErr, res, addErr)
	}

	// The limit: one short of it, then two blocks in one group.
	fill := make([]ulid.ULID, engine.MaxBlocked-1)
	for i := range fill {
		fill[i] = ulid.Make()
	}
	if err := engine.PutBlocks(e, alice.Actor.User, fill); err != nil {
		t.Fatal(err)
	}
	carol, dave := enginetest.Register(t, e, "carol"), enginetest.Register(t, e, "dave")
	var err1, err2 error
	inGroup(func() { err1 = e.Block(ctx, alice.Actor, carol.Actor.User) },
		func() { err2 = e.Block(ctx, alice.Actor, dave.Actor.User) })
	if err1 != nil || !errors.Is(err2, engine.ErrTooMany) {
		t.Fatalf("two blocks past the limit in one group: %v, %v; want the first, the second ErrTooMany", err1, err2)
	}
}

// TestUnblockOfNoOneWritesNothing: an unblock of a user not blocked
// commits nothing.
func TestUnblockOfNoOneWritesNothing(t *testing.T) {
	e := enginetest.New(t)
	bob := enginetest.Register(t, e, "bob")
	before := e.Metrics().Commits
	for range 10 {
		if err := e.Unblock(ctx, bob.Actor, ulid.Make()); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.Metrics().Commits - before; n != 0 {
		t.Fatalf("10 unblocks of no one: %d commits; want none", n)
	}
}
