package clientsdk_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/server/servertest"
)

// syncStreams counts the Sync streams a client has open, and the most it
// had at once.
type syncStreams struct {
	base      http.RoundTripper
	open, max atomic.Int32
}

func (c *syncStreams) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, "/Sync") {
		return c.base.RoundTrip(r)
	}
	n := c.open.Add(1)
	for m := c.max.Load(); n > m && !c.max.CompareAndSwap(m, n); m = c.max.Load() {
	}
	resp, err := c.base.RoundTrip(r)
	if err != nil {
		c.open.Add(-1)
		return nil, err
	}
	resp.Body = &closedBody{ReadCloser: resp.Body, closed: func() { c.open.Add(-1) }}
	return resp, nil
}

type closedBody struct {
	io.ReadCloser
	once   sync.Once
	closed func()
}

func (b *closedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.closed)
	return err
}

// TestOneStreamAtATime: a device has one Sync stream at a time. SyncOnce
// while Start's loop runs rides the loop's session, and returns once it
// answered what was queued; SyncOnce calls at once take turns. Two streams
// each pushed the outbox and renumbered on their own, and a message one
// of them renumbered showed failed, and twice.
func TestOneStreamAtATime(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	streams := &syncStreams{base: srv.HTTP.Transport}
	alice := device(t, srv, "alice", false, clientsdk.WithHTTPClient(&http.Client{Transport: streams}))
	device(t, srv, "bob", false)
	conv, err := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	if err != nil {
		t.Fatal(err)
	}

	// SyncOnce calls at once, no loop.
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if _, err := alice.SendText(ctx, conv, fmt.Sprint("once ", i)); err != nil {
				t.Error(err)
			}
			if err := alice.SyncOnce(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()

	// SyncOnce with Start's loop running.
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "live", func() bool { return alice.Status().State == clientsdk.StateLive })
	for i := range 10 {
		if _, err := alice.SendText(ctx, conv, fmt.Sprint("riding ", i)); err != nil {
			t.Fatal(err)
		}
		if err := alice.SyncOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if p := alice.Status().Pending; p != 0 {
			t.Fatalf("SyncOnce returned with %d ops unanswered", p)
		}
	}
	if n := streams.max.Load(); n != 1 {
		t.Fatalf("the device had %d Sync streams open at once, want 1", n)
	}
	if got := len(messages(t, alice, conv)); got != 14 {
		t.Fatalf("%d messages, want 14", got)
	}
	if fs, _ := alice.Failed(); len(fs) != 0 {
		t.Fatalf("failed: %+v", fs)
	}
}
