package server

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

// guardRequests refuses what a handler cannot serve well, before the
// handler runs, and bounds how long a unary call's request may stall:
//
//   - Sync over HTTP/1.1 gets a Connect error that says what to use
//     instead. Connect's own answer is a bare 505, which its clients
//     report as an unknown error.
//   - A unary call's request body (Login, Register, Push, ...) that sends
//     nothing for BodyTimeout fails, as nginx's client_body_timeout does.
//     Without it, a client that opens a request and trickles nothing
//     holds a connection and its goroutine for good; ReadHeaderTimeout
//     bounds only the headers. Subscribe's body is bounded the same way:
//     it is one message, its hello, which comes before anything else (and
//     before the session counts against MaxStreamsPerDevice). Sync's body
//     is not: its client is quiet between messages, the session bounds
//     the wait for its hello, and heartbeats and the send timeout find
//     the dead ones.
func (s *Server) guardRequests(next http.Handler) http.Handler {
	ew := connecthttp.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case ferryv1connect.SyncServiceSyncProcedure:
			if r.ProtoMajor < 2 {
				// As Connect does: a client that expects full duplex may hang
				// on this connection otherwise.
				w.Header().Set("Connection", "close")
				err := connect.NewError(connect.CodeUnimplemented, syncNeedsHTTP2)
				_ = ew.Write(w, r, err)
				s.stats.called(ferryv1connect.SyncServiceSyncProcedure, err)
				s.warnSyncOverHTTP1(r)
				return
			}
		default:
			if r.Method == http.MethodPost && strings.HasPrefix(r.URL.Path, "/ferry.v1.") && !readableType(r.Header.Get("Content-Type")) {
				// Connect's answer is a bare 415, which says nothing to
				// someone trying the API with curl (whose default is a
				// form's type).
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusUnsupportedMediaType)
				fmt.Fprintf(w, "ferry: this server does not read a request of Content-Type %q: send application/json or application/proto (the Connect protocol), application/grpc, or application/grpc-web\n", r.Header.Get("Content-Type"))
				return
			}
			if s.opts.BodyTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: s.opts.BodyTimeout}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// warnSyncOverHTTP1 logs a Sync refused for coming over HTTP/1.1, at most
// once a minute: the Go SDK syncs only over Sync, so its devices cannot
// sync at all through whatever sent it, most likely a reverse proxy that
// forwards HTTP/1.1 (nginx's proxy_pass does).
func (s *Server) warnSyncOverHTTP1(r *http.Request) {
	// Since the server started, which a step of the wall clock does not
	// move: the system clock's times carry the monotonic clock's reading.
	now := int64(s.opts.Clock.Now().Sub(s.started)) + 1
	last := s.http1Warned.Load()
	if last != 0 && now-last < int64(time.Minute) || !s.http1Warned.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("refused a Sync call that came over HTTP/1.1: clients that sync over Sync (the Go SDK) cannot through this path; "+
		"if a reverse proxy forwards to ferryd, have it forward HTTP/2 (h2c), as nginx's grpc_pass, Envoy or Caddy's h2c:// do (counted in ferry_rpcs_total, code unimplemented; logged once a minute at most)",
		"remote", r.RemoteAddr, "user_agent", r.UserAgent())
}

// readableType tells whether a request's Content-Type names a protocol and
// codec the server's procedures read: Connect's, gRPC's and gRPC-Web's,
// with protobuf or JSON.
func readableType(ct string) bool {
	ct, _, _ = strings.Cut(ct, ";")
	switch strings.ToLower(strings.TrimSpace(ct)) {
	case "application/proto", "application/json", "application/connect+proto", "application/connect+json",
		"application/grpc", "application/grpc+proto", "application/grpc+json",
		"application/grpc-web", "application/grpc-web+proto", "application/grpc-web+json":
		return true
	}
	return false
}

const syncNeedsHTTP2 = "Sync is a bidirectional stream and needs HTTP/2 (h2c with prior knowledge, or TLS with ALPN), " +
	"but this request came over HTTP/1.1; over HTTP/1.1 use Subscribe to receive and Push to send"

// deadlineBody is a request body whose every read must make progress
// within timeout: it sets the connection's (or, over HTTP/2, the
// stream's) read deadline before each read, until the body has ended.
// net/http's HTTP/1 server clears the deadline itself as it starts
// reading the connection behind the handler's back, and a read after the
// end (gRPC-Web's handler makes one, to see that nothing follows the
// message) must not set it again: net/http cancels the request's context
// when its background read fails. A body that did not end keeps its
// deadline: net/http reads what the handler left of it before it
// answers, and that read must not wait for good either.
type deadlineBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	ended   bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	if b.ended {
		return 0, io.EOF
	}
	// A server that cannot set read deadlines (a wrapper without Unwrap)
	// reads without one.
	_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		b.ended = true
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = connect.NewError(connect.CodeDeadlineExceeded, fmt.Sprintf(
			"the request's body sent nothing for %s, the server's limit; send it whole, or check the network", b.timeout))
	}
	return n, err
}
