//go:build unix

package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/testbin"
)

// TestAToolEndsOnASignal: the tools other than serve and compact end on
// SIGINT as any process does, rather than catch it and go on: here
// add-user, waiting for a password on a stdin that says nothing. The
// store is whole after (check passes).
func TestAToolEndsOnASignal(t *testing.T) {
	ferryd := testbin.Build(t, "./cmd/ferryd")
	data := filepath.Join(t.TempDir(), "data")
	storeEpoch(t, data, 1)
	cmd := exec.Command(ferryd, "add-user", "--data", data, "--username", "quiet", "--log-level", "debug")
	stdin, err := cmd.StdinPipe() // open, and never written
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	bound := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() }) // a bound, not a wait for an event
	defer bound.Stop()
	lines := bufio.NewScanner(stderr)
	for lines.Scan() && !strings.Contains(lines.Text(), "reading the password") {
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for lines.Scan() {
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("add-user after SIGINT: %v; want it ended by the signal", err)
	}
	if ws, ok := exit.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		t.Fatalf("add-user after SIGINT: %v; want it ended by SIGINT, not the test's kill after a minute", err)
	}
	if out, err := exec.Command(ferryd, "check", "--data", data).CombinedOutput(); err != nil {
		t.Fatalf("check after the signal: %v\n%s", err, out)
	}
}
