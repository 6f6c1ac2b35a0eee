package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrDiskFull: the store's file system has less room than the engine
// keeps free (Options.MinFreeDisk), and it refuses new ops until it has
// more.
var ErrDiskFull = errors.New("the server's disk is nearly full")

// diskCheckEvery is how long the engine trusts its last look at the free
// space: an append, or DiskLow, looks again once it is older than this.
const diskCheckEvery = time.Second

// diskRoom watches the free space of the store's file system. A store
// that fills its disk fails (Pebble cannot write its log), and the server
// stops; refusing new ops while the disk is nearly full keeps it serving
// reads, sessions, markers, sign-ins and registrations (small writes,
// which the room kept free is for), and accepting ops again once an
// operator freed space, with nothing lost.
type diskRoom struct {
	fs    vfs.FS
	dir   string
	min   uint64 // 0: no check
	clock func() time.Time
	log   *slog.Logger

	next  atomic.Int64 // unix nanoseconds of the next look
	avail atomic.Uint64
	keep  atomic.Uint64 // what the last look kept free: min, or a twentieth of a small disk
	low   atomic.Bool
	seen  atomic.Bool // a look has read the free space
}

// check returns ErrDiskFull while the file system has less free than the
// engine keeps, looking again at most once per diskCheckEvery. A file
// system that cannot tell (an in-memory one) is never full.
func (d *diskRoom) check() error {
	if d.refresh(); d.low.Load() {
		return fmt.Errorf("%w: new messages and changes are refused until its operator frees space; retry later", ErrDiskFull)
	}
	return nil
}

// refresh looks at the free space when the last look is older than
// diskCheckEvery.
func (d *diskRoom) refresh() {
	if d.min == 0 {
		return
	}
	now := d.clock().UnixNano()
	if next := d.next.Load(); now >= next && d.next.CompareAndSwap(next, now+int64(diskCheckEvery)) {
		d.look()
	}
}

// look reads the free space. The engine keeps min free, or a twentieth
// of the disk when that is less: a server on a small volume keeps
// working, with less room to spare.
func (d *diskRoom) look() {
	u, err := d.fs.GetDiskUsage(d.dir)
	if err != nil {
		if !errors.Is(err, vfs.ErrUnsupported) {
			d.log.Warn("cannot read the disk's free space", "dir", d.dir, "err", err)
		}
		return
	}
	keep := min(d.min, u.TotalBytes/20)
	d.avail.Store(u.AvailBytes)
	d.keep.Store(keep)
	d.seen.Store(true)
	low := u.AvailBytes < keep
	if was := d.low.Swap(low); was != low {
		if low {
			d.log.Error("disk nearly full: refusing new ops (--min-free-disk-mib)", "free_mib", u.AvailBytes>>20, "keep_mib", keep>>20, "dir", d.dir)
		} else {
			d.log.Info("disk has room again: accepting new ops", "free_mib", u.AvailBytes>>20, "keep_mib", keep>>20)
		}
	}
}

// DiskLow reports whether the engine refuses new ops for want of disk
// space (Options.MinFreeDisk), looking again when its last look is older
// than a second.
func (e *Engine) DiskLow() bool {
	e.disk.refresh()
	return e.disk.low.Load()
}

// DiskFree returns the free space of the store's file system, as last
// looked at, and the free space below which new ops are refused; ok is
// false when the engine does not look (Options.MinFreeDisk 0, or a file
// system that cannot tell).
func (e *Engine) DiskFree() (free, keep uint64, ok bool) {
	e.disk.refresh()
	if !e.disk.seen.Load() {
		return 0, 0, false
	}
	return e.disk.avail.Load(), e.disk.keep.Load(), true
}
