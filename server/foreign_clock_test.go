package server_test

import (
	"testing"
	"time"

	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// foreignClock hides Fake's AfterFunc, as a clock written outside the
// module with clientsdk.Clock and clientsdk.Timer would: clock.AfterFunc
// falls back to a goroutine waiting on one of its timers.
type foreignClock struct{ *clock.Fake }

func (foreignClock) AfterFunc() {} // not clock.AfterFuncer's method

// TestHeartbeatsOnAForeignClock: with an Options.Clock that is no
// clock.AfterFuncer, a quiet session still gets heartbeats. The sessions'
// schedule empties when the hello's deadline stops, which stops the
// clock's fallback timer; the next deadline arms it again (it once stayed
// stopped).
func TestHeartbeatsOnAForeignClock(t *testing.T) {
	const interval = 30 * time.Second
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) {
		o.HeartbeatInterval = interval
		o.Clock = foreignClock{o.Clock.(*clock.Fake)}
	}})
	exited := make(chan struct{}, 8)
	server.OnPumpEnd(srv.Server, func() { exited <- struct{}{} })
	alice := newDev(t, srv.Register("alice"))
	s := alice.open(hello("", 0))
	s.untilCaughtUp()
	msgs, errs := reader(s)
	// The catch-up's sender ends once it has sent, and noted, its last
	// message: the heartbeat is then due an interval from now.
	select {
	case <-exited:
	case <-time.After(time.Minute): // a guard, not a wait
		t.Fatal("the catch-up's sender did not end")
	}
	srv.Clock.Advance(interval)
	for {
		select {
		case m := <-msgs:
			if m.GetHeartbeat() != nil {
				return
			}
		case err := <-errs:
			t.Fatalf("the session ended: %v", err)
		case <-time.After(time.Minute): // a guard, not a wait
			t.Fatalf("no heartbeat an interval into a quiet session")
		}
	}
}
