package peers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The pinned peer releases the harness builds and talks to. The client
// libraries' versions are in go.mod.
const (
	NATSServerModule  = "github.com/nats-io/nats-server/v2"
	NATSServerVersion = "v2.15.2"
	CentrifugoModule  = "github.com/centrifugal/centrifugo/v6"
	CentrifugoVersion = "v6.9.1"
)

// Build builds a peer's server binary, module@version, into dir with `go
// install`, so that it is built with the dependencies of its own go.mod
// (Centrifugo's server and centrifuge-go need different versions of their
// shared protocol module, so they cannot be built in one module). It
// returns the binary's path.
func Build(ctx context.Context, module, version, dir, name string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "install", module+"@"+version)
	// Outside any module, so that the current go.mod plays no part.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+abs, "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %v\n%s", module, version, err, out)
	}
	bin := filepath.Join(abs, name)
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("go install %s@%s made no %s: %w", module, version, name, err)
	}
	return bin, nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// server is a peer's server running as a child process.
type server struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	err    error         // the exit status, once exited is closed

	mu   sync.Mutex
	tail []string // the last lines of output, for errors
}

// startServer starts bin with args and waits until a line of its output
// contains ready, or, when ready is empty, until addr accepts connections.
// Either wait is bounded by timeout.
func startServer(ctx context.Context, name, bin string, args []string, ready, addr string, timeout time.Duration) (*server, error) {
	s := &server{name: name, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, args...)
	pr, pw := io.Pipe()
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	found := make(chan struct{})
	var once sync.Once
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.tail = append(s.tail, line)
			if len(s.tail) > 20 {
				s.tail = s.tail[1:]
			}
			s.mu.Unlock()
			if ready != "" && strings.Contains(line, ready) {
				once.Do(func() { close(found) })
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		s.err = s.cmd.Wait()
		_ = pw.Close()
		close(s.exited)
	}()
	if ready == "" {
		go func() {
			// Poll the port: the server does not say when it is ready.
			for {
				c, err := net.DialTimeout("tcp", addr, time.Second)
				if err == nil {
					_ = c.Close()
					once.Do(func() { close(found) })
					return
				}
				select {
				case <-s.exited:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
	}
	select {
	case <-found:
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("%s exited before it was ready: %v\n%s", name, s.err, s.output())
	case <-time.After(timeout):
		_ = s.stop()
		return nil, fmt.Errorf("%s was not ready within %s\n%s", name, timeout, s.output())
	case <-ctx.Done():
		_ = s.stop()
		return nil, ctx.Err()
	}
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.tail, "\n")
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// stop terminates the server, killing it if it has not exited 10 seconds
// after SIGTERM. An exit caused by the signal is no error.
func (s *server) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("%s did not stop within 10s of SIGTERM; killed", s.name)
	}
	var exit *exec.ExitError
	if s.err != nil && !errors.As(s.err, &exit) {
		return s.err
	}
	return nil
}

// dirSize is the apparent size of the files under dir.
func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// membership inverts members (conversation -> clients) into the
// conversations of each of clients clients.
func membership(clients int, members [][]int) [][]int {
	of := make([][]int, clients)
	for c, m := range members {
		for _, i := range m {
			of[i] = append(of[i], c)
		}
	}
	return of
}
