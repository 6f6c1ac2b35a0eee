package clientsdk_test

import (
	"strings"
	"testing"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestQuotaExceededFailsTheMessage: a message past the user's storage
// quota fails, with the reason and the server's words, and the messages
// queued after it go out; once the user deletes a message, the text sent
// again is stored.
func TestQuotaExceededFailsTheMessage(t *testing.T) {
	// The create takes 33 bytes of alice's 280; a message of 100, 142.
	srv := servertest.New(t, servertest.Config{Engine: func(o *engine.Options) { o.UserQuota = 280 }})
	alice := device(t, srv, "alice", false)
	conv, _ := alice.CreateConversation(ctx, "c")
	first, _ := alice.SendText(ctx, conv, strings.Repeat("a", 100))
	big, _ := alice.SendText(ctx, conv, strings.Repeat("b", 100))
	alice.SendText(ctx, conv, "small")
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	fs, _ := alice.Failed()
	if len(fs) != 1 || fs[0].Op != big || fs[0].Reason != "QUOTA_EXCEEDED" || !strings.Contains(fs[0].Message, "delete some of your messages to make room") {
		t.Fatalf("failed: %+v; want the second message, over the quota", fs)
	}
	if m, _ := alice.Message(conv, big); m.Status != clientsdk.StatusFailed {
		t.Fatalf("the message over the quota: %+v; want it failed", m)
	}
	if got := texts(messages(t, alice, conv)); len(got) != 3 || got[1] != "small" {
		t.Fatalf("messages: %q; want the message after the refused one sent", got)
	}
	// The create, the first message and "small": 33 + 142 + 47 bytes.
	if u, err := alice.Usage(ctx); err != nil || u != (clientsdk.Usage{Bytes: 222, Quota: 280}) {
		t.Fatalf("usage: %+v %v; want 222 bytes of 280", u, err)
	}
	if _, err := alice.Delete(ctx, conv, first); err != nil {
		t.Fatal(err)
	}
	if err := alice.DismissFailed(big); err != nil {
		t.Fatal(err)
	}
	again, _ := alice.SendText(ctx, conv, strings.Repeat("b", 100))
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if m, err := alice.Message(conv, again); err != nil || m.Seq == 0 {
		t.Fatalf("the text sent again after a delete: %+v %v; want it stored", m, err)
	}
	if fs, _ := alice.Failed(); len(fs) != 0 {
		t.Fatalf("failed after: %+v", fs)
	}
}
