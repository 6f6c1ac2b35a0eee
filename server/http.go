package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/ferrysync/ferry/internal/h2"
)

// HTTPServer serves a handler the way Ferry is deployed: HTTP/1.1 and
// HTTP/2, over TLS when it has a certificate, else HTTP/2 without TLS (h2c,
// with prior knowledge) beside HTTP/1.1 on the same port.
//
// Without TLS it does not let net/http serve HTTP/2. net/http serves an h2c
// connection from inside the goroutine of an HTTP/1 connection, which keeps
// that connection's 4 KiB reader and 4 KiB writer for as long as the
// HTTP/2 connection lives. So HTTPServer accepts plain connections itself,
// reads their first bytes, and serves the ones that open with the HTTP/2
// preface with the server H2C names: Ferry's own (internal/h2, the
// default), or golang.org/x/net/http2's (the package net/http's own HTTP/2
// is bundled from). Every other connection goes to the http.Server. Over
// TLS, the http.Server serves everything: its HTTP/2 over TLS holds no
// such buffers.
//
// Use Serve, Shutdown and Close, not the http.Server's own. An h2c
// connection honours the http.Server's settings as net/http's own h2c
// would (HTTP2, timeouts, limits, ErrorLog, BaseContext, ConnContext,
// ConnState), with three differences: ConnState reports it as new only
// once its preface has arrived, a client that is slow to send the preface
// of an HTTP/1 request may take up to twice ReadHeaderTimeout (once here,
// once in the http.Server), and SetKeepAlivesEnabled does not reach it.
// Ferry's h2c server reads IdleTimeout, MaxHeaderBytes and, of HTTP2,
// MaxConcurrentStreams, MaxReadFrameSize, the receive buffers,
// SendPingTimeout, PingTimeout and WriteByteTimeout. With H2CXNet,
// security fixes to HTTP/2 reach h2c through golang.org/x/net, not Go's
// releases: keep that module current.
type HTTPServer struct {
	// HTTP holds the settings (HTTP/2's included) and serves HTTP/1.1, and
	// everything over TLS. Set its fields, ErrorLog say, before Serve.
	HTTP *http.Server
	// H2C chooses what serves h2c connections. Set it before Serve.
	H2C H2C

	own    h2.Server
	h2     *http2.Server
	h2Once sync.Once // sets h2's settings from HTTP's, at the first Serve

	mu sync.Mutex
	// ctl exists for its Shutdown, which is the only way x/net/http2 offers
	// to start a graceful shutdown of the connections ServeConn serves
	// (ConfigureServer hooks them to it). It serves nothing. Set by the
	// first Serve.
	ctl     *http.Server
	closing bool
	conns   map[net.Conn]bool // plain connections still ours: true once served as HTTP/2
}

// H2C is an HTTP/2 server for connections without TLS.
type H2C int

const (
	// H2CFerry is Ferry's own (internal/h2): one goroutine less per
	// connection than x/net's, no hand-off per write, and buffers held
	// only while in use.
	H2CFerry H2C = iota
	// H2CXNet is golang.org/x/net/http2's server, kept as a fallback.
	// Built with Go 1.27 or later it needs -tags http2legacy: Set and
	// Serve refuse it otherwise.
	H2CXNet
)

// String returns the name ferryd's --h2c flag takes.
func (h H2C) String() string {
	switch h {
	case H2CXNet:
		return "xnet"
	case H2CFerry:
		return "ferry"
	}
	return "H2C(" + strconv.Itoa(int(h)) + ")"
}

// Set sets h from a name String returns: H2C is a flag.Value.
func (h *H2C) Set(s string) error {
	for _, v := range []H2C{H2CFerry, H2CXNet} {
		if s == v.String() {
			if v == H2CXNet && errXNet != nil {
				return errXNet
			}
			*h = v
			return nil
		}
	}
	return fmt.Errorf("unknown h2c server %q: want ferry or xnet", s)
}

// NewHTTPServer returns a server for h with Ferry's settings: HTTP/1.1 and
// HTTP/2 (h2c when tlsConfig is nil), bounded headers, a header timeout,
// and no whole-request timeouts, since sync sessions are long-lived
// (heartbeats find dead peers instead).
func NewHTTPServer(addr string, h http.Handler, tlsConfig *tls.Config) *HTTPServer {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	if tlsConfig != nil {
		p.SetHTTP2(true)
	}
	hs := &http.Server{
		Addr:              addr,
		Handler:           h,
		Protocols:         p,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 250,
			// HTTP/2's default. A frame's header declares its length, and
			// net/http's HTTP/2 (over TLS) allocates that much before the
			// payload arrives, and keeps it for the connection: a larger
			// limit lets a client that sends a frame's header alone make
			// the server hold that much.
			MaxReadFrameSize: 16 << 10,
			// Per-stream and per-connection receive windows: a client cannot
			// make the server buffer more than this for it.
			MaxReceiveBufferPerStream:     1 << 20,
			MaxReceiveBufferPerConnection: 2 << 20,
			SendPingTimeout:               30 * time.Second,
			PingTimeout:                   15 * time.Second,
			// A write to a connection that makes no progress for this
			// long closes it, and (over h2c, Ferry's own server) a
			// stream's write that waits this long for the client's
			// flow-control window resets the stream: a client that stops
			// reading, yet keeps its connection alive, holds no handler
			// longer. Options.SendTimeout's default; ferryd sets it from
			// --send-timeout.
			WriteByteTimeout: 2 * time.Minute,
		},
	}
	return &HTTPServer{HTTP: hs, h2: new(http2.Server), conns: make(map[net.Conn]bool)}
}

// Serve accepts connections on ln and serves them until Shutdown or Close,
// when it returns http.ErrServerClosed. Over TLS it is the http.Server's
// ServeTLS (which sets up ALPN, so TLS clients get HTTP/2).
func (s *HTTPServer) Serve(ln net.Listener) error {
	if s.HTTP.TLSConfig != nil {
		return s.HTTP.ServeTLS(ln, "", "")
	}
	if s.H2C == H2CXNet && errXNet != nil {
		_ = ln.Close() // as when Serve returns after serving
		return errXNet
	}
	s.h2Once.Do(func() {
		s.own.Handler, s.own.Config = s.HTTP.Handler, s.HTTP
		// x/net/http2 takes the idle timeout from its own Server, and
		// ConfigureServer copies it as net/http would, from IdleTimeout or
		// else ReadTimeout. The rest it reads from HTTP, per connection.
		h1 := &http.Server{IdleTimeout: s.HTTP.IdleTimeout, ReadTimeout: s.HTTP.ReadTimeout}
		if err := http2.ConfigureServer(h1, s.h2); err != nil {
			panic("server: " + err.Error()) // only for TLS settings, and h1 has none
		}
		s.mu.Lock()
		s.ctl = h1
		s.mu.Unlock()
	})
	base := context.Background()
	if s.HTTP.BaseContext != nil {
		if base = s.HTTP.BaseContext(ln); base == nil {
			panic("server: BaseContext returned a nil context")
		}
	}
	l := &sniffListener{Listener: ln, base: base, h1: make(chan net.Conn), done: make(chan struct{})}
	go s.accept(l)
	// HTTP.Serve closes l, and so ln, when it returns. Its Shutdown and
	// Close wait for it to return, and by then every connection l handed it
	// is its own to close: none slips between the two servers.
	return s.HTTP.Serve(l)
}

// sniffListener is what the http.Server accepts from: the plain connections
// that turned out not to be HTTP/2.
type sniffListener struct {
	net.Listener                 // the real one: Addr and Close
	base         context.Context // of the h2c connections (BaseContext)
	h1           chan net.Conn   // connections for the http.Server
	done         chan struct{}   // closed when accepting ends, with err
	err          error
}

func (l *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.h1:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

// accept accepts connections until the listener fails for good, and starts
// the reading of each one's first bytes.
func (s *HTTPServer) accept(l *sniffListener) {
	defer close(l.done)
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			// As net/http does: back off on errors such as too many open
			// files, which pass.
			var ne net.Error
			if errors.As(err, &ne) && ne.Temporary() { // deprecated, yet net/http tells them apart so too
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.logf("http: accept error: %v; retrying in %v", err, delay)
				time.Sleep(delay)
				continue
			}
			l.err = err
			return
		}
		delay = 0
		if !s.track(c, false) {
			_ = c.Close()
			continue
		}
		go s.sniff(c, l)
	}
}

func (s *HTTPServer) logf(format string, args ...any) {
	if l := s.HTTP.ErrorLog; l != nil {
		l.Printf(format, args...)
	} else {
		log.Printf(format, args...)
	}
}

// preface opens every HTTP/2 connection.
var preface = []byte(http2.ClientPreface)

// sniff reads the first bytes of c: HTTP/2's preface makes it an h2c
// connection, served here; anything else goes to the http.Server, the bytes
// read included.
func (s *HTTPServer) sniff(c net.Conn, l *sniffListener) {
	d := s.HTTP.ReadHeaderTimeout
	if d <= 0 {
		d = s.HTTP.ReadTimeout // as net/http does
	}
	if d > 0 {
		_ = c.SetReadDeadline(time.Now().Add(d))
	}
	buf := make([]byte, len(preface))
	n, err := 0, error(nil)
	for n < len(buf) && err == nil && bytes.Equal(buf[:n], preface[:n]) {
		var m int
		m, err = c.Read(buf[n:])
		n += m
	}
	if !bytes.Equal(buf[:n], preface[:n]) {
		s.untrack(c)
		select {
		case l.h1 <- &prefixConn{Conn: c, prefix: buf[:n]}:
		case <-l.done:
			_ = c.Close()
		}
		return
	}
	if err != nil || !s.track(c, true) {
		s.untrack(c) // before the close, which the client sees
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	ctx := l.base
	if cc := s.HTTP.ConnContext; cc != nil {
		if ctx = cc(ctx, c); ctx == nil {
			s.untrack(c)
			panic("server: ConnContext returned a nil context")
		}
	}
	cs := s.HTTP.ConnState
	if cs != nil {
		cs(c, http.StateNew)
	}
	ended := func() {
		if cs != nil {
			cs(c, http.StateClosed)
		}
		s.untrack(c)
	}
	// ServeConn closes c when it is done. It adds the server and the local
	// address to ctx, as net/http does. Ferry's may return before the
	// connection ends (a goroutine of its own serves it on), and calls
	// ended when it has.
	if s.H2C == H2CFerry {
		s.own.ServeConn(ctx, c, ended)
		return
	}
	defer ended()
	s.h2.ServeConn(c, &http2.ServeConnOpts{Context: ctx, BaseConfig: s.HTTP, SawClientPreface: true})
}

// track adds c to the connections that are the HTTPServer's to close, or
// marks it as served as HTTP/2. It reports false once the server is closing.
func (s *HTTPServer) track(c net.Conn, h2 bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = h2
	return true
}

func (s *HTTPServer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// prefixConn is a connection whose first bytes were read already.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// ReadFrom keeps net/http's sendfile and splice for HTTP/1 responses.
func (c *prefixConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite lets net/http half-close the connection before it closes it,
// as it does with a TCP connection, so that a final response is not lost to
// a reset.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Shutdown stops accepting, closes the connections that have not said
// which protocol they speak, tells HTTP/2 clients to go away (GOAWAY), and
// waits until every connection has ended or ctx is done. See
// http.Server.Shutdown.
func (s *HTTPServer) Shutdown(ctx context.Context) error {
	s.closeSniffing(false)
	h1 := make(chan error, 1)
	go func() { h1 <- s.HTTP.Shutdown(ctx) }()
	var h1Err error
	wait := time.Millisecond
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		// A connection ServeConn had not registered yet missed the last
		// GOAWAY: repeat it while waiting (it goes once per connection).
		s.goAway()
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 && h1 == nil {
			return h1Err
		}
		select {
		case h1Err = <-h1:
			h1 = nil
			continue
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
		t.Reset(wait)
	}
}

// Close closes the listener and every connection at once. See
// http.Server.Close.
func (s *HTTPServer) Close() error {
	err := s.HTTP.Close()
	s.closeSniffing(true)
	return err
}

// closeSniffing marks the server closing and closes the connections not yet
// served, and with all, the HTTP/2 ones too.
func (s *HTTPServer) closeSniffing(all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closing = true
	for c, h2 := range s.conns {
		if all || !h2 {
			_ = c.Close()
		}
	}
}

// goAway starts a graceful shutdown of every HTTP/2 connection ServeConn
// serves. ctl has no listener and no connection of its own: its Shutdown
// runs the hook and returns. This holds for x/net/http2's own server, the
// one built with Go 1.26 or -tags http2legacy; otherwise x/net/http2 wraps
// net/http's server, which this does not reach, and Serve refuses H2CXNet
// (see errXNet).
func (s *HTTPServer) goAway() {
	s.own.Shutdown()
	s.mu.Lock()
	ctl := s.ctl
	s.mu.Unlock()
	if ctl != nil {
		_ = ctl.Shutdown(context.Background())
	}
}
