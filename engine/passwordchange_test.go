package engine_test

import (
	"errors"
	"testing"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
)

// TestChangePassword: a user changes their password from a device signed
// in, knowing the current one; the old one then signs in nowhere, the new
// one does. A wrong current password changes nothing. Signing the other
// devices out revokes each but the one asking, and ends their sessions;
// without it they stay signed in.
func TestChangePassword(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	phone := enginetest.Login(t, e, "alice")
	tablet := enginetest.Login(t, e, "alice")

	if _, err := e.ChangePassword(ctx, alice.Actor, "wrong horse", "battery staple", false); !errors.Is(err, engine.ErrForbidden) {
		t.Fatalf("change with a wrong current password: %v; want ErrForbidden", err)
	}
	if _, err := e.ChangePassword(ctx, alice.Actor, "correct horse", "short", false); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("change to a short password: %v; want ErrInvalid", err)
	}
	enginetest.Login(t, e, "alice") // the password is as it was

	if n, err := e.ChangePassword(ctx, alice.Actor, "correct horse", "battery staple", false); err != nil || n != 0 {
		t.Fatalf("change: %d, %v", n, err)
	}
	if _, err := e.Login(ctx, "alice", "correct horse", "x"); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("login with the old password: %v; want ErrUnauthenticated", err)
	}
	if _, err := e.Login(ctx, "alice", "battery staple", "x"); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
	if _, err := e.Authenticate(phone.Token); err != nil {
		t.Fatalf("the phone, without signing out the others: %v", err)
	}

	s, _ := openCaughtUp(t, e, tablet)
	n, err := e.ChangePassword(ctx, phone.Actor, "battery staple", "correct horse", true)
	if err != nil || n != 4 {
		t.Fatalf("change signing out the others: %d, %v; want 4: alice's first device, the tablet and the two signed in since", n, err)
	}
	for _, d := range []*enginetest.Device{alice, tablet} {
		if _, err := e.Authenticate(d.Token); !errors.Is(err, engine.ErrUnauthenticated) {
			t.Errorf("a device signed out: %v; want ErrUnauthenticated", err)
		}
	}
	if _, err := e.Authenticate(phone.Token); err != nil {
		t.Errorf("the device that asked: %v", err)
	}
	<-s.Changed()
	if _, _, err := s.Next(); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("the tablet's session: %v; want ErrUnauthenticated", err)
	}
	if devs, err := e.Devices(phone.Actor); err != nil || len(devs) != 1 {
		t.Errorf("devices: %+v, %v; want the phone alone", devs, err)
	}
	enginetest.MustCheck(t, e)
}

// TestSetPassword: the operator sets a user's password; their devices stay
// signed in.
func TestSetPassword(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	if _, err := e.SetPassword(ctx, "nobody", "battery staple"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("set the password of no one: %v; want ErrNotFound", err)
	}
	u, err := e.SetPassword(ctx, "Alice", "battery staple")
	if err != nil || u.ID != alice.Actor.User {
		t.Fatalf("set: %+v, %v", u, err)
	}
	if _, err := e.Login(ctx, "alice", "battery staple", "x"); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
	if _, err := e.Authenticate(alice.Token); err != nil {
		t.Fatalf("a device signed in before: %v", err)
	}
}

// TestLoginRacingAPasswordChange: a login that verified the old password
// before a change committed is refused; and a change that would miss the
// device a login in its own commit group adds asks to be tried again.
func TestLoginRacingAPasswordChange(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	engine.AfterLoginVerified(t, func() {
		if _, err := e.ChangePassword(ctx, alice.Actor, "correct horse", "battery staple", true); err != nil {
			t.Errorf("change during the login: %v", err)
		}
	})
	if _, err := e.Login(ctx, "alice", "correct horse", "x"); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("a login verified against the old password: %v; want ErrUnauthenticated", err)
	}
	if devs, err := e.Devices(alice.Actor); err != nil || len(devs) != 1 {
		t.Fatalf("devices: %+v, %v; want alice's first alone", devs, err)
	}
}

// TestSignedOutDeviceRevokesNothing: a device a password change signed
// out, whose call was let in before, can neither change the password nor
// revoke its user's remaining device.
func TestSignedOutDeviceRevokesNothing(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	thief := enginetest.Login(t, e, "alice")
	stale, err := e.Authenticate(thief.Token) // its call, let in
	if err != nil {
		t.Fatal(err)
	}
	if n, err := e.ChangePassword(ctx, alice.Actor, "correct horse", "battery staple", true); err != nil || n != 1 {
		t.Fatalf("change: %d, %v", n, err)
	}
	if _, err := e.ChangePassword(ctx, stale, "correct horse", "whatever else", false); !errors.Is(err, engine.ErrForbidden) {
		t.Errorf("the signed-out device changing the password: %v; want ErrForbidden (the current password is not the one it knows)", err)
	}
	if err := e.RevokeDevice(ctx, stale, alice.Actor.Device); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("the signed-out device revoking alice's device: %v; want ErrUnauthenticated", err)
	}
	if _, err := e.Authenticate(alice.Token); err != nil {
		t.Errorf("alice's device: %v", err)
	}
}
