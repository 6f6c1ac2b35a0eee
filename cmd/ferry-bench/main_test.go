package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrysync/ferry/bench"
)

func TestFlagsAreChecked(t *testing.T) {
	base := filepath.Join(t.TempDir(), "ferryd")
	if err := os.WriteFile(base, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--profile", "huge"}, `--profile "huge": use short or full`},
		{[]string{"--target", "ftp://x"}, `--target "ftp://x": use process, inprocess or a URL`},
		{[]string{"--target", "http://127.0.0.1:1", "--only", "ingest,nap"}, `--only: unknown workload "nap"`},
		{[]string{"--compare", base, "--target", "inprocess"}, "--compare starts both binaries: it takes no --target inprocess"},
		{[]string{"--compare", base, "--pairs", "0"}, "--pairs 0: at least 1"},
		{[]string{"--compare", base + ".missing"}, "--compare: stat " + base + ".missing: no such file or directory"},
		{[]string{"--compare", base, "--only", "ingest,storage"}, `--only "storage": --compare runs ingest, fanout, catchup and idle`},
	} {
		err := run(t.Context(), append(tc.args, "--dir", t.TempDir()), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ferry-bench %v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestRenderAJSONReport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.json")
	r := bench.Report{Profile: "short", Idle: []bench.IdleResult{{System: "ferry", Devices: 10, PerDevice: 40_000}}}
	if err := os.WriteFile(path, r.JSON(), 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := run(t.Context(), []string{"--render", path}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "| ferry | 10 |") {
		t.Fatalf("rendered report lacks the idle row:\n%s", out.String())
	}
	// Into a folder that does not exist yet: it is made.
	md := filepath.Join(t.TempDir(), "new", "report.md")
	if err := run(t.Context(), []string{"--render", path, "--md", md}, io.Discard, io.Discard); err != nil {
		t.Fatalf("render into a new folder: %v", err)
	}
	if _, err := os.Stat(md); err != nil {
		t.Fatal(err)
	}
	if err := run(t.Context(), []string{"--render", filepath.Join(t.TempDir(), "none.json")}, io.Discard, io.Discard); err == nil {
		t.Error("rendering a missing file succeeded")
	}
}
