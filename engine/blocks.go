package engine

import (
	"context"
	"fmt"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
)

// MaxBlocked is how many users one user may block.
const MaxBlocked = 10_000

// A user blocks another so that the other cannot add them to a
// conversation: anyone who knows a username could otherwise put its user
// in conversations of theirs, again after each time they leave. A member
// add by a user the new member blocked is rejected (ErrForbidden), and
// nothing else changes: conversations they share already stay, and the
// user leaves those they no longer want.

// Block makes a's user refuse being added to conversations by user.
// Blocking one blocked already changes nothing.
func (e *Engine) Block(ctx context.Context, a Actor, user ulid.ULID) error {
	if user == a.User {
		return fmt.Errorf("%w: you cannot block yourself", ErrInvalid)
	}
	var notFound, full, revoked bool
	err := e.write(ctx, 1, func(tx *txn) {
		if revoked = !tx.deviceActive(a); revoked {
			return
		}
		switch ok, err := tx.v.Has(keys.ID1(keys.TUser, user)); {
		case err != nil:
			tx.fail(err)
			return
		case !ok:
			notFound = true
			return
		}
		switch has, err := tx.blocks(a.User, user); {
		case err != nil:
			tx.fail(err)
			return
		case has:
			return
		}
		n, err := count(tx.v, keys.ID1(keys.TBlock, a.User))
		if err != nil {
			tx.fail(err)
			return
		}
		if full = int(n)+tx.blockAdds[a.User] >= MaxBlocked; full {
			return
		}
		tx.setBlock(a.User, user, true)
	})
	switch {
	case err != nil:
		return err
	case revoked:
		return errSignedOut
	case notFound:
		return fmt.Errorf("%w: user %s", ErrNotFound, user)
	case full:
		return fmt.Errorf("%w: you block %d users, the most this server allows; unblock some first", ErrTooMany, MaxBlocked)
	}
	return nil
}

// Unblock lets user add a's user to conversations again. Unblocking one
// not blocked changes nothing.
func (e *Engine) Unblock(ctx context.Context, a Actor, user ulid.ULID) error {
	var revoked bool
	err := e.write(ctx, 1, func(tx *txn) {
		if revoked = !tx.deviceActive(a); revoked {
			return
		}
		// Only a block there is deleted: a call of no one writes nothing.
		switch has, err := tx.blocks(a.User, user); {
		case err != nil:
			tx.fail(err)
		case has:
			tx.setBlock(a.User, user, false)
		}
	})
	if err == nil && revoked {
		err = errSignedOut
	}
	return err
}

// Blocked lists the users a's user blocks, in id order. One whose record
// does not decode is listed by id alone.
func (e *Engine) Blocked(a Actor) ([]User, error) {
	v := e.st.View()
	defer v.Release()
	var out []User
	err := scan(v, keys.ID1(keys.TBlock, a.User), func(k, _ []byte) error {
		_, u, ok := keys.ParseID2(k)
		if !ok {
			e.accountDamaged("a block of the user is left out of their list", fmt.Errorf("%w: block key %x", record.ErrCorrupt, k), "user", a.User)
			return nil
		}
		user, err := e.listedUser(v, u, "the blocked user", "by", a.User)
		if err != nil {
			return err
		}
		out = append(out, user)
		return nil
	})
	return out, err
}

// blocks reports whether user blocks by (so that by may not add them),
// as of this group's writes.
func (tx *txn) blocks(user, by ulid.ULID) (bool, error) {
	if set, ok := tx.blockSet[idPair{user, by}]; ok {
		return set, nil
	}
	return tx.v.Has(keys.ID2(keys.TBlock, user, by))
}

// setBlock sets or lifts user's block of by, as later requests of the
// group see it (blocks).
func (tx *txn) setBlock(user, by ulid.ULID, set bool) {
	if tx.blockSet == nil {
		tx.blockSet, tx.blockAdds = map[idPair]bool{}, map[ulid.ULID]int{}
	}
	k := keys.ID2(keys.TBlock, user, by)
	if set {
		tx.b.Set(k, nil)
		tx.blockAdds[user]++
	} else {
		tx.b.Delete(k)
	}
	tx.blockSet[idPair{user, by}] = set
}
