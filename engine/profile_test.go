package engine_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
)

// TestSetDisplayName: a user's new display name is what their account,
// a lookup and their conversations' member lists give, and it stays
// through a restart; empty gives their username again. A name out of
// bounds and a revoked device's call change nothing.
func TestSetDisplayName(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	phone := enginetest.Login(t, e, "alice")
	conv := bob.Create("pair", alice)

	u, err := e.SetDisplayName(ctx, alice.Actor, "Alice Liddell 🐇")
	if err != nil || u != (engine.User{ID: alice.Actor.User, Username: "alice", DisplayName: "Alice Liddell 🐇"}) {
		t.Fatalf("set: %+v, %v", u, err)
	}
	shown := func(want string) {
		t.Helper()
		if got, _, err := e.Account(phone.Actor); err != nil || got.DisplayName != want {
			t.Errorf("her account: %+v, %v; want %q", got, err, want)
		}
		if got, err := e.LookupUsers(bob.Actor, []string{"alice"}); err != nil || len(got) != 1 || got[0].DisplayName != want {
			t.Errorf("bob's lookup: %+v, %v; want %q", got, err, want)
		}
		_, members, _, err := e.Conversation(bob.Actor, conv)
		if err != nil || !slices.ContainsFunc(members, func(m engine.Member) bool { return m.ID == alice.Actor.User && m.DisplayName == want }) {
			t.Errorf("the members bob is shown: %+v, %v; want alice as %q", members, err, want)
		}
	}
	shown("Alice Liddell 🐇")

	for _, bad := range []string{strings.Repeat("x", engine.MaxDisplayName+1), "tab\there", "\xff"} {
		if _, err := e.SetDisplayName(ctx, alice.Actor, bad); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("set %q: %v; want ErrInvalid", bad, err)
		}
	}
	if err := e.RevokeDevice(ctx, phone.Actor, alice.Actor.Device); err != nil {
		t.Fatal(err)
	}
	if _, err := e.SetDisplayName(ctx, alice.Actor, "Mallory"); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Errorf("set from a revoked device: %v; want ErrUnauthenticated", err)
	}
	shown("Alice Liddell 🐇")

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = enginetest.Open(t, o)
	shown("Alice Liddell 🐇")
	if u, err := e.SetDisplayName(ctx, phone.Actor, ""); err != nil || u.DisplayName != "alice" {
		t.Fatalf("set back: %+v, %v; want her username", u, err)
	}
	shown("alice")
	enginetest.MustCheck(t, e)
}

// TestRenameDevice: a user renames their devices, their own too, as
// their list shows them; not another user's, nor a revoked one.
func TestRenameDevice(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	phone := enginetest.Login(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")

	d, err := e.RenameDevice(ctx, alice.Actor, phone.Actor.Device, "Alice's phone")
	if err != nil || d.ID != phone.Actor.Device || d.Name != "Alice's phone" || d.Created.IsZero() {
		t.Fatalf("rename: %+v, %v", d, err)
	}
	if d, err := e.RenameDevice(ctx, alice.Actor, alice.Actor.Device, ""); err != nil || d.Name != "unnamed device" {
		t.Fatalf("rename her own to nothing: %+v, %v; want it unnamed", d, err)
	}
	names := func() map[ulid.ULID]string {
		ds, err := e.Devices(phone.Actor)
		if err != nil {
			t.Fatal(err)
		}
		out := map[ulid.ULID]string{}
		for _, d := range ds {
			out[d.ID] = d.Name
		}
		return out
	}
	want := map[ulid.ULID]string{alice.Actor.Device: "unnamed device", phone.Actor.Device: "Alice's phone"}
	if got := names(); !maps(got, want) {
		t.Errorf("her devices: %v; want %v", got, want)
	}

	if _, err := e.RenameDevice(ctx, bob.Actor, phone.Actor.Device, "mine now"); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("bob renames alice's phone: %v; want ErrNotFound", err)
	}
	if _, err := e.RenameDevice(ctx, alice.Actor, phone.Actor.Device, strings.Repeat("x", engine.MaxDeviceName+1)); !errors.Is(err, engine.ErrInvalid) {
		t.Errorf("a name too long: %v; want ErrInvalid", err)
	}
	if err := e.RevokeDevice(ctx, phone.Actor, alice.Actor.Device); err != nil {
		t.Fatal(err)
	}
	if _, err := e.RenameDevice(ctx, phone.Actor, alice.Actor.Device, "back"); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("rename a revoked device: %v; want ErrNotFound", err)
	}
	want = map[ulid.ULID]string{phone.Actor.Device: "Alice's phone"}
	if got := names(); !maps(got, want) {
		t.Errorf("her devices: %v; want %v", got, want)
	}
	enginetest.MustCheck(t, e)
}

func maps(a, b map[ulid.ULID]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestProfileChangesInOneGroup: a display name and a password changed in
// one commit group both hold, in either order (the view does not show
// the group's writes: the second would write back the record as it was
// before the first); a login in the group with a display name change is
// let in. A rename and a revoke of one device in one group: the device
// ends revoked, a rename after the revoke finding no device.
func TestProfileChangesInOneGroup(t *testing.T) {
	for _, nameFirst := range []bool{false, true} {
		hold := newSyncHold()
		e := enginetest.New(t, func(o *engine.Options) { o.FS = hold.fs() })
		alice := enginetest.Register(t, e, "alice")
		conv := alice.Create("c")
		var nameErr, changeErr, loginErr error
		name := func() { _, nameErr = e.SetDisplayName(ctx, alice.Actor, "Alice") }
		change := func() { _, changeErr = e.ChangePassword(ctx, alice.Actor, "correct horse", "battery staple", false) }
		first, second := change, name
		if nameFirst {
			first, second = name, change
		}
		hold.inOneGroup(e, func() { alice.Send(conv, "held") }, first, second)
		if nameErr != nil || changeErr != nil {
			t.Fatalf("name first %v: name %v, password %v", nameFirst, nameErr, changeErr)
		}
		if u, _, err := e.Account(alice.Actor); err != nil || u.DisplayName != "Alice" {
			t.Errorf("name first %v: her account %+v, %v; want the new name", nameFirst, u, err)
		}
		// Fatal: the login below, refused before it queues, would leave
		// inOneGroup waiting.
		if _, err := e.Login(ctx, "alice", "battery staple", "x"); err != nil {
			t.Fatalf("name first %v: login with the new password: %v", nameFirst, err)
		}

		hold.inOneGroup(e, func() { alice.Send(conv, "held") },
			func() { _, nameErr = e.SetDisplayName(ctx, alice.Actor, "Alice L.") },
			func() { _, loginErr = e.Login(ctx, "alice", "battery staple", "y") })
		if nameErr != nil || loginErr != nil {
			t.Errorf("name first %v: a name change %v and a login %v in one group; want both in", nameFirst, nameErr, loginErr)
		}
		enginetest.MustCheck(t, e)
	}

	hold := newSyncHold()
	e := enginetest.New(t, func(o *engine.Options) { o.FS = hold.fs() })
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	for _, renameFirst := range []bool{false, true} {
		phone := enginetest.Login(t, e, "alice")
		var renameErr, revokeErr error
		rename := func() { _, renameErr = e.RenameDevice(ctx, alice.Actor, phone.Actor.Device, "renamed") }
		revoke := func() { revokeErr = e.RevokeDevice(ctx, alice.Actor, phone.Actor.Device) }
		first, second := revoke, rename
		if renameFirst {
			first, second = rename, revoke
		}
		hold.inOneGroup(e, func() { alice.Send(conv, "held") }, first, second)
		if revokeErr != nil || renameFirst != (renameErr == nil) || !renameFirst && !errors.Is(renameErr, engine.ErrNotFound) {
			t.Errorf("rename first %v: rename %v, revoke %v; want the revoke in, the rename in only before it", renameFirst, renameErr, revokeErr)
		}
		if _, err := e.Authenticate(phone.Token); !errors.Is(err, engine.ErrUnauthenticated) {
			t.Errorf("rename first %v: the phone signs in: %v", renameFirst, err)
		}
	}
	enginetest.MustCheck(t, e)
}

// TestProfileOfDamagedRecords: a user whose record does not decode, or
// is lost, cannot change their display name (ErrAccountDamaged, the
// record left for ferryd rebuild); a device whose record does not decode
// cannot be renamed.
func TestProfileOfDamagedRecords(t *testing.T) {
	o := enginetest.Options(t, 1)
	e := enginetest.Open(t, o)
	alice := enginetest.Register(t, e, "alice")
	tablet := enginetest.Login(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	closeDamaged(t, e, o, setKey(engine.UserKey(bob.Actor.User), garbled), loseKey(engine.UserKey(carol.Actor.User)),
		setKey(engine.DeviceKey(alice.Actor.User, tablet.Actor.Device), garbled))
	e = enginetest.Open(t, o)
	for _, d := range []*enginetest.Device{bob, carol} {
		if _, err := e.SetDisplayName(ctx, d.Actor, "new"); !errors.Is(err, engine.ErrAccountDamaged) {
			t.Errorf("set the display name of a damaged user: %v; want ErrAccountDamaged", err)
		}
	}
	if _, err := e.RenameDevice(ctx, alice.Actor, tablet.Actor.Device, "new"); !errors.Is(err, engine.ErrAccountDamaged) {
		t.Errorf("rename a device whose record does not decode: %v; want ErrAccountDamaged", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	all, err := engine.Snapshot(o.FS, "db")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range [][]byte{engine.UserKey(bob.Actor.User), engine.DeviceKey(alice.Actor.User, tablet.Actor.Device)} {
		if v := all[string(k)]; v != string(garbled) {
			t.Errorf("a damaged record: %q; want it left as it was", v)
		}
	}
	if _, ok := all[string(engine.UserKey(carol.Actor.User))]; ok {
		t.Error("carol's lost record was written")
	}
}

// TestNamesRefuseEveryControlCharacter: display and device names have no
// control character, C1 too (a terminal acts on U+009B, a CSI; U+0085 is
// a line break), nor a line or paragraph separator.
func TestNamesRefuseEveryControlCharacter(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	for _, bad := range []string{"\u009b2J\u009bHalice", "Alice\u0085Bob", "x\u0080", "two\u2028lines"} {
		if u, err := e.SetDisplayName(ctx, alice.Actor, bad); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("display name %q: %+v, %v; want ErrInvalid", bad, u, err)
		}
		if d, err := e.RenameDevice(ctx, alice.Actor, alice.Actor.Device, bad); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("device name %q: %+v, %v; want ErrInvalid", bad, d, err)
		}
		if _, err := e.Register(ctx, engine.NewAccount{Username: "mallory", Password: "correct horse", DisplayName: bad}); !errors.Is(err, engine.ErrInvalid) {
			t.Errorf("register with display name %q: %v; want ErrInvalid", bad, err)
		}
	}
}

// TestBlankDisplayNameIsTheUsername: a display name that shows nothing
// (spaces, invisible characters) is the username, as an empty one is, at
// Register too: no user is shown blank.
func TestBlankDisplayNameIsTheUsername(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	for _, blank := range []string{" ", "   ", "\u200b", "\u3000", "\u200e\u200f"} {
		if u, err := e.SetDisplayName(ctx, alice.Actor, blank); err != nil || u.DisplayName != "alice" {
			t.Errorf("display name %q: %+v, %v; want her username", blank, u, err)
		}
	}
	c, err := e.Register(ctx, engine.NewAccount{Username: "bob", Password: "correct horse", DisplayName: "\u200b "})
	if err != nil {
		t.Fatal(err)
	}
	if u, _, err := e.Account(engine.Actor{User: c.User, Device: c.Device}); err != nil || u.DisplayName != "bob" {
		t.Errorf("registered with a blank display name: %+v, %v; want his username", u, err)
	}
}
