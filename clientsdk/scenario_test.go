package clientsdk_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/server/servertest"
)

func TestNewDeviceGetsFullHistory(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	device(t, srv, "bob", false) // bob's first device
	bobID := lookup(t, alice, "bob")
	var convs []ulid.ULID
	want := map[ulid.ULID][]string{}
	for i := range 3 {
		c, _ := alice.CreateConversation(ctx, fmt.Sprint("room ", i), bobID)
		convs = append(convs, c)
		for j := range 120 {
			text := fmt.Sprintf("%d-%d", i, j)
			alice.SendText(ctx, c, text)
			want[c] = append(want[c], text)
		}
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := device(t, srv, "bob", true) // a new device, years later
	if err := fresh.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range convs {
		if got := texts(messages(t, fresh, c)); strings.Join(got, ",") != strings.Join(want[c], ",") {
			t.Fatalf("%s: new device holds %d messages, want %d in order", c, len(got), len(want[c]))
		}
		page, _ := fresh.Messages(c, clientsdk.PageOptions{Limit: 10})
		if page.OlderLoading || !page.More {
			t.Fatalf("%s: first page says older loading %v, more %v", c, page.OlderLoading, page.More)
		}
	}
}

// TestUnreadAgreesAfterConcurrentReads: two of bob's devices read at the
// same time, to different points; both end showing the furthest read.
func TestUnreadAgreesAfterConcurrentReads(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	phone, laptop := device(t, srv, "bob", false), device(t, srv, "bob", true)
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	for i := range 10 {
		alice.SendText(ctx, conv, fmt.Sprint(i))
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*clientsdk.Device{phone, laptop} {
		if err := d.SyncOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = phone.MarkRead(ctx, conv, 7) })   // 5 of 10 read
	wg.Go(func() { _ = laptop.MarkRead(ctx, conv, 10) }) // 8 of 10 read
	wg.Wait()
	agree := func(d *clientsdk.Device, want uint64) func() bool {
		return func() bool { c, err := d.Conversation(conv); return err == nil && c.Unread == want }
	}
	waitFor(t, phone, "the phone shows the laptop's read", agree(phone, 2))
	waitFor(t, laptop, "the laptop keeps its read", agree(laptop, 2))
	if err := phone.MarkRead(ctx, conv, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, laptop, "the laptop clears", agree(laptop, 0))
	waitFor(t, phone, "the phone clears", agree(phone, 0))
}

// TestRemovedMemberKeepsWhatItHad: a removed member's device stops
// receiving at the removal, keeps what it had, and cannot send.
func TestRemovedMemberKeepsWhatItHad(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := device(t, srv, "alice", false), device(t, srv, "bob", false)
	bobID := lookup(t, alice, "bob")
	conv, _ := alice.CreateConversation(ctx, "c", bobID)
	for _, text := range []string{"one", "two", "three"} {
		alice.SendText(ctx, conv, text)
	}
	for _, d := range []*clientsdk.Device{alice, bob} {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, bob, "bob has three", has(t, bob, conv, "one", "two", "three"))
	alice.RemoveMember(ctx, conv, bobID)
	alice.SendText(ctx, conv, "after bob left")
	waitFor(t, bob, "bob sees his removal", func() bool { c, err := bob.Conversation(conv); return err == nil && c.Removed })
	other, _ := alice.CreateConversation(ctx, "still friends", bobID)
	alice.SendText(ctx, other, "sentinel")
	waitFor(t, bob, "bob receives what came after, elsewhere", has(t, bob, other, "sentinel"))
	if got := texts(messages(t, bob, conv)); strings.Join(got, ",") != "one,two,three" {
		t.Fatalf("removed member holds %q", got)
	}
	if _, err := bob.SendText(ctx, conv, "let me back in"); err == nil || !strings.Contains(err.Error(), "no longer a member") {
		t.Fatalf("a removed member sends: %v", err)
	}
}
