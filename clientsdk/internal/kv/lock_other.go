//go:build !unix && !windows

package kv

import (
	"errors"
	"syscall"
)

// lockHeld reports whether err, from taking a folder's lock, says another
// holds it: here only Pebble's in-memory file system can say so (EAGAIN);
// its disk has no locks on this system.
func lockHeld(err error) bool { return errors.Is(err, syscall.EAGAIN) }
