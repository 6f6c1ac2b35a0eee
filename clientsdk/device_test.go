package clientsdk_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/server/servertest"
)

var ctx = context.Background()

// device opens an in-memory SDK device against srv, signs it in (a new user
// unless login) and closes it when the test ends; it does not start it.
func device(t *testing.T, srv *servertest.Server, username string, login bool, opts ...clientsdk.Option) *clientsdk.Device {
	t.Helper()
	d, err := clientsdk.OpenMemory(append([]clientsdk.Option{clientsdk.WithServer(srv.URL), clientsdk.WithHTTPClient(srv.HTTP)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if login {
		err = d.Login(ctx, username, "correct horse", username+" laptop")
	} else {
		err = d.Register(ctx, username, "correct horse", username+" phone")
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitFor waits, on the device's events, until cond holds.
func waitFor(t *testing.T, d *clientsdk.Device, what string, cond func() bool) {
	t.Helper()
	sub := d.Subscribe(1024)
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for !cond() {
		select {
		case _, ok := <-sub.C():
			if !ok {
				t.Fatalf("device closed while waiting for %s", what)
			}
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s (status %+v)", what, d.Status())
		}
	}
}

func messages(t *testing.T, d *clientsdk.Device, conv ulid.ULID) []clientsdk.Message {
	t.Helper()
	p, err := d.Messages(conv, clientsdk.PageOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(p.Messages) // oldest first, for assertions
	return p.Messages
}

func texts(ms []clientsdk.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Text()
	}
	return out
}

func has(t *testing.T, d *clientsdk.Device, conv ulid.ULID, want ...string) func() bool {
	return func() bool {
		p, err := d.Messages(conv, clientsdk.PageOptions{Limit: 1000})
		if err != nil {
			return false
		}
		slices.Reverse(p.Messages)
		return slices.Equal(texts(p.Messages), want)
	}
}

func status(t *testing.T, d *clientsdk.Device, conv, msg ulid.ULID) clientsdk.MessageStatus {
	t.Helper()
	for _, m := range messages(t, d, conv) {
		if m.ID == msg {
			return m.Status
		}
	}
	t.Fatalf("message %s not found", msg)
	return 0
}

func lookup(t *testing.T, d *clientsdk.Device, username string) ulid.ULID {
	t.Helper()
	u, err := d.LookupUser(ctx, username)
	if err != nil {
		t.Fatal(err)
	}
	return u.ID
}

// TestPagesReachPastPendingMessages: the first page holds every pending
// message besides its limit of sent ones, so walking the pages, each
// Before the oldest seq of the last, gives every message once, even when
// more are pending than a page holds.
func TestPagesReachPastPendingMessages(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	conv, err := alice.CreateConversation(ctx, "drafts")
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 8 {
		text := fmt.Sprintf("sent %d", i)
		if i >= 5 {
			text = fmt.Sprintf("pending %d", i)
		}
		want = append([]string{text}, want...) // newest first
		if _, err := alice.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
		if i == 4 {
			if err := alice.SyncOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	var got []string
	var sizes []int
	before := uint64(0)
	for range 10 { // bounded: 3 pages hold it
		p, err := alice.Messages(conv, clientsdk.PageOptions{Limit: 2, Before: before})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			got = append(got, m.Text())
		}
		sizes = append(sizes, len(p.Messages))
		if !p.More {
			break
		}
		before = p.Messages[len(p.Messages)-1].Seq
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || fmt.Sprint(sizes) != "[5 2 1]" {
		t.Fatalf("pages %v gave %q; want pages [5 2 1] (3 pending and 2 sent, then sent ones) giving %q", sizes, got, want)
	}
}

func TestSendStatusesAndReceive(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	conv, err := alice.CreateConversation(ctx, "lunch", lookup(t, alice, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := alice.SendText(ctx, conv, "pizza?")
	if err != nil {
		t.Fatal(err)
	}
	// Not started yet: the message waits in the outbox, visible as pending.
	if got := status(t, alice, conv, msg); got != clientsdk.StatusPending {
		t.Fatalf("before start: %v, want pending", got)
	}
	if st := alice.Status(); st.Pending != 3 || st.State != clientsdk.StateOffline {
		t.Fatalf("status %+v: want 3 pending ops (create, add, message), offline", st)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	if err := bob.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob receives the message", has(t, bob, conv, "pizza?"))
	waitFor(t, alice, "alice sees it delivered", func() bool { return status(t, alice, conv, msg) == clientsdk.StatusDelivered })
	c, err := bob.Conversation(conv)
	if err != nil || c.Title != "lunch" || c.Unread != 1 || c.LastMessage.Text() != "pizza?" {
		t.Fatalf("bob's conversation: %+v %v", c, err)
	}
	if err := bob.MarkRead(ctx, conv, 0); err != nil {
		t.Fatal(err)
	}
	if c, _ := bob.Conversation(conv); c.Unread != 0 {
		t.Fatalf("unread after reading: %d", c.Unread)
	}
	waitFor(t, alice, "alice sees it read", func() bool { return status(t, alice, conv, msg) == clientsdk.StatusRead })
	if st := alice.Status(); st.Pending != 0 || st.State != clientsdk.StateLive {
		t.Fatalf("alice's status %+v: want live with an empty outbox", st)
	}
}

func TestOfflineSendsGoOutInOrder(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "the conversation is created", func() bool { return alice.Status().Pending == 0 })
	alice.Stop() // offline
	var want []string
	for i := range 20 {
		want = append(want, fmt.Sprint(i))
		if _, err := alice.SendText(ctx, conv, want[i]); err != nil {
			t.Fatal(err)
		}
	}
	if got := texts(messages(t, alice, conv)); !slices.Equal(got, want) {
		t.Fatalf("offline view %v", got)
	}
	if err := bob.Start(); err != nil {
		t.Fatal(err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob receives all 20 in order", has(t, bob, conv, want...))
	for i, m := range messages(t, bob, conv) {
		if m.Seq != uint64(i+3) {
			t.Fatalf("message %d has seq %d: sent out of order", i, m.Seq)
		}
	}
}

func TestRefusedOpIsReportedAndLaterOpsRenumbered(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	if err := bob.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob has the conversation", func() bool { _, err := bob.Conversation(conv); return err == nil })
	sub := bob.Subscribe(1024)
	defer sub.Close()
	bob.Stop()
	// A member may not set the title: refused. The messages after it were
	// numbered past it and must be renumbered, then accepted.
	title, _ := bob.SetTitle(ctx, conv, "mine now")
	bob.SendText(ctx, conv, "one")
	bob.SendText(ctx, conv, "two")
	if err := bob.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "alice receives bob's messages", has(t, alice, conv, "one", "two"))
	var failed *clientsdk.OpFailed
	for failed == nil {
		if ev, ok := (<-sub.C()).(clientsdk.OpFailed); ok {
			failed = &ev
		}
	}
	if failed.Op != title || failed.Reason != "PERMISSION_DENIED" {
		t.Fatalf("failure event %+v", failed)
	}
	fs, _ := bob.Failed()
	if len(fs) != 1 || fs[0].Op != title || fs[0].Kind != "set-title" || fs[0].Reason != "PERMISSION_DENIED" {
		t.Fatalf("failed list %+v, want the title change, refused", fs)
	}
	if c, _ := alice.Conversation(conv); c.Title != "c" {
		t.Fatalf("title became %q", c.Title)
	}
}

// TestFailedMessagesShowUntilDismissed: a message the server refuses (bob
// wrote it offline, after he was removed) stays on the first page, marked
// failed, and in Failed, until DismissFailed takes it out of both.
func TestFailedMessagesShowUntilDismissed(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	for _, d := range []*clientsdk.Device{alice, bob} {
		if err := d.SyncOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.RemoveMember(ctx, conv, lookup(t, alice, "bob")); err != nil {
		t.Fatal(err)
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	late, err := bob.SendText(ctx, conv, "late")
	if err != nil {
		t.Fatal(err)
	}
	sub := bob.Subscribe(64)
	defer sub.Close()
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	failedOn := func() (clientsdk.MessageStatus, bool) {
		t.Helper()
		p, err := bob.Messages(conv, clientsdk.PageOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			if m.ID == late {
				return m.Status, true
			}
		}
		return 0, false
	}
	if st, ok := failedOn(); !ok || st != clientsdk.StatusFailed {
		t.Fatalf("the refused message on the page: %v %v; want failed", ok, st)
	}
	if fs, _ := bob.Failed(); len(fs) != 1 || fs[0].Op != late {
		t.Fatalf("failed list %+v", fs)
	}
	if m, err := bob.Message(conv, late); err != nil || m.Status != clientsdk.StatusFailed || m.Text() != "late" {
		t.Fatalf("Message of the refused one: %+v %v; want it, failed", m, err)
	}
	for range len(sub.C()) { // what the sync said
		<-sub.C()
	}
	if err := bob.DismissFailed(late); err != nil {
		t.Fatal(err)
	}
	if _, ok := failedOn(); ok {
		t.Fatal("the dismissed message is still on the page")
	}
	if fs, _ := bob.Failed(); len(fs) != 0 {
		t.Fatalf("failed list after dismissing %+v", fs)
	}
	told, listed := false, false
	for range len(sub.C()) { // emitted before DismissFailed returned
		switch ev := (<-sub.C()).(type) {
		case clientsdk.MessagesChanged:
			told = told || ev.Conv == conv && slices.Equal(ev.IDs, []ulid.ULID{late}) && slices.Equal(ev.Messages, []ulid.ULID{late})
		case clientsdk.ConversationChanged:
			listed = listed || ev.Conv == conv // its last message changed
		}
	}
	if !told || !listed {
		t.Fatalf("events for the dismissed message: MessagesChanged %v, ConversationChanged %v", told, listed)
	}
	if _, err := bob.Message(conv, late); !errors.Is(err, clientsdk.ErrNoMessage) {
		t.Fatalf("Message of the dismissed one: %v; want ErrNoMessage", err)
	}
	if err := bob.DismissFailed(late); !errors.Is(err, clientsdk.ErrNotFailed) {
		t.Fatalf("dismissing again: %v, want ErrNotFailed", err)
	}
}

// TestCatchUpListsConversationsInOrderOfActivity: a catch-up brings the
// changed conversations most recently changed first, then their ops page
// by page, the most recent first too; the list keeps the conversations'
// order, on a device that was offline and on a new one, not the order of
// the pages. (The server's order also counts markers that others see, such
// as another device's delivered marker: each case has a server of its own,
// where no device of alice's acks between bob's messages and the catch-up.)
func TestCatchUpListsConversationsInOrderOfActivity(t *testing.T) {
	for _, newDevice := range []bool{false, true} {
		t.Run(map[bool]string{false: "back online", true: "new device"}[newDevice], func(t *testing.T) {
			srv := servertest.New(t, servertest.Config{})
			phone := device(t, srv, "alice", false)
			bob := device(t, srv, "bob", false)
			alice := lookup(t, bob, "alice")
			convs := map[string]ulid.ULID{}
			for _, title := range []string{"one", "two", "three"} {
				convs[title], _ = bob.CreateConversation(ctx, title, alice)
			}
			for _, d := range []*clientsdk.Device{bob, phone} {
				if err := d.SyncOnce(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for _, title := range []string{"three", "one", "two"} {
				bob.SendText(ctx, convs[title], "news in "+title)
				if err := bob.SyncOnce(ctx); err != nil { // a push each: three feed positions
					t.Fatal(err)
				}
			}
			d := phone
			if newDevice {
				d = device(t, srv, "alice", true)
			}
			if err := d.SyncOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if got, want := clientsdk.Titles(t, d), []string{"two", "one", "three"}; !slices.Equal(got, want) {
				t.Errorf("lists %v; want %v", got, want)
			}
		})
	}
}

// TestLongCatchUpListsConversationsInOrder: a catch-up of more changed
// conversations than one Conversations message holds (256) lists them in
// the server's order across the messages: the later messages' older
// conversations do not go above the first's.
func TestLongCatchUpListsConversationsInOrder(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	_ = device(t, srv, "alice", false)
	bob := device(t, srv, "bob", false)
	alice := lookup(t, bob, "alice")
	var convs []ulid.ULID
	for i := range 300 {
		c, err := bob.CreateConversation(ctx, fmt.Sprint("c", i), alice)
		if err != nil {
			t.Fatal(err)
		}
		convs = append(convs, c)
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	// The three most recently changed, in their own pushes.
	var want []ulid.ULID
	for _, c := range []ulid.ULID{convs[5], convs[150], convs[299]} {
		bob.SendText(ctx, c, "news")
		if err := bob.SyncOnce(ctx); err != nil {
			t.Fatal(err)
		}
		want = append([]ulid.ULID{c}, want...)
	}
	laptop := device(t, srv, "alice", true)
	if err := laptop.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	cs, err := laptop.Conversations()
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 300 {
		t.Fatalf("%d conversations listed, want 300", len(cs))
	}
	var top []ulid.ULID
	for _, c := range cs[:3] {
		top = append(top, c.ID)
	}
	if !slices.Equal(top, want) {
		t.Errorf("the list begins %v; want the three with news, the latest first: %v", top, want)
	}
}

// TestReadStaysReadWhenSomeoneJoins: a message every member read shows
// read to its sender, and stays so when a member is added (the server
// counts the history before a member joined as read by them).
func TestReadStaysReadWhenSomeoneJoins(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	_ = device(t, srv, "carol", false)
	carol := lookup(t, alice, "carol")
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	hi, _ := alice.SendText(ctx, conv, "hi")
	syncAll := func() {
		t.Helper()
		for _, d := range []*clientsdk.Device{alice, bob, alice} {
			if err := d.SyncOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	status := func() clientsdk.MessageStatus {
		t.Helper()
		c, err := alice.Conversation(conv)
		if err != nil || c.LastMessage == nil || c.LastMessage.ID != hi {
			t.Fatalf("alice's last message %+v, %v", c.LastMessage, err)
		}
		return c.LastMessage.Status
	}
	syncAll()
	if err := bob.MarkRead(ctx, conv, 0); err != nil {
		t.Fatal(err)
	}
	syncAll()
	if got := status(); got != clientsdk.StatusRead {
		t.Fatalf("alice's message is %v once bob read it; want read", got)
	}
	if _, err := alice.AddMember(ctx, conv, carol, clientsdk.RoleMember); err != nil {
		t.Fatal(err)
	}
	syncAll()
	c, _ := alice.Conversation(conv)
	if got := status(); c.Members != 3 || got != clientsdk.StatusRead {
		t.Fatalf("with carol added (%d members), alice's message is %v; want read", c.Members, got)
	}
}

// TestMarkersDoNotReorderConversations: the conversation list is in the
// order of the conversations' last activity (ops), on every device: a
// read on one of the user's devices, or another member's read of the
// user's message, does not move a conversation up.
func TestMarkersDoNotReorderConversations(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	phone := device(t, srv, "bob", false)
	laptop := device(t, srv, "bob", true)
	bob := lookup(t, alice, "bob")
	syncAll := func() {
		t.Helper()
		for _, d := range []*clientsdk.Device{alice, phone, laptop} {
			if err := d.SyncOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	older, _ := alice.CreateConversation(ctx, "older", bob)
	alice.SendText(ctx, older, "one")
	syncAll()
	newer, _ := alice.CreateConversation(ctx, "newer", bob)
	alice.SendText(ctx, newer, "two")
	syncAll()
	want := []string{"newer", "older"}
	for i, d := range []*clientsdk.Device{alice, phone, laptop} {
		if got := clientsdk.Titles(t, d); !slices.Equal(got, want) {
			t.Fatalf("device %d: conversations %v before the read; want %v", i, got, want)
		}
	}
	if err := phone.MarkRead(ctx, older, 0); err != nil {
		t.Fatal(err)
	}
	syncAll()
	if c, _ := laptop.Conversation(older); c.Unread != 0 {
		t.Fatalf("the laptop did not learn of the read: %d unread", c.Unread)
	}
	for name, d := range map[string]*clientsdk.Device{"alice": alice, "bob's laptop": laptop} {
		if got := clientsdk.Titles(t, d); !slices.Equal(got, want) {
			t.Errorf("%s's conversations %v after bob read the older one; want %v", name, got, want)
		}
	}
	// Activity does move it up.
	alice.SendText(ctx, older, "three")
	syncAll()
	if got := clientsdk.Titles(t, laptop); !slices.Equal(got, []string{"older", "newer"}) {
		t.Errorf("conversations %v after a message to the older one", got)
	}
}

func TestReadOnOneDeviceClearsUnreadOnTheOther(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	phone := device(t, srv, "bob", false)
	laptop := device(t, srv, "bob", true)
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	alice.SendText(ctx, conv, "hi")
	alice.SendText(ctx, conv, "are you there?")
	for _, d := range []*clientsdk.Device{alice, phone, laptop} {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	unread := func(d *clientsdk.Device, want uint64) func() bool {
		return func() bool { c, err := d.Conversation(conv); return err == nil && c.Unread == want && c.Head == 4 }
	}
	waitFor(t, laptop, "the laptop shows 2 unread", unread(laptop, 2))
	waitFor(t, phone, "the phone shows 2 unread", unread(phone, 2))
	// Reading means reading what is shown: wait until the phone holds it.
	waitFor(t, phone, "the phone holds the messages", has(t, phone, conv, "hi", "are you there?"))
	if err := phone.MarkRead(ctx, conv, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, laptop, "the laptop clears its unread count", unread(laptop, 0))
}

func TestRevokedDeviceStopsWithATerminalError(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	phone := device(t, srv, "bob", false)
	laptop := device(t, srv, "bob", true)
	if err := laptop.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, laptop, "the laptop is live", func() bool { return laptop.Status().State == clientsdk.StateLive })
	if _, err := phone.CreateConversation(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if err := phone.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, laptop, "the laptop lists the conversation", func() bool { return slices.Contains(clientsdk.Titles(t, laptop), "kept") })
	a, _ := laptop.Account()
	if err := phone.RevokeDevice(ctx, a.Device); err != nil {
		t.Fatal(err)
	}
	waitFor(t, laptop, "the laptop stops", func() bool { return laptop.Status().State == clientsdk.StateFailed })
	if err := laptop.Status().Err; connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("terminal error %v, want unauthenticated", err)
	}
	var te *clientsdk.TerminalError
	if !errors.As(laptop.Status().Err, &te) {
		t.Fatalf("terminal error %T %v: not a *TerminalError", laptop.Status().Err, laptop.Status().Err)
	}
	if msg := te.Error(); strings.Count(msg, "ferry: ") > 1 {
		t.Errorf("terminal error %q repeats its prefix", msg)
	}
	// Start after the failure starts over (and fails again): it is not
	// a silent no-op that leaves the device stopped.
	sub := laptop.Subscribe(1024)
	defer sub.Close()
	if err := laptop.Start(); err != nil {
		t.Fatal(err)
	}
	var states []clientsdk.State
	for len(states) < 2 || states[len(states)-1] != clientsdk.StateFailed {
		select {
		case ev := <-sub.C():
			if sc, ok := ev.(clientsdk.StatusChanged); ok && (len(states) == 0 || states[len(states)-1] != sc.Status.State) {
				states = append(states, sc.Status.State)
			}
		case <-time.After(60 * time.Second): // a bound, not a wait for an event
			t.Fatalf("Start after the failure: states %v, want connecting then failed", states)
		}
	}
	if states[0] != clientsdk.StateConnecting {
		t.Errorf("Start after the failure: states %v, want connecting then failed", states)
	}
	// SyncOnce's error is a TerminalError too.
	if err := laptop.SyncOnce(ctx); !errors.As(err, &te) {
		t.Errorf("SyncOnce of a revoked device: %T %v, want a *TerminalError", err, err)
	}
	if b, _ := laptop.Account(); !b.Refused {
		t.Errorf("the revoked device's account %+v does not say it was refused", b)
	}

	// The error says to log in again, and Login does, without a Logout,
	// keeping the replica: the conversation the laptop had synced.
	if err := laptop.Login(ctx, "bob", "correct horse", "bob laptop again"); err != nil {
		t.Fatalf("Login after the server refused the device: %v", err)
	}
	if b, _ := laptop.Account(); b.Device == a.Device || b.User != a.User || b.Refused {
		t.Fatalf("after Login: account %+v, want bob on a new device (was %v), not refused", b, a.Device)
	}
	if err := laptop.SyncOnce(ctx); err != nil {
		t.Fatalf("SyncOnce after Login: %v", err)
	}
	if !slices.Contains(clientsdk.Titles(t, laptop), "kept") {
		t.Fatalf("after Login the laptop lists %q, want the conversation it had", clientsdk.Titles(t, laptop))
	}
	// A profile whose credentials work is still refused a second Login.
	if err := laptop.Login(ctx, "bob", "correct horse", "a third"); err == nil || !strings.Contains(err.Error(), "log out first") {
		t.Fatalf("Login on a signed-in profile: %v, want refused", err)
	}
}

// TestReloginSendsQueuedOpsAsTheRefusedDevice: ops queued on a device
// the server revoked go out after a Login as the revoked device's, with
// its dots, and the new device's own count from 1, in one sync.
func TestReloginSendsQueuedOpsAsTheRefusedDevice(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	phone := device(t, srv, "bob", false)
	laptop := device(t, srv, "bob", true)
	conv, err := laptop.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	if err := laptop.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	old, _ := laptop.Account()
	if err := phone.RevokeDevice(ctx, old.Device); err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{"queued 1", "queued 2"} {
		if _, err := laptop.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
	}
	var te *clientsdk.TerminalError
	if err := laptop.SyncOnce(ctx); !errors.As(err, &te) {
		t.Fatalf("SyncOnce of the revoked laptop: %v, want a terminal error", err)
	}
	if err := laptop.Login(ctx, "bob", "correct horse", "bob laptop again"); err != nil {
		t.Fatal(err)
	}
	if _, err := laptop.SendText(ctx, conv, "from the new device"); err != nil {
		t.Fatal(err)
	}
	if err := laptop.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	failed, err := laptop.Failed()
	if err != nil {
		t.Fatal(err)
	}
	if st := laptop.Status(); st.Pending != 0 || len(failed) != 0 {
		t.Fatalf("after one sync: %d pending, failed %v; want all sent", st.Pending, failed)
	}
	cur, _ := laptop.Account()
	page, err := srv.Engine.History(engine.Actor{User: cur.User, Device: cur.Device}, conv, engine.HistoryQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, op := range page.Ops {
		who := "new"
		if op.Dot.Device == old.Device {
			who = "revoked"
		}
		got = append(got, fmt.Sprintf("%s %d %s", who, op.Dot.N, op.Body))
	}
	want := []string{"revoked 1 ", "revoked 2 queued 1", "revoked 3 queued 2", "new 1 from the new device"}
	if !slices.Equal(got, want) {
		t.Fatalf("the server's log: %q, want %q", got, want)
	}
}

// TestOpIdsShareTheDevicesPrefix checks that op ids come from package
// opid (a prefix per device, which compression finds again) and that
// conversation ids stay wholly random.
func TestOpIdsShareTheDevicesPrefix(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	conv, err := alice.CreateConversation(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	var ids []ulid.ULID
	for i := range 3 {
		id, err := alice.SendText(ctx, conv, fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids[1:] {
		if id == ids[0] || string(id[6:13]) != string(ids[0][6:13]) {
			t.Fatalf("op ids %s and %s: want distinct ids with one prefix", ids[0], id)
		}
	}
	if string(conv[6:13]) == string(ids[0][6:13]) {
		t.Fatalf("conversation id %s shares the op ids' prefix: it must be random", conv)
	}
	if _, err := clientsdk.OpenMemory(clientsdk.WithEntropy(iotest.ErrReader(errors.New("no entropy")))); err == nil {
		t.Fatal("a device opened without entropy for its op ids")
	}
}

// TestOwnMessageReadsConversation: the device's own messages do not come
// back to it (Hello.skip_own_ops), nor, when nothing else changed, does
// their conversation's info; the device still shows what the server has:
// a message read everything before it, so nothing is unread, and the head
// is the message's.
func TestOwnMessageReadsConversation(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	conv, err := alice.CreateConversation(ctx, "reads", lookup(t, alice, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*clientsdk.Device{alice, bob} {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, bob, "bob sees the conversation", func() bool { _, err := bob.Conversation(conv); return err == nil })
	for _, text := range []string{"b1", "b2"} {
		if _, err := bob.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
	}
	unread := func() uint64 {
		c, err := alice.Conversation(conv)
		if err != nil {
			t.Fatal(err)
		}
		return c.Unread
	}
	waitFor(t, alice, "alice has bob's two messages unread", func() bool { return has(t, alice, conv, "b1", "b2")() && unread() == 2 })

	id, err := alice.SendText(ctx, conv, "a1")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "alice's message is accepted", func() bool { return status(t, alice, conv, id) != clientsdk.StatusPending })
	c, err := alice.Conversation(conv)
	if err != nil {
		t.Fatal(err)
	}
	msgs := messages(t, alice, conv)
	if last := msgs[len(msgs)-1]; last.ID != id || c.Head != last.Seq || c.Unread != 0 {
		t.Fatalf("after alice's message (seq %d): head %d, %d unread; want its seq and none", last.Seq, c.Head, c.Unread)
	}
	info, _, _, err := srv.Engine.Conversation(actorOf(t, alice), conv)
	if err != nil {
		t.Fatal(err)
	}
	if info.Unread != 0 || info.Head != c.Head {
		t.Fatalf("the server says head %d, %d unread; the device %d and %d", info.Head, info.Unread, c.Head, c.Unread)
	}

	// Neither device is sent its own message back. Each stream sends in
	// order, so once each has the other's next message, any echo of its
	// own would have been sent before it.
	live := func() uint64 { return srv.Server.Metrics().SentOps[engine.PhaseLive] }
	waitFor(t, bob, "bob has a1", has(t, bob, conv, "b1", "b2", "a1"))
	before := live()
	if _, err := alice.SendText(ctx, conv, "a2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob has a2", has(t, bob, conv, "b1", "b2", "a1", "a2"))
	if _, err := bob.SendText(ctx, conv, "b3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "alice has b3", has(t, alice, conv, "b1", "b2", "a1", "a2", "b3"))
	if n := live() - before; n != 2 {
		t.Fatalf("%d ops sent live for two messages between two devices; want 2, none of them back to its author", n)
	}
}

func actorOf(t *testing.T, d *clientsdk.Device) engine.Actor {
	t.Helper()
	acc, err := d.Account()
	if err != nil {
		t.Fatal(err)
	}
	return engine.Actor{User: acc.User, Device: acc.Device}
}

// TestTransientRefusalIsForgotten: credentials the server refused once
// (here a proxy dropped the Authorization header) and then welcomed again
// are the profile's for good: a Login on it is refused again, as on any
// signed-in profile, instead of replacing a device that works.
func TestTransientRefusalIsForgotten(t *testing.T) {
	var strip atomic.Bool
	srv := servertest.New(t, servertest.Config{Wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strip.Load() {
				r.Header.Del("Authorization")
			}
			h.ServeHTTP(w, r)
		})
	}})
	d := device(t, srv, "alice", false)
	strip.Store(true)
	var te *clientsdk.TerminalError
	if err := d.SyncOnce(ctx); !errors.As(err, &te) || connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("SyncOnce without the header: %v, want a terminal unauthenticated", err)
	}
	strip.Store(false)
	if err := d.SyncOnce(ctx); err != nil {
		t.Fatalf("SyncOnce with the header again: %v", err)
	}
	if err := d.Login(ctx, "alice", "correct horse", "again"); err == nil || !strings.Contains(err.Error(), "log out first") {
		t.Fatalf("Login on a profile whose credentials work again: %v, want refused", err)
	}
}

// TestQueuedOpsOverTheMessageSizeGoOut: messages queued offline that
// together exceed the server's message size go out, in pushes that keep
// to it.
func TestQueuedOpsOverTheMessageSizeGoOut(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	conv, err := alice.CreateConversation(ctx, "photos")
	if err != nil {
		t.Fatal(err)
	}
	// 80 of 60 KB, each under the body limit: 4.8 MB, over the server's
	// 4 MiB message.
	for i := range 80 {
		if _, err := alice.SendText(ctx, conv, strings.Repeat(fmt.Sprint(i%10), 60_000)); err != nil {
			t.Fatal(err)
		}
	}
	sync, cancel := context.WithTimeout(ctx, 30*time.Second) // a bound: the push never went before
	defer cancel()
	if err := alice.SyncOnce(sync); err != nil {
		t.Fatal(err)
	}
	if n := alice.Status().Pending; n != 0 {
		t.Fatalf("%d ops still pending after the sync", n)
	}
	if got := len(messages(t, alice, conv)); got != 80 {
		t.Fatalf("%d messages, want 80", got)
	}
}

// TestChangePassword: a device changes its user's password, signing the
// user's other devices out: they stop with a terminal error, this one
// syncs on, and the user signs in anew with the new password only.
func TestChangePassword(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	phone := device(t, srv, "bob", false)
	laptop := device(t, srv, "bob", true)
	if err := laptop.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, laptop, "the laptop is live", func() bool { return laptop.Status().State == clientsdk.StateLive })
	if _, err := phone.ChangePassword(ctx, "wrong horse", "battery staple", true); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("with a wrong current password: %v; want permission_denied", err)
	}
	n, err := phone.ChangePassword(ctx, "correct horse", "battery staple", true)
	if err != nil || n != 1 {
		t.Fatalf("change: %d, %v; want the laptop signed out", n, err)
	}
	waitFor(t, laptop, "the laptop stops", func() bool { return laptop.Status().State == clientsdk.StateFailed })
	if _, err := phone.CreateConversation(ctx, "still here"); err != nil {
		t.Fatal(err)
	}
	if err := phone.SyncOnce(ctx); err != nil {
		t.Fatalf("the phone after the change: %v", err)
	}
	if err := laptop.Login(ctx, "bob", "correct horse", "laptop"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("the laptop signing in with the old password: %v; want unauthenticated", err)
	}
	if err := laptop.Login(ctx, "bob", "battery staple", "laptop"); err != nil {
		t.Fatalf("the laptop signing in with the new password: %v", err)
	}
}

// TestBlockUser: a user blocks another, whose add of them then fails on
// the adder's device (Failed, with the reason), their other ops going
// through; unblocked, the add goes.
func TestBlockUser(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	bob := device(t, srv, "bob", false)
	aliceID, bobID := lookup(t, bob, "alice"), lookup(t, alice, "bob")
	if err := bob.BlockUser(ctx, aliceID); err != nil {
		t.Fatal(err)
	}
	if us, err := bob.BlockedUsers(ctx); err != nil || len(us) != 1 || us[0].ID != aliceID || us[0].Username != "alice" {
		t.Fatalf("blocked users: %+v, %v; want alice", us, err)
	}
	conv, err := alice.CreateConversation(ctx, "spam")
	if err != nil {
		t.Fatal(err)
	}
	add, err := alice.AddMember(ctx, conv, bobID, clientsdk.RoleMember)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	failed, err := alice.Failed()
	if err != nil || len(failed) != 1 || failed[0].Op != add || failed[0].Reason != "PERMISSION_DENIED" ||
		!strings.Contains(failed[0].Message, "does not accept being added to conversations by you") {
		t.Fatalf("failed: %+v, %v; want the add, permission denied, saying why", failed, err)
	}
	if err := bob.UnblockUser(ctx, aliceID); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.AddMember(ctx, conv, bobID, clientsdk.RoleMember); err != nil {
		t.Fatal(err)
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if failed, _ := alice.Failed(); len(failed) != 1 {
		t.Fatalf("failed after unblocking: %+v; want the first add alone", failed)
	}
}
