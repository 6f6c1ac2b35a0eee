package engine

// Every test of the engine checks the feed journal against the store.
func init() { verifyJournal = true }
