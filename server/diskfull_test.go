package server_test

import (
	"context"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/prometheus/common/expfmt"

	"github.com/ferrysync/ferry/engine/enginetest"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// A write refused for want of disk space is unavailable, which clients
// retry, and says why. It spends nothing of the push limit: the same ops
// pushed again once space is freed go at once.
func TestDiskNearlyFullIsUnavailable(t *testing.T) {
	srv, disk := diskServer(t)
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	ops := messages(alice, conv, 60, 60<<10) // 960 of the user's 999 left
	disk.Fill(true)
	_, err := alice.Sync.Push(context.Background(), &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: ops}}})
	mustCode(t, "a push with 10 MiB free", err, connect.CodeUnavailable)
	if !strings.Contains(err.Error(), "disk is nearly full") || !strings.Contains(err.Error(), "retry later") {
		t.Fatalf("a push with 10 MiB free: %v, want it to say the disk is nearly full", err)
	}
	if !srv.Engine.DiskLow() {
		t.Fatal("the engine does not say the disk is low")
	}
	disk.Fill(false)
	if res := alice.push(conv, ops...); res[59].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED || res[59].GetSeq() != 61 {
		t.Fatalf("the ops pushed again with room: the last %v, want accepted at seq 61", res[59])
	}
}

// On a Sync stream whose client asked for it (Hello.retry_later), a push
// refused for want of disk space does not end the session: each valid op
// is answered RETRY_LATER, with when to push again, and a malformed one
// INVALID as ever. Nothing is stored, nothing is spent of the push limit,
// and the session stays live: the same ops pushed again once space is
// freed are accepted, on the same stream, which then goes on receiving
// others' ops live (the ops pushed first do not stay in its set of ops in
// flight, which would hold its live rounds back). Without retry_later the
// session ends unavailable, as it did for every client before.
func TestDiskNearlyFullDefersStreamPushes(t *testing.T) {
	// Ops of 60 KiB cost 16 of the push limit each; those of a few bytes
	// are few enough that the live round of their conversation leaves them
	// out (skip_own_ops), which it does not for a round of 3.6 MB.
	for _, tc := range []struct {
		name                string
		retryLater, skipOwn bool
		ops, body           int
	}{
		{"retry_later", true, false, 60, 60 << 10},
		{"retry_later and skip_own_ops", true, true, 3, 10},
		{"without retry_later", false, false, 3, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Room for the conversation's 2 ops, and up to the 961 of the
			// push turned away (60 ops of 60 KiB and a malformed one),
			// which the same ops pushed again would find spent if the
			// first push had kept them.
			srv, disk := diskServer(t)
			alice := newDev(t, srv.Register("alice"))
			bob := newDev(t, srv.Register("bob"))
			conv := alice.createConv("c", bob)
			h := hello("", 0)
			h.RetryLater, h.SkipOwnOps, h.PackedOps = tc.retryLater, tc.skipOwn, tc.skipOwn
			s := alice.open(h)
			s.untilCaughtUp()

			disk.Fill(true)
			ops := messages(alice, conv, tc.ops, tc.body)
			hi, bad := ops[0], &ferryv1.Op{Id: "not a ulid", Dot: 9999}
			s.push(1, conv, append(ops, bad)...)
			if !tc.retryLater {
				err := s.endErr()
				mustCode(t, "a stream's push with 10 MiB free", err, connect.CodeUnavailable)
				if !strings.Contains(err.Error(), "disk is nearly full") {
					t.Fatalf("the session ended with %v, want it to say the disk is nearly full", err)
				}
				return
			}
			r := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
			if r.GetRequestId() != 1 || len(r.GetResults()) != tc.ops+1 {
				t.Fatalf("push result %d with %d results, want request 1's %d", r.GetRequestId(), len(r.GetResults()), tc.ops+1)
			}
			for i, got := range r.GetResults()[:tc.ops] {
				if got.GetStatus() != ferryv1.OpStatus_OP_STATUS_RETRY_LATER || got.GetOpId() != ops[i].GetId() || got.GetSeq() != 0 {
					t.Fatalf("message %d with 10 MiB free: %v, want RETRY_LATER", i, got)
				}
				// The first says why, once for the push.
				if says := strings.Contains(got.GetMessage(), "disk is nearly full"); says != (i == 0) || !says && got.GetMessage() != "" {
					t.Fatalf("message %d with 10 MiB free answered %q, want the reason in the first result only", i, got.GetMessage())
				}
			}
			if got := r.GetResults()[tc.ops]; got.GetStatus() != ferryv1.OpStatus_OP_STATUS_REJECTED || got.GetReason() != ferryv1.RejectReason_REJECT_REASON_INVALID {
				t.Fatalf("the malformed op with 10 MiB free: %v, want INVALID", got)
			}
			if r.GetRetryAfterMs() != 15000 {
				t.Fatalf("retry_after_ms %d, want 15000", r.GetRetryAfterMs())
			}
			if m := srv.Server.Metrics(); m.PushOps["retry_later"] != uint64(tc.ops) || m.PushOps["rejected"] != 1 {
				t.Fatalf("push answers counted %v, want %d retry_later and one rejected", m.PushOps, tc.ops)
			}

			// Space is freed: the same ops, pushed again on the same
			// session, are stored for the first time, and come to bob.
			disk.Fill(false)
			s.push(2, conv, ops...)
			r = s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult()
			last := uint64(2 + tc.ops)
			if got := r.GetResults()[tc.ops-1]; r.GetRequestId() != 2 || got.GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED || got.GetSeq() != last {
				t.Fatalf("the messages pushed again with room: the last %v (request %d), want ACCEPTED at seq %d", got, r.GetRequestId(), last)
			}
			if r.GetRetryAfterMs() != 0 {
				t.Fatalf("retry_after_ms %d on a push that was taken", r.GetRetryAfterMs())
			}
			seq := bob.send(conv, "and back")
			s.until(func(*ferryv1.SyncResponse) bool { _, ok := s.held[conv][seq]; return ok })
			b := bob.open(hello("", 0))
			b.untilCaughtUp()
			b.holds(conv, 1, last+1)
			if got := b.held[conv][3]; got != hi.GetId() {
				t.Fatalf("bob holds %s at seq 3, want the message %s", got, hi.GetId())
			}
		})
	}
}

// diskServer starts a server on a disk the test fills and frees, with a
// push limit of 1 op a second after a burst of 1,000, and fails the test
// when a push waits for the limit: in these tests, only a push that kept
// what a refused one spent would.
func diskServer(t *testing.T) (*servertest.Server, *enginetest.Disk) {
	disk := enginetest.NewDisk()
	srv := servertest.New(t, servertest.Config{
		Engine: disk.Options,
		Server: func(o *server.Options) { o.PushLimit, o.PushBurst = 1, 1000 },
	})
	server.OnThrottle(srv.Server, func() {
		t.Errorf("a push waited for the push limit: the refused push spent it")
		srv.Clock.Advance(time.Hour)
	})
	return srv, disk
}

// TestDiskFreeIsMeasured: /metrics gives the free space and the free space
// below which new ops are refused, so that an operator can alert before
// they are; the README names both.
func TestDiskFreeIsMeasured(t *testing.T) {
	srv, disk := diskServer(t)
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		full       bool
		free, keep float64
	}{{false, 10 << 30, 100 << 20}, {true, 10 << 20, 100 << 20}} {
		disk.Fill(tc.full)
		rec := httptest.NewRecorder()
		srv.Server.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		families, err := new(expfmt.TextParser).TextToMetricFamilies(strings.NewReader(rec.Body.String()))
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range map[string]float64{"ferry_store_disk_free_bytes": tc.free, "ferry_store_disk_min_free_bytes": tc.keep} {
			f := families[name]
			if f == nil || len(f.GetMetric()) != 1 || f.GetMetric()[0].GetGauge().GetValue() != want {
				t.Errorf("full %v: %s is %v, want %v", tc.full, name, f, want)
			}
			if !strings.Contains(string(readme), "`"+name) {
				t.Errorf("README.md does not document %s", name)
			}
		}
	}
}

// TestSignInsGoOnWhileDiskIsLow: while new ops are refused for want of
// disk space, registrations and sign-ins, small writes the room kept free
// is for, go on, as the README says.
func TestSignInsGoOnWhileDiskIsLow(t *testing.T) {
	srv, disk := diskServer(t)
	srv.Register("alice")
	disk.Fill(true)
	if !srv.Engine.DiskLow() {
		t.Fatal("the disk is not low")
	}
	if _, err := srv.Clients("").Account.Register(context.Background(), &ferryv1.RegisterRequest{Username: "bob", Password: "correct horse"}); err != nil {
		t.Fatalf("register with the disk low: %v", err)
	}
	if _, err := srv.Clients("").Account.Login(context.Background(), &ferryv1.LoginRequest{Username: "alice", Password: "correct horse"}); err != nil {
		t.Fatalf("login with the disk low: %v", err)
	}
}
