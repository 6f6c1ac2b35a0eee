package clientsdk_test

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/internal/testbin"
)

// TestServerRestoredFromBackup: the server comes back from yesterday's
// backup (a new epoch) under running devices. Each device is told to reset,
// pushes back the ops of its user that the server lost, and downloads the
// conversations afresh; at the end nothing is lost or doubled, every device
// shows the server's state, and sending goes on.
func TestServerRestoredFromBackup(t *testing.T) {
	srv, url := restoreServer(t, 1)
	open := func(name string) *clientsdk.Device {
		n := &faultyNet{conns: map[net.Conn]bool{}}
		d, err := clientsdk.OpenMemory(clientsdk.WithServer(url), clientsdk.WithHTTPClient(n.client()),
			clientsdk.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		if err := d.Register(ctx, name, "correct horse", "phone"); err != nil {
			t.Fatal(err)
		}
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		return d
	}
	alice, bob := open("alice"), open("bob")
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	for _, text := range []string{"kept 1", "kept 2"} {
		alice.SendText(ctx, conv, text)
	}
	waitFor(t, bob, "bob has the kept messages", has(t, bob, conv, "kept 1", "kept 2"))
	if err := srv.eng.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	alice.SendText(ctx, conv, "lost by alice")
	waitFor(t, bob, "bob has alice's later message", has(t, bob, conv, "kept 1", "kept 2", "lost by alice"))
	bob.SendText(ctx, conv, "lost by bob")
	waitFor(t, alice, "alice has bob's", has(t, alice, conv, "kept 1", "kept 2", "lost by alice", "lost by bob"))

	restore(t, srv)
	want := []string{"kept 1", "kept 2", "lost by alice", "lost by bob"}
	acc, _ := alice.Account()
	for _, d := range []*clientsdk.Device{alice, bob} {
		// The devices' state from before the restore already says this
		// until they notice the restart: the server's, with the lost
		// messages back, says when both repaired.
		waitFor(t, d, "repair and resync", func() bool {
			got := texts(messages(t, d, conv))
			slices.Sort(got)
			return slices.Equal(got, want) && d.Status().State == clientsdk.StateLive && d.Status().Pending == 0 &&
				len(serverFingerprint(t, srv.eng, engine.Actor{User: acc.User, Device: acc.Device}, conv)) == len(want)
		})
	}
	// The server has everything once, and each device shows the server's
	// state (the lost ops came back with new seqs).
	truth := serverFingerprint(t, srv.eng, engine.Actor{User: acc.User, Device: acc.Device}, conv)
	if len(truth) != 4 {
		t.Fatalf("server holds %d messages after repair, want 4: %v", len(truth), truth)
	}
	for _, d := range []*clientsdk.Device{alice, bob} {
		waitFor(t, d, "convergence", func() bool { return slices.Equal(fingerprintFull(t, d, conv), truth) })
	}
	// Life goes on in the new epoch.
	alice.SendText(ctx, conv, "after the restore")
	waitFor(t, bob, "bob gets the new message", func() bool {
		ms := messages(t, bob, conv)
		return len(ms) == 5 && ms[4].Text() == "after the restore"
	})
	if fs, _ := alice.Failed(); len(fs) != 0 {
		t.Fatalf("ops failed around the restore: %+v", fs)
	}
}

// TestRestoreOlderThanAConversation: after a restore from a backup older
// than one of the device's conversations, the device syncs again (the
// server does not know that one), and gives back its reaction to a
// message its user sent from another device, which is gone: the message
// goes back first.
func TestRestoreOlderThanAConversation(t *testing.T) {
	srv, url := restoreServer(t, 2)
	older := restoreDevice(t, url, "alice", false)
	conv, _ := older.CreateConversation(ctx, "notes")
	newer := restoreDevice(t, url, "alice", true) // a later device id: the server lists its dots after the older one's
	waitFor(t, newer, "the newer device has the conversation", func() bool { _, err := newer.Conversation(conv); return err == nil })
	if err := srv.eng.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	if _, err := older.CreateConversation(ctx, "after the backup"); err != nil {
		t.Fatal(err)
	}
	msg, _ := newer.SendText(ctx, conv, "from the newer device")
	waitFor(t, older, "the older device has the message", has(t, older, conv, "from the newer device"))
	if _, err := older.React(ctx, conv, msg, "+1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, older, "the reaction is sent", func() bool { return older.Status().Pending == 0 })
	_ = newer.Close() // gone: the older device repairs alone

	restore(t, srv)
	acc, _ := older.Account()
	waitFor(t, older, "repaired and live", func() bool {
		ms := messages(t, older, conv)
		// The server's state too: the device's from before the restore
		// says the same until it notices the restart.
		fp := serverFingerprint(t, srv.eng, engine.Actor{User: acc.User, Device: acc.Device}, conv)
		return older.Status().State == clientsdk.StateLive && older.Status().Pending == 0 && len(ms) == 1 && len(ms[0].Reactions) == 1 &&
			len(fp) == 1 && strings.Contains(fp[0], "from the newer device") && !strings.Contains(fp[0], "reactions=[]")
	})
}

// restoreServer starts a server on a store in memory, which restore
// brings back from its backup, and returns it and its URL. It stops as
// the test ends, after the test's devices close.
func restoreServer(t *testing.T, seed uint64) (*simServer, string) {
	t.Helper()
	srv := &simServer{t: t, fs: vfs.NewMem(), addr: testbin.FreeAddr(t), seed: seed}
	srv.start()
	t.Cleanup(func() { srv.stop() })
	return srv, "http://" + srv.addr
}

// restoreDevice opens a device on the server at url, signs it in as name
// (registering its phone, or with login logging in its laptop) and starts
// it.
func restoreDevice(t *testing.T, url, name string, login bool) *clientsdk.Device {
	t.Helper()
	d, err := clientsdk.OpenMemory(clientsdk.WithServer(url), clientsdk.WithBackoff(5*time.Millisecond, 50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	if login {
		err = d.Login(ctx, name, "correct horse", "laptop")
	} else {
		err = d.Register(ctx, name, "correct horse", "phone")
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	return d
}

// restore stops srv and starts it again on the backup it took.
func restore(t *testing.T, srv *simServer) {
	t.Helper()
	old := srv.eng.Epoch()
	srv.stop()
	srv.dir = "backup"
	srv.start()
	if srv.eng.Epoch() == old {
		t.Fatal("the restored store kept its epoch")
	}
}

// TestRestoreKeepsALeave: a user who sent a message and then left after
// the backup gives both back: the message is not lost, and they are not
// a member again.
func TestRestoreKeepsALeave(t *testing.T) {
	srv, url := restoreServer(t, 3)
	alice, bob := restoreDevice(t, url, "alice", false), restoreDevice(t, url, "bob", false)
	conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	alice.SendText(ctx, conv, "before the backup")
	waitFor(t, bob, "bob has the message", has(t, bob, conv, "before the backup"))
	if err := srv.eng.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	bob.SendText(ctx, conv, "bob after the backup")
	waitFor(t, alice, "alice has bob's", has(t, alice, conv, "before the backup", "bob after the backup"))
	if _, err := bob.Leave(ctx, conv); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "bob left", func() bool { c, err := alice.Conversation(conv); return err == nil && c.Members == 1 })

	restore(t, srv)
	// The device's state from before the restore already says all this
	// until it notices the restart: the server's says when it repaired.
	acc, _ := bob.Account()
	waitFor(t, bob, "bob repaired", func() bool {
		c, err := bob.Conversation(conv)
		info, _, _, serr := srv.eng.Conversation(engine.Actor{User: acc.User, Device: acc.Device}, conv)
		return bob.Status().State == clientsdk.StateLive && bob.Status().Pending == 0 && err == nil && c.Removed &&
			serr == nil && info.Removed
	})
	waitFor(t, alice, "alice repaired", func() bool {
		c, err := alice.Conversation(conv)
		return alice.Status().State == clientsdk.StateLive && err == nil && c.Members == 1 &&
			has(t, alice, conv, "before the backup", "bob after the backup")()
	})
	info, _, _, err := srv.eng.Conversation(engine.Actor{User: acc.User, Device: acc.Device}, conv)
	if err != nil || !info.Removed {
		t.Fatalf("the server has bob in the conversation again: %+v %v", info, err)
	}
}

// TestRestoreGivesBackAConversation: a conversation created after the
// backup is created again by its creator's device, with its user's ops;
// a member's device that repairs after that gives theirs back, and one
// that repairs before forgets the conversation until it comes back, and
// goes on syncing.
func TestRestoreGivesBackAConversation(t *testing.T) {
	srv, url := restoreServer(t, 4)
	alice, bob, carol := restoreDevice(t, url, "alice", false), restoreDevice(t, url, "bob", false), restoreDevice(t, url, "carol", false)
	dave := restoreDevice(t, url, "dave", false)
	if err := srv.eng.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	conv, _ := alice.CreateConversation(ctx, "after the backup", lookup(t, alice, "bob"), lookup(t, alice, "carol"), lookup(t, alice, "dave"))
	alice.SendText(ctx, conv, "a1")
	waitFor(t, bob, "bob has a1", has(t, bob, conv, "a1"))
	bob.SendText(ctx, conv, "b1")
	waitFor(t, carol, "carol has b1", has(t, carol, conv, "a1", "b1"))
	carol.SendText(ctx, conv, "c1")
	// Its ack too: an op still in carol's outbox at the restore would
	// keep the conversation on her device, as dave's does below.
	waitFor(t, carol, "carol's c1 acked", func() bool { return carol.Status().Pending == 0 })
	for _, d := range []*clientsdk.Device{alice, bob} {
		waitFor(t, d, "c1", has(t, d, conv, "a1", "b1", "c1"))
	}
	if err := carol.MarkRead(ctx, conv, 7); err != nil {
		t.Fatal(err)
	}
	waitFor(t, dave, "dave has c1", has(t, dave, conv, "a1", "b1", "c1"))
	alice.Stop()
	bob.Stop()
	dave.Stop()
	// Queued offline: alice's new conversation, and dave's message.
	offline, _ := alice.CreateConversation(ctx, "created offline")
	if _, err := dave.SendText(ctx, conv, "d queued"); err != nil {
		t.Fatal(err)
	}

	restore(t, srv)
	// Carol repairs first: the server does not know the conversation,
	// which she did not create.
	waitFor(t, carol, "carol repaired", func() bool {
		_, err := carol.Conversation(conv)
		return carol.Status().State == clientsdk.StateLive && errors.Is(err, clientsdk.ErrUnknownConversation)
	})
	if err := carol.MarkRead(ctx, conv, 7); !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Fatalf("carol marks the forgotten conversation read: %v", err)
	}
	// Dave's device repairs before alice's too, with a message for the
	// conversation queued: it keeps the conversation, and the server
	// refuses the message, which shows failed.
	if err := dave.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, dave, "dave's queued message refused", func() bool {
		fs, _ := dave.Failed()
		return dave.Status().State == clientsdk.StateLive && dave.Status().Pending == 0 && len(fs) == 1
	})
	// A mark-read on that conversation, which the server does not know,
	// sends no marker, which it would refuse, stopping the device.
	if err := dave.MarkRead(ctx, conv, 5); err != nil {
		t.Fatal(err)
	}
	if err := dave.SyncOnce(ctx); err != nil {
		t.Fatalf("dave's sync after the mark-read: %v", err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "alice created it again", func() bool {
		return alice.Status().State == clientsdk.StateLive && alice.Status().Pending == 0 && has(t, alice, conv, "a1")()
	})
	// Her conversation created offline, whose create waited in the
	// outbox, is kept through the repair and created.
	acc, _ := alice.Account()
	if _, _, _, err := srv.eng.Conversation(engine.Actor{User: acc.User, Device: acc.Device}, offline); err != nil {
		t.Fatalf("the conversation created offline: %v", err)
	}
	if err := bob.Start(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*clientsdk.Device{alice, bob, carol} {
		waitFor(t, d, "a1 and b1 back", has(t, d, conv, "a1", "b1"))
	}
	waitFor(t, dave, "dave has a1 and b1, and his failed message", has(t, dave, conv, "a1", "b1", "d queued"))
	for _, d := range []*clientsdk.Device{carol, dave} {
		if st := d.Status(); st.State != clientsdk.StateLive {
			t.Fatalf("%+v", st)
		}
	}
}

// TestRestoreForgetsWhatItCannotCreateAgain: a conversation created after
// the backup from a device the restored server never knew cannot be
// created again from the user's other device (the server refuses the
// create): that device forgets it, and a mark-read on it fails at the
// call instead of stopping the device for good.
func TestRestoreForgetsWhatItCannotCreateAgain(t *testing.T) {
	srv, url := restoreServer(t, 5)
	phone := restoreDevice(t, url, "alice", false)
	if err := srv.eng.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	laptop := restoreDevice(t, url, "alice", true)
	conv, _ := laptop.CreateConversation(ctx, "from the laptop")
	if err := laptop.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, phone, "the phone has it", func() bool { c, err := phone.Conversation(conv); return err == nil && c.Head == 1 })

	restore(t, srv)
	waitFor(t, phone, "the phone repaired", func() bool {
		_, err := phone.Conversation(conv)
		return phone.Status().State == clientsdk.StateLive && errors.Is(err, clientsdk.ErrUnknownConversation)
	})
	if err := phone.MarkRead(ctx, conv, 1); !errors.Is(err, clientsdk.ErrUnknownConversation) {
		t.Fatalf("mark-read on the forgotten conversation: %v", err)
	}
}

// TestRestoreGivesBackPastARefusedOp: a device gives back a reaction the
// restored server refuses (its target, another user's message, is not
// back yet), then messages of its own, reactions its user sent from
// their laptop, and a message the laptop never had. A refused op takes no
// dot, so the messages go again a dot lower rather than being lost as dot
// gaps, the laptop's reactions after them and in their order, and each
// device's later sends go on. Whichever of the user's devices
// repairs first: the phone, which holds everything, or the laptop, after
// which the phone gives back the message the laptop did not have where
// the server stands.
func TestRestoreGivesBackPastARefusedOp(t *testing.T) {
	for i, first := range []string{"phone", "laptop"} {
		t.Run(first+" first", func(t *testing.T) {
			srv, url := restoreServer(t, uint64(6+i))
			alice, phone := restoreDevice(t, url, "alice", false), restoreDevice(t, url, "bob", false)
			laptop := restoreDevice(t, url, "bob", true)
			conv, _ := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
			kept, _ := alice.SendText(ctx, conv, "kept")
			for _, d := range []*clientsdk.Device{phone, laptop} {
				waitFor(t, d, "the kept message", has(t, d, conv, "kept"))
			}
			if err := srv.eng.Backup("backup"); err != nil {
				t.Fatal(err)
			}
			a1, _ := alice.SendText(ctx, conv, "a1")
			waitFor(t, phone, "the phone has a1", has(t, phone, conv, "kept", "a1"))
			if _, err := phone.React(ctx, conv, a1, "+1"); err != nil {
				t.Fatal(err)
			}
			b1, err := phone.SendText(ctx, conv, "b1")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := phone.SendText(ctx, conv, "b2"); err != nil {
				t.Fatal(err)
			}
			// A reaction on, from the phone, then off, from the laptop:
			// off stays off only if the laptop's op keeps its place after
			// the phone's, which go again in the repair.
			if _, err := phone.React(ctx, conv, kept, "ok"); err != nil {
				t.Fatal(err)
			}
			reactions := func(d *clientsdk.Device, msg ulid.ULID) int {
				for _, m := range messages(t, d, conv) {
					if m.ID == msg {
						return len(m.Reactions)
					}
				}
				return -1
			}
			waitFor(t, phone, "the phone's ops sent", func() bool { return phone.Status().Pending == 0 })
			waitFor(t, laptop, "the laptop has b2 and the reaction", func() bool {
				return has(t, laptop, conv, "kept", "a1", "b1", "b2")() && reactions(laptop, kept) == 1
			})
			if _, err := laptop.Unreact(ctx, conv, kept, "ok"); err != nil {
				t.Fatal(err)
			}
			if _, err := laptop.React(ctx, conv, b1, "ok"); err != nil {
				t.Fatal(err)
			}
			reacted := func(d *clientsdk.Device) func() bool {
				return func() bool {
					for _, m := range messages(t, d, conv) {
						if m.ID == b1 {
							return len(m.Reactions) == 1 && m.Reactions[0].Key == "ok" && len(m.Reactions[0].Users) == 1 && reactions(d, kept) == 0
						}
					}
					return false
				}
			}
			waitFor(t, phone, "the phone has the laptop's reactions", func() bool { return phone.Status().Pending == 0 && reacted(phone)() })
			laptop.Stop()
			if _, err := phone.SendText(ctx, conv, "b3"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, phone, "b3 sent", func() bool { return phone.Status().Pending == 0 })
			waitFor(t, alice, "alice has bob's", has(t, alice, conv, "kept", "a1", "b1", "b2", "b3"))
			alice.Stop()
			phone.Stop()

			// One of bob's devices repairs first, alone, while a1 is not back.
			restore(t, srv)
			d1, d2 := phone, laptop
			if first == "laptop" {
				d1, d2 = laptop, phone
			}
			if err := d1.Start(); err != nil {
				t.Fatal(err)
			}
			want := []string{"kept", "b1", "b2", "b3"}
			if first == "laptop" {
				want = want[:3]
			}
			waitFor(t, d1, "the "+first+" repaired", func() bool {
				return d1.Status().State == clientsdk.StateLive && d1.Status().Pending == 0 && has(t, d1, conv, want...)() && reacted(d1)()
			})
			if err := d2.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, d2, "the other device repaired", func() bool {
				return d2.Status().State == clientsdk.StateLive && d2.Status().Pending == 0 && has(t, d2, conv, "kept", "b1", "b2", "b3")()
			})
			if _, err := phone.SendText(ctx, conv, "after from the phone"); err != nil {
				t.Fatal(err)
			}
			if _, err := laptop.SendText(ctx, conv, "after from the laptop"); err != nil {
				t.Fatal(err)
			}
			if err := alice.Start(); err != nil {
				t.Fatal(err)
			}
			for _, d := range []*clientsdk.Device{alice, phone, laptop} {
				waitFor(t, d, "everything back but the refused reaction", func() bool {
					got := texts(messages(t, d, conv))
					slices.Sort(got)
					return slices.Equal(got, []string{"a1", "after from the laptop", "after from the phone", "b1", "b2", "b3", "kept"}) &&
						d.Status().Pending == 0 && reacted(d)()
				})
			}
			for _, d := range []*clientsdk.Device{phone, laptop} {
				if fs, _ := d.Failed(); len(fs) != 0 {
					t.Fatalf("bob's ops failed: %+v", fs)
				}
			}
		})
	}
}
