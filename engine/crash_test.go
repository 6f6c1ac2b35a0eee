package engine_test

import (
	"errors"
	"flag"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/clock"
)

var crashSeeds = flag.Int("crash.seeds", 1, "crash-test seeds per configuration (make test-long raises it)")

// crasher counts write operations on the filesystem and, at the k-th,
// takes a crash clone: the filesystem as a power loss at that moment
// would leave it.
type crasher struct {
	mem      *vfs.MemFS
	k        int64
	unsynced int
	rng      *rand.Rand

	writes  atomic.Int64
	sstAt   atomic.Int64 // the first write to an sstable: a flush is under way
	mu      sync.Mutex
	clone   *vfs.MemFS
	crashed atomic.Bool
}

func (c *crasher) MaybeError(op errorfs.Op) error {
	if op.Kind.ReadOrWrite() != errorfs.OpIsWrite {
		return nil
	}
	n := c.writes.Add(1)
	if strings.HasSuffix(op.Path, ".sst") {
		c.sstAt.CompareAndSwap(0, n)
	}
	if n == c.k {
		// Raise the flag before cloning: an append that returns after this
		// point counts as in flight even if its sync makes it into the
		// clone (it must then be there at most once); one that returned
		// before the flag synced before the clone, so it must be there.
		c.crashed.Store(true)
		c.mu.Lock()
		c.clone = c.mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: c.unsynced, RNG: c.rng})
		c.mu.Unlock()
	}
	return nil
}

func (c *crasher) String() string { return "crasher" }

// push is one Append of the workload and what came of it.
type push struct {
	dev     *enginetest.Device
	ops     []model.Op
	res     []engine.AppendResult
	acked   bool // returned before the crash clone was taken
	started bool // started before the crash clone was taken
}

// crashWorkload is a small workload touching every kind of write: accounts,
// creation, membership, messages, edits, reactions, a delete that erases
// bodies, markers, and a removal.
func crashWorkload(t *testing.T, e *engine.Engine, c *crasher) []*push {
	var pushes []*push
	do := func(d *enginetest.Device, ops ...model.Op) *push {
		p := &push{dev: d, ops: ops, started: !c.crashed.Load()}
		res, err := e.Append(ctx, d.Actor, ops)
		if err != nil {
			t.Fatalf("append: %v", err)
		}
		p.res, p.acked = res, !c.crashed.Load()
		for _, r := range res {
			if r.Err != nil {
				t.Fatalf("append %s: %v", r.Op, r.Err)
			}
		}
		pushes = append(pushes, p)
		return p
	}
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := ulid.Make()
	do(alice, alice.Op(conv, model.Op{Kind: model.KindCreate, Title: "crash"}),
		alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: bob.Actor.User, Role: model.RoleMember}))
	var msgs []model.Op
	for i := range 4 {
		m := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte{'a', byte('0' + i)}})
		do(alice, m)
		msgs = append(msgs, m)
		do(bob, bob.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte{'b', byte('0' + i)}}),
			bob.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte{'c', byte('0' + i)}}))
	}
	do(alice, alice.Op(conv, model.Op{Kind: model.KindEdit, Target: msgs[0].ID, Body: []byte("edited")}))
	do(bob, bob.Op(conv, model.Op{Kind: model.KindReactionAdd, Target: msgs[0].ID, ReactionKey: "+1"}))
	do(alice, alice.Op(conv, model.Op{Kind: model.KindDelete, Target: msgs[1].ID}))
	if err := e.Mark(ctx, bob.Actor, []engine.Marker{{Conv: conv, Delivered: 8, Read: 8}}); err != nil {
		t.Fatal(err)
	}
	do(alice, alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}),
		alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("after")}))
	// Enough bytes to fill the 1 MiB memtable: crash points inside a flush
	// (sstable, MANIFEST and WAL rotation writes).
	for i := range 24 {
		big := make([]byte, 48<<10)
		big[0] = byte(i)
		do(alice, alice.Op(conv, model.Op{Kind: model.KindMessage, Body: big}))
	}
	return pushes
}

// TestCrashAtEveryWrite crashes at every write operation of the workload,
// keeping no unsynced data and then half of it, reopens the crash clone and
// checks: every acknowledged op is there with its seq, the in-flight ops
// are there at most once, the derived indexes agree with the log, and
// retrying everything stores nothing twice.
func TestCrashAtEveryWrite(t *testing.T) {
	crashPoints, inFlush := 0, 0
	for _, unsynced := range []int{0, 50} {
		for seed := range *crashSeeds {
			for k := int64(1); ; k++ {
				crashed, flushing := crashOnce(t, k, unsynced, int64(seed))
				if !crashed {
					t.Logf("unsynced %d%%, seed %d: %d crash points", unsynced, seed, k-1)
					break
				}
				crashPoints++
				if flushing {
					inFlush++
				}
			}
		}
	}
	if inFlush == 0 {
		t.Fatal("no crash point fell in a memtable flush: the workload no longer fills the memtable")
	}
	t.Logf("%d crash points at or after the first sstable write", inFlush)
	if crashPoints < 50 {
		t.Fatalf("only %d crash points: the workload no longer reaches the store", crashPoints)
	}
	t.Logf("%d crash points survived", crashPoints)
}

// crashOnce runs the workload crashing at write k; it reports false when
// the workload had fewer than k writes, and whether the crash came at or
// after the first sstable write.
func crashOnce(t *testing.T, k int64, unsynced int, seed int64) (crashed, flushing bool) {
	mem := vfs.NewCrashableMem()
	c := &crasher{mem: mem, unsynced: unsynced, rng: rand.New(rand.NewPCG(uint64(seed), uint64(k)))}
	o := enginetest.Options(t, uint64(seed))
	o.FS = errorfs.Wrap(mem, c)
	o.MemTableSize = 1 << 20
	// bob's receipt waits (a durable TReceipts key) until the removal
	// moves the feed: crashes fall on both sides of it.
	o.ReceiptDelay, o.Clock = time.Hour, clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	c.writes.Store(0)
	c.k = k // crash points are counted from the first write of the workload
	pushes := crashWorkload(t, e, c)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if !c.crashed.Load() {
		return false, false
	}
	flushing = c.sstAt.Load() != 0 && c.sstAt.Load() <= k
	o2 := enginetest.Options(t, uint64(seed)+1)
	o2.FS = c.clone
	e2, err := engine.Open("db", o2)
	if err != nil {
		t.Fatalf("crash at write %d (unsynced %d%%): reopen: %v", k, unsynced, err)
	}
	defer e2.Close()
	if rep, err := e2.Check(); err != nil || rep.Err() != nil {
		t.Fatalf("crash at write %d (unsynced %d%%): indexes disagree with the log: %v %v", k, unsynced, err, rep.Err())
	}
	var conv ulid.ULID
	for _, p := range pushes {
		conv = p.ops[0].Conv
		if !p.acked {
			continue
		}
		for i, op := range p.ops {
			// Read as the author; alice stays a member, bob can read to
			// his removal, which came after all of his ops.
			page, err := e2.History(p.dev.Actor, conv, engine.HistoryQuery{After: p.res[i].Seq - 1, Limit: 1})
			if err != nil || len(page.Ops) != 1 || page.Ops[0].ID != op.ID {
				t.Fatalf("crash at write %d (unsynced %d%%): acked op %s at seq %d is lost: %v %v", k, unsynced, op.ID, p.res[i].Seq, err, page.Ops)
			}
		}
	}
	// Retry every op that was acknowledged or in flight at the crash, as
	// clients would: acked ops come back as duplicates with their seq, the
	// in-flight ones are stored once.
	for _, p := range pushes {
		if !p.started {
			break // a client retries only what it sent before the crash
		}
		res, err := e2.Append(ctx, p.dev.Actor, p.ops)
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		for i, r := range res {
			if p.acked && (!r.Duplicate || r.Seq != p.res[i].Seq) {
				t.Fatalf("crash at write %d: retry of acked op %s: %+v, want duplicate of seq %d", k, r.Op, r, p.res[i].Seq)
			}
			if r.Err != nil {
				t.Fatalf("crash at write %d: retry of %s: %v", k, r.Op, r.Err)
			}
		}
	}
	if page, err := e2.History(pushes[0].dev.Actor, conv, engine.HistoryQuery{Limit: 1000}); err == nil {
		seen := map[ulid.ULID]bool{}
		for _, op := range page.Ops {
			if seen[op.ID] {
				t.Fatalf("crash at write %d: op %s stored twice", k, op.ID)
			}
			seen[op.ID] = true
		}
	}
	if rep, err := e2.Check(); err != nil || rep.Err() != nil {
		t.Fatalf("crash at write %d: after retries: %v %v", k, err, rep.Err())
	}
	return true, flushing
}

// TestFsyncFailureNeverAcks fails the WAL sync under a commit: the write
// must not be acknowledged, the engine must stop (and say so once), and a
// restart must find every earlier acknowledged op.
func TestFsyncFailureNeverAcks(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var failSync atomic.Bool
	var injected atomic.Int32
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failSync.Load() && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) && vfsIsWAL(op.Path) {
			injected.Add(1)
			return errorfs.ErrInjected
		}
		return nil
	})
	var fatal atomic.Int32
	o := enginetest.Options(t, 7)
	o.FS = errorfs.Wrap(mem, inj)
	o.OnFatal = func(error) { fatal.Add(1) }
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	acked := alice.Send(conv, "durable")

	failSync.Store(true)
	lost := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("never acked")})
	res, err := e.Append(ctx, alice.Actor, []model.Op{lost})
	if !errors.Is(err, engine.ErrFailed) || res != nil {
		t.Fatalf("append under a failed fsync: %v %+v, want ErrFailed and no result", err, res)
	}
	if injected.Load() == 0 {
		t.Fatal("the fault was never injected: the test proves nothing")
	}
	if fatal.Load() != 1 || e.Failed() == nil {
		t.Fatalf("engine did not stop: OnFatal called %d times, Failed() = %v", fatal.Load(), e.Failed())
	}
	// Fail-stop: nothing more is acknowledged, even after the disk recovers.
	failSync.Store(false)
	if _, err := e.Append(ctx, alice.Actor, []model.Op{alice.Op(conv, model.Op{Kind: model.KindMessage})}); !errors.Is(err, engine.ErrFailed) {
		t.Fatalf("append after the failure: %v, want ErrFailed", err)
	}
	if err := e.Mark(ctx, alice.Actor, []engine.Marker{{Conv: conv, Read: 1}}); !errors.Is(err, engine.ErrFailed) {
		t.Fatalf("mark after the failure: %v, want ErrFailed", err)
	}

	// Restart from what the disk held.
	o2 := enginetest.Options(t, 8)
	o2.FS = mem.CrashClone(vfs.CrashCloneCfg{})
	e2, err := engine.Open("db", o2)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	page, err := e2.History(alice.Actor, conv, engine.HistoryQuery{})
	if err != nil {
		t.Fatal(err)
	}
	found := map[ulid.ULID]int{}
	for _, op := range page.Ops {
		found[op.ID]++
	}
	if found[acked.ID] != 1 || found[lost.ID] > 1 {
		t.Fatalf("after restart: acked op %d times, unacked op %d times", found[acked.ID], found[lost.ID])
	}
	enginetest.MustCheck(t, e2)
}

func vfsIsWAL(path string) bool {
	return len(path) > 4 && path[len(path)-4:] == ".log"
}

// TestNewEpochSurvivesAPowerLoss: the mark that has a backup, or a store
// marked by StartNewEpochAtNextOpen, open in a new epoch is on disk when
// the call returns, name and all; so is its removal when the store opens
// in its new epoch, which a second power loss then keeps. A backup that
// fails before its rename leaves nothing under its name.
func TestNewEpochSurvivesAPowerLoss(t *testing.T) {
	mem := vfs.NewCrashableMem()
	var failRename atomic.Bool
	o := enginetest.Options(t, 1)
	o.FS = errorfs.Wrap(mem, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if failRename.Load() && op.Kind == errorfs.OpRename {
			return errors.New("injected: rename failed")
		}
		return nil
	}))
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	old := e.Epoch()
	failRename.Store(true)
	if err := e.Backup("failed"); err == nil {
		t.Fatal("a backup whose rename failed reports no error")
	}
	failRename.Store(false)
	for _, name := range []string{"failed", "failed.ferry-backup-partial"} {
		if _, err := mem.Stat(name); err == nil {
			t.Errorf("the failed backup left %s", name)
		}
	}
	if err := e.Backup("backup/"); err != nil { // the name of a folder, as an operator may write it
		t.Fatal(err)
	}
	if err := e.Backup("backup"); err == nil {
		t.Fatal("a backup over an existing one reports no error")
	}
	if err := e.StartNewEpochAtNextOpen(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// Power lost: what was not synced is gone, names in folders too.
	lost := mem.CrashClone(vfs.CrashCloneCfg{})
	for _, dir := range []string{"db", "backup"} {
		o := enginetest.Options(t, 2)
		o.FS = lost
		e, err := engine.Open(dir, o)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		opened := e.Epoch()
		if opened == old {
			t.Errorf("%s: opened in the old epoch %s after a power loss", dir, old)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		// Lost again: the store stays in the epoch it opened in.
		o.FS = lost.CrashClone(vfs.CrashCloneCfg{})
		if e, err = engine.Open(dir, o); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if e.Epoch() != opened {
			t.Errorf("%s: a second power loss moved the epoch from %s to %s", dir, opened, e.Epoch())
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
