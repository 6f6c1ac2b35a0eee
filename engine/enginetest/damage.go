package enginetest

import (
	"bytes"
	"errors"
	"log/slog"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/store"
)

// GarbleMember replaces user's member record in conv, in the closed store
// at dir on fs, with bytes that do not decode: the conversation is then
// damaged (see engine.ErrDamaged). restore puts the record back, in the
// store closed again.
func GarbleMember(fs vfs.FS, dir string, conv, user ulid.ULID) (restore func() error, err error) {
	return garble(fs, dir, keys.ID2(keys.TMember, conv, user))
}

// GarbleConv is GarbleMember for conv's record.
func GarbleConv(fs vfs.FS, dir string, conv ulid.ULID) (restore func() error, err error) {
	return garble(fs, dir, keys.ID1(keys.TConv, conv))
}

// GarbleUser is GarbleMember for user's record: the user cannot sign in
// (see engine.ErrAccountDamaged).
func GarbleUser(fs vfs.FS, dir string, user ulid.ULID) (restore func() error, err error) {
	return garble(fs, dir, keys.ID1(keys.TUser, user))
}

// GarbleDevice is GarbleMember for user's device's record: the device is
// refused as if revoked.
func GarbleDevice(fs vfs.FS, dir string, user, device ulid.ULID) (restore func() error, err error) {
	return garble(fs, dir, keys.ID2(keys.TDevice, user, device))
}

// GarbleUsage sets user's usage count, in the closed store at dir on fs,
// to bytes that do not decode.
func GarbleUsage(fs vfs.FS, dir string, user ulid.ULID) error {
	return rewrite(fs, dir, func(_ *store.View, b *store.Batch) error {
		b.Set(keys.ID1(keys.TUsage, user), []byte{0xff, 0xff, 0xff})
		return nil
	})
}

func garble(fs vfs.FS, dir string, key []byte) (restore func() error, err error) {
	var was []byte
	err = rewrite(fs, dir, func(v *store.View, b *store.Batch) error {
		raw, err := v.Get(key)
		if err != nil {
			return err
		}
		was = bytes.Clone(raw)
		b.Set(key, []byte{1, 2, 3})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return func() error {
		return rewrite(fs, dir, func(_ *store.View, b *store.Batch) error {
			b.Set(key, was)
			return nil
		})
	}, nil
}

func rewrite(fs vfs.FS, dir string, f func(*store.View, *store.Batch) error) error {
	st, err := store.Open(dir, store.Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	b := st.NewBatch()
	v := st.View()
	err = f(v, b)
	v.Release()
	if err == nil {
		err = st.Commit(b)
	} else {
		b.Close()
	}
	return errors.Join(err, st.Close())
}
