package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/units"
)

// AppendResult is the outcome of one op of an Append.
type AppendResult struct {
	Conv ulid.ULID
	Op   ulid.ULID
	// Seq is the op's seq when it was accepted now or before (Duplicate).
	Seq       uint64
	Duplicate bool
	// Err says why the op was rejected; nil when accepted or a duplicate. It
	// wraps ErrDotGap, ErrDotReused, ErrOpConflict, ErrNotFound, ErrForbidden,
	// ErrPrecondition, ErrConversationExists, ErrQuota or ErrDamaged (the
	// conversation is fenced off until the store is repaired: the op may be
	// sent again once it is).
	Err error
	// ServerDot is the server's highest dot from the op's author device in
	// the conversation, after this op.
	ServerDot uint64
}

// Append stores ops authored by a's user, in order, and returns one result
// per op once every accepted op is durable.
//
// An op's Dot.Device may be zero (meaning a.Device), a.Device, or another
// device of the same user: a device may re-upload its user's ops, as in
// repair. Seq and User are set by the engine. Each op is accepted or rejected
// on its own; a rejected op does not stop the others. A rejected op does not
// take its dot: the device's next op must reuse it, and later ops of the same
// device already numbered past it hit a dot gap until renumbered.
//
// If any op is malformed (model.Op.Validate), Append stores nothing and
// returns an error wrapping model.ErrInvalidOp; more than
// Options.MaxOpsPerAppend ops give ErrTooMany.
func (e *Engine) Append(ctx context.Context, a Actor, ops []model.Op) ([]AppendResult, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	if len(ops) > e.opts.MaxOpsPerAppend {
		return nil, fmt.Errorf("%w: %d ops in one push; the limit is %d", ErrTooMany, len(ops), e.opts.MaxOpsPerAppend)
	}
	// Only ops are refused for want of disk space: they are what grows
	// the store. Markers, devices and revocations write a few bytes each,
	// and refusing them would end sessions and leave stolen devices in.
	if err := e.disk.check(); err != nil {
		return nil, err
	}
	// Copy the ops and their bodies: if ctx ends first, Append returns while
	// the writer may still read them.
	ops = slices.Clone(ops)
	for i := range ops {
		op := &ops[i]
		op.Body = bytes.Clone(op.Body)
		if err := e.CheckOp(a, op); err != nil {
			return nil, err
		}
		op.Seq, op.User = 0, a.User
	}
	results := make([]AppendResult, len(ops))
	revoked := false
	err := e.write(ctx, len(ops), func(tx *txn) {
		if revoked = !tx.deviceActive(a); revoked {
			return
		}
		for i := range ops {
			results[i] = tx.append(a, &ops[i])
			if tx.err != nil {
				return
			}
		}
	})
	if err != nil {
		return nil, err
	}
	if revoked {
		return nil, fmt.Errorf("%w: device %s was revoked", ErrUnauthenticated, a.Device)
	}
	return results, nil
}

// MaxBodyBytes is the largest body the engine accepts.
func (e *Engine) MaxBodyBytes() int { return e.opts.MaxBodyBytes }

// CheckOp validates one op as Append would, filling in a zero author device
// with a.Device. It returns an error wrapping model.ErrInvalidOp.
func (e *Engine) CheckOp(a Actor, op *model.Op) error {
	if op.Erased {
		return fmt.Errorf("%w: op %s: erased is set by the server, not by clients", model.ErrInvalidOp, op.ID)
	}
	if op.Dot.Device == (ulid.ULID{}) {
		op.Dot.Device = a.Device
	}
	return op.Validate(e.opts.MaxBodyBytes)
}

// append accepts or rejects one op. It runs on the writer goroutine.
func (tx *txn) append(a Actor, op *model.Op) AppendResult {
	res := AppendResult{Conv: op.Conv, Op: op.ID}
	c := tx.conv(op.Conv)
	if tx.err != nil {
		return res
	}
	if c.damaged != nil {
		res.Err = c.damaged
		return res
	}
	dev := op.Dot.Device
	// reject answers with the error alone: where the server stands for a
	// device (ServerDot) is told only once the actor is known to be a member
	// who owns that device.
	reject := func(err error) AppendResult {
		res.Err = err
		return res
	}
	// A retry of the user's own op is answered even after they left or were
	// removed, so an outbox never shows an accepted op as failed. Anyone
	// else's op id tells a stranger nothing: membership comes first for them.
	prev, err := tx.lookupOp(c, op.ID)
	if err != nil {
		res.Err = tx.fence(c, err)
		return res
	}
	if prev != nil && prev.rec.User == a.User {
		if !samePayload(&prev.rec, op) {
			return reject(fmt.Errorf("%w: op %s was stored before with a different payload", ErrOpConflict, op.ID))
		}
		res.Seq, res.Duplicate = prev.rec.Seq, true
		res.ServerDot = c.vector[prev.rec.Dot.Device] // the op's own device, which is the user's
		return res
	}
	role := c.role(a.User)
	if c.exists && role == model.RoleNone {
		if c.members[a.User] != nil { // they left or were removed: they know it exists
			return reject(fmt.Errorf("%w: you are no longer a member of conversation %s", ErrForbidden, op.Conv))
		}
		return reject(fmt.Errorf("%w: conversation %s", ErrNotFound, op.Conv))
	}
	if prev != nil {
		return reject(fmt.Errorf("%w: op id %s is taken by another user's op", ErrOpConflict, op.ID))
	}
	if !c.exists && op.Kind != model.KindCreate {
		return reject(fmt.Errorf("%w: conversation %s", ErrNotFound, op.Conv))
	}
	if c.exists && op.Kind == model.KindCreate {
		return reject(fmt.Errorf("%w: conversation %s already exists", ErrConversationExists, op.Conv))
	}
	if dev != a.Device {
		owner, err := deviceUser(tx.v, dev)
		if corrupt(err) {
			return reject(fmt.Errorf("%w: the server cannot read the record of device %s, so it cannot tell it is one of yours", ErrForbidden, dev))
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			tx.fail(err)
			return res
		}
		if err != nil || owner != a.User {
			return reject(fmt.Errorf("%w: device %s is not one of your devices", ErrForbidden, dev))
		}
	}
	// The actor is a member (or creating) and owns dev: from here on every
	// answer says where the server stands for dev.
	have := c.vector[dev]
	res.ServerDot = have
	switch {
	case op.Dot.N <= have:
		return reject(fmt.Errorf("%w: dot %d of device %s is taken by another op; the server holds up to %d, so the device lost local state", ErrDotReused, op.Dot.N, dev, have))
	case op.Dot.N > have+1:
		return reject(fmt.Errorf("%w: dot %d of device %s arrived before dot %d; the server holds up to %d", ErrDotGap, op.Dot.N, dev, have+1, have))
	}

	var target *txOp
	if op.Kind == model.KindCreate {
		c.exists = true
	} else {
		facts := model.Facts{ActorRole: role, SubjectRole: c.role(op.Member), Owners: c.owners}
		if op.Kind.HasTarget() {
			var err error
			if target, err = tx.lookupOp(c, op.Target); err != nil {
				res.Err = tx.fence(c, err)
				return res
			}
			if target != nil {
				facts.Target = model.Target{Found: true, Kind: target.rec.Kind, User: target.rec.User, Deleted: target.rec.Erased}
			}
		}
		if err := model.Authorize(a.User, op, facts); err != nil {
			return reject(err)
		}
		if op.Kind == model.KindMemberAdd {
			switch ok, err := tx.v.Has(keys.ID1(keys.TUser, op.Member)); {
			case err != nil:
				tx.fail(err)
				return res
			case !ok:
				return reject(fmt.Errorf("%w: user %s does not exist", ErrPrecondition, op.Member))
			}
			if op.Member != a.User {
				switch blocked, err := tx.blocks(op.Member, a.User); {
				case err != nil:
					tx.fail(err)
					return res
				case blocked:
					return reject(fmt.Errorf("%w: user %s does not accept being added to conversations by you", ErrForbidden, op.Member))
				}
			}
			if int(c.rec.Members) >= tx.e.opts.MaxMembers {
				return reject(fmt.Errorf("%w: conversation %s has %d members, the most this server allows", ErrPrecondition, op.Conv, c.rec.Members))
			}
		}
	}

	// The quota, last: a retry of an op stored before passed above, and an
	// op refused for another reason was told that reason.
	size := opUsage(op, false)
	if q, own := tx.quotaOf(a.User); q > 0 && quotaApplies(op, a.User, target, c.role(op.Member)) {
		used := tx.usageOf(a.User).n
		if tx.err != nil {
			return res
		}
		if used+size > q {
			whose := "each user"
			if own {
				whose = "you"
			}
			return reject(fmt.Errorf("%w: your ops hold %s of the %s %s may store here, and this one needs %s more: delete some of your messages to make room (those in conversations you left count too)",
				ErrQuota, units.Bytes(used), units.Bytes(q), whose, units.Bytes(size)))
		}
	}

	// What the op goes on to read, read before anything changes: the
	// marker it raises (raiseRead), the edits a delete erases. One that
	// does not decode fences the conversation off.
	if who, raises := readRaiser(op, a.User); raises {
		if _, err := tx.loadMarker(keys.TUserMark, c.id, who); err != nil {
			res.Err = tx.fence(c, err)
			return res
		}
	}
	var edits []*txOp
	if op.Kind == model.KindDelete {
		var err error
		if edits, err = tx.editsOf(c, target); err != nil {
			res.Err = tx.fence(c, err)
			return res
		}
	}

	// Accept.
	c.rec.Head++
	seq := c.rec.Head
	c.vector[dev] = op.Dot.N
	c.newest.add(op.ID)
	c.feed, c.dirty = true, true
	if op.Kind == model.KindMessage {
		c.rec.Messages++
	}
	rec := &txOp{rec: record.Op{Op: *op, Messages: c.rec.Messages}, accepted: true}
	rec.rec.Seq = seq
	tx.putOp(rec) // finish writes it and its indexes
	tx.addUsage(a.User, size)

	switch op.Kind {
	case model.KindCreate:
		tx.setRole(c, a.User, model.RoleOwner, seq)
		c.rec.Title = op.Title
		tx.raiseRead(c, a.User, seq)
	case model.KindSetTitle:
		c.rec.Title = op.Title
	case model.KindMessage:
		// Sending implies having read everything before.
		tx.raiseRead(c, a.User, seq)
	case model.KindEdit:
		k := idPair{op.Conv, op.Target}
		tx.edits[k] = append(tx.edits[k], seq)
		tx.b.Set(keys.Edit(op.Conv, op.Target, seq), nil)
	case model.KindDelete:
		tx.erase(target, edits)
	case model.KindMemberAdd:
		tx.setRole(c, op.Member, op.Role, seq)
		// History before joining is not unread, and in the others'
		// receipts it is delivered and read: a message that everyone there
		// had read does not turn back to unread by someone when they join.
		tx.raiseRead(c, op.Member, seq)
	case model.KindMemberRemove:
		tx.setRole(c, op.Member, model.RoleNone, seq)
	case model.KindMemberRole:
		tx.setRole(c, op.Member, op.Role, seq)
	}
	res.Seq = seq
	res.ServerDot = op.Dot.N
	return res
}

func samePayload(stored *record.Op, op *model.Op) bool {
	if stored.Erased {
		return stored.Hash == model.PayloadHash(op)
	}
	return model.SamePayload(&stored.Op, op)
}

// setRole changes user's role in c, keeping the membership indexes and the
// owner count in step.
func (tx *txn) setRole(c *txConv, user ulid.ULID, role model.Role, seq uint64) {
	m := c.members[user]
	if m == nil {
		m = &record.Member{}
		c.members[user] = m
		if c.fresh == nil {
			c.fresh = map[ulid.ULID]bool{}
		}
		c.fresh[user] = true
	}
	if _, seen := c.before[user]; !seen {
		c.before[user] = m.Role
	}
	if m.Role == model.RoleOwner {
		c.owners--
	}
	if role == model.RoleOwner {
		c.owners++
	}
	switch {
	case m.Role == model.RoleNone && role != model.RoleNone:
		c.rec.Members++
		c.current[user] = m
		tx.b.Set(keys.ID2(keys.TUserConv, user, c.id), nil)
	case m.Role != model.RoleNone && role == model.RoleNone:
		c.rec.Members--
		delete(c.current, user)
	}
	m.Role, m.Since = role, seq
	// A removed member sees the conversation as it was when they left.
	m.Title = ""
	if role == model.RoleNone {
		m.Title = c.rec.Title
	}
	c.memberWrites[user] = true
}

// readRaiser returns whose marker op, by user, raises (raiseRead), if any.
func readRaiser(op *model.Op, user ulid.ULID) (ulid.ULID, bool) {
	switch op.Kind {
	case model.KindCreate, model.KindMessage:
		return user, true
	case model.KindMemberAdd:
		return op.Member, true
	}
	return ulid.ULID{}, false
}

// raiseRead moves user's markers up to seq: the op they just appended (a
// sender has received and read up to their own op, and everyone may see
// so: PublicRead, Delivered), or the one that added them. Their device's
// ack of the op then moves no receipt, which would move every member's
// feed for nothing. The device's marker keeps only what the device holds
// (record.Marker.Read), so a push writes one marker, not two.
func (tx *txn) raiseRead(c *txConv, user ulid.ULID, seq uint64) {
	u := tx.marker(keys.TUserMark, c.id, user)
	u.raiseRead(seq, c.rec.Messages, true)
	if u.m.PublicRead < seq || u.m.Delivered < seq {
		u.m.PublicRead, u.m.Delivered, u.dirty = max(u.m.PublicRead, seq), max(u.m.Delivered, seq), true
	}
}

// erase removes the body of a deleted message, target, and of its edits
// (editsOf) from the store, keeping a hash of each payload so retries are
// still recognised.
func (tx *txn) erase(target *txOp, edits []*txOp) {
	for _, o := range append([]*txOp{target}, edits...) {
		if o.rec.Erased {
			continue
		}
		tx.addUsage(o.rec.User, -opUsage(&o.rec.Op, false))
		o.rec.Hash = model.PayloadHash(&o.rec.Op)
		o.rec.Erased, o.rec.Body, o.rec.ContentType = true, nil, ""
		tx.putOp(o)
	}
}

// editsOf returns the edits of target, a message of c: those stored, and
// this group's.
func (tx *txn) editsOf(c *txConv, target *txOp) ([]*txOp, error) {
	var seqs []uint64
	err := scan(tx.v, keys.ID2(keys.TEdit, c.id, target.rec.ID), func(k, _ []byte) error {
		_, _, seq, ok := keys.ParseEdit(k)
		if !ok {
			return fmt.Errorf("%w: edit key %x", record.ErrCorrupt, k)
		}
		seqs = append(seqs, seq)
		return nil
	})
	if err != nil {
		return nil, err
	}
	seqs = append(seqs, tx.edits[idPair{c.id, target.rec.ID}]...)
	edits := make([]*txOp, 0, len(seqs))
	for _, seq := range seqs {
		o, err := tx.opBySeq(c.id, seq)
		if err != nil {
			return nil, err
		}
		edits = append(edits, o)
	}
	return edits, nil
}

// opBySeq returns the op at seq, from this group's writes or the view.
func (tx *txn) opBySeq(conv ulid.ULID, seq uint64) (*txOp, error) {
	for _, o := range tx.opOrder {
		if o.rec.Conv == conv && o.rec.Seq == seq {
			return o, nil
		}
	}
	rec, err := readOp(tx.v, conv, seq)
	if errors.Is(err, store.ErrNotFound) {
		err = fmt.Errorf("%w: the edit index names seq %d, which the log lacks", record.ErrCorrupt, seq)
	}
	if err != nil {
		return nil, err
	}
	if o := tx.ops[idPair{conv, rec.ID}]; o != nil {
		return o, nil
	}
	o := &txOp{rec: rec}
	tx.ops[idPair{conv, rec.ID}] = o
	return o, nil
}

// deviceUser returns the user a device belongs to, or ErrNotFound.
func deviceUser(v *store.View, device ulid.ULID) (ulid.ULID, error) {
	raw, err := v.Get(keys.ID1(keys.TDeviceOf, device))
	if errors.Is(err, store.ErrNotFound) {
		return ulid.ULID{}, fmt.Errorf("%w: device %s", ErrNotFound, device)
	}
	if err != nil {
		return ulid.ULID{}, err
	}
	return record.DecodeID(raw)
}
