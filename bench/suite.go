package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Factory makes a fresh system under test with its store in dir.
type Factory struct {
	Name string
	New  func(ctx context.Context, dir string) (System, error)
	// Only, when set, limits the system to these workloads: "ingest",
	// "fanout", "catchup", "idle", "storage".
	Only []string
}

func (f Factory) runs(kind string) bool { return len(f.Only) == 0 || slices.Contains(f.Only, kind) }

// Restrict limits every system to the workloads in want (keeping each
// system's own restriction) and drops systems left with none.
func Restrict(systems []Factory, want []string) []Factory {
	var out []Factory
	for _, f := range systems {
		var only []string
		for _, w := range want {
			if f.runs(w) {
				only = append(only, w)
			}
		}
		if len(only) > 0 {
			f.Only = only
			out = append(out, f)
		}
	}
	return out
}

// Profile is a size of the workload matrix.
type Profile struct {
	Name          string
	Ingest        []IngestConfig
	IngestLatency []IngestConfig // open loop, for ack latency
	Fanout        []FanoutConfig
	CatchUp       []CatchUpConfig
	Idle          []int
	StorageOps    int
	LimitTime     time.Duration
}

// Short is `make bench`: every workload at a small size, under 5 minutes on
// two cores.
var Short = Profile{
	Name: "short",
	Ingest: []IngestConfig{
		{Writers: 16, Batch: 1, Duration: 3 * time.Second},
		{Writers: 64, Batch: 1, Duration: 3 * time.Second},
		{Writers: 256, Batch: 1, Duration: 3 * time.Second},
		{Writers: 64, Batch: 16, Duration: 3 * time.Second},
		{Writers: 256, Batch: 16, Duration: 3 * time.Second},
		// Past a memtable: what a server in use writes into.
		{Writers: 64, Batch: 16, History: 500_000, Duration: 3 * time.Second},
	},
	IngestLatency: []IngestConfig{
		{Writers: 64, Batch: 1, Rate: 10_000, Duration: 3 * time.Second}, // the target row
		// Below saturation: ack latency at half the rate, and with the
		// pushes of 16 that the throughput target is met with.
		{Writers: 64, Batch: 1, Rate: 5_000, Duration: 3 * time.Second},
		{Writers: 64, Batch: 16, Rate: 20_000, Duration: 3 * time.Second},
		// On a store in use: the history's writes leave a flush and
		// compactions that run under the measured ones, as they do every
		// memtable's worth of writes on a server in use.
		{Writers: 64, Batch: 1, Rate: 5_000, History: 500_000, Duration: 3 * time.Second},
	},
	Fanout: []FanoutConfig{
		{Devices: 100, ConvSize: 2, Rate: 200, Duration: 3 * time.Second},
		{Devices: 100, ConvSize: 10, Rate: 200, Duration: 3 * time.Second},
		{Devices: 100, ConvSize: 100, Rate: 50, Duration: 3 * time.Second},
		{Devices: 1000, ConvSize: 10, Rate: 500, Duration: 3 * time.Second},
		// 40 messages: over 15, the p99 was the single worst message's.
		{Devices: 1000, ConvSize: 1000, Rate: 5, Duration: 8 * time.Second},
		// A target row: 10 messages to 10,000 devices.
		{Devices: 10000, ConvSize: 10000, Rate: 1, Duration: 10 * time.Second},
	},
	// The target rows at x1 run alongside their x10 rows.
	CatchUp: []CatchUpConfig{
		{Ops: 1_000, Convs: 1},
		{Ops: 10_000, Convs: 100, History: 10, Alongside: true},
		{Ops: 10_000, Convs: 100, Cold: true},
		{Ops: 100_000, Convs: 500, History: 10, Alongside: true},
	},
	Idle:       []int{1000, 5000, 10000}, // seconds each: the target is at each size
	StorageOps: 20_000,
	LimitTime:  time.Second,
}

// Full is `make bench-full`: the whole matrix.
var Full = Profile{
	Name: "full",
	Ingest: []IngestConfig{
		{Writers: 1, Batch: 1, Duration: 5 * time.Second},
		{Writers: 16, Batch: 1, Duration: 5 * time.Second},
		{Writers: 64, Batch: 1, Duration: 5 * time.Second},
		{Writers: 256, Batch: 1, Duration: 5 * time.Second},
		{Writers: 1024, Batch: 1, Duration: 5 * time.Second},
		{Writers: 64, Batch: 16, Duration: 5 * time.Second},
		{Writers: 256, Batch: 16, Duration: 5 * time.Second},
		{Writers: 256, Batch: 100, Duration: 5 * time.Second},
		{Writers: 64, Batch: 1, History: 1_000_000, Duration: 5 * time.Second},
		{Writers: 64, Batch: 16, History: 1_000_000, Duration: 5 * time.Second},
	},
	IngestLatency: []IngestConfig{
		{Writers: 64, Batch: 1, Rate: 10_000, Duration: 5 * time.Second},
		{Writers: 64, Batch: 1, Rate: 5_000, Duration: 5 * time.Second},
		{Writers: 64, Batch: 16, Rate: 20_000, Duration: 5 * time.Second},
		{Writers: 256, Batch: 1, Rate: 30_000, Duration: 5 * time.Second},
		{Writers: 64, Batch: 1, Rate: 5_000, History: 1_000_000, Duration: 5 * time.Second},
	},
	Fanout: []FanoutConfig{
		{Devices: 100, ConvSize: 2, Rate: 200, Duration: 5 * time.Second},
		{Devices: 100, ConvSize: 10, Rate: 200, Duration: 5 * time.Second},
		{Devices: 100, ConvSize: 100, Rate: 50, Duration: 5 * time.Second},
		{Devices: 1000, ConvSize: 10, Rate: 500, Duration: 5 * time.Second},
		{Devices: 1000, ConvSize: 100, Rate: 50, Duration: 5 * time.Second},
		{Devices: 1000, ConvSize: 1000, Rate: 5, Duration: 5 * time.Second},
		{Devices: 10000, ConvSize: 100, Rate: 100, Duration: 5 * time.Second},
		{Devices: 10000, ConvSize: 10000, Rate: 1, Duration: 10 * time.Second},
	},
	CatchUp: []CatchUpConfig{
		{Ops: 1_000, Convs: 1}, {Ops: 1_000, Convs: 100},
		{Ops: 10_000, Convs: 1}, {Ops: 10_000, Convs: 500},
		{Ops: 100_000, Convs: 1}, {Ops: 100_000, Convs: 100},
		{Ops: 10_000, Convs: 100, History: 10, Alongside: true},
		{Ops: 100_000, Convs: 500, History: 10, Alongside: true},
		{Ops: 10_000, Convs: 100, Cold: true},
		{Ops: 100_000, Convs: 500, Cold: true},
	},
	Idle:       []int{1000, 5000, 10000},
	StorageOps: 100_000,
	LimitTime:  3 * time.Second,
}

// Run runs the profile's workloads on every system (a fresh one for each
// workload) and the limits, and returns the report.
//
// Each workload row runs on every system in turn before the next row, so
// that figures compared side by side are taken minutes apart at most: a
// shared machine drifts over the run (its other tenants, the disk's state),
// and a system's whole matrix run before its peers' would carry that drift
// into the ratios. The report lists each system's rows together, in the
// profile's order, as before.
func Run(ctx context.Context, p Profile, systems []Factory, dir string, log *slog.Logger) (*Report, error) {
	r := &Report{Profile: p.Name, Date: time.Now().UTC(), CorpusVersion: CorpusVersion, MeanPayload: MeanPayload(), Interleaved: true}
	r.Machine = machine()
	runOn := (&runner{ctx: ctx, dir: dir, log: log}).on
	run := func(what string, f Factory, fn func(System) error) error {
		return runOn(what, f, 1, func(ss []System) error { return fn(ss[0]) })
	}
	fail := func(err error) {
		if err != nil {
			r.Errors = append(r.Errors, err.Error())
		}
	}
	// A row runs on one system, adding its results to the system's own
	// report (out); rows hold the profile's rows, in order.
	type row func(f Factory, out *Report)
	var rows []row
	for _, c := range append(append([]IngestConfig{}, p.Ingest...), p.IngestLatency...) {
		rows = append(rows, func(f Factory, out *Report) {
			if !f.runs("ingest") {
				return
			}
			fail(run(c.name(), f, func(s System) error {
				res, err := Ingest(ctx, s, c)
				if err == nil {
					out.Ingest = append(out.Ingest, res)
				}
				return err
			}))
		})
	}
	for _, c := range p.Fanout {
		rows = append(rows, func(f Factory, out *Report) {
			if !f.runs("fanout") {
				return
			}
			fail(run(c.name(), f, func(s System) error {
				res, err := Fanout(ctx, s, c)
				if err == nil {
					out.Fanout = append(out.Fanout, res)
				}
				return err
			}))
		})
	}
	for _, c := range p.CatchUp {
		rows = append(rows, func(f Factory, out *Report) {
			if !f.runs("catchup") {
				return
			}
			what, servers := c.name(), 1
			if c.Alongside {
				what, servers = what+" alongside x1", 2
			}
			fail(runOn(what, f, servers, func(ss []System) error {
				if c.Alongside {
					x1, xh, err := CatchUpAlongside(ctx, ss[0], ss[1], c)
					if err == nil {
						out.CatchUp = append(out.CatchUp, x1, xh)
					}
					return err
				}
				if c.Cold && !canRestart(ss[0]) {
					return nil // cannot restart (a peer, a remote server): no cold figures
				}
				res, err := CatchUpRun(ctx, ss[0], c)
				if err == nil {
					out.CatchUp = append(out.CatchUp, res)
				}
				return err
			}))
		})
	}
	for _, n := range p.Idle {
		rows = append(rows, func(f Factory, out *Report) {
			if !f.runs("idle") {
				return
			}
			fail(run(idleName(n), f, func(s System) error {
				res, err := Idle(ctx, s, n)
				if err == nil {
					out.Idle = append(out.Idle, res)
				}
				return err
			}))
		})
	}
	if p.StorageOps > 0 {
		rows = append(rows, func(f Factory, out *Report) {
			if !f.runs("storage") {
				return
			}
			fail(run("storage", f, func(s System) error {
				res, err := Storage(ctx, s, p.StorageOps, 10)
				if err == nil {
					out.Storage = append(out.Storage, res)
				}
				return err
			}))
		})
	}
	per := make([]Report, len(systems))
	for _, row := range rows {
		for i, f := range systems {
			row(f, &per[i])
		}
	}
	for _, x := range per {
		r.Ingest = append(r.Ingest, x.Ingest...)
		r.Fanout = append(r.Fanout, x.Fanout...)
		r.CatchUp = append(r.CatchUp, x.CatchUp...)
		r.Idle = append(r.Idle, x.Idle...)
		r.Storage = append(r.Storage, x.Storage...)
	}
	if p.LimitTime > 0 {
		log.Info("measuring limits")
		lim, err := limits(dir, p.LimitTime, p.Ingest, p.IngestLatency)
		if err != nil {
			r.Errors = append(r.Errors, fmt.Sprintf("limits: %v", err))
		}
		r.Limits = lim
		r.Machine.FsyncP50 = lim.FsyncP50
	}
	return r, nil
}

// name names a workload row in logs and comparisons.
func (c IngestConfig) name() string {
	s := fmt.Sprintf("ingest %d writers x %d", c.Writers, c.Batch)
	if c.Rate > 0 {
		s += fmt.Sprintf(" at %s/s", rate(c.Rate))
	}
	if c.History > 0 {
		s += fmt.Sprintf(" (history %d)", c.History)
	}
	return s
}

func (c FanoutConfig) name() string {
	return fmt.Sprintf("fan-out %d devices in %d", c.Devices, c.ConvSize)
}

func (c CatchUpConfig) name() string {
	s := fmt.Sprintf("catch-up %d ops in %d (history x%d)", c.Ops, c.Convs, max(c.History, 1))
	if c.Cold {
		s += ", cold"
	}
	return s
}

func idleName(devices int) string { return fmt.Sprintf("idle %d", devices) }

// runner runs workloads on fresh systems, each with its store in a folder
// of its own under dir.
type runner struct {
	ctx context.Context
	dir string
	log *slog.Logger
	n   int // systems started
}

// on runs fn on n fresh systems of f, up at once, and closes them.
func (rn *runner) on(what string, f Factory, n int, fn func([]System) error) error {
	rn.log.Info("running", "system", f.Name, "workload", what)
	var ss []System
	closeAll := func() (err error) {
		for _, s := range ss {
			if cerr := s.Close(); err == nil && cerr != nil && !strings.Contains(cerr.Error(), "signal") {
				err = cerr
			}
		}
		return err
	}
	for range n {
		rn.n++
		d := filepath.Join(rn.dir, fmt.Sprintf("%03d-%s", rn.n, strings.ReplaceAll(f.Name, " ", "-")))
		if err := os.MkdirAll(d, 0o700); err != nil {
			_ = closeAll()
			return fmt.Errorf("%s: start %s: %w", what, f.Name, err)
		}
		defer os.RemoveAll(d)
		s, err := f.New(rn.ctx, d)
		if err != nil {
			_ = closeAll()
			return fmt.Errorf("%s: start %s: %w", what, f.Name, err)
		}
		ss = append(ss, s)
	}
	err := fn(ss)
	if cerr := closeAll(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s on %s: %w", what, f.Name, err)
	}
	return nil
}

// limits measures the physical limits, for d each: the store's commit
// rate with one record a commit, and with each closed-loop ingest row's
// writers and ops a push (closed); its latency at the rate and shape of
// each open-loop row (open).
func limits(dir string, d time.Duration, closed, open []IngestConfig) (Limits, error) {
	var l Limits
	var err error
	if l.FsyncP50, err = FsyncLatency(filepath.Join(dir, "fsync"), 200); err != nil {
		return l, err
	}
	shapes := []PebbleResult{{Committers: 1, Batch: 1}, {Committers: 16, Batch: 1}, {Committers: 64, Batch: 1}, {Committers: 256, Batch: 1}}
	for _, row := range closed {
		if shape := (PebbleResult{Committers: row.Writers, Batch: max(row.Batch, 1)}); row.Writers > 0 && !slices.Contains(shapes, shape) {
			shapes = append(shapes, shape)
		}
	}
	for _, x := range shapes {
		res, err := PebbleCommits(filepath.Join(dir, fmt.Sprintf("pebble-%dx%d", x.Committers, x.Batch)), x.Committers, x.Batch, d)
		if err != nil {
			return l, err
		}
		l.Pebble = append(l.Pebble, res)
	}
	for i, row := range latencyShapes(open) {
		res, err := PebbleLatency(filepath.Join(dir, fmt.Sprintf("pebble-latency-%d", i)), row.Writers, row.Batch, row.Rate, d)
		if err != nil {
			return l, err
		}
		l.PebbleLatency = append(l.PebbleLatency, res)
	}
	for _, n := range []int{100, 1000} {
		res, err := Zstd(n, d)
		if err != nil {
			return l, err
		}
		l.Zstd = append(l.Zstd, res)
	}
	if l.LoopbackMBs, err = Loopback(d); err != nil {
		return l, err
	}
	// A live round of one chat message is a few hundred bytes on the wire.
	// Among 10,000 sockets a delivery costs more than among 1,000 (14µs
	// against 10µs on the 2-core machine of bench/results): each floor
	// comes from its own count, as far as this process may open both ends
	// of that many connections.
	most := max(openFiles()/2-256, 16)
	for _, conns := range slices.Compact([]int{min(1000, most), min(10_000, most)}) {
		res, err := Deliveries(conns, 256, d)
		if err != nil {
			return l, err
		}
		l.Delivery = append(l.Delivery, res)
	}
	return l, nil
}

// latencyShapes are the open-loop rows' writers, pushes and rates, each
// once: the rows on a store in use share their shape with a row on a new
// one, and the limit is the same disk's at that rate.
func latencyShapes(rows []IngestConfig) []IngestConfig {
	var shapes []IngestConfig
	for _, row := range rows {
		shape := IngestConfig{Writers: row.Writers, Batch: max(row.Batch, 1), Rate: row.Rate}
		if row.Rate > 0 && row.Writers > 0 && !slices.Contains(shapes, shape) {
			shapes = append(shapes, shape)
		}
	}
	return shapes
}

// openFiles is how many files this process may open (Go raises the soft
// limit to the hard one as it starts), from /proc: where it cannot tell,
// as many as the measures need.
func openFiles() int {
	b, err := os.ReadFile("/proc/self/limits")
	if err != nil {
		return 1 << 20
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				if n, err := strconv.Atoi(f[0]); err == nil { // "unlimited" is not a number
					return n
				}
			}
		}
	}
	return 1 << 20
}

func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}
