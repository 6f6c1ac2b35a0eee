package metric

import (
	"slices"
	"sync"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	h := NewHistogram(0.001, 0.01, 0.1)
	for _, d := range []time.Duration{
		0, time.Millisecond, // the bound itself is in its bucket
		time.Millisecond + 1, 10 * time.Millisecond,
		50 * time.Millisecond,
		time.Second, time.Hour, // past the last bound
	} {
		h.Observe(d)
	}
	s := h.Snapshot()
	if want := []uint64{2, 4, 5}; !slices.Equal(s.Cumulative, want) {
		t.Errorf("cumulative %v, want %v", s.Cumulative, want)
	}
	if s.Count != 7 {
		t.Errorf("count %d, want 7", s.Count)
	}
	want := 2*time.Millisecond + 1 + 10*time.Millisecond + 50*time.Millisecond + time.Second + time.Hour
	if s.Sum != want {
		t.Errorf("sum %v, want %v", s.Sum, want)
	}
}

func TestHistogramConcurrent(t *testing.T) {
	h := NewHistogram(LatencyBounds...)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				h.Observe(time.Duration(g*1000+i) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	if s := h.Snapshot(); s.Count != 4000 || s.Cumulative[len(s.Cumulative)-1] != 4000 {
		t.Errorf("count %d, last bucket %d; want 4000 each", s.Count, s.Cumulative[len(s.Cumulative)-1])
	}
}

func TestHistogramBoundsMustAscend(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("no panic for bounds out of order")
		}
	}()
	NewHistogram(0.1, 0.01)
}
