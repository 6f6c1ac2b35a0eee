package server_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestProfileChangesAreThrottled: a display name change, a device rename
// and a revoke are writes of the user's, each a commit, as a block is: under the
// push limit, past the burst they wait (TestBlockUserIsThrottled), so that
// a device calling them in a loop does not take the writer.
func TestProfileChangesAreThrottled(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.PushLimit, o.PushBurst = 100, 1000 }})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("room")                   // 1 op of alice's 1000
	alice.push(conv, messages(alice, conv, 999, 0)...) // the rest of the burst
	throttled := make(chan struct{}, 4)
	server.OnThrottle(srv.Server, func() { throttled <- struct{}{} })
	for name, call := range map[string]func() error{
		"SetDisplayName": func() error {
			_, err := alice.Account.SetDisplayName(context.Background(), &ferryv1.SetDisplayNameRequest{DisplayName: "Alice"})
			return err
		},
		"RenameDevice": func() error {
			_, err := alice.Account.RenameDevice(context.Background(), &ferryv1.RenameDeviceRequest{DeviceId: alice.device(), Name: "laptop"})
			return err
		},
		"RevokeDevice": func() error {
			_, err := alice.Account.RevokeDevice(context.Background(), &ferryv1.RevokeDeviceRequest{DeviceId: ulid.Make().String()})
			if code(err) == connect.CodeNotFound {
				return nil // no such device: the call went through
			}
			return err
		},
	} {
		done := make(chan error, 1)
		go func() { done <- call() }()
		select {
		case <-throttled: // it waits for the limit, its timer armed
		case err := <-done:
			t.Errorf("%s: past the user's burst, answered without waiting for the push limit: %v", name, err)
			continue
		}
		srv.Clock.Advance(10 * time.Millisecond)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
