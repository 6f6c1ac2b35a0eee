package clientsdk

import (
	"context"
	"sync"
)

// A device has one Sync stream at a time. Two would each push the outbox
// and renumber its ops on their own: one stream's renumbered op met the
// other's copy of it, still under its old dot, and the server refused
// that as an op id conflict, so a delivered message showed failed, and
// twice. Start's loop and SyncOnce take the stream (streamGate); a
// SyncOnce while the loop runs rides the loop's session instead
// (settled).

// streamGate lets one session at a time hold the device's stream.
type streamGate struct {
	mu    sync.Mutex
	held  bool
	freed chan struct{} // closed as the holder lets go; nil while none waits
}

// take takes the stream, waiting for it until ctx ends, or, when
// unless is set, until unless reports true (it is asked at each wake).
func (g *streamGate) take(ctx context.Context, unless func() bool) (took bool, err error) {
	for {
		if unless != nil && unless() {
			return false, nil
		}
		g.mu.Lock()
		if !g.held {
			g.held = true
			g.mu.Unlock()
			return true, nil
		}
		if g.freed == nil {
			g.freed = make(chan struct{})
		}
		freed := g.freed
		g.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// release lets go of the stream.
func (g *streamGate) release() {
	g.mu.Lock()
	g.held = false
	g.wakeLocked()
	g.mu.Unlock()
}

// wake has the takes waiting ask unless again: Start's loop began.
func (g *streamGate) wake() {
	g.mu.Lock()
	g.wakeLocked()
	g.mu.Unlock()
}

func (g *streamGate) wakeLocked() {
	if g.freed != nil {
		close(g.freed)
		g.freed = nil
	}
}

// settled tells SyncOnce calls riding Start's loop when its session is
// caught up with nothing of the outbox unanswered (session.idle).
type settled struct {
	mu      sync.Mutex
	now     bool          // as of the loop session's last message
	changed chan struct{} // closed as now becomes true; nil while none waits
}

// set records whether the loop's session is settled; its receiver calls it
// after each message, and false as the session ends.
func (st *settled) set(now bool) {
	st.mu.Lock()
	st.now = now
	if now && st.changed != nil {
		close(st.changed)
		st.changed = nil
	}
	st.mu.Unlock()
}

// get reports whether the loop's session is settled, and a channel closed
// when it next says it is.
func (st *settled) get() (bool, <-chan struct{}) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.changed == nil {
		st.changed = make(chan struct{})
	}
	return st.now, st.changed
}

// rideLoop waits, when Start's loop runs, for its session to be settled
// with the outbox empty, and reports whether the loop ran. It stops
// waiting as the loop stops (ran is false then: the caller syncs on its
// own) or ctx ends.
func (d *Device) rideLoop(ctx context.Context) (ran bool, err error) {
	d.runMu.Lock()
	done := d.done
	d.runMu.Unlock()
	if done == nil {
		return false, nil
	}
	for {
		now, changed := d.settled.get()
		if now {
			d.mu.Lock()
			empty := len(d.pending) == 0
			d.mu.Unlock()
			if empty { // ops queued after the session's last message are not answered yet
				return true, nil
			}
		}
		select {
		case <-changed:
		case <-done:
			return false, nil
		case <-ctx.Done():
			return true, ctx.Err()
		}
	}
}

// looping reports whether Start's loop runs.
func (d *Device) looping() bool {
	d.runMu.Lock()
	defer d.runMu.Unlock()
	return d.done != nil
}
