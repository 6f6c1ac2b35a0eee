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
