package store

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open("db", Options{FS: vfs.NewMem(), MemTableSize: 4 << 20, CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func set(t *testing.T, s *Store, key, val string) {
	t.Helper()
	b := s.NewBatch()
	b.Set([]byte(key), []byte(val))
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
}

// readKey is a fill that reads key from v and counts its calls.
func readKey(v *View, key string, calls *int) func() (any, error) {
	return func() (any, error) {
		*calls++
		b, err := v.Get([]byte(key))
		return string(b), err
	}
}

// TestMemoPerView: readers of one durable view share what one of them
// computed; the next commit's view starts empty and sees the new value.
func TestMemoPerView(t *testing.T) {
	s := open(t)
	set(t, s, "k", "one")
	calls := 0
	for i := range 3 {
		v := s.View()
		got, hit, err := v.Memo("k", readKey(v, "k", &calls))
		v.Release()
		if err != nil || got != "one" || hit != (i > 0) {
			t.Fatalf("read %d of the first view: %v, hit %v, %v; want one, hit %v", i, got, hit, err, i > 0)
		}
	}
	if calls != 1 {
		t.Fatalf("three readers of one view computed %d times, want once", calls)
	}
	// A view held across the commit keeps its own memo and value.
	old := s.View()
	defer old.Release()
	set(t, s, "k", "two")
	v := s.View()
	got, hit, err := v.Memo("k", readKey(v, "k", &calls))
	v.Release()
	if err != nil || got != "two" || hit {
		t.Fatalf("the next commit's view: %v, hit %v, %v; want two, computed", got, hit, err)
	}
	got, hit, err = old.Memo("k", readKey(old, "k", &calls))
	if err != nil || got != "one" || !hit {
		t.Fatalf("the view held across the commit: %v, hit %v, %v; want one from its memo", got, hit, err)
	}
	// Keys are distinct; errors are kept like values (a view never changes).
	v = s.View()
	defer v.Release()
	for range 2 {
		if _, _, err := v.Memo("missing", readKey(v, "missing", &calls)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("memo of a missing key: %v, want ErrNotFound", err)
		}
	}
	if calls != 3 {
		t.Fatalf("computed %d times, want 3 (one per view and key)", calls)
	}
}

// TestRemember: what a batch remembers, in room made for it or not, is in
// the memo of the view its commit publishes, and only that view's.
func TestRemember(t *testing.T) {
	s := open(t)
	b := s.NewBatch()
	b.Set([]byte("k"), []byte("one"))
	b.Set([]byte("l"), []byte("eins"))
	b.GrowMemo(1)
	b.Remember("k", "one")
	b.Remember("l", "eins") // past the room made
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
	calls := 0
	v := s.View()
	for key, want := range map[string]string{"k": "one", "l": "eins"} {
		got, hit, err := v.Memo(key, readKey(v, key, &calls))
		if err != nil || got != want || !hit || calls != 0 {
			t.Fatalf("the commit's view: %v, hit %v, %v after %d reads; want %s, remembered, no read", got, hit, err, calls, want)
		}
	}
	v.Release()
	set(t, s, "k", "two")
	v = s.View()
	defer v.Release()
	got, hit, err := v.Memo("k", readKey(v, "k", &calls))
	if err != nil || got != "two" || hit || calls != 1 {
		t.Fatalf("the next commit's view: %v, hit %v, %v after %d reads; want two, read once", got, hit, err, calls)
	}
}

// TestLookup: Lookup finds what the commit remembered and what a reader of
// the view computed, with its error, and nothing else; it computes
// nothing.
func TestLookup(t *testing.T) {
	s := open(t)
	b := s.NewBatch()
	b.Set([]byte("k"), []byte("one"))
	b.Remember("k", "one")
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
	v := s.View()
	defer v.Release()
	if got, ok, err := v.Lookup("k"); !ok || got != "one" || err != nil {
		t.Fatalf("Lookup of what the commit remembered: %v, %v, %v", got, ok, err)
	}
	if got, ok, _ := v.Lookup("missing"); ok {
		t.Fatalf("Lookup before any reader computed: %v, found", got)
	}
	failed := errors.New("no such thing")
	if _, _, err := v.Memo("missing", func() (any, error) { return nil, failed }); err != failed {
		t.Fatalf("Memo: %v", err)
	}
	if _, ok, err := v.Lookup("missing"); !ok || err != failed {
		t.Fatalf("Lookup of a failed computation: found %v, %v; want it with its error", ok, err)
	}
	other := s.View()
	defer other.Release()
	calls := 0
	if _, _, err := other.Memo("other", readKey(other, "k", &calls)); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := v.Lookup("other"); !ok || got != "one" || err != nil || calls != 1 {
		t.Fatalf("Lookup through another handle on the view: %v, %v, %v after %d reads", got, ok, err, calls)
	}
}

// TestMemoConcurrent: readers that ask at once compute once.
func TestMemoConcurrent(t *testing.T) {
	s := open(t)
	set(t, s, "k", "v")
	var mu sync.Mutex
	computed := 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			v := s.View()
			defer v.Release()
			got, _, err := v.Memo("k", func() (any, error) {
				mu.Lock()
				computed++
				mu.Unlock()
				b, err := v.Get([]byte("k"))
				return string(b), err
			})
			if err != nil || got != "v" {
				t.Errorf("memo: %v, %v", got, err)
			}
		})
	}
	wg.Wait()
	if computed != 1 {
		t.Fatalf("8 concurrent readers computed %d times, want once", computed)
	}
}

// TestMemoBounded: past MaxMemo keys a view computes without keeping, a
// batch remembers no more, and a fill that panicked is computed again by
// the next caller.
func TestMemoBounded(t *testing.T) {
	s := open(t)
	set(t, s, "k", "v")
	v := s.View()
	defer v.Release()
	for i := range MaxMemo {
		if _, _, err := v.Memo(i, func() (any, error) { return i, nil }); err != nil {
			t.Fatal(err)
		}
	}
	calls := 0
	for range 2 {
		if _, hit, err := v.Memo("over", readKey(v, "k", &calls)); hit || err != nil {
			t.Fatalf("a key past the bound: hit %v, %v", hit, err)
		}
	}
	if calls != 2 {
		t.Fatalf("a key past the bound was computed %d times in 2 calls, want 2", calls)
	}
	if got := len(v.shared.memo); got != MaxMemo {
		t.Fatalf("the memo holds %d results, want the bound %d", got, MaxMemo)
	}
	b := s.NewBatch()
	b.Set([]byte("k"), []byte("v"))
	for i := range MaxMemo + 10 {
		b.Remember(i, i)
	}
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
	r := s.View()
	defer r.Release()
	if got := len(r.shared.given); got != MaxMemo {
		t.Fatalf("a commit that remembered %d results handed its view %d, want the bound %d", MaxMemo+10, got, MaxMemo)
	}

	w := s.View()
	defer w.Release()
	func() {
		defer func() { _ = recover() }()
		_, _, _ = w.Memo("p", func() (any, error) { panic("fill failed") })
	}()
	got, hit, err := w.Memo("p", func() (any, error) { return "second", nil })
	if err != nil || got != "second" || hit {
		t.Fatalf("after a panicking fill: %v, hit %v, %v; want a fresh computation", got, hit, err)
	}
}

// TestMemoClosed: a view taken after Close has no memo and fails like its
// reads.
func TestMemoClosed(t *testing.T) {
	s, err := Open("db", Options{FS: vfs.NewMem(), MemTableSize: 4 << 20, CacheSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	v := s.View()
	_, _, err = v.Memo("k", func() (any, error) { return nil, fmt.Errorf("must not run") })
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("memo on a closed store: %v, want ErrClosed", err)
	}
}

// Most of the engine's point reads are for keys that are not there (a new
// op's id): every table must carry a filter that answers them without
// loading a data block.
func TestMissingKeysAnsweredByFilters(t *testing.T) {
	s := open(t)
	b := s.NewBatch()
	for i := range 2000 {
		b.Set(fmt.Appendf(nil, "op/%06d", 2*i), []byte("value"))
	}
	if err := s.Commit(b); err != nil {
		t.Fatal(err)
	}
	v := flushedView(t, s)
	const lookups = 200
	for i := range lookups {
		if _, err := v.Get(fmt.Appendf(nil, "op/%06d", 2*i+1)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of a missing key: %v, want ErrNotFound", err)
		}
	}
	// Ten bits a key: about 1% false positives; allow ten times that.
	if m := s.db.Metrics().Filter; m.Hits < lookups*9/10 {
		t.Fatalf("filters answered %d of %d lookups of missing keys (misses %d); want nearly all", m.Hits, lookups, m.Misses)
	}
	if _, err := v.Get([]byte("op/000000")); err != nil {
		t.Fatalf("Get of a stored key: %v", err)
	}
}

// TestSingleDelete: a key set once and single-deleted leaves nothing in
// the tables once flushed; one set twice shows its older value again, and
// the store counts and logs the misuse.
func TestSingleDelete(t *testing.T) {
	var logged lockedBuffer // Pebble logs from its own goroutines
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	singleDelete := func(key string) {
		t.Helper()
		b := s.NewBatch()
		b.SingleDelete([]byte(key))
		if err := s.Commit(b); err != nil {
			t.Fatal(err)
		}
	}
	set(t, s, "once", "v")
	set(t, s, "twice", "old")
	set(t, s, "twice", "new")
	singleDelete("once")
	singleDelete("twice")
	before := s.View()
	_, err = before.Get([]byte("twice"))
	before.Release()
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("before a flush, Get of a single-deleted key: %v, want ErrNotFound", err)
	}
	v := flushedView(t, s)
	if n, err := s.Entries([]byte("once"), []byte("oncf")); err != nil || n != 0 {
		t.Fatalf("a flushed set and single delete left %d entries (%v), want 0", n, err)
	}
	if got, err := v.Get([]byte("twice")); string(got) != "old" {
		t.Fatalf("after a flush, Get of a key set twice and single-deleted: %q, %v; want the older value, as Pebble documents", got, err)
	}
	if n := s.Misuses(); n != 1 || !strings.Contains(logged.String(), `SINGLEDEL (key=\"twice\")`) {
		t.Fatalf("Misuses = %d, want 1; the log: %s", n, logged.String())
	}
}

// lockedBuffer is a buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Pebble charges memtables to the block cache: the cache must still hold
// blocks when it is smaller than a memtable.
func TestBlockCacheHoldsBlocks(t *testing.T) {
	s := open(t) // a 1 MiB cache under 4 MiB memtables
	// Past two memtables, so that they have grown to their full size, and
	// reserve it, by the time the key is read.
	val := make([]byte, 4<<10)
	for i := range 2560 {
		b := s.NewBatch()
		b.Set(fmt.Appendf(nil, "op/%06d", i), val)
		if err := s.Commit(b); err != nil {
			t.Fatal(err)
		}
	}
	v := flushedView(t, s)
	for range 10 {
		if _, err := v.Get([]byte("op/001000")); err != nil {
			t.Fatal(err)
		}
	}
	if l := s.LSM(); l.CacheHits == 0 {
		t.Fatalf("block cache: %d hits, %d misses after reading one key ten times; want hits", l.CacheHits, l.CacheMisses)
	}
}

// flushedView flushes the memtable, so that reads go to the tables, and
// returns a view released when the test ends.
func flushedView(t *testing.T, s *Store) *View {
	t.Helper()
	if err := s.db.Flush(); err != nil {
		t.Fatal(err)
	}
	v := s.View()
	t.Cleanup(v.Release)
	return v
}

// TestViewAllocations: a reader's view costs one allocation, its handle;
// every woken session takes one per live round.
func TestViewAllocations(t *testing.T) {
	s := open(t)
	set(t, s, "k", "v")
	if n := testing.AllocsPerRun(100, func() { s.View().Release() }); n > 1 {
		t.Errorf("View and Release took %.1f allocations, want 1", n)
	}
}

// TestWrittenBytes: the bytes the WAL, flushes and compactions wrote are
// counted as each writes: commits first, a flush's table then, and a
// compaction's tables last.
func TestWrittenBytes(t *testing.T) {
	s := open(t)
	for i := range 200 {
		set(t, s, fmt.Sprintf("key %03d", i), strings.Repeat("a value ", 16))
	}
	l := s.LSM()
	if l.LoggedBytes < 200*128 || l.FlushedBytes != 0 || l.CompactedBytes != 0 {
		t.Fatalf("after 200 commits of 128-byte values: logged %d, flushed %d, compacted %d bytes; want 25,600 or more logged, nothing else", l.LoggedBytes, l.FlushedBytes, l.CompactedBytes)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if f := s.LSM(); f.FlushedBytes == 0 || f.CompactedBytes != 0 {
		t.Fatalf("after a flush: flushed %d, compacted %d bytes; want a table flushed, nothing compacted", f.FlushedBytes, f.CompactedBytes)
	}
	// A second table over the same keys, so that compacting rewrites both
	// (a table alone would move down without a byte written).
	for i := range 200 {
		set(t, s, fmt.Sprintf("key %03d", i), strings.Repeat("another value ", 9))
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(t.Context()); err != nil {
		t.Fatal(err)
	}
	if c := s.LSM(); c.CompactedBytes == 0 {
		t.Fatal("a compaction of the flushed table wrote no bytes")
	}
}

// TestFatalPanicNamesItsCause: a Pebble fatal error on one of Pebble's own
// goroutines, where nothing recovers it, stops the process with a panic
// whose message says why (the runtime prints an error's Error()), and the
// store refuses writes from then on.
func TestFatalPanicNamesItsCause(t *testing.T) {
	s := open(t)
	var got any
	func() {
		defer func() { got = recover() }()
		pebbleLogger{s}.Fatalf("MANIFEST flush failed: %v", errors.New("no space left on device"))
	}()
	err, ok := got.(error)
	if !ok || !strings.Contains(err.Error(), "MANIFEST flush failed: no space left on device") || !strings.Contains(err.Error(), "storage failed") {
		t.Fatalf("panicked with %#v; want an error naming the cause", got)
	}
	if err := s.Commit(s.NewBatch()); !errors.Is(err, ErrFatal) {
		t.Fatalf("a commit after the failure: %v, want ErrFatal", err)
	}
}

// TestSpaceCountsTheLogInUse: the write-ahead log's share of the disk
// counts the log file being written, not only those the store has moved
// past: commits not yet flushed to tables are on disk there.
func TestSpaceCountsTheLogInUse(t *testing.T) {
	s := open(t)
	for i := range 100 {
		set(t, s, fmt.Sprint("key", i), strings.Repeat("v", 1000))
	}
	if sp := s.Space(); sp.WAL < 100*1000 {
		t.Fatalf("the log holds %d bytes after 100 KB of commits, unflushed: %+v", sp.WAL, sp)
	}
}
