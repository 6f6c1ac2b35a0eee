package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/feedseal"
	"github.com/ferrysync/ferry/internal/timers"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

// Server serves Ferry's RPCs from an engine.
type Server struct {
	eng  *engine.Engine
	opts Options
	log  *slog.Logger
	// seal seals the feed positions sessions send (see engine.FeedSeal).
	seal *feedseal.Codec

	mu       sync.Mutex
	streams  map[ulid.ULID]int // device -> open sessions
	goaway   context.Context   // canceled by GoAway
	goAway   context.CancelFunc
	goneAway bool
	draining bool                 // Drain: /healthz says 503 while the server still serves
	syncs    map[*pumper]struct{} // the Sync sessions' senders, which GoAway kicks
	active   sync.WaitGroup       // session handlers (each waits for its senders)
	signIns  *signInLimiter       // nil when off
	pushes   *pushLimiter         // nil when off
	aheads   chan struct{}        // read-ahead slots (Options.MaxReadAheads); nil when none
	watches  *sendWatches         // nil without a send timeout
	batches  liveBatches          // live rounds' batches, encoded once
	schedule timers.Schedule      // the sessions' deadlines
	started  time.Time            // the clock's time at New: sessions count their times from it (nanos)
	stats    *stats               // counters for operators (Metrics)
	control  controlStats         // the operator's tools the server did (ControlCall)
	clientIP clientIP             // where a caller's address comes from

	warnSyncReads sync.Once
	http1Warned   atomic.Int64 // nanoseconds since started, plus one, at the last warnSyncOverHTTP1; 0: never
	pumps         atomic.Int64 // Sync sessions' pumps running
	pumpStarts    atomic.Int64 // and how many started
	// testPumpEnd, when set (by tests), runs as a session's pumps end.
	testPumpEnd atomic.Pointer[func()]
	// testThrottled, when set (by tests), runs when a push starts waiting
	// for the push limit, its timer armed.
	testThrottled atomic.Pointer[func()]
	// testPushed, when set (by tests), runs as a Sync stream's push has
	// been appended, before its result is queued to send.
	testPushed atomic.Pointer[func()]
	// testHelloWait, when set (by tests), runs on a Sync handler's
	// goroutine as it starts to wait for the hello.
	testHelloWait atomic.Pointer[func()]
	// testAwaitResult, when set (by tests), runs as a Sync session's
	// sender stops to wait for a push's result before its next round.
	testAwaitResult atomic.Pointer[func()]
	// testOpen, when set (by tests), runs as a Sync session's sender
	// starts to open the engine's session; testAwaitOpen as its receiver
	// starts to wait for that.
	testOpen      atomic.Pointer[func()]
	testAwaitOpen atomic.Pointer[func()]
}

// Wait blocks until every session handler and reader goroutine has
// returned. After GoAway and the HTTP server's Shutdown (or Close), it is
// safe to close the engine once Wait returns.
func (s *Server) Wait() { s.active.Wait() }

// New returns a server for eng.
func New(eng *engine.Engine, opts Options) (*Server, error) {
	opts.ensureDefaults()
	if err := opts.validate(); err != nil {
		return nil, fmt.Errorf("server options: %w", err)
	}
	goaway, goAway := context.WithCancel(context.Background())
	return &Server{
		eng:      eng,
		seal:     eng.FeedSeal(),
		opts:     opts,
		log:      opts.Logger,
		streams:  map[ulid.ULID]int{},
		syncs:    map[*pumper]struct{}{},
		goaway:   goaway,
		goAway:   goAway,
		signIns:  newSignInLimiter(opts.SignInLimit, opts.SignInRefill, opts.Clock),
		pushes:   newPushLimiter(opts),
		aheads:   slots(opts.MaxReadAheads),
		watches:  sendWatchesFor(opts),
		stats:    newStats(),
		schedule: timers.Schedule{Clock: opts.Clock},
		started:  opts.Clock.Now(),
		clientIP: clientIP{header: opts.ClientIPHeader, trusted: opts.TrustedProxies},
	}, nil
}

// Handler returns the HTTP handler: every service on one mux, plus
// /healthz. extra registers more routes (a static site) on the same mux.
func (s *Server) Handler(extra ...func(*http.ServeMux)) http.Handler {
	mount := func(mux *http.ServeMux, cs *connect.Server, readMax int) {
		connecthttp.Mount(mux, cs,
			connecthttp.WithReadMaxBytes(readMax),
			connecthttp.WithSendMaxBytes(s.opts.MaxMessageBytes+(1<<20)),
			connecthttp.WithCompressors(compression.NewZstd(compression.WithMemo(), compression.WithShared(sharedBatches)), compression.NewGzip(compression.WithMemo())),
			connecthttp.WithCompressMinBytes(compression.MinBytes),
		)
	}
	mux := http.NewServeMux()
	// The account service's requests are a few names and a password, and
	// two of its calls need no token: a compressed body that decompresses
	// to megabytes would cost the server that much before anyone signed in
	// (zstd turns 177 bytes into 4 MiB).
	accounts := connect.NewServer(s.intercept)
	ferryv1connect.RegisterAccountServiceHandler(accounts, accountService{s})
	mount(mux, accounts, min(maxAccountMessageBytes, s.opts.MaxMessageBytes))
	cs := connect.NewServer(s.intercept)
	ferryv1connect.RegisterConversationServiceHandler(cs, conversationService{s})
	ferryv1connect.RegisterSyncServiceHandler(cs, syncService{s})
	mount(mux, cs, s.opts.MaxMessageBytes)
	mux.HandleFunc("GET /healthz", s.healthz)
	for _, f := range extra {
		f(mux)
	}
	return s.cors(s.guardRequests(s.gateStreams(mux)))
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.eng.Failed(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "storage failed; the server is stopping")
		return
	}
	s.mu.Lock()
	draining := s.goneAway || s.draining
	s.mu.Unlock()
	if draining {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "shutting down")
		return
	}
	fmt.Fprintln(w, "ok")
}

// Drain has /healthz answer 503 while the server goes on serving, so
// that load balancers and orchestrators (Kubernetes' readiness probes)
// stop sending it new clients before GoAway and the shutdown.
func (s *Server) Drain() {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
}

// GoAway tells every open session to end with a Goaway message, so clients
// reconnect (elsewhere, or here after a restart). New sessions are refused
// with Unavailable. Call it before http.Server.Shutdown, which waits for the
// sessions' handlers to return.
func (s *Server) GoAway() {
	s.mu.Lock()
	if s.goneAway {
		s.mu.Unlock()
		return
	}
	s.goneAway = true
	s.goAway()
	senders := make([]*pumper, 0, len(s.syncs))
	for p := range s.syncs {
		senders = append(senders, p)
	}
	s.mu.Unlock()
	for _, p := range senders {
		p.kick() // its pump sends the Goaway
	}
}

// watchGoaway has GoAway kick a Sync session's sender, until
// unwatchGoaway. A map entry, where a context.AfterFunc on s.goaway held
// 190 bytes per idle session. A sender watched after GoAway was called
// sees it in its first pump, which comes after.
func (s *Server) watchGoaway(p *pumper) {
	s.mu.Lock()
	s.syncs[p] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) unwatchGoaway(p *pumper) {
	s.mu.Lock()
	delete(s.syncs, p)
	s.mu.Unlock()
}

// maxAccountMessageBytes caps an account service request, after
// decompression: 100 usernames of LookupUsers, or a password, fit many
// times over.
const maxAccountMessageBytes = 64 << 10

// publicProcedures need no token.
var publicProcedures = map[string]bool{
	ferryv1connect.AccountServiceRegisterProcedure: true,
	ferryv1connect.AccountServiceLoginProcedure:    true,
}

type actorKey struct{}

func actorFrom(ctx context.Context) engine.Actor {
	a, ok := ctx.Value(actorKey{}).(engine.Actor)
	if !ok {
		// Only reachable if a procedure is public by mistake.
		panic("server: handler without an authenticated actor")
	}
	return a
}

// intercept is the server's interceptor: it recovers a handler's panic,
// authenticates the caller, and logs and counts finished calls. It is one frame where
// three interceptors were three: a Sync handler's goroutine keeps it on its
// stack for the session's whole life (see syncService.Sync), so its work is
// done in calls that return.
func (s *Server) intercept(next connect.ServerFunc) connect.ServerFunc {
	return func(ctx context.Context, spec connect.Spec, stream connect.ServerStream) (err error) {
		defer s.finishCall(spec.Procedure, &err)
		if spec.Procedure == ferryv1connect.SyncServiceSyncProcedure {
			ctx, err = s.authenticateDeep(ctx, spec.Procedure)
		} else {
			ctx, err = s.authenticate(ctx, spec.Procedure)
		}
		if err == nil {
			err = next(ctx, spec, stream)
		}
		if err != nil {
			err = s.logFailure(spec.Procedure, err)
		}
		return err
	}
}

// authenticate checks the bearer token from the headers alone, before any
// body is read, decompressed or decoded, and puts the caller's actor in
// the context.
func (s *Server) authenticate(ctx context.Context, procedure string) (context.Context, error) {
	if publicProcedures[procedure] {
		return ctx, nil
	}
	info, _ := connect.CallInfoForServerContext(ctx)
	token, ok := bearer(info.RequestHeader().Get("Authorization"))
	if !ok {
		return ctx, connect.NewError(connect.CodeUnauthenticated, "missing credentials: send the header \"Authorization: Bearer <token>\" with a token from Register or Login")
	}
	a, err := s.eng.Authenticate(token)
	if err != nil {
		if errors.Is(err, engine.ErrUnauthenticated) {
			return ctx, connect.NewError(connect.CodeUnauthenticated, "invalid token: it is malformed, unknown or revoked; log in again")
		}
		return ctx, connectError(err)
	}
	return context.WithValue(ctx, actorKey{}, a), nil
}

// bearer returns the token of an Authorization header's Bearer
// credentials: the scheme's case does not matter (RFC 9110, 11.1), nor
// the spaces around the token.
func bearer(h string) (token string, ok bool) {
	scheme, token, _ := strings.Cut(strings.TrimSpace(h), " ")
	token = strings.TrimSpace(token)
	return token, strings.EqualFold(scheme, "Bearer") && token != ""
}

// authenticateDeep is authenticate on a pooled goroutine, for a Sync
// handler's, which waits for the session's life (see deep): the store's
// read of the token takes a stack deeper than it keeps.
func (s *Server) authenticateDeep(ctx context.Context, procedure string) (context.Context, error) {
	var err error
	deep.run(func() { ctx, err = s.authenticate(ctx, procedure) })
	return ctx, err
}

// logFailure logs a failed call, internal errors at error level with their
// cause and client errors at debug level, and returns its *connect.Error.
func (s *Server) logFailure(procedure string, err error) error {
	ce := &connect.Error{}
	if !errors.As(err, &ce) {
		ce = connectError(err).(*connect.Error)
	}
	switch ce.Code() {
	case connect.CodeInternal, connect.CodeUnknown, connect.CodeDataLoss:
		s.log.Error("rpc failed", "procedure", procedure, "code", ce.Code().String(), "err", ce.Unwrap())
	case connect.CodeUnavailable:
		if errors.Is(err, engine.ErrDiskFull) { // the engine logs it once
			s.log.Debug("rpc failed", "procedure", procedure, "code", ce.Code().String(), "msg", ce.Message())
			break
		}
		s.log.Warn("rpc failed", "procedure", procedure, "code", ce.Code().String(), "err", ce.Unwrap())
	default:
		s.log.Debug("rpc failed", "procedure", procedure, "code", ce.Code().String(), "msg", ce.Message())
	}
	return ce
}

// finishCall, deferred, turns a handler's panic into an internal error,
// and counts the call.
func (s *Server) finishCall(procedure string, err *error) {
	if r := recover(); r != nil {
		stack := debug.Stack()
		if cp, ok := r.(*callPanic); ok { // from a pooled call: where it happened
			r, stack = cp.value, cp.stack
		}
		s.log.Error("panic in handler", "procedure", procedure, "panic", r, "stack", string(stack))
		*err = connect.NewError(connect.CodeInternal, "internal error")
	}
	s.stats.called(procedure, *err)
}

// acquireStream counts a device's open sessions, refusing more than
// MaxStreamsPerDevice, and sessions once the server is going away.
func (s *Server) acquireStream(device ulid.ULID) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.goneAway {
		return nil, connect.NewError(connect.CodeUnavailable, "the server is shutting down; reconnect shortly")
	}
	if s.streams[device] >= s.opts.MaxStreamsPerDevice {
		return nil, connect.NewError(connect.CodeResourceExhausted,
			fmt.Sprintf("this device already has %d open sync sessions, the limit; close one first", s.opts.MaxStreamsPerDevice))
	}
	s.streams[device]++
	s.active.Add(1)
	s.stats.sessions.Add(1)
	s.stats.sessionsStarted.Add(1)
	var once sync.Once
	return func() {
		once.Do(func() {
			s.stats.sessions.Add(-1)
			s.mu.Lock()
			if s.streams[device]--; s.streams[device] == 0 {
				delete(s.streams, device)
			}
			s.mu.Unlock()
			s.active.Done()
		})
	}, nil
}

// slots is a semaphore of n slots; nil (never free) when n <= 0.
func slots(n int) chan struct{} {
	if n <= 0 {
		return nil
	}
	return make(chan struct{}, n)
}
