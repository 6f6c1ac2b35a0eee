package clientsdk

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/server/servertest"
)

// TestSignInNumbersTheNewDeviceApart: a sign-in as the same user keeps
// the ops queued on the device before, with that device's dots; the new
// device's own count from 1 in every conversation, and renumbering one
// device's ops leaves the other's as they are.
func TestSignInNumbersTheNewDeviceApart(t *testing.T) {
	ctx := context.Background()
	srv := servertest.New(t, servertest.Config{})
	d, err := OpenMemory(WithServer(srv.URL), WithHTTPClient(srv.HTTP))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Register(ctx, "bob", "correct horse", "phone"); err != nil {
		t.Fatal(err)
	}
	first, _ := d.Account()
	conv, err := d.CreateConversation(ctx, "notes") // dot 1, queued
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.SendText(ctx, conv, "queued"); err != nil { // dot 2
		t.Fatal(err)
	}
	if err := d.Logout(ctx); err != nil { // the replica, and its outbox, stay for bob
		t.Fatal(err)
	}
	if err := d.Login(ctx, "bob", "correct horse", "phone again"); err != nil {
		t.Fatal(err)
	}
	second, _ := d.Account()
	d.mu.Lock()
	next := d.convs[conv].NextDot
	d.mu.Unlock()
	if next != 0 {
		t.Fatalf("after the sign-in the conversation's next dot is %d, want 0: the new device has given none", next)
	}
	if _, err := d.SendText(ctx, conv, "mine"); err != nil {
		t.Fatal(err)
	}
	queued := func() []string {
		t.Helper()
		var out []string
		for _, ref := range d.pending {
			_, op, err := d.outboxOp(ref.local)
			if err != nil {
				t.Fatal(err)
			}
			who := map[string]string{first.Device.String(): "first", second.Device.String(): "second"}[op.GetDeviceId()]
			out = append(out, fmt.Sprintf("%s %d", who, op.GetDot()))
		}
		slices.Sort(out)
		return out
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if got, want := queued(), []string{"first 1", "first 2", "second 1"}; !slices.Equal(got, want) {
		t.Fatalf("queued %q, want %q", got, want)
	}
	for _, c := range []struct {
		device ulid.ULID
		from   uint64
		want   []string
		next   uint64
	}{
		{first.Device, 7, []string{"first 7", "first 8", "second 1"}, 1},
		{second.Device, 4, []string{"first 7", "first 8", "second 4"}, 4},
	} {
		if err := d.renumber(convDevice{conv, c.device}, renumbering{first: c.from}); err != nil {
			t.Fatal(err)
		}
		if got := queued(); !slices.Equal(got, c.want) || d.convs[conv].NextDot != c.next {
			t.Fatalf("renumbered from %d: queued %q, next dot %d; want %q, %d", c.from, got, d.convs[conv].NextDot, c.want, c.next)
		}
	}
}
