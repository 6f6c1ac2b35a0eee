package engine

// Every test of the engine checks what reads take from memory against the
// store.
func init() { verifyCaches = true }

// MeasureWithoutChecks turns the cache checks off until the benchmark
// ends: benchmarks measure what production runs.
func MeasureWithoutChecks(b interface{ Cleanup(func()) }) {
	verifyCaches = false
	b.Cleanup(func() { verifyCaches = true })
}

// SessionPos is the position up to which s has sent every change.
func SessionPos(s *Session) uint64 { return s.pos }
