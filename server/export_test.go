package server

import "sync/atomic"

// MaxPushWait is the longest a push, or an ack, waits for the push limit.
const MaxPushWait = maxPushWait

// Pumps counts the Sync sessions' pumps running (pumper.run).
func Pumps(s *Server) int64 { return s.pumps.Load() }

// PumpStarts counts the pumps started.
func PumpStarts(s *Server) int64 { return s.pumpStarts.Load() }

// OnPumpEnd makes f run as each pump of s ends, after Pumps counts it
// out.
func OnPumpEnd(s *Server, f func()) { storeHook(&s.testPumpEnd, f) }

// HTTPConns counts the plain connections s holds: those still being read
// for their protocol, and those served as HTTP/2.
func HTTPConns(s *HTTPServer) (sniffing, h2 int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, isH2 := range s.conns {
		if isH2 {
			h2++
		} else {
			sniffing++
		}
	}
	return sniffing, h2
}

// WritesUnderWay counts the sync streams with a watched write under way.
func WritesUnderWay(s *Server) int {
	ws := s.watches
	ws.mu.Lock()
	defer ws.mu.Unlock()
	n := 0
	for sw := range ws.open {
		if sw.since.Load() != 0 {
			n++
		}
	}
	return n
}

// OnWatchClose makes f run as each sync stream stops being watched, its
// handler returning.
func OnWatchClose(s *Server, f func()) { storeHook(&s.watches.testClose, f) }

// OnWriteBegin makes f run as each watched write begins.
func OnWriteBegin(s *Server, f func()) { storeHook(&s.watches.testBegin, f) }

// OnThrottle makes f run when a push starts waiting for the push limit,
// its timer armed.
func OnThrottle(s *Server, f func()) { storeHook(&s.testThrottled, f) }

// OnPushed makes f run as each push on a Sync stream has been appended,
// before its result is queued: f holds the result back while it runs.
func OnPushed(s *Server, f func()) { storeHook(&s.testPushed, f) }

// OnHelloWait makes f run on a Sync handler's goroutine as it starts to
// wait for the hello.
func OnHelloWait(s *Server, f func()) { storeHook(&s.testHelloWait, f) }

// OnAwaitResult makes f run as a Sync session's sender stops to wait for
// a push's result before it sends another round.
func OnAwaitResult(s *Server, f func()) { storeHook(&s.testAwaitResult, f) }

// OnOpen makes f run as a Sync session's sender starts to open the
// engine's session (and check the hello's epoch), before it does.
func OnOpen(s *Server, f func()) { storeHook(&s.testOpen, f) }

// OnAwaitOpen makes f run as a Sync session's receiver starts to wait for
// the session to open before it reads the client's messages.
func OnAwaitOpen(s *Server, f func()) { storeHook(&s.testAwaitOpen, f) }

// storeHook sets a test hook, as every On function here does; nil stops
// it.
func storeHook(h *atomic.Pointer[func()], f func()) {
	if f == nil {
		h.Store(nil)
		return
	}
	h.Store(&f)
}

// ErrXNet is nil when H2CXNet is served: built with Go 1.26 or -tags
// http2legacy.
var ErrXNet = errXNet
