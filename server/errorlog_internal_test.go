package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
)

// TestFailedTLSHandshakesLoggedQuietly: net/http's failed TLS handshakes
// are counted, and logged at WARN once every ten minutes at most, with
// how many failed since the last warning; the rest at DEBUG. Its other
// lines go at WARN, each.
func TestFailedTLSHandshakesLoggedQuietly(t *testing.T) {
	var buf bytes.Buffer
	fake := clock.NewFake(time.Unix(1_000_000_000, 0))
	s := &Server{log: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), stats: newStats(), opts: Options{Clock: fake}}
	l := s.ErrorLog()
	failed := func(n int) {
		for i := range n {
			l.Printf("http: TLS handshake error from 10.0.0.%d:4000: EOF", i+1)
		}
	}
	failed(3)
	fake.Advance(tlsWarnEvery - time.Second)
	failed(2)
	fake.Advance(time.Second)
	failed(1)
	l.Printf("http: Accept error: accept tcp: too many open files; retrying in 5ms")

	var got []string
	for line := range strings.Lines(buf.String()) {
		var rec struct {
			Level, Msg, Remote, Err string
			Since                   int `json:"failed_since_last_warning"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		msg, _, _ := strings.Cut(rec.Msg, " (")
		got = append(got, fmt.Sprintf("%s %s %s %s %d", rec.Level, msg, rec.Remote, rec.Err, rec.Since))
	}
	want := []string{
		"WARN TLS handshake failed 10.0.0.1:4000 EOF 1",
		"DEBUG TLS handshake failed 10.0.0.2:4000 EOF 0",
		"DEBUG TLS handshake failed 10.0.0.3:4000 EOF 0",
		"DEBUG TLS handshake failed 10.0.0.1:4000 EOF 0",
		"DEBUG TLS handshake failed 10.0.0.2:4000 EOF 0",
		"WARN TLS handshake failed 10.0.0.1:4000 EOF 5",
		"WARN http: Accept error: accept tcp: too many open files; retrying in 5ms   0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("logged:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := s.Metrics().TLSHandshakeErrors; n != 6 {
		t.Fatalf("%d failed handshakes counted, want 6", n)
	}
}
