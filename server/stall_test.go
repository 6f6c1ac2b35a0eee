package server_test

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestStalledReaderIsReset: a client that opens a Sync stream and stops
// reading fills its flow-control window, and the session's sender blocks
// in a write. After Options.SendTimeout the server resets the stream: the
// sender ends, the stream's slot frees, and the client, reading again,
// finds the stream ended. Also on a Clock that is no clock.AfterFuncer,
// whose fallback timers once stayed stopped: the sweeps, stopped when the
// set-up's streams closed, never ran again.
func TestStalledReaderIsReset(t *testing.T) {
	t.Run("clock=fake", func(t *testing.T) { testStalledReaderIsReset(t, false) })
	t.Run("clock=foreign", func(t *testing.T) { testStalledReaderIsReset(t, true) })
}

func testStalledReaderIsReset(t *testing.T, foreign bool) {
	const timeout = 10 * time.Second
	var log logBuffer
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		if foreign {
			o.Clock = foreignClock{o.Clock.(*clock.Fake)}
		}
		o.SendTimeout = timeout
		o.MaxStreamsPerDevice = 1
		// Heartbeats would end the quiet session on their own: keep them
		// out of the test's time.
		o.HeartbeatInterval = time.Hour
		o.Logger = slog.New(slog.NewTextHandler(&log, nil))
	}})
	exited := make(chan struct{}, 64)
	server.OnPumpEnd(srv.Server, func() { exited <- struct{}{} })

	alice := newDev(t, srv.Register("alice"))
	bob := newDev(t, srv.Register("bob"))
	conv := alice.createConv("c", bob)
	// 64 KB of catch-up that does not compress, far past the stalled
	// client's window.
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 8 {
		b := make([]byte, 6<<10)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		alice.send(conv, base64.StdEncoding.EncodeToString(b))
	}

	// A session opened and closed first: the sweeps stop with its stream
	// (none is left open), and the stalled stream's arms them again.
	closed := make(chan struct{}, 1)
	server.OnWatchClose(srv.Server, func() {
		select {
		case closed <- struct{}{}:
		default:
		}
	})
	first := alice.open(hello("", 0))
	first.untilCaughtUp()
	first.close()
	select {
	case <-closed:
	case <-time.After(time.Minute): // a guard, not a wait
		t.Fatal("the first session's stream was never closed")
	}

	// Bob's client advertises a 1 KiB window per stream and reads nothing.
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tiny := &http.Client{Transport: &http.Transport{Protocols: p,
		HTTP2: &http.HTTP2Config{MaxReceiveBufferPerStream: 1 << 10}}}
	t.Cleanup(tiny.CloseIdleConnections)
	c := connect.NewClient(connecthttp.NewTransport(tiny, srv.URL,
		connecthttp.WithCompressors(compression.NewZstd())), wire.Bearer(bob.Session.GetToken()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := srv.Clock.Now()
	st, err := ferryv1connect.NewSyncServiceClient(c).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Closing the stream resets it from the client's side, which frees the
	// server's sender when the test fails before the server does.
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: hello("", 0)}}); err != nil {
		t.Fatal(err)
	}

	// Move the clock a sweep at a time while a write is under way, until
	// the stalled write is reset. A write that was only passing through
	// ends and clears its stamp; the stalled one stays under way, and the
	// sweep after more than a timeout since it began resets it.
	began := make(chan struct{}, 1)
	server.OnWriteBegin(srv.Server, func() {
		select {
		case began <- struct{}{}:
		default:
		}
	})
	const resetLog = "reset a stream whose write made no progress"
	logged := log.written()
	var reset, held bool
	for range 1000 {
		if reset = strings.Contains(log.String(), resetLog); reset {
			break
		}
		if server.WritesUnderWay(srv.Server) == 0 {
			// A write is about to begin, or, on the foreign clock, the
			// sweep's goroutine has just reset the stalled one and logs
			// it: it arms the next sweep first, which is all the loop
			// waited for.
			select {
			case <-began:
			case <-logged:
			case <-ctx.Done():
				t.Fatal("no write to bob's stream was ever under way")
			}
			continue
		}
		if srv.Clock.Now().Sub(start) > 2*timeout {
			// The sweeps since the timeout found the write stalled: the
			// reset is under way, on the foreign clock's goroutine.
			select {
			case <-logged:
			case <-ctx.Done():
				t.Fatalf("no reset logged at %v of the clock; log:\n%s", srv.Clock.Now().Sub(start), log.String())
			}
			continue
		}
		// The stream holds bob's only slot: a second session is refused.
		if !held {
			mustCode(t, "a second session while the first stalls", bob.open(hello("", 0)).endErr(), connect.CodeResourceExhausted)
			held = true
		}
		armed := srv.Clock.Armed()
		srv.Clock.Advance(timeout / 4)
		if foreign {
			// The fallback timer calls the sweep on a goroutine of its
			// own, which arms the next sweep before it resets streams. A
			// sweep before may have reset the stream already: its close
			// then stops the timer, which this advance may have made due
			// (the waiter sees the stop, and no sweep runs), and the reset
			// is being logged.
			select {
			case <-armed:
			case <-logged:
			case <-ctx.Done():
				t.Fatal("the sweep armed no next sweep")
			}
		}
	}
	if !reset {
		t.Fatalf("the stalled stream was never reset; log:\n%s", log.String())
	}
	if n := srv.Server.Metrics().SendTimeouts; n != 1 {
		t.Fatalf("metrics count %d send timeouts, want 1", n)
	}
	// It took more than the timeout, measured from the write's start.
	if elapsed := srv.Clock.Now().Sub(start); elapsed <= timeout {
		t.Fatalf("reset after %v of the clock, within the %v timeout", elapsed, timeout)
	}
	select {
	case <-exited: // the sender's blocked write returned
	case <-ctx.Done():
		t.Fatal("the stalled session's sender never ended")
	}
	// Reading again, bob's client finds what was sent and then the reset.
	for {
		_, err := st.Receive()
		if errors.Is(err, io.EOF) {
			t.Fatal("the reset stream ended cleanly")
		}
		if err != nil {
			break
		}
	}
	// The slot is free again. The handler releases it a moment after the
	// reset, with nothing to wait for: a refusal here is retried, after
	// the round trip of the refused stream, a bounded number of times.
	for i := 0; ; i++ {
		s := bob.open(hello("", 0))
		m, err := s.st.Receive()
		if err == nil && m.GetWelcome() != nil {
			break
		}
		if code(err) != connect.CodeResourceExhausted || i == 1000 {
			t.Fatalf("a new session after the reset (try %d): %v", i+1, err)
		}
	}
}
