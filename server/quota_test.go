package server_test

import (
	"context"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/engine"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestQuotaExceededIsAReason: an op past the user's storage quota (here:
// the conversation's create, 36 bytes, and a message, 106) is
// answered REJECTED with its own reason, which says how much the user
// holds, while the ops before it in the push are stored.
func TestQuotaExceededIsAReason(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Engine: func(o *engine.Options) { o.UserQuota = 200 }})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("room")
	resp, err := alice.Sync.Push(context.Background(), &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: messages(alice, conv, 2, 60)}}})
	if err != nil {
		t.Fatal(err)
	}
	rs := resp.GetResults()
	if len(rs) != 2 || rs[0].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED {
		t.Fatalf("results %v; want the first message stored", rs)
	}
	if r := rs[1]; r.GetStatus() != ferryv1.OpStatus_OP_STATUS_REJECTED || r.GetReason() != ferryv1.RejectReason_REJECT_REASON_QUOTA_EXCEEDED ||
		!strings.Contains(r.GetMessage(), "hold 142 bytes of the 200 bytes each user may store here") {
		t.Fatalf("the second message's result: %v; want it rejected for the quota, saying what alice holds", r)
	}
	if m := srv.Server.Metrics(); m.OpsOverQuota != 1 || m.PushOps["rejected"] != 1 {
		t.Fatalf("metrics: %d over the quota, %d rejected; want 1 and 1", m.OpsOverQuota, m.PushOps["rejected"])
	}
}
