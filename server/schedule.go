package server

import (
	"container/heap"
	"sync"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

// schedule runs the sessions' timers on one timer of the server's clock.
// A timer of each session's own was some 250 bytes of every idle device;
// a deadline is a few words in the session. Sessions arm theirs when
// they start and when it passes (sends and messages only note their time:
// see loop.tick), so the heap changes a few times per heartbeat interval
// and session, under a mutex no hot path takes.
type schedule struct {
	clock clock.Clock
	mu    sync.Mutex
	heap  deadlines
	timer clock.Timer // fires at the first deadline; nil until one is armed
}

// deadline is an entry of a schedule. Its fire runs on the schedule's
// timer's goroutine, with the schedule's other due deadlines', one after
// another: it must not block.
type deadline struct {
	fire    func()
	at      int64 // the clock's Unix nanoseconds
	index   int   // in the heap; -1 when not in it
	stopped bool  // for good: arm does nothing
}

// arm schedules d to fire at at, in the clock's Unix nanoseconds, in
// place of when it was to fire. It does nothing once d is stopped.
func (s *schedule) arm(d *deadline, at int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d.stopped {
		return
	}
	d.at = at
	if d.index >= 0 {
		heap.Fix(&s.heap, d.index)
	} else {
		heap.Push(&s.heap, d)
	}
	s.resetLocked()
}

// stop unschedules d for good. d's fire may still run, once, if the
// schedule's timer took it before stop.
func (s *schedule) stop(d *deadline) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d.stopped = true
	if d.index >= 0 {
		heap.Remove(&s.heap, d.index)
		s.resetLocked()
	}
}

// resetLocked sets the timer for the first deadline. The caller holds
// mu. The timer is set again on every change, even when the first
// deadline stays: a fake clock's Armed tells tests that a deadline was.
func (s *schedule) resetLocked() {
	if len(s.heap) == 0 {
		if s.timer != nil {
			s.timer.Stop()
		}
		return
	}
	d := time.Duration(max(s.heap[0].at-s.clock.Now().UnixNano(), 0))
	if s.timer == nil {
		s.timer = clock.AfterFunc(s.clock, d, s.fireDue)
		return
	}
	s.timer.Reset(d)
}

// fireDue fires the deadlines that have passed, after setting the timer
// for the next.
func (s *schedule) fireDue() {
	s.mu.Lock()
	now := s.clock.Now().UnixNano()
	var due []*deadline
	for len(s.heap) > 0 && s.heap[0].at <= now {
		due = append(due, heap.Pop(&s.heap).(*deadline))
	}
	if len(s.heap) > 0 {
		s.resetLocked()
	}
	s.mu.Unlock()
	for _, d := range due {
		d.fire()
	}
}

// deadlines is a min-heap of deadlines by time (container/heap).
type deadlines []*deadline

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].at < h[j].at }
func (h deadlines) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *deadlines) Push(x any) {
	d := x.(*deadline)
	d.index = len(*h)
	*h = append(*h, d)
}
func (h *deadlines) Pop() any {
	old := *h
	d := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	d.index = -1
	return d
}
