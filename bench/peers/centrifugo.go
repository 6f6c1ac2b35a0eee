package peers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/centrifugal/centrifuge-go"

	"github.com/ferrysync/ferry/bench"
)

// CentrifugoDefaultLimit is Centrifugo's default for both
// client.recovery_max_publication_limit and
// client.history_max_publication_limit (internal/configtypes in v6.9.1):
// a subscription that missed more publications than this is not recovered
// at all, and a history call returns at most this many.
const CentrifugoDefaultLimit = 300

// centrifugoRaisedLimit replaces the default limits for the like-for-like
// runs: more than any workload misses in one channel.
const centrifugoRaisedLimit = 10_000_000

// centrifugoHistorySize is each channel's history_size: more than any
// workload writes to one channel.
const centrifugoHistorySize = 2_000_000

// CentrifugoConfig configures the Centrifugo system.
type CentrifugoConfig struct {
	Binary string // centrifugo, see Build
	// Dir is the configuration folder. The memory engine stores nothing;
	// the Redis engine's redis-server keeps its data in Dir/redis.
	Dir string
	// RedisServer, when set, is a redis-server binary (see
	// LookRedisServer): Centrifugo then runs with its Redis engine on a
	// redis-server child process of its own, with an append-only file
	// synced on every write (appendfsync always) and no snapshots.
	// Otherwise Centrifugo runs with its memory engine.
	RedisServer string
	// DefaultLimits keeps the recovery and history publication limits at
	// Centrifugo's default (CentrifugoDefaultLimit): what users get unless
	// they raise them. Otherwise both are raised beyond any workload.
	DefaultLimits bool
}

// Centrifugo is Centrifugo as a bench.System: a centrifugo child process
// with the memory engine, or with the Redis engine and a redis-server child
// process (CentrifugoConfig.RedisServer), history and recovery forced on
// every channel, JWT (HMAC) connection tokens, and centrifuge-go clients
// over WebSocket with the Protobuf protocol.
//
//   - Send publishes through the server HTTP API (/api/publish, or
//     /api/batch for several payloads); done runs on its answer. The
//     memory engine acknowledges from memory: nothing is on disk. The
//     Redis engine acknowledges once Redis answered the history write,
//     which with appendfsync always follows the AOF's fsync.
//   - Live delivery: one subscription per conversation (channel conv.<n>).
//   - Catch-up: the client reconnects and resubscribes each channel with
//     recovery from the offset it holds; the subscribe replies carry the
//     missed publications. Round trips: the connect command plus one
//     subscribe per channel (pipelined on one connection). A channel that
//     missed more than the recovery limit is not recovered (recovered:
//     false, no publications); the client then pages through history from
//     its offset, limit publications per call, as an application must.
type Centrifugo struct {
	cfg    CentrifugoConfig
	srv    *server
	redis  *redisServer // the Redis engine's server, nil for the memory engine
	addr   string
	secret string
	apiKey string
	limit  int // recovery and history publication limits in force
	api    *http.Client

	mu    sync.Mutex
	acked map[int]uint64 // conversation -> highest offset the API acknowledged

	members  [][]int
	memberOf [][]int
}

// NewCentrifugo writes a configuration and starts centrifugo, and first
// redis-server for the Redis engine.
func NewCentrifugo(ctx context.Context, cfg CentrifugoConfig) (_ *Centrifugo, err error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	engine := map[string]any{"type": "memory"}
	var redis *redisServer
	if cfg.RedisServer != "" {
		if redis, err = startRedis(ctx, cfg.RedisServer, filepath.Join(cfg.Dir, "redis")); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				_ = redis.stop()
			}
		}()
		// Everything else at Centrifugo's defaults: history in Redis
		// streams (history_use_lists false), key prefix "centrifugo".
		engine = map[string]any{"type": "redis", "redis": map[string]any{"address": []string{"redis://" + redis.addr}}}
	}
	c := &Centrifugo{cfg: cfg, redis: redis, addr: fmt.Sprintf("127.0.0.1:%d", port), secret: "ferry-bench-hmac-secret",
		apiKey: "ferry-bench-api-key", limit: centrifugoRaisedLimit, acked: map[int]uint64{}}
	client := map[string]any{
		"token":          map[string]any{"hmac_secret_key": c.secret},
		"channel_limit":  100_000,  // default 128; a catch-up device is in up to 500 channels
		"queue_max_size": 64 << 20, // default 1 MiB; a recovery reply carries up to 100k publications
	}
	if cfg.DefaultLimits {
		c.limit = CentrifugoDefaultLimit
	} else {
		client["recovery_max_publication_limit"] = c.limit
		client["history_max_publication_limit"] = c.limit
	}
	conf := map[string]any{
		"http_server": map[string]any{"address": "127.0.0.1", "port": port},
		"log":         map[string]any{"level": "warn"},
		"engine":      engine,
		"http_api":    map[string]any{"key": c.apiKey},
		"client":      client,
		"channel": map[string]any{"without_namespace": map[string]any{
			"history_size":                 centrifugoHistorySize,
			"history_ttl":                  "24h",
			"force_recovery":               true,
			"allow_subscribe_for_client":   true,
			"allow_history_for_subscriber": true,
		}},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, "centrifugo.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, err
	}
	c.srv, err = startServer(ctx, "centrifugo", cfg.Binary, []string{"--config", path}, "", c.addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c.api = &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	return c, nil
}

// Name is the system's name.
func (c *Centrifugo) Name() string {
	return centrifugoName(c.cfg.RedisServer != "", c.cfg.DefaultLimits)
}

// Volatile says this Centrifugo acknowledges publishes from memory: its
// memory engine's are; the Redis engine's, with appendfsync always, are
// on disk first.
func (c *Centrifugo) Volatile() bool { return c.cfg.RedisServer == "" }

var _ bench.Volatile = (*Centrifugo)(nil)

// centrifugoName names a Centrifugo variant: "centrifugo" or
// "centrifugo+redis", with " (default limits)" when the limits are
// Centrifugo's defaults.
func centrifugoName(redis, defaultLimits bool) string {
	name := "centrifugo"
	if redis {
		name += "+redis"
	}
	if defaultLimits {
		name += " (default limits)"
	}
	return name
}

// Limit is the recovery and history publication limit in force.
func (c *Centrifugo) Limit() int { return c.limit }

// Prepare records the conversations' members: channels need no setup, and
// users exist through their tokens.
func (c *Centrifugo) Prepare(_ context.Context, clients int, members [][]int) error {
	c.members = members
	c.memberOf = membership(clients, members)
	return nil
}

func cfChannel(conv int) string { return "conv." + strconv.Itoa(conv) }

// token is a connection JWT (HS256) for user i.
func (c *Centrifugo) token(i int) string {
	enc := base64.RawURLEncoding
	claims, _ := json.Marshal(map[string]any{"sub": fmt.Sprintf("user%d", i), "exp": time.Now().Add(24 * time.Hour).Unix()})
	unsigned := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, []byte(c.secret))
	mac.Write([]byte(unsigned))
	return unsigned + "." + enc.EncodeToString(mac.Sum(nil))
}

// cfClient is one client: one WebSocket connection, one subscription per
// conversation.
type cfClient struct {
	s     *Centrifugo
	i     int
	convs []int
	onMsg func(conv int, payload []byte)
	read  atomic.Int64
	cl    *centrifuge.Client
	subs  map[int]*centrifuge.Subscription

	mu          sync.Mutex
	connected   bool
	held        map[int]uint64 // conversation -> last offset held
	epoch       map[int]string
	top         map[int]uint64 // the channel's offset in an unrecovered subscription
	target      map[int]uint64 // what a catch-up must reach: the acknowledged offsets
	subscribed  map[int]bool
	unrecovered []int // channels whose recovery failed in this catch-up
	catching    bool
	got         int           // publications taken while catching up
	ready       chan struct{} // closed once subscribed to all and caught up
	fail        error
}

// Connect connects client i and subscribes to its conversations, from
// their current offsets.
func (c *Centrifugo) Connect(ctx context.Context, i int, onMessage func(int, []byte)) (bench.Client, error) {
	cc := &cfClient{s: c, i: i, onMsg: onMessage, subs: map[int]*centrifuge.Subscription{},
		held: map[int]uint64{}, epoch: map[int]string{},
		top: map[int]uint64{}, target: map[int]uint64{}, subscribed: map[int]bool{}}
	if i < len(c.memberOf) {
		cc.convs = c.memberOf[i]
	}
	cc.cl = centrifuge.NewProtobufClient("ws://"+c.addr+"/connection/websocket", centrifuge.Config{
		Token: c.token(i),
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &bench.CountingConn{Conn: conn, Bytes: &cc.read}, nil
		},
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		HandshakeTimeout:  30 * time.Second,
		MinReconnectDelay: 50 * time.Millisecond,
	})
	cc.cl.OnError(func(e centrifuge.ErrorEvent) { cc.failed(fmt.Errorf("client %d: %w", i, e.Error)) })
	cc.cl.OnConnected(func(centrifuge.ConnectedEvent) {
		cc.mu.Lock()
		defer cc.mu.Unlock()
		cc.connected = true
		cc.check()
	})
	for _, conv := range cc.convs {
		sub, err := cc.cl.NewSubscription(cfChannel(conv), centrifuge.SubscriptionConfig{Recoverable: true})
		if err != nil {
			cc.cl.Close()
			return nil, err
		}
		sub.OnSubscribed(func(e centrifuge.SubscribedEvent) { cc.subscribedTo(conv, e) })
		sub.OnPublication(func(e centrifuge.PublicationEvent) { cc.publication(conv, e) })
		sub.OnError(func(e centrifuge.SubscriptionErrorEvent) {
			cc.failed(fmt.Errorf("client %d, channel %s: %w", i, cfChannel(conv), e.Error))
		})
		sub.OnUnsubscribed(func(e centrifuge.UnsubscribedEvent) {
			cc.failed(fmt.Errorf("client %d unsubscribed from %s: %d %s", i, cfChannel(conv), e.Code, e.Reason))
		})
		cc.subs[conv] = sub
	}
	cc.mu.Lock()
	cc.ready = make(chan struct{})
	cc.mu.Unlock()
	if err := cc.connect(ctx); err != nil {
		cc.cl.Close()
		return nil, err
	}
	return cc, nil
}

// connect connects (subscribing, or resubscribing with recovery) and
// waits until every subscription is in place and caught up, at most a
// minute.
func (cc *cfClient) connect(ctx context.Context) error {
	cc.mu.Lock()
	ready := cc.ready
	cc.check()
	cc.mu.Unlock()
	if err := cc.cl.Connect(); err != nil {
		return err
	}
	for _, sub := range cc.subs {
		if sub.State() == centrifuge.SubStateUnsubscribed {
			if err := sub.Subscribe(); err != nil {
				return err
			}
		}
	}
	select {
	case <-ready:
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Minute):
		cc.mu.Lock()
		defer cc.mu.Unlock()
		return fmt.Errorf("client %d: connected %v, subscribed to %d of %d channels, not caught up within a minute",
			cc.i, cc.connected, len(cc.subscribed), len(cc.convs))
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.fail
}

// check closes ready once the client is connected and every channel is
// subscribed and holds its target offset (or failed to recover), or on
// failure. Called with mu held.
//
// The target is known from the publishes' answers, not from the subscribe
// reply: a recovered subscription's reply carries the client's own offset
// (the publications after it follow in the same reply, and centrifuge-go
// hands them over only after the subscribed event).
func (cc *cfClient) check() {
	if cc.ready == nil {
		return
	}
	if cc.fail == nil {
		if !cc.connected {
			return
		}
		for _, conv := range cc.convs {
			if !cc.subscribed[conv] {
				return
			}
			if cc.held[conv] < cc.target[conv] && !slices.Contains(cc.unrecovered, conv) {
				return
			}
		}
	}
	close(cc.ready)
	cc.ready = nil
}

func (cc *cfClient) failed(err error) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.fail == nil && !errors.Is(err, centrifuge.ErrClientDisconnected) && !errors.Is(err, centrifuge.ErrClientClosed) {
		cc.fail = err
	}
	cc.check()
}

// subscribedTo records a channel's subscription. The recovered
// publications, if any, arrive after it. A first subscription starts from
// the channel's current offset; a failed recovery records the channel's
// top for paging through history.
func (cc *cfClient) subscribedTo(conv int, e centrifuge.SubscribedEvent) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if e.StreamPosition == nil {
		cc.fail = fmt.Errorf("channel %s is not recoverable: is history on?", cfChannel(conv))
		cc.check()
		return
	}
	cc.subscribed[conv] = true
	cc.epoch[conv] = e.StreamPosition.Epoch
	switch {
	case !cc.catching:
		cc.held[conv] = max(cc.held[conv], e.StreamPosition.Offset)
	case e.WasRecovering && !e.Recovered:
		cc.top[conv] = e.StreamPosition.Offset
		cc.unrecovered = append(cc.unrecovered, conv)
	}
	cc.check()
}

// publication takes a publication unless the client already holds it.
func (cc *cfClient) publication(conv int, e centrifuge.PublicationEvent) {
	cc.mu.Lock()
	if e.Offset <= cc.held[conv] {
		cc.mu.Unlock()
		return
	}
	cc.held[conv] = e.Offset
	catching := cc.catching
	if catching {
		cc.got++
		cc.check()
	}
	cc.mu.Unlock()
	if !catching && cc.onMsg != nil {
		cc.onMsg(conv, e.Data)
	}
}

// apiCommand is a command of the server HTTP API.
type apiCommand struct {
	Publish *apiPublish `json:"publish,omitempty"`
}

type apiPublish struct {
	Channel string `json:"channel"`
	B64Data string `json:"b64data"`
}

type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// Send publishes the payloads through the server HTTP API, in one batch
// request when there are several; done runs on the answer.
func (cc *cfClient) Send(conv int, payloads [][]byte, done func(error)) error {
	var path string
	var body any
	if len(payloads) == 1 {
		path, body = "/api/publish", apiPublish{Channel: cfChannel(conv), B64Data: base64.StdEncoding.EncodeToString(payloads[0])}
	} else {
		cmds := make([]apiCommand, len(payloads))
		for k, p := range payloads {
			cmds[k] = apiCommand{Publish: &apiPublish{Channel: cfChannel(conv), B64Data: base64.StdEncoding.EncodeToString(p)}}
		}
		path, body = "/api/batch", map[string]any{"commands": cmds}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	go func() {
		offset, err := cc.s.call(path, b)
		if err == nil {
			cc.s.mu.Lock()
			cc.s.acked[conv] = max(cc.s.acked[conv], offset)
			cc.s.mu.Unlock()
		}
		done(err)
	}()
	return nil
}

// call posts an HTTP API request, checks its answer for errors and returns
// the highest offset a publish in it got.
func (c *Centrifugo) call(path string, body []byte) (uint64, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+c.addr+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-API-Key", c.apiKey)
	req.Header.Set("Content-Type", "application/json")
	// Let net/http send the request again on another connection when the
	// server closed the kept-alive one as it went out ("server closed idle
	// connection"), which failed a whole ingest run. A nil idempotency key
	// marks the POST replayable without sending the header. A retry could
	// publish twice only if the server had read the request before
	// closing, and a duplicate would only add a delivery to the count.
	req.Header["X-Idempotency-Key"] = nil
	resp, err := c.api.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	type result struct {
		Offset uint64 `json:"offset"`
	}
	var ans struct {
		Error   *apiError `json:"error"`
		Result  *result   `json:"result"`
		Replies []struct {
			Error   *apiError `json:"error"`
			Publish *result   `json:"publish"`
		} `json:"replies"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if ans.Error != nil {
		return 0, fmt.Errorf("%s: error %d: %s", path, ans.Error.Code, ans.Error.Message)
	}
	var offset uint64
	if ans.Result != nil {
		offset = ans.Result.Offset
	}
	for _, r := range ans.Replies {
		if r.Error != nil {
			return 0, fmt.Errorf("%s: error %d: %s", path, r.Error.Code, r.Error.Message)
		}
		if r.Publish != nil {
			offset = max(offset, r.Publish.Offset)
		}
	}
	return offset, nil
}

// Disconnect closes the connection; the client keeps its offsets, and
// centrifuge-go keeps its subscriptions for recovery on reconnect.
func (cc *cfClient) Disconnect() error {
	err := cc.cl.Disconnect()
	cc.mu.Lock()
	cc.connected = false
	cc.subscribed = map[int]bool{}
	cc.mu.Unlock()
	return err
}

// CatchUp reconnects with recovery and, for channels not recovered, pages
// through history, until it holds every publication acknowledged before it
// started. Its time and bytes include the reconnection. An error
// reported while the client was offline (the closed transport) is dropped.
func (cc *cfClient) CatchUp(ctx context.Context) (bench.CatchUp, error) {
	cc.s.mu.Lock()
	target := map[int]uint64{}
	for _, conv := range cc.convs {
		target[conv] = cc.s.acked[conv]
	}
	cc.s.mu.Unlock()
	cc.mu.Lock()
	cc.catching, cc.got, cc.unrecovered, cc.fail, cc.target = true, 0, nil, nil, target
	cc.ready = make(chan struct{})
	cc.mu.Unlock()
	defer func() {
		cc.mu.Lock()
		cc.catching = false
		cc.mu.Unlock()
	}()
	before := cc.read.Load()
	start := time.Now()
	if err := cc.connect(ctx); err != nil {
		return bench.CatchUp{}, err
	}
	trips := 1 + len(cc.convs)
	cc.mu.Lock()
	unrecovered := cc.unrecovered
	cc.mu.Unlock()
	for _, conv := range unrecovered {
		n, err := cc.page(ctx, conv)
		trips += n
		if err != nil {
			return bench.CatchUp{}, err
		}
	}
	cc.mu.Lock()
	got := cc.got
	cc.mu.Unlock()
	return bench.CatchUp{Ops: got, Duration: time.Since(start), RoundTrips: trips, WireBytes: cc.read.Load() - before}, nil
}

// page fetches a channel's history from the held offset to the top, at
// most the history limit per call, returning the calls made.
func (cc *cfClient) page(ctx context.Context, conv int) (int, error) {
	calls := 0
	for {
		cc.mu.Lock()
		held, top, epoch := cc.held[conv], cc.top[conv], cc.epoch[conv]
		cc.mu.Unlock()
		if held >= top {
			return calls, nil
		}
		res, err := cc.subs[conv].History(ctx, centrifuge.WithHistorySince(&centrifuge.StreamPosition{Offset: held, Epoch: epoch}),
			centrifuge.WithHistoryLimit(int32(min(cc.s.limit, 1<<30))))
		calls++
		if err != nil {
			return calls, fmt.Errorf("history of %s from %d: %w", cfChannel(conv), held, err)
		}
		if len(res.Publications) == 0 {
			return calls, fmt.Errorf("history of %s from %d brought nothing, top %d", cfChannel(conv), held, top)
		}
		cc.mu.Lock()
		for _, p := range res.Publications {
			if p.Offset > cc.held[conv] {
				cc.held[conv] = p.Offset
				cc.got++
			}
		}
		cc.mu.Unlock()
	}
}

// Close closes the client.
func (cc *cfClient) Close() error {
	cc.cl.Close()
	return nil
}

// Usage reads the centrifugo process's usage, plus redis-server's with the
// Redis engine: CPU and RSS are the sums of both processes', and peak RSS
// the sum of each one's own peak (at most that, if their peaks were at
// different times).
func (c *Centrifugo) Usage() (bench.Usage, error) {
	u, err := bench.ProcessUsage(c.srv.pid())
	if err != nil || c.redis == nil {
		return u, err
	}
	r, err := bench.ProcessUsage(c.redis.srv.pid())
	if err != nil {
		return bench.Usage{}, err
	}
	return bench.Usage{CPU: u.CPU + r.CPU, PeakRSS: u.PeakRSS + r.PeakRSS, RSS: u.RSS + r.RSS}, nil
}

// ResetPeakRSS starts the peak RSS afresh (bench.PeakResetter): of both
// processes, with the Redis engine.
func (c *Centrifugo) ResetPeakRSS() error {
	err := bench.ResetPeakRSS(c.srv.pid())
	if c.redis != nil {
		err = errors.Join(err, bench.ResetPeakRSS(c.redis.srv.pid()))
	}
	return err
}

// DiskBytes is, with the Redis engine, the size of Redis's append-only
// files after a BGREWRITEAOF (see redisServer.aofBytes): the base file then
// holds the whole data set in RDB format and the incremental file is
// empty. The memory engine stores nothing on disk, so it fails.
func (c *Centrifugo) DiskBytes(ctx context.Context) (int64, error) {
	if c.redis == nil {
		return 0, errors.New("centrifugo's memory engine keeps no store on disk")
	}
	if err := c.redis.rewriteAOF(ctx); err != nil {
		return 0, err
	}
	return c.redis.aofBytes()
}

// Close stops centrifugo, then redis-server if any.
func (c *Centrifugo) Close() error {
	c.api.CloseIdleConnections()
	err := c.srv.stop()
	if c.redis != nil {
		err = errors.Join(err, c.redis.stop())
	}
	return err
}

// CentrifugoFactory makes a fresh Centrifugo with the memory engine for
// each workload. Storage is left out: the memory engine has no store.
func CentrifugoFactory(binary string, defaultLimits bool) bench.Factory {
	f := bench.Factory{New: func(ctx context.Context, dir string) (bench.System, error) {
		return NewCentrifugo(ctx, CentrifugoConfig{Binary: binary, Dir: dir, DefaultLimits: defaultLimits})
	}, Only: []string{"ingest", "fanout", "catchup", "idle"}}
	f.Name = centrifugoName(false, defaultLimits)
	if defaultLimits {
		f.Only = []string{"catchup"}
	}
	return f
}

// CentrifugoRedisFactory makes, for each workload, a fresh Centrifugo with
// the Redis engine on a fresh redis-server (redisServer, see
// LookRedisServer) with appendfsync always: the durable Centrifugo, named
// "centrifugo+redis", with the raised limits. It runs every workload,
// storage included.
func CentrifugoRedisFactory(binary, redisServer string) bench.Factory {
	return bench.Factory{Name: centrifugoName(true, false), New: func(ctx context.Context, dir string) (bench.System, error) {
		return NewCentrifugo(ctx, CentrifugoConfig{Binary: binary, Dir: dir, RedisServer: redisServer})
	}}
}
