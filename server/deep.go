package server

import (
	"fmt"
	"runtime"
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
// message. The sessions' pumps run here too (see pumper and callPool). An
// ack's commit is waited for on the handler's goroutine, not here: the
// acks of thousands of devices come together, and each call held for a
// commit starts another goroutine. A push's call still waits for its commit,
// whose results it sends on.
//
// One pool serves every Server in the process: its goroutines are a
// process's resource, like the runtime's, and never hold a server's state
// between calls.
var deep = &callPool{maxIdle: maxIdleCallers, minPumps: max(8, 4*runtime.GOMAXPROCS(0)), stallAfter: callStall}

// maxIdleCallers bounds the pool's goroutines waiting for a call. One
// waiting costs 2-3 KB: the collector halves its stack, which it barely
// uses then. A busy server has a call per push waiting for its commit; up
// to this many finish together and wait for the next without the next
// starting goroutines whose stacks grow by copying.
const maxIdleCallers = 256

// callStall is how often the pool looks at start's queue while calls wait
// there. If none left it meanwhile, it starts a goroutine for each: the
// goroutines running started calls may all be waiting on writes to clients
// that stopped reading. If some did, it starts one more, in case some are.
// At a millisecond, the operating system's scheduling of a loaded machine
// (the bench's clients share its cores) passed for a stall.
const callStall = 5 * time.Millisecond

// callPool runs calls on goroutines it keeps.
//
// run's calls go at once, to the goroutine that waited last or to a new
// one. start's calls (the sessions' pumps) do too while fewer than
// minPumps goroutines run started calls; past that they queue, and every
// goroutine takes the queue's first call before it waits for another. A
// fan-out to thousands of devices kicks their sessions' pumps at once:
// with a goroutine for each, that was thousands of goroutines at a time on
// two cores, each started and its stack grown by copying (newproc,
// newstack and goexit were 13.5% of the server's CPU in fan-out to 10,000
// devices). A few goroutines drain the queue as fast, with warm stacks. A
// pump only waits on a write to its client, for at most the send timeout:
// while calls wait in the queue, a check every stallAfter starts more
// goroutines (see callStall).
//
// It is safe for concurrent use.
type callPool struct {
	maxIdle    int
	minPumps   int
	stallAfter time.Duration
	afterFunc  func(d time.Duration, f func()) // nil: time.AfterFunc

	mu       sync.Mutex
	idle     []chan call // the inboxes of the goroutines waiting for a call, the last to finish last
	queue    callQueue   // start's calls waiting for a goroutine
	pumps    int         // goroutines running started calls
	taken    uint64      // calls taken from the queue
	watching bool        // a stall check is armed
	started  int         // goroutines, for tests
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

// start calls f on one of the pool's goroutines, now or once one is free,
// and returns at once. A panic in f is not recovered: f recovers what it
// can handle.
func (p *callPool) start(f func()) {
	p.hand(call{f: f})
}

// hand gives c to the goroutine that waited last (its stack is grown), to
// the queue, or to a new goroutine.
func (p *callPool) hand(c call) {
	started := c.done == nil
	p.mu.Lock()
	if started && p.pumps >= p.minPumps {
		p.queue.push(c)
		if !p.watching {
			p.watching = true
			p.watchLocked()
		}
		p.mu.Unlock()
		return
	}
	if started {
		p.pumps++
	}
	if n := len(p.idle); n > 0 {
		inbox := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		inbox <- c
		return
	}
	p.started++
	p.mu.Unlock()
	go p.work(c)
}

// watchLocked arms the queue's check (see callStall).
func (p *callPool) watchLocked() {
	taken := p.taken
	check := func() {
		p.mu.Lock()
		var more []call
		switch {
		case p.queue.len() == 0:
			p.watching = false
		case p.taken == taken: // stuck: a goroutine for each
			more, p.watching = p.queue.takeAll(), false
		default: // moving: one more goroutine, and look again
			more = []call{p.popLocked()}
			p.watchLocked()
		}
		p.pumps += len(more)
		p.started += len(more)
		p.mu.Unlock()
		for _, c := range more {
			go p.work(c)
		}
	}
	if p.afterFunc != nil {
		p.afterFunc(p.stallAfter, check)
	} else {
		time.AfterFunc(p.stallAfter, check)
	}
}

// replies holds the channels on which pooled calls report their end: a
// Sync session's receive loop would otherwise hold one for its life.
var replies = sync.Pool{New: func() any { return make(chan any, 1) }}

func (p *callPool) work(c call) {
	inbox := make(chan call, 1)
	for ok := true; ok; {
		c, ok = p.call(c, inbox)
	}
}

// call calls c.f and tells c.done how it ended: nil, or a panic, which
// call recovers. Before it does, it takes the queue's first call or puts
// the goroutine among the idle, so that the caller's next run finds it.
// It returns the goroutine's next call, waiting for it when idle, and
// false when the goroutine is to end. A runtime.Goexit (a test's
// t.FailNow in a hook) ends the goroutine once the caller has been told.
func (p *callPool) call(c call, inbox chan call) (next call, ok bool) {
	returned := false
	defer func() {
		if returned {
			return
		}
		if c.done == nil { // start's: a panic goes on, a runtime.Goexit ends the goroutine
			p.mu.Lock()
			p.pumps--
			p.mu.Unlock()
			return
		}
		v := recover()
		if v == nil {
			c.done <- &callPanic{value: "runtime.Goexit in a pooled call"}
			return
		}
		next, ok = p.after(c, inbox, &callPanic{value: v, stack: debug.Stack()})
	}()
	c.f()
	returned = true
	return p.after(c, inbox, nil)
}

// after takes the next call of the goroutine that ran c: the queue's
// first, or, once it is among the idle, what comes to its inbox. It
// reports r to c.done first, when c is run's. A goroutine that finds no
// room among the idle ends: ok is false.
func (p *callPool) after(c call, inbox chan call, r *callPanic) (next call, ok bool) {
	queued, waits := p.wait(c, inbox)
	if c.done != nil {
		if r != nil {
			c.done <- r
		} else {
			c.done <- nil // not r: a nil *callPanic is not a nil any
		}
	}
	switch {
	case queued.f != nil:
		return queued, true
	case waits:
		return <-inbox, true
	}
	return call{}, false
}

// popLocked takes the queue's first call, counting it taken.
func (p *callPool) popLocked() call {
	p.taken++
	return p.queue.pop()
}

// callQueue is a queue of calls, oldest first, that reuses its array once
// emptied: taking calls off the front of a slice and appending them at
// its back allocated a new array every time the back reached its end,
// some 30 bytes per delivery in live fan-out.
type callQueue struct {
	calls []call
	head  int // calls[head:] wait
}

func (q *callQueue) len() int { return len(q.calls) - q.head }

func (q *callQueue) push(c call) { q.calls = append(q.calls, c) }

func (q *callQueue) pop() call {
	c := q.calls[q.head]
	q.calls[q.head] = call{} // the array keeps no finished call's closure
	if q.head++; q.head == len(q.calls) {
		q.calls, q.head = q.calls[:0], 0
	}
	return c
}

// takeAll empties the queue and returns its calls.
func (q *callQueue) takeAll() []call {
	all := q.calls[q.head:]
	*q = callQueue{}
	return all
}

// wait takes the queue's first call for the goroutine that ran c, if
// there is one; if not, it puts inbox among the idle, unless there are
// maxIdle, and reports whether it did.
func (p *callPool) wait(c call, inbox chan call) (queued call, waits bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.queue.len() > 0 {
		queued = p.popLocked()
		if c.done != nil {
			p.pumps++ // it ran run's call, and runs a started one now
		}
		return queued, false
	}
	if c.done == nil {
		p.pumps--
	}
	if len(p.idle) >= p.maxIdle {
		return call{}, false
	}
	p.idle = append(p.idle, inbox)
	return call{}, true
}

// callPanic is a panic that ended a pooled call.
type callPanic struct {
	value any
	stack []byte
}

func (p *callPanic) String() string {
	return fmt.Sprintf("%v [in a pooled call:]\n%s", p.value, p.stack)
}
