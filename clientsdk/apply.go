package clientsdk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/clientsdk/internal/kv"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/failpoint"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

// tEdit indexes edits by their target, so a delete can erase them locally.
const tEdit byte = 0x13

func editKey(conv, target ulid.ULID, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(append(idKey(tEdit, conv), target[:]...), seq)
}

// tDeleted lists the messages whose delete the replica holds, so that a
// copy of the message or of an edit stored after it (from the outbox, its
// push's answer late) is stored erased, as the server holds it.
const tDeleted byte = 0x14

func deletedKey(conv, target ulid.ULID) []byte { return append(idKey(tDeleted, conv), target[:]...) }

// storing is one batch of the replica's writes of ops, with what a later
// op of the batch looks up of the earlier ones, which the batch does not
// give back before its commit: the messages deleted in it, and the ops
// stored in it with a body, which a delete after them erases.
//
// Only the device's own ops, stored from the outbox as their push is
// answered, are looked at (own): a copy from the server was read after
// every delete before it, and comes erased.
type storing struct {
	b       *kv.Batch
	own     bool
	deleted map[convMsg]bool
	bodies  map[convMsg][]bodyOp // a message's own op and its edits
}

type convMsg struct{ conv, msg ulid.ULID }

type bodyOp struct {
	seq uint64
	p   *ferryv1.Op
}

func newStoring(b *kv.Batch, own bool) *storing { return &storing{b: b, own: own} }

// ErrClosed is returned by a Device's calls after Close.
var ErrClosed = kv.ErrClosed

// gap is a range of seqs the replica lacks and the session will not send.
type gap struct {
	conv           ulid.ULID
	after, through uint64
}

// catchUpRanks are the places in the conversation list (convRecord.Changed)
// kept for a catch-up's conversations: its Conversations messages list
// them most recently changed first, each message after the last, so the
// first one listed takes the highest place and each next one the place
// below.
type catchUpRanks struct {
	next, left uint64
	// below is changed before the places were kept: what a catch-up cut
	// off placed lies between Device.catchUpFrom and it (a send since
	// lies above, and keeps its place).
	below uint64
}

// reserveRanks keeps places for n conversations above every conversation
// the device lists now; what moves later (a send, a live round) goes
// above them. d.mu is held.
func (d *Device) reserveRanks(n uint32) catchUpRanks {
	if !d.catchingUp {
		d.catchingUp, d.catchUpFrom = true, d.changed
	}
	below := d.changed
	d.changed += uint64(n)
	return catchUpRanks{next: d.changed, left: uint64(n), below: below}
}

// take is the place of the catch-up's next conversation; false when every
// place kept is taken.
func (r *catchUpRanks) take() (uint64, bool) {
	if r.left == 0 {
		return 0, false
	}
	r.left--
	r.next--
	return r.next + 1, true
}

// moves reports whether ci moves its conversation up the list, whose
// order is the conversations' last activity: a new one, new ops or the
// user's removal move it; markers (the user's reads on another device,
// the members' receipts) do not. rec is the device's record of it, or nil.
func moves(rec *convRecord, ci *ferryv1.ConversationInfo) bool {
	return rec == nil || ci.GetHead() > rec.Head || ci.GetRemoved() != rec.Removed
}

// applyInfos records what the server says of changed conversations. It
// returns the gaps to fetch: the server resumes after its record of what
// this device holds, and a replica that holds less (restored from a backup,
// or an ack that outran a local write) must fetch the difference, never
// skip it. ranks, during a catch-up, places the conversations it moves in
// the list (nil: live, where each message's infos move theirs above all).
func (d *Device) applyInfos(infos []*ferryv1.ConversationInfo, ranks *catchUpRanks) ([]gap, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	b := d.db.NewBatch()
	var gaps []gap
	var evs []Event
	// A catch-up's conversations take the places kept for them, the most
	// recently changed (listed first) the highest: those it moves, and
	// those an earlier catch-up cut off placed (it placed them above the
	// rest of its own, which come in this one's places, above them). Not
	// those live rounds or sends moved since the last catch-up completed:
	// the server's order counts markers, which they are not moved by.
	ids := make([]ulid.ULID, len(infos))
	places := make([]uint64, len(infos)) // 0: none
	for i, ci := range infos {
		var err error
		if ids[i], err = wire.ParseID("conversation id", ci.GetId()); err != nil {
			return nil, err
		}
		if rec := d.convs[ids[i]]; ranks != nil && (moves(rec, ci) || rec.Changed > d.catchUpFrom && rec.Changed <= ranks.below) {
			places[i], _ = ranks.take()
		}
	}
	for i := len(infos) - 1; i >= 0; i-- { // the list is most recent first
		ci, id := infos[i], ids[i]
		rec := d.convs[id]
		moved := moves(rec, ci)
		if rec == nil {
			rec = &convRecord{}
			d.convs[id] = rec
		}
		rec.Title, rec.Role, rec.Removed = ci.GetTitle(), ci.GetRole(), ci.GetRemoved()
		rec.Head, rec.Unread, rec.Members = ci.GetHead(), ci.GetUnread(), ci.GetMemberCount()
		rec.InfoHead = ci.GetHead()
		rec.Delivered, rec.Read = ci.GetDelivered(), ci.GetRead()
		rec.NoReceipts = ci.GetNoReceipts()
		rec.Receipts = rec.Receipts[:0]
		for _, r := range ci.GetReceipts() {
			rec.Receipts = append(rec.Receipts, receiptRecord{User: r.GetUserId(), Delivered: r.GetDelivered(), Read: r.GetRead()})
		}
		switch {
		case places[i] != 0:
			rec.Changed = places[i]
		case moved: // live, or past the places kept
			d.changed++
			rec.Changed = d.changed
		}
		if ms, ok := d.members[id]; !ci.GetRemoved() && (!ok || len(ms) != int(ci.GetMemberCount())) {
			d.memberRefresh[id] = true
		}
		if p, after := rec.prefix(), ci.GetResumeAfter(); p < after {
			gaps = append(gaps, gap{conv: id, after: p, through: after})
		}
		b.Set(idKey(tConv, id), encodeJSON(rec))
		evs = append(evs, ConversationChanged{Conv: id})
	}
	if err := d.db.Commit(b); err != nil {
		return nil, err
	}
	d.emit(evs...)
	return gaps, nil
}

// fetch fills a gap with History pages.
func (d *Device) fetch(ctx context.Context, sc ferryv1connect.SyncServiceClient, g gap) error {
	after := g.after
	for after < g.through {
		page, err := sc.History(ctx, &ferryv1.HistoryRequest{ConversationId: g.conv.String(),
			Range: &ferryv1.HistoryRequest_AfterSeq{AfterSeq: after}, Limit: 1000})
		if err != nil {
			return fmt.Errorf("ferry: fetch %s after %d: %w", g.conv, after, err)
		}
		ops := page.GetOps()
		for len(ops) > 0 && ops[len(ops)-1].GetSeq() > g.through {
			ops = ops[:len(ops)-1]
		}
		if len(ops) == 0 {
			return nil
		}
		b, err := parseRows(&ferryv1.OpBatch{ConversationId: g.conv.String(), Ops: ops})
		if err == nil {
			_, err = d.applyOps([]received{b})
		}
		if err != nil {
			return &TerminalError{Err: err}
		}
		after = ops[len(ops)-1].GetSeq()
	}
	return nil
}

// membershipChanged has conv's member list fetched again (memberRefresh)
// when op, stored, changed its membership: the list's count may not have
// moved (a role, or one member out and another in). d.mu is held.
func (d *Device) membershipChanged(conv ulid.ULID, op *model.Op) {
	if op.Kind.HasMember() {
		d.memberRefresh[conv] = true
	}
}

// outboxChanged is the MessagesChanged of p, an op of the outbox with id
// id that was refused or dismissed.
func outboxChanged(conv, id ulid.ULID, p *ferryv1.Op) MessagesChanged {
	if op, err := wire.Op("op", conv, p); err == nil {
		return messagesChanged(conv, []*model.Op{&op})
	}
	return MessagesChanged{Conv: conv, IDs: []ulid.ULID{id}}
}

// received is a batch of one conversation's ops from the server, parsed:
// ops[i] is rows[i], the form the replica stores.
type received struct {
	conv ulid.ULID
	ops  []model.Op
	rows []*ferryv1.Op
}

// parseRows parses a batch the server sent as rows.
func parseRows(b *ferryv1.OpBatch) (received, error) {
	conv, err := wire.ParseID("conversation id", b.GetConversationId())
	if err != nil {
		return received{}, err
	}
	r := received{conv: conv, ops: make([]model.Op, len(b.GetOps())), rows: b.GetOps()}
	for i, p := range b.GetOps() {
		if r.ops[i], err = wire.ReceivedOp("op", conv, p); err != nil {
			return received{}, err
		}
		if r.ops[i].Seq == 0 {
			return received{}, fmt.Errorf("ferry: server sent op %s without a seq", r.ops[i].ID)
		}
	}
	return r, nil
}

// applyOps stores batches of ops in the replica with one synced commit and
// returns how many were new. An op already held (a resend) is skipped; an
// op of the outbox (this device's, echoed) leaves it; a delete erases the
// bodies it deletes.
func (d *Device) applyOps(batches []received) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return 0, ErrClosed
	}
	b := d.db.NewBatch()
	st := newStoring(b, false)
	added := 0
	var evs []Event
	for _, bt := range batches {
		conv := bt.conv
		rec := d.convs[conv]
		if rec == nil {
			rec = &convRecord{}
			d.convs[conv] = rec
		}
		var news []*model.Op
		moved := false
		for i := range bt.ops {
			op := &bt.ops[i]
			fresh, err := d.storeOp(st, rec, op, bt.rows[i])
			if err != nil {
				return 0, err
			}
			if !fresh {
				continue
			}
			added++
			news = append(news, op)
			d.membershipChanged(conv, op)
			moved = moved || op.Seq > rec.Head
		}
		if len(news) > 0 {
			// Ops up to the head the conversation's info gave moved it in
			// the list then (in the order of the infos, which a catch-up's
			// pages do not keep); ops past it are activity it did not say.
			if moved {
				d.changed++
				rec.Changed = d.changed
			}
			evs = append(evs, messagesChanged(conv, news), ConversationChanged{Conv: conv})
		}
		b.Set(idKey(tConv, conv), encodeJSON(rec))
	}
	if err := d.db.Commit(b); err != nil {
		return 0, err
	}
	d.emit(evs...)
	return added, nil
}

// storeOp adds one op to the batch and the in-memory state. d.mu is held.
func (d *Device) storeOp(st *storing, rec *convRecord, op *model.Op, p *ferryv1.Op) (bool, error) {
	b, conv := st.b, op.Conv
	if rec.holds(op.Seq) {
		return false, nil
	}
	if _, err := d.db.Get(opIDKey(conv, op.ID)); err == nil {
		return false, nil // held under another seq (a server that lost its store): keep ours
	} else if !errors.Is(err, kv.ErrNotFound) {
		return false, err
	}
	if msg, ok := bodyOf(op); ok && st.own {
		deleted, err := d.deletedLocal(st, convMsg{conv, msg})
		if err != nil {
			return false, err
		}
		if deleted {
			// The server erased it with its delete: a copy of the device's
			// own, from the outbox, must not keep the body here.
			p = eraseOp(p)
			op.Body, op.ContentType, op.Erased = nil, "", true
		} else {
			k := convMsg{conv, msg}
			if st.bodies == nil {
				st.bodies = map[convMsg][]bodyOp{}
			}
			st.bodies[k] = append(st.bodies[k], bodyOp{op.Seq, p})
		}
	}
	b.Set(opKey(conv, op.Seq), encodeOp(p))
	b.Set(opIDKey(conv, op.ID), binary.BigEndian.AppendUint64(nil, op.Seq))
	rec.addRange(op.Seq, op.Seq)
	switch op.Kind {
	case model.KindEdit:
		b.Set(editKey(conv, op.Target, op.Seq), nil)
	case model.KindDelete:
		if err := d.eraseLocal(st, conv, op.Target); err != nil {
			return false, err
		}
	}
	if ref, ok := d.pending[op.ID]; ok {
		b.Delete(seqKey(tOutbox, ref.local))
		delete(d.pending, op.ID)
	}
	if s := d.states[conv]; s != nil {
		s.Apply(op)
	}
	return true, nil
}

// bodyOf reports the message whose body, or an edit of it, op carries.
func bodyOf(op *model.Op) (ulid.ULID, bool) {
	switch {
	case op.Erased:
		return ulid.ULID{}, false
	case op.Kind == model.KindMessage:
		return op.ID, true
	case op.Kind == model.KindEdit:
		return op.Target, true
	}
	return ulid.ULID{}, false
}

// deletedLocal reports whether the replica holds the delete of a message,
// stored in st or before. d.mu is held.
func (d *Device) deletedLocal(st *storing, m convMsg) (bool, error) {
	if st.deleted[m] {
		return true, nil
	}
	_, err := d.db.Get(deletedKey(m.conv, m.msg))
	if errors.Is(err, kv.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// eraseOp returns a copy of p without its body, marked erased.
func eraseOp(p *ferryv1.Op) *ferryv1.Op {
	p = proto.Clone(p).(*ferryv1.Op)
	switch pl := p.GetPayload().(type) {
	case *ferryv1.Op_Message:
		pl.Message.Body, pl.Message.ContentType = nil, ""
	case *ferryv1.Op_Edit:
		pl.Edit.Body, pl.Edit.ContentType = nil, ""
	}
	p.Erased = true
	return p
}

// eraseLocal removes the bodies of a deleted message and its edits from the
// replica, as the server did, those stored in st too, and notes the delete
// for the copies of them stored after it. d.mu is held.
func (d *Device) eraseLocal(st *storing, conv, target ulid.ULID) error {
	b, k := st.b, convMsg{conv, target}
	b.Set(deletedKey(conv, target), nil)
	if st.deleted == nil {
		st.deleted = map[convMsg]bool{}
	}
	st.deleted[k] = true
	for _, o := range st.bodies[k] {
		b.Set(opKey(conv, o.seq), encodeOp(eraseOp(o.p)))
	}
	delete(st.bodies, k)
	var seqs []uint64
	if raw, err := d.db.Get(opIDKey(conv, target)); err == nil {
		seqs = append(seqs, binary.BigEndian.Uint64(raw))
	} else if !errors.Is(err, kv.ErrNotFound) {
		return err
	}
	err := scanPrefix(d.db, append(idKey(tEdit, conv), target[:]...), func(k, _ []byte) error {
		seqs = append(seqs, binary.BigEndian.Uint64(k[len(k)-8:]))
		return nil
	})
	if err != nil {
		return err
	}
	for _, seq := range seqs {
		raw, err := d.db.Get(opKey(conv, seq))
		if err != nil {
			return err
		}
		p, err := decodeOp(raw)
		if err != nil {
			return err
		}
		b.Set(opKey(conv, seq), encodeOp(eraseOp(p)))
	}
	return nil
}

// results handles a push's answers: accepted ops leave the outbox and join
// the replica; ops refused for good move to the failed list and the
// device's later ops in their conversation are renumbered (a refused op
// does not take its dot); dot errors renumber from where the server stands.
func (s *session) results(pr *ferryv1.PushResult) error {
	failpoint.Hit(failpoint.SDKAfterResult)
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	b := d.db.NewBatch()
	st := newStoring(b, true)
	renumber := map[convDevice]renumbering{} // how to number a device's pending ops in a conversation again
	var evs []Event
	var touched []ulid.ULID // conversations whose messages changed: their last may have
	later, why := false, "" // the server asked to push ops again later, and why
	took := false           // the server stored an op of the push, or had it
	after := time.Duration(pr.GetRetryAfterMs()) * time.Millisecond
	for _, r := range pr.GetResults() {
		// Even for an op whose echo came first, and is no longer pending:
		// the server took it, or turned the push away and would the next.
		switch r.GetStatus() {
		case ferryv1.OpStatus_OP_STATUS_ACCEPTED, ferryv1.OpStatus_OP_STATUS_DUPLICATE:
			took = true
		case ferryv1.OpStatus_OP_STATUS_RETRY_LATER:
			if r.GetReason() == ferryv1.RejectReason_REJECT_REASON_CONVERSATION_DAMAGED {
				// Its conversation's ops wait; the others' go on.
				if conv, err := wire.ParseID("conversation id", r.GetConversationId()); err == nil {
					s.holdConv(conv, after, r.GetMessage())
					break
				}
			}
			later = true
			if why == "" { // the push's first such result says why
				why = r.GetMessage()
			}
		}
		id, err := wire.ParseID("op id", r.GetOpId())
		if err != nil {
			// Not an op of ours: the server answers an op it cannot read
			// with the id it was sent, and this device sends ULIDs.
			continue
		}
		ref, ok := d.pending[id]
		if !ok {
			continue // already confirmed by its echo
		}
		entry, op, err := d.outboxOp(ref.local)
		if err != nil {
			return err
		}
		dev, err := wire.ParseID("device id", op.GetDeviceId())
		if err != nil {
			return err
		}
		at := convDevice{ref.conv, dev}
		switch r.GetStatus() {
		case ferryv1.OpStatus_OP_STATUS_ACCEPTED, ferryv1.OpStatus_OP_STATUS_DUPLICATE:
			op.Seq = r.GetSeq()
			op.UserId = d.creds.User
			m, err := wire.Op("op", ref.conv, op)
			if err != nil {
				return err
			}
			rec := d.convs[ref.conv]
			if _, err := d.storeOp(st, rec, &m, op); err != nil {
				return err
			}
			if m.Kind == model.KindMessage && m.Seq >= rec.Head && rec.Read < m.Seq {
				// The server raises an author's read marker to their
				// message, with nothing unread before it, and a round that
				// left the message out (Hello.skip_own_ops) may say nothing
				// of it. The newest op the device knows of: an info with
				// more is still to come.
				rec.Read, rec.Unread = m.Seq, 0
			}
			rec.Head = max(rec.Head, m.Seq)
			b.Set(idKey(tConv, ref.conv), encodeJSON(rec))
			b.Delete(seqKey(tOutbox, ref.local))
			delete(d.pending, id)
			d.membershipChanged(ref.conv, &m)
			evs = append(evs, messagesChanged(ref.conv, []*model.Op{&m}))
			if !slices.Contains(touched, ref.conv) {
				touched = append(touched, ref.conv)
			}
		case ferryv1.OpStatus_OP_STATUS_RETRY_LATER:
			// Not stored, for now: it stays pending, and goes again as it
			// is once the server's delay has passed (flush holds every
			// push until then).
		case ferryv1.OpStatus_OP_STATUS_REJECTED:
			switch r.GetReason() {
			case ferryv1.RejectReason_REJECT_REASON_DOT_GAP, ferryv1.RejectReason_REJECT_REASON_DOT_REUSED:
				// The server stands at server_dot: number the pending ops of
				// this conversation from there.
				if cur, ok := renumber[at]; !ok || r.GetServerDot()+1 < cur.first {
					renumber[at] = renumbering{first: r.GetServerDot() + 1}
				}
			default:
				b.Delete(seqKey(tOutbox, ref.local))
				b.Set(seqKey(tFailed, ref.local), encodeJSON(failedEntry{Conv: entry.Conv, Op: entry.Op,
					Reason: r.GetReason().String(), Message: r.GetMessage(), At: d.opts.clock.Now().UnixMilli()}))
				delete(d.pending, id)
				d.failed[ref.conv] = append(d.failed[ref.conv], ref.local) // locals only grow
				if cur, ok := renumber[at]; !ok || op.GetDot() < cur.first {
					renumber[at] = renumbering{first: op.GetDot(), keep: true}
				}
				evs = append(evs, OpFailed{Conv: ref.conv, Op: id, Reason: reasonName(r.GetReason()), Message: r.GetMessage()},
					outboxChanged(ref.conv, id, op))
				if !slices.Contains(touched, ref.conv) {
					touched = append(touched, ref.conv)
				}
				d.log.Warn("op refused", "conv", ref.conv, "op", id, "reason", r.GetReason(), "msg", r.GetMessage())
			}
		}
	}
	if err := d.db.Commit(b); err != nil {
		return err
	}
	// The push's ops are out of the outbox now, or renumbered: flush,
	// which reads the outbox under d.mu, can no longer send them again.
	// An op a later push holds again (renumbered) stays in flight until
	// that push is answered.
	s.mu.Lock()
	for _, id := range s.inflight[pr.GetRequestId()] {
		if s.sent[id] == pr.GetRequestId() {
			delete(s.sent, id)
		}
	}
	delete(s.inflight, pr.GetRequestId())
	s.mu.Unlock()
	for at, how := range renumber {
		if err := d.renumber(at, how); err != nil {
			return err
		}
		// Renumbered ops must go again, in flight or not.
		s.mu.Lock()
		for id, ref := range d.pending {
			if ref.conv == at.conv {
				delete(s.sent, id)
			}
		}
		s.mu.Unlock()
	}
	for _, conv := range touched {
		evs = append(evs, ConversationChanged{Conv: conv})
	}
	released := false
	switch {
	case later:
		s.holdPushes(after, why)
	case took:
		// What turned ops away may be over. An answer that took nothing
		// (its ops refused for a dot gap behind the held ones, say)
		// tells nothing of it.
		released = s.releasePushes()
	}
	d.emit(append(evs, StatusChanged{Status: d.statusLocked()})...)
	if len(renumber) > 0 || released {
		s.wakeFlush()
	}
	return nil
}

func reasonName(r ferryv1.RejectReason) string {
	n := r.String()
	if len(n) > len("REJECT_REASON_") {
		return n[len("REJECT_REASON_"):]
	}
	return n
}

// outboxOp reads an outbox entry. d.mu is held.
func (d *Device) outboxOp(local uint64) (outboxEntry, *ferryv1.Op, error) {
	var e outboxEntry
	ok, err := getJSON(d.db, seqKey(tOutbox, local), &e)
	if err != nil {
		return e, nil, err
	}
	if !ok {
		return e, nil, fmt.Errorf("%w: outbox entry %d is missing", errCorrupt, local)
	}
	op, err := decodeOp(e.Op)
	return e, op, err
}

// renumbering says how to number a device's pending ops in a conversation
// again: from first, or, with keep (an op refused for good, whose dot is
// free again), from the first pending op's own dot when it is lower: ops
// before the refused one that the server has yet to take (answered
// RETRY_LATER with it, or in another push in flight) keep their dots.
type renumbering struct {
	first uint64
	keep  bool
}

// renumber gives the pending ops of at.device in at.conv the dots from
// how's first on, in outbox order, and moves the conversation's NextDot
// when the device is the profile's. d.mu is held.
func (d *Device) renumber(at convDevice, how renumbering) error {
	var locals []uint64
	for _, ref := range d.pending {
		if ref.conv == at.conv {
			locals = append(locals, ref.local)
		}
	}
	slices.Sort(locals)
	b := d.db.NewBatch()
	dot, n := how.first, 0
	from := dot // the first op's, for the log
	for _, l := range locals {
		e, op, err := d.outboxOp(l)
		if err != nil {
			return err
		}
		if op.GetDeviceId() != at.device.String() {
			continue // another device's, counted apart (see signIn)
		}
		if n == 0 {
			if how.keep {
				dot = min(dot, op.GetDot())
			}
			from = dot
		}
		op.Dot = dot
		dot++
		n++
		e.Op = encodeOp(op)
		e.Attempts++
		b.Set(seqKey(tOutbox, l), encodeJSON(e))
	}
	if d.creds != nil && at.device.String() == d.creds.Device {
		rec := d.convs[at.conv]
		rec.NextDot = dot - 1
		b.Set(idKey(tConv, at.conv), encodeJSON(rec))
	}
	d.log.Info("renumbered pending ops", "conv", at.conv, "device", at.device, "from", from, "ops", n)
	return d.db.Commit(b)
}

// convDevice is a device's dots in a conversation. The outbox holds
// another device's ops besides the profile's own after a sign-in as the
// same user kept them (a device the server refused, or one logged out):
// they go as that device's, numbered apart.
type convDevice struct{ conv, device ulid.ULID }
