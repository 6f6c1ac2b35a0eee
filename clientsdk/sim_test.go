package clientsdk_test

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/testbin"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

var (
	simSeed  = flag.Uint64("sim.seed", 0, "replay the convergence simulation with this seed")
	simRuns  = flag.Int("sim.runs", 3, "convergence simulation runs (seeds)")
	simSteps = flag.Int("sim.steps", 150, "actions per convergence simulation run")
)

// simServer is a ferry server whose store survives restarts on a fixed
// address.
type simServer struct {
	t      *testing.T
	fs     vfs.FS
	dir    string // the store's folder; "db" when empty
	addr   string
	seed   uint64
	starts uint64 // each start draws its own entropy: a new epoch must differ
	eng    *engine.Engine
	srv    *server.Server
	hs     *server.HTTPServer
	ln     net.Listener
}

func (s *simServer) start() {
	s.t.Helper()
	s.starts++
	o := enginetest.Options(s.t, s.seed*1000+s.starts)
	o.FS = s.fs
	dir := s.dir
	if dir == "" {
		dir = "db"
	}
	var err error
	if s.eng, err = engine.Open(dir, o); err != nil {
		s.t.Fatal(err)
	}
	if s.srv, err = server.New(s.eng, server.Options{Logger: slog.New(slog.DiscardHandler), SignInLimit: -1}); err != nil {
		s.t.Fatal(err)
	}
	if s.ln, err = net.Listen("tcp", s.addr); err != nil {
		s.t.Fatal(err)
	}
	s.hs = servertest.NewHTTPServer(s.addr, s.srv.Handler())
	// Capture this start's server and listener: a goroutine reading the
	// fields later could pair an old, shut-down server with the new
	// listener, and its Serve would close that listener at once.
	hs, ln := s.hs, s.ln
	go func() { _ = hs.Serve(ln) }()
}

func (s *simServer) stop() {
	s.srv.GoAway()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.hs.Shutdown(ctx); err != nil {
		_ = s.hs.Close()
	}
	// Serve may not have taken the listener yet, so Shutdown may not know
	// it: close it here so the address is free for the restart.
	_ = s.ln.Close()
	s.srv.Wait()
	if err := s.eng.Close(); err != nil {
		s.t.Fatal(err)
	}
}

// faultyNet dials loopback and can cut every connection a device holds.
type faultyNet struct {
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func (f *faultyNet) client() *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				f.mu.Lock()
				f.conns[c] = true
				f.mu.Unlock()
			}
			return c, err
		}}}
}

func (f *faultyNet) cut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		_ = c.Close()
	}
	clear(f.conns)
}

// TestConvergenceSimulation runs random schedules of sends, edits,
// deletes, reactions, dropped connections, devices going offline and
// server restarts, then lets everything settle: every device must hold the
// same messages and the same version vector as the server. A failing seed
// replays with -sim.seed.
func TestConvergenceSimulation(t *testing.T) {
	seeds := []uint64{*simSeed}
	if *simSeed == 0 {
		seeds = nil
		for range *simRuns {
			seeds = append(seeds, rand.Uint64())
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { simulate(t, seed, *simSteps) })
	}
}

func simulate(t *testing.T, seed uint64, steps int) {
	t.Logf("seed %d (replay with -sim.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	srv := &simServer{t: t, fs: vfs.NewMem(), addr: testbin.FreeAddr(t), seed: seed}
	srv.start()
	defer func() { srv.stop() }()
	url := "http://" + srv.addr

	type dev struct {
		d      *clientsdk.Device
		net    *faultyNet
		online bool
		mine   []ulid.ULID // messages this device sent
	}
	var devs []*dev
	for i, who := range []string{"alice", "alice", "bob", "bob"} {
		n := &faultyNet{conns: map[net.Conn]bool{}}
		d, err := clientsdk.OpenMemory(clientsdk.WithServer(url), clientsdk.WithHTTPClient(n.client()),
			clientsdk.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if i%2 == 0 {
			err = d.Register(ctx, who, "correct horse", "one")
		} else {
			err = d.Login(ctx, who, "correct horse", "two")
		}
		if err != nil {
			t.Fatal(err)
		}
		a, _ := d.Account()
		t.Logf("device %d: %s's %s", i, who, a.Device)
		devs = append(devs, &dev{d: d, net: n})
	}
	bob := lookup(t, devs[0].d, "bob")
	var convs []ulid.ULID
	for i := range 3 {
		c, err := devs[0].d.CreateConversation(ctx, fmt.Sprint("room ", i), bob)
		if err != nil {
			t.Fatal(err)
		}
		convs = append(convs, c)
	}
	for _, v := range devs {
		if err := v.d.Start(); err != nil {
			t.Fatal(err)
		}
		v.online = true
	}
	for _, v := range devs {
		for _, c := range convs {
			waitFor(t, v.d, "the conversations", func() bool { _, err := v.d.Conversation(c); return err == nil })
		}
	}

	for step := range steps {
		v := devs[rng.IntN(len(devs))]
		conv := convs[rng.IntN(len(convs))]
		switch r := rng.IntN(100); {
		case r < 55:
			id, err := v.d.SendText(ctx, conv, fmt.Sprintf("step %d", step))
			if err != nil {
				t.Fatal(err)
			}
			v.mine = append(v.mine, id)
		case r < 65 && len(v.mine) > 0:
			_, _ = v.d.Edit(ctx, conv, v.mine[rng.IntN(len(v.mine))], fmt.Appendf(nil, "edited at step %d", step), "text/plain")
		case r < 70 && len(v.mine) > 0:
			_, _ = v.d.Delete(ctx, conv, v.mine[rng.IntN(len(v.mine))])
		case r < 78 && len(v.mine) > 0:
			_, _ = v.d.React(ctx, conv, v.mine[rng.IntN(len(v.mine))], []string{"+1", "heart", "laugh"}[rng.IntN(3)])
		case r < 88:
			v.net.cut() // the network drops: in-flight pushes and deliveries are retried
		case r < 96:
			if v.online {
				v.d.Stop()
			} else if err := v.d.Start(); err != nil {
				t.Fatal(err)
			}
			v.online = !v.online
		default:
			srv.stop()
			srv.start()
		}
	}

	// Quiescence: everyone online, outboxes drained, everything delivered.
	for _, v := range devs {
		if !v.online {
			if err := v.d.Start(); err != nil {
				t.Fatal(err)
			}
		}
	}
	ref := devs[0].d
	acc, _ := ref.Account()
	for _, v := range devs {
		waitFor(t, v.d, "the outbox drains", func() bool { return v.d.Status().Pending == 0 })
	}
	// A device that does not converge says what it lacks.
	var lacks string
	defer func() {
		if t.Failed() && lacks != "" {
			t.Log(lacks)
		}
	}()
	for _, c := range convs {
		want, head, err := srv.eng.Vector(engine.Actor{User: acc.User, Device: acc.Device}, c)
		if err != nil {
			t.Fatal(err)
		}
		// The truth: the state folded from the server's log.
		truth := serverFingerprint(t, srv.eng, engine.Actor{User: acc.User, Device: acc.Device}, c)
		for i, v := range devs {
			waitFor(t, v.d, fmt.Sprintf("device %d to converge on %s", i, c), func() bool {
				got, err := v.d.Vector(c)
				if err == nil && !got.Equal(want) {
					lacks = fmt.Sprintf("device %d lacks %v and has %v beyond the server (head %d)", i, got.Lacks(want), want.Lacks(got), head)
				}
				return err == nil && got.Equal(want)
			})
			lacks = "" // converged: a later failure is not this
			if got := fingerprintFull(t, v.d, c); !slices.Equal(got, truth) {
				t.Fatalf("seed %d: device %d differs from the server's log in %s (head %d):\n%v\n%v", seed, i, c, head, got, truth)
			}
		}
	}
	// Nothing lost, nothing twice: every message sent is on the server once.
	onServer := map[ulid.ULID]int{}
	for _, c := range convs {
		for _, m := range messages(t, ref, c) {
			onServer[m.ID]++
		}
	}
	sent := 0
	for _, v := range devs {
		for _, id := range v.mine {
			sent++
			if onServer[id] != 1 {
				t.Fatalf("seed %d: message %s is on the server %d times, want once", seed, id, onServer[id])
			}
		}
	}
	t.Logf("%d messages sent, all on the server once", sent)
	if rep, err := srv.eng.Check(); err != nil || rep.Err() != nil {
		t.Fatalf("seed %d: server store: %v %v", seed, err, rep.Err())
	}
}

// serverFingerprint folds the server's log of conv, as a device would.
func serverFingerprint(t *testing.T, e *engine.Engine, a engine.Actor, conv ulid.ULID) []string {
	var ops []model.Op
	for after := uint64(0); ; {
		page, err := e.History(a, conv, engine.HistoryQuery{After: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, page.Ops...)
		if !page.More {
			break
		}
		after = page.Ops[len(page.Ops)-1].Seq
	}
	var out []string
	for _, m := range model.Fold(conv, ops).Messages() {
		out = append(out, fmt.Sprintf("%d %s %q edited=%v deleted=%v reactions=%v", m.Seq, m.ID, m.Body, m.Edited, m.Deleted, m.Reactions))
	}
	return out
}

// fingerprintFull is everything a device shows of a conversation's
// messages.
func fingerprintFull(t *testing.T, d *clientsdk.Device, conv ulid.ULID) []string {
	var out []string
	for _, m := range messages(t, d, conv) {
		if m.Seq == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("%d %s %q edited=%v deleted=%v reactions=%v", m.Seq, m.ID, m.Body, m.Edited, m.Deleted, m.Reactions))
	}
	return out
}
