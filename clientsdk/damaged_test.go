package clientsdk_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/server/servertest"
)

// reroute sends a device's requests to the server it is given last: the
// same store served again after a restart, at another address.
type reroute struct {
	mu  sync.Mutex
	srv *servertest.Server
}

func (r *reroute) to(srv *servertest.Server) {
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
}

func (r *reroute) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	srv := r.srv
	r.mu.Unlock()
	u, err := url.Parse(srv.URL)
	if err != nil {
		return nil, err
	}
	req = req.Clone(req.Context())
	req.URL.Scheme, req.URL.Host, req.Host = u.Scheme, u.Host, u.Host
	return srv.HTTP.Transport.RoundTrip(req)
}

// TestDamagedConversationOpsWait: a conversation damaged in the server's
// store takes no ops: the device keeps its ops there, pending, while its
// ops in other conversations go at once (the server answers the first
// RETRY_LATER with CONVERSATION_DAMAGED, which holds that conversation
// alone, not every push); once the store is repaired, its next session
// pushes them, and its catch-up brings the conversation back.
func TestDamagedConversationOpsWait(t *testing.T) {
	fs := vfs.NewMem()
	o := enginetest.Options(t, 1)
	o.FS = fs
	var eng *engine.Engine
	route := &reroute{}
	serve := func() {
		t.Helper()
		var err error
		if eng, err = engine.Open("db", o); err != nil {
			t.Fatal(err)
		}
		srv := servertest.New(t, servertest.Config{Use: eng})
		t.Cleanup(func() { _ = eng.Close() }) // after the server's cleanup: LIFO
		route.to(srv)
	}
	stop := func() {
		t.Helper()
		route.srv.Stop()
		if err := eng.Close(); err != nil {
			t.Fatal(err)
		}
	}
	serve()
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	alice := device(t, route.srv, "alice", false, clientsdk.WithClock(fake), clientsdk.WithHTTPClient(&http.Client{Transport: route}))
	good, err := alice.CreateConversation(ctx, "good")
	if err != nil {
		t.Fatal(err)
	}
	bad, err := alice.CreateConversation(ctx, "bad")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "live", func() bool { return alice.Status().State == clientsdk.StateLive && alice.Status().Pending == 0 })
	acct, err := alice.Account()
	if err != nil {
		t.Fatal(err)
	}
	alice.Stop()
	stop()
	restore, err := enginetest.GarbleMember(fs, "db", bad, acct.User)
	if err != nil {
		t.Fatal(err)
	}
	serve()

	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "live", func() bool { return alice.Status().State == clientsdk.StateLive })
	waiting, err := alice.SendText(ctx, bad, "kept for later")
	if err != nil {
		t.Fatal(err)
	}
	g1, err := alice.SendText(ctx, good, "goes at once")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "good's message sent", func() bool { return status(t, alice, good, g1) == clientsdk.StatusSent })
	// Pushed after bad's op was answered, and the clock has not moved:
	// held with every push, it would wait a minute.
	waitFor(t, alice, "bad's op answered", func() bool { return route.srv.Server.Metrics().PushOps["retry_later"] > 0 })
	g2, err := alice.SendText(ctx, good, "and this")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "good's second message sent", func() bool { return status(t, alice, good, g2) == clientsdk.StatusSent })
	if s := status(t, alice, bad, waiting); s != clientsdk.StatusPending {
		t.Fatalf("bad's message is %v, want pending", s)
	}
	st := alice.Status()
	if st.Pending != 1 || errors.Is(st.Err, clientsdk.ErrPushDeferred) {
		t.Fatalf("status %+v, want one op pending and no push deferred", st)
	}
	// The status says which conversation's ops wait, till when, and why.
	if len(st.Held) != 1 || st.Held[0].Conv != bad || !st.Held[0].RetryAt.After(fake.Now().Add(59*time.Second)) ||
		!errors.Is(st.Held[0].Err, clientsdk.ErrPushDeferred) || !strings.Contains(st.Held[0].Err.Error(), "conversation "+bad.String()) {
		t.Fatalf("held %+v; want bad's ops, for a minute or more, saying why", st.Held)
	}
	firstWait := st.Held[0].RetryAt
	if got := eng.Damaged(); len(got) != 1 || got[0] != bad {
		t.Fatalf("damaged %v, want [%s]", got, bad)
	}
	// When its time comes it goes again, and waits again.
	before := route.srv.Server.Metrics().PushOps["retry_later"]
	fake.Advance(73 * time.Second)
	waitFor(t, alice, "bad's op pushed again", func() bool { return route.srv.Server.Metrics().PushOps["retry_later"] > before })
	waitFor(t, alice, "bad's ops held again", func() bool {
		h := alice.Status().Held
		return len(h) == 1 && h[0].RetryAt.After(firstWait)
	})

	// A SyncOnce is done but for them, and says so.
	alice.Stop()
	if err := alice.SyncOnce(ctx); !errors.Is(err, clientsdk.ErrPushDeferred) || !strings.Contains(err.Error(), "conversation "+bad.String()) {
		t.Fatalf("SyncOnce with bad's op waiting: %v; want ErrPushDeferred, naming bad", err)
	}

	stop()
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	serve()
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "bad's message sent", func() bool { return alice.Status().Pending == 0 })
	if s := status(t, alice, bad, waiting); s != clientsdk.StatusSent {
		t.Fatalf("bad's message is %v after the repair, want sent", s)
	}
	convs, err := alice.Conversations()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[ulid.ULID]bool{}
	for _, c := range convs {
		ids[c.ID] = true
	}
	if !ids[good] || !ids[bad] {
		t.Fatalf("conversations %+v, want both", convs)
	}
}

// TestDamagedSharedRecordNewDevice: a new device of a member of a
// shared-feed conversation whose record does not decode (its position
// not known) is held at position zero: its catch-up and live rounds
// still end, and a SyncOnce returns once its op is stored.
func TestDamagedSharedRecordNewDevice(t *testing.T) {
	fs := vfs.NewMem()
	o := enginetest.Options(t, 1)
	o.FS, o.SharedFeedMembers = fs, 1
	eng, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	srv := servertest.New(t, servertest.Config{Use: eng})
	alice := device(t, srv, "alice", false)
	device(t, srv, "bob", false)
	bobID := lookup(t, alice, "bob")
	bad, err := alice.CreateConversation(ctx, "bad", bobID)
	if err != nil {
		t.Fatal(err)
	}
	good, err := alice.CreateConversation(ctx, "good", bobID)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if err := eng.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := enginetest.GarbleConv(fs, "db", bad); err != nil {
		t.Fatal(err)
	}
	if eng, err = engine.Open("db", o); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Close() }) // after the server's cleanup: LIFO
	srv = servertest.New(t, servertest.Config{Use: eng})

	laptop := device(t, srv, "alice", true)
	once, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := laptop.SyncOnce(once); err != nil {
		t.Fatalf("the new device's first sync: %v", err)
	}
	if _, err := laptop.SendText(ctx, good, "from the laptop"); err != nil {
		t.Fatal(err)
	}
	if err := laptop.SyncOnce(once); err != nil {
		t.Fatalf("the new device's sync with a message to send: %v (status %+v)", err, laptop.Status())
	}
	if st := laptop.Status(); st.Pending != 0 {
		t.Fatalf("status %+v after the sync, want nothing pending", st)
	}
}
