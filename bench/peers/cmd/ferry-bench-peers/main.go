// Command ferry-bench-peers runs Ferry's benchmark workloads on Ferry, NATS
// JetStream and Centrifugo in one run and writes one report.
//
//	ferry-bench-peers [--profile short|full] [--systems ferry,nats-jetstream,centrifugo,centrifugo+redis]
//	                  [--only ingest,fanout,catchup,idle,storage,limits] [--md FILE] [--json FILE] [--dir DIR]
//
// It builds ferryd from the repository (go build), and nats-server and
// centrifugo at their pinned releases (go install module@version), into
// the work folder; each server runs as a child process on a fresh store for
// each workload, so its CPU and memory are measured on their own. Run it
// from the repository or from bench/peers.
//
// centrifugo+redis, Centrifugo with its Redis engine on a redis-server with
// appendfsync always, needs redis-server on PATH: it is in the default
// --systems only when redis-server is found. The command does not install
// it; make bench-peers installs Debian's package when it is missing.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/ferrysync/ferry/bench"
	"github.com/ferrysync/ferry/bench/peers"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-bench-peers:", err)
		os.Exit(1)
	}
}

// allSystems are the systems the command knows.
var allSystems = []string{"ferry", "nats-jetstream", "centrifugo", "centrifugo+redis"}

// defaultSystems are the systems run by default: all of them, less
// centrifugo+redis when there is no redis-server on PATH.
func defaultSystems() []string {
	if _, err := peers.LookRedisServer(); err != nil {
		return slices.DeleteFunc(slices.Clone(allSystems), func(s string) bool { return s == "centrifugo+redis" })
	}
	return allSystems
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferry-bench-peers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	profile := fs.String("profile", "short", "workload matrix: short or full")
	systems := fs.String("systems", strings.Join(defaultSystems(), ","), "comma-separated systems to run: "+strings.Join(allSystems, ", ")+
		" (centrifugo+redis needs redis-server on PATH)")
	dir := fs.String("dir", "", "work folder for binaries and stores (default: a temporary folder)")
	md := fs.String("md", "", "write the markdown report here (default: stdout)")
	js := fs.String("json", "", "write the JSON report here")
	only := fs.String("only", "", "comma-separated workloads to run (ingest, fanout, catchup, idle, storage, limits); default all")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	p, ok := map[string]bench.Profile{"short": bench.Short, "full": bench.Full}[*profile]
	if !ok {
		return fmt.Errorf("--profile %q: use short or full", *profile)
	}
	want := strings.Split(*systems, ",")
	for _, s := range want {
		if !slices.Contains(allSystems, s) {
			return fmt.Errorf("--systems: unknown system %q", s)
		}
	}
	memory, redis := slices.Contains(want, "centrifugo"), slices.Contains(want, "centrifugo+redis")
	var redisServer string
	if redis {
		var err error
		if redisServer, err = peers.LookRedisServer(); err != nil {
			return fmt.Errorf("--systems centrifugo+redis: %w", err)
		}
	}
	var workloads []string
	if *only != "" {
		workloads = strings.Split(*only, ",")
		for _, w := range workloads {
			if !slices.Contains([]string{"ingest", "fanout", "catchup", "idle", "storage", "limits"}, w) {
				return fmt.Errorf("--only: unknown workload %q", w)
			}
		}
		if !slices.Contains(workloads, "limits") {
			p.LimitTime = 0
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	work := *dir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "ferry-bench-peers-"); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	work, err := filepath.Abs(work)
	if err != nil {
		return err
	}
	bin := filepath.Join(work, "bin")
	if err := os.MkdirAll(bin, 0o700); err != nil {
		return err
	}

	var factories []bench.Factory
	var notes []string
	if slices.Contains(want, "ferry") {
		log.Info("building ferryd")
		ferryd, err := buildFerryd(ctx, bin)
		if err != nil {
			return err
		}
		factory := func(uncompressed bool) func(context.Context, string) (bench.System, error) {
			return func(ctx context.Context, dir string) (bench.System, error) {
				return bench.NewFerry(ctx, bench.FerryConfig{Mode: bench.FerryProcess, Dir: dir, Binary: ferryd, Uncompressed: uncompressed})
			}
		}
		factories = append(factories, bench.Factory{Name: "ferry", New: factory(false)},
			bench.Factory{Name: "ferry (uncompressed)", New: factory(true), Only: []string{"catchup"}})
	}
	if slices.Contains(want, "nats-jetstream") {
		log.Info("building nats-server", "version", peers.NATSServerVersion)
		nats, err := peers.Build(ctx, peers.NATSServerModule, peers.NATSServerVersion, bin, "nats-server")
		if err != nil {
			return err
		}
		factories = append(factories, peers.NATSFactory(nats))
		notes = append(notes, peers.NATSNotes()...)
	}
	if memory || redis {
		log.Info("building centrifugo", "version", peers.CentrifugoVersion)
		cf, err := peers.Build(ctx, peers.CentrifugoModule, peers.CentrifugoVersion, bin, "centrifugo")
		if err != nil {
			return err
		}
		if memory {
			factories = append(factories, peers.CentrifugoFactory(cf, false), peers.CentrifugoFactory(cf, true))
		}
		if redis {
			factories = append(factories, peers.CentrifugoRedisFactory(cf, redisServer))
		}
		notes = append(notes, peers.CentrifugoNotes(memory, redis)...)
	}
	if workloads != nil {
		factories = bench.Restrict(factories, workloads)
	}
	notes = append(notes, peers.CommonNotes()...)

	r, err := bench.Run(ctx, p, factories, work, log)
	if err != nil {
		return err
	}
	r.Notes = append(r.Notes, notes...)
	return r.Write(*md, *js, stdout)
}

// buildFerryd builds ferryd from the repository that holds the working
// folder, with the main module's own dependencies.
func buildFerryd(ctx context.Context, bin string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(bin, "ferryd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/ferrysync/ferry/cmd/ferryd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build ferryd in %s: %v\n%s", root, err, b)
	}
	return out, nil
}

// repoRoot finds the folder, from the working folder up, whose go.mod is
// the module github.com/ferrysync/ferry.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if strings.TrimSpace(sc.Text()) == "module github.com/ferrysync/ferry" {
					_ = f.Close()
					return dir, nil
				}
			}
			_ = f.Close()
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", errors.New("not inside the ferry repository: run from it or from bench/peers")
		}
		dir = up
	}
}
