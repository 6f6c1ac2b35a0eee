package engine

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/internal/feedseal"
	"github.com/ferrysync/ferry/internal/metric"
)

// formatVersion is the engine's on-disk format. A store with another format
// is refused rather than misread, except that older formats open as the
// current one, since each format only added to the last:
//   - format 2 added shared-feed conversations (record.Conv.SharedFeed,
//     keys.TShared), which a format 1 store has none of;
//   - format 3 added the message count to users' read markers
//     (record.Marker.ReadMessages), which markers written before simply
//     lack;
//   - format 4 lets members' feed entries sit below their conversation's
//     feed position (record.Conv.EntryPos), which a record written before
//     has at its feed position;
//   - format 5 keeps the dot index in runs: one entry for a device's dots
//     at consecutive seqs (a push's), where entries written before hold
//     one dot each, a run of one (record.AppendDotRun);
//   - format 6 keeps each user's usage, what their ops count against the
//     quota (keys.TUsage, Options.UserQuota): counted from the ops when an
//     older store is upgraded, once;
//   - format 7 counts content types and no longer counts erased ops: a
//     format 6 store, of a development build only, is counted again;
//   - format 8 keeps the records of members who left apart from the
//     current members' (keys.TFormer), so that reading a conversation's
//     members reads its current ones: the records of an older store's
//     former members move there when it is upgraded, once;
//   - format 9 keeps the users each user blocks (keys.TBlock), which the
//     writer reads at each member add: a build before it would let a
//     blocked user add the user who blocked them;
//   - format 10 keeps the quotas set for users (keys.TQuota), in place of
//     the server's: a build before it would hold every user to the
//     server's, past a quota lowered for one.
//
// A build that reads only an older format refuses the store once it was
// opened by a newer one.
const formatVersion = 10

// backupMarker is the file Backup leaves in its copies, and
// StartNewEpochAtNextOpen in a store: opening a store that has it starts a
// new epoch, and removes it.
const backupMarker = "FERRY-BACKUP"

// Actor is an authenticated device acting for its user. The server obtains
// it from [Engine.Authenticate] and passes it explicitly; the engine never
// reads identity from a context.
type Actor struct {
	User   ulid.ULID
	Device ulid.ULID
}

// Engine is an open Ferry store. It is safe for concurrent use.
type Engine struct {
	opts Options
	log  *slog.Logger
	st   *store.Store
	dir  string
	disk diskRoom

	epoch ulid.ULID
	seal  *feedseal.Codec
	hub   *hub
	// receiptCache holds conversations' receipts by feed position.
	receiptCache receiptCache
	// damage holds the conversations found damaged.
	damage damageSet
	// quotas are the users' quotas set in place of the server's
	// (SetUserQuota): written by the writer alone, once durable.
	quotas atomic.Pointer[map[ulid.ULID]int64]

	randMu sync.Mutex

	dummyOnce   sync.Once
	dummy       string
	hashSem     chan struct{}
	hashWaiters atomic.Int32

	reqs       chan *request
	commits    atomic.Uint64
	requests   atomic.Uint64
	commitTime *metric.Histogram // synced commits, from the batch's hand-off to Pebble to durable
	quit       chan struct{}
	writerDone chan struct{}
	// revocations counts commits that revoked devices; sessions check
	// their device again when it moves.
	revocations atomic.Uint64
	// feedPos is the last feed position committed, set after the commit's
	// view is published: a view taken after reading it includes it.
	feedPos   atomic.Uint64
	closeOnce sync.Once
	// testMarking, when set (by tests), runs on the writer's goroutine in
	// each commit that changes users' markers, once it is in the store and
	// before the hub counts it done.
	testMarking atomic.Pointer[func()]

	// Owned by the writer goroutine.
	w writer
}

// Open opens the store in dir, creating it if needed.
func Open(dir string, opts Options) (*Engine, error) { return open(dir, opts, nil) }

// open is Open; given a tool, it runs the tool on the store once open
// and upgraded, in place of the writer, and closes it: work on the store
// (Rebuild) that no write of the engine's may interleave with, such as
// the receipts a writer sends as it starts.
func open(dir string, opts Options, tool func(*Engine) error) (*Engine, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("engine options: %w", err)
	}
	e := &Engine{
		opts:       opts,
		log:        opts.Logger,
		dir:        dir,
		hub:        newHub(),
		reqs:       make(chan *request, 1024),
		commitTime: metric.NewHistogram(metric.LatencyBounds...),
		quit:       make(chan struct{}),
		writerDone: make(chan struct{}),
		hashSem:    make(chan struct{}, opts.MaxPasswordHashes),
	}
	e.disk.fs, e.disk.dir, e.disk.clock, e.disk.log = opts.FS, dir, opts.Clock.Now, opts.Logger
	if opts.MinFreeDisk > 0 {
		e.disk.min = uint64(opts.MinFreeDisk)
		if e.disk.refresh(); e.disk.keep.Load() > 0 {
			e.log.Info("store disk", "free_mib", e.disk.avail.Load()>>20, "keep_mib", e.disk.keep.Load()>>20)
		}
	}
	fromBackup := false
	if _, err := opts.FS.Stat(opts.FS.PathJoin(dir, backupMarker)); err == nil && !opts.Existing {
		fromBackup = true
	}
	st, err := store.Open(dir, store.Options{
		MustExist:    opts.Existing,
		FS:           opts.FS,
		MemTableSize: opts.MemTableSize,
		CacheSize:    opts.CacheSize,
		Compression:  opts.Compression.store(),
		Logger:       opts.Logger,
		OnFatal:      opts.OnFatal,
	})
	if errors.Is(err, store.ErrNoStore) {
		return nil, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	e.st = st
	if err := e.initMeta(opts.NewEpoch || fromBackup); err != nil {
		_ = st.Close()
		return nil, err
	}
	if fromBackup {
		// Gone for good before the store serves: a marker that a power
		// loss brought back would start yet another epoch, and have every
		// device repair again.
		err := opts.FS.Remove(opts.FS.PathJoin(dir, backupMarker))
		if err == nil {
			err = syncDir(opts.FS, dir)
		}
		if err != nil {
			_ = st.Close()
			return nil, fmt.Errorf("remove backup marker: %w", err)
		}
	}
	if err := e.moveFormerMembers(tool != nil || opts.Existing); err != nil {
		_ = st.Close()
		return nil, err
	}
	v := st.View()
	err = e.loadQuotas(v)
	v.Release()
	if err != nil {
		_ = st.Close()
		return nil, err
	}
	if tool != nil {
		return nil, errors.Join(tool(e), st.Close())
	}
	if err := e.w.init(e); err != nil {
		_ = st.Close()
		return nil, err
	}
	go e.writeLoop()
	return e, nil
}

// initMeta reads the epoch, creating the store's metadata on first open and
// starting a new epoch when asked.
func (e *Engine) initMeta(newEpoch bool) error {
	v := e.st.View()
	defer v.Release()
	b := e.st.NewBatch()
	var upgrade uint64 // the format upgraded from
	format, err := v.Get(keys.Meta(keys.MetaFormat))
	switch {
	case errors.Is(err, store.ErrNotFound):
		b.Set(keys.Meta(keys.MetaFormat), record.AppendUint(nil, formatVersion))
		newEpoch = true
	case err != nil:
		return fmt.Errorf("read format: %w", err)
	default:
		f, err := record.DecodeUint(format)
		if err != nil {
			return fmt.Errorf("read format: %w", err)
		}
		switch f {
		case formatVersion:
		case 8, 9:
			b.Set(keys.Meta(keys.MetaFormat), record.AppendUint(nil, formatVersion))
			upgrade = f
		case 1, 2, 3, 4, 5, 6, 7:
			b.Set(keys.Meta(keys.MetaFormat), record.AppendUint(nil, formatVersion))
			upgrade = f
			if f < 7 {
				if err := e.countUsage(v, b); err != nil {
					return err
				}
			}
			// The records of former members move after this commit, in
			// commits of their own (moveFormerMembers).
			b.Set(keys.Meta(keys.MetaFormerMove), nil)
		default:
			return fmt.Errorf("store format %d is not supported (this build reads formats 1 to %d)", f, formatVersion)
		}
	}
	// The secret the feed positions' seals come from, and the last
	// position sent plain: made with the store, or on the first open by a
	// server that seals them.
	seal, err := v.Get(keys.Meta(keys.MetaSealSecret))
	switch {
	case err == nil && len(seal) == sealSecretSize+8:
		seal = bytes.Clone(seal)
	case err == nil && len(seal) == sealSecretSize:
		// A secret without the last plain position, as a development
		// build wrote it: take the position now, which is at least it.
		if seal, err = e.withPlainMax(v, bytes.Clone(seal)); err != nil {
			return err
		}
		b.Set(keys.Meta(keys.MetaSealSecret), seal)
	case errors.Is(err, store.ErrNotFound):
		seal = make([]byte, sealSecretSize, sealSecretSize+8)
		e.randomBytes(seal)
		if seal, err = e.withPlainMax(v, seal); err != nil {
			return err
		}
		b.Set(keys.Meta(keys.MetaSealSecret), seal)
	case err != nil:
		return fmt.Errorf("read the feed seal secret: %w", err)
	default:
		return fmt.Errorf("read the feed seal secret: %w: %d bytes", record.ErrCorrupt, len(seal))
	}
	old := "none"
	if !newEpoch {
		raw, err := v.Get(keys.Meta(keys.MetaEpoch))
		if err != nil {
			return fmt.Errorf("read epoch: %w", err)
		}
		if e.epoch, err = record.DecodeID(raw); err != nil {
			return fmt.Errorf("read epoch: %w", err)
		}
	} else {
		if raw, err := v.Get(keys.Meta(keys.MetaEpoch)); err == nil {
			if id, err := record.DecodeID(raw); err == nil {
				old = id.String()
			}
		}
		e.epoch = e.newID()
		b.Set(keys.Meta(keys.MetaEpoch), record.AppendID(nil, e.epoch))
	}
	if e.seal, err = sealCodec(seal[:sealSecretSize], binary.BigEndian.Uint64(seal[sealSecretSize:]), e.epoch); err != nil {
		return err
	}
	if b.Count() == 0 {
		b.Close()
		return nil
	}
	if err := e.st.Commit(b); err != nil {
		return err
	}
	switch {
	case !newEpoch:
	case old == "none":
		e.log.Info("new store", "epoch", e.epoch)
	default:
		e.log.Warn("new epoch: clients with cursors from another epoch will repair", "epoch", e.epoch, "previous", old)
	}
	if upgrade != 0 {
		e.log.Info("store format upgraded", "from", upgrade, "to", formatVersion)
	}
	return nil
}

// sealSecretSize is the length of the store's feed seal secret.
const sealSecretSize = 32

// withPlainMax appends to secret the last feed position the store's server
// sent plain: the store's position now, as it first seals (zero for a new
// store).
func (e *Engine) withPlainMax(v *store.View, secret []byte) ([]byte, error) {
	plainMax := uint64(0)
	raw, err := v.Get(keys.Meta(keys.MetaFeedPos))
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, fmt.Errorf("read the feed position: %w", err)
	default:
		if plainMax, err = record.DecodeUint(raw); err != nil {
			return nil, fmt.Errorf("read the feed position: %w", err)
		}
	}
	return binary.BigEndian.AppendUint64(secret, plainMax), nil
}

// sealCodec derives an epoch's feed seal key from the store's secret: a
// new epoch (a restore, or ferryd new-epoch) seals positions anew.
// plainMax is the last position the store's server sent plain.
func sealCodec(secret []byte, plainMax uint64, epoch ulid.ULID) (*feedseal.Codec, error) {
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte("ferry feed seal\x00"))
	mac.Write(epoch[:])
	return feedseal.New(mac.Sum(nil)[:feedseal.KeySize], plainMax)
}

// FeedSeal seals the feed positions clients see and opens the ones they
// give back (see package feedseal): a position counts the whole server's
// commits, which no client is to learn.
func (e *Engine) FeedSeal() *feedseal.Codec { return e.seal }

// Epoch identifies this store's history. It changes when the store is
// created, restored from a backup or opened with Options.NewEpoch.
func (e *Engine) Epoch() ulid.ULID { return e.epoch }

// Close stops the writer, failing queued writes with ErrClosed, and closes
// the store. Open sessions must be closed first.
func (e *Engine) Close() error {
	var err error
	e.closeOnce.Do(func() {
		close(e.quit)
		<-e.writerDone
		err = e.st.Close()
		if errors.Is(err, store.ErrFatal) {
			err = ErrFailed
		}
	})
	return err
}

// Failed returns ErrFailed wrapping the cause once a storage failure stopped
// the engine, or nil.
func (e *Engine) Failed() error {
	if err := e.st.Failed(); err != nil {
		return fmt.Errorf("%w: %v", ErrFailed, err)
	}
	return nil
}

// Backup writes a consistent copy of the store to dir (which must not
// exist). Opening the copy starts a new epoch, so devices never trust
// cursors from the history the copy lost.
//
// The copy is made under another name, dir with backupPartial after it,
// and gets its name once it is whole and marked: a copy without the mark,
// which a failure or a power loss between the two could otherwise leave,
// would open in the epoch of the store it came from.
func (e *Engine) Backup(dir string) error {
	fs := e.opts.FS
	// "new/" names new: the partial copy goes beside it, not in it.
	dir = filepath.Clean(dir)
	if _, err := fs.Stat(dir); err == nil {
		return fmt.Errorf("backup: %s already exists", dir)
	}
	partial := dir + backupPartial
	// What a backup cut short left under it: never opened, and useless.
	if err := fs.RemoveAll(partial); err != nil {
		return fmt.Errorf("backup: remove the unfinished %s: %w", partial, err)
	}
	err := e.st.Checkpoint(partial)
	if err == nil {
		err = e.markNewEpoch(partial, "This is a Ferry backup. Opening it starts a new epoch.\n")
	}
	if err == nil {
		err = fs.Rename(partial, dir)
	}
	if err != nil {
		return errors.Join(err, fs.RemoveAll(partial))
	}
	if err := syncDir(fs, fs.PathDir(dir)); err != nil {
		return fmt.Errorf("backup: %s is whole and marked, but a power loss now may lose its name: syncing its folder: %w", dir, err)
	}
	return nil
}

// backupPartial follows the name of a backup while it is written.
const backupPartial = ".ferry-backup-partial"

// StartNewEpochAtNextOpen marks the store so that its next opening (not
// Options.Existing) starts a new epoch, once, as a backup's does: for a
// store restored by other means than Backup, which devices must not trust
// their cursors in.
func (e *Engine) StartNewEpochAtNextOpen() error {
	return e.markNewEpoch(e.dir, "Opening this store starts a new epoch (ferryd new-epoch).\n")
}

// markNewEpoch leaves the marker that makes the next opening of the store
// in dir start a new epoch, synced with its name: a marker lost to a power
// loss would have the store open in the epoch it was meant to leave, and
// devices trust cursors from another history.
func (e *Engine) markNewEpoch(dir, text string) error {
	f, err := e.opts.FS.Create(e.opts.FS.PathJoin(dir, backupMarker), "")
	if err != nil {
		return fmt.Errorf("mark a new epoch: %w", err)
	}
	_, werr := io.WriteString(f, text)
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("mark a new epoch: %w", err)
	}
	if err := syncDir(e.opts.FS, dir); err != nil {
		return fmt.Errorf("mark a new epoch: %w", err)
	}
	return nil
}

// syncDir makes the entries of dir (files created, removed or renamed in
// it) durable.
func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// DiskUsage is what the store occupies on disk, in bytes.
type DiskUsage struct {
	// Tables is the live data; it grows with the history.
	Tables uint64
	// WAL is the write-ahead log of the writes not yet flushed to tables:
	// at most about a memtable (Options.MemTableSize).
	WAL uint64
	// Obsolete is files the store no longer needs: compacted tables that
	// Pebble deletes at a paced rate (right after a full compaction, up to
	// the whole store before it), and WAL files it keeps to reuse (at most
	// three, each up to a memtable). They are temporary or bounded, not a
	// cost per op.
	Obsolete uint64
	// Other is the manifest and options files and compactions in progress.
	Other uint64
}

// Live is the bytes the data needs: everything but the obsolete files.
func (u DiskUsage) Live() uint64 { return u.Tables + u.WAL + u.Other }

// DiskUsage reports what the store occupies on disk, after a full
// compaction when compact is set (which also flushes the memtable, so the
// WAL holds almost nothing).
func (e *Engine) DiskUsage(compact bool) (DiskUsage, error) {
	if compact {
		if err := e.Compact(context.Background()); err != nil {
			return DiskUsage{}, err
		}
	}
	sp := e.st.Space()
	return DiskUsage{Tables: sp.Tables, WAL: sp.WAL, Obsolete: sp.Obsolete, Other: sp.Other}, nil
}

// Compact rewrites the whole store, flushing the memtable first: values
// written over (bodies erased by deletes for everyone) leave the tables,
// and every table is written anew with today's options (Bloom filters).
// It stops when ctx ends.
func (e *Engine) Compact(ctx context.Context) error { return e.st.Compact(ctx) }

// Metrics are counters since Open.
type Metrics struct {
	// Reads counts point reads and iterator steps against the store: the
	// engine's unit of read work.
	Reads uint64
	// Writes counts the keys that synced commits set or deleted.
	Writes uint64
	// Watching is the number of users with an open session.
	Watching int
	// Commits counts synced group commits; Requests the write requests they
	// carried. Requests/Commits is the mean group size.
	Commits, Requests uint64
	// Queued is the number of write requests waiting for the writer.
	Queued int
	// CommitTime is how long synced commits took, from the group's batch
	// handed to the store to durable.
	CommitTime metric.Snapshot
}

// Metrics returns the engine's counters.
func (e *Engine) Metrics() Metrics {
	return Metrics{
		Reads:      e.st.Reads(),
		Writes:     e.st.Writes(),
		Watching:   e.hub.watching(),
		Commits:    e.commits.Load(),
		Requests:   e.requests.Load(),
		Queued:     len(e.reqs),
		CommitTime: e.commitTime.Snapshot(),
	}
}

// StoreMetrics is the store's shape and size, for operators.
type StoreMetrics struct {
	DiskUsage
	// ReadAmp is the tables a read may consult; the store slows writes
	// when level 0 piles up.
	ReadAmp int
	// CompactionDebt estimates the bytes compactions must rewrite for the
	// store to be stable again.
	CompactionDebt uint64
	// MemTables is the bytes held in memory before they flush to tables.
	MemTables uint64
	// Flushes and Compactions count those completed since Open.
	Flushes, Compactions int64
	// Compacting is the compactions under way: Close waits for them.
	Compacting int64
	// LoggedBytes counts the bytes of commits logged since Open, and
	// FlushedBytes and CompactedBytes the bytes flushes and compactions
	// wrote to tables: their sum over LoggedBytes is the store's write
	// amplification, mostly compactions' CPU and disk bandwidth.
	LoggedBytes, FlushedBytes, CompactedBytes uint64
	// CacheHits and CacheMisses count the store's block cache lookups: a
	// miss reads a block from disk (or the OS page cache) and decompresses
	// it.
	CacheHits, CacheMisses int64
	// FilterSkips counts tables point reads skipped by their Bloom filter.
	FilterSkips int64
}

// StoreMetrics reports the store's shape and size. It takes the store's
// locks briefly: call it at a scrape's pace, not per op.
func (e *Engine) StoreMetrics() StoreMetrics {
	l := e.st.LSM()
	return StoreMetrics{
		DiskUsage: DiskUsage{Tables: l.Tables, WAL: l.WAL, Obsolete: l.Obsolete, Other: l.Other},
		ReadAmp:   l.ReadAmp, CompactionDebt: l.CompactionDebt, MemTables: l.MemTables,
		Flushes: l.Flushes, Compactions: l.Compactions, Compacting: l.Compacting,
		LoggedBytes: l.LoggedBytes, FlushedBytes: l.FlushedBytes, CompactedBytes: l.CompactedBytes,
		CacheHits: l.CacheHits, CacheMisses: l.CacheMisses, FilterSkips: l.FilterSkips,
	}
}

// newID returns a new ULID from the engine's clock and entropy.
func (e *Engine) newID() ulid.ULID {
	e.randMu.Lock()
	defer e.randMu.Unlock()
	id, err := ulid.New(ulid.Timestamp(e.opts.Now()), e.opts.Rand)
	if err != nil {
		panic(fmt.Sprintf("engine: entropy source failed: %v", err))
	}
	return id
}

// randomBytes fills b from the engine's entropy.
func (e *Engine) randomBytes(b []byte) {
	e.randMu.Lock()
	defer e.randMu.Unlock()
	if _, err := io.ReadFull(e.opts.Rand, b); err != nil {
		panic(fmt.Sprintf("engine: entropy source failed: %v", err))
	}
}

func (e *Engine) nowMs() int64 { return e.opts.Now().UnixMilli() }

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }
