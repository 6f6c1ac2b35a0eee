// Package clock abstracts time for code with timers (heartbeats, backoff),
// so tests advance time instead of sleeping.
package clock

import (
	"slices"
	"sync"
	"time"
)

// Clock tells the time and makes timers. Implementations are safe for
// concurrent use.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// AfterFuncer is a Clock that also makes timers calling a function when
// they fire. Such a timer waits without a goroutine, which matters for
// timers that every idle session keeps. Real and Fake are AfterFuncers.
type AfterFuncer interface {
	// AfterFunc returns a timer that calls f when it fires; its C is nil.
	AfterFunc(d time.Duration, f func()) Timer
}

// AfterFunc returns a timer of c's that calls f, on a goroutine of its
// own, when it fires. A Clock that is no AfterFuncer gets, while the timer
// is armed, a goroutine that waits on one of its timers.
func AfterFunc(c Clock, d time.Duration, f func()) Timer {
	if a, ok := c.(AfterFuncer); ok {
		return a.AfterFunc(d, f)
	}
	w := &waitTimer{c: c, f: f}
	w.Reset(d)
	return w
}

// waitTimer is AfterFunc for a Clock that is no AfterFuncer. Like a
// *time.Timer made by time.AfterFunc, it can be Reset after Stop or after
// it fired: each arming has a waiter of its own, which calls f if it is
// still the armed one when its timer fires.
type waitTimer struct {
	c Clock
	f func()

	mu    sync.Mutex
	armed *waiter // nil while disarmed
}

type waiter struct {
	cancel chan struct{} // closed to end the waiter
	done   chan struct{} // closed when it has
}

func (w *waitTimer) C() <-chan time.Time { return nil }

func (w *waitTimer) Reset(d time.Duration) {
	a := &waiter{cancel: make(chan struct{}), done: make(chan struct{})}
	w.mu.Lock()
	old := w.armed
	w.armed = a
	w.mu.Unlock()
	old.end()
	t := w.c.NewTimer(d)
	go func() {
		defer close(a.done)
		select {
		case <-t.C():
			w.mu.Lock()
			fire := w.armed == a
			if fire {
				w.armed = nil
			}
			w.mu.Unlock()
			if fire {
				w.f()
			}
		case <-a.cancel:
			t.Stop()
		}
	}()
}

func (w *waitTimer) Stop() {
	w.mu.Lock()
	old := w.armed
	w.armed = nil
	w.mu.Unlock()
	old.end()
}

// end ends the waiter and waits until it has, so that a stopped timer
// leaves no goroutine behind (but for an f already called). Nil: nothing.
func (a *waiter) end() {
	if a != nil {
		close(a.cancel)
		<-a.done
	}
}

// Timer is the part of *time.Timer that Ferry uses.
type Timer interface {
	C() <-chan time.Time
	// Reset re-arms the timer to fire d from now; a pending fire is dropped.
	Reset(d time.Duration)
	Stop()
}

// Real is the system clock.
type Real struct{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// NewTimer returns a timer firing after d.
func (Real) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

// AfterFunc returns time.AfterFunc(d, f).
func (Real) AfterFunc(d time.Duration, f func()) Timer { return realTimer{time.AfterFunc(d, f)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time   { return r.t.C }
func (r realTimer) Reset(d time.Duration) { r.t.Reset(d) } // Go 1.23+: Reset drains
func (r realTimer) Stop()                 { r.t.Stop() }

// Fake is a clock that moves only when told to. The zero value is not
// usable; call NewFake.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	added  chan struct{} // closed and replaced when a timer is armed
}

// NewFake returns a fake clock at start.
func NewFake(start time.Time) *Fake { return &Fake{now: start, added: make(chan struct{})} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer that fires when the clock passes now + d.
func (f *Fake) NewTimer(d time.Duration) Timer {
	t := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	t.Reset(d)
	return t
}

// AfterFunc returns a timer that calls f when the clock passes now + d.
// Advance calls it, after moving the clock, on Advance's goroutine.
func (f *Fake) AfterFunc(d time.Duration, fn func()) Timer {
	t := &fakeTimer{f: f, fn: fn}
	t.Reset(d)
	return t
}

// Advance moves the clock forward by d, firing the timers it passes.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	now := f.now
	var due []*fakeTimer
	f.timers = slices.DeleteFunc(f.timers, func(t *fakeTimer) bool {
		if !t.when.After(now) {
			due = append(due, t)
			return true
		}
		return false
	})
	f.mu.Unlock()
	for _, t := range due {
		if t.fn != nil {
			t.fn()
			continue
		}
		select {
		case t.c <- now:
		default:
		}
	}
}

// Armed returns a channel closed the next time a timer is armed: tests wait
// on it to know that the code under test is waiting for time to pass.
func (f *Fake) Armed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.added
}

// Next returns when the earliest armed timer fires, if any is armed: tests
// read it to check which delay the code under test chose.
func (f *Fake) Next() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next time.Time
	for _, t := range f.timers {
		if next.IsZero() || t.when.Before(next) {
			next = t.when
		}
	}
	return next, !next.IsZero()
}

// Pending is the number of armed timers.
func (f *Fake) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

type fakeTimer struct {
	f    *Fake
	c    chan time.Time // nil for AfterFunc timers
	fn   func()
	when time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Reset(d time.Duration) {
	f := t.f
	f.mu.Lock()
	f.timers = slices.DeleteFunc(f.timers, func(x *fakeTimer) bool { return x == t })
	if t.c != nil {
		select {
		case <-t.c:
		default:
		}
	}
	t.when = f.now.Add(d)
	f.timers = append(f.timers, t)
	close(f.added)
	f.added = make(chan struct{})
	f.mu.Unlock()
}

func (t *fakeTimer) Stop() {
	f := t.f
	f.mu.Lock()
	f.timers = slices.DeleteFunc(f.timers, func(x *fakeTimer) bool { return x == t })
	f.mu.Unlock()
}
