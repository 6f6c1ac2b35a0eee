package h2_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrysync/ferry/internal/h2"
)

// TestHeadersOnAStreamThatEnded: a client that has read a response's
// END_STREAM and sends HEADERS on that stream again gets a connection
// error of type STREAM_CLOSED (RFC 9113 5.1), whatever the server's
// goroutines are doing. The stream was marked ended only once its last
// frame's write returned: a HEADERS read in between was taken for one on
// a stream still sending, and answered RST_STREAM (h2spec's 5.1/12 failed
// so, now and then, in CI). The server's write here is held after its
// bytes have gone, until its reader has handled the client's HEADERS.
func TestHeadersOnAStreamThatEnded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &h2.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), Config: &http.Server{HTTP2: &http.HTTP2Config{}}}
	defer srv.Shutdown()
	held := &holdingConn{held: make(chan struct{}), release: make(chan struct{}), handled: make(chan struct{})}
	served := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(served)
			return
		}
		buf := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(c, buf); err != nil {
			_ = c.Close()
			close(served)
			return
		}
		held.Conn = c
		srv.ServeConn(context.Background(), held, func() { close(served) })
	}()
	defer func() { <-served }()

	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(hangGuard))
	cc := &countingConn{Conn: nc}
	if _, err := io.WriteString(cc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(cc, cc)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	rc := &rawClient{t: t, c: cc, fr: fr}
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	rc.until("the server's settings", func(f http2.Frame) bool { s, ok := f.(*http2.SettingsFrame); return ok && !s.IsAck() })

	rc.request(1, "/", true)
	rc.until("the response's end", func(f http2.Frame) bool {
		h, ok := f.(*http2.MetaHeadersFrame)
		return ok && h.StreamID == 1 && h.StreamEnded()
	})
	wait := func(ch <-chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(hangGuard): // a bound on the failure, not a wait for an event
			close(held.release)
			t.Fatalf("the server never %s", what)
		}
	}
	wait(held.held, "held the write of the end") // its bytes have gone; it has not returned
	rc.request(1, "/", true)
	held.await(cc.written.Load())
	wait(held.handled, "read on after the client's HEADERS")
	close(held.release)
	f := rc.until("the answer to HEADERS on a stream that ended", func(f http2.Frame) bool {
		switch f.(type) {
		case *http2.GoAwayFrame, *http2.RSTStreamFrame:
			return true
		}
		return false
	})
	if g, ok := f.(*http2.GoAwayFrame); !ok || g.ErrCode != http2.ErrCodeStreamClosed {
		t.Fatalf("HEADERS on a stream whose END_STREAM the client read: %v; want GOAWAY, STREAM_CLOSED", f)
	}
}

// countingConn counts the bytes written to it.
type countingConn struct {
	net.Conn
	written atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// holdingConn is the server's side of a connection. Its first write that
// completes a frame ending stream 1 returns only on release, after its
// bytes have gone. handled closes once the server has read want bytes
// (await) and begun another read: it has handled every frame in them.
type holdingConn struct {
	net.Conn
	held, release, handled chan struct{}

	// Writes: the frame being written (its header's bytes, then how much
	// of its payload is left) and whether it ends stream 1.
	hdr     []byte
	left    int
	ending  bool
	holding bool // held once

	mu         sync.Mutex
	read, want int64
	waiting    bool
	inRead     bool  // a Read has begun and not returned
	readFrom   int64 // read when it began
}

func (c *holdingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	ended := false
	for q := p[:n]; len(q) > 0; {
		if c.left > 0 {
			k := min(c.left, len(q))
			c.left, q = c.left-k, q[k:]
			ended = ended || c.left == 0 && c.ending
			continue
		}
		k := min(9-len(c.hdr), len(q))
		c.hdr, q = append(c.hdr, q[:k]...), q[k:]
		if len(c.hdr) < 9 {
			continue
		}
		length := int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
		typ, flags := http2.FrameType(c.hdr[3]), http2.Flags(c.hdr[4])
		stream := uint32(c.hdr[5]&0x7f)<<24 | uint32(c.hdr[6])<<16 | uint32(c.hdr[7])<<8 | uint32(c.hdr[8])
		c.ending = stream == 1 && (typ == http2.FrameHeaders || typ == http2.FrameData) && flags.Has(http2.FlagDataEndStream)
		c.left, c.hdr = length, c.hdr[:0]
		ended = ended || length == 0 && c.ending
	}
	if ended && !c.holding {
		c.holding = true
		close(c.held)
		<-c.release
	}
	return n, err
}

func (c *holdingConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.waiting && c.read >= c.want {
		c.waiting = false
		close(c.handled)
	}
	c.inRead, c.readFrom = true, c.read
	c.mu.Unlock()
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read += int64(n)
	c.inRead = false
	c.mu.Unlock()
	return n, err
}

// await arms handled for the bytes the client has written so far, counted
// from after the preface (which the test's acceptor reads). A read begun
// after them, and still waiting, has handled them already.
func (c *holdingConn) await(written int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.want, c.waiting = written-int64(len(http2.ClientPreface)), true
	if c.inRead && c.readFrom >= c.want {
		c.waiting = false
		close(c.handled)
	}
}
