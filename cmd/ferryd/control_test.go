package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
)

// TestToolsReachTheRunningServer: with a server running on the store,
// check, backup, compact, add-user, set-password and revoke-devices have it do
// their work, through the control socket in the store's folder (its
// user's alone), and what they do is live at once: the user added logs
// in, the password set signs in and the old one does not, the devices
// revoked are refused. The backup is whole and starts a new epoch.
func TestToolsReachTheRunningServer(t *testing.T) {
	root := t.TempDir()
	dir := root + "/data"
	srv := serveStore(t, dir, "--password-memory-kib", "64", "--metrics-addr", "127.0.0.1:0")
	url := srv.url
	fi, err := os.Stat(filepath.Join(dir, controlSocket))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("the control socket is %v; want a socket of mode 0600", fi.Mode())
	}
	tool := func(password string, args ...string) string {
		t.Helper()
		stdin = strings.NewReader(password + "\n")
		defer func() { stdin = os.Stdin }()
		var out bytes.Buffer
		if err := run(context.Background(), append(args, "--data", dir, "--log-level", "warn"), &out, io.Discard); err != nil {
			t.Fatalf("ferryd %s: %v\n%s", args[0], err, out.String())
		}
		if !strings.Contains(out.String(), "by the server running on the store") {
			t.Errorf("ferryd %s did not say the server did it: %q", args[0], out.String())
		}
		return out.String()
	}
	login := func(password string) (int, string) {
		t.Helper()
		resp, err := http.Post(url+"/ferry.v1.AccountService/Login", "application/json",
			strings.NewReader(`{"username":"alice","password":"`+password+`","deviceName":"phone"}`))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Session struct{ Token string }
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Session.Token
	}
	account := func(token string) int {
		t.Helper()
		code, _ := getAccount(t, url, token)
		return code
	}

	tool("correct horse", "add-user", "--username", "alice")
	code, token := login("correct horse")
	if code != http.StatusOK || account(token) != http.StatusOK {
		t.Fatalf("the user the running server added: login %d, account %d", code, account(token))
	}
	tool("battery staple", "set-password", "--username", "alice")
	if code, _ := login("correct horse"); code != http.StatusUnauthorized {
		t.Errorf("the old password signs in (%d) after set-password", code)
	}
	code, token2 := login("battery staple")
	if code != http.StatusOK {
		t.Fatalf("the new password: %d", code)
	}
	if out := tool("", "set-quota", "--username", "alice", "--mib", "2"); !strings.Contains(out, "alice now has 2.0 MiB (set for them) by the server running on the store") {
		t.Errorf("set-quota: %q", out)
	}
	if _, q := getAccount(t, url, token2); q != "2097152" {
		t.Errorf("alice's quota after set-quota --mib 2: %q", q)
	}
	if out := tool("", "set-quota", "--username", "alice", "--server-quota"); !strings.Contains(out, "alice now has the server's quota, none by the server running on the store") {
		t.Errorf("set-quota --server-quota: %q", out)
	}
	tool("", "set-quota", "--username", "alice", "--mib", "2")
	if out := tool("", "show-user", "--username", "alice"); !strings.Contains(out, "  2 devices signed in\n") ||
		!strings.Contains(out, `"phone", since `) || !strings.Contains(out, "a quota of 2.0 MiB (set for them)") {
		t.Errorf("show-user: %q", out)
	}
	if out := tool("", "check"); !strings.Contains(out, "store is consistent") {
		t.Errorf("check: %q", out)
	}
	if out := tool("", "compact"); !strings.Contains(out, "compacted "+dir+" by the server running on the store: tables ") {
		t.Errorf("compact: %q", out)
	}
	tool("", "backup", "--to", root+"/backup")
	// Paths and passwords are bytes: one that is not UTF-8 reaches the
	// server as it is (JSON's strings would make it another).
	tool("", "backup", "--to", root+"/caf\xe9")
	if _, err := os.Stat(root + "/caf\xe9"); err != nil {
		t.Errorf("the backup to a path that is not UTF-8: %v", err)
	}
	if out := tool("", "revoke-devices", "--username", "alice"); !strings.Contains(out, "revoked 2 devices of alice") {
		t.Errorf("revoke-devices: %q", out)
	}
	for _, tok := range []string{token, token2} {
		if code := account(tok); code != http.StatusUnauthorized {
			t.Errorf("a revoked device's call: %d", code)
		}
	}
	const bytesPassword = "\xffnot UTF-8\xfe"
	tool(bytesPassword, "set-password", "--username", "alice")
	stdin = strings.NewReader("another horse\n")
	var out bytes.Buffer
	err = run(context.Background(), []string{"add-user", "--data", dir, "--username", "alice", "--log-level", "warn"}, &out, io.Discard)
	stdin = os.Stdin
	if err == nil ||
		!strings.Contains(err.Error(), "the server running on the store: add-user:") || !strings.Contains(err.Error(), "taken") {
		t.Errorf("add-user of a taken name, by the server: %v", err)
	}
	// The metrics count the calls, and say when the last backup was
	// written.
	m := srv.metrics()
	for _, want := range []string{`ferry_control_calls_total{result="ok",tool="backup"} 2`, `ferry_control_calls_total{result="error",tool="add-user"} 1`,
		`ferry_control_calls_total{result="ok",tool="set-quota"} 3`} {
		if !strings.Contains(m, want) {
			t.Errorf("no %q in the metrics:\n%s", want, m)
		}
	}
	if last := regexp.MustCompile(`(?m)^ferry_backup_last_success_timestamp_seconds (\S+)$`).FindStringSubmatch(m); last == nil || last[1] == "0" {
		t.Errorf("the last backup's time in the metrics: %v", last)
	}

	srv.stop()
	if _, err := os.Stat(filepath.Join(dir, controlSocket)); !os.IsNotExist(err) {
		t.Errorf("the stopped server left its control socket: %v", err)
	}
	// The backup the running server wrote: whole, with alice's account,
	// opening in a new epoch.
	b := openForTest(t, root+"/backup", 1)
	enginetest.MustCheck(t, b)
	if _, err := b.UserNamed("alice"); err != nil {
		t.Errorf("alice in the backup: %v", err)
	}
	b.Close()
	if storeEpoch(t, root+"/backup", 2) == storeEpoch(t, dir, 3) {
		t.Error("the backup opened in the store's epoch")
	}
	e := openForTest(t, dir, 4)
	defer e.Close()
	if _, err := e.Login(context.Background(), "alice", bytesPassword, "laptop"); err != nil {
		t.Errorf("the password set through the server, not UTF-8, does not sign in: %v", err)
	}
	id, _ := e.UserNamed("alice")
	if q := e.QuotaOf(id); q != 2<<20 {
		t.Errorf("alice's quota in the store: %d", q)
	}
}

// getAccount calls GetAccount as the device of token, and returns the
// answer's HTTP status and the quota it gives, as its JSON says it.
func getAccount(t *testing.T, url, token string) (code int, quota string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url+"/ferry.v1.AccountService/GetAccount", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ QuotaBytes string }
	_ = json.NewDecoder(resp.Body).Decode(&body) // an error's is another shape
	return resp.StatusCode, body.QuotaBytes
}

// TestLiveToolsNamesTheControlTools: what ferryd -h and the server's start
// say the tools that reach a running server are is what they are.
func TestLiveToolsNamesTheControlTools(t *testing.T) {
	var names []string
	for name := range controlTools {
		names = append(names, name)
	}
	for _, name := range names {
		if !regexp.MustCompile(`(^|, | and )` + name + `($|,| and)`).MatchString(liveTools) {
			t.Errorf("liveTools (%q) leaves out %s", liveTools, name)
		}
	}
	if n := strings.Count(liveTools, ",") + strings.Count(liveTools, " and ") + 1; n != len(controlTools) {
		t.Errorf("liveTools names %d tools; the server does %d: %v", n, len(controlTools), names)
	}
}

// TestSetQuota: ferryd set-quota on a stopped server's store sets a
// user's quota, or gives them the server's again, and refuses what it
// cannot do.
func TestSetQuota(t *testing.T) {
	dir := t.TempDir()
	e := openForTest(t, dir, 1)
	if _, err := e.CreateUser(context.Background(), engine.NewAccount{Username: "alice", Password: "correct horse"}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	tool := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"set-quota", "--data", dir, "--log-level", "warn"}, args...), &out, io.Discard)
		return out.String(), err
	}
	if out, err := tool("--username", "alice", "--mib", "0"); err != nil || out != "alice now has no quota (set for them); their ops hold 0 bytes\n" {
		t.Errorf("set-quota --mib 0: %q, %v", out, err)
	}
	if out, err := tool("--username", "Alice", "--server-quota"); err != nil || out != "alice now has the server's quota (its --user-quota-mib); their ops hold 0 bytes\n" {
		t.Errorf("set-quota --server-quota: %q, %v", out, err)
	}
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--mib", "1"}, "set-quota needs --username NAME"},
		{[]string{"--username", "alice"}, "needs one of --mib N"},
		{[]string{"--username", "alice", "--mib", "1", "--server-quota"}, "needs one of --mib N"},
		{[]string{"--username", "alice", "--mib", "-5"}, "it must be between 0 and"},
	} {
		if _, err := tool(bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) || exitCode(err) != 2 {
			t.Errorf("set-quota %v: %v (exit %d); want a usage error saying %q", bad.args, err, exitCode(err), bad.want)
		}
	}
	if _, err := tool("--username", "bob", "--mib", "1"); err == nil || !strings.Contains(err.Error(), `set-quota: no user "bob"`) || exitCode(err) != 1 {
		t.Errorf("set-quota of no one: %v", err)
	}
}

// TestStaleControlSocket: a control socket a server left when it stopped
// without removing it (killed) stops nothing: the tools do their work on
// the stopped server's store, and the next server listens in its place.
func TestStaleControlSocket(t *testing.T) {
	dir := t.TempDir()
	storeEpoch(t, dir, 1)
	ln, err := net.Listen("unix", filepath.Join(dir, controlSocket))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(filepath.Join(dir, controlSocket)); err != nil {
		t.Fatalf("the stale socket: %v", err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"check", "--data", dir, "--log-level", "warn"}, &out, io.Discard); err != nil || strings.Contains(out.String(), "by the server") ||
		!strings.Contains(out.String(), "store is consistent") {
		t.Fatalf("check beside a stale socket: %v\n%s", err, out.String())
	}
	srv := serveStore(t, dir)
	out.Reset()
	if err := run(context.Background(), []string{"check", "--data", dir, "--log-level", "warn"}, &out, io.Discard); err != nil || !strings.Contains(out.String(), "by the server running on the store") {
		t.Fatalf("check with a server running in place of the stale socket's: %v\n%s", err, out.String())
	}
	srv.stop()
}

// TestStopWaitsForABackup: a server told to stop while it writes a backup
// for ferryd backup finishes the backup before it closes the store.
func TestStopWaitsForABackup(t *testing.T) {
	root := t.TempDir()
	dir := root + "/data"
	started, release := holdCall(t, "backup")
	srv := serveStore(t, dir)
	backedUp := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		backedUp <- run(context.Background(), []string{"backup", "--data", dir, "--to", root + "/backup", "--log-level", "warn"}, &out, io.Discard)
	}()
	<-started
	srv.signal()
	srv.awaitLog("waiting for the control call under way")
	select {
	case err := <-srv.done:
		t.Fatalf("ferryd stopped under a backup: %v", err)
	default:
	}
	close(release)
	if err := <-backedUp; err != nil {
		t.Fatalf("backup: %v\n%s", err, out.String())
	}
	srv.stopped()
	b := openForTest(t, root+"/backup", 1)
	enginetest.MustCheck(t, b)
	b.Close()
}

// openForTest opens the store in dir as a server does.
func openForTest(t *testing.T, dir string, seed uint64) *engine.Engine {
	t.Helper()
	o := enginetest.Options(t, seed)
	o.FS = nil
	e, err := engine.Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestNoControlSocketOnALongPath: a store whose folder's path is too long
// for a Unix socket is served all the same, without the socket, and the
// log says why.
func TestNoControlSocketOnALongPath(t *testing.T) {
	dir := t.TempDir() + "/" + strings.Repeat("d", maxSocketPath)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{w: make(chan struct{}, 1)}
	out := &syncBuffer{w: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--addr", "127.0.0.1:0", "--data", dir, "--log-level", "warn"}, out, logs)
	}()
	for !strings.Contains(out.String(), "listening on") {
		select {
		case <-out.w:
		case err := <-done:
			t.Fatalf("ferryd exited: %v\n%s", err, logs.String())
		}
	}
	if l := logs.String(); !strings.Contains(l, "no control socket") || !strings.Contains(l, "more than a Unix socket's may be") {
		t.Errorf("logs:\n%s", l)
	}
	if strings.Contains(out.String(), "work while it serves") {
		t.Errorf("ferryd says the tools work while it serves, with no socket:\n%s", out.String())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestControlSocketIsBoundPrivately: the socket is bound in a folder its
// user's alone, and only then, its mode its user's alone too, named:
// bound at its name, it would take connections under the process's umask
// until its mode changed, and serve one made meanwhile.
func TestControlSocketIsBoundPrivately(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil { // a --data that existed, open to all
		t.Fatal(err)
	}
	bound := make(chan string, 1)
	testControlBound = func(path string) {
		fi, err := os.Stat(filepath.Dir(path))
		_, named := os.Stat(filepath.Join(dir, controlSocket))
		switch {
		case err != nil:
			t.Errorf("the socket's folder: %v", err)
		case fi.Mode().Perm() != 0o700:
			t.Errorf("the socket was bound in a folder of mode %v; want 0700", fi.Mode().Perm())
		case path == filepath.Join(dir, controlSocket) || named == nil:
			t.Errorf("the socket was bound at its name")
		}
		bound <- path
	}
	defer func() { testControlBound = nil }()
	srv := serveStore(t, dir)
	private := filepath.Dir(<-bound)
	if _, err := os.Stat(private); !os.IsNotExist(err) {
		t.Errorf("the private folder the socket was bound in is left: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, controlSocket))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the named socket: %v, %v", fi, err)
	}
	srv.stop()
}

// TestStopWithAStalledControlCall: a control call whose request never
// comes whole (a stuck script, a wrong Content-Length) does not keep a
// stopping server from stopping, and gets no work done.
func TestStopWithAStalledControlCall(t *testing.T) {
	controlGrace = time.Millisecond
	defer func() { controlGrace = 5 * time.Second }()
	dir := t.TempDir()
	srv := serveStore(t, dir)
	conn, err := net.Dial("unix", filepath.Join(dir, controlSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /add-user HTTP/1.1\r\nHost: ferryd\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	srv.signal()
	select {
	case err := <-srv.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute): // a guard, not a wait: the stop takes a millisecond's grace
		t.Fatal("a control call whose request never came whole keeps the server from stopping")
	}
}

// TestToolsReachASocketByARelativePath: a tool given a store by a path
// too long for a socket's address reaches the server on it by the path
// relative to its working directory, where that is short enough.
func TestToolsReachASocketByARelativePath(t *testing.T) {
	base := t.TempDir()
	deep := filepath.Join(base, strings.Repeat("d", max(maxSocketPath+10-len(base), 1)))
	if err := os.MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Chdir(deep)
	srv := serveStore(t, "data")
	var out bytes.Buffer
	err := run(context.Background(), []string{"check", "--data", filepath.Join(deep, "data"), "--log-level", "warn"}, &out, io.Discard)
	srv.signal()
	if err != nil || !strings.Contains(out.String(), "by the server running on the store") {
		t.Errorf("check --data %s (%d bytes) with a server running on ./data: %v\n%s", filepath.Join(deep, "data"), len(filepath.Join(deep, "data")), err, out.String())
	}
	srv.stopped()
}

// TestStopEndsACompaction: a server told to stop while it compacts for
// ferryd compact stops the compaction, which could take long, rather
// than wait for it, and the tool says so.
func TestStopEndsACompaction(t *testing.T) {
	dir := t.TempDir()
	started, release := holdCall(t, "compact")
	srv := serveStore(t, dir)
	compacted := make(chan error, 1)
	go func() {
		compacted <- run(context.Background(), []string{"compact", "--data", dir, "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	<-started
	srv.signal()
	srv.awaitLog("waiting for the control call under way")
	// The compaction starts after the stop began: it ends at once.
	close(release)
	if err := <-compacted; err == nil || !strings.Contains(err.Error(), "compact: context canceled") && !strings.Contains(err.Error(), "compact: stopped") {
		t.Errorf("compact, the server stopping: %v", err)
	}
	srv.stopped()
}

// TestStopRefusesTheCallsWaitingTheirTurn: a server told to stop while a
// call does its work and another waits its turn finishes the first and
// refuses the second, which does nothing.
func TestStopRefusesTheCallsWaitingTheirTurn(t *testing.T) {
	root := t.TempDir()
	dir := root + "/data"
	started, release, queued := make(chan struct{}), make(chan struct{}), make(chan struct{})
	testControlCall = func(tool string, _ context.Context) {
		if tool == "check" {
			close(started)
			<-release
		}
	}
	testControlQueued = func(tool string) {
		if tool == "backup" {
			close(queued)
		}
	}
	defer func() { testControlCall, testControlQueued = nil, nil }()
	srv := serveStore(t, dir)
	checked := make(chan error, 1)
	go func() {
		checked <- run(context.Background(), []string{"check", "--data", dir, "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	<-started
	backedUp := make(chan error, 1)
	go func() {
		backedUp <- run(context.Background(), []string{"backup", "--data", dir, "--to", root + "/backup", "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	<-queued
	srv.signal()
	srv.awaitLog("waiting for the control call under way")
	close(release)
	if err := <-checked; err != nil {
		t.Errorf("the check under way as the stop began: %v", err)
	}
	if err := <-backedUp; err == nil || !strings.Contains(err.Error(), "the server is stopping") {
		t.Errorf("a backup waiting its turn as the stop began: %v", err)
	}
	srv.stopped()
	if _, err := os.Stat(root + "/backup"); !os.IsNotExist(err) {
		t.Errorf("the refused backup was written: %v", err)
	}
}

// TestControlSocketWhereItsNameFits: a store whose socket's name fits in a
// Unix socket's address, to the byte, gets its socket: where it is first
// bound is no longer.
func TestControlSocketWhereItsNameFits(t *testing.T) {
	base := t.TempDir()
	dir := base + "/" + strings.Repeat("d", maxSocketPath-1-len("/"+controlSocket)-len(base)-1)
	if n := len(filepath.Join(dir, controlSocket)); n != maxSocketPath-1 {
		t.Fatalf("the socket's path is %d bytes; want %d (the temporary folder's is too long: %s)", n, maxSocketPath-1, base)
	}
	srv := serveStore(t, dir)
	_, err := os.Stat(filepath.Join(dir, controlSocket))
	srv.signal()
	if err != nil {
		t.Errorf("no control socket at a %d-byte path, which every Unix takes: %v\n%s", maxSocketPath-1, err, srv.logs.String())
	}
	srv.stopped()
}

// TestInterruptedCompactStops: ferryd compact interrupted stops the
// compaction on the server, which sees the tool's connection close, and
// says so.
func TestInterruptedCompactStops(t *testing.T) {
	dir := t.TempDir()
	started := make(chan struct{})
	testControlCall = func(tool string, work context.Context) {
		if tool != "compact" {
			return
		}
		close(started)
		select {
		case <-work.Done():
		case <-time.After(time.Minute): // a guard, not a wait: the interruption comes at once
			t.Error("the compaction's context did not end when its tool was interrupted")
		}
	}
	t.Cleanup(func() { testControlCall = nil })
	srv := serveStore(t, dir)
	cctx, interrupt := context.WithCancel(context.Background())
	compacted := make(chan error, 1)
	go func() {
		compacted <- run(cctx, []string{"compact", "--data", dir, "--log-level", "warn"}, io.Discard, io.Discard)
	}()
	<-started
	interrupt()
	if err := <-compacted; err == nil || !strings.Contains(err.Error(), "compact: interrupted; the server stops it") {
		t.Errorf("compact interrupted: %v", err)
	}
	srv.awaitLog("control: compact ")
	if l := srv.logs.String(); !strings.Contains(l, "control: compact failed") {
		t.Errorf("the server went on with the compaction of an interrupted tool:\n%s", l)
	}
	srv.stop()
}

// served is ferryd serving a store in a test, its logs (at info) kept.
type served struct {
	t         *testing.T
	url       string
	metricsAt string // with --metrics-addr
	logs      *syncBuffer
	signal    context.CancelFunc // a stop signal
	done      <-chan error       // serve's end
}

// serveStore serves the store in dir, with args after the test's own,
// until stop (or the test's end).
func serveStore(t *testing.T, dir string, args ...string) *served {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	logs, out := &syncBuffer{w: make(chan struct{}, 1)}, &syncBuffer{w: make(chan struct{}, 1)}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--addr", "127.0.0.1:0", "--data", dir, "--log-level", "info"}, args...), out, logs)
	}()
	s := &served{t: t, logs: logs, signal: cancel, done: done}
	listening := regexp.MustCompile(`listening on (https?://\S+)`)
	metrics := regexp.MustCompile(`metrics: curl (http://\S+)`)
	for {
		select {
		case <-out.w:
		case err := <-done:
			t.Fatalf("ferryd exited: %v\n%s%s", err, out.String(), logs.String())
		}
		// The banner's last line: self-registration, on or off.
		if m := listening.FindStringSubmatch(out.String()); m != nil && regexp.MustCompile(`sign up: |self-registration is off`).MatchString(out.String()) {
			s.url = m[1]
			if m := metrics.FindStringSubmatch(out.String()); m != nil {
				s.metricsAt = m[1]
			}
			return s
		}
	}
}

// metrics scrapes the server's metrics.
func (s *served) metrics() string {
	s.t.Helper()
	resp, err := http.Get(s.metricsAt)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return string(b)
}

// stop signals the server to stop and waits until it has, failing the
// test on its error.
func (s *served) stop() {
	s.t.Helper()
	s.signal()
	s.stopped()
}

// stopped waits until the server has stopped, failing the test on its
// error.
func (s *served) stopped() {
	s.t.Helper()
	if err := <-s.done; err != nil {
		s.t.Fatalf("ferryd: %v\n%s", err, s.logs.String())
	}
}

// awaitLog waits until the server's logs hold text, failing the test if
// it stops first.
func (s *served) awaitLog(text string) {
	s.t.Helper()
	for !strings.Contains(s.logs.String(), text) {
		select {
		case <-s.logs.w:
		case err := <-s.done:
			s.t.Fatalf("ferryd stopped (%v) before it logged %q:\n%s", err, text, s.logs.String())
		}
	}
}

// holdCall holds the first control call of tool as it starts its work:
// started closes then, and the call goes on once release is closed.
func holdCall(t *testing.T, tool string) (started, release chan struct{}) {
	started, release = make(chan struct{}), make(chan struct{})
	testControlCall = func(name string, _ context.Context) {
		if name == tool {
			close(started)
			<-release
		}
	}
	t.Cleanup(func() { testControlCall = nil })
	return started, release
}

// TestServeKeepsAnotherDotC: a --data folder that holds a .c of someone
// else's (a --data of a home folder: ferryd warns that it holds files but
// no store, and serves on) keeps it: the server binds its socket there
// first, removing only what ferryd leaves, and goes without a socket.
func TestServeKeepsAnotherDotC(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".c"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".c", "notes.txt"), []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := serveStore(t, dir)
	srv.stop()
	if _, err := os.Stat(filepath.Join(dir, ".c", "notes.txt")); err != nil {
		t.Errorf("ferryd deleted the operator's %s/.c: %v", dir, err)
	}
	if l := srv.logs.String(); !strings.Contains(l, "no control socket") || !strings.Contains(l, "holds something else") {
		t.Errorf("logs:\n%s", l)
	}
}

// TestServerRefusalsAreUsageErrors: what the server refuses as a
// mistake of the tool's (a backup into the store's folder, which the tool
// misses when it sees the folder by another path, such as a bind mount)
// exits 2, as the same mistake the tool catches does; and a store flag
// given to a tool that the server does the work of is said to apply not.
func TestServerRefusalsAreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	srv := serveStore(t, dir)
	_, err := askServer[backupTo, struct{}](context.Background(), dir, "backup", backupTo{To: []byte(filepath.Join(dir, "inside"))})
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "is inside --data") {
		t.Errorf("a backup inside the store, refused by the server: %v (exit %d); want exit 2", err, exitCode(err))
	}
	logs := &syncBuffer{w: make(chan struct{}, 1)}
	if err := run(context.Background(), []string{"check", "--data", dir, "--store-compression", "fast"}, io.Discard, logs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "--store-compression applies to a stopped server's store only") {
		t.Errorf("check --store-compression by the server said nothing of the flag:\n%s", logs.String())
	}
	srv.stop()
}

// TestCheckByTheServerFindsProblems: a check the server does of a store
// that is not consistent fails the tool, printing what it found, and the
// metrics count it among the checks that found problems.
func TestCheckByTheServerFindsProblems(t *testing.T) {
	dir := t.TempDir()
	e := openForTest(t, dir, 1)
	u, err := e.CreateUser(context.Background(), engine.NewAccount{Username: "alice", Password: "correct horse"})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if _, err := enginetest.GarbleUser(vfs.Default, dir, u.ID); err != nil {
		t.Fatal(err)
	}
	srv := serveStore(t, dir, "--metrics-addr", "127.0.0.1:0")
	var out bytes.Buffer
	err = run(context.Background(), []string{"check", "--data", dir, "--log-level", "warn"}, &out, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "store is inconsistent") || !strings.Contains(out.String(), "by the server running on the store") {
		t.Errorf("check of a damaged store by the server: %v\n%s", err, out.String())
	}
	if m := srv.metrics(); !strings.Contains(m, `ferry_control_calls_total{result="problems",tool="check"} 1`) {
		t.Errorf("the metrics do not count the check's problems:\n%s", m)
	}
	srv.stop()
}

// TestShowUser: ferryd show-user prints a user's account as the store
// holds it: id and display name, devices signed in (not those revoked),
// what their ops hold against which quota, how many users they block; a
// user whose record cannot be read is shown by id, saying so.
func TestShowUser(t *testing.T) {
	dir := t.TempDir()
	e := openForTest(t, dir, 1)
	ctx := context.Background()
	alice, err := e.Register(ctx, engine.NewAccount{Username: "alice", Password: "correct horse", DisplayName: "Alice A.", DeviceName: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := e.Register(ctx, engine.NewAccount{Username: "bob", Password: "correct horse", DeviceName: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	laptop, err := e.Login(ctx, "alice", "correct horse", "laptop")
	if err != nil {
		t.Fatal(err)
	}
	me := engine.Actor{User: alice.User, Device: alice.Device}
	if err := e.RevokeDevice(ctx, me, laptop.Device); err != nil {
		t.Fatal(err)
	}
	if err := e.Block(ctx, me, bob.User); err != nil {
		t.Fatal(err)
	}
	if _, err := e.SetUserQuota(ctx, "alice", 0); err != nil {
		t.Fatal(err)
	}
	e.Close()
	show := func(name string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), []string{"show-user", "--data", dir, "--log-level", "warn", "--username", name}, &out, io.Discard)
		return out.String(), err
	}
	out, err := show("Alice")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"user alice (id " + alice.User.String() + `), display name "Alice A."` + "\n",
		"  1 device signed in\n    " + alice.Device.String() + `  "phone", since `, "  their ops hold 0 bytes; no quota (set for them)\n", "  they block 1 user\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("show-user alice: no %q in\n%s", want, out)
		}
	}
	if out, err := show("bob"); err != nil || !strings.Contains(out, "their ops hold 0 bytes; the server's quota (its --user-quota-mib)") {
		t.Errorf("show-user bob: %v\n%s", err, out)
	}
	if _, err := enginetest.GarbleUser(vfs.Default, dir, bob.User); err != nil {
		t.Fatal(err)
	}
	if out, err := show("bob"); err != nil || !strings.Contains(out, "user bob (id "+bob.User.String()+"): their record cannot be read") {
		t.Errorf("show-user of a user whose record does not decode: %v\n%s", err, out)
	}
	if _, err := show("carol"); err == nil || !strings.Contains(err.Error(), `show-user: no user "carol"`) {
		t.Errorf("show-user of no one: %v", err)
	}
	if err := run(context.Background(), []string{"show-user", "--data", dir}, io.Discard, io.Discard); exitCode(err) != 2 || !strings.Contains(err.Error(), "show-user needs --username NAME") {
		t.Errorf("show-user without --username: %v (exit %d)", err, exitCode(err))
	}
}

// TestShowUserOfADamagedAccount: show-user tells a device whose record
// does not decode (refused) from those signed in, shows the rest of an
// account whose usage count does not decode, and logs nothing of what it
// shows: a user whose record does not decode is said so on its output,
// not as an ERROR of a client's lookup.
func TestShowUserOfADamagedAccount(t *testing.T) {
	dir := t.TempDir()
	e := openForTest(t, dir, 1)
	ctx := context.Background()
	phone, err := e.Register(ctx, engine.NewAccount{Username: "alice", Password: "correct horse", DeviceName: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Login(ctx, "alice", "correct horse", "laptop"); err != nil {
		t.Fatal(err)
	}
	bob, err := e.Register(ctx, engine.NewAccount{Username: "bob", Password: "correct horse", DeviceName: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if _, err := enginetest.GarbleDevice(vfs.Default, dir, phone.User, phone.Device); err != nil {
		t.Fatal(err)
	}
	if err := enginetest.GarbleUsage(vfs.Default, dir, phone.User); err != nil {
		t.Fatal(err)
	}
	if _, err := enginetest.GarbleUser(vfs.Default, dir, bob.User); err != nil {
		t.Fatal(err)
	}
	show := func(name string) (string, string) {
		t.Helper()
		var out bytes.Buffer
		logs := &syncBuffer{w: make(chan struct{}, 1)}
		if err := run(context.Background(), []string{"show-user", "--data", dir, "--log-level", "warn", "--username", name}, &out, logs); err != nil {
			t.Fatalf("show-user %s: %v\n%s", name, err, logs.String())
		}
		return out.String(), logs.String()
	}
	out, _ := show("alice")
	for _, want := range []string{"  1 device signed in\n", `"laptop", since`,
		"  1 device refused, their records unreadable (ferryd check reports them; ferryd revoke-devices revokes them):\n    " + phone.Device.String() + "\n",
		"their ops hold what the store cannot read (their usage's record does not decode"} {
		if !strings.Contains(out, want) {
			t.Errorf("show-user alice: no %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "a device whose record the server cannot read") {
		t.Errorf("show-user quotes the refused device's placeholder as its name:\n%s", out)
	}
	out, logs := show("bob")
	if !strings.Contains(out, "their record cannot be read") || strings.Contains(logs, "left out of lookups") {
		t.Errorf("show-user bob: %s\nlogs: %s", out, logs)
	}
}
