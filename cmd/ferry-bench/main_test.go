package main

import (
	"io"
	"strings"
	"testing"
)

func TestFlagsAreChecked(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--profile", "huge"}, `--profile "huge": use short or full`},
		{[]string{"--target", "ftp://x"}, `--target "ftp://x": use process, inprocess or a URL`},
		{[]string{"--target", "http://127.0.0.1:1", "--only", "ingest,nap"}, `--only: unknown workload "nap"`},
	} {
		err := run(t.Context(), append(tc.args, "--dir", t.TempDir()), io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ferry-bench %v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}
