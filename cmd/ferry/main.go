// Command ferry is a Ferry device on the command line: for trying Ferry in
// two terminals, for scripts (--json), and for operators.
//
//	ferry [global flags] <command> [arguments]
//
// Each profile folder (--profile) is one device: its identity, its replica
// and its outbox. Run "ferry help" for the commands.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/maphash"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/internal/units"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		// The SDK's errors already say "ferry:"; say it once.
		fmt.Fprintln(os.Stderr, "ferry:", strings.TrimPrefix(err.Error(), "ferry: "))
		os.Exit(1)
	}
}

const usage = `usage: ferry [global flags] <command> [arguments]

Commands:
  register USERNAME [--device NAME]     create a user with this profile as its first device
  login USERNAME [--device NAME]        add this profile as a device of an existing user
  logout                                revoke this device and forget its credentials
  devices [--revoke ID]                 list (or revoke) the user's devices
  devices --rename ID --name NAME       rename one of them (this one too)
  name [--] DISPLAY NAME..., name --reset
                                        set the name others see you by (--reset: your username)
  passwd [--sign-out-others]            change your password (the current one, then the new one)
  block USER, unblock USER, blocked     stop (or let) a user adding you to conversations; list them
  usage                                 what the user stores on the server, and its quota
  conversation create TITLE [--with USER]...
  conversation list [--offline]         conversations with unread counts
  conversation members CONV
  conversation add CONV USER [--admin]
  conversation remove CONV USER
  conversation title CONV TITLE
  conversation role CONV USER member|admin|owner
  conversation leave CONV
  send CONV [--] TEXT...                send a message (queued offline, sent when possible)
  edit CONV MSG [--] TEXT...            replace the text of one of your messages
  delete CONV MSG                       delete a message for everyone
  react CONV MSG [--remove] [--] KEY    add (or remove) your reaction, such as an emoji
  failed [--dismiss OP]... [--dismiss-all]
                                        ops the server refused, and why; dismiss them
  sync                                  catch up once and exit when caught up
  tail [CONV] [--last N] [--count N]    print the newest messages, then those that arrive (and
                                        again, marked updated, those edited, deleted or reacted to)
  history CONV [--limit N] [--before SEQ] [--since TIME] [--until TIME]
  read CONV [SEQ]                       mark read (everything held, or up to SEQ; queued offline)
  status                                this device: its account, conversations and outbox

CONV is a conversation id or its title (exact, or else differing in case only);
MSG is a message's seq, as history prints it (12 or #12), or its id (history
--json), which a message not sent yet has alone; USER is a username. Global flags go before or after the command; after a
"--" everything is the command's. Passwords come from --password-stdin (the first line of
stdin; passwd's new one from the second), else FERRY_PASSWORD (passwd's new one from
FERRY_NEW_PASSWORD), else a prompt. FERRY_SERVER names the server of
a profile not signed in yet; a signed-in one syncs with the server it signed
in to, unless --server says otherwise.

Global flags:
`

type app struct {
	profile string
	server  string
	// serverFromEnv: server is FERRY_SERVER's, not --server's. It names
	// the server for a profile not signed in yet; a signed-in one syncs
	// with the server it signed in to, where its token belongs.
	serverFromEnv bool
	json          bool
	timeout       time.Duration
	verbose       bool
	stdin         io.Reader
	out           io.Writer
	errOut        io.Writer
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a := &app{stdin: stdin, out: stdout, errOut: stderr}
	fs := flag.NewFlagSet("ferry", flag.ContinueOnError)
	fs.SetOutput(stderr)
	usageOut := stderr
	fs.Usage = func() {
		fmt.Fprint(usageOut, usage)
		fs.SetOutput(usageOut)
		fs.PrintDefaults()
		fs.SetOutput(stderr)
	}
	home, _ := os.UserHomeDir()
	def := env("FERRY_PROFILE", filepath.Join(home, ".ferry", "default"))
	fs.StringVar(&a.profile, "profile", def, "profile folder: one device (env FERRY_PROFILE)")
	fs.StringVar(&a.server, "server", env("FERRY_SERVER", ""), "server URL, such as http://127.0.0.1:8080 (env FERRY_SERVER, for a profile not signed in yet; remembered by register and login)")
	fs.BoolVar(&a.json, "json", false, "print JSON, for scripts")
	fs.DurationVar(&a.timeout, "timeout", 30*time.Second, "how long network commands may take")
	fs.BoolVar(&a.verbose, "v", false, "log what the device does to stderr")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() == 0 || fs.Arg(0) == "help" {
		if fs.NArg() > 0 {
			usageOut = stdout // asked for: ferry help | less
		}
		fs.Usage()
		return nil
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	rest, err := globalsAfter(fs, rest)
	if err != nil {
		return err
	}
	a.serverFromEnv = a.server != ""
	fs.Visit(func(f *flag.Flag) { a.serverFromEnv = a.serverFromEnv && f.Name != "server" })
	switch cmd {
	case "register", "login":
		return a.signIn(ctx, cmd, rest)
	case "logout":
		return a.logout(ctx)
	case "devices":
		return a.devices(ctx, rest)
	case "passwd":
		return a.passwd(ctx, rest)
	case "name":
		return a.name(ctx, rest)
	case "block", "unblock", "blocked":
		return a.block(ctx, cmd, rest)
	case "usage":
		return a.usage(ctx, rest)
	case "conversation", "conv":
		return a.conversation(ctx, rest)
	case "send":
		return a.send(ctx, rest)
	case "edit", "delete", "react":
		return a.onMessage(ctx, cmd, rest)
	case "failed":
		return a.failed(ctx, rest)
	case "sync":
		return a.sync(ctx)
	case "tail":
		return a.tail(ctx, rest)
	case "history":
		return a.history(ctx, rest)
	case "read":
		return a.read(ctx, rest)
	case "status":
		return a.status()
	}
	return fmt.Errorf("unknown command %q (ferry help lists them)", cmd)
}

// globalsAfter takes the global flags (--json, --timeout, ...) from a
// command's arguments, where a user puts them as often as before it: up to
// a "--", after which everything is the command's (a message that starts
// with a dash).
func globalsAfter(fs *flag.FlagSet, args []string) ([]string, error) {
	var out []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			return append(out, args[i:]...), nil
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		f := fs.Lookup(name)
		if !strings.HasPrefix(arg, "-") || arg == "-" || f == nil {
			out = append(out, arg)
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !hasValue && !(ok && b.IsBoolFlag()) {
			if i+1 == len(args) {
				return nil, fmt.Errorf("flag needs an argument: %s", arg)
			}
			i++
			value = args[i]
		} else if !hasValue {
			value = "true"
		}
		if err := fs.Set(name, value); err != nil {
			return nil, fmt.Errorf("invalid value %q for flag %s: %v", value, arg, err)
		}
	}
	return out, nil
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// open opens the profile's device: on --server, on FERRY_SERVER when the
// profile is not signed in, and on the server it signed in to otherwise.
func (a *app) open() (d *clientsdk.Device, err error) {
	defer func() {
		if errors.Is(err, clientsdk.ErrProfileInUse) {
			err = fmt.Errorf("profile %s is in use by another ferry command (a tail, say): one at a time per profile", a.profile)
		}
	}()
	opts := []clientsdk.Option{}
	if a.verbose {
		opts = append(opts, clientsdk.WithLogger(slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	}
	if a.server == "" {
		return clientsdk.Open(a.profile, opts...)
	}
	if a.serverFromEnv {
		d, err := clientsdk.Open(a.profile, opts...)
		if err != nil {
			return nil, err
		}
		if _, err := d.Account(); err == nil {
			return d, nil
		}
		if err := d.Close(); err != nil {
			return nil, err
		}
	}
	return clientsdk.Open(a.profile, append(opts, clientsdk.WithServer(a.server))...)
}

// with opens the device, runs f with a deadline, and closes it. Every
// command but register and login needs a signed-in profile.
func (a *app) with(ctx context.Context, f func(context.Context, *clientsdk.Device) error) error {
	return a.open2(ctx, true, f)
}

func (a *app) open2(ctx context.Context, signedIn bool, f func(context.Context, *clientsdk.Device) error) error {
	if signedIn && a.noProfile() {
		return a.notSignedIn()
	}
	d, err := a.open()
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := d.Account(); signedIn && err != nil {
		return a.notSignedIn()
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	err = f(ctx, d)
	if errors.Is(err, clientsdk.ErrNoServer) {
		return errNoServer
	}
	return err
}

var errNoServer = errors.New("no server to sign in to: give --server URL (such as http://127.0.0.1:8080) or set FERRY_SERVER")

// noProfile reports whether the profile holds no device: its folder is
// missing, or holds no replica (a mistyped --profile naming some other
// folder). A command that needs a signed-in profile says so rather than
// make one there.
func (a *app) noProfile() bool {
	_, err := os.Stat(filepath.Join(a.profile, "replica"))
	return errors.Is(err, fs.ErrNotExist)
}

func (a *app) notSignedIn() error {
	return fmt.Errorf("profile %s is not signed in: run ferry register or ferry login first", a.profile)
}

// print writes v as JSON in --json mode, else text.
func (a *app) print(v any, text string) {
	if a.json {
		b, _ := json.Marshal(v)
		fmt.Fprintln(a.out, string(b))
		return
	}
	if text != "" {
		fmt.Fprintln(a.out, text)
	}
}

// flags parses a command's own flags, allowing them among the arguments.
func flags(name string, args []string, stderr io.Writer, define func(*flag.FlagSet)) ([]string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	define(fs)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func (a *app) password(fromStdin bool) (string, error) {
	if p := os.Getenv("FERRY_PASSWORD"); p != "" && !fromStdin {
		return p, nil
	}
	if !fromStdin {
		fmt.Fprint(a.errOut, "password: ")
	}
	line, err := bufio.NewReader(a.stdin).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("read password: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func (a *app) signIn(ctx context.Context, cmd string, args []string) error {
	var device string
	var fromStdin bool
	pos, err := flags(cmd, args, a.errOut, func(fs *flag.FlagSet) {
		host, _ := os.Hostname()
		fs.StringVar(&device, "device", "ferry cli on "+host, "this device's name")
		fs.BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of stdin")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("usage: ferry %s USERNAME", cmd)
	}
	// A new profile needs a server to sign in to: said before a password
	// is asked for and a profile made.
	if a.server == "" && a.noProfile() {
		return errNoServer
	}
	pw, err := a.password(fromStdin)
	// Signing in (again, on a refused profile) is what FERRY_SERVER is for.
	a.serverFromEnv = false
	if err != nil {
		return err
	}
	return a.open2(ctx, false, func(ctx context.Context, d *clientsdk.Device) error {
		var err error
		if cmd == "register" {
			err = d.Register(ctx, pos[0], pw, device)
		} else {
			err = d.Login(ctx, pos[0], pw, device)
		}
		if err != nil {
			return err
		}
		acc, _ := d.Account()
		a.print(accountJSON(acc), fmt.Sprintf("signed in as %s on device %s (profile %s)", acc.Username, acc.Device, a.profile))
		return nil
	})
}

type accountOut struct {
	Server   string `json:"server"`
	User     string `json:"user_id"`
	Device   string `json:"device_id"`
	Username string `json:"username"`
}

func accountJSON(acc clientsdk.Account) accountOut {
	return accountOut{Server: acc.Server, User: acc.User.String(), Device: acc.Device.String(), Username: acc.Username}
}

func (a *app) logout(ctx context.Context) error {
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		if err := d.Logout(ctx); err != nil {
			if acc, aerr := d.Account(); aerr == nil && acc.Refused {
				// Refused when last asked: most likely revoked already.
				return fmt.Errorf("%w\nthe device stays signed in here; the server refused it when last asked (revoked, most likely), so its token no longer works: log out again once the server is in reach, or delete the profile folder %s", err, a.profile)
			} else if aerr == nil {
				// The server was not told: the token still works.
				return fmt.Errorf("%w\nthe device stays signed in, its token valid: log out again once the server is in reach, or revoke it from another device (ferry devices --revoke %s)", err, acc.Device)
			}
			return err
		}
		a.print(map[string]bool{"logged_out": true}, "logged out; this device's token no longer works")
		return nil
	})
}

func (a *app) devices(ctx context.Context, args []string) error {
	var revoke, rename, name string
	named := false // --name "" names it "unnamed device"
	pos, err := flags("devices", args, a.errOut, func(fs *flag.FlagSet) {
		fs.StringVar(&revoke, "revoke", "", "revoke the device with this id")
		fs.StringVar(&rename, "rename", "", "rename the device with this id (to --name)")
		fs.Func("name", "the device's new name, with --rename", func(s string) error {
			name, named = s, true
			return nil
		})
	})
	switch {
	case err != nil:
		return err
	case len(pos) > 0 || revoke != "" && rename != "" || (rename != "") != named:
		return errors.New("usage: ferry devices [--revoke ID | --rename ID --name NAME]")
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		if rename != "" {
			id, err := ulid.ParseStrict(rename)
			if err != nil {
				return fmt.Errorf("--rename %q is not a device id", rename)
			}
			dv, err := d.RenameDevice(ctx, id, name)
			if err != nil {
				return err
			}
			a.print(map[string]any{"id": id.String(), "name": dv.Name}, fmt.Sprintf("device %s is named %q", id, dv.Name))
			return nil
		}
		if revoke != "" {
			id, err := ulid.ParseStrict(revoke)
			if err != nil {
				return fmt.Errorf("--revoke %q is not a device id", revoke)
			}
			if err := d.RevokeDevice(ctx, id); err != nil {
				return err
			}
			a.print(map[string]any{"revoked": id.String()}, fmt.Sprintf("device %s revoked: it signs in again to sync", id))
			return nil
		}
		ds, err := d.Devices(ctx)
		if err != nil {
			return err
		}
		type out struct {
			ID      string `json:"id"`
			Name    string `json:"name"`
			Current bool   `json:"current"`
		}
		var os []out
		var lines []string
		for _, dv := range ds {
			os = append(os, out{ID: dv.ID.String(), Name: dv.Name, Current: dv.Current})
			mark := " "
			if dv.Current {
				mark = "*"
			}
			lines = append(lines, fmt.Sprintf("%s %s  %s", mark, dv.ID, dv.Name))
		}
		a.print(os, strings.Join(lines, "\n"))
		return nil
	})
}

// name sets the user's display name: name [--] WORDS..., or name --reset
// for their username.
func (a *app) name(ctx context.Context, args []string) error {
	// Before a "--", a word with a leading dash is a flag: a typo does not
	// become the name every member sees.
	var after []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, after = args[:i], args[i+1:]
	}
	var reset bool
	words, err := flags("name", args, a.errOut, func(fs *flag.FlagSet) {
		fs.BoolVar(&reset, "reset", false, "set your display name back to your username")
	})
	if err != nil {
		return err
	}
	display := strings.Join(append(words, after...), " ")
	if reset == (strings.TrimSpace(display) != "") {
		return errors.New("usage: ferry name [--] DISPLAY NAME..., or ferry name --reset for your username")
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		u, err := d.SetDisplayName(ctx, display)
		if err != nil {
			return err
		}
		a.print(map[string]any{"username": u.Username, "display_name": u.DisplayName},
			fmt.Sprintf("%s is shown as %q", u.Username, u.DisplayName))
		return nil
	})
}

// passwd changes the user's password: the current one, then the new one,
// from --password-stdin's first two lines, else FERRY_PASSWORD and
// FERRY_NEW_PASSWORD, else prompts.
func (a *app) passwd(ctx context.Context, args []string) error {
	var fromStdin, signOut bool
	pos, err := flags("passwd", args, a.errOut, func(fs *flag.FlagSet) {
		fs.BoolVar(&fromStdin, "password-stdin", false, "read the current password and the new one from the first two lines of stdin")
		fs.BoolVar(&signOut, "sign-out-others", false, "sign out every other device of yours (this one stays signed in)")
	})
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: ferry passwd [--sign-out-others] [--password-stdin]")
	}
	if a.noProfile() {
		return a.notSignedIn() // before asking for passwords
	}
	in := bufio.NewReader(a.stdin) // one reader: the two lines may come in one read
	prompted := false              // the last password read was asked for at a prompt
	read := func(prompt, envName string) (string, error) {
		prompted = false
		if p := os.Getenv(envName); envName != "" && p != "" && !fromStdin {
			return p, nil
		}
		if !fromStdin {
			fmt.Fprint(a.errOut, prompt)
			prompted = true
		}
		line, err := in.ReadString('\n')
		if err != nil && line == "" {
			return "", fmt.Errorf("read the %s: %w", strings.TrimSuffix(prompt, ": "), err)
		}
		return strings.TrimRight(line, "\r\n"), nil
	}
	current, err := read("current password: ", "FERRY_PASSWORD")
	if err != nil {
		return err
	}
	next, err := read("new password: ", "FERRY_NEW_PASSWORD")
	if err != nil {
		return err
	}
	if prompted {
		// Typed at a prompt: a typo would set a password no one knows.
		again, err := read("new password again: ", "")
		if err != nil {
			return err
		}
		if again != next {
			return errors.New("the new passwords differ; nothing changed")
		}
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		n, err := d.ChangePassword(ctx, current, next, signOut)
		if err != nil {
			return err
		}
		line := "password changed; your other devices stay signed in"
		switch {
		case signOut && n == 1:
			line = "password changed; 1 other device signed out"
		case signOut:
			line = fmt.Sprintf("password changed; %d other devices signed out", n)
		}
		a.print(map[string]any{"changed": true, "devices_signed_out": n}, line)
		return nil
	})
}

// block blocks or unblocks a user, or lists those blocked.
func (a *app) block(ctx context.Context, cmd string, args []string) error {
	pos, err := flags(cmd, args, a.errOut, func(*flag.FlagSet) {})
	if err != nil {
		return err
	}
	if cmd == "blocked" && len(pos) != 0 || cmd != "blocked" && len(pos) != 1 {
		if cmd == "blocked" {
			return errors.New("usage: ferry blocked")
		}
		return fmt.Errorf("usage: ferry %s USER", cmd)
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		if cmd == "blocked" {
			us, err := d.BlockedUsers(ctx)
			if err != nil {
				return err
			}
			type out struct {
				ID       string `json:"id"`
				Username string `json:"username"`
			}
			os := []out{}
			var lines []string
			for _, u := range us {
				os = append(os, out{ID: u.ID.String(), Username: u.Username})
				lines = append(lines, fmt.Sprintf("%s  %s", u.ID, u.Username))
			}
			text := strings.Join(lines, "\n")
			if len(us) == 0 {
				text = "you block no one"
			}
			a.print(os, text)
			return nil
		}
		u, err := d.LookupUser(ctx, pos[0])
		if err != nil {
			return err
		}
		if cmd == "block" {
			err = d.BlockUser(ctx, u.ID)
		} else {
			err = d.UnblockUser(ctx, u.ID)
		}
		if err != nil {
			return err
		}
		text := fmt.Sprintf("%s can no longer add you to conversations (those you share stay)", u.Username)
		if cmd == "unblock" {
			text = fmt.Sprintf("%s can add you to conversations again", u.Username)
		}
		a.print(map[string]any{cmd + "ed": u.ID.String()}, text)
		return nil
	})
}

// usage says what the user's ops hold on the server against its quota.
func (a *app) usage(ctx context.Context, args []string) error {
	if _, err := flags("usage", args, a.errOut, func(*flag.FlagSet) {}); err != nil {
		return err
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		u, err := d.Usage(ctx)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("your ops hold %s on the server, which holds you to no quota", units.Bytes(u.Bytes))
		if u.Quota > 0 {
			line = fmt.Sprintf("your ops hold %s of the %s you may store on the server (%d%%); deleting messages makes room",
				units.Bytes(u.Bytes), units.Bytes(u.Quota), u.Bytes*100/u.Quota)
		}
		a.print(map[string]int64{"bytes": u.Bytes, "quota": u.Quota}, line)
		return nil
	})
}

// resolve finds a conversation by id or title, syncing once when the
// title is not known here yet.
func (a *app) resolve(ctx context.Context, d *clientsdk.Device, ref string) (ulid.ULID, error) {
	return orAfterSync(ctx, a, d, func() (ulid.ULID, error) { return resolveConv(d, ref) })
}

// orAfterSync returns what find finds, asking it again after one sync
// when what it looks for is not held here (notHere): a sync may bring it.
func orAfterSync[T any](ctx context.Context, a *app, d *clientsdk.Device, find func() (T, error)) (T, error) {
	v, err := find()
	if !errors.As(err, new(notHere)) {
		return v, err
	}
	if serr := a.syncFirst(ctx, d); serr != nil {
		return v, fmt.Errorf("%w (and sync failed: %v)", err, serr)
	}
	return find()
}

// notHere is the error for a conversation or a message the device does
// not hold: a sync may bring it.
type notHere string

func (e notHere) Error() string { return string(e) }

// resolveConv finds a conversation by id or exact title.
func resolveConv(d *clientsdk.Device, ref string) (ulid.ULID, error) {
	if id, err := ulid.ParseStrict(ref); err == nil {
		return id, nil
	}
	cs, err := d.Conversations()
	if err != nil {
		return ulid.ULID{}, err
	}
	// The exact title; failing that, one that differs in case only.
	var found []clientsdk.Conversation
	for _, exact := range []bool{true, false} {
		for _, c := range cs {
			if c.Title == ref || !exact && strings.EqualFold(c.Title, ref) {
				found = append(found, c)
			}
		}
		if len(found) > 0 {
			break
		}
	}
	switch len(found) {
	case 1:
		return found[0].ID, nil
	case 0:
		return ulid.ULID{}, notHere(fmt.Sprintf("no conversation titled %q (ferry conversation list shows them)", ref))
	}
	ids := make([]string, len(found))
	for i, c := range found {
		ids[i] = c.ID.String()
	}
	return ulid.ULID{}, fmt.Errorf("%d conversations are titled %q; use an id: %s", len(found), ref, strings.Join(ids, ", "))
}

func (a *app) conversation(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: ferry conversation create|list|members|add|remove|title|role|leave ...")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "list":
		var offline bool
		if _, err := flags("list", args, a.errOut, func(fs *flag.FlagSet) {
			fs.BoolVar(&offline, "offline", false, "do not sync first")
		}); err != nil {
			return err
		}
		return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
			if !offline {
				if err := a.syncFirst(ctx, d); err != nil {
					fmt.Fprintln(a.errOut, "ferry: could not sync, showing what this device holds:", err)
				}
			}
			return a.listConvs(d)
		})
	case "create":
		var with multi
		pos, err := flags("create", args, a.errOut, func(fs *flag.FlagSet) { fs.Var(&with, "with", "a member to add (repeatable)") })
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return errors.New("usage: ferry conversation create TITLE [--with USER]...")
		}
		return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
			var members []ulid.ULID
			for _, u := range with {
				user, err := d.LookupUser(ctx, u)
				if err != nil {
					return err
				}
				members = append(members, user.ID)
			}
			conv, err := d.CreateConversation(ctx, pos[0], members...)
			if err != nil {
				return err
			}
			queued, err := a.syncQueued(ctx, d, "the conversation")
			if err != nil {
				return err
			}
			a.print(map[string]any{"id": conv.String(), "title": pos[0], "synced": queued == ""},
				fmt.Sprintf("created %s %q%s", conv, pos[0], queued))
			return nil
		})
	case "members":
		if len(args) != 1 {
			return errors.New("usage: ferry conversation members CONV")
		}
		return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
			conv, err := a.resolve(ctx, d, args[0])
			if err != nil {
				return err
			}
			ms, err := d.Members(ctx, conv)
			if err != nil {
				return err
			}
			type out struct {
				ID          string `json:"user_id"`
				Username    string `json:"username"`
				DisplayName string `json:"display_name"`
				Role        string `json:"role"`
			}
			var os []out
			var lines []string
			for _, m := range ms {
				os = append(os, out{ID: m.ID.String(), Username: m.Username, DisplayName: m.DisplayName, Role: m.Role.String()})
				line := fmt.Sprintf("%-20s %s", m.Username, m.Role)
				if m.DisplayName != "" && m.DisplayName != m.Username {
					line = fmt.Sprintf("%-20s %-6s %s", m.Username, m.Role, m.DisplayName)
				}
				lines = append(lines, line)
			}
			a.print(os, strings.Join(lines, "\n"))
			return nil
		})
	case "add", "remove", "title", "role", "leave":
		var admin bool
		pos, err := flags(sub, args, a.errOut, func(fs *flag.FlagSet) {
			if sub == "add" {
				fs.BoolVar(&admin, "admin", false, "add as admin")
			}
		})
		if err != nil {
			return err
		}
		want := map[string]int{"add": 2, "remove": 2, "title": 2, "role": 3, "leave": 1}[sub]
		if len(pos) != want {
			return fmt.Errorf("usage: ferry conversation %s CONV%s", sub,
				map[string]string{"add": " USER [--admin]", "remove": " USER", "title": " TITLE", "role": " USER member|admin|owner", "leave": ""}[sub])
		}
		var role clientsdk.Role
		if sub == "role" {
			if role = roleNamed(pos[2]); role == clientsdk.RoleNone {
				return fmt.Errorf("role %q: it is member, admin or owner", pos[2])
			}
		}
		return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
			if err := a.syncFirst(ctx, d); err != nil {
				return err
			}
			conv, err := resolveConv(d, pos[0])
			if err != nil {
				return err
			}
			var op ulid.ULID
			switch sub {
			case "add", "remove", "role":
				u, err := d.LookupUser(ctx, pos[1])
				if err != nil {
					return err
				}
				// What the device knows is refused before it is queued,
				// in names; the server has the last word.
				c, err := d.Conversation(conv)
				if err != nil {
					return err
				}
				member := false
				if ms, err := d.Members(ctx, conv); err == nil {
					member = slices.ContainsFunc(ms, func(m clientsdk.Member) bool { return m.ID == u.ID })
				} else {
					member = sub != "add" // unknown: let the server say
				}
				switch {
				case sub == "add" && member:
					return fmt.Errorf("%s is already a member of %q", u.Username, c.Title)
				case sub != "add" && !member:
					return fmt.Errorf("%s is not a member of %q", u.Username, c.Title)
				case sub == "role" && c.Role < clientsdk.RoleOwner:
					return fmt.Errorf("only owners may change roles (your role in %q: %s)", c.Title, c.Role)
				}
				switch sub {
				case "add":
					role := clientsdk.RoleMember
					if admin {
						role = clientsdk.RoleAdmin
					}
					op, err = d.AddMember(ctx, conv, u.ID, role)
				case "remove":
					op, err = d.RemoveMember(ctx, conv, u.ID)
				case "role":
					op, err = d.SetRole(ctx, conv, u.ID, role)
				}
				if err != nil {
					return err
				}
			case "title":
				if op, err = d.SetTitle(ctx, conv, pos[1]); err != nil {
					return err
				}
			case "leave":
				if op, err = d.Leave(ctx, conv); err != nil {
					return err
				}
			}
			return a.finishOp(ctx, d, conv, op, sub)
		})
	}
	return fmt.Errorf("unknown conversation command %q", sub)
}

// roleNamed is the role of a name ferry prints, RoleNone for another.
func roleNamed(name string) clientsdk.Role {
	for _, r := range []clientsdk.Role{clientsdk.RoleMember, clientsdk.RoleAdmin, clientsdk.RoleOwner} {
		if strings.EqualFold(name, r.String()) {
			return r
		}
	}
	return clientsdk.RoleNone
}

// finishOp pushes a queued op and reports what became of it.
func (a *app) finishOp(ctx context.Context, d *clientsdk.Device, conv, op ulid.ULID, what string) error {
	queued, err := a.syncQueued(ctx, d, what)
	if err != nil {
		return err
	}
	if fs, ferr := d.Failed(); ferr == nil {
		for _, f := range fs {
			if f.Op == op {
				return fmt.Errorf("%s refused by the server: %s: %s (ferry failed --dismiss %s forgets it)", what, f.Reason, f.Message, op)
			}
		}
	}
	state := "sent"
	if queued != "" {
		state = "queued"
	}
	a.print(map[string]string{"conversation": conv.String(), "op": op.String(), "status": state},
		fmt.Sprintf("%s %s%s", what, state, queued))
	return nil
}

// syncQueued sends what was just queued. A server out of reach leaves it
// queued: it returns the note that says so, "" once sent. One that
// refuses the device (revoked) is an error, since no later sync will send
// it either. A server that refuses the connection (down), or whose name
// does not resolve, is out of reach at once, where SyncOnce would try it
// again until the command's --timeout.
func (a *app) syncQueued(ctx context.Context, d *clientsdk.Device, what string) (queued string, err error) {
	if err := a.refused(ctx, d); err != nil {
		return fmt.Sprintf(" (the server is out of reach, %v: queued, it goes out on the next sync)", err), nil
	}
	err = d.SyncOnce(ctx)
	var te *clientsdk.TerminalError
	switch {
	case errors.As(err, &te):
		return "", fmt.Errorf("%s is queued, but the server refused to sync: %w", what, err)
	case err != nil:
		return " (the server is out of reach: queued, it goes out on the next sync)", nil
	}
	return "", nil
}

// syncFirst syncs d once, at once failing when the server refuses a
// connection (refused), where SyncOnce would try it again until the
// command's --timeout.
func (a *app) syncFirst(ctx context.Context, d *clientsdk.Device) error {
	if err := a.refused(ctx, d); err != nil {
		return fmt.Errorf("the server is out of reach: %w", err)
	}
	return d.SyncOnce(ctx)
}

// refused returns the error of a TCP connection to the server d syncs
// with (--server, or the profile's), made and closed at once, when the
// server refused it or its name does not resolve: nil otherwise, a slow
// network included, which SyncOnce then tries.
func (a *app) refused(ctx context.Context, d *clientsdk.Device) error {
	server := a.server
	if server == "" || a.serverFromEnv {
		acc, err := d.Account()
		if err != nil {
			return nil // SyncOnce says why
		}
		server = acc.Server
	}
	u, err := url.Parse(server)
	if err != nil || u.Host == "" {
		return nil
	}
	host := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := new(net.Dialer).DialContext(ctx, "tcp", host)
	if err == nil {
		return c.Close()
	}
	var dns *net.DNSError
	if errors.Is(err, syscall.ECONNREFUSED) || errors.As(err, &dns) && dns.IsNotFound {
		return err
	}
	return nil
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

type convOut struct {
	ID      string      `json:"id"`
	Title   string      `json:"title"`
	Role    string      `json:"role"`
	Removed bool        `json:"removed,omitempty"`
	Unread  uint64      `json:"unread"`
	Members int         `json:"members"`
	Loading bool        `json:"loading,omitempty"`
	Last    *messageOut `json:"last,omitempty"`
}

func (a *app) listConvs(d *clientsdk.Device) error {
	cs, err := d.Conversations()
	if err != nil {
		return err
	}
	var os []convOut
	var lines []string
	for _, c := range cs {
		o := convOut{ID: c.ID.String(), Title: c.Title, Role: c.Role.String(), Removed: c.Removed, Unread: c.Unread, Members: c.Members, Loading: c.Loading}
		line := fmt.Sprintf("%s  %-24q unread %-4d", c.ID, c.Title, c.Unread)
		if c.LastMessage != nil {
			m := message(*c.LastMessage)
			o.Last = &m
			line += fmt.Sprintf(" last: %s: %s", m.Author, m.Text)
		}
		if c.Removed {
			line += " (removed)"
		}
		os = append(os, o)
		lines = append(lines, line)
	}
	if os == nil {
		os = []convOut{}
	}
	a.print(os, strings.Join(lines, "\n"))
	return nil
}

type messageOut struct {
	Conv     string              `json:"conversation"`
	ID       string              `json:"id"`
	Seq      uint64              `json:"seq"`
	Author   string              `json:"author"`
	AuthorID string              `json:"author_id"`
	Sent     time.Time           `json:"sent"`
	Text     string              `json:"text"`
	Type     string              `json:"content_type,omitempty"`
	Edited   bool                `json:"edited,omitempty"`
	Deleted  bool                `json:"deleted,omitempty"`
	Status   string              `json:"status,omitempty"`
	React    map[string][]string `json:"reactions,omitempty"`
	// Update: tail printed this message before, and prints it again,
	// changed (edited, deleted, reacted to).
	Update bool `json:"update,omitempty"`
}

func message(m clientsdk.Message) messageOut {
	o := messageOut{Conv: m.Conv.String(), ID: m.ID.String(), Seq: m.Seq, Author: m.AuthorName, AuthorID: m.Author.String(),
		Sent: m.Sent.UTC(), Text: m.Text(), Type: m.ContentType, Edited: m.Edited, Deleted: m.Deleted}
	if o.Author == "" {
		o.Author = m.Author.String()
	}
	if m.Status != clientsdk.StatusReceived {
		o.Status = m.Status.String()
	}
	for _, r := range m.Reactions {
		if o.React == nil {
			o.React = map[string][]string{}
		}
		for _, u := range r.Users {
			o.React[r.Key] = append(o.React[r.Key], u.String())
		}
	}
	return o
}

func (o messageOut) line() string {
	text := o.Text
	switch {
	case o.Deleted:
		text = "(deleted)"
	case o.Edited:
		text += " (edited)"
	}
	seq := fmt.Sprintf("#%d", o.Seq)
	if o.Seq == 0 {
		seq = "-" // not sent yet: no seq (its status says why)
	}
	s := fmt.Sprintf("%s %s: %s", seq, o.Author, text)
	if o.Update {
		s = "updated: " + s
	}
	if len(o.React) > 0 {
		keys := slices.Sorted(maps.Keys(o.React))
		for i, k := range keys {
			keys[i] = fmt.Sprintf("%s %d", k, len(o.React[k]))
		}
		s += " (" + strings.Join(keys, ", ") + ")"
	}
	if o.Status != "" {
		s += " [" + o.Status + "]"
	}
	return s
}

func (a *app) send(ctx context.Context, args []string) error {
	if len(args) >= 2 && args[1] == "--" {
		args = append(args[:1:1], args[2:]...)
	}
	if len(args) < 2 {
		return errors.New("usage: ferry send CONV [--] TEXT...")
	}
	if strings.TrimSpace(strings.Join(args[1:], " ")) == "" {
		return errors.New("send: the message is empty")
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		conv, err := a.resolve(ctx, d, args[0])
		if err != nil {
			return err
		}
		id, err := d.SendText(ctx, conv, strings.Join(args[1:], " "))
		if err != nil {
			return err
		}
		return a.finishOp(ctx, d, conv, id, "message")
	})
}

// onMessage edits, deletes or reacts to a message: edit CONV MSG TEXT...,
// delete CONV MSG, react CONV MSG [--remove] KEY. Like send, it queues the
// op and sends it when the server is in reach.
func (a *app) onMessage(ctx context.Context, cmd string, args []string) error {
	var remove bool
	pos := args
	if cmd == "edit" {
		// The text is the rest, as send's, a "--" before it allowed.
		if len(pos) >= 3 && pos[2] == "--" {
			pos = append(pos[:2:2], pos[3:]...)
		}
	} else {
		var err error
		if pos, err = flags(cmd, args, a.errOut, func(fs *flag.FlagSet) {
			if cmd == "react" {
				fs.BoolVar(&remove, "remove", false, "remove the reaction instead")
			}
		}); err != nil {
			return err
		}
	}
	switch {
	case cmd == "edit" && len(pos) < 3:
		return errors.New("usage: ferry edit CONV MSG [--] TEXT...")
	case cmd == "edit" && strings.TrimSpace(strings.Join(pos[2:], " ")) == "":
		return errors.New("edit: the new text is empty (ferry delete deletes a message)")
	case cmd == "delete" && len(pos) != 2:
		return errors.New("usage: ferry delete CONV MSG")
	case cmd == "react" && len(pos) != 3:
		return errors.New("usage: ferry react CONV MSG [--remove] [--] KEY")
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		conv, err := a.resolve(ctx, d, pos[0])
		if err != nil {
			return err
		}
		m, err := a.resolveMsg(ctx, d, conv, pos[1])
		if err != nil {
			return err
		}
		name := "message " + pos[1]
		if m.Seq > 0 {
			name = fmt.Sprintf("message #%d", m.Seq)
		}
		switch {
		case m.Status == clientsdk.StatusFailed && cmd == "delete":
			// Never sent: deleting it here is forgetting it.
			if err := d.DismissFailed(m.ID); err != nil {
				return err
			}
			a.print(map[string]string{"conversation": conv.String(), "op": m.ID.String(), "status": "dismissed"},
				"the failed message is dismissed (it was never sent)")
			return nil
		case m.Status == clientsdk.StatusFailed:
			return fmt.Errorf("%s was refused by the server, never sent (ferry failed says why; ferry delete forgets it)", name)
		case m.Deleted:
			return fmt.Errorf("%s was deleted", name)
		}
		acc, err := d.Account()
		if err != nil {
			return err
		}
		c, err := d.Conversation(conv)
		if err != nil {
			return err
		}
		var op ulid.ULID
		what := cmd
		switch cmd {
		case "edit":
			if acc.User != m.Author {
				return fmt.Errorf("%s is %s's: only its author may edit a message", name, a.username(ctx, d, conv, m.Author))
			}
			// The CLI writes text: a message of another text type, such as
			// text/markdown, keeps its type.
			ct := m.ContentType
			if !strings.HasPrefix(ct, "text/") {
				ct = "text/plain"
			}
			op, err = d.Edit(ctx, conv, m.ID, []byte(strings.Join(pos[2:], " ")), ct)
		case "delete":
			if acc.User != m.Author && c.Role < clientsdk.RoleAdmin {
				return fmt.Errorf("%s is %s's: only its author or an admin may delete a message", name, a.username(ctx, d, conv, m.Author))
			}
			op, err = d.Delete(ctx, conv, m.ID)
		case "react":
			key := pos[2]
			if strings.TrimSpace(key) == "" {
				return errors.New("react: the key is blank (an emoji, say)")
			}
			what = "reaction"
			if !remove {
				op, err = d.React(ctx, conv, m.ID, key)
				break
			}
			mine := false
			for _, r := range m.Reactions {
				mine = mine || r.Key == key && slices.Contains(r.Users, acc.User)
			}
			if !mine {
				return fmt.Errorf("you have no %s reaction on %s to remove", key, name)
			}
			what = "reaction removal"
			op, err = d.Unreact(ctx, conv, m.ID, key)
		}
		if err != nil {
			return err
		}
		return a.finishOp(ctx, d, conv, op, what)
	})
}

// username is user's username, learned from conv's members when the
// device does not know it yet; its id when no one says.
func (a *app) username(ctx context.Context, d *clientsdk.Device, conv, user ulid.ULID) string {
	if ms, err := d.Members(ctx, conv); err == nil {
		for _, m := range ms {
			if m.ID == user && m.Username != "" {
				return m.Username
			}
		}
	}
	return user.String()
}

// resolveMsg finds a message of conv by its seq or id, syncing once when
// the device does not hold it yet.
func (a *app) resolveMsg(ctx context.Context, d *clientsdk.Device, conv ulid.ULID, ref string) (clientsdk.Message, error) {
	return orAfterSync(ctx, a, d, func() (clientsdk.Message, error) { return findMsg(d, conv, ref) })
}

// findMsg finds a message of conv that the device holds, by its seq (12
// or #12) or its id: a pending message has an id alone.
func findMsg(d *clientsdk.Device, conv ulid.ULID, ref string) (clientsdk.Message, error) {
	if id, err := ulid.ParseStrict(ref); err == nil {
		m, err := d.Message(conv, id)
		if errors.Is(err, clientsdk.ErrNoMessage) {
			return clientsdk.Message{}, notHere(fmt.Sprintf("no message %s in this conversation", id))
		}
		return m, err
	}
	seq, err := strconv.ParseUint(strings.TrimPrefix(ref, "#"), 10, 64)
	if err != nil || seq == 0 || seq == math.MaxUint64 {
		return clientsdk.Message{}, fmt.Errorf("MSG %q is neither a message's seq (12, or #12, as history prints it) nor its id", ref)
	}
	page, err := d.Messages(conv, clientsdk.PageOptions{Limit: 1, Before: seq + 1})
	if err != nil {
		return clientsdk.Message{}, err
	}
	if len(page.Messages) == 1 && page.Messages[0].Seq == seq {
		return page.Messages[0], nil
	}
	if c, err := d.Conversation(conv); err == nil && seq <= c.Head && !c.Loading {
		// Held, and no message: another op's seq, which no sync changes.
		return clientsdk.Message{}, fmt.Errorf("#%d is not a message: it is another change to the conversation (history lists the messages with their seqs)", seq)
	}
	return clientsdk.Message{}, notHere(fmt.Sprintf("no message #%d in this conversation (history lists the messages with their seqs)", seq))
}

// failed lists the ops the server refused, which the device keeps until
// they are dismissed, and dismisses them.
func (a *app) failed(ctx context.Context, args []string) error {
	var dismiss multi
	var all bool
	pos, err := flags("failed", args, a.errOut, func(fs *flag.FlagSet) {
		fs.Var(&dismiss, "dismiss", "forget the failed op with this id (repeatable)")
		fs.BoolVar(&all, "dismiss-all", false, "forget every failed op")
	})
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: ferry failed [--dismiss OP]... [--dismiss-all]")
	}
	var ids []ulid.ULID
	for _, s := range dismiss {
		id, err := ulid.ParseStrict(s)
		if err != nil {
			return fmt.Errorf("--dismiss %q is not an op id (ferry failed lists them)", s)
		}
		ids = append(ids, id)
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		fs, err := d.Failed()
		if err != nil {
			return err
		}
		if len(dismiss) > 0 || all {
			// Each named op must be failed, or nothing is dismissed.
			held := map[ulid.ULID]bool{}
			for _, f := range fs {
				held[f.Op] = true
			}
			for _, id := range ids {
				if !held[id] {
					return fmt.Errorf("no failed op %s here (ferry failed lists them): nothing dismissed", id)
				}
			}
			if all {
				ids = ids[:0]
				for _, f := range fs {
					ids = append(ids, f.Op)
				}
			}
			done := []string{}
			for _, id := range ids {
				if slices.Contains(done, id.String()) {
					continue
				}
				if err := d.DismissFailed(id); err != nil {
					return err
				}
				done = append(done, id.String())
			}
			noun := "ops"
			if len(done) == 1 {
				noun = "op"
			}
			a.print(map[string]any{"dismissed": done}, fmt.Sprintf("dismissed %d failed %s", len(done), noun))
			return nil
		}
		type out struct {
			Op      string `json:"op"`
			Conv    string `json:"conversation"`
			Title   string `json:"title"`
			Kind    string `json:"kind"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		}
		outs := []out{}
		var lines []string
		for _, f := range fs {
			o := out{Op: f.Op.String(), Conv: f.Conv.String(), Kind: f.Kind, Reason: f.Reason, Message: f.Message}
			if c, err := d.Conversation(f.Conv); err == nil {
				o.Title = c.Title
			}
			outs = append(outs, o)
			where := fmt.Sprintf("%q", o.Title)
			if o.Title == "" {
				where = o.Conv
			}
			lines = append(lines, fmt.Sprintf("%s  %s in %s: %s: %s", o.Op, o.Kind, where, o.Reason, o.Message))
		}
		if len(lines) > 0 {
			lines = append(lines, "(ferry failed --dismiss OP forgets one; to send a message again, send its text anew)")
		} else {
			lines = append(lines, "no failed ops")
		}
		a.print(outs, strings.Join(lines, "\n"))
		return nil
	})
}

func (a *app) sync(ctx context.Context) error {
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		// What the sync received, from its statuses as it went: once it
		// returns, the device is offline and its status says none.
		sub := d.Subscribe(1024)
		received := make(chan uint64, 1)
		go func() {
			// Each session counts from 0: a reconnect within the sync
			// starts another count, added to the ones before.
			total, cur := uint64(0), uint64(0)
			for ev := range sub.C() {
				if st, ok := ev.(clientsdk.StatusChanged); ok {
					if st.Status.OpsReceived < cur {
						total += cur
					}
					cur = st.Status.OpsReceived
				}
			}
			received <- total + cur
		}()
		err := d.SyncOnce(ctx)
		sub.Close()
		got := <-received
		if err != nil {
			return err
		}
		cs, _ := d.Conversations()
		fs, _ := d.Failed()
		pend, _ := d.Outbox()
		a.print(map[string]any{"conversations": len(cs), "received": got, "pending": len(pend), "failed": len(fs)},
			fmt.Sprintf("caught up: %d conversations, %d ops received, %d pending, %d failed%s", len(cs), got, len(pend), len(fs), failedHint(len(fs))))
		return nil
	})
}

func (a *app) tail(ctx context.Context, args []string) error {
	var count, last int
	pos, err := flags("tail", args, a.errOut, func(fs *flag.FlagSet) {
		fs.IntVar(&count, "count", 0, "exit after printing this many new messages (0: never)")
		fs.IntVar(&last, "last", 10, "first print this many of the newest messages held")
	})
	if err != nil {
		return err
	}
	if count < 0 || last < 0 {
		return errors.New("tail: --count and --last must not be negative")
	}
	if a.noProfile() {
		return a.notSignedIn()
	}
	d, err := a.open()
	if err != nil {
		return err
	}
	defer d.Close()
	if _, err := d.Account(); err != nil {
		return a.notSignedIn()
	}
	var only ulid.ULID
	if len(pos) == 1 {
		if only, err = a.resolve(ctx, d, pos[0]); err != nil {
			return err
		}
	}
	// Learn the members' names, so lines say who wrote.
	if cs, err := d.Conversations(); err == nil {
		for _, c := range cs {
			if only == (ulid.ULID{}) || c.ID == only {
				_, _ = d.Members(ctx, c.ID)
			}
		}
	}
	sub := d.Subscribe(4096)
	defer sub.Close()
	if err := d.Start(); err != nil {
		return err
	}
	// What is new in a conversation held when tail began is above the
	// highest seq it held then: its older history is not news, and what
	// comes above it prints once, a catch-up's pages in any order. In one
	// that appears later (the user added to it), what was sent since tail
	// began.
	began := time.Now()
	top := map[ulid.ULID]uint64{}
	// printed holds a hash of what each message printed showed: one
	// edited, deleted or reacted to since prints again, as an update (not
	// counted by --count); its status (delivered, read) alone does not.
	printed := map[ulid.ULID]uint64{}
	seed := maphash.MakeSeed()
	shown := func(o messageOut) uint64 {
		return maphash.String(seed, fmt.Sprint(o.Text, "\x00", o.Type, o.Edited, o.Deleted, o.React))
	}
	n := 0
	show := func(m clientsdk.Message) error {
		o := message(m)
		if was, ok := printed[m.ID]; ok {
			if now := shown(o); now != was {
				printed[m.ID] = now
				o.Update = true
				a.print(o, o.line())
			}
			return nil
		}
		floor, held := top[m.Conv]
		if m.Seq == 0 || held && m.Seq <= floor || !held && m.Sent.Before(began) {
			return nil // pending ones print once sent
		}
		printed[m.ID] = shown(o)
		a.print(o, o.line())
		if n++; count > 0 && n >= count {
			return io.EOF
		}
		return nil
	}
	// changed prints the messages an event names, oldest first: those new,
	// and those printed before that changed, however old.
	changed := func(conv ulid.ULID, ids []ulid.ULID) error {
		// Left out: a message still to come, reacted to, which prints with it.
		ms, err := d.MessagesByID(conv, ids...)
		if err != nil {
			return err
		}
		slices.SortFunc(ms, func(x, y clientsdk.Message) int { return cmp.Compare(x.Seq, y.Seq) })
		for _, m := range ms {
			if err := show(m); err != nil {
				return err
			}
		}
		return nil
	}
	// rescan prints what changed among conv's newest 1,000 messages: after
	// events were dropped, which said which.
	rescan := func(conv ulid.ULID) error {
		page, err := d.Messages(conv, clientsdk.PageOptions{Limit: 1000})
		if err != nil {
			return err
		}
		for i := len(page.Messages) - 1; i >= 0; i-- {
			if err := show(page.Messages[i]); err != nil {
				return err
			}
		}
		return nil
	}
	// The newest messages held first, then whatever arrives.
	if cs, err := d.Conversations(); err == nil {
		for i := len(cs) - 1; i >= 0; i-- {
			c := cs[i]
			if only != (ulid.ULID{}) && c.ID != only {
				continue
			}
			page, err := d.Messages(c.ID, clientsdk.PageOptions{Limit: max(last, 1)})
			if err != nil {
				return err
			}
			top[c.ID] = 0 // held: with no message yet, everything in it is new
			for j := len(page.Messages) - 1; j >= 0; j-- {
				m := page.Messages[j]
				if last > 0 && m.Seq > 0 {
					o := message(m)
					a.print(o, o.line())
					printed[m.ID] = shown(o)
				}
				top[c.ID] = max(top[c.ID], m.Seq)
			}
		}
	}
	for {
		select {
		case ev, ok := <-sub.C():
			if !ok {
				return nil
			}
			var err error
			switch e := ev.(type) {
			case clientsdk.MessagesChanged:
				if only == (ulid.ULID{}) || e.Conv == only {
					err = changed(e.Conv, e.Messages)
				}
			case clientsdk.StatusChanged:
				if e.Status.State == clientsdk.StateFailed {
					return e.Status.Err
				}
				if !a.json && a.verbose {
					fmt.Fprintln(a.errOut, "status:", e.Status.State)
				}
			case clientsdk.Overflow:
				cs, _ := d.Conversations()
				for _, c := range cs {
					if only == (ulid.ULID{}) || c.ID == only {
						if err = rescan(c.ID); err != nil {
							break
						}
					}
				}
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return nil
		}
	}
}

func (a *app) history(ctx context.Context, args []string) error {
	var limit int
	var before uint64
	var since, until string
	var offline bool
	pos, err := flags("history", args, a.errOut, func(fs *flag.FlagSet) {
		fs.IntVar(&limit, "limit", 20, "messages to show")
		fs.Uint64Var(&before, "before", 0, "show messages with a seq below this")
		fs.StringVar(&since, "since", "", "show messages sent at or after this time (RFC 3339)")
		fs.StringVar(&until, "until", "", "show messages sent before this time (RFC 3339)")
		fs.BoolVar(&offline, "offline", false, "do not sync first")
	})
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: ferry history CONV [--limit N] [--before SEQ] [--since TIME] [--until TIME]")
	}
	if limit < 1 {
		return fmt.Errorf("--limit %d: it must be at least 1", limit)
	}
	var from, to time.Time
	if since != "" {
		if from, err = time.Parse(time.RFC3339, since); err != nil {
			return fmt.Errorf("--since: %w", err)
		}
	}
	if until != "" {
		if to, err = time.Parse(time.RFC3339, until); err != nil {
			return fmt.Errorf("--until: %w", err)
		}
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		if !offline {
			if err := a.syncFirst(ctx, d); err != nil {
				fmt.Fprintln(a.errOut, "ferry: could not sync, showing what this device holds:", err)
			}
		}
		conv, err := resolveConv(d, pos[0])
		if err != nil {
			return err
		}
		_, _ = d.Members(ctx, conv) // learn usernames
		page, err := d.Messages(conv, clientsdk.PageOptions{Limit: 100000, Before: before})
		if err != nil {
			return err
		}
		var os []messageOut
		for i := len(page.Messages) - 1; i >= 0; i-- {
			m := page.Messages[i]
			if (!from.IsZero() && m.Sent.Before(from)) || (!to.IsZero() && !m.Sent.Before(to)) {
				continue
			}
			os = append(os, message(m))
		}
		if len(os) > limit {
			os = os[len(os)-limit:]
		}
		if os == nil {
			os = []messageOut{}
		}
		if a.json {
			a.print(os, "")
			return nil
		}
		if page.OlderLoading {
			fmt.Fprintln(a.out, "(older messages are still loading)")
		}
		for _, o := range os {
			fmt.Fprintln(a.out, o.line())
		}
		return nil
	})
}

func (a *app) read(ctx context.Context, args []string) error {
	if len(args) < 1 || len(args) > 2 {
		return errors.New("usage: ferry read CONV [SEQ]")
	}
	var seq uint64
	if len(args) == 2 {
		var err error
		if seq, err = strconv.ParseUint(args[1], 10, 64); err != nil {
			return fmt.Errorf("SEQ %q is not a number", args[1])
		}
	}
	return a.with(ctx, func(ctx context.Context, d *clientsdk.Device) error {
		// Out of reach, the mark waits on the device for the next sync,
		// as a message does.
		away := a.refused(ctx, d)
		if away == nil {
			if err := d.SyncOnce(ctx); err != nil {
				return err
			}
		}
		conv, err := resolveConv(d, args[0])
		if err != nil {
			return err
		}
		if err := d.MarkRead(ctx, conv, seq); err != nil {
			return err
		}
		if away != nil {
			a.print(map[string]any{"conversation": conv.String(), "status": "queued"},
				fmt.Sprintf("read here (the server is out of reach, %v: it hears of it on the next sync)", away))
			return nil
		}
		if err := d.SyncOnce(ctx); err != nil {
			return err
		}
		c, err := d.Conversation(conv)
		if err != nil {
			return err
		}
		a.print(map[string]any{"conversation": conv.String(), "unread": c.Unread}, fmt.Sprintf("read; %d unread", c.Unread))
		return nil
	})
}

func (a *app) status() error {
	notSignedIn := func() error {
		a.print(map[string]any{"signed_in": false, "profile": a.profile}, "not signed in (profile "+a.profile+"): ferry register or ferry login")
		return nil
	}
	if a.noProfile() {
		return notSignedIn()
	}
	d, err := a.open()
	if err != nil {
		return err
	}
	defer d.Close()
	acc, err := d.Account()
	if err != nil {
		return notSignedIn()
	}
	refused := ""
	if acc.Refused {
		refused = fmt.Sprintf("\nthe server refused this device when last asked (revoked, or logged out from another device): ferry login %s signs it in again, keeping what it holds", acc.Username)
	}
	pending, _ := d.Outbox()
	failed, _ := d.Failed()
	cs, _ := d.Conversations()
	a.print(map[string]any{"signed_in": true, "profile": a.profile, "account": accountJSON(acc), "refused": acc.Refused,
		"conversations": len(cs), "pending": len(pending), "failed": len(failed)},
		fmt.Sprintf("%s on device %s at %s\nprofile %s: %d conversations, %d pending, %d failed%s%s",
			acc.Username, acc.Device, acc.Server, a.profile, len(cs), len(pending), len(failed), failedHint(len(failed)), refused))
	return nil
}

// failedHint points at the failed command when ops failed.
func failedHint(n int) string {
	if n == 0 {
		return ""
	}
	return " (ferry failed says why)"
}
