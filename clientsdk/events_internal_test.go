package clientsdk

import (
	"context"
	"fmt"
	"testing"

	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// TestPushResultsChangeTheConversation: a conversation list shows its
// last message's status, so a push result that sends the message, or
// refuses it, is a ConversationChanged for its conversation as well as a
// MessagesChanged (the device's own ops do not come back in a live round,
// whose conversation info would say it).
func TestPushResultsChangeTheConversation(t *testing.T) {
	for _, status := range []ferryv1.OpStatus{ferryv1.OpStatus_OP_STATUS_ACCEPTED, ferryv1.OpStatus_OP_STATUS_REJECTED} {
		t.Run(status.String(), func(t *testing.T) {
			d := memoryDevice(t)
			conv := ulid.Make()
			d.mu.Lock()
			d.creds = &credentials{User: ulid.Make().String(), Device: ulid.Make().String(), Username: "me"}
			d.convs[conv] = &convRecord{Title: "c", Role: ferryv1.Role_ROLE_MEMBER, NextDot: 1}
			d.mu.Unlock()
			id, err := d.SendText(context.Background(), conv, "hello")
			if err != nil {
				t.Fatal(err)
			}
			sub := d.Subscribe(64)
			defer sub.Close()
			r := &ferryv1.OpResult{OpId: id.String(), Status: status, Seq: 1}
			if status == ferryv1.OpStatus_OP_STATUS_REJECTED {
				r.Seq, r.Reason = 0, ferryv1.RejectReason_REJECT_REASON_PERMISSION_DENIED
			}
			if err := (&session{d: d}).results(&ferryv1.PushResult{Results: []*ferryv1.OpResult{r}}); err != nil {
				t.Fatal(err)
			}
			var kinds []string
			changed := false
			for range len(sub.C()) {
				ev := <-sub.C()
				kinds = append(kinds, fmt.Sprintf("%T", ev))
				if c, ok := ev.(ConversationChanged); ok && c.Conv == conv {
					changed = true
				}
			}
			if !changed {
				t.Errorf("events %v; want a ConversationChanged", kinds)
			}
		})
	}
}

// TestCutCatchUpKeepsTheOrder: a catch-up cut off after its first
// Conversations message placed those conversations above the rest of its
// own; the next catch-up, which lists them all again (the device saved no
// position), places them again in the server's order, not below the rest.
func TestCutCatchUpKeepsTheOrder(t *testing.T) {
	d := memoryDevice(t)
	a, b, c := ulid.Make(), ulid.Make(), ulid.Make()
	info := func(id ulid.ULID, title string) *ferryv1.ConversationInfo {
		return &ferryv1.ConversationInfo{Id: id.String(), Title: title, Head: 1, MemberCount: 2}
	}
	catchUp := func(msgs ...[]*ferryv1.ConversationInfo) {
		t.Helper()
		d.mu.Lock()
		ranks := d.reserveRanks(3)
		d.mu.Unlock()
		for _, m := range msgs {
			if _, err := d.applyInfos(m, &ranks); err != nil {
				t.Fatal(err)
			}
		}
	}
	catchUp([]*ferryv1.ConversationInfo{info(a, "a"), info(b, "b")}) // cut off after its first message
	catchUp([]*ferryv1.ConversationInfo{info(a, "a"), info(b, "b")}, []*ferryv1.ConversationInfo{info(c, "c")})
	if got := fmt.Sprint(Titles(t, d)); got != "[a b c]" {
		t.Fatalf("after a catch-up cut off and one whole, the list is %s; want [a b c], the server's order", got)
	}

	// Caught up. A live round moves c up, then a send moves b; the next
	// catch-up lists c for a marker alone (the server's order counts
	// markers): c keeps its place below b.
	d.mu.Lock()
	d.catchingUp = false // CaughtUp
	d.mu.Unlock()
	cNews := info(c, "c")
	cNews.Head = 2
	if _, err := d.applyInfos([]*ferryv1.ConversationInfo{cNews}, nil); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.changed++
	d.convs[b].Changed = d.changed // what a send does
	d.mu.Unlock()
	catchUp([]*ferryv1.ConversationInfo{cNews})
	if got := fmt.Sprint(Titles(t, d)); got != "[b c a]" {
		t.Fatalf("after a live move, a send and a catch-up with a marker, the list is %s; want [b c a]", got)
	}
}

// Titles lists d's conversations by title, in the list's order: for this
// package's tests and, exported from a test file, the external ones.
func Titles(t testing.TB, d *Device) []string {
	t.Helper()
	cs, err := d.Conversations()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range cs {
		out = append(out, c.Title)
	}
	return out
}
