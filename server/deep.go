package server

import (
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

// deep runs the deep calls of Sync handlers: a Sync stream's handler
// goroutine lives as long as its session and mostly waits, 2.4 KB deep in
// net/http, Connect and the interceptor. A goroutine starts with a 2 KB
// stack and doubles it when a call goes deeper; the runtime halves a
// waiting goroutine's stack only while it uses less than a quarter of it.
// One read of the store or one Connect receive on the handler's goroutine
// takes it past 4 KB, to 8 KB for good. So the handler waits, and
// everything else it does (authenticate, read the hello, open the session,
// read and answer each message) runs here, on a goroutine whose stack has
// grown already: 4 KB less per idle device, for two goroutine switches per
// message. The sessions' pumps run here too, each kick one hand-off (see
// pumper). An ack's
// commit is waited for on the handler's goroutine, not here: the acks of
// thousands of devices come together, and each call held for a commit
// starts another goroutine. A push's call still waits for its commit,
// whose results it sends on.
//
// One pool serves every Server in the process: its goroutines are a
// process's resource, like the runtime's, and never hold a server's state
// between calls.
var deep = &callPool{maxIdle: maxIdleCallers, idleFor: idleCallerTimeout}

// maxIdleCallers bounds the pool's goroutines waiting for a call. One
// waiting costs 2-3 KB: the collector halves its stack, which it barely
// uses then. A busy server has a call per push waiting for its commit,
// and a fan-out to thousands of devices kicks their sessions' pumps at
// once; up to this many finish together and wait for the next without the
// next starting goroutines whose stacks grow by copying (at 256, starting
// and growing them was 13% of the server's CPU in fan-out to 10,000
// devices).
const maxIdleCallers = 4096

// idleCallerTimeout is how long a goroutine of the pool waits for a call
// before it ends: the goroutines a burst started end once bursts stop
// coming, while a server's regular bursts (a message a second to a large
// conversation) find them waiting.
const idleCallerTimeout = 10 * time.Second

// callPool runs calls on goroutines it keeps. It is safe for concurrent
// use.
type callPool struct {
	maxIdle int
	idleFor time.Duration
	now     func() time.Duration // a monotonic clock; nil: since the process started

	mu      sync.Mutex
	idle    []idler // the goroutines waiting for a call, the last to finish last
	started int     // goroutines, for tests
}

// idler is a goroutine of the pool waiting for a call.
type idler struct {
	inbox chan call     // closed to end it
	since time.Duration // when it began to wait
}

// processStart is the origin of the pool's default clock: its readings
// are monotonic.
var processStart = time.Now()

func (p *callPool) clock() time.Duration {
	if p.now != nil {
		return p.now()
	}
	return time.Since(processStart)
}

type call struct {
	f    func()
	done chan<- any // gets nil, or what the call panicked with; nil for start's calls
}

// run calls f on one of the pool's goroutines and returns when f has. A
// panic in f panics run's caller with a value that holds f's stack.
func (p *callPool) run(f func()) {
	done := replies.Get().(chan any)
	p.hand(call{f, done})
	r := <-done
	replies.Put(done) // empty, and no worker holds it any more
	if r != nil {
		panic(r)
	}
}

// start calls f on one of the pool's goroutines and returns at once. A
// panic in f is not recovered: f recovers what it can handle.
func (p *callPool) start(f func()) {
	p.hand(call{f: f})
}

// hand gives c to the goroutine that waited last (its stack is grown), or
// to a new one.
func (p *callPool) hand(c call) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		inbox := p.idle[n-1].inbox
		p.idle[n-1] = idler{}
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		inbox <- c
		return
	}
	p.started++
	p.mu.Unlock()
	go p.work(c)
}

// replies holds the channels on which pooled calls report their end: a
// Sync session's receive loop would otherwise hold one for its life.
var replies = sync.Pool{New: func() any { return make(chan any, 1) }}

func (p *callPool) work(c call) {
	inbox := make(chan call, 1)
	for p.call(c, inbox) {
		var ok bool
		if c, ok = <-inbox; !ok {
			return // it waited idleFor
		}
	}
}

// call calls c.f and tells c.done how it ended: nil, or a panic, which
// call recovers. Before it does, it puts the goroutine among the idle
// when there is room, so that the caller's next run finds it; it reports
// whether it did. A runtime.Goexit (a test's t.FailNow in a hook) ends
// the goroutine once the caller has been told.
func (p *callPool) call(c call, inbox chan call) (waits bool) {
	returned := false
	defer func() {
		if returned {
			return
		}
		if c.done == nil { // start's: a panic goes on, a runtime.Goexit ends the goroutine
			return
		}
		v := recover()
		if v == nil {
			c.done <- &callPanic{value: "runtime.Goexit in a pooled call"}
			return
		}
		waits = p.wait(inbox)
		c.done <- &callPanic{value: v, stack: debug.Stack()}
	}()
	c.f()
	returned = true
	waits = p.wait(inbox)
	if c.done != nil {
		c.done <- nil
	}
	return waits
}

// wait puts inbox among the idle, unless there are maxIdle, and reports
// whether it did. It ends the goroutines that have waited idleFor: the
// first in the list waited longest.
func (p *callPool) wait(inbox chan call) bool {
	now := p.clock()
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.idle) > 0 && now-p.idle[0].since >= p.idleFor {
		close(p.idle[0].inbox)
		p.idle[0] = idler{}
		p.idle = p.idle[1:]
	}
	if len(p.idle) >= p.maxIdle {
		return false
	}
	p.idle = append(p.idle, idler{inbox, now})
	return true
}

// callPanic is a panic that ended a pooled call.
type callPanic struct {
	value any
	stack []byte
}

func (p *callPanic) String() string {
	return fmt.Sprintf("%v [in a pooled call:]\n%s", p.value, p.stack)
}
