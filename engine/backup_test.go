package engine_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// TestBackupAndCheckWhileWriting: a backup and a check of an engine that
// is serving writes, as ferryd's control socket has them made, see the
// store at one commit: the backup holds every op acknowledged before it
// was asked for, and is consistent; the check finds nothing wrong
// mid-writes. The writers keep going until both are done, so that commits
// land while each reads.
func TestBackupAndCheckWhileWriting(t *testing.T) {
	o := enginetest.Options(t, 64)
	e := enginetest.Open(t, o)
	const writers = 4
	type writer struct {
		dev  *enginetest.Device
		conv ulid.ULID
	}
	var ws []writer
	for i := range writers {
		d := enginetest.Register(t, e, fmt.Sprintf("writer%d", i))
		ws = append(ws, writer{dev: d, conv: d.Create("busy")})
	}
	// acked carries each writer's acknowledged ops, in order; the writers
	// stop when stop closes, each after at most one more push.
	acked := make(chan model.Op, 64)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for _, w := range ws {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				op := w.dev.Op(w.conv, model.Op{Kind: model.KindMessage, Body: fmt.Appendf(nil, "message %d", i), ContentType: "text/plain"})
				res, err := e.Append(context.Background(), w.dev.Actor, []model.Op{op})
				if err == nil {
					err = res[0].Err
				}
				if err != nil {
					errs <- err
					return
				}
				op.Seq = res[0].Seq
				select {
				case acked <- op:
				case <-stop:
					return
				}
			}
		})
	}
	// before holds what was acknowledged before the backup was asked for.
	var before []model.Op
	take := func(n int) {
		t.Helper()
		for range n {
			select {
			case op := <-acked:
				before = append(before, op)
			case err := <-errs:
				t.Fatalf("a writer failed: %v", err)
			}
		}
	}
	take(100)
	if err := e.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	take(100) // the writers went on past the backup
	rep, err := e.Check()
	if err != nil {
		t.Fatal(err)
	}
	take(100) // and past the check
	close(stop)
	wg.Wait()
	if err := rep.Err(); err != nil {
		t.Errorf("a check while writing found problems: %v", err)
	}
	if rep.Ops < 100 {
		t.Errorf("the check counted %d ops; at least 100 were acknowledged before it", rep.Ops)
	}
	epoch := e.Epoch()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	b, err := engine.Open("backup", o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Epoch() == epoch {
		t.Errorf("the backup opened in its store's epoch %s; want a new one", epoch)
	}
	enginetest.MustCheck(t, b)
	reader := map[ulid.ULID]engine.Actor{}
	for _, w := range ws {
		reader[w.conv] = w.dev.Actor
	}
	for _, op := range before[:100] {
		page, err := b.History(reader[op.Conv], op.Conv, engine.HistoryQuery{After: op.Seq - 1, Limit: 1})
		if err != nil {
			t.Fatalf("history of %s in the backup: %v", op.Conv, err)
		}
		if len(page.Ops) != 1 || page.Ops[0].ID != op.ID {
			t.Fatalf("the backup lacks op %s (seq %d of %s), acknowledged before it was asked for: found %v", op.ID, op.Seq, op.Conv, enginetest.Text(page.Ops))
		}
	}
}
