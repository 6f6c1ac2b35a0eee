package clientsdk_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/bench"
	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/server/servertest"
)

// countingClient is an h2c client that counts the bytes it reads from the
// network.
func countingClient(read *atomic.Int64) *http.Client {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: p,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &bench.CountingConn{Conn: c, Bytes: read}, nil
		}}}
}

// TestLongOffline: a device is offline while 50,000 ops arrive across 200
// conversations. When it comes back it receives exactly what it missed,
// and the newest page of every changed conversation arrives before any
// older op. A twin device without compression measures what zstd saves.
func TestLongOffline(t *testing.T) {
	const convs, perConv = 200, 250
	if testing.Short() {
		t.Skip("long offline: 50,000 ops")
	}
	srv := servertest.New(t, servertest.Config{})
	var zBytes, rawBytes atomic.Int64
	open := func(read *atomic.Int64, opts ...clientsdk.Option) *clientsdk.Device {
		d, err := clientsdk.OpenMemory(append(opts, clientsdk.WithServer(srv.URL), clientsdk.WithHTTPClient(countingClient(read)))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	bob := open(&zBytes)
	if err := bob.Register(ctx, "bob", "correct horse", "phone"); err != nil {
		t.Fatal(err)
	}
	twin := open(&rawBytes, clientsdk.WithoutCompression())
	if err := twin.Login(ctx, "bob", "correct horse", "tablet"); err != nil {
		t.Fatal(err)
	}
	acc, _ := bob.Account()
	bobUser := &enginetest.Device{Actor: engine.Actor{User: acc.User}}

	// Alice writes through the engine directly: this test is about the
	// catch-up, not the ingest.
	alice := enginetest.Register(t, srv.Engine, "alice")
	ids := make([]ulid.ULID, convs)
	for i := range ids {
		ids[i] = alice.Create(fmt.Sprint("room ", i), bobUser)
		alice.Send(ids[i], "welcome")
	}
	for _, d := range []*clientsdk.Device{bob, twin} {
		if err := d.SyncOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	body := []byte("a chat message of ordinary length, with a few words in it: ")
	for _, conv := range ids {
		ops := make([]model.Op, perConv)
		for i := range ops {
			ops[i] = alice.Op(conv, model.Op{Kind: model.KindMessage, Body: fmt.Appendf(body, "%d", i), ContentType: "text/plain"})
		}
		alice.Push(ops...)
	}

	catchUp := func(d *clientsdk.Device, read *atomic.Int64) (time.Duration, int64) {
		sub := d.Subscribe(8192)
		defer sub.Close()
		before := read.Load()
		start := time.Now()
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		checked := false
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for {
			var st clientsdk.Status
			select {
			case ev := <-sub.C():
				sc, ok := ev.(clientsdk.StatusChanged)
				if !ok {
					continue
				}
				st = sc.Status
			case <-ctx.Done():
				t.Fatalf("catch-up did not finish: %+v", d.Status())
			}
			if st.Backfilled > 0 && !checked {
				checked = true
				if st.Ready != convs {
					t.Fatalf("backfill began with %d of %d conversations' newest pages in", st.Ready, convs)
				}
			}
			if st.State == clientsdk.StateLive {
				if !checked {
					t.Fatal("the catch-up had no backfill phase")
				}
				return time.Since(start), read.Load() - before
			}
		}
	}
	zTime, zRead := catchUp(bob, &zBytes)
	rawTime, rawRead := catchUp(twin, &rawBytes)
	t.Logf("catch-up of %d ops over %d conversations: zstd %v, %d bytes read (%.1f B/op); uncompressed %v, %d bytes (%.1f B/op); ratio %.2f",
		convs*perConv, convs, zTime.Round(time.Millisecond), zRead, float64(zRead)/float64(convs*perConv),
		rawTime.Round(time.Millisecond), rawRead, float64(rawRead)/float64(convs*perConv), float64(zRead)/float64(rawRead))

	// Exactly what was missed: every conversation complete, nothing twice.
	for _, d := range []*clientsdk.Device{bob, twin} {
		for _, conv := range ids {
			ms := messages(t, d, conv)
			if len(ms) != perConv+1 {
				t.Fatalf("%s holds %d messages, want %d", conv, len(ms), perConv+1)
			}
			for i, m := range ms {
				if m.Seq != uint64(i+3) {
					t.Fatalf("%s message %d has seq %d", conv, i, m.Seq)
				}
			}
			c, _ := d.Conversation(conv)
			if c.Loading || c.Unread != perConv+1 {
				t.Fatalf("%s: loading %v, unread %d", conv, c.Loading, c.Unread)
			}
		}
	}
}
