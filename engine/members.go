package engine

import (
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// memberTable is the table a member record of role belongs in: a
// conversation's current members (keys.TMember) are kept apart from those
// who left or were removed (keys.TFormer), so that reading its members,
// for its member list and its receipts, reads the current ones only, in a
// conversation that thousands joined and left.
func memberTable(role model.Role) byte {
	if role == model.RoleNone {
		return keys.TFormer
	}
	return keys.TMember
}

// moveFormerMembers moves the records of members who left from
// keys.TMember to keys.TFormer, in b: the upgrade to format 8.
func (e *Engine) moveFormerMembers(v *store.View, b *store.Batch) error {
	start := time.Now()
	moved := 0
	err := scan(v, []byte{keys.TMember}, func(k, val []byte) error {
		conv, u, ok := keys.ParseID2(k)
		if !ok {
			return fmt.Errorf("%w: member key %x", record.ErrCorrupt, k)
		}
		m, err := record.DecodeMember(val)
		if err != nil {
			return fmt.Errorf("member %s of %s: %w", u, conv, err)
		}
		if m.Role == model.RoleNone {
			b.Delete(keys.ID2(keys.TMember, conv, u))
			b.Set(keys.ID2(keys.TFormer, conv, u), val)
			moved++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("move the records of former members: %w", err)
	}
	if moved > 0 {
		e.log.Info("moved the records of members who left, for the store's upgrade", "records", moved, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// writeMember writes u's record in tc, in the table of its role, and takes
// it out of the other when the group moved it there (see memberTable).
func (tx *txn) writeMember(tc *txConv, u ulid.ULID, val []byte) {
	m := tc.members[u]
	tx.b.Set(keys.ID2(memberTable(m.Role), tc.id, u), val)
	if was, changed := tc.before[u]; changed && !tc.fresh[u] && memberTable(was) != memberTable(m.Role) {
		tx.b.Delete(keys.ID2(memberTable(was), tc.id, u))
	}
}
