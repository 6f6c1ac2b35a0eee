package server_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/reflect/protoreflect"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

var bg = context.Background()

// rpcs calls every authenticated RPC once, for conv, as clients c.
func rpcs(c servertest.Clients, conv, device string) map[string]error {
	out := map[string]error{}
	_, out["GetAccount"] = c.Account.GetAccount(bg, &ferryv1.GetAccountRequest{})
	_, out["ListDevices"] = c.Account.ListDevices(bg, &ferryv1.ListDevicesRequest{})
	_, out["RevokeDevice"] = c.Account.RevokeDevice(bg, &ferryv1.RevokeDeviceRequest{DeviceId: device})
	_, out["LookupUsers"] = c.Account.LookupUsers(bg, &ferryv1.LookupUsersRequest{Usernames: []string{"alice"}})
	_, out["ChangePassword"] = c.Account.ChangePassword(bg, &ferryv1.ChangePasswordRequest{CurrentPassword: "not the password", NewPassword: "battery staple"})
	_, out["BlockUser"] = c.Account.BlockUser(bg, &ferryv1.BlockUserRequest{UserId: ulid.Make().String()})
	_, out["UnblockUser"] = c.Account.UnblockUser(bg, &ferryv1.UnblockUserRequest{UserId: ulid.Make().String()})
	_, out["ListBlockedUsers"] = c.Account.ListBlockedUsers(bg, &ferryv1.ListBlockedUsersRequest{})
	_, out["SetDisplayName"] = c.Account.SetDisplayName(bg, &ferryv1.SetDisplayNameRequest{DisplayName: "Mallory"})
	_, out["RenameDevice"] = c.Account.RenameDevice(bg, &ferryv1.RenameDeviceRequest{DeviceId: device, Name: "Mallory's"})
	_, out["ListConversations"] = c.Conversation.ListConversations(bg, &ferryv1.ListConversationsRequest{})
	_, out["GetConversation"] = c.Conversation.GetConversation(bg, &ferryv1.GetConversationRequest{ConversationId: conv})
	_, out["Push"] = c.Sync.Push(bg, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv,
		Ops: []*ferryv1.Op{{Id: ulid.Make().String(), Dot: 1, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{}}}}}}})
	_, out["Ack"] = c.Sync.Ack(bg, &ferryv1.AckRequest{Markers: []*ferryv1.Marker{{ConversationId: conv, Read: 1}}})
	_, out["History"] = c.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv})
	_, out["Repair"] = c.Sync.Repair(bg, &ferryv1.RepairRequest{ConversationId: conv})
	out["Sync"] = func() error {
		st, err := c.Sync.Sync(bg)
		if err != nil {
			return err
		}
		defer st.Close()
		// A rejected stream fails Send with a bare EOF; its status comes
		// from Receive.
		_ = st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}})
		_, err = st.Receive()
		return err
	}()
	out["Subscribe"] = func() error {
		st, err := c.Sync.Subscribe(bg, &ferryv1.SubscribeRequest{Hello: &ferryv1.Hello{}})
		if err != nil {
			return err
		}
		defer st.Close()
		_, err = st.Receive()
		return err
	}()
	return out
}

func TestEveryRPCNeedsAValidToken(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("secret plans")
	for name, tc := range map[string]servertest.Clients{
		"no token":      srv.Clients(""),
		"bad token":     srv.Clients("fy1_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
		"garbage token": srv.Clients("hello"),
	} {
		called := rpcs(tc, conv, alice.device())
		for _, file := range []protoreflect.FileDescriptor{ferryv1.File_ferry_v1_account_proto, ferryv1.File_ferry_v1_conversation_proto, ferryv1.File_ferry_v1_sync_proto} {
			for i := range file.Services().Len() {
				ms := file.Services().Get(i).Methods()
				for j := range ms.Len() {
					if m := string(ms.Get(j).Name()); m != "Register" && m != "Login" && called[m] == nil {
						t.Errorf("%s: %s is not called, or let in", name, m)
					}
				}
			}
		}
		for rpc, err := range called {
			if code(err) != connect.CodeUnauthenticated {
				t.Errorf("%s, %s: got %v, want unauthenticated", name, rpc, err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("%s, %s: error leaks the title: %v", name, rpc, err)
			}
		}
	}
	// A revoked device's token stops working at once.
	laptop := newDev(t, srv.Login("alice", "laptop"))
	if _, err := alice.Account.RevokeDevice(bg, &ferryv1.RevokeDeviceRequest{DeviceId: laptop.device()}); err != nil {
		t.Fatal(err)
	}
	for rpc, err := range rpcs(laptop.Clients, conv, laptop.device()) {
		if code(err) != connect.CodeUnauthenticated {
			t.Errorf("revoked device, %s: got %v, want unauthenticated", rpc, err)
		}
	}
}

// TestRevokedDeviceOpenStream: revoking a device ends its open session at
// once, and nothing it pushes on that stream afterwards is stored.
func TestRevokedDeviceOpenStream(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	tablet := newDev(t, srv.Login("alice", "stolen tablet"))
	conv := alice.createConv("c")
	s := tablet.open(hello("", 0))
	s.untilCaughtUp()
	if _, err := alice.Account.RevokeDevice(bg, &ferryv1.RevokeDeviceRequest{DeviceId: tablet.device()}); err != nil {
		t.Fatal(err)
	}
	// The server may end the stream before this push is even sent (Send
	// then fails with a bare EOF); either way nothing may be stored.
	_ = s.st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{RequestId: 1,
		Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{tablet.op(conv, msg("from a thief"))}}}}}})
	mustCode(t, "revoked device's open stream", s.endErr(), connect.CodeUnauthenticated)
	if page := history(t, alice, conv); len(page) != 1 {
		t.Fatalf("a revoked device's push was stored: %d ops", len(page))
	}
}

// TestStrangersLearnNothing: a non-member and a guessed conversation id get
// the same answers, and nothing of the conversation.
func TestStrangersLearnNothing(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	eve := newDev(t, srv.Register("eve"))
	conv := alice.createConv("secret plans")
	alice.send(conv, "the secret is 42")
	guessed := ulid.Make().String()

	real, fake := rpcs(eve.Clients, conv, alice.device()), rpcs(eve.Clients, guessed, alice.device())
	for _, rpc := range []string{"GetConversation", "Ack", "History", "Repair", "RevokeDevice"} {
		mustCode(t, "stranger "+rpc, real[rpc], connect.CodeNotFound)
		mustCode(t, "guessed id "+rpc, fake[rpc], connect.CodeNotFound)
		r := strings.ReplaceAll(real[rpc].Error(), conv, "ID")
		f := strings.ReplaceAll(fake[rpc].Error(), guessed, "ID")
		if r != f {
			t.Errorf("%s tells a real conversation from a guessed one: %q vs %q", rpc, r, f)
		}
	}
	for _, id := range []string{conv, guessed} {
		for _, device := range []string{"", alice.device()} { // her own device, and a forged one
			op := eve.op(id, msg("let me in"))
			op.DeviceId = device
			resp, err := eve.Sync.Push(bg, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: id, Ops: []*ferryv1.Op{op}}}})
			if err != nil {
				t.Fatal(err)
			}
			r := resp.GetResults()[0]
			if r.GetReason() != ferryv1.RejectReason_REJECT_REASON_NOT_FOUND || strings.Contains(r.GetMessage(), "secret") || r.GetServerDot() != 0 {
				t.Errorf("stranger push to %s as device %q: %v (a stranger learns no server dot)", id, device, r)
			}
		}
	}
	list, err := eve.Conversation.ListConversations(bg, &ferryv1.ListConversationsRequest{})
	if err != nil || len(list.GetConversations()) != 0 {
		t.Fatalf("stranger lists %v (%v)", list.GetConversations(), err)
	}
	// A session with a cursor for the conversation says nothing of it.
	s := eve.open(&ferryv1.Hello{Cursors: []*ferryv1.Cursor{{ConversationId: conv, Seq: 0}}})
	s.untilCaughtUp()
	if len(s.infos) != 0 || len(s.held) != 0 {
		t.Fatalf("stranger's session saw %d conversations", len(s.infos))
	}
	// And the history is untouched.
	page, _ := alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv})
	if page.GetHead() != 2 {
		t.Fatalf("strangers changed the log: head %d", page.GetHead())
	}
}

// TestRemovedMember: a member removed while streaming receives the removal
// op and nothing after it; afterwards they read up to the removal, write
// nothing and see no members.
func TestRemovedMember(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
	conv := alice.createConv("c", bob)
	other := alice.createConv("other", bob)
	alice.send(conv, "before")
	bs := bob.open(hello("", 0))
	bs.untilCaughtUp()

	removal := alice.push(conv, alice.op(conv, removeMember(bob.user())))[0].GetSeq()
	alice.send(conv, "after 1")
	alice.send(conv, "after 2")
	marker := alice.send(other, "sentinel")
	bs.until(func(*ferryv1.SyncResponse) bool { return bs.last[other] == marker })
	bs.holds(conv, 1, removal)
	if info := bs.infos[conv]; !info.GetRemoved() || info.GetHead() != removal || info.GetRole() != ferryv1.Role_ROLE_UNSPECIFIED {
		t.Fatalf("bob's info after removal: %v", info)
	}

	page, err := bob.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv, Limit: 100})
	if err != nil || page.GetHead() != removal || len(page.GetOps()) != int(removal) {
		t.Fatalf("removed member's history: head %d, %d ops (%v); want up to %d", page.GetHead(), len(page.GetOps()), err, removal)
	}
	got, err := bob.Conversation.GetConversation(bg, &ferryv1.GetConversationRequest{ConversationId: conv})
	if err != nil || len(got.GetMembers()) != 0 || len(got.GetVector().GetEntries()) != 0 || !got.GetConversation().GetRemoved() {
		t.Fatalf("removed member's view: %v %v", got, err)
	}
	resp, err := bob.Sync.Push(bg, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{bob.op(conv, msg("still here?"))}}}})
	if r := resp.GetResults()[0]; err != nil || r.GetReason() != ferryv1.RejectReason_REJECT_REASON_PERMISSION_DENIED || !strings.Contains(r.GetMessage(), "no longer a member") {
		t.Fatalf("removed member's push: %v %v", resp, err)
	}
	rep, err := bob.Sync.Repair(bg, &ferryv1.RepairRequest{ConversationId: conv})
	if err != nil || rep.GetHead() != removal || len(rep.GetWant()) != 0 || len(rep.GetVector().GetEntries()) != 0 {
		t.Fatalf("removed member's repair: %v %v (no want, no vector)", rep, err)
	}
	// What happens after the removal stays hidden, title included.
	alice.push(conv, alice.op(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_SetTitle{SetTitle: &ferryv1.SetTitle{Title: "the new secret"}}
	}))
	list, err := bob.Conversation.ListConversations(bg, &ferryv1.ListConversationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list.GetConversations() {
		if c.GetId() == conv && (c.GetTitle() != "c" || c.GetMemberCount() != 0) {
			t.Fatalf("removed member sees %q with %d members, want the title at removal", c.GetTitle(), c.GetMemberCount())
		}
	}
	for _, op := range rep.GetMissing() {
		if op.GetSeq() > removal {
			t.Fatalf("repair leaked seq %d past the removal", op.GetSeq())
		}
	}
}
