package engine_test

import (
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
	var hold atomic.Bool
	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	inj := errorfs.InjectorFunc(func(op errorfs.Op) error {
		if hold.Load() && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) && vfsIsWAL(op.Path) {
			hold.Store(false)
			entered <- struct{}{}
			<-gate
		}
		return nil
	})
	e := enginetest.New(t, func(o *engine.Options) { o.FS = errorfs.Wrap(vfs.NewMem(), inj) })
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("busy")
	devices := make([]*enginetest.Device, 16)
	for i := range devices {
		devices[i] = enginetest.Login(t, e, "alice")
	}

	// The first append's commit blocks in its WAL sync.
	hold.Store(true)
	done := make(chan struct{})
	go func() { alice.Send(conv, "first"); close(done) }()
	<-entered
	before := e.Metrics()

	var wg sync.WaitGroup
	results := make([][]engine.AppendResult, len(devices))
	errs := make([]error, len(devices))
	for i, d := range devices {
		op := d.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(fmt.Sprint(i))})
		wg.Go(func() { results[i], errs[i] = e.Append(ctx, d.Actor, []model.Op{op}) })
	}
	for e.Metrics().Queued < len(devices) {
		runtimeGosched()
	}
	close(gate)
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
