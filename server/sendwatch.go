package server

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

// sendWatches reset the sync streams on which one write (of at most
// watchedPiece bytes), or one flush, has taken longer than
// Options.SendTimeout.
//
// A write blocks while the client's flow-control window is full: a client
// that stops reading its stream, or whose connection stops moving (a
// phone that vanished without closing it), would otherwise hold the
// session's sender, and through it the session's slot, for as long as the
// connection lasts; Go's HTTP/2 server answers the client's pings all the
// while. A reset stream's blocked write returns an error, the session
// ends, and its handler returns.
//
// A write only stamps its stream's watch with the current tick, and clears
// it when done: two atomic stores. A sweep, every quarter of the timeout
// while streams are open, resets the streams whose write began more than
// sweepsPerTimeout ticks ago, so a stalled stream is reset between one and
// one and a quarter timeouts after its write began. A timer per write
// (Reset and Stop around each) cost 3% of the server's CPU in fan-out to
// 1,000 devices: thousands of timers in the runtime's heaps.
type sendWatches struct {
	clock    clock.Clock
	timeout  time.Duration
	interval time.Duration
	tick     atomic.Uint64 // sweeps so far, from 1: a stamp of 0 means no write

	mu    sync.Mutex
	open  map[*sendWatch]struct{}
	timer clock.Timer // the next sweep, armed while a stream is open
	armed bool

	testBegin atomic.Pointer[func()] // tests: runs as a write begins
	testClose atomic.Pointer[func()] // tests: runs as a stream stops being watched
}

const sweepsPerTimeout = 4

// sendWatchesFor returns the watches of a server with opts; nil without a
// send timeout.
func sendWatchesFor(opts Options) *sendWatches {
	if opts.SendTimeout <= 0 {
		return nil
	}
	ws := &sendWatches{clock: opts.Clock, timeout: opts.SendTimeout, interval: opts.SendTimeout / sweepsPerTimeout, open: map[*sendWatch]struct{}{}}
	ws.tick.Store(1)
	return ws
}

// sendWatch is one stream's. begin and end are called by the one goroutine
// that sends on the stream at a time (flushGate), and close after its last
// send.
type sendWatch struct {
	ws    *sendWatches
	since atomic.Uint64 // the tick the write under way began at; 0: none
	reset func()        // resets the stream, or logs why it cannot

	mu     sync.Mutex // orders reset and close
	closed bool       // the handler returned: the ResponseWriter is gone
	fired  bool       // reset already (or found it cannot be)
}

// add watches the stream of w, which s serves for r.
func (ws *sendWatches) add(s *Server, w http.ResponseWriter, r *http.Request) *sendWatch {
	sw := &sendWatch{ws: ws}
	rc := http.NewResponseController(w)
	sw.reset = func() {
		// A write deadline in the past resets an HTTP/2 stream (over
		// HTTP/1.1, it fails the connection's writes). A writer that
		// cannot take one never will: it is not tried again.
		if err := rc.SetWriteDeadline(time.Unix(1, 0)); err != nil {
			s.log.Warn("sync: cannot reset a stream whose write made no progress for the send timeout", "err", err,
				"send_timeout", ws.timeout, "procedure", r.URL.Path, "remote", r.RemoteAddr)
			return
		}
		s.stats.sendTimeouts.Add(1)
		s.log.Warn("sync: reset a stream whose write made no progress for the send timeout: its client stopped reading, or its connection stopped moving",
			"send_timeout", ws.timeout, "procedure", r.URL.Path, "remote", r.RemoteAddr)
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.open[sw] = struct{}{}
	if !ws.armed {
		ws.armed = true
		if ws.timer == nil {
			ws.timer = clock.AfterFunc(ws.clock, ws.interval, ws.sweep)
		} else {
			ws.timer.Reset(ws.interval)
		}
	}
	return sw
}

// sweep resets the streams whose write has taken too long.
func (ws *sendWatches) sweep() {
	now := ws.tick.Add(1)
	var stale []*sendWatch
	ws.mu.Lock()
	for sw := range ws.open {
		if since := sw.since.Load(); since != 0 && now-since > sweepsPerTimeout {
			stale = append(stale, sw)
		}
	}
	if ws.armed = len(ws.open) > 0; ws.armed {
		ws.timer.Reset(ws.interval)
	}
	ws.mu.Unlock()
	for _, sw := range stale {
		sw.fire()
	}
}

func (sw *sendWatch) fire() {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if !sw.closed && !sw.fired {
		sw.fired = true
		sw.reset()
	}
}

// begin stamps a write. A nil watch does nothing.
func (sw *sendWatch) begin() {
	if sw == nil {
		return
	}
	sw.since.Store(sw.ws.tick.Load())
	if f := sw.ws.testBegin.Load(); f != nil {
		(*f)()
	}
}

// end clears the stamp after the write.
func (sw *sendWatch) end() {
	if sw != nil {
		sw.since.Store(0)
	}
}

// close stops watching, as the stream's handler returns: the
// ResponseWriter must not be used after that.
func (sw *sendWatch) close() {
	sw.mu.Lock()
	sw.closed = true
	sw.mu.Unlock()
	ws := sw.ws
	ws.mu.Lock()
	delete(ws.open, sw)
	if len(ws.open) == 0 && ws.armed {
		ws.armed = false
		ws.timer.Stop()
	}
	ws.mu.Unlock()
	if f := ws.testClose.Load(); f != nil {
		(*f)()
	}
}
