package server

import (
	"net/http"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/metric"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// stats are the server's counters for operators: atomics bumped where
// things happen, read when Metrics is called or /metrics is scraped.
type stats struct {
	sessions        atomic.Int64 // open Sync and Subscribe sessions
	sessionsStarted atomic.Uint64
	calls           sync.Map // procedure -> *callCounts; as many entries as registered procedures
	pushTime        *metric.Histogram
	liveDelay       *metric.Histogram
	pushOps         [pushResults]atomic.Uint64
	sentOps         [engine.PhaseLive + 1]atomic.Uint64 // by engine.Phase
	catchUps        atomic.Uint64
	sentBytes       atomic.Uint64
	sendTimeouts    atomic.Uint64
	signInsLimited  atomic.Uint64
	pushesThrottled atomic.Uint64
	pushesRefused   atomic.Uint64
	overQuota       atomic.Uint64
	// tlsHandshakeErrors counts the TLS handshakes that failed (ErrorLog).
	tlsHandshakeErrors atomic.Uint64
}

// callCounts counts a procedure's finished calls by Connect code; 0 is OK.
type callCounts [connect.CodeUnauthenticated + 1]atomic.Uint64

const (
	pushAccepted = iota
	pushDuplicate
	pushRejected
	pushRetryLater
	pushResults
)

var pushResultNames = [pushResults]string{"accepted", "duplicate", "rejected", "retry_later"}

func newStats() *stats {
	return &stats{pushTime: metric.NewHistogram(metric.LatencyBounds...), liveDelay: metric.NewHistogram(metric.LatencyBounds...)}
}

// called counts a finished call of procedure; err is what it returned.
func (st *stats) called(procedure string, err error) {
	c, ok := st.calls.Load(procedure)
	if !ok {
		c, _ = st.calls.LoadOrStore(procedure, new(callCounts))
	}
	code := connect.Code(0) // OK
	if err != nil {
		code = connect.CodeOf(err)
	}
	if int(code) < len(callCounts{}) {
		c.(*callCounts)[code].Add(1)
	}
}

// pushed counts a push's answers.
func (st *stats) pushed(results []*ferryv1.OpResult) {
	var n [pushResults]uint64
	for _, r := range results {
		switch r.GetStatus() {
		case ferryv1.OpStatus_OP_STATUS_ACCEPTED:
			n[pushAccepted]++
		case ferryv1.OpStatus_OP_STATUS_DUPLICATE:
			n[pushDuplicate]++
		case ferryv1.OpStatus_OP_STATUS_RETRY_LATER:
			n[pushRetryLater]++
		default:
			n[pushRejected]++
			if r.GetReason() == ferryv1.RejectReason_REJECT_REASON_QUOTA_EXCEEDED {
				st.overQuota.Add(1)
			}
		}
	}
	for i, c := range n {
		if c > 0 {
			st.pushOps[i].Add(c)
		}
	}
}

// sent counts a message sent on a session's stream.
func (st *stats) sent(ev engine.Event) {
	switch ev.Kind {
	case engine.EventOps:
		n := 0
		for _, b := range ev.Batches {
			n += len(b.Ops)
		}
		if ev.Phase < engine.Phase(len(st.sentOps)) {
			st.sentOps[ev.Phase].Add(uint64(n))
		}
	case engine.EventCaughtUp:
		st.catchUps.Add(1)
	}
}

// Metrics are the server's counters since New.
type Metrics struct {
	// Sessions is the Sync and Subscribe sessions open now;
	// SessionsStarted counts those that were.
	Sessions        int64
	SessionsStarted uint64
	// Calls counts finished calls by procedure and Connect code (0: OK).
	// A session is a call too, counted when it ends.
	Calls map[string]map[connect.Code]uint64
	// PushOps counts pushed ops by answer: "accepted", "duplicate",
	// "rejected", "retry_later".
	PushOps map[string]uint64
	// PushTime is how long pushes took to be answered, durable.
	PushTime metric.Snapshot
	// LiveDelay is how long each live Ops message took from the change
	// that woke its session (a commit, in the writer's wake of the
	// sessions it concerns) to being handed to the stream: the server's
	// share of a message's way to an online device.
	LiveDelay metric.Snapshot
	// SentOps counts ops sent on sessions' streams, by phase; CatchUps
	// the catch-ups completed.
	SentOps        map[engine.Phase]uint64
	CatchUps       uint64
	SentBytes      uint64 // written to sync streams, compressed
	SendTimeouts   uint64 // streams reset by Options.SendTimeout
	SignInsLimited uint64 // sign-ins refused by the sign-in limit
	// PushesThrottled counts pushes and acks that waited for their user's
	// push limit; PushesRefused the pushes refused by it (acks wait).
	PushesThrottled, PushesRefused uint64
	// OpsOverQuota counts the ops rejected for their user's storage quota
	// (among PushOps' "rejected").
	OpsOverQuota uint64
	// TLSHandshakeErrors counts the TLS handshakes that failed, as
	// reported to ErrorLog's logger.
	TLSHandshakeErrors uint64
}

// Metrics returns the server's counters. It is safe for concurrent use.
func (s *Server) Metrics() Metrics {
	st := s.stats
	m := Metrics{
		Sessions: st.sessions.Load(), SessionsStarted: st.sessionsStarted.Load(),
		Calls: map[string]map[connect.Code]uint64{}, PushOps: map[string]uint64{}, SentOps: map[engine.Phase]uint64{},
		PushTime: st.pushTime.Snapshot(), LiveDelay: st.liveDelay.Snapshot(), CatchUps: st.catchUps.Load(), SentBytes: st.sentBytes.Load(),
		SendTimeouts: st.sendTimeouts.Load(), SignInsLimited: st.signInsLimited.Load(),
		PushesThrottled: st.pushesThrottled.Load(), PushesRefused: st.pushesRefused.Load(),
		OpsOverQuota:       st.overQuota.Load(),
		TLSHandshakeErrors: st.tlsHandshakeErrors.Load(),
	}
	st.calls.Range(func(k, v any) bool {
		byCode := map[connect.Code]uint64{}
		for code := range v.(*callCounts) {
			if n := v.(*callCounts)[code].Load(); n > 0 {
				byCode[connect.Code(code)] = n
			}
		}
		m.Calls[k.(string)] = byCode
		return true
	})
	for i, name := range pushResultNames {
		m.PushOps[name] = st.pushOps[i].Load()
	}
	for p := engine.PhaseNewest; p <= engine.PhaseLive; p++ {
		m.SentOps[p] = st.sentOps[p].Load()
	}
	return m
}

// MetricsHandler serves the server's, the engine's and the Go runtime's
// metrics in Prometheus's text format, for an operator's scraper. Mount it
// on a private address: it names the server's procedures and load.
func (s *Server) MetricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collector{s},
		collectors.NewGoCollector(),
		collectors.NewBuildInfoCollector(), // go_build_info: the module's path and version
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slogPrinter{s}})
}

// slogPrinter logs promhttp's errors to the server's logger.
type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) { p.s.log.Warn("metrics: scrape failed", "err", v) }

// collector reads the counters at each scrape.
type collector struct{ s *Server }

var (
	descs []*prometheus.Desc
	desc  = func(name, help string, labels ...string) *prometheus.Desc {
		d := prometheus.NewDesc(name, help, labels, nil)
		descs = append(descs, d)
		return d
	}
	dSessions        = desc("ferry_sessions", "Sync and Subscribe sessions open now.")
	dSessionsStarted = desc("ferry_sessions_started_total", "Sync and Subscribe sessions started.")
	dCalls           = desc("ferry_rpcs_total", "Calls finished, by procedure and Connect code; a session counts when it ends.", "procedure", "code")
	dPushOps         = desc("ferry_push_ops_total", "Pushed ops, by answer.", "result")
	dPushTime        = desc("ferry_push_duration_seconds", "Time to answer a push, its accepted ops durable, from when the push limit let it go.")
	dLiveDelay       = desc("ferry_live_delay_seconds", "Time from the change that woke a live session (a commit) to each of its Ops messages handed to the stream.")
	dSentOps         = desc("ferry_sent_ops_total", "Ops handed to devices' streams, by phase: newest (a catch-up's newest pages), backfill (the rest of a catch-up), live.", "phase")
	dCatchUps        = desc("ferry_catch_ups_total", "Catch-ups completed: their CaughtUp handed to the stream.")
	dSentBytes       = desc("ferry_stream_sent_bytes_total", "Bytes handed to sync streams, compressed.")
	dSendTimeouts    = desc("ferry_send_timeouts_total", "Streams reset because a write made no progress for the send timeout.")
	dSignInsLimited  = desc("ferry_sign_ins_limited_total", "Sign-ins refused by the sign-in rate limit.")
	dPushesThrottled = desc("ferry_pushes_throttled_total", "Pushes, acks and account writes (blocks, names, device renames and revokes) that waited for their user's push limit.")
	dPushesRefused   = desc("ferry_pushes_refused_total", "Pushes refused by the push limit: their user's devices pushed too much at once.")
	dOverQuota       = desc("ferry_ops_over_quota_total", "Ops rejected because their body would take their user past their quota: --user-quota-mib, or one ferryd set-quota set (also in ferry_push_ops_total's rejected).")
	dTLSHandshakes   = desc("ferry_tls_handshake_errors_total", "TLS handshakes that failed: scanners and plain-TCP health checks, or clients that refuse the certificate.")
	dCommits         = desc("ferry_commits_total", "Synced group commits.")
	dCommitRequests  = desc("ferry_commit_requests_total", "Write requests carried by the group commits.")
	dCommitTime      = desc("ferry_commit_duration_seconds", "Time of a synced group commit.")
	dWriteQueue      = desc("ferry_write_queue_requests", "Write requests waiting for the writer.")
	dReads           = desc("ferry_store_reads_total", "Point reads and iterator steps against the store.")
	dWrites          = desc("ferry_store_writes_total", "Keys set or deleted by synced commits.")
	dWatching        = desc("ferry_watching_users", "Users with an open session.")
	dStoreFailed     = desc("ferry_store_failed", "1 once the store failed: the server refuses writes and stops. Else 0.")
	dDiskFree        = desc("ferry_store_disk_free_bytes", "Free space of the store's file system, as last looked at (once a second at most), while --min-free-disk-mib is on.")
	dDiskKeep        = desc("ferry_store_disk_min_free_bytes", "The free space below which new ops are refused: --min-free-disk-mib, or a twentieth of the disk when that is less.")
	dDiskLow         = desc("ferry_store_disk_low", "1 while the store's disk has less free space than --min-free-disk-mib and writes are refused. Else 0.")
	dDamaged         = desc("ferry_conversations_damaged", "Conversations found damaged in the store since the server started (records that do not decode): their ops wait and their members' devices leave them out until the store is repaired (ferryd rebuild).")
	dStoreBytes      = desc("ferry_store_bytes", "Bytes the store occupies on disk, by kind.", "kind")
	dReadAmp         = desc("ferry_store_read_amplification", "Tables a read may consult: level 0's sublevels plus the non-empty levels below.")
	dCompactionDebt  = desc("ferry_store_compaction_debt_bytes", "Estimated bytes to compact for the store to be stable.")
	dMemTables       = desc("ferry_store_memtable_bytes", "Bytes in memtables, before they flush to tables.")
	dFlushes         = desc("ferry_store_flushes_total", "Memtable flushes completed.")
	dCompactions     = desc("ferry_store_compactions_total", "Compactions completed.")
	dStoreWritten    = desc("ferry_store_written_bytes_total", "Bytes the store wrote, by what wrote them: the WAL's commits, and the tables of flushes and compactions. Tables over WAL is the write amplification.", "by")
	dCacheLookups    = desc("ferry_store_block_cache_lookups_total", "Block cache lookups by result: a miss reads the block from a file and decompresses it.", "result")
	dFilterSkips     = desc("ferry_store_filter_skips_total", "Tables point reads skipped because their Bloom filter ruled the key out.")
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	histogram := func(d *prometheus.Desc, h metric.Snapshot) {
		buckets := make(map[float64]uint64, len(h.Bounds))
		for i, b := range h.Bounds {
			buckets[b] = h.Cumulative[i]
		}
		ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum.Seconds(), buckets)
	}

	m := c.s.Metrics()
	gauge(dSessions, float64(m.Sessions))
	counter(dSessionsStarted, m.SessionsStarted)
	for proc, byCode := range m.Calls {
		for code, n := range byCode {
			name := "ok"
			if code != 0 {
				name = code.String()
			}
			counter(dCalls, n, proc, name)
		}
	}
	for name, n := range m.PushOps {
		counter(dPushOps, n, name)
	}
	histogram(dPushTime, m.PushTime)
	histogram(dLiveDelay, m.LiveDelay)
	for p, n := range m.SentOps {
		counter(dSentOps, n, p.String())
	}
	counter(dCatchUps, m.CatchUps)
	counter(dSentBytes, m.SentBytes)
	counter(dSendTimeouts, m.SendTimeouts)
	counter(dSignInsLimited, m.SignInsLimited)
	counter(dPushesThrottled, m.PushesThrottled)
	counter(dPushesRefused, m.PushesRefused)
	counter(dOverQuota, m.OpsOverQuota)
	counter(dTLSHandshakes, m.TLSHandshakeErrors)

	e := c.s.eng.Metrics()
	counter(dCommits, e.Commits)
	counter(dCommitRequests, e.Requests)
	histogram(dCommitTime, e.CommitTime)
	gauge(dWriteQueue, float64(e.Queued))
	counter(dReads, e.Reads)
	counter(dWrites, e.Writes)
	gauge(dWatching, float64(e.Watching))
	failed := 0.0
	if c.s.eng.Failed() != nil {
		failed = 1
	}
	gauge(dStoreFailed, failed)
	low := 0.0
	if c.s.eng.DiskLow() {
		low = 1
	}
	gauge(dDiskLow, low)
	gauge(dDamaged, float64(len(c.s.eng.Damaged())))
	c.s.collectControl(ch)
	if free, keep, ok := c.s.eng.DiskFree(); ok {
		gauge(dDiskFree, float64(free))
		gauge(dDiskKeep, float64(keep))
	}

	st := c.s.eng.StoreMetrics()
	gauge(dStoreBytes, float64(st.Tables), "tables")
	gauge(dStoreBytes, float64(st.WAL), "wal")
	gauge(dStoreBytes, float64(st.Obsolete), "obsolete")
	gauge(dStoreBytes, float64(st.Other), "other")
	gauge(dReadAmp, float64(st.ReadAmp))
	gauge(dCompactionDebt, float64(st.CompactionDebt))
	gauge(dMemTables, float64(st.MemTables))
	counter(dFlushes, uint64(st.Flushes))
	counter(dCompactions, uint64(st.Compactions))
	counter(dStoreWritten, st.LoggedBytes, "wal")
	counter(dStoreWritten, st.FlushedBytes, "flushes")
	counter(dStoreWritten, st.CompactedBytes, "compactions")
	counter(dCacheLookups, uint64(st.CacheHits), "hit")
	counter(dCacheLookups, uint64(st.CacheMisses), "miss")
	counter(dFilterSkips, uint64(st.FilterSkips))
}
