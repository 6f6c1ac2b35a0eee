package h2_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/internal/h2"
)

// hangGuard bounds a wait the code under test should end.
const hangGuard = time.Minute

// serve serves h on a loopback port with s's settings (adjust may change
// them) and returns its address.
func serve(t *testing.T, h http.Handler, adjust func(*http.Server)) (string, *h2.Server) {
	addr, srv, _ := serveConns(t, h, adjust)
	return addr, srv
}

// serveConns is serve, and reports each connection's end.
func serveConns(t *testing.T, h http.Handler, adjust func(*http.Server)) (string, *h2.Server, <-chan struct{}) {
	t.Helper()
	hs := &http.Server{HTTP2: &http.HTTP2Config{}}
	if adjust != nil {
		adjust(hs)
	}
	srv := &h2.Server{Handler: h, Config: hs}
	addr, ended := serveH2(t, srv)
	return addr, srv, ended
}

// serveH2 serves srv on a loopback port and returns its address; ended
// reports each connection's end.
func serveH2(t *testing.T, srv *h2.Server) (addr string, ended <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ends := make(chan struct{}, 100)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		srv.Shutdown()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != http2.ClientPreface {
					_ = c.Close()
					return
				}
				wg.Add(1)
				srv.ServeConn(context.Background(), c, func() {
					ends <- struct{}{}
					wg.Done()
				})
			}()
		}
	}()
	return ln.Addr().String(), ends
}

// client is an HTTP/2 client without TLS.
func client(t *testing.T) *http.Client {
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestRequestsAndResponses: the request a handler sees and the response a
// client gets, with bodies past every flow-control window in both
// directions, trailers both ways, and the header fields the server adds.
func TestRequestsAndResponses(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: past the client's stream window
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/echo":
			w.Header().Set("Trailer", "X-Sum")
			w.Header().Set("Content-Type", "application/octet-stream")
			n, err := io.Copy(w, r.Body)
			if err != nil {
				t.Errorf("reading the request body: %v", err)
			}
			w.Header().Set("X-Sum", fmt.Sprint(n))
			w.Header().Set(http.TrailerPrefix+"X-Got-Trailer", r.Trailer.Get("X-Client"))
		case "/big":
			_, _ = w.Write(big)
		case "/small":
			if r.Proto != "HTTP/2.0" || r.Host != addrOf(r) || r.URL.RawQuery != "q=1" || r.Header.Get("X-Hello") != "there" || r.Header.Get("Cookie") != "a=1; b=2" {
				t.Errorf("the request: %s %s %q %v", r.Proto, r.Host, r.URL.RawQuery, r.Header)
			}
			_, _ = io.WriteString(w, "<html>hi</html>")
		case "/late":
			w.Header().Set("X-Early", "1")
			w.WriteHeader(http.StatusAccepted)
			w.Header().Set("X-Late", "1") // after WriteHeader: not sent
			_, _ = io.WriteString(w, "late")
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
			if _, err := w.Write([]byte("x")); !errors.Is(err, http.ErrBodyNotAllowed) {
				t.Errorf("a body after 204: %v", err)
			}
		}
	}), func(hs *http.Server) {
		hs.HTTP2.MaxReceiveBufferPerStream = 64 << 10 // the upload needs many WINDOW_UPDATEs
		hs.HTTP2.MaxReceiveBufferPerConnection = 128 << 10
	})
	c := client(t)

	req, _ := http.NewRequest("GET", "http://"+addr+"/small?q=1", nil)
	req.Header.Set("X-Hello", "there")
	req.Header.Add("Cookie", "a=1")
	req.Header.Add("Cookie", "b=2")
	resp := do(t, c, req)
	if got := resp.body; got != "<html>hi</html>" || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" ||
		resp.ContentLength != int64(len(got)) || resp.Header.Get("Date") == "" {
		t.Errorf("/small: %q, header %v, length %d", got, resp.Header, resp.ContentLength)
	}

	req, _ = http.NewRequest("GET", "http://"+addr+"/late", nil)
	resp = do(t, c, req)
	if resp.StatusCode != http.StatusAccepted || resp.Header.Get("X-Early") != "1" || resp.Header.Get("X-Late") != "" ||
		resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" || resp.body != "late" {
		t.Errorf("/late: %d %q, header %v", resp.StatusCode, resp.body, resp.Header)
	}

	req, _ = http.NewRequest("POST", "http://"+addr+"/echo", io.MultiReader(bytes.NewReader(big)))
	req.Trailer = http.Header{"X-Client": nil}
	req.Body = &trailerBody{Reader: bytes.NewReader(big), set: func() { req.Trailer.Set("X-Client", "done") }}
	resp = do(t, c, req)
	if resp.body != string(big) {
		t.Errorf("/echo: %d bytes back, want %d", len(resp.body), len(big))
	}
	if got := resp.Trailer.Get("X-Sum"); got != fmt.Sprint(len(big)) {
		t.Errorf("/echo: trailer X-Sum %q", got)
	}
	if got := resp.Trailer.Get("X-Got-Trailer"); got != "done" {
		t.Errorf("/echo: the handler saw the request trailer as %q", got)
	}

	req, _ = http.NewRequest("GET", "http://"+addr+"/big", nil)
	if resp = do(t, c, req); resp.body != string(big) {
		t.Errorf("/big: %d bytes, want %d", len(resp.body), len(big))
	}

	req, _ = http.NewRequest("GET", "http://"+addr+"/nocontent", nil)
	if resp = do(t, c, req); resp.StatusCode != http.StatusNoContent || resp.body != "" {
		t.Errorf("/nocontent: %d %q", resp.StatusCode, resp.body)
	}
}

func addrOf(r *http.Request) string {
	return r.Context().Value(http.LocalAddrContextKey).(net.Addr).String()
}

type trailerBody struct {
	io.Reader
	set func()
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF {
		b.set()
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

type response struct {
	*http.Response
	body string
}

func do(t *testing.T, c *http.Client, req *http.Request) response {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL.Path, err)
	}
	return response{resp, string(b)}
}

// upperEcho answers each piece of a request body as it comes, in upper
// case, flushing, while the client is still sending.
var upperEcho = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.(http.Flusher).Flush() // the header: the client waits for it before it sends
	buf := make([]byte, 64)
	for {
		n, err := r.Body.Read(buf)
		if n > 0 {
			_, _ = w.Write(bytes.ToUpper(buf[:n]))
			w.(http.Flusher).Flush()
		}
		if err != nil {
			return
		}
	}
})

// TestFullDuplex: a handler answers each line of a request body as it
// comes, flushing, while the client is still sending.
func TestFullDuplex(t *testing.T) {
	addr, _ := serve(t, upperEcho, nil)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	for _, word := range []string{"one", "two", "three"} {
		if _, err := pw.Write([]byte(word)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(word))
		if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != strings.ToUpper(word) {
			t.Fatalf("after %q: %q, %v", word, got, err)
		}
	}
	_ = pw.Close()
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("the end: %q, %v", rest, err)
	}
}

// TestReadDeadline: a read deadline in the past ends the handler's
// blocked read at once, and the stream goes on: the response still goes
// out. Ferry stops a Sync session's reads so.
func TestReadDeadline(t *testing.T) {
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		go func() {
			// Once the read blocks there is nothing to observe but the
			// clock; any order is right: a deadline set first fails
			// the read at once.
			_ = rc.SetReadDeadline(time.Unix(1, 0))
		}()
		_, err := r.Body.Read(make([]byte, 10))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("the read: %v, want os.ErrDeadlineExceeded", err)
		}
		_ = rc.SetReadDeadline(time.Time{})
		_, _ = io.WriteString(w, "still here")
	}), nil)
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
	req.ContentLength = -1
	resp := do(t, client(t), req)
	if resp.body != "still here" {
		t.Fatalf("got %q", resp.body)
	}
}

// rawClient speaks frames to the server.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	fr *http2.Framer
}

func dial(t *testing.T, addr string, settings ...http2.Setting) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return &rawClient{t: t, c: c, fr: fr}
}

// until reads frames until one matches; it fails the test at the
// connection's end.
func (rc *rawClient) until(what string, match func(http2.Frame) bool) http2.Frame {
	rc.t.Helper()
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("waiting for %s: %v", what, err)
		}
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			_ = rc.fr.WriteSettingsAck()
		}
		if match(f) {
			return f
		}
	}
}

func (rc *rawClient) request(id uint32, path string, end bool, extra ...string) {
	rc.t.Helper()
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	fields := append([]string{":method", "POST", ":scheme", "http", ":authority", "ferry.test", ":path", path}, extra...)
	for i := 0; i < len(fields); i += 2 {
		_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawClient) reset(id uint32) http2.ErrCode {
	rc.t.Helper()
	return rc.until(fmt.Sprintf("RST_STREAM of stream %d", id), func(f http2.Frame) bool {
		r, ok := f.(*http2.RSTStreamFrame)
		return ok && r.StreamID == id
	}).(*http2.RSTStreamFrame).ErrCode
}

func (rc *rawClient) goAway() http2.ErrCode {
	rc.t.Helper()
	return rc.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame).ErrCode
}

// TestWriteDeadline: a write deadline passing while a write waits for
// flow-control window fails the write and resets the stream, and the
// connection goes on. Ferry's send timeout works so.
func TestWriteDeadline(t *testing.T) {
	wrote := make(chan error, 1)
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ok" {
			return
		}
		rc := http.NewResponseController(w)
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		// The client's window is 0: this waits until the deadline.
		_ = rc.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := w.Write(make([]byte, 100))
		if err == nil {
			err = rc.Flush()
		}
		wrote <- err
	}), nil)
	rc := dial(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	rc.request(1, "/stall", true)
	if code := rc.reset(1); code != http2.ErrCodeInternal {
		t.Fatalf("RST_STREAM %v, want INTERNAL_ERROR", code)
	}
	if err := <-wrote; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the write: %v, want os.ErrDeadlineExceeded", err)
	}
	rc.request(3, "/ok", true)
	rc.until("the answer on stream 3", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 3 && h.PseudoValue("status") == "200"
	})
}

// TestMalformedRequests: a malformed request is reset with PROTOCOL_ERROR
// before any handler runs; the connection goes on.
func TestMalformedRequests(t *testing.T) {
	ran := make(chan string, 10)
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran <- r.URL.Path
		_, _ = io.Copy(io.Discard, r.Body) // so that the stream is open when DATA comes
	}), nil)
	rc := dial(t, addr)
	id := uint32(1)
	for _, extra := range [][]string{
		{"X-Upper", "no"},
		{"connection", "close"},
		{"te", "gzip"},
		{"content-length", "5"}, // with no body
		{":status", "200"},
		{":path", "http://elsewhere.test/"}, // a second :path
	} {
		rc.request(id, "/bad", true, extra...)
		if code := rc.reset(id); code != http2.ErrCodeProtocol {
			t.Errorf("%q: RST_STREAM %v, want PROTOCOL_ERROR", extra, code)
		}
		id += 2
	}
	rc.request(id, "http://elsewhere.test/", true)
	if code := rc.reset(id); code != http2.ErrCodeProtocol {
		t.Errorf("a :path in absolute form: RST_STREAM %v, want PROTOCOL_ERROR", code)
	}
	id += 2
	// A body longer than its content-length: the handler has run by then.
	rc.request(id, "/long", false, "content-length", "2")
	_ = rc.fr.WriteData(id, true, []byte("abc"))
	if code := rc.reset(id); code != http2.ErrCodeProtocol {
		t.Errorf("a body past content-length: RST_STREAM %v, want PROTOCOL_ERROR", code)
	}
	id += 2
	rc.request(id, "/good", true)
	rc.until("the good request's answer", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == id
	})
	for range 2 {
		if p := <-ran; p == "/bad" {
			t.Fatalf("a handler ran for a malformed request")
		}
	}
	// An even stream is a connection error.
	rc.request(id+1, "/bad", true)
	if code := rc.goAway(); code != http2.ErrCodeProtocol {
		t.Fatalf("HEADERS on an even stream: GOAWAY %v, want PROTOCOL_ERROR", code)
	}
}

// TestPanic: a handler's panic resets its stream with INTERNAL_ERROR, and
// the connection goes on.
func TestPanic(t *testing.T) {
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic(http.ErrAbortHandler)
		}
	}), nil)
	rc := dial(t, addr)
	rc.request(1, "/panic", true)
	if code := rc.reset(1); code != http2.ErrCodeInternal {
		t.Fatalf("RST_STREAM %v, want INTERNAL_ERROR", code)
	}
	rc.request(3, "/fine", true)
	rc.until("the answer on stream 3", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 3
	})
}

// TestIdleTimeout: a connection is sent a GOAWAY once it has been idle
// for IdleTimeout after its last stream ended, not while a stream is open,
// however long that lasts (on a fake clock).
func TestIdleTimeout(t *testing.T) {
	const idle = 10 * time.Second
	fake := clock.NewFake(time.Unix(1_000_000, 0))
	release := make(chan struct{})
	srv := &h2.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/long" {
				<-release
			}
		}),
		Config: &http.Server{HTTP2: &http.HTTP2Config{}, IdleTimeout: idle},
		Clock:  fake,
	}
	addr, _ := serveH2(t, srv)
	rc := dial(t, addr)
	rc.request(1, "/long", true)
	rc.request(3, "/short", true)
	rc.until("the answer on stream 3", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 3
	})
	// The deadline armed when the connection started passes with stream
	// 1 open: no GOAWAY, and nothing armed until the stream ends.
	fake.Advance(2 * idle)
	armed := fake.Armed()
	close(release)
	rc.until("the answer on stream 1", func(f http2.Frame) bool {
		if _, ok := f.(*http2.GoAwayFrame); ok {
			t.Fatal("a GOAWAY while a stream was open")
		}
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1
	})
	select {
	case <-armed:
	case <-time.After(hangGuard):
		t.Fatal("no idle deadline armed once the last stream ended")
	}
	fake.Advance(idle)
	if code := rc.goAway(); code != http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v, want NO_ERROR", code)
	}
}

// TestPingTimeout: a client silent past the read-idle timeout gets a
// PING, and one that does not answer it is cut off.
func TestPingTimeout(t *testing.T) {
	addr, _ := serve(t, http.NotFoundHandler(), func(hs *http.Server) {
		hs.HTTP2.SendPingTimeout = 20 * time.Millisecond
		hs.HTTP2.PingTimeout = 20 * time.Millisecond
	})
	rc := dial(t, addr)
	rc.until("a PING", func(f http2.Frame) bool { p, ok := f.(*http2.PingFrame); return ok && !p.IsAck() })
	for {
		if _, err := rc.fr.ReadFrame(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the connection was not closed")
			}
			return // closed
		}
	}
}

// TestGracefulShutdown: Shutdown sends GOAWAY; a request under way is
// answered, and then the connection ends.
func TestGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	addr, srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "bye")
	}), nil)
	rc := dial(t, addr)
	rc.request(1, "/", true)
	<-started
	srv.Shutdown()
	if code := rc.goAway(); code != http2.ErrCodeNo {
		t.Fatalf("GOAWAY %v, want NO_ERROR", code)
	}
	// A stream the client opened as the GOAWAY went, with trailers: both
	// ignored, not a connection error.
	rc.request(3, "/late", false)
	var b bytes.Buffer
	_ = hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: "x-trailer", Value: "1"})
	_ = rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true})
	_ = rc.fr.WritePing(false, [8]byte{3})
	rc.until("the PING's ACK", func(f http2.Frame) bool {
		if g, ok := f.(*http2.GoAwayFrame); ok {
			t.Fatalf("a second GOAWAY, %v: %s", g.ErrCode, g.DebugData())
		}
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck()
	})
	close(release)
	rc.until("the answer's end", func(f http2.Frame) bool {
		d, ok := f.(*http2.DataFrame)
		return ok && d.StreamID == 1 && d.StreamEnded()
	})
	for {
		if _, err := rc.fr.ReadFrame(); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the connection was not closed")
			}
			break
		}
	}
}

// TestClientLeavesWithUnreadBodies: a client that leaves with request
// bodies its handlers had not read ends the connection: the handlers'
// late writes fail and return, and the connection's goroutine ends.
func TestClientLeavesWithUnreadBodies(t *testing.T) {
	returned := make(chan error, 2)
	addr, _, ended := serveConns(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		_, err := w.Write([]byte("late"))
		if err == nil {
			err = http.NewResponseController(w).Flush()
		}
		returned <- err
	}), nil)
	rc := dial(t, addr)
	chunk := make([]byte, 16<<10)
	for _, id := range []uint32{1, 3} {
		rc.request(id, "/", false)
		for range 30 { // 480 KiB each: unread, past half the connection's window together
			if err := rc.fr.WriteData(id, false, chunk); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The server handles frames in order: the PING's ACK means it has
	// every DATA frame.
	_ = rc.fr.WritePing(false, [8]byte{7})
	rc.until("the PING's ACK", func(f http2.Frame) bool { p, ok := f.(*http2.PingFrame); return ok && p.IsAck() })
	_ = rc.c.Close()
	for range 2 {
		if err := <-returned; err == nil {
			t.Error("a write after the client left succeeded")
		}
	}
	<-ended
}

// TestControlFrameFlood: a client that sends PINGs and never reads their
// ACKs is cut off once the ACKs it has not read pass the queue's bound,
// rather than holding the connection's reader.
func TestControlFrameFlood(t *testing.T) {
	addr, _ := serve(t, http.NotFoundHandler(), nil)
	rc := dial(t, addr)
	for n := 0; ; n++ {
		err := rc.fr.WritePing(false, [8]byte{1})
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("after %d PINGs the server neither reads nor hangs up", n)
		}
		t.Logf("cut off after %d PINGs: %v", n, err)
		return
	}
}

// TestClientGoAway: the server answers a client's GOAWAY with its own,
// which names the last stream it took, and opens no stream after it.
func TestClientGoAway(t *testing.T) {
	addr, _ := serve(t, http.NotFoundHandler(), nil)
	rc := dial(t, addr)
	rc.request(1, "/", true)
	rc.until("the answer on stream 1", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1
	})
	_ = rc.fr.WriteGoAway(1, http2.ErrCodeNo, nil)
	g := rc.until("GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok }).(*http2.GoAwayFrame)
	if g.ErrCode != http2.ErrCodeNo || g.LastStreamID != 1 {
		t.Fatalf("GOAWAY %v, last stream %d; want NO_ERROR, 1", g.ErrCode, g.LastStreamID)
	}
}

// rawHeaders requests / on stream id and returns its answer's HEADERS
// frame, undecoded: the client's ReadMetaHeaders is nil.
func (rc *rawClient) rawHeaders(id uint32) *http2.HeadersFrame {
	rc.t.Helper()
	rc.request(id, "/", true)
	return rc.until(fmt.Sprintf("HEADERS of stream %d", id), func(f http2.Frame) bool {
		h, ok := f.(*http2.HeadersFrame)
		return ok && h.StreamID == id
	}).(*http2.HeadersFrame)
}

// TestResponseHeadersNotIndexed: the server's response headers never
// enter the HPACK dynamic table, so that an idle connection holds none:
// each header block decodes alone, the second on a connection too.
func TestResponseHeadersNotIndexed(t *testing.T) {
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/connect+proto")
		w.Header().Set("X-Ferry", "the same on every response")
	}), nil)
	rc := dial(t, addr)
	rc.fr.ReadMetaHeaders = nil // each block is decoded here, alone
	for _, id := range []uint32{1, 3} {
		h := rc.rawHeaders(id)
		if !h.HeadersEnded() {
			t.Fatalf("stream %d: the header block goes on in CONTINUATION frames", id)
		}
		fields, err := hpack.NewDecoder(4096, nil).DecodeFull(h.HeaderBlockFragment())
		if err != nil {
			t.Fatalf("stream %d: the header block does not decode alone: %v", id, err)
		}
		got := map[string]string{}
		for _, f := range fields {
			got[f.Name] = f.Value
		}
		if got["content-type"] != "application/connect+proto" || got["x-ferry"] != "the same on every response" {
			t.Fatalf("stream %d: headers %v", id, fields)
		}
	}
}

// TestHeaderBlocksOverAFrame: a request header block larger than a frame
// arrives in CONTINUATION frames and decodes whole, and a response header
// block larger than the client's frames leaves in them.
func TestHeaderBlocksOverAFrame(t *testing.T) {
	big := strings.Repeat("0123456789abcdef", 3000) // 48 KB: three frames and some
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Echo", r.Header.Get("X-Big"))
		w.Header().Set("X-After", r.Header.Get("X-After"))
	}), nil)
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Big", big)
	req.Header.Set("X-After", "the field after the big one")
	res, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.Header.Get("X-Echo") != big || res.Header.Get("X-After") != "the field after the big one" {
		t.Fatalf("status %d, echo of %d bytes, after %q", res.StatusCode, len(res.Header.Get("X-Echo")), res.Header.Get("X-After"))
	}
}

// TestStreamSlot: a request's context has its stream's slot, found again
// from contexts derived from it, one per stream; other contexts have none.
// It has net/http's server and local address too.
func TestStreamSlot(t *testing.T) {
	type key struct{}
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slot := h2.StreamSlot(r.Context())
		if slot == nil {
			http.Error(w, "no slot", http.StatusInternalServerError)
			return
		}
		if *slot != nil {
			http.Error(w, fmt.Sprintf("a new stream's slot holds %v", *slot), http.StatusInternalServerError)
			return
		}
		if _, ok := r.Context().Value(http.ServerContextKey).(*http.Server); !ok {
			http.Error(w, "no ServerContextKey", http.StatusInternalServerError)
			return
		}
		if r.Context().Value(http.LocalAddrContextKey).(net.Addr).String() != r.Host {
			http.Error(w, "LocalAddrContextKey is not the address dialled", http.StatusInternalServerError)
			return
		}
		*slot = r.URL.Path
		derived := context.WithValue(r.Context(), key{}, 1)
		if got := h2.StreamSlot(derived); got != slot || *got != r.URL.Path {
			http.Error(w, "a derived context has another slot", http.StatusInternalServerError)
		}
	}), nil)
	c := client(t)
	for _, path := range []string{"/a", "/b"} {
		res, err := c.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", path, res.StatusCode, msg)
		}
	}
	if h2.StreamSlot(context.Background()) != nil {
		t.Fatal("a slot in a context that is no stream's")
	}
}

// TestInformationalResponse: a 1xx response goes with the header as it is
// at its WriteHeader, and the final response follows.
func TestInformationalResponse(t *testing.T) {
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set("X-Final", "1") // after the 103: in the final header only
		_, _ = io.WriteString(w, "done")
	}), nil)
	var got1xx []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got1xx = append(got1xx, fmt.Sprintf("%d %s %q", code, h.Get("Link"), h.Get("X-Final")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, "http://"+addr+"/", nil)
	resp := do(t, client(t), req)
	if want := []string{`103 </style.css>; rel=preload ""`}; !slices.Equal(got1xx, want) {
		t.Errorf("1xx responses %q, want %q", got1xx, want)
	}
	if resp.StatusCode != http.StatusOK || resp.body != "done" || resp.Header.Get("X-Final") != "1" {
		t.Errorf("final response %d %q, header %v", resp.StatusCode, resp.body, resp.Header)
	}
}

// TestServeConnReturnsWhileServing: ServeConn returns once the connection
// waits for its client (its reader goes on on a goroutine of its own),
// the connection goes on serving, and done runs once, when it has ended.
func TestServeConnReturnsWhileServing(t *testing.T) {
	srv := &h2.Server{Handler: upperEcho}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	returned, done := make(chan struct{}), make(chan struct{}, 2)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, buf); err != nil {
			_ = c.Close()
			return
		}
		srv.ServeConn(context.Background(), c, func() { done <- struct{}{} })
		close(returned)
	}()

	cl := client(t)
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", "http://"+ln.Addr().String()+"/", pr)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	echo := func(word string) {
		t.Helper()
		if _, err := pw.Write([]byte(word)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(word))
		if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != strings.ToUpper(word) {
			t.Fatalf("after %q: %q, %v", word, got, err)
		}
	}
	echo("one")
	select {
	case <-returned:
	case <-time.After(hangGuard):
		t.Fatal("ServeConn still runs while its connection waits for the client")
	}
	select {
	case <-done:
		t.Fatal("done ran while the connection serves")
	default:
	}
	echo("two") // read on the reader's own goroutine
	_ = pw.Close()
	if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
		t.Fatalf("the end: %q, %v", rest, err)
	}
	resp.Body.Close()
	cl.CloseIdleConnections() // the client goes: the connection ends
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("done did not run after the connection ended")
	}
	select {
	case <-done:
		t.Fatal("done ran twice")
	default:
	}
}

// TestTableSizeUpdate: once a client allows its HPACK decoder less than
// the default 4096 bytes of dynamic table, every response header block
// begins with a dynamic table size update (RFC 7541, section 4.2), which
// decoders such as nghttp2's require; a client that allows more gets none.
func TestTableSizeUpdate(t *testing.T) {
	addr, _ := serve(t, http.NotFoundHandler(), nil)
	for _, tc := range []struct {
		size uint32
		want bool
	}{{0, true}, {100, true}, {65536, false}} {
		rc := dial(t, addr, http2.Setting{ID: http2.SettingHeaderTableSize, Val: tc.size})
		rc.fr.ReadMetaHeaders = nil
		rc.until("the SETTINGS ACK", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && s.IsAck() })
		for _, id := range []uint32{1, 3} {
			block := rc.rawHeaders(id).HeaderBlockFragment()
			if got := block[0]&0xe0 == 0x20; got != tc.want {
				t.Errorf("table size %d, stream %d: the block begins with a size update: %v, want %v", tc.size, id, got, tc.want)
			}
			dec := hpack.NewDecoder(min(tc.size, 4096), nil)
			if fields, err := dec.DecodeFull(block); err != nil || len(fields) == 0 || fields[0].Value != "404" {
				t.Errorf("table size %d, stream %d: decoded %v, %v", tc.size, id, fields, err)
			}
		}
	}
}

// TestDuplicateEmptyAuthority: an :authority twice is malformed, the first
// empty too.
func TestDuplicateEmptyAuthority(t *testing.T) {
	ran := make(chan string, 1)
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { ran <- r.Host }), nil)
	rc := dial(t, addr)
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", ""}, {":authority", "elsewhere.test"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	f := rc.until("stream 1's answer or reset", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			return f.StreamID == 1
		case *http2.MetaHeadersFrame:
			return f.StreamID == 1
		}
		return false
	})
	if r, ok := f.(*http2.RSTStreamFrame); !ok || r.ErrCode != http2.ErrCodeProtocol {
		t.Fatalf("answered %v, want RST_STREAM PROTOCOL_ERROR", f)
	}
	select {
	case host := <-ran:
		t.Fatalf("the handler ran, for host %q", host)
	default:
	}
}

// sendLate sends on stream id, which the server has closed, the rest of a
// body and trailers, as a client that had not yet read its RST_STREAM
// would; it fails the test if the server answers them (an RST_STREAM, or
// a GOAWAY) before it answers a PING sent after them.
func (rc *rawClient) sendLate(id uint32) {
	rc.t.Helper()
	if err := rc.fr.WriteData(id, false, []byte("the body, in flight")); err != nil {
		rc.t.Fatal(err)
	}
	var b bytes.Buffer
	_ = hpack.NewEncoder(&b).WriteField(hpack.HeaderField{Name: "x-checksum", Value: "1"})
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		rc.t.Fatal(err)
	}
	if err := rc.fr.WritePing(false, [8]byte{7}); err != nil {
		rc.t.Fatal(err)
	}
	rc.until("the PING's ACK", func(f http2.Frame) bool {
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			rc.t.Fatalf("GOAWAY %v %q for frames on a stream just closed", f.ErrCode, f.DebugData())
		case *http2.RSTStreamFrame:
			rc.t.Fatalf("RST_STREAM %v of stream %d again", f.ErrCode, f.StreamID)
		case *http2.PingFrame:
			return f.IsAck()
		}
		return false
	})
}

// TestFramesAfterAnEarlyEnd: the DATA and trailers a client sent before
// it read the RST_STREAM of a stream whose handler ended first are
// ignored (RFC 9113, section 5.1), and the connection's other streams go
// on.
func TestFramesAfterAnEarlyEnd(t *testing.T) {
	release := make(chan struct{})
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/long" {
			<-release
		}
	}), nil)
	rc := dial(t, addr)
	rc.request(1, "/long", true)
	rc.request(3, "/early", false)
	if code := rc.reset(3); code != http2.ErrCodeNo {
		t.Fatalf("stream 3: RST_STREAM %v, want NO_ERROR", code)
	}
	rc.sendLate(3)
	close(release)
	rc.until("the answer on stream 1", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1
	})
}

// TestWindowOfAResetStream: a SETTINGS_INITIAL_WINDOW_SIZE that takes the
// window of a stream the client reset past 2^31-1 is no error: the stream
// sends nothing more.
func TestWindowOfAResetStream(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release // a handler that does not watch its context, for a while
	}), nil)
	defer close(release)
	rc := dial(t, addr)
	rc.request(1, "/", true)
	<-started
	for _, err := range []error{
		rc.fr.WriteWindowUpdate(1, 1<<31-1-65535),
		rc.fr.WriteRSTStream(1, http2.ErrCodeCancel),
		rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 65536}),
		rc.fr.WritePing(false, [8]byte{7}),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	rc.until("the PING's ACK", func(f http2.Frame) bool {
		if g, ok := f.(*http2.GoAwayFrame); ok {
			t.Fatalf("GOAWAY %v %q for the window of a stream the client reset", g.ErrCode, g.DebugData())
		}
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck()
	})
}

// stallServer serves h with WriteByteTimeout timeout on a fake clock.
func stallServer(t *testing.T, h http.Handler, timeout time.Duration) (string, *clock.Fake) {
	fake := clock.NewFake(time.Unix(1_000_000, 0))
	srv := &h2.Server{
		Handler: h,
		Config:  &http.Server{HTTP2: &http.HTTP2Config{WriteByteTimeout: timeout}},
		Clock:   fake,
	}
	addr, _ := serveH2(t, srv)
	return addr, fake
}

// stallConn is a server's side of a connection whose writes block once
// left bytes have gone, until it is closed: a client that stops reading,
// on cue. blocked is closed as the first write blocks.
type stallConn struct {
	net.Conn
	mu      sync.Mutex
	left    int
	blocked chan struct{}
	closed  chan struct{}
	block   sync.Once
	close   sync.Once
}

func (c *stallConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if len(p) <= c.left {
		c.left -= len(p)
		c.mu.Unlock()
		return c.Conn.Write(p)
	}
	c.mu.Unlock()
	c.block.Do(func() { close(c.blocked) })
	<-c.closed
	return 0, net.ErrClosed
}

func (c *stallConn) Close() error {
	c.close.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestStalledConnectionIsClosed: a client that reads nothing holds a
// handler's write, and every writer of its connection behind it, only
// until the write has made no progress for WriteByteTimeout: then the
// connection is closed, however alive the client otherwise is.
func TestStalledConnectionIsClosed(t *testing.T) {
	const timeout = 10 * time.Second
	wrote := make(chan error, 1)
	fake := clock.NewFake(time.Unix(1_000_000, 0))
	srv := &h2.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, err := w.Write(make([]byte, 1<<20))
			wrote <- err
		}),
		Config: &http.Server{HTTP2: &http.HTTP2Config{WriteByteTimeout: timeout}},
		Clock:  fake,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc := dial(t, ln.Addr().String(), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	nc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sc := &stallConn{Conn: nc, left: 64 << 10, blocked: make(chan struct{}), closed: make(chan struct{})}
	if _, err := io.ReadFull(nc, make([]byte, len(http2.ClientPreface))); err != nil {
		t.Fatal(err)
	}
	ended := make(chan struct{})
	go srv.ServeConn(context.Background(), sc, func() { close(ended) }) // inline: sc is not a socket
	defer func() {
		_ = sc.Close()
		<-ended
	}()
	if err := rc.fr.WriteWindowUpdate(0, 1<<31-1-65535); err != nil {
		t.Fatal(err)
	}
	rc.request(1, "/", true)
	<-sc.blocked
	// The check runs as Advance moves the clock past it: the first notes
	// the write under way, and the connection closes a timeout later.
	for range 2 {
		fake.Advance(timeout / 2)
		select {
		case <-sc.closed:
			t.Fatal("closed before the write had made no progress for the timeout")
		default:
		}
	}
	fake.Advance(timeout / 2)
	select {
	case <-sc.closed:
	default:
		t.Fatal("the connection is open a timeout after its write stalled")
	}
	if err := <-wrote; err == nil {
		t.Fatal("the handler's write ended well")
	}
}

// TestStreamWaitingForWindowIsReset: a stream whose write waits for a
// flow-control window the client never gives is reset (CANCEL) once it
// has had none for WriteByteTimeout, and its handler's write fails; a
// window given now and then, however small, keeps it.
func TestStreamWaitingForWindowIsReset(t *testing.T) {
	const timeout = 10 * time.Second
	// The bytes the handler's write has left each time it waits for
	// window: the stall check sees a write wait only once it does, which
	// a busy machine can put off past the client's next frames.
	waits := make(chan int, 16)
	defer h2.OnWindowWait(func(left int) {
		select {
		case waits <- left:
		default: // never blocks the server, which holds its lock
		}
	})()
	wrote := make(chan error, 1)
	addr, fake := stallServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := w.Write(bytes.Repeat([]byte("x"), 1000))
		if err == nil {
			err = http.NewResponseController(w).Flush()
		}
		wrote <- err
	}), timeout)
	rc := dial(t, addr, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	rc.request(1, "/", true)
	rc.until("the response's header", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1
	})
	// A byte of window every half timeout, for three timeouts: the
	// stream goes on.
	for range 6 {
		if err := rc.fr.WriteWindowUpdate(1, 1); err != nil {
			t.Fatal(err)
		}
		rc.until("a byte of DATA", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				t.Fatalf("RST_STREAM %v of a stream given window", f.ErrCode)
			case *http2.DataFrame:
				return len(f.Data()) == 1
			}
			return false
		})
		fake.Advance(timeout / 2)
	}
	// No more window, once the write waits for it with its 6 bytes sent:
	// reset within a few checks. The check queues the RST_STREAM as
	// Advance runs it, so it comes before the ACK of a PING sent after.
	for left := 0; left != 1000-6; {
		select {
		case left = <-waits:
		case <-time.After(hangGuard): // a bound on the failure, not a wait for an event
			t.Fatal("the handler's write never waited for window after its sixth byte")
		}
	}
	for i := range 20 {
		fake.Advance(timeout / 2)
		if err := rc.fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		reset := false
		rc.until("the PING's ACK", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				if f.StreamID != 1 || f.ErrCode != http2.ErrCodeCancel {
					t.Fatalf("RST_STREAM %v of stream %d, want CANCEL of 1", f.ErrCode, f.StreamID)
				}
				reset = true
			case *http2.PingFrame:
				return f.IsAck()
			}
			return false
		})
		if reset {
			if err := <-wrote; err == nil {
				t.Fatal("the handler's write ended well without its window")
			}
			t.Logf("reset after %d checks without window", i+1)
			return
		}
	}
	t.Fatal("a stream with no window for ten timeouts is not reset")
}

// TestGoingIdleKeepsAnEarlierCheck: a connection going idle arms its idle
// timeout, but never later than the check already due (here the stall
// check's): a client that opens and ends streams must not put the stall
// and liveness checks off for good.
func TestGoingIdleKeepsAnEarlierCheck(t *testing.T) {
	const timeout = 10 * time.Second
	start := time.Unix(1_000_000, 0)
	fake := clock.NewFake(start)
	srv := &h2.Server{
		Handler: http.NotFoundHandler(),
		Config:  &http.Server{IdleTimeout: time.Hour, HTTP2: &http.HTTP2Config{WriteByteTimeout: timeout}},
		Clock:   fake,
	}
	addr, _ := serveH2(t, srv)
	armed := fake.Armed()
	rc := dial(t, addr)
	rc.until("the SETTINGS ACK", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && s.IsAck() })
	<-armed // the connection's first check, at start + timeout/2
	fake.Advance(timeout * 4 / 10)
	armed = fake.Armed()
	rc.request(1, "/", true)
	rc.until("the answer", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1
	})
	<-armed // idle again
	if next, ok := fake.Next(); !ok || !next.Equal(start.Add(timeout/2)) {
		t.Fatalf("the check is armed for %v (%v), want start + %v: going idle put it off", next.Sub(start), ok, timeout/2)
	}
}

// TestFramesAfterARefusal: the body and trailers a client sent with a
// request refused before it opened (malformed, or past
// MAX_CONCURRENT_STREAMS) are ignored, as after an early end.
func TestFramesAfterARefusal(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
		code  http2.ErrCode
	}{
		{"malformed", []string{"connection", "close"}, http2.ErrCodeProtocol},
		{"refused", nil, http2.ErrCodeRefusedStream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			defer close(release)
			addr, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }),
				func(hs *http.Server) { hs.HTTP2.MaxConcurrentStreams = 1 })
			rc := dial(t, addr)
			rc.until("the server's SETTINGS", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })
			rc.request(1, "/hold", true)
			rc.request(3, "/refused", false, tc.extra...)
			if code := rc.reset(3); code != tc.code {
				t.Fatalf("RST_STREAM %v, want %v", code, tc.code)
			}
			rc.sendLate(3)
		})
	}
}
