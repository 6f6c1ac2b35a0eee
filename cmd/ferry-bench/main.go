// Command ferry-bench runs Ferry's benchmark workloads and writes a report.
//
//	ferry-bench [--profile short|full] [--target process|inprocess|URL] [--md FILE] [--json FILE]
//
// By default it builds ferryd, starts it for each workload on a fresh store
// in a temporary folder (so its CPU and memory are measured on their own),
// and prints the markdown report. The workloads live in package bench; the
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
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
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
			cmd := exec.CommandContext(ctx, "go", "build", "-o", ferryd, "./cmd/ferryd")
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("build ferryd (run from the repository root, or pass --ferryd): %v\n%s", err, out)
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
