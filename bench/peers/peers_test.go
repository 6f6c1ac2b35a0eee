package peers

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrysync/ferry/bench"
)

// tiny is every workload at a tiny size. Its catch-ups miss more than 300
// messages in one conversation, beyond Centrifugo's default recovery limit,
// and the last runs two servers at once (x1 alongside x3): two results.
var tiny = bench.Profile{
	Name:          "tiny",
	Ingest:        []bench.IngestConfig{{Writers: 4, Batch: 3, Duration: 200 * time.Millisecond}},
	IngestLatency: []bench.IngestConfig{{Writers: 4, Batch: 1, Rate: 200, Duration: 200 * time.Millisecond}},
	Fanout:        []bench.FanoutConfig{{Devices: 6, ConvSize: 3, Rate: 40, Duration: 200 * time.Millisecond}},
	CatchUp:       []bench.CatchUpConfig{{Ops: 400, Convs: 1}, {Ops: 300, Convs: 4}, {Ops: 100, Convs: 2, History: 3, Alongside: true}},
	Idle:          []int{10},
	StorageOps:    400,
}

// binDir holds the servers the tests build, shared by the tests of one run
// and removed by TestMain.
var binDir = sync.OnceValues(func() (string, error) { return os.MkdirTemp("", "ferry-peers-bin-") })

func TestMain(m *testing.M) {
	code := m.Run()
	if dir, err := binDir(); err == nil {
		_ = os.RemoveAll(dir)
	}
	os.Exit(code)
}

// binary builds a peer's server with Build, once per test binary. The
// first build of Centrifugo takes minutes; later ones come from the build
// cache.
func binary(module, version, name string) func() (string, error) {
	return sync.OnceValues(func() (string, error) {
		dir, err := binDir()
		if err != nil {
			return "", err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		return Build(ctx, module, version, dir, name)
	})
}

var (
	natsServer = binary(NATSServerModule, NATSServerVersion, "nats-server")
	centrifugo = binary(CentrifugoModule, CentrifugoVersion, "centrifugo")
)

// runTiny runs the tiny profile on one system and checks that the adapter
// counts what the workloads claim: every fanned-out message arrives once at
// each other member, and catch-up brings exactly the missed messages.
func runTiny(t *testing.T, f bench.Factory, storage bool) *bench.Report {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	r, err := bench.Run(t.Context(), tiny, []bench.Factory{f}, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 {
		t.Fatalf("workloads failed: %v", r.Errors)
	}
	if len(r.Ingest) != 2 || r.Ingest[0].Ops == 0 || r.Ingest[0].Ops%3 != 0 || r.Ingest[1].Ack.N == 0 {
		t.Errorf("ingest results %+v: want ops in whole batches of 3 and ack latencies", r.Ingest)
	}
	if r.Ingest[0].CPUPerKOps <= 0 || r.Ingest[0].PeakRSS <= 0 {
		t.Errorf("ingest measured no server CPU or memory: %+v", r.Ingest[0])
	}
	if len(r.Fanout) != 1 || r.Fanout[0].Messages == 0 || r.Fanout[0].Deliveries != r.Fanout[0].Messages*2 {
		t.Errorf("fan-out results %+v: want each message delivered to both other members exactly once", r.Fanout)
	}
	if f := r.Fanout[0].First; f.N != 4 {
		t.Errorf("fan-out's warm-up %+v: want its message to each of the 2 conversations at both other members", f)
	}
	if len(r.CatchUp) != len(tiny.CatchUp)+1 {
		t.Fatalf("%d catch-up results, want %d", len(r.CatchUp), len(tiny.CatchUp)+1)
	}
	if x3 := r.CatchUp[3]; x3.History != 3 || x3.Alongside != r.CatchUp[2].CatchUp.Duration {
		t.Errorf("catch-up at x3 %+v: want the median of the x1 runs alongside it, %v", x3, r.CatchUp[2].CatchUp.Duration)
	}
	for _, c := range r.CatchUp {
		if c.CatchUp.Ops != c.Ops || c.CatchUp.WireBytes < c.RawBytes || c.CatchUp.RoundTrips == 0 {
			t.Errorf("catch-up %+v: want exactly the missed ops, with at least their payload bytes and round trips counted", c)
		}
	}
	if len(r.Idle) != 1 || r.Idle[0].RSSAfter == 0 {
		t.Errorf("idle results %+v", r.Idle)
	}
	if storage && (len(r.Storage) != 1 || r.Storage[0].DiskBytes < r.Storage[0].PayloadBytes) {
		t.Errorf("storage results %+v: want at least the payload on disk", r.Storage)
	}
	t.Log(r.Markdown())
	return r
}

func TestNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts nats-server")
	}
	bin, err := natsServer()
	if err != nil {
		t.Fatal(err)
	}
	runTiny(t, NATSFactory(bin), true)
}

func TestCentrifugo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts centrifugo")
	}
	bin, err := centrifugo()
	if err != nil {
		t.Fatal(err)
	}
	runTiny(t, CentrifugoFactory(bin, false), false)
}

// TestCentrifugoRedis runs the tiny profile, storage included, on
// Centrifugo with the Redis engine, when redis-server is installed; it is
// skipped otherwise.
func TestCentrifugoRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts centrifugo and redis-server")
	}
	redis, err := LookRedisServer()
	if err != nil {
		t.Skipf("centrifugo+redis not tested: %v", err)
	}
	bin, err := centrifugo()
	if err != nil {
		t.Fatal(err)
	}
	r := runTiny(t, CentrifugoRedisFactory(bin, redis), false)
	if r.Ingest[0].System != "centrifugo+redis" {
		t.Errorf("system %q, want centrifugo+redis", r.Ingest[0].System)
	}
	// The rewritten AOF's base is an RDB file, whose stream listpacks are
	// LZF-compressed: the store may be smaller than the payload, but not
	// below a quarter of it for chat text.
	if len(r.Storage) != 1 || r.Storage[0].DiskBytes < r.Storage[0].PayloadBytes/4 {
		t.Errorf("storage results %+v: want the payload on disk, compressed at most 4 times", r.Storage)
	}
}

// TestCentrifugoDefaultLimits checks what users get by default: a
// channel that missed more than 300 publications is not recovered, and
// the client catches up by paging through history, 300 per call.
func TestCentrifugoDefaultLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts centrifugo")
	}
	bin, err := centrifugo()
	if err != nil {
		t.Fatal(err)
	}
	f := CentrifugoFactory(bin, true)
	r, err := bench.Run(t.Context(), bench.Profile{Name: "tiny", CatchUp: tiny.CatchUp}, []bench.Factory{f}, t.TempDir(),
		slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Errors) > 0 || len(r.CatchUp) != len(tiny.CatchUp)+1 {
		t.Fatalf("catch-ups %+v, errors %v", r.CatchUp, r.Errors)
	}
	t.Log(r.Markdown())
	// 400 missed in one channel: the subscribe recovers nothing, then two
	// history calls (300 + 100) bring them: 1 connect + 1 subscribe + 2.
	if c := r.CatchUp[0]; c.CatchUp.Ops != 400 || c.CatchUp.RoundTrips != 4 {
		t.Errorf("catch-up of 400 in one channel with the default limit: %+v, want 400 ops in 4 round trips", c.CatchUp)
	}
	// 300 over 4 channels, 75 each: recovered in the subscribe replies.
	if c := r.CatchUp[1]; c.CatchUp.Ops != 300 || c.CatchUp.RoundTrips != 5 {
		t.Errorf("catch-up of 300 over 4 channels: %+v, want 300 ops in 5 round trips", c.CatchUp)
	}
}

// TestNotesRendered checks that the peers' notes reach the markdown report,
// with Centrifugo's default recovery limit and the Redis engine's status:
// its setup when centrifugo+redis runs, why not otherwise.
func TestNotesRendered(t *testing.T) {
	r := &bench.Report{Notes: append(append(NATSNotes(), CentrifugoNotes(true, false)...), CommonNotes()...)}
	md := r.Markdown()
	for _, want := range []string{"## Notes", "sync_interval: always", "recovery_max_publication_limit", "are 300",
		"Redis engine (appendfsync always): not measured"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	md = (&bench.Report{Notes: CentrifugoNotes(false, true)}).Markdown()
	for _, want := range []string{"centrifugo+redis", "--appendonly yes --appendfsync always --save \"\" --daemonize no",
		"BGREWRITEAOF", "sums of centrifugo's and redis-server's"} {
		if !strings.Contains(md, want) {
			t.Errorf("report with centrifugo+redis lacks %q:\n%s", want, md)
		}
	}
	// The notes only: the report's header may say fsync was not measured.
	notes := md[strings.Index(md, "## Notes"):]
	if strings.Contains(notes, "not measured") || strings.Contains(notes, "memory engine: a publish") {
		t.Errorf("report with only centrifugo+redis says the Redis engine was not measured, or describes the memory engine:\n%s", md)
	}
}
