package clientsdk

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

// repairAll runs after the server says its store was replaced or restored
// (a new epoch). The replica's seqs belong to the old history, so:
//
//  1. for every conversation, those the user left among them, compare
//     version vectors with the server (Repair) and push back the ops of
//     this user that the server lost: a leave after the backup too. A
//     conversation the restored server does not know, its creator's
//     devices create again with their user's ops; the others forget it
//     until it comes back so (their user's ops in it are lost), unless
//     ops for it wait in the outbox;
//  2. forget every seq-ordered op and position, keeping the outbox and the
//     device's dot counters;
//  3. start over in the new epoch: the next session downloads the
//     conversations afresh, in the server's new order.
//
// It is heavy, and rare: it runs only when an operator restored a backup.
func (d *Device) repairAll(ctx context.Context, sc ferryv1connect.SyncServiceClient, epoch string) error {
	d.mu.Lock()
	me := d.creds.User
	convs := make([]ulid.ULID, 0, len(d.convs))
	for id := range d.convs {
		// Those the user left too: the restored store may have them a
		// member still, and their leave is among the ops to give back.
		convs = append(convs, id)
	}
	d.mu.Unlock()
	gone := map[ulid.ULID]bool{}
	for _, conv := range convs {
		known, err := d.repairConv(ctx, sc, conv, me)
		if err != nil {
			return err
		}
		if !known {
			gone[conv] = true
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.db.NewBatch()
	for _, t := range []byte{tOp, tOpID, tEdit, tDeleted} {
		b.DeleteRange([]byte{t}, []byte{t + 1})
	}
	var forgot []Event
	for id, c := range d.convs {
		if gone[id] && !d.pendingInLocked(id) {
			// Nothing of it to show or acknowledge: a marker for it would
			// be refused as not found, for good. One with ops in the
			// outbox stays: its create may be among them, and the others'
			// answers need it.
			delete(d.convs, id)
			b.Delete(idKey(tConv, id))
			forgot = append(forgot, ConversationChanged{Conv: id})
			continue
		}
		*c = convRecord{NextDot: c.NextDot, Title: c.Title, Role: c.Role, Removed: c.Removed, Changed: c.Changed}
		b.Set(idKey(tConv, id), encodeJSON(c))
	}
	b.Set(metaKey("epoch"), encodeJSON(epoch))
	b.Set(metaKey("feedpos"), encodeJSON(uint64(0)))
	if err := d.db.Commit(b); err != nil {
		return err
	}
	d.epoch, d.feedPos = epoch, 0
	clear(d.states)
	clear(d.stateUse)
	d.emit(forgot...)
	d.log.Info("repaired after a server restore; downloading again", "conversations", len(convs), "epoch", epoch)
	return nil
}

// repairConv pushes the ops of user me in conv that the server lacks. It
// reports false when the server does not know conv and it is not me's to
// create again.
func (d *Device) repairConv(ctx context.Context, sc ferryv1connect.SyncServiceClient, conv ulid.ULID, me string) (known bool, _ error) {
	d.mu.Lock()
	byDot := map[string]map[uint64]*ferryv1.Op{} // device -> dot -> op
	err := scanPrefix(d.db, idKey(tOp, conv), func(_, v []byte) error {
		p, err := decodeOp(v)
		if err != nil {
			return err
		}
		if byDot[p.GetDeviceId()] == nil {
			byDot[p.GetDeviceId()] = map[uint64]*ferryv1.Op{}
		}
		byDot[p.GetDeviceId()][p.GetDot()] = p
		return nil
	})
	d.mu.Unlock()
	if err != nil {
		return false, err
	}
	var have []model.Dot
	for dev, dots := range byDot {
		id, err := wire.ParseID("device id", dev)
		if err != nil {
			return false, err
		}
		n := uint64(0)
		for dots[n+1] != nil {
			n++
		}
		have = append(have, model.Dot{Device: id, N: n})
	}
	resp, err := sc.Repair(ctx, &ferryv1.RepairRequest{ConversationId: conv.String(), Vector: wire.VectorToProto(model.NewVector(have...))})
	var push []*ferryv1.Op
	recreate := false
	switch {
	case connect.CodeOf(err) == connect.CodeNotFound:
		// The restored store is older than the conversation. Its creator
		// gives it back, create first, with every op of the user's held;
		// the other members' devices give theirs back if they repair
		// after that, and otherwise lose them.
		for _, dots := range byDot {
			for _, op := range dots {
				if op.GetUserId() == me {
					push = append(push, op)
				}
			}
		}
		slices.SortFunc(push, func(a, b *ferryv1.Op) int { return cmp.Compare(a.GetSeq(), b.GetSeq()) })
		// An op of a kind this version does not know is held without its
		// payload: its device gives it back, and the ops of that device
		// after it, which would go in a dot gap.
		newer := map[string]bool{} // devices
		push = slices.DeleteFunc(push, func(op *ferryv1.Op) bool {
			newer[op.GetDeviceId()] = newer[op.GetDeviceId()] || op.GetPayload() == nil
			return newer[op.GetDeviceId()]
		})
		recreate = true
		if len(push) == 0 || push[0].GetCreate() == nil {
			d.log.Warn("repair: the server does not know the conversation, and this device holds no create of its user's to give it back with", "conv", conv)
			return false, nil
		}
		d.log.Warn("repair: the server does not know the conversation; creating it again with this user's ops", "conv", conv, "ops", len(push))
	case err != nil:
		return false, fmt.Errorf("ferry: repair %s: %w", conv, err)
	default:
		for _, w := range resp.GetWant() {
			for n := w.GetFromDot(); n <= w.GetToDot(); n++ {
				op := byDot[w.GetDeviceId()][n]
				if op == nil || op.GetUserId() != me || op.GetPayload() == nil {
					// Not held, not ours to vouch for, or of a kind this
					// version does not know (held without its payload):
					// its device gives it back.
					break
				}
				push = append(push, op)
			}
		}
	}
	// In the order the ops had: the server lists the wanted ranges device
	// by device, and an op of one device may target another's (a reaction
	// to a message sent from the user's other device), which must go
	// first. Each device's dots keep their order.
	slices.SortFunc(push, func(a, b *ferryv1.Op) int { return cmp.Compare(a.GetSeq(), b.GetSeq()) })
	for i, op := range push {
		push[i] = &ferryv1.Op{Id: op.GetId(), DeviceId: op.GetDeviceId(), Dot: op.GetDot(), Payload: op.GetPayload()}
	}
	d.mu.Lock()
	limit := d.maxMessage - pushFraming
	d.mu.Unlock()
	return d.giveBack(ctx, sc, conv, push, recreate, limit)
}

// giveBack pushes ops, of devices of the user, to conv in their order: a
// repair's. It reports false when ops begin with conv's create and the
// server refuses it.
//
// An op the server refuses takes no dot, so the same device's later ops,
// numbered after it, would be refused as a dot gap and lost. Those go
// again, a dot lower: in the dot the refused op left free, which another
// device of the user can then no longer give it back in, even once its
// target is back. Another device of the user may have done so first:
// then the ops both hold are on the server under other dots (the server
// answers op id conflicts for them), and the device's ops after those go
// where the server stands. A dot gap after a hole in what this device
// holds of a device renumbers nothing: the hole's ops may come from
// another device.
//
// A piece pushed holds one device's ops: so none of another device's can
// overtake the ops that go again, which would change what ops applied in
// seq order (edits, reactions, roles) come to. That costs a push for each
// run of one device's ops, and one more for each refused op: a repair is
// rare, and the ops it gives back are one conversation's since the
// backup.
func (d *Device) giveBack(ctx context.Context, sc ferryv1connect.SyncServiceClient, conv ulid.ULID, push []*ferryv1.Op, recreate bool, limit int) (bool, error) {
	afterHole := map[string]bool{} // op ids
	holed := map[string]bool{}     // devices
	last := map[string]uint64{}    // device -> its latest dot in push
	for _, op := range push {
		dev := op.GetDeviceId()
		if prev, seen := last[dev]; seen && op.GetDot() != prev+1 || !seen && recreate && op.GetDot() != 1 {
			holed[dev] = true
		}
		afterHole[op.GetId()] = holed[dev]
		last[dev] = op.GetDot()
	}
	renumbered := map[string]bool{} // devices whose dots here may not be the server's
	for rounds := 2*len(push) + 2; len(push) > 0; rounds-- {
		if rounds == 0 { // only while another device of the user pushes too
			d.log.Warn("repair: ops still refused as dot gaps after renumbering; giving them up", "conv", conv, "ops", len(push))
			break
		}
		run := 1
		for run < len(push) && push[run].GetDeviceId() == push[0].GetDeviceId() {
			run++
		}
		n := pushPiece(push[:run], limit)
		r, err := sc.Push(ctx, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv.String(), Ops: push[:n]}}})
		if err != nil {
			return false, fmt.Errorf("ferry: repair %s: push: %w", conv, err)
		}
		next := n
		for i, res := range r.GetResults() {
			if i >= n || res.GetStatus() != ferryv1.OpStatus_OP_STATUS_REJECTED {
				continue
			}
			if recreate && i == 0 { // the create: the rest would be refused as not found
				d.log.Warn("repair: the server refused to create the conversation again; forgetting it", "conv", conv, "reason", res.GetReason(), "msg", res.GetMessage())
				return false, nil
			}
			op, dev, reason := push[i], push[i].GetDeviceId(), res.GetReason()
			if reason == ferryv1.RejectReason_REJECT_REASON_OP_ID_CONFLICT {
				// The user's other device gave it back first, under
				// another dot: it is there.
				renumbered[dev] = true
				d.log.Debug("repair: an op given back already, under another dot", "conv", conv, "op", res.GetOpId())
				continue
			}
			if reason == ferryv1.RejectReason_REJECT_REASON_DOT_GAP && renumbered[dev] && !afterHole[op.GetId()] {
				// It and the rest go again, from where the server stands.
				shift := op.GetDot() - (res.GetServerDot() + 1)
				for _, o := range push[i:] {
					if o.GetDeviceId() == dev {
						o.Dot -= shift
					}
				}
				next = i
				break
			}
			d.log.Warn("repair: the server refused an op back", "conv", conv, "op", res.GetOpId(), "reason", reason, "msg", res.GetMessage())
			if reason != ferryv1.RejectReason_REJECT_REASON_DOT_GAP && reason != ferryv1.RejectReason_REJECT_REASON_DOT_REUSED {
				renumbered[dev] = true
			}
		}
		recreate = false
		push = push[next:]
	}
	return true, nil
}

// pushPiece is how many of ops, at least one, go in one push: at most
// maxPush, and as many as keep within limit bytes.
func pushPiece(ops []*ferryv1.Op, limit int) int {
	size := 0
	for i, op := range ops {
		n := proto.Size(op) + 48 // the op's field and its batch's
		if i == maxPush || i > 0 && size+n > limit {
			return i
		}
		size += n
	}
	return len(ops)
}

// pendingInLocked reports whether the outbox holds ops of conv. d.mu is
// held.
func (d *Device) pendingInLocked(conv ulid.ULID) bool {
	for _, ref := range d.pending {
		if ref.conv == conv {
			return true
		}
	}
	return false
}
