package engine

import (
	"context"
	"fmt"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/model"
)

// Marker moves a device's markers in one conversation.
type Marker struct {
	Conv      ulid.ULID
	Delivered uint64 // the device stores every op up to this seq
	Read      uint64 // the user has seen every op up to this seq
	// Private keeps this read from other members' read receipts; it still
	// clears unread counts on the user's devices.
	Private bool
}

// Mark moves the actor device's delivered marker (where its next session
// resumes), and its user's markers (the maximum over the user's devices).
// Markers only move forward: lower values are ignored, and values beyond
// what the user can read are lowered to it.
//
// A read that moves the user's marker reaches the user's other devices
// through their feed. Delivered and public read positions also reach the
// other members as receipts in conversations of up to
// Options.ReceiptMembers members.
//
// A conversation the user cannot read fails the whole call with ErrNotFound
// and moves nothing. Markers of a damaged conversation (see damageSet) are
// dropped, and the others move.
func (e *Engine) Mark(ctx context.Context, a Actor, marks []Marker) error {
	return e.StartMark(ctx, a, marks).Wait(ctx)
}

// StartMark is Mark without the wait for its commit: it checks the markers
// and queues their write, and the Pending's Wait waits for the commit and
// returns what Mark would. A caller on a deep stack, such as a pooled
// goroutine, can leave the wait to a shallow one instead of being held for
// a commit.
func (e *Engine) StartMark(ctx context.Context, a Actor, marks []Marker) Pending {
	if len(marks) == 0 {
		return Pending{}
	}
	if len(marks) > e.opts.MaxOpsPerAppend {
		return Pending{err: fmt.Errorf("%w: %d markers in one ack; the limit is %d", ErrTooMany, len(marks), e.opts.MaxOpsPerAppend)}
	}
	for _, m := range marks {
		if m.Conv == (ulid.ULID{}) {
			return Pending{err: fmt.Errorf("%w: a marker has no conversation id", ErrInvalid)}
		}
	}
	var notFound ulid.ULID
	revoked := false
	r, err := e.queue(ctx, len(marks), func(tx *txn) {
		if revoked = !tx.deviceActive(a); revoked {
			return
		}
		limits := make([]uint64, len(marks))
		for i, m := range marks {
			c := tx.conv(m.Conv)
			if tx.err != nil {
				return
			}
			if c.damaged != nil {
				continue // dropped (see damageSet)
			}
			mem := c.members[a.User]
			if !c.exists || mem == nil {
				notFound = m.Conv
				return
			}
			// The markers mark moves, read before anything changes: the
			// user's, if it does not decode, fences the conversation off
			// (a device's is written anew: loadMarker).
			for _, k := range []struct {
				table byte
				who   ulid.ULID
			}{{keys.TDevMark, a.Device}, {keys.TUserMark, a.User}} {
				if _, err := tx.loadMarker(k.table, m.Conv, k.who); err != nil && tx.fence(c, err) == nil {
					return
				}
			}
			if c.damaged != nil {
				continue
			}
			limits[i] = c.rec.Head
			if mem.Role == model.RoleNone {
				limits[i] = mem.Since
			}
		}
		for i, m := range marks {
			if tx.conv(m.Conv).damaged == nil {
				tx.mark(a, m, limits[i])
			}
		}
	})
	if err != nil {
		return Pending{err: err}
	}
	return Pending{e: e, r: r, outcome: func() error {
		if revoked {
			return fmt.Errorf("%w: device %s was revoked", ErrUnauthenticated, a.Device)
		}
		if notFound != (ulid.ULID{}) {
			return fmt.Errorf("%w: conversation %s", ErrNotFound, notFound)
		}
		return nil
	}}
}

func (tx *txn) mark(a Actor, m Marker, limit uint64) {
	c := tx.conv(m.Conv)
	delivered, read := min(m.Delivered, limit), min(m.Read, limit)
	d := tx.marker(keys.TDevMark, m.Conv, a.Device) // Delivered only (record.Marker.Read)
	if delivered > d.m.Delivered {
		d.m.Delivered, d.dirty = delivered, true
	}
	u := tx.marker(keys.TUserMark, m.Conv, a.User)
	receipt := false
	if delivered > u.m.Delivered {
		u.m.Delivered, u.dirty, receipt = delivered, true, true
	}
	// Read up to the head, the writer knows the count; otherwise readers
	// look it up (reader.messagesAtRead).
	if u.raiseRead(read, c.rec.Messages, read == c.rec.Head) {
		tx.moveUserFeed(a.User, m.Conv)
	}
	if !m.Private && read > u.m.PublicRead {
		u.m.PublicRead, u.dirty, receipt = read, true, true
	}
	if receipt && int(c.rec.Members) <= tx.e.opts.ReceiptMembers && c.members[a.User].Role != model.RoleNone {
		if tx.e.opts.ReceiptDelay < 0 {
			c.feed = true
		} else {
			c.receipt = true
		}
	}
}
