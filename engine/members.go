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

// formerMoveChunk bounds the records one commit of the upgrade to format
// 8 moves: the memory of the upgrade, on a store with millions of former
// members.
var formerMoveChunk = 10_000

// afterFormerChunk, when set (by tests), runs after each commit of the
// upgrade's moves; an error stops it there, as a crash would.
var afterFormerChunk func() error

// moveFormerMembers moves the records of members who left from
// keys.TMember to keys.TFormer, while the store's meta says the upgrade to
// format 8 has yet to (keys.MetaFormerMove, set with the format): in
// commits of formerMoveChunk records, the last of which clears the mark.
// A crash leaves the mark, and the next open goes on; a record moved
// stays moved. A record that does not decode stops it, and the store's
// opening, but for a tool's (lenient: Options.Existing, or Rebuild, which
// repairs such a record): the record stays where it is, with a warning,
// and so does the mark, so that a server's start refuses the store until
// a Rebuild repaired what it could and ended the upgrade.
func (e *Engine) moveFormerMembers(lenient bool) error {
	v := e.st.View()
	pending, err := v.Has(keys.Meta(keys.MetaFormerMove))
	v.Release()
	if err != nil || !pending {
		return err
	}
	start := time.Now()
	e.log.Info("moving the records of members who left, for the store's upgrade, once")
	moved, skipped := 0, 0
	lo, hi := keys.Prefix([]byte{keys.TMember})
	for lo != nil {
		v := e.st.View()
		b := e.st.NewBatch()
		n, bad, next, err := moveFormerChunk(v, b, lo, hi, lenient)
		v.Release()
		if err != nil {
			b.Close()
			return fmt.Errorf("move the records of former members (ferryd rebuild repairs a record that does not decode): %w", err)
		}
		if next == nil && skipped+bad == 0 {
			b.Delete(keys.Meta(keys.MetaFormerMove))
		}
		if err := e.st.Commit(b); err != nil {
			return err
		}
		moved, skipped, lo = moved+n, skipped+bad, next
		if f := afterFormerChunk; f != nil {
			if err := f(); err != nil {
				return err
			}
		}
	}
	e.log.Info("moved the records of members who left", "records", moved, "took", time.Since(start).Round(time.Millisecond))
	if skipped > 0 {
		e.log.Warn("member records that do not decode were left where they are, and a server will not start on the store until they are repaired: ferryd check lists them, ferryd rebuild repairs them", "records", skipped)
	}
	return nil
}

// moveFormerChunk sets in b the moves of up to formerMoveChunk records of
// former members in TMember from lo, and returns where the next chunk
// starts (nil after the table's last), and how many records it skipped
// that it could not read, when lenient; otherwise such a record is an
// error.
func moveFormerChunk(v *store.View, b *store.Batch, lo, hi []byte, lenient bool) (moved, skipped int, next []byte, err error) {
	it, err := v.Iter(lo, hi)
	if err != nil {
		return 0, 0, nil, err
	}
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if moved == formerMoveChunk {
			next = bytes.Clone(k)
			break
		}
		conv, u, valid := keys.ParseID2(k)
		val, err := it.Value()
		if err != nil {
			_ = it.Close()
			return 0, 0, nil, err
		}
		m, err := record.DecodeMember(val)
		if !valid || err != nil {
			if !lenient {
				_ = it.Close()
				if err == nil {
					err = fmt.Errorf("%w: malformed key", record.ErrCorrupt)
				}
				return 0, 0, nil, fmt.Errorf("member record %x: %w", k, err)
			}
			skipped++
			continue
		}
		if m.Role == model.RoleNone {
			b.Delete(keys.ID2(keys.TMember, conv, u))
			b.Set(keys.ID2(keys.TFormer, conv, u), val)
			moved++
		}
	}
	return moved, skipped, next, it.Close()
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
