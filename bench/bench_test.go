package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/klauspost/compress/zstd"
)

func TestCorpusIsDeterministic(t *testing.T) {
	a, b := Corpus(7, 500), Corpus(7, 500)
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("message %d differs between two runs with seed 7: %q vs %q", i, a[i], b[i])
		}
	}
	c := Corpus(8, 500)
	same := 0
	for i := range a {
		if bytes.Equal(a[i], c[i]) {
			same++
		}
	}
	if same > 50 {
		t.Errorf("seeds 7 and 8 share %d of 500 messages: the seed is not used", same)
	}
	if m := MeanPayload(); m < 50 || m > 150 {
		t.Errorf("mean payload %.1f bytes, want realistic chat lines of 50..150 bytes", m)
	}
}

// TestCorpusCompressesAsText holds the corpus near real text, which
// zstd takes (default level, 1,000 messages at a time) to about 0.42 of
// its size: an English novel cut to the corpus's message lengths did, and
// version 3's corpus, 200 words drawn evenly, went to 0.37, flattering
// every wire and disk figure that compresses it.
func TestCorpusCompressesAsText(t *testing.T) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var raw, packed int
	for i := 0; i+1000 <= len(corpus); i += 1000 {
		b := bytes.Join(corpus[i:i+1000], []byte{'\n'})
		raw += len(b)
		packed += len(enc.EncodeAll(b, nil))
	}
	if r := float64(packed) / float64(raw); r < 0.40 || r > 0.47 {
		t.Errorf("zstd takes the corpus to %.3f of its size; real text goes to about 0.42 (0.40..0.47)", r)
	}
	// What a catch-up's batch of 1,000 ops carries seldom repeats a text
	// (version 3's 10,000 texts came back about 5 times in 100).
	repeats := 0
	for k := 0; k < 100_000; k += 1000 {
		seen := map[string]bool{}
		for j := k; j < k+1000; j++ {
			p := string(corpus[corpusIndex(j)])
			if seen[p] {
				repeats++
			}
			seen[p] = true
		}
	}
	if repeats > 2000 {
		t.Errorf("%d of 100,000 texts repeat one of the 1,000 before them; want at most 2 in 100", repeats)
	}
}

func TestStampRoundTrip(t *testing.T) {
	at := time.Unix(1_790_000_000, 123456789)
	p := Stamp(at, []byte("hello"))
	got, ok := StampOf(p)
	if !ok || !got.Equal(at) || string(p[stampLen:]) != "hello" {
		t.Fatalf("StampOf(Stamp(%v)) = %v, %v, text %q", at, got, ok, p[stampLen:])
	}
	if _, ok := StampOf([]byte("short")); ok {
		t.Error("a payload shorter than a stamp was read as stamped")
	}
}

func TestSummaryPercentiles(t *testing.T) {
	var l Latencies
	if s := l.Summary(); s.N != 0 {
		t.Fatalf("empty summary has N=%d", s.N)
	}
	// 1..1000 ms, added in reverse so the summary must sort.
	for i := 1000; i >= 1; i-- {
		l.Add(time.Duration(i) * time.Millisecond)
	}
	s := l.Summary()
	want := Summary{N: 1000, P50: 500 * time.Millisecond, P90: 900 * time.Millisecond, P99: 990 * time.Millisecond,
		P999: 999 * time.Millisecond, Max: 1000 * time.Millisecond}
	if s != want {
		t.Fatalf("summary of 1..1000ms = %+v, want %+v", s, want)
	}
	// Nearest rank, not rounded down: of 600 samples, p99.9 is the
	// highest (a 0.1% tail is 0.6 of a sample), and of 100, p99 the 99th.
	for _, c := range []struct {
		n       int
		p99     time.Duration
		p999    time.Duration
		samples string
	}{{600, 594 * time.Millisecond, 600 * time.Millisecond, "1..600ms"}, {100, 99 * time.Millisecond, 100 * time.Millisecond, "1..100ms"}} {
		var l Latencies
		for i := 1; i <= c.n; i++ {
			l.Add(time.Duration(i) * time.Millisecond)
		}
		if s := l.Summary(); s.P99 != c.p99 || s.P999 != c.p999 {
			t.Errorf("summary of %s: p99 %v, p99.9 %v; want %v and %v", c.samples, s.P99, s.P999, c.p99, c.p999)
		}
	}
}

// TestWorkloadsInProcess runs every workload at a tiny size against an
// in-process server: the harness works end to end and counts what it
// claims (every fanned-out message arrives once at each other member,
// catch-up brings every missed op). It asserts no speed.
func TestWorkloadsInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers and sends a few thousand ops")
	}
	tiny := Profile{
		Name:          "tiny",
		Ingest:        []IngestConfig{{Writers: 4, Batch: 3, Duration: 200 * time.Millisecond}},
		IngestLatency: []IngestConfig{{Writers: 4, Batch: 1, Rate: 200, Duration: 200 * time.Millisecond}},
		Fanout:        []FanoutConfig{{Devices: 6, ConvSize: 3, Rate: 40, Duration: 200 * time.Millisecond}},
		CatchUp:       []CatchUpConfig{{Ops: 300, Convs: 4}, {Ops: 100, Convs: 2, History: 3, Alongside: true}, {Ops: 100, Convs: 2, Cold: true}},
		Idle:          []int{10},
		StorageOps:    400,
	}
	factory := func(uncompressed bool) Factory {
		return Factory{Name: "ferry", New: func(ctx context.Context, dir string) (System, error) {
			return NewFerry(ctx, FerryConfig{Mode: FerryInProcess, Dir: dir, Uncompressed: uncompressed})
		}}
	}
	raw := factory(true)
	raw.Name, raw.Only = "ferry (uncompressed)", []string{"catchup"}
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	r, err := Run(t.Context(), tiny, []Factory{factory(false), raw}, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 {
		t.Fatalf("workloads failed: %v", r.Errors)
	}
	if len(r.Ingest) != 2 || r.Ingest[0].Ops == 0 || r.Ingest[0].Ops%3 != 0 || r.Ingest[1].Ack.N == 0 {
		t.Errorf("ingest results %+v: want ops in whole batches of 3 and ack latencies", r.Ingest)
	}
	if closed, open := r.Ingest[0].SendLag.N, r.Ingest[1].SendLag; closed != 0 || open.N != r.Ingest[1].Ack.N {
		t.Errorf("send lags: %d in closed loop, %+v in open loop for %d acks: want none, and one per push", closed, open, r.Ingest[1].Ack.N)
	}
	if len(r.Fanout) != 1 || r.Fanout[0].Messages == 0 || r.Fanout[0].Deliveries != r.Fanout[0].Messages*2 {
		t.Errorf("fan-out results %+v: want each message delivered to both other members", r.Fanout)
	}
	if f := r.Fanout[0].First; f.N != 4 || f.Max <= 0 || r.Fanout[0].warmUpDeliveries() != f.N {
		t.Errorf("fan-out's first messages %+v (the report expects %d): want one to each of the 2 conversations, delivered to both other members, apart from the measured",
			f, r.Fanout[0].warmUpDeliveries())
	}
	if d := r.Fanout[0].ServerDelay; d <= 0 {
		t.Errorf("fan-out server delay %v: the in-process server says its rounds' delays", d)
	}
	if c := r.Ingest[0].ClientCPUPerKOps; c != 0 {
		t.Errorf("ingest client CPU %v with the server in the harness's process: it cannot be told apart", c)
	}
	if c := r.Fanout[0].ClientCPUPerKOps; c != 0 {
		t.Errorf("fan-out client CPU %v with the server in the harness's process: it cannot be told apart", c)
	}
	if len(r.CatchUp) != 8 {
		t.Fatalf("%d catch-up results, want 4 per system", len(r.CatchUp))
	}
	if x1, x3 := r.CatchUp[1], r.CatchUp[2]; x1.History != 1 || x3.History != 3 || x3.Alongside != x1.CatchUp.Duration || x1.Alongside != 0 {
		t.Errorf("catch-ups alongside: x1 %+v, x3 %+v: want the x3 row to hold the x1 row's median", x1, x3)
	}
	if !r.CatchUp[3].Cold || !strings.Contains(r.CatchUp[3].historyLabel(), "cold") {
		t.Errorf("the fourth catch-up %+v is not labelled cold", r.CatchUp[3])
	}
	for _, c := range r.CatchUp {
		if c.CatchUp.Ops != c.Ops || c.CatchUp.WireBytes == 0 || c.CatchUp.RoundTrips != 1 {
			t.Errorf("catch-up %+v: want exactly the missed ops, with bytes counted, in one request", c)
		}
		// The payload counted is the texts the run sent, nothing else.
		texts := make([]int64, 5)
		for i := range texts {
			for k := (c.History + i) * c.Ops; k < (c.History+i+1)*c.Ops; k++ {
				texts[i] += int64(len(corpus[corpusIndex(k)]))
			}
		}
		if !slices.Contains(texts, c.RawBytes) {
			t.Errorf("catch-up %+v counted %d payload bytes; its runs sent texts of %v", c, c.RawBytes, texts)
		}
		sorted := slices.Sorted(slices.Values(c.Times))
		if len(sorted) != 5 || c.CatchUp.Duration != sorted[2] {
			t.Errorf("catch-up times %v, reported %v: want five runs and the median", c.Times, c.CatchUp.Duration)
		}
	}
	if zstd, plain := r.CatchUp[0].CatchUp.WireBytes, r.CatchUp[4].CatchUp.WireBytes; zstd >= plain {
		t.Errorf("compressed catch-up %d bytes, uncompressed %d: compression saved nothing", zstd, plain)
	}
	if len(r.Idle) != 1 || r.Idle[0].RSSAfter == 0 {
		t.Errorf("idle results %+v", r.Idle)
	}
	if len(r.Storage) != 1 || r.Storage[0].DiskBytes <= 0 || r.Storage[0].PayloadBytes <= 0 {
		t.Errorf("storage results %+v", r.Storage)
	}
	md := r.Markdown()
	for _, want := range []string{"Durable ingest", "Live fan-out", "Catch-up", "Idle devices", "Storage", fmt.Sprintf("| %.2f |", r.CatchUp[2].Scaling())} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks a %q section", want)
		}
	}
}

func TestRatiosCompareFerryWithPeersAndLimits(t *testing.T) {
	r := &Report{
		Ingest: []IngestResult{
			{System: "ferry", Ops: 1, OpsPerSec: 10_000},
			{System: "ferry", Ops: 1, OpsPerSec: 20_000, Writers: 64},
			{System: "ferry", Ops: 1, Writers: 64, Batch: 1, Rate: 10_000, Ack: Summary{P99: 12 * time.Millisecond}},
			{System: "ferry", Ops: 1, OpsPerSec: 90_000, Rate: 90_000}, // open loop: not a throughput figure
			{System: "peer", Ops: 1, OpsPerSec: 40_000},
			{System: "peer", Ops: 1, Writers: 64, Batch: 1, Rate: 10_000, Ack: Summary{P99: 24 * time.Millisecond}},
		},
		Idle: []IdleResult{{System: "ferry", PerDevice: 30_000}, {System: "peer", PerDevice: 60_000}},
		CatchUp: []CatchUpResult{
			{System: "ferry", Ops: 10_000, Convs: 100, History: 1, RawBytes: 1000, CatchUp: CatchUp{WireBytes: 300}},
			{System: "ferry (uncompressed)", Ops: 10_000, Convs: 100, History: 1, RawBytes: 1000, CatchUp: CatchUp{WireBytes: 1000}},
		},
		Fanout: []FanoutResult{{System: "ferry", Devices: 1000, ConvSize: 1000, Latency: Summary{P99: 30 * time.Millisecond}}},
		Limits: Limits{Pebble: []PebbleResult{{Committers: 64, OpsPerSec: 100_000}}, Zstd: []ZstdResult{{OpsPerBatch: 1000, Ratio: 0.25}},
			PebbleLatency: []PebbleLatencyResult{
				{Committers: 64, Batch: 16, Rate: 10_000, Latency: Summary{N: 1, P99: time.Millisecond}}, // another shape
				{Committers: 64, Batch: 1, Rate: 10_000, Latency: Summary{N: 1, P99: 3 * time.Millisecond}},
			},
			Delivery: []DeliveryResult{{Conns: 1000, Bytes: 256, Deliveries: 5000, CPUPerDelivery: 20 * time.Microsecond}}},
		Machine: Machine{Cores: 2},
	}
	rows, cols := r.ratios(r.systems())
	if want := []string{"ferry / limit", "ferry / peer"}; !slices.Equal(cols, want) {
		t.Fatalf("columns %q, want %q", cols, want)
	}
	got := map[string][]string{}
	for _, row := range rows {
		got[strings.SplitN(row[0], ",", 2)[0]] = row[1:]
	}
	for metric, want := range map[string][]string{
		"durable ingest":         {"0.20", "0.50"}, // best closed loop 20k vs 100k commits/s and 40k ops/s
		"idle memory per device": {"–", "0.50"},
		"ack p99 at the ack-latency target's rate (limit: Pebble synced commits at that rate)": {"4.00", "0.50"}, // 12ms over the store's 3ms and the peer's 24ms
		"fan-out to 1k devices": {"3.00", "–"}, // p99 30ms over 1000 x 20µs on 2 cores
		"catch-up wire bytes / payload (limit: zstd's ratio on 1000-op batches)": {"1.20", "–"}, // 0.30 of raw vs zstd's 0.25
	} {
		if !slices.Equal(got[metric], want) {
			t.Errorf("%s: %q, want %q", metric, got[metric], want)
		}
	}
	// A peer that acknowledged from memory gets no ratio of durable acks;
	// its other ratios stay.
	for i := range r.Ingest {
		r.Ingest[i].Volatile = r.Ingest[i].System == "peer"
	}
	rows, _ = r.ratios(r.systems())
	for _, row := range rows {
		durable := strings.HasPrefix(row[0], "durable ingest") || strings.HasPrefix(row[0], "ack p99")
		if got := row[2]; durable != (got == "– (not durable)") {
			t.Errorf("%s against a volatile peer: %q", row[0], got)
		}
	}
	md := r.Markdown()
	if !strings.Contains(md, "## Ratios") {
		t.Error("the markdown report has no ratios")
	}
	// Its rows and targets say so too.
	if !strings.Contains(md, "| peer (not durable) |") || !strings.Contains(md, ", not durable") {
		t.Error("the markdown report does not mark the volatile peer's ingest not durable")
	}
	for _, want := range []string{"12.0ms at 10k ops/s", "the store alone 3.0ms at that rate", "64 x 1 at 10k/s: p50 "} {
		if !strings.Contains(md, want) {
			t.Errorf("the markdown report lacks %q", want)
		}
	}
}

// recordingFerry is an in-process Ferry that logs when the workloads read
// its usage and flush its devices' acks.
type recordingFerry struct {
	*Ferry
	mu  sync.Mutex
	log []string
}

func (r *recordingFerry) note(s string) {
	r.mu.Lock()
	r.log = append(r.log, s)
	r.mu.Unlock()
}

func (r *recordingFerry) Usage() (Usage, error) { r.note("usage"); return r.Ferry.Usage() }
func (r *recordingFerry) FlushAcks()            { r.note("flush"); r.Ferry.FlushAcks() }
func (r *recordingFerry) ResetPeakRSS() error   { r.note("reset peak"); return r.Ferry.ResetPeakRSS() }

// TestCPUCountsTheAcks: the server's work for an op goes on until the acks
// devices hold back are taken, so fan-out and ingest have the devices send
// them before the server's CPU is last read; a history's acks are sent
// before its first read. The peak RSS starts afresh with that read, after
// the history.
func TestCPUCountsTheAcks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		run  func(System) error
		want int // flushes
	}{
		{"fan-out", func(s System) error {
			_, err := Fanout(ctx, s, FanoutConfig{Devices: 4, ConvSize: 2, Rate: 40, Duration: 100 * time.Millisecond})
			return err
		}, 1},
		{"ingest with a history", func(s System) error {
			_, err := Ingest(ctx, s, IngestConfig{Writers: 4, Batch: 2, History: 200, Duration: 100 * time.Millisecond})
			return err
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := NewFerry(ctx, FerryConfig{Mode: FerryInProcess, Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			r := &recordingFerry{Ferry: f}
			if err := tc.run(r); err != nil {
				t.Fatal(err)
			}
			firstUsage, firstFlush := slices.Index(r.log, "usage"), slices.Index(r.log, "flush")
			lastFlush := -1
			for i, c := range r.log {
				if c == "flush" {
					lastFlush = i
				}
			}
			// The run's usage starts before its acks are flushed, and is read
			// again after them: while the idle wait looks (three times at
			// least), and for the figure.
			if lastFlush < 0 || lastFlush < firstUsage || strings.Count(strings.Join(r.log[lastFlush:], " "), "usage") < 4 {
				t.Errorf("calls %q: want the run's acks flushed within its usage, and the server awaited idle after", r.log)
			}
			if tc.want == 2 && firstFlush > firstUsage {
				t.Errorf("calls %q: want the history's acks flushed before the first usage", r.log)
			}
			if n := strings.Count(strings.Join(r.log, " "), "flush"); n != tc.want {
				t.Errorf("calls %q: %d flushes, want %d", r.log, n, tc.want)
			}
			// The row's peak RSS starts with its usage: after the history.
			if reset := slices.Index(r.log, "reset peak"); reset < 0 || reset != firstUsage-1 || slices.Contains(r.log[reset+1:], "reset peak") {
				t.Errorf("calls %q: want the peak RSS reset once, just before the run's first usage", r.log)
			}
		})
	}
}

// soleDevice starts an in-process Ferry with cfg (its mode and folder
// set here) and connects the one device of its one conversation; both are
// closed when the test ends.
func soleDevice(t *testing.T, cfg FerryConfig) (*Ferry, Client) {
	t.Helper()
	ctx := t.Context()
	cfg.Mode, cfg.Dir = FerryInProcess, t.TempDir()
	f, err := NewFerry(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Prepare(ctx, 1, [][]int{{0}}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Connect(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

// TestFlushAcksSendsTheArmedAck: a device's ack held back (here the one of
// its own ops, which waits resumeAckDelay) goes at once.
func TestFlushAcksSendsTheArmedAck(t *testing.T) {
	f, cl := soleDevice(t, FerryConfig{})
	c := cl.(*ferryConn)
	done := make(chan error, 1)
	if err := c.Send(0, [][]byte{[]byte("hello")}, func(err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	state := func() (armed bool, held, acked uint64) {
		c.mu.Lock()
		armed = c.ackT != nil
		c.mu.Unlock()
		c.d.mu.Lock()
		defer c.d.mu.Unlock()
		return armed, c.d.held[0], c.d.acked[0]
	}
	// The push's result armed the ack before it answered the push.
	if armed, held, acked := state(); !armed || held <= acked {
		t.Fatalf("after the push: armed %v, held %d, acked %d; want an ack armed for what the device holds", armed, held, acked)
	}
	f.FlushAcks()
	if armed, held, acked := state(); armed || held != acked {
		t.Fatalf("after FlushAcks: armed %v, held %d, acked %d; want the ack sent", armed, held, acked)
	}
}

// TestFerryRestart: an in-process Ferry restarts on a store it reopens, at
// the same address, and an offline device then catches up on what it
// missed before the restart.
func TestFerryRestart(t *testing.T) {
	ctx := t.Context()
	f, err := NewFerry(ctx, FerryConfig{Mode: FerryInProcess, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Prepare(ctx, 2, [][]int{{0, 1}}); err != nil {
		t.Fatal(err)
	}
	device, err := f.Connect(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer device.Close()
	if err := device.Disconnect(); err != nil {
		t.Fatal(err)
	}
	writer, err := f.Connect(ctx, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sendBatches(writer, 5, roundRobin(1), func(j int) []byte { return corpus[j] }); err != nil {
		t.Fatal(err)
	}
	_ = writer.Close()
	eng, url := f.eng, f.URL()
	if err := f.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if f.eng == eng || f.URL() != url {
		t.Fatalf("after Restart: engine reopened %v, address %s (was %s)", f.eng != eng, f.URL(), url)
	}
	cu, err := device.CatchUp(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cu.Ops != 5 {
		t.Fatalf("caught up on %d ops after the restart, want 5", cu.Ops)
	}
}

// TestPreparedDevicesHoldTheCreation: a member's device starts holding the
// ops that created its conversation, so its first connection catches up on
// none of them (at 10,000 members they were 10^8 deliveries of setup), and
// it then receives what follows.
func TestPreparedDevicesHoldTheCreation(t *testing.T) {
	ctx := t.Context()
	f, err := NewFerry(ctx, FerryConfig{Mode: FerryInProcess, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Prepare(ctx, 3, [][]int{{0, 1, 2}}); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	c := &ferryConn{d: f.devs[2], onMsg: func(_ int, p []byte) { got <- p }, pending: map[uint64]func(error){}}
	n, _, err := c.open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n != 0 {
		t.Fatalf("the first catch-up brought %d ops; want none: the device holds the conversation's creation", n)
	}
	writer, err := f.Connect(ctx, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	pushed := make(chan error, 1)
	if err := writer.Send(0, [][]byte{corpus[0]}, func(err error) { pushed <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-pushed; err != nil {
		t.Fatalf("push: %v", err)
	}
	select {
	case p := <-got:
		if !bytes.Equal(p, corpus[0]) {
			t.Fatalf("the device received %q; want %q", p, corpus[0])
		}
	case <-time.After(time.Minute): // a guard, not a wait
		t.Fatal("the message pushed after the device connected never reached it")
	}
}

// A bench device with nothing to send heartbeats, so that the server does
// not end its session for silence (after three of its heartbeat
// intervals): the 10,000-device fan-out connects for longer than that. The
// device here stays quiet while the server sends five heartbeats, its
// cut-off passing more than once, and then pushes.
func TestDevicesHeartbeat(t *testing.T) {
	beats := make(chan struct{}, 16)
	_, c := soleDevice(t, FerryConfig{serverHeartbeat: 200 * time.Millisecond, clientHeartbeat: 20 * time.Millisecond,
		onHeartbeat: func() {
			select {
			case beats <- struct{}{}:
			default:
			}
		}})
	ended := c.(*ferryConn).done
	for range 5 {
		select {
		case <-beats:
		case err := <-ended:
			ended <- err // for Close, which waits for it
			t.Fatalf("the server ended the quiet session: %v", err)
		}
	}
	pushed := make(chan error, 1)
	if err := c.Send(0, [][]byte{corpus[0]}, func(err error) { pushed <- err }); err != nil {
		t.Fatal(err)
	}
	if err := <-pushed; err != nil {
		t.Fatalf("push after a quiet second: %v", err)
	}
}

// broken is a System whose every workload fails at Prepare.
type broken struct{ System }

func (broken) Name() string                                { return "broken" }
func (broken) Prepare(context.Context, int, [][]int) error { return errors.New("refused") }
func (broken) Close() error                                { return nil }

// A run of one workload (ferry-bench --only idle) still names its system
// in the targets table.
func TestTargetsNameSystemsOfEveryWorkload(t *testing.T) {
	for _, r := range []Report{
		{Idle: []IdleResult{{System: "ferry", Devices: 10, PerDevice: 40 << 10}}},
		{Storage: []StorageResult{{System: "ferry", Ops: 10, PayloadBytes: 90, DiskBytes: 100}}},
	} {
		if got := r.systems(); !slices.Equal(got, []string{"ferry"}) {
			t.Errorf("systems %q, want [ferry]", got)
		}
		md := r.Markdown()
		if !strings.Contains(md, "| metric | target | ferry |") {
			t.Errorf("targets table without ferry's column:\n%s", md)
		}
	}
}

// TestWireTargetSaysTheTextsFloor: the catch-up wire target's cell, and
// the zstd limit, say what zstd takes the texts alone to, the floor of
// compressed wire bytes over payload; a report from before that was
// measured says nothing of it.
func TestWireTargetSaysTheTextsFloor(t *testing.T) {
	rows := []CatchUpResult{
		{System: "ferry", Ops: 10_000, Convs: 100, History: 1, RawBytes: 1000, CatchUp: CatchUp{WireBytes: 510}},
		{System: "ferry (uncompressed)", Ops: 10_000, Convs: 100, History: 1, RawBytes: 1000, CatchUp: CatchUp{WireBytes: 1350}},
	}
	r := Report{CatchUp: rows, Limits: Limits{Zstd: []ZstdResult{
		{OpsPerBatch: 100, Ratio: 0.43, MBPerSec: 135, TextRatio: 0.47},
		{OpsPerBatch: 1000, Ratio: 0.37, MBPerSec: 147, TextRatio: 0.43},
	}}}
	md := r.Markdown()
	for _, want := range []string{
		"| catch-up bytes on the wire / payload | ≤ 0.45 | 0.51 (zstd takes the texts alone to 0.43) | 1.35 |",
		"100 ops per batch: ratio 0.43 at 135 MB/s, their texts alone 0.47; 1000 ops per batch: ratio 0.37 at 147 MB/s, their texts alone 0.43;",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("the report lacks %q:\n%s", want, md)
		}
	}
	r.Limits.Zstd[0].TextRatio, r.Limits.Zstd[1].TextRatio = 0, 0
	if md := r.Markdown(); strings.Contains(md, "texts alone") || !strings.Contains(md, "| ≤ 0.45 | 0.51 | 1.35 |") {
		t.Errorf("a report without the texts' ratio:\n%s", md)
	}
}

// TestIdleTargetShowsEverySize: the idle-memory target holds at each number
// of devices, so its cell shows each one measured.
func TestIdleTargetShowsEverySize(t *testing.T) {
	r := Report{Idle: []IdleResult{
		{System: "ferry", Devices: 1000, PerDevice: 17_500},
		{System: "ferry", Devices: 10000, PerDevice: 19_900},
	}}
	if md, want := r.Markdown(), "| idle memory per device | ≤ 20 KB | 17.5 / 19.9 KB (1000 / 10000 devices) |"; !strings.Contains(md, want) {
		t.Errorf("no row %q in:\n%s", want, md)
	}
}

// TestIngestTargetSaysTheHistoryRow: the throughput target gives the best
// closed-loop row, saying when it had a history, and the best with a
// history beside it when that is another; open-loop rows do not count.
func TestIngestTargetSaysTheHistoryRow(t *testing.T) {
	row := func(writers, batch, history int, opsPerSec, rate float64) IngestResult {
		return IngestResult{System: "ferry", Writers: writers, Batch: batch, History: history, Ops: 1000, OpsPerSec: opsPerSec, Rate: rate}
	}
	for _, c := range []struct {
		rows []IngestResult
		want string
	}{
		{[]IngestResult{row(64, 16, 0, 106_000, 0), row(64, 16, 500_000, 75_000, 0), row(64, 1, 0, 200_000, 200_000)},
			"| durable ingest, ack after fsync | ≥ 100k ops/s | 106k ops/s (64 writers x 16); 75k with 500k messages of history |"},
		{[]IngestResult{row(64, 16, 0, 70_000, 0), row(64, 16, 500_000, 75_000, 0)},
			"| durable ingest, ack after fsync | ≥ 100k ops/s | 75k ops/s (64 writers x 16, after 500k messages of history) |"},
		{[]IngestResult{row(64, 16, 0, 106_000, 0)},
			"| durable ingest, ack after fsync | ≥ 100k ops/s | 106k ops/s (64 writers x 16) |"},
	} {
		r := Report{Machine: Machine{Cores: 2}, Ingest: c.rows}
		if md := r.Markdown(); !strings.Contains(md, c.want) {
			t.Errorf("no row %q in:\n%s", c.want, md)
		}
	}
}

// TestAckTargetSaysSaturated: the ack-latency target reads the first
// open-loop row, and says when it served less than its rate, whose p99 is
// then the queue's.
func TestAckTargetSaysSaturated(t *testing.T) {
	row := func(rate, served float64) IngestResult {
		return IngestResult{System: "ferry", Writers: 64, Batch: 1, Rate: rate, OpsPerSec: served, Ops: 1000, Ack: Summary{P99: 600 * time.Millisecond}}
	}
	for _, c := range []struct {
		rows []IngestResult
		want string
	}{
		{[]IngestResult{row(10_000, 8_300), row(5_000, 5_000)}, "| ack latency | p99 ≤ 5 ms | 600ms at 10k ops/s (saturated: 8.3k served) |"},
		{[]IngestResult{row(10_000, 9_990)}, "| ack latency | p99 ≤ 5 ms | 600ms at 10k ops/s |"},
		// With the harness's CPU known, it says how busy the cores were:
		// (100 + 90 ms) per 1k ops at 9,990 ops/s on 2 cores.
		{[]IngestResult{busy(row(10_000, 9_990), 100*time.Millisecond, 90*time.Millisecond)}, "| ack latency | p99 ≤ 5 ms | 600ms at 10k ops/s (cores 95% busy) |"},
		{[]IngestResult{busy(row(10_000, 9_990), 100*time.Millisecond, 90*time.Millisecond)}, "| 600ms | 0.000ms | 0.000ms | 100ms | 90.0ms | 95% | – | – | 0.0 KB |"},
		{[]IngestResult{row(10_000, 9_990)}, "| 600ms | 0.000ms | 0.000ms | 0.000ms | – | – | – | – | 0.0 KB |"},
		// The first row on a store in use goes beside the target row.
		{[]IngestResult{row(10_000, 9_990), withHistory(row(5_000, 5_000), 500_000)}, "| ack latency | p99 ≤ 5 ms | 600ms at 10k ops/s; 600ms at 5.0k ops/s on a store in use (500k messages before) |"},
		// And how late the harness sent, when it knows.
		{[]IngestResult{late(busy(row(10_000, 9_990), 100*time.Millisecond, 90*time.Millisecond), 2200*time.Microsecond)}, "| ack latency | p99 ≤ 5 ms | 600ms at 10k ops/s (cores 95% busy; pushes sent 2.2ms late at p99) |"},
		{[]IngestResult{late(busy(row(10_000, 9_990), 100*time.Millisecond, 90*time.Millisecond), 2200*time.Microsecond)}, "| 100ms | 90.0ms | 95% | 2.2ms | – | 0.0 KB |"},
	} {
		r := Report{Machine: Machine{Cores: 2}, Ingest: c.rows}
		if md := r.Markdown(); !strings.Contains(md, c.want) {
			t.Errorf("no row %q in:\n%s", c.want, md)
		}
	}
}

func busy(x IngestResult, server, client time.Duration) IngestResult {
	x.CPUPerKOps, x.ClientCPUPerKOps = server, client
	return x
}

func withHistory(x IngestResult, n int) IngestResult {
	x.History = n
	return x
}

func late(x IngestResult, p99 time.Duration) IngestResult {
	x.SendLag = Summary{N: x.Ops, P99: p99}
	return x
}

// TestIngestCountsTheHarnesssCPU: an ingest run's client CPU is what the
// harness's process spent over it, and its busy share follows from it.
// The system here answers every push at once, in this process: the run is
// the harness's writer alone, keeping a core busy.
func TestIngestCountsTheHarnesssCPU(t *testing.T) {
	x, err := Ingest(t.Context(), &instant{fakeSystem{name: "instant"}}, IngestConfig{Writers: 1, Batch: 1, Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cores := runtime.NumCPU()
	t.Logf("client CPU %v per 1k ops over %d ops in %.2fs: busy %.2f of %d cores", x.ClientCPUPerKOps, x.Ops, x.Seconds, x.Busy(cores), cores)
	if b := x.Busy(cores); x.ClientCPUPerKOps <= 0 || b <= 0 || b > 1.1 {
		t.Errorf("client CPU %v per 1k ops over %d ops in %.2fs: busy %.2f of %d cores; want some, at most all of them",
			x.ClientCPUPerKOps, x.Ops, x.Seconds, b, cores)
	}
}

// instant is a system whose clients' pushes are answered at once.
type instant struct{ fakeSystem }

func (*instant) Connect(context.Context, int, func(int, []byte)) (Client, error) {
	return instantClient{}, nil
}

type instantClient struct{ fakeClient }

func (instantClient) Send(_ int, _ [][]byte, done func(error)) error {
	done(nil)
	return nil
}

// TestFanoutFloor: the CPU floor of a fan-out row is its deliveries per
// message times the server's and the client's CPU per delivery over the
// cores, and the row shows it with the p99's multiple of it.
func TestFanoutFloor(t *testing.T) {
	x := FanoutResult{System: "ferry", Devices: 1000, ConvSize: 1001, Messages: 40, Deliveries: 40000, Expected: 40000,
		Latency: Summary{P99: 45 * time.Millisecond}, First: Summary{N: 1000, Max: 70 * time.Millisecond},
		CPUPerKOps: 35 * time.Millisecond, ClientCPUPerKOps: 25 * time.Millisecond, ServerDelay: 9 * time.Millisecond}
	if got, want := x.Floor(2), 30*time.Millisecond; got != want {
		t.Errorf("floor on 2 cores: %v, want %v", got, want)
	}
	r := Report{Machine: Machine{Cores: 2}, Fanout: []FanoutResult{x}}
	if md, want := r.Markdown(), "| 70.0ms | 9.0ms | 35.0ms | 25.0ms | 30.0ms | 1.5 |"; !strings.Contains(md, want) {
		t.Errorf("no %q in the fan-out row:\n%s", want, md)
	}
	// A result from before the warm-up has no first message, nor a server
	// delay.
	old := Report{Machine: Machine{Cores: 2}, Fanout: []FanoutResult{x}}
	old.Fanout[0].First, old.Fanout[0].ServerDelay = Summary{}, 0
	if md, want := old.Markdown(), "| – | – | 35.0ms | 25.0ms | 30.0ms | 1.5 |"; !strings.Contains(md, want) {
		t.Errorf("no %q in the fan-out row of an old result:\n%s", want, md)
	}
	// A warm-up that timed out says how many of its deliveries came.
	short := Report{Machine: Machine{Cores: 2}, Fanout: []FanoutResult{x}}
	short.Fanout[0].First.N = 990
	if md, want := short.Markdown(), "| 70.0ms (990 of 1000 arrived) | 9.0ms | 35.0ms |"; !strings.Contains(md, want) {
		t.Errorf("no %q in the fan-out row of a short warm-up:\n%s", want, md)
	}
	// With the transport measured, the fan-out targets and the section
	// show its floor: 1000 deliveries of 20µs on 2 cores.
	// A delivery costs more among more sockets: the 10k floor comes from
	// the measure over 9,000 connections, not 1,000.
	r.Limits.Delivery = []DeliveryResult{
		{Conns: 1000, Bytes: 256, Deliveries: 5000, CPUPerDelivery: 20 * time.Microsecond},
		{Conns: 9000, Bytes: 256, Deliveries: 45000, CPUPerDelivery: 30 * time.Microsecond},
	}
	r.Fanout[0].ConvSize = 1000
	md := r.Markdown()
	for _, want := range []string{
		"| fan-out, 1 op to 1k online devices | p99 ≤ 10 ms | p99 45.0ms (transport floor 10.0ms) |",
		"both ends: 20.0µs among 1000 connections; 30.0µs among 9000 connections; the transport floor, what a message to N devices takes at least when each has its own connection and they share the server's 2 cores: 10.0ms to 1k devices, 150ms to 10k.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("no %q in:\n%s", want, md)
		}
	}
	x.ClientCPUPerKOps = 0 // an in-process server: the client's CPU is unknown
	if got := x.Floor(2); got != 0 {
		t.Errorf("floor without the client's CPU: %v, want none", got)
	}
}

// TestFailedWorkloadLeavesNoRow: a workload that fails is reported as an
// error, without an empty row in the tables (zeros, under a system without
// a name, which made a column of its own in the targets).
func TestFailedWorkloadLeavesNoRow(t *testing.T) {
	p := Profile{Name: "test", Ingest: []IngestConfig{{Writers: 1, Batch: 1}}, Fanout: []FanoutConfig{{Devices: 2, ConvSize: 2}}, Idle: []int{1}}
	sys := Factory{Name: "broken", New: func(context.Context, string) (System, error) { return broken{}, nil }}
	r, err := Run(t.Context(), p, []Factory{sys}, t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) != 3 || len(r.Ingest)+len(r.Fanout)+len(r.Idle) != 0 {
		t.Fatalf("%d errors and %d/%d/%d rows; want 3 errors and no rows", len(r.Errors), len(r.Ingest), len(r.Fanout), len(r.Idle))
	}
	if slices.Contains(r.systems(), "") {
		t.Fatalf("the report has a system without a name: %q", r.systems())
	}
}

// Run takes each row on every system before the next row, so that the
// figures compared side by side are taken close together, and the report
// still lists each system's rows together.
func TestRunInterleavesSystems(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four servers")
	}
	var started []string // Run starts one system at a time
	factory := func(name string) Factory {
		return Factory{Name: name, New: func(ctx context.Context, dir string) (System, error) {
			started = append(started, name)
			s, err := NewFerry(ctx, FerryConfig{Mode: FerryInProcess, Dir: dir})
			if err != nil {
				return nil, err
			}
			return renamed{System: s, name: name}, nil
		}}
	}
	p := Profile{Name: "test", Idle: []int{2, 3}}
	r, err := Run(t.Context(), p, []Factory{factory("a"), factory("b")}, t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 {
		t.Fatalf("workloads failed: %v", r.Errors)
	}
	if want := []string{"a", "b", "a", "b"}; !slices.Equal(started, want) {
		t.Errorf("systems started %v, want %v: each row on every system before the next", started, want)
	}
	var rows []string
	for _, x := range r.Idle {
		rows = append(rows, fmt.Sprintf("%s %d", x.System, x.Devices))
	}
	if want := []string{"a 2", "a 3", "b 2", "b 3"}; !slices.Equal(rows, want) {
		t.Errorf("idle rows %v, want %v: each system's together", rows, want)
	}
	if md := r.Markdown(); !strings.Contains(md, "Each workload row ran on every system in turn") {
		t.Errorf("the report does not say the rows were interleaved")
	}
	r.Interleaved = false // a report from before
	if md := r.Markdown(); strings.Contains(md, "in turn before the next row") {
		t.Errorf("a report of a run that did not interleave says it did")
	}
}

// renamed is a system under another name.
type renamed struct {
	System
	name string
}

func (s renamed) Name() string { return s.name }

// Ingest on a store with history first stores the history, in the
// conversations the writers then write to, and counts only the measured
// run's ops.
func TestIngestHistoryIsStoredFirst(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	// stored returns the ops the conversations hold besides the measured ones.
	stored := func(history int) int {
		f, err := NewFerry(t.Context(), FerryConfig{Mode: FerryInProcess, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		res, err := Ingest(t.Context(), f, IngestConfig{Writers: 8, Batch: 2, History: history, Duration: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.History != history || res.Ops == 0 {
			t.Fatalf("result %+v: want the history recorded and ops measured", res)
		}
		heads := 0
		for c, conv := range f.convs {
			a, err := f.eng.Authenticate(f.devs[c].token) // writer c is conversation c's first member
			if err != nil {
				t.Fatal(err)
			}
			_, head, err := f.eng.Vector(a, conv)
			if err != nil {
				t.Fatal(err)
			}
			heads += int(head)
		}
		return heads - res.Ops
	}
	setup := stored(0)
	withHistory := stored(253)
	if withHistory-setup != 253 {
		t.Fatalf("conversations hold %d ops besides the measured ones and the setup's %d; want the history's 253", withHistory-setup, setup)
	}
}

// TestDeliveriesCountEveryRound: the transport's measure writes every round
// to every connection, counts each delivery once its reader has it, and
// ends its readers.
func TestDeliveriesCountEveryRound(t *testing.T) {
	x, err := Deliveries(16, 64, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if x.Conns != 16 || x.Bytes != 64 || x.Deliveries < 16 || x.Deliveries%16 != 0 || x.CPUPerDelivery < 0 {
		t.Errorf("got %+v: want whole rounds over 16 connections of 64 bytes", x)
	}
}

// TestPebbleLatencyCommitsOnSchedule: the store's latency limit commits
// whole batches at the rate it is given, one latency per commit, and every
// record it counts is in the store.
func TestPebbleLatencyCommitsOnSchedule(t *testing.T) {
	dir := t.TempDir()
	const committers, batch, rate = 4, 3, 1200 // 400 commits a second, 100 each
	x, err := PebbleLatency(dir, committers, batch, rate, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// 40 commits are due in 100ms, 10 on each committer's schedule, which
	// starts within the first interval and ends at the deadline.
	if x.Committers != committers || x.Batch != batch || x.Rate != rate || x.Latency.N != 40 || x.Latency.Max <= 0 {
		t.Fatalf("got %+v: want 40 commits of 3 records, each with its latency", x)
	}
	db, err := pebble.Open(dir, &pebble.Options{Logger: quietLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	if n != x.Latency.N*batch {
		t.Fatalf("the store holds %d records for %d commits of %d", n, x.Latency.N, batch)
	}
	if _, err := PebbleLatency(t.TempDir(), 4, 1, 0, time.Millisecond); err == nil {
		t.Fatal("no error for a rate of 0")
	}
}

// TestOpenLoopGoesOnWhileACommitWaits: a commit that has not returned
// holds up none after it, its committer's included, as a writer's push
// waits for no ack; and its latency runs from its scheduled time until it
// returns.
func TestOpenLoopGoesOnWhileACommitWaits(t *testing.T) {
	const committers, batch, rate, d = 2, 1, 400, 50 * time.Millisecond // 20 commits, 5ms apart for each committer
	others := make(chan struct{}, 20)
	x, err := openLoop(committers, batch, rate, d, func(w int, i uint64) error {
		if w == 0 && i == 0 {
			// The first commit returns once the 19 others have: each of
			// them started while it waited.
			for range 19 {
				select {
				case <-others:
				case <-time.After(10 * time.Second): // a bound, not a wait for an event
					return errors.New("the other commits waited for the first")
				}
			}
			return nil
		}
		others <- struct{}{}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The last commit is due 47.5ms after the first (committer 1's tenth,
	// 2.5ms + 9 x 5ms), and the first returned after it started.
	if x.N != 20 || x.Max < 47*time.Millisecond {
		t.Fatalf("got %+v: want 20 commits, the slowest at least 47ms from its scheduled time", x)
	}
}

// TestOpenLoopStopsAtAFailedCommit: the first failed commit's error is
// returned, whatever the others' are, and no commit starts after it.
func TestOpenLoopStopsAtAFailedCommit(t *testing.T) {
	first := errors.New("disk gone")
	var calls atomic.Int64
	// 400 commits are due over a second; the first fails at once.
	_, err := openLoop(2, 1, 400, time.Second, func(w int, i uint64) error {
		calls.Add(1)
		if w == 0 {
			return first
		}
		return fmt.Errorf("another kind of error, committer %d", w)
	})
	if !errors.Is(err, first) && (err == nil || !strings.Contains(err.Error(), "another kind")) {
		t.Fatalf("error %v, want one of the commits'", err)
	}
	if n := calls.Load(); n >= 400 {
		t.Fatalf("%d commits started of the 400 due: want none after the first failure", n)
	}
}

// TestLatencyShapes: the store's latency is measured once for each
// open-loop shape, rows on a store in use sharing their new store's.
func TestLatencyShapes(t *testing.T) {
	got := latencyShapes([]IngestConfig{
		{Writers: 64, Batch: 1, Rate: 10_000, Duration: time.Second},
		{Writers: 64, Batch: 0, Rate: 5_000},
		{Writers: 64, Batch: 16, Rate: 20_000},
		{Writers: 64, Batch: 1, Rate: 5_000, History: 500_000},
		{Writers: 64, Batch: 1}, // closed loop
	})
	want := []IngestConfig{{Writers: 64, Batch: 1, Rate: 10_000}, {Writers: 64, Batch: 1, Rate: 5_000}, {Writers: 64, Batch: 16, Rate: 20_000}}
	if !slices.Equal(got, want) {
		t.Fatalf("shapes %+v, want %+v", got, want)
	}
}

// TestCatchUpAlongside runs the x1 and x10 catch-ups of CatchUpAlongside
// on two fake systems: their runs alternate, each pair led by the other
// system than the last, and each result is its own system's median.
func TestCatchUpAlongside(t *testing.T) {
	var order []string
	base := &fakeSystem{name: "base", log: &order, times: []time.Duration{5, 1, 4, 2, 3}}
	scaled := &fakeSystem{name: "scaled", log: &order, times: []time.Duration{50, 10, 40, 20, 30}}
	x1, x10, err := CatchUpAlongside(t.Context(), base, scaled, CatchUpConfig{Ops: 200, Convs: 3, History: 10})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"base", "scaled", "scaled", "base", "base", "scaled", "scaled", "base", "base", "scaled"}
	if !slices.Equal(order, want) {
		t.Errorf("catch-ups ran in the order %v, want %v", order, want)
	}
	if x1.History != 1 || x1.CatchUp.Duration != 3 || x1.Alongside != 0 {
		t.Errorf("x1 result %+v: want history 1, the median 3 of its own runs", x1)
	}
	if x10.History != 10 || x10.CatchUp.Duration != 30 || x10.Alongside != 3 || x10.Scaling() != 10 {
		t.Errorf("x10 result %+v: want history 10, the median 30, 3 alongside: scaling 10", x10)
	}
	// The device of each held its history before going offline.
	if base.held != 0 || scaled.held != 9*200 {
		t.Errorf("history received live: %d and %d ops, want 0 and %d", base.held, scaled.held, 9*200)
	}
	if _, _, err := CatchUpAlongside(t.Context(), base, scaled, CatchUpConfig{Ops: 200, Convs: 3, History: 1}); err == nil {
		t.Error("alongside at history x1: no error")
	}
}

// fakeSystem is a System without a server: client 1's messages reach
// client 0 while it is online, and a catch-up brings what it missed, in
// the time its next entry of times says.
type fakeSystem struct {
	name   string
	log    *[]string
	times  []time.Duration
	online func(int, []byte)
	held   int // messages the device received live
	missed int
}

func (f *fakeSystem) Name() string                                { return f.name }
func (f *fakeSystem) Prepare(context.Context, int, [][]int) error { return nil }
func (f *fakeSystem) Usage() (Usage, error)                       { return Usage{}, nil }
func (f *fakeSystem) DiskBytes(context.Context) (int64, error)    { return 0, nil }
func (f *fakeSystem) Close() error                                { return nil }

func (f *fakeSystem) Connect(_ context.Context, i int, onMessage func(int, []byte)) (Client, error) {
	if i == 0 {
		f.online = func(c int, p []byte) { f.held++; onMessage(c, p) }
	}
	return fakeClient{f, i}, nil
}

type fakeClient struct {
	f *fakeSystem
	i int
}

func (c fakeClient) Send(conv int, payloads [][]byte, done func(error)) error {
	for _, p := range payloads {
		if c.f.online != nil {
			c.f.online(conv, p)
		} else {
			c.f.missed++
		}
	}
	done(nil)
	return nil
}

func (c fakeClient) Disconnect() error {
	if c.i == 0 {
		c.f.online = nil
	}
	return nil
}

func (c fakeClient) CatchUp(context.Context) (CatchUp, error) {
	*c.f.log = append(*c.f.log, c.f.name)
	d := c.f.times[0]
	c.f.times = c.f.times[1:]
	n := c.f.missed
	c.f.missed = 0
	return CatchUp{Ops: n, Duration: d, RoundTrips: 1, WireBytes: 1}, nil
}

func (c fakeClient) Close() error { return nil }

// TestLiveDelayScraped: the live delays read from a server's /metrics, as
// from a ferryd process, are those it keeps.
func TestLiveDelayScraped(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	f, err := NewFerry(t.Context(), FerryConfig{Mode: FerryInProcess, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Fanout(t.Context(), f, FanoutConfig{Devices: 4, ConvSize: 2, Rate: 50, Duration: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	sum, n, err := f.LiveDelay()
	if err != nil || n == 0 || sum <= 0 {
		t.Fatalf("in-process live delay: %v over %d rounds (%v): want some", sum, n, err)
	}
	rec := httptest.NewRecorder()
	f.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	v, err := parseMetrics(rec.Body, "ferry_live_delay_seconds_sum", "ferry_live_delay_seconds_count")
	if err != nil {
		t.Fatal(err)
	}
	if got, m := time.Duration(v[0]*float64(time.Second)), uint64(v[1]); m != n || (got-sum).Abs() > time.Microsecond {
		t.Fatalf("scraped live delay: %v over %d rounds, want %v over %d", got, m, sum, n)
	}
	if _, err := parseMetrics(strings.NewReader("ferry_live_delay_seconds_sum 1\nferry_other 1\n"), "ferry_live_delay_seconds_sum", "ferry_live_delay_seconds_count"); err == nil {
		t.Error("metrics without the histogram's count: no error")
	}
}

// TestIngestCountsStoreWork: an ingest row says what the store flushed
// and compacted while it ran, here the flushes and compactions that a
// memtable of 1 MiB forces, and the counts scraped from /metrics, as from
// a ferryd process, are those the engine keeps.
func TestIngestCountsStoreWork(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server")
	}
	f, err := NewFerry(t.Context(), FerryConfig{Mode: FerryInProcess, Dir: t.TempDir(), memTableSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A 1 MiB memtable holds a few thousand ops (with their indexes and
	// feed entries); the writers send tens of thousands in a second,
	// thousands under the race detector, and on a machine busy with more
	// (a CI check beside a benchmark) fewer still: a row that flushed
	// nothing runs again, into the memtable the last one left, up to ten
	// times.
	var res IngestResult
	for range 10 {
		res, err = Ingest(t.Context(), f, IngestConfig{Writers: 4, Batch: 100, Duration: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d ops: %+v", res.Ops, res.StoreWork)
		if res.StoreWork == nil || res.StoreWork.Flushes > 0 {
			break
		}
	}
	if res.StoreWork == nil || res.StoreWork.Flushes == 0 {
		t.Fatalf("store work over %d ops with a 1 MiB memtable: %+v, want flushes", res.Ops, res.StoreWork)
	}
	before, err := f.StoreWork()
	if err != nil || before.Flushes < res.StoreWork.Flushes || before.Compactions < res.StoreWork.Compactions {
		t.Fatalf("store work so far %+v (%v), less than the row's %+v", before, err, res.StoreWork)
	}
	rec := httptest.NewRecorder()
	f.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	v, err := parseMetrics(rec.Body, "ferry_store_flushes_total", "ferry_store_compactions_total")
	if err != nil {
		t.Fatal(err)
	}
	// The row's last writes may still be flushing, and their compactions
	// to come: the scrape lands between the engine's counts before and
	// after it.
	after, err := f.StoreWork()
	if err != nil {
		t.Fatal(err)
	}
	got := StoreWork{Flushes: int64(v[0]), Compactions: int64(v[1])}
	if got.Flushes < before.Flushes || got.Flushes > after.Flushes || got.Compactions < before.Compactions || got.Compactions > after.Compactions {
		t.Errorf("scraped store work %+v; the engine counted %+v before the scrape and %+v after", got, before, after)
	}
	r := Report{Machine: Machine{Cores: 2}, Ingest: []IngestResult{res}}
	if cell := fmt.Sprintf(" | %d / %d | ", res.StoreWork.Flushes, res.StoreWork.Compactions); !strings.Contains(r.Markdown(), cell) {
		t.Errorf("the report's ingest row has no %q", cell)
	}
}

// TestCompareAlternatesBuilds: a comparison runs each row on both builds,
// a fresh system each time, the first of each pair flipping, and keeps
// each pair's figures; rows that do not match are not run, and a row that
// fails leaves an error, not figures.
func TestCompareAlternatesBuilds(t *testing.T) {
	var started []string
	build := func(name string, fail bool) Factory {
		return Factory{Name: name, New: func(context.Context, string) (System, error) {
			started = append(started, name)
			if fail {
				return nil, errors.New("no such binary")
			}
			return &instant{fakeSystem{name: name}}, nil
		}}
	}
	p := Profile{Name: "test", Ingest: []IngestConfig{
		{Writers: 1, Batch: 1, Duration: 20 * time.Millisecond},
		{Writers: 2, Batch: 1, Duration: 20 * time.Millisecond},
	}}
	log := slog.New(slog.DiscardHandler)
	c := Compare(t.Context(), p, build("base", false), build("next", false), 3, "ingest 1 writers", t.TempDir(), log)
	if want := []string{"base", "next", "next", "base", "base", "next"}; !slices.Equal(started, want) {
		t.Errorf("runs %v, want %v: each pair's first build flips, and only the matching row runs", started, want)
	}
	if len(c.Errors) > 0 || len(c.Rows) != 4 {
		t.Fatalf("rows %+v, errors %v: want the row's 4 figures", c.Rows, c.Errors)
	}
	for _, x := range c.Rows {
		if x.Workload != "ingest 1 writers x 1" || len(x.Base) != 3 || len(x.Next) != 3 {
			t.Errorf("row %+v: want the ingest row's figure from each of 3 pairs on each build", x)
		}
	}
	if x := c.Rows[0]; x.Figure != "ops/s" || x.Lower || slices.Min(x.Base) <= 0 || slices.Min(x.Next) <= 0 {
		t.Errorf("first figure %+v: want every run's ops/s, more being better", x)
	}

	p.Idle = []int{3}
	c = Compare(t.Context(), p, build("base", false), build("next", false), 2, "idle", t.TempDir(), log)
	if len(c.Errors) > 0 || len(c.Rows) != 1 || c.Rows[0].Workload != "idle 3" || c.Rows[0].Figure != "memory per device, KB" || len(c.Rows[0].Next) != 2 {
		t.Errorf("idle rows %+v, errors %v: want the memory per device of 2 pairs", c.Rows, c.Errors)
	}

	started = nil
	p.Idle = nil
	c = Compare(t.Context(), p, build("base", false), build("next", true), 2, "", t.TempDir(), log)
	if len(c.Rows) != 0 || len(c.Errors) != 2 || !strings.Contains(c.Errors[0], "no such binary") {
		t.Errorf("with the next build failing: rows %+v, errors %v; want no rows and an error for each row", c.Rows, c.Errors)
	}
}

// TestComparedFigures: next/base is the ratio of the medians, and better
// counts the pairs in which the next build did better, which for a figure
// where less is better is a lower value.
func TestComparedFigures(t *testing.T) {
	lat := Compared{Workload: "fan-out 1000 devices in 1000", Figure: "p99, ms", Lower: true,
		Base: []float64{40, 50, 30, 45}, Next: []float64{36, 52, 27, 40}}
	if got, want := lat.Ratio(), 38.0/42.5; math.Abs(got-want) > 1e-9 {
		t.Errorf("ratio %v, want %v", got, want)
	}
	if got := lat.Better(); got != 3 {
		t.Errorf("%d pairs better, want 3", got)
	}
	ops := Compared{Workload: "ingest 64 writers x 16", Figure: "ops/s", Base: []float64{80_000, 70_000, 90_000}, Next: []float64{85_000, 69_000, 91_000}}
	if got := ops.Better(); got != 2 {
		t.Errorf("%d pairs better for ops/s, want 2", got)
	}
	c := Comparison{Profile: "short", Machine: Machine{CPU: "AMD EPYC", Cores: 2}, Base: "base", Next: "next", Pairs: 4, Rows: []Compared{lat, ops}}
	md := c.Markdown()
	for _, want := range []string{
		"| fan-out 1000 devices in 1000 | p99, ms | 42.50 | 38.00 | 0.89 | 3 of 4 |",
		"| ingest 64 writers x 16 | ops/s | 80000 | 85000 | 1.06 | 2 of 3 |",
		"about once in 8 comparisons",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("no %q in:\n%s", want, md)
		}
	}
}

// TestInProcessRefusesTooManyClients: more clients than this process may
// open both ends of is refused before any signs up, saying what to do,
// where the run would otherwise never end (accepts failing for want of
// files).
func TestInProcessRefusesTooManyClients(t *testing.T) {
	f, err := NewFerry(t.Context(), FerryConfig{Mode: FerryInProcess, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = f.Prepare(t.Context(), openFiles(), nil)
	if err == nil || !strings.Contains(err.Error(), "--target process") {
		t.Fatalf("Prepare of %d clients in process: %v, want refused, naming --target process", openFiles(), err)
	}
}

// TestIngestLimitHasTheBestRowsShape: durable ingest is read against raw
// Pebble committing as many records a commit, with as many committers, as
// Ferry's best row pushed ops a push with writers; a report from before
// that shape was measured says it compares with one record a commit.
func TestIngestLimitHasTheBestRowsShape(t *testing.T) {
	r := &Report{
		Ingest: []IngestResult{
			{System: "ferry", Ops: 1, Writers: 64, Batch: 1, OpsPerSec: 20_000},
			{System: "ferry", Ops: 1, Writers: 64, Batch: 16, OpsPerSec: 98_000},
		},
		Limits: Limits{Pebble: []PebbleResult{
			{Committers: 64, Batch: 1, OpsPerSec: 140_000},
			{Committers: 64, Batch: 16, OpsPerSec: 392_000},
			{Committers: 256, Batch: 16, OpsPerSec: 500_000},
		}},
	}
	ingestRow := func(r *Report) []string {
		rows, _ := r.ratios(r.systems())
		for _, row := range rows {
			if strings.HasPrefix(row[0], "durable ingest") {
				return row
			}
		}
		return nil
	}
	if row := ingestRow(r); !strings.Contains(row[0], "64 committers of 16 records a commit") || row[1] != "0.25" {
		t.Errorf("with the best row's shape measured: %q, want 98k against 392k", row)
	}
	r.Limits.Pebble = []PebbleResult{{Committers: 64, OpsPerSec: 140_000}} // an older report's
	if row := ingestRow(r); !strings.Contains(row[0], "64 committers of one record a commit") || row[1] != "0.70" {
		t.Errorf("with one record a commit alone: %q, want 98k against 140k", row)
	}
	if md := r.Markdown(); !strings.Contains(md, "64 committers 140k/s;") {
		t.Errorf("the limit line: %s", md)
	}
}

// TestResetPeakRSS: a peak RSS started afresh forgets the memory a process
// held before, as a row's peak must forget its history's.
func TestResetPeakRSS(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	const size = 64 << 20
	held := make([]byte, size)
	for i := 0; i < len(held); i += 4096 {
		held[i] = 1
	}
	runtime.KeepAlive(held)
	held = nil
	debug.FreeOSMemory() // the RSS falls; the peak stays
	before, err := ProcessUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if before.PeakRSS < before.RSS+size/2 {
		t.Fatalf("peak %d, RSS %d: want the freed %d bytes in the peak", before.PeakRSS, before.RSS, size)
	}
	if err := ResetPeakRSS(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	after, err := ProcessUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after.PeakRSS > before.PeakRSS-size/2 {
		t.Errorf("peak %d after the reset, %d before: want the freed %d bytes gone from it", after.PeakRSS, before.PeakRSS, size)
	}
}
