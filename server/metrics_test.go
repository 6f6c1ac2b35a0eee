package server_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"github.com/ferrysync/ferry/engine"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestMetricsCountWhatHappened: sessions, pushes and their answers, a
// catch-up, live deliveries and a refused call show in Server.Metrics by
// the numbers, and the same numbers in /metrics.
func TestMetricsCountWhatHappened(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	bob := newDev(t, srv.Register("bob"))
	conv := alice.createConv("room", bob) // one push of two ops
	m0 := srv.Server.Metrics()
	if m0.PushOps["accepted"] != 2 || m0.Sessions != 0 {
		t.Fatalf("after creating a conversation: %d ops accepted, %d sessions; want 2 and 0", m0.PushOps["accepted"], m0.Sessions)
	}

	s := bob.open(hello("", 0))
	s.untilCaughtUp()
	m1 := srv.Server.Metrics()
	if m1.Sessions != 1 || m1.SessionsStarted != 1 || m1.CatchUps != 1 {
		t.Fatalf("after a catch-up: %d sessions open, %d started, %d catch-ups; want 1, 1, 1", m1.Sessions, m1.SessionsStarted, m1.CatchUps)
	}
	if got := m1.SentOps[engine.PhaseNewest] + m1.SentOps[engine.PhaseBackfill]; got != 2 {
		t.Fatalf("the catch-up sent %d ops, want the conversation's 2", got)
	}

	// Three messages reach bob live.
	var head uint64
	for i := range 3 {
		head = alice.send(conv, fmt.Sprintf("hello %d", i))
	}
	s.until(func(*ferryv1.SyncResponse) bool { return s.last[conv] == head })
	m2 := srv.Server.Metrics()
	if got := m2.SentOps[engine.PhaseLive]; got != 3 {
		t.Fatalf("%d ops sent live, want 3", got)
	}
	if m2.SentBytes <= m1.SentBytes || m1.SentBytes == 0 {
		t.Fatalf("bytes sent: %d after the catch-up, %d after live ops; want both to grow", m1.SentBytes, m2.SentBytes)
	}

	// A retry is a duplicate; another op under a taken id is rejected.
	op := alice.op(conv, msg("once"))
	alice.push(conv, op)
	alice.push(conv, op)
	clash := alice.op(conv, msg("twice"))
	clash.Id = op.Id
	if _, err := alice.Sync.Push(context.Background(), &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{clash}}}}); err != nil {
		t.Fatal(err)
	}
	// A call without a token is refused.
	_, err := srv.Clients("").Sync.History(context.Background(), &ferryv1.HistoryRequest{ConversationId: conv})
	mustCode(t, "history without a token", err, connect.CodeUnauthenticated)

	m3 := srv.Server.Metrics()
	if want := map[string]uint64{"accepted": 6, "duplicate": 1, "rejected": 1, "retry_later": 0}; fmt.Sprint(m3.PushOps) != fmt.Sprint(want) {
		t.Fatalf("push answers %v, want %v", m3.PushOps, want)
	}
	if n := m3.Calls[ferryv1connect.SyncServicePushProcedure][0]; n != 7 {
		t.Fatalf("%d pushes counted OK, want 7", n)
	}
	if n := m3.Calls[ferryv1connect.SyncServiceHistoryProcedure][connect.CodeUnauthenticated]; n != 1 {
		t.Fatalf("%d history calls counted unauthenticated, want 1", n)
	}
	if m3.PushTime.Count != 7 {
		t.Fatalf("push time counted %d pushes, want 7", m3.PushTime.Count)
	}
	e := srv.Engine.Metrics()
	if e.CommitTime.Count == 0 || e.CommitTime.Count != e.Commits {
		t.Fatalf("commit time counted %d commits of %d", e.CommitTime.Count, e.Commits)
	}

	// The session ends: it is no longer open.
	s.close()
	srv.Server.Wait()
	m4 := srv.Server.Metrics()
	if m4.Sessions != 0 {
		t.Fatalf("%d sessions open after the only one closed", m4.Sessions)
	}

	// /metrics says the same, in a form Prometheus reads and its linter
	// passes.
	rec := httptest.NewRecorder()
	srv.Server.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	text := rec.Body.String()
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "ferry_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
	families, err := new(expfmt.TextParser).TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, text)
	}
	value := func(name string, labels ...string) float64 {
		t.Helper()
		f := families[name]
		if f == nil {
			t.Fatalf("/metrics has no %s", name)
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i < len(labels); i += 2 {
				if label(m, labels[i]) != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
		t.Fatalf("/metrics has no %s%v", name, labels)
		return 0
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ferry_push_ops_total", []string{"result", "accepted"}, 6},
		{"ferry_push_ops_total", []string{"result", "duplicate"}, 1},
		{"ferry_rpcs_total", []string{"procedure", ferryv1connect.SyncServicePushProcedure, "code", "ok"}, 7},
		{"ferry_rpcs_total", []string{"procedure", ferryv1connect.SyncServiceHistoryProcedure, "code", "unauthenticated"}, 1},
		{"ferry_push_duration_seconds", nil, 7},
		{"ferry_live_delay_seconds", nil, float64(m4.LiveDelay.Count)},
		// 3, or 4 when "once" reached bob before his session closed.
		{"ferry_sent_ops_total", []string{"phase", "live"}, float64(m4.SentOps[engine.PhaseLive])},
		{"ferry_catch_ups_total", nil, 1},
		{"ferry_sessions", nil, 0},
		{"ferry_sessions_started_total", nil, 1},
		{"ferry_commit_duration_seconds", nil, float64(srv.Engine.Metrics().Commits)},
		{"ferry_store_failed", nil, 0},
		{"ferry_store_disk_low", nil, 0},
	} {
		if got := value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Both results are there, whether or not a block was read yet.
	value("ferry_store_block_cache_lookups_total", "result", "hit")
	value("ferry_store_block_cache_lookups_total", "result", "miss")
	if v := value("ferry_store_written_bytes_total", "by", "wal"); v == 0 {
		t.Error("ferry_store_written_bytes_total{by=wal} is 0 after seven pushes")
	}
	value("ferry_store_written_bytes_total", "by", "flushes")
	value("ferry_store_written_bytes_total", "by", "compactions")
	names := []string{"ferry_store_bytes", "ferry_store_read_amplification", "ferry_store_filter_skips_total", "ferry_commits_total", "ferry_write_queue_requests", "go_goroutines", "go_build_info"}
	if runtime.GOOS == "linux" { // client_golang's process collector reads /proc
		names = append(names, "process_resident_memory_bytes")
	}
	for _, name := range names {
		if families[name] == nil {
			t.Errorf("/metrics has no %s", name)
		}
	}
	// The README's table of metrics names every one of the server's.
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range families {
		if strings.HasPrefix(name, "ferry_") && !strings.Contains(string(readme), "`"+name) {
			t.Errorf("README.md does not document %s", name)
		}
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestLiveDelay: a live round counts its delay from the commit that woke
// its session to its Ops message handed to the stream, by the server's
// clock: here 7 ms, which the stream's write takes on the fake clock.
func TestLiveDelay(t *testing.T) {
	// A send timeout, far off, has the server watch the streams' writes.
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.SendTimeout = time.Hour }})
	alice := newDev(t, srv.Register("alice"))
	bob := newDev(t, srv.Register("bob"))
	conv := alice.createConv("room", bob)
	// A session's first pump runs through its catch-up; when it ends, the
	// session waits for a change.
	ends := make(chan struct{}, 8)
	server.OnPumpEnd(srv.Server, func() { ends <- struct{}{} })
	s := bob.open(hello("", 0))
	s.untilCaughtUp()
	<-ends
	if n := srv.Server.Metrics().LiveDelay.Count; n != 0 {
		t.Fatalf("%d live rounds counted after a catch-up alone", n)
	}
	var once sync.Once // the round's first write takes 7 ms, the rest none
	server.OnWriteBegin(srv.Server, func() { once.Do(func() { srv.Clock.Advance(7 * time.Millisecond) }) })
	head := alice.send(conv, "hello")
	s.until(func(*ferryv1.SyncResponse) bool { return s.last[conv] == head })
	<-ends // the pump that sent it counted it first
	d := srv.Server.Metrics().LiveDelay
	if d.Count != 1 || d.Sum != 7*time.Millisecond {
		t.Fatalf("live delay: %d rounds taking %v, want 1 taking 7ms", d.Count, d.Sum)
	}
}
