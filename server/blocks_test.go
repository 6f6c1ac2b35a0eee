package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestBlockUser: a user blocked cannot add the user who blocked them to
// a conversation: the add is rejected with PERMISSION_DENIED, saying why,
// and the rest of the push is stored; unblocked, they can.
func TestBlockUser(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
	ctx := context.Background()
	if _, err := bob.Account.BlockUser(ctx, &ferryv1.BlockUserRequest{UserId: "nope"}); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("blocking a malformed id: %v; want invalid_argument", err)
	}
	if _, err := bob.Account.BlockUser(ctx, &ferryv1.BlockUserRequest{UserId: ulid.Make().String()}); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("blocking no one: %v; want not_found", err)
	}
	if _, err := bob.Account.BlockUser(ctx, &ferryv1.BlockUserRequest{UserId: bob.user()}); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("blocking oneself: %v; want invalid_argument", err)
	}
	if _, err := bob.Account.BlockUser(ctx, &ferryv1.BlockUserRequest{UserId: alice.user()}); err != nil {
		t.Fatal(err)
	}
	list, err := bob.Account.ListBlockedUsers(ctx, &ferryv1.ListBlockedUsersRequest{})
	if err != nil || len(list.GetUsers()) != 1 || list.GetUsers()[0].GetUsername() != "alice" {
		t.Fatalf("blocked users: %v, %v; want alice", list, err)
	}

	conv := ulid.Make().String()
	resp, err := alice.Sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{
		alice.op(conv, create("spam")), alice.op(conv, addMember(bob.user())),
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	rs := resp.GetResults()
	if len(rs) != 2 || rs[0].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED || rs[1].GetStatus() != ferryv1.OpStatus_OP_STATUS_REJECTED ||
		rs[1].GetReason() != ferryv1.RejectReason_REJECT_REASON_PERMISSION_DENIED || !strings.Contains(rs[1].GetMessage(), "does not accept being added to conversations by you") {
		t.Fatalf("results %v; want the create stored, the add rejected as permission denied, saying why", rs)
	}
	alice.dots[conv]-- // the rejected add took no dot

	if _, err := bob.Account.UnblockUser(ctx, &ferryv1.UnblockUserRequest{UserId: alice.user()}); err != nil {
		t.Fatal(err)
	}
	alice.push(conv, alice.op(conv, addMember(bob.user())))
}

// TestBlockUserIsThrottled: blocks and unblocks are writes of the user's
// under the push limit, as acks are: past the burst they wait.
func TestBlockUserIsThrottled(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.PushLimit, o.PushBurst = 100, 1000 }})
	alice, bob := newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
	conv := alice.createConv("room")                   // 1 op of alice's 1000
	alice.push(conv, messages(alice, conv, 999, 0)...) // the rest of the burst
	throttled := make(chan struct{}, 4)
	server.OnThrottle(srv.Server, func() { throttled <- struct{}{} })
	for _, call := range []func() error{
		func() error {
			_, err := alice.Account.BlockUser(context.Background(), &ferryv1.BlockUserRequest{UserId: bob.user()})
			return err
		},
		func() error {
			_, err := alice.Account.UnblockUser(context.Background(), &ferryv1.UnblockUserRequest{UserId: bob.user()})
			return err
		},
	} {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case <-throttled: // it waits for the limit, its timer armed
		case err := <-done:
			t.Fatalf("past the user's burst, a call answered without waiting for the push limit: %v", err)
		}
		srv.Clock.Advance(10 * time.Millisecond) // an op's worth at 100 a second: the bucket empty again
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
