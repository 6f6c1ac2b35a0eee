package clientsdk_test

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/server/servertest"
)

// authors returns the author names of conv's messages, in order.
func authors(t *testing.T, d *clientsdk.Device, conv ulid.ULID) []string {
	t.Helper()
	var out []string
	for _, m := range messages(t, d, conv) {
		out = append(out, m.AuthorName)
	}
	return out
}

// TestSyncOnceLearnsAuthorNames: a device that syncs with SyncOnce alone
// knows the authors' names of a new conversation's messages once it
// returns. The member refresh used to run in the background under
// SyncOnce's context, which ended as SyncOnce returned, and emptied the
// list of conversations to refresh as it began: the names were lost for
// good. Here the server's answer to the refresh is held until SyncOnce's
// ack is answered, the moment SyncOnce used to return.
func TestSyncOnceLearnsAuthorNames(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	acked := make(chan struct{})
	var once atomic.Bool
	alice := device(t, srv, "alice", false, clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "/GetConversation") {
			select {
			case <-acked:
			case <-r.Context().Done(): // no ack: the refresh's bound ends it, and the test fails
				return nil, r.Context().Err()
			}
		}
		resp, err := srv.HTTP.Transport.RoundTrip(r)
		if strings.HasSuffix(r.URL.Path, "/Ack") && once.CompareAndSwap(false, true) {
			close(acked)
		}
		return resp, err
	})}))
	_, conv := roomWithBob(t, srv, "hello from bob")
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := authors(t, alice, conv); len(got) != 1 || got[0] != "bob" {
		t.Fatalf("author names %q once SyncOnce returned, want [bob]", got)
	}
}

// TestLiveDeviceLearnsAuthorNames: a conversation that appears while the
// device is live has its members fetched too, not only those of a
// catch-up, and the device says so (ConversationChanged): the
// application shows the authors' names.
func TestLiveDeviceLearnsAuthorNames(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	defer alice.Stop()
	waitFor(t, alice, "live", func() bool { return alice.Status().State == clientsdk.StateLive })
	_, conv := roomWithBob(t, srv, "hello from bob")
	waitFor(t, alice, "bob's name on his message", func() bool {
		if !has(t, alice, conv, "hello from bob")() { // the conversation may not have come yet
			return false
		}
		got := authors(t, alice, conv)
		return len(got) == 1 && got[0] == "bob"
	})
}

// TestMembersAcrossASignIn: a member list fetched for a user who signed
// out, and another signed in, before it came is not the new user's: it
// stays out of their replica.
func TestMembersAcrossASignIn(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	asked, answer := make(chan struct{}), make(chan struct{})
	var hold atomic.Bool
	alice := device(t, srv, "alice", false, clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		resp, err := srv.HTTP.Transport.RoundTrip(r)
		if hold.Load() && strings.HasSuffix(r.URL.Path, "/GetConversation") {
			close(asked) // the server answered alice
			<-answer
		}
		return resp, err
	})}))
	_, conv := roomWithBob(t, srv, "hello from bob")
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	device(t, srv, "carol", false) // registered, to sign in as on alice's device
	hold.Store(true)
	fetched := make(chan error, 1)
	go func() {
		_, err := alice.Members(ctx, conv)
		fetched <- err
	}()
	<-asked
	if err := alice.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if err := alice.Login(ctx, "carol", "correct horse", "carol on alice's phone"); err != nil {
		t.Fatal(err)
	}
	close(answer)
	if err := <-fetched; !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Fatalf("Members across the sign-in: %v, want ErrUnknownConversation", err)
	}
	if ms, err := alice.Members(ctx, conv); !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Fatalf("carol's Members of alice's conversation: %v, %v; want ErrUnknownConversation", ms, err)
	}
}

// TestCloseDuringSyncOncesRefresh: a SyncOnce that Close cuts while it
// fetches member lists returns ErrClosed, as Close says, not success.
func TestCloseDuringSyncOncesRefresh(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	asked := make(chan struct{})
	var once atomic.Bool
	alice := device(t, srv, "alice", false, clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "/GetConversation") && once.CompareAndSwap(false, true) {
			close(asked)
			<-r.Context().Done() // an answer that never comes
			return nil, r.Context().Err()
		}
		return srv.HTTP.Transport.RoundTrip(r)
	})}))
	roomWithBob(t, srv, "hello from bob")
	done := make(chan error, 1)
	go func() { done <- alice.SyncOnce(ctx) }()
	select {
	case <-asked:
	case <-time.After(hangGuard):
		t.Fatal("SyncOnce fetched no member list")
	}
	if err := alice.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, clientsdk.ErrClosed) {
		t.Fatalf("SyncOnce cut by Close as it fetched members: %v, want ErrClosed", err)
	}
}

// TestMemberRefreshRestsAfterAFailure: a member list the server could
// not give for now is asked for again only after a rest
// (refreshTimeout, 30 s), not at every sync or live round that follows:
// a server that turns calls away gets a rest.
func TestMemberRefreshRestsAfterAFailure(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	var asked atomic.Int32
	var refuse atomic.Bool
	refuse.Store(true)
	alice := device(t, srv, "alice", false, clientsdk.WithClock(fake), clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "/GetConversation") {
			asked.Add(1)
			if refuse.Load() {
				return nil, errors.New("overloaded")
			}
		}
		return srv.HTTP.Transport.RoundTrip(r)
	})}))
	_, conv := roomWithBob(t, srv, "hello from bob")
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("%d member list calls in the first sync, want 1", n)
	}
	refuse.Store(false)
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := asked.Load(); n != 1 {
		t.Fatalf("%d member list calls once the first failed, at once, want still 1", n)
	}
	fake.Advance(30 * time.Second)
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := authors(t, alice, conv); asked.Load() != 2 || len(got) != 1 || got[0] != "bob" {
		t.Fatalf("after the rest: %d calls, author names %q; want 2 calls and [bob]", asked.Load(), got)
	}
}

// TestRenameReachesALiveDevice: a title another member sets reaches a
// live device as a ConversationChanged with the new title, and the
// conversation list shows it.
func TestRenameReachesALiveDevice(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	bob, conv := roomWithBob(t, srv, "hello")
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	sub := alice.Subscribe(1024)
	defer sub.Close()
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "alice is live", func() bool { return alice.Status().State == clientsdk.StateLive })
	if _, err := bob.SetTitle(ctx, conv, "renamed"); err != nil {
		t.Fatal(err)
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-sub.C():
			if c, ok := ev.(clientsdk.ConversationChanged); ok && c.Conv == conv {
				if got, err := alice.Conversation(conv); err == nil && got.Title == "renamed" {
					if cs, _ := alice.Conversations(); len(cs) != 1 || cs[0].Title != "renamed" {
						t.Fatalf("the conversation list after the rename: %+v", cs)
					}
					return
				}
			}
		case <-time.After(60 * time.Second): // a bound, not a wait for an event
			t.Fatal("no ConversationChanged with the new title")
		}
	}
}

// TestASwapOfMembersIsFetched: a membership op fetches the member list
// again even when the count stays (one member removed and another added
// in one push): the newcomer's messages carry their name.
func TestASwapOfMembersIsFetched(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob, carol := device(t, srv, "alice", false), device(t, srv, "bob", false), device(t, srv, "carol", false)
	dave := device(t, srv, "dave", false)
	conv, _ := alice.CreateConversation(ctx, "room", lookup(t, alice, "bob"), lookup(t, alice, "carol"))
	sync := func(ds ...*clientsdk.Device) {
		t.Helper()
		for _, d := range ds {
			if err := d.SyncOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	alice.SendText(ctx, conv, "hello")
	sync(alice, bob, carol)
	if got := authors(t, bob, conv); len(got) != 1 || got[0] != "alice" {
		t.Fatalf("bob's authors: %q", got)
	}
	alice.RemoveMember(ctx, conv, lookup(t, alice, "carol"))
	alice.AddMember(ctx, conv, lookup(t, alice, "dave"), clientsdk.RoleMember)
	sync(alice, dave)
	dave.SendText(ctx, conv, "hi, I'm dave")
	sync(dave, bob)
	if got := authors(t, bob, conv); len(got) != 2 || got[1] != "dave" {
		t.Fatalf("bob's authors after carol left and dave came: %q; want dave named", got)
	}
}

// TestDisplayNameAndDeviceNames: a user's new display name is what the
// members' list gives on each member's devices (alice's when it next
// asks); the device that set it says so at once (ConversationChanged) for
// the conversations whose members it holds. A device renamed is listed
// so; a name out of bounds is the server's invalid_argument.
func TestDisplayNameAndDeviceNames(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	bob, conv := roomWithBob(t, srv, "hello")
	if _, err := bob.Members(ctx, conv); err != nil {
		t.Fatal(err)
	}
	sub := bob.Subscribe(16)
	defer sub.Close()
	u, err := bob.SetDisplayName(ctx, "Bob Dylan")
	if err != nil || u.DisplayName != "Bob Dylan" || u.Username != "bob" {
		t.Fatalf("set: %+v, %v", u, err)
	}
	select {
	case ev := <-sub.C():
		if c, ok := ev.(clientsdk.ConversationChanged); !ok || c.Conv != conv {
			t.Errorf("event %#v; want ConversationChanged for the room", ev)
		}
	default:
		t.Error("no event for the room, whose members show the name")
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	ms, err := alice.Members(ctx, conv)
	if err != nil || !slices.ContainsFunc(ms, func(m clientsdk.Member) bool {
		return m.User.Username == "bob" && m.User.DisplayName == "Bob Dylan"
	}) {
		t.Errorf("the members alice is shown: %+v, %v; want bob's new name", ms, err)
	}
	// His message shows it, on both devices.
	for _, d := range []*clientsdk.Device{bob, alice} {
		if m := messages(t, d, conv); len(m) != 1 || m[0].AuthorName != "bob" || m[0].AuthorDisplayName != "Bob Dylan" {
			t.Errorf("his message: %+v; want his username and new display name", m)
		}
	}
	if _, err := bob.SetDisplayName(ctx, "line\nbreak"); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("a name with a newline: %v; want invalid_argument", err)
	}

	acc, err := bob.Account()
	if err != nil {
		t.Fatal(err)
	}
	if d, err := bob.RenameDevice(ctx, acc.Device, "work laptop"); err != nil || d.Name != "work laptop" || !d.Current {
		t.Fatalf("rename: %+v, %v", d, err)
	}
	ds, err := bob.Devices(ctx)
	if err != nil || len(ds) != 1 || ds[0].Name != "work laptop" {
		t.Errorf("his devices: %+v, %v", ds, err)
	}
	aliceAcc, err := alice.Account()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.RenameDevice(ctx, aliceAcc.Device, "mine"); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("rename alice's device: %v; want not_found", err)
	}
}

// TestMembersAnsweredBeforeANameChange: a member list the server gave
// before the user's SetDisplayName, which reaches the device after it,
// does not bring their old name back.
func TestMembersAnsweredBeforeANameChange(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	var hold atomic.Bool
	answered, release := make(chan struct{}), make(chan struct{})
	alice := device(t, srv, "alice", false, clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		resp, err := srv.HTTP.Transport.RoundTrip(r)
		if strings.HasSuffix(r.URL.Path, "/GetConversation") && hold.CompareAndSwap(true, false) {
			close(answered)
			<-release
		}
		return resp, err
	})}))
	conv, err := alice.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	hold.Store(true)
	got := make(chan []clientsdk.Member, 1)
	go func() {
		ms, err := alice.Members(ctx, conv)
		if err != nil {
			t.Error(err)
		}
		got <- ms
	}()
	<-answered // with her name as it was
	if _, err := alice.SetDisplayName(ctx, "Alice Liddell"); err != nil {
		t.Fatal(err)
	}
	close(release)
	if ms := <-got; len(ms) != 1 || ms[0].User.DisplayName != "Alice Liddell" {
		t.Errorf("members: %+v; want her new name", ms)
	}
}

// TestLookupUserNewDisplayNameIsAnnounced: a LookupUser that teaches the
// device a member's new display name, which their messages show
// (AuthorDisplayName), says so, as Members and SetDisplayName do:
// ConversationChanged for the conversations whose members it holds.
func TestLookupUserNewDisplayNameIsAnnounced(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	bob, conv := roomWithBob(t, srv, "hello")
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Members(ctx, conv); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SetDisplayName(ctx, "Bob Dylan"); err != nil {
		t.Fatal(err)
	}
	sub := alice.Subscribe(64)
	defer sub.Close()
	if u, err := alice.LookupUser(ctx, "bob"); err != nil || u.DisplayName != "Bob Dylan" {
		t.Fatalf("lookup: %+v, %v", u, err)
	}
	if m := messages(t, alice, conv); len(m) != 1 || m[0].AuthorDisplayName != "Bob Dylan" {
		t.Fatalf("alice's messages: %+v", m)
	}
	if !toldOf(sub, conv) {
		t.Error("his message now shows his new display name, but alice's device told its listeners nothing")
	}
}

// TestSetDisplayNameAnsweredAfterAnotherUserSignedIn: alice's
// SetDisplayName answered after she logged out and bob logged in on the
// same profile is not bob's: it neither writes her record into his
// replica nor counts as a name change of his, which would have his
// member list, answered meanwhile, skip his own record (his messages
// then without his name).
func TestSetDisplayNameAnsweredAfterAnotherUserSignedIn(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	bob := device(t, srv, "bob", false)
	conv, err := bob.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bob.SendText(ctx, conv, "mine"); err != nil {
		t.Fatal(err)
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}

	var holdName, holdMembers atomic.Bool
	nameAnswered, nameRelease := make(chan struct{}), make(chan struct{})
	membersAnswered, membersRelease := make(chan struct{}), make(chan struct{})
	d := device(t, srv, "alice", false, clientsdk.WithHTTPClient(&http.Client{Transport: roundTrip(func(r *http.Request) (*http.Response, error) {
		resp, err := srv.HTTP.Transport.RoundTrip(r)
		if strings.HasSuffix(r.URL.Path, "/SetDisplayName") && holdName.CompareAndSwap(true, false) {
			close(nameAnswered)
			<-nameRelease
		}
		if strings.HasSuffix(r.URL.Path, "/GetConversation") && holdMembers.CompareAndSwap(true, false) {
			close(membersAnswered)
			<-membersRelease
		}
		return resp, err
	})}))
	holdName.Store(true)
	named := make(chan error, 1)
	go func() {
		_, err := d.SetDisplayName(ctx, "Alice Liddell")
		named <- err
	}()
	<-nameAnswered // the server set alice's name; the answer is on its way
	if err := d.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Login(ctx, "bob", "correct horse", "shared laptop"); err != nil {
		t.Fatal(err)
	}
	holdMembers.Store(true)
	synced := make(chan error, 1)
	go func() { synced <- d.SyncOnce(ctx) }() // fetches bob's conversation's members
	<-membersAnswered
	close(nameRelease)
	if err := <-named; err != nil {
		t.Fatal(err)
	}
	close(membersRelease)
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	if m := messages(t, d, conv); len(m) != 1 || m[0].AuthorName != "bob" {
		t.Errorf("bob's own message on the profile he signed in to: %+v; want AuthorName bob", m)
	}
}

// TestFormerMemberNewDisplayNameIsAnnounced: a new display name of a
// user who left a conversation shows on their messages there: the device
// that learns it (here by LookupUser) tells that conversation too.
func TestFormerMemberNewDisplayNameIsAnnounced(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	bob, conv := roomWithBob(t, srv)
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendText(ctx, conv, "hello, and goodbye"); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Leave(ctx, conv); err != nil {
		t.Fatal(err)
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.Members(ctx, conv); err != nil {
		t.Fatal(err)
	}
	if m := messages(t, bob, conv); len(m) != 1 || m[0].AuthorDisplayName != "alice" {
		t.Fatalf("bob's messages: %+v; want hers, named", m)
	}

	if _, err := alice.SetDisplayName(ctx, "Alice Liddell"); err != nil {
		t.Fatal(err)
	}
	sub := bob.Subscribe(64)
	defer sub.Close()
	if _, err := bob.LookupUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if m := messages(t, bob, conv); len(m) != 1 || m[0].AuthorDisplayName != "Alice Liddell" {
		t.Fatalf("bob's messages: %+v; want her new name", m)
	}
	if !toldOf(sub, conv) {
		t.Error("her message in the room she left now shows her new display name, but bob's device told its listeners nothing")
	}
}

// toldOf takes the events sub holds, and reports whether one was a
// ConversationChanged for conv.
func toldOf(sub *clientsdk.Subscription, conv ulid.ULID) bool {
	told := false
	for len(sub.C()) > 0 {
		if c, ok := (<-sub.C()).(clientsdk.ConversationChanged); ok && c.Conv == conv {
			told = true
		}
	}
	return told
}
