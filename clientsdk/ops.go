package clientsdk

import (
	"context"
	"errors"
	"fmt"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/failpoint"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// Role is a member's role in a conversation.
type Role = model.Role

// The roles. RoleNone is a removed member's (Conversation.Role).
const (
	RoleNone   = model.RoleNone
	RoleMember = model.RoleMember
	RoleAdmin  = model.RoleAdmin
	RoleOwner  = model.RoleOwner
)

// ErrUnknownConversation is returned for ops on a conversation the device
// has not seen (not yet synced, or not a member).
var ErrUnknownConversation = errors.New("ferry: unknown conversation: sync first, or check the id")

// pendingRef locates an outbox entry.
type pendingRef struct {
	local uint64
	conv  ulid.ULID
}

// enqueue validates ops for conv, gives them this device's next dots, and
// persists them in the outbox with a synced commit before returning: from
// then on they survive the process dying and go out, exactly once, when the
// device is connected. create allows a conversation the device does not
// know yet.
func (d *Device) enqueue(conv ulid.ULID, create bool, payloads ...func(*ferryv1.Op)) ([]ulid.ULID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	if d.creds == nil {
		return nil, ErrNotSignedIn
	}
	rec := d.convs[conv]
	switch {
	case rec == nil && !create:
		return nil, fmt.Errorf("%w: %s", ErrUnknownConversation, conv)
	case rec != nil && create:
		return nil, fmt.Errorf("ferry: conversation %s exists", conv)
	case rec != nil && rec.Removed:
		return nil, fmt.Errorf("ferry: you are no longer a member of %s", conv)
	case rec == nil:
		rec = &convRecord{Role: ferryv1.Role_ROLE_OWNER}
	}
	next := *rec
	device := ulid.MustParseStrict(d.creds.Device)
	b := d.db.NewBatch()
	ids := make([]ulid.ULID, 0, len(payloads))
	queued := make([]*model.Op, 0, len(payloads))
	local := d.nextLocal
	entries := map[ulid.ULID]uint64{}
	for _, pl := range payloads {
		next.NextDot++
		id, err := d.newOpID()
		if err != nil {
			return nil, fmt.Errorf("ferry: %w", err)
		}
		op := &ferryv1.Op{Id: id.String(), DeviceId: device.String(), Dot: next.NextDot}
		pl(op)
		m, err := wire.Op("op", conv, op)
		if err == nil {
			err = m.Validate(d.maxBody)
		}
		if err != nil {
			return nil, fmt.Errorf("ferry: %w", err)
		}
		if m.Kind == model.KindCreate {
			next.Title = m.Title // known before the server confirms it
		}
		local++
		b.Set(seqKey(tOutbox, local), encodeJSON(outboxEntry{Conv: conv.String(), Op: encodeOp(op), Created: d.opts.clock.Now().UnixMilli()}))
		ids = append(ids, m.ID)
		queued = append(queued, &m)
		entries[m.ID] = local
	}
	d.changed++
	next.Changed = d.changed
	b.Set(idKey(tConv, conv), encodeJSON(&next))
	if err := d.db.Commit(b); err != nil {
		return nil, fmt.Errorf("ferry: save to the outbox: %w", err)
	}
	*rec = next
	d.convs[conv] = rec
	d.nextLocal = local
	for id, l := range entries {
		d.pending[id] = pendingRef{local: l, conv: conv}
	}
	d.emit(messagesChanged(conv, queued), ConversationChanged{Conv: conv}, StatusChanged{Status: d.statusLocked()})
	failpoint.Hit(failpoint.SDKAfterEnqueue)
	select {
	case d.outboxWake <- struct{}{}:
	default:
	}
	return ids, nil
}

func (d *Device) one(conv ulid.ULID, pl func(*ferryv1.Op)) (ulid.ULID, error) {
	ids, err := d.enqueue(conv, false, pl)
	if err != nil {
		return ulid.ULID{}, err
	}
	return ids[0], nil
}

// CreateConversation creates a conversation with the given members (user
// ids; see LookupUser) and returns its id. Like every op it is stored in
// the outbox and sent when connected.
func (d *Device) CreateConversation(ctx context.Context, title string, members ...ulid.ULID) (ulid.ULID, error) {
	conv, err := d.newConvID()
	if err != nil {
		return ulid.ULID{}, fmt.Errorf("ferry: conversation id: %w", err)
	}
	pls := []func(*ferryv1.Op){func(o *ferryv1.Op) { o.Payload = &ferryv1.Op_Create{Create: &ferryv1.Create{Title: title}} }}
	for _, m := range members {
		pls = append(pls, func(o *ferryv1.Op) {
			o.Payload = &ferryv1.Op_MemberAdd{MemberAdd: &ferryv1.MemberAdd{UserId: m.String(), Role: ferryv1.Role_ROLE_MEMBER}}
		})
	}
	if _, err := d.enqueue(conv, true, pls...); err != nil {
		return ulid.ULID{}, err
	}
	return conv, nil
}

// Send sends a message and returns its id at once: the message is in the
// outbox, shown as pending, and goes out when the device is connected.
func (d *Device) Send(ctx context.Context, conv ulid.ULID, body []byte, contentType string) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_Message{Message: &ferryv1.Message{Body: body, ContentType: contentType}}
	})
}

// SendText sends a text/plain message.
func (d *Device) SendText(ctx context.Context, conv ulid.ULID, text string) (ulid.ULID, error) {
	return d.Send(ctx, conv, []byte(text), "text/plain")
}

// Edit replaces the body of one of the user's messages.
func (d *Device) Edit(ctx context.Context, conv, msg ulid.ULID, body []byte, contentType string) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_Edit{Edit: &ferryv1.Edit{TargetId: msg.String(), Body: body, ContentType: contentType}}
	})
}

// Delete deletes a message for everyone (the user's own, or any as an
// admin).
func (d *Device) Delete(ctx context.Context, conv, msg ulid.ULID) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) { o.Payload = &ferryv1.Op_Delete{Delete: &ferryv1.Delete{TargetId: msg.String()}} })
}

// React adds the user's reaction key (such as an emoji) to a message.
func (d *Device) React(ctx context.Context, conv, msg ulid.ULID, key string) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_ReactionAdd{ReactionAdd: &ferryv1.Reaction{TargetId: msg.String(), Key: key}}
	})
}

// Unreact removes the user's reaction key from a message.
func (d *Device) Unreact(ctx context.Context, conv, msg ulid.ULID, key string) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_ReactionRemove{ReactionRemove: &ferryv1.Reaction{TargetId: msg.String(), Key: key}}
	})
}

// AddMember adds a user as member or admin.
func (d *Device) AddMember(ctx context.Context, conv, user ulid.ULID, role Role) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_MemberAdd{MemberAdd: &ferryv1.MemberAdd{UserId: user.String(), Role: ferryv1.Role(role)}}
	})
}

// RemoveMember removes a user from the conversation.
func (d *Device) RemoveMember(ctx context.Context, conv, user ulid.ULID) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_MemberRemove{MemberRemove: &ferryv1.MemberRemove{UserId: user.String()}}
	})
}

// Leave removes the user from the conversation.
func (d *Device) Leave(ctx context.Context, conv ulid.ULID) (ulid.ULID, error) {
	a, err := d.Account()
	if err != nil {
		return ulid.ULID{}, err
	}
	return d.RemoveMember(ctx, conv, a.User)
}

// SetRole changes a member's role (owners only).
func (d *Device) SetRole(ctx context.Context, conv, user ulid.ULID, role Role) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_MemberRole{MemberRole: &ferryv1.MemberRole{UserId: user.String(), Role: ferryv1.Role(role)}}
	})
}

// SetTitle changes the conversation's title (admins and owners).
func (d *Device) SetTitle(ctx context.Context, conv ulid.ULID, title string) (ulid.ULID, error) {
	return d.one(conv, func(o *ferryv1.Op) { o.Payload = &ferryv1.Op_SetTitle{SetTitle: &ferryv1.SetTitle{Title: title}} })
}

// MarkRead marks conv read up to seq (0: everything held), and no further
// than the device knows conv goes. The marker is sent when connected; the
// user's other devices then clear their unread counts too.
func (d *Device) MarkRead(ctx context.Context, conv ulid.ULID, seq uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	rec := d.convs[conv]
	if rec == nil {
		return fmt.Errorf("%w: %s", ErrUnknownConversation, conv)
	}
	if seq == 0 {
		seq = rec.maxHeld()
	}
	// No further than the device knows the conversation goes: the server
	// keeps a read to its head anyway, and a conversation it does not
	// know (one kept through a repair for the ops queued in it) must send
	// no marker, which the server would refuse, stopping the session.
	seq = min(seq, max(rec.Head, rec.maxHeld()))
	if seq <= rec.ReadWanted || seq <= rec.AckedRead {
		return nil
	}
	next := *rec
	next.ReadWanted = seq
	if err := d.saveConv(conv, &next); err != nil {
		return err
	}
	*rec = next
	d.emit(ConversationChanged{Conv: conv})
	select {
	case d.ackWake <- struct{}{}:
	default:
	}
	return nil
}

// saveConv writes a conversation record. d.mu is held.
func (d *Device) saveConv(conv ulid.ULID, rec *convRecord) error {
	b := d.db.NewBatch()
	b.Set(idKey(tConv, conv), encodeJSON(rec))
	return d.db.Commit(b)
}

// maxHeld is the highest seq held.
func (c *convRecord) maxHeld() uint64 {
	if len(c.Ranges) == 0 {
		return 0
	}
	return c.Ranges[len(c.Ranges)-1][1]
}
