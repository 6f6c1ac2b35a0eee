package engine

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrDiskFull: the store's file system has less room than
// Options.MinFreeDisk, and the engine refuses writes until it has more.
var ErrDiskFull = errors.New("the server's disk is nearly full")

// diskCheckEvery is how long the engine trusts its last look at the free
// space: a write looks again once it is older than this.
const diskCheckEvery = time.Second

// diskRoom watches the free space of the store's file system. A store
// that fills its disk fails (Pebble cannot write its log), and the server
// stops; refusing writes while the disk is nearly full keeps it serving
// reads and sessions, and accepting writes again once an operator freed
// space, with nothing lost.
type diskRoom struct {
	fs    vfs.FS
	dir   string
	min   uint64 // 0: no check
	clock func() time.Time

	next  atomic.Int64 // unix nanoseconds of the next look
	avail atomic.Uint64
	low   atomic.Bool
}

// check returns ErrDiskFull (wrapped, with the room left) while the file
// system has less than min free, looking again at most once per
// diskCheckEvery. A file system that cannot tell (an in-memory one) is
// never full.
func (d *diskRoom) check(e *Engine) error {
	if d.min == 0 {
		return nil
	}
	now := d.clock().UnixNano()
	if next := d.next.Load(); now >= next && d.next.CompareAndSwap(next, now+int64(diskCheckEvery)) {
		d.look(e)
	}
	if d.low.Load() {
		return fmt.Errorf("%w: %d MiB free, under the %d MiB the server keeps (ferryd --min-free-disk-mib); writes are refused until an operator frees space; retry later",
			ErrDiskFull, d.avail.Load()>>20, d.min>>20)
	}
	return nil
}

func (d *diskRoom) look(e *Engine) {
	u, err := d.fs.GetDiskUsage(d.dir)
	if err != nil {
		if !errors.Is(err, vfs.ErrUnsupported) {
			e.log.Warn("cannot read the disk's free space", "dir", d.dir, "err", err)
		}
		return
	}
	d.avail.Store(u.AvailBytes)
	low := u.AvailBytes < d.min
	if was := d.low.Swap(low); was != low {
		if low {
			e.log.Error("disk nearly full: refusing writes", "free_mib", u.AvailBytes>>20, "min_mib", d.min>>20, "dir", d.dir)
		} else {
			e.log.Info("disk has room again: accepting writes", "free_mib", u.AvailBytes>>20)
		}
	}
}

// DiskLow reports whether the engine refuses writes for want of disk
// space (Options.MinFreeDisk), as of its last look.
func (e *Engine) DiskLow() bool { return e.disk.low.Load() }
