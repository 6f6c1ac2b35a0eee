// Package metric holds the counters that the engine and the server keep
// for operators: plain atomics, so that the engine stays free of any
// metrics library, and the server's /metrics handler reads them when it is
// scraped.
package metric

import (
	"sync/atomic"
	"time"
)

// Histogram counts durations in fixed buckets. Observe is safe for
// concurrent use and costs two atomic adds and a short search; it never
// allocates or blocks.
type Histogram struct {
	bounds []float64       // upper bounds, in seconds, ascending
	counts []atomic.Uint64 // counts[i]: observations <= bounds[i], not in an earlier bucket; the last is +Inf
	sumNs  atomic.Int64
}

// NewHistogram returns a histogram with the given upper bounds, in seconds,
// which must ascend.
func NewHistogram(bounds ...float64) *Histogram {
	for i := 1; i < len(bounds); i++ {
		if !(bounds[i] > bounds[i-1]) {
			panic("metric: histogram bounds must ascend")
		}
	}
	return &Histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// LatencyBounds suit what the server waits on (a synced commit, a push's
// answer): 100 µs to 10 s.
var LatencyBounds = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}

// Observe counts one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(h.bounds) && s > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(int64(d))
}

// Snapshot is a histogram's state at one time.
type Snapshot struct {
	// Bounds are the buckets' upper bounds in seconds; Cumulative[i] counts
	// the observations at most Bounds[i]. Count includes those over the
	// last bound.
	Bounds     []float64
	Cumulative []uint64
	Count      uint64
	Sum        time.Duration
}

// Snapshot reads the histogram. Observations made while it reads may be
// counted in Count but not yet in Sum, or the reverse: each is exact on
// its own.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Bounds: h.bounds, Cumulative: make([]uint64, len(h.bounds))}
	var n uint64
	for i := range h.counts {
		n += h.counts[i].Load()
		if i < len(h.bounds) {
			s.Cumulative[i] = n
		}
	}
	s.Count, s.Sum = n, time.Duration(h.sumNs.Load())
	return s
}
