package h2

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
)

// stream is one request and its response. Its fields are guarded by the
// connection's mu, except where said.
type stream struct {
	c      *conn
	id     uint32
	cond   sync.Cond // on c.mu: body data, send window, reset, deadlines
	cancel context.CancelFunc
	done   <-chan struct{} // closed when the stream is reset or its handler returns

	sendWin     int64     // what we may still send
	waitingSend bool      // a write waits for window
	stallSince  time.Time // when the stall check first saw it wait for window, since it last had some (conn.stalledLocked)

	writeErr     error   // why writes fail
	recvWin      int32   // what the client may still send
	recvCredit   int32   // consumed since the last WINDOW_UPDATE
	body         []byte  // unread; in bodyBuf's array, or one append grew
	bodyBuf      *[]byte // from bodyPool, until the body is drained
	bodyErr      error   // io.EOF after END_STREAM, else why reads fail
	bodyClosed   bool    // the handler closed the body
	declLen      int64   // the request's content-length; -1: none
	gotLen       int64
	trailer      http.Header // the request's trailers, as received
	reqTrailer   http.Header // the request's Trailer: the handler reads them there after EOF
	counted      bool        // against MAX_CONCURRENT_STREAMS
	reset        bool        // either side sent RST_STREAM, or the connection ended
	peerReset    bool        // the client sent RST_STREAM
	localEnded   bool        // END_STREAM went
	remoteClosed bool        // END_STREAM received
	readExpired  bool
	rDeadline    time.Time // the read deadline rTimer is for
	wDeadline    time.Time // the write deadline wTimer is for
	rTimer       *time.Timer
	wTimer       *time.Timer
}

// closeRemote marks the client's side ended. The caller holds mu.
func (st *stream) closeRemote() {
	st.remoteClosed = true
	if st.bodyErr == nil {
		st.bodyErr = io.EOF
	}
}

// bodyPool holds request-body buffers: a stream holds one only while it
// has data the handler has not read.
var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// appendBody adds data for the handler to read. The caller holds mu.
func (st *stream) appendBody(data []byte) {
	if st.body == nil && st.bodyBuf == nil && len(data) <= 16<<10 {
		st.bodyBuf = bodyPool.Get().(*[]byte)
		st.body = (*st.bodyBuf)[:0]
	}
	st.body = append(st.body, data...)
}

// dropBody lets go of the unread body. The caller holds mu.
// Reads reslice body, so the pooled array is kept in bodyBuf to go back.
func (st *stream) dropBody() {
	if st.bodyBuf != nil {
		bodyPool.Put(st.bodyBuf)
		st.bodyBuf = nil
	}
	st.body = nil
}

// body is a request's body.
type body struct{ st *stream }

func (b *body) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	for {
		switch {
		case st.bodyClosed:
			c.mu.Unlock()
			return 0, errors.New("http2: read of a closed request body")
		case len(st.body) > 0:
			if len(p) == 0 {
				c.mu.Unlock()
				return 0, nil
			}
			n := copy(p, st.body)
			if n == len(st.body) {
				st.dropBody()
			} else {
				st.body = st.body[n:]
			}
			c.creditLocked(st, int64(n))
			c.mu.Unlock()
			return n, nil
		case st.bodyErr != nil:
			err := st.bodyErr
			if err == io.EOF && st.trailer != nil {
				// The trailers the handler declared, and those it did not,
				// as net/http gives them.
				for k, vv := range st.trailer {
					if st.reqTrailer != nil {
						st.reqTrailer[k] = vv
					}
				}
				st.trailer = nil
				c.mu.Unlock()
				return 0, io.EOF
			}
			c.mu.Unlock()
			return 0, err
		case st.readExpired:
			c.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		st.cond.Wait()
	}
}

func (b *body) Close() error {
	st := b.st
	c := st.c
	c.mu.Lock()
	if !st.bodyClosed {
		st.bodyClosed = true
		c.creditLocked(st, int64(len(st.body)))
		st.dropBody()
		st.cond.Broadcast()
	}
	c.mu.Unlock()
	return nil
}

// runHandler serves one stream, and ends it.
func (c *conn) runHandler(st *stream, req *http.Request, h http.Handler) {
	w := &responseWriter{st: st, req: req, header: make(http.Header)}
	defer c.handlerDone(st, w)
	h.ServeHTTP(w, req)
	w.finish()
}

// handlerDone ends a stream whose handler returned (or panicked), and
// starts a stream that waited for a handler to end.
func (c *conn) handlerDone(st *stream, w *responseWriter) {
	code := http2.ErrCodeNo
	if p := recover(); p != nil {
		if p != http.ErrAbortHandler {
			buf := make([]byte, 64<<10)
			buf = buf[:runtime.Stack(buf, false)]
			c.srv.logf("http2: panic serving %s: %v\n%s", c.remoteAddr, p, buf)
		}
		code = http2.ErrCodeInternal
	}
	w.release()
	c.mu.Lock()
	sendReset := !st.reset && (code != http2.ErrCodeNo || !st.remoteClosed || !w.ended)
	if !w.ended && code == http2.ErrCodeNo {
		code = http2.ErrCodeInternal // the response could not be finished
	}
	c.resetLocked(st, errStreamClosed)
	if st.rTimer != nil {
		st.rTimer.Stop()
	}
	if st.wTimer != nil {
		st.wTimer.Stop()
	}
	c.deletedLocked(st)
	c.handlers--
	var next *pending
	for len(c.unstarted) > 0 && next == nil {
		p := c.unstarted[0]
		c.unstarted = c.unstarted[1:]
		if !p.st.reset {
			next = &p
		} else {
			c.deletedLocked(p.st)
		}
	}
	if len(c.unstarted) == 0 {
		c.unstarted = nil
	}
	if next != nil {
		c.handlers++
	}
	idle := c.streams.len() == 0 && c.handlers == 0
	if idle {
		c.becameIdleLocked()
	}
	if sendReset {
		id := st.id
		c.queueLocked(func(b []byte) []byte { return appendRSTStream(b, id, code) })
	}
	if idle && c.goingAway {
		c.finishLocked()
	}
	c.mu.Unlock()
	if next != nil {
		go c.runHandler(next.st, next.req, next.h)
	}
}

// responseWriter is a stream's http.ResponseWriter: its handler's
// goroutine is the only one to use it.
type responseWriter struct {
	st     *stream
	req    *http.Request
	header http.Header // the handler's
	// block is the header as WriteHeader found it, HPACK-encoded, until
	// HEADERS go: a few hundred bytes less garbage per response than a
	// copy of the header. Fields added after (a Content-Length or a
	// sniffed Content-Type) are appended to it; hasLength and hasType
	// tell whether the header had them.
	block     []byte
	hasLength bool
	hasType   bool
	trailer   []string // its Trailer values
	status    int      // set by WriteHeader with a final status
	sentHdr   bool     // HEADERS went
	ended     bool     // END_STREAM went
	buf       *[]byte
	err       error
}

// maxWriteChunk is the most of a response one write to the connection
// takes: others' frames and the control frames wait no longer than that.
const maxWriteChunk = 64 << 10

// respBufSize is what a response buffers before it writes without a
// Flush: Connect flushes each message, so a message goes in one write.
const respBufSize = 16 << 10

var respPool = sync.Pool{New: func() any { b := make([]byte, 0, respBufSize); return &b }}

func (w *responseWriter) Header() http.Header { return w.header }

func (w *responseWriter) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic("http2: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if w.status != 0 {
		return
	}
	if code < 200 {
		if code != http.StatusContinue && code != http.StatusSwitchingProtocols {
			w.err = w.writeInformational(code)
		}
		return
	}
	w.status = code
	w.block = appendHeader(nil, code, w.header)
	_, w.hasLength = w.header["Content-Length"]
	_, w.hasType = w.header["Content-Type"]
	w.trailer = slices.Clone(w.header["Trailer"])
}

func (w *responseWriter) writeInformational(code int) error {
	block := appendHeader(nil, code, w.header) // as the header is now
	return w.st.c.write(w.st, func(b *batch) error {
		appendHeaders(b, w.st.id, false, func(dst []byte) []byte { return append(dst, block...) })
		return nil
	})
}

func (w *responseWriter) bodyAllowed() bool {
	return w.req.Method != http.MethodHead && w.status != http.StatusNoContent && w.status != http.StatusNotModified
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed() {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.buf == nil {
		if len(p) >= respBufSize {
			if err := w.send(nil, p, false); err != nil {
				return 0, err
			}
			return len(p), nil
		}
		w.buf = respPool.Get().(*[]byte)
	}
	if len(*w.buf)+len(p) <= respBufSize {
		*w.buf = append(*w.buf, p...)
		return len(p), nil
	}
	err := w.send(*w.buf, p, false)
	*w.buf = (*w.buf)[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (w *responseWriter) WriteString(s string) (int, error) {
	// One copy either way: into the buffer, or into a slice for a long s.
	if w.buf != nil && len(*w.buf)+len(s) <= respBufSize && w.status != 0 && w.err == nil && w.bodyAllowed() {
		*w.buf = append(*w.buf, s...)
		return len(s), nil
	}
	return w.Write([]byte(s))
}

func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError sends the header, if it has not gone, and what is buffered.
func (w *responseWriter) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return w.err
	}
	var p []byte
	if w.buf != nil {
		p = *w.buf
	}
	if len(p) == 0 && w.sentHdr {
		w.release()
		st := w.st
		st.c.mu.Lock()
		defer st.c.mu.Unlock()
		return st.writeErr
	}
	err := w.send(p, nil, false)
	w.release()
	return err
}

// release gives the buffer back.
func (w *responseWriter) release() {
	if w.buf != nil {
		*w.buf = (*w.buf)[:0]
		respPool.Put(w.buf)
		w.buf = nil
	}
}

// finish ends the response when its handler returns: the header if it
// has not gone, what is buffered, and the trailers.
func (w *responseWriter) finish() {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return
	}
	var p []byte
	if w.buf != nil {
		p = *w.buf
	}
	trailers := w.trailers()
	if !w.sentHdr && trailers == nil && w.bodyAllowed() {
		if !w.hasLength {
			w.block = appendField(w.block, "content-length", strconv.Itoa(len(p)))
		}
	}
	_ = w.send(p, nil, true, trailers)
}

// trailers returns the trailers with values: those declared in the
// Trailer header, and those named with http.TrailerPrefix.
func (w *responseWriter) trailers() http.Header {
	var t http.Header
	add := func(k string, vv []string) {
		if len(vv) == 0 {
			return
		}
		if t == nil {
			t = make(http.Header)
		}
		t[k] = vv
	}
	for _, v := range w.trailer {
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			add(k, w.header[k])
		}
	}
	for k, vv := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			add(http.CanonicalHeaderKey(k[len(http.TrailerPrefix):]), vv)
		}
	}
	return t
}

// windowWaitHook, when set (by tests), is called as a stream's write
// begins to wait for flow-control window, with the bytes it has left, and
// mu held: tests learn that the stall check now sees it wait.
var windowWaitHook atomic.Pointer[func(left int)]

// send writes the header if it has not gone, then a and b as DATA (as
// the flow-control windows let it), then the trailers; end ends the
// stream.
func (w *responseWriter) send(a, b []byte, end bool, trailers ...http.Header) error {
	st, c := w.st, w.st.c
	if !w.sentHdr && w.bodyAllowed() && len(a)+len(b) > 0 {
		if !w.hasType {
			sniff := a
			if len(sniff) == 0 {
				sniff = b
			}
			w.block = appendField(w.block, "content-type", http.DetectContentType(sniff[:min(len(sniff), 512)]))
			w.hasType = true
		}
	}
	var tr http.Header
	if len(trailers) > 0 {
		tr = trailers[0]
	}
	for {
		c.mu.Lock()
		for st.writeErr == nil && len(a)+len(b) > 0 && (st.sendWin <= 0 || c.sendWin <= 0) && !c.closed.Load() {
			if !w.sentHdr {
				break // the header goes without waiting for window
			}
			st.waitingSend = true
			if f := windowWaitHook.Load(); f != nil {
				(*f)(len(a) + len(b))
			}
			st.cond.Wait()
		}
		st.waitingSend, st.stallSince = false, time.Time{}
		err := st.writeErr
		if err == nil && c.closed.Load() {
			err = errConnClosed
		}
		n := 0
		if err == nil {
			n = int(min(int64(len(a)+len(b)), max(min(st.sendWin, c.sendWin), 0), maxWriteChunk))
			st.sendWin -= int64(n)
			c.sendWin -= int64(n)
		}
		c.mu.Unlock()
		if err != nil {
			w.err = err
			return err
		}
		// This round: the header if it has not gone, n bytes of a and b,
		// and if they are the last, the end or the trailers.
		x, y := a[:min(n, len(a))], b[:n-min(n, len(a))]
		a, b = a[len(x):], b[len(y):]
		last := len(a)+len(b) == 0
		// ended marks the stream ended before the frame that ends it goes:
		// a client that reads it may send on the stream at once, and the
		// connection's reader must then find the stream closed, not still
		// sending (it answered RST_STREAM where RFC 9113 5.1 asks for a
		// connection error).
		ended := func() {
			w.ended = true
			c.mu.Lock()
			st.localEnded = true
			c.mu.Unlock()
		}
		err = c.write(st, func(bt *batch) error {
			if !w.sentHdr {
				appendHeaders(bt, st.id, end && last && n == 0 && tr == nil, func(dst []byte) []byte { return append(dst, w.block...) })
				w.sentHdr, w.block = true, nil
				if end && last && n == 0 && tr == nil {
					ended()
					return nil
				}
			}
			for first := true; first || len(x)+len(y) > 0; first = false {
				k := min(len(x)+len(y), bt.frame)
				var flags http2.Flags
				if end && last && tr == nil && k == len(x)+len(y) {
					flags = flagEndStream
					ended()
				}
				if k == 0 && flags == 0 {
					break
				}
				bt.own = appendFrameHeader(bt.own, k, frameData, flags, st.id)
				i := min(k, len(x))
				bt.add(x[:i])
				bt.add(y[:k-i])
				x, y = x[i:], y[k-i:]
			}
			if end && last && tr != nil {
				appendHeaders(bt, st.id, true, func(dst []byte) []byte { return appendTrailers(dst, tr) })
				ended()
			}
			return nil
		})
		c.mu.Lock()
		st.localEnded = w.ended
		if err != nil {
			c.sendWin += int64(n) // not sent
			c.wakeSendersLocked()
			if st.writeErr != nil {
				err = st.writeErr
			}
		}
		c.mu.Unlock()
		if err != nil {
			w.err = err
			return err
		}
		if last {
			return nil
		}
	}
}

// appendHeader encodes a response header: :status, the fields a response
// may have over HTTP/2, and a Date if it has none.
func appendHeader(dst []byte, status int, h http.Header) []byte {
	dst = appendField(dst, ":status", statusText(status))
	hasDate := false
	for k, vv := range h {
		switch k {
		case "Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Trailer":
			continue
		case "Date":
			hasDate = true
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		lk := lower(k)
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				dst = appendField(dst, lk, v)
			}
		}
	}
	if !hasDate && status >= 200 {
		dst = appendField(dst, "date", time.Now().UTC().Format(http.TimeFormat))
	}
	return dst
}

func appendTrailers(dst []byte, t http.Header) []byte {
	for k, vv := range t {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		lk := lower(k)
		for _, v := range vv {
			if httpguts.ValidHeaderFieldValue(v) {
				dst = appendField(dst, lk, v)
			}
		}
	}
	return dst
}

func statusText(code int) string {
	switch code {
	case 200:
		return "200"
	case 400:
		return "400"
	case 404:
		return "404"
	}
	return strconv.Itoa(code)
}

// SetReadDeadline makes the body's reads fail with os.ErrDeadlineExceeded
// from t; the zero time: never. The stream goes on.
func (w *responseWriter) SetReadDeadline(t time.Time) error {
	st, c := w.st, w.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.rTimer != nil {
		st.rTimer.Stop()
		st.rTimer = nil
	}
	st.rDeadline, st.readExpired = t, false
	switch {
	case t.IsZero():
	case !t.After(time.Now()):
		st.readExpired = true
		st.cond.Broadcast()
	default:
		st.rTimer = time.AfterFunc(time.Until(t), func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if st.rDeadline.Equal(t) { // not changed since, while this waited for mu
				st.readExpired = true
				st.cond.Broadcast()
			}
		})
	}
	return nil
}

// SetWriteDeadline resets the stream at t if a write is still under way
// or waiting then, and fails its writes from then on; the zero time:
// never.
func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	st, c := w.st, w.st.c
	c.mu.Lock()
	if st.wTimer != nil {
		st.wTimer.Stop()
		st.wTimer = nil
	}
	st.wDeadline = t
	if !t.IsZero() && t.After(time.Now()) {
		st.wTimer = time.AfterFunc(time.Until(t), func() {
			c.writeExpired(st, t)
		})
	}
	c.mu.Unlock()
	if !t.IsZero() && !t.After(time.Now()) {
		c.writeExpired(st, t)
	}
	return nil
}

// EnableFullDuplex does nothing: HTTP/2 is full duplex.
func (w *responseWriter) EnableFullDuplex() error { return nil }

// batch is what one write to the connection sends: frames and small
// payloads copied into own, larger payloads written from where they are
// (writev).
type batch struct {
	own   []byte
	mark  int   // own[:mark] is in bufs already
	frame int   // the peer's SETTINGS_MAX_FRAME_SIZE as the write began: after any SETTINGS ACK in it
	table int64 // the table size update its header blocks begin with; -1: none (conn.peerTable)
	bufs  net.Buffers
	n     int
}

// copyBelow is the payload size under which a payload is copied.
const copyBelow = 2 << 10

func (b *batch) add(p []byte) {
	if len(p) < copyBelow {
		b.own = append(b.own, p...)
		return
	}
	b.seal()
	b.bufs = append(b.bufs, p)
	b.n += len(p)
}

func (b *batch) seal() {
	if len(b.own) > b.mark {
		b.bufs = append(b.bufs, b.own[b.mark:len(b.own):len(b.own)])
		b.mark = len(b.own)
	}
}

func (b *batch) len() int { return len(b.own) + b.n }

func (b *batch) writeTo(nc net.Conn) error {
	b.seal()
	if len(b.bufs) == 1 {
		_, err := nc.Write(b.bufs[0])
		return err
	}
	v := b.bufs
	_, err := v.WriteTo(nc)
	return err
}

var batchPool = sync.Pool{New: func() any { return &batch{own: make([]byte, 0, 4<<10)} }}

func getBatch() *batch { return batchPool.Get().(*batch) }

func putBatch(b *batch) {
	if cap(b.own) > 64<<10 {
		b.own = make([]byte, 0, 4<<10)
	}
	b.own, b.mark, b.n = b.own[:0], 0, 0
	clear(b.bufs)
	b.bufs = b.bufs[:0]
	batchPool.Put(b)
}
