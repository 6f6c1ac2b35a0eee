//go:build unix

package kv

import (
	"errors"
	"syscall"
)

// lockHeld reports whether err, from taking a folder's lock, says another
// holds it: fcntl's F_SETLK answers EAGAIN or EACCES (and Pebble's
// in-memory file system EAGAIN). Others (no locks on this file system,
// say) are errors of their own.
func lockHeld(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES)
}
