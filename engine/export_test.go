package engine

// Every test of the engine checks what reads take from memory against the
// store.
func init() { verifyCaches = true }
