package server

import (
	"context"
	"net/http"

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
// A flushGate is used by one goroutine, the session's sender, which is the
// only one that sends on the stream.
type flushGate struct {
	http.ResponseWriter
	flusher http.Flusher
	hold    bool
}

func (g *flushGate) Flush() {
	if !g.hold {
		g.flusher.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (g *flushGate) Unwrap() http.ResponseWriter { return g.ResponseWriter }

type flushGateKey struct{}

// gateStreams gives the sync streams a flushGate, which their session finds
// in the context.
func gateStreams(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := w.(http.Flusher)
		if !ok || (r.URL.Path != ferryv1connect.SyncServiceSyncProcedure && r.URL.Path != ferryv1connect.SyncServiceSubscribeProcedure) {
			next.ServeHTTP(w, r)
			return
		}
		g := &flushGate{ResponseWriter: w, flusher: f}
		next.ServeHTTP(g, r.WithContext(context.WithValue(r.Context(), flushGateKey{}, g)))
	})
}

// holdFlushes makes the next sends on the session's stream wait for a
// later flush (hold true) or flush as usual (hold false). Without a gate
// (a handler mounted without gateStreams) it does nothing.
func holdFlushes(ctx context.Context) func(hold bool) {
	g, _ := ctx.Value(flushGateKey{}).(*flushGate)
	if g == nil {
		return func(bool) {}
	}
	return func(hold bool) { g.hold = hold }
}
