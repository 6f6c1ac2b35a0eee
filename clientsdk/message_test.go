package clientsdk_test

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestMessageReadsOneAsThePageShowsIt: Message gives each message of a
// conversation as its page does, sent, pending or failed, with the edits,
// deletes and reactions it has, those still in the outbox included; and
// MessagesChanged names the message an edit or a reaction shows on, an
// old one too, which is how an app finds what to redraw without reading
// the conversation again.
func TestMessageReadsOneAsThePageShowsIt(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	first, _ := alice.SendText(ctx, conv, "first")
	for i := range 20 {
		_, _ = alice.SendText(ctx, conv, string(rune('a'+i)))
	}
	sync := func(ds ...*clientsdk.Device) {
		t.Helper()
		for _, d := range ds {
			if err := d.SyncOnce(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	sync(alice, bob)

	sub := bob.Subscribe(1024)
	defer sub.Close()
	edit, _ := alice.Edit(ctx, conv, first, []byte("first, edited"), "text/plain")
	react, _ := alice.React(ctx, conv, first, "👍")
	sync(alice, bob)
	var named []ulid.ULID
	for range len(sub.C()) {
		if ev, ok := (<-sub.C()).(clientsdk.MessagesChanged); ok && ev.Conv == conv {
			named = append(named, ev.Messages...)
			if !slices.Contains(ev.IDs, edit) && !slices.Contains(ev.IDs, react) {
				t.Fatalf("an event of bob's sync names ops %v, not alice's edit or reaction", ev.IDs)
			}
		}
	}
	if !slices.Equal(named, []ulid.ULID{first}) {
		t.Fatalf("MessagesChanged.Messages of alice's edit and reaction: %v; want her first message %s alone", named, first)
	}
	m, err := bob.Message(conv, first)
	if err != nil || m.Text() != "first, edited" || !m.Edited || len(m.Reactions) != 1 || m.AuthorName != "alice" {
		t.Fatalf("bob's Message(first): %+v %v", m, err)
	}
	for _, id := range []ulid.ULID{edit, react, ulid.Make()} {
		if _, err := bob.Message(conv, id); !errors.Is(err, clientsdk.ErrNoMessage) {
			t.Fatalf("Message of %s, no message: %v; want ErrNoMessage", id, err)
		}
	}
	if _, err := bob.Message(ulid.Make(), first); !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Fatalf("Message in a conversation bob does not hold: %v", err)
	}

	// Offline, bob queues a message, edits it, and reacts to alice's and
	// to his own: what Message gives is what the page shows.
	sent, _ := bob.SendText(ctx, conv, "bob's")
	sync(bob)
	pending, _ := bob.SendText(ctx, conv, "pending")
	if _, err := bob.Edit(ctx, conv, sent, []byte("bob's, edited"), "text/plain"); err != nil {
		t.Fatal(err)
	}
	if _, err := bob.React(ctx, conv, pending, "🎉"); err != nil {
		t.Fatal(err)
	}
	matchesPage(t, bob, conv)
	if m, _ := bob.Message(conv, pending); m.Status != clientsdk.StatusPending || len(m.Reactions) != 1 {
		t.Fatalf("bob's pending message: %+v", m)
	}
	if m, _ := bob.Message(conv, sent); m.Text() != "bob's, edited" || !m.Edited {
		t.Fatalf("bob's message, its edit pending: %+v", m)
	}
	sync(bob, alice)
	matchesPage(t, alice, conv)
	matchesPage(t, bob, conv)
}

// matchesPage checks that Message gives each message of conv's pages as
// the page gives it.
func matchesPage(t *testing.T, d *clientsdk.Device, conv ulid.ULID) {
	t.Helper()
	p, err := d.Messages(conv, clientsdk.PageOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) < 2 {
		t.Fatalf("a page of %d messages", len(p.Messages))
	}
	for _, want := range p.Messages {
		got, err := d.Message(conv, want.ID)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("Message(%s): %+v %v; the page shows %+v", want.ID, got, err, want)
		}
	}
	// Oldest first, an id of no message among them, and the oldest again:
	// each message once, in the order asked.
	want := slices.Clone(p.Messages)
	slices.Reverse(want)
	ids := []ulid.ULID{ulid.Make()}
	for _, m := range want {
		ids = append(ids, m.ID)
	}
	ids = append(ids, want[0].ID)
	got, err := d.MessagesByID(conv, ids...)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("MessagesByID of the page's messages, oldest first: %d messages, %v; want the %d of the page, in order", len(got), err, len(want))
	}
}
