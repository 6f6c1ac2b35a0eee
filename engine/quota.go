package engine

import (
	"context"
	"fmt"
	"maps"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/internal/units"
)

// A user's quota is the server's (Options.UserQuota) unless the operator
// set one for them (SetUserQuota): more for a user who pays for it, less
// for one who abuses the room, none at all. The quotas set are few, so
// the engine holds them all in memory (Engine.quotas), read by the
// writer at each op the quota may refuse and by GetAccount; the table
// (keys.TQuota) is what they are loaded from at Open.

// MaxQuota is the largest quota a user may be given: 1 PiB.
const MaxQuota = 1 << 50

// ServerQuota, given to SetUserQuota, gives a user the server's quota
// again.
const ServerQuota = -1

// QuotaOf returns user's quota in bytes: the one set for them, else the
// server's; 0 when none applies.
func (e *Engine) QuotaOf(user ulid.ULID) int64 {
	q, _ := e.OwnQuota(user)
	return q
}

// OwnQuota is QuotaOf, and whether the quota was set for user.
func (e *Engine) OwnQuota(user ulid.ULID) (q int64, own bool) {
	if q, ok := (*e.quotas.Load())[user]; ok {
		return q, true
	}
	return e.opts.UserQuota, false
}

// SetUserQuota sets the quota of the user named username to bytes (0: no
// quota for them), in place of the server's, or, given ServerQuota, gives
// them the server's again. It applies to their next ops; what they hold
// already stays, past it or not.
func (e *Engine) SetUserQuota(ctx context.Context, username string, bytes int64) (User, error) {
	if bytes < ServerQuota || bytes > MaxQuota {
		return User{}, fmt.Errorf("%w: a quota is between 0 and %s, got %d bytes", ErrInvalid, units.Bytes(MaxQuota), bytes)
	}
	id, err := e.UserNamed(username)
	if err != nil {
		return User{}, err
	}
	var gone bool
	err = e.write(ctx, 1, func(tx *txn) {
		// A name kept for a user whose record is lost (ferryd rebuild
		// keeps it): nothing to hold to a quota, and check would report
		// one.
		if has, err := tx.v.Has(keys.ID1(keys.TUser, id)); err != nil {
			tx.fail(err)
			return
		} else if gone = !has && bytes != ServerQuota; gone {
			return
		}
		if tx.quotaSets == nil {
			tx.quotaSets = map[ulid.ULID]int64{}
		}
		tx.quotaSets[id] = bytes
		k := keys.ID1(keys.TQuota, id)
		if bytes == ServerQuota {
			tx.b.Delete(k)
		} else {
			tx.b.Set(k, record.AppendUint(nil, uint64(bytes)))
		}
	})
	if err != nil {
		return User{}, err
	}
	if gone {
		return User{}, fmt.Errorf("%w: the user %q has no record (ferryd check reports it; restore it from a backup)", ErrAccountDamaged, username)
	}
	e.log.Info("quota set by the operator", "user", id, "bytes", bytes)
	name, _ := NormalizeUsername(username)
	return User{ID: id, Username: name}, nil
}

// quotaOf is QuotaOf as of this group's writes, and whether the quota
// was set for user.
func (tx *txn) quotaOf(user ulid.ULID) (q int64, own bool) {
	if q, ok := tx.quotaSets[user]; ok {
		if q == ServerQuota {
			return tx.e.opts.UserQuota, false
		}
		return q, true
	}
	return tx.e.OwnQuota(user)
}

// setQuotas applies the quotas a durable group set to those in memory.
// The writer's alone calls it, in commit order.
func (e *Engine) setQuotas(sets map[ulid.ULID]int64) {
	if len(sets) == 0 {
		return
	}
	next := maps.Clone(*e.quotas.Load())
	for u, q := range sets {
		if q == ServerQuota {
			delete(next, u)
		} else {
			next[u] = q
		}
	}
	e.quotas.Store(&next)
}

// loadQuotas reads the quotas set. A record that does not decode gives
// its user the server's quota, logged (ferryd check reports it; SetUserQuota
// writes it anew).
func (e *Engine) loadQuotas(v *store.View) error {
	quotas := map[ulid.ULID]int64{}
	err := scan(v, []byte{keys.TQuota}, func(k, val []byte) error {
		user, ok := keys.ParseID1(k)
		q, err := record.DecodeUint(val)
		if !ok || err != nil || q > MaxQuota {
			e.log.Error("a user's quota record does not decode: the server's quota applies to them (ferryd set-quota sets it anew)", "key", fmt.Sprintf("%x", k))
			return nil
		}
		quotas[user] = int64(q)
		return nil
	})
	e.quotas.Store(&quotas)
	return err
}

// checkQuotas reports, for Check, the quota records that do not decode
// or are of no user.
func checkQuotas(v *store.View, problem func(format string, args ...any)) error {
	return scan(v, []byte{keys.TQuota}, func(k, val []byte) error {
		user, ok := keys.ParseID1(k)
		if !ok {
			problem("malformed quota key %x", k)
			return nil
		}
		if q, err := record.DecodeUint(val); err != nil || q > MaxQuota {
			problem("the quota of user %s does not decode (ferryd set-quota sets it anew)", user)
			return nil
		}
		switch has, err := v.Has(keys.ID1(keys.TUser, user)); {
		case err != nil:
			return err
		case !has:
			problem("a quota is set for user %s, who has no record", user)
		}
		return nil
	})
}
