// Command ferryd is the Ferry sync server.
//
//	ferryd [serve] [flags]         serve
//	ferryd check  --data DIR       verify a server's store
//	ferryd backup --data DIR --to DIR   copy a server's store
//	ferryd compact --data DIR      rewrite a server's store in full
//	ferryd rebuild --data DIR      repair a stopped server's store from its logs
//
// check, backup, compact, add-user, set-password, revoke-devices and
// set-quota work on the store of a running server too: they have the
// server do it, through the control socket it listens on in the store's
// folder (control.go).
//
// Every flag but --username, --display-name, --to, --mib and --server-quota can also be set in the
// environment as FERRY_<FLAG>, with dashes as underscores (FERRY_ADDR,
// FERRY_DATA, ...); a flag on the command line wins.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/units"
	"github.com/ferrysync/ferry/internal/webui"
	"github.com/ferrysync/ferry/server"
)

func main() {
	// Until serve listens for it (a reload), SIGHUP must not end the
	// process, which it does by default: at start, and in the tools.
	signal.Ignore(syscall.SIGHUP)
	ctx := context.Background()
	if cmd, _ := command(os.Args[1:]); cmd == "serve" || cmd == "compact" {
		// They stop cleanly on a signal. The other tools are short, or
		// wait for the terminal (add-user): a signal ends them as it ends
		// any process, which leaves the store as a crash does, whole.
		var stop func()
		ctx, stop = stopContexts()
		defer stop()
	}
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ferryd:", err)
		os.Exit(exitCode(err))
	}
}

// usageError is a mistake on the command line (a flag, a value, an
// argument missing): run as it is, the command fails again.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// usageErr marks err, if any, as a usage mistake.
func usageErr(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

// exitCode is ferryd's exit status for err: 2 for a usage mistake, as the
// flag package's, which a service manager can be told not to restart on
// (systemd's RestartPreventExitStatus=2); 1 for any other failure.
func exitCode(err error) int {
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

// stopContexts returns a context that the first SIGINT or SIGTERM ends,
// and that holds (withHurry) those that the second and the third end:
// each of serve's waits as it stops (--shutdown-delay, then the calls
// under way) ends at the next signal after it began.
func stopContexts() (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(context.Background())
	second, hurried2 := context.WithCancel(context.Background())
	third, hurried3 := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 3)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for n := 1; ; n++ {
			var s os.Signal
			select {
			case s = <-sig:
			case <-done:
				return
			}
			switch n {
			case 1:
				cancel(stopSignal{s})
			case 2:
				hurried2()
			default:
				hurried3()
			}
		}
	}()
	return withHurry(ctx, second, third), func() {
		signal.Stop(sig)
		close(done)
		cancel(nil)
		hurried2()
		hurried3()
	}
}

// stopSignal is the cause of the stop context's end: the signal, which
// the shutdown's log lines name. It is a context.Canceled.
type stopSignal struct{ sig os.Signal }

func (s stopSignal) Error() string        { return "signal: " + s.sig.String() }
func (s stopSignal) Is(target error) bool { return target == context.Canceled }

type hurryKey struct{}

// hurries holds the contexts the second and the third signal end.
type hurries struct{ second, third context.Context }

// withHurry puts in ctx the contexts the second and the third signal end,
// which cut serve's waits as it stops short.
func withHurry(ctx, second, third context.Context) context.Context {
	return context.WithValue(ctx, hurryKey{}, hurries{second, third})
}

// hurriesOf returns the contexts withHurry put in ctx; without them,
// ones that never end.
func hurriesOf(ctx context.Context) hurries {
	if h, ok := ctx.Value(hurryKey{}).(hurries); ok {
		return h
	}
	return hurries{context.Background(), context.Background()}
}

type config struct {
	addr              string
	data              string
	tlsCert, tlsKey   string
	allowRegistration bool
	newEpoch          bool
	maxMessageBytes   int
	maxBodyBytes      int
	maxStreams        int
	maxMembers        int
	userQuotaMiB      uint
	heartbeat         time.Duration
	sendTimeout       time.Duration
	bodyTimeout       time.Duration
	receiptDelay      time.Duration
	receiptMembers    int
	sharedFeedMembers int
	debugAddr         string
	metricsAddr       string
	demo              bool
	passwordMemory    uint
	cacheMiB          uint
	memtableMiB       uint
	minFreeDiskMiB    uint
	storeCompression  string
	passwordPasses    uint
	logLevel          string
	logFormat         string
	to                string // backup destination
	username          string // add-user's
	quotaMiB          int64  // set-quota's
	serverQuota       bool   // set-quota's
	displayName       string // add-user's
	signInLimit       int
	pushLimit         int
	signInRefill      time.Duration
	clientIPHeader    string
	corsOrigins       string
	shutdownDelay     time.Duration
	reconnectAfter    time.Duration
	trustedProxies    prefixList
	h2c               server.H2C
	given             map[string]bool // the flags given on the command line
}

// usage is what ferryd -h prints before serve's flags.
const usage = `Usage:
  ferryd [serve] [flags]               serve
  ferryd check   --data DIR            verify a server's store (running or stopped)
  ferryd backup  --data DIR --to DIR   copy a server's store (running or stopped)
  ferryd compact --data DIR            rewrite a server's store in full (running or stopped)
  ferryd rebuild --data DIR            repair a stopped server's store from its
                                       conversations' logs, where check found it
                                       inconsistent (back it up first)
  ferryd new-epoch --data DIR          make a stopped server's next start serve a new epoch
  ferryd add-user --data DIR --username NAME
                                       create a user (the server running or stopped), the
                                       password read from the first line of stdin
  ferryd set-password --data DIR --username NAME
                                       set a user's password (one who forgot theirs), read
                                       from the first line of stdin; their devices stay
                                       signed in
  ferryd revoke-devices --data DIR --username NAME
                                       revoke every device of a user (one locked out at
                                       the limit of 100 devices, or whose devices were lost)
  ferryd set-quota --data DIR --username NAME (--mib N | --server-quota)
                                       set the storage quota of a user, in place of the
                                       server's --user-quota-mib (0: none for them)
  ferryd show-user --data DIR --username NAME
                                       show a user's account: their devices signed in,
                                       what their ops hold and their quota, their blocks
  ferryd version                       print the build: version, commit, Go

` + liveTools + ` have a server
running on the store do their work, through DIR/ferryd.sock; the other
commands need it stopped.

Every flag but --username, --display-name, --to, --mib and --server-quota can also be set in the
environment as FERRY_<FLAG>, with dashes as underscores (FERRY_ADDR,
FERRY_DATA, ...); a flag on the command line wins.
"ferryd COMMAND -h" lists a command's flags.

Flags:
`

// flags returns the flags of command name (serve, check, backup, compact,
// rebuild, new-epoch, add-user, set-password or revoke-devices): the store's and the log's for every command, the rest for
// serve alone, so that a serving flag (or its FERRY_ variable, such as a
// FERRY_NEW_EPOCH left set) never reaches the tools.
func flags(name string, stderr io.Writer) (*flag.FlagSet, *config) {
	c := &config{}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		if name == "serve" {
			fmt.Fprint(fs.Output(), usage)
		} else {
			fmt.Fprintf(fs.Output(), "Usage: ferryd %s [flags]\n\nFlags:\n", name)
		}
		fs.PrintDefaults()
	}
	dataHelp := "directory of the Pebble store (created if missing)"
	switch name {
	case "serve":
	case "check", "backup", "compact", "add-user", "set-password", "revoke-devices", "set-quota", "show-user":
		dataHelp = "directory of the server's Pebble store: a server running on it does the work"
	default:
		dataHelp = "directory of the stopped server's Pebble store"
	}
	fs.StringVar(&c.data, "data", "./data", dataHelp)
	fs.UintVar(&c.cacheMiB, "cache-mib", 64, "the store's block cache, in MiB: the tables' blocks read often, and their Bloom filters (about 1.25 bytes a key)")
	fs.UintVar(&c.memtableMiB, "memtable-mib", 64, "the store's memtable, in MiB (1 to 4095): writes gather there before they flush to tables; the store's memory is about --cache-mib plus two memtables, its write-ahead log at most four")
	fs.StringVar(&c.storeCompression, "store-compression", "small", "how the store compresses its tables: small (zstd where the history settles) or fast (MinLZ everywhere: a tenth to a fifth less CPU per op in sustained writes, about a fifth more disk per op); a store can be reopened with either, and its tables take the new one as compactions rewrite them")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.logFormat, "log-format", "text", "log format: text or json")
	switch name {
	case "add-user":
		fs.StringVar(&c.username, "username", "", "the new user's username")
		fs.StringVar(&c.displayName, "display-name", "", "the new user's display name (default: the username)")
	case "set-password":
		fs.StringVar(&c.username, "username", "", "the user whose password to set")
	case "revoke-devices":
		fs.StringVar(&c.username, "username", "", "the user whose devices to revoke")
	case "show-user":
		fs.StringVar(&c.username, "username", "", "the user to show")
	case "set-quota":
		fs.StringVar(&c.username, "username", "", "the user whose quota to set")
		fs.Int64Var(&c.quotaMiB, "mib", -1, "the user's quota in MiB, in place of the server's --user-quota-mib (0: no quota for them)")
		fs.BoolVar(&c.serverQuota, "server-quota", false, "give the user the server's quota (--user-quota-mib) again")
	case "backup":
		fs.StringVar(&c.to, "to", "", "directory to write the backup to (must not exist)")
	case "rebuild":
		fs.IntVar(&c.sharedFeedMembers, "shared-feed-members", 32, "the server's --shared-feed-members: a conversation whose record is made anew keeps one feed entry for all its members past this many")
	case "serve":
		serveFlags(fs, c)
	}
	return fs, c
}

// serveFlags adds the flags of serving.
func serveFlags(fs *flag.FlagSet, c *config) {
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8080", "address to listen on")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "TLS certificate file (PEM); with --tls-key, serve HTTPS")
	fs.StringVar(&c.tlsKey, "tls-key", "", "TLS private key file (PEM)")
	fs.Var(&c.h2c, "h2c", "what serves HTTP/2 without TLS: ferry (Ferry's own, leaner; the default) or xnet (golang.org/x/net/http2; built with Go 1.27 or later, only with -tags http2legacy); TLS connections are net/http's")
	fs.BoolVar(&c.allowRegistration, "allow-registration", false, "let anyone create an account with Register")
	fs.BoolVar(&c.newEpoch, "new-epoch", false, "gone (it started a new epoch at every start): run 'ferryd new-epoch --data DIR' once instead")
	fs.UintVar(&c.minFreeDiskMiB, "min-free-disk-mib", 512, "new ops are refused (unavailable, and retried by the clients) while the store's disk has less free space than this, in MiB, or than a twentieth of the disk when less: a full disk would stop the server (0: no check)")
	fs.IntVar(&c.maxMessageBytes, "max-message-bytes", 4<<20, "largest request message, after decompression (at least 65536); the account service's, Register and Login among them, at most 64 KiB")
	fs.IntVar(&c.maxBodyBytes, "max-body-bytes", 64<<10, "largest message or edit body (at most 1 MiB)")
	fs.IntVar(&c.maxStreams, "max-streams-per-device", 4, "concurrent sync sessions per device")
	fs.DurationVar(&c.heartbeat, "heartbeat", 30*time.Second, "heartbeat interval of sync sessions (100ms to 1h); a client silent for three intervals is cut off")
	fs.DurationVar(&c.sendTimeout, "send-timeout", 2*time.Minute, "how long one write to a sync stream may take before the server resets the stream, and a write to any connection may make no progress before the server closes it: its client stopped reading, or its connection stopped moving (0: no limit)")
	fs.DurationVar(&c.bodyTimeout, "body-timeout", time.Minute, "how long the request body of a call other than Sync (Login, Register, Push, Subscribe's hello, ...) may send nothing before the call fails: a stalled client would otherwise hold its connection (0: no limit)")
	fs.DurationVar(&c.receiptDelay, "receipt-delay", 250*time.Millisecond, "how long delivered and read receipts wait to reach the other members together (0: at once)")
	fs.IntVar(&c.signInLimit, "sign-in-limit", 10, "logins with a wrong password as one username, and registrations (made or refused), a client address (IPv4 address, IPv6 /64) may make at once before it gets one per --sign-in-refill; ten times as many failed logins over all usernames; an IPv6 /48 sixteen times an address's, regained sixteen times as fast (0: no limit)")
	fs.IntVar(&c.pushLimit, "push-limit", 1000, "ops a second one user's devices may push together (an op counts one more per 4 KiB of its body; an ack counts as an op a marker), after a burst of ten seconds' worth (at least 1000 ops); a push over it waits, and only pushes made in parallel that would wait over 10s more are refused (0: no limit)")
	fs.DurationVar(&c.signInRefill, "sign-in-refill", time.Minute, "how often a throttled client address regains a sign-in attempt")
	fs.StringVar(&c.clientIPHeader, "client-ip-header", "", "header your reverse proxy writes the client's address into, e.g. X-Forwarded-For (set only when every request comes through it, or list the proxies in --trusted-proxies)")
	fs.StringVar(&c.corsOrigins, "cors-origins", "", "comma-separated origins (https://app.example.com) of web apps served elsewhere that may call the server from a browser; * for any. The demo page, served here, needs none")
	fs.Var(&c.trustedProxies, "trusted-proxies", "comma-separated addresses or CIDR prefixes of your reverse proxies: --client-ip-header then counts only on requests from them, and the client is the last address in it that is not one of them")
	fs.IntVar(&c.receiptMembers, "receipt-members", 32, "conversations of up to this many members share delivered and read receipts; in larger ones markers reach only the user's own devices")
	fs.IntVar(&c.maxMembers, "max-members", 10_000, "members a conversation may have; adding one more is rejected until one leaves (GetConversation lists them all in one message, up to some 140 bytes each: past 25,000 raise --max-message-bytes too)")
	fs.UintVar(&c.userQuotaMiB, "user-quota-mib", 0, "MiB one user's ops may hold (bodies, content types, titles and reaction keys, and 32 bytes an op): an op past it is rejected (quota exceeded) until they delete messages; deletes and member removals always go; the server counts every user's whether or not this is set, and ferryd set-quota sets a user's own in its place (0: no quota)")
	fs.IntVar(&c.sharedFeedMembers, "shared-feed-members", 32, "conversations past this many members keep one feed entry for all of them: a message then writes nothing per member, and a catch-up reads one record per such conversation of its user")
	fs.UintVar(&c.passwordMemory, "password-memory-kib", 19456, "argon2id memory per password hash, in KiB (lower only for tests and benchmarks)")
	fs.UintVar(&c.passwordPasses, "password-passes", 2, "argon2id passes per password hash")
	fs.DurationVar(&c.shutdownDelay, "shutdown-delay", 0, "on SIGTERM (or SIGINT), answer /healthz with 503 and go on serving this long before telling sessions to reconnect and stopping, so that a load balancer stops sending new clients first (a second SIGTERM or SIGINT cuts it short); 0: stop at once")
	fs.DurationVar(&c.reconnectAfter, "reconnect-after", time.Second, "as it stops, how long the server asks each session's device to wait before reconnecting (to it, or another server): a share drawn evenly from a half to one and a half times this, so that its devices do not all come back in one moment")
	fs.BoolVar(&c.demo, "demo", true, "serve the demo chat page at / (a web client of the public API)")
	fs.StringVar(&c.debugAddr, "debug-addr", "", "serve Go's profiler (/debug/pprof/) and the metrics (/metrics) on this address, e.g. 127.0.0.1:6060; keep it private")
	fs.StringVar(&c.metricsAddr, "metrics-addr", "", "serve the metrics in Prometheus's text format (/metrics) on this address, e.g. 127.0.0.1:9090; keep it private")
}

// toolOnly are the flags that name what one run of a tool acts on: given
// on its command line only, never by a FERRY_ variable left set, which
// would have revoke-devices revoke a user's devices unasked.
var toolOnly = map[string]bool{"username": true, "display-name": true, "to": true, "mib": true, "server-quota": true}

// parse parses args, then fills flags not given from FERRY_* variables.
func parse(fs *flag.FlagSet, args []string, env func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		if slices.Contains(commands, fs.Arg(0)) {
			return fmt.Errorf("unexpected argument %q: the command goes first, before its flags (ferryd %s --data DIR)", fs.Arg(0), fs.Arg(0))
		}
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || toolOnly[f.Name] {
			return
		}
		key := envKey(f.Name)
		if v := env(key); v != "" {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %v", key, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// envKey is the FERRY_ variable of a flag.
func envKey(name string) string {
	return "FERRY_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// blameEnv adds to each line of err that names a flag whose value came
// from its FERRY_ variable where it came from: a value the operator did
// not type is a variable left set, which they should look for there.
func blameEnv(err error, fs *flag.FlagSet, env func(string) string) error {
	if err == nil {
		return nil
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var fromEnv []string
	fs.VisitAll(func(f *flag.Flag) {
		if !set[f.Name] && !toolOnly[f.Name] && env(envKey(f.Name)) != "" {
			fromEnv = append(fromEnv, f.Name)
		}
	})
	if len(fromEnv) == 0 {
		return err
	}
	lines := strings.Split(err.Error(), "\n")
	for i, line := range lines {
		for _, name := range fromEnv {
			if flagNamed(line, name) && !strings.Contains(line, envKey(name)) {
				lines[i] += fmt.Sprintf(" (--%s is set by %s)", name, envKey(name))
			}
		}
	}
	return errors.New(strings.Join(lines, "\n"))
}

// flagNamed reports whether line names --name, not a longer flag that
// starts with it.
func flagNamed(line, name string) bool {
	for rest := line; ; {
		i := strings.Index(rest, "--"+name)
		if i < 0 {
			return false
		}
		rest = rest[i+2+len(name):]
		if rest == "" || !(rest[0] == '-' || 'a' <= rest[0] && rest[0] <= 'z') {
			return true
		}
	}
}

// commands are ferryd's commands; serve is the default.
var commands = []string{"serve", "check", "backup", "compact", "rebuild", "new-epoch", "add-user", "set-password", "revoke-devices", "set-quota", "show-user"}

// command splits args into the command and its flags.
func command(args []string) (string, []string) {
	if len(args) > 0 && slices.Contains(commands, args[0]) {
		return args[0], args[1:]
	}
	return "serve", args
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd, args := command(args)
	if len(args) == 1 && args[0] == "help" {
		args = []string{"-h"}
	}
	if len(args) == 1 && (args[0] == "version" || args[0] == "--version" || args[0] == "-version") && cmd == "serve" {
		fmt.Fprintln(stdout, "ferryd", version())
		return nil
	}
	fs, c := flags(cmd, stderr)
	// A bad flag's error is printed once, by main; the usage only when
	// asked for.
	fs.SetOutput(io.Discard)
	if err := parse(fs, args, os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.Usage()
			return nil
		}
		name := "ferryd"
		if cmd != "serve" {
			name += " " + cmd
		}
		return usageErr(fmt.Errorf("%w (%s -h lists the flags)", err, name))
	}
	c.given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { c.given[f.Name] = true })
	// Every bad value at once, by its flag.
	var errs []error
	if c.cacheMiB < 1 || c.cacheMiB > maxMiB {
		errs = append(errs, fmt.Errorf("--cache-mib %d: it must be between 1 and %d (1 PiB)", c.cacheMiB, maxMiB))
	}
	if strings.HasPrefix(c.data, "~") {
		errs = append(errs, fmt.Errorf("--data %q: ferryd does not expand ~ (a shell does, unquoted, and an environment variable never): give the path in full", c.data))
	}
	if c.memtableMiB < 1 || c.memtableMiB > 4095 {
		errs = append(errs, fmt.Errorf("--memtable-mib %d: it must be between 1 and 4095 (Pebble's limit is 4 GiB)", c.memtableMiB))
	}
	if _, ok := compressions[c.storeCompression]; !ok {
		errs = append(errs, fmt.Errorf("--store-compression %q: use fast or small", c.storeCompression))
	}
	log, err := newLogger(c, stderr)
	errs = append(errs, err)
	if cmd == "serve" {
		errs = append(errs, checkServeFlags(c))
	}
	if err := errors.Join(errs...); err != nil {
		return usageErr(blameEnv(err, fs, os.Getenv))
	}
	switch cmd {
	case "check":
		return check(ctx, c, log, stdout)
	case "backup":
		return backup(ctx, c, log, stdout)
	case "compact":
		return compact(ctx, c, log, stdout)
	case "rebuild":
		return rebuild(c, log, stdout)
	case "new-epoch":
		return newEpoch(c, log, stdout)
	case "add-user":
		return addUser(ctx, c, log, stdin, stdout, stderr)
	case "set-password":
		return setPassword(ctx, c, log, stdin, stdout, stderr)
	case "revoke-devices":
		return revokeDevices(ctx, c, log, stdout)
	case "set-quota":
		return setQuota(ctx, c, log, stdout)
	case "show-user":
		return showUser(ctx, c, log, stdout)
	}
	return serve(ctx, c, log, stdout)
}

func newLogger(c *config, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", c.logLevel)
	}
	o := &slog.HandlerOptions{Level: level}
	switch c.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", c.logFormat)
}

func engineOptions(c *config, log *slog.Logger) engine.Options {
	return engine.Options{
		Logger:            log,
		AllowRegistration: c.allowRegistration,
		MaxBodyBytes:      c.maxBodyBytes,
		ReceiptDelay:      receiptDelay(c.receiptDelay),
		ReceiptMembers:    c.receiptMembers,
		SharedFeedMembers: c.sharedFeedMembers,
		MaxMembers:        c.maxMembers,
		UserQuota:         int64(c.userQuotaMiB) << 20,
		CacheSize:         int64(c.cacheMiB) << 20,
		MemTableSize:      uint64(c.memtableMiB) << 20,
		MinFreeDisk:       minFreeDisk(c.minFreeDiskMiB),
		Compression:       compressions[c.storeCompression],
		Password:          engine.PasswordParams{MemoryKiB: uint32(c.passwordMemory), Time: uint32(c.passwordPasses)},
	}
}

// compressions maps --store-compression to engine.Options.Compression.
var compressions = map[string]engine.Compression{"fast": engine.CompressFast, "small": engine.CompressSmall}

// receiptDelay maps the flag (0: at once) to engine.Options.ReceiptDelay
// (0: the default, negative: at once).
func receiptDelay(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// checkServeFlags reports every problem with serve's flags that the
// engine's and the server's options do not catch, or catch under another
// name.
func checkServeFlags(c *config) error {
	var errs []error
	if c.shutdownDelay < 0 {
		errs = append(errs, fmt.Errorf("--shutdown-delay %s must not be negative (0: stop at once)", c.shutdownDelay))
	}
	if c.newEpoch {
		errs = append(errs, errors.New("--new-epoch (FERRY_NEW_EPOCH) started a new epoch at every start, so every device downloaded everything again after each restart: it is gone. After restoring a store by other means than 'ferryd backup', run 'ferryd new-epoch --data DIR' once, with the server stopped; its next start serves a new epoch"))
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	for _, f := range []struct {
		flag string
		bad  bool
		want string
		got  any
	}{
		// 0 turns these off; a negative value is a mistake, not "off".
		{"--push-limit", c.pushLimit < 0, "must not be negative (0: no limit)", c.pushLimit},
		{"--sign-in-limit", c.signInLimit < 0, "must not be negative (0: no limit)", c.signInLimit},
		{"--send-timeout", c.sendTimeout < 0, "must not be negative (0: no limit)", c.sendTimeout},
		{"--body-timeout", c.bodyTimeout < 0, "must not be negative (0: no limit)", c.bodyTimeout},
		{"--receipt-delay", c.receiptDelay < 0, "must not be negative (0: at once)", c.receiptDelay},
		// The options take 0 for their default, which a flag shows.
		{"--max-message-bytes", c.maxMessageBytes == 0, "must be at least 65536", c.maxMessageBytes},
		{"--max-body-bytes", c.maxBodyBytes == 0, "must be between 1 and 1048576", c.maxBodyBytes},
		{"--max-streams-per-device", c.maxStreams == 0, "must be at least 1", c.maxStreams},
		{"--heartbeat", c.heartbeat == 0, "must be at least 100ms", c.heartbeat},
		{"--reconnect-after", c.reconnectAfter == 0, "must be at least 1ms", c.reconnectAfter},
		{"--sign-in-refill", c.signInRefill == 0, "must be positive", c.signInRefill}, // negative: the server's check says so
		{"--receipt-members", c.receiptMembers == 0, "must be at least 1", c.receiptMembers},
		{"--shared-feed-members", c.sharedFeedMembers == 0, "must be at least 1", c.sharedFeedMembers},
		{"--max-members", c.maxMembers == 0, "must be at least 1", c.maxMembers},
		{"--password-memory-kib", c.passwordMemory == 0 || c.passwordMemory > math.MaxUint32, "must be between 8 and 4294967295", c.passwordMemory},
		{"--password-passes", c.passwordPasses == 0 || c.passwordPasses > math.MaxUint32, "must be between 1 and 4294967295", c.passwordPasses},
		{"--min-free-disk-mib", c.minFreeDiskMiB > maxMiB, fmt.Sprintf("must be at most %d (1 PiB)", maxMiB), c.minFreeDiskMiB},
		{"--user-quota-mib", c.userQuotaMiB > maxMiB, fmt.Sprintf("must be at most %d (1 PiB)", maxMiB), c.userQuotaMiB},
		{"--push-limit", c.pushLimit > maxPushLimit, fmt.Sprintf("must be at most %d", maxPushLimit), c.pushLimit},
	} {
		if f.bad {
			errs = append(errs, fmt.Errorf("%s %v: it %s", f.flag, f.got, f.want))
		}
	}
	// What the engine and the server would refuse, in the flags' names.
	eo := engineOptions(c, nil)
	eo.EnsureDefaults()
	so := serverOptions(c, nil)
	if err := errors.Join(eo.Validate(), so.Check()); err != nil {
		errs = append(errs, errors.New(optionFlags.Replace(err.Error())))
	}
	return errors.Join(errs...)
}

// Bounds on flags whose values are converted or multiplied: past them a
// value would wrap around, or overflow a deadline, silently.
const (
	maxMiB       = 1 << 30            // 1 PiB
	maxPushLimit = math.MaxInt32 / 10 // the burst is ten seconds' worth, an int on 32-bit platforms too
)

// optionFlags names, in the engine's and the server's errors about their
// options, the flags that set them.
var optionFlags = strings.NewReplacer(
	"MaxMessageBytes", "--max-message-bytes",
	"MaxBodyBytes", "--max-body-bytes",
	"MaxStreamsPerDevice", "--max-streams-per-device",
	"ReceiptMembers", "--receipt-members",
	"SharedFeedMembers", "--shared-feed-members",
	"MaxMembers", "--max-members",
	"HeartbeatInterval", "--heartbeat",
	"ReconnectAfter", "--reconnect-after",
	"SignInRefill", "--sign-in-refill",
	"CORSOrigins", "--cors-origins",
	"Password.MemoryKiB", "--password-memory-kib",
	"TrustedProxies", "--trusted-proxies",
	"ClientIPHeader", "--client-ip-header",
)

func serverOptions(c *config, log *slog.Logger) server.Options {
	return server.Options{
		Logger:              log,
		MaxMessageBytes:     c.maxMessageBytes,
		MaxStreamsPerDevice: c.maxStreams,
		HeartbeatInterval:   c.heartbeat,
		SendTimeout:         durationOrOff(c.sendTimeout),
		BodyTimeout:         durationOrOff(c.bodyTimeout),
		ReconnectAfter:      c.reconnectAfter,
		SignInLimit:         limitOrOff(c.signInLimit),
		PushLimit:           limitOrOff(c.pushLimit),
		SignInRefill:        c.signInRefill,
		ClientIPHeader:      c.clientIPHeader,
		CORSOrigins:         splitList(c.corsOrigins),
		TrustedProxies:      c.trustedProxies,
	}
}

// serve serves until ctx ends. Everything that can be refused (flags,
// the TLS files, the address) is, before the store is opened or created.
func serve(ctx context.Context, c *config, log *slog.Logger, stdout io.Writer) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	eo := engineOptions(c, log)
	// Fail-stop: a storage failure ends the process; nothing more is
	// acknowledged meanwhile.
	// (fatal also ends a --shutdown-delay under way, which ctx, ended by
	// the signal already, no longer can.)
	fatal := make(chan error, 1)
	eo.OnFatal = func(err error) {
		err = fmt.Errorf("storage failed: %w", err)
		cancel(err)
		select {
		case fatal <- err:
		default:
		}
	}
	so := serverOptions(c, log)
	// SIGHUP reloads the TLS certificate (a renewed one), and ends nothing.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var tlsConfig *tls.Config
	var cert *certificate
	if c.tlsCert != "" {
		cert = &certificate{certFile: c.tlsCert, keyFile: c.tlsKey}
		if err := cert.load(); err != nil {
			return err
		}
		tlsConfig = &tls.Config{GetCertificate: cert.get, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", c.addr)
	if err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	defer ln.Close() // if serving never starts; Serve closes it otherwise
	// A connection whose peer acknowledges nothing for three heartbeats is
	// dead: the kernel closes it, and its session's slot is free again.
	ln = server.DeadPeerListener(ln, 3*c.heartbeat)
	// The side addresses too, before the store is opened or created.
	sideLns, err := listenSide(c)
	if err != nil {
		return err
	}
	defer func() {
		for _, sl := range sideLns {
			sl.ln.Close() // if serving never starts; Serve closes it otherwise
		}
	}()
	if err := os.MkdirAll(c.data, 0o700); err != nil {
		return fmt.Errorf("--data: create the store's directory: %w", err)
	}
	if others := filesBesideNoStore(c.data); len(others) > 0 {
		log.Warn("--data holds files but no store: a new store is created beside them; if a store was meant to be there, stop and check --data",
			"data", absPath(c.data), "files", others)
	}
	if testEngineOptions != nil {
		testEngineOptions(&eo)
	}
	eng, err := engine.Open(c.data, eo)
	if err != nil {
		return err
	}
	defer eng.Close()
	srv, err := server.New(eng, so)
	if err != nil {
		return err
	}
	// The tools that work on a live store reach it through the control
	// socket; without one they need the server stopped, as before.
	ctl, err := listenControl(c.data, eng, srv, log)
	if err != nil {
		log.Warn("no control socket: ferryd "+liveTools+" cannot reach this server, and need it stopped", "err", err)
	}
	defer ctl.close() // before the store closes
	var extra []func(*http.ServeMux)
	if c.demo {
		extra = append(extra, webui.Register)
	}
	hs := server.NewHTTPServer(c.addr, srv.Handler(extra...), tlsConfig)
	hs.HTTP.ErrorLog = srv.ErrorLog()
	hs.H2C = c.h2c
	hs.HTTP.HTTP2.WriteByteTimeout = c.sendTimeout // 0: no limit, as the flag says
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	side, closeSide := serveSide(c, sideLns, srv, log)
	defer closeSide()
	url := fmt.Sprintf("%s://%s", scheme, ln.Addr())
	fmt.Fprintf(stdout, "ferryd is listening on %s\n", url)
	fmt.Fprintf(stdout, "  store:   %s (epoch %s)\n", absPath(c.data), eng.Epoch())
	fmt.Fprintf(stdout, "  health:  curl %s/healthz\n", url)
	if c.demo {
		fmt.Fprintf(stdout, "  demo:    open %s/ in a browser\n", url)
	}
	if ctl != nil {
		fmt.Fprintf(stdout, "  tools:   ferryd %s --data %s work while it serves\n", liveTools, c.data)
	}
	if a := side["--metrics-addr"]; a != "" {
		fmt.Fprintf(stdout, "  metrics: curl http://%s/metrics\n", a)
	}
	if a := side["--debug-addr"]; a != "" {
		fmt.Fprintf(stdout, "  debug:   go tool pprof http://%s/debug/pprof/profile (metrics at /metrics)\n", a)
	}
	if c.allowRegistration {
		fmt.Fprintf(stdout, "  sign up: curl -H 'Content-Type: application/json' -d '{\"username\":\"alice\",\"password\":\"correct horse\"}' %s/ferry.v1.AccountService/Register\n", url)
	} else {
		fmt.Fprintln(stdout, "  self-registration is off (--allow-registration turns it on)")
	}
	log.Info("serving", "addr", ln.Addr().String(), "tls", tlsConfig != nil, "data", absPath(c.data), "epoch", eng.Epoch(), "version", version())

	for waiting := true; waiting; {
		select {
		case err := <-served:
			return fmt.Errorf("serve: %w", err)
		case <-ctx.Done():
			waiting = false
		case <-hup:
			if cert == nil {
				log.Info("SIGHUP: no TLS certificate to reload (--tls-cert)")
			} else if err := cert.load(); err != nil {
				log.Error("SIGHUP: the TLS certificate was not reloaded; serving the one loaded before", "err", err)
			} else {
				log.Info("SIGHUP: TLS certificate reloaded", "cert", c.tlsCert)
			}
		}
	}
	cause := context.Cause(ctx)
	// The next signal cuts the wait under way short: the second, or the
	// third once the second cut --shutdown-delay short. Fixed before the
	// wait is logged: a signal that comes just after the log is the wait's.
	h := hurriesOf(ctx)
	hurry := h.second
	if c.shutdownDelay > 0 && errors.Is(cause, context.Canceled) { // a signal; a failed store stops at once
		srv.Drain()
		log.Info("draining: /healthz says 503 while serving goes on", "reason", cause, "for", c.shutdownDelay)
		t := time.NewTimer(c.shutdownDelay)
		select {
		case <-t.C:
		case <-hurry.Done():
			log.Info("draining cut short by a second signal")
			hurry = h.third
		case err := <-fatal:
			log.Error("draining cut short: the store failed", "err", err)
			cause = err
		case err := <-served:
			return fmt.Errorf("serve: %w", err)
		}
		t.Stop()
	}
	if err := eng.Failed(); err != nil && errors.Is(cause, context.Canceled) {
		cause = fmt.Errorf("storage failed: %w", err) // after the signal: the exit says so
	}
	log.Info("shutting down: telling sessions to reconnect", "reason", cause)
	srv.GoAway()
	sctx, scancel := context.WithTimeout(hurry, 10*time.Second)
	defer scancel()
	if err := hs.Shutdown(sctx); err != nil {
		// Sessions stuck sending to slow readers, or calls under way: cut
		// their connections.
		if hurry.Err() != nil {
			log.Warn("shutdown cut short by another signal; closing the remaining connections")
		} else {
			log.Warn("shutdown timed out; closing the remaining connections", "err", err)
		}
		_ = hs.Close()
	}
	srv.Wait()  // every session has released the store
	closeSide() // no scrape reads a closed store
	ctl.close() // nor a backup or a check
	if n := eng.StoreMetrics().Compacting; n > 0 {
		log.Info("closing the store: waiting for the compactions under way to finish", "compactions", n)
	}
	if err := eng.Close(); err != nil && !errors.Is(err, engine.ErrFailed) {
		return fmt.Errorf("close store: %w", err)
	}
	log.Info("stopped")
	if errors.Is(cause, context.Canceled) || cause == nil {
		return nil
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("server stopped", "err", err)
	}
	return cause
}

// certificate is the server's TLS certificate, loaded at start and again
// on SIGHUP: a renewed certificate is served without a restart, which
// would disconnect every device.
type certificate struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

// load reads the certificate and key files; on failure the one loaded
// before stays.
func (c *certificate) load() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate: %w", err)
	}
	c.cur.Store(&cert)
	return nil
}

func (c *certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.cur.Load(), nil }

// openStopped opens the store of a stopped server for check, backup and
// compact: it must exist (a mistyped --data is an error, not a new empty
// store), and opening it starts no epoch and keeps a backup's mark.
func openStopped(c *config, log *slog.Logger) (*engine.Engine, error) {
	o := engineOptions(c, log)
	o.Existing = true
	eng, err := engine.Open(c.data, o)
	return eng, storeErr(c, err)
}

// storeErr says, of a tool's error opening the store, that --data holds
// none, when so.
func storeErr(c *config, err error) error {
	if !errors.Is(err, engine.ErrNotFound) {
		return err
	}
	err = fmt.Errorf("--data: %w", err)
	if abs := absPath(c.data); abs != c.data {
		err = fmt.Errorf("%w (%s)", err, abs)
	}
	return fmt.Errorf("%w; point --data at a server's store (a server's first start creates it)", err)
}

// absPath is path made absolute, to show: a relative --data is relative to
// the directory ferryd runs in, which under a service manager is often /.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// realPath is path absolute, its symbolic links resolved as far as it
// exists: for --to, which does not yet.
func realPath(path string) string {
	abs := absPath(path)
	for dir, rest := abs, ""; ; {
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(real, rest)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return abs
		}
		dir, rest = parent, filepath.Join(filepath.Base(dir), rest)
	}
}

// filesBesideNoStore lists, up to 5, the files of dir when it holds no
// Pebble store (no manifest), and nothing when it holds one. A file
// system's lost+found is not counted.
func filesBesideNoStore(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, "MANIFEST-") || strings.HasPrefix(n, "marker.manifest") {
			return nil
		}
		if n != "lost+found" && len(names) < 5 {
			names = append(names, n)
		}
	}
	return names
}

// splitList splits a comma-separated flag value, dropping spaces and
// empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// version describes the build: the module's version (a tag, or "(devel)"
// for a build in a checkout), the commit and whether the tree had changes
// when the go command recorded them, and Go's version.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (built without module information)"
	}
	v := bi.Main.Version
	var rev, modified string
	for _, st := range bi.Settings {
		switch st.Key {
		case "vcs.revision":
			rev = st.Value
		case "vcs.modified":
			if st.Value == "true" {
				modified = " (modified)"
			}
		}
	}
	if rev != "" {
		v += " commit " + rev + modified
	}
	return v + " " + bi.GoVersion
}

// stdin is where add-user reads the password: a variable for the tests.
var stdin io.Reader = os.Stdin

// testEngineOptions, set by tests only, changes the engine's options as
// serve opens the store: a filesystem that fails on cue.
var testEngineOptions func(*engine.Options)

// addUser creates a user on a stopped server's store, whatever
// --allow-registration says: how an operator gives someone an account
// when self-registration is off (the default). The password is the first
// line of stdin, so that it stays out of the process list and the shell's
// history. The user logs in from their devices; the command makes none.
func addUser(ctx context.Context, c *config, log *slog.Logger, in io.Reader, stdout, stderr io.Writer) error {
	password, err := readPassword("add-user", c, log, in, stderr)
	if err != nil {
		return err
	}
	u, served, err := onStore(ctx, c, log, "add-user", newUser{Username: c.username, DisplayName: []byte(c.displayName), Password: []byte(password)}, addUserTo)
	if err != nil {
		return err
	}
	if u.Username != c.username {
		fmt.Fprintf(stdout, "usernames are lowercase: %q is %s\n", c.username, u.Username)
	}
	fmt.Fprintf(stdout, "user %s created (id %s)%s; they log in from their devices\n", u.Username, u.ID, byServer(served))
	return nil
}

// newUser is add-user's request.
type newUser struct {
	Username    string `json:"username"`
	DisplayName []byte `json:"display_name,omitempty"`
	Password    []byte `json:"password"` // bytes: JSON's strings are UTF-8 text
}

// toolUser is a user a tool acted on.
type toolUser struct {
	ID       string `json:"id"`
	Username string `json:"username"`
}

func addUserTo(ctx context.Context, st store, req newUser) (toolUser, error) {
	u, err := st.eng.CreateUser(ctx, engine.NewAccount{Username: req.Username, Password: string(req.Password), DisplayName: string(req.DisplayName)})
	if err != nil {
		return toolUser{}, fmt.Errorf("add-user: %w", err)
	}
	return toolUser{ID: u.ID.String(), Username: u.Username}, nil
}

// byServer says, after what a tool did, that the server running on the
// store did it.
func byServer(served bool) string {
	if served {
		return " by the server running on the store"
	}
	return ""
}

// readPassword reads the password a tool (add-user, set-password) sets
// for --username from the first line of in, so that it stays out of the
// process list and the shell's history.
func readPassword(cmd string, c *config, log *slog.Logger, in io.Reader, stderr io.Writer) (string, error) {
	if c.username == "" {
		return "", usageErr(fmt.Errorf("%s needs --username NAME (and the password on stdin)", cmd))
	}
	if f, ok := in.(*os.File); ok {
		fi, err := f.Stat()
		null, nerr := os.Stat(os.DevNull) // a character device too, but no terminal
		if err == nil && fi.Mode()&os.ModeCharDevice != 0 && (nerr != nil || !os.SameFile(fi, null)) {
			// A terminal: say what it waits for. It shows what is typed;
			// piped in, the password stays off the screen.
			fmt.Fprintf(stderr, "password for %s (shown as typed; pipe it in to keep it off the screen), then Enter: ", c.username)
		}
	}
	log.Debug(cmd + ": reading the password from the first line of stdin")
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the password from stdin: %w", err)
	}
	password := strings.TrimRight(line, "\r\n")
	if password == "" {
		return "", fmt.Errorf("%s reads the password from the first line of stdin, and found none", cmd)
	}
	return password, nil
}

// setPassword sets the password of a user on a stopped server's store:
// for one who forgot theirs. Their devices stay signed in (revoke-devices
// signs them out).
func setPassword(ctx context.Context, c *config, log *slog.Logger, in io.Reader, stdout, stderr io.Writer) error {
	password, err := readPassword("set-password", c, log, in, stderr)
	if err != nil {
		return err
	}
	u, served, err := onStore(ctx, c, log, "set-password", newPassword{Username: c.username, Password: []byte(password)}, setPasswordIn)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "password of %s set%s; they log in with it, and their devices stay signed in (ferryd revoke-devices signs them out)\n", u.Username, byServer(served))
	return nil
}

// newPassword is set-password's request.
type newPassword struct {
	Username string `json:"username"`
	Password []byte `json:"password"` // bytes: JSON's strings are UTF-8 text
}

func setPasswordIn(ctx context.Context, st store, req newPassword) (toolUser, error) {
	u, err := st.eng.SetPassword(ctx, req.Username, string(req.Password))
	if errors.Is(err, engine.ErrNotFound) {
		return toolUser{}, fmt.Errorf("set-password: no user %q", req.Username)
	}
	if err != nil {
		return toolUser{}, fmt.Errorf("set-password: %w", err)
	}
	return toolUser{ID: u.ID.String(), Username: u.Username}, nil
}

// revokeDevices revokes every device of a user on a stopped server's
// store: their tokens stop working, and the user, who keeps their account
// and conversations, logs in again. For a user at the limit of devices
// with none left to revoke from (sign-ins that never signed out), or whose
// devices were lost or stolen.
func revokeDevices(ctx context.Context, c *config, log *slog.Logger, stdout io.Writer) error {
	if c.username == "" {
		return usageErr(errors.New("revoke-devices needs --username NAME"))
	}
	r, served, err := onStore(ctx, c, log, "revoke-devices", struct {
		Username string `json:"username"`
	}{c.username}, revokeDevicesIn)
	if err != nil {
		return err
	}
	noun := "devices"
	if r.Devices == 1 {
		noun = "device"
	}
	fmt.Fprintf(stdout, "revoked %d %s of %s%s; they log in again\n", r.Devices, noun, r.Username, byServer(served))
	return nil
}

// namedUser finds the user a tool names by their username's record
// alone: their own may not decode. It returns their id and their username
// in lower case.
func namedUser(st store, tool, username string) (ulid.ULID, string, error) {
	id, err := st.eng.UserNamed(username)
	if errors.Is(err, engine.ErrNotFound) {
		return ulid.ULID{}, "", fmt.Errorf("%s: no user %q", tool, username)
	}
	if err != nil {
		return ulid.ULID{}, "", fmt.Errorf("%s: %w", tool, err)
	}
	name, _ := engine.NormalizeUsername(username)
	return id, name, nil
}

// revoked is what revoke-devices did.
type revoked struct {
	Username string `json:"username"`
	Devices  int    `json:"devices"`
}

func revokeDevicesIn(ctx context.Context, st store, req struct {
	Username string `json:"username"`
}) (revoked, error) {
	// Their devices signed in still work when their own record does not
	// decode.
	id, name, err := namedUser(st, "revoke-devices", req.Username)
	if err != nil {
		return revoked{}, err
	}
	a := engine.Actor{User: id} // the operator: no device of the user's
	devs, err := st.eng.Devices(a)
	if err != nil {
		return revoked{}, err
	}
	for _, d := range devs {
		if err := st.eng.RevokeDevice(ctx, a, d.ID); err != nil {
			return revoked{}, fmt.Errorf("revoke device %s: %w", d.ID, err)
		}
	}
	return revoked{Username: name, Devices: len(devs)}, nil
}

// setQuota sets a user's storage quota in place of the server's
// (--user-quota-mib), or gives them the server's again: more room for a
// user who pays for it, less for one who abuses it.
func setQuota(ctx context.Context, c *config, log *slog.Logger, stdout io.Writer) error {
	switch {
	case c.username == "":
		return usageErr(errors.New("set-quota needs --username NAME, and --mib N or --server-quota"))
	case c.serverQuota == (c.quotaMiB != -1):
		return usageErr(errors.New("set-quota needs one of --mib N (0: no quota for the user) and --server-quota"))
	case c.quotaMiB < -1 || c.quotaMiB > maxMiB:
		return usageErr(fmt.Errorf("set-quota --mib %d: it must be between 0 and %d (1 PiB)", c.quotaMiB, maxMiB))
	}
	req := newQuota{Username: c.username, Bytes: engine.ServerQuota}
	if !c.serverQuota {
		req.Bytes = c.quotaMiB << 20
	}
	r, served, err := onStore(ctx, c, log, "set-quota", req, setQuotaOf)
	if err != nil {
		return err
	}
	var quota string
	switch {
	case !c.serverQuota && r.Quota == 0:
		quota = "no quota (set for them)"
	case !c.serverQuota:
		quota = units.Bytes(r.Quota) + " (set for them)"
	case !served: // the tool knows not the server's --user-quota-mib
		quota = "the server's quota (its --user-quota-mib)"
	case r.Quota == 0:
		quota = "the server's quota, none"
	default:
		quota = "the server's quota, " + units.Bytes(r.Quota)
	}
	fmt.Fprintf(stdout, "%s now has %s%s; their ops hold %s\n", r.Username, quota, byServer(served), units.Bytes(r.Usage))
	return nil
}

// newQuota is set-quota's request.
type newQuota struct {
	Username string `json:"username"`
	Bytes    int64  `json:"bytes"` // engine.ServerQuota: the server's
}

// userQuota is a user's quota and what their ops hold.
type userQuota struct {
	Username string `json:"username"`
	Quota    int64  `json:"quota"`
	Usage    int64  `json:"usage"`
}

func setQuotaOf(ctx context.Context, st store, req newQuota) (userQuota, error) {
	u, err := st.eng.SetUserQuota(ctx, req.Username, req.Bytes)
	if errors.Is(err, engine.ErrNotFound) {
		return userQuota{}, fmt.Errorf("set-quota: no user %q", req.Username)
	}
	if err != nil {
		return userQuota{}, fmt.Errorf("set-quota: %w", err)
	}
	usage, err := st.eng.Usage(u.ID)
	if err != nil {
		return userQuota{}, err
	}
	return userQuota{Username: u.Username, Quota: st.eng.QuotaOf(u.ID), Usage: usage}, nil
}

// showUser prints a user's account as the store holds it, for an
// operator answering them ("I cannot sign in", "my messages are
// refused"): their devices signed in, what their ops hold against which
// quota, how many users they block.
func showUser(ctx context.Context, c *config, log *slog.Logger, stdout io.Writer) error {
	if c.username == "" {
		return usageErr(errors.New("show-user needs --username NAME"))
	}
	u, served, err := onStore(ctx, c, log, "show-user", struct {
		Username string `json:"username"`
	}{c.username}, showUserIn)
	if err != nil {
		return err
	}
	switch {
	case !u.Readable:
		fmt.Fprintf(stdout, "user %s (id %s): their record cannot be read (ferryd check reports it; restore it from a backup)\n", u.Username, u.ID)
	default:
		fmt.Fprintf(stdout, "user %s (id %s), display name %q\n", u.Username, u.ID, u.DisplayName)
	}
	var in, refused []deviceShown
	for _, d := range u.Devices {
		if d.Unreadable {
			refused = append(refused, d)
		} else {
			in = append(in, d)
		}
	}
	devices := func(n int) string {
		if n == 1 {
			return "1 device"
		}
		return fmt.Sprintf("%d devices", n)
	}
	fmt.Fprintf(stdout, "  %s signed in\n", devices(len(in)))
	for _, d := range in {
		fmt.Fprintf(stdout, "    %s  %q, since %s\n", d.ID, d.Name, d.Created.UTC().Format("2006-01-02 15:04 UTC"))
	}
	if len(refused) > 0 {
		fmt.Fprintf(stdout, "  %s refused, their records unreadable (ferryd check reports them; ferryd revoke-devices revokes them):\n", devices(len(refused)))
		for _, d := range refused {
			fmt.Fprintf(stdout, "    %s\n", d.ID)
		}
	}
	var quota string
	switch {
	case u.OwnQuota && u.Quota == 0:
		quota = "no quota (set for them)"
	case u.OwnQuota:
		quota = "a quota of " + units.Bytes(u.Quota) + " (set for them)"
	case !served: // the tool knows not the server's --user-quota-mib
		quota = "the server's quota (its --user-quota-mib)"
	case u.Quota == 0:
		quota = "the server's quota, none"
	default:
		quota = "the server's quota, " + units.Bytes(u.Quota)
	}
	held := units.Bytes(u.Usage)
	if u.UsageUnreadable {
		held = "what the store cannot read (their usage's record does not decode: ferryd check reports it, ferryd rebuild counts it anew)"
	}
	fmt.Fprintf(stdout, "  their ops hold %s; %s\n", held, quota)
	users := "users"
	if u.Blocks == 1 {
		users = "user"
	}
	fmt.Fprintf(stdout, "  they block %d %s\n", u.Blocks, users)
	if served {
		fmt.Fprintf(stdout, "  (read%s)\n", byServer(served))
	}
	return nil
}

// userShown is show-user's answer.
type userShown struct {
	ID          string        `json:"id"`
	Username    string        `json:"username"`
	Readable    bool          `json:"readable"` // their record decodes
	DisplayName string        `json:"display_name"`
	Devices     []deviceShown `json:"devices"`
	Usage       int64         `json:"usage"`
	// UsageUnreadable: their usage's record does not decode.
	UsageUnreadable bool  `json:"usage_unreadable"`
	Quota           int64 `json:"quota"`
	OwnQuota        bool  `json:"own_quota"`
	Blocks          int   `json:"blocks"`
}

type deviceShown struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Created    time.Time `json:"created"`
	Unreadable bool      `json:"unreadable"` // its record does not decode: refused
}

func showUserIn(_ context.Context, st store, req struct {
	Username string `json:"username"`
}) (userShown, error) {
	id, name, err := namedUser(st, "show-user", req.Username)
	if err != nil {
		return userShown{}, err
	}
	u := userShown{ID: id.String(), Username: name}
	// What a record that does not decode stops is said, not logged: the
	// operator reads it here.
	switch found, err := st.eng.UserForOperator(id); {
	case err == nil:
		u.Readable, u.DisplayName = true, found.DisplayName
	case !errors.Is(err, engine.ErrAccountDamaged) && !errors.Is(err, engine.ErrNotFound):
		return userShown{}, fmt.Errorf("show-user: %w", err)
	}
	devs, err := st.eng.Devices(engine.Actor{User: id}) // the operator: no device of the user's
	if err != nil {
		return userShown{}, fmt.Errorf("show-user: %w", err)
	}
	for _, d := range devs {
		u.Devices = append(u.Devices, deviceShown{ID: d.ID.String(), Name: d.Name, Created: d.Created, Unreadable: d.Unreadable})
	}
	switch u.Usage, err = st.eng.Usage(id); {
	case errors.Is(err, engine.ErrAccountDamaged):
		u.UsageUnreadable = true
	case err != nil:
		return userShown{}, fmt.Errorf("show-user: %w", err)
	}
	u.Quota, u.OwnQuota = st.eng.OwnQuota(id)
	if u.Blocks, err = st.eng.BlockCount(id); err != nil {
		return userShown{}, fmt.Errorf("show-user: %w", err)
	}
	return u, nil
}

// newEpoch marks a stopped server's store so that its next start serves a
// new epoch, once: for a store restored by other means than backup (a
// copy of its folder, a disk snapshot), whose devices must repair and not
// trust their cursors.
func newEpoch(c *config, log *slog.Logger, stdout io.Writer) error {
	eng, err := openStopped(c, log)
	if err != nil {
		return err
	}
	defer eng.Close()
	if err := eng.StartNewEpochAtNextOpen(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "the next start of a server on %s serves a new epoch (now %s): its devices repair and download again\n", c.data, eng.Epoch())
	return nil
}

func check(ctx context.Context, c *config, log *slog.Logger, stdout io.Writer) error {
	rep, served, err := onStore(ctx, c, log, "check", struct{}{}, checkStore)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "checked %d conversations, %d ops, %d feed entries%s\n", rep.Conversations, rep.Ops, rep.FeedEntries, byServer(served))
	if err := rep.Err(); err != nil {
		return fmt.Errorf("store is inconsistent (ferryd rebuild repairs what its logs imply; back it up first with ferryd backup): %w", err)
	}
	fmt.Fprintln(stdout, "store is consistent")
	return nil
}

// checkStore checks the store as it is at one moment: a running server's
// writes go on meanwhile.
func checkStore(_ context.Context, st store, _ struct{}) (engine.CheckReport, error) {
	return st.eng.Check()
}

func backup(ctx context.Context, c *config, log *slog.Logger, stdout io.Writer) error {
	if c.to == "" {
		return usageErr(errors.New("backup needs --to DIR"))
	}
	if _, err := os.Stat(c.to); err == nil {
		return usageErr(fmt.Errorf("backup: %s already exists; --to names a folder the backup creates", c.to))
	}
	if err := backupInside(c.data, c.to); err != nil {
		return usageErr(err)
	}
	// Absolute: a server running on the store resolves it, from its own
	// working directory.
	_, served, err := onStore(ctx, c, log, "backup", backupTo{To: []byte(absPath(c.to))}, backupStore)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup written to %s%s; a server opened on it starts a new epoch, and devices repair\n", c.to, byServer(served))
	return nil
}

// backupTo is backup's request.
type backupTo struct {
	To []byte `json:"to"` // absolute; bytes, which a path is, not UTF-8 text as JSON's strings are
}

// backupStore writes a copy of the store as it is at one moment: every op
// acknowledged before it began is in it.
func backupStore(_ context.Context, st store, req backupTo) (struct{}, error) {
	to := string(req.To)
	if !filepath.IsAbs(to) {
		return struct{}{}, badControlCall{fmt.Errorf("backup: %q is not an absolute path", to)}
	}
	if err := backupInside(st.dir, to); err != nil {
		return struct{}{}, badControlCall{err}
	}
	return struct{}{}, st.eng.Backup(to)
}

// backupInside refuses a backup to a folder inside the store's.
func backupInside(data, to string) error {
	if rel, err := filepath.Rel(realPath(data), realPath(to)); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("backup: --to %s is inside --data %s: a copy of the store's folder would carry its backup along; put it elsewhere", to, data)
	}
	return nil
}

// compact rewrites the whole store: the bodies that deletes for everyone
// erased leave the tables (Pebble drops a value only when a compaction
// reaches it), and tables written before Ferry gave every table a Bloom
// filter get one.
//
// Interrupted (SIGINT, SIGTERM), it stops, leaving the store as
// consistent as any compaction does.
func compact(ctx context.Context, c *config, log *slog.Logger, stdout io.Writer) error {
	r, served, err := onStore(ctx, c, log, "compact", struct{}{}, compactStore)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "compacted %s%s: tables %s -> %s\n", c.data, byServer(served), kib(r.Before), kib(r.After))
	return nil
}

// compacted is what compact did: the tables' bytes before and after.
type compacted struct {
	Before uint64 `json:"before"`
	After  uint64 `json:"after"`
}

// compactStore rewrites the whole store, stopping when ctx ends (the tool
// interrupted, or the server running it stopping) once the part under
// way is done: Pebble lets a compaction it began finish, and one part
// may be a whole level of the store's tables.
func compactStore(ctx context.Context, st store, _ struct{}) (compacted, error) {
	if err := ctx.Err(); err != nil { // interrupted while it waited its turn
		return compacted{}, fmt.Errorf("compact: %w", err)
	}
	before, err := st.eng.DiskUsage(false)
	if err != nil {
		return compacted{}, err
	}
	if err := st.eng.Compact(ctx); err != nil {
		if ctx.Err() != nil {
			return compacted{}, fmt.Errorf("compact: stopped; the part under way finishes: %w", err)
		}
		return compacted{}, fmt.Errorf("compact: %w", err)
	}
	after, err := st.eng.DiskUsage(false)
	if err != nil {
		return compacted{}, err
	}
	return compacted{Before: before.Tables, After: after.Tables}, nil
}

// rebuild repairs the store from its logs (engine.Rebuild), prints what
// it fixed and what it could not, and then whether the store is
// consistent: an error when it is not.
func rebuild(c *config, log *slog.Logger, stdout io.Writer) error {
	o := engineOptions(c, log)
	rep, err := engine.Rebuild(c.data, o)
	if err != nil {
		return storeErr(c, err)
	}
	fmt.Fprintf(stdout, "read %d conversations, %d ops\n", rep.Conversations, rep.Ops)
	if len(rep.Fixes) == 0 {
		fmt.Fprintln(stdout, "fixed nothing: what the store derives from its logs agrees with them")
	}
	for _, f := range rep.Fixes {
		fmt.Fprintf(stdout, "fixed: %s: %d\n", f.What, f.N)
	}
	for _, u := range rep.Unfixed {
		fmt.Fprintf(stdout, "not fixed: %s\n", u)
	}
	fmt.Fprintf(stdout, "checked %d conversations, %d ops, %d feed entries\n", rep.Check.Conversations, rep.Check.Ops, rep.Check.FeedEntries)
	if err := rep.Check.Err(); err != nil {
		return fmt.Errorf("store is still inconsistent: %w", err)
	}
	fmt.Fprintln(stdout, "store is consistent")
	return nil
}

func kib(n uint64) string { return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10)) }

// prefixList is a flag of comma-separated addresses and CIDR prefixes.
type prefixList []netip.Prefix

func (l *prefixList) String() string {
	parts := make([]string, len(*l))
	for i, p := range *l {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// Set adds the entries of v: the flag may be given more than once.
func (l *prefixList) Set(v string) error {
	out := *l
	for _, e := range strings.Split(v, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if p, err := netip.ParsePrefix(e); err == nil {
			// Addresses are compared unmapped: an IPv4-mapped prefix
			// becomes the IPv4 one.
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return fmt.Errorf("%q is neither an address nor a CIDR prefix", e)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	*l = out
	return nil
}

// minFreeDisk maps --min-free-disk-mib (0: no check; the tools, which
// have no such flag, leave it 0) to engine.Options.MinFreeDisk.
func minFreeDisk(mib uint) int64 {
	if mib == 0 {
		return -1
	}
	return int64(mib) << 20
}

// durationOrOff maps a timeout's flag (0: no limit) to server.Options
// (negative: no limit; 0 would mean the default).
func durationOrOff(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// limitOrOff maps a limit's flag (0: no limit) to server.Options
// (negative: no limit; 0 would mean the default).
func limitOrOff(flagValue int) int {
	if flagValue <= 0 {
		return -1
	}
	return flagValue
}

// sideListener is a side address bound: the profiler and the metrics on
// --debug-addr, the metrics alone on --metrics-addr (one listener when both
// name the same address).
type sideListener struct {
	flag, addr string
	ln         net.Listener
}

// listenSide binds the side addresses, before serve opens the store: a
// busy or bad one fails the start with nothing created.
func listenSide(c *config) ([]sideListener, error) {
	var out []sideListener
	for _, s := range []sideListener{{flag: "--debug-addr", addr: c.debugAddr}, {flag: "--metrics-addr", addr: c.metricsAddr}} {
		if s.addr == "" || s.flag == "--metrics-addr" && s.addr == c.debugAddr {
			continue
		}
		ln, err := net.Listen("tcp", s.addr)
		if err != nil {
			for _, b := range out {
				b.ln.Close()
			}
			return nil, fmt.Errorf("%s: %w", s.flag, err)
		}
		s.ln = ln
		out = append(out, s)
	}
	return out, nil
}

// serveSide serves the side listeners. It returns the addresses bound, by
// flag, and what closes them.
func serveSide(c *config, lns []sideListener, srv *server.Server, log *slog.Logger) (map[string]string, func()) {
	metrics := srv.MetricsHandler()
	bound := map[string]string{}
	var servers []*http.Server
	closeAll := func() {
		// A scrape under way finishes first: it may read the store.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range servers {
			if err := s.Shutdown(ctx); err != nil {
				_ = s.Close()
			}
		}
	}
	for _, sl := range lns {
		mux := http.NewServeMux()
		if sl.flag == "--debug-addr" {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		mux.Handle("GET /metrics", metrics)
		bound[sl.flag] = sl.ln.Addr().String()
		if sl.addr == c.metricsAddr {
			bound["--metrics-addr"] = sl.ln.Addr().String()
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		go func() { _ = hs.Serve(sl.ln) }()
		log.Info("side address listening", "flag", sl.flag, "addr", sl.ln.Addr().String())
	}
	return bound, closeAll
}
