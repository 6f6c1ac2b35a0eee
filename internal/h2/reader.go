package h2

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// readBufSize is a connection's read buffer: it holds every control frame
// and the small DATA frames of a chat client (acks, pushes of a few
// messages) whole, so that several arrive in one read system call. Larger
// payloads are read straight into a buffer of their size.
const readBufSize = 1 << 10

// readBufs holds the read buffers of connections that have nothing
// buffered: a connection waits for the client without one (see
// reader.read), and most of a chat server's connections wait.
var readBufs = sync.Pool{New: func() any { return new([readBufSize]byte) }}

// reader reads frames from a connection: only its reader goroutine uses it.
type reader struct {
	nc net.Conn
	// raw, when set, is nc's: with nothing buffered, the reader waits
	// for the client with its buffer back in readBufs. nil: nc is no
	// TCP or Unix socket of the net package's, and the reader keeps its
	// buffer.
	raw  syscall.RawConn
	buf  *[readBufSize]byte // nil while nothing is buffered, when raw
	r, w int                // buf[r:w] is read and not yet consumed
	// move, when set, makes a wait for the next frame's first bytes
	// fail with errMove instead (see conn.run): header sets atFrame
	// from it while it reads them. Both only when raw.
	move, atFrame bool
	// testWait, when set (by tests), runs as the reader is about to wait
	// for the client with nothing buffered.
	testWait func()
}

// errMove is what a read returns when the reader should go on reading on
// a fresh goroutine (reader.move).
var errMove = errors.New("h2: the reader moves to a fresh goroutine")

func newReader(nc net.Conn) reader {
	r := reader{nc: nc}
	// A socket of the net package's only: a type that embeds one (a
	// PROXY protocol listener's, one that counts bytes) has its
	// SyscallConn, and a Read of its own that raw reads would pass by.
	var sc syscall.Conn
	switch c := nc.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	}
	if sc != nil && rawReads {
		r.raw, _ = sc.SyscallConn()
	}
	if r.raw == nil {
		r.buf = new([readBufSize]byte)
	}
	return r
}

// fill reads until at least n (<= readBufSize) bytes are buffered.
func (r *reader) fill(n int) error {
	if r.w-r.r >= n {
		return nil
	}
	if r.r+n > readBufSize {
		r.w = copy(r.buf[:], r.buf[r.r:r.w])
		r.r = 0
	}
	for r.w-r.r < n {
		m, err := r.read()
		r.w += m
		if err != nil {
			if r.w-r.r >= n {
				return nil
			}
			if err == io.EOF && r.w > r.r {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// read reads once into buf[w:]. With nothing buffered and a raw
// connection, it gives the buffer back while it waits for the client,
// and takes one when there is something to read: a read of a socket that
// has nothing returns EAGAIN, and the runtime's poller wakes the reader
// once it has.
func (r *reader) read() (int, error) {
	if r.raw == nil || r.w > 0 {
		return r.nc.Read(r.buf[r.w:])
	}
	if r.buf != nil {
		readBufs.Put(r.buf)
		r.buf = nil
	}
	var n int
	var rerr error
	moving := false
	err := r.raw.Read(func(fd uintptr) bool {
		buf := readBufs.Get().(*[readBufSize]byte)
		for {
			n, rerr = rawRead(fd, buf[:])
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			readBufs.Put(buf)
			if r.atFrame {
				moving = true
				return true
			}
			if r.testWait != nil {
				r.testWait()
			}
			return false // the runtime waits until the socket has data
		}
		r.buf = buf
		return true
	})
	switch {
	case err != nil:
		return 0, err // the connection's: closed, or past its read deadline
	case moving:
		return 0, errMove
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// next returns the next n bytes, which stay valid until the next call.
// n is at most readBufSize.
func (r *reader) next(n int) ([]byte, error) {
	if n == 0 {
		return nil, nil // buf may be nil, back in the pool
	}
	if err := r.fill(n); err != nil {
		return nil, err
	}
	p := r.buf[r.r : r.r+n]
	r.r += n
	if r.r == r.w {
		r.r, r.w = 0, 0
	}
	return p, nil
}

// header returns the next frame's header, which stays valid until the
// next call. With move set, it returns errMove rather than wait for the
// frame to begin.
func (r *reader) header() ([]byte, error) {
	r.atFrame = r.move
	p, err := r.next(frameHeaderLen)
	r.atFrame = false
	return p, err
}

// payload returns the next n bytes: in the buffer when they fit, else in
// one allocated for them, which grows as they arrive, doubling, to no
// more than twice the bytes read plus payloadStep. A frame's header
// declares its length, and a client that declares a large frame and sends
// nothing of it must not make the server allocate it and hold it.
func (r *reader) payload(n int) ([]byte, error) {
	if n <= readBufSize {
		return r.next(n)
	}
	p := make([]byte, 0, min(n, payloadStep))
	if r.w > r.r { // buf may be nil, back in the pool, when nothing is buffered
		// Fewer than readBufSize bytes, all of them this payload's.
		p = append(p, r.buf[r.r:r.w]...)
	}
	r.r, r.w = 0, 0
	for len(p) < n {
		if len(p) == cap(p) {
			p = append(make([]byte, 0, min(n, len(p)+max(len(p), payloadStep))), p...)
		}
		m, err := r.nc.Read(p[len(p):cap(p)])
		p = p[:len(p)+m]
		if err != nil && len(p) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return p, nil
}

// payloadStep is the most a payload's buffer is allocated ahead of the
// first bytes that fill it.
const payloadStep = 16 << 10

// discard skips n bytes.
func (r *reader) discard(n int) error {
	for n > 0 {
		k := min(n, readBufSize)
		if _, err := r.next(k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}
