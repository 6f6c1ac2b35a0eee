package h2

// OnWindowWait calls f, until undo, as a stream's write begins to wait for
// flow-control window, with the bytes it has left (see windowWaitHook).
func OnWindowWait(f func(left int)) (undo func()) {
	windowWaitHook.Store(&f)
	return func() { windowWaitHook.Store(nil) }
}
