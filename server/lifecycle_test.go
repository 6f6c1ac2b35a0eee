package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// reader moves a stream's messages to a channel, so a test can wait for a
// message and for the fake clock at once.
func reader(s *stream) (<-chan *ferryv1.SyncResponse, <-chan error) {
	msgs, errs := make(chan *ferryv1.SyncResponse, 16), make(chan error, 1)
	go func() {
		for {
			m, err := s.st.Receive()
			if err != nil {
				errs <- err
				return
			}
			msgs <- m
		}
	}()
	return msgs, errs
}

// noPumps checks that no session of srv has a pump left. A Sync handler
// returns, and so ends its stream, only after its pump has ended: once a
// client sees the end, the count is exact.
func noPumps(t *testing.T, srv *servertest.Server) {
	t.Helper()
	if n := server.Pumps(srv.Server); n != 0 {
		t.Fatalf("%d pumps left after the sessions ended", n)
	}
}

// readModes are the two ways a Sync handler reads its stream. Normally the
// handler's goroutine reads, and the sending side interrupts a blocked read
// with a read deadline when it ends the session. Behind a middleware whose
// ResponseWriter hides Unwrap (hidden), deadlines cannot be set, and the
// stream is read on a goroutine of its own. Both must behave alike.
var readModes = []struct {
	name string
	wrap func(http.Handler) http.Handler
}{
	{"deadline", nil},
	{"reader goroutine", func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(hidden{w}, r) })
	}},
}

// inReadModes runs test in each read mode, with the handler wrapper the
// mode needs (nil for none).
func inReadModes(t *testing.T, test func(t *testing.T, wrap func(http.Handler) http.Handler)) {
	for _, mode := range readModes {
		t.Run(mode.name, func(t *testing.T) { test(t, mode.wrap) })
	}
}

// hidden is a ResponseWriter wrapper without Unwrap.
type hidden struct{ http.ResponseWriter }

func (h hidden) Flush() { h.ResponseWriter.(http.Flusher).Flush() }

// logBuffer collects a server's log, safely for its goroutines.
type logBuffer struct {
	mu    sync.Mutex
	b     strings.Builder
	wrote chan struct{} // see written
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

// written returns a channel that receives after each write from the first
// call on (several writes may make one receive).
func (l *logBuffer) written() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.wrote == nil {
		l.wrote = make(chan struct{}, 1)
	}
	return l.wrote
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSyncReadMode: a Sync session is read by its handler's goroutine on
// the server as it ships (no reader goroutine of its own, 8 KB of stack per
// idle device), and on a goroutine of its own, with a warning, behind a
// wrapper that hides the ResponseWriter.
func TestSyncReadMode(t *testing.T) {
	inReadModes(t, func(t *testing.T, wrap func(http.Handler) http.Handler) {
		var log logBuffer
		srv := servertest.New(t, servertest.Config{Wrap: wrap, Server: func(o *server.Options) {
			o.Logger = slog.New(slog.NewTextHandler(&log, nil))
		}})
		alice := newDev(t, srv.Register("alice"))
		s := alice.open(hello("", 0))
		s.untilCaughtUp()
		warned := strings.Contains(log.String(), "read on a goroutine of their own")
		if warned != (wrap != nil) {
			t.Fatalf("warned of a reader goroutine: %v; log:\n%s", warned, log.String())
		}
	})
}

// stackRecorder returns a hook that keeps the stack trace of the
// goroutine it runs on (of every goroutine, when all) the first time it
// runs, and the channel it sends it on.
func stackRecorder(all bool) (func(), <-chan string) {
	stacks := make(chan string, 1)
	return func() {
		buf := make([]byte, 1<<20)
		select {
		case stacks <- string(buf[:runtime.Stack(buf, all)]):
		default:
		}
	}, stacks
}

// TestSyncHandlerOnlyWaits: a Sync handler's goroutine, which lives as
// long as its session, waits for the client's messages and answers them
// on a pooled goroutine, so that its stack stays small. A push is
// appended off it, while it waits for the pool: in both read modes.
func TestSyncHandlerOnlyWaits(t *testing.T) { inReadModes(t, testSyncHandlerOnlyWaits) }

func testSyncHandlerOnlyWaits(t *testing.T, wrap func(http.Handler) http.Handler) {
	srv := servertest.New(t, servertest.Config{Wrap: wrap})
	record, stacks := stackRecorder(true)
	server.OnPushed(srv.Server, record)
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	s := alice.open(hello("", 0))
	s.untilCaughtUp()
	s.push(1, conv, alice.op(conv, msg("hi")))
	var all string
	select {
	case all = <-stacks:
	case <-time.After(time.Minute): // a guard, not a wait
		t.Fatal("the push was not appended")
	}
	goroutines := strings.Split(all, "\n\n")
	pushing, handler := goroutines[0], ""
	for _, g := range goroutines {
		if strings.Contains(g, "server.syncService.Sync(") {
			handler = g
		}
	}
	if strings.Contains(pushing, "server.syncService.Sync(") || !strings.Contains(pushing, "(*callPool).work") {
		t.Errorf("the push was appended on the handler's goroutine, or not on the pool's:\n%s", pushing)
	}
	if !strings.Contains(handler, "(*callPool).run") {
		t.Errorf("the handler's goroutine does not wait for the pool:\n%s", handler)
	}
}

// TestHelloWaitsOnTheHandler: a stream waits for its hello on the
// handler's goroutine, not on a pooled one, which a client slow to say
// hello would hold.
func TestHelloWaitsOnTheHandler(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	record, stacks := stackRecorder(false)
	server.OnHelloWait(srv.Server, record)
	alice := newDev(t, srv.Register("alice"))
	alice.open(hello("", 0)).untilCaughtUp()
	var stack string
	select {
	case stack = <-stacks:
	default:
		t.Fatal("the session started without waiting for its hello on the handler's goroutine")
	}
	if !strings.Contains(stack, "server.syncService.Sync(") || strings.Contains(stack, "(*callPool).work") {
		t.Fatalf("the hello is waited for off the handler's goroutine:\n%s", stack)
	}
}

// watchPumps returns a wait for srv's sessions to have want pumps running.
func watchPumps(t *testing.T, srv *servertest.Server) (wait func(want int64)) {
	exited := make(chan struct{}, 64)
	server.OnPumpEnd(srv.Server, func() {
		select {
		case exited <- struct{}{}:
		default: // a wait looks at the count again anyway
		}
	})
	return func(want int64) {
		t.Helper()
		for n := server.Pumps(srv.Server); n != want; n = server.Pumps(srv.Server) {
			select {
			case <-exited:
			case <-time.After(time.Minute): // a guard, not a wait: ends come at once
				t.Fatalf("%d pumps, want %d", n, want)
			}
		}
	}
}

// TestPumpsEnd: a Sync session holds no goroutine to send with
// between its pumps. The pump that sent the catch-up ends, and so does
// each that sends a live round.
func TestPumpsEnd(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	waitPumps := watchPumps(t, srv)
	alice, bob := newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
	conv := alice.createConv("c", bob)
	s := bob.open(hello("", 0))
	s.untilCaughtUp()
	waitPumps(0)
	for _, text := range []string{"live", "again"} {
		starts := server.PumpStarts(srv.Server)
		alice.send(conv, text)
		s.until(func(m *ferryv1.SyncResponse) bool { return m.GetOps().GetFeedPos() != 0 })
		waitPumps(0)
		if server.PumpStarts(srv.Server) == starts {
			t.Fatalf("%q: no pump sent the live round", text)
		}
	}
}

// TestPushAnsweredAtClientEnd: a push is answered even when the client
// ends its side, cleanly or with a bad message, right after it.
func TestPushAnsweredAtClientEnd(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	for i := range 20 {
		for _, end := range []string{"close", "bad message"} {
			s := alice.open(hello("", 0))
			s.untilCaughtUp()
			id := uint64(i + 1)
			s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{RequestId: id,
				Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{alice.op(conv, msg("last words"))}}}}}})
			if end == "close" {
				if err := s.st.CloseSend(); err != nil {
					t.Fatal(err)
				}
			} else {
				s.send(&ferryv1.SyncRequest{})
			}
			var got *ferryv1.PushResult
			for {
				m, err := s.st.Receive()
				if err != nil {
					break
				}
				if r := m.GetPushResult(); r != nil {
					got = r
				}
			}
			if got.GetRequestId() != id {
				t.Fatalf("round %d, %s after a push: no push result (%v)", i, end, got)
			}
			noPumps(t, srv)
		}
	}
}

// TestClientDeadlineEndsSync: a Sync stream ends at the client's deadline
// (Connect-Timeout-Ms), which a read of the request body does not notice.
func TestClientDeadlineEndsSync(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	c := connect.NewClient(connecthttp.NewTransport(srv.HTTP, srv.URL), wire.Bearer(alice.Session.GetToken()))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	st, err := ferryv1connect.NewSyncServiceClient(c).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Receive(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		mustCode(t, "past the client's deadline", err, connect.CodeDeadlineExceeded)
		noPumps(t, srv)
	case <-time.After(time.Minute): // a guard, not a wait
		t.Fatal("the stream outlived the client's deadline by a minute")
	}
}

func TestHeartbeatsAndIdleCutOff(t *testing.T) { inReadModes(t, testHeartbeatsAndIdleCutOff) }

func testHeartbeatsAndIdleCutOff(t *testing.T, wrap func(http.Handler) http.Handler) {
	const interval = 30 * time.Second
	srv := servertest.New(t, servertest.Config{Wrap: wrap, Server: func(o *server.Options) { o.HeartbeatInterval = interval }})
	alice := newDev(t, srv.Register("alice"))
	s := alice.open(hello("", 0))
	s.untilCaughtUp()
	msgs, errs := reader(s)

	// A quiet session gets a heartbeat once an interval passes. Time moves
	// only when the test moves it; each round waits for the server to arm
	// a timer or to say something.
	heartbeats := 0
	var end error
	for round := 0; round < 50 && end == nil; round++ {
		armed := srv.Clock.Armed()
		srv.Clock.Advance(interval)
		select {
		case m := <-msgs:
			if m.GetHeartbeat() != nil {
				heartbeats++
			}
		case err := <-errs:
			end = err
		case <-armed:
		}
	}
	// The select takes any case ready: the end may have been taken before
	// heartbeats the reader had queued ahead of it.
	for len(msgs) > 0 {
		if (<-msgs).GetHeartbeat() != nil {
			heartbeats++
		}
	}
	if heartbeats == 0 {
		t.Fatal("no heartbeat from a quiet session")
	}
	// The client sent nothing: after three intervals the server ends it.
	mustCode(t, "silent client", end, connect.CodeDeadlineExceeded)
	noPumps(t, srv)
}

// TestHeartbeatCountsFromTheLastSend: a heartbeat goes an interval after
// the last message sent, not after the last heartbeat: the session's timer,
// armed for the earlier deadline, finds nothing due when it fires after a
// live round, and waits on.
func TestHeartbeatCountsFromTheLastSend(t *testing.T) {
	const interval = 30 * time.Second
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.HeartbeatInterval = interval }})
	waitPumps := watchPumps(t, srv)
	alice, bob := newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
	conv := alice.createConv("c", bob)
	s := bob.open(hello("", 0))
	s.untilCaughtUp()
	start := srv.Clock.Now()
	msgs, errs := reader(s)
	next := func(what string) *ferryv1.SyncResponse {
		t.Helper()
		select {
		case m := <-msgs:
			return m
		case err := <-errs:
			t.Fatalf("waiting for %s: %v", what, err)
		case <-time.After(time.Minute): // a guard, not a wait
			t.Fatalf("no %s", what)
		}
		return nil
	}

	srv.Clock.Advance(interval / 2)
	alice.send(conv, "half an interval in")
	for m := next("the live round"); m.GetOps().GetFeedPos() == 0; m = next("the live round") {
	}
	// The pump ends once it has sent the round, and so noted it.
	waitPumps(0)
	srv.Clock.Advance(interval / 2) // the first deadline: nothing is due
	srv.Clock.Advance(interval / 2) // an interval after the round
	m := next("a heartbeat")
	if m.GetHeartbeat() == nil {
		t.Fatalf("got %v; want a heartbeat", m)
	}
	if got, want := m.GetHeartbeat().GetTime().AsTime(), start.Add(3*interval/2); !got.Equal(want) {
		t.Fatalf("the heartbeat went at %v into the session; want %v, an interval after the live round", got.Sub(start), want.Sub(start))
	}
}

// TestHelloDeadline: a stream that opens but never completes its hello is
// ended, freeing its slot. (Go's HTTP/2 client sends no headers before the
// first body bytes, so the test starts an envelope and stalls.)
func TestHelloDeadline(t *testing.T) { inReadModes(t, testHelloDeadline) }

func testHelloDeadline(t *testing.T, wrap func(http.Handler) http.Handler) {
	srv := servertest.New(t, servertest.Config{Wrap: wrap})
	alice := newDev(t, srv.Register("alice"))
	body, stall := io.Pipe()
	defer stall.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/ferry.v1.SyncService/Sync", body)
	req.Header.Set("Content-Type", "application/connect+proto")
	req.Header.Set("Connect-Protocol-Version", "1")
	req.Header.Set("Authorization", "Bearer "+alice.Session.GetToken())
	go func() { _, _ = stall.Write([]byte{0, 0}) }() // 2 of an envelope's 5 header bytes
	armed := srv.Clock.Armed()
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := srv.HTTP.Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{string(b), err}
	}()
	<-armed                      // the handler is waiting for the hello
	srv.Clock.Advance(time.Hour) // far past its deadline
	r := <-done
	if r.err != nil || !strings.Contains(r.body, "deadline_exceeded") {
		t.Fatalf("stalled hello: %q %v, want deadline_exceeded", r.body, r.err)
	}
}

func TestGoawayOnShutdown(t *testing.T) { inReadModes(t, testGoawayOnShutdown) }

func testGoawayOnShutdown(t *testing.T, wrap func(http.Handler) http.Handler) {
	srv := servertest.New(t, servertest.Config{Wrap: wrap})
	alice := newDev(t, srv.Register("alice"))
	s := alice.open(hello("", 0))
	s.untilCaughtUp()
	done := make(chan struct{})
	go func() { srv.Stop(); close(done) }()
	m := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetGoaway() != nil })
	if m.GetGoaway().GetReconnectAfterMs() == 0 {
		t.Fatal("goaway without a reconnect delay")
	}
	if err := s.endErr(); err != nil {
		t.Fatalf("stream after goaway: %v", err)
	}
	<-done
	noPumps(t, srv)
}

// TestProtocols: Connect, gRPC and gRPC-Web on one port, over HTTP/2 and
// (for Connect, including server streaming) HTTP/1.1, with zstd or gzip;
// bidi Sync sessions over each protocol on HTTP/2.
func TestProtocols(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	alice.send(conv, strings.Repeat("a compressible chat message ", 40))
	bob := newDev(t, srv.Register("bob"))
	bobConv := bob.createConv("b")
	http1 := &http.Client{Transport: &http.Transport{}}
	for k, tc := range []struct {
		name     string
		client   *http.Client
		opts     []connecthttp.Option
		encoding string
	}{
		{"connect h2c zstd", srv.HTTP, []connecthttp.Option{connecthttp.WithCompressors(compression.NewZstd()), connecthttp.WithSendCompression("zstd")}, "zstd"},
		{"grpc h2c zstd", srv.HTTP, []connecthttp.Option{connecthttp.WithGRPC(), connecthttp.WithCompressors(compression.NewZstd()), connecthttp.WithSendCompression("zstd")}, "zstd"},
		{"grpc-web h2c gzip", srv.HTTP, []connecthttp.Option{connecthttp.WithGRPCWeb(), connecthttp.WithCompressors(compression.NewGzip()), connecthttp.WithSendCompression("gzip")}, "gzip"},
		{"connect http/1.1 json gzip", http1, []connecthttp.Option{connecthttp.WithProtoJSON(), connecthttp.WithCompressors(compression.NewGzip()), connecthttp.WithSendCompression("gzip")}, "gzip"},
		{"grpc-web http/1.1", http1, []connecthttp.Option{connecthttp.WithGRPCWeb()}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A device of alice's for each protocol: the sessions an earlier
			// one closed may still count against the limit of sessions per
			// device until the server notices (over HTTP/1.1, when it reads
			// the closed connection).
			phone := newDev(t, srv.Login("alice", "phone over "+tc.name))
			c := connect.NewClient(connecthttp.NewTransport(tc.client, srv.URL, tc.opts...), wire.Bearer(phone.Session.GetToken()))
			sync := ferryv1connect.NewSyncServiceClient(c)
			// A response big enough to be compressed.
			ctx, info := connect.NewClientContext(context.Background())
			page, err := sync.History(ctx, &ferryv1.HistoryRequest{ConversationId: conv})
			if err != nil || len(page.GetOps()) != 2 {
				t.Fatalf("history: %v %v", page, err)
			}
			if tc.encoding != "" && info.ResponseEncoding != tc.encoding {
				t.Fatalf("response encoding %q, want %q", info.ResponseEncoding, tc.encoding)
			}
			// Server streaming: a Subscribe session catches up, with its ops
			// as rows and packed.
			for _, packed := range []bool{false, true} {
				st, err := sync.Subscribe(context.Background(), &ferryv1.SubscribeRequest{Hello: &ferryv1.Hello{PackedOps: packed}})
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				var ops []*ferryv1.Op
				for {
					m, err := st.Receive()
					if err != nil {
						t.Fatalf("subscribe: %v", err)
					}
					if o := m.GetOps(); o != nil {
						if packed != (len(o.GetPacked()) > 0) {
							t.Fatalf("packed %v: %d packed and %d row batches", packed, len(o.GetPacked()), len(o.GetBatches()))
						}
						for _, b := range rowsOf(t, o) {
							ops = append(ops, b.GetOps()...)
						}
					}
					if m.GetCaughtUp() != nil {
						if m.GetCaughtUp().GetOps() != 2 || len(ops) != 2 || len(ops[1].GetMessage().GetBody()) != 28*40 {
							t.Fatalf("packed %v: caught up with %d ops, %d received; want 2", packed, m.GetCaughtUp().GetOps(), len(ops))
						}
						break
					}
				}
			}
			// A live round: the batches of its Ops go encoded once for
			// binary protobuf (liveBatches), built per message for JSON.
			for i, packed := range []bool{false, true} {
				carol := newDev(t, srv.Register(fmt.Sprintf("carol%d%d", k, i)))
				carolConv := carol.createConv("live")
				carolSync := ferryv1connect.NewSyncServiceClient(connect.NewClient(
					connecthttp.NewTransport(tc.client, srv.URL, tc.opts...), wire.Bearer(carol.Session.GetToken())))
				// A round that lost its batches would leave the loop below
				// waiting: the deadline turns that into a failure.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				st, err := carolSync.Subscribe(ctx, &ferryv1.SubscribeRequest{Hello: &ferryv1.Hello{PackedOps: packed}})
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				body := strings.Repeat("live over "+tc.name+" ", 3)
				var live []*ferryv1.Op
				for len(live) == 0 {
					m, err := st.Receive()
					if err != nil {
						t.Fatalf("packed %v: subscribe, waiting for the live round: %v", packed, err)
					}
					if m.GetCaughtUp() != nil {
						carol.send(carolConv, body)
					}
					if o := m.GetOps(); o.GetPhase() == ferryv1.Phase_PHASE_LIVE {
						for _, b := range rowsOf(t, o) {
							live = append(live, b.GetOps()...)
						}
						if len(live) > 0 && packed != (len(o.GetPacked()) > 0) {
							t.Fatalf("packed %v: a live Ops message with %d packed and %d row batches", packed, len(o.GetPacked()), len(o.GetBatches()))
						}
					}
				}
				if len(live) != 1 || string(live[0].GetMessage().GetBody()) != body {
					t.Fatalf("packed %v: the live round brought %v; want the message %q", packed, live, body)
				}
			}
			if tc.client != srv.HTTP {
				return // bidi streams need HTTP/2
			}
			// Bidi: a Sync session catches up and answers a push, which
			// is compressed when the client compresses. Bob pushes, so
			// that alice's catch-ups above stay the same.
			bobSync := ferryv1connect.NewSyncServiceClient(connect.NewClient(
				connecthttp.NewTransport(tc.client, srv.URL, tc.opts...), wire.Bearer(bob.Session.GetToken())))
			st, err := bobSync.Sync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}}); err != nil {
				t.Fatal(err)
			}
			op := bob.op(bobConv, msg(strings.Repeat("pushed over "+tc.name+" ", 40)))
			pushed := false
			for {
				m, err := st.Receive()
				if err != nil {
					t.Fatalf("sync: %v", err)
				}
				if m.GetCaughtUp() != nil && !pushed {
					pushed = true
					if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{RequestId: 1,
						Batches: []*ferryv1.OpBatch{{ConversationId: bobConv, Ops: []*ferryv1.Op{op}}}}}}); err != nil {
						t.Fatal(err)
					}
				}
				if r := m.GetPushResult(); r != nil {
					if r.GetRequestId() != 1 || r.GetResults()[0].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED {
						t.Fatalf("push result: %v", r)
					}
					break
				}
			}
		})
	}
}
