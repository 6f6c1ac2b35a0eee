//go:build windows

package kv

import (
	"errors"
	"syscall"
)

// lockHeld reports whether err, from taking a folder's lock, says another
// holds it: Pebble opens the lock file unshared, which another holder
// makes fail with a sharing violation (and its in-memory file system
// answers EAGAIN).
func lockHeld(err error) bool {
	const errorSharingViolation, errorLockViolation = syscall.Errno(32), syscall.Errno(33)
	return errors.Is(err, errorSharingViolation) || errors.Is(err, errorLockViolation) || errors.Is(err, syscall.EAGAIN)
}
