package peers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrysync/ferry/bench"
)

// The JetStream layout: one stream holds every conversation, one subject
// per conversation. The stream republishes each stored message on a live
// subject, with its stream sequence in a header, which is what online
// clients subscribe to.
const (
	natsStream   = "CONV"
	natsSubjects = "conv.>"
	natsLive     = "live.conv.>"
)

func natsSubject(conv int) string { return "conv." + strconv.Itoa(conv) }

// NATSConfig configures the NATS JetStream system.
type NATSConfig struct {
	Binary string // nats-server, see Build
	Dir    string // the JetStream store goes in Dir/jetstream
}

// NATS is NATS JetStream as a bench.System: a nats-server child process
// with file storage synced on every write (sync_interval: always), one
// stream with a subject per conversation, and nats.go clients.
//
//   - Send publishes each payload with a JetStream async publish; done runs
//     when every PubAck arrived. JetStream has no multi-message durable
//     write here, so a batch of n is n stored (and synced) messages.
//   - Live delivery: the stream republishes every stored message on
//     live.conv.<n> with its stream sequence (Nats-Sequence header), and
//     each client has a core subscription per conversation it is a member
//     of. A message thus reaches clients only once stored, as in Ferry.
//   - Catch-up: the client remembers the last stream sequence it holds of
//     each conversation. It reconnects, subscribes live again, creates one
//     ephemeral consumer filtered on all its conversations from the lowest
//     held sequence + 1, and pulls until the consumer's pending count (read
//     when it was created) is drained, skipping what it already holds.
//     Round trips: the consumer creation plus each pull request.
type NATS struct {
	cfg       NATSConfig
	srv       *server
	url       string
	admin     *nats.Conn
	published atomic.Int64 // messages acknowledged so far, by any client

	members  [][]int
	memberOf [][]int
}

// NewNATS writes a configuration, starts nats-server and creates the stream.
func NewNATS(ctx context.Context, cfg NATSConfig) (*NATS, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	store := filepath.Join(cfg.Dir, "jetstream")
	conf := fmt.Sprintf(`listen: "127.0.0.1:%d"
max_payload: 8MB
jetstream {
  store_dir: %q
  sync_interval: always
  max_file_store: 64GB
  max_memory_store: 4GB
}
`, port, store)
	path := filepath.Join(cfg.Dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	srv, err := startServer(ctx, "nats-server", cfg.Binary, []string{"-c", path}, "Server is ready", "", 30*time.Second)
	if err != nil {
		return nil, err
	}
	n := &NATS{cfg: cfg, srv: srv, url: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	if n.admin, err = nats.Connect(n.url, nats.Name("ferry-bench admin")); err != nil {
		_ = srv.stop()
		return nil, err
	}
	js, err := jetstream.New(n.admin)
	if err == nil {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:       natsStream,
			Subjects:   []string{natsSubjects},
			Storage:    jetstream.FileStorage,
			Retention:  jetstream.LimitsPolicy,
			Discard:    jetstream.DiscardOld,
			MaxMsgs:    -1,
			MaxBytes:   -1,
			Duplicates: time.Second, // the harness sets no message ids
			RePublish:  &jetstream.RePublish{Source: natsSubjects, Destination: natsLive},
		})
	}
	if err != nil {
		n.admin.Close()
		_ = srv.stop()
		return nil, fmt.Errorf("create stream: %w", err)
	}
	return n, nil
}

// Name is the system's name.
func (n *NATS) Name() string { return "nats-jetstream" }

// Prepare records the conversations' members: JetStream needs no per-user
// or per-conversation setup beyond the stream.
func (n *NATS) Prepare(_ context.Context, clients int, members [][]int) error {
	n.members = members
	n.memberOf = membership(clients, members)
	return nil
}

// natsClient is one client: its own connection.
type natsClient struct {
	n     *NATS
	i     int
	convs []int
	onMsg func(conv int, payload []byte)
	read  atomic.Int64

	nc *nats.Conn
	js jetstream.JetStream

	mu       sync.Mutex
	held     map[int]uint64 // conversation -> last stream sequence held
	catching bool           // a catch-up is running
	got      int            // messages taken while catching up, live ones too
}

// Connect connects client i, subscribes to its conversations live and, if
// anything was published, catches it up.
func (n *NATS) Connect(ctx context.Context, i int, onMessage func(int, []byte)) (bench.Client, error) {
	c := &natsClient{n: n, i: i, onMsg: onMessage, held: map[int]uint64{}}
	if i < len(n.memberOf) {
		c.convs = n.memberOf[i]
	}
	if err := c.open(); err != nil {
		return nil, err
	}
	if n.published.Load() > 0 {
		if _, _, _, err := c.catchUp(ctx); err != nil {
			c.nc.Close()
			return nil, err
		}
	}
	return c, nil
}

type natsDialer struct{ read *atomic.Int64 }

func (d natsDialer) Dial(network, address string) (net.Conn, error) {
	conn, err := net.DialTimeout(network, address, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &bench.CountingConn{Conn: conn, Bytes: d.read}, nil
}

// open connects and subscribes to the live subject of each conversation.
func (c *natsClient) open() error {
	nc, err := nats.Connect(c.n.url, nats.Name(fmt.Sprintf("ferry-bench %d", c.i)),
		nats.SetCustomDialer(natsDialer{read: &c.read}), nats.NoReconnect())
	if err != nil {
		return fmt.Errorf("connect client %d: %w", c.i, err)
	}
	for _, conv := range c.convs {
		if _, err := nc.Subscribe("live."+natsSubject(conv), func(m *nats.Msg) { c.live(conv, m) }); err != nil {
			nc.Close()
			return err
		}
	}
	// Subscribe only sends SUB: a round trip makes sure the server has
	// them before the device counts as connected, or a message published
	// at once (fan-out's warm-up) may miss it.
	if err := nc.Flush(); err != nil {
		nc.Close()
		return fmt.Errorf("client %d: subscribing: %w", c.i, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return err
	}
	c.nc, c.js = nc, js
	return nil
}

// live takes a republished message unless the client already holds it.
func (c *natsClient) live(conv int, m *nats.Msg) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return
	}
	c.mu.Lock()
	fresh := seq > c.held[conv]
	if fresh {
		c.held[conv] = seq
		if c.catching {
			c.got++
		}
	}
	c.mu.Unlock()
	if fresh && c.onMsg != nil {
		c.onMsg(conv, m.Data)
	}
}

// catchUp fetches what the client misses of its conversations, returning
// the messages it did not hold (including any that arrived live meanwhile),
// the round trips, and when it had them all (before the consumer is
// deleted).
func (c *natsClient) catchUp(ctx context.Context) (int, int, caughtUp, error) {
	if len(c.convs) == 0 {
		return 0, 0, c.caught(), nil
	}
	c.mu.Lock()
	c.catching, c.got = true, 0
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.catching = false
		c.mu.Unlock()
	}()
	filters := make([]string, len(c.convs))
	c.mu.Lock()
	from := uint64(0)
	for k, conv := range c.convs {
		filters[k] = natsSubject(conv)
		if k == 0 || c.held[conv] < from {
			from = c.held[conv]
		}
	}
	c.mu.Unlock()
	cfg := jetstream.ConsumerConfig{
		FilterSubjects:    filters,
		AckPolicy:         jetstream.AckNonePolicy,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		MemoryStorage:     true,
		InactiveThreshold: time.Minute,
	}
	if from > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, from+1
	}
	cons, err := c.js.CreateConsumer(ctx, natsStream, cfg)
	if err != nil {
		return 0, 1, caughtUp{}, fmt.Errorf("create consumer: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.js.DeleteConsumer(dctx, natsStream, cons.CachedInfo().Name)
	}()
	trips := 1
	pending := int(cons.CachedInfo().NumPending)
	got := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.got
	}
	for pending > 0 {
		batch, err := cons.Fetch(min(pending, 50_000), jetstream.FetchMaxWait(30*time.Second))
		if err != nil {
			return got(), trips, caughtUp{}, fmt.Errorf("fetch: %w", err)
		}
		trips++
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return got(), trips, caughtUp{}, err
			}
			conv, err := strconv.Atoi(strings.TrimPrefix(m.Subject(), "conv."))
			if err != nil {
				return got(), trips, caughtUp{}, fmt.Errorf("message on unexpected subject %q", m.Subject())
			}
			c.mu.Lock()
			if meta.Sequence.Stream > c.held[conv] {
				c.held[conv] = meta.Sequence.Stream
				c.got++
			}
			c.mu.Unlock()
		}
		if err := batch.Error(); err != nil {
			return got(), trips, caughtUp{}, fmt.Errorf("fetch: %w", err)
		}
		if n == 0 {
			return got(), trips, caughtUp{}, fmt.Errorf("a pull brought nothing with %d messages pending", pending)
		}
		pending -= n
	}
	// Caught up: the consumer's delete, deferred, is cleanup after it.
	return got(), trips, c.caught(), nil
}

// caughtUp is when a catch-up had brought every message, and the bytes
// read by then.
type caughtUp struct {
	at   time.Time
	read int64
}

func (c *natsClient) caught() caughtUp { return caughtUp{time.Now(), c.read.Load()} }

// Send publishes each payload as a JetStream message; done runs once all
// are acknowledged (stored and synced).
func (c *natsClient) Send(conv int, payloads [][]byte, done func(error)) error {
	futures := make([]jetstream.PubAckFuture, len(payloads))
	subject := natsSubject(conv)
	for k, p := range payloads {
		f, err := c.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: p})
		if err != nil {
			return err
		}
		futures[k] = f
	}
	go func() {
		var first error
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				if first == nil {
					first = err
				}
			}
		}
		if first == nil {
			c.n.published.Add(int64(len(futures)))
		}
		done(first)
	}()
	return nil
}

// Disconnect closes the connection; the client keeps the sequences it
// holds.
func (c *natsClient) Disconnect() error {
	c.nc.Close()
	return nil
}

// CatchUp reconnects and fetches what was missed. Its time and bytes
// include the reconnection; its round trips do not count the connection
// handshake.
func (c *natsClient) CatchUp(ctx context.Context) (bench.CatchUp, error) {
	before := c.read.Load()
	start := time.Now()
	if err := c.open(); err != nil {
		return bench.CatchUp{}, err
	}
	n, trips, caught, err := c.catchUp(ctx)
	if err != nil {
		return bench.CatchUp{}, err
	}
	return bench.CatchUp{Ops: n, Duration: caught.at.Sub(start), RoundTrips: trips, WireBytes: caught.read - before}, nil
}

// Close closes the connection.
func (c *natsClient) Close() error {
	c.nc.Close()
	return nil
}

// Usage reads the nats-server process's usage.
func (n *NATS) Usage() (bench.Usage, error) { return bench.ProcessUsage(n.srv.pid()) }

// ResetPeakRSS starts the server's peak RSS afresh (bench.PeakResetter).
func (n *NATS) ResetPeakRSS() error { return bench.ResetPeakRSS(n.srv.pid()) }

// DiskBytes is the size of the JetStream store folder. JetStream has no
// compaction to run: its message blocks hold what was written.
func (n *NATS) DiskBytes(context.Context) (int64, error) {
	size, err := dirSize(filepath.Join(n.cfg.Dir, "jetstream"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	return size, err
}

// Close stops the server.
func (n *NATS) Close() error {
	n.admin.Close()
	return n.srv.stop()
}

// NATSFactory makes a fresh NATS JetStream system for each workload.
func NATSFactory(binary string) bench.Factory {
	return bench.Factory{Name: "nats-jetstream", New: func(ctx context.Context, dir string) (bench.System, error) {
		return NewNATS(ctx, NATSConfig{Binary: binary, Dir: dir})
	}}
}
