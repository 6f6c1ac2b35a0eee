package clientsdk_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/internal/clock"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestCallsAfterClose: after Close every call returns ErrClosed; none
// panics on the closed replica (Start's loop, SyncOnce and the queries
// did), and none asks the server first (Logout revoked the device, then
// panicked).
func TestCallsAfterClose(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	d := device(t, srv, "alice", false)
	conv, err := d.CreateConversation(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.SendText(ctx, conv, "hi"); err != nil {
		t.Fatal(err)
	}
	if err := d.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	a, _ := d.Account()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"Start":         d.Start,
		"SyncOnce":      func() error { return d.SyncOnce(ctx) },
		"Account":       func() error { _, err := d.Account(); return err },
		"Conversations": func() error { _, err := d.Conversations(); return err },
		"Conversation":  func() error { _, err := d.Conversation(conv); return err },
		"Messages":      func() error { _, err := d.Messages(conv, clientsdk.PageOptions{}); return err },
		"Members":       func() error { _, err := d.Members(ctx, conv); return err },
		"Outbox":        func() error { _, err := d.Outbox(); return err },
		"Failed":        func() error { _, err := d.Failed(); return err },
		"DismissFailed": func() error { return d.DismissFailed(conv) },
		"Vector":        func() error { _, err := d.Vector(conv); return err },
		"SendText":      func() error { _, err := d.SendText(ctx, conv, "late"); return err },
		"MarkRead":      func() error { return d.MarkRead(ctx, conv, 1) },
		"Devices":       func() error { _, err := d.Devices(ctx); return err },
		"LookupUser":    func() error { _, err := d.LookupUser(ctx, "alice"); return err },
		"RevokeDevice":  func() error { return d.RevokeDevice(ctx, a.Device) },
		"ChangePassword": func() error {
			_, err := d.ChangePassword(ctx, "correct horse", "battery staple", false)
			return err
		},
		"BlockUser":    func() error { return d.BlockUser(ctx, a.User) },
		"UnblockUser":  func() error { return d.UnblockUser(ctx, a.User) },
		"BlockedUsers": func() error { _, err := d.BlockedUsers(ctx); return err },
		"Logout":       func() error { return d.Logout(ctx) },
		"Login":        func() error { return d.Login(ctx, "alice", "correct horse", "again") },
		"Register":     func() error { return d.Register(ctx, "alice2", "correct horse", "again") },
	}
	for name, call := range calls {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Errorf("%s after Close panicked: %v", name, r)
				}
			}()
			if err := call(); !errors.Is(err, clientsdk.ErrClosed) {
				t.Errorf("%s after Close: %v, want ErrClosed", name, err)
			}
		}()
	}
	// Nothing reached the server: the device is still alice's.
	other := device(t, srv, "alice", true)
	ds, err := other.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 {
		t.Errorf("alice has %d devices after the calls on a closed one; want 2 (it was not revoked, no login added one)", len(ds))
	}
}

// TestCloseDuringSyncOnce: Close while SyncOnce pushes a long outbox in
// another goroutine; SyncOnce returns an error (ErrClosed) instead of
// panicking on the closed replica, and Close waits for nothing forever.
func TestCloseDuringSyncOnce(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	conv, err := alice.CreateConversation(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		if _, err := alice.SendText(ctx, conv, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	sub := alice.Subscribe(16)
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		if err := alice.SyncOnce(ctx); err != nil && !errors.Is(err, clientsdk.ErrClosed) {
			t.Errorf("SyncOnce cut by Close: %v, want ErrClosed", err)
		}
	}()
	// Close once the sync is under way: its first event (connecting).
	<-sub.C()
	if err := alice.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r != nil {
		t.Fatalf("SyncOnce panicked when the device closed under it: %v", r)
	}
}

// TestAnotherUserOnTheSameProfile: a profile whose user logged out keeps
// its replica for the same user's next login, and empties it for another
// user's: the next user never sees the last one's conversations, and
// catches up from the start of their own feed.
func TestAnotherUserOnTheSameProfile(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	carol := device(t, srv, "carol", false)
	carolsConv, err := carol.CreateConversation(ctx, "carol's")
	if err != nil {
		t.Fatal(err)
	}
	if err := carol.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	shared := device(t, srv, "bob", false)
	bobsConv, err := shared.CreateConversation(ctx, "bob's secret")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shared.SendText(ctx, bobsConv, "for bob's eyes"); err != nil {
		t.Fatal(err)
	}
	if err := shared.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	// Bob again: the replica is still his.
	if err := shared.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if err := shared.Login(ctx, "bob", "correct horse", "again"); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.Conversation(bobsConv); err != nil {
		t.Fatalf("bob's own replica after he logged in again: %v", err)
	}
	// Carol: nothing of bob's, all of hers.
	if err := shared.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	sub := shared.Subscribe(16)
	if err := shared.Login(ctx, "carol", "correct horse", "borrowed"); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-sub.C():
		if _, ok := ev.(clientsdk.Overflow); !ok {
			t.Errorf("the sign-in that emptied the replica told subscribers %T; want Overflow (re-read)", ev)
		}
	default:
		t.Error("the sign-in that emptied the replica told subscribers nothing")
	}
	if cs, err := shared.Conversations(); err != nil || len(cs) != 0 {
		t.Fatalf("carol signed in on bob's profile sees %d conversations (%v); want none before syncing", len(cs), err)
	}
	if err := shared.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := shared.Conversation(bobsConv); !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Errorf("bob's conversation on carol's session: %v, want ErrUnknownConversation", err)
	}
	if c, err := shared.Conversation(carolsConv); err != nil || c.Title != "carol's" {
		t.Errorf("carol's own conversation after her catch-up: %+v, %v", c, err)
	}
}

// TestSignInOnASignedInProfile: Register and Login on a signed-in profile
// fail before they reach the server: no user or device is made there for
// a token the profile would not keep.
func TestSignInOnASignedInProfile(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	if err := alice.Register(ctx, "alice2", "correct horse", "x"); err == nil {
		t.Fatal("Register on a signed-in profile succeeded")
	}
	if err := alice.Login(ctx, "alice", "correct horse", "x"); err == nil {
		t.Fatal("Login on a signed-in profile succeeded")
	}
	ds, err := alice.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 1 {
		t.Errorf("alice has %d devices after a refused Login; want 1", len(ds))
	}
	device(t, srv, "alice2", false) // the name was not taken
}

// TestCallsBeforeSignIn: the calls that need an identity say so with
// ErrNotSignedIn, whether they read the replica or ask the server.
func TestCallsBeforeSignIn(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	d, err := clientsdk.OpenMemory(clientsdk.WithServer(srv.URL), clientsdk.WithHTTPClient(srv.HTTP))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	calls := map[string]func() error{
		"Start":        d.Start,
		"SyncOnce":     func() error { return d.SyncOnce(ctx) },
		"Devices":      func() error { _, err := d.Devices(ctx); return err },
		"LookupUser":   func() error { _, err := d.LookupUser(ctx, "bob"); return err },
		"RevokeDevice": func() error { return d.RevokeDevice(ctx, ulid.Make()) },
		"ChangePassword": func() error {
			_, err := d.ChangePassword(ctx, "correct horse", "battery staple", false)
			return err
		},
		"BlockUser":    func() error { return d.BlockUser(ctx, ulid.Make()) },
		"UnblockUser":  func() error { return d.UnblockUser(ctx, ulid.Make()) },
		"BlockedUsers": func() error { _, err := d.BlockedUsers(ctx); return err },
		"Members":      func() error { _, err := d.Members(ctx, ulid.Make()); return err },
		"Logout":       func() error { return d.Logout(ctx) },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, clientsdk.ErrNotSignedIn) {
			t.Errorf("%s before sign-in: %v, want ErrNotSignedIn", name, err)
		}
	}
}

// TestMembersOfAnUnknownConversation: Members says the conversation is
// unknown rather than "no members".
func TestMembersOfAnUnknownConversation(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	d := device(t, srv, "alice", false)
	if ms, err := d.Members(ctx, ulid.Make()); !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Fatalf("Members of an unknown conversation: %v, %v; want ErrUnknownConversation", ms, err)
	}
	srv.Stop() // offline: the replica's answer
	if ms, err := d.Members(ctx, ulid.Make()); !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Fatalf("Members of an unknown conversation, offline: %v, %v; want ErrUnknownConversation", ms, err)
	}
}

// TestStatusAfterSyncOnce: SyncOnce leaves the status offline, as the
// device is, not live; beside Start's loop, as the loop says.
func TestStatusAfterSyncOnce(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	d := device(t, srv, "alice", false)
	if err := d.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); st.State != clientsdk.StateOffline {
		t.Errorf("status after SyncOnce: %v, want offline", st.State)
	}
	// With Start's loop live, a SyncOnce (a pull to refresh) leaves the
	// loop's status alone.
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, d, "live", func() bool { return d.Status().State == clientsdk.StateLive })
	if err := d.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if st := d.Status(); st.State != clientsdk.StateLive {
		t.Errorf("status after a SyncOnce beside Start's live loop: %v, want live", st.State)
	}
}

// TestOverflowWithoutLaterEvents: a subscriber that fell behind finds
// Overflow after the events it has, even when nothing happens afterwards
// (it once came only with the next event).
func TestOverflowWithoutLaterEvents(t *testing.T) {
	d, err := clientsdk.OpenMemory()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	srv := servertest.New(t, servertest.Config{})
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = device(t, srv, "alice", false)
	conv, err := d.CreateConversation(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	sub := d.Subscribe(16)
	for i := range 40 { // three events each
		if _, err := d.SendText(ctx, conv, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	var evs []clientsdk.Event
	for len(evs) < 16 {
		select {
		case ev := <-sub.C():
			evs = append(evs, ev)
		case <-time.After(60 * time.Second): // a bound: the 16 are buffered already
			t.Fatalf("%d events buffered; want 16", len(evs))
		}
	}
	if _, ok := evs[15].(clientsdk.Overflow); !ok {
		t.Errorf("the last of a full buffer's events is %T; want Overflow", evs[15])
	}
}

// TestOptionsThatWouldSpin: a heartbeat or a backoff of zero (a loop that
// never pauses), a negative page size and a server URL without its scheme
// (which failed as a retryable "invalid base URL" on every reconnect) are
// refused by Open.
func TestOptionsThatWouldSpin(t *testing.T) {
	for name, opt := range map[string]clientsdk.Option{
		"WithHeartbeat(0)":       clientsdk.WithHeartbeat(0),
		"WithBackoff(0, 0)":      clientsdk.WithBackoff(0, 0),
		"WithBackoff(-1s, 1s)":   clientsdk.WithBackoff(-time.Second, time.Second),
		"WithBackoff(2s, 1s)":    clientsdk.WithBackoff(2*time.Second, time.Second),
		"WithPageSize(-1)":       clientsdk.WithPageSize(-1),
		"WithHeartbeat(time.ms)": clientsdk.WithHeartbeat(time.Millisecond),
		"WithServer(no scheme)":  clientsdk.WithServer("127.0.0.1:8080"),
	} {
		if d, err := clientsdk.OpenMemory(opt); err == nil {
			_ = d.Close()
			t.Errorf("OpenMemory(%s) succeeded", name)
		}
	}
}

// TestMessagesAreTheCallersCopies: a page's bodies and reactions are the
// caller's to change; the next query shows the messages as they are.
func TestMessagesAreTheCallersCopies(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	d := device(t, srv, "alice", false)
	conv, err := d.CreateConversation(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	msg, err := d.SendText(ctx, conv, "hello")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.React(ctx, conv, msg, "+1"); err != nil {
		t.Fatal(err)
	}
	if err := d.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	p, err := d.Messages(conv, clientsdk.PageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := p.Messages[0]
	m.Body[0] = 'J'
	m.Reactions[0].Key = "-1"
	m.Reactions[0].Users[0] = ulid.ULID{}
	again := messages(t, d, conv)[0]
	if again.Text() != "hello" || again.Reactions[0].Key != "+1" || again.Reactions[0].Users[0] == (ulid.ULID{}) {
		t.Errorf("after the caller changed its copy, the message reads %q %+v", again.Text(), again.Reactions)
	}
}

// TestLogoutStopsSyncing: SyncOnce calls made while Logout signs the
// device out are refused (ErrNotSignedIn) or cut, never left running into
// the next user's sign-in; under -race, Logout's wait for them races no
// new call.
func TestLogoutStopsSyncing(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	d := device(t, srv, "bob", false)
	if _, err := d.CreateConversation(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for range 1000 { // bounded: Logout ends it long before
			if err := d.SyncOnce(ctx); errors.Is(err, clientsdk.ErrNotSignedIn) {
				done <- nil
				return
			}
		}
		done <- errors.New("SyncOnce never saw the device signed out")
	}()
	if err := d.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := d.Account(); !errors.Is(err, clientsdk.ErrNotSignedIn) {
		t.Fatalf("after Logout: %v", err)
	}
}

// failingCalls fails the calls whose path ends with one of fail's keys
// while the key's flag is set, as a network gone would.
type failingCalls struct {
	next http.RoundTripper
	fail map[string]*atomic.Bool
}

func (f failingCalls) RoundTrip(r *http.Request) (*http.Response, error) {
	for suffix, on := range f.fail {
		if on.Load() && strings.HasSuffix(r.URL.Path, suffix) {
			return nil, fmt.Errorf("network down (test): %s", suffix)
		}
	}
	return f.next.RoundTrip(r)
}

// TestSyncOnceEndsTheLoopsBackoff: a SyncOnce that succeeds while Start's
// loop waits out its backoff (the network was down) has the loop connect
// at once: the device, whose status the SyncOnce left live, receives live
// ops, instead of waiting on a backoff timer that nothing moves.
func TestSyncOnceEndsTheLoopsBackoff(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var down atomic.Bool
	alice := device(t, srv, "alice", false, clientsdk.WithClock(fake), clientsdk.WithBackoff(10*time.Second, 10*time.Second),
		clientsdk.WithHTTPClient(&http.Client{Transport: failingCalls{next: srv.HTTP.Transport, fail: map[string]*atomic.Bool{"/Sync": &down}}}))
	bob, conv := roomWithBob(t, srv)
	down.Store(true)
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	defer alice.Stop()
	waitFor(t, alice, "the loop in backoff", func() bool {
		st := alice.Status()
		return st.State == clientsdk.StateOffline && !st.RetryAt.IsZero()
	})
	down.Store(false)
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendText(ctx, conv, "live"); err != nil {
		t.Fatal(err)
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	// The fake clock never reaches the backoff's end: only a loop that
	// connected again receives the message.
	waitFor(t, alice, "bob's message, live", has(t, alice, conv, "live"))
	if st := alice.Status(); st.State != clientsdk.StateLive {
		t.Fatalf("status %+v while the loop receives live ops, want live", st)
	}
}

// TestStartWhileStopSendsItsMarkers: a Start while Stop's loop sends its
// last markers starts a new loop, which goes live; the old loop, ending
// after it, leaves the new loop's status as it is, rather than setting it
// offline while the device receives live ops.
func TestStartWhileStopSendsItsMarkers(t *testing.T) {
	h := holdStop(t)
	alice := h.alice
	sub := alice.Subscribe(1024)
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	for connecting, live := false, false; !live; {
		select {
		case ev := <-sub.C():
			if sc, ok := ev.(clientsdk.StatusChanged); ok {
				connecting = connecting || sc.Status.State == clientsdk.StateConnecting
				live = connecting && sc.Status.State == clientsdk.StateLive
			}
		case <-time.After(hangGuard):
			t.Fatalf("the new loop did not go live: %+v", alice.Status())
		}
	}
	sub.Close()
	h.release()
	if _, err := h.bob.SendText(ctx, h.conv, "two"); err != nil {
		t.Fatal(err)
	}
	if err := h.bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "bob's second message", has(t, alice, h.conv, "one", "two"))
	if st := alice.Status(); st.State != clientsdk.StateLive {
		t.Fatalf("status %+v while the new loop receives live ops, want live", st)
	}
	alice.Stop()
}

// TestFailedLogoutSyncsOn: a Logout that cannot reach the server returns
// its error, and the device, still signed in, syncs on: Start's loop,
// which Logout stopped first, runs again.
func TestFailedLogoutSyncsOn(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	var down atomic.Bool
	down.Store(true)
	alice := device(t, srv, "alice", false,
		clientsdk.WithHTTPClient(&http.Client{Transport: failingCalls{next: srv.HTTP.Transport, fail: map[string]*atomic.Bool{"/RevokeDevice": &down}}}))
	bob, conv := roomWithBob(t, srv)
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	defer alice.Stop()
	waitFor(t, alice, "live in the conversation", func() bool {
		_, err := alice.Conversation(conv)
		return err == nil && alice.Status().State == clientsdk.StateLive
	})
	if err := alice.Logout(ctx); err == nil || !strings.Contains(err.Error(), "network down") {
		t.Fatalf("Logout with the server out of reach: %v, want its error", err)
	}
	if _, err := alice.Account(); err != nil {
		t.Fatalf("signed out after a failed Logout: %v", err)
	}
	if _, err := bob.SendText(ctx, conv, "after the failed logout"); err != nil {
		t.Fatal(err)
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "bob's message", has(t, alice, conv, "after the failed logout"))
}

// TestSyncOnceRetriesItsAck: SyncOnce retries a retryable failure of its
// last step, the markers' Ack, as it retries its session.
func TestSyncOnceRetriesItsAck(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	var failed atomic.Int32
	var armed atomic.Bool
	alice := device(t, srv, "alice", false, clientsdk.WithBackoff(time.Millisecond, time.Millisecond),
		clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
			if armed.Load() && strings.HasSuffix(r.URL.Path, "/Ack") && failed.Add(1) == 1 {
				return nil, errors.New("network blip (test)")
			}
			return srv.HTTP.Transport.RoundTrip(r)
		})}))
	roomWithBob(t, srv, "hi")
	armed.Store(true)
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatalf("SyncOnce whose Ack failed once: %v", err)
	}
	if n := failed.Load(); n < 2 {
		t.Fatalf("%d Ack calls, want the failed one and its retry", n)
	}
}

// roundTrip is an http.RoundTripper made of a function.
type roundTrip func(*http.Request) (*http.Response, error)

func (f roundTrip) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// hangGuard bounds a wait that only a bug makes long.
const hangGuard = time.Minute

// TestSyncOnceEndsOnlyTheBackoffAfterIt: a SyncOnce that succeeded while
// Start's loop ran does not end a backoff that comes much later, when the
// loop's next session drops: the loop waits it out (here, on a clock that
// moves only when told), then connects. The loop once took SyncOnce's
// signal before its session rather than after it, and reconnected at once
// after any drop that followed a SyncOnce: it went through the waiting
// status without waiting (the test timed out looking for it), or, had the
// test seen it, its fourth Sync call would have come before RetryAt.
func TestSyncOnceEndsOnlyTheBackoffAfterIt(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var mu sync.Mutex
	var last io.ReadCloser
	var calls []time.Time // when, on the fake clock, each Sync call went
	alice := device(t, srv, "alice", false, clientsdk.WithClock(fake), clientsdk.WithBackoff(10*time.Second, 10*time.Second),
		clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
			if strings.HasSuffix(r.URL.Path, "/Sync") {
				mu.Lock()
				calls = append(calls, fake.Now())
				mu.Unlock()
			}
			resp, err := srv.HTTP.Transport.RoundTrip(r)
			if err == nil && strings.HasSuffix(r.URL.Path, "/Sync") {
				mu.Lock()
				last = resp.Body
				mu.Unlock()
			}
			return resp, err
		})}))
	syncCalls := func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(calls)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	defer alice.Stop()
	waitFor(t, alice, "live", func() bool { return alice.Status().State == clientsdk.StateLive })
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "the loop's session after the SyncOnce", func() bool {
		return len(syncCalls()) == 3 && alice.Status().State == clientsdk.StateLive
	})
	// Much later, the loop's session drops.
	fake.Advance(time.Hour)
	mu.Lock()
	_ = last.Close()
	mu.Unlock()
	var retryAt time.Time
	waitFor(t, alice, "the loop waiting to reconnect", func() bool {
		st := alice.Status()
		retryAt = st.RetryAt
		return st.State == clientsdk.StateOffline && !retryAt.IsZero()
	})
	fake.Advance(retryAt.Sub(fake.Now()))
	waitFor(t, alice, "live again", func() bool { return alice.Status().State == clientsdk.StateLive })
	if got := syncCalls(); len(got) != 4 || got[3].Before(retryAt) {
		t.Fatalf("Sync calls at %v; want the fourth at %v or later, after the backoff", got, retryAt)
	}
}

// TestStoppingLoopLeavesANewLoopsFailure: a loop that ends after a Start
// began another, which then failed for good (the device revoked), leaves
// that failure in the status: the application must learn to sign in
// again.
func TestStoppingLoopLeavesANewLoopsFailure(t *testing.T) {
	h := holdStop(t)
	alice := h.alice
	acc, err := alice.Account()
	if err != nil {
		t.Fatal(err)
	}
	tablet := h.srv.Login("alice", "tablet")
	if _, err := tablet.Account.RevokeDevice(ctx, &ferryv1.RevokeDeviceRequest{DeviceId: acc.Device.String()}); err != nil {
		t.Fatal(err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "the new loop failed", func() bool { return alice.Status().State == clientsdk.StateFailed })
	h.release()
	var te *clientsdk.TerminalError
	if st := alice.Status(); st.State != clientsdk.StateFailed || !errors.As(st.Err, &te) {
		t.Fatalf("status %+v once the old loop ended; want the new loop's failure", st)
	}
}

// roomWithBob registers bob, who makes a room with alice (registered
// already) and sends texts to it, all on the server: the room alice's
// device receives.
func roomWithBob(t *testing.T, srv *servertest.Server, texts ...string) (*clientsdk.Device, ulid.ULID) {
	t.Helper()
	bob := device(t, srv, "bob", false)
	conv, err := bob.CreateConversation(ctx, "room", lookup(t, bob, "alice"))
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range texts {
		if _, err := bob.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	return bob, conv
}

// heldStop is alice, live in bob's room with his message "one", whose
// Stop is under way and held as it sends her last markers.
type heldStop struct {
	srv        *servertest.Server
	alice, bob *clientsdk.Device
	conv       ulid.ULID
	// release lets the markers go, and waits for Stop to return.
	release func()
}

func holdStop(t *testing.T) heldStop {
	t.Helper()
	h := heldStop{srv: servertest.New(t, servertest.Config{})}
	var hold atomic.Bool
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	h.alice = device(t, h.srv, "alice", false, clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if hold.Load() && strings.HasSuffix(r.URL.Path, "/Ack") {
			select {
			case arrived <- struct{}{}:
			default:
			}
			<-release
		}
		return h.srv.HTTP.Transport.RoundTrip(r)
	})}))
	h.bob, h.conv = roomWithBob(t, h.srv, "one")
	if err := h.alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, h.alice, "live with bob's message", func() bool {
		return h.alice.Status().State == clientsdk.StateLive && has(t, h.alice, h.conv, "one")()
	})
	// Stop sends the markers it gathered (bob's message delivered), and
	// is held there.
	hold.Store(true)
	stopped := make(chan struct{})
	go func() { h.alice.Stop(); close(stopped) }()
	select {
	case <-arrived:
	case <-time.After(hangGuard):
		t.Fatal("Stop sent no markers")
	}
	h.release = func() {
		hold.Store(false)
		close(release)
		<-stopped
	}
	return h
}

// TestSyncOnceSaysWhenItRetries: a SyncOnce whose session the server ends
// (going away) while ops wait is offline until it connects again, and
// says when, as Start's loop does: its status said live, with the ended
// session's word that ops wait.
func TestSyncOnceSaysWhenItRetries(t *testing.T) {
	disk := enginetest.NewDisk()
	srv := servertest.New(t, servertest.Config{Engine: disk.Options})
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	alice := device(t, srv, "alice", false, clientsdk.WithClock(fake))
	conv, err := alice.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	// An op the server turns away keeps SyncOnce's session going.
	disk.Fill(true)
	if _, err := alice.SendText(ctx, conv, "kept"); err != nil {
		t.Fatal(err)
	}
	once, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- alice.SyncOnce(once) }()
	waitFor(t, alice, "the op turned away", func() bool { return errors.Is(alice.Status().Err, clientsdk.ErrPushDeferred) })
	srv.Server.GoAway()
	// The fake clock never reaches the reconnect.
	waitFor(t, alice, "SyncOnce waiting to connect again", func() bool {
		st := alice.Status()
		return st.State == clientsdk.StateOffline && !st.RetryAt.IsZero() && st.Err != nil && !errors.Is(st.Err, clientsdk.ErrPushDeferred)
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("SyncOnce cut while waiting to connect: %v", err)
	}
}

// TestSyncOnceKeepsTheLoopsFailure: after Start's loop failed for good
// (the device revoked), a SyncOnce (a pull to refresh) fails too, and the
// status still says failed, and why: it said offline, without the
// failure, and the application no longer knew to sign in again.
func TestSyncOnceKeepsTheLoopsFailure(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	failForGood(t, srv, alice)
	var te *clientsdk.TerminalError
	if err := alice.SyncOnce(ctx); !errors.As(err, &te) {
		t.Fatalf("SyncOnce on a revoked device: %v, want a TerminalError", err)
	}
	if st := alice.Status(); st.State != clientsdk.StateFailed || !errors.As(st.Err, &te) {
		t.Fatalf("status %+v after SyncOnce on a revoked device, want failed with the terminal error", st)
	}
}

// TestSyncOnceKeepsTheLoopsFailureWhileOffline: a SyncOnce that cannot
// reach the server after Start's loop failed for good leaves the failure
// in the status, while it waits to retry and once ctx ends: it cannot
// tell whether the failure is over.
func TestSyncOnceKeepsTheLoopsFailureWhileOffline(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var down atomic.Bool
	alice := device(t, srv, "alice", false, clientsdk.WithClock(fake), clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if down.Load() {
			return nil, errors.New("the network is down")
		}
		return srv.HTTP.Transport.RoundTrip(r)
	})}))
	failForGood(t, srv, alice)
	down.Store(true)
	once, cancel := context.WithCancel(ctx)
	defer cancel()
	armed := fake.Armed() // the loop has ended: the next timer is SyncOnce's wait to retry
	done := make(chan error, 1)
	go func() { done <- alice.SyncOnce(once) }()
	select {
	case <-armed:
	case <-time.After(hangGuard):
		t.Fatal("SyncOnce never waited to retry")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("SyncOnce: %v, want it cut by its context", err)
	}
	var te *clientsdk.TerminalError
	if st := alice.Status(); st.State != clientsdk.StateFailed || !errors.As(st.Err, &te) {
		t.Fatalf("status %+v after a SyncOnce that could not reach the server, want the loop's failure", st)
	}
}

// TestSyncOnceLeavesTheLoopsStatus: while Start's loop runs, a SyncOnce
// whose ack must go again leaves the status to the loop, which connects
// again meanwhile: it said offline, with the ack's error, and the loop's
// live session that followed did not say otherwise.
func TestSyncOnceLeavesTheLoopsStatus(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	var failAck atomic.Bool
	alice := device(t, srv, "alice", false, clientsdk.WithBackoff(time.Millisecond, time.Millisecond),
		clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
			if strings.HasSuffix(r.URL.Path, "/Ack") && failAck.CompareAndSwap(true, false) {
				return nil, errors.New("a network blip")
			}
			return srv.HTTP.Transport.RoundTrip(r)
		})}))
	_, conv := roomWithBob(t, srv, "one")
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	defer alice.Stop()
	waitFor(t, alice, "live with bob's message", func() bool {
		return alice.Status().State == clientsdk.StateLive && has(t, alice, conv, "one")()
	})
	sub := alice.Subscribe(1024)
	defer sub.Close()
	failAck.Store(true) // SyncOnce sends the delivered marker of "one" with Ack
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if failAck.Load() {
		t.Fatal("SyncOnce sent no Ack: the test needs one to fail")
	}
	for {
		select {
		case ev := <-sub.C():
			if sc, ok := ev.(clientsdk.StatusChanged); ok && sc.Status.State == clientsdk.StateOffline {
				t.Fatalf("status %+v while Start's loop runs, after a SyncOnce whose ack went again", sc.Status)
			}
			continue
		default:
		}
		break
	}
}

// failForGood starts alice's loop, revokes her device from another of
// hers once it is live, and waits for the loop to fail for good.
func failForGood(t *testing.T, srv *servertest.Server, alice *clientsdk.Device) {
	t.Helper()
	acc, err := alice.Account()
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "live", func() bool { return alice.Status().State == clientsdk.StateLive })
	tablet := srv.Login("alice", "tablet")
	if _, err := tablet.Account.RevokeDevice(ctx, &ferryv1.RevokeDeviceRequest{DeviceId: acc.Device.String()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "the loop failed", func() bool { return alice.Status().State == clientsdk.StateFailed })
}
