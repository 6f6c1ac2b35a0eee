package clock

import (
	"sync/atomic"
	"testing"
	"time"
)

// onlyTimers hides Fake's AfterFunc, as a Clock of somebody else's would.
type onlyTimers struct{ *Fake }

func (o onlyTimers) AfterFunc() {} // not AfterFuncer's method

func TestAfterFunc(t *testing.T) {
	for _, tc := range []struct {
		name string
		wrap func(*Fake) Clock
	}{
		{"fake", func(f *Fake) Clock { return f }},
		{"fallback", func(f *Fake) Clock { return onlyTimers{f} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := NewFake(time.Unix(0, 0))
			fired := make(chan struct{}, 4)
			var n atomic.Int32
			armed := f.Armed()
			tm := AfterFunc(tc.wrap(f), time.Second, func() { n.Add(1); fired <- struct{}{} })
			<-armed
			f.Advance(999 * time.Millisecond)
			if n.Load() != 0 || f.Pending() != 1 { // the fallback fires on a goroutine: Pending tells at once
				t.Fatal("fired early")
			}
			f.Advance(time.Millisecond)
			<-fired
			// Reset arms it again; Stop disarms it.
			armed = f.Armed()
			tm.Reset(time.Minute)
			<-armed
			f.Advance(time.Minute)
			<-fired
			armed = f.Armed()
			tm.Reset(time.Minute)
			<-armed
			tm.Stop()
			if f.Pending() != 0 {
				t.Fatalf("%d timers armed after Stop", f.Pending())
			}
			f.Advance(time.Hour)
			tm.Stop() // twice is fine
			if got := n.Load(); got != 2 {
				t.Fatalf("fired %d times, want 2", got)
			}
			// A stopped timer arms again, as a *time.Timer does: the
			// fallback's used to stay stopped, and every Reset after a
			// Stop was lost.
			armed = f.Armed()
			tm.Reset(time.Minute)
			select {
			case <-armed:
			case <-time.After(time.Minute): // a guard, not a wait
				t.Fatal("Reset after Stop armed no timer")
			}
			f.Advance(time.Minute)
			<-fired
			if got := n.Load(); got != 3 {
				t.Fatalf("fired %d times, want 3", got)
			}
		})
	}
}
