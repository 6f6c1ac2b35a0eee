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
	p := &callPool{maxIdle: 2}
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
	p := &callPool{maxIdle: 1, minPumps: 1}
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

// queuingPool is a pool that queues started calls past one running, and
// the queue's checks that it armed, for the test to run.
func queuingPool() (*callPool, *[]func()) {
	var checks []func()
	p := &callPool{maxIdle: 4, minPumps: 1, afterFunc: func(_ time.Duration, f func()) { checks = append(checks, f) }}
	return p, &checks
}

// TestCallPoolQueuesStarts: past minPumps goroutines running started
// calls, start queues its calls; run's calls never queue, and the
// goroutine that runs one takes the queued calls, in order, before it
// waits.
func TestCallPoolQueuesStarts(t *testing.T) {
	p, checks := queuingPool()
	release, ran := make(chan struct{}), make(chan string, 3)
	p.start(func() { <-release; ran <- "a" })
	p.start(func() { ran <- "b" })
	p.start(func() { ran <- "c" })
	p.mu.Lock()
	queued, started := p.queue.len(), p.started
	p.mu.Unlock()
	if queued != 2 || started != 1 || len(*checks) != 1 {
		t.Fatalf("%d queued, %d goroutines started, %d stall checks armed; want 2, 1 and 1", queued, started, len(*checks))
	}
	p.run(func() {}) // not queued: it gets a goroutine, which then runs b and c
	for _, want := range []string{"b", "c"} {
		if got := <-ran; got != want {
			t.Fatalf("call %q ran; want %q", got, want)
		}
	}
	close(release)
	<-ran
	// The queue emptied: the check disarms and starts nothing.
	(*checks)[0]()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started != 2 || p.watching || len(*checks) != 1 {
		t.Fatalf("after the check: %d started, watching %v, %d checks armed; want 2, false, 1", p.started, p.watching, len(*checks))
	}
}

// TestCallPoolStartsStuckCalls: while calls wait in the queue, its check
// starts one more goroutine when calls left it meanwhile, and one for each
// call there when none did (the goroutines running started calls all wait
// on stalled writes).
func TestCallPoolStartsStuckCalls(t *testing.T) {
	p, checks := queuingPool()
	stalled := make(chan struct{})
	defer close(stalled)
	p.start(func() { <-stalled })
	ran := make(chan string, 4)
	for _, name := range []string{"a", "b", "c"} {
		p.start(func() { ran <- name })
	}
	p.mu.Lock()
	p.taken++ // as if a goroutine had taken a call meanwhile
	p.mu.Unlock()
	(*checks)[0]() // moving: one more goroutine, for a
	if got := <-ran; got != "a" || p.started != 2 || len(*checks) != 2 {
		t.Fatalf("after a check of a moving queue: %q ran, %d started, %d checks; want a, 2 and 2", got, p.started, len(*checks))
	}
	// Its goroutine took b and c before it waited, unless it was slow.
	// Either way, the next check finds the queue empty or stuck, and every
	// call runs.
	(*checks)[1]()
	for range 2 {
		<-ran
	}
	select {
	case got := <-ran:
		t.Fatalf("%q ran twice", got)
	default:
	}
}

// TestCallPoolStartsStalledCalls: a queue that no goroutine took a call
// from since the last check gets a goroutine for each call.
func TestCallPoolStartsStalledCalls(t *testing.T) {
	p, checks := queuingPool()
	stalled := make(chan struct{})
	defer close(stalled)
	p.start(func() { <-stalled })
	ran := make(chan struct{}, 2)
	p.start(func() { ran <- struct{}{}; <-stalled })
	p.start(func() { ran <- struct{}{}; <-stalled })
	select {
	case <-ran:
		t.Fatal("a queued call ran while the only goroutine was stalled")
	default:
	}
	(*checks)[0]() // stallAfter passed with nothing taken
	<-ran
	<-ran
	if p.started != 3 || len(*checks) != 1 {
		t.Fatalf("%d goroutines started, %d checks armed; want 3 and 1", p.started, len(*checks))
	}
}

// TestCallPoolKeepsMaxIdle: of the goroutines that ran calls at once, the
// pool keeps maxIdle to wait for more; the others end.
func TestCallPoolKeepsMaxIdle(t *testing.T) {
	p := &callPool{maxIdle: 2}
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

// TestCallPoolPanics: a panic in a call panics the caller with the value
// and the stack where it happened; the pool's goroutine serves on.
func TestCallPoolPanics(t *testing.T) {
	p := &callPool{maxIdle: 1}
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
	p := &callPool{maxIdle: 1}
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
	p := &callPool{maxIdle: 1}
	n := 0
	f := func() { n++ }
	for b.Loop() {
		p.run(f)
	}
	if n != b.N {
		b.Fatalf("%d calls ran of %d", n, b.N)
	}
}
