package server_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// hangGuard bounds a read that the code under test should end: a broken
// server fails the test instead of hanging it.
const hangGuard = time.Minute

// startHTTP serves h on a loopback port with NewHTTPServer's settings, and
// returns the server, its address and Serve's result.
func startHTTP(t *testing.T, h http.Handler, adjust func(*http.Server)) (*server.HTTPServer, string, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := servertest.NewHTTPServer(ln.Addr().String(), h)
	if adjust != nil {
		adjust(hs.HTTP)
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return hs, ln.Addr().String(), served
}

func wantServerClosed(t *testing.T, served <-chan error) {
	t.Helper()
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve returned %v, want http.ErrServerClosed", err)
	}
}

// within fails the test unless ch is closed within the hang guard.
func within(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(hangGuard):
		t.Fatalf("%s did not happen", what)
	}
}

// shutdown shuts hs down, bounded by the hang guard.
func shutdown(t *testing.T, hs *server.HTTPServer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	if err := hs.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

type ctxKey string

// An h2c connection is served as HTTP/2 by the HTTPServer itself, with the
// http.Server's contexts and connection states; HTTP/1.1, and a request
// shorter than HTTP/2's preface that starts like it, reach the http.Server
// with the bytes read while telling them apart.
func TestHTTPServerTellsProtocolsApart(t *testing.T) {
	var mu sync.Mutex
	var states []http.ConnState
	closed, allClosed := 0, make(chan struct{})
	hs, addr, served := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %v %v", r.Proto, r.URL.Path, body, r.Context().Value(ctxKey("base")), r.Context().Value(ctxKey("conn")))
	}), func(h *http.Server) {
		// Off, so that a sniffer waiting for bytes that never come hangs
		// the test (up to its guard) rather than passing after a timeout.
		h.ReadHeaderTimeout = 0
		h.BaseContext = func(net.Listener) context.Context {
			return context.WithValue(context.Background(), ctxKey("base"), "b")
		}
		h.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
			return context.WithValue(ctx, ctxKey("conn"), "c")
		}
		h.ConnState = func(_ net.Conn, st http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			states = append(states, st)
			if st == http.StateClosed {
				if closed++; closed == 3 {
					close(allClosed)
				}
			}
		}
	})
	get := func(c *http.Client, path string) string {
		t.Helper()
		resp, err := c.Post("http://"+addr+path, "text/plain", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	h2c := servertest.H2CClient()
	defer h2c.CloseIdleConnections()
	if got := get(h2c, "/two"); got != "HTTP/2.0 /two body b c" {
		t.Fatalf("h2c: %q", got)
	}
	if sniffing, h2 := server.HTTPConns(hs); sniffing != 0 || h2 != 1 {
		t.Fatalf("the HTTPServer holds %d connections being read and %d HTTP/2 ones; want 0 and 1", sniffing, h2)
	}
	h1 := &http.Client{Transport: &http.Transport{}}
	defer h1.CloseIdleConnections()
	if got := get(h1, "/one"); got != "HTTP/1.1 /one body b c" {
		t.Fatalf("HTTP/1.1: %q", got)
	}
	// 23 bytes, the first three as in the preface, and the client waits for
	// the answer.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(hangGuard))
	io.WriteString(c, "PRIVATE /s HTTP/1.0\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "HTTP/1.0 /s  b c" {
		t.Fatalf("a short HTTP/1.0 request: %d %q", resp.StatusCode, b)
	}
	// Idle HTTP/2 connections close a second after their GOAWAY unless the
	// client closes them first.
	h2c.CloseIdleConnections()
	shutdown(t, hs)
	wantServerClosed(t, served)
	// The h2c connection's states, and the two HTTP/1 connections': each is
	// new once and closed once (the http.Server may report an HTTP/1
	// connection closed after its Shutdown returned).
	within(t, allClosed, "three connections closed")
	mu.Lock()
	defer mu.Unlock()
	count := map[http.ConnState]int{}
	for _, st := range states {
		count[st]++
	}
	if count[http.StateNew] != 3 || count[http.StateClosed] != 3 {
		t.Fatalf("connection states %v: want 3 new and 3 closed", states)
	}
}

// The HTTP/2 idle timeout is the http.Server's, as set before Serve.
func TestHTTPServerIdleTimeout(t *testing.T) {
	_, addr, _ := startHTTP(t, http.NotFoundHandler(), func(h *http.Server) {
		h.IdleTimeout = 20 * time.Millisecond
		h.HTTP2.SendPingTimeout = 0 // the raw client does not answer pings
	})
	c := dialH2(t, addr)
	c.get(1, "/")
	c.until("the response", streamEnded(1))
	c.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
}

// h2Client is a raw HTTP/2 client, so that a test sees the frames.
type h2Client struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
}

func dialH2(t *testing.T, addr string) *h2Client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &h2Client{t: t, conn: c, fr: fr}
}

// get opens stream id with a GET of path.
func (c *h2Client) get(id uint32, path string) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "ferry.test"}, {":path", path}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		c.t.Fatal(err)
	}
}

// until reads frames, acknowledging settings, until pred accepts one.
func (c *h2Client) until(what string, pred func(http2.Frame) bool) http2.Frame {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.t.Fatalf("waiting for %s: %v", what, err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			_ = c.fr.WriteSettingsAck()
		}
		if pred(f) {
			return f
		}
	}
}

// streamEnded accepts the frame that ends stream id.
func streamEnded(id uint32) func(http2.Frame) bool {
	return func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f.StreamID == id && f.StreamEnded()
		case *http2.DataFrame:
			return f.StreamID == id && f.StreamEnded()
		}
		return false
	}
}

// Shutdown tells an HTTP/2 client to go away and lets its open stream
// finish; then it returns, once the connection is gone.
func TestHTTPServerShutdownIsGraceful(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	hs, addr, served := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "finished")
	}), nil)
	c := dialH2(t, addr)
	c.get(1, "/slow")
	within(t, started, "the request")
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
		defer cancel()
		shut <- hs.Shutdown(ctx)
	}()
	ga := c.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1 {
		t.Fatalf("GOAWAY %v, last stream %d; want NO_ERROR and 1", ga.ErrCode, ga.LastStreamID)
	}
	close(release)
	var body []byte
	c.until("the response's end", func(f http2.Frame) bool {
		if d, ok := f.(*http2.DataFrame); ok && d.StreamID == 1 {
			body = append(body, d.Data()...)
			return d.StreamEnded()
		}
		return false
	})
	if string(body) != "finished" {
		t.Fatalf("the open stream got %q", body)
	}
	c.conn.Close()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	wantServerClosed(t, served)
	if sniffing, h2 := server.HTTPConns(hs); sniffing+h2 != 0 {
		t.Fatalf("%d connections left after Shutdown", sniffing+h2)
	}
}

// Close cuts every connection at once: one that has sent nothing yet (and
// whose header timeout is off), and an HTTP/2 one with a stream open.
// Shutdown does not wait for the first.
func TestHTTPServerCloseAndShutdownCutSilentConnections(t *testing.T) {
	for _, closing := range []string{"Close", "Shutdown"} {
		t.Run(closing, func(t *testing.T) {
			started, ended := make(chan struct{}), make(chan struct{})
			hs, addr, served := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/quick" {
					return
				}
				close(started)
				<-r.Context().Done()
				close(ended)
			}), func(h *http.Server) {
				// Neither a header timeout nor pings (which the raw client
				// does not answer) may end a connection in its place.
				h.ReadHeaderTimeout = 0
				h.HTTP2.SendPingTimeout = 0
			})
			silent, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer silent.Close()
			// Connections are accepted in order: once this one is served,
			// the silent one is held.
			quick := dialH2(t, addr)
			quick.get(1, "/quick")
			quick.until("the response", streamEnded(1))
			if sniffing, h2 := server.HTTPConns(hs); sniffing != 1 || h2 != 1 {
				t.Fatalf("%d connections being read and %d HTTP/2 ones; want 1 and 1", sniffing, h2)
			}
			if closing == "Shutdown" {
				quick.conn.Close()
				shutdown(t, hs)
			} else {
				c := dialH2(t, addr)
				c.get(1, "/slow")
				within(t, started, "the request")
				if err := hs.Close(); err != nil {
					t.Fatal(err)
				}
				within(t, ended, "the request's end")
				if _, err := io.ReadAll(c.conn); err != nil {
					t.Fatalf("the HTTP/2 connection: %v, want it closed", err)
				}
			}
			_ = silent.SetReadDeadline(time.Now().Add(hangGuard))
			if n, err := silent.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("the silent connection read %d bytes, %v; want it closed", n, err)
			}
			wantServerClosed(t, served)
		})
	}
}

// A connection that stalls before it has said which protocol it speaks is
// cut after the header timeout, as net/http cuts a slow HTTP/1 request.
func TestHTTPServerCutsStalledPreface(t *testing.T) {
	hs, addr, served := startHTTP(t, http.NotFoundHandler(), func(h *http.Server) { h.ReadHeaderTimeout = 20 * time.Millisecond })
	for _, sent := range []string{"", "PRI * HTTP/2.0\r\n"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, sent)
		_ = c.SetReadDeadline(time.Now().Add(hangGuard))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("after %q: read %d bytes, %v; want the connection closed", sent, n, err)
		}
	}
	if sniffing, h2 := server.HTTPConns(hs); sniffing+h2 != 0 {
		t.Fatalf("%d connections held after their timeout", sniffing+h2)
	}
	if err := hs.Close(); err != nil {
		t.Fatal(err)
	}
	wantServerClosed(t, served)
}

// Built with Go 1.27 or later (without -tags http2legacy), x/net serves
// h2c through net/http's server, where a graceful shutdown does not reach:
// the flag and Serve refuse it, saying how to build; otherwise it serves.
func TestH2CXNetNeedsItsOwnServer(t *testing.T) {
	var h server.H2C
	err := h.Set("xnet")
	if server.ErrXNet == nil {
		if err != nil || h != server.H2CXNet {
			t.Fatalf("Set(xnet) = %v, H2C %v; want H2CXNet", err, h)
		}
		return
	}
	if !errors.Is(err, server.ErrXNet) || !strings.Contains(err.Error(), "-tags http2legacy") || h != server.H2CFerry {
		t.Fatalf("Set(xnet) = %v, H2C %v; want the build's refusal, and H2C unchanged", err, h)
	}
	hs := server.NewHTTPServer("127.0.0.1:0", http.NotFoundHandler(), nil)
	hs.H2C = server.H2CXNet
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := hs.Serve(ln); !errors.Is(err, server.ErrXNet) {
		t.Fatalf("Serve with H2CXNet: %v, want the build's refusal", err)
	}
}

// TestHTTPServerBoundsStalledWrites: the HTTP server cuts writes that make
// no progress (a client that keeps its connection alive and reads
// nothing), after the send timeout's default; internal/h2's tests hold
// what the bound does.
func TestHTTPServerBoundsStalledWrites(t *testing.T) {
	hs := server.NewHTTPServer("127.0.0.1:0", http.NotFoundHandler(), nil)
	if got := hs.HTTP.HTTP2.WriteByteTimeout; got != 2*time.Minute {
		t.Fatalf("WriteByteTimeout %v, want 2m, the send timeout's default", got)
	}
}
