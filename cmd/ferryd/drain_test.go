package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/ferrysync/ferry/engine"
)

// TestStoreFailsWhileDraining: a storage failure during --shutdown-delay
// cuts the delay short, acknowledges nothing, and ferryd stops with the
// failure as its error, not as after a plain signal.
func TestStoreFailsWhileDraining(t *testing.T) {
	var failSync atomic.Bool
	var injected atomic.Int32
	testEngineOptions = func(o *engine.Options) {
		o.FS = errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
			if failSync.Load() && (op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData) && strings.HasSuffix(op.Path, ".log") {
				injected.Add(1)
				return errorfs.ErrInjected
			}
			return nil
		}))
	}
	defer func() { testEngineOptions = nil }()
	signalled, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	logs := &syncBuffer{w: make(chan struct{}, 1)}
	url, done := serving(t, signalled, []string{"--addr", "127.0.0.1:0", "--data", t.TempDir(), "--allow-registration",
		"--password-memory-kib", "64", "--shutdown-delay", "1h", "--log-level", "info"}, logs)
	register := func(name string) (int, string) {
		t.Helper()
		resp, err := http.Post(url+"/ferry.v1.AccountService/Register", "application/json",
			strings.NewReader(`{"username":"`+name+`","password":"correct horse"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := register("alice"); code != http.StatusOK {
		t.Fatalf("register before the signal: %d %s", code, body)
	}
	cancel(stopSignal{syscall.SIGTERM})
	for !strings.Contains(logs.String(), "draining") {
		select {
		case <-logs.w:
		case err := <-done:
			t.Fatalf("ferryd stopped without draining: %v\n%s", err, logs.String())
		}
	}
	// Still serving; the WAL's sync now fails under the next commit.
	failSync.Store(true)
	if code, body := register("bob"); code == http.StatusOK {
		t.Fatalf("a registration was acknowledged while its commit's sync failed: %s", body)
	}
	if injected.Load() == 0 {
		t.Fatal("the fault was never injected: the test proves nothing")
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute): // a guard, not a wait: the delay is an hour
		t.Fatalf("ferryd went on draining after the store failed:\n%s", logs.String())
	}
	if err == nil || !strings.Contains(err.Error(), "storage failed") {
		t.Fatalf("ferryd stopped with %v, want the storage failure", err)
	}
	if !strings.Contains(logs.String(), "draining cut short: the store failed") || !strings.Contains(logs.String(), "stopped") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}
