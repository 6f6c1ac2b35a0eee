// Package enginetest opens engines for tests: on an in-memory filesystem,
// with cheap password hashing, a deterministic clock and entropy from a
// logged seed, closed by t.Cleanup.
package enginetest

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
)

// Options returns engine options for tests: an in-memory filesystem, cheap
// argon2 parameters, registration allowed, a clock that starts at a fixed
// time and advances one millisecond per reading, seeded entropy, and
// receipts that move the feed at once (no timer: tests of receipt batching
// set Options.ReceiptDelay and a fake Options.Clock), and conversations of
// three members or more on a shared feed entry, so that tests go through
// both kinds of feed and the change from one to the other.
func Options(t testing.TB, seed uint64) engine.Options {
	return engine.Options{
		FS:                vfs.NewMem(),
		Logger:            slog.New(slog.DiscardHandler),
		Now:               NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), time.Millisecond).Now,
		Rand:              rand.NewChaCha8(seedBytes(seed)),
		AllowRegistration: true,
		Password:          engine.PasswordParams{Time: 1, MemoryKiB: 64, Threads: 1},
		ReceiptDelay:      -1,
		SharedFeedMembers: 2,
		MemTableSize:      4 << 20,
		CacheSize:         8 << 20,
	}
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	return b
}

// New opens an engine with Options, modified by the given functions, and
// closes it when the test ends.
func New(t testing.TB, modify ...func(*engine.Options)) *engine.Engine {
	t.Helper()
	seed := rand.Uint64()
	t.Logf("enginetest seed %d", seed)
	o := Options(t, seed)
	for _, f := range modify {
		f(&o)
	}
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

// Open opens the store in "db" with o, for a test that closes it and
// opens it again (a restart, or a store rewritten as an older build left
// it), points devs at the engine, and closes it when the test ends
// (closing twice does nothing).
func Open(t testing.TB, o engine.Options, devs ...*Device) *engine.Engine {
	t.Helper()
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	for _, d := range devs {
		d.E = e
	}
	return e
}

// Clock is a deterministic clock: each reading advances it by a step. Safe
// for concurrent use.
type Clock struct {
	mu   sync.Mutex
	now  time.Time
	step time.Duration
}

// NewClock returns a clock at start advancing by step per reading.
func NewClock(start time.Time, step time.Duration) *Clock {
	return &Clock{now: start, step: step}
}

// Now reads the clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.now
	c.now = c.now.Add(c.step)
	return t
}

// Device is a registered device with helpers for writing ops as that device.
type Device struct {
	T      testing.TB
	E      *engine.Engine
	Actor  engine.Actor
	Token  string
	dots   map[ulid.ULID]uint64
	ids    *IDs
	mu     sync.Mutex
	Result []engine.AppendResult
}

// IDs makes distinct, time-ordered op ids. Safe for concurrent use.
type IDs struct {
	mu  sync.Mutex
	ms  uint64
	rnd *rand.ChaCha8
}

// NewIDs returns an id source seeded with seed.
func NewIDs(seed uint64) *IDs {
	return &IDs{ms: 1_700_000_000_000, rnd: rand.NewChaCha8(seedBytes(seed))}
}

// New returns the next id.
func (g *IDs) New() ulid.ULID {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ms++
	id, err := ulid.New(g.ms, g.rnd)
	if err != nil {
		panic(err)
	}
	return id
}

var ids = NewIDs(1)

// Register registers username with a new device.
func Register(t testing.TB, e *engine.Engine, username string) *Device {
	t.Helper()
	c, err := e.Register(context.Background(), engine.NewAccount{Username: username, Password: "correct horse", DeviceName: username + "-1"})
	if err != nil {
		t.Fatalf("register %s: %v", username, err)
	}
	return &Device{T: t, E: e, Actor: engine.Actor{User: c.User, Device: c.Device}, Token: c.Token, dots: map[ulid.ULID]uint64{}, ids: ids}
}

// Login adds a device to username.
func Login(t testing.TB, e *engine.Engine, username string) *Device {
	t.Helper()
	c, err := e.Login(context.Background(), username, "correct horse", username+"-more")
	if err != nil {
		t.Fatalf("login %s: %v", username, err)
	}
	return &Device{T: t, E: e, Actor: engine.Actor{User: c.User, Device: c.Device}, Token: c.Token, dots: map[ulid.ULID]uint64{}, ids: ids}
}

// Op fills in an op's id and the device's next dot in conv.
func (d *Device) Op(conv ulid.ULID, op model.Op) model.Op {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dots[conv]++
	op.ID = d.ids.New()
	op.Conv = conv
	op.Dot = model.Dot{Device: d.Actor.Device, N: d.dots[conv]}
	return op
}

// Try appends one op with the device's next dot and returns its result. A
// rejected op does not take its dot on the server, so Try gives the dot back
// for the next op.
func (d *Device) Try(conv ulid.ULID, op model.Op) engine.AppendResult {
	d.T.Helper()
	op = d.Op(conv, op)
	res, err := d.E.Append(context.Background(), d.Actor, []model.Op{op})
	if err != nil {
		d.T.Fatalf("append: %v", err)
	}
	if res[0].Err != nil {
		d.mu.Lock()
		d.dots[conv]--
		d.mu.Unlock()
	}
	return res[0]
}

// Push appends ops and fails the test on any error or rejection.
func (d *Device) Push(ops ...model.Op) []engine.AppendResult {
	d.T.Helper()
	res, err := d.E.Append(context.Background(), d.Actor, ops)
	if err != nil {
		d.T.Fatalf("append: %v", err)
	}
	for _, r := range res {
		if r.Err != nil {
			d.T.Fatalf("append %s: %v", r.Op, r.Err)
		}
	}
	return res
}

// Create creates a conversation with the given members and returns its id.
func (d *Device) Create(title string, members ...*Device) ulid.ULID {
	d.T.Helper()
	conv := d.ids.New()
	ops := []model.Op{d.Op(conv, model.Op{Kind: model.KindCreate, Title: title})}
	for _, m := range members {
		ops = append(ops, d.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: m.Actor.User, Role: model.RoleMember}))
	}
	d.Push(ops...)
	return conv
}

// Send sends a text message and returns its op.
func (d *Device) Send(conv ulid.ULID, text string) model.Op {
	d.T.Helper()
	op := d.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(text), ContentType: "text/plain"})
	res := d.Push(op)
	op.Seq = res[0].Seq
	return op
}

// MustCheck runs e.Check and fails the test on any problem.
func MustCheck(t testing.TB, e *engine.Engine) engine.CheckReport {
	t.Helper()
	rep, err := e.Check()
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := rep.Err(); err != nil {
		t.Fatalf("store is inconsistent: %v", err)
	}
	return rep
}

// Text returns the bodies of ops as strings, for compact assertions.
func Text(ops []model.Op) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = fmt.Sprintf("%d:%s", op.Seq, op.Body)
	}
	return out
}
