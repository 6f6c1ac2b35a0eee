package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/internal/testbin"
)

// TestTour is the README's tour, driven as a user would drive it: the real
// ferryd and ferry binaries, profiles in folders, --json for checking.
// alice on a phone and a laptop, bob on his own; bob is offline while alice
// writes; bob comes back and gets everything once, in order.
func TestTour(t *testing.T) {
	ferryd, ferry := testbin.Build(t, "./cmd/ferryd"), testbin.Build(t, "./cmd/ferry")
	dir := t.TempDir()
	srv := testbin.StartFerryd(t, ferryd, testbin.FreeAddr(t), filepath.Join(dir, "data"))
	env := []string{"FERRY_SERVER=" + srv.URL, "FERRY_PASSWORD=correct horse"}
	as := func(profile string, args ...string) string {
		t.Helper()
		return testbin.Run(t, env, ferry, append([]string{"--profile", filepath.Join(dir, profile), "--json"}, args...)...)
	}
	decode := func(s string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(s), v); err != nil {
			t.Fatalf("decode %q: %v", s, err)
		}
	}

	as("alice-phone", "register", "alice", "--device", "phone")
	as("alice-laptop", "login", "alice", "--device", "laptop")
	as("bob", "register", "bob")
	var created struct{ ID string }
	decode(as("alice-phone", "conversation", "create", "lunch", "--with", "bob"), &created)
	as("bob", "sync") // bob sees the conversation, then goes offline

	sent := []string{"pizza?", "or sushi", "12:30?", "at the usual place", "bring Carol"}
	for i, text := range sent {
		profile := "alice-phone"
		if i%2 == 1 {
			profile = "alice-laptop"
			as(profile, "sync")
		}
		as(profile, "send", "lunch", text)
	}

	// Bob comes back.
	var sync struct{ Received int }
	decode(as("bob", "sync"), &sync)
	if sync.Received < len(sent) {
		t.Fatalf("bob's sync says %d ops received; alice sent %d", sync.Received, len(sent))
	}
	var list []struct {
		Title  string
		Unread int
	}
	decode(as("bob", "conversation", "list"), &list)
	if len(list) != 1 || list[0].Title != "lunch" || list[0].Unread != 5 {
		t.Fatalf("bob's conversations: %+v, want lunch with 5 unread", list)
	}
	var hist []struct {
		Seq    uint64
		Author string
		Text   string
	}
	decode(as("bob", "history", "lunch"), &hist)
	var got []string
	for i, m := range hist {
		if i > 0 && m.Seq <= hist[i-1].Seq {
			t.Fatalf("history out of order: %+v", hist)
		}
		if m.Author != "alice" {
			t.Fatalf("message %d by %q, want alice", m.Seq, m.Author)
		}
		got = append(got, m.Text)
	}
	if strings.Join(got, "|") != strings.Join(sent, "|") {
		t.Fatalf("bob got %q, want %q once each, in order", got, sent)
	}

	// Bob answers and reads; alice's other device sees both.
	as("bob", "send", "lunch", "sushi!")
	as("bob", "read", "lunch")
	var phone []struct {
		Text   string
		Status string
	}
	var last1 []struct{ Text string }
	decode(as("alice-laptop", "history", "lunch"), &phone)
	if last := phone[len(phone)-1]; last.Text != "sushi!" {
		t.Fatalf("alice's laptop: last message %+v", last)
	}
	if first := phone[0]; first.Status != "read" {
		t.Fatalf("alice's laptop: her first message is %q, want read", first.Status)
	}

	// tail prints the newest held, then only what is new: not the older
	// history of a conversation longer than --last.
	tail, lines := startTail(t, ferry, env, "--profile", filepath.Join(dir, "bob"), "--json", "tail", "lunch", "--last", "2", "--count", "1")
	var tailed []string
	for len(tailed) < 2 && lines.Scan() {
		var m struct{ Text string }
		decode(lines.Text(), &m)
		tailed = append(tailed, m.Text)
	}
	// tail holds bob's profile: another command on it is told so.
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", filepath.Join(dir, "bob"), "status"); err == nil || !strings.Contains(stderr, "in use by another ferry command") {
		t.Fatalf("status on the profile tail holds: %v %q", err, stderr)
	}
	as("alice-phone", "send", "lunch", "new one")
	for lines.Scan() {
		var m struct{ Text string }
		decode(lines.Text(), &m)
		tailed = append(tailed, m.Text)
	}
	if err := tail.Wait(); err != nil || !slices.Equal(tailed, []string{"bring Carol", "sushi!", "new one"}) {
		t.Fatalf("tail --last 2 --count 1 printed %q (%v); want the last two, then the new one", tailed, err)
	}

	// A conversation bob is added to while tail runs: what was sent in it
	// before tail began is not new.
	as("alice-phone", "conversation", "create", "big")
	as("alice-phone", "send", "big", "old in big")
	tail, lines = startTail(t, ferry, env, "--profile", filepath.Join(dir, "bob"), "--json", "tail", "--last", "1", "--count", "1")
	tailed = nil
	scan := func() {
		var m struct{ Text string }
		decode(lines.Text(), &m)
		tailed = append(tailed, m.Text)
	}
	if lines.Scan() {
		scan()
	}
	as("alice-phone", "conversation", "add", "big", "bob")
	as("alice-phone", "send", "big", "fresh in big")
	for lines.Scan() {
		scan()
	}
	if err := tail.Wait(); err != nil || !slices.Equal(tailed, []string{"new one", "fresh in big"}) {
		t.Fatalf("tail --last 1 --count 1 printed %q (%v); want lunch's last, then the new one in big", tailed, err)
	}

	// A title differing in case only: the exact one is meant.
	as("bob", "conversation", "create", "Lunch", "--with", "alice")
	as("bob", "send", "lunch", "exactly")
	decode(as("bob", "history", "lunch", "--limit", "1"), &last1)
	if len(last1) != 1 || last1[0].Text != "exactly" {
		t.Fatalf("send to the exact title: lunch's last message %+v", last1)
	}

	// Global flags after the command are the command line's, not the
	// message's; after a "--", the message's.
	bob := filepath.Join(dir, "bob")
	var sentOut struct{ Status string }
	decode(testbin.Run(t, env, ferry, "--profile", bob, "send", "lunch", "hi there", "--json"), &sentOut)
	decode(testbin.Run(t, env, ferry, "--profile", bob, "history", "lunch", "--limit", "1", "--json"), &last1)
	if sentOut.Status == "" || len(last1) != 1 || last1[0].Text != "hi there" {
		t.Fatalf("send with --json after the text: %+v, then %+v; want JSON, and the text alone", sentOut, last1)
	}
	as("bob", "send", "lunch", "--", "--json")
	decode(as("bob", "history", "lunch", "--limit", "1"), &last1)
	if len(last1) != 1 || last1[0].Text != "--json" {
		t.Fatalf("send lunch -- --json: last message %+v; want the text --json", last1)
	}

	// help, asked for, goes to stdout, to page or grep.
	if out := testbin.Run(t, env, ferry, "help"); !strings.Contains(out, "Commands:") || !strings.Contains(out, "-profile") {
		t.Fatalf("ferry help printed %q to stdout; want the commands and the flags", out)
	}

	// Mistakes get clear errors.
	_, stderr, err := testbin.RunErr(env, ferry, "--profile", bob, "send", "lunch", " ")
	if err == nil || !strings.Contains(stderr, "the message is empty") {
		t.Fatalf("send an empty message: %v %q", err, stderr)
	}
	_, stderr, err = testbin.RunErr(env, ferry, "--profile", filepath.Join(dir, "bob"), "history", "lunch", "--limit", "-1")
	if err == nil || !strings.Contains(stderr, "--limit -1: it must be at least 1") {
		t.Fatalf("history --limit -1: %v %q", err, stderr)
	}
	_, stderr, err = testbin.RunErr(env, ferry, "--profile", filepath.Join(dir, "bob"), "send", "dinner", "hi")
	if err == nil || !strings.Contains(stderr, `no conversation titled "dinner"`) {
		t.Fatalf("send to an unknown conversation: %v %q", err, stderr)
	}
	_, stderr, err = testbin.RunErr(env, ferry, "--profile", filepath.Join(dir, "nobody"), "send", "lunch", "hi")
	if err == nil || !strings.Contains(stderr, "not signed in") {
		t.Fatalf("send from a fresh profile: %v %q", err, stderr)
	}
	if out := testbin.Run(t, env, ferry, "--profile", filepath.Join(dir, "nobody"), "status"); !strings.Contains(out, "not signed in") {
		t.Fatalf("status of a fresh profile: %q", out)
	}
	_, stderr, err = testbin.RunErr([]string{"FERRY_PASSWORD=correct horse"}, ferry, "--profile", filepath.Join(dir, "nobody"), "register", "nobody")
	if err == nil || !strings.Contains(stderr, "give --server URL") {
		t.Fatalf("register with no server named: %v %q", err, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "nobody")); !os.IsNotExist(err) {
		t.Fatalf("commands on a profile that is not there made it: %v", err)
	}
	// A folder that is no profile (a mistyped --profile) is not made one.
	docs := filepath.Join(dir, "docs")
	if err := os.Mkdir(docs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(docs, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if out := testbin.Run(t, env, ferry, "--profile", docs, "status"); !strings.Contains(out, "not signed in") {
		t.Fatalf("status of a folder that is no profile: %q", out)
	}
	if fi, err := os.Stat(docs); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("status changed the folder that is no profile: %v %v", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(docs, "replica")); !os.IsNotExist(err) {
		t.Fatalf("status made a replica in a folder that is no profile: %v", err)
	}

	// A device revoked from another is told so when it sends, with a
	// failing exit, not that the server is out of reach; then it logs in
	// again, without logging out, and what it queued goes out.
	var devs []struct{ ID, Name string }
	decode(as("alice-phone", "devices"), &devs)
	var laptop string
	for _, d := range devs {
		if d.Name == "laptop" {
			laptop = d.ID
		}
	}
	var revoked struct{ Revoked string }
	decode(as("alice-phone", "devices", "--revoke", laptop), &revoked)
	if revoked.Revoked != laptop {
		t.Fatalf("devices --revoke %s said it revoked %q", laptop, revoked.Revoked)
	}
	_, stderr, err = testbin.RunErr(env, ferry, "--profile", filepath.Join(dir, "alice-laptop"), "send", "lunch", "running late")
	if err == nil || !strings.Contains(stderr, "queued, but the server refused") || !strings.Contains(stderr, "log in again") {
		t.Fatalf("send from a revoked device: %v %q", err, stderr)
	}
	var st struct{ Refused bool }
	decode(as("alice-laptop", "status"), &st)
	if !st.Refused {
		t.Fatal("status of the revoked device does not say the server refused it")
	}
	// Its logout, the server down, does not call its token valid.
	srv.Kill()
	_, stderr, err = testbin.RunErr(env, ferry, "--profile", filepath.Join(dir, "alice-laptop"), "logout")
	if err == nil || !strings.Contains(stderr, "its token no longer works") {
		t.Fatalf("logout of the revoked device, the server down: %v %q", err, stderr)
	}
	srv.Start()
	as("alice-laptop", "login", "alice", "--device", "laptop")
	if decode(as("alice-laptop", "status"), &st); st.Refused {
		t.Fatal("status after logging in again still says the server refused the device")
	}
	as("alice-laptop", "sync")
	var last []struct{ Text, Status string }
	decode(as("bob", "history", "lunch"), &last)
	if m := last[len(last)-1]; m.Text != "running late" {
		t.Fatalf("bob's last message %+v after alice's laptop logged in again, want what it had queued", m)
	}
}

// aliceWithNotes builds ferryd and ferry, starts a server on a store in a
// temporary folder, and registers alice in a profile of her own, with a
// conversation, notes. It returns the server, ferry's binary, the
// environment to run it in, and the profile.
func aliceWithNotes(t *testing.T) (srv *testbin.Ferryd, ferry string, env []string, profile string) {
	t.Helper()
	ferryd := testbin.Build(t, "./cmd/ferryd")
	ferry = testbin.Build(t, "./cmd/ferry")
	dir := t.TempDir()
	srv = testbin.StartFerryd(t, ferryd, testbin.FreeAddr(t), filepath.Join(dir, "data"))
	env = []string{"FERRY_SERVER=" + srv.URL, "FERRY_PASSWORD=correct horse"}
	profile = filepath.Join(dir, "alice")
	testbin.Run(t, env, ferry, "--profile", profile, "register", "alice")
	testbin.Run(t, env, ferry, "--profile", profile, "conversation", "create", "notes")
	return srv, ferry, env, profile
}

// TestSendWhileTheServerIsDown: a message sent while the server refuses
// connections is queued at once, saying why, rather than after SyncOnce's
// retries have used up --timeout; it goes out at the next sync once the
// server is back.
func TestSendWhileTheServerIsDown(t *testing.T) {
	srv, ferry, env, profile := aliceWithNotes(t)
	srv.Kill()
	out := testbin.Run(t, env, ferry, "--profile", profile, "--timeout", "20s", "send", "notes", "written offline")
	if !strings.Contains(out, "message queued") || !strings.Contains(out, "refused") {
		t.Fatalf("send with the server down: %q, want it queued, saying the connection was refused", out)
	}
	// Reading marks the conversation read here, for the next sync;
	// listing shows what the device holds: both at once, saying the
	// connection was refused, rather than after SyncOnce's retries.
	if out := testbin.Run(t, env, ferry, "--profile", profile, "--timeout", "20s", "read", "notes"); !strings.Contains(out, "read here") {
		t.Fatalf("read with the server down: %q, want it marked here", out)
	}
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", profile, "--timeout", "20s", "conversation", "list"); err != nil || !strings.Contains(stderr, "out of reach") {
		t.Fatalf("conversation list with the server down: %v %q", err, stderr)
	}
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", profile, "--timeout", "20s", "send", "dinner", "x"); err == nil ||
		!strings.Contains(stderr, `no conversation titled "dinner"`) || !strings.Contains(stderr, "out of reach") {
		t.Fatalf("send to an unknown title with the server down: %v %q; want it unknown, saying the server is out of reach", err, stderr)
	}
	if h := testbin.Run(t, env, ferry, "--profile", profile, "history", "notes", "--offline"); !strings.Contains(h, "- alice: written offline [pending]") {
		t.Fatalf("history with the message queued: %q, want it listed pending, with no seq", h)
	}
	// A message not sent yet has an id alone, by which it is edited, and
	// the edit waits with it.
	var pending []struct{ ID string }
	if err := json.Unmarshal([]byte(testbin.Run(t, env, ferry, "--profile", profile, "--json", "history", "notes", "--offline")), &pending); err != nil || len(pending) != 1 {
		t.Fatalf("history --json with the message queued: %+v %v", pending, err)
	}
	if out := testbin.Run(t, env, ferry, "--profile", profile, "--timeout", "20s", "edit", "notes", pending[0].ID, "--", "written offline, then edited"); !strings.Contains(out, "edit queued") {
		t.Fatalf("edit of the pending message with the server down: %q, want it queued", out)
	}
	if h := testbin.Run(t, env, ferry, "--profile", profile, "history", "notes", "--offline"); !strings.Contains(h, "- alice: written offline, then edited (edited) [pending]") {
		t.Fatalf("history with the message and its edit queued: %q", h)
	}
	// A logout the server cannot hear leaves the device signed in, and
	// says how else to end it.
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", profile, "--timeout", "20s", "logout"); err == nil || !strings.Contains(stderr, "the device stays signed in") || !strings.Contains(stderr, "devices --revoke") {
		t.Fatalf("logout with the server down: %v %q", err, stderr)
	}
	if out := testbin.Run(t, env, ferry, "--profile", profile, "status"); !strings.HasPrefix(out, "alice on device") {
		t.Fatalf("status after a logout that could not reach the server: %q, want still signed in", out)
	}
	srv.Start()
	var sync struct{ Pending int }
	if err := json.Unmarshal([]byte(testbin.Run(t, env, ferry, "--profile", profile, "--json", "sync")), &sync); err != nil || sync.Pending != 0 {
		t.Fatalf("the sync after: %+v, %v; want nothing pending", sync, err)
	}
	if h := testbin.Run(t, env, ferry, "--profile", profile, "history", "notes"); !strings.Contains(h, "#2 alice: written offline, then edited (edited)") {
		t.Fatalf("history after the sync: %q, want the message, edited", h)
	}
	// --server names the server to sync with, the one to try first.
	dead := "http://" + testbin.FreeAddr(t)
	out = testbin.Run(t, env, ferry, "--profile", profile, "--server", dead, "--timeout", "20s", "send", "notes", "to another server")
	if !strings.Contains(out, "message queued") || !strings.Contains(out, "refused") {
		t.Fatalf("send to a --server that is down: %q, want it queued, saying the connection was refused", out)
	}
	// FERRY_SERVER names the server of a profile not signed in yet: a
	// signed-in one syncs with the server it signed in to, where its token
	// belongs, and sends what it queued there.
	elsewhere := []string{"FERRY_SERVER=" + dead, "FERRY_PASSWORD=correct horse"}
	if err := json.Unmarshal([]byte(testbin.Run(t, elsewhere, ferry, "--profile", profile, "--json", "sync")), &sync); err != nil || sync.Pending != 0 {
		t.Fatalf("the sync with FERRY_SERVER naming another server: %+v, %v; want it done on the profile's, nothing pending", sync, err)
	}
}

// TestMessageCommands: edit, delete and react name a message by the seq
// history prints or by its id; the server's refusals are listed by
// failed, which dismisses them; an owner hands the conversation on with
// conversation role before leaving it.
func TestMessageCommands(t *testing.T) {
	_, ferry, env, alice := aliceWithNotes(t)
	bob, run := withBob(t, ferry, env, alice)
	fails := func(want string, profile string, args ...string) {
		t.Helper()
		_, stderr, err := testbin.RunErr(env, ferry, append([]string{"--profile", profile}, args...)...)
		if err == nil || !strings.Contains(stderr, want) {
			t.Fatalf("ferry %s: %v %q; want an error saying %q", strings.Join(args, " "), err, stderr, want)
		}
	}
	type msg struct {
		ID, Author, Text        string
		Seq                     uint64
		Edited, Deleted, Update bool
		Reactions               map[string][]string
	}
	last := func(profile string) msg {
		t.Helper()
		var ms []msg
		if err := json.Unmarshal([]byte(run(profile, "--json", "history", "notes", "--limit", "1")), &ms); err != nil || len(ms) != 1 {
			t.Fatalf("history: %v %+v", err, ms)
		}
		return ms[0]
	}
	if out := run(alice, "usage"); !strings.Contains(out, "on the server, which holds you to no quota") {
		t.Fatalf("usage on a server without a quota: %q", out)
	}
	run(alice, "send", "notes", "helo")
	m := last(alice)
	seq := strconv.FormatUint(m.Seq, 10)

	run(alice, "edit", "notes", "#"+seq, "hello", "world")
	if got := last(bob); got.Text != "hello world" || !got.Edited || got.ID != m.ID {
		t.Fatalf("bob's view after alice's edit of #%s: %+v", seq, got)
	}
	fails("only its author may edit", bob, "edit", "notes", seq, "hijacked")
	fails("only its author or an admin may delete", bob, "delete", "notes", seq)
	fails("no message #999", alice, "edit", "notes", "999", "x")
	fails("#1 is not a message", alice, "edit", "notes", "1", "x")
	fails("neither a message's seq", alice, "delete", "notes", "first")

	run(bob, "react", "notes", seq, "👍")
	if got := last(alice); len(got.Reactions["👍"]) != 1 {
		t.Fatalf("alice's view after bob's reaction: %+v", got)
	}
	if h := run(alice, "history", "notes", "--limit", "1"); !strings.Contains(h, "hello world (edited) (👍 1)") {
		t.Fatalf("history shows %q; want the reaction counted", h)
	}
	run(bob, "react", "notes", m.ID, "👍", "--remove")
	if got := last(alice); len(got.Reactions) != 0 {
		t.Fatalf("alice's view after bob took his reaction back: %+v", got)
	}
	fails("you have no 👍 reaction", bob, "react", "notes", seq, "--remove", "👍")
	fails("the key is blank", bob, "react", "notes", seq, " ")

	// tail prints a message shown again when it changes.
	tail, lines := startTail(t, ferry, env, "--profile", bob, "--json", "tail", "notes", "--last", "1")
	var tailed []msg
	next := func() {
		t.Helper()
		tailed = append(tailed, tailLine[msg](t, lines))
	}
	next()
	run(alice, "edit", "notes", seq, "hello there")
	next()
	_ = tail.Process.Kill()
	_ = tail.Wait()
	if len(tailed) != 2 || tailed[0].Text != "hello world" || tailed[0].Update || tailed[1].Text != "hello there" || !tailed[1].Edited || !tailed[1].Update || tailed[1].ID != m.ID {
		t.Fatalf("tail printed %+v; want the message, then it edited, marked an update", tailed)
	}
	run(alice, "delete", "notes", seq)
	if got := last(bob); !got.Deleted || got.Text != "" {
		t.Fatalf("bob's view after alice deleted #%s: %+v", seq, got)
	}
	fails("was deleted", alice, "edit", "notes", seq, "again")

	// A message bob wrote offline, after he was removed, is refused: it
	// cannot be edited, and deleting it forgets it.
	dead := "http://" + testbin.FreeAddr(t)
	run(bob, "--server", dead, "send", "notes", "after my time")
	run(alice, "conversation", "remove", "notes", "bob")
	run(bob, "sync")
	var failed []struct{ Op, Kind, Reason, Title string }
	if err := json.Unmarshal([]byte(run(bob, "--json", "failed")), &failed); err != nil || len(failed) != 1 || failed[0].Kind != "message" {
		t.Fatalf("bob's failed ops: %+v %v; want his message", failed, err)
	}
	fails("refused by the server, never sent", bob, "edit", "notes", failed[0].Op, "x")
	if out := run(bob, "delete", "notes", failed[0].Op); !strings.Contains(out, "dismissed") {
		t.Fatalf("delete of a failed message: %q, want it dismissed", out)
	}
	if out := run(bob, "failed"); out != "no failed ops\n" {
		t.Fatalf("failed, after: %q", out)
	}
	run(alice, "conversation", "add", "notes", "bob")

	// The last owner may not leave: the server refuses, and failed says
	// why until the refusal is dismissed.
	fails("last owner", alice, "conversation", "leave", "notes")
	if err := json.Unmarshal([]byte(run(alice, "--json", "failed")), &failed); err != nil || len(failed) != 1 ||
		failed[0].Kind != "member-remove" || failed[0].Reason != "FAILED_PRECONDITION" || failed[0].Title != "notes" {
		t.Fatalf("failed: %+v %v; want the leave, refused", failed, err)
	}
	if st := run(alice, "status"); !strings.Contains(st, "1 failed (ferry failed says why)") {
		t.Fatalf("status: %q", st)
	}
	// An id among them that did not fail: nothing is dismissed.
	fails("nothing dismissed", alice, "failed", "--dismiss", failed[0].Op, "--dismiss", m.ID)
	if out := run(alice, "failed", "--dismiss-all", "--dismiss", failed[0].Op); out != "dismissed 1 failed op\n" {
		t.Fatalf("failed --dismiss-all --dismiss OP: %q", out)
	}
	if err := json.Unmarshal([]byte(run(alice, "--json", "failed")), &failed); err != nil || len(failed) != 0 {
		t.Fatalf("failed after --dismiss: %+v %v; want none", failed, err)
	}
	fails("member, admin or owner", alice, "conversation", "role", "notes", "bob", "boss")
	fails("only owners may change roles", bob, "conversation", "role", "notes", "bob", "owner")
	run(filepath.Join(filepath.Dir(alice), "carol"), "register", "carol")
	fails("carol is not a member", alice, "conversation", "role", "notes", "carol", "admin")
	fails("bob is already a member", alice, "conversation", "add", "notes", "bob")
	run(alice, "conversation", "role", "notes", "bob", "owner")
	run(alice, "conversation", "leave", "notes")
	var members []struct{ Username, Role string }
	if err := json.Unmarshal([]byte(run(bob, "--json", "conversation", "members", "notes")), &members); err != nil ||
		len(members) != 1 || members[0].Username != "bob" || members[0].Role != "owner" {
		t.Fatalf("members after alice handed notes to bob and left: %+v %v", members, err)
	}
}

// startTail starts the ferry binary (tail, in args) with env, and returns
// the process and a scanner of its stdout. It is killed when the test
// ends, and after a minute at most: a tail that never prints what the test
// waits for ends its output, rather than the test hanging.
func startTail(t *testing.T, ferry string, env []string, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	tail := exec.Command(ferry, args...)
	tail.Env = append(os.Environ(), env...)
	tail.Stderr = io.Discard
	pipe, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	bound := time.AfterFunc(time.Minute, func() { _ = tail.Process.Kill() }) // a bound, not a wait for an event
	t.Cleanup(func() {
		bound.Stop()
		_ = tail.Process.Kill()
	})
	return tail, bufio.NewScanner(pipe)
}

// TestTailShowsChangesToOldMessages: tail prints a message it printed
// again when it changes, however many came after it: an edit of a message
// a thousand messages back prints as an update, and the messages that
// arrive after it print once.
func TestTailShowsChangesToOldMessages(t *testing.T) {
	_, ferry, env, alice := aliceWithNotes(t)
	bob, run := withBob(t, ferry, env, alice)
	run(alice, "send", "notes", "the old one")
	var sent []struct{ ID string }
	if err := json.Unmarshal([]byte(run(alice, "--json", "history", "notes", "--limit", "1")), &sent); err != nil || len(sent) != 1 {
		t.Fatalf("history: %v %+v", err, sent)
	}
	old := sent[0].ID
	// A thousand more, from alice's profile.
	sendThroughSDK(t, alice, 1000, func(i int) string { return fmt.Sprint("filler ", i) })
	run(bob, "sync")

	_, lines := startTail(t, ferry, env, "--profile", bob, "--json", "tail", "notes", "--last", "1001")
	type line struct {
		ID, Text string
		Update   bool
	}
	next := func() line {
		t.Helper()
		return tailLine[line](t, lines)
	}
	for i := range 1001 {
		if l := next(); i == 0 && (l.ID != old || l.Text != "the old one") {
			t.Fatalf("tail's first line: %+v; want the old message", l)
		}
	}
	run(alice, "edit", "notes", old, "the old one, edited")
	run(alice, "send", "notes", "the new one")
	if l := next(); l.ID != old || l.Text != "the old one, edited" || !l.Update {
		t.Fatalf("tail printed %+v after the edit of the message 1,000 back; want it as an update", l)
	}
	if l := next(); l.Text != "the new one" || l.Update {
		t.Fatalf("tail printed %+v after the new message; want it, once", l)
	}
}

// TestTailGoesOnAfterTheServerRestarts: a tail whose server goes away
// reconnects by itself when it is back, and prints what was sent while it
// was down once, then what comes live.
func TestTailGoesOnAfterTheServerRestarts(t *testing.T) {
	srv, ferry, env, alice := aliceWithNotes(t)
	bob, run := withBob(t, ferry, env, alice)
	run(bob, "sync")
	_, lines := startTail(t, ferry, env, "--profile", bob, "--json", "tail", "notes", "--last", "0")
	var texts []string
	next := func() {
		t.Helper()
		texts = append(texts, tailLine[struct{ Text string }](t, lines).Text)
	}
	run(alice, "send", "notes", "before")
	next() // the tail is live
	srv.Kill()
	run(alice, "--timeout", "20s", "send", "notes", "while it was down") // queued
	srv.Start()
	run(alice, "sync")
	next()
	run(alice, "send", "notes", "after")
	next()
	if want := []string{"before", "while it was down", "after"}; !slices.Equal(texts, want) {
		t.Fatalf("tail printed %q; want %q", texts, want)
	}
}

// TestUsageAndQuota: ferry usage says what the user's ops hold and the
// server's quota; a message past the quota is refused, saying so and how
// much the user holds.
func TestUsageAndQuota(t *testing.T) {
	ferryd := testbin.Build(t, "./cmd/ferryd")
	ferry := testbin.Build(t, "./cmd/ferry")
	dir := t.TempDir()
	srv := testbin.StartFerryd(t, ferryd, testbin.FreeAddr(t), filepath.Join(dir, "data"), "--user-quota-mib", "1")
	env := []string{"FERRY_SERVER=" + srv.URL, "FERRY_PASSWORD=correct horse"}
	alice := filepath.Join(dir, "alice")
	run := func(args ...string) string {
		t.Helper()
		return testbin.Run(t, env, ferry, append([]string{"--profile", alice}, args...)...)
	}
	run("register", "alice")
	run("conversation", "create", "notes")
	var u struct{ Bytes, Quota int64 }
	if err := json.Unmarshal([]byte(run("--json", "usage")), &u); err != nil || u.Quota != 1<<20 || u.Bytes != int64(32+len("notes")) {
		t.Fatalf("usage: %+v %v; want the create's 37 bytes of 1 MiB", u, err)
	}
	// Most of the MiB, from alice's profile.
	sendThroughSDK(t, alice, 16, func(int) string { return strings.Repeat("x", 64_000) })
	if out := run("usage"); !strings.Contains(out, "of the 1.0 MiB you may store on the server (97%)") {
		t.Fatalf("usage: %q", out)
	}
	_, stderr, err := testbin.RunErr(env, ferry, "--profile", alice, "send", "notes", strings.Repeat("y", 64_000))
	if err == nil || !strings.Contains(stderr, "QUOTA_EXCEEDED") || !strings.Contains(stderr, "of the 1.0 MiB each user may store here") {
		t.Fatalf("a message past the quota: %v %q", err, stderr)
	}
}

// withBob registers bob in a profile beside alice's and adds him to her
// notes; run runs ferry with a profile and args.
func withBob(t *testing.T, ferry string, env []string, alice string) (bob string, run func(profile string, args ...string) string) {
	t.Helper()
	bob = filepath.Join(filepath.Dir(alice), "bob")
	run = func(profile string, args ...string) string {
		t.Helper()
		return testbin.Run(t, env, ferry, append([]string{"--profile", profile}, args...)...)
	}
	run(bob, "register", "bob")
	run(alice, "conversation", "add", "notes", "bob")
	return bob, run
}

// sendThroughSDK sends n messages (text(i) each) to the one conversation
// of the profile through the SDK, and syncs: faster than a ferry command
// a message. The profile must not be in use.
func sendThroughSDK(t *testing.T, profile string, n int, text func(i int) string) {
	t.Helper()
	d, err := clientsdk.Open(profile)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	cs, err := d.Conversations()
	if err != nil || len(cs) != 1 {
		t.Fatalf("the profile's conversations: %+v %v; want one", cs, err)
	}
	for i := range n {
		if _, err := d.SendText(context.Background(), cs[0].ID, text(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SyncOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// tailLine reads the next line a `tail --json` printed into a T, and fails
// the test when the tail ended (startTail's bound, or a crash).
func tailLine[T any](t *testing.T, lines *bufio.Scanner) T {
	t.Helper()
	if !lines.Scan() {
		t.Fatal("tail ended")
	}
	var v T
	if err := json.Unmarshal(lines.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestPasswd: ferry passwd changes the password, from the environment or
// from two lines of stdin; with --sign-out-others the user's other
// profiles are signed out, and sign in again with the new password only.
func TestPasswd(t *testing.T) {
	_, ferry, env, alice := aliceWithNotes(t)
	phone := filepath.Join(filepath.Dir(alice), "phone")
	testbin.Run(t, env, ferry, "--profile", phone, "login", "alice")
	out := testbin.Run(t, append(env, "FERRY_NEW_PASSWORD=battery staple"), ferry, "--profile", alice, "passwd")
	if !strings.Contains(out, "password changed; your other devices stay signed in") {
		t.Fatalf("passwd: %q", out)
	}
	testbin.Run(t, env, ferry, "--profile", phone, "sync") // still signed in

	cmd := exec.Command(ferry, "--profile", alice, "--json", "passwd", "--sign-out-others", "--password-stdin")
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader("battery staple\ncorrect horse again\n")
	b, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(b), `"devices_signed_out":1`) {
		t.Fatalf("passwd --sign-out-others --password-stdin: %v %s", err, b)
	}
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", phone, "sync"); err == nil || !strings.Contains(stderr, "unauthenticated") {
		t.Fatalf("the phone after it was signed out: %v %q", err, stderr)
	}
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", phone, "login", "alice"); err == nil || !strings.Contains(stderr, "wrong username or password") {
		t.Fatalf("the phone signing in with the old password: %v %q", err, stderr)
	}
	testbin.Run(t, append(env, "FERRY_PASSWORD=correct horse again"), ferry, "--profile", phone, "login", "alice")
	if _, stderr, err := testbin.RunErr(append(env, "FERRY_NEW_PASSWORD=whatever else"), ferry, "--profile", alice, "passwd"); err == nil || !strings.Contains(stderr, "current password is wrong") {
		t.Fatalf("passwd with the old current password: %v %q", err, stderr)
	}
	// At a prompt, the new password is asked for twice.
	cmd = exec.Command(ferry, "--profile", alice, "passwd")
	cmd.Env = append(os.Environ(), "FERRY_SERVER=", "FERRY_PASSWORD=correct horse again")
	cmd.Stdin = strings.NewReader("a new password\na new pasword\n")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "new password again: ") || !strings.Contains(string(b), "the new passwords differ; nothing changed") {
		t.Fatalf("passwd with two new passwords that differ: %v %s", err, b)
	}
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", filepath.Join(filepath.Dir(alice), "nobody"), "passwd"); err == nil || !strings.Contains(stderr, "is not signed in") {
		t.Fatalf("passwd on a profile not signed in: %v %q", err, stderr)
	}
}

// aliceAndBob is aliceWithNotes with bob registered in a profile beside
// alice's, and run, which runs ferry with a profile.
func aliceAndBob(t *testing.T) (ferry string, env []string, alice, bob string, run func(profile string, args ...string) string) {
	_, ferry, env, alice = aliceWithNotes(t)
	bob = filepath.Join(filepath.Dir(alice), "bob")
	run = func(profile string, args ...string) string {
		t.Helper()
		return testbin.Run(t, env, ferry, append([]string{"--profile", profile}, args...)...)
	}
	run(bob, "register", "bob")
	return ferry, env, alice, bob, run
}

// TestBlock: ferry block stops a user adding you to conversations (their
// ferry conversation add then fails, saying why), blocked lists them,
// unblock lets them again.
func TestBlock(t *testing.T) {
	ferry, env, alice, bob, run := aliceAndBob(t)
	if out := run(bob, "block", "alice"); !strings.Contains(out, "alice can no longer add you to conversations") {
		t.Fatalf("block: %q", out)
	}
	if out := run(bob, "blocked"); !strings.Contains(out, "alice") {
		t.Fatalf("blocked: %q", out)
	}
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", alice, "conversation", "add", "notes", "bob"); err == nil ||
		!strings.Contains(stderr, "PERMISSION_DENIED") || !strings.Contains(stderr, "does not accept being added to conversations by you") {
		t.Fatalf("adding bob, who blocks alice: %v %q", err, stderr)
	}
	run(alice, "failed", "--dismiss-all")
	if out := run(bob, "unblock", "alice"); !strings.Contains(out, "alice can add you to conversations again") {
		t.Fatalf("unblock: %q", out)
	}
	if out := run(bob, "blocked"); !strings.Contains(out, "you block no one") {
		t.Fatalf("blocked after unblocking: %q", out)
	}
	run(alice, "conversation", "add", "notes", "bob")
	run(alice, "sync")
	if out := run(alice, "failed"); strings.Contains(out, "does not accept") {
		t.Fatalf("failed after unblocking: %q", out)
	}
}

// TestNameAndDeviceRename: ferry name sets the name the members of the
// user's conversations see (their conversation members lists it), --reset
// gives the username back; ferry devices --rename renames a device.
func TestNameAndDeviceRename(t *testing.T) {
	ferry, env, alice, bob, run := aliceAndBob(t)
	run(alice, "conversation", "add", "notes", "bob")
	run(alice, "sync")
	if out := run(alice, "name", "Alice", "Liddell"); !strings.Contains(out, `alice is shown as "Alice Liddell"`) {
		t.Fatalf("name: %q", out)
	}
	run(bob, "sync")
	if out := run(bob, "conversation", "members", "notes"); !regexp.MustCompile(`(?m)^alice +owner +Alice Liddell$`).MatchString(out) {
		t.Fatalf("the members bob is shown: %q; want alice's display name", out)
	}
	if out := run(alice, "--json", "name", "--reset"); !strings.Contains(out, `"display_name":"alice"`) {
		t.Fatalf("name --reset: %q", out)
	}
	// Before a "--", a word with a dash is a flag: a typo, or --reset
	// with a name, is refused, not the name everyone sees.
	for _, args := range [][]string{{}, {"--reset", "extra"}, {"Alice", "--reset"}, {"--rest"}} {
		if _, stderr, err := testbin.RunErr(env, ferry, append([]string{"--profile", alice, "name"}, args...)...); err == nil || !strings.Contains(strings.ToLower(stderr), "usage") {
			t.Errorf("name %q: %v %q; want a usage error", args, err, stderr)
		}
	}
	if out := run(alice, "--json", "name", "--", "--reset", "extra"); !strings.Contains(out, `"display_name":"--reset extra"`) {
		t.Fatalf("name -- --reset extra: %q", out)
	}

	var devs []struct {
		ID      string `json:"id"`
		Current bool   `json:"current"`
	}
	if err := json.Unmarshal([]byte(run(alice, "--json", "devices")), &devs); err != nil || len(devs) != 1 {
		t.Fatalf("devices: %+v, %v", devs, err)
	}
	if out := run(alice, "devices", "--rename", devs[0].ID, "--name", "work laptop"); !strings.Contains(out, `is named "work laptop"`) {
		t.Fatalf("devices --rename: %q", out)
	}
	if out := run(alice, "devices"); !strings.Contains(out, devs[0].ID+"  work laptop") {
		t.Fatalf("devices after the rename: %q", out)
	}
	if out := run(alice, "devices", "--rename", devs[0].ID, "--name", ""); !strings.Contains(out, `is named "unnamed device"`) {
		t.Fatalf("devices --rename --name '': %q", out)
	}
	if _, stderr, err := testbin.RunErr(env, ferry, "--profile", alice, "devices", "--rename", devs[0].ID); err == nil || !strings.Contains(stderr, "usage: ferry devices") {
		t.Fatalf("devices --rename without --name: %v %q", err, stderr)
	}
}
