package clientsdk

import (
	"context"
	"sync"
)

// A device has one Sync stream at a time. Two would each push the outbox
// and renumber its ops on their own: one stream's renumbered op met the
// other's copy of it, still under its old dot, and the server refused
// that as an op id conflict, so a delivered message showed failed, and
// twice. Start's loop and SyncOnce take the stream in turn (streamGate).
// A SyncOnce goes first: it ends the loop's session, which holds the
// stream, and the loop connects again once the SyncOnce is done, with no
// backoff. So SyncOnce keeps what it says, a session of its own that
// catches up on everything up to the call, and need not wait for the
// loop's backoff.

// streamGate lets one session at a time hold the device's stream.
type streamGate struct {
	mu      sync.Mutex
	held    bool
	onces   int                // SyncOnce calls waiting for the stream: they go before the loop
	endLoop context.CancelFunc // ends the loop's session that holds the stream; nil otherwise
	freed   chan struct{}      // closed as the stream is let go or a SyncOnce stops waiting; nil while none waits
}

// takeForLoop takes the stream for a session of Start's loop, waiting
// while it is held or a SyncOnce waits for it, until ctx ends. end ends
// the session early, for a SyncOnce.
func (g *streamGate) takeForLoop(ctx context.Context, end context.CancelFunc) error {
	return g.take(ctx, func() bool { return g.onces == 0 }, end)
}

// takeForOnce takes the stream for a SyncOnce's session, ending the loop's
// session that holds it, and waiting until ctx ends.
func (g *streamGate) takeForOnce(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err // and ends no session for nothing
	}
	g.mu.Lock()
	g.onces++
	end := g.endLoop
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		if g.onces--; g.onces == 0 {
			g.wakeLocked() // the loop may take it next
		}
		g.mu.Unlock()
	}()
	if end != nil {
		end()
	}
	return g.take(ctx, func() bool { return true }, nil)
}

// take waits until the stream is free and may (asked under g.mu), then
// takes it, with end to end its session early; or until ctx ends.
func (g *streamGate) take(ctx context.Context, may func() bool, end context.CancelFunc) error {
	for {
		g.mu.Lock()
		if !g.held && may() {
			g.held, g.endLoop = true, end
			g.mu.Unlock()
			return nil
		}
		if g.freed == nil {
			g.freed = make(chan struct{})
		}
		freed := g.freed
		g.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// release lets go of the stream.
func (g *streamGate) release() {
	g.mu.Lock()
	g.held, g.endLoop = false, nil
	g.wakeLocked()
	g.mu.Unlock()
}

func (g *streamGate) wakeLocked() {
	if g.freed != nil {
		close(g.freed)
		g.freed = nil
	}
}
