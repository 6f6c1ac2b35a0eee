package clientsdk_test

import (
	"testing"
	"time"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestReconnectBackoff: with the server out of reach, the device waits
// between attempts, doubling from the minimum to the maximum, with jitter
// (each delay in [d/2, d]); time moves only when the test moves it.
func TestReconnectBackoff(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	device(t, srv, "alice", false) // registers alice
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	live, err := clientsdk.OpenMemory(clientsdk.WithServer(srv.URL), clientsdk.WithHTTPClient(srv.HTTP), clientsdk.WithClock(fake),
		clientsdk.WithBackoff(time.Second, 8*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := live.Login(ctx, "alice", "correct horse", "backoff"); err != nil {
		t.Fatal(err)
	}
	srv.Stop() // the server goes away for good

	sub := live.Subscribe(256)
	defer sub.Close()
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	bounds := [][2]time.Duration{{500 * time.Millisecond, time.Second}, {time.Second, 2 * time.Second},
		{2 * time.Second, 4 * time.Second}, {4 * time.Second, 8 * time.Second}, {4 * time.Second, 8 * time.Second}}
	for i, b := range bounds {
		// Wait until the device is offline with a retry scheduled.
		var st clientsdk.Status
		for st.State != clientsdk.StateOffline || st.RetryAt.IsZero() {
			if sc, ok := (<-sub.C()).(clientsdk.StatusChanged); ok {
				st = sc.Status
			}
		}
		delay := st.RetryAt.Sub(fake.Now())
		if delay < b[0] || delay > b[1] {
			t.Fatalf("attempt %d: retry in %v, want between %v and %v", i+1, delay, b[0], b[1])
		}
		if st.Err == nil {
			t.Fatalf("attempt %d: offline without an error", i+1)
		}
		fake.Advance(delay)
	}
}
