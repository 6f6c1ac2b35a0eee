package engine

import (
	"bytes"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// UsagePerOp is what each op counts in its user's usage besides its body,
// title and reaction key: about what its ids, dot, seq and indexes take on
// disk, so that ops without a body are bounded too.
const UsagePerOp = 32

// opUsage is what op, stored, counts in its user's usage
// (Options.UserQuota): UsagePerOp and its body, content type, title and
// reaction key, until a delete erases it (a message, or an edit of one),
// when it counts nothing more. A delete counts UsagePerOp itself, to
// whoever deleted it: deleting one's own message frees what it and its
// edits counted, less that.
func opUsage(op *model.Op, erased bool) int64 {
	if erased {
		return 0
	}
	return UsagePerOp + int64(len(op.Body)+len(op.ContentType)+len(op.Title)+len(op.ReactionKey))
}

// quotaApplies reports whether the quota may refuse op by actor; target
// is a delete's message, and subject the role its member has, for a role
// change. What makes room or lets a user leave always goes, and each is
// bounded by ops the quota does refuse:
//   - a delete of one's own message not yet erased: a message is erased
//     once, and its author paid for it (a delete of another's message
//     goes through the quota, or moderators could erase, and so refund,
//     their friends' messages without end);
//   - a member removal, leaving too: once per add, which its adder pays;
//   - making a member owner who is not (a last owner must before leaving):
//     once per member until a demotion, which the quota may refuse.
func quotaApplies(op *model.Op, actor ulid.ULID, target *txOp, subject model.Role) bool {
	switch op.Kind {
	case model.KindDelete:
		return target == nil || target.rec.Erased || target.rec.User != actor
	case model.KindMemberRemove:
		return false
	case model.KindMemberRole:
		return op.Role != model.RoleOwner || subject == model.RoleOwner
	}
	return true
}

// Usage returns what user's ops count against Options.UserQuota: for each,
// UsagePerOp bytes and its body, content type, title and reaction key; a
// deleted message, and its edits, count nothing more. Zero for a user who
// wrote none, or no such user.
func (e *Engine) Usage(user ulid.ULID) (int64, error) {
	v := e.st.View()
	defer v.Release()
	n, err := readUsage(v, user)
	if corrupt(err) {
		// ferryd check reports it, and rebuild counts it anew.
		return 0, fmt.Errorf("%w: %v", ErrAccountDamaged, err)
	}
	return n, err
}

// UserQuota is Options.UserQuota, the server's quota: 0 when there is
// none. QuotaOf is a user's.
func (e *Engine) UserQuota() int64 { return e.opts.UserQuota }

// usageOfOps counts each user's usage from the ops in v.
func usageOfOps(v *store.View) (map[ulid.ULID]int64, int, error) {
	usage := map[ulid.ULID]int64{}
	n := 0
	err := scan(v, []byte{keys.TOp}, func(k, val []byte) error {
		conv, seq, ok := keys.ParseOp(k)
		if !ok {
			return fmt.Errorf("%w: op key %x", record.ErrCorrupt, k)
		}
		op, err := record.DecodeOp(conv, seq, val)
		if err != nil {
			return err
		}
		n++
		usage[op.User] += opUsage(&op.Op, op.Erased)
		return nil
	})
	return usage, n, err
}

// countUsage writes into b each user's usage as the ops in v give it, in
// place of any count the store had: the upgrade of a store written before
// usage was kept (format 6), or counted by other rules (format 7).
func (e *Engine) countUsage(v *store.View, b *store.Batch) error {
	start := time.Now()
	e.log.Info("counting each user's stored bytes for the store's upgrade, once: this reads every op")
	usage, ops, err := usageOfOps(v)
	if err != nil {
		return fmt.Errorf("count the users' usage: %w", err)
	}
	err = scan(v, []byte{keys.TUsage}, func(k, _ []byte) error {
		b.Delete(bytes.Clone(k))
		return nil
	})
	if err != nil {
		return fmt.Errorf("count the users' usage: %w", err)
	}
	for user, n := range usage {
		if n > 0 {
			b.Set(keys.ID1(keys.TUsage, user), record.AppendUint(nil, uint64(n)))
		}
	}
	e.log.Info("counted each user's stored bytes, once, for the upgrade", "ops", ops, "users", len(usage), "took", time.Since(start).Round(time.Millisecond))
	return nil
}
