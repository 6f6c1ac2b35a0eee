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

// TestStopContexts: the first SIGTERM ends serve's context, the second
// the one that cuts --shutdown-delay short.
func TestStopContexts(t *testing.T) {
	ctx, stop := stopContexts()
	defer stop()
	hurry := hurriesOf(ctx).second
	term := func() {
		t.Helper()
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	term()
	<-ctx.Done()
	if hurry.Err() != nil {
		t.Fatal("the first signal cut the delay short")
	}
	term()
	<-hurry.Done()
}
