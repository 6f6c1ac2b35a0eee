package server

import (
	"testing"
	"time"
)

// TestJitterSpreadsReconnects: the delays Goaways give lie between a half
// and one and a half times ReconnectAfter, and spread over that range, so
// that the devices a shutdown sends away come back over a second, not in
// one moment.
func TestJitterSpreadsReconnects(t *testing.T) {
	const d = time.Second
	lo, hi := 2*d, time.Duration(0)
	for range 1000 {
		j := jitter(d)
		if j < d/2 || j > 3*d/2 {
			t.Fatalf("a delay of %v, outside %v..%v", j, d/2, 3*d/2)
		}
		lo, hi = min(lo, j), max(hi, j)
	}
	if hi-lo < d*8/10 {
		t.Fatalf("1000 delays span only %v..%v", lo, hi)
	}
}
