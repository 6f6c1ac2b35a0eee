package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is one run's results.
type Report struct {
	Profile       string    `json:"profile"`
	Date          time.Time `json:"date"`
	CorpusVersion int       `json:"corpus_version"`
	MeanPayload   float64   `json:"mean_payload_bytes"`
	Machine       Machine   `json:"machine"`
	// Interleaved: each workload row ran on every system in turn before
	// the next row (Run); reports from before it ran each system's rows
	// in one go.
	Interleaved bool            `json:"interleaved,omitempty"`
	Ingest      []IngestResult  `json:"ingest"`
	Fanout      []FanoutResult  `json:"fanout"`
	CatchUp     []CatchUpResult `json:"catch_up"`
	Idle        []IdleResult    `json:"idle"`
	Storage     []StorageResult `json:"storage"`
	Limits      Limits          `json:"limits"`
	// Notes are free-form remarks on the run, such as a peer system's
	// configuration, rendered before the errors.
	Notes  []string `json:"notes,omitempty"`
	Errors []string `json:"errors,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPU        string        `json:"cpu"`
	Cores      int           `json:"cores"`
	GOMAXPROCS int           `json:"gomaxprocs"`
	OS         string        `json:"os"`
	Go         string        `json:"go"`
	FsyncP50   time.Duration `json:"fsync_p50_ns"`
}

func (m Machine) String() string {
	return fmt.Sprintf("%s, %d cores (GOMAXPROCS %d), %s, %s", m.CPU, m.Cores, m.GOMAXPROCS, m.OS, m.Go)
}

// Limits are the physical limits measured in the same run.
type Limits struct {
	FsyncP50 time.Duration  `json:"fsync_p50_ns"`
	Pebble   []PebbleResult `json:"pebble"`
	// PebbleLatency is raw Pebble's synced-commit latency at each
	// open-loop ingest row's rate and shape.
	PebbleLatency []PebbleLatencyResult `json:"pebble_latency"`
	Zstd          []ZstdResult          `json:"zstd"`
	LoopbackMBs   float64               `json:"loopback_mb_per_sec"`
	Delivery      []DeliveryResult      `json:"delivery"` // by connections, fewest first
}

// transportFloor is Limits.Delivery's floor for a message to devices: from
// the measure over the count of connections nearest theirs, since a
// delivery costs more among more sockets. It is 0 when none was measured.
func (l Limits) transportFloor(devices, cores int) time.Duration {
	var best DeliveryResult
	for _, d := range l.Delivery {
		if d.Deliveries > 0 && (best.Conns == 0 || dist(d.Conns, devices) < dist(best.Conns, devices)) {
			best = d
		}
	}
	if best.Conns == 0 {
		return 0
	}
	return best.Floor(devices, cores)
}

// storeLatency is the limit under an open-loop ingest row's ack latency:
// raw Pebble's synced commits at the row's rate, from as many committers,
// each commit as many records as a push.
func (l Limits) storeLatency(x IngestResult) (Summary, bool) {
	for _, p := range l.PebbleLatency {
		if p.Committers == x.Writers && p.Batch == max(x.Batch, 1) && p.Rate == x.Rate && p.Latency.N > 0 {
			return p.Latency, true
		}
	}
	return Summary{}, false
}

// dist is how far apart two counts are, as a ratio.
func dist(a, b int) float64 { return math.Abs(math.Log(float64(a) / float64(b))) }

// JSON encodes the report.
func (r *Report) JSON() []byte {
	b, _ := json.MarshalIndent(r, "", "  ")
	return append(b, '\n')
}

// Write writes the JSON report to js (when set) and the markdown to md, or
// to stdout when md is empty. It returns an error naming the workloads that
// failed, after writing what the others measured.
func (r *Report) Write(md, js string, stdout io.Writer) error {
	if js != "" {
		if err := os.WriteFile(js, r.JSON(), 0o644); err != nil {
			return err
		}
	}
	if md != "" {
		if err := os.WriteFile(md, []byte(r.Markdown()), 0o644); err != nil {
			return err
		}
	} else if _, err := fmt.Fprint(stdout, r.Markdown()); err != nil {
		return err
	}
	if len(r.Errors) > 0 {
		return fmt.Errorf("%d workloads failed: %s", len(r.Errors), strings.Join(r.Errors, "; "))
	}
	return nil
}

func kb(n int64) string {
	if n >= 10_000_000 {
		return fmt.Sprintf("%.0f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.1f KB", float64(n)/1000)
}

// percent formats a share (0.97) as a percentage ("97%").
func percent(x float64) string { return fmt.Sprintf("%.0f%%", 100*x) }

func rate(x float64) string {
	switch {
	case x >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case x >= 1e4:
		return fmt.Sprintf("%.0fk", x/1e3)
	case x >= 1e3:
		return fmt.Sprintf("%.1fk", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}

// Markdown renders the report: the targets first, then every figure.
func (r *Report) Markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Ferry benchmark report\n\n")
	fsync := "fsync latency not measured in this run"
	if r.Machine.FsyncP50 > 0 {
		fsync = fmt.Sprintf("one synced commit takes %s (median) on this disk", ms(r.Machine.FsyncP50))
	}
	p("Profile `%s`, %s. Machine: %s; %s. ", r.Profile, r.Date.Format("2006-01-02 15:04 UTC"), r.Machine, fsync)
	catchUps := ""
	if n := r.catchUpRuns(); n > 1 {
		catchUps = fmt.Sprintf(" (catch-ups: the median of %d)", n)
	}
	systems := r.systems()
	order := ""
	if r.Interleaved && len(systems) > 1 {
		order = " Each workload row ran on every system in turn before the next row, so that the figures side by side were taken minutes apart at most."
	}
	p("Corpus version %d, mean payload %.0f bytes. One run of each workload%s on a shared machine: read ratios, not absolutes.%s\n\n", r.CorpusVersion, r.MeanPayload, catchUps, order)

	p("## Targets\n\n| metric | target | %s |\n| --- | --- |%s\n", strings.Join(systems, " | "), strings.Repeat(" --- |", len(systems)))
	for _, t := range r.targets(systems) {
		p("| %s | %s | %s |\n", t[0], t[1], strings.Join(t[2:], " | "))
	}
	if rows, cols := r.ratios(systems); len(rows) > 0 {
		p("\n## Ratios\n\nFerry's figure divided by the other's, from the runs above. For throughput more is better; for the rest less is.\n\n")
		p("| metric | %s |\n| --- |%s\n", strings.Join(cols, " | "), strings.Repeat(" --- |", len(cols)))
		for _, row := range rows {
			p("| %s |\n", strings.Join(row, " | "))
		}
	}

	p("\n## Durable ingest\n\nAcknowledged after a synced commit. Closed loop (2 pushes in flight per writer) for throughput; open loop (fixed rate, latency from the scheduled send) for latency. An open-loop row that served less than 95%% of its rate was saturated: its latency is mostly the queue, and the rows below its rate say what a server that keeps up gives. History: messages the conversations held before the run (sent in pushes of 100, not measured: the run starts once their deliveries have arrived and Ferry's devices' acks of them have had 250 ms, while the store is still busy with their flushes and compactions), so that the store's data has reached its files as on a server in use; without it every write and read of a new store stays in memory. A store of that size is still young: all its compactions write into its bottom level, where a large store does a fraction of its compaction work (for Ferry, the level where its default compression pays for zstd; see --store-compression). CPU is the server process's, per 1,000 ops, the writers' acks of each other's ops included: at the run's end every system gets until it is idle (three 100 ms windows of at most 10 ms of CPU, for up to 5 s) to finish the work the run's ops left, its deliveries and, for Ferry's devices, which hold their acks back, the acks they then send at once (busy, below, reads the CPU of the run's own window). Client CPU is the harness's own, its writers pushing and reading their results and each other's ops, on the same cores. Ferry's writers send their pushes uncompressed, as the peers' clients send theirs (the Go SDK compresses them: on a device's own CPU), and accept the server's zstd. Busy is the share of the cores the two kept busy over the run: near 100%%, the machine had no CPU to spare, and a latency is mostly the wait for it. Sent late is, in open loop, the p99 of how long after its scheduled time a push had left the harness: the share of an ack's latency that is the harness's own, waking its writers and handing their pushes to the connection. Flushed / compacted counts the memtables the store flushed to its files and the compactions it completed while the row ran (for a server that tells: Ferry's): background work on the same cores, which a row with history also inherits from the writes before it. Peak RSS is the server's most resident memory during the run, counted from the run's start: the writing of a history before it is not in it, the caches and memtables it left are.\n\n")
	p("| system | writers | ops/push | rate | history | ops/s | ack p50 | p90 | p99 | p99.9 | max | CPU/1k ops | client CPU/1k | busy | sent late, p99 | flushed / compacted | peak RSS |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Ingest {
		rt := "max"
		if x.Rate > 0 {
			rt = rate(x.Rate) + "/s"
		}
		hist := "–"
		if x.History > 0 {
			hist = rate(float64(x.History))
		}
		client, busy := "–", "–"
		if b := x.Busy(r.Machine.Cores); b > 0 {
			client, busy = ms(x.ClientCPUPerKOps), percent(b)
		}
		late := "–"
		if x.SendLag.N > 0 {
			late = ms(x.SendLag.P99)
		}
		work := "–"
		if w := x.StoreWork; w != nil {
			work = fmt.Sprintf("%d / %d", w.Flushes, w.Compactions)
		}
		name := x.System
		if x.Volatile {
			name += " (not durable)"
		}
		p("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", name, x.Writers, x.Batch, rt, hist, rate(x.OpsPerSec),
			ms(x.Ack.P50), ms(x.Ack.P90), ms(x.Ack.P99), ms(x.Ack.P999), ms(x.Ack.Max), ms(x.CPUPerKOps), client, busy, late, work, kb(x.PeakRSS))
	}
	if len(r.Limits.Pebble) > 0 {
		p("\nLimit, raw Pebble synced commits of op-sized records, same disk, records a second:")
		for _, l := range r.Limits.Pebble {
			if l.records() == 1 {
				p(" %d committers %s/s;", l.Committers, rate(l.OpsPerSec))
			} else {
				p(" %d committers of %d records a commit (an ingest row's shape) %s/s;", l.Committers, l.records(), rate(l.OpsPerSec))
			}
		}
		p("\n")
	}
	if len(r.Limits.PebbleLatency) > 0 {
		p("\nLimit under the open-loop rows' ack latency, raw Pebble synced commits at each row's rate on a new store on the same disk: on the schedule of as many writers as the row's, as many records a commit as a push, each commit at its time whether or not the ones before it are done, latency from that time:")
		for _, l := range r.Limits.PebbleLatency {
			p(" %d x %d at %s/s: p50 %s, p99 %s;", l.Committers, l.Batch, rate(l.Rate), ms(l.Latency.P50), ms(l.Latency.P99))
		}
		p("\n")
	}

	p("\n## Live fan-out\n\nOpen loop; latency from the scheduled send to arrival at each other member. The run waits up to 10 s past its last send for every delivery; one that arrives later, while the system drains at the run's end (below), counts too, in the deliveries and the percentiles; a row whose deliveries fell short gives the number expected after them, as (of N). CPU is the server's; client CPU is the harness's own, its devices receiving and sending, which on one machine share the server's cores: a message to N devices takes at least N × (server + client CPU per delivery) / cores to reach them all. That is the CPU floor: how far a p99 is above it is what the server could still gain on this machine; the floor itself only less CPU per delivery, the server's or the client's, can lower. The CPU per delivery counts all of the run's CPU, the devices' acks of what they received included (at the run's end every system gets until it is idle, as in ingest, and Ferry's devices send the acks they hold back, which would go within 5 s, at once), so in small conversations at low rates it is mostly fixed costs (heartbeats, acks, collection), and the floor there says little. The first message to each conversation goes before the measured ones and is not in their percentiles: it pays what each device and session pay once, above all the harness's devices growing their goroutines' stacks for their first decode of ops, which real devices, one to a process, pay on their own CPU. Its slowest delivery is in the column after max, with how many of its deliveries arrived when the warm-up's 10 s ran out before all did. The server's delay is what a server that measures it says of the measured messages' live rounds, on average: for Ferry, from the commit that woke a device's session to the round handed to its stream (ferry_live_delay_seconds); the rest of a latency is the commit before it and the device's side after.\n\n")
	p("| system | devices | conversation size | messages | deliveries | p50 | p90 | p99 | p99.9 | max | first message, max | server's delay, mean | CPU/1k deliveries | client CPU/1k | CPU floor | p99 / floor |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Fanout {
		lost := ""
		if x.Deliveries < x.Expected {
			lost = fmt.Sprintf(" (of %d)", x.Expected)
		}
		client := "–"
		if x.ClientCPUPerKOps > 0 {
			client = ms(x.ClientCPUPerKOps)
		}
		floor, over := "–", "–"
		if f := x.Floor(r.Machine.Cores); f > 0 {
			floor, over = ms(f), fmt.Sprintf("%.1f", float64(x.Latency.P99)/float64(f))
		}
		first := "–" // none in results from before the warm-up
		if x.First.N > 0 {
			first = ms(x.First.Max)
			if want := x.warmUpDeliveries(); x.First.N < want {
				first += fmt.Sprintf(" (%d of %d arrived)", x.First.N, want)
			}
		}
		server := "–"
		if x.ServerDelay > 0 {
			server = ms(x.ServerDelay)
		}
		p("| %s | %d | %d | %d | %d%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", x.System, x.Devices, x.ConvSize, x.Messages, x.Deliveries, lost,
			ms(x.Latency.P50), ms(x.Latency.P90), ms(x.Latency.P99), ms(x.Latency.P999), ms(x.Latency.Max), first, server, ms(x.CPUPerKOps), client, floor, over)
	}
	if ds := r.Limits.Delivery; len(ds) > 0 {
		p("\nLimit, a %d-byte message over its own loopback TCP connection (written by one goroutine, read by another; no HTTP/2, protobuf or compression), sent to every connection in turn, CPU per delivery, both ends:", ds[0].Bytes)
		for _, d := range ds {
			p(" %.1fµs among %d connections;", float64(d.CPUPerDelivery)/float64(time.Microsecond), d.Conns)
		}
		p(" the transport floor, what a message to N devices takes at least when each has its own connection and they share the server's %d cores: %s to 1k devices, %s to 10k.\n",
			r.Machine.Cores, ms(r.Limits.transportFloor(1000, r.Machine.Cores)), ms(r.Limits.transportFloor(10_000, r.Machine.Cores)))
	}

	n := max(r.catchUpRuns(), 2)
	p("\n## Catch-up\n\nA device offline while the ops arrive; from reconnecting to caught up. The device goes offline and catches up several times, each time with as many new ops, so each run's history is one more multiple of them (x1-x%d: %d runs over histories of x1 to x%d): the figures", n, n, n)
	p(" are the run with the median time, and every run's time follows. The first one or two runs of a row are often the slowest, at any history. Cold: the server restarted after the ops arrived and before each catch-up, which then read through a cold process (its caches empty; the OS page cache stays warm) on a new connection.")
	if slices.ContainsFunc(r.CatchUp, func(x CatchUpResult) bool { return x.Alongside > 0 }) {
		p(" A row with a scaling and the x1 row of the same size before it ran on two servers up at once, their runs alternating (and which went first), so that both saw the same phases of a shared machine: its scaling is its median over the x1 row's, where flat is 1.")
	}
	p("\n\n")
	p("| system | missed ops | conversations | history | time | scaling | round trips | wire bytes | bytes/op | wire/payload | runs |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.CatchUp {
		runs := make([]string, len(x.Times))
		for i, t := range x.Times {
			runs[i] = ms(t)
		}
		scaling := "–"
		if k := x.Scaling(); k > 0 {
			scaling = fmt.Sprintf("%.2f", k)
		}
		p("| %s | %d | %d | %s | %s | %s | %d | %d | %.1f | %.2f | %s |\n", x.System, x.Ops, x.Convs, x.historyLabel(), ms(x.CatchUp.Duration),
			scaling, x.CatchUp.RoundTrips, x.CatchUp.WireBytes, x.BytesOp, float64(x.CatchUp.WireBytes)/float64(max(x.RawBytes, 1)), strings.Join(runs, ", "))
	}
	if len(r.Limits.Zstd) > 0 {
		p("\nLimit, zstd on packed wire batches (shared encoder, default level):")
		for _, z := range r.Limits.Zstd {
			p(" %d ops per batch: ratio %.2f at %.0f MB/s", z.OpsPerBatch, z.Ratio, z.MBPerSec)
			if z.TextRatio > 0 {
				// What the texts alone compress to bounds wire/payload.
				p(", their texts alone %.2f", z.TextRatio)
			}
			p(";")
		}
		p(" loopback TCP %.0f MB/s.\n", r.Limits.LoopbackMBs)
	}

	p("\n## Idle devices\n\n| system | devices | server RSS before | after | per device |\n|---|---|---|---|---|\n")
	for _, x := range r.Idle {
		p("| %s | %d | %s | %s | %s |\n", x.System, x.Devices, kb(x.RSSBefore), kb(x.RSSAfter), kb(x.PerDevice))
	}
	p("\n## Storage\n\nGrowth of the store per op of chat text, after a full compaction. For Ferry, the live files: tables, the WAL in use, manifest and options. " +
		"Left out: compacted tables that Pebble has yet to delete (it deletes them at a paced rate) and the flushed WAL files it keeps to reuse (at most three, each up to the 64 MiB memtable): temporary or bounded, not a cost per op.\n\n| system | ops | payload bytes/op | disk bytes/op | overhead |\n|---|---|---|---|---|\n")
	for _, x := range r.Storage {
		p("| %s | %d | %.0f | %.0f | %+.0f B |\n", x.System, x.Ops, x.PayloadBytes, x.DiskBytes, x.DiskBytes-x.PayloadBytes)
	}
	if len(r.Notes) > 0 {
		p("\n## Notes\n\n")
		for _, n := range r.Notes {
			p("- %s\n", n)
		}
	}
	if len(r.Errors) > 0 {
		p("\n## Errors\n\n")
		for _, e := range r.Errors {
			p("- %s\n", e)
		}
	}
	return b.String()
}

func (r *Report) systems() []string {
	var out []string
	add := func(s string) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, x := range r.Ingest {
		add(x.System)
	}
	for _, x := range r.Fanout {
		add(x.System)
	}
	for _, x := range r.CatchUp {
		add(x.System)
	}
	for _, x := range r.Idle {
		add(x.System)
	}
	for _, x := range r.Storage {
		add(x.System)
	}
	return out
}

// ratios compares Ferry with each peer and with the limits measured in the
// same run: rows of cells, and the column headings after the metric's.
func (r *Report) ratios(systems []string) (rows [][]string, cols []string) {
	var peers []string
	for _, s := range systems {
		if !strings.HasPrefix(s, "ferry") {
			peers = append(peers, s)
		}
	}
	bestIngest := func(sys string) (best IngestResult) {
		for _, x := range r.Ingest {
			if x.System == sys && x.Rate == 0 && x.OpsPerSec > best.OpsPerSec {
				best = x
			}
		}
		return best
	}
	ingest := func(sys string) float64 { return bestIngest(sys).OpsPerSec }
	ack := func(sys string) float64 {
		if x, ok := r.ackRow(sys); ok {
			return float64(x.Ack.P99)
		}
		return 0
	}
	fan := func(sys string) float64 {
		for _, x := range r.Fanout {
			if x.System == sys && x.Devices == 1000 && x.ConvSize == 1000 {
				return float64(x.Latency.P99)
			}
		}
		return 0
	}
	idle := func(sys string) float64 {
		for _, x := range r.Idle {
			if x.System == sys {
				return float64(x.PerDevice)
			}
		}
		return 0
	}
	cu := func(sys string) float64 {
		for _, x := range r.CatchUp {
			if x.System == sys && x.Ops == 10_000 && x.Convs == 100 && x.History == 1 && !x.Cold {
				return float64(x.CatchUp.Duration)
			}
		}
		return 0
	}
	wire := func(sys string) float64 {
		for _, x := range r.CatchUp {
			if x.System == sys && x.Ops == 10_000 && x.Convs == 100 && x.History == 1 && !x.Cold {
				return float64(x.CatchUp.WireBytes) / float64(max(x.RawBytes, 1))
			}
		}
		return 0
	}
	disk := func(sys string) float64 {
		for _, x := range r.Storage {
			if x.System == sys {
				return x.DiskBytes
			}
		}
		return 0
	}
	ratio := func(a, b float64) string {
		if a == 0 || b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	// The limits: the Pebble commit rate with as many committers as
	// Ferry's best ingest row had writers, each commit as many records as
	// its pushes ops (a report from before these were measured has the
	// rate of one record a commit alone, which its label then says), and
	// zstd's ratio on 1000-op batches.
	var pebble, zstdRatio float64
	best := bestIngest("ferry")
	pebbleShape := "64 committers of one record a commit"
	for _, x := range r.Limits.Pebble {
		switch {
		case x.Committers == best.Writers && x.records() == max(best.Batch, 1):
			pebble = x.OpsPerSec
			pebbleShape = fmt.Sprintf("%d committers of %s a commit, the best row's shape", x.Committers, plural(x.records(), "record"))
		case pebble == 0 && x.Committers == 64 && x.records() == 1:
			pebble = x.OpsPerSec
		}
	}
	for _, x := range r.Limits.Zstd {
		if x.OpsPerBatch == 1000 {
			zstdRatio = x.Ratio
		}
	}
	transport := float64(r.Limits.transportFloor(1000, r.Machine.Cores))
	var store float64
	if x, ok := r.ackRow("ferry"); ok {
		if l, ok := r.Limits.storeLatency(x); ok {
			store = float64(l.P99)
		}
	}
	if len(peers) == 0 && pebble == 0 {
		return nil, nil
	}
	cols = append(cols, "ferry / limit")
	for _, p := range peers {
		cols = append(cols, "ferry / "+p)
	}
	// Against the limits: ingest over the Pebble commit rate; fan-out's p99
	// over the transport floor; Ferry's wire bytes over its own
	// uncompressed bytes, against zstd's ratio on the same kind of batches.
	vsPebble := ratio(ingest("ferry"), pebble)
	vsTransport := ratio(fan("ferry"), transport)
	vsZstd := "–"
	if f, u := wire("ferry"), wire("ferry (uncompressed)"); f > 0 && u > 0 {
		vsZstd = ratio(f/u, zstdRatio)
	}
	for _, m := range []struct {
		name    string
		f       func(string) float64
		limit   string
		durable bool // a ratio of Ferry's durable acks: none to a volatile peer's
	}{
		{"durable ingest, best ops/s (limit: Pebble synced commits, " + pebbleShape + ")", ingest, vsPebble, true},
		{"ack p99 at the ack-latency target's rate (limit: Pebble synced commits at that rate)", ack, ratio(ack("ferry"), store), true},
		{"fan-out to 1k devices, p99 (limit: the transport floor, 1k deliveries over loopback TCP)", fan, vsTransport, false},
		{"idle memory per device", idle, "–", false},
		{"catch-up 10k ops over 100 conversations, time", cu, "–", false},
		{"catch-up wire bytes / payload (limit: zstd's ratio on 1000-op batches)", wire, vsZstd, false},
		{"disk bytes per op", disk, "–", false},
	} {
		row := []string{m.name, m.limit}
		for _, p := range peers {
			if m.durable && r.volatile(p) {
				row = append(row, "– (not durable)")
				continue
			}
			row = append(row, ratio(m.f("ferry"), m.f(p)))
		}
		rows = append(rows, row)
	}
	return rows, cols
}

// volatile says sys acknowledged its ingest rows from memory.
func (r *Report) volatile(sys string) bool {
	for _, x := range r.Ingest {
		if x.System == sys && x.Volatile {
			return true
		}
	}
	return false
}

// ackRow is sys's row of the ack-latency target: its first open-loop
// ingest row.
func (r *Report) ackRow(sys string) (IngestResult, bool) {
	for _, x := range r.Ingest {
		if x.System == sys && x.Rate > 0 {
			return x, true
		}
	}
	return IngestResult{}, false
}

// targets are the targets with each system's figure.
func (r *Report) targets(systems []string) [][]string {
	cell := func(f func(sys string) string) []string {
		out := make([]string, len(systems))
		for i, s := range systems {
			out[i] = f(s)
		}
		return out
	}
	// The best closed-loop row, and the best with a history when that is
	// not it: a row on a new store runs in memory for its few seconds
	// (its first memtable flush falls in it or after it), where one past
	// a memtable of history writes as a server in use does.
	bestIngest := func(sys string) string {
		var best, used IngestResult
		for _, x := range r.Ingest {
			if x.System != sys || x.Rate != 0 {
				continue
			}
			if x.OpsPerSec > best.OpsPerSec {
				best = x
			}
			if x.History > 0 && x.OpsPerSec > used.OpsPerSec {
				used = x
			}
		}
		if best.Ops == 0 {
			return "–"
		}
		c := fmt.Sprintf("%s ops/s (%d writers x %d", rate(best.OpsPerSec), best.Writers, best.Batch)
		if best.History > 0 {
			c += fmt.Sprintf(", after %s messages of history", rate(float64(best.History)))
		}
		c += ")"
		if used.Ops > 0 && used.History != best.History {
			c += fmt.Sprintf("; %s with %s messages of history", rate(used.OpsPerSec), rate(float64(used.History)))
		}
		if best.Volatile {
			c += ", not durable"
		}
		return c
	}
	// inUse gives the first open-loop row on a store in use (with
	// history), beside the target row.
	inUse := func(sys string) string {
		for _, x := range r.Ingest {
			if x.System == sys && x.Rate > 0 && x.History > 0 {
				return fmt.Sprintf("; %s at %s ops/s on a store in use (%s messages before)", ms(x.Ack.P99), rate(x.Rate), rate(float64(x.History)))
			}
		}
		return ""
	}
	ackP99 := func(sys string) string {
		x, ok := r.ackRow(sys)
		if !ok {
			return "–"
		}
		c := fmt.Sprintf("%s at %s ops/s", ms(x.Ack.P99), rate(x.Rate))
		switch b := x.Busy(r.Machine.Cores); {
		case saturated(x):
			c += fmt.Sprintf(" (saturated: %s served)", rate(x.OpsPerSec))
		case b > 0 && x.SendLag.N > 0:
			c += fmt.Sprintf(" (cores %s busy; pushes sent %s late at p99)", percent(b), ms(x.SendLag.P99))
		case b > 0:
			c += fmt.Sprintf(" (cores %s busy)", percent(b))
		}
		if x.Volatile {
			c += ", not durable"
		}
		if l, ok := r.Limits.storeLatency(x); ok {
			c += fmt.Sprintf("; the store alone %s at that rate", ms(l.P99))
		}
		return c + inUse(sys)
	}
	fan := func(devices int) func(string) string {
		return func(sys string) string {
			for _, x := range r.Fanout {
				if x.System == sys && x.Devices == devices && x.ConvSize == devices {
					c := fmt.Sprintf("p99 %s", ms(x.Latency.P99))
					if f := r.Limits.transportFloor(devices, r.Machine.Cores); f > 0 {
						c += fmt.Sprintf(" (transport floor %s)", ms(f))
					}
					return c
				}
			}
			return "–"
		}
	}
	idle := func(sys string) string { // every size measured: the target holds at each
		var per, devices []string
		for _, x := range r.Idle {
			if x.System == sys {
				per = append(per, strings.TrimSuffix(kb(x.PerDevice), " KB"))
				devices = append(devices, strconv.Itoa(x.Devices))
			}
		}
		if len(per) == 0 {
			return "–"
		}
		return strings.Join(per, " / ") + " KB (" + strings.Join(devices, " / ") + " devices)"
	}
	cu := func(ops, convs, history int) func(string) string {
		return func(sys string) string {
			for _, x := range r.CatchUp {
				if x.System == sys && x.Ops == ops && x.Convs == convs && x.History == history && !x.Cold {
					c := fmt.Sprintf("%s, %s", ms(x.CatchUp.Duration), plural(x.CatchUp.RoundTrips, "round trip"))
					if k := x.Scaling(); k > 0 {
						c += fmt.Sprintf("; %.2fx the x1 row, run alongside", k)
					}
					return c
				}
			}
			return "–"
		}
	}
	// The floor under Ferry's compressed wire bytes: zstd on the texts
	// alone, without the ops' ids and numbers.
	textFloor := ""
	for _, z := range r.Limits.Zstd {
		if z.OpsPerBatch == 1000 && z.TextRatio > 0 {
			textFloor = fmt.Sprintf(" (zstd takes the texts alone to %.2f)", z.TextRatio)
		}
	}
	wire := func(sys string) string {
		for _, x := range r.CatchUp {
			if x.System == sys && x.Ops == 10_000 && x.Convs == 100 && x.History == 1 && !x.Cold {
				s := fmt.Sprintf("%.2f", float64(x.CatchUp.WireBytes)/float64(max(x.RawBytes, 1)))
				if sys == "ferry" {
					s += textFloor
				}
				return s
			}
		}
		return "–"
	}
	disk := func(sys string) string {
		for _, x := range r.Storage {
			if x.System == sys {
				return fmt.Sprintf("payload %+.0f B", x.DiskBytes-x.PayloadBytes)
			}
		}
		return "–"
	}
	return [][]string{
		append([]string{"durable ingest, ack after fsync", "≥ 100k ops/s"}, cell(bestIngest)...),
		append([]string{"ack latency", "p99 ≤ 5 ms"}, cell(ackP99)...),
		append([]string{"fan-out, 1 op to 10k online devices", "p99 ≤ 50 ms"}, cell(fan(10000))...),
		append([]string{"fan-out, 1 op to 1k online devices", "p99 ≤ 10 ms"}, cell(fan(1000))...),
		append([]string{"idle memory per device", "≤ 20 KB"}, cell(idle)...),
		append([]string{"catch-up 10k ops over 100 conversations", "≤ 50 ms, ≤ 2 round trips"}, cell(cu(10_000, 100, 1))...),
		append([]string{"catch-up 10k ops over 100, history x10", "flat"}, cell(cu(10_000, 100, 10))...),
		append([]string{"catch-up 100k ops over 500 conversations", "≤ 0.5 s"}, cell(cu(100_000, 500, 1))...),
		append([]string{"catch-up 100k over 500, history x10", "flat"}, cell(cu(100_000, 500, 10))...),
		append([]string{"catch-up bytes on the wire / payload", "≤ 0.45"}, cell(wire)...),
		append([]string{"disk per op", "≤ payload + 30 B"}, cell(disk)...),
	}
}

// catchUpRuns is how many runs each catch-up took the median of: the
// most of any result (older reports have three).
func (r *Report) catchUpRuns() int {
	n := 0
	for _, x := range r.CatchUp {
		n = max(n, len(x.Times))
	}
	return n
}

// historyLabel is the histories the runs caught up over: "x10", or
// "x10-x14" for five runs; ", cold" when the server restarted before each.
func (x CatchUpResult) historyLabel() string {
	l := fmt.Sprintf("x%d", x.History)
	if len(x.Times) > 1 {
		l = fmt.Sprintf("x%d-x%d", x.History, x.History+len(x.Times)-1)
	}
	if x.Cold {
		l += ", cold"
	}
	return l
}

// saturated reports whether an open-loop ingest row served less than 95%
// of the rate it offered.
func saturated(x IngestResult) bool { return x.Rate > 0 && x.OpsPerSec < 0.95*x.Rate }

// plural is n and noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
