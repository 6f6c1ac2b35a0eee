package h2

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// tcpPair is a loopback TCP connection's two ends.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestReaderWaitsWithoutABuffer: a reader with nothing buffered waits for
// the client with its buffer given back, and reads what comes whole: a
// frame in one read, a frame in pieces, a payload larger than the buffer,
// then the end.
func TestReaderWaitsWithoutABuffer(t *testing.T) {
	if !rawReads {
		t.Skip("no raw reads on this system: a connection keeps its buffer")
	}
	client, server := tcpPair(t)
	r := newReader(server)
	waiting := make(chan bool, 1) // whether the reader held a buffer as it waited
	r.testWait = func() {
		select {
		case waiting <- r.buf != nil:
		default:
		}
	}
	type read struct {
		p   []byte
		err error
	}
	reads := make(chan read)
	// next reads n bytes on a goroutine of its own, as the connection's
	// reader does, and returns a copy.
	next := func(n int, payload bool) <-chan read {
		go func() {
			var p []byte
			var err error
			if payload {
				p, err = r.payload(n)
			} else {
				p, err = r.next(n)
			}
			reads <- read{bytes.Clone(p), err}
		}()
		return reads
	}
	awaitWait := func() {
		t.Helper()
		select {
		case held := <-waiting:
			if held {
				t.Fatal("the reader held its buffer while it waited")
			}
		case <-time.After(time.Minute): // a guard, not a wait
			t.Fatal("the reader did not wait")
		}
	}
	write := func(s string) {
		t.Helper()
		if _, err := client.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(got <-chan read, want string) {
		t.Helper()
		g := <-got
		if g.err != nil || string(g.p) != want {
			t.Fatalf("read %q, %v; want %q", g.p, g.err, want)
		}
	}

	got := next(9, false)
	awaitWait()
	write("123456789")
	expect(got, "123456789")

	got = next(9, false)
	awaitWait()
	write("abc") // the rest is read with the buffer held
	write("defghi")
	expect(got, "abcdefghi")

	big := string(bytes.Repeat([]byte("x"), 3*readBufSize))
	got = next(len(big), true) // read into a buffer of its own
	write(big)
	expect(got, big)

	got = next(1, false)
	awaitWait()
	client.Close()
	if g := <-got; !errors.Is(g.err, io.EOF) {
		t.Fatalf("read %q, %v at the end; want EOF", g.p, g.err)
	}
}

// prefixTCPConn is a connection of the kind some listeners hand out (the
// PROXY protocol's, one that counts bytes): its Read serves bytes of its
// own first. Embedding *net.TCPConn gives it SyscallConn.
type prefixTCPConn struct {
	*net.TCPConn
	r io.Reader
}

func (c *prefixTCPConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestReaderHonoursAWrappersRead: a connection that wraps a socket is
// read through its Read, not the socket's: what that returns first comes
// first.
func TestReaderHonoursAWrappersRead(t *testing.T) {
	client, server := tcpPair(t)
	tc := server.(*net.TCPConn)
	r := newReader(&prefixTCPConn{TCPConn: tc, r: io.MultiReader(strings.NewReader("abc"), tc)})
	if _, err := client.Write([]byte("def")); err != nil {
		t.Fatal(err)
	}
	if p, err := r.next(6); err != nil || string(p) != "abcdef" {
		t.Fatalf("read %q, %v; want \"abcdef\", the wrapper's bytes first", p, err)
	}
}

// chunkConn serves data in reads of at most chunk bytes, then io.EOF, and
// records the room each read was given.
type chunkConn struct {
	net.Conn
	data  []byte
	chunk int
	rooms []int // len(p) of each read
	gave  []int // bytes served before each read
	sent  int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	c.rooms = append(c.rooms, len(p))
	c.gave = append(c.gave, c.sent)
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.data)
	c.data = c.data[n:]
	c.sent += n
	return n, nil
}

// TestPayloadGrowsWithItsBytes: a frame's header declares its length, and
// the reader's buffer for a payload grows with the bytes that arrive:
// each read's room is at most what arrived before it plus payloadStep. A
// payload that never comes costs payloadStep, not its declared length.
func TestPayloadGrowsWithItsBytes(t *testing.T) {
	const declared = 1 << 20
	for _, tc := range []struct {
		name string
		sent int
	}{
		{"whole", declared},
		{"cut short", 10},
		{"cut short later", 100 << 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := bytes.Repeat([]byte("0123456789abcdef"), tc.sent/16+1)[:tc.sent]
			c := &chunkConn{data: data, chunk: 4 << 10}
			r := newReader(c)
			p, err := r.payload(declared)
			if tc.sent == declared {
				if err != nil || !bytes.Equal(p, data) {
					t.Fatalf("payload: %d bytes, %v; want the %d sent", len(p), err, declared)
				}
			} else if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("payload cut short: %v, want io.ErrUnexpectedEOF", err)
			}
			for i, room := range c.rooms {
				if room > c.gave[i]+payloadStep {
					t.Fatalf("read %d had room for %d bytes with %d arrived: more than %d ahead", i, room, c.gave[i], payloadStep)
				}
			}
		})
	}
}
