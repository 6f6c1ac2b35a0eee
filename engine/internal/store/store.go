// Package store is the engine's thin layer over Pebble: opening the
// database, synced batch commits, durable read views and fail-stop on disk
// errors. It is the only package that imports Pebble itself; it knows
// nothing of ops or conversations.
//
// # Durable views
//
// Pebble makes a batch visible to readers before its WAL sync completes, so
// reading the database directly could show a stream an op that a crash then
// loses, and the op's seq would later be reused for another op. Readers
// therefore never read the database itself: they read a [View], a snapshot
// taken after the last synced commit returned, which holds only durable
// data. Commits are serialised (one writer), so a snapshot taken between two
// commits contains nothing undurable.
//
// # Concurrency
//
// [Store.Commit] must be called by one goroutine at a time (the engine's
// writer). [Store.View] and everything on a View are safe for concurrent use.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrFatal is returned by Commit, and by everything after it, once the
// database has failed (a failed WAL sync or another error that Pebble treats
// as fatal). Nothing is acknowledged after it: the process should stop.
var ErrFatal = errors.New("store failed: storage error, stopping")

// ErrNoStore is returned by Open with Options.MustExist for a directory
// that holds no store.
var ErrNoStore = errors.New("no store")

// ErrNotFound is returned by View.Get for a missing key.
var ErrNotFound = errors.New("not found")

// Options configure a Store.
type Options struct {
	// FS is the filesystem. Default: the operating system's.
	FS vfs.FS
	// MemTableSize is Pebble's memtable size. Default 64 MiB: the 4 MiB Pebble
	// default stalls concurrent synced commits.
	MemTableSize uint64
	// CacheSize is the block cache's room for blocks. Default 64 MiB.
	// Pebble charges its memtables to the same cache, so Open makes the
	// cache two memtables larger (the one taking writes and one flushing).
	CacheSize int64
	// Compression is how tables are compressed. Default Small.
	Compression Compression
	// Logger receives Pebble's errors and notable events. Default
	// slog.Default().
	Logger *slog.Logger
	// MustExist makes Open create nothing: it fails with ErrNoStore when
	// dir holds no store.
	MustExist bool
	// OnFatal is called once, from the failing goroutine, when Pebble hits an
	// error it cannot continue from. Default: nothing (the error is logged and
	// every later commit fails with ErrFatal).
	OnFatal func(error)
}

// Compression is how the store compresses its tables. Each block records
// how it was compressed, so a store opened with another setting reads
// what it holds as before and writes new tables the new way.
type Compression int

const (
	// Small compresses the two bottom levels, where a log's history
	// settles, with zstd (levels 1 and 3), and the others with MinLZ: chat
	// text and the repeated author and device ids compress well there.
	Small Compression = iota
	// Fast compresses every level with MinLZ: less CPU in compactions,
	// more disk (engine.CompressFast gives what the bench measured).
	Fast
)

// Store is an open database.
type Store struct {
	db     *pebble.DB
	reads  atomic.Uint64 // point reads and iterator positionings, for tests and metrics
	writes atomic.Uint64 // keys set or deleted by commits, for tests and metrics
	// misuses counts single deletions found misused (Misuses)
	misuses atomic.Uint64
	log     *slog.Logger
	fatal   atomic.Pointer[error]
	onFail  func(error)

	mu     sync.RWMutex // guards view and closed
	view   *View
	closed bool
	views  sync.WaitGroup // views handed out and not yet released
}

// ErrClosed is returned by reads from a closed store.
var ErrClosed = errors.New("store closed")

// fatalPanic carries a Pebble fatal error out of Pebble's call stack when it
// happens on a goroutine that Commit guards. On one of Pebble's own
// goroutines (a flush, a compaction, the manifest's writes) nothing
// recovers it and the process stops: it is an error, so that the panic's
// message names the cause (after the store's log of the failure).
type fatalPanic struct{ err error }

func (p fatalPanic) Error() string {
	return "ferry: storage failed, stopping (fail-stop: what was acknowledged is on disk; restart once the cause is fixed): " + p.err.Error()
}

func (p fatalPanic) Unwrap() error { return p.err }

// Open opens or creates the database in dir.
func Open(dir string, o Options) (*Store, error) {
	if o.MemTableSize == 0 {
		o.MemTableSize = 64 << 20
	}
	if o.CacheSize == 0 {
		o.CacheSize = 64 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MustExist {
		fs := o.FS
		if fs == nil {
			fs = vfs.Default
		}
		// Peek reads the directory and creates nothing there.
		if desc, err := pebble.Peek(dir, fs); err != nil || !desc.Exists {
			if err == nil || errors.Is(err, iofs.ErrNotExist) {
				return nil, fmt.Errorf("%w in %s", ErrNoStore, dir)
			}
			return nil, fmt.Errorf("open store in %s: %w", dir, err)
		}
	}
	s := &Store{log: o.Logger, onFail: o.OnFatal}
	// Pebble reserves each memtable's size in the block cache: without the
	// two memtables on top, a cache no larger than them holds no block at
	// all and every read decompresses its blocks from the files again.
	cache := pebble.NewCache(o.CacheSize + 2*int64(o.MemTableSize))
	defer cache.Unref()
	po := &pebble.Options{
		FS:                 o.FS,
		Cache:              cache,
		MemTableSize:       o.MemTableSize,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleLogger{s},
		EventListener: &pebble.EventListener{
			BackgroundError: func(err error) { s.log.Error("pebble background error", "err", err) },
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				s.log.Error("pebble data corruption", "path", info.Path, "err", info.Details)
			},
			DiskSlow: func(info pebble.DiskSlowInfo) {
				s.log.Warn("disk slow", "path", info.Path, "op", info.OpType.String(), "duration", info.Duration)
			},
			WriteStallBegin: func(info pebble.WriteStallBeginInfo) { s.log.Warn("write stall", "reason", info.Reason) },
			PossibleAPIMisuse: func(info pebble.PossibleAPIMisuseInfo) {
				switch info.Kind {
				case pebble.NondeterministicSingleDelete, pebble.IneffectualSingleDelete:
					s.misuses.Add(1)
				}
				s.log.Error("pebble: " + info.String())
			},
		},
	}
	settings := pebble.DBCompressionGood
	if o.Compression == Fast {
		settings = pebble.DBCompressionFastest
	}
	po.ApplyCompressionSettings(func() pebble.DBCompressionSettings { return settings })
	// A Bloom filter in every table, the bottom level's too: most of the
	// engine's point reads look for keys that are not there (a new op's id,
	// a marker a device never set), and without a filter each such read
	// loads and decompresses a data block from every level whose range
	// covers the key. Ten bits a key (about 1% false positives) cost some
	// 1.25 bytes a key on disk and in the block cache, where filters compete
	// with data blocks; the bottom level's filter helps only reads of keys
	// that are not there, which are most of the writer's. Tables written
	// before filters get them when a compaction rewrites them. (Pebble
	// copies a level's policy to the levels below; all are set to say so.)
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, po)
	if errors.Is(err, syscall.EAGAIN) {
		// Pebble locks the directory (fcntl F_SETLK): EAGAIN is another
		// process holding it.
		return nil, fmt.Errorf("open store in %s: another process has it open (a running ferryd, or one of its tools: check, backup, compact, new-epoch, add-user, revoke-devices): %w", dir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", dir, err)
	}
	s.db = db
	s.view = s.newView(db.NewSnapshot())
	return s, nil
}

// Close waits for the reads in progress to release their views, then
// closes the database; later reads fail with ErrClosed. After a fatal error
// the database is abandoned, not closed: its state is unknown and the
// process is expected to stop.
func (s *Store) Close() error {
	s.mu.Lock()
	v := s.view
	s.view, s.closed = nil, true
	s.mu.Unlock()
	if v != nil {
		v.Release()
	}
	s.views.Wait()
	if s.Failed() != nil {
		return ErrFatal
	}
	return s.db.Close()
}

// Failed returns the fatal error that stopped the store, or nil.
func (s *Store) Failed() error {
	if p := s.fatal.Load(); p != nil {
		return *p
	}
	return nil
}

// Fail stops the store as if Pebble had failed, for errors the caller finds
// in what it read (corruption): nothing more is committed.
func (s *Store) Fail(err error) { s.fail(err) }

func (s *Store) fail(err error) {
	if s.fatal.CompareAndSwap(nil, &err) {
		s.log.Error("storage failed; refusing all further writes", "err", err)
		if s.onFail != nil {
			s.onFail(err)
		}
	}
}

// pebbleLogger routes Pebble's log messages to slog and turns its Fatalf
// into fail-stop.
type pebbleLogger struct{ s *Store }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.s.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.s.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is called by Pebble when it cannot go on, notably when a WAL sync
// fails during a commit. The store is marked failed, and a panic unwinds
// the calling goroutine: Commit recovers it and returns ErrFatal; on a
// Pebble background goroutine it stops the process, which is the point.
func (l pebbleLogger) Fatalf(format string, args ...any) {
	err := fmt.Errorf("pebble: "+format, args...)
	l.s.fail(err)
	panic(fatalPanic{err})
}

// Batch collects writes for one atomic commit.
type Batch struct {
	b    *pebble.Batch
	memo map[any]any // see Remember
}

// NewBatch returns an empty batch.
func (s *Store) NewBatch() *Batch { return &Batch{b: s.db.NewBatch()} }

// Set writes key = value. The batch copies both.
func (b *Batch) Set(key, value []byte) { _ = b.b.Set(key, value, nil) }

// Delete deletes key.
func (b *Batch) Delete(key []byte) { _ = b.b.Delete(key, nil) }

// SingleDelete deletes key, which the store must hold from exactly one
// Set since it was last absent: a key written once and deleted once, such
// as a feed entry, whose position makes it unique. Where Delete leaves a
// tombstone that every compaction carries down to the last level, a
// SingleDelete and its Set drop each other in the first compaction, often
// the memtable's flush, that sees both. On a key set twice the older value
// would show again once they met: that is the caller's promise to keep,
// and Misuses counts the breaches Pebble notices.
func (b *Batch) SingleDelete(key []byte) { _ = b.b.SingleDelete(key, nil) }

// Remember puts val in the memo of the view that the batch's commit
// publishes, under key, before any reader can take that view: what a
// writer knows readers of the new view will compute (the records it just
// wrote) without their reading it back. val must be exactly what
// View.Memo's fill would compute for key from that view, and must not be
// modified afterwards.
func (b *Batch) Remember(key, val any) {
	if b.memo == nil {
		b.memo = make(map[any]any)
	}
	if len(b.memo) < MaxMemo {
		b.memo[key] = val
	}
}

// GrowMemo makes room for n Remember calls; call it before the first.
func (b *Batch) GrowMemo(n int) {
	if b.memo == nil {
		b.memo = make(map[any]any, min(n, MaxMemo))
	}
}

// Len is the number of bytes in the batch's representation.
func (b *Batch) Len() int { return b.b.Len() }

// Count is the number of writes in the batch.
func (b *Batch) Count() uint32 { return b.b.Count() }

// Close releases a batch that was not committed.
func (b *Batch) Close() { _ = b.b.Close() }

// Commit writes the batch durably (WAL synced) and then publishes a new
// view that includes it. When Commit returns nil the batch survives any
// crash. Any error is fatal: the store refuses every later commit.
func (s *Store) Commit(b *Batch) (err error) {
	if err := s.Failed(); err != nil {
		b.Close()
		return fmt.Errorf("%w: %v", ErrFatal, err)
	}
	defer func() {
		if r := recover(); r != nil {
			fp, ok := r.(fatalPanic)
			if !ok {
				panic(r)
			}
			err = fmt.Errorf("%w: %v", ErrFatal, fp.err)
		}
	}()
	if err := b.b.Commit(pebble.Sync); err != nil {
		s.fail(err)
		return fmt.Errorf("%w: %v", ErrFatal, err)
	}
	s.writes.Add(uint64(b.b.Count()))
	_ = b.b.Close()
	s.publish(b.memo)
	return nil
}

func (s *Store) publish(memo map[any]any) {
	v := s.newView(s.db.NewSnapshot())
	v.given = memo
	s.mu.Lock()
	old := s.view
	s.view = v
	s.mu.Unlock()
	if old != nil {
		old.Release()
	}
}

// View returns the latest durable view. The caller must Release it, and
// should not hold it long (not across waits): a view pins old versions of
// keys in Pebble, and Close waits for it. After Close, the view's reads fail
// with ErrClosed.
func (s *Store) View() *View {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return &View{reads: &s.reads}
	}
	s.views.Add(1)
	s.view.refs.Add(1)
	return &View{snap: s.view.snap, reads: &s.reads, shared: s.view, store: s}
}

// Checkpoint writes a consistent copy of the database to dir, which must
// not exist.
func (s *Store) Checkpoint(dir string) error {
	if err := s.db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		return fmt.Errorf("checkpoint to %s: %w", dir, err)
	}
	return nil
}

// Flush writes the memtable to a table and waits for it: for tests that
// look at what the tables hold.
func (s *Store) Flush() error { return s.db.Flush() }

// Entries counts the entries a scan of [lower, upper) steps over: the keys
// it finds, and the deletions the tables still hold, which hide older
// values until compactions drop them. For tests of what scans cost.
func (s *Store) Entries(lower, upper []byte) (int, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return 0, err
	}
	for it.First(); it.Valid(); it.Next() {
	}
	n := it.Stats().InternalStats.PointCount
	return int(n), it.Close()
}

// Misuses counts, since Open, the single deletions that flushes and
// compactions found misused: meeting a key set more than once, which may
// have let an older value show again, or deleting nothing. It is a signal,
// not a proof: Pebble sees a misuse only where a compaction holds the
// deletion and both sets (and range deletions, which the engine does not
// use, could make it report one falsely).
func (s *Store) Misuses() uint64 { return s.misuses.Load() }

// Compact compacts the whole key space, for measuring bytes on disk.
func (s *Store) Compact(ctx context.Context) error {
	return s.db.Compact(ctx, []byte{0}, []byte{0xff, 0xff}, true)
}

// Space is what the database occupies on disk, in bytes.
type Space struct {
	// Tables is the live tables (and blob files): the data.
	Tables uint64
	// WAL is the write-ahead log in use: what was written since the last
	// memtable flush.
	WAL uint64
	// Obsolete is files Pebble no longer reads: compacted tables it deletes
	// at a paced rate, and flushed WAL files it keeps to reuse (at most
	// MemTableStopWritesThreshold+1 of them, each up to a memtable's worth).
	// Temporary or bounded: not a cost per write.
	Obsolete uint64
	// Other is the manifest, the options file and compactions in progress.
	Other uint64
}

// Space reports the bytes the database occupies on disk.
func (s *Store) Space() Space { return spaceOf(s.db.Metrics()) }

func spaceOf(m *pebble.Metrics) Space {
	sp := Space{
		Tables: m.Table.Local.LiveSize + m.BlobFiles.Local.LiveSize,
		// Pebble's physical size leaves out the log being written, which
		// holds what is not yet in a table: the live bytes count it.
		WAL:      max(m.WAL.PhysicalSize, m.WAL.Size),
		Obsolete: m.WAL.ObsoletePhysicalSize + m.Table.Local.ObsoleteSize + m.Table.Local.ZombieSize + m.BlobFiles.Local.ObsoleteSize + m.BlobFiles.Local.ZombieSize,
	}
	// Pebble's total counts the log's physical size: the log in use, which
	// WAL adds, goes on top of it.
	if total := m.DiskSpaceUsage() + (sp.WAL - m.WAL.PhysicalSize); total > sp.Tables+sp.WAL+sp.Obsolete {
		sp.Other = total - sp.Tables - sp.WAL - sp.Obsolete
	}
	return sp
}

// LSM is the shape of the database, for operators: what reads cost, and
// what compactions and flushes owe.
type LSM struct {
	Space
	// ReadAmp is the tables a read may consult: L0's sublevels plus the
	// non-empty levels below. Pebble stalls writes as L0 grows.
	ReadAmp int
	// CompactionDebt estimates the bytes to compact for the LSM to be
	// stable again.
	CompactionDebt uint64
	// MemTables is the bytes in memtables: the one taking writes and those
	// waiting to flush.
	MemTables uint64
	// Flushes and Compactions count what completed since the store opened.
	Flushes, Compactions int64
	// Compacting is the compactions under way.
	Compacting int64
	// LoggedBytes counts the bytes of commits written to the WAL since
	// the store opened, and FlushedBytes and CompactedBytes the bytes of
	// tables flushes and compactions wrote: their sum over LoggedBytes is
	// the write amplification.
	LoggedBytes, FlushedBytes, CompactedBytes uint64
	// CacheHits and CacheMisses count block cache lookups since the store
	// opened: a miss reads the block from a file and decompresses it.
	CacheHits, CacheMisses int64
	// FilterSkips counts tables a point read skipped because their filter
	// ruled the key out, without reading any of their blocks.
	FilterSkips int64
}

// LSM reports the database's shape and what it occupies on disk.
func (s *Store) LSM() LSM {
	m := s.db.Metrics()
	l := LSM{
		Space: spaceOf(m), ReadAmp: m.ReadAmp(), CompactionDebt: m.Compact.EstimatedDebt,
		MemTables: m.MemTable.Size, Flushes: m.Flush.Count, Compactions: m.Compact.Count,
		Compacting: m.Compact.NumInProgress,
		CacheHits:  m.BlockCache.Hits, CacheMisses: m.BlockCache.Misses, FilterSkips: m.Filter.Hits,
		LoggedBytes: m.WAL.BytesIn,
	}
	for _, lv := range m.Levels {
		l.FlushedBytes += lv.TableBytesFlushed + lv.BlobBytesFlushed
		l.CompactedBytes += lv.TableBytesCompacted + lv.BlobBytesCompacted
	}
	return l
}

// View is a durable, consistent read-only view of the database.
type View struct {
	snap  *pebble.Snapshot // nil once the store is closed
	refs  atomic.Int64
	reads *atomic.Uint64
	// A reader's handle on a shared view: Release drops the shared view's
	// reference and tells Close (through store) the read is over.
	shared *View
	store  *Store

	// given is what the commit that published this view remembered
	// (Batch.Remember), and memo what readers computed from it (Memo); on
	// shared views only. given is read-only once published.
	given  map[any]any
	memoMu sync.Mutex
	memo   map[any]*memoEntry
}

type memoEntry struct {
	once sync.Once
	done atomic.Bool // set once val and err are
	val  any
	err  error
}

// MaxMemo bounds what one view memoizes: what its commit remembered, past
// which Remember keeps no more, and what its readers computed, past which
// Memo computes without keeping.
const MaxMemo = 4096

// Memo returns what fill computes from this view for key, computing it
// once per durable view: every reader that takes the same view (every
// session woken by one commit, until the next commit) shares the result,
// and a caller that finds fill running waits for it. A view never changes,
// so neither does what is computed from it; the result is shared, so
// callers must not modify it. key must be comparable and must name
// everything fill's result depends on. hit reports whether the result was
// there before the call. The memo goes with the view.
func (v *View) Memo(key any, fill func() (any, error)) (val any, hit bool, err error) {
	t := v.shared
	if t == nil {
		return nil, false, ErrClosed // a view of a closed store: nothing to read
	}
	if val, ok := t.given[key]; ok {
		return val, true, nil
	}
	t.memoMu.Lock()
	e := t.memo[key]
	if e == nil {
		if len(t.memo) >= MaxMemo {
			t.memoMu.Unlock()
			val, err = fill()
			return val, false, err
		}
		if t.memo == nil {
			t.memo = make(map[any]*memoEntry)
		}
		e = &memoEntry{}
		t.memo[key] = e
	} else {
		hit = true
	}
	t.memoMu.Unlock()
	e.once.Do(func() {
		e.val, e.err = fill()
		e.done.Store(true)
	})
	if !e.done.Load() {
		// fill panicked in another caller: compute here, and let it panic
		// here too if it does.
		val, err = fill()
		return val, false, err
	}
	return e.val, hit, e.err
}

// Lookup is Memo without computing: what the view's memo holds for key,
// if a reader computed it already (or the commit remembered it). A live
// round to a thousand devices finds the same few results a thousand
// times, and Memo's key, which its map may keep, goes to the heap each
// time; Lookup keeps nothing, and its caller's key can stay on the stack.
func (v *View) Lookup(key any) (val any, ok bool, err error) {
	t := v.shared
	if t == nil {
		return nil, false, nil
	}
	if val, ok := t.given[key]; ok {
		return val, true, nil
	}
	t.memoMu.Lock()
	e := t.memo[key]
	t.memoMu.Unlock()
	if e == nil || !e.done.Load() {
		return nil, false, nil
	}
	return e.val, true, e.err
}

// Reads counts point reads and iterator seeks and steps since Open: the
// unit of read work, for tests that bound it and for metrics.
func (s *Store) Reads() uint64 { return s.reads.Load() }

// Writes counts the keys set or deleted by commits since Open: the unit of
// write work.
func (s *Store) Writes() uint64 { return s.writes.Load() }

func (s *Store) newView(snap *pebble.Snapshot) *View {
	v := &View{snap: snap, reads: &s.reads}
	v.refs.Store(1)
	return v
}

// Release gives the view back. The view must not be used afterwards.
func (v *View) Release() {
	switch {
	case v.shared != nil:
		v.shared.Release()
		v.store.views.Done()
	case v.snap != nil:
		if v.refs.Add(-1) == 0 {
			_ = v.snap.Close()
		}
	}
}

// Get returns a copy of key's value, or ErrNotFound.
func (v *View) Get(key []byte) ([]byte, error) {
	if v.snap == nil {
		return nil, ErrClosed
	}
	v.reads.Add(1)
	val, closer, err := v.snap.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), val...)
	_ = closer.Close()
	return out, nil
}

// Has reports whether key exists.
func (v *View) Has(key []byte) (bool, error) {
	if v.snap == nil {
		return false, ErrClosed
	}
	v.reads.Add(1)
	_, closer, err := v.snap.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	_ = closer.Close()
	return true, nil
}

// Iter iterates over keys in [lower, upper). A nil upper means no bound.
func (v *View) Iter(lower, upper []byte) (*Iter, error) {
	if v.snap == nil {
		return nil, ErrClosed
	}
	it, err := v.snap.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	return &Iter{it: it, reads: v.reads}, nil
}

// Iter is an iterator over a view. Key and Value are valid until the
// iterator moves; copy what you keep. Not safe for concurrent use.
type Iter struct {
	it    *pebble.Iterator
	reads *atomic.Uint64
}

// First moves to the first key; it reports whether there is one.
func (i *Iter) First() bool { i.reads.Add(1); return i.it.First() }

// Last moves to the last key.
func (i *Iter) Last() bool { i.reads.Add(1); return i.it.Last() }

// Next moves to the next key.
func (i *Iter) Next() bool { i.reads.Add(1); return i.it.Next() }

// Prev moves to the previous key.
func (i *Iter) Prev() bool { i.reads.Add(1); return i.it.Prev() }

// SeekGE moves to the first key >= key.
func (i *Iter) SeekGE(key []byte) bool { i.reads.Add(1); return i.it.SeekGE(key) }

// SeekLT moves to the last key < key.
func (i *Iter) SeekLT(key []byte) bool { i.reads.Add(1); return i.it.SeekLT(key) }

// Valid reports whether the iterator is at a key.
func (i *Iter) Valid() bool { return i.it.Valid() }

// Key is the current key.
func (i *Iter) Key() []byte { return i.it.Key() }

// Value is the current value.
func (i *Iter) Value() ([]byte, error) { return i.it.ValueAndErr() }

// Close closes the iterator and returns any error it met.
func (i *Iter) Close() error { return i.it.Close() }

var _ io.Closer = (*Iter)(nil)
