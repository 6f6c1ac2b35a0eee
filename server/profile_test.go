package server_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestSetDisplayName: a user's new display name is in the members' list
// another member asks for next, and in lookups; a name out of bounds is
// invalid_argument, saying why.
func TestSetDisplayName(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	bob := newDev(t, srv.Register("bob"))
	conv := alice.createConv("room", bob)

	resp, err := alice.Account.SetDisplayName(bg, &ferryv1.SetDisplayNameRequest{DisplayName: "Alice Liddell"})
	if err != nil || resp.GetUser().GetDisplayName() != "Alice Liddell" || resp.GetUser().GetUsername() != "alice" || resp.GetUser().GetId() != alice.user() {
		t.Fatalf("set: %v, %v", resp, err)
	}
	got, err := bob.Conversation.GetConversation(bg, &ferryv1.GetConversationRequest{ConversationId: conv})
	if err != nil {
		t.Fatal(err)
	}
	var shown string
	for _, m := range got.GetMembers() {
		if m.GetUserId() == alice.user() {
			shown = m.GetDisplayName()
		}
	}
	if shown != "Alice Liddell" {
		t.Errorf("alice in the members bob is shown: %q; want her new name", shown)
	}
	if lu, err := bob.Account.LookupUsers(bg, &ferryv1.LookupUsersRequest{Usernames: []string{"alice"}}); err != nil || len(lu.GetUsers()) != 1 || lu.GetUsers()[0].GetDisplayName() != "Alice Liddell" {
		t.Errorf("bob's lookup of alice: %v, %v", lu, err)
	}

	_, err = alice.Account.SetDisplayName(bg, &ferryv1.SetDisplayNameRequest{DisplayName: strings.Repeat("x", 65)})
	if code(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "display name is longer than 64 bytes") {
		t.Errorf("a name too long: %v; want invalid_argument, saying so", err)
	}
	if acc, err := alice.Account.GetAccount(bg, &ferryv1.GetAccountRequest{}); err != nil || acc.GetUser().GetDisplayName() != "Alice Liddell" {
		t.Errorf("her account after a refused change: %v, %v", acc, err)
	}
}

// TestRenameDevice: a device renames another of its user's, as their
// list shows it; a device id that is not one is invalid_argument, one of
// another user's not_found.
func TestRenameDevice(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	phone := newDev(t, srv.Login("alice", "phone"))
	bob := newDev(t, srv.Register("bob"))

	resp, err := alice.Account.RenameDevice(bg, &ferryv1.RenameDeviceRequest{DeviceId: phone.device(), Name: "Alice's phone"})
	if err != nil || resp.GetDevice().GetName() != "Alice's phone" || resp.GetDevice().GetId() != phone.device() || resp.GetDevice().GetCurrent() {
		t.Fatalf("rename: %v, %v", resp, err)
	}
	if resp, err := phone.Account.RenameDevice(bg, &ferryv1.RenameDeviceRequest{DeviceId: phone.device(), Name: "mine"}); err != nil || !resp.GetDevice().GetCurrent() {
		t.Fatalf("rename its own: %v, %v; want it said current", resp, err)
	}
	list, err := alice.Account.ListDevices(bg, &ferryv1.ListDevicesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, d := range list.GetDevices() {
		names[d.GetId()] = d.GetName()
	}
	if names[phone.device()] != "mine" || names[alice.device()] != "alice-1" {
		t.Errorf("her devices: %v", names)
	}

	_, err = alice.Account.RenameDevice(bg, &ferryv1.RenameDeviceRequest{DeviceId: "phone", Name: "x"})
	mustCode(t, "a device id that is not one", err, connect.CodeInvalidArgument)
	_, err = alice.Account.RenameDevice(bg, &ferryv1.RenameDeviceRequest{DeviceId: bob.device(), Name: "x"})
	mustCode(t, "bob's device", err, connect.CodeNotFound)
	_, err = alice.Account.RenameDevice(bg, &ferryv1.RenameDeviceRequest{DeviceId: ulid.Make().String(), Name: "x"})
	mustCode(t, "no such device", err, connect.CodeNotFound)
	_, err = alice.Account.RenameDevice(bg, &ferryv1.RenameDeviceRequest{DeviceId: phone.device(), Name: "a\nb"})
	mustCode(t, "a name with a newline", err, connect.CodeInvalidArgument)
}
