package engine

import (
	"context"
	"errors"
	"fmt"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
)

// SetDisplayName sets the display name of a's user: empty, or one that
// shows nothing (spaces, invisible characters), sets it back to their
// username. The members of their conversations see it in the next
// member list or lookup they ask for; nothing is pushed to them.
func (e *Engine) SetDisplayName(ctx context.Context, a Actor, name string) (User, error) {
	if err := checkName("display name", name, MaxDisplayName); err != nil {
		return User{}, err
	}
	var (
		u                       User
		missing, bad, signedOut bool
	)
	err := e.write(ctx, 1, func(tx *txn) {
		if signedOut = !tx.deviceActive(a); signedOut {
			return
		}
		rec, err := tx.userRecord(a.User)
		switch {
		case errors.Is(err, store.ErrNotFound):
			missing = true
			return
		case corrupt(err):
			bad = true
			e.accountDamaged("the user cannot change their display name", err, "user", a.User)
			return
		case err != nil:
			tx.fail(err)
			return
		}
		rec.DisplayName = displayName(name, rec.Username)
		tx.putUser(a.User, rec)
		u = User{ID: a.User, Username: rec.Username, DisplayName: rec.DisplayName}
	})
	switch {
	case err != nil:
		return User{}, err
	case signedOut:
		return User{}, errSignedOut
	case bad:
		return User{}, fmt.Errorf("%w: the server cannot read your account's record until the server's operator repairs the server's store", ErrAccountDamaged)
	case missing:
		// The device signed in, its user's record gone: check reports
		// it; the user reads as damaged to them, as elsewhere.
		e.log.Error("a user's record is missing from the store: the user cannot change their display name (ferryd check reports it)", "user", a.User)
		return User{}, fmt.Errorf("%w: the server cannot find your account's record until the server's operator repairs the server's store", ErrAccountDamaged)
	}
	e.log.Info("display name changed", "user", a.User, "device", a.Device)
	return u, nil
}

// RenameDevice renames device id of a's user (a's own device too): empty
// names it as a device signed in without a name. ErrNotFound for a device
// that is not theirs or was revoked.
func (e *Engine) RenameDevice(ctx context.Context, a Actor, id ulid.ULID, name string) (Device, error) {
	if err := checkName("device name", name, MaxDeviceName); err != nil {
		return Device{}, err
	}
	if name == "" {
		name = unnamedDevice
	}
	var (
		d                        Device
		notFound, bad, signedOut bool
	)
	err := e.write(ctx, 1, func(tx *txn) {
		if signedOut = !tx.deviceActive(a); signedOut {
			return
		}
		k := keys.ID2(keys.TDevice, a.User, id)
		// Revoked earlier in this group (the view still holds its record).
		_, revoked := tx.revoked[id]
		if notFound = revoked || tx.claims[string(k)]; notFound {
			return
		}
		raw, err := tx.v.Get(k)
		var rec record.Device
		if err == nil {
			rec, err = record.DecodeDevice(raw)
		}
		switch {
		case errors.Is(err, store.ErrNotFound):
			notFound = true
			return
		case corrupt(err):
			bad = true
			e.accountDamaged("the device cannot be renamed, and is refused as if revoked", err, "user", a.User, "device", id)
			return
		case err != nil:
			tx.fail(err)
			return
		}
		if notFound = rec.Revoked; notFound {
			return
		}
		rec.Name = name
		tx.b.Set(k, record.AppendDevice(nil, &rec))
		d = Device{ID: id, Name: name, Created: msTime(rec.CreatedMs)}
	})
	switch {
	case err != nil:
		return Device{}, err
	case signedOut:
		return Device{}, errSignedOut
	case bad:
		return Device{}, fmt.Errorf("%w: the server cannot read the record of device %s, which is signed out until the server's operator repairs the server's store (revoke it to remove it)", ErrAccountDamaged, id)
	case notFound:
		return Device{}, fmt.Errorf("%w: device %s", ErrNotFound, id)
	}
	e.log.Info("device renamed", "user", a.User, "device", id, "by", a.Device)
	return d, nil
}

// userRecord reads user's record as of this group's writes: the view
// does not hold those of requests before in the group (a display name,
// a password).
func (tx *txn) userRecord(user ulid.ULID) (record.User, error) {
	if rec, ok := tx.users[user]; ok {
		return rec, nil
	}
	raw, err := tx.v.Get(keys.ID1(keys.TUser, user))
	if err != nil {
		return record.User{}, err
	}
	return record.DecodeUser(raw)
}

// putUser writes user's record, for the requests after in the group too.
func (tx *txn) putUser(user ulid.ULID, rec record.User) {
	if tx.users == nil {
		tx.users = map[ulid.ULID]record.User{}
	}
	tx.users[user] = rec
	tx.b.Set(keys.ID1(keys.TUser, user), record.AppendUser(nil, &rec))
}
