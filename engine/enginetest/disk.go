package enginetest

import (
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/clock"
)

// Disk is a store's disk whose free space a test sets, for a server that
// refuses new ops while its disk is nearly full
// (engine.Options.MinFreeDisk).
type Disk struct {
	fs    *vfs.MemFS
	clock *clock.Fake // the engine's: it looks at the disk once a second
}

// NewDisk returns a disk with room.
func NewDisk() *Disk {
	return &Disk{fs: vfs.NewMem(), clock: clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))}
}

// Options puts the engine's store on the disk, keeping 100 MiB free (for
// servertest.Config.Engine).
func (d *Disk) Options(o *engine.Options) {
	o.FS, o.Clock, o.MinFreeDisk = d.fs, d.clock, 100<<20
}

// Fill leaves the disk 10 MiB free of 10 GiB (full), or all of it free,
// and lets the engine look at it again.
func (d *Disk) Fill(full bool) {
	free := uint64(10 << 30)
	if full {
		free = 10 << 20
	}
	d.fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: free, TotalBytes: 10 << 30})
	d.clock.Advance(time.Second)
}
