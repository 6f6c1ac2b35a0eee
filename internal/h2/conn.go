package h2

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/ferrysync/ferry/internal/timers"
)

var (
	errConnClosed   = errors.New("http2: connection closed")
	errStreamClosed = errors.New("http2: stream closed") // reset by either side
	errClientGone   = errors.New("http2: client closed the connection")
)

// maxQueuedControl bounds the control frames (PING and SETTINGS ACKs,
// RST_STREAMs, WINDOW_UPDATEs) queued for a peer that does not read them:
// past it, the connection ends.
const maxQueuedControl = 64 << 10

// lingerTime is how long a connection that sent its GOAWAY goes on reading
// (and discarding) before it closes, so that the peer reads the GOAWAY and
// the last responses before a close with unread data makes its kernel
// reset the connection.
const lingerTime = time.Second

type conn struct {
	srv        *Server
	nc         net.Conn
	ctx        context.Context // the base of the requests' contexts
	set        *settings       // the server's
	remoteAddr string

	// The reader goroutine's own.
	rd          reader
	dec         decoder
	hb          *headerBlock // the block being read; nil between blocks
	done        func()       // ServeConn's, called once the connection has ended
	maxClientID uint32       // the highest stream the client opened
	sawSettings bool
	frames      atomic.Uint64 // read, for the liveness check

	mu        sync.Mutex
	streams   streamSet
	open      int // streams counted against MAX_CONCURRENT_STREAMS: neither reset nor done
	handlers  int // handlers running
	unstarted []pending
	sendWin   int64 // the connection's send window
	peerWin   int64 // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame int   // the peer's SETTINGS_MAX_FRAME_SIZE
	// peerTable is the dynamic table size update every header block
	// begins with, once the client has set SETTINGS_HEADER_TABLE_SIZE
	// below the default 4096: the lowest it set; -1 until then.
	peerTable int64
	// closedEarly holds the last streams deleted while the client might
	// still send on them: their handlers ended before the requests did, or
	// the server reset them. Frames the client sent before it read the
	// RST_STREAM are ignored, as RFC 9113 (section 5.1) asks, not taken
	// for frames on a stream long closed, which end the connection. Made
	// with the first; the oldest goes when it is full.
	closedEarly *[closedEarlyKept]uint32
	closedNext  int
	recvWin     int64 // what the peer may still send on the connection
	recvCredit  int64 // consumed since the last WINDOW_UPDATE of the connection
	ctl         []byte
	goingAway   bool        // sent GOAWAY, or received one: no new streams
	goAwayID    uint32      // the last stream our GOAWAY named: later ones are ignored
	closed      atomic.Bool // set under mu; read without it too (the reader, per frame)
	lingering   bool
	check       timers.Deadline // of the idle timeout, the liveness PING and the stall check, in the server's schedule
	checkAt     time.Time       // when check was last armed for
	idleSince   time.Time
	lastFrames  uint64
	lastMoved   time.Time
	pingSent    time.Time
	pingData    [8]byte

	// wsem is held (sent to) while writing to nc: a channel, so that a
	// stream's wait for it ends when the stream does. Handlers write their
	// frames themselves; the control frames the reader, timers and body
	// reads queue in ctl go with the next write, or a flusher goroutine
	// writes them: no goroutine but a handler's, or a flusher, ever waits
	// for the connection.
	wsem          chan struct{}
	flushing      bool    // a flusher runs, under mu
	writing       *stream // whose frames are being written (nil: none, or only control frames), under mu
	deadlineDirty bool    // a past write deadline was set on nc, under mu
	// The stall check (checkNow, with settings.writeTimeout), under mu:
	// inWrite is set while a write to nc is under way, and writes counts
	// those begun; the check notes the count it last saw (stallMark) and
	// since when (stallSince).
	inWrite       bool
	writes        uint64
	stallMark     uint64
	stallSince    time.Time
	wantHalfClose bool // half-close after the next write, under mu
	halfClosed    bool // under mu
}

// connContext is the base of a connection's requests' contexts: the
// context ServeConn was given, with the values net/http adds (one
// allocation, not two).
type connContext struct {
	context.Context
	srv   *http.Server
	local net.Addr
}

func (c *connContext) Value(key any) any {
	switch {
	case key == http.ServerContextKey && c.srv != nil:
		return c.srv
	case key == http.LocalAddrContextKey:
		return c.local
	}
	return c.Context.Value(key)
}

// pending is a stream whose handler waits for another to end.
type pending struct {
	st  *stream
	req *http.Request
	h   http.Handler
}

func newConn(s *Server, ctx context.Context, nc net.Conn) *conn {
	c := &conn{
		srv:        s,
		nc:         nc,
		set:        s.connSettings(),
		remoteAddr: nc.RemoteAddr().String(),
		sendWin:    defaultWindow,
		peerWin:    defaultWindow,
		peerFrame:  minMaxFrameSize,
		peerTable:  -1,
		recvWin:    defaultWindow,
		wsem:       make(chan struct{}, 1),
	}
	c.ctx = &connContext{Context: ctx, srv: s.Config, local: nc.LocalAddr()}
	c.rd = newReader(nc)
	c.dec = decoder{max: defaultTable, limit: defaultTable, maxString: c.set.maxHeaderBytes}
	// The settings go first, before even a GOAWAY of a server shutting
	// down.
	c.ctl = appendSettings(c.ctl,
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: c.set.maxFrameSize},
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.set.maxStreams},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.maxHeaderBlock())},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(c.set.streamWindow)},
	)
	if d := int64(c.set.connWindow) - defaultWindow; d > 0 {
		c.ctl = appendWindowUpdate(c.ctl, 0, uint32(d))
		c.recvWin += d
	}
	return c
}

// serve reads and handles frames until the connection ends, then calls
// done (unless nil). It may return before: see run.
func (c *conn) serve(done func()) {
	now := c.srv.schedule.Clock.Now()
	c.mu.Lock()
	c.idleSince, c.lastMoved = now, now
	c.check.Fire = c.checkNow
	if next := c.nextCheckLocked(now); next > 0 {
		c.armCheckLocked(now.Add(next))
	}
	c.kickLocked()
	c.mu.Unlock()
	c.done = done
	c.rd.move = true // off the goroutine that read the preface
	c.run()
}

// run reads and handles frames until the connection ends, and ends it. A
// connection mostly waits for its client, and then its reader's goroutine
// stack is most of what it costs: reading a header block (HPACK, the
// request, its handler's start) takes that stack past 2 KB, to 4 KB, and
// the runtime halves a waiting goroutine's stack only while it uses less
// than a quarter of it. The wait itself needs under 1 KB. So a reader that
// read a header block, or the client preface on ServeConn's caller's
// goroutine, waits for the next frame on a fresh goroutine: run returns,
// and the fresh one runs it on. That costs a goroutine's start per request
// that opened a stream, and a connection with a long-lived stream (a sync
// session) waits on a goroutine that starts with the runtime's starting
// stack: 2 KB, or the average stack it has seen (GODEBUG
// adaptivestackstart, on by default), 4 KB on a server of sync sessions
// whose handlers wait 2.4 KB deep. With 10,000 idle sync sessions the
// stacks took 8.3 KB per device before, 6.9 KB after, and 6.2 KB with
// GODEBUG=adaptivestackstart=0.
func (c *conn) run() {
	var err error
	for err == nil {
		if err = c.readFrame(); err != nil {
			if err == errMove {
				c.rd.move = false
				go c.run()
				return
			}
			var se streamError // on the heap (errors.As): only for an error
			if errors.As(err, &se) {
				c.resetStream(se.id, se.code)
				err = nil
			}
		}
	}
	var ce connError
	switch {
	case errors.As(err, &ce):
		c.fail(ce.code, ce.reason)
		c.linger()
		err = ce
	case c.isLingering():
		// The GOAWAY went and the connection was read to its end.
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
		err = errClientGone
	}
	c.close(err)
	c.srv.untrack(c)
	if c.done != nil {
		c.done()
	}
}

// readFrame reads one frame and handles it. A streamError ends one
// stream, any other error the connection.
func (c *conn) readFrame() error {
	b, err := c.rd.header()
	if err != nil {
		return err
	}
	if c.closed.Load() {
		return net.ErrClosed // closed while the frames read stayed in the buffer
	}
	h := parseFrameHeader(b)
	c.frames.Add(1)
	if h.length > c.set.maxFrameSize {
		return connError{http2.ErrCodeFrameSize, fmt.Sprintf("a %v frame of %d bytes, past SETTINGS_MAX_FRAME_SIZE", h.typ, h.length)}
	}
	if c.hb != nil && c.hb.active && (h.typ != frameContinuation || h.streamID != c.hb.streamID) {
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("a %v frame inside the header block of stream %d", h.typ, c.hb.streamID)}
	}
	if !c.sawSettings && h.typ != frameSettings {
		return connError{http2.ErrCodeProtocol, "the client preface did not end with SETTINGS"}
	}
	switch h.typ {
	case frameData:
		return c.onData(h)
	case frameHeaders:
		return c.onHeaders(h)
	case frameContinuation:
		return c.onContinuation(h)
	case framePriority:
		switch {
		case h.streamID == 0:
			return connError{http2.ErrCodeProtocol, "PRIORITY on stream 0"}
		case h.length != 5:
			if err := c.rd.discard(int(h.length)); err != nil {
				return err
			}
			return streamError{h.streamID, http2.ErrCodeFrameSize, "PRIORITY of a length other than 5"}
		}
		p, err := c.rd.next(5)
		if err != nil {
			return err
		}
		if binary.BigEndian.Uint32(p)&(1<<31-1) == h.streamID {
			return streamError{h.streamID, http2.ErrCodeProtocol, "a stream that depends on itself"}
		}
		return nil
	case frameRSTStream:
		return c.onRSTStream(h)
	case frameSettings:
		return c.onSettings(h)
	case framePing:
		return c.onPing(h)
	case frameGoAway:
		return c.onGoAway(h)
	case frameWindowUpdate:
		return c.onWindowUpdate(h)
	case framePushPromise:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
	default:
		return c.rd.discard(int(h.length)) // extensions we do not know are ignored
	}
}

// padded strips a DATA or HEADERS frame's padding.
func padded(h frameHeader, p []byte) ([]byte, error) {
	if !h.has(flagPadded) {
		return p, nil
	}
	if len(p) == 0 || int(p[0]) >= len(p) {
		return nil, connError{http2.ErrCodeProtocol, fmt.Sprintf("%v padding longer than its frame", h.typ)}
	}
	return p[1 : len(p)-int(p[0])], nil
}

func (c *conn) onData(h frameHeader) error {
	p, err := c.rd.payload(int(h.length))
	if err != nil {
		return err
	}
	if h.streamID == 0 {
		return connError{http2.ErrCodeProtocol, "DATA on stream 0"}
	}
	data, err := padded(h, p)
	if err != nil {
		return err
	}
	n := int64(h.length)
	c.mu.Lock()
	defer c.mu.Unlock()
	if n > c.recvWin {
		return connError{http2.ErrCodeFlowControl, "DATA past the connection's flow-control window"}
	}
	c.recvWin -= n
	st := c.streams.get(h.streamID)
	switch {
	case st == nil && h.streamID > c.maxClientID:
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("DATA on stream %d, which is idle", h.streamID)}
	case st == nil && (c.goingAway && h.streamID > c.goAwayID || c.wasClosedEarlyLocked(h.streamID)):
		c.creditLocked(nil, n) // a stream past our GOAWAY, or one just closed: ignored
		return nil
	case st == nil || st.remoteClosed || st.peerReset:
		c.creditLocked(nil, n)
		return streamError{h.streamID, http2.ErrCodeStreamClosed, "DATA on a closed stream"}
	case n > int64(st.recvWin):
		c.creditLocked(nil, n)
		return streamError{h.streamID, http2.ErrCodeFlowControl, "DATA past the stream's flow-control window"}
	}
	st.recvWin -= int32(n)
	if st.declLen >= 0 && st.gotLen+int64(len(data)) > st.declLen {
		c.creditLocked(st, n)
		return streamError{h.streamID, http2.ErrCodeProtocol, "DATA past the request's content-length"}
	}
	st.gotLen += int64(len(data))
	if st.reset || st.bodyClosed {
		c.creditLocked(st, n) // nobody will read it
	} else {
		c.creditLocked(st, n-int64(len(data))) // the padding
		if len(data) > 0 {
			st.appendBody(data)
		}
	}
	if h.has(flagEndStream) {
		if st.declLen >= 0 && st.gotLen != st.declLen {
			return streamError{h.streamID, http2.ErrCodeProtocol, "a request body shorter than its content-length"}
		}
		st.closeRemote()
	}
	st.cond.Broadcast()
	return nil
}

func (c *conn) onHeaders(h frameHeader) error {
	if int(h.length) > c.maxHeaderBlock() {
		return connError{http2.ErrCodeProtocol, "a header block past SETTINGS_MAX_HEADER_LIST_SIZE"}
	}
	p, err := c.rd.payload(int(h.length))
	if err != nil {
		return err
	}
	if h.streamID == 0 {
		return connError{http2.ErrCodeProtocol, "HEADERS on stream 0"}
	}
	if h.streamID%2 == 0 {
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on stream %d, an even one, which only a server may open", h.streamID)}
	}
	frag, err := padded(h, p)
	if err != nil {
		return err
	}
	selfDep := false
	if h.has(flagPriority) {
		if len(frag) < 5 {
			return connError{http2.ErrCodeFrameSize, "HEADERS too short for its priority"}
		}
		selfDep = binary.BigEndian.Uint32(frag)&(1<<31-1) == h.streamID
		frag = frag[5:]
	}
	c.hb = headerBlocks.Get().(*headerBlock)
	c.hb.start(c, h.streamID, h.has(flagEndStream), selfDep)
	return c.fragment(frag, h.has(flagEndHeaders))
}

func (c *conn) onContinuation(h frameHeader) error {
	if c.hb != nil && c.hb.compressed+int(h.length) > c.maxHeaderBlock() {
		return connError{http2.ErrCodeProtocol, "a header block past SETTINGS_MAX_HEADER_LIST_SIZE"}
	}
	p, err := c.rd.payload(int(h.length))
	if err != nil {
		return err
	}
	if c.hb == nil || !c.hb.active {
		return connError{http2.ErrCodeProtocol, "CONTINUATION without HEADERS"}
	}
	return c.fragment(p, h.has(flagEndHeaders))
}

// maxHeaderBlock is SETTINGS_MAX_HEADER_LIST_SIZE: the most a request's
// header list may take decoded, and so the most its block may take
// compressed.
func (c *conn) maxHeaderBlock() int { return c.set.maxHeaderBytes + 32*10 }

// fragment decodes part of a header block, and handles the block at its
// end.
func (c *conn) fragment(p []byte, end bool) error {
	hb := c.hb
	hb.compressed += len(p)
	if hb.compressed > c.maxHeaderBlock() {
		// More compressed than the whole list may be decoded: a
		// CONTINUATION flood, or a client that ignores the limit.
		return connError{http2.ErrCodeProtocol, "a header block past SETTINGS_MAX_HEADER_LIST_SIZE"}
	}
	if !end || hb.block != nil {
		// The block goes on in CONTINUATION frames: decoded whole at
		// its end. p is the reader's, until the next frame.
		hb.block = append(hb.block, p...)
		if !end {
			return nil
		}
		p = hb.block
	}
	hb.active = false
	if err := c.dec.decode(p, hb.emit); err != nil {
		return connError{http2.ErrCodeCompression, "HPACK: " + err.Error()}
	}
	err := c.onHeaderBlock()
	*hb = headerBlock{}
	headerBlocks.Put(hb)
	c.hb = nil
	return err
}

func (c *conn) onRSTStream(h frameHeader) error {
	switch {
	case h.streamID == 0:
		return connError{http2.ErrCodeProtocol, "RST_STREAM on stream 0"}
	case h.length != 4:
		return connError{http2.ErrCodeFrameSize, "RST_STREAM of a length other than 4"}
	}
	if _, err := c.rd.next(4); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.streams.get(h.streamID)
	if st == nil {
		if h.streamID > c.maxClientID {
			return connError{http2.ErrCodeProtocol, fmt.Sprintf("RST_STREAM on stream %d, which is idle", h.streamID)}
		}
		return nil
	}
	st.peerReset = true
	c.resetLocked(st, errStreamClosed)
	return nil
}

// maxSettings bounds the settings of one SETTINGS frame: each costs the
// reader work under mu, and a client has no use for more (x/net's limit).
const maxSettings = 100

func (c *conn) onSettings(h frameHeader) error {
	if h.streamID != 0 {
		return connError{http2.ErrCodeProtocol, "SETTINGS on a stream"}
	}
	if h.has(flagAck) {
		if h.length != 0 {
			return connError{http2.ErrCodeFrameSize, "a SETTINGS ACK with a payload"}
		}
		return nil
	}
	if h.length%6 != 0 {
		return connError{http2.ErrCodeFrameSize, "SETTINGS of a length not a multiple of 6"}
	}
	if h.length/6 > maxSettings {
		return connError{http2.ErrCodeEnhanceYourCalm, fmt.Sprintf("SETTINGS with %d settings, past %d", h.length/6, maxSettings)}
	}
	p, err := c.rd.payload(int(h.length))
	if err != nil {
		return err
	}
	c.sawSettings = true
	c.mu.Lock()
	defer c.mu.Unlock()
	window := int64(-1)
	for ; len(p) > 0; p = p[6:] {
		id, v := http2.SettingID(binary.BigEndian.Uint16(p)), binary.BigEndian.Uint32(p[2:])
		switch id {
		case http2.SettingHeaderTableSize:
			// The room the client's decoder has. The encoder uses none,
			// but its table's size is 4096 until it says otherwise: once
			// the client allows less, RFC 7541 (section 4.2) wants a
			// size update at the start of the next header block, and
			// decoders such as nghttp2's refuse a block without one. Every
			// block from then on carries it, 1 to 3 bytes: one after a
			// SETTINGS ACK then always does, whatever the order of the
			// frames in a write.
			if v < defaultTable && (c.peerTable < 0 || int64(v) < c.peerTable) {
				c.peerTable = int64(v)
			}
		case http2.SettingEnablePush:
			if v > 1 {
				return connError{http2.ErrCodeProtocol, "SETTINGS_ENABLE_PUSH other than 0 or 1"}
			}
		case http2.SettingInitialWindowSize:
			if v > maxWindow {
				return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1"}
			}
			window = int64(v) // the last counts
		case http2.SettingMaxFrameSize:
			if v < minMaxFrameSize || v > maxMaxFrameSize {
				return connError{http2.ErrCodeProtocol, fmt.Sprintf("SETTINGS_MAX_FRAME_SIZE %d, out of range", v)}
			}
			c.peerFrame = int(v)
		case http2.SettingEnableConnectProtocol:
			if v > 1 {
				return connError{http2.ErrCodeProtocol, "SETTINGS_ENABLE_CONNECT_PROTOCOL other than 0 or 1"}
			}
		}
	}
	if window >= 0 {
		d := window - c.peerWin
		c.peerWin = window
		for st := range c.streams.all() {
			st.sendWin += d
			// A stream that sends no more (reset, by either side, or
			// ended) has no window the client keeps: it may pass 2^31-1.
			if st.sendWin > maxWindow && !st.reset && !st.localEnded {
				return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE took a stream's window past 2^31-1"}
			}
			if d > 0 {
				st.stallSince = time.Time{}
			}
			st.cond.Broadcast()
		}
	}
	c.queueLocked(func(b []byte) []byte { return appendFrameHeader(b, 0, frameSettings, flagAck, 0) })
	return nil
}

func (c *conn) onPing(h frameHeader) error {
	if h.streamID != 0 {
		return connError{http2.ErrCodeProtocol, "PING on a stream"}
	}
	if h.length != 8 {
		return connError{http2.ErrCodeFrameSize, "PING of a length other than 8"}
	}
	p, err := c.rd.next(8)
	if err != nil {
		return err
	}
	data := [8]byte(p)
	if h.has(flagAck) {
		c.mu.Lock()
		if !c.pingSent.IsZero() && data == c.pingData {
			c.pingSent = time.Time{}
		}
		c.mu.Unlock()
		return nil
	}
	c.control(func(b []byte) []byte { return appendPing(b, true, data) })
	return nil
}

func (c *conn) onGoAway(h frameHeader) error {
	if h.streamID != 0 {
		return connError{http2.ErrCodeProtocol, "GOAWAY on a stream"}
	}
	if h.length < 8 {
		return connError{http2.ErrCodeFrameSize, "GOAWAY shorter than 8 bytes"}
	}
	if err := c.rd.discard(int(h.length)); err != nil {
		return err
	}
	// The client opens no more streams; those it opened are answered.
	// Our GOAWAY tells it which it may retry elsewhere.
	c.goAway()
	return nil
}

func (c *conn) onWindowUpdate(h frameHeader) error {
	if h.length != 4 {
		return connError{http2.ErrCodeFrameSize, "WINDOW_UPDATE of a length other than 4"}
	}
	p, err := c.rd.next(4)
	if err != nil {
		return err
	}
	n := int64(binary.BigEndian.Uint32(p) & (1<<31 - 1))
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.streamID == 0 {
		if n == 0 {
			return connError{http2.ErrCodeProtocol, "a WINDOW_UPDATE of 0 on the connection"}
		}
		if c.sendWin += n; c.sendWin > maxWindow {
			return connError{http2.ErrCodeFlowControl, "a WINDOW_UPDATE past 2^31-1 on the connection"}
		}
		c.wakeSendersLocked()
		return nil
	}
	st := c.streams.get(h.streamID)
	switch {
	case st == nil && h.streamID > c.maxClientID:
		return connError{http2.ErrCodeProtocol, fmt.Sprintf("WINDOW_UPDATE on stream %d, which is idle", h.streamID)}
	case st == nil || st.reset:
		return nil
	case n == 0:
		return streamError{h.streamID, http2.ErrCodeProtocol, "a WINDOW_UPDATE of 0"}
	}
	if st.sendWin += n; st.sendWin > maxWindow {
		return streamError{h.streamID, http2.ErrCodeFlowControl, "a WINDOW_UPDATE past 2^31-1"}
	}
	st.stallSince = time.Time{} // given window: not stalled (stalledLocked)
	st.cond.Broadcast()
	return nil
}

// onHeaderBlock handles a complete header block: a request that opens a
// stream, or its trailers.
func (c *conn) onHeaderBlock() error {
	c.rd.move = true // the stack has grown: see run
	hb := c.hb
	id := hb.streamID
	c.mu.Lock()
	st := c.streams.get(id)
	if st != nil || id <= c.maxClientID {
		defer c.mu.Unlock()
		switch {
		case st == nil && c.goingAway && id > c.goAwayID:
			return nil // trailers of a stream past our GOAWAY, ignored as it was
		case st == nil && c.wasClosedEarlyLocked(id):
			return nil // trailers the client sent before it read our RST_STREAM
		case st == nil || st.remoteClosed && st.localEnded:
			return connError{http2.ErrCodeStreamClosed, fmt.Sprintf("HEADERS on stream %d, which closed", id)}
		case st.remoteClosed || st.peerReset:
			return streamError{id, http2.ErrCodeStreamClosed, "HEADERS on a stream the client had ended"}
		case st.reset:
			return nil
		case !hb.endStream:
			return streamError{id, http2.ErrCodeProtocol, "trailers without END_STREAM"}
		case hb.invalid != "":
			return streamError{id, http2.ErrCodeProtocol, hb.invalid}
		case hb.sawPseudo:
			return streamError{id, http2.ErrCodeProtocol, "a pseudo-header in trailers"}
		}
		if st.declLen >= 0 && st.gotLen != st.declLen {
			return streamError{id, http2.ErrCodeProtocol, "a request body shorter than its content-length"}
		}
		for k, vv := range hb.fields {
			if !httpguts.ValidTrailerHeader(k) {
				return streamError{id, http2.ErrCodeProtocol, "the trailer " + k + ", which may not be one"}
			}
			if st.trailer == nil {
				st.trailer = make(http.Header)
			}
			st.trailer[k] = vv
		}
		st.closeRemote()
		st.cond.Broadcast()
		return nil
	}
	c.maxClientID = id
	if c.goingAway || c.closed.Load() {
		c.mu.Unlock()
		return nil // past the GOAWAY's last stream: not processed
	}
	// A stream refused before it opens: the client may have sent its body
	// already, which is then ignored (closedEarly).
	refuse := func(err error) error {
		if !hb.endStream {
			c.closedEarlyLocked(id)
		}
		c.mu.Unlock()
		return err
	}
	if hb.selfDep {
		return refuse(streamError{id, http2.ErrCodeProtocol, "a stream that depends on itself"})
	}
	if hb.invalid != "" {
		return refuse(streamError{id, http2.ErrCodeProtocol, hb.invalid})
	}
	if c.open >= int(c.set.maxStreams) {
		return refuse(streamError{id, http2.ErrCodeRefusedStream, "past SETTINGS_MAX_CONCURRENT_STREAMS"})
	}
	st, req, h, err := c.newRequest(hb)
	if err != nil {
		return refuse(err)
	}
	c.streams.put(st)
	c.open++
	if c.handlers >= int(c.set.maxStreams) {
		// The handlers of streams the client reset still run: this one
		// waits for one to end. A client that keeps resetting streams
		// faster than their handlers end is cut off.
		if len(c.unstarted) >= 4*int(c.set.maxStreams) {
			c.mu.Unlock()
			return connError{http2.ErrCodeEnhanceYourCalm, "too many streams reset while their handlers ran"}
		}
		c.unstarted = append(c.unstarted, pending{st, req, h})
		c.mu.Unlock()
		return nil
	}
	c.handlers++
	c.mu.Unlock()
	go c.runHandler(st, req, h)
	return nil
}

// control queues a control frame to be written.
func (c *conn) control(appendFrame func([]byte) []byte) {
	c.mu.Lock()
	c.queueLocked(appendFrame)
	c.mu.Unlock()
}

// queueLocked queues a control frame, and sees that it is written. Past
// maxQueuedControl queued, for a client that does not read them, the
// connection ends. The caller holds mu.
func (c *conn) queueLocked(appendFrame func([]byte) []byte) {
	if c.closed.Load() || c.halfClosed {
		return
	}
	c.ctl = appendFrame(c.ctl)
	if len(c.ctl) > maxQueuedControl {
		c.srv.logf("http2: closing the connection from %s: it does not read the control frames it makes us send", c.remoteAddr)
		c.closeLocked()
		return
	}
	c.kickLocked()
}

// kickLocked starts a flusher for the queued control frames (and a
// half-close wanted) unless one runs. The caller holds mu.
func (c *conn) kickLocked() {
	if c.closed.Load() || c.flushing || len(c.ctl) == 0 && !(c.wantHalfClose && !c.halfClosed) {
		return
	}
	c.flushing = true
	go c.flusher()
}

// flusher writes the queued control frames, waiting for the connection if
// a handler writes.
func (c *conn) flusher() {
	c.wsem <- struct{}{}
	err := c.writeLocked(nil, nil)
	<-c.wsem
	c.mu.Lock()
	c.flushing = false
	if err == nil {
		c.kickLocked() // queued while it wrote
	}
	c.mu.Unlock()
}

// writeLocked writes the queued control frames, then what fill adds (nil:
// nothing) for st (nil: for the connection). fill is skipped, and st's
// error returned, when st is reset: no frame of a stream goes after its
// RST_STREAM. The caller holds wsem.
func (c *conn) writeLocked(st *stream, fill func(*batch) error) error {
	b := getBatch()
	defer putBatch(b)
	c.mu.Lock()
	if c.closed.Load() || c.halfClosed {
		c.ctl = nil
		c.mu.Unlock()
		return errConnClosed
	}
	b.own = append(b.own, c.ctl...)
	c.ctl = c.ctl[:0]
	if cap(c.ctl) > 4<<10 {
		c.ctl = nil
	}
	var err error
	if st != nil && st.reset {
		err, fill = st.writeErr, nil
	}
	halfClose := c.wantHalfClose
	b.frame, b.table = c.peerFrame, c.peerTable
	c.writing = st
	c.inWrite = true
	c.writes++
	if c.deadlineDirty {
		_ = c.nc.SetWriteDeadline(time.Time{})
		c.deadlineDirty = false
	}
	c.mu.Unlock()
	if fill != nil {
		err = fill(b)
	}
	var werr error
	if b.len() > 0 {
		werr = b.writeTo(c.nc)
	}
	c.mu.Lock()
	c.writing = nil
	c.inWrite = false
	if werr == nil && halfClose {
		// What began the half-close (a GOAWAY) has gone: the client reads
		// the connection's end.
		c.halfClosed = true
		c.ctl = nil
	}
	c.mu.Unlock()
	if werr != nil {
		c.close(fmt.Errorf("http2: writing to the client: %w", werr))
		return errConnClosed
	}
	if halfClose {
		if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	return err
}

// write writes what fill adds for st, after the queued control frames. It
// waits for the connection while another writes, or until st ends.
func (c *conn) write(st *stream, fill func(*batch) error) error {
	select {
	case c.wsem <- struct{}{}: // mostly free: a device's streams seldom write at once
	default:
		select {
		case c.wsem <- struct{}{}:
		case <-st.done:
			c.mu.Lock()
			defer c.mu.Unlock()
			if st.writeErr == nil {
				return errStreamClosed // the context ServeConn was given ended
			}
			return st.writeErr
		}
	}
	err := c.writeLocked(st, fill)
	<-c.wsem
	c.mu.Lock()
	c.kickLocked() // queued while it wrote
	c.mu.Unlock()
	return err
}

// appendHeaders encodes a header block into HEADERS and CONTINUATION
// frames. fields appends the encoded fields to its argument.
func appendHeaders(b *batch, id uint32, end bool, fields func([]byte) []byte) {
	flags := flagEndHeaders
	if end {
		flags |= flagEndStream
	}
	at := len(b.own)
	b.own = appendFrameHeader(b.own, 0, frameHeaders, flags, id)
	if b.table >= 0 {
		b.own = appendInt(b.own, 0x20, 5, uint64(b.table)) // section 6.3
	}
	b.own = fields(b.own)
	n := len(b.own) - at - frameHeaderLen
	if n <= b.frame {
		appendFrameHeader(b.own[:at], n, frameHeaders, flags, id) // the length, in place
		return
	}
	// Larger than a frame: HEADERS then CONTINUATION frames, END_HEADERS
	// on the last.
	block := slices.Clone(b.own[at+frameHeaderLen:])
	b.own = b.own[:at]
	typ, flags := frameHeaders, flags&^flagEndHeaders
	for len(block) > 0 {
		k := min(len(block), b.frame)
		f := flags
		if k == len(block) {
			f |= flagEndHeaders
		}
		b.own = appendFrameHeader(b.own, k, typ, f, id)
		b.own = append(b.own, block[:k]...)
		block = block[k:]
		typ, flags = frameContinuation, 0
	}
}

// resetStream ends a stream with RST_STREAM.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	c.mu.Lock()
	if st := c.streams.get(id); st != nil {
		c.resetLocked(st, errStreamClosed)
	}
	c.queueLocked(func(b []byte) []byte { return appendRSTStream(b, id, code) })
	c.mu.Unlock()
}

// resetLocked marks st reset: its reads and writes fail with err and its
// handler's context ends. The caller holds mu and sends any RST_STREAM.
func (c *conn) resetLocked(st *stream, err error) {
	if st.reset {
		return
	}
	st.reset = true
	if st.bodyErr == nil || st.bodyErr == io.EOF && len(st.body) > 0 {
		st.bodyErr = err
	}
	st.writeErr = err
	c.creditLocked(st, int64(len(st.body)))
	st.dropBody()
	if st.counted {
		st.counted = false
		c.open--
	}
	st.cancel()
	st.cond.Broadcast()
}

// closedEarlyKept is how many streams closedEarly holds: a client's frames
// in flight as the server resets its streams are ignored for that many of
// them, and end the connection past it (RFC 9113 allows either).
const closedEarlyKept = 16

// deletedLocked deletes st, remembering it in closedEarly when the client
// may still send on it. The caller holds mu.
func (c *conn) deletedLocked(st *stream) {
	c.streams.del(st.id)
	if !st.remoteClosed && !st.peerReset {
		c.closedEarlyLocked(st.id)
	}
}

// closedEarlyLocked remembers id in closedEarly. The caller holds mu.
func (c *conn) closedEarlyLocked(id uint32) {
	if c.closedEarly == nil {
		c.closedEarly = new([closedEarlyKept]uint32)
	}
	c.closedEarly[c.closedNext] = id
	c.closedNext = (c.closedNext + 1) % closedEarlyKept
}

// wasClosedEarlyLocked tells whether id is in closedEarly. The caller
// holds mu.
func (c *conn) wasClosedEarlyLocked(id uint32) bool {
	return c.closedEarly != nil && slices.Contains(c.closedEarly[:], id)
}

// creditLocked gives back n bytes of receive window, of st (nil: only the
// connection's), sending WINDOW_UPDATEs once half a window is owed. The
// caller holds mu.
func (c *conn) creditLocked(st *stream, n int64) {
	if n <= 0 || c.closed.Load() {
		return
	}
	c.recvCredit += n
	if c.recvCredit >= int64(c.set.connWindow)/2 {
		credit := uint32(c.recvCredit)
		c.queueLocked(func(b []byte) []byte { return appendWindowUpdate(b, 0, credit) })
		c.recvWin += c.recvCredit
		c.recvCredit = 0
	}
	if st != nil && !st.remoteClosed && !st.reset {
		st.recvCredit += int32(n)
		if st.recvCredit >= c.set.streamWindow/2 {
			id, credit := st.id, uint32(st.recvCredit)
			c.queueLocked(func(b []byte) []byte { return appendWindowUpdate(b, id, credit) })
			st.recvWin += st.recvCredit
			st.recvCredit = 0
		}
	}
}

// goAway sends a graceful GOAWAY, for a server shutting down, an idle
// connection, or a client's GOAWAY: no new streams, and the connection
// ends when its streams do.
func (c *conn) goAway() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() || c.goingAway {
		return
	}
	c.goingAway, c.goAwayID = true, c.maxClientID
	c.queueLocked(func(b []byte) []byte { return appendGoAway(b, c.goAwayID, http2.ErrCodeNo, "") })
	if c.streams.len() == 0 && c.handlers == 0 {
		c.finishLocked()
	}
}

// finishLocked ends a connection that has no streams left after its
// GOAWAY: it half-closes once the GOAWAY is written, and the reader reads
// to the end, for lingerTime at most. The caller holds mu.
func (c *conn) finishLocked() {
	if c.closed.Load() || c.lingering {
		return
	}
	c.lingering = true
	c.wantHalfClose = true
	c.kickLocked()
	_ = c.nc.SetReadDeadline(time.Now().Add(lingerTime))
}

func (c *conn) isLingering() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lingering
}

// fail sends GOAWAY with code, for a connection error, and lingers: the
// reader reads on for lingerTime at most, so that the client reads the
// GOAWAY before the connection closes.
func (c *conn) fail(code http2.ErrCode, reason string) {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return
	}
	if !c.goingAway { // a second GOAWAY may not name a later stream than the first
		c.goingAway, c.goAwayID = true, c.maxClientID
	}
	last := c.goAwayID
	c.queueLocked(func(b []byte) []byte { return appendGoAway(b, last, code, reason) })
	c.finishLocked()
	c.mu.Unlock()
	// Not logged: any client can cause these, and x/net logs them only
	// when verbose. The client reads the reason in the GOAWAY.
}

// linger reads and discards until the connection's end or its read
// deadline.
func (c *conn) linger() {
	for {
		if _, err := c.rd.next(1); err != nil {
			return
		}
	}
}

// close ends the connection at once: every stream's reads and writes fail.
func (c *conn) close(err error) {
	c.mu.Lock()
	c.closeLocked()
	c.mu.Unlock()
}

func (c *conn) closeLocked() {
	if c.closed.Load() {
		return
	}
	c.closed.Store(true)
	for st := range c.streams.all() {
		c.resetLocked(st, errConnClosed)
	}
	c.unstarted = nil
	c.ctl = nil
	c.srv.schedule.Stop(&c.check)
	_ = c.nc.Close() // does not block
}

// checkNow runs at the connection's deadline: it ends a connection idle
// for the idle timeout, pings one that has been silent, and closes one
// whose ping went unanswered.
func (c *conn) checkNow() {
	now := c.srv.schedule.Clock.Now()
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return
	}
	idle := c.set.idleTimeout > 0 && c.streams.len() == 0 && c.handlers == 0 && !c.goingAway && !now.Before(c.idleSince.Add(c.set.idleTimeout))
	var dead bool
	if c.set.readIdleTimeout > 0 {
		if n := c.frames.Load(); n != c.lastFrames {
			c.lastFrames, c.lastMoved = n, now
		}
		switch {
		case !c.pingSent.IsZero():
			dead = !now.Before(c.pingSent.Add(c.set.pingTimeout))
		case !now.Before(c.lastMoved.Add(c.set.readIdleTimeout)):
			c.pingSent = now
			binary.BigEndian.PutUint64(c.pingData[:], uint64(now.UnixNano()))
			c.queueLocked(func(b []byte) []byte { return appendPing(b, false, c.pingData) })
		}
	}
	stalled := c.set.writeTimeout > 0 && c.stalledLocked(now)
	if next := c.nextCheckLocked(now); next > 0 && !dead && !stalled {
		c.armCheckLocked(now.Add(next))
	}
	c.mu.Unlock()
	switch {
	case dead:
		c.close(errors.New("http2: no answer to a PING"))
	case stalled:
		c.close(fmt.Errorf("http2: a write to the client made no progress for %s", c.set.writeTimeout))
	case idle:
		c.goAway()
	}
}

// stalledLocked is the stall check, at each run of checkNow while
// settings.writeTimeout is set. A client may keep its connection alive
// (it sends frames, so the liveness PING never goes) and still read
// nothing, or only its PING's ACKs:
//
//   - A write to the connection blocks once the socket's buffers are
//     full, holding every other writer of the connection behind it. It
//     reports true when a write begun before the previous check is still
//     under way writeTimeout after that check: the connection is to be
//     closed. A write carries at most 64 KiB of DATA (maxWriteChunk) and
//     the queued control frames, so a client reading 64 KiB in
//     writeTimeout keeps it.
//   - A stream whose write waits for the client's flow-control window,
//     with none given since the previous check, writeTimeout after it,
//     is reset (CANCEL): its handler's write fails. Without this a unary
//     call's handler would hold its goroutine and buffer for as long as
//     the connection lasts (net/http's HTTP/2 bounds it with
//     WriteTimeout, which would end Ferry's long streams).
//
// Both are found between one and one and a half writeTimeouts after the
// wait began: nextCheckLocked runs the check every half writeTimeout at
// most. The caller holds mu.
func (c *conn) stalledLocked(now time.Time) bool {
	if !c.inWrite || c.writes != c.stallMark {
		c.stallMark, c.stallSince = c.writes, now
	} else if !now.Before(c.stallSince.Add(c.set.writeTimeout)) {
		return true
	}
	for st := range c.streams.all() {
		switch {
		case !st.waitingSend || st.reset:
			st.stallSince = time.Time{}
		case st.stallSince.IsZero():
			st.stallSince = now
		case !now.Before(st.stallSince.Add(c.set.writeTimeout)):
			c.resetLocked(st, os.ErrDeadlineExceeded)
			id := st.id
			c.queueLocked(func(b []byte) []byte { return appendRSTStream(b, id, http2.ErrCodeCancel) })
		}
	}
	return false
}

// nextCheckLocked returns when the timer should fire next; 0: never.
func (c *conn) nextCheckLocked(now time.Time) time.Duration {
	var next time.Duration
	soonest := func(at time.Time) {
		d := max(at.Sub(now), time.Millisecond)
		if next == 0 || d < next {
			next = d
		}
	}
	if c.set.idleTimeout > 0 && c.streams.len() == 0 && c.handlers == 0 && !c.goingAway {
		soonest(c.idleSince.Add(c.set.idleTimeout))
	}
	if c.set.readIdleTimeout > 0 {
		if !c.pingSent.IsZero() {
			soonest(c.pingSent.Add(c.set.pingTimeout))
		} else {
			soonest(c.lastMoved.Add(c.set.readIdleTimeout))
		}
	}
	if c.set.writeTimeout > 0 {
		soonest(now.Add(c.set.writeTimeout / 2)) // the stall check
	}
	return next
}

// becameIdle starts the idle timeout of a connection whose last stream
// ended. The caller holds mu.
func (c *conn) becameIdleLocked() {
	c.idleSince = c.srv.schedule.Clock.Now()
	if c.set.idleTimeout > 0 {
		if next := c.nextCheckLocked(c.idleSince); next > 0 {
			at := c.idleSince.Add(next)
			if c.checkAt.After(c.idleSince) && c.checkAt.Before(at) {
				// A check due sooner (the stall check, a PING's) stays:
				// a client that opens and ends streams must not put it
				// off for good.
				at = c.checkAt
			}
			c.armCheckLocked(at)
		}
	}
}

// armCheckLocked arms the connection's check at at. The caller holds mu.
func (c *conn) armCheckLocked(at time.Time) {
	c.checkAt = at
	c.srv.schedule.Arm(&c.check, at)
}

// writeExpired handles a stream's write deadline passing: its writes fail
// and it is reset. If its frames are being written, the connection has
// stopped moving for as long as the deadline allowed: the write is failed
// with a past deadline on the connection, which then closes.
func (c *conn) writeExpired(st *stream, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.reset || c.closed.Load() || !st.wDeadline.Equal(at) { // changed since the timer was set
		return
	}
	if c.writing == st {
		_ = c.nc.SetWriteDeadline(time.Unix(1, 0))
		c.deadlineDirty = true
	}
	c.resetLocked(st, os.ErrDeadlineExceeded)
	id := st.id
	c.queueLocked(func(b []byte) []byte { return appendRSTStream(b, id, http2.ErrCodeInternal) })
}

// wakeSendersLocked wakes the streams waiting for send window, when the
// connection's grows. The caller holds mu.
func (c *conn) wakeSendersLocked() {
	for st := range c.streams.all() {
		if st.waitingSend {
			st.stallSince = time.Time{} // given window, if it loses the race for it to another
			st.cond.Broadcast()
		}
	}
}
