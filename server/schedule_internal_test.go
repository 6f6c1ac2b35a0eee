package server

import (
	"slices"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

// TestScheduleFiresInOrder: deadlines fire once their time passes, in
// time order, the ones passed together at once; moving one moves when it
// fires; a stopped one never fires, nor does arming it again; the clock's
// timer is set for the first deadline.
func TestScheduleFiresInOrder(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	fake := clock.NewFake(start)
	s := &schedule{clock: fake}
	var fired []string
	ds := map[string]*deadline{}
	for _, name := range []string{"a", "b", "c", "d", "e"} {
		ds[name] = &deadline{fire: func() { fired = append(fired, name) }, index: -1}
	}
	at := func(d time.Duration) int64 { return start.Add(d).UnixNano() }
	s.arm(ds["c"], at(3*time.Second))
	s.arm(ds["a"], at(1*time.Second))
	s.arm(ds["b"], at(2*time.Second))
	s.arm(ds["d"], at(2*time.Second))
	s.arm(ds["e"], at(5*time.Second))
	s.arm(ds["d"], at(4*time.Second)) // moved later
	s.stop(ds["c"])
	s.arm(ds["c"], at(time.Second)) // stopped: stays so
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
	s.arm(ds["a"], at(4500*time.Millisecond)) // again, after it fired
	fake.Advance(2 * time.Second)
	check("at 6s", "a", "b", "d", "a", "e")
	if len(s.heap) != 0 || fake.Pending() != 0 {
		t.Fatalf("%d deadlines and %d clock timers left", len(s.heap), fake.Pending())
	}
}
