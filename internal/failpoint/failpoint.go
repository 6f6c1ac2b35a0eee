// Package failpoint kills the process at named points, for crash tests that
// run Ferry's programs as subprocesses (in the manner of etcd's gofail).
//
// Set FERRY_FAILPOINT to a point's name and the process kills itself
// (SIGKILL; on Windows, TerminateProcess) when it reaches that point: no deferred function, no flush, no
// goodbye, exactly like a power cut or kill -9. Unset (always, in
// production), Hit costs one comparison with an empty string.
package failpoint

import "os"

// The failpoints.
const (
	// SDKAfterEnqueue: an op is in the outbox, nothing sent.
	SDKAfterEnqueue = "sdk-after-enqueue"
	// SDKAfterPush: a push is written to the stream, its result not read.
	SDKAfterPush = "sdk-after-push"
	// SDKAfterResult: the server answered a push (so stored its ops) and
	// the outbox has not recorded it yet.
	SDKAfterResult = "sdk-after-result"
)

var armed = os.Getenv("FERRY_FAILPOINT")

// Hit kills the process if the failpoint name is armed.
func Hit(name string) {
	if armed != "" && armed == name {
		// os.Process.Kill: SIGKILL where there are signals, and builds
		// everywhere, as the SDK that calls Hit must.
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			_ = p.Kill()
		}
		select {} // the kill is on its way
	}
}
