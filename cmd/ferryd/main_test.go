package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/server"
)

// syncBuffer is a bytes.Buffer safe for the server goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	w  chan struct{}
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, err := s.b.Write(p)
	select {
	case s.w <- struct{}{}:
	default:
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestServeAndShutDown(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{w: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--data", dir, "--allow-registration", "--log-level", "warn", "--metrics-addr", "127.0.0.1:0"}, out, io.Discard)
	}()
	addr := regexp.MustCompile(`listening on (http://\S+)`)
	metricsAddr := regexp.MustCompile(`metrics: curl (http://\S+)`)
	var url, metrics string
	for url == "" || metrics == "" {
		select {
		case <-out.w:
			if m := addr.FindStringSubmatch(out.String()); m != nil {
				url = m[1]
			}
			if m := metricsAddr.FindStringSubmatch(out.String()); m != nil {
				metrics = m[1]
			}
		case err := <-done:
			t.Fatalf("ferryd exited: %v\n%s", err, out.String())
		}
	}
	resp, err := http.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Fatalf("healthz: %d %q", resp.StatusCode, body)
	}
	// The demo page is served at /, beside the Connect procedures.
	resp, err = http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "Ferry demo chat") {
		t.Fatalf("demo page: %d %.200s", resp.StatusCode, body)
	}
	resp, err = http.Post(url+"/ferry.v1.AccountService/Register", "application/json",
		strings.NewReader(`{"username":"alice","password":"correct horse"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"token":"fy1_`) {
		t.Fatalf("register: %d %s", resp.StatusCode, body)
	}
	// The metrics count the registration.
	resp, err = http.Get(metrics)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := `ferry_rpcs_total{code="ok",procedure="/ferry.v1.AccountService/Register"} 1`; resp.StatusCode != 200 || !strings.Contains(string(body), want) {
		t.Fatalf("metrics: %d, no %q in\n%.2000s", resp.StatusCode, want, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// The store survived: check it offline.
	var checkOut bytes.Buffer
	if err := run(context.Background(), []string{"check", "--data", dir, "--log-level", "warn"}, &checkOut, io.Discard); err != nil {
		t.Fatalf("check: %v\n%s", err, checkOut.String())
	}
	if !strings.Contains(checkOut.String(), "store is consistent") {
		t.Fatalf("check said %q", checkOut.String())
	}
}

func TestFlagsFromEnvironment(t *testing.T) {
	fs, c := flags("serve", io.Discard)
	if c.h2c != server.H2CFerry {
		t.Fatalf("--h2c defaults to %v", c.h2c)
	}
	env := map[string]string{"FERRY_ADDR": "0.0.0.0:9", "FERRY_ALLOW_REGISTRATION": "true", "FERRY_DATA": "/env", "FERRY_PUSH_LIMIT": "0"}
	if err := parse(fs, []string{"--data", "/flag"}, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.addr != "0.0.0.0:9" || !c.allowRegistration || c.data != "/flag" || c.pushLimit != 0 {
		t.Fatalf("config %+v: the environment fills unset flags, and flags win", c)
	}
	// --h2c too; built with Go 1.27 or later (without -tags http2legacy)
	// the flag refuses xnet and says how to build.
	fsH, cH := flags("serve", io.Discard)
	err := parse(fsH, nil, func(k string) string { return map[string]string{"FERRY_H2C": "xnet"}[k] })
	if !(err == nil && cH.h2c == server.H2CXNet) && !(err != nil && strings.Contains(err.Error(), "http2legacy")) {
		t.Fatalf("FERRY_H2C=xnet: %v, --h2c %v", err, cH.h2c)
	}
	// A limit's 0 turns it off; the server's options take a negative.
	if limitOrOff(c.pushLimit) >= 0 || limitOrOff(500) != 500 {
		t.Fatalf("limitOrOff(0) = %d, limitOrOff(500) = %d", limitOrOff(0), limitOrOff(500))
	}
	fs, _ = flags("serve", io.Discard)
	err = parse(fs, nil, func(k string) string {
		if k == "FERRY_HEARTBEAT" {
			return "soon"
		}
		return ""
	})
	if err == nil || !strings.Contains(err.Error(), "FERRY_HEARTBEAT") {
		t.Fatalf("bad environment value: %v", err)
	}
	if err := run(context.Background(), []string{"--h2c", "nghttp2"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "want ferry or xnet") {
		t.Fatalf("bad --h2c: %v", err)
	}
	if err := run(context.Background(), []string{"--log-level", "loud"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--log-level") {
		t.Fatalf("bad log level: %v", err)
	}
	if err := run(context.Background(), []string{"--receipt-members", "0", "--data", t.TempDir()}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--receipt-members") {
		t.Fatalf("no receipt members: %v", err)
	}
	if err := run(context.Background(), []string{"--shared-feed-members", "0", "--data", t.TempDir()}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--shared-feed-members") {
		t.Fatalf("no shared feed members: %v", err)
	}
	if err := run(context.Background(), []string{"--trusted-proxies", "10.0.0.0/8, nonsense"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "trusted-proxies") || !strings.Contains(err.Error(), "nonsense") {
		t.Fatalf("bad trusted proxy: %v", err)
	}
	if err := run(context.Background(), []string{"--trusted-proxies", "10.0.0.1", "--data", t.TempDir()}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--client-ip-header") {
		t.Fatalf("trusted proxies without a header: %v", err)
	}
	fs, c = flags("serve", io.Discard)
	if err := parse(fs, []string{"--trusted-proxies", " 10.1.2.3/8,2001:db8::1, ::ffff:192.0.2.1", "--trusted-proxies", "::ffff:172.16.0.0/108"}, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if got := c.trustedProxies.String(); got != "10.0.0.0/8,2001:db8::1/128,192.0.2.1/32,172.16.0.0/12" {
		t.Fatalf("--trusted-proxies parsed as %s", got)
	}
	// The store's sizes, in MiB, reach the engine in bytes; 0 and past
	// Pebble's memtable limit are refused.
	fs, c = flags("serve", io.Discard)
	if err := parse(fs, []string{"--cache-mib", "5", "--memtable-mib", "2"}, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if o := engineOptions(c, nil); o.CacheSize != 5<<20 || o.MemTableSize != 2<<20 {
		t.Fatalf("--cache-mib 5 --memtable-mib 2: CacheSize %d, MemTableSize %d", o.CacheSize, o.MemTableSize)
	}
	for _, args := range [][]string{{"--cache-mib", "0"}, {"--memtable-mib", "0"}, {"--memtable-mib", "4096"}, {"--store-compression", "zstd"}} {
		err := run(context.Background(), append(args, "--data", t.TempDir()), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), args[0]+" ") || !strings.Contains(err.Error(), args[1]) {
			t.Fatalf("%v: %v", args, err)
		}
	}
	// The store's compression: small unless told.
	for args, want := range map[string]engine.Compression{"": engine.CompressSmall, "--store-compression=fast": engine.CompressFast, "--store-compression=small": engine.CompressSmall} {
		fs, c = flags("serve", io.Discard)
		if err := parse(fs, strings.Fields(args), func(string) string { return "" }); err != nil {
			t.Fatal(err)
		}
		if got := engineOptions(c, nil).Compression; got != want {
			t.Errorf("%q: Compression %v, want %v", args, got, want)
		}
	}
	_ = fmt.Sprint()
}

// TestCompact: "ferryd compact" rewrites the store, and the body of a
// message deleted for everyone, which stayed in the tables after the
// delete, leaves them. The store stays consistent.
func TestCompact(t *testing.T) {
	dir := t.TempDir()
	open := func() *engine.Engine {
		t.Helper()
		o := enginetest.Options(t, 1)
		o.FS = nil // the disk, as ferryd opens it
		e, err := engine.Open(dir, o)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := open()
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	body := make([]byte, 30<<10)
	rnd := rand.New(rand.NewPCG(1, 2))
	for i := range body {
		body[i] = "0123456789abcdef"[rnd.IntN(16)] // about 15 KB compressed
	}
	secret := alice.Send(conv, string(body))
	if _, err := e.DiskUsage(true); err != nil { // the body reaches the tables
		t.Fatal(err)
	}
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindDelete, Target: secret.ID}))
	before, err := e.DiskUsage(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if err := run(context.Background(), []string{"compact", "--data", dir, "--log-level", "warn"}, &out, io.Discard); err != nil {
		t.Fatalf("compact: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "compacted "+dir+": tables") {
		t.Fatalf("compact said %q", out.String())
	}
	e = open()
	after, err := e.DiskUsage(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if before.Tables < 10<<10 || after.Tables > before.Tables-10<<10 {
		t.Fatalf("tables %d bytes before compact, %d after: want the erased body's 15 KB or so gone", before.Tables, after.Tables)
	}
	out.Reset()
	if err := run(context.Background(), []string{"check", "--data", dir, "--log-level", "warn"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "store is consistent") {
		t.Fatalf("check after compact: %v, %q", err, out.String())
	}
	// A mistyped folder is an error, not a new empty store compacted.
	missing := dir + "-missing"
	if err := run(context.Background(), []string{"compact", "--data", missing, "--log-level", "warn"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "no store in") {
		t.Fatalf("compact of a missing folder: %v", err)
	}
}

// TestRebuild: "ferryd rebuild" repairs a store whose op-id index was
// lost, says what it fixed, and leaves it consistent; run again, it fixes
// nothing.
func TestRebuild(t *testing.T) {
	dir := t.TempDir()
	o := enginetest.Options(t, 1)
	o.FS = nil // the disk, as ferryd opens it
	e, err := engine.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	for _, text := range []string{"one", "two", "three"} {
		alice.Send(conv, text)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	// Lose the op-id index (table 0x14), as a bug or a hand on the files
	// could.
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteRange([]byte{0x14}, []byte{0x15}, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	tool := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append(args, "--data", dir, "--log-level", "warn"), &out, io.Discard)
		return out.String(), err
	}
	if out, err := tool("check"); err == nil || !strings.Contains(err.Error(), "op-id index") || !strings.Contains(err.Error(), "ferryd rebuild repairs") {
		t.Fatalf("check of the damaged store: %v\n%s", err, out)
	}
	out, err := tool("rebuild", "--shared-feed-members", "32") // the server's, for records made anew
	if err != nil || !strings.Contains(out, "read 1 conversations, 4 ops\nfixed: op-id index entries set: 4\n") || !strings.HasSuffix(out, "store is consistent\n") {
		t.Fatalf("rebuild: %v\n%s", err, out)
	}
	if out, err := tool("rebuild"); err != nil || !strings.Contains(out, "fixed nothing") || strings.Contains(out, "fixed:") {
		t.Fatalf("second rebuild: %v\n%s", err, out)
	}
	if out, err := tool("check"); err != nil {
		t.Fatalf("check of the rebuilt store: %v\n%s", err, out)
	}
}

// TestFlagsDocumented: every flag of every command is in the README, and
// the environment variable that sets each of serve's.
func TestFlagsDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range commands {
		fs, _ := flags(cmd, io.Discard)
		fs.VisitAll(func(f *flag.Flag) {
			if !regexp.MustCompile("--" + f.Name + "[` ,=]").Match(readme) {
				t.Errorf("ferryd %s --%s is not in the README", cmd, f.Name)
			}
			env := "`FERRY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")) + "`"
			if cmd == "serve" && !bytes.Contains(readme, []byte(env)) {
				t.Errorf("ferryd's %s (--%s) is not in the README", env, f.Name)
			}
		})
	}
}

// storeEpoch opens the store in dir (creating it if missing), as a
// server's start does, and returns its epoch. Each call takes a seed of
// its own: a new epoch is a new id.
func storeEpoch(t *testing.T, dir string, seed uint64) string {
	t.Helper()
	e := openForTest(t, dir, seed)
	defer e.Close()
	return e.Epoch().String()
}

// serving runs ferryd with args (its logs to logs) until ctx ends, and
// returns its URL once it listens, and the channel run's error comes on.
func serving(t *testing.T, ctx context.Context, args []string, logs io.Writer) (url string, done <-chan error) {
	t.Helper()
	out := &syncBuffer{w: make(chan struct{}, 1)}
	ended := make(chan error, 1)
	go func() { ended <- run(ctx, args, out, logs) }()
	addr := regexp.MustCompile(`listening on (https?://\S+)`)
	for {
		select {
		case <-out.w:
			if m := addr.FindStringSubmatch(out.String()); m != nil {
				return m[1], ended
			}
		case err := <-ended:
			t.Fatalf("ferryd exited: %v\n%s", err, out.String())
		}
	}
}

// TestVersion: 'ferryd version' (and --version) prints the build's
// version and Go's, and starts nothing.
func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		var out bytes.Buffer
		if err := run(context.Background(), []string{arg}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "ferryd ") || !strings.Contains(out.String(), " go1.") {
			t.Errorf("ferryd %s: %q, %v", arg, out.String(), err)
		}
	}
}

// TestAddUserAndRevokeDevices: with self-registration off, 'ferryd
// add-user' gives someone an account on a stopped server's store, the
// password from stdin; they log in with it, and the command made no
// device. 'ferryd revoke-devices' revokes all of a user's devices (a user
// locked out at the limit of devices logs in again).
func TestAddUserAndRevokeDevices(t *testing.T) {
	dir := t.TempDir() + "/data"
	o := enginetest.Options(t, 200)
	o.FS = nil
	e, err := engine.Open(dir, o) // the store a first start makes
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	add := func(password string, args ...string) (string, error) {
		t.Helper()
		stdin = strings.NewReader(password)
		t.Cleanup(func() { stdin = os.Stdin })
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"add-user", "--data", dir, "--log-level", "warn"}, args...), &out, io.Discard)
		return out.String(), err
	}
	if out, err := add("correct horse battery\n", "--username", "Carol", "--display-name", "Carol C."); err != nil || !strings.Contains(out, "user carol created") || !strings.Contains(out, `lowercase: "Carol" is carol`) {
		t.Fatalf("add-user: %v\n%s", err, out)
	}
	for _, c := range []struct {
		password string
		args     []string
		want     string
	}{
		{"another password\n", []string{"--username", "carol"}, "taken"},
		{"", []string{"--username", "dave"}, "found none"},
		{"short\n", []string{"--username", "dave"}, "a password has"},
		{"correct horse battery\n", nil, "needs --username"},
	} {
		if _, err := add(c.password, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("add-user %v with %q: %v; want %q", c.args, c.password, err, c.want)
		}
	}
	o = enginetest.Options(t, 201)
	o.FS = nil
	if e, err = engine.Open(dir, o); err != nil {
		t.Fatal(err)
	}
	creds, err := e.Login(context.Background(), "carol", "correct horse battery", "phone")
	if err != nil {
		t.Fatalf("carol logs in: %v", err)
	}
	devs, err := e.Devices(engine.Actor{User: creds.User, Device: creds.Device})
	if err != nil || len(devs) != 1 || devs[0].ID != creds.Device {
		t.Fatalf("carol's devices %+v, %v; want only the phone", devs, err)
	}
	if rep := enginetest.MustCheck(t, e); rep.Err() != nil {
		t.Fatal(rep.Err())
	}
	if _, err := e.Login(context.Background(), "carol", "correct horse battery", "laptop"); err != nil {
		t.Fatal(err)
	}
	e.Close()

	// revoke-devices: carol's two devices, their tokens with them.
	var out bytes.Buffer
	if err := run(context.Background(), []string{"revoke-devices", "--data", dir, "--username", "carol", "--log-level", "warn"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "revoked 2 devices of carol") {
		t.Fatalf("revoke-devices: %v\n%s", err, out.String())
	}
	if err := run(context.Background(), []string{"revoke-devices", "--data", dir, "--username", "nobody", "--log-level", "warn"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), `no user "nobody"`) {
		t.Fatalf("revoke-devices of no one: %v", err)
	}
	o = enginetest.Options(t, 202)
	o.FS = nil
	if e, err = engine.Open(dir, o); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Authenticate(creds.Token); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("the phone's token after revoke-devices: %v", err)
	}
	if devs, err := e.Devices(engine.Actor{User: creds.User}); err != nil || len(devs) != 0 {
		t.Fatalf("carol's devices after revoke-devices: %+v, %v", devs, err)
	}
	phone, err := e.Login(context.Background(), "carol", "correct horse battery", "phone")
	if err != nil {
		t.Fatal(err)
	}
	e.Close()

	// set-password: carol forgot hers; her phone stays signed in.
	set := func(password string, args ...string) (string, error) {
		t.Helper()
		stdin = strings.NewReader(password)
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"set-password", "--data", dir, "--log-level", "warn"}, args...), &out, io.Discard)
		return out.String(), err
	}
	for _, c := range []struct {
		password string
		args     []string
		want     string
	}{
		{"a new password\n", []string{"--username", "nobody"}, `no user "nobody"`},
		{"short\n", []string{"--username", "carol"}, "a password has"},
		{"", []string{"--username", "carol"}, "found none"},
		{"a new password\n", nil, "needs --username"},
	} {
		if _, err := set(c.password, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("set-password %v with %q: %v; want %q", c.args, c.password, err, c.want)
		}
	}
	if out, err := set("a new password\n", "--username", "Carol"); err != nil || !strings.Contains(out, "password of carol set") {
		t.Fatalf("set-password: %v\n%s", err, out)
	}
	o = enginetest.Options(t, 203)
	o.FS = nil
	if e, err = engine.Open(dir, o); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Login(context.Background(), "carol", "correct horse battery", "x"); !errors.Is(err, engine.ErrUnauthenticated) {
		t.Fatalf("carol's old password after set-password: %v", err)
	}
	if _, err := e.Login(context.Background(), "carol", "a new password", "x"); err != nil {
		t.Fatalf("carol's new password: %v", err)
	}
	if _, err := e.Authenticate(phone.Token); err != nil {
		t.Fatalf("carol's phone after set-password: %v", err)
	}
}

// TestNewEpochIsOneShot: 'ferryd new-epoch' makes the next start of the
// store serve a new epoch, and only the next; serve refuses the
// --new-epoch it replaces (which started one at every start), and its
// FERRY_NEW_EPOCH, saying what to run instead.
func TestNewEpochIsOneShot(t *testing.T) {
	dir := t.TempDir() + "/data"
	seed := uint64(100)
	epoch := func() string {
		t.Helper()
		seed++
		return storeEpoch(t, dir, seed)
	}
	first := epoch()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"new-epoch", "--data", dir, "--log-level", "warn"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "serves a new epoch") {
		t.Fatalf("new-epoch: %v\n%s", err, out.String())
	}
	second := epoch()
	if second == first {
		t.Fatal("the start after new-epoch kept the epoch")
	}
	if third := epoch(); third != second {
		t.Fatalf("the start after that started another epoch: %s, then %s", second, third)
	}
	serve := []string{"--data", dir, "--addr", "127.0.0.1:0", "--log-level", "warn"}
	if err := run(context.Background(), append(serve, "--new-epoch"), io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "ferryd new-epoch --data DIR") {
		t.Errorf("serve --new-epoch: %v", err)
	}
	t.Setenv("FERRY_NEW_EPOCH", "true")
	if err := run(context.Background(), serve, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "FERRY_NEW_EPOCH") {
		t.Errorf("serve with FERRY_NEW_EPOCH set: %v", err)
	}
	if got := epoch(); got != second {
		t.Errorf("the refused serves changed the epoch: %s, then %s", second, got)
	}
}

// TestToolsLeaveStoresAlone: check, backup and compact work on a stopped
// server's store and change nothing else: a mistyped or empty --data is
// an error, not a new store; a FERRY_NEW_EPOCH left set does not start an
// epoch (the tools have no serving flags); a backup checked before it is
// served keeps the mark that makes its server start a new epoch; and a
// store another process holds open says so.
func TestToolsLeaveStoresAlone(t *testing.T) {
	root := t.TempDir()
	quiet := []string{"--log-level", "warn"}
	tool := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append(args, quiet...), &out, io.Discard)
		return out.String(), err
	}
	missing, empty := root+"/typo", root+"/empty"
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"check"}, {"backup", "--to", root + "/copy"}, {"compact"}, {"rebuild"}} {
		for _, dir := range []string{missing, empty} {
			if _, err := tool(append(cmd, "--data", dir)...); err == nil || !strings.Contains(err.Error(), "--data: not found: no store in "+dir) ||
				!strings.Contains(err.Error(), "point --data at a server's store") {
				t.Errorf("%s --data %s: %v; want no store", cmd[0], dir, err)
			}
		}
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("the tools made the missing folder: %v", err)
	}
	if ls, err := os.ReadDir(empty); err != nil || len(ls) != 0 {
		t.Errorf("the empty folder holds %v (%v) after the tools", ls, err)
	}
	if _, err := os.Stat(root + "/copy"); !os.IsNotExist(err) {
		t.Errorf("a backup of no store was written: %v", err)
	}

	dir := root + "/data"
	seed := uint64(0)
	epoch := func(dir string) string {
		t.Helper()
		seed++
		return storeEpoch(t, dir, seed)
	}
	first := epoch(dir)
	t.Setenv("FERRY_NEW_EPOCH", "true")
	for _, cmd := range [][]string{{"check"}, {"compact"}, {"rebuild"}, {"backup", "--to", root + "/backup"}} {
		if out, err := tool(append(cmd, "--data", dir)...); err != nil {
			t.Fatalf("%s: %v\n%s", cmd[0], err, out)
		}
	}
	if out, err := tool("check", "--data", root+"/backup"); err != nil || !strings.Contains(out, "store is consistent") {
		t.Fatalf("check of the backup: %v\n%s", err, out)
	}
	if out, err := tool("backup", "--data", dir, "--to", root+"/backup"); err == nil || !strings.Contains(err.Error(), "already exists; --to names a folder the backup creates") {
		t.Fatalf("a backup to a folder that exists: %v\n%s", err, out)
	}
	if got := epoch(dir); got != first {
		t.Errorf("the store's epoch went from %s to %s under the tools", first, got)
	}
	if _, err := os.Stat(root + "/backup/FERRY-BACKUP"); err != nil {
		t.Errorf("check took the backup's mark: %v", err)
	}
	if got := epoch(root + "/backup"); got == first {
		t.Errorf("the checked backup, opened to serve, kept the epoch %s; want a new one", got)
	}

	// Another process holds the store: this test binary, in TestHoldStore.
	hold := exec.Command(os.Args[0], "-test.run=^TestHoldStore$")
	hold.Env = append(os.Environ(), "FERRYD_TEST_HOLD="+dir)
	stdin, err := hold.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := hold.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = hold.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "held\n" {
		t.Fatalf("the holding process said %q, %v", line, err)
	}
	if _, err := tool("check", "--data", dir); err == nil || !strings.Contains(err.Error(), "another process has it open") {
		t.Errorf("check of a store in use: %v", err)
	}
}

// TestHoldStore is TestToolsLeaveStoresAlone's other process: it holds
// the store in $FERRYD_TEST_HOLD open until its stdin closes.
func TestHoldStore(t *testing.T) {
	dir := os.Getenv("FERRYD_TEST_HOLD")
	if dir == "" {
		t.Skip("run by TestToolsLeaveStoresAlone")
	}
	o := enginetest.Options(t, 99)
	o.FS = nil
	e, err := engine.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	fmt.Println("held")
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// TestServeRefusesBadFlags: serve reports every bad flag at once, by its
// name, before it creates anything: a negative limit is not "no limit", a
// zero that the options would take for their default is refused, and the
// engine's and the server's checks speak of flags, not fields.
func TestServeRefusesBadFlags(t *testing.T) {
	data := t.TempDir() + "/data"
	args := []string{"--data", data, "--addr", "127.0.0.1:0", "--log-level", "warn",
		"--push-limit", "-1", "--send-timeout", "-1s", "--body-timeout", "-2s", "--heartbeat", "0", "--max-body-bytes", "2000000",
		"--max-message-bytes", "100", "--password-memory-kib", "4", "--max-streams-per-device", "0", "--cors-origins", "https://ok.example, app.example.com", "--shutdown-delay", "-1s",
		"--store-compression", "zstd", "--trusted-proxies", "10.0.0.0/8",
		"--max-members", "0", "--shared-feed-members", "-1", "--reconnect-after", "1000h"}
	err := run(context.Background(), args, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	for _, f := range []string{"--push-limit -1", "--send-timeout -1s", "--body-timeout -2s", "--heartbeat 0s", "--max-body-bytes must", "--max-message-bytes must", "--password-memory-kib must", "--max-streams-per-device 0", `--cors-origins holds "app.example.com"`, "--shutdown-delay -1s must not be negative", `--store-compression "zstd"`,
		"--max-members 0: it must be at least 1", "--shared-feed-members must be positive, got -1", "--reconnect-after must be between 1ms and 24h0m0s, got 1000h0m0s"} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("the error does not name %q:\n%v", f, err)
		}
	}
	if n := strings.Count(err.Error(), "--trusted-proxies needs --client-ip-header"); n != 1 {
		t.Errorf("the error says %d times that --trusted-proxies needs --client-ip-header, want once:\n%v", n, err)
	}
	if strings.Contains(err.Error(), "MaxBodyBytes") || strings.Contains(err.Error(), "HeartbeatInterval") || strings.Contains(err.Error(), "TrustedProxies") {
		t.Errorf("the error names option fields:\n%v", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("serve with bad flags made the store's folder: %v", err)
	}
	// A busy address too, before the store.
	ln, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		t.Fatal(lerr)
	}
	defer ln.Close()
	if err := run(context.Background(), []string{"--data", data, "--addr", ln.Addr().String(), "--log-level", "warn"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--addr") {
		t.Errorf("serve on a busy address: %v", err)
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("serve on a busy address made the store's folder: %v", err)
	}
	for _, flag := range []string{"--metrics-addr", "--debug-addr"} {
		err := run(context.Background(), []string{"--data", data, "--addr", "127.0.0.1:0", flag, ln.Addr().String(), "--log-level", "warn"}, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), flag) {
			t.Errorf("serve with a busy %s: %v", flag, err)
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Errorf("serve with a busy %s made the store's folder: %v", flag, err)
		}
	}
	// A bad value: its error, and where the flags are listed.
	if err := run(context.Background(), []string{"--cache-mib", "lots"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "ferryd -h lists the flags") {
		t.Errorf("bad --cache-mib: %v", err)
	}
}

// TestOperatorMistakes: values that would wrap around or overflow are
// refused by their flag, once each; a ~ that no shell expanded is refused;
// serve is a command like the others, and a command after the flags is
// told to come first; the flags naming what a tool acts on come from its
// command line only; a backup inside the store's folder is refused; and
// serve warns of a --data holding files but no store.
func TestOperatorMistakes(t *testing.T) {
	root := t.TempDir()
	if strconv.IntSize == 32 {
		t.Skip("the values past the bounds do not parse on a 32-bit platform")
	}
	args := []string{"--data", "~/ferry", "--addr", "127.0.0.1:0", "--log-level", "warn",
		"--heartbeat", "1000000h", "--password-memory-kib", "4294967303", "--password-passes", "4294967296",
		"--cache-mib", "17592186044416", "--min-free-disk-mib", "17592186044416", "--push-limit", "922337203685477581",
		"--sign-in-refill", "-1s"}
	err := run(context.Background(), args, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	for _, f := range []string{"--heartbeat must be between 100ms and 1h", "--password-memory-kib 4294967303: it must be between 8 and 4294967295",
		"--password-passes 4294967296: it must be between", "--cache-mib 17592186044416: it must be between 1 and", "--min-free-disk-mib 17592186044416: it must be at most",
		"--push-limit 922337203685477581: it must be at most", `--data "~/ferry": ferryd does not expand ~`} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("the error does not say %q:\n%v", f, err)
		}
	}
	if n := strings.Count(err.Error(), "--sign-in-refill"); n != 1 {
		t.Errorf("the error names --sign-in-refill %d times, want once:\n%v", n, err)
	}
	// Usage mistakes exit 2, other failures 1: a service manager need not
	// restart a command line that fails as it is.
	if got := exitCode(err); got != 2 {
		t.Errorf("bad values exit %d, want 2", got)
	}
	for args, want := range map[string]int{
		"--no-such-flag": 2, "backup --data " + root: 2, "add-user --data " + root: 2,
		"check --data " + root + "/none": 1,
	} {
		err := run(context.Background(), strings.Fields(args), io.Discard, io.Discard)
		if got := exitCode(err); err == nil || got != want {
			t.Errorf("ferryd %s: exit %d (%v), want %d", args, got, err, want)
		}
	}

	// serve as a command; a command after the flags.
	if err := run(context.Background(), []string{"serve", "--cache-mib", "lots"}, io.Discard, io.Discard); err == nil || strings.Contains(err.Error(), "unexpected argument") {
		t.Errorf("ferryd serve: %v; want serve's flags parsed", err)
	}
	if err := run(context.Background(), []string{"--data", root, "check"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "the command goes first") {
		t.Errorf("a command after the flags: %v", err)
	}

	// A store, for the tools.
	data := root + "/data"
	storeEpoch(t, data, 1)
	fs, c := flags("revoke-devices", io.Discard)
	env := map[string]string{"FERRY_USERNAME": "bob", "FERRY_DATA": data}
	if err := parse(fs, nil, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.username != "" || c.data != data {
		t.Errorf("from the environment: --username %q, --data %q; want none, and %s", c.username, c.data, data)
	}
	if err := run(context.Background(), []string{"backup", "--data", data, "--to", data + "/inner", "--log-level", "warn"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "is inside --data") {
		t.Errorf("a backup inside the store's folder: %v", err)
	}
	if _, err := os.Stat(data + "/inner"); !os.IsNotExist(err) {
		t.Errorf("the refused backup wrote %s/inner: %v", data, err)
	}
	// Through a symbolic link, either way.
	if err := os.Symlink(data, root+"/link"); err != nil {
		t.Fatal(err)
	}
	for _, dirs := range [][2]string{{data, root + "/link/inner"}, {root + "/link", data + "/inner"}} {
		if err := run(context.Background(), []string{"backup", "--data", dirs[0], "--to", dirs[1], "--log-level", "warn"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "is inside --data") {
			t.Errorf("backup --data %s --to %s: %v; want it refused", dirs[0], dirs[1], err)
		}
	}
	// A sibling whose name starts alike is not inside.
	if err := run(context.Background(), []string{"backup", "--data", data, "--to", data + "2", "--log-level", "warn"}, io.Discard, io.Discard); err != nil {
		t.Errorf("backup to a sibling: %v", err)
	}

	// Files, no store: named, up to 5, lost+found left out.
	junk := root + "/junk"
	for _, n := range []string{"notes.txt", "lost+found"} {
		if err := os.MkdirAll(junk+"/"+n, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if got := filesBesideNoStore(junk); !slices.Equal(got, []string{"notes.txt"}) {
		t.Errorf("files beside no store: %q; want notes.txt", got)
	}
	for _, dir := range []string{data, root + "/none", t.TempDir()} {
		if got := filesBesideNoStore(dir); len(got) > 0 {
			t.Errorf("%s: files beside no store %q; want none (a store, no folder, an empty one)", dir, got)
		}
	}
}

// TestBadValueFromTheEnvironment: a bad value that came from a FERRY_
// variable is blamed on it, where the operator must look for it; one
// given on the command line is not.
func TestBadValueFromTheEnvironment(t *testing.T) {
	t.Setenv("FERRY_PUSH_LIMIT", "-1")
	t.Setenv("FERRY_HEARTBEAT", "1000h") // the command line's wins
	t.Setenv("FERRY_DATA", "~/ferry")
	err := run(context.Background(), []string{"--addr", "127.0.0.1:0", "--heartbeat", "2000h", "--log-level", "warn"}, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	for _, want := range []string{
		"--push-limit -1: it must not be negative (0: no limit) (--push-limit is set by FERRY_PUSH_LIMIT)",
		"--heartbeat must be between 100ms and 1h, got 2000h0m0s",
		`--data "~/ferry": ferryd does not expand ~ (a shell does, unquoted, and an environment variable never): give the path in full (--data is set by FERRY_DATA)`,
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("no line %q in:\n%v", want, err)
		}
	}
}
