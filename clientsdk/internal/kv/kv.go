// Package kv is the SDK's thin layer over Pebble: a local key-value store
// whose batch commits are synced, so that what the SDK records (its outbox
// above all) survives the process being killed. It knows nothing of Ferry.
//
// A DB is safe for concurrent use; a Batch and an Iter are not. Once
// closed, a DB's calls return ErrClosed: Pebble itself panics.
package kv

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrNotFound is returned by Get for a missing key.
var ErrNotFound = errors.New("not found")

// ErrInUse is returned by Open for a store that another process holds
// open, or another DB of this one.
var ErrInUse = errors.New("in use")

// ErrClosed is returned by the calls of a closed DB.
var ErrClosed = errors.New("ferry: device is closed")

// DB is an open local store.
type DB struct {
	db   *pebble.DB
	lock *pebble.Lock // the store's folder's, held until Close
	held string       // the folder as holdFolder noted it; "" in memory

	mu     sync.Mutex // guards closed
	closed bool
	// inUse counts the calls in progress and the open iterators: Close
	// waits for them, as Pebble must not close under them.
	inUse sync.WaitGroup
}

// enter starts a call, or reports ErrClosed; leave ends it.
func (d *DB) enter() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.inUse.Add(1)
	return nil
}

func (d *DB) leave() { d.inUse.Done() }

// Open opens or creates the store in dir on fs (vfs.Default for disk,
// vfs.NewMem() for a store that lives in memory).
// It returns an error that wraps ErrInUse when another holds the store:
// another process, or another DB of this one, however its path is
// spelled.
func Open(dir string, fs vfs.FS, log *slog.Logger) (db *DB, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("open local store in %s: %w", dir, err)
		}
	}()
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// In this process: Pebble's own check, and the lock of fcntl, which
	// is the process's, know a folder by its path as spelled, so a second
	// spelling (relative, through a link) would open it twice, and its
	// Close would drop the process's lock under the first.
	var held string
	if fs == vfs.Default {
		if held, err = holdFolder(dir); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				releaseFolder(held)
			}
		}()
	}
	// The folder's lock, taken here to tell its being held by another
	// process apart from the other errors of taking it.
	lock, err := pebble.LockDirectory(dir, fs)
	if err != nil {
		if !errors.As(err, new(*os.PathError)) && lockHeld(err) {
			err = fmt.Errorf("%w (%v)", ErrInUse, err)
		}
		return nil, err
	}
	cache := pebble.NewCache(8 << 20)
	defer cache.Unref()
	pdb, err := pebble.Open(dir, &pebble.Options{
		FS:                 fs,
		Lock:               lock,
		Cache:              cache,
		MemTableSize:       8 << 20,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             logger{log},
	})
	if err != nil {
		_ = lock.Close()
		return nil, err
	}
	return &DB{db: pdb, lock: lock, held: held}, nil
}

// folders are the folders of this process's open DBs on disk, resolved.
var folders struct {
	sync.Mutex
	open map[string]bool
}

// holdFolder notes dir, resolved, as open in this process, or returns
// ErrInUse when it is already.
func holdFolder(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	folders.Lock()
	defer folders.Unlock()
	if folders.open[abs] {
		return "", fmt.Errorf("%w (opened by this process already)", ErrInUse)
	}
	if folders.open == nil {
		folders.open = map[string]bool{}
	}
	folders.open[abs] = true
	return abs, nil
}

func releaseFolder(abs string) {
	if abs == "" {
		return
	}
	folders.Lock()
	defer folders.Unlock()
	delete(folders.open, abs)
}

type logger struct{ l *slog.Logger }

func (l logger) Infof(format string, args ...any) {
	l.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l logger) Errorf(format string, args ...any) {
	l.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf: the local store cannot go on; the SDK panics rather than record
// an outbox it cannot keep. Pebble calls it only on unrecoverable disk
// errors.
func (l logger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("ferry: local store failed: "+format, args...))
}

// Close closes the store once the calls in progress and the open
// iterators are done; the calls that start meanwhile or later fail with
// ErrClosed. Closing again does nothing.
func (d *DB) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	d.inUse.Wait()
	err := errors.Join(d.db.Close(), d.lock.Close())
	releaseFolder(d.held)
	return err
}

// Get returns a copy of key's value, or ErrNotFound.
func (d *DB) Get(key []byte) ([]byte, error) {
	if err := d.enter(); err != nil {
		return nil, err
	}
	defer d.leave()
	v, c, err := d.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), v...)
	_ = c.Close()
	return out, nil
}

// Batch collects writes for one atomic, synced commit.
type Batch struct{ b *pebble.Batch }

// NewBatch returns an empty batch.
func (d *DB) NewBatch() *Batch { return &Batch{b: d.db.NewBatch()} }

// Set writes key = value (both copied).
func (b *Batch) Set(key, value []byte) { _ = b.b.Set(key, value, nil) }

// Delete deletes key.
func (b *Batch) Delete(key []byte) { _ = b.b.Delete(key, nil) }

// DeleteRange deletes the keys in [lower, upper).
func (b *Batch) DeleteRange(lower, upper []byte) { _ = b.b.DeleteRange(lower, upper, nil) }

// Empty reports whether the batch holds no writes.
func (b *Batch) Empty() bool { return b.b.Empty() }

// Commit writes the batch and syncs it to disk.
func (d *DB) Commit(b *Batch) error {
	defer b.b.Close()
	if b.b.Empty() {
		return nil
	}
	if err := d.enter(); err != nil {
		return err
	}
	defer d.leave()
	return b.b.Commit(pebble.Sync)
}

// Iter iterates over keys in [lower, upper). The DB does not close before
// it is closed.
type Iter struct {
	it *pebble.Iterator
	db *DB
}

// Iter returns an iterator over [lower, upper).
func (d *DB) Iter(lower, upper []byte) (*Iter, error) {
	if err := d.enter(); err != nil {
		return nil, err
	}
	it, err := d.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		d.leave()
		return nil, err
	}
	return &Iter{it: it, db: d}, nil
}

// First moves to the first key.
func (i *Iter) First() bool { return i.it.First() }

// Last moves to the last key.
func (i *Iter) Last() bool { return i.it.Last() }

// Next moves to the next key.
func (i *Iter) Next() bool { return i.it.Next() }

// Prev moves to the previous key.
func (i *Iter) Prev() bool { return i.it.Prev() }

// Key is the current key, valid until the iterator moves.
func (i *Iter) Key() []byte { return i.it.Key() }

// Value is the current value, valid until the iterator moves.
func (i *Iter) Value() ([]byte, error) { return i.it.ValueAndErr() }

// Close closes the iterator; closing it again does nothing.
func (i *Iter) Close() error {
	if i.db == nil {
		return nil
	}
	defer i.db.leave()
	i.db = nil
	return i.it.Close()
}

var _ io.Closer = (*Iter)(nil)
