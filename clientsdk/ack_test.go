package clientsdk_test

import (
	"encoding/binary"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/clock"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// defaultAckDelay and defaultResumeAckDelay are WithAckDelay's and
// WithResumeAckDelay's defaults.
const (
	defaultAckDelay       = 250 * time.Millisecond
	defaultResumeAckDelay = 5 * time.Second
)

// TestAcksGather: a device's acks wait WithAckDelay after the first round
// that needs one and then go out together. Time moves only when the test
// moves it: nothing is acknowledged before, everything after.
func TestAcksGather(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false, clientsdk.WithAckDelay(0))
	fake := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	bob := device(t, srv, "bob", false, clientsdk.WithClock(fake))
	conv, err := alice.CreateConversation(ctx, "acks", lookup(t, alice, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []*clientsdk.Device{alice, bob} {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := alice.SendText(ctx, conv, "one"); err != nil {
		t.Fatal(err)
	}
	two, err := alice.SendText(ctx, conv, "two")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob receives both", has(t, bob, conv, "one", "two"))

	// Bob's own message goes out on the same stream after any ack sent so
	// far, and comes back once the server has applied them. It goes to a
	// conversation of his own: one in conv would move his markers there
	// itself (a sender has received their own message).
	notes, err := bob.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	three, err := bob.SendText(ctx, notes, "three")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob's message is accepted", func() bool {
		st := status(t, bob, notes, three)
		return st == clientsdk.StatusSent || st == clientsdk.StatusDelivered || st == clientsdk.StatusRead
	})
	acc, err := bob.Account()
	if err != nil {
		t.Fatal(err)
	}
	twoSeq := uint64(0)
	for _, m := range messages(t, bob, conv) {
		if m.ID == two {
			twoSeq = m.Seq
		}
	}
	info, _, _, err := srv.Engine.Conversation(engine.Actor{User: acc.User, Device: acc.Device}, conv)
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered >= twoSeq {
		t.Fatalf("bob acknowledged up to %d before the ack delay passed; alice's messages end at %d", info.Delivered, twoSeq)
	}

	// Bob's ack moves his delivered receipt, which reaches alice.
	fake.Advance(defaultAckDelay)
	waitFor(t, alice, "bob's ack to reach the server", func() bool {
		info, _, _, err := srv.Engine.Conversation(engine.Actor{User: acc.User, Device: acc.Device}, conv)
		return err == nil && info.Delivered >= twoSeq
	})
}

// TestResumeAcksWait: in a conversation without receipts, a delivered
// marker only sets where the next session resumes, so it waits
// WithResumeAckDelay (5s by default) rather than the ack delay; a read
// still goes after the ack delay, and takes the delivered marker with it.
// The test reads the acks off bob's side of the wire and the ack timer's
// deadline off his fake clock.
func TestResumeAcksWait(t *testing.T) {
	acks := make(chan *ferryv1.Ack, 64)
	_, alice, bob, fake, conv := heldResumeAck(t, func(srv *servertest.Server) []clientsdk.Option {
		return []clientsdk.Option{clientsdk.WithoutCompression(),
			clientsdk.WithHTTPClient(&http.Client{Transport: ackWatcher(srv.HTTP.Transport, acks)})}
	})
	select {
	case a := <-acks:
		t.Fatalf("bob acked %v before the resume ack delay passed", a.GetMarkers())
	default:
	}
	fake.Advance(defaultResumeAckDelay)
	one := messages(t, bob, conv)[0].Seq
	if a := nextAck(t, acks); a.GetMarkers()[0].GetDelivered() < one || a.GetMarkers()[0].GetRead() != 0 {
		t.Fatalf("ack after the resume ack delay: %v; want delivered >= %d, no read", a.GetMarkers(), one)
	}

	// A read goes after the ack delay, with the delivered marker.
	if _, err := alice.SendText(ctx, conv, "two"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob receives two", has(t, bob, conv, "one", "two"))
	waitForAckTimer(t, fake, defaultResumeAckDelay)
	if err := bob.MarkRead(ctx, conv, 0); err != nil {
		t.Fatal(err)
	}
	waitForAckTimer(t, fake, defaultAckDelay)
	fake.Advance(defaultAckDelay)
	two := messages(t, bob, conv)[1].Seq
	if a := nextAck(t, acks); a.GetMarkers()[0].GetDelivered() < two || a.GetMarkers()[0].GetRead() < two {
		t.Fatalf("ack after a read: %v; want delivered and read >= %d", a.GetMarkers(), two)
	}
}

// TestStopSendsHeldMarkers: the markers a device is still gathering when
// it stops go to the server then, and not with the next session: a
// delivered marker that waits WithResumeAckDelay (no receipts here) would
// otherwise leave the server up to five seconds behind what the device
// holds. Bob's clock never moves, so only Stop can send it.
func TestStopSendsHeldMarkers(t *testing.T) {
	srv, _, bob, _, conv := heldResumeAck(t, nil)
	acc, err := bob.Account()
	if err != nil {
		t.Fatal(err)
	}
	delivered := func() uint64 {
		t.Helper()
		info, _, _, err := srv.Engine.Conversation(engine.Actor{User: acc.User, Device: acc.Device}, conv)
		if err != nil {
			t.Fatal(err)
		}
		return info.Delivered
	}
	one := messages(t, bob, conv)[0].Seq
	if got := delivered(); got >= one {
		t.Fatalf("the server has bob's delivered marker at %d before the resume ack delay passed; \"one\" is %d", got, one)
	}
	bob.Stop()
	if got := delivered(); got < one {
		t.Fatalf("after Stop the server has bob's delivered marker at %d; he holds \"one\" at %d", got, one)
	}
}

// heldResumeAck starts alice and bob, live, on a server where no
// conversation has receipts, and has alice send bob "one" in a new
// conversation: it returns once bob holds it and his resume ack waits on
// his fake clock. bobOpts, if not nil, gives bob more options.
func heldResumeAck(t *testing.T, bobOpts func(*servertest.Server) []clientsdk.Option) (srv *servertest.Server, alice, bob *clientsdk.Device, fake *clock.Fake, conv ulid.ULID) {
	t.Helper()
	srv = servertest.New(t, servertest.Config{Engine: func(o *engine.Options) { o.ReceiptMembers = 1 }})
	alice = device(t, srv, "alice", false)
	fake = clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	opts := []clientsdk.Option{clientsdk.WithClock(fake)}
	if bobOpts != nil {
		opts = append(opts, bobOpts(srv)...)
	}
	bob = device(t, srv, "bob", false, opts...)
	for _, d := range []*clientsdk.Device{alice, bob} {
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, d, "live", func() bool { return d.Status().State == clientsdk.StateLive })
	}
	// Bob's session sends the markers earlier sessions left as it starts,
	// on its sender goroutine, which a busy machine may run only after the
	// receiver has taken "one": its marker would then go at once, with no
	// wait to hold. His heartbeat timer, the only one on the fake clock,
	// fired and armed again shows the sender in its loop, past them.
	timeout := time.After(60 * time.Second)
	for {
		armed := fake.Armed()
		if fake.Pending() > 0 {
			break
		}
		select {
		case <-armed:
		case <-timeout:
			t.Fatal("bob's session armed no heartbeat")
		}
	}
	armed := fake.Armed()
	next, _ := fake.Next()
	fake.Advance(next.Sub(fake.Now()))
	select {
	case <-armed:
	case <-timeout:
		t.Fatal("bob's session did not arm its heartbeat again")
	}
	conv, err := alice.CreateConversation(ctx, "large", lookup(t, alice, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alice.SendText(ctx, conv, "one"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob receives one", has(t, bob, conv, "one"))
	waitForAckTimer(t, fake, defaultResumeAckDelay)
	return srv, alice, bob, fake, conv
}

// waitForAckTimer waits until the earliest timer on the fake clock (the
// ack timer: the heartbeat is 20s away) fires `after` from now.
func waitForAckTimer(t *testing.T, fake *clock.Fake, after time.Duration) {
	t.Helper()
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	var got time.Duration
	for {
		armed := fake.Armed()
		if next, ok := fake.Next(); ok && next.Before(fake.Now().Add(20*time.Second)) {
			if got = next.Sub(fake.Now()); got == after {
				return
			}
		}
		select {
		case <-armed:
		case <-timeout.C:
			t.Fatalf("the ack timer fires in %s; want %s", got, after)
		}
	}
}

func nextAck(t *testing.T, acks <-chan *ferryv1.Ack) *ferryv1.Ack {
	t.Helper()
	select {
	case a := <-acks:
		if len(a.GetMarkers()) != 1 {
			t.Fatalf("ack of %d markers; want 1", len(a.GetMarkers()))
		}
		return a
	case <-time.After(60 * time.Second):
		t.Fatal("no ack on the wire")
	}
	return nil
}

// syncTap shows each message a device writes on its Sync streams
// (uncompressed Connect envelopes: WithoutCompression) to seen.
type syncTap struct {
	next http.RoundTripper
	seen func(*ferryv1.SyncRequest)
}

// ackWatcher is a syncTap that sends the acks to acks.
func ackWatcher(next http.RoundTripper, acks chan<- *ferryv1.Ack) syncTap {
	return syncTap{next: next, seen: func(req *ferryv1.SyncRequest) {
		if req.GetAck() != nil {
			acks <- req.GetAck()
		}
	}}
}

func (w syncTap) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/Sync") && r.Body != nil {
		r.Body = &envelopeTap{ReadCloser: r.Body, seen: w.seen}
	}
	return w.next.RoundTrip(r)
}

type envelopeTap struct {
	io.ReadCloser
	seen func(*ferryv1.SyncRequest)
	buf  []byte
}

func (e *envelopeTap) Read(p []byte) (int, error) {
	n, err := e.ReadCloser.Read(p)
	e.buf = append(e.buf, p[:n]...)
	for len(e.buf) >= 5 {
		size := int(binary.BigEndian.Uint32(e.buf[1:5]))
		if len(e.buf) < 5+size {
			break
		}
		var req ferryv1.SyncRequest
		if e.buf[0] == 0 && proto.Unmarshal(e.buf[5:5+size], &req) == nil {
			e.seen(&req)
		}
		e.buf = e.buf[5+size:]
	}
	return n, err
}
