package clientsdk_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/server/servertest"
)

// syncStreams counts the Sync streams a client has open, and the most it
// had at once. A stream whose context ended counts as closed: the client
// is done with it, though Connect may close its body, or even start its
// request, a moment later.
type syncStreams struct {
	base http.RoundTripper
	mu   sync.Mutex
	open map[*http.Request]bool
	max  int
}

func (c *syncStreams) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, "/Sync") || r.Context().Err() != nil {
		// Connect starts a stream's request on a goroutine of its own,
		// which may reach here after the session gave the stream up.
		return c.base.RoundTrip(r)
	}
	c.mu.Lock()
	if c.open == nil {
		c.open = map[*http.Request]bool{}
	}
	for o := range c.open {
		if o.Context().Err() != nil {
			delete(c.open, o)
		}
	}
	c.open[r] = true
	c.max = max(c.max, len(c.open))
	c.mu.Unlock()
	closed := func() {
		c.mu.Lock()
		delete(c.open, r)
		c.mu.Unlock()
	}
	resp, err := c.base.RoundTrip(r)
	if err != nil {
		closed()
		return nil, err
	}
	resp.Body = &closedBody{ReadCloser: resp.Body, closed: closed}
	return resp, nil
}

func (c *syncStreams) most() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.max
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
// calls at once take turns, and SyncOnce while Start's loop runs ends the
// loop's session, syncs on its own and returns with what was queued
// answered; the loop connects again after it. Two streams each pushed the
// outbox and renumbered on their own, and a message one of them
// renumbered showed failed, and twice.
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
	if n := streams.most(); n != 1 {
		t.Fatalf("the device had %d Sync streams open at once, want 1", n)
	}
	if got := len(messages(t, alice, conv)); got != 14 {
		t.Fatalf("%d messages, want 14", got)
	}
	if fs, _ := alice.Failed(); len(fs) != 0 {
		t.Fatalf("failed: %+v", fs)
	}
}

// TestSyncOnceWhileLoopingCatchesUp: a SyncOnce while Start's loop runs
// returns with every message sent before the call, as one without the
// loop does.
func TestSyncOnceWhileLoopingCatchesUp(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	bob := device(t, srv, "bob", false)
	conv, err := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "the conversation created", func() bool {
		return alice.Status().State == clientsdk.StateLive && alice.Status().Pending == 0
	})
	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		text := fmt.Sprint("from bob ", i)
		if _, err := bob.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
		if err := bob.SyncOnce(ctx); err != nil { // stored
			t.Fatal(err)
		}
		if err := alice.SyncOnce(ctx); err != nil {
			t.Fatal(err)
		}
		if ms := messages(t, alice, conv); len(ms) != i+1 || ms[i].Text() != text {
			t.Fatalf("round %d: alice has %d messages after SyncOnce, want %q last", i, len(ms), text)
		}
	}
}
