package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"
)

// Comparison is two builds of a system measured against each other: the
// base (what is there) and the next (a change). Each of a profile's ingest,
// fan-out, catch-up and idle rows ran Pairs times on each build, alternately, on
// fresh servers, the build going first flipping every pair, so that both
// saw the same phases of a shared machine. A machine like the project's
// drifts by a fifth between runs minutes apart, more than most changes
// move a figure: what tells a change is the pairs agreeing.
type Comparison struct {
	Profile string     `json:"profile"`
	Date    time.Time  `json:"date"`
	Machine Machine    `json:"machine"`
	Base    string     `json:"base"`
	Next    string     `json:"next"`
	Pairs   int        `json:"pairs"`
	Rows    []Compared `json:"rows"`
	Errors  []string   `json:"errors,omitempty"`
}

// Compared is one figure of one workload row: its value in each pair's
// run of the base and of the next build.
type Compared struct {
	Workload string    `json:"workload"`
	Figure   string    `json:"figure"`
	Lower    bool      `json:"lower_is_better"`
	Base     []float64 `json:"base"`
	Next     []float64 `json:"next"`
}

// Ratio is the next build's median over the base's.
func (c Compared) Ratio() float64 { return median(c.Next) / median(c.Base) }

// Better counts the pairs in which the next build did better than the base:
// a lower value, or a higher one, as the figure wants.
func (c Compared) Better() int {
	n := 0
	for i := range min(len(c.Base), len(c.Next)) {
		if c.Lower && c.Next[i] < c.Base[i] || !c.Lower && c.Next[i] > c.Base[i] {
			n++
		}
	}
	return n
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// figure is one measure of a run.
type figure struct {
	name  string
	lower bool // less is better
	value float64
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func ingestFigures(x IngestResult) []figure {
	return []figure{
		{"ops/s", false, x.OpsPerSec},
		{"ack p50, ms", true, millis(x.Ack.P50)},
		{"ack p99, ms", true, millis(x.Ack.P99)},
		{"server CPU per 1k ops, ms", true, millis(x.CPUPerKOps)},
	}
}

func fanoutFigures(x FanoutResult) []figure {
	return []figure{
		{"p50, ms", true, millis(x.Latency.P50)},
		{"p99, ms", true, millis(x.Latency.P99)},
		{"server CPU per 1k deliveries, ms", true, millis(x.CPUPerKOps)},
	}
}

func idleFigures(x IdleResult) []figure {
	return []figure{{"memory per device, KB", true, float64(x.PerDevice) / 1000}}
}

func catchUpFigures(x CatchUpResult) []figure {
	return []figure{
		{"time, ms", true, millis(x.CatchUp.Duration)},
		{"wire bytes", true, float64(x.CatchUp.WireBytes)},
	}
}

// Compare measures next against base on p's ingest, fan-out, catch-up and
// idle rows whose names contain match (all when empty), each row pairs times (at
// least once) on each build: see Comparison. A catch-up row that would run
// alongside its x1 row (CatchUpConfig.Alongside) runs alone here: the two
// builds are what is compared. A row whose run fails has no figures and an
// error.
func Compare(ctx context.Context, p Profile, base, next Factory, pairs int, match, dir string, log *slog.Logger) *Comparison {
	pairs = max(pairs, 1)
	c := &Comparison{Profile: p.Name, Date: time.Now().UTC(), Machine: machine(), Base: base.Name, Next: next.Name, Pairs: pairs}
	rn := &runner{ctx: ctx, dir: dir, log: log}
	builds := [2]Factory{base, next}
	row := func(kind, what string, measure func(System) ([]figure, error)) {
		if !base.runs(kind) || !strings.Contains(what, match) {
			return
		}
		var runs [2][][]figure // by build, by pair
		for i := range pairs {
			for _, k := range pairOrder(i) {
				var figs []figure
				err := rn.on(what, builds[k], 1, func(ss []System) (err error) {
					figs, err = measure(ss[0])
					return err
				})
				if err != nil {
					c.Errors = append(c.Errors, err.Error())
					return
				}
				runs[k] = append(runs[k], figs)
			}
		}
		for j, f := range runs[0][0] {
			x := Compared{Workload: what, Figure: f.name, Lower: f.lower}
			for i := range pairs {
				x.Base, x.Next = append(x.Base, runs[0][i][j].value), append(x.Next, runs[1][i][j].value)
			}
			c.Rows = append(c.Rows, x)
		}
	}
	for _, cfg := range append(append([]IngestConfig{}, p.Ingest...), p.IngestLatency...) {
		row("ingest", cfg.name(), func(s System) ([]figure, error) {
			x, err := Ingest(ctx, s, cfg)
			return ingestFigures(x), err
		})
	}
	for _, cfg := range p.Fanout {
		row("fanout", cfg.name(), func(s System) ([]figure, error) {
			x, err := Fanout(ctx, s, cfg)
			return fanoutFigures(x), err
		})
	}
	for _, cfg := range p.CatchUp {
		cfg.Alongside = false
		row("catchup", cfg.name(), func(s System) ([]figure, error) {
			if cfg.Cold && !canRestart(s) {
				return nil, fmt.Errorf("a cold catch-up restarts the server, which %s cannot", s.Name())
			}
			x, err := CatchUpRun(ctx, s, cfg)
			return catchUpFigures(x), err
		})
	}
	for _, n := range p.Idle {
		row("idle", idleName(n), func(s System) ([]figure, error) {
			x, err := Idle(ctx, s, n)
			return idleFigures(x), err
		})
	}
	return c
}

// pairOrder is the order of two systems (0 the base, 1 the other) in
// their i-th pair of runs: the base first in even pairs, the other first in
// odd ones, so that neither always runs on a machine the other has just
// warmed. Compare's builds and CatchUpAlongside's histories take turns so.
func pairOrder(i int) [2]int {
	if i%2 == 1 {
		return [2]int{1, 0}
	}
	return [2]int{0, 1}
}

// Markdown renders the comparison.
func (c *Comparison) Markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Ferry A/B comparison\n\nProfile `%s`, %s. Machine: %s. Base: %s; next: %s.\n\n", c.Profile, c.Date.Format("2006-01-02 15:04 UTC"), c.Machine, c.Base, c.Next)
	p("Each row ran %d times on each build, alternately, on fresh servers, the build going first flipping every pair. The figures are medians over the runs; next/base is the ratio of the medians. Better says in how many of the pairs the next build did better (where less is better, a lower value). On a shared machine a ratio that the pairs do not agree on is noise: even with no change at all, all of %d pairs agree one way or the other about once in %d comparisons.\n\n", c.Pairs, c.Pairs, 1<<max(c.Pairs-1, 0))
	p("| workload | figure | base | next | next/base | better |\n|---|---|---|---|---|---|\n")
	for _, x := range c.Rows {
		p("| %s | %s | %s | %s | %.2f | %d of %d |\n", x.Workload, x.Figure, number(median(x.Base)), number(median(x.Next)), x.Ratio(), x.Better(), min(len(x.Base), len(x.Next)))
	}
	if len(c.Errors) > 0 {
		p("\n## Errors\n\n")
		for _, e := range c.Errors {
			p("- %s\n", e)
		}
	}
	return b.String()
}

// number formats a figure to three significant digits, without an exponent.
func number(x float64) string {
	switch {
	case math.Abs(x) >= 1000:
		return fmt.Sprintf("%.0f", x)
	case math.Abs(x) >= 100:
		return fmt.Sprintf("%.1f", x)
	case math.Abs(x) >= 10:
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%.3f", x)
}
