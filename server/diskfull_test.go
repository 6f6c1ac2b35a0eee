package server_test

import (
	"context"
	"fmt"
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

// On a Sync stream, a push refused for want of disk space does not end
// the session: each valid op is answered RETRY_LATER, with when to push
// again, and a malformed one INVALID as ever. Nothing is stored, the
// session stays live, and the same ops pushed again once space is freed
// are accepted, on the same stream.
func TestDiskNearlyFullDefersStreamPushes(t *testing.T) {
	for _, skipOwn := range []bool{false, true} {
		t.Run(fmt.Sprintf("skip_own_ops=%v", skipOwn), func(t *testing.T) {
			fs := vfs.NewMem()
			engineClock := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
			srv := servertest.New(t, servertest.Config{Engine: func(o *engine.Options) {
				o.FS, o.Clock, o.MinFreeDisk = fs, engineClock, 100<<20
			}})
			alice := newDev(t, srv.Register("alice"))
			bob := newDev(t, srv.Register("bob"))
			conv := alice.createConv("c", bob)
			h := hello("", 0)
			h.SkipOwnOps, h.PackedOps = skipOwn, skipOwn
			s := alice.open(h)
			s.untilCaughtUp()

			fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 10 << 20, TotalBytes: 10 << 30})
			engineClock.Advance(time.Second)
			hi, bad := alice.op(conv, msg("hi")), &ferryv1.Op{Id: "not a ulid", Dot: 99}
			s.push(1, conv, hi, bad)
			r := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
			if r.GetRequestId() != 1 || len(r.GetResults()) != 2 {
				t.Fatalf("push result %d with %d results, want request 1's two", r.GetRequestId(), len(r.GetResults()))
			}
			if got := r.GetResults()[0]; got.GetStatus() != ferryv1.OpStatus_OP_STATUS_RETRY_LATER || got.GetOpId() != hi.GetId() ||
				got.GetSeq() != 0 || !strings.Contains(got.GetMessage(), "disk is nearly full") {
				t.Fatalf("the message with 10 MiB free: %v, want RETRY_LATER saying the disk is nearly full", got)
			}
			if got := r.GetResults()[1]; got.GetStatus() != ferryv1.OpStatus_OP_STATUS_REJECTED || got.GetReason() != ferryv1.RejectReason_REJECT_REASON_INVALID {
				t.Fatalf("the malformed op with 10 MiB free: %v, want INVALID", got)
			}
			if r.GetRetryAfterMs() != 15000 {
				t.Fatalf("retry_after_ms %d, want 15000", r.GetRetryAfterMs())
			}
			if m := srv.Server.Metrics(); m.PushOps["retry_later"] != 1 || m.PushOps["rejected"] != 1 {
				t.Fatalf("push answers counted %v, want one retry_later and one rejected", m.PushOps)
			}

			// Space is freed: the same op, pushed again on the same
			// session, is stored for the first time, and comes to bob.
			fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 10 << 30, TotalBytes: 10 << 30})
			engineClock.Advance(time.Second)
			s.push(2, conv, hi)
			r = s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
			if got := r.GetResults()[0]; r.GetRequestId() != 2 || got.GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED || got.GetSeq() != 3 {
				t.Fatalf("the message pushed again with room: %v (request %d), want ACCEPTED at seq 3", got, r.GetRequestId())
			}
			if r.GetRetryAfterMs() != 0 {
				t.Fatalf("retry_after_ms %d on a push that was taken", r.GetRetryAfterMs())
			}
			b := bob.open(hello("", 0))
			b.untilCaughtUp()
			b.holds(conv, 1, 3)
			if got := b.held[conv][3]; got != hi.GetId() {
				t.Fatalf("bob holds %s at seq 3, want the message %s", got, hi.GetId())
			}
		})
	}
}
