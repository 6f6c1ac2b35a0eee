package engine

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// Every test of the engine checks what reads take from memory against the
// store.
func init() { verifyCaches = true }

// Checking reports whether reads check what they take from memory
// against the store: for tests that run with and without the checks.
func Checking() bool { return verifyCaches }

// MeasureWithoutChecks turns the cache checks off until the benchmark
// ends: benchmarks measure what production runs.
func MeasureWithoutChecks(b interface{ Cleanup(func()) }) {
	verifyCaches = false
	b.Cleanup(func() { verifyCaches = true })
}

// DuringMarkerCommit runs f in each commit that changes users' markers,
// once it is in the store and before the hub counts it done; nil stops
// it.
func DuringMarkerCommit(e *Engine, f func()) {
	if f == nil {
		e.testMarking.Store(nil)
		return
	}
	e.testMarking.Store(&f)
}

// Maps counts the maps per conversation the session holds.
func (s *Session) Maps() int {
	n := 0
	for _, made := range []bool{s.sent != nil, s.shown != nil, s.memo.counts != nil, s.memo.members != nil, s.memo.marks != nil} {
		if made {
			n++
		}
	}
	return n
}

// WindowIDs is how many of a conversation's newest op ids the writer
// holds.
const WindowIDs = windowIDs

// Runs is how many conversations' runs the writer holds. Call it only
// while no write is under way.
func (e *Engine) Runs() int { return len(e.w.runs) }

// CarryCommits is how many commits' runs the writer keeps.
const CarryCommits = carryCommits

// FeedEntries flushes the store's memtable and counts the entries a scan
// of every user's feed steps over: the entries, and the deletions the
// tables still hold.
func FeedEntries(e *Engine) (int, error) {
	if err := e.st.Flush(); err != nil {
		return 0, err
	}
	return e.st.Entries([]byte{keys.TFeed}, []byte{keys.TFeed + 1})
}

// MaxEntryLag is how far below its conversation's feed position a
// member's own feed entry may sit.
const MaxEntryLag = maxEntryLag

// AsFormat3 rewrites the closed store at dir on fs as a format 3 build
// left it: conversation records without EntryPos and MoveEntries (their
// members' entries at FeedPos), ending in the byte 1 for a shared feed or
// nothing; and a dot index entry for every dot. It fails on a record whose
// entries sit below its FeedPos, which format 3 did not have.
func AsFormat3(fs vfs.FS, dir string) error {
	return rewriteAs(fs, dir, 3, func(v *store.View, b *store.Batch) error {
		err := scan(v, []byte{keys.TConv}, func(k, val []byte) error {
			c, err := record.DecodeConv(val)
			if err != nil {
				return err
			}
			if c.EntryPos != c.FeedPos {
				return fmt.Errorf("conversation %x: entries at %d, below its feed position %d", k, c.EntryPos, c.FeedPos)
			}
			old := record.AppendConv(nil, &c)
			old = old[:len(old)-2] // the flags, and the lag of 0
			if c.SharedFeed {
				old = append(old, 1)
			}
			b.Set(k, old)
			return nil
		})
		if err != nil {
			return err
		}
		return splitDotRuns(v, b)
	})
}

// AsFormat4 rewrites the closed store at dir on fs as a format 4 build
// left it: a dot index entry for every dot, where format 5 keeps runs.
func AsFormat4(fs vfs.FS, dir string) error { return rewriteAs(fs, dir, 4, splitDotRuns) }

// rewriteAs opens the closed store at dir on fs, sets in one batch what
// rewrite sets from its view, and marks the store as of format.
func rewriteAs(fs vfs.FS, dir string, format uint64, rewrite func(*store.View, *store.Batch) error) error {
	st, err := store.Open(dir, store.Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	b := st.NewBatch()
	v := st.View()
	err = rewrite(v, b)
	v.Release()
	if err == nil {
		b.Set(keys.Meta(keys.MetaFormat), record.AppendUint(nil, format))
		err = st.Commit(b)
	}
	return errors.Join(err, st.Close())
}

// splitDotRuns sets in b an entry for every dot of the dot index's runs.
func splitDotRuns(v *store.View, b *store.Batch) error {
	return scan(v, []byte{keys.TDot}, func(k, val []byte) error {
		run, err := decodeDotRun(k, val)
		if err != nil {
			return err
		}
		for i := range run.count {
			b.Set(keys.Dot(run.conv, run.dev, run.first+i), record.AppendUint(nil, run.seq+i))
		}
		return nil
	})
}

// DotEntries counts the entries of conv's dot index.
func DotEntries(e *Engine, conv ulid.ULID) (int, error) {
	v := e.st.View()
	defer v.Release()
	n, err := count(v, keys.ID1(keys.TDot, conv))
	return int(n), err
}

// MoveOp moves conv's op at seq from to seq to, as a corrupt key would
// hold it, leaving a gap at from: for tests of what Check finds.
func MoveOp(e *Engine, conv ulid.ULID, from, to uint64) error {
	v := e.st.View()
	raw, err := v.Get(keys.Op(conv, from))
	v.Release()
	if err != nil {
		return err
	}
	b := e.st.NewBatch()
	b.Delete(keys.Op(conv, from))
	b.Set(keys.Op(conv, to), raw)
	return e.st.Commit(b)
}

// SetDotRun writes a run of dev's dots in conv's dot index, count from
// first at the seqs from seq, or deletes the entry at first when count is
// 0: for tests of what Check finds.
func SetDotRun(e *Engine, conv, dev ulid.ULID, first, seq, count uint64) error {
	b := e.st.NewBatch()
	if count == 0 {
		b.Delete(keys.Dot(conv, dev, first))
	} else {
		b.Set(keys.Dot(conv, dev, first), record.AppendDotRun(nil, seq, count))
	}
	return e.st.Commit(b)
}

// DeviceRecords counts user's device records, revoked ones included.
func DeviceRecords(e *Engine, user ulid.ULID) (int, error) {
	v := e.st.View()
	defer v.Release()
	n, err := count(v, keys.ID1(keys.TDevice, user))
	return int(n), err
}

// AddRevokedDevice stores a revoked device record of user's, as stores
// from before revoking deleted the record kept them.
func AddRevokedDevice(e *Engine, user ulid.ULID) error {
	b := e.st.NewBatch()
	b.Set(keys.ID2(keys.TDevice, user, e.newID()), record.AppendDevice(nil, &record.Device{Name: "old", Revoked: true}))
	return e.st.Commit(b)
}

// SetUsage sets user's usage in the closed store in fs at dir to n, and
// its format: a count another build left.
func SetUsage(fs vfs.FS, dir string, user ulid.ULID, n, format uint64) error {
	st, err := store.Open(dir, store.Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	b := st.NewBatch()
	b.Set(keys.ID1(keys.TUsage, user), record.AppendUint(nil, n))
	b.Set(keys.Meta(keys.MetaFormat), record.AppendUint(nil, format))
	if err := st.Commit(b); err != nil {
		return err
	}
	return st.Close()
}

// ForgetUsage deletes the users' usage from the closed store in fs at dir,
// and sets its format: 5 makes it a store from before usage was kept; the
// current one, a store whose usage is wrong.
func ForgetUsage(fs vfs.FS, dir string, format uint64) error {
	st, err := store.Open(dir, store.Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	b := st.NewBatch()
	v := st.View()
	err = scan(v, []byte{keys.TUsage}, func(k, _ []byte) error {
		b.Delete(bytes.Clone(k))
		return nil
	})
	v.Release()
	if err != nil {
		return err
	}
	b.Set(keys.Meta(keys.MetaFormat), record.AppendUint(nil, format))
	if err := st.Commit(b); err != nil {
		return err
	}
	return st.Close()
}

// ForgetSealSecret deletes the cursor secret from the closed store in fs
// at dir: a store from before feed cursors.
func ForgetSealSecret(fs vfs.FS, dir string) error {
	return rewriteAs(fs, dir, formatVersion, func(_ *store.View, b *store.Batch) error {
		b.Delete(keys.Meta(keys.MetaSealSecret))
		return nil
	})
}

// ServerFeedPos is the last feed position committed: the server's, which
// sessions no longer report (see Event.FeedPos).
func ServerFeedPos(e *Engine) uint64 { return e.feedPos.Load() }

// SessionServerPos is the session's server position (Session.pos), which
// it does not report.
func SessionServerPos(s *Session) uint64 { return s.pos }

// ShortSealSecret sets the closed store's seal secret to secret's 32
// bytes without the last plain position, as a development build wrote it.
func ShortSealSecret(fs vfs.FS, dir string, secret []byte) error {
	return rewriteAs(fs, dir, formatVersion, func(_ *store.View, b *store.Batch) error {
		b.Set(keys.Meta(keys.MetaSealSecret), secret)
		return nil
	})
}

// MemberRecords counts conversation conv's member records: those of its
// current members, and of members who left.
func MemberRecords(e *Engine, conv ulid.ULID) (current, former int, err error) {
	r := e.reader()
	defer r.release()
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		n := 0
		if err := scan(r.v, keys.ID1(t, conv), func([]byte, []byte) error { n++; return nil }); err != nil {
			return 0, 0, err
		}
		if t == keys.TMember {
			current = n
		} else {
			former = n
		}
	}
	return current, former, nil
}

// AsFormat7 rewrites the closed store in fs at dir as format 7 left it:
// the records of members who left among the current members'.
func AsFormat7(fs vfs.FS, dir string) error {
	return rewriteAs(fs, dir, 7, func(v *store.View, b *store.Batch) error {
		return scan(v, []byte{keys.TFormer}, func(k, val []byte) error {
			conv, u, _ := keys.ParseID2(k)
			b.Delete(keys.ID2(keys.TFormer, conv, u))
			b.Set(keys.ID2(keys.TMember, conv, u), val)
			return nil
		})
	})
}

// StopFormerMoveAfter makes the upgrade to format 8 move n records a
// commit and stop, failing Open, after its first commit (a crash); zero
// undoes it.
func StopFormerMoveAfter(n int) {
	if n == 0 {
		formerMoveChunk, afterFormerChunk = 10_000, nil
		return
	}
	formerMoveChunk = n
	afterFormerChunk = func() error { return errors.New("stopped after a chunk of the former members' move, as a crash would") }
}

// Snapshot reads every key and value of the closed store at dir on fs.
func Snapshot(fs vfs.FS, dir string) (map[string]string, error) {
	st, err := store.Open(dir, store.Options{FS: fs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	v := st.View()
	all := map[string]string{}
	err = scan(v, nil, func(k, val []byte) error {
		all[string(k)] = string(val)
		return nil
	})
	v.Release()
	return all, errors.Join(err, st.Close())
}

// A Corruption damages a closed store as a bug, a lost write or a hand on
// the files could: for tests of Rebuild.
type Corruption struct {
	Name string
	// Damage sets in b what damages the store read by v. It returns the
	// key prefixes that Rebuild repairs without bringing back their bytes
	// (a dot index cut in other runs, a detach position lost).
	Damage func(v *store.View, b *store.Batch) (inexact [][]byte, err error)
}

// Damage applies c to the closed store at dir on fs.
func (c Corruption) Apply(fs vfs.FS, dir string) (inexact [][]byte, err error) {
	err = rewriteAs(fs, dir, formatVersion, func(v *store.View, b *store.Batch) error {
		inexact, err = c.Damage(v, b)
		return err
	})
	return inexact, err
}

// first returns the first key of the store's with prefix p for which ok
// (nil: any) holds, and its value.
func first(v *store.View, p []byte, ok func(k, val []byte) bool) (k, val []byte, err error) {
	err = scan(v, p, func(kk, vv []byte) error {
		if k == nil && (ok == nil || ok(kk, vv)) {
			k, val = bytes.Clone(kk), bytes.Clone(vv)
		}
		return nil
	})
	if err == nil && k == nil {
		err = fmt.Errorf("no key with prefix %x to damage", p)
	}
	return k, val, err
}

// formerLost is a Corruption's damage to the first record of a former
// member of a conversation on a shared feed or not: deleted, or changed by
// change.
func formerLost(shared bool, change func(*record.Member)) func(*store.View, *store.Batch) ([][]byte, error) {
	return func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, val, err := first(v, []byte{keys.TFormer}, func(k, _ []byte) bool {
			conv, _, _ := keys.ParseID2(k)
			raw, err := v.Get(keys.ID1(keys.TConv, conv))
			if err != nil {
				return false
			}
			c, err := record.DecodeConv(raw)
			return err == nil && c.SharedFeed == shared
		})
		if err != nil {
			return nil, err
		}
		if change == nil {
			b.Delete(k)
		} else {
			m, err := record.DecodeMember(val)
			if err != nil {
				return nil, err
			}
			change(&m)
			b.Set(k, record.AppendMember(nil, &m))
		}
		conv, _, _ := keys.ParseID2(k)
		// Detached anew, and the members' entries with them.
		return [][]byte{k, keys.ID1(keys.TConv, conv), {keys.TFeed}, {keys.TShared}}, nil
	}
}

// deleteFirst is a Corruption's damage that deletes the first key with
// prefix p for which ok holds.
func deleteFirst(p []byte, ok func(k, val []byte) bool) func(*store.View, *store.Batch) ([][]byte, error) {
	return func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, p, ok)
		b.Delete(k)
		return nil, err
	}
}

// rewriteFirst is a Corruption's damage that sets the value of the first
// key with prefix p to what change makes of it.
func rewriteFirst(p []byte, ok func(k, val []byte) bool, change func(k, val []byte) ([]byte, error)) func(*store.View, *store.Batch) ([][]byte, error) {
	return func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, val, err := first(v, p, ok)
		if err != nil {
			return nil, err
		}
		val, err = change(k, val)
		b.Set(k, val)
		return nil, err
	}
}

// garbleFirst is a Corruption's damage that sets the first key with
// prefix p to bytes that do not decode; Rebuild does not bring its value
// back.
func garbleFirst(p []byte) func(*store.View, *store.Batch) ([][]byte, error) {
	return func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, p, nil)
		if err != nil {
			return nil, err
		}
		b.Set(k, []byte{1, 2, 3})
		return [][]byte{k}, nil
	}
}

// garbleExactly is garbleFirst of a record that Rebuild brings back.
func garbleExactly(p []byte) func(*store.View, *store.Batch) ([][]byte, error) {
	return func(v *store.View, b *store.Batch) ([][]byte, error) {
		_, err := garbleFirst(p)(v, b)
		return nil, err
	}
}

// stray is a Corruption's damage that sets a key that should not be there.
func stray(k func() []byte) func(*store.View, *store.Batch) ([][]byte, error) {
	return func(_ *store.View, b *store.Batch) ([][]byte, error) {
		b.Set(k(), nil)
		return nil, nil
	}
}

var strayID = ulid.MustParse("01KBSTRAYSTRAYSTRAYSTRAYST")

// Corruptions are the damages Rebuild must repair: each of a store that
// holds conversations with at least two members and messages, edits of
// messages, a deleted message with an edit, a former member, read
// markers, user feed entries and feed entries of both kinds.
var Corruptions = []Corruption{
	{"op-id index entry lost", deleteFirst([]byte{keys.TOpID}, nil)},
	{"op-id index entry points elsewhere", rewriteFirst([]byte{keys.TOpID}, nil, func(_, val []byte) ([]byte, error) {
		s, err := record.DecodeUint(val)
		return record.AppendUint(nil, s+1), err
	})},
	{"stray op-id index entry", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, []byte{keys.TConv}, nil)
		conv, _ := keys.ParseID1(k)
		b.Set(keys.ID2(keys.TOpID, conv, strayID), record.AppendUint(nil, 1))
		return nil, err
	}},
	{"edit index entry lost", deleteFirst([]byte{keys.TEdit}, nil)},
	{"user feed index entry lost", deleteFirst([]byte{keys.TUFeedIdx}, nil)},
	{"user feed index entry garbled", rewriteFirst([]byte{keys.TUFeedIdx}, nil, func(_, _ []byte) ([]byte, error) {
		return []byte{0xff}, nil
	})},
	{"stray edit index entry", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, []byte{keys.TConv}, nil)
		conv, _ := keys.ParseID1(k)
		b.Set(keys.Edit(conv, strayID, 2), nil)
		return nil, err
	}},
	{"op's message count wrong", rewriteFirst([]byte{keys.TOp}, func(k, val []byte) bool {
		_, s, _ := keys.ParseOp(k)
		return s > 2
	}, func(k, val []byte) ([]byte, error) {
		conv, s, _ := keys.ParseOp(k)
		op, err := record.DecodeOp(conv, s, val)
		op.Messages += 3
		return record.AppendOp(nil, &op), err
	})},
	{"deleted message's body back", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, val, err := first(v, []byte{keys.TOp}, func(k, val []byte) bool {
			conv, s, _ := keys.ParseOp(k)
			op, err := record.DecodeOp(conv, s, val)
			return err == nil && op.Erased && op.Kind == model.KindMessage
		})
		if err != nil {
			return nil, err
		}
		conv, s, _ := keys.ParseOp(k)
		op, err := record.DecodeOp(conv, s, val)
		op.Erased, op.Body, op.ContentType, op.Hash = false, []byte("a secret that was deleted"), "text/plain", [16]byte{}
		b.Set(k, record.AppendOp(nil, &op))
		return [][]byte{k}, err // erased again, its hash is of this body
	}},
	{"dot index run lost", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, []byte{keys.TDot}, nil)
		b.Delete(k)
		return [][]byte{k[:17]}, err
	}},
	{"dot index run at the wrong seq", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, val, err := first(v, []byte{keys.TDot}, nil)
		if err != nil {
			return nil, err
		}
		s, n, err := record.DecodeDotRun(val)
		b.Set(k, record.AppendDotRun(nil, s+1, n))
		return [][]byte{k[:17]}, err
	}},
	{"conversation record wrong", rewriteFirst([]byte{keys.TConv}, nil, func(_, val []byte) ([]byte, error) {
		c, err := record.DecodeConv(val)
		// A head past the log's end would say the log lost ops.
		c.Head, c.Messages, c.Members, c.Title = c.Head-2, c.Messages-1, c.Members+1, "not the title"
		return record.AppendConv(nil, &c), err
	})},
	{"shared feed conversation's entries below its feed position", rewriteFirst([]byte{keys.TConv}, func(_, val []byte) bool {
		c, err := record.DecodeConv(val)
		return err == nil && c.SharedFeed
	}, func(_, val []byte) ([]byte, error) {
		c, err := record.DecodeConv(val)
		c.EntryPos = c.FeedPos - 1
		return record.AppendConv(nil, &c), err
	})},
	{"conversation record lost", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, []byte{keys.TConv}, func(_, val []byte) bool {
			c, err := record.DecodeConv(val)
			return err == nil && !c.SharedFeed
		})
		b.Delete(k)
		// Made anew at a new feed position, where the members' entries
		// move.
		return [][]byte{k, {keys.TFeed}, {keys.TShared}, keys.Meta(keys.MetaFeedPos)}, err
	}},
	{"shared feed conversation record garbled", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, []byte{keys.TConv}, func(_, val []byte) bool {
			c, err := record.DecodeConv(val)
			return err == nil && c.SharedFeed
		})
		b.Set(k, []byte("garbage"))
		return [][]byte{k, {keys.TFeed}, {keys.TShared}, keys.Meta(keys.MetaFeedPos)}, err
	}},
	{"conversation record lost with receipts waiting", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, []byte{keys.TConv}, func(_, val []byte) bool {
			c, err := record.DecodeConv(val)
			return err == nil && !c.SharedFeed
		})
		b.Delete(k)
		conv, _ := keys.ParseID1(k)
		b.Set(keys.ID1(keys.TReceipts, conv), nil)
		return [][]byte{k, keys.ID1(keys.TReceipts, conv), {keys.TFeed}, {keys.TShared}, keys.Meta(keys.MetaFeedPos)}, err
	}},
	{"member record lost", deleteFirst([]byte{keys.TMember}, nil)},
	{"member record's role wrong", rewriteFirst([]byte{keys.TMember}, nil, func(_, val []byte) ([]byte, error) {
		m, err := record.DecodeMember(val)
		m.Role, m.Since = model.RoleAdmin, m.Since+1
		return record.AppendMember(nil, &m), err
	})},
	{"former member's record in the members' table", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, val, err := first(v, []byte{keys.TFormer}, nil)
		b.Delete(k)
		conv, u, _ := keys.ParseID2(k)
		b.Set(keys.ID2(keys.TMember, conv, u), val)
		return nil, err
	}},
	{"former member's record lost", formerLost(true, nil)},
	{"former member's record lost, own feed entries", formerLost(false, nil)},
	{"former member's record of an earlier removal", formerLost(false, func(m *record.Member) {
		m.Since, m.DetachedPos = m.Since-1, m.DetachedPos-1
	})},
	{"feed entry lost", deleteFirst([]byte{keys.TFeed}, nil)},
	{"stray feed entry", stray(func() []byte { return keys.Feed(keys.TFeed, strayID, 3, strayID) })},
	{"shared feed entry lost", deleteFirst([]byte{keys.TShared}, nil)},
	{"stray shared feed entry", stray(func() []byte { return keys.ID2(keys.TShared, strayID, strayID) })},
	{"conversation list entry lost", deleteFirst([]byte{keys.TUserConv}, nil)},
	{"stray conversation list entry", stray(func() []byte { return keys.ID2(keys.TUserConv, strayID, strayID) })},
	{"user feed entry lost", deleteFirst([]byte{keys.TUFeed}, nil)},
	{"unindexed user feed entry", stray(func() []byte { return keys.Feed(keys.TUFeed, strayID, 3, strayID) })},
	{"usage wrong", rewriteFirst([]byte{keys.TUsage}, nil, func(_, val []byte) ([]byte, error) {
		n, err := record.DecodeUint(val)
		return record.AppendUint(nil, n+100), err
	})},
	{"usage lost", deleteFirst([]byte{keys.TUsage}, nil)},
	{"stray usage", stray(func() []byte { return keys.ID1(keys.TUsage, strayID) })},
	{"member record of a missing conversation", func(_ *store.View, b *store.Batch) ([][]byte, error) {
		b.Set(keys.ID2(keys.TFormer, strayID, strayID), record.AppendMember(nil, &record.Member{Since: 3, DetachedPos: 2}))
		return nil, nil
	}},
	{"read marker's message count wrong", rewriteFirst([]byte{keys.TUserMark}, func(_, val []byte) bool {
		m, err := record.DecodeMarker(val)
		return err == nil && m.ReadCounted
	}, func(_, val []byte) ([]byte, error) {
		m, err := record.DecodeMarker(val)
		m.ReadMessages += 2
		return record.AppendMarker(nil, &m), err
	})},
	// A marker that does not decode: the user's is made anew no further
	// than the log and the devices' markers say (here, below what it was);
	// the device's is deleted.
	{"user's read marker garbled", garbleFirst([]byte{keys.TUserMark})},
	{"device marker garbled", garbleFirst([]byte{keys.TDevMark})},
	{"waiting receipts of a missing conversation", stray(func() []byte { return keys.ID1(keys.TReceipts, strayID) })},
	// Account records: each is made anew from the records it follows
	// (accountFixes), but a device's record, whose name is lost.
	{"username record lost", deleteFirst([]byte{keys.TUsername}, nil)},
	{"username record garbled", garbleExactly([]byte{keys.TUsername})},
	{"username record names another user", rewriteFirst([]byte{keys.TUsername}, nil, func(_, _ []byte) ([]byte, error) {
		return record.AppendID(nil, strayID), nil
	})},
	{"token record lost", deleteFirst([]byte{keys.TToken}, nil)},
	{"token record garbled", garbleExactly([]byte{keys.TToken})},
	{"stray token record", func(_ *store.View, b *store.Batch) ([][]byte, error) {
		b.Set(keys.Token([32]byte{1}), record.AppendIDs(nil, strayID, strayID))
		return nil, nil
	}},
	// A device's record is made anew from its token, keeping neither its
	// name nor its creation time (its id's time instead).
	{"device record garbled", garbleFirst([]byte{keys.TDevice})},
	{"device's record of its user lost", deleteFirst([]byte{keys.TDeviceOf}, nil)},
	{"device's record of its user garbled", garbleExactly([]byte{keys.TDeviceOf})},
	{"device's record of its user names another user", rewriteFirst([]byte{keys.TDeviceOf}, nil, func(_, _ []byte) ([]byte, error) {
		return record.AppendID(nil, strayID), nil
	})},
	{"revoked device's record of its user lost", func(v *store.View, b *store.Batch) ([][]byte, error) {
		k, _, err := first(v, []byte{keys.TDeviceOf}, func(k, val []byte) bool {
			d, _ := keys.ParseID1(k)
			u, err := record.DecodeID(val)
			if err != nil {
				return false
			}
			has, err := v.Has(keys.ID2(keys.TDevice, u, d))
			return err == nil && !has
		})
		b.Delete(k)
		return nil, err // made anew from its ops
	}},
	{"store's feed position behind", func(_ *store.View, b *store.Batch) ([][]byte, error) {
		b.Set(keys.Meta(keys.MetaFeedPos), record.AppendUint(nil, 1))
		return nil, nil // the greatest a conversation or entry holds: here, the last taken
	}},
	{"store's feed position garbled", func(_ *store.View, b *store.Batch) ([][]byte, error) {
		b.Set(keys.Meta(keys.MetaFeedPos), []byte{0xff})
		return nil, nil
	}},
	// Last: the store's position goes past the stray's, which no device
	// could hold, but nothing says so.
	{"stray feed entry past every position", func(_ *store.View, b *store.Batch) ([][]byte, error) {
		b.Set(keys.Feed(keys.TFeed, strayID, 500, strayID), nil)
		return [][]byte{keys.Meta(keys.MetaFeedPos)}, nil
	}},
}

// RebuildInCommitsOf makes each commit of Rebuild hold at most n bytes of
// changes until the test ends: 1 commits each change alone.
func RebuildInCommitsOf(t interface{ Cleanup(func()) }, n int) {
	old := rebuildBatch
	rebuildBatch = n
	t.Cleanup(func() { rebuildBatch = old })
}

// CrashRebuildAfter stops each Rebuild after its nth commit, as a crash
// would, until the test ends; n < 1 lets it run. It returns the error the
// stopped Rebuild returns.
func CrashRebuildAfter(t interface{ Cleanup(func()) }, n int) error {
	crash := errors.New("rebuild stopped as by a crash")
	commits := 0
	afterRebuildCommit = func() error {
		if commits++; commits == n {
			return crash
		}
		return nil
	}
	t.Cleanup(func() { afterRebuildCommit = nil })
	return crash
}

// FormerKey is the key of user's record as a former member of conv.
func FormerKey(conv, user ulid.ULID) []byte { return keys.ID2(keys.TFormer, conv, user) }

// SetKey sets key to val in the closed store at dir on fs.
func SetKey(fs vfs.FS, dir string, key, val []byte) error {
	return rewriteAs(fs, dir, formatVersion, func(_ *store.View, b *store.Batch) error {
		b.Set(key, val)
		return nil
	})
}

// LoseConversation deletes conv's record from the closed store at dir on
// fs, and sets the store's feed position to pos.
func LoseConversation(fs vfs.FS, dir string, conv ulid.ULID, pos uint64) error {
	return rewriteAs(fs, dir, formatVersion, func(_ *store.View, b *store.Batch) error {
		b.Delete(keys.ID1(keys.TConv, conv))
		b.Set(keys.Meta(keys.MetaFeedPos), record.AppendUint(nil, pos))
		return nil
	})
}

// CheckStopped checks the closed store at dir with o, starting no writer
// (which could change it as it starts).
func CheckStopped(dir string, o Options) (rep CheckReport, err error) {
	o.Existing = true
	_, err = open(dir, o, func(e *Engine) error {
		rep, err = e.Check()
		return err
	})
	return rep, err
}

// DeleteKey deletes key from the closed store at dir on fs.
func DeleteKey(fs vfs.FS, dir string, key []byte) error {
	return rewriteAs(fs, dir, formatVersion, func(_ *store.View, b *store.Batch) error {
		b.Delete(key)
		return nil
	})
}

// OpKey is the key of conv's op at seq.
func OpKey(conv ulid.ULID, seq uint64) []byte { return keys.Op(conv, seq) }

// UFeedIdxKey is the key of user's user-feed index entry for conv.
func UFeedIdxKey(user, conv ulid.ULID) []byte { return keys.ID2(keys.TUFeedIdx, user, conv) }

// Tables the tests name.
const (
	TableMember = keys.TMember
	TableUsage  = keys.TUsage
)

// SetFormat sets the closed store's format.
func SetFormat(fs vfs.FS, dir string, format uint64) error {
	return rewriteAs(fs, dir, format, func(*store.View, *store.Batch) error { return nil })
}

// OpIDKey is the key of id's entry in conv's op-id index.
func OpIDKey(conv, id ulid.ULID) []byte { return keys.ID2(keys.TOpID, conv, id) }

// DotKey is the key of the dot index's run of dev's dots in conv from n.
func DotKey(conv, dev ulid.ULID, n uint64) []byte { return keys.Dot(conv, dev, n) }

// Uint is the encoding of n as a record's number (an index's seq, a run
// of one dot's seq).
func Uint(n uint64) []byte { return record.AppendUint(nil, n) }

// FeedPosKey is the key of the store's feed position.
func FeedPosKey() []byte { return keys.Meta(keys.MetaFeedPos) }

// MemberKey is the key of user's record as a current member of conv.
func MemberKey(conv, user ulid.ULID) []byte { return keys.ID2(keys.TMember, conv, user) }

// ConvKey is the key of conv's record.
func ConvKey(conv ulid.ULID) []byte { return keys.ID1(keys.TConv, conv) }

// UserMarkKey is the key of user's own marker in conv.
func UserMarkKey(conv, user ulid.ULID) []byte { return keys.ID2(keys.TUserMark, conv, user) }

// DevMarkKey is the key of device's marker in conv.
func DevMarkKey(conv, device ulid.ULID) []byte { return keys.ID2(keys.TDevMark, conv, device) }

// DeviceOfKey is the key of the record naming device's user.
func DeviceOfKey(device ulid.ULID) []byte { return keys.ID1(keys.TDeviceOf, device) }

// DeviceKey is the key of user's device's record.
func DeviceKey(user, device ulid.ULID) []byte { return keys.ID2(keys.TDevice, user, device) }

// TokenKey is the key of token's record.
func TokenKey(token string) []byte { return keys.Token(sha256.Sum256([]byte(token))) }

// IDRecord is id as a record holding one id (TDeviceOf's).
func IDRecord(id ulid.ULID) []byte { return record.AppendID(nil, id) }

// UserKey is the key of user's record.
// UsageKey is the key of user's usage count.
func UsageKey(user ulid.ULID) []byte { return keys.ID1(keys.TUsage, user) }

// QuotaKey is the key of user's quota record.
func QuotaKey(user ulid.ULID) []byte { return keys.ID1(keys.TQuota, user) }

func UserKey(user ulid.ULID) []byte { return keys.ID1(keys.TUser, user) }

// UsernameKey is the key of a (lower-case) username's record.
func UsernameKey(name string) []byte { return keys.Username(name) }

// LostDeviceName is the name Rebuild gives a device whose record it made
// anew.
const LostDeviceName = lostDeviceName

// AfterLoginVerified runs f in each Login after it verified the password
// and before it writes, until the test ends.
func AfterLoginVerified(t interface{ Cleanup(func()) }, f func()) {
	afterLoginVerified = f
	t.Cleanup(func() { afterLoginVerified = nil })
}

// UnreadableDeviceName is the name Devices lists a device whose record
// does not decode under.
const UnreadableDeviceName = unreadableDeviceName

// IDsRecord is (user, device) as a token record holds them.
func IDsRecord(user, device ulid.ULID) []byte { return record.AppendIDs(nil, user, device) }

// SetOpUser rewrites the user of conv's op at seq in the closed store.
func SetOpUser(fs vfs.FS, dir string, conv ulid.ULID, seq uint64, user ulid.ULID) error {
	return rewriteAs(fs, dir, formatVersion, func(v *store.View, b *store.Batch) error {
		op, err := readOp(v, conv, seq)
		if err != nil {
			return err
		}
		op.User = user
		b.Set(keys.Op(conv, seq), record.AppendOp(nil, &op))
		return nil
	})
}

// PutBlocks makes user block each of blocked, straight in the store (no
// check that they exist): for tests of the limit.
func PutBlocks(e *Engine, user ulid.ULID, blocked []ulid.ULID) error {
	b := e.st.NewBatch()
	for _, u := range blocked {
		b.Set(keys.ID2(keys.TBlock, user, u), nil)
	}
	return e.st.Commit(b)
}
