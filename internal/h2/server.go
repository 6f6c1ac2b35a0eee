// Package h2 is Ferry's HTTP/2 server for connections without TLS (h2c,
// with prior knowledge), the way Ferry's own clients, the Go SDK and the
// bench reach it. It serves an http.Handler, as net/http does, with fewer
// goroutines and less memory per connection than golang.org/x/net/http2:
//
//   - A connection has one goroutine of its own, its reader, which reads
//     and handles every frame (after a request's header block it goes on
//     on a fresh goroutine, whose stack is smaller: see conn.run); a
//     request's handler runs on a goroutine of its own. There is no
//     goroutine in between: a handler writes its frames to the
//     connection itself, holding its write semaphore,
//     so a flushed message costs one system call and no hand-off. x/net
//     hands each write to the connection's serve loop and waits for it:
//     two goroutine switches per message, and a third goroutine per
//     connection whose stack stays.
//   - Buffers are held only while they are used: the response buffer of a
//     stream between a Write and its Flush, the request body's while it
//     holds data, the write batch while it is written, the 1 KiB read
//     buffer while it holds part of a frame: a reader with nothing
//     buffered waits for the socket to have data without one (on Unix;
//     elsewhere it keeps it). An idle connection keeps its HPACK tables
//     and its streams' state.
//
// The reader, the connection's timer and body reads never write to the
// connection: the control frames they must send (PING and SETTINGS ACKs,
// WINDOW_UPDATEs, RST_STREAMs, GOAWAY) are queued, and the next handler
// write carries them, or a short-lived flusher goroutine writes them. A
// client that stops reading holds only its writers, and one that floods
// control frames is cut off when the queue passes its bound.
//
// It implements what RFC 9113 asks of a server, less what Ferry does not
// use: server push, the deprecated priority signals (read and ignored),
// extended CONNECT, and 1xx responses other than 103. The defences of
// x/net are here too: the rapid reset attack (CVE-2023-44487) meets
// ENHANCE_YOUR_CALM, a CONTINUATION flood (CVE-2023-45288) PROTOCOL_ERROR,
// and the queue of control frames is bounded.
package h2

import (
	"context"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/internal/timers"
)

// Server serves HTTP/2 connections. Set its fields before the first
// ServeConn; it is safe for concurrent use after that.
type Server struct {
	// Handler serves the requests.
	Handler http.Handler
	// Config is the http.Server whose settings apply: its HTTP2 limits,
	// MaxHeaderBytes, IdleTimeout, ErrorLog, and the ServerContextKey of
	// requests' contexts. Nil: the defaults. HTTP2.WriteByteTimeout
	// bounds writes that make no progress, as in net/http, at the
	// granularity of a write of up to 64 KiB, and bounds the wait of a
	// stream's write for its flow-control window too: see
	// conn.stalledLocked.
	Config *http.Server
	// Clock times the connections' idle timeout and liveness PINGs. Nil:
	// the system clock.
	Clock clock.Clock

	mu       sync.Mutex
	conns    map[*conn]struct{}
	shutdown bool

	setOnce  sync.Once
	set      settings
	schedule timers.Schedule // the connections' timeouts
}

// ServeConn serves nc, whose client preface has been read, until the
// connection ends, closes it, and calls done (unless nil). ctx is the base
// of the requests' contexts. ServeConn may return before the connection
// ends: with a TCP or Unix socket on Unix, it returns once the connection
// waits for its client, and a goroutine of its own serves it on (see
// conn.run).
func (s *Server) ServeConn(ctx context.Context, nc net.Conn, done func()) {
	c := newConn(s, ctx, nc)
	s.track(c)
	c.serve(done)
}

func (s *Server) track(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == nil {
		s.conns = make(map[*conn]struct{})
	}
	s.conns[c] = struct{}{}
	if s.shutdown {
		c.goAway() // queues, and does not block
	}
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown sends every connection a GOAWAY: each ends once its requests
// are answered. Connections served later get one at once.
func (s *Server) Shutdown() {
	s.mu.Lock()
	s.shutdown = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway()
	}
}

// settings are a connection's limits, from Config.
type settings struct {
	maxStreams      uint32
	maxFrameSize    uint32 // the largest frame we read
	streamWindow    int32  // the receive window of each stream
	connWindow      int32  // the connection's
	maxHeaderBytes  int    // of a request's decoded header list, net/http's way
	idleTimeout     time.Duration
	readIdleTimeout time.Duration // silence after which we send a PING
	pingTimeout     time.Duration // for its ACK
	writeTimeout    time.Duration // for a write to make progress: see conn.stalledLocked
}

// connSettings returns the connections' settings, worked out from Config
// at the first connection.
func (s *Server) connSettings() *settings {
	s.setOnce.Do(func() {
		s.set, s.schedule.Clock = s.settings(), s.Clock
		if s.Clock == nil {
			s.schedule.Clock = clock.Real{}
		}
	})
	return &s.set
}

func (s *Server) settings() settings {
	st := settings{
		maxStreams:     250,
		maxFrameSize:   minMaxFrameSize,
		streamWindow:   1 << 20,
		connWindow:     1 << 20,
		maxHeaderBytes: http.DefaultMaxHeaderBytes,
		pingTimeout:    15 * time.Second,
	}
	hs := s.Config
	if hs == nil {
		return st
	}
	if hs.MaxHeaderBytes > 0 {
		st.maxHeaderBytes = hs.MaxHeaderBytes
	}
	st.idleTimeout = hs.IdleTimeout
	if st.idleTimeout <= 0 {
		st.idleTimeout = hs.ReadTimeout // as net/http does
	}
	if h := hs.HTTP2; h != nil {
		if h.MaxConcurrentStreams > 0 {
			st.maxStreams = uint32(h.MaxConcurrentStreams)
		}
		if h.MaxReadFrameSize >= minMaxFrameSize && h.MaxReadFrameSize <= maxMaxFrameSize {
			st.maxFrameSize = uint32(h.MaxReadFrameSize)
		}
		if h.MaxReceiveBufferPerStream > 0 {
			st.streamWindow = int32(min(h.MaxReceiveBufferPerStream, maxWindow))
		}
		if h.MaxReceiveBufferPerConnection >= defaultWindow {
			st.connWindow = int32(min(h.MaxReceiveBufferPerConnection, maxWindow))
		}
		st.readIdleTimeout = h.SendPingTimeout
		if h.PingTimeout > 0 {
			st.pingTimeout = h.PingTimeout
		}
		st.writeTimeout = h.WriteByteTimeout
	}
	return st
}

func (s *Server) logf(format string, args ...any) {
	if s.Config != nil && s.Config.ErrorLog != nil {
		s.Config.ErrorLog.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}
