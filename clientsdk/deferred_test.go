package clientsdk_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/internal/clock"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestDeferredPushesWaitOnALiveSession: while the server's disk is nearly
// full, it answers a pushed message RETRY_LATER. The device stays live on
// the same session, its status says why the message waits and when it
// goes again, it pushes again when that time comes (and waits again while
// the disk is still full), and once space is freed the message is sent.
// The session never ends: no Sync call fails.
func TestDeferredPushesWaitOnALiveSession(t *testing.T) {
	disk := enginetest.NewDisk()
	srv := servertest.New(t, servertest.Config{Engine: disk.Options})
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	// pushedAt holds when, on alice's clock, each push left her device.
	var mu sync.Mutex
	var pushedAt []time.Time
	tap := syncTap{next: srv.HTTP.Transport, seen: func(req *ferryv1.SyncRequest) {
		if req.GetPush() != nil {
			mu.Lock()
			pushedAt = append(pushedAt, fake.Now())
			mu.Unlock()
		}
	}}
	alice := device(t, srv, "alice", false, clientsdk.WithClock(fake),
		clientsdk.WithoutCompression(), clientsdk.WithHTTPClient(&http.Client{Transport: tap}))
	conv, err := alice.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "live", func() bool { return alice.Status().State == clientsdk.StateLive && alice.Status().Pending == 0 })
	mu.Lock()
	before := len(pushedAt) // the conversation's create
	mu.Unlock()

	disk.Fill(true)
	id, err := alice.Send(ctx, conv, []byte("kept for later"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	// deferred waits until the status says the message waits, with a
	// retry after since, and returns it.
	deferred := func(since time.Time) clientsdk.Status {
		t.Helper()
		var st clientsdk.Status
		waitFor(t, alice, "the push deferred", func() bool {
			st = alice.Status()
			return errors.Is(st.Err, clientsdk.ErrPushDeferred) && st.RetryAt.After(since)
		})
		if st.State != clientsdk.StateLive || st.Pending != 1 {
			t.Fatalf("status %+v while the push waits, want live with one pending", st)
		}
		if !strings.Contains(st.Err.Error(), "disk is nearly full") {
			t.Fatalf("status error %q, want the server's reason", st.Err)
		}
		// The server asks for 15 s; the device adds up to a fifth.
		if d := st.RetryAt.Sub(fake.Now()); d < 15*time.Second || d > 18*time.Second {
			t.Fatalf("pushes again in %v, want 15 to 18 s", d)
		}
		return st
	}
	start := fake.Now()
	st := deferred(time.Time{})
	retries := []time.Time{start, st.RetryAt}
	if s := status(t, alice, conv, id); s != clientsdk.StatusPending {
		t.Fatalf("message status %v, want pending", s)
	}

	// Still full when the time comes: pushed again, and deferred again.
	fake.Advance(st.RetryAt.Sub(fake.Now()))
	st = deferred(st.RetryAt)
	retries = append(retries, st.RetryAt)

	// Space is freed: the next push is taken.
	disk.Fill(false)
	fake.Advance(st.RetryAt.Sub(fake.Now()))
	waitFor(t, alice, "the message sent", func() bool { return alice.Status().Pending == 0 })
	if s := status(t, alice, conv, id); s != clientsdk.StatusSent {
		t.Fatalf("message status %v after space was freed, want sent", s)
	}
	if st := alice.Status(); st.Err != nil || !st.RetryAt.IsZero() || st.State != clientsdk.StateLive {
		t.Fatalf("status %+v once the message went, want live without an error", st)
	}
	// The message went three times, each when its time came: at once,
	// and at each RetryAt, never sooner.
	mu.Lock()
	if got := pushedAt[before:]; !slices.Equal(got, retries) {
		t.Errorf("pushes at %v, want %v", got, retries)
	}
	mu.Unlock()
	if m := srv.Server.Metrics(); m.PushOps["retry_later"] != 2 || m.Calls[ferryv1connect.SyncServiceSyncProcedure][connect.CodeUnavailable] != 0 {
		t.Fatalf("%d ops answered retry_later, Sync calls %v: want 2, and no session ended unavailable",
			m.PushOps["retry_later"], m.Calls[ferryv1connect.SyncServiceSyncProcedure])
	}
}

// TestSyncOnceSaysOpsWait: a SyncOnce cut while the server turns the
// device's ops away says so, and why, beside the context's error. The
// push holds two ops, of which the server's first answer says why.
func TestSyncOnceSaysOpsWait(t *testing.T) {
	disk := enginetest.NewDisk()
	srv := servertest.New(t, servertest.Config{Engine: disk.Options})
	alice := device(t, srv, "alice", false)
	conv, err := alice.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	disk.Fill(true)
	for _, text := range []string{"kept for later", "and this"} {
		if _, err := alice.Send(ctx, conv, []byte(text), "text/plain"); err != nil {
			t.Fatal(err)
		}
	}
	once, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- alice.SyncOnce(once) }()
	waitFor(t, alice, "the push deferred", func() bool { return errors.Is(alice.Status().Err, clientsdk.ErrPushDeferred) })
	cancel()
	err = <-done
	if !errors.Is(err, context.Canceled) || !errors.Is(err, clientsdk.ErrPushDeferred) || !strings.Contains(err.Error(), "disk is nearly full") {
		t.Fatalf("SyncOnce cut while its op waits: %v, want it to say the op waits, and why", err)
	}
}

// TestDeferredOpRefusedLaterClearsTheStatus: an op the push limit turned
// away, which the server then refuses for good when it goes again (its
// author was removed meanwhile), leaves the outbox as failed, and the
// status no longer says that ops wait.
func TestDeferredOpRefusedLaterClearsTheStatus(t *testing.T) {
	// The server's clock says when a push waits for the push limit: the
	// flood below, for 200 s.
	throttled := make(chan struct{}, 1)
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.PushLimit, o.PushBurst = 1, 1000
		o.Clock = longTimers{Fake: o.Clock.(*clock.Fake), armed: throttled}
		// The server's clock moves 300 s below, which sessions outlive.
		o.HeartbeatInterval = time.Hour
	}})
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	alice := device(t, srv, "alice", false, clientsdk.WithClock(fake))
	bob, conv := roomWithBob(t, srv)
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "the room", func() bool {
		c, err := alice.Conversation(conv)
		return err == nil && c.ID == conv && alice.Status().State == clientsdk.StateLive
	})

	// Another device of alice's pushes 300 ops of 12 KiB (1,200 of her
	// 1,000): it goes, and waits 200 s on the server's clock for the
	// debt, which turns her phone's push away.
	raw := srv.Login("alice", "raw")
	var ops []*ferryv1.Op
	for i := range 300 {
		ops = append(ops, &ferryv1.Op{Id: ulid.Make().String(), Dot: uint64(i + 1), Payload: &ferryv1.Op_Message{
			Message: &ferryv1.Message{Body: []byte(strings.Repeat("x", 12<<10)), ContentType: "text/plain"}}})
	}
	flood := make(chan error, 1)
	go func() {
		_, err := raw.Sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv.String(), Ops: ops}}})
		flood <- err
	}()
	select {
	case <-throttled:
	case <-time.After(60 * time.Second):
		t.Fatal("the flood did not wait for the push limit")
	}
	id, err := alice.Send(ctx, conv, []byte("turned away"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	var st clientsdk.Status
	waitFor(t, alice, "the push deferred", func() bool { st = alice.Status(); return errors.Is(st.Err, clientsdk.ErrPushDeferred) })
	if !strings.Contains(st.Err.Error(), "push limit") {
		t.Fatalf("status error %q, want the push limit", st.Err)
	}

	// Bob removes alice; the debt is repaid (the flood, which went on
	// waiting, is refused too); her message goes again, and is refused
	// for good, on the same session.
	if _, err := bob.RemoveMember(ctx, conv, lookup(t, bob, "alice")); err != nil {
		t.Fatal(err)
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Clock.Advance(300 * time.Second)
	if err := <-flood; err != nil {
		t.Fatalf("the flood: %v", err)
	}
	fake.Advance(st.RetryAt.Sub(fake.Now()))
	waitFor(t, alice, "the message refused", func() bool { f, err := alice.Failed(); return err == nil && len(f) == 1 && f[0].Op == id })
	if st := alice.Status(); st.Err != nil || !st.RetryAt.IsZero() || st.Pending != 0 {
		t.Fatalf("status %+v once the message was refused, want no error", st)
	}
	// Bob's SyncOnce sessions end, canceled or as the client closed them;
	// alice's lasts.
	for code, n := range srv.Server.Metrics().Calls[ferryv1connect.SyncServiceSyncProcedure] {
		if code != connect.CodeCanceled && code != 0 {
			t.Fatalf("%d Sync calls ended %v: want alice's session to have lasted", n, code)
		}
	}
}

// longTimers is a fake clock that says when a timer of 100 s or more is
// armed.
type longTimers struct {
	*clock.Fake
	armed chan<- struct{}
}

func (c longTimers) NewTimer(d time.Duration) clock.Timer {
	t := c.Fake.NewTimer(d)
	if d >= 100*time.Second {
		select {
		case c.armed <- struct{}{}:
		default:
		}
	}
	return t
}
