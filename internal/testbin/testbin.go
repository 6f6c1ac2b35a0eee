// Package testbin builds Ferry's commands and runs ferryd for tests that
// drive real processes.
package testbin

import (
	"bufio"
	"context"

	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Build compiles the command at pkg (such as "./cmd/ferryd", relative to
// the module root) into a temporary folder and returns the binary's path.
// It builds without the race detector: the processes under test are the
// product, not the test.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

func moduleRoot(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// FreeAddr returns a loopback address with a port free at the time of the
// call, for a server that must keep its address across restarts.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// Ferryd is a running ferryd process.
type Ferryd struct {
	t    testing.TB
	bin  string
	Addr string
	Data string
	URL  string
	cmd  *exec.Cmd
	done chan error
	Log  *strings.Builder
}

// StartFerryd starts bin on addr with its store in data, self-registration
// on, and waits until it listens.
func StartFerryd(t testing.TB, bin, addr, data string, extra ...string) *Ferryd {
	t.Helper()
	f := &Ferryd{t: t, bin: bin, Addr: addr, Data: data, URL: "http://" + addr, Log: &strings.Builder{}}
	f.Start(extra...)
	t.Cleanup(func() { f.Kill() })
	return f
}

var listening = regexp.MustCompile(`listening on (\S+)`)

// Start starts the process (again) and waits until it listens.
func (f *Ferryd) Start(extra ...string) {
	f.t.Helper()
	args := append([]string{"--addr", f.Addr, "--data", f.Data, "--allow-registration", "--log-level", "warn"}, extra...)
	cmd := exec.Command(f.bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		f.t.Fatal(err)
	}
	cmd.Stderr = &logWriter{f.Log}
	if err := cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.cmd, f.done = cmd, make(chan error, 1)
	up := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if listening.MatchString(sc.Text()) {
				up <- true
			}
		}
		up <- false
		f.done <- cmd.Wait()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case ok := <-up:
		if !ok {
			f.t.Fatalf("ferryd exited before listening:\n%s", f.Log)
		}
	case <-ctx.Done():
		f.t.Fatalf("ferryd did not start listening:\n%s", f.Log)
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (f *Ferryd) Kill() {
	if f.cmd == nil || f.cmd.Process == nil {
		return
	}
	_ = f.cmd.Process.Signal(syscall.SIGKILL)
	<-f.done
	f.cmd = nil
}

type logWriter struct{ b *strings.Builder }

func (w *logWriter) Write(p []byte) (int, error) { return w.b.Write(p) }

// Run runs bin with args and env, returning its stdout; it fails the test
// on a non-zero exit unless allowFail.
func Run(t testing.TB, env []string, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", filepath.Base(bin), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// RunErr runs bin and returns its stdout, stderr and error.
func RunErr(env []string, bin string, args ...string) (string, string, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}
