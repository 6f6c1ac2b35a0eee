package clientsdk_test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/internal/testbin"
)

var killCycles = flag.Int("kill.cycles", 20, "server kills in TestKillNineServer (make test-long raises it)")

// TestKillNineServer runs the real ferryd binary and kills it with SIGKILL
// at random moments of traffic (after a seeded random number of further ops
// were accepted), restarting it on the same store, while three SDK devices
// send and receive. At the end, a history checker compares what every
// device enqueued with what the server holds: nothing lost, nothing
// duplicated, nothing unexpected; and every device converges.
func TestKillNineServer(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	bin := testbin.Build(t, "./cmd/ferryd")
	srv := testbin.StartFerryd(t, bin, testbin.FreeAddr(t), filepath.Join(t.TempDir(), "data"))

	open := func(name string, login bool) *clientsdk.Device {
		d, err := clientsdk.OpenMemory(clientsdk.WithServer(srv.URL), clientsdk.WithBackoff(10*time.Millisecond, 200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		if login {
			err = d.Login(ctx, name, "correct horse", name+" laptop")
		} else {
			err = d.Register(ctx, name, "correct horse", name+" phone")
		}
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	phone, bob := open("alice", false), open("bob", false)
	laptop := open("alice", true)
	devices := []*clientsdk.Device{phone, laptop, bob}
	conv, err := phone.CreateConversation(ctx, "crashy", lookup(t, phone, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devices {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range devices {
		waitFor(t, d, "the conversation", func() bool { _, err := d.Conversation(conv); return err == nil })
	}

	// Every event of every device, for the killer to pace itself on.
	events := make(chan struct{}, 1024)
	for _, d := range devices {
		sub := d.Subscribe(1024)
		t.Cleanup(sub.Close)
		go func() {
			for range sub.C() {
				select {
				case events <- struct{}{}:
				default:
				}
			}
		}()
	}

	const perDevice = 100
	var mu sync.Mutex
	enqueued := map[ulid.ULID]string{} // op id -> body
	var wg sync.WaitGroup
	testCtx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	for i, d := range devices {
		wg.Go(func() {
			sub := d.Subscribe(256)
			defer sub.Close()
			for n := range perDevice {
				for d.Status().Pending >= 4 { // a few in flight, as a chatty user would
					select {
					case <-sub.C():
					case <-testCtx.Done():
						return
					}
				}
				body := fmt.Sprintf("device %d message %d", i, n)
				id, err := d.SendText(ctx, conv, body)
				if err != nil {
					t.Errorf("send: %v", err)
					return
				}
				mu.Lock()
				enqueued[id] = body
				mu.Unlock()
			}
		})
	}

	accepted := func() int {
		mu.Lock()
		n := len(enqueued)
		mu.Unlock()
		for _, d := range devices {
			n -= d.Status().Pending
		}
		return n
	}
	kills, midTraffic := 0, 0
	for kills < *killCycles {
		target := accepted() + 3 + rng.IntN(15)
		for accepted() < target && accepted() < 3*perDevice {
			select {
			case <-events:
			case <-testCtx.Done():
				t.Fatalf("traffic stalled at %d accepted ops (cycle %d)", accepted(), kills)
			}
		}
		busy := false
		for _, d := range devices {
			busy = busy || d.Status().Pending > 0
		}
		srv.Kill()
		kills++
		if busy {
			midTraffic++
		}
		srv.Start()
	}
	wg.Wait()
	for _, d := range devices {
		waitFor(t, d, "the outbox drains", func() bool { return d.Status().Pending == 0 })
	}
	t.Logf("%d kills, %d of them with ops in flight", kills, midTraffic)
	if midTraffic == 0 {
		t.Fatal("no kill landed while ops were in flight: the test proves nothing")
	}

	// The checker: the server's truth, through a fresh device.
	checker := open("alice", true)
	if err := checker.SyncOnce(testCtx); err != nil {
		t.Fatal(err)
	}
	server := messages(t, checker, conv)
	seen := map[ulid.ULID]int{}
	bodies := map[string]int{}
	for _, m := range server {
		seen[m.ID]++
		bodies[m.Text()]++
	}
	lost, duplicated, unexpected := 0, 0, 0
	for id := range enqueued {
		if seen[id] == 0 {
			lost++
		}
	}
	for id, n := range seen {
		if n > 1 {
			duplicated += n - 1
		}
		if _, ok := enqueued[id]; !ok {
			unexpected++
		}
	}
	for _, n := range bodies {
		if n > 1 {
			duplicated += n - 1
		}
	}
	t.Logf("checker: %d enqueued, %d on the server; lost %d, duplicated %d, unexpected %d", len(enqueued), len(server), lost, duplicated, unexpected)
	if lost != 0 || duplicated != 0 || unexpected != 0 || len(enqueued) != 3*perDevice {
		t.Fatalf("history check failed (seed %d)", seed)
	}
	// Every device converges on the server's history.
	want := fingerprint(server)
	for i, d := range devices {
		waitFor(t, d, "convergence", func() bool { return slices.Equal(fingerprint(messages(t, d, conv)), want) })
		if i == 0 && len(want) != 3*perDevice {
			t.Fatalf("converged on %d messages", len(want))
		}
	}
}

// fingerprint is what a device shows of messages: id, seq and body.
func fingerprint(ms []clientsdk.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = fmt.Sprintf("%d %s %s", m.Seq, m.ID, m.Text())
	}
	return out
}
