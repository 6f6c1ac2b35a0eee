package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestChangePassword: a device changes its user's password given the
// current one; a wrong one is permission_denied, and such attempts are
// throttled as failed logins of the user are (a stolen token guesses no
// faster than a stranger); signing the other devices out ends their
// tokens, not the caller's.
func TestChangePassword(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.SignInLimit, o.SignInRefill = 2, time.Minute
	}})
	alice := srv.Register("alice")
	phone := srv.Login("alice", "phone")
	change := func(current, next string, signOut bool) (*ferryv1.ChangePasswordResponse, error) {
		return alice.Account.ChangePassword(context.Background(), &ferryv1.ChangePasswordRequest{CurrentPassword: current, NewPassword: next, SignOutOtherDevices: signOut})
	}
	code := func(err error) connect.Code {
		if ce := new(connect.Error); errors.As(err, &ce) {
			return ce.Code()
		}
		return 0
	}
	if _, err := change("correct horse", "short", false); code(err) != connect.CodeInvalidArgument {
		t.Fatalf("a short new password: %v; want invalid_argument", err)
	}
	for i := range 2 {
		if _, err := change("wrong horse", "battery staple", false); code(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "current password is wrong") {
			t.Fatalf("wrong current password %d: %v; want permission_denied, saying so", i, err)
		}
	}
	if _, err := change("correct horse", "battery staple", false); code(err) != connect.CodeResourceExhausted {
		t.Fatalf("a third try after two wrong ones: %v; want resource_exhausted", err)
	}
	// The limit is the user's: their logins from here wait too.
	if _, err := srv.Clients("").Account.Login(context.Background(), &ferryv1.LoginRequest{Username: "alice", Password: "correct horse"}); code(err) != connect.CodeResourceExhausted {
		t.Fatalf("a login of the user after two wrong changes: %v; want resource_exhausted", err)
	}

	srv2 := servertest.New(t, servertest.Config{})
	alice, phone = srv2.Register("alice"), srv2.Login("alice", "phone")
	resp, err := change("correct horse", "battery staple", true)
	if err != nil || resp.GetDevicesSignedOut() != 1 {
		t.Fatalf("change signing out the others: %v, %v; want the phone signed out", resp, err)
	}
	if _, err := phone.Account.GetAccount(context.Background(), &ferryv1.GetAccountRequest{}); code(err) != connect.CodeUnauthenticated {
		t.Errorf("the phone after: %v; want unauthenticated", err)
	}
	if _, err := alice.Account.GetAccount(context.Background(), &ferryv1.GetAccountRequest{}); err != nil {
		t.Errorf("the device that asked: %v", err)
	}
	for pw, want := range map[string]connect.Code{"correct horse": connect.CodeUnauthenticated, "battery staple": 0} {
		if _, err := srv2.Clients("").Account.Login(context.Background(), &ferryv1.LoginRequest{Username: "alice", Password: pw}); code(err) != want {
			t.Errorf("login with %q: %v; want code %v", pw, err, want)
		}
	}
}
