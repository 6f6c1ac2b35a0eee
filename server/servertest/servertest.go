// Package servertest runs a Ferry server for tests on a loopback listener,
// over real HTTP/2 (h2c), with an engine on an in-memory filesystem, and
// makes clients for it. Everything is closed by t.Cleanup.
package servertest

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server"
)

// Server is a running test server.
type Server struct {
	T      testing.TB
	URL    string
	Engine *engine.Engine
	Server *server.Server
	Clock  *clock.Fake
	HTTP   *http.Client // h2c
	hs     *server.HTTPServer
	stop   func()
}

// Config adjusts a test server.
type Config struct {
	Engine func(*engine.Options)
	Server func(*server.Options)
	// Engine to serve instead of opening one (for restarts on one store).
	Use *engine.Engine
	// Wrap, when set, wraps the server's HTTP handler (to watch the
	// server's side of the HTTP exchange).
	Wrap func(http.Handler) http.Handler
}

// New starts a server.
func New(t testing.TB, cfg Config) *Server {
	t.Helper()
	eng := cfg.Use
	if eng == nil {
		var mods []func(*engine.Options)
		if cfg.Engine != nil {
			mods = append(mods, cfg.Engine)
		}
		eng = enginetest.New(t, mods...)
	}
	fake := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	// Tests sign up many users from loopback: no sign-in limit unless a
	// test sets one, and no push limit, whose buckets refill only as the
	// fake clock moves. No send timeout either: its sweeps are timers on the
	// fake clock, which tests read to know the server is waiting; a test
	// of the timeout sets one.
	so := server.Options{Logger: slog.New(slog.DiscardHandler), Clock: fake, SignInLimit: -1, PushLimit: -1, SendTimeout: -1}
	if cfg.Server != nil {
		cfg.Server(&so)
	}
	srv, err := server.New(eng, so)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := srv.Handler()
	if cfg.Wrap != nil {
		h = cfg.Wrap(h)
	}
	hs := NewHTTPServer(ln.Addr().String(), h)
	go func() { _ = hs.Serve(ln) }()
	s := &Server{T: t, URL: "http://" + ln.Addr().String(), Engine: eng, Server: srv, Clock: fake, hs: hs, HTTP: H2CClient()}
	s.stop = func() {
		srv.GoAway()
		// An idle HTTP/2 connection would close a second after its GOAWAY.
		s.HTTP.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := hs.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("shutdown: %v", err)
		}
		srv.Wait()
		s.HTTP.CloseIdleConnections()
	}
	t.Cleanup(s.Stop)
	return s
}

// Stop sends Goaway to every session and shuts the HTTP server down. It is
// safe to call twice.
func (s *Server) Stop() {
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
}

// NewHTTPServer returns server.NewHTTPServer(addr, h, nil) with the h2c
// server FERRY_TEST_H2C names ("ferry" or "xnet"; empty: the default), so
// that the tests run against either: make test runs the server's and the
// SDK's tests with x/net's too.
func NewHTTPServer(addr string, h http.Handler) *server.HTTPServer {
	hs := server.NewHTTPServer(addr, h, nil)
	if name := os.Getenv("FERRY_TEST_H2C"); name != "" {
		if err := hs.H2C.Set(name); err != nil {
			panic("FERRY_TEST_H2C: " + err.Error())
		}
	}
	return hs
}

// H2CClient returns an HTTP client that speaks HTTP/2 without TLS.
func H2CClient() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p}}
}

// Clients are the three service clients of one identity.
type Clients struct {
	Account      ferryv1connect.AccountServiceClient
	Conversation ferryv1connect.ConversationServiceClient
	Sync         ferryv1connect.SyncServiceClient
}

// Clients returns clients that send token (none when empty), over h2c with
// zstd, plus any transport options.
func (s *Server) Clients(token string, opts ...connecthttp.Option) Clients {
	base := []connecthttp.Option{
		connecthttp.WithCompressors(compression.NewZstd(), compression.NewGzip()),
		connecthttp.WithSendCompression("zstd"),
	}
	var ics []connect.ClientInterceptor
	if token != "" {
		ics = append(ics, wire.Bearer(token))
	}
	c := connect.NewClient(connecthttp.NewTransport(s.HTTP, s.URL, append(base, opts...)...), ics...)
	return Clients{
		Account:      ferryv1connect.NewAccountServiceClient(c),
		Conversation: ferryv1connect.NewConversationServiceClient(c),
		Sync:         ferryv1connect.NewSyncServiceClient(c),
	}
}

// Device is a registered device and its clients.
type Device struct {
	Clients
	Session *ferryv1.DeviceSession
	srv     *Server
}

// Position opens a feed position the server sent the device sealed (see
// engine.FeedSeal): the position, which the test may compare with
// another.
func (d *Device) Position(sealed uint64) uint64 {
	d.srv.T.Helper()
	pos, err := d.srv.Engine.FeedSeal().Open(sealed)
	if err != nil {
		d.srv.T.Fatalf("feed position %#x: %v", sealed, err)
	}
	return pos
}

// Register creates a user with its first device.
func (s *Server) Register(username string) *Device {
	s.T.Helper()
	resp, err := s.Clients("").Account.Register(context.Background(), &ferryv1.RegisterRequest{
		Username: username, Password: "correct horse", DeviceName: username + "-1",
	})
	if err != nil {
		s.T.Fatalf("register %s: %v", username, err)
	}
	return &Device{Clients: s.Clients(resp.GetSession().GetToken()), Session: resp.GetSession(), srv: s}
}

// Login adds a device to username.
func (s *Server) Login(username, device string) *Device {
	s.T.Helper()
	resp, err := s.Clients("").Account.Login(context.Background(), &ferryv1.LoginRequest{
		Username: username, Password: "correct horse", DeviceName: device,
	})
	if err != nil {
		s.T.Fatalf("login %s: %v", username, err)
	}
	return &Device{Clients: s.Clients(resp.GetSession().GetToken()), Session: resp.GetSession(), srv: s}
}
