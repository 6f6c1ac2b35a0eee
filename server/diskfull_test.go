package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/clock"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// A write refused for want of disk space is unavailable, which clients
// retry, and says why.
func TestDiskNearlyFullIsUnavailable(t *testing.T) {
	fs := vfs.NewMem()
	engineClock := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	srv := servertest.New(t, servertest.Config{Engine: func(o *engine.Options) {
		o.FS, o.Clock, o.MinFreeDisk = fs, engineClock, 100<<20
	}})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 10 << 20, TotalBytes: 10 << 30})
	engineClock.Advance(time.Second)
	_, err := alice.Sync.Push(context.Background(), &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{alice.op(conv, msg("hi"))}}}})
	mustCode(t, "a push with 10 MiB free", err, connect.CodeUnavailable)
	if !strings.Contains(err.Error(), "disk is nearly full") || !strings.Contains(err.Error(), "retry later") {
		t.Fatalf("a push with 10 MiB free: %v, want it to say the disk is nearly full", err)
	}
	if !srv.Engine.DiskLow() {
		t.Fatal("the engine does not say the disk is low")
	}
}
