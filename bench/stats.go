package bench

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Latencies collects latency samples. Safe for concurrent use.
type Latencies struct {
	mu sync.Mutex
	s  []time.Duration
}

// Add records one sample.
func (l *Latencies) Add(d time.Duration) {
	l.mu.Lock()
	l.s = append(l.s, d)
	l.mu.Unlock()
}

// Summary is a latency distribution.
type Summary struct {
	N    int           `json:"n"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	P999 time.Duration `json:"p999_ns"`
	Max  time.Duration `json:"max_ns"`
}

// Summary computes exact percentiles of the samples.
func (l *Latencies) Summary() Summary {
	l.mu.Lock()
	s := slices.Clone(l.s)
	l.mu.Unlock()
	if len(s) == 0 {
		return Summary{}
	}
	slices.Sort(s)
	// Nearest rank: the smallest sample that at least a q share of them
	// are at or below (less a hair for q × n's rounding: 0.99 × 100 is
	// a little over 99 in floating point).
	at := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(s))-1e-9)) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	return Summary{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), P999: at(0.999), Max: s[len(s)-1]}
}

func (s Summary) String() string {
	if s.N == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s p90 %s p99 %s p99.9 %s max %s (n=%d)", ms(s.P50), ms(s.P90), ms(s.P99), ms(s.P999), ms(s.Max), s.N)
}

// ms formats a duration in milliseconds with useful precision.
func ms(d time.Duration) string {
	f := float64(d) / float64(time.Millisecond)
	switch {
	case f < 1:
		return fmt.Sprintf("%.3fms", f)
	case f < 100:
		return fmt.Sprintf("%.1fms", f)
	}
	return fmt.Sprintf("%.0fms", f)
}

// firstError keeps the first error that any goroutine stores. (An
// atomic.Value panics when an error of another concrete type follows.)
type firstError struct{ p atomic.Pointer[error] }

// Store keeps err unless an error is kept already; nil is not one.
func (f *firstError) Store(err error) {
	if err != nil {
		f.p.CompareAndSwap(nil, &err)
	}
}

// Load returns the error kept, or nil.
func (f *firstError) Load() error {
	if p := f.p.Load(); p != nil {
		return *p
	}
	return nil
}
