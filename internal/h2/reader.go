package h2

import (
	"io"
	"net"
)

// readBufSize is a connection's read buffer: it holds every control frame
// and the small DATA frames of a chat client (acks, pushes of a few
// messages) whole, so that several arrive in one read system call. Larger
// payloads are read straight into a buffer of their size.
const readBufSize = 1 << 10

// reader reads frames from a connection: only its reader goroutine uses it.
type reader struct {
	nc   net.Conn
	buf  [readBufSize]byte
	r, w int // buf[r:w] is read and not yet consumed
}

// fill reads until at least n (<= readBufSize) bytes are buffered.
func (r *reader) fill(n int) error {
	if r.w-r.r >= n {
		return nil
	}
	if r.r+n > len(r.buf) {
		r.w = copy(r.buf[:], r.buf[r.r:r.w])
		r.r = 0
	}
	for r.w-r.r < n {
		m, err := r.nc.Read(r.buf[r.w:])
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

// next returns the next n bytes, which stay valid until the next call.
// n is at most readBufSize.
func (r *reader) next(n int) ([]byte, error) {
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

// payload returns the next n bytes: in the buffer when they fit, else in
// one allocated for them.
func (r *reader) payload(n int) ([]byte, error) {
	if n <= readBufSize {
		return r.next(n)
	}
	p := make([]byte, n)
	m := copy(p, r.buf[r.r:r.w])
	r.r, r.w = 0, 0
	if _, err := io.ReadFull(r.nc, p[m:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return p, nil
}

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
