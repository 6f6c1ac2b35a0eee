package server

import (
	"bytes"
	"errors"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// stackOf is the calling goroutine's stack trace.
func stackOf() string {
	buf := make([]byte, 64<<10)
	return string(buf[:runtime.Stack(buf, false)])
}

// TestCallPoolRunsOffTheCaller: run calls f on a goroutine of the pool,
// returns once f has, and reuses the goroutine for the next call.
func TestCallPoolRunsOffTheCaller(t *testing.T) {
	p := &callPool{maxIdle: 2, idleFor: time.Hour}
	var stack string
	p.run(func() { stack = stackOf() })
	if strings.Contains(stack, "testing.tRunner") || !strings.Contains(stack, "(*callPool).work") {
		t.Fatalf("the call ran on the caller's goroutine, or not the pool's:\n%s", stack)
	}
	for range 3 {
		p.run(func() {})
	}
	if p.started != 1 {
		t.Fatalf("%d goroutines started for calls one after another; want 1", p.started)
	}
}

// TestCallPoolStart: start returns while its call runs, on a goroutine of
// the pool, which then waits for the next call; a Goexit in a started
// call ends its goroutine, which is not reused.
func TestCallPoolStart(t *testing.T) {
	p := &callPool{maxIdle: 1, idleFor: time.Hour}
	// idleOnce waits for the pool's goroutine to wait for a call: nothing
	// tells when a started call's goroutine does.
	idleOnce := func() {
		t.Helper()
		for range 1_000_000 { // bounded: it takes a few yields
			p.mu.Lock()
			n := len(p.idle)
			p.mu.Unlock()
			if n == 1 {
				return
			}
			runtime.Gosched()
		}
		t.Fatal("the started call's goroutine never waited for another")
	}
	release, stacks := make(chan struct{}), make(chan string, 1)
	p.start(func() {
		<-release // start has returned: it would not, were it waiting
		stacks <- stackOf()
	})
	close(release)
	if stack := <-stacks; !strings.Contains(stack, "(*callPool).work") {
		t.Fatalf("the started call ran off the pool:\n%s", stack)
	}
	idleOnce()
	exited := make(chan struct{})
	p.start(func() {
		defer close(exited)
		runtime.Goexit()
	})
	<-exited
	p.run(func() {})
	if p.started != 2 {
		t.Fatalf("%d goroutines started; want 2: the started call's is reused, and ends with its Goexit", p.started)
	}
}

// TestCallPoolKeepsMaxIdle: of the goroutines that ran calls at once, the
// pool keeps maxIdle to wait for more; the others end.
func TestCallPoolKeepsMaxIdle(t *testing.T) {
	p := &callPool{maxIdle: 2, idleFor: time.Hour}
	// atOnce runs n calls that all run before any returns.
	atOnce := func(n int) {
		var running, finished sync.WaitGroup
		running.Add(n)
		finished.Add(n)
		release := make(chan struct{})
		for range n {
			go func() {
				defer finished.Done()
				p.run(func() { running.Done(); <-release })
			}()
		}
		running.Wait()
		close(release)
		finished.Wait()
	}
	const calls = 5
	atOnce(calls)
	p.mu.Lock()
	idle, started := len(p.idle), p.started
	p.mu.Unlock()
	if idle != 2 || started != calls {
		t.Fatalf("%d goroutines started, %d idle; want %d and 2", started, idle, calls)
	}
	// The next two calls at once take the idle ones; a third starts one.
	atOnce(3)
	if p.started != calls+1 {
		t.Fatalf("%d goroutines started in all; want %d", p.started, calls+1)
	}
}

// TestCallPoolIdleExpires: a goroutine that waited idleFor for a call ends
// as another goes to wait; one that waited less serves the next call.
func TestCallPoolIdleExpires(t *testing.T) {
	var now time.Duration
	p := &callPool{maxIdle: 8, idleFor: 10 * time.Second, now: func() time.Duration { return now }}
	atOnce := func(n int) {
		var running, finished sync.WaitGroup
		running.Add(n)
		finished.Add(n)
		release := make(chan struct{})
		for range n {
			go func() {
				defer finished.Done()
				p.run(func() { running.Done(); <-release })
			}()
		}
		running.Wait()
		close(release)
		finished.Wait()
	}
	idle := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.idle)
	}
	atOnce(3)
	if n := idle(); n != 3 {
		t.Fatalf("%d idle after 3 calls at once; want 3", n)
	}
	now += 9 * time.Second
	p.run(func() {}) // the last to wait serves, and waits again: 9 s is not 10
	if n := idle(); n != 3 || p.started != 3 {
		t.Fatalf("%d idle, %d started; want 3 and 3", n, p.started)
	}
	now += time.Second
	p.run(func() {}) // the two that waited 10 s end as it waits again
	if n := idle(); n != 1 || p.started != 3 {
		t.Fatalf("after 10 s: %d idle, %d started; want 1 and 3", n, p.started)
	}
	atOnce(2) // the one left serves one; the other call starts a goroutine
	if p.started != 4 {
		t.Fatalf("%d goroutines started; want 4", p.started)
	}
}

// TestCallPoolPanics: a panic in a call panics the caller with the value
// and the stack where it happened; the pool's goroutine serves on.
func TestCallPoolPanics(t *testing.T) {
	p := &callPool{maxIdle: 1, idleFor: time.Hour}
	got := func() (r any) {
		defer func() { r = recover() }()
		p.run(func() { panicInCall() })
		return nil
	}()
	cp, ok := got.(*callPanic)
	if !ok {
		t.Fatalf("run panicked with %#v; want a *callPanic", got)
	}
	if s := cp.String(); !strings.Contains(s, "boom") || !strings.Contains(s, "panicInCall") {
		t.Fatalf("the panic says %q; want the value and the stack of the call", s)
	}
	ran := false
	p.run(func() { ran = true })
	if !ran || p.started != 1 {
		t.Fatalf("after a panic: ran %v, %d goroutines started; want true, 1", ran, p.started)
	}
}

func panicInCall() { panic("boom") }

// TestCallPoolGoexit: a call that ends its goroutine (t.FailNow in a hook)
// still returns to its caller, with a panic; the goroutine is not reused.
func TestCallPoolGoexit(t *testing.T) {
	p := &callPool{maxIdle: 1, idleFor: time.Hour}
	got := func() (r any) {
		defer func() { r = recover() }()
		p.run(runtime.Goexit)
		return nil
	}()
	if cp, ok := got.(*callPanic); !ok || !strings.Contains(cp.String(), "Goexit") {
		t.Fatalf("run panicked with %#v; want a *callPanic naming Goexit", got)
	}
	p.run(func() {})
	if p.started != 2 {
		t.Fatalf("%d goroutines started; want 2: the one that exited is not reused", p.started)
	}
}

// TestPooledPanicLogged: a panic in a Sync handler's pooled call is logged
// with its value and the stack where it happened, in JSON logs too.
func TestPooledPanicLogged(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{log: slog.New(slog.NewJSONHandler(&buf, nil)), stats: newStats()}
	func() (err error) {
		defer s.finishCall("/ferry.v1.SyncService/Sync", &err)
		deep.run(func() { panicInHandle() })
		return nil
	}()
	if out := buf.String(); !strings.Contains(out, "boom in handle") || !strings.Contains(out, "panicInHandle") {
		t.Fatalf("the log of a pooled call's panic lost its value or its stack:\n%s", out)
	}
}

func panicInHandle() { panic(errors.New("boom in handle")) }

// BenchmarkCallPoolRun is the hand-off a Sync handler pays per client
// message: a call on a pooled goroutine and the wait for it.
func BenchmarkCallPoolRun(b *testing.B) {
	p := &callPool{maxIdle: 1, idleFor: time.Hour}
	n := 0
	f := func() { n++ }
	for b.Loop() {
		p.run(f)
	}
	if n != b.N {
		b.Fatalf("%d calls ran of %d", n, b.N)
	}
}
