package engine

import (
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
)

// Usage returns the bytes of the message and edit bodies that user's ops
// hold: what Options.UserQuota caps. A deleted message's bodies count no
// more. Zero for a user who wrote none, or no such user.
func (e *Engine) Usage(user ulid.ULID) (int64, error) {
	v := e.st.View()
	defer v.Release()
	return readUsage(v, user)
}

// usageOfOps counts each user's usage from the ops in v: the bodies of
// their ops that are not erased.
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
		if !op.Erased && len(op.Body) > 0 {
			usage[op.User] += int64(len(op.Body))
		}
		return nil
	})
	return usage, n, err
}

// countUsage writes into b each user's usage as the ops in v give it: the
// upgrade of a store written before usage was kept (format 6).
func (e *Engine) countUsage(v *store.View, b *store.Batch) error {
	start := time.Now()
	usage, ops, err := usageOfOps(v)
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
