// Package timers runs many deadlines on one timer. A time.Timer is some
// 250 bytes with the runtime's share; a server that kept one per idle
// connection or session for its heartbeats and timeouts held that much
// per idle device. A Deadline is a few words inside what it times.
package timers

import (
	"container/heap"
	"sync"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

// Schedule runs Deadlines on one timer of its Clock. Its zero value is
// not usable: set Clock. Arm and Stop take a mutex, so deadlines suit
// what is armed a few times per timeout, not per message: its users note
// their activity's time and arm again when the deadline passes.
type Schedule struct {
	Clock clock.Clock

	mu    sync.Mutex
	base  time.Time // the clock's time at the first Arm: deadlines count from it
	heap  deadlines
	timer clock.Timer // fires at the first deadline; nil when none is armed
}

// A Deadline is an entry of a Schedule: Fire runs when it passes. Set Fire
// before the first Arm. Fire runs on the schedule's timer's goroutine,
// with the other deadlines that passed, one after another: it must not
// block.
type Deadline struct {
	Fire func()

	at      time.Duration // since the schedule's base
	pos     int           // index in the heap + 1; 0 when not in it
	stopped bool          // for good: Arm does nothing
}

// Arm schedules d to fire at at, in place of when it was to fire. It does
// nothing once d is stopped.
func (s *Schedule) Arm(d *Deadline, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.stopped {
		return
	}
	if s.base.IsZero() {
		s.base = s.Clock.Now()
	}
	// Since a time of the same clock: the monotonic clock's, when both
	// times have its reading (the system clock's do), so that a step of
	// the wall clock moves no deadline.
	d.at = at.Sub(s.base)
	if d.pos > 0 {
		heap.Fix(&s.heap, d.pos-1)
	} else {
		heap.Push(&s.heap, d)
	}
	s.resetLocked()
}

// Stop unschedules d for good. d's Fire may still run, once, if the
// schedule's timer took it before Stop.
func (s *Schedule) Stop(d *Deadline) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.stopped = true
	if d.pos > 0 {
		heap.Remove(&s.heap, d.pos-1)
		s.resetLocked()
	}
}

// resetLocked sets the timer for the first deadline, or stops it when
// there is none. The caller holds mu. The timer is set again on every
// change, even when the first deadline stays: a fake clock's Armed tells
// tests that a deadline was.
func (s *Schedule) resetLocked() {
	if len(s.heap) == 0 {
		if s.timer != nil {
			s.timer.Stop()
		}
		return
	}
	d := max(s.heap[0].at-s.Clock.Now().Sub(s.base), 0)
	if s.timer == nil {
		s.timer = clock.AfterFunc(s.Clock, d, s.fireDue)
		return
	}
	s.timer.Reset(d)
}

// fireDue fires the deadlines that have passed, after setting the timer
// for the next.
func (s *Schedule) fireDue() {
	s.mu.Lock()
	now := s.Clock.Now().Sub(s.base)
	var due []*Deadline
	for len(s.heap) > 0 && s.heap[0].at <= now {
		due = append(due, heap.Pop(&s.heap).(*Deadline))
	}
	if len(s.heap) > 0 {
		s.resetLocked()
	}
	s.mu.Unlock()
	for _, d := range due {
		d.Fire()
	}
}

// Len is the number of deadlines armed.
func (s *Schedule) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.heap)
}

// deadlines is a min-heap of deadlines by time (container/heap).
type deadlines []*Deadline

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].at < h[j].at }
func (h deadlines) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].pos, h[j].pos = i+1, j+1
}
func (h *deadlines) Push(x any) {
	d := x.(*Deadline)
	*h = append(*h, d)
	d.pos = len(*h)
}
func (h *deadlines) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	d.pos = 0
	return d
}
