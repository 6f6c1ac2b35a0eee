package timers_test

import (
	"slices"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/internal/timers"
)

// TestScheduleFiresInOrder: deadlines fire once their time passes, in
// time order, the ones passed together at once; moving one moves when it
// fires; a stopped one never fires, nor does arming it again; the clock's
// timer is set for the first deadline.
func TestScheduleFiresInOrder(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	fake := clock.NewFake(start)
	s := &timers.Schedule{Clock: fake}
	var fired []string
	ds := map[string]*timers.Deadline{}
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		ds[name] = &timers.Deadline{Fire: func() { fired = append(fired, name) }}
	}
	at := func(d time.Duration) time.Time { return start.Add(d) }
	s.Arm(ds["c"], at(3*time.Second))
	s.Arm(ds["a"], at(1*time.Second))
	s.Arm(ds["b"], at(2*time.Second))
	s.Arm(ds["d"], at(2*time.Second))
	s.Arm(ds["e"], at(5*time.Second))
	s.Arm(ds["d"], at(4*time.Second)) // moved later
	s.Stop(ds["c"])
	s.Arm(ds["c"], at(time.Second)) // stopped: stays so
	if next, ok := fake.Next(); !ok || !next.Equal(start.Add(time.Second)) {
		t.Fatalf("the clock's timer is set for %v, %v; want the first deadline, 1s in", next.Sub(start), ok)
	}
	check := func(when string, want ...string) {
		t.Helper()
		if !slices.Equal(fired, want) {
			t.Fatalf("%s: fired %q, want %q", when, fired, want)
		}
	}
	fake.Advance(999 * time.Millisecond)
	check("before the first deadline")
	fake.Advance(time.Millisecond)
	check("at 1s", "a")
	fake.Advance(3 * time.Second) // past b (2s) and d (4s)
	check("at 4s", "a", "b", "d")
	if next, ok := fake.Next(); !ok || !next.Equal(start.Add(5*time.Second)) {
		t.Fatalf("the clock's timer is set for %v, %v; want e's, 5s in", next.Sub(start), ok)
	}
	s.Arm(ds["a"], at(4500*time.Millisecond)) // again, after it fired
	fake.Advance(2 * time.Second)
	check("at 6s", "a", "b", "d", "a", "e")
	if s.Len() != 0 || fake.Pending() != 0 {
		t.Fatalf("%d deadlines and %d clock timers left", s.Len(), fake.Pending())
	}
}

// TestScheduleRealClock: on the system clock, deadlines armed from many
// goroutines at once each fire once (run with -race).
func TestScheduleRealClock(t *testing.T) {
	s := &timers.Schedule{Clock: clock.Real{}}
	const n = 64
	fired := make(chan int, n)
	ds := make([]timers.Deadline, n)
	done := make(chan struct{})
	for i := range ds {
		ds[i].Fire = func() { fired <- i }
		go func() {
			s.Arm(&ds[i], time.Now().Add(time.Duration(i%8)*time.Millisecond))
			done <- struct{}{}
		}()
	}
	for range n {
		<-done
	}
	seen := map[int]bool{}
	for range n {
		select {
		case i := <-fired:
			if seen[i] {
				t.Fatalf("deadline %d fired twice", i)
			}
			seen[i] = true
		case <-time.After(time.Minute): // a guard, not a wait
			t.Fatalf("%d of %d deadlines fired", len(seen), n)
		}
	}
}

// onlyTimers hides Fake's AfterFunc, as a Clock of somebody else's would
// (clientsdk.Clock lets one be written outside the module, and
// server.Options.Clock takes it): clock.AfterFunc then falls back to a
// waiting goroutine.
type onlyTimers struct{ *clock.Fake }

func (onlyTimers) AfterFunc() {} // not clock.AfterFuncer's method

// TestScheduleForeignClockAfterEmptying: on a Clock that is no
// clock.AfterFuncer, a deadline armed after the schedule emptied (its
// last deadline stopped, and with it the timer) still fires: the fallback
// timer's Stop once was for good.
func TestScheduleForeignClockAfterEmptying(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	fake := clock.NewFake(start)
	s := &timers.Schedule{Clock: onlyTimers{fake}}
	first := &timers.Deadline{Fire: func() {}}
	s.Arm(first, start.Add(time.Second))
	s.Stop(first) // the schedule empties: a hello that came in time
	fired := make(chan struct{}, 1)
	second := &timers.Deadline{Fire: func() { fired <- struct{}{} }}
	armed := fake.Armed()
	s.Arm(second, start.Add(time.Second))
	select {
	case <-armed:
	case <-time.After(5 * time.Second): // a guard, not a wait
		t.Fatal("arming a deadline after the schedule emptied set no timer on the clock")
	}
	fake.Advance(time.Second)
	select {
	case <-fired:
	case <-time.After(5 * time.Second): // a guard, not a wait
		t.Fatal("the deadline never fired")
	}
}
