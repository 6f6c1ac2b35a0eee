// Package conformance runs h2spec (github.com/summerwind/h2spec), the
// HTTP/2 conformance suite, against the h2c servers server.HTTPServer can
// use: Ferry's own (internal/h2) and golang.org/x/net/http2's. It is a
// module of its own so that h2spec and its dependencies stay out of the
// main module's go.mod: run it with
//
//	go test -C internal/h2/conformance -race -count=1 ./...
package conformance

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/summerwind/h2spec/config"
	"github.com/summerwind/h2spec/generic"
	"github.com/summerwind/h2spec/hpack"
	h2spechttp2 "github.com/summerwind/h2spec/http2"
	"github.com/summerwind/h2spec/spec"

	"github.com/ferrysync/ferry/server"
)

var (
	caseTimeout = flag.Duration("h2spec.timeout", 3*time.Second, "how long each h2spec case waits for the server (h2spec's -o)")
	strict      = flag.Bool("h2spec.strict", false, "also run h2spec's strict cases (h2spec's -S)")
	serverLog   = flag.Bool("h2spec.serverlog", false, "log what the servers log (connection errors, mostly)")
	sections    = flag.String("h2spec.sections", "", "comma-separated h2spec sections or cases to run, as h2spec's arguments (http2/6.5.3, http2/5.1/8); empty: all")
)

// Known failures, by h2spec id ("http2/8.1.2.2/1": section 8.1.2.2 of
// the http2 part, its first case), with why. A case listed that passes
// fails the test, so that the lists stay true.
var (
	// setupFailures are cases no server behind server.HTTPServer can
	// pass: they test what HTTPServer does, not the h2c server.
	setupFailures = map[string]string{
		"http2/3.5/2": "HTTPServer serves HTTP/1.1 and h2c on one port: a connection that does not open " +
			"with the HTTP/2 preface is HTTP/1.1, which net/http answers (400 Bad Request) before it closes " +
			"the connection, and h2spec, which wants a close and nothing else, fails to parse that answer as a frame",
	}

	// ferryKnownFailures are Ferry's server's (internal/h2): none. Keep it so.
	ferryKnownFailures = map[string]string{}

	// xnetKnownFailures are golang.org/x/net/http2's server's.
	xnetKnownFailures = map[string]string{
		"http2/6.5.3/1": "x/net treats a SETTINGS frame with a setting twice as a connection error " +
			"(PROTOCOL_ERROR, \"settings_big_or_dups\" in server.go), which RFC 9113 does not ask for",
		"http2/8.1.2.2/1": "x/net answers a request with a connection-specific header field with 400 Bad Request, " +
			"not a stream error (golang.org/issue/26321)",
		"http2/8.1.2.2/2": "x/net answers a request with a TE header field other than \"trailers\" with 400 Bad Request, " +
			"not a stream error (golang.org/issue/26321)",
	}
)

func TestH2Spec(t *testing.T) {
	for _, tc := range []struct {
		h2c   server.H2C
		known map[string]string
	}{
		{server.H2CFerry, merge(setupFailures, ferryKnownFailures)},
		{server.H2CXNet, merge(setupFailures, xnetKnownFailures)},
	} {
		t.Run(tc.h2c.String(), func(t *testing.T) {
			t.Parallel()
			var h server.H2C
			if err := h.Set(tc.h2c.String()); err != nil {
				t.Skipf("this build has no %s: %v", tc.h2c, err) // Go 1.27 without -tags http2legacy
			}
			addr := serve(t, tc.h2c)
			runSuite(t, addr, tc.known)
		})
	}
}

func merge(ms ...map[string]string) map[string]string {
	all := make(map[string]string)
	for _, m := range ms {
		maps.Copy(all, m)
	}
	return all
}

// handler answers as h2spec expects: 200 with a body of more than 5 bytes
// (its flow-control cases skip themselves below that) to any request, once
// the request's body is read.
func handler(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, "hello from the h2spec handler\n")
}

// serve serves the handler on a loopback port with h2c from h, with
// Ferry's settings, until the test ends; it returns the address.
func serve(t *testing.T, h server.H2C) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := server.NewHTTPServer(ln.Addr().String(), http.HandlerFunc(handler), nil)
	hs.H2C = h
	// h2spec's http2/4.2/3 sends a HEADERS frame of 17.5 KB and wants a
	// FRAME_SIZE_ERROR: it assumes the default SETTINGS_MAX_FRAME_SIZE,
	// whatever the server announced. Announce the default, then, not
	// Ferry's 1 MiB, under which that frame is valid and answered.
	if hs.HTTP.HTTP2 == nil {
		hs.HTTP.HTTP2 = new(http.HTTP2Config)
	}
	hs.HTTP.HTTP2.MaxReadFrameSize = 16 << 10
	lw := &testWriter{t: t, on: *serverLog}
	hs.HTTP.ErrorLog = log.New(lw, "server: ", 0)
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	t.Cleanup(func() {
		_ = hs.Close()
		select {
		case err := <-done:
			if !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
		lw.stop()
	})
	return ln.Addr().String()
}

// result is how one h2spec case went.
type result struct {
	id, desc, requirement string
	err                   error // nil: passed
}

// runSuite runs h2spec's generic, http2 and hpack sections against addr,
// as h2spec's command does (h2spec.Run), without its output: each case
// on a connection of its own, one after the other. It reports every
// failed case not in known, and every case in known that passed.
func runSuite(t *testing.T, addr string, known map[string]string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	c := &config.Config{
		Host:         host,
		Path:         "/",
		Timeout:      *caseTimeout,
		MaxHeaderLen: 4000, // h2spec's default
		Strict:       *strict,
	}
	if *sections != "" {
		c.Sections = strings.Split(*sections, ",")
	}
	if _, err := fmt.Sscan(port, &c.Port); err != nil {
		t.Fatal(err)
	}

	var results []result
	for _, g := range []*spec.TestGroup{generic.Spec(), h2spechttp2.Spec(), hpack.Spec()} {
		results = walk(c, g, results)
	}

	var passed, skipped, failed int
	seen := make(map[string]bool)
	for _, r := range results {
		seen[r.id] = true
		why, isKnown := known[r.id]
		switch {
		case errors.Is(r.err, spec.ErrSkipped):
			skipped++
			t.Logf("skipped: %s %s", r.id, r.desc)
		case r.err == nil:
			passed++
			if isKnown {
				t.Errorf("%s %s: passed, yet it is listed as a known failure (%s): take it off the list", r.id, r.desc, why)
			}
		default:
			failed++
			if isKnown {
				t.Logf("known failure: %s %s (%s)\n%s", r.id, r.desc, why, describe(r.err))
			} else {
				t.Errorf("h2spec %s %s\n  requirement: %s\n%s", r.id, r.desc, r.requirement, describe(r.err))
			}
		}
	}
	if *sections == "" {
		var stale []string
		for id := range known {
			if !seen[id] {
				stale = append(stale, id)
			}
		}
		sort.Strings(stale)
		for _, id := range stale {
			t.Errorf("known failure %s: no such h2spec case ran", id)
		}
	}
	t.Logf("h2spec: %d cases, %d passed, %d skipped, %d failed (%d known)", len(results), passed, skipped, failed, len(known))
	if len(results) == 0 {
		t.Fatal("h2spec ran no case")
	}
}

// walk runs the cases of g and of its subgroups, depth first, in h2spec's
// order, and appends their results to rs. A case's id is h2spec's: its
// group's id and its place in the group, from 1, as in "http2/6.9.1/2".
func walk(c *config.Config, g *spec.TestGroup, rs []result) []result {
	if g.Strict && !c.Strict || c.RunMode(g.ID()) == config.RunModeNone {
		return rs
	}
	tests := append(append([]*spec.TestCase(nil), g.Tests...), g.StrictTests...)
	for i, tc := range tests {
		id := fmt.Sprintf("%s/%d", g.ID(), i+1)
		if tc.Strict && !c.Strict || c.RunMode(id) == config.RunModeNone {
			continue
		}
		rs = append(rs, result{id: id, desc: tc.Desc, requirement: tc.Requirement, err: runCase(c, tc)})
	}
	for _, sg := range g.Groups {
		rs = walk(c, sg, rs)
	}
	return rs
}

// runCase runs one case as spec.TestCase.Test does, less its output: on a
// connection of its own. A panic in h2spec (its verifiers dereference a
// nil event when the connection closed before they looked) is a failure
// of the case.
func runCase(c *config.Config, tc *spec.TestCase) (err error) {
	conn, err := spec.Dial(c)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("h2spec panicked: %v\n%s", p, debug.Stack())
		}
	}()
	return tc.Run(c, conn)
}

// describe renders a case's failure as h2spec does: what it expected, and
// what it got.
func describe(err error) string {
	var te *spec.TestError
	if errors.As(err, &te) {
		return fmt.Sprintf("  expected: %s\n    actual: %s", strings.Join(te.Expected, "\n            "), te.Actual)
	}
	return "     error: " + err.Error()
}

// testWriter passes a server's log to the test's, until the test ends:
// the server's goroutines may log after it.
type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	on   bool
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.on && !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}
