package main

import (
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ferrysync/ferry/internal/failpoint"
	"github.com/ferrysync/ferry/internal/testbin"
)

// TestOutboxSurvivesKills kills `ferry send` with SIGKILL at each point of
// an op's way out (in the outbox only; pushed, answer unread; answered,
// outbox not yet updated), then syncs: the server must hold exactly one
// copy of every message, and the outbox must end empty.
func TestOutboxSurvivesKills(t *testing.T) {
	_, ferry, env, profile := aliceWithNotes(t)
	as := func(p string, extraEnv []string, args ...string) string {
		t.Helper()
		return testbin.Run(t, append(env, extraEnv...), ferry, append([]string{"--profile", p, "--json"}, args...)...)
	}

	points := []string{failpoint.SDKAfterEnqueue, failpoint.SDKAfterPush, failpoint.SDKAfterResult}
	killed := 0
	for _, fp := range points {
		text := "written before dying at " + fp
		cmd := exec.Command(ferry, "--profile", profile, "send", "notes", text)
		cmd.Env = append(append(cmd.Environ(), env...), "FERRY_FAILPOINT="+fp)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("failpoint %s: ferry send ended with %v, not killed: the failpoint was never reached\n%s", fp, err, stderr.String())
		}
		killed++
		as(profile, nil, "sync") // the same profile comes back and flushes its outbox
	}
	if killed != len(points) {
		t.Fatalf("%d kills landed, want %d", killed, len(points))
	}

	var status struct{ Pending, Failed int }
	if err := json.Unmarshal([]byte(as(profile, nil, "status")), &status); err != nil {
		t.Fatal(err)
	}
	if status.Pending != 0 || status.Failed != 0 {
		t.Fatalf("after the syncs: %d pending, %d failed", status.Pending, status.Failed)
	}
	// The server's truth, through a fresh device of alice's.
	checker := filepath.Join(filepath.Dir(profile), "checker")
	as(checker, nil, "login", "alice")
	var hist []struct{ ID, Text string }
	if err := json.Unmarshal([]byte(as(checker, nil, "history", "notes", "--limit", "100")), &hist); err != nil {
		t.Fatal(err)
	}
	for _, fp := range points {
		n := 0
		for _, m := range hist {
			if strings.HasSuffix(m.Text, fp) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("message killed at %s is on the server %d times, want exactly once: %+v", fp, n, hist)
		}
	}
	if len(hist) != len(points) {
		t.Fatalf("server holds %d messages, want %d", len(hist), len(points))
	}
}
