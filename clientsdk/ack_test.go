package clientsdk_test

import (
	"testing"
	"time"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/server/servertest"
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
	// far, and comes back once the server has applied them.
	three, err := bob.SendText(ctx, conv, "three")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "bob's message is accepted", func() bool { return status(t, bob, conv, three) == clientsdk.StatusSent })
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
	fake.Advance(10 * time.Millisecond)
	waitFor(t, alice, "bob's ack to reach the server", func() bool {
		info, _, _, err := srv.Engine.Conversation(engine.Actor{User: acc.User, Device: acc.Device}, conv)
		return err == nil && info.Delivered >= twoSeq
	})
}
