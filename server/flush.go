package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrysync/ferry/internal/h2"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

// Connect flushes the response after every message it sends on a stream:
// with HTTP/2 that is a DATA frame, a hand-off to the connection's writer
// goroutine and a write system call per message, on both ends. A live
// round is usually two messages, the conversations that changed and then
// their ops. flushGate lets a session hold the flush of a message that has
// another right behind it, so the round leaves in one write: the next
// message's flush sends both. The session holds only while its next
// message is ready, and the stream's end flushes too.
//
// A flushGate is used by the session's sender only: one goroutine at a
// time sends on the stream.
type flushGate struct {
	http.ResponseWriter
	flusher http.Flusher
	hold    bool
	body    *waitBody  // a Sync stream's request body
	watch   *sendWatch // nil without a send timeout
	sent    *atomic.Uint64
}

func (g *flushGate) Write(p []byte) (n int, err error) {
	// Counted before the write: the client may read the bytes before the
	// write returns.
	g.sent.Add(uint64(len(p)))
	if g.watch == nil || len(p) == 0 {
		return g.ResponseWriter.Write(p) // an empty write still writes the header
	}
	// A catch-up message is up to a MiB: written in pieces, each watched
	// on its own, so that the limit is on a write making no progress, and
	// a slow link that keeps reading is never cut off.
	for len(p) > 0 {
		piece := p[:min(len(p), watchedPiece)]
		g.watch.begin()
		m, err := g.ResponseWriter.Write(piece)
		g.watch.end()
		n += m
		if err != nil {
			return n, err
		}
		p = p[m:]
	}
	return n, nil
}

// watchedPiece is the most a watched write sends at once: at the default
// SendTimeout, a client reading 270 bytes a second keeps its stream.
const watchedPiece = 32 << 10

func (g *flushGate) Flush() {
	if !g.hold {
		g.watch.begin()
		g.flusher.Flush()
		g.watch.end()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (g *flushGate) Unwrap() http.ResponseWriter { return g.ResponseWriter }

type flushGateKey struct{}

// gateOf returns the flushGate of the stream ctx is a request's, or nil.
func gateOf(ctx context.Context) *flushGate {
	if slot := h2.StreamSlot(ctx); slot != nil {
		g, _ := (*slot).(*flushGate)
		return g
	}
	g, _ := ctx.Value(flushGateKey{}).(*flushGate)
	return g
}

// gateStreams gives the sync streams a flushGate, which their session finds
// in the context, and watches their writes (sendWatch).
func (s *Server) gateStreams(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := w.(http.Flusher)
		if !ok || (r.URL.Path != ferryv1connect.SyncServiceSyncProcedure && r.URL.Path != ferryv1connect.SyncServiceSubscribeProcedure) {
			next.ServeHTTP(w, r)
			return
		}
		g := &flushGate{ResponseWriter: w, flusher: f, sent: &s.stats.sentBytes}
		if s.watches != nil {
			g.watch = s.watches.add(s, w, r)
			defer g.watch.close()
		}
		if slot := h2.StreamSlot(r.Context()); slot != nil {
			*slot = g // the request is this handler's own: no copy
		} else {
			r = r.WithContext(context.WithValue(r.Context(), flushGateKey{}, g))
		}
		if r.URL.Path == ferryv1connect.SyncServiceSyncProcedure {
			g.body = &waitBody{ReadCloser: r.Body}
			r.Body = g.body
		}
		next.ServeHTTP(g, r)
	})
}

// holdFlushes makes the next sends on the session's stream wait for a
// later flush (hold true) or flush as usual (hold false). Without a gate
// (a handler mounted without gateStreams) it does nothing.
func holdFlushes(ctx context.Context) func(hold bool) {
	g := gateOf(ctx)
	if g == nil {
		return func(bool) {}
	}
	return func(hold bool) { g.hold = hold }
}

// receiveStopper returns a function that makes the stream's blocked (and
// later) reads of the request body fail at once, so that a Sync session's
// handler, waiting for the client's next message, returns when the sending
// side ends the session. It sets a read deadline in the past, which Go's
// HTTP/2 server turns into an error for the pending read without resetting
// the stream: the session's last message and status still go out. It
// fails when the ResponseWriter cannot set read deadlines (a middleware's
// wrapper without Unwrap, or another server).
func receiveStopper(ctx context.Context) (func(), error) {
	g := gateOf(ctx)
	if g == nil {
		return nil, errors.New("the stream has no flush gate")
	}
	rc := http.NewResponseController(g.ResponseWriter)
	// A zero deadline changes nothing: it only asks whether the server
	// supports read deadlines on this stream.
	if err := rc.SetReadDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return func() { _ = rc.SetReadDeadline(time.Unix(1, 0)) }, nil
}

// waitBody is a Sync stream's request body with a wait for the client's
// next message. The handler's goroutine waits there between messages, at
// a shallow depth, and reads each message with Connect's Receive on a
// pooled goroutine (deep): its stack stays at 4 KB.
//
// A waitBody is read by one goroutine at a time.
type waitBody struct {
	io.ReadCloser
	b   [1]byte
	n   int   // 1 when wait read b and Read has not returned it
	err error // the error of wait's read, for Read to return
}

// wait blocks until the client sends more, the stream ends or reads are
// stopped; the next Read then returns at once.
func (w *waitBody) wait() {
	if w.n == 0 && w.err == nil {
		w.n, w.err = w.ReadCloser.Read(w.b[:])
	}
}

func (w *waitBody) Read(p []byte) (int, error) {
	switch {
	case len(p) == 0:
		return 0, nil
	case w.n > 0:
		p[0], w.n = w.b[0], 0
		return 1, nil
	case w.err != nil:
		err := w.err
		w.err = nil
		return 0, err
	}
	return w.ReadCloser.Read(p)
}

// inputWaiter returns the wait of the Sync stream's body; nil without one.
func inputWaiter(ctx context.Context) func() {
	if g := gateOf(ctx); g != nil && g.body != nil {
		return g.body.wait
	}
	return nil
}

// requestReader is what a Sync session reads its client's messages from.
type requestReader interface {
	Receive() (*ferryv1.SyncRequest, error)
}

// stoppableReader reads a stream on a goroutine of its own, for a Sync
// stream whose reads receiveStopper cannot interrupt: stop makes Receive
// return at once, and the goroutine ends with the stream.
type stoppableReader struct {
	got  chan received
	stop chan struct{}
	once sync.Once
}

type received struct {
	req *ferryv1.SyncRequest
	err error
}

// errReadStopped is what Receive returns once stopped.
var errReadStopped = errors.New("server: reading the stream was stopped")

func (s *Server) stoppableReader(st requestReader) *stoppableReader {
	r := &stoppableReader{got: make(chan received), stop: make(chan struct{})}
	s.active.Add(1)
	go func() {
		defer s.active.Done()
		for {
			req, err := st.Receive()
			select {
			case r.got <- received{req, err}:
			case <-r.stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return r
}

func (r *stoppableReader) Receive() (*ferryv1.SyncRequest, error) {
	select {
	case m := <-r.got:
		return m.req, m.err
	case <-r.stop:
		return nil, errReadStopped
	}
}

func (r *stoppableReader) Stop() { r.once.Do(func() { close(r.stop) }) }
