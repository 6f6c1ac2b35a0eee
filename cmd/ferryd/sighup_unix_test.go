//go:build unix

package main

import (
	"os"
	"syscall"
	"testing"
)

// sendSIGHUP sends the test process SIGHUP, which a serving ferryd catches.
func sendSIGHUP(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}
