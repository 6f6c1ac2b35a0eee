package engine

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
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

// tokenPrefix starts every device token, so that a leaked token is easy to
// recognise (and to scan for) and a token of another kind is refused early.
const tokenPrefix = "fy1_"

// NewAccount is what Register needs.
type NewAccount struct {
	Username    string
	Password    string
	DisplayName string // default: the username
	DeviceName  string // default: "unnamed device"
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
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %s contains a control character", ErrInvalid, what)
		}
	}
	return nil
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
	if p.DisplayName == "" {
		p.DisplayName = p.Username
	}
	if err := checkName("display name", p.DisplayName, MaxDisplayName); err != nil {
		return User{}, Credentials{}, err
	}
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
	creds, dev := e.newDevice(user, deviceName)
	full := false
	err = e.write(ctx, 1, func(tx *txn) {
		n := 0
		err := scan(tx.v, keys.ID1(keys.TDevice, user.ID), func(k, val []byte) error {
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
	if full {
		return Credentials{}, fmt.Errorf("%w: %s already has %d devices, the limit; revoke one first (RevokeDevice from a device signed in, or the server's operator: ferryd revoke-devices)", ErrTooMany, user.Username, e.opts.MaxDevicesPerUser)
	}
	e.log.Info("device added", "user", user.ID, "device", creds.Device)
	return creds, nil
}

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
		name = "unnamed device"
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
	raw, err := v.Get(keys.Token(sha256.Sum256([]byte(token))))
	if errors.Is(err, store.ErrNotFound) {
		return Actor{}, fmt.Errorf("%w: unknown or revoked token", ErrUnauthenticated)
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
	return Actor{User: user, Device: device}, nil
}

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

// Devices lists the actor's user's devices that are not revoked.
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
			// Refused as if revoked (deviceActive): not listed.
			e.accountDamaged("the device is refused as if revoked, and left out of its user's list", err, "user", a.User, "device", id)
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
	var notFound bool
	err := e.write(ctx, 1, func(tx *txn) {
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
			// Refused as if revoked (deviceActive) already: so it is
			// not found. ferryd rebuild deletes the record.
			e.accountDamaged("the device is refused as if revoked, and cannot be revoked again", err, "user", a.User, "device", id)
			notFound = true
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
		if tx.revoked == nil {
			tx.revoked = map[ulid.ULID]ulid.ULID{}
		}
		tx.revoked[id] = a.User
		// The record goes: a user who signs in and out in a loop would
		// otherwise grow the records every Login scans in the writer.
		// The device's id stays its user's (TDeviceOf), for its ops.
		tx.b.Delete(k)
		tx.b.Delete(keys.Token(rec.TokenHash))
		tx.wakeUser(a.User, 1)
	})
	if err != nil {
		return err
	}
	if notFound {
		return fmt.Errorf("%w: device %s", ErrNotFound, id)
	}
	e.log.Info("device revoked", "user", a.User, "device", id, "by", a.Device)
	return nil
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
