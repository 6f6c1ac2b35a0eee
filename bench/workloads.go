package bench

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// corpus is the payload pool the workloads draw from (corpusIndex): as
// many texts as the largest catch-up takes, so that a 1,000-op batch
// seldom holds a text twice (about one text in a hundred does), which
// zstd would compress to nothing.
var corpus = Corpus(1, 100_000)

// corpusIndex picks message k's text: a fixed pseudo-random walk over the
// corpus (splitmix64), so that runs longer than the corpus repeat texts
// scattered, as chat does, not in the same order, which zstd would find
// and compress unrealistically well.
func corpusIndex(k int) int {
	z := uint64(k) + 0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	z ^= z >> 31
	return int(z % uint64(len(corpus)))
}

// MeanPayload is the corpus's mean message size in bytes.
func MeanPayload() float64 {
	n := 0
	for _, p := range corpus {
		n += len(p)
	}
	return float64(n) / float64(len(corpus))
}

// payload returns the k-th corpus message stamped with the send time and
// the sender, so receivers can measure latency and skip their own echoes.
func payload(k int, sender int, at time.Time) []byte {
	text := corpus[corpusIndex(k)]
	b := make([]byte, 0, stampLen+4+len(text))
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixNano()))
	b = binary.BigEndian.AppendUint32(b, uint32(sender))
	return append(b, text...)
}

func sender(p []byte) (int, bool) {
	if len(p) < stampLen+4 {
		return 0, false
	}
	return int(binary.BigEndian.Uint32(p[stampLen:])), true
}

// An AckFlusher is a System whose clients acknowledge what they receive
// after a delay, as devices do (Ferry's: ackDelay, resumeAckDelay). The
// server's work for an op goes on until those acks are taken, so the
// workloads that count its CPU per op have the clients send the acks they
// hold back before they read it. Each armed ack then goes once, as it
// would have when its delay ended, only sooner.
type AckFlusher interface {
	FlushAcks()
}

func flushAcks(sys System) {
	if af, ok := sys.(AckFlusher); ok {
		af.FlushAcks()
	}
}

// drain ends a run's CPU window, the same way for every system: the
// clients send the acks they hold back (an AckFlusher's), and the server
// gets until it is idle (awaitIdle) to finish the work the run's ops
// caused: their acks, deliveries still queued, its store's writes.
func drain(sys System) {
	flushAcks(sys)
	awaitIdle(sys)
}

// settle ends a history's writes before a run: the clients send the acks
// they hold back, and the server gets historySettle to take them. It does
// not wait for the server to be idle: a row with a history runs on a
// store still busy with its flushes and compactions, as one in use is.
func settle(sys System) {
	flushAcks(sys)
	time.Sleep(historySettle)
}

const historySettle = 250 * time.Millisecond

// awaitIdle waits, for up to 5 s, until sys's server has spent at most
// one clock tick (10 ms) of CPU in each of three 100 ms windows in a row:
// its queued work done, and not merely held back by a busy machine for
// one window.
func awaitIdle(sys System) {
	u0, err := sys.Usage()
	quiet := 0
	for i := 0; err == nil && i < 50 && quiet < 3; i++ {
		time.Sleep(100 * time.Millisecond)
		u1, err1 := sys.Usage()
		if err1 != nil {
			return
		}
		if u1.CPU-u0.CPU <= 10*time.Millisecond {
			quiet++
		} else {
			quiet = 0
		}
		u0 = u1
	}
}

// usageDelta measures the server's CPU over a workload, and the harness's
// own: its devices' clients, which on one machine share the server's
// cores.
type usageDelta struct {
	sys    System
	before Usage
	ok     bool
	self   Usage // this process's
	selfOK bool  // false when the server runs in this process too
}

func startUsage(sys System) *usageDelta {
	if r, ok := sys.(PeakResetter); ok {
		// Best effort: a peak that cannot start afresh covers what came
		// before the row too, and is the larger for it, never the smaller.
		_ = r.ResetPeakRSS()
	}
	u, err := sys.Usage()
	d := &usageDelta{sys: sys, before: u, ok: err == nil}
	if ip, ok := sys.(interface{ InProcess() bool }); !ok || !ip.InProcess() {
		d.self, err = ProcessUsage(os.Getpid())
		d.selfOK = err == nil
	}
	return d
}

// clientPerKOps returns the harness's own CPU per 1,000 ops since start:
// zero when the server runs in the harness's process, which cannot tell
// the two apart.
func (u *usageDelta) clientPerKOps(ops int) time.Duration {
	if !u.selfOK || ops == 0 {
		return 0
	}
	after, err := ProcessUsage(os.Getpid())
	if err != nil {
		return 0
	}
	return (after.CPU - u.self.CPU) * 1000 / time.Duration(ops)
}

// perKOps returns the server CPU per 1,000 ops since start, and the peak
// RSS since then (since the process started, for a system that is not a
// PeakResetter).
func (u *usageDelta) perKOps(ops int) (time.Duration, int64) {
	if !u.ok || ops == 0 {
		return 0, 0
	}
	after, err := u.sys.Usage()
	if err != nil {
		return 0, 0
	}
	return (after.CPU - u.before.CPU) * 1000 / time.Duration(ops), after.PeakRSS
}

// IngestConfig is the durable-ingest workload: writers sending messages,
// each acknowledged after a durable commit.
type IngestConfig struct {
	Writers  int           // concurrent devices sending
	Batch    int           // messages per push (1: single ops)
	InFlight int           // pushes each writer keeps outstanding in closed loop; default 2
	Rate     float64       // when > 0, open loop at this many messages per second overall
	Duration time.Duration // how long to send
	// History is how many messages the conversations hold before the run,
	// sent in pushes of 100 and not measured: a store in use, whose data
	// reached its tables, rather than a new one whose writes all fit in
	// memory.
	History int
}

// IngestResult is what durable ingest measured.
type IngestResult struct {
	System    string  `json:"system"`
	Writers   int     `json:"writers"`
	Batch     int     `json:"batch"`
	Rate      float64 `json:"rate,omitempty"`
	History   int     `json:"history,omitempty"`
	Ops       int     `json:"ops"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	Ack       Summary `json:"ack"`
	// SendLag is, in open loop, how long after its scheduled time each
	// push had left the harness (its client's Send returned): the part of
	// an ack's latency that the harness's own delays account for, waking
	// its writers and handing their pushes to the connection, on cores it
	// shares with the server.
	SendLag    Summary       `json:"send_lag,omitzero"`
	CPUPerKOps time.Duration `json:"cpu_per_1000_ops_ns"`
	// StoreWork is what the server's store flushed and compacted during
	// the run, as a StoreWorker tells: background work on the same cores,
	// which the writes before the run (History) leave behind too. Nil for
	// a system that does not tell.
	StoreWork *StoreWork `json:"store_work,omitempty"`
	// ClientCPUPerKOps is the harness's own CPU per 1,000 ops: its
	// writers' clients pushing and reading their results and the other
	// members' ops. Zero when the server runs in the harness's process.
	ClientCPUPerKOps time.Duration `json:"client_cpu_per_1000_ops_ns,omitempty"`
	PeakRSS          int64         `json:"peak_rss"`
	// Volatile says the system acknowledged the writes from memory (a
	// Volatile system): not comparable with an ack after a synced commit.
	Volatile bool `json:"volatile,omitempty"`
	// RunCPUPerKOps and RunClientCPUPerKOps are the CPU figures over the
	// run's own window, before the work its ops left (their deliveries'
	// acks) drained: what Busy reads. Zero in reports before them.
	RunCPUPerKOps       time.Duration `json:"run_cpu_per_1000_ops_ns,omitempty"`
	RunClientCPUPerKOps time.Duration `json:"run_client_cpu_per_1000_ops_ns,omitempty"`
}

// A Volatile system acknowledges writes before they are on disk, such as
// Centrifugo's memory engine. The report shows its ingest rows, but no
// ratio of a durable ack to them.
type Volatile interface {
	Volatile() bool
}

func volatile(sys System) bool {
	v, ok := sys.(Volatile)
	return ok && v.Volatile()
}

// A StoreWorker is a System whose server counts its store's background
// work so far.
type StoreWorker interface {
	StoreWork() (StoreWork, error)
}

// StoreWork counts a store's background work: memtables flushed to
// tables, and compactions of tables into the levels below, completed.
type StoreWork struct {
	Flushes     int64 `json:"flushes"`
	Compactions int64 `json:"compactions"`
}

// since returns the work done between before and w.
func (w StoreWork) since(before StoreWork) *StoreWork {
	return &StoreWork{Flushes: w.Flushes - before.Flushes, Compactions: w.Compactions - before.Compactions}
}

// storeWork reads sys's store work, when it tells it.
func storeWork(sys System) (StoreWork, bool) {
	sw, ok := sys.(StoreWorker)
	if !ok {
		return StoreWork{}, false
	}
	w, err := sw.StoreWork()
	return w, err == nil
}

// Busy returns the share of cores that the server and the harness kept
// busy over the run, from their CPU per op and the ops served: near 1, the
// machine had no CPU to spare and a latency is mostly queueing for it.
// Zero when the harness's CPU is not known apart from the server's.
func (x IngestResult) Busy(cores int) float64 {
	server, client := x.CPUPerKOps, x.ClientCPUPerKOps
	if x.RunClientCPUPerKOps > 0 {
		server, client = x.RunCPUPerKOps, x.RunClientCPUPerKOps
	}
	if client == 0 || cores < 1 {
		return 0
	}
	perSec := (server + client).Seconds() * x.OpsPerSec / 1000
	return perSec / float64(cores)
}

// Ingest runs the durable-ingest workload. In closed loop (Rate 0) each
// writer keeps InFlight pushes outstanding: the throughput ceiling. In open
// loop, pushes follow a fixed schedule and ack latency counts from the
// scheduled time.
func Ingest(ctx context.Context, sys System, cfg IngestConfig) (IngestResult, error) {
	cfg.InFlight = max(cfg.InFlight, 2)
	cfg.Batch = max(cfg.Batch, 1)
	convs := max(cfg.Writers/4, 1)
	members := make([][]int, convs)
	for w := range cfg.Writers {
		members[w%convs] = append(members[w%convs], w)
	}
	if err := sys.Prepare(ctx, cfg.Writers, members); err != nil {
		return IngestResult{}, err
	}
	// The history's live deliveries to its conversations' other members
	// are counted, and awaited before the run: they are no work of its.
	// So are the run's, which the run waits for before it takes its acks.
	var inHistory atomic.Bool
	var historyHeld, runHeld, expected atomic.Int64
	inHistory.Store(cfg.History > 0)
	clients := make([]Client, cfg.Writers)
	for w := range clients {
		c, err := sys.Connect(ctx, w, func(conv int, p []byte) {
			if inHistory.Load() {
				if w != conv { // writer conv sends its history
					historyHeld.Add(1)
				}
			} else if s, ok := sender(p); ok && s != w {
				runHeld.Add(1)
			}
		})
		if err != nil {
			return IngestResult{}, fmt.Errorf("connect writer %d: %w", w, err)
		}
		defer c.Close()
		clients[w] = c
	}
	// historyIn is how many of the history's messages conversation c holds.
	historyIn := func(c int) int {
		if c < cfg.History%convs {
			return cfg.History/convs + 1
		}
		return cfg.History / convs
	}
	if cfg.History > 0 {
		// Writer c is the first member of conversation c.
		err := Parallel(ctx, convs, 8, func(c int) error {
			n := historyIn(c)
			_, err := sendBatches(clients[c], n, func(int) int { return c }, func(j int) []byte { return corpus[corpusIndex(c+j*convs)] })
			return err
		})
		if err != nil {
			return IngestResult{}, fmt.Errorf("ingest: history: %w", err)
		}
		want := 0
		for c := range convs {
			want += historyIn(c) * (len(members[c]) - 1)
		}
		// A system that loses deliveries (a slow consumer cut off) runs
		// the row on what arrived.
		awaitProgress(ctx, &historyHeld, want)
		inHistory.Store(false)
		settle(sys)
	}
	var lat, lag Latencies
	var acked atomic.Int64
	var failed firstError
	work0, works := storeWork(sys)
	use := startUsage(sys)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var wg sync.WaitGroup
	for w, c := range clients {
		conv := w % convs
		wg.Go(func() {
			k := w * 1000
			next := func(at time.Time) [][]byte {
				ps := make([][]byte, cfg.Batch)
				for i := range ps {
					ps[i] = payload(k, w, at)
					k++
				}
				return ps
			}
			if cfg.Rate > 0 {
				interval := time.Duration(float64(time.Second) * float64(cfg.Writers*cfg.Batch) / cfg.Rate)
				var inflight sync.WaitGroup
				for at := start.Add(time.Duration(w) * interval / time.Duration(cfg.Writers)); at.Before(deadline); at = at.Add(interval) {
					time.Sleep(time.Until(at)) // pacing the load, open loop
					sched := at
					inflight.Add(1)
					if err := c.Send(conv, next(sched), func(err error) {
						defer inflight.Done()
						if err != nil {
							failed.Store(err)
							return
						}
						lat.Add(time.Since(sched))
						acked.Add(int64(cfg.Batch))
						expected.Add(int64(cfg.Batch * (len(members[conv]) - 1)))
					}); err != nil {
						failed.Store(err)
						inflight.Done()
						return
					}
					lag.Add(time.Since(sched))
				}
				inflight.Wait()
				return
			}
			slots := make(chan struct{}, cfg.InFlight)
			var inflight sync.WaitGroup
			for time.Now().Before(deadline) && ctx.Err() == nil {
				slots <- struct{}{}
				sent := time.Now()
				inflight.Add(1)
				if err := c.Send(conv, next(sent), func(err error) {
					defer func() { <-slots; inflight.Done() }()
					if err != nil {
						failed.Store(err)
						return
					}
					lat.Add(time.Since(sent))
					acked.Add(int64(cfg.Batch))
					expected.Add(int64(cfg.Batch * (len(members[conv]) - 1)))
				}); err != nil {
					failed.Store(err)
					inflight.Done()
					return
				}
			}
			inflight.Wait()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		return IngestResult{}, fmt.Errorf("ingest: %w", err)
	}
	ops := int(acked.Load())
	// The run's own window, for what kept the cores busy while it ran.
	runCPU, _ := use.perKOps(ops)
	runClientCPU := use.clientPerKOps(ops)
	work1, worked := storeWork(sys)
	// The run's deliveries to the writers' conversations, then the work
	// they leave: their acks, which the CPU per op counts.
	awaitProgress(ctx, &runHeld, int(expected.Load()))
	drain(sys)
	cpu, rss := use.perKOps(ops)
	res := IngestResult{System: sys.Name(), Writers: cfg.Writers, Batch: cfg.Batch, Rate: cfg.Rate, History: cfg.History, Ops: ops,
		Seconds: elapsed.Seconds(), OpsPerSec: float64(ops) / elapsed.Seconds(), Ack: lat.Summary(), SendLag: lag.Summary(), CPUPerKOps: cpu,
		ClientCPUPerKOps: use.clientPerKOps(ops), PeakRSS: rss, Volatile: volatile(sys),
		RunCPUPerKOps: runCPU, RunClientCPUPerKOps: runClientCPU}
	if works && worked {
		res.StoreWork = work1.since(work0)
	}
	return res, nil
}

// FanoutConfig is the live fan-out workload: online devices in
// conversations of ConvSize, one member of each sending.
type FanoutConfig struct {
	Devices  int
	ConvSize int
	Rate     float64 // messages per second overall
	Duration time.Duration
}

// FanoutResult is what live fan-out measured.
type FanoutResult struct {
	System     string  `json:"system"`
	Devices    int     `json:"devices"`
	ConvSize   int     `json:"conv_size"`
	Messages   int     `json:"messages"`
	Deliveries int     `json:"deliveries"`
	Expected   int     `json:"expected"`
	Latency    Summary `json:"latency"`
	// First is the latency of the first message to each conversation,
	// which is not in Latency: it warms up (see warmUp).
	First      Summary       `json:"first"`
	CPUPerKOps time.Duration `json:"cpu_per_1000_deliveries_ns"`
	// ClientCPUPerKOps is the harness's own CPU per 1,000 deliveries: its
	// devices' clients receiving (and sending). On one machine they share
	// the server's cores. Zero when the server runs in the harness's
	// process, which cannot tell the two apart.
	ClientCPUPerKOps time.Duration `json:"client_cpu_per_1000_deliveries_ns,omitempty"`
	PeakRSS          int64         `json:"peak_rss"`
	// ServerDelay is the server's own mean delay of a measured live round,
	// as it tells (a LiveDelayer): from the commit that woke a session to
	// the round handed to its stream. Zero for a system that does not.
	ServerDelay time.Duration `json:"server_delay_mean_ns,omitempty"`
}

// A LiveDelayer is a System whose server measures its live rounds' delays:
// their sum and count so far.
type LiveDelayer interface {
	LiveDelay() (sum time.Duration, n uint64, err error)
}

// Floor is the least time a message takes to reach every other member
// when CPU bounds it: its deliveries times the server's and the harness's
// CPU per delivery, over the cores they share. Zero when the harness's CPU
// is not known apart from the server's (an in-process server).
func (x FanoutResult) Floor(cores int) time.Duration {
	if x.ClientCPUPerKOps == 0 || cores < 1 || x.ConvSize < 2 {
		return 0
	}
	return time.Duration(x.ConvSize-1) * (x.CPUPerKOps + x.ClientCPUPerKOps) / time.Duration(1000*cores)
}

// warmUpDeliveries is how many deliveries the warm-up waits for: its
// message to each conversation, to every other member.
func (x FanoutResult) warmUpDeliveries() int {
	return max(x.Devices/max(x.ConvSize, 1), 1) * (x.ConvSize - 1)
}

// Fanout runs the live fan-out workload: send-to-receive latency, from
// each message's scheduled send time to its arrival at every other member.
func Fanout(ctx context.Context, sys System, cfg FanoutConfig) (FanoutResult, error) {
	convs := max(cfg.Devices/cfg.ConvSize, 1)
	members := make([][]int, convs)
	for d := range convs * cfg.ConvSize {
		members[d/cfg.ConvSize] = append(members[d/cfg.ConvSize], d)
	}
	devices := convs * cfg.ConvSize
	if err := sys.Prepare(ctx, devices, members); err != nil {
		return FanoutResult{}, err
	}
	// The first message to each conversation warms up (see warmUp): its
	// latencies go to first, apart. Messages stamped from measured on
	// are the measured ones.
	var lat, first Latencies
	var measured atomic.Int64
	measured.Store(math.MaxInt64)
	var delivered, warmed atomic.Int64
	clients := make([]Client, devices)
	var mu sync.Mutex
	err := Parallel(ctx, devices, 64, func(d int) error {
		c, err := sys.Connect(ctx, d, func(_ int, p []byte) {
			if s, ok := sender(p); ok && s != d {
				if at, ok := StampOf(p); ok {
					if at.UnixNano() < measured.Load() {
						first.Add(time.Since(at))
						warmed.Add(1)
						return
					}
					lat.Add(time.Since(at))
					delivered.Add(1)
				}
			}
		})
		if err != nil {
			return fmt.Errorf("connect device %d: %w", d, err)
		}
		mu.Lock()
		clients[d] = c
		mu.Unlock()
		return nil
	})
	defer func() {
		for _, c := range clients {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	if err != nil {
		return FanoutResult{}, err
	}
	if err := warmUp(clients, members, &warmed); err != nil {
		return FanoutResult{}, err
	}
	use := startUsage(sys)
	ld, delays := sys.(LiveDelayer)
	var delay0 time.Duration
	var rounds0 uint64
	if delays {
		var err error
		if delay0, rounds0, err = ld.LiveDelay(); err != nil {
			delays = false
		}
	}
	start := time.Now()
	measured.Store(start.UnixNano())
	deadline := start.Add(cfg.Duration)
	interval := time.Duration(float64(time.Second) * float64(convs) / cfg.Rate)
	var sent atomic.Int64
	var failed firstError
	var wg sync.WaitGroup
	for c := range convs {
		from := members[c][0]
		wg.Go(func() {
			k := c
			for at := start.Add(time.Duration(c) * interval / time.Duration(convs)); at.Before(deadline); at = at.Add(interval) {
				time.Sleep(time.Until(at)) // pacing the load, open loop
				if err := clients[from].Send(c, [][]byte{payload(k, from, at)}, func(err error) {
					if err != nil {
						failed.Store(err)
					}
				}); err != nil {
					failed.Store(err)
					return
				}
				k += convs
				sent.Add(1)
			}
		})
	}
	wg.Wait()
	expected := int(sent.Load()) * (cfg.ConvSize - 1)
	// Let the last messages arrive: up to 10s past the end.
	_ = awaitCount(&delivered, expected, nil)
	if err := failed.Load(); err != nil {
		return FanoutResult{}, fmt.Errorf("fan-out: %w", err)
	}
	drain(sys) // the server's work for a delivery ends with its ack
	cpu, rss := use.perKOps(int(delivered.Load()))
	clientCPU := use.clientPerKOps(int(delivered.Load()))
	var serverDelay time.Duration
	if delays {
		// A round is counted once its write returns, which its device may
		// see first: read until the count holds still for 10 ms (up to 1 s).
		delay1, rounds1, err := ld.LiveDelay()
		for i := 0; i < 100 && err == nil; i++ {
			time.Sleep(10 * time.Millisecond)
			d, n, lerr := ld.LiveDelay()
			if lerr != nil || n == rounds1 {
				break
			}
			delay1, rounds1 = d, n
		}
		if err == nil && rounds1 > rounds0 {
			serverDelay = (delay1 - delay0) / time.Duration(rounds1-rounds0)
		}
	}
	return FanoutResult{System: sys.Name(), Devices: devices, ConvSize: cfg.ConvSize, Messages: int(sent.Load()),
		Deliveries: int(delivered.Load()), Expected: expected, Latency: lat.Summary(), First: first.Summary(), CPUPerKOps: cpu,
		ClientCPUPerKOps: clientCPU, PeakRSS: rss, ServerDelay: serverDelay}, nil
}

// warmUp sends the first message to each conversation, from its first
// member, and waits (up to 10 s) for every other member to get it. It pays
// what a device and its session pay once, before the measured messages:
// above all the harness's devices growing their goroutines' stacks for
// their first decode of ops, which on the first message to 1,000 devices
// took 40 ms of the cores they share with the server, and which real
// devices, one to a process, pay on their own CPU.
func warmUp(clients []Client, members [][]int, warmed *atomic.Int64) error {
	want := 0
	errs := make(chan error, len(members))
	for c, m := range members {
		want += len(m) - 1
		if err := clients[m[0]].Send(c, [][]byte{payload(c, m[0], time.Now())}, func(err error) {
			if err != nil {
				errs <- err
			}
		}); err != nil {
			return fmt.Errorf("fan-out warm-up: %w", err)
		}
	}
	if err := awaitCount(warmed, want, errs); err != nil {
		return fmt.Errorf("fan-out warm-up: %w", err)
	}
	return nil
}

// awaitProgress waits until n reaches want, for as long as n grows: it
// gives up after 10 s without a change, or 2 minutes in all, or when ctx
// ends. What has not arrived by then is the system's to lose.
func awaitProgress(ctx context.Context, n *atomic.Int64, want int) {
	last, since, deadline := n.Load(), time.Now(), time.Now().Add(2*time.Minute)
	for int(last) < want && ctx.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		if now := n.Load(); now != last {
			last, since = now, time.Now()
		} else if time.Since(since) > 10*time.Second {
			return
		}
	}
}

// awaitCount waits up to 10 s for n to reach want, looking every 10 ms,
// and returns the first error from errs (nil: none come) meanwhile. What
// has not arrived by then shows in the counts reported.
func awaitCount(n *atomic.Int64, want int, errs <-chan error) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(10 * time.Second); int(n.Load()) < want && time.Now().Before(end); {
		select {
		case err := <-errs:
			return err
		case <-tick.C:
		}
	}
	return nil
}

// CatchUpConfig is the catch-up workload: a device offline while Ops
// messages arrive across Convs conversations. With History h > 1, the
// device already held (h-1)×Ops older messages of those conversations:
// catch-up time must not grow with it.
type CatchUpConfig struct {
	Ops     int
	Convs   int
	History int
	// Runs is how many times the device goes offline while Ops messages
	// arrive and then catches up; the result is the run with the median
	// time (of an even number, the slower of the middle two). Default 5:
	// one catch-up on a shared machine varies 1.5x, and the first one or
	// two of a row are often the slowest, by up to 2x (at history x1 as
	// at x10), which the median of three could land on.
	Runs int
	// Cold restarts the server after the ops arrive, before each catch-up:
	// the catch-up reads from cold caches, as the first devices back after
	// a restart do (and, in part, a device offline so long that its ops
	// left the caches). Systems that cannot restart (Restarter) skip it.
	Cold bool
	// Alongside, with History h > 1, also runs the catch-up at history x1,
	// on a second server started beside the first, the two alternating
	// run by run (see CatchUpAlongside): two results whose ratio is the
	// scaling, from runs that saw the same phases of a shared machine.
	// Run on their own, minutes apart, one report's x10 row read 28% over
	// its x1 row, where six pairs of the two taken alternately read 4%.
	Alongside bool
}

// A Restarter is a System whose server can stop and start again on the
// same store and address, when CanRestart says so.
type Restarter interface {
	CanRestart() bool
	Restart(ctx context.Context) error
}

// canRestart reports whether sys can restart its server.
func canRestart(sys System) bool {
	r, ok := sys.(Restarter)
	return ok && r.CanRestart()
}

// CatchUpResult is what catch-up measured.
type CatchUpResult struct {
	System   string `json:"system"`
	Ops      int    `json:"ops"`
	Convs    int    `json:"convs"`
	History  int    `json:"history"`
	Cold     bool   `json:"cold,omitempty"`
	CatchUp  CatchUp
	BytesOp  float64 `json:"wire_bytes_per_op"`
	RawBytes int64   `json:"payload_bytes"`
	// Times are every run's, in order; CatchUp is the median run's.
	Times []time.Duration `json:"times_ns,omitempty"`
	// Alongside is the median of the x1 runs that alternated with these
	// (CatchUpConfig.Alongside); zero when none did.
	Alongside time.Duration `json:"alongside_x1_ns,omitempty"`
}

// Scaling is the result's median over that of the x1 runs beside it, or 0
// without them.
func (x CatchUpResult) Scaling() float64 {
	if x.Alongside <= 0 {
		return 0
	}
	return float64(x.CatchUp.Duration) / float64(x.Alongside)
}

// CatchUpRun runs the catch-up workload.
func CatchUpRun(ctx context.Context, sys System, cfg CatchUpConfig) (CatchUpResult, error) {
	rig, err := newCatchUpRig(ctx, sys, cfg)
	if err != nil {
		return CatchUpResult{}, err
	}
	defer rig.close()
	for i := range rig.cfg.Runs {
		if err := rig.run(ctx, i); err != nil {
			return CatchUpResult{}, err
		}
	}
	return rig.result(), nil
}

// CatchUpAlongside runs the catch-up workload at cfg.History on scaled and
// at history x1 on base, two servers up at once, alternating their runs
// (and which of the two goes first). It returns the x1 result and then
// the other, whose Alongside is the x1 median.
func CatchUpAlongside(ctx context.Context, base, scaled System, cfg CatchUpConfig) (x1, xh CatchUpResult, err error) {
	if cfg.History < 2 || cfg.Cold {
		return x1, xh, fmt.Errorf("catch-up alongside x1: history x%d (cold %v): want a warm catch-up over a history past x1", cfg.History, cfg.Cold)
	}
	one := cfg
	one.History = 1
	rigs := [2]*catchUpRig{}
	for i, c := range [2]struct {
		sys System
		cfg CatchUpConfig
	}{{base, one}, {scaled, cfg}} {
		if rigs[i], err = newCatchUpRig(ctx, c.sys, c.cfg); err != nil {
			return x1, xh, err
		}
		defer rigs[i].close()
	}
	for i := range rigs[1].cfg.Runs {
		for _, k := range pairOrder(i) {
			if err := rigs[k].run(ctx, i); err != nil {
				return x1, xh, err
			}
		}
	}
	x1, xh = rigs[0].result(), rigs[1].result()
	xh.Alongside = x1.CatchUp.Duration
	return x1, xh, nil
}

// catchUpRig is one catch-up workload under way: its device, which held
// the history, and the writer of the ops it misses.
type catchUpRig struct {
	cfg            CatchUpConfig
	sys            System
	device, writer Client
	runs           []catchUpRunResult
}

type catchUpRunResult struct {
	cu  CatchUp
	raw int64
}

// newCatchUpRig prepares sys for cfg and sends the history, which the
// device receives before it goes offline.
func newCatchUpRig(ctx context.Context, sys System, cfg CatchUpConfig) (_ *catchUpRig, err error) {
	cfg.History = max(cfg.History, 1)
	if cfg.Runs <= 0 {
		cfg.Runs = 5
	}
	if cfg.Cold && !canRestart(sys) {
		return nil, fmt.Errorf("%s cannot restart: no cold catch-up", sys.Name())
	}
	members := make([][]int, cfg.Convs)
	for c := range members {
		members[c] = []int{0, 1}
	}
	if err := sys.Prepare(ctx, 2, members); err != nil {
		return nil, err
	}
	g := &catchUpRig{cfg: cfg, sys: sys}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	// The device holds the older history before it goes offline: it
	// receives it live, and the run waits until all of it has arrived.
	history := (cfg.History - 1) * cfg.Ops
	var live atomic.Int64
	held := make(chan struct{})
	if g.device, err = sys.Connect(ctx, 0, func(int, []byte) {
		if live.Add(1) == int64(history) {
			close(held)
		}
	}); err != nil {
		return nil, err
	}
	if g.writer, err = sys.Connect(ctx, 1, nil); err != nil {
		return nil, err
	}
	if history > 0 {
		if _, err := g.write(history, 0); err != nil {
			return nil, err
		}
		select {
		case <-held:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Minute):
			return nil, fmt.Errorf("the device received %d of %d history ops live", live.Load(), history)
		}
	}
	return g, nil
}

// write sends n messages round-robin over the conversations, numbered
// from k0 in the corpus: their texts alone, as a catch-up measures no
// message's latency, so that the payload it counts is what users wrote.
func (g *catchUpRig) write(n, k0 int) (int64, error) {
	return sendBatches(g.writer, n, roundRobin(g.cfg.Convs), func(j int) []byte { return corpus[corpusIndex(k0+j)] })
}

// run is the i-th run: the device goes offline while Ops messages arrive,
// then catches up. Each run adds Ops messages to the history, so the last
// of five runs at History 10 catches up over a history of x14: still flat.
func (g *catchUpRig) run(ctx context.Context, i int) error {
	if err := g.device.Disconnect(); err != nil {
		return err
	}
	raw, err := g.write(g.cfg.Ops, (g.cfg.History+i)*g.cfg.Ops)
	if err != nil {
		return err
	}
	if g.cfg.Cold { // a cold run restarts the server; the writer connects again
		_ = g.writer.Close()
		g.writer = nil
		if err := g.sys.(Restarter).Restart(ctx); err != nil {
			return fmt.Errorf("restart: %w", err)
		}
		if g.writer, err = g.sys.Connect(ctx, 1, nil); err != nil {
			return fmt.Errorf("reconnect after the restart: %w", err)
		}
	}
	cu, err := g.device.CatchUp(ctx)
	if err != nil {
		return err
	}
	if cu.Ops < g.cfg.Ops {
		return fmt.Errorf("catch-up %d brought %d ops, want %d", i+1, cu.Ops, g.cfg.Ops)
	}
	g.runs = append(g.runs, catchUpRunResult{cu, raw})
	return nil
}

// result is the run with the median time, and every run's time.
func (g *catchUpRig) result() CatchUpResult {
	times := make([]time.Duration, len(g.runs))
	for i, r := range g.runs {
		times[i] = r.cu.Duration
	}
	sorted := slices.Clone(g.runs)
	slices.SortFunc(sorted, func(a, b catchUpRunResult) int { return cmp.Compare(a.cu.Duration, b.cu.Duration) })
	med := sorted[len(sorted)/2]
	c := g.cfg
	return CatchUpResult{System: g.sys.Name(), Ops: c.Ops, Convs: c.Convs, History: c.History, Cold: c.Cold, CatchUp: med.cu,
		BytesOp: float64(med.cu.WireBytes) / float64(c.Ops), RawBytes: med.raw, Times: times}
}

func (g *catchUpRig) close() {
	for _, c := range []Client{g.device, g.writer} {
		if c != nil {
			_ = c.Close()
		}
	}
}

// IdleResult is the server memory per connected idle device.
type IdleResult struct {
	System    string `json:"system"`
	Devices   int    `json:"devices"`
	RSSBefore int64  `json:"rss_before"`
	RSSAfter  int64  `json:"rss_after"`
	PerDevice int64  `json:"bytes_per_device"`
}

// Idle connects devices that do nothing and measures the server's resident
// memory per device.
func Idle(ctx context.Context, sys System, devices int) (IdleResult, error) {
	if err := sys.Prepare(ctx, devices, nil); err != nil {
		return IdleResult{}, err
	}
	before, err := sys.Usage()
	if err != nil {
		return IdleResult{}, err
	}
	clients := make([]Client, devices)
	var mu sync.Mutex
	err = Parallel(ctx, devices, 64, func(d int) error {
		c, err := sys.Connect(ctx, d, nil)
		if err != nil {
			return fmt.Errorf("connect device %d: %w", d, err)
		}
		mu.Lock()
		clients[d] = c
		mu.Unlock()
		return nil
	})
	defer func() {
		for _, c := range clients {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	if err != nil {
		return IdleResult{}, err
	}
	after, err := sys.Usage()
	if err != nil {
		return IdleResult{}, err
	}
	return IdleResult{System: sys.Name(), Devices: devices, RSSBefore: before.RSS, RSSAfter: after.RSS,
		PerDevice: (after.RSS - before.RSS) / int64(devices)}, nil
}

// StorageResult is the bytes on disk per op after compaction.
type StorageResult struct {
	System       string  `json:"system"`
	Ops          int     `json:"ops"`
	PayloadBytes float64 `json:"payload_bytes_per_op"`
	DiskBytes    float64 `json:"disk_bytes_per_op"`
}

// Storage writes ops messages and measures the store's growth after a full
// compaction.
func Storage(ctx context.Context, sys System, ops, convs int) (StorageResult, error) {
	members := make([][]int, convs)
	for c := range members {
		members[c] = []int{0}
	}
	if err := sys.Prepare(ctx, 1, members); err != nil {
		return StorageResult{}, err
	}
	base, err := sys.DiskBytes(ctx)
	if err != nil {
		return StorageResult{}, err
	}
	c, err := sys.Connect(ctx, 0, nil)
	if err != nil {
		return StorageResult{}, err
	}
	// Plain chat text, no stamps.
	payloadBytes, err := sendBatches(c, ops, roundRobin(convs), func(j int) []byte { return corpus[corpusIndex(j)] })
	_ = c.Close()
	if err != nil {
		return StorageResult{}, err
	}
	after, err := sys.DiskBytes(ctx)
	if err != nil {
		return StorageResult{}, err
	}
	return StorageResult{System: sys.Name(), Ops: ops, PayloadBytes: float64(payloadBytes) / float64(ops),
		DiskBytes: float64(after-base) / float64(ops)}, nil
}

// sendBatches sends n messages from c in batches of 100, the i-th to
// conversation conv(i), 8 batches in flight, and waits until all are
// acknowledged. It returns the payload bytes sent.
func sendBatches(c Client, n int, conv func(batch int) int, msg func(j int) []byte) (int64, error) {
	var raw int64
	var wg sync.WaitGroup
	var failed firstError
	slots := make(chan struct{}, 8)
	for k := 0; k < n; k += 100 {
		batch := make([][]byte, 0, 100)
		for j := k; j < min(k+100, n); j++ {
			p := msg(j)
			raw += int64(len(p))
			batch = append(batch, p)
		}
		slots <- struct{}{}
		wg.Add(1)
		if err := c.Send(conv(k/100), batch, func(err error) {
			if err != nil {
				failed.Store(err)
			}
			<-slots
			wg.Done()
		}); err != nil {
			return 0, err
		}
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		return 0, err
	}
	return raw, nil
}

// roundRobin sends batch i to conversation i mod convs.
func roundRobin(convs int) func(int) int { return func(i int) int { return i % convs } }
