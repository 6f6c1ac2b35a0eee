package engine

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
)

// Account limits.
const (
	MinUsername    = 3
	MaxUsername    = 32
	MinPassword    = 8
	MaxPassword    = 256
	MaxDeviceName  = 64
	MaxDisplayName = 64
	MaxLookup      = 100
)

// unnamedDevice names a device signed in, or renamed, without a name.
const unnamedDevice = "unnamed device"

// tokenPrefix starts every device token, so that a leaked token is easy to
// recognise (and to scan for) and a token of another kind is refused early.
const tokenPrefix = "fy1_"

// NewAccount is what Register needs.
type NewAccount struct {
	Username    string
	Password    string
	DisplayName string // default (or one that shows nothing): the username
	DeviceName  string // default: unnamedDevice
}

// Credentials are what a device keeps to act as itself. The token is shown
// once: the store keeps only its hash.
type Credentials struct {
	User     ulid.ULID
	Device   ulid.ULID
	Username string
	Token    string
}

// User is an account's public profile.
type User struct {
	ID          ulid.ULID
	Username    string
	DisplayName string
}

// Device is one of a user's devices.
type Device struct {
	ID      ulid.ULID
	Name    string
	Created time.Time
	// Unreadable: the device's record does not decode, and it is refused
	// as if revoked (Name says so, Created is its id's time).
	Unreadable bool
}

// NormalizeUsername lower-cases a username and checks its form: 3 to 32
// characters of a-z, 0-9, '_', '.' and '-', starting with a letter or digit.
func NormalizeUsername(s string) (string, error) {
	u := strings.ToLower(s)
	if len(u) < MinUsername || len(u) > MaxUsername {
		return "", fmt.Errorf("%w: a username has %d to %d characters", ErrInvalid, MinUsername, MaxUsername)
	}
	for i, r := range u {
		alnum := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || r != '_' && r != '.' && r != '-') {
			return "", fmt.Errorf("%w: a username has only a-z, 0-9, '_', '.' and '-', and starts with a letter or digit", ErrInvalid)
		}
	}
	return u, nil
}

func checkName(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalid, what, max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	}
	for _, r := range s {
		// C0, DEL and C1 (a terminal acts on some of them: U+009B is a
		// CSI), and the line and paragraph separators.
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("%w: %s contains a control character or a line break", ErrInvalid, what)
		}
	}
	return nil
}

// displayName is the display name name gives a user named username: the
// username for a name that shows nothing (empty, or only spaces and
// invisible characters, such as a zero-width space).
func displayName(name, username string) string {
	if strings.TrimFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.Is(unicode.Cf, r) }) == "" {
		return username
	}
	return name
}

func checkPassword(p string) error {
	if len(p) < MinPassword || len(p) > MaxPassword {
		return fmt.Errorf("%w: a password has %d to %d bytes", ErrInvalid, MinPassword, MaxPassword)
	}
	return nil
}

// Register creates a user and their first device. It fails with
// ErrForbidden unless Options.AllowRegistration, ErrInvalid for a malformed
// field and ErrExists for a taken username.
func (e *Engine) Register(ctx context.Context, p NewAccount) (Credentials, error) {
	if !e.opts.AllowRegistration {
		return Credentials{}, fmt.Errorf("%w: this server does not allow self-registration", ErrForbidden)
	}
	_, creds, err := e.createUser(ctx, p, true)
	return creds, err
}

// CreateUser creates a user with no device, whatever
// Options.AllowRegistration says: an operator's account for someone who
// then logs in (p.DeviceName is not used). It fails with ErrInvalid for a
// malformed field and ErrExists for a taken username.
func (e *Engine) CreateUser(ctx context.Context, p NewAccount) (User, error) {
	user, _, err := e.createUser(ctx, p, false)
	return user, err
}

// createUser creates a user, and their first device when withDevice.
func (e *Engine) createUser(ctx context.Context, p NewAccount, withDevice bool) (User, Credentials, error) {
	username, err := NormalizeUsername(p.Username)
	if err != nil {
		return User{}, Credentials{}, err
	}
	if err := checkPassword(p.Password); err != nil {
		return User{}, Credentials{}, err
	}
	if err := checkName("display name", p.DisplayName, MaxDisplayName); err != nil {
		return User{}, Credentials{}, err
	}
	p.DisplayName = displayName(p.DisplayName, p.Username)
	if withDevice {
		if err := checkName("device name", p.DeviceName, MaxDeviceName); err != nil {
			return User{}, Credentials{}, err
		}
	}
	// Fail fast on a taken name before paying for the hash; the writer
	// checks again.
	if taken, err := e.usernameTaken(username); err != nil || taken {
		if err != nil {
			return User{}, Credentials{}, err
		}
		return User{}, Credentials{}, fmt.Errorf("%w: username %q is taken", ErrExists, username)
	}
	release, err := e.hashSlot(ctx)
	if err != nil {
		return User{}, Credentials{}, err
	}
	hash := e.hashPassword(p.Password)
	release()
	user := User{ID: e.newID(), Username: username, DisplayName: p.DisplayName}
	rec := record.User{Username: username, DisplayName: p.DisplayName, PasswordHash: hash, CreatedMs: e.nowMs()}
	var creds Credentials
	var dev record.Device
	if withDevice {
		creds, dev = e.newDevice(user, p.DeviceName)
	}
	var taken bool
	err = e.write(ctx, 1, func(tx *txn) {
		k := keys.Username(username)
		exists, err := tx.v.Has(k)
		if err != nil {
			tx.fail(err)
			return
		}
		if exists || tx.claimed(string(k)) {
			taken = true
			return
		}
		tx.b.Set(k, record.AppendID(nil, user.ID))
		tx.b.Set(keys.ID1(keys.TUser, user.ID), record.AppendUser(nil, &rec))
		tx.w.usage.put(user.ID, 0) // a new user's first message reads no usage
		if withDevice {
			tx.putDevice(user.ID, creds.Device, &dev)
		}
	})
	if err != nil {
		return User{}, Credentials{}, err
	}
	if taken {
		return User{}, Credentials{}, fmt.Errorf("%w: username %q is taken", ErrExists, username)
	}
	if withDevice {
		e.log.Info("user registered", "user", user.ID, "username", username, "device", creds.Device)
	} else {
		e.log.Info("user created", "user", user.ID, "username", username)
	}
	return user, creds, nil
}

func (e *Engine) usernameTaken(username string) (bool, error) {
	v := e.st.View()
	defer v.Release()
	return v.Has(keys.Username(username))
}

// claimed records that this group claims a unique key, reporting whether
// another request of the group claimed it first.
func (tx *txn) claimed(k string) bool {
	if tx.claims == nil {
		tx.claims = map[string]bool{}
	}
	if tx.claims[k] {
		return true
	}
	tx.claims[k] = true
	return false
}

// dummyHash is verified against when a login names an unknown user, so that
// failing takes as long as for a known one. It uses the configured cost.
func (e *Engine) dummyHash() string {
	e.dummyOnce.Do(func() { e.dummy = e.hashPassword("not a real password") })
	return e.dummy
}

// Login adds a device to an existing user. A wrong password and an unknown
// username both give ErrUnauthenticated.
func (e *Engine) Login(ctx context.Context, username, password, deviceName string) (Credentials, error) {
	fail := fmt.Errorf("%w: wrong username or password", ErrUnauthenticated)
	if err := checkName("device name", deviceName, MaxDeviceName); err != nil {
		return Credentials{}, err
	}
	name, err := NormalizeUsername(username)
	if err != nil || len(password) > MaxPassword {
		return Credentials{}, fail
	}
	v := e.st.View()
	user, rec, err := lookupUser(v, name)
	v.Release()
	if corrupt(err) {
		e.accountDamaged("the user cannot sign in", err, "username", name)
		return Credentials{}, fmt.Errorf("%w: the server cannot read the account of %q, which cannot sign in until the server's operator repairs the server's store", ErrAccountDamaged, name)
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Credentials{}, err
	}
	dummy := e.dummyHash()
	release, herr := e.hashSlot(ctx)
	if herr != nil {
		return Credentials{}, herr
	}
	if errors.Is(err, ErrNotFound) {
		_, _ = verifyPassword(dummy, password)
		release()
		return Credentials{}, fail
	}
	ok, err := verifyPassword(rec.PasswordHash, password)
	release()
	if err != nil {
		return Credentials{}, fmt.Errorf("verify password of %s: %w", user.ID, err)
	}
	if !ok {
		return Credentials{}, fail
	}
	if f := afterLoginVerified; f != nil {
		f()
	}
	creds, dev := e.newDevice(user, deviceName)
	full, stale := false, false
	err = e.write(ctx, 1, func(tx *txn) {
		// The password may have changed since it was verified (by a
		// change earlier in this group, too): the login is refused.
		k := keys.ID1(keys.TUser, user.ID)
		raw, err := tx.v.Get(k)
		var now record.User
		if err == nil {
			now, err = record.DecodeUser(raw)
		}
		if errors.Is(err, store.ErrNotFound) || corrupt(err) || err == nil && (now.PasswordHash != rec.PasswordHash || tx.claims[string(k)]) {
			stale = true
			return
		}
		if err != nil {
			tx.fail(err)
			return
		}
		n := 0
		err = scan(tx.v, keys.ID1(keys.TDevice, user.ID), func(k, val []byte) error {
			d, err := record.DecodeDevice(val)
			switch {
			case corrupt(err):
				// Refused as if revoked (deviceActive): not counted.
				_, dev, _ := keys.ParseID2(k)
				e.accountDamaged("the device is refused as if revoked, and not counted among the user's", err, "user", user.ID, "device", dev)
				return nil
			case err != nil:
			case d.Revoked:
				// Kept by stores from before revoking deleted the record.
				tx.b.Delete(k)
			default:
				n++
			}
			return err
		})
		if err != nil {
			tx.fail(err)
			return
		}
		// Logins of the same group count each other's devices.
		if full = n+tx.added[user.ID] >= e.opts.MaxDevicesPerUser; !full {
			tx.putDevice(user.ID, creds.Device, &dev)
		}
	})
	if err != nil {
		return Credentials{}, err
	}
	if stale {
		return Credentials{}, fail
	}
	if full {
		return Credentials{}, fmt.Errorf("%w: %s already has %d devices, the limit; revoke one first (RevokeDevice from a device signed in, or the server's operator: ferryd revoke-devices)", ErrTooMany, user.Username, e.opts.MaxDevicesPerUser)
	}
	e.log.Info("device added", "user", user.ID, "device", creds.Device)
	return creds, nil
}

// afterLoginVerified, when set (by tests), runs in each Login after it
// verified the password and before it writes.
var afterLoginVerified func()

func lookupUser(v *store.View, username string) (User, record.User, error) {
	raw, err := v.Get(keys.Username(username))
	if errors.Is(err, store.ErrNotFound) {
		return User{}, record.User{}, fmt.Errorf("%w: user %q", ErrNotFound, username)
	}
	if err != nil {
		return User{}, record.User{}, err
	}
	id, err := record.DecodeID(raw)
	if err != nil {
		return User{}, record.User{}, err
	}
	return userByID(v, id)
}

func userByID(v *store.View, id ulid.ULID) (User, record.User, error) {
	raw, err := v.Get(keys.ID1(keys.TUser, id))
	if errors.Is(err, store.ErrNotFound) {
		return User{}, record.User{}, fmt.Errorf("%w: user %s", ErrNotFound, id)
	}
	if err != nil {
		return User{}, record.User{}, err
	}
	rec, err := record.DecodeUser(raw)
	if err != nil {
		return User{}, record.User{}, err
	}
	return User{ID: id, Username: rec.Username, DisplayName: rec.DisplayName}, rec, nil
}

func (e *Engine) newDevice(user User, name string) (Credentials, record.Device) {
	if name == "" {
		name = unnamedDevice
	}
	secret := make([]byte, 32)
	e.randomBytes(secret)
	token := tokenPrefix + base64.RawURLEncoding.EncodeToString(secret)
	creds := Credentials{User: user.ID, Device: e.newID(), Username: user.Username, Token: token}
	return creds, record.Device{Name: name, CreatedMs: e.nowMs(), TokenHash: sha256.Sum256([]byte(token))}
}

func (tx *txn) putDevice(user, device ulid.ULID, d *record.Device) {
	if tx.added == nil {
		tx.added = map[ulid.ULID]int{}
	}
	tx.added[user]++
	tx.b.Set(keys.ID2(keys.TDevice, user, device), record.AppendDevice(nil, d))
	tx.b.Set(keys.ID1(keys.TDeviceOf, device), record.AppendID(nil, user))
	tx.b.Set(keys.Token(d.TokenHash), record.AppendIDs(nil, user, device))
}

// Authenticate returns the device a token belongs to, or
// ErrUnauthenticated. It is one hash and one point read.
func (e *Engine) Authenticate(token string) (Actor, error) {
	if !strings.HasPrefix(token, tokenPrefix) || len(token) != len(tokenPrefix)+43 {
		return Actor{}, fmt.Errorf("%w: malformed token", ErrUnauthenticated)
	}
	v := e.st.View()
	defer v.Release()
	hash := sha256.Sum256([]byte(token))
	raw, err := v.Get(keys.Token(hash))
	if errors.Is(err, store.ErrNotFound) {
		return Actor{}, errUnknownToken
	}
	if err != nil {
		return Actor{}, err
	}
	user, device, err := record.DecodeIDs(raw)
	if corrupt(err) {
		// As a device record that does not decode (deviceActive): the
		// device signs in again.
		e.accountDamaged("the device holding the token is refused, and signs in again", err)
		return Actor{}, fmt.Errorf("%w: the server cannot read this token's record; sign in again", ErrUnauthenticated)
	}
	if err != nil {
		return Actor{}, err
	}
	// The device's record holds the hash of its one token: a token
	// record it does not hold (one left by a record revoked or made anew
	// since) signs in nowhere.
	raw, err = v.Get(keys.ID2(keys.TDevice, user, device))
	var d record.Device
	if err == nil {
		d, err = record.DecodeDevice(raw)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return Actor{}, errUnknownToken
	case corrupt(err):
		e.accountDamaged("the device is refused as if revoked, and signs in again", err, "user", user, "device", device)
		return Actor{}, errDeviceUnreadable
	case err != nil:
		return Actor{}, err
	case d.Revoked || d.TokenHash != hash:
		return Actor{}, errUnknownToken
	}
	return Actor{User: user, Device: device}, nil
}

var errUnknownToken = fmt.Errorf("%w: unknown or revoked token", ErrUnauthenticated)

// Account returns the actor's user and device.
func (e *Engine) Account(a Actor) (User, Device, error) {
	v := e.st.View()
	defer v.Release()
	u, _, err := userByID(v, a.User)
	if corrupt(err) {
		e.accountDamaged("the user's account cannot be read", err, "user", a.User)
		return User{}, Device{}, fmt.Errorf("%w: the server cannot read your account's record until the server's operator repairs the server's store", ErrAccountDamaged)
	}
	if err != nil {
		return User{}, Device{}, err
	}
	d, err := device(v, a.User, a.Device)
	if corrupt(err) {
		e.accountDamaged("the device is refused as if revoked, and signs in again", err, "user", a.User, "device", a.Device)
		return User{}, Device{}, errDeviceUnreadable
	}
	return u, d, err
}

// errSignedOut refuses a write of a device revoked after its call was let
// in (by a password change that signed the others out, say).
var errSignedOut = fmt.Errorf("%w: this device was signed out", ErrUnauthenticated)

// listedUser returns user id as a list shows them (a conversation's
// members, a user's blocks): by id alone where their record is missing or
// does not decode, logged, who ("the member") said in the log with
// attrs. One user's account record fails no one else's list.
func (e *Engine) listedUser(v *store.View, id ulid.ULID, who string, attrs ...any) (User, error) {
	u, _, err := userByID(v, id)
	switch {
	case corrupt(err):
		e.accountDamaged(who+" is listed by id alone", err, append([]any{"user", id}, attrs...)...)
	case errors.Is(err, ErrNotFound):
		e.log.Error("a user's record is missing from the store: "+who+" is listed by id alone (ferryd check reports it)", append([]any{"user", id}, attrs...)...)
	default:
		return u, err
	}
	return User{ID: id}, nil
}

// errDeviceUnreadable refuses a device whose record does not decode, as if
// it were revoked: it signs in again, as a new device.
var errDeviceUnreadable = fmt.Errorf("%w: the server cannot read this device's record; sign in again", ErrUnauthenticated)

// accountDamaged logs a record of an account (a user's, a username's, a
// device's or a token's) that does not decode, with what it means for its
// user, and what the operator does about it. Such a record fails no more
// than its own user's calls: ferryd check reports it, and ferryd rebuild
// makes anew what can be (see Rebuild).
func (e *Engine) accountDamaged(effect string, err error, attrs ...any) {
	e.log.Error("account record does not decode: "+effect+", until the store is repaired: stop the server, back the store up (ferryd backup), then ferryd check and ferryd rebuild",
		append(attrs, "err", err)...)
}

func device(v *store.View, user, id ulid.ULID) (Device, error) {
	raw, err := v.Get(keys.ID2(keys.TDevice, user, id))
	if errors.Is(err, store.ErrNotFound) {
		return Device{}, fmt.Errorf("%w: device %s", ErrNotFound, id)
	}
	if err != nil {
		return Device{}, err
	}
	rec, err := record.DecodeDevice(raw)
	if err != nil {
		return Device{}, err
	}
	if rec.Revoked {
		return Device{}, fmt.Errorf("%w: device %s", ErrNotFound, id)
	}
	return Device{ID: id, Name: rec.Name, Created: msTime(rec.CreatedMs)}, nil
}

// unreadableDeviceName names, in its user's list, a device whose record
// does not decode.
const unreadableDeviceName = "a device whose record the server cannot read"

// Devices lists the actor's user's devices that are not revoked, a device
// whose record does not decode among them (refused until the store is
// repaired, it is listed so that it can be revoked).
func (e *Engine) Devices(a Actor) ([]Device, error) {
	v := e.st.View()
	defer v.Release()
	var out []Device
	err := scan(v, keys.ID1(keys.TDevice, a.User), func(k, val []byte) error {
		_, id, ok := keys.ParseID2(k)
		if !ok {
			e.accountDamaged("a device of the user is left out of their list", fmt.Errorf("%w: device key %x", record.ErrCorrupt, k), "user", a.User)
			return nil
		}
		rec, err := record.DecodeDevice(val)
		if corrupt(err) {
			// Refused as if revoked (deviceActive), and listed, so that
			// its user (or the operator's revoke-devices) can revoke it
			// for good: ferryd rebuild would make it anew from its token.
			e.accountDamaged("the device is refused as if revoked, and listed as unreadable", err, "user", a.User, "device", id)
			out = append(out, Device{ID: id, Name: unreadableDeviceName, Created: msTime(int64(id.Time())), Unreadable: true})
			return nil
		}
		if err != nil {
			return err
		}
		if !rec.Revoked {
			out = append(out, Device{ID: id, Name: rec.Name, Created: msTime(rec.CreatedMs)})
		}
		return nil
	})
	return out, err
}

// RevokeDevice revokes one of the actor's user's devices: its token stops
// working at once and its sessions end. ErrNotFound for a device that is not
// the user's or is already revoked.
func (e *Engine) RevokeDevice(ctx context.Context, a Actor, id ulid.ULID) error {
	var notFound, revoked bool
	err := e.write(ctx, 1, func(tx *txn) {
		// The caller's own device may have been revoked since its call
		// was let in (by a password change signing it out): it revokes
		// nothing then. The operator's tools name no device.
		if revoked = a.Device != (ulid.ULID{}) && !tx.deviceActive(a); revoked {
			return
		}
		k := keys.ID2(keys.TDevice, a.User, id)
		raw, err := tx.v.Get(k)
		if errors.Is(err, store.ErrNotFound) || tx.claimed(string(k)) {
			notFound = true
			return
		}
		if err != nil {
			tx.fail(err)
			return
		}
		rec, err := record.DecodeDevice(raw)
		if corrupt(err) {
			// Refused already, and now revoked for good: the record
			// goes, and the token it held, which cannot be told, signs
			// in nowhere without it (ferryd rebuild deletes it).
			e.accountDamaged("the device is revoked, its token left for ferryd rebuild to delete", err, "user", a.User, "device", id)
			tx.revoke(a.User, id, k, nil)
			return
		}
		if err != nil {
			tx.fail(err)
			return
		}
		if rec.Revoked {
			notFound = true
			return
		}
		tx.revoke(a.User, id, k, &rec)
	})
	if err != nil {
		return err
	}
	if revoked {
		return errSignedOut
	}
	if notFound {
		return fmt.Errorf("%w: device %s", ErrNotFound, id)
	}
	e.log.Info("device revoked", "user", a.User, "device", id, "by", a.Device)
	return nil
}

// revoke revokes device id of user, whose record rec is at k: its token
// stops working and its sessions end.
func (tx *txn) revoke(user, id ulid.ULID, k []byte, rec *record.Device) {
	if tx.revoked == nil {
		tx.revoked = map[ulid.ULID]ulid.ULID{}
	}
	tx.revoked[id] = user
	// The record goes: a user who signs in and out in a loop would
	// otherwise grow the records every Login scans in the writer. The
	// device's id stays its user's (TDeviceOf), for its ops.
	tx.b.Delete(k)
	if rec != nil {
		tx.b.Delete(keys.Token(rec.TokenHash))
	}
	tx.wakeUser(user, 1)
}

// ChangePassword sets the password of a's user to next, once current is
// their password (ErrForbidden when it is not: a stolen device cannot lock
// its user out). With signOutOthers, it revokes every other device of
// theirs in the same write, as RevokeDevice does, and returns how many.
// A Login that checked the old password and has not yet added its device
// fails; the devices signed in stay (without signOutOthers).
func (e *Engine) ChangePassword(ctx context.Context, a Actor, current, next string, signOutOthers bool) (signedOut int, err error) {
	if err := checkPassword(next); err != nil {
		return 0, err
	}
	if len(current) > MaxPassword {
		return 0, fmt.Errorf("%w: the current password is wrong", ErrForbidden)
	}
	v := e.st.View()
	_, rec, err := userByID(v, a.User)
	v.Release()
	if corrupt(err) {
		e.accountDamaged("the user cannot change their password", err, "user", a.User)
		return 0, fmt.Errorf("%w: the server cannot read your account's record until the server's operator repairs the server's store", ErrAccountDamaged)
	}
	if err != nil {
		return 0, err
	}
	release, err := e.hashSlot(ctx)
	if err != nil {
		return 0, err
	}
	ok, err := verifyPassword(rec.PasswordHash, current)
	var hash string
	if err == nil && ok {
		hash = e.hashPassword(next)
	}
	release()
	if err != nil {
		return 0, fmt.Errorf("verify password of %s: %w", a.User, err)
	}
	if !ok {
		return 0, fmt.Errorf("%w: the current password is wrong", ErrForbidden)
	}
	n, err := e.setPassword(ctx, a.User, rec.PasswordHash, hash, a, signOutOthers)
	if err == nil {
		e.log.Info("password changed", "user", a.User, "device", a.Device, "devices_signed_out", n)
	}
	return n, err
}

// SetPassword sets the password of the user named username: for the
// server's operator (ferryd set-password), whose user forgot theirs. Their
// devices stay signed in.
func (e *Engine) SetPassword(ctx context.Context, username, next string) (User, error) {
	if err := checkPassword(next); err != nil {
		return User{}, err
	}
	name, err := NormalizeUsername(username)
	if err != nil {
		return User{}, err
	}
	v := e.st.View()
	u, rec, err := lookupUser(v, name)
	v.Release()
	if err != nil {
		return User{}, err
	}
	release, err := e.hashSlot(ctx)
	if err != nil {
		return User{}, err
	}
	hash := e.hashPassword(next)
	release()
	if _, err := e.setPassword(ctx, u.ID, rec.PasswordHash, hash, Actor{}, false); err != nil {
		return User{}, err
	}
	e.log.Info("password set by the operator", "user", u.ID)
	return u, nil
}

// setPassword writes hash as user's password's, where their record still
// holds was (else ErrPrecondition: the password changed meanwhile), a's
// device still signed in when a names one; with signOutOthers, it revokes
// the user's other devices than a's, and returns how many.
func (e *Engine) setPassword(ctx context.Context, user ulid.ULID, was, hash string, a Actor, signOutOthers bool) (int, error) {
	var n int
	var changed, revoked bool
	err := e.write(ctx, 1, func(tx *txn) {
		k := keys.ID1(keys.TUser, user)
		rec, err := tx.userRecord(user)
		if errors.Is(err, store.ErrNotFound) || corrupt(err) {
			changed = true // read fine before the write: so not as it was
			return
		}
		if err != nil {
			tx.fail(err)
			return
		}
		// A change earlier in the group; or, signing the others out, a
		// login of the group applied before, whose device the scan below
		// would not see: the change goes again, in the next group.
		if changed = rec.PasswordHash != was || tx.claims[string(k)] || signOutOthers && tx.added[user] > 0; changed {
			return
		}
		if revoked = a.Device != (ulid.ULID{}) && !tx.deviceActive(a); revoked {
			return
		}
		tx.claimed(string(k)) // a login later in the group checked the old password
		rec.PasswordHash = hash
		tx.putUser(user, rec)
		if !signOutOthers {
			return
		}
		err = scan(tx.v, keys.ID1(keys.TDevice, user), func(dk, val []byte) error {
			_, id, ok := keys.ParseID2(dk)
			if !ok || id == a.Device || tx.claimed(string(dk)) {
				return nil
			}
			d, err := record.DecodeDevice(val)
			switch {
			case corrupt(err):
				// Refused as if revoked already; its token cannot be
				// told, and stays until ferryd rebuild removes it.
				tx.revoke(user, id, bytes.Clone(dk), nil)
			case err != nil:
				return err
			case d.Revoked:
				tx.b.Delete(dk) // kept by stores from before revoking deleted the record
			default:
				tx.revoke(user, id, bytes.Clone(dk), &d)
				n++
			}
			return nil
		})
		if err != nil {
			tx.fail(err)
		}
	})
	switch {
	case err != nil:
		return 0, err
	case changed:
		return 0, fmt.Errorf("%w: the password changed meanwhile; try again", ErrPrecondition)
	case revoked:
		return 0, errSignedOut
	}
	return n, nil
}

// deviceActive reports whether the actor's device is still valid (not
// revoked).
//
// A device whose record does not decode is not: whether it was revoked
// cannot be told, so it is refused as if it were (it signs in again, as a
// new device), with an error logged for the operator, rather than failing
// the writer, and so the store, at its next write.
func (e *Engine) deviceActive(v *store.View, a Actor) (bool, error) {
	_, err := device(v, a.User, a.Device)
	switch {
	case errors.Is(err, ErrNotFound):
		return false, nil
	case corrupt(err):
		e.accountDamaged("the device is refused as if revoked, and signs in again", err, "user", a.User, "device", a.Device)
		return false, nil
	}
	return err == nil, err
}

// UserNamed returns the id of the user named username, from the
// username's record alone: for the operator's tools (revoke-devices),
// which act on a user whose own record may not decode. ErrNotFound when no
// one has the name.
func (e *Engine) UserNamed(username string) (ulid.ULID, error) {
	name, err := NormalizeUsername(username)
	if err != nil {
		return ulid.ULID{}, fmt.Errorf("%w: user %q", ErrNotFound, username)
	}
	v := e.st.View()
	defer v.Release()
	raw, err := v.Get(keys.Username(name))
	if errors.Is(err, store.ErrNotFound) {
		return ulid.ULID{}, fmt.Errorf("%w: user %q", ErrNotFound, name)
	}
	if err != nil {
		return ulid.ULID{}, err
	}
	id, err := record.DecodeID(raw)
	if corrupt(err) {
		return ulid.ULID{}, fmt.Errorf("%w: the record of the username %q does not decode (ferryd rebuild makes it anew from its user's)", ErrAccountDamaged, name)
	}
	return id, err
}

// UserForOperator reads user id's record for an operator's tool, logging
// nothing: ErrNotFound, or ErrAccountDamaged when it does not decode.
func (e *Engine) UserForOperator(id ulid.ULID) (User, error) {
	v := e.st.View()
	defer v.Release()
	u, _, err := userByID(v, id)
	if corrupt(err) {
		return User{}, fmt.Errorf("%w: the record of user %s does not decode: %v", ErrAccountDamaged, id, err)
	}
	return u, err
}

// BlockCount counts the users user blocks.
func (e *Engine) BlockCount(user ulid.ULID) (int, error) {
	v := e.st.View()
	defer v.Release()
	n, err := count(v, keys.ID1(keys.TBlock, user))
	return int(n), err
}

// LookupUsers resolves usernames; unknown ones are left out. At most
// MaxLookup names.
func (e *Engine) LookupUsers(a Actor, usernames []string) ([]User, error) {
	if len(usernames) > MaxLookup {
		return nil, fmt.Errorf("%w: %d usernames; the limit is %d", ErrTooMany, len(usernames), MaxLookup)
	}
	v := e.st.View()
	defer v.Release()
	var out []User
	for _, n := range usernames {
		name, err := NormalizeUsername(n)
		if err != nil {
			continue
		}
		u, _, err := lookupUser(v, name)
		if corrupt(err) {
			e.accountDamaged("the user is left out of lookups", err, "username", name)
			continue
		}
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}
