package engine

import (
	"context"
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestPasswordHashingIsBounded: with every hash slot taken, callers wait,
// and past the waiter cap they are refused at once instead of piling up
// (each hash takes megabytes).
func TestPasswordHashingIsBounded(t *testing.T) {
	e, err := Open("db", Options{FS: vfs.NewMem(), Logger: slog.New(slog.DiscardHandler), MaxPasswordHashes: 1,
		Password: PasswordParams{Time: 1, MemoryKiB: 64, Threads: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	hold, err := e.hashSlot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range maxHashWaiters {
		wg.Go(func() {
			if _, err := e.hashSlot(ctx); !errors.Is(err, context.Canceled) {
				t.Errorf("waiter: %v, want canceled", err)
			}
		})
	}
	for e.hashWaiters.Load() < maxHashWaiters {
		runtime.Gosched()
	}
	if _, err := e.hashSlot(context.Background()); !errors.Is(err, ErrTooMany) {
		t.Fatalf("one waiter too many: %v, want ErrTooMany", err)
	}
	cancel()
	wg.Wait()
	hold()
	release, err := e.hashSlot(context.Background())
	if err != nil {
		t.Fatalf("after the crowd left: %v", err)
	}
	release()
}
