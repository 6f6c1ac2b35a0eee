package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connecthttp"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/opid"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server"
)

// FerryMode says where the Ferry server under test runs.
type FerryMode int

// The modes.
const (
	// FerryInProcess runs the server in this process: for go test -bench.
	// Usage then counts the clients too.
	FerryInProcess FerryMode = iota
	// FerryProcess starts a ferryd binary: its CPU and memory are measured
	// on their own.
	FerryProcess
	// FerryRemote uses a running server at URL: no usage or disk figures.
	FerryRemote
)

// FerryConfig configures the Ferry system.
type FerryConfig struct {
	Mode   FerryMode
	Dir    string // store folder (in-process and process modes)
	Binary string // ferryd (process mode)
	URL    string // remote mode
	// Uncompressed makes clients send and accept no compression, to
	// measure what zstd saves.
	Uncompressed bool
	Logger       *slog.Logger

	// For tests: the in-process server's heartbeat interval, the clients'
	// heartbeat period, a hook each server heartbeat a client receives
	// runs, and the in-process store's memtable size. Zero: the defaults.
	serverHeartbeat, clientHeartbeat time.Duration
	onHeartbeat                      func()
	memTableSize                     uint64
}

// Ferry is Ferry as a System.
type Ferry struct {
	cfg  FerryConfig
	url  string
	eng  *engine.Engine
	srv  *server.Server
	hs   *server.HTTPServer
	proc *exec.Cmd
	addr string
	// metrics is the ferryd process's /metrics URL.
	metrics string

	mu      sync.Mutex
	devs    []*ferryDevice
	convs   []ulid.ULID
	convIdx map[ulid.ULID]int
	epoch   string
	conns   map[*ferryConn]struct{} // connected, until closed
}

// FlushAcks makes each connected device send at once the ack it has
// armed: the same ack, with what it holds now, that would go when its
// delay ends.
func (f *Ferry) FlushAcks() {
	f.mu.Lock()
	conns := make([]*ferryConn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	for _, c := range conns {
		if c.disarmAck() {
			c.ack()
		}
	}
}

// NewFerry starts (or reaches) a Ferry server.
func NewFerry(ctx context.Context, cfg FerryConfig) (*Ferry, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Ferry{cfg: cfg, convIdx: map[ulid.ULID]int{}, conns: map[*ferryConn]struct{}{}}
	switch cfg.Mode {
	case FerryInProcess:
		if err := f.startInProcess("127.0.0.1:0"); err != nil {
			return nil, err
		}
	case FerryProcess:
		if err := f.startProcess(ctx); err != nil {
			return nil, err
		}
	case FerryRemote:
		f.url = cfg.URL
	}
	return f, nil
}

// startInProcess opens the engine and serves it on addr.
func (f *Ferry) startInProcess(addr string) error {
	eng, err := engine.Open(f.cfg.Dir, engine.Options{FS: vfs.Default, Logger: f.cfg.Logger, AllowRegistration: true,
		Password: engine.PasswordParams{Time: 1, MemoryKiB: 64, Threads: 1}, MemTableSize: f.cfg.memTableSize})
	if err != nil {
		return err
	}
	srv, err := server.New(eng, server.Options{Logger: f.cfg.Logger, MaxStreamsPerDevice: 4, SignInLimit: -1, PushLimit: -1, HeartbeatInterval: f.cfg.serverHeartbeat})
	if err != nil {
		_ = eng.Close()
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		_ = eng.Close()
		return err
	}
	f.eng, f.srv = eng, srv
	f.hs = server.NewHTTPServer(ln.Addr().String(), srv.Handler(), nil)
	hs := f.hs
	go func() { _ = hs.Serve(ln) }()
	f.url = "http://" + ln.Addr().String()
	return nil
}

func (f *Ferry) stopInProcess() error {
	f.srv.GoAway()
	_ = f.hs.Close()
	f.srv.Wait()
	return f.eng.Close()
}

var (
	listening   = regexp.MustCompile(`listening on (\S+)`)
	metricsLine = regexp.MustCompile(`metrics: curl (http://\S+/metrics)`)
)

func (f *Ferry) startProcess(ctx context.Context) error {
	if f.addr == "" {
		// Keep one address across restarts, so clients find the server.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		f.addr = ln.Addr().String()
		_ = ln.Close()
	}
	// The limits that guard a shared server from one client are off, as
	// the peers have none: the setup pushes up to a million ops as one
	// user, and the workloads measure the server's ceiling.
	cmd := exec.Command(f.cfg.Binary, "--addr", f.addr, "--data", f.cfg.Dir, "--allow-registration",
		"--password-memory-kib", "64", "--password-passes", "1", "--log-level", "warn", "--max-streams-per-device", "4",
		"--sign-in-limit", "0", "--push-limit", "0", "--metrics-addr", "127.0.0.1:0")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start ferryd: %w", err)
	}
	// ferryd says where it listens, then where its metrics are.
	found, metrics := make(chan string, 1), make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
			if m := metricsLine.FindStringSubmatch(sc.Text()); m != nil {
				metrics <- m[1]
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	for f.url, f.metrics = "", ""; f.url == "" || f.metrics == ""; {
		select {
		case f.url = <-found:
		case f.metrics = <-metrics:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			return errors.New("ferryd did not start listening, or did not say where its metrics are")
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return ctx.Err()
		}
	}
	f.proc = cmd
	return nil
}

// LiveDelay is the sum and count of the server's live delays so far
// (ferry_live_delay_seconds: from the commit that woke a session to each
// of its live rounds handed to the stream).
func (f *Ferry) LiveDelay() (time.Duration, uint64, error) {
	if f.cfg.Mode == FerryInProcess {
		d := f.srv.Metrics().LiveDelay
		return d.Sum, d.Count, nil
	}
	v, err := f.scrape("ferry_live_delay_seconds_sum", "ferry_live_delay_seconds_count")
	if err != nil {
		return 0, 0, err
	}
	return time.Duration(v[0] * float64(time.Second)), uint64(v[1]), nil
}

// StoreWork is what the server's store has flushed and compacted so far
// (ferry_store_flushes_total, ferry_store_compactions_total).
func (f *Ferry) StoreWork() (StoreWork, error) {
	if f.cfg.Mode == FerryInProcess {
		m := f.eng.StoreMetrics()
		return StoreWork{Flushes: m.Flushes, Compactions: m.Compactions}, nil
	}
	v, err := f.scrape("ferry_store_flushes_total", "ferry_store_compactions_total")
	if err != nil {
		return StoreWork{}, err
	}
	return StoreWork{Flushes: int64(v[0]), Compactions: int64(v[1])}, nil
}

// scrape reads the values of the named metrics from a ferryd process's
// /metrics.
func (f *Ferry) scrape(names ...string) ([]float64, error) {
	if f.cfg.Mode != FerryProcess {
		return nil, errors.New("no metrics from a remote server")
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(f.metrics)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	v, err := parseMetrics(resp.Body, names...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.metrics, err)
	}
	return v, nil
}

// parseMetrics reads the values of the named metrics, each on a line of
// its own ("name value"), from metrics in Prometheus's text format (only
// the server speaks Prometheus; see archtest). Every name must be there.
func parseMetrics(r io.Reader, names ...string) ([]float64, error) {
	values := make([]float64, len(names))
	found := make([]bool, len(names))
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		i := slices.Index(names, name)
		if !ok || i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		values[i], found[i] = v, true
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if i := slices.Index(found, false); i >= 0 {
		return nil, fmt.Errorf("no %s", names[i])
	}
	return values, nil
}

// Name is the system's name.
func (f *Ferry) Name() string {
	if f.cfg.Uncompressed {
		return "ferry (uncompressed)"
	}
	return "ferry"
}

// URL is the server's address.
func (f *Ferry) URL() string { return f.url }

// ferryDevice is one client: a device of its own user.
type ferryDevice struct {
	f      *Ferry
	i      int
	token  string
	user   ulid.ULID
	device ulid.ULID
	read   atomic.Int64
	http   *http.Client
	sync   ferryv1connect.SyncServiceClient
	// requests counts the HTTP requests the device's clients made, and
	// retired holds the clients of its sessions before (Disconnect).
	requests atomic.Int64
	retired  []*http.Client

	mu         sync.Mutex
	dots       map[int]uint64
	held       map[int]uint64 // conv -> highest seq held (ops arrive in seq order)
	acked      map[int]uint64 // conv -> highest seq acknowledged on the stream
	noReceipts map[int]bool   // conv -> the conversation shares no receipts
	pos        uint64
	ids        *opid.Source // the Go SDK's op ids
}

// client makes RPC clients for device i (none signed in when i < 0) whose
// connection counts the bytes it reads into read, and whose transport the
// requests it makes into requests.
func (f *Ferry) client(i int, read, requests *atomic.Int64) (ferryv1connect.AccountServiceClient, ferryv1connect.SyncServiceClient, *http.Client) {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: countingTransport{requests: requests, Transport: &http.Transport{Protocols: p,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &CountingConn{Conn: c, Bytes: read}, nil
		}}}}
	opts := []connecthttp.Option{connecthttp.WithReadMaxBytes(64 << 20)}
	if f.cfg.Uncompressed {
		opts = append(opts, connecthttp.WithCompressors())
	} else {
		// The devices accept zstd, and the server compresses what it sends
		// as it does for the Go SDK; they send their pushes uncompressed,
		// which the SDK compresses from compression.MinBytes. A device
		// compresses on its own CPU; the harness's devices share the
		// server's machine, and compressing their pushes took a quarter of
		// the harness's CPU in batched ingest, CPU the server then lacked
		// and the peers' clients, which compress nothing, do not spend.
		opts = append(opts, connecthttp.WithCompressors(compression.NewZstd()))
	}
	var ics []connect.ClientInterceptor
	if i >= 0 && f.devs[i] != nil {
		ics = append(ics, wire.Bearer(f.devs[i].token))
	}
	c := connect.NewClient(connecthttp.NewTransport(hc, f.url, opts...), ics...)
	return ferryv1connect.NewAccountServiceClient(c), ferryv1connect.NewSyncServiceClient(c), hc
}

// Prepare registers one user with one device per client and creates the
// conversations, each by its first member. Every member's device then
// holds what the creation wrote (the create and member-add ops), as
// devices the creator's client had told of it would: that is setup, which
// no workload measures. A device would otherwise catch up on it when it
// first connects: at 10,000 members, 10,000 ops for each of 10,000
// devices, a minute and a half of this machine before the first message.
func (f *Ferry) Prepare(ctx context.Context, clients int, members [][]int) error {
	// In this process each client's connection takes two files, its end
	// and the server's: past the limit, accepts fail and the row never
	// ends.
	if need, may := 2*clients+512, openFiles(); f.cfg.Mode == FerryInProcess && need > may {
		return fmt.Errorf("%d clients with the server in this process need about %d open files (both ends of each connection), and this process may open %d: serve from another process (ferry-bench --target process), or raise ulimit -n", clients, need, may)
	}
	f.devs = make([]*ferryDevice, clients)
	run := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffff)
	err := Parallel(ctx, clients, 32, func(i int) error {
		acc, _, hc := f.client(-1, &atomic.Int64{}, &atomic.Int64{})
		resp, err := acc.Register(ctx, &ferryv1.RegisterRequest{Username: fmt.Sprintf("b%s-%d", run, i), Password: "bench password", DeviceName: "bench"})
		// The device's own client connects anew: leave no connection of
		// the sign-up open on the server.
		hc.CloseIdleConnections()
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			return fmt.Errorf("register client %d: %w (the bench signs up every client from one address: run the server with --sign-in-limit 0)", i, err)
		}
		if err != nil {
			return fmt.Errorf("register client %d: %w", i, err)
		}
		ids, err := opid.New(newRand(uint64(i)))
		if err != nil {
			return err
		}
		s := resp.GetSession()
		d := &ferryDevice{f: f, i: i, token: s.GetToken(), user: ulid.MustParseStrict(s.GetUserId()),
			device: ulid.MustParseStrict(s.GetDeviceId()), dots: map[int]uint64{}, held: map[int]uint64{}, noReceipts: map[int]bool{},
			ids: ids}
		f.mu.Lock()
		f.devs[i] = d
		f.mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	for _, d := range f.devs {
		_, d.sync, d.http = f.client(d.i, &d.read, &d.requests)
	}
	f.convs = make([]ulid.ULID, len(members))
	for c := range members {
		f.convs[c] = ulid.Make()
		f.convIdx[f.convs[c]] = c
	}
	return Parallel(ctx, len(members), 16, func(c int) error {
		m := members[c]
		creator := f.devs[m[0]]
		ops := []*ferryv1.Op{creator.op(c, &ferryv1.Op{Payload: &ferryv1.Op_Create{Create: &ferryv1.Create{Title: fmt.Sprint("conversation ", c)}}})}
		for _, o := range m[1:] {
			ops = append(ops, creator.op(c, &ferryv1.Op{Payload: &ferryv1.Op_MemberAdd{MemberAdd: &ferryv1.MemberAdd{UserId: f.devs[o].user.String()}}}))
		}
		for len(ops) > 0 {
			n := min(len(ops), 1000)
			resp, err := creator.sync.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: f.convs[c].String(), Ops: ops[:n]}}})
			if err != nil {
				return fmt.Errorf("create conversation %d: %w", c, err)
			}
			if err := rejected(resp.GetResults()); err != nil {
				return err
			}
			head := resp.GetResults()[n-1].GetSeq()
			for _, o := range m {
				d := f.devs[o]
				d.mu.Lock()
				d.held[c] = head
				d.mu.Unlock()
			}
			ops = ops[n:]
		}
		return nil
	})
}

// rejected is an error for the first op of rs the server did not store
// (or had not, before), nil when it stored them all.
func rejected(rs []*ferryv1.OpResult) error {
	for _, r := range rs {
		if st := r.GetStatus(); st != ferryv1.OpStatus_OP_STATUS_ACCEPTED && st != ferryv1.OpStatus_OP_STATUS_DUPLICATE {
			return fmt.Errorf("op %s: %s: %s", st, r.GetReason(), r.GetMessage())
		}
	}
	return nil
}

// op fills an op's id and this device's next dot in conversation c.
func (d *ferryDevice) op(c int, o *ferryv1.Op) *ferryv1.Op {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dots[c]++
	id, err := d.ids.Next(ulid.Now())
	if err != nil {
		panic(err) // newRand never fails
	}
	o.Id = id.String()
	o.Dot = d.dots[c]
	return o
}

// newRand is a seeded randomness source for op ids.
func newRand(seed uint64) io.Reader {
	var k [32]byte
	binary.LittleEndian.PutUint64(k[:], seed)
	return rand.NewChaCha8(k)
}

// ferryConn is a connected device: one Sync stream.
type ferryConn struct {
	d      *ferryDevice
	st     ferryv1connect.SyncServiceSyncClientStream
	cancel context.CancelFunc
	onMsg  func(conv int, payload []byte)
	done   chan error

	sendMu   sync.Mutex
	lastSend time.Time   // of the last message sent, under sendMu
	hb       *time.Timer // the heartbeat's, under sendMu; nil once stopped
	mu       sync.Mutex
	nextReq  uint64
	pending  map[uint64]func(error)
	ackAt    time.Time // when the armed ack goes; zero when none is armed
	ackGen   int       // counts armings, so a stale timer does not disarm a new one
	ackT     *time.Timer
}

// As in the Go SDK: markers gather for ackDelay (clientsdk.WithAckDelay),
// and for resumeAckDelay when only delivered markers of conversations
// without receipts wait, since those only set where the next session
// resumes (clientsdk.WithResumeAckDelay).
const (
	ackDelay       = 250 * time.Millisecond
	resumeAckDelay = 5 * time.Second
)

// heartbeatEvery is how long a bench device may send nothing before it
// sends a heartbeat: as the Go SDK's (clientsdk.WithHeartbeat), under the
// server's 30 s, which ends a session that says nothing for three of them.
// Connecting 10,000 devices takes longer than that.
const heartbeatEvery = 20 * time.Second

// heartbeat sends a heartbeat when the stream has been quiet for a period,
// and arms itself for the next.
func (c *ferryConn) heartbeat() {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.hb == nil {
		return // stopped
	}
	every := c.d.f.heartbeatEvery()
	if quiet := time.Since(c.lastSend); quiet < every {
		c.hb.Reset(every - quiet)
		return
	}
	// A failed send ends the stream, which the receiver reports.
	_ = c.st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Heartbeat{Heartbeat: &ferryv1.Heartbeat{}}})
	c.lastSend = time.Now()
	c.hb.Reset(every)
}

func (f *Ferry) heartbeatEvery() time.Duration {
	if f.cfg.clientHeartbeat > 0 {
		return f.cfg.clientHeartbeat
	}
	return heartbeatEvery
}

// ackSoon arms the ack for the markers the device has to send.
func (c *ferryConn) ackSoon() {
	delay := resumeAckDelay
	c.d.mu.Lock()
	for idx, seq := range c.d.held {
		if seq > c.d.acked[idx] && !c.d.noReceipts[idx] {
			delay = ackDelay
			break
		}
	}
	c.d.mu.Unlock()
	c.ackIn(delay)
}

// ackIn arms the ack to go after delay, unless it is due sooner.
func (c *ferryConn) ackIn(delay time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	at := time.Now().Add(delay)
	if !c.ackAt.IsZero() && !at.Before(c.ackAt) {
		return // due sooner already
	}
	if c.ackT != nil {
		c.ackT.Stop()
	}
	c.ackGen++
	gen := c.ackGen
	c.ackAt = at
	c.ackT = time.AfterFunc(delay, func() {
		c.mu.Lock()
		stale := c.ackGen != gen // re-armed or stopped meanwhile
		if !stale {
			c.ackAt, c.ackT = time.Time{}, nil
		}
		c.mu.Unlock()
		if !stale {
			c.ack()
		}
	})
}

// Connect opens the device's session and waits until it is caught up.
func (f *Ferry) Connect(ctx context.Context, i int, onMessage func(int, []byte)) (Client, error) {
	c := &ferryConn{d: f.devs[i], onMsg: onMessage, pending: map[uint64]func(error){}}
	if _, _, err := c.open(ctx); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.conns[c] = struct{}{}
	f.mu.Unlock()
	return c, nil
}

// open opens the stream and reads until CaughtUp, returning the ops
// received and when it was done.
func (c *ferryConn) open(ctx context.Context) (int, time.Time, error) {
	sctx, cancel := context.WithCancel(context.Background())
	st, err := c.d.sync.Sync(sctx)
	if err != nil {
		cancel()
		return 0, time.Time{}, err
	}
	c.d.f.mu.Lock()
	epoch := c.d.f.epoch
	c.d.f.mu.Unlock()
	c.d.mu.Lock()
	c.d.acked = map[int]uint64{} // a new stream: acknowledge everything again
	hello := &ferryv1.Hello{Epoch: epoch, FeedPos: c.d.pos, Client: "ferry-bench", PackedOps: true, SkipOwnOps: true}
	// Like a real client, say what the device holds: the server's record
	// of it may lag (an ack sent just before a disconnect can be lost).
	for idx, seq := range c.d.held {
		hello.Cursors = append(hello.Cursors, &ferryv1.Cursor{ConversationId: c.d.f.convs[idx].String(), Seq: seq})
	}
	c.d.mu.Unlock()
	// The stream is published with its hello sent, under sendMu: an ack
	// (a late timer's) may only follow the hello.
	c.sendMu.Lock()
	c.st, c.cancel, c.done = st, cancel, make(chan error, 1)
	err = st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: hello}})
	c.lastSend = time.Now()
	c.sendMu.Unlock()
	if err != nil {
		_, rerr := st.Receive()
		cancel()
		return 0, time.Time{}, errors.Join(err, rerr)
	}
	n := 0
	for {
		m, err := st.Receive()
		if err != nil {
			cancel()
			return 0, time.Time{}, err
		}
		switch x := m.GetMessage().(type) {
		case *ferryv1.SyncResponse_Welcome:
			c.d.f.mu.Lock()
			c.d.f.epoch = x.Welcome.GetEpoch()
			c.d.f.mu.Unlock()
		case *ferryv1.SyncResponse_Conversations:
			c.infos(x.Conversations)
		case *ferryv1.SyncResponse_Ops:
			k, err := c.take(x.Ops, false)
			if err != nil {
				cancel()
				return 0, time.Time{}, err
			}
			n += k
		case *ferryv1.SyncResponse_CaughtUp:
			at := time.Now()
			c.d.mu.Lock()
			c.d.pos = x.CaughtUp.GetFeedPos()
			c.d.mu.Unlock()
			c.ack()
			// Quiet while live, the device heartbeats.
			c.sendMu.Lock()
			c.hb = time.AfterFunc(c.d.f.heartbeatEvery(), c.heartbeat)
			c.sendMu.Unlock()
			go func() { c.done <- c.receive() }()
			return n, at, nil
		}
	}
}

// infos records which conversations share no receipts.
func (c *ferryConn) infos(cs *ferryv1.Conversations) {
	c.d.mu.Lock()
	defer c.d.mu.Unlock()
	for _, ci := range cs.GetConversations() {
		conv, _ := ulid.ParseStrict(ci.GetId())
		if idx, known := c.d.f.convIdx[conv]; known {
			c.d.noReceipts[idx] = ci.GetNoReceipts()
		}
	}
}

// take records a batch of ops, delivering messages live if asked. Like the
// Go SDK, the bench device reads ops packed (Hello.packed_ops).
func (c *ferryConn) take(ops *ferryv1.Ops, live bool) (int, error) {
	n := 0
	for i, p := range ops.GetPacked() {
		conv, b, err := wire.UnpackBatch(fmt.Sprintf("ops.packed[%d]", i), p)
		if err != nil {
			return n, fmt.Errorf("the server sent a malformed batch: %w", err)
		}
		idx, known := c.d.f.convIdx[conv]
		for j := range b {
			n++
			if live && known && c.onMsg != nil && b[j].Kind == model.KindMessage {
				c.onMsg(idx, b[j].Body)
			}
		}
		if len(b) > 0 && known {
			c.d.mu.Lock()
			c.d.held[idx] = max(c.d.held[idx], b[len(b)-1].Seq)
			c.d.mu.Unlock()
		}
	}
	if p := ops.GetFeedPos(); p != 0 {
		c.d.mu.Lock()
		c.d.pos = p
		c.d.mu.Unlock()
	}
	return n, nil
}

// ack tells the server what the device holds and it has not acknowledged
// yet, so a later session resumes after it; like the Go SDK, it sends
// nothing when nothing moved (a round with receipts only).
func (c *ferryConn) ack() {
	c.d.mu.Lock()
	ack := &ferryv1.Ack{}
	sent := map[int]uint64{}
	for idx, seq := range c.d.held {
		if seq > c.d.acked[idx] {
			ack.Markers = append(ack.Markers, &ferryv1.Marker{ConversationId: c.d.f.convs[idx].String(), Delivered: seq})
			sent[idx] = seq
		}
	}
	c.d.mu.Unlock()
	if len(ack.Markers) == 0 {
		return
	}
	c.sendMu.Lock()
	err := c.st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Ack{Ack: ack}})
	c.lastSend = time.Now()
	c.sendMu.Unlock()
	if err == nil {
		c.d.mu.Lock()
		for idx, seq := range sent {
			c.d.acked[idx] = max(c.d.acked[idx], seq)
		}
		c.d.mu.Unlock()
	}
}

func (c *ferryConn) receive() error {
	for {
		m, err := c.st.Receive()
		if err != nil {
			c.failPending(err)
			return err
		}
		switch x := m.GetMessage().(type) {
		case *ferryv1.SyncResponse_Conversations:
			c.infos(x.Conversations)
		case *ferryv1.SyncResponse_Ops:
			if _, err := c.take(x.Ops, true); err != nil {
				c.failPending(err)
				return err
			}
			if x.Ops.GetFeedPos() != 0 {
				c.ackSoon()
			}
		case *ferryv1.SyncResponse_Heartbeat:
			if f := c.d.f.cfg.onHeartbeat; f != nil {
				f()
			}
		case *ferryv1.SyncResponse_PushResult:
			if pos := x.PushResult.GetFeedPos(); pos != 0 {
				// Like the Go SDK (Hello.skip_own_ops): the round that left
				// these ops out is over, and the device holds them.
				c.d.mu.Lock()
				for _, r := range x.PushResult.GetResults() {
					conv, _ := ulid.ParseStrict(r.GetConversationId())
					if idx, known := c.d.f.convIdx[conv]; known && r.GetSeq() > 0 {
						c.d.held[idx] = max(c.d.held[idx], r.GetSeq())
					}
				}
				c.d.pos = pos // sealed: the last given, not the greatest
				c.d.mu.Unlock()
				c.ackIn(resumeAckDelay)
			}
			c.mu.Lock()
			done := c.pending[x.PushResult.GetRequestId()]
			delete(c.pending, x.PushResult.GetRequestId())
			c.mu.Unlock()
			if done != nil {
				done(rejected(x.PushResult.GetResults()))
			}
		}
	}
}

func (c *ferryConn) failPending(err error) {
	c.mu.Lock()
	p := c.pending
	c.pending = map[uint64]func(error){}
	c.mu.Unlock()
	for _, done := range p {
		done(err)
	}
}

// Send pushes payloads as messages of conversation conv in one push.
func (c *ferryConn) Send(conv int, payloads [][]byte, done func(error)) error {
	ops := make([]*ferryv1.Op, len(payloads))
	for i, p := range payloads {
		ops[i] = c.d.op(conv, &ferryv1.Op{Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: p, ContentType: "text/plain"}}})
	}
	c.mu.Lock()
	c.nextReq++
	req := c.nextReq
	c.pending[req] = done
	c.mu.Unlock()
	c.sendMu.Lock()
	c.lastSend = time.Now()
	err := c.st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{RequestId: req,
		Batches: []*ferryv1.OpBatch{{ConversationId: c.d.f.convs[conv].String(), Ops: ops}}}}})
	c.sendMu.Unlock()
	if err != nil {
		// The caller has the error, so done must not run too: unless the
		// stream's end ran it already (failPending), with its error.
		c.mu.Lock()
		_, waiting := c.pending[req]
		delete(c.pending, req)
		c.mu.Unlock()
		if !waiting {
			return nil
		}
	}
	return err
}

// Disconnect closes the session after acknowledging what the device holds,
// and its connection: a device offline for a while has none, and its
// catch-up connects anew, as the peers' clients do.
func (c *ferryConn) Disconnect() error {
	c.ack()
	c.stopHeartbeat()
	c.sendMu.Lock()
	_ = c.st.CloseSend()
	c.sendMu.Unlock()
	c.stop()
	d := c.d
	d.retired = append(d.retired, d.http)
	d.http.CloseIdleConnections()
	_, d.sync, d.http = d.f.client(d.i, &d.read, &d.requests)
	return nil
}

// CatchUp reopens the session and measures the catch-up: its round trips
// are the requests it made (the Sync stream's, whose hello has the
// catch-up for an answer).
func (c *ferryConn) CatchUp(ctx context.Context) (CatchUp, error) {
	before, requests := c.readBytes(), c.d.requests.Load()
	start := time.Now()
	n, at, err := c.open(ctx)
	if err != nil {
		return CatchUp{}, err
	}
	return CatchUp{Ops: n, Duration: at.Sub(start), RoundTrips: int(c.d.requests.Load() - requests), WireBytes: c.readBytes() - before}, nil
}

func (c *ferryConn) readBytes() int64 { return c.d.read.Load() }

// Close ends the session.
func (c *ferryConn) Close() error {
	c.d.f.mu.Lock()
	delete(c.d.f.conns, c)
	c.d.f.mu.Unlock()
	c.stop()
	for _, hc := range append(c.d.retired, c.d.http) {
		hc.CloseIdleConnections()
	}
	c.d.retired = nil
	return nil
}

// countingTransport counts the requests it carries.
type countingTransport struct {
	requests *atomic.Int64
	*http.Transport
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.requests.Add(1)
	return t.Transport.RoundTrip(r)
}

// stop ends the stream and waits for the receiver. Cancelling the context
// alone does not unblock a Receive in flight: the stream must be closed.
func (c *ferryConn) stop() {
	c.stopHeartbeat()
	c.disarmAck()
	c.cancel()
	_ = c.st.Close()
	<-c.done
}

// disarmAck stops the armed ack's timer, saying whether one was armed.
func (c *ferryConn) disarmAck() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ackT == nil {
		return false
	}
	c.ackT.Stop()
	c.ackGen++ // a timer firing meanwhile finds itself stale
	c.ackAt, c.ackT = time.Time{}, nil
	return true
}

func (c *ferryConn) stopHeartbeat() {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.hb != nil {
		c.hb.Stop()
		c.hb = nil
	}
}

// InProcess reports whether the server runs in this process.
func (f *Ferry) InProcess() bool { return f.cfg.Mode == FerryInProcess }

// Usage reads the server process's usage.
func (f *Ferry) Usage() (Usage, error) {
	pid, err := f.pid()
	if err != nil {
		return Usage{}, err
	}
	return ProcessUsage(pid)
}

// ResetPeakRSS starts the server process's peak RSS afresh (PeakResetter).
func (f *Ferry) ResetPeakRSS() error {
	pid, err := f.pid()
	if err != nil {
		return err
	}
	return ResetPeakRSS(pid)
}

// pid is the server's process: this one when it runs in process.
func (f *Ferry) pid() (int, error) {
	switch f.cfg.Mode {
	case FerryProcess:
		return f.proc.Process.Pid, nil
	case FerryInProcess:
		return os.Getpid(), nil
	}
	return 0, errors.New("no usage for a remote server")
}

// DiskBytes compacts the store and measures its live files: the tables,
// the WAL in use, the manifest and options. Files Pebble no longer reads
// (compacted tables it deletes at a paced rate, flushed WAL files it keeps
// to reuse) are left out: they are a fixed amount, not a cost per op. A
// ferryd process is stopped for it (compaction needs the store) and started
// again; the harness compacts with the engine's default options, so a
// ferryd run with other store flags (--store-compression fast) is measured
// as the default would store its data.
func (f *Ferry) DiskBytes(ctx context.Context) (int64, error) {
	switch f.cfg.Mode {
	case FerryInProcess:
		u, err := f.eng.DiskUsage(true)
		return int64(u.Live()), err
	case FerryProcess:
		_ = f.proc.Process.Signal(syscall.SIGTERM)
		_ = f.proc.Wait()
		eng, err := engine.Open(f.cfg.Dir, engine.Options{Logger: f.cfg.Logger})
		if err != nil {
			return 0, err
		}
		u, err := eng.DiskUsage(true)
		if cerr := eng.Close(); err == nil {
			err = cerr
		}
		if serr := f.startProcess(ctx); err == nil {
			err = serr
		}
		return int64(u.Live()), err
	}
	return 0, errors.New("no disk figures for a remote server")
}

// CanRestart: Ferry restarts a ferryd process or the server in process,
// not a remote server.
func (f *Ferry) CanRestart() bool { return f.cfg.Mode != FerryRemote }

// Restart stops the server and starts it again on the same store and
// address.
func (f *Ferry) Restart(ctx context.Context) error {
	switch f.cfg.Mode {
	case FerryInProcess:
		if err := f.stopInProcess(); err != nil {
			return err
		}
		return f.startInProcess(strings.TrimPrefix(f.url, "http://"))
	case FerryProcess:
		_ = f.proc.Process.Signal(syscall.SIGTERM)
		_ = f.proc.Wait()
		return f.startProcess(ctx)
	}
	return errors.New("a remote server cannot be restarted")
}

var (
	_ Restarter   = (*Ferry)(nil)
	_ LiveDelayer = (*Ferry)(nil)
	_ StoreWorker = (*Ferry)(nil)
)

// Close stops the server.
func (f *Ferry) Close() error {
	switch f.cfg.Mode {
	case FerryInProcess:
		return f.stopInProcess()
	case FerryProcess:
		_ = f.proc.Process.Signal(syscall.SIGTERM)
		return f.proc.Wait()
	}
	return nil
}
