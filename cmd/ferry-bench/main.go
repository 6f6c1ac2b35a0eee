// Command ferry-bench runs Ferry's benchmark workloads and writes a report.
//
//	ferry-bench [--profile short|full] [--target process|inprocess|URL] [--md FILE] [--json FILE]
//	ferry-bench --compare BASE_FERRYD [--ferryd NEXT_FERRYD] [--pairs N] [--only ...] [--rows TEXT]
//
// By default it builds ferryd, starts it for each workload on a fresh store
// in a temporary folder (so its CPU and memory are measured on their own),
// and prints the markdown report. With --compare it measures two ferryd
// binaries against each other instead, each workload row alternately on
// both (bench.Compare): what a change does, on a machine whose speed drifts
// more than the change. The workloads live in package bench; the
// comparison with NATS JetStream and Centrifugo runs from bench/peers.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"

	"github.com/ferrysync/ferry/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferry-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	profile := fs.String("profile", "short", "workload matrix: short (make bench) or full (make bench-full)")
	target := fs.String("target", "process", "process (build and start ferryd), inprocess, or the URL of a running server (started with --allow-registration --sign-in-limit 0 --push-limit 0: the bench signs up every client from one address, and pushes up to a million ops as one user)")
	ferryd := fs.String("ferryd", "", "ferryd binary for --target process (default: go build ./cmd/ferryd)")
	dir := fs.String("dir", "", "work folder for stores (default: a temporary folder)")
	md := fs.String("md", "", "write the markdown report here (default: stdout)")
	js := fs.String("json", "", "write the JSON report here")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of this process here (with --target inprocess it includes the server)")
	render := fs.String("render", "", "render the markdown of a JSON report written earlier (no run)")
	only := fs.String("only", "", "comma-separated workloads to run (ingest, fanout, catchup, idle, storage, limits); default all")
	compare := fs.String("compare", "", "a base ferryd binary to compare --ferryd (default: go build ./cmd/ferryd) with, row by row, alternately: ingest, fan-out, catch-up and idle only")
	pairs := fs.Int("pairs", 4, "with --compare: runs of each row on each binary")
	rows := fs.String("rows", "", "with --compare: only the rows whose names contain this text, e.g. \"fan-out 1000 devices in 1000\"")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	// The reports' folders are made before a run of minutes, which would
	// otherwise fail at its end for want of them.
	for _, path := range []string{*md, *js, *cpuprofile} {
		if path != "" {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
		}
	}
	if *render != "" {
		raw, err := os.ReadFile(*render)
		if err != nil {
			return err
		}
		var r bench.Report
		if err := json.Unmarshal(raw, &r); err != nil {
			return fmt.Errorf("--render %s: %w", *render, err)
		}
		if *md != "" {
			return os.WriteFile(*md, []byte(r.Markdown()), 0o644)
		}
		_, err = fmt.Fprint(stdout, r.Markdown())
		return err
	}
	p, ok := map[string]bench.Profile{"short": bench.Short, "full": bench.Full}[*profile]
	if !ok {
		return fmt.Errorf("--profile %q: use short or full", *profile)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	work := *dir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "ferry-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	if *compare != "" {
		return runCompare(ctx, p, *compare, *ferryd, *target, *only, *rows, *pairs, work, log, *md, *js, stdout)
	}
	systems, err := Systems(ctx, *target, *ferryd, work)
	if err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *only != "" {
		want := strings.Split(*only, ",")
		for _, w := range want {
			if !slices.Contains([]string{"ingest", "fanout", "catchup", "idle", "storage", "limits"}, w) {
				return fmt.Errorf("--only: unknown workload %q", w)
			}
		}
		systems = bench.Restrict(systems, want)
		if !slices.Contains(want, "limits") {
			p.LimitTime = 0
		}
	}
	r, err := bench.Run(ctx, p, systems, work, log)
	if err != nil {
		return err
	}
	return r.Write(*md, *js, stdout)
}

// runCompare measures the ferryd binary next (built from the working tree
// when empty) against base.
func runCompare(ctx context.Context, p bench.Profile, base, next, target, only, rows string, pairs int, work string, log *slog.Logger, md, js string, stdout io.Writer) error {
	if target != "process" {
		return fmt.Errorf("--compare starts both binaries: it takes no --target %s", target)
	}
	if pairs < 1 {
		return fmt.Errorf("--pairs %d: at least 1", pairs)
	}
	if _, err := os.Stat(base); err != nil {
		return fmt.Errorf("--compare: %w", err)
	}
	var want []string
	if only != "" {
		want = strings.Split(only, ",")
		for _, w := range want {
			if !slices.Contains([]string{"ingest", "fanout", "catchup", "idle"}, w) {
				return fmt.Errorf("--only %q: --compare runs ingest, fanout, catchup and idle", w)
			}
		}
	}
	if next == "" {
		next = filepath.Join(work, "ferryd")
		if err := buildFerryd(ctx, next); err != nil {
			return err
		}
	}
	ferry := func(name, binary string) bench.Factory {
		return bench.Factory{Name: name, New: func(ctx context.Context, dir string) (bench.System, error) {
			return bench.NewFerry(ctx, bench.FerryConfig{Mode: bench.FerryProcess, Dir: dir, Binary: binary})
		}}
	}
	systems := []bench.Factory{ferry("base", base), ferry("next", next)}
	if want != nil {
		systems = bench.Restrict(systems, want)
	}
	c := bench.Compare(ctx, p, systems[0], systems[1], pairs, rows, work, log)
	c.Base, c.Next = fmt.Sprintf("%s (%s)", c.Base, base), fmt.Sprintf("%s (%s)", c.Next, next)
	if len(c.Rows) == 0 && len(c.Errors) == 0 {
		return fmt.Errorf("no row of profile %s matches --only %q and --rows %q", p.Name, only, rows)
	}
	if js != "" {
		raw, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(js, append(raw, '\n'), 0o644); err != nil {
			return err
		}
	}
	var err error
	if md != "" {
		err = os.WriteFile(md, []byte(c.Markdown()), 0o644)
	} else {
		_, err = fmt.Fprint(stdout, c.Markdown())
	}
	if err == nil && len(c.Errors) > 0 {
		err = fmt.Errorf("%d rows failed: %s", len(c.Errors), strings.Join(c.Errors, "; "))
	}
	return err
}

// Systems returns Ferry (and, for catch-up only, Ferry without compression,
// to measure raw bytes) for the target.
func Systems(ctx context.Context, target, ferryd, work string) ([]bench.Factory, error) {
	mode := bench.FerryProcess
	url := ""
	switch {
	case target == "inprocess":
		mode = bench.FerryInProcess
	case target == "process":
		if ferryd == "" {
			ferryd = filepath.Join(work, "ferryd")
			if err := buildFerryd(ctx, ferryd); err != nil {
				return nil, err
			}
		}
	case strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://"):
		mode, url = bench.FerryRemote, target
	default:
		return nil, fmt.Errorf("--target %q: use process, inprocess or a URL", target)
	}
	factory := func(uncompressed bool) func(context.Context, string) (bench.System, error) {
		return func(ctx context.Context, dir string) (bench.System, error) {
			return bench.NewFerry(ctx, bench.FerryConfig{Mode: mode, Dir: dir, Binary: ferryd, URL: url, Uncompressed: uncompressed})
		}
	}
	return []bench.Factory{
		{Name: "ferry", New: factory(false)},
		{Name: "ferry (uncompressed)", New: factory(true), Only: []string{"catchup"}},
	}, nil
}

// buildFerryd builds ./cmd/ferryd into out.
func buildFerryd(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/ferryd")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build ferryd (run from the repository root, or pass --ferryd): %v\n%s", err, msg)
	}
	return nil
}
