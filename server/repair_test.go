package server_test

import (
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

// replica is what a device holds of one conversation: op ids by dot.
type replica map[string]map[uint64]*ferryv1.Op // device -> dot -> op

func (r replica) add(ops ...*ferryv1.Op) {
	for _, op := range ops {
		if r[op.GetDeviceId()] == nil {
			r[op.GetDeviceId()] = map[uint64]*ferryv1.Op{}
		}
		r[op.GetDeviceId()][op.GetDot()] = op
	}
}

func (r replica) vector() *ferryv1.Vector {
	v := &ferryv1.Vector{}
	for d, dots := range r {
		n := uint64(0)
		for dots[n+1] != nil {
			n++
		}
		v.Entries = append(v.Entries, &ferryv1.VectorEntry{DeviceId: d, Dot: n})
	}
	return v
}

func (r replica) ids() map[string]bool {
	out := map[string]bool{}
	for _, dots := range r {
		for _, op := range dots {
			out[op.GetId()] = true
		}
	}
	return out
}

// history returns every op of conv that d can read.
func history(t *testing.T, d *dev, conv string) []*ferryv1.Op {
	t.Helper()
	page, err := d.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return page.GetOps()
}

// repair runs the repair exchange for one device: it takes what it lacks
// and pushes what the server lacks of its user's ops.
func repair(t *testing.T, d *dev, conv string, r replica) {
	t.Helper()
	for range 100 {
		resp, err := d.Sync.Repair(bg, &ferryv1.RepairRequest{ConversationId: conv, Vector: r.vector()})
		if err != nil {
			t.Fatalf("repair: %v", err)
		}
		r.add(resp.GetMissing()...)
		for _, w := range resp.GetWant() {
			var ops []*ferryv1.Op
			for n := w.GetFromDot(); n <= w.GetToDot(); n++ {
				op := r[w.GetDeviceId()][n]
				if op == nil {
					t.Fatalf("server wants %s:%d, which the device does not hold", w.GetDeviceId(), n)
				}
				ops = append(ops, &ferryv1.Op{Id: op.GetId(), DeviceId: op.GetDeviceId(), Dot: op.GetDot(), Payload: op.GetPayload()})
			}
			d.push(conv, ops...)
		}
		if !resp.GetMore() && len(resp.GetWant()) == 0 {
			return
		}
	}
	t.Fatal("repair did not converge")
}

func TestEpochResetAndRepairHealBothSides(t *testing.T) {
	fs := vfs.NewMem()
	seed := uint64(0)
	open := func(dir string) *engine.Engine {
		seed++ // each open draws its epoch from its own entropy
		o := enginetest.Options(t, seed)
		o.FS = fs
		e, err := engine.Open(dir, o)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	engA := open("a")
	srvA := servertest.New(t, servertest.Config{Use: engA})
	alice, bob := newDev(t, srvA.Register("alice")), newDev(t, srvA.Register("bob"))
	conv := alice.createConv("c", bob)
	for range 3 {
		alice.send(conv, "kept")
	}
	bob.send(conv, "kept too")
	if err := engA.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	// After the backup: ops the restored server will not have.
	alice.send(conv, "lost a1")
	alice.send(conv, "lost a2")
	bob.send(conv, "lost b1")
	// Both devices hold full replicas.
	aliceRep, bobRep := replica{}, replica{}
	aliceRep.add(history(t, alice, conv)...)
	bobRep.add(history(t, bob, conv)...)
	s := bob.open(hello("", 0))
	s.untilCaughtUp()
	oldEpoch, oldPos := s.welcome.GetEpoch(), s.pos
	s.close()
	everything := aliceRep.ids()
	srvA.Stop()
	if err := engA.Close(); err != nil {
		t.Fatal(err)
	}

	// The server comes back from the backup: a new epoch.
	engB := open("backup")
	t.Cleanup(func() { _ = engB.Close() }) // after the server's cleanup: LIFO
	if engB.Epoch().String() == oldEpoch {
		t.Fatal("a restored backup kept its epoch")
	}
	srvB := servertest.New(t, servertest.Config{Use: engB})
	alice.Clients, bob.Clients = srvB.Clients(alice.Session.GetToken()), srvB.Clients(bob.Session.GetToken())

	// Bob's device is told to reset, with the reason and the new epoch.
	s = bob.open(hello(oldEpoch, oldPos))
	m := s.recv()
	if r := m.GetResetRequired(); r.GetReason() != ferryv1.ResetReason_RESET_REASON_EPOCH_MISMATCH || r.GetEpoch() != engB.Epoch().String() {
		t.Fatalf("old epoch: got %v, want reset_required with the new epoch", m)
	}
	if err := s.endErr(); err != nil {
		t.Fatalf("stream after reset_required: %v", err)
	}
	// Alice writes on the restored server after repairing her own ops.
	repair(t, alice, conv, aliceRep)
	alice.dots[conv] = uint64(len(aliceRep[alice.device()]))
	newOp := alice.op(conv, msg("after the restore"))
	alice.push(conv, newOp)

	// Bob repairs: he gets alice's new op and gives back his lost one.
	repair(t, bob, conv, bobRep)

	server := replica{}
	server.add(history(t, alice, conv)...)
	for id := range everything {
		if !server.ids()[id] {
			t.Fatalf("op %s was acknowledged before the restore and is still lost", id)
		}
	}
	if len(server.ids()) != len(everything)+1 {
		t.Fatalf("server holds %d ops, want %d", len(server.ids()), len(everything)+1)
	}
	if !bobRep.ids()[newOp.GetId()] || len(bobRep.ids()) != len(server.ids()) {
		t.Fatalf("bob holds %d ops, server %d", len(bobRep.ids()), len(server.ids()))
	}
	// No op twice on the server, and the store is consistent.
	seen := map[string]bool{}
	for _, op := range history(t, alice, conv) {
		if seen[op.GetId()] {
			t.Fatalf("op %s stored twice", op.GetId())
		}
		seen[op.GetId()] = true
	}
	if rep, err := engB.Check(); err != nil || rep.Err() != nil {
		t.Fatalf("check: %v %v", err, rep.Err())
	}
	// Bob's fresh session in the new epoch catches up.
	s = bob.open(hello(engB.Epoch().String(), 0))
	s.untilCaughtUp()
	s.holds(conv, 1, uint64(len(everything)+1))
}

// TestMessagesWaitForTheSessionToOpen: a push sent right after a hello from
// another epoch (a device that has yet to learn of a restore) is not
// taken: the stream answers ResetRequired and ends, and the device repairs
// first. Taken, it would land ahead of the ops its repair gives back (an
// ack, which waits the same way, would move markers by another history's
// seqs).
func TestMessagesWaitForTheSessionToOpen(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	// The session opens once the client has sent its push, and the
	// receiver waits for the opening or has taken the push (which it must
	// not).
	ready, sent := make(chan struct{}, 2), make(chan struct{})
	server.OnAwaitOpen(srv.Server, func() { ready <- struct{}{} })
	server.OnPushed(srv.Server, func() { ready <- struct{}{} })
	server.OnOpen(srv.Server, func() { <-sent; <-ready })
	s := alice.open(hello(ulid.Make().String(), 3))
	s.push(1, conv, alice.op(conv, msg("sent before the repair")))
	close(sent)
	if m := s.recv(); m.GetResetRequired().GetReason() != ferryv1.ResetReason_RESET_REASON_EPOCH_MISMATCH {
		t.Fatalf("first answer %v, want reset_required", m)
	}
	if err := s.endErr(); err != nil {
		t.Fatalf("stream after reset_required: %v", err)
	}
	for _, op := range history(t, alice, conv) {
		if op.GetMessage() != nil {
			t.Fatalf("the push sent with the old epoch's hello was taken: %v", op)
		}
	}
}
