package engine

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/record"
)

// A damaged conversation is one whose records in the store do not decode:
// its conversation record, a member record, a marker, its dot or op-id
// index, as a disk or an earlier build may leave them. What the store says
// of it cannot be trusted, and guessing would let ops through that its
// members' roles forbid, or give a seq twice. Nor can one such
// conversation be let stop the server: every other conversation is sound.
//
// So it is fenced off, from the moment a read or the writer finds it until
// the server stops (the store is repaired offline: ferryd rebuild):
//   - the writer refuses its ops (AppendResult.Err wraps ErrDamaged), which
//     the client pushes again later; it drops its members' markers of it,
//     which matter less than the acks of every other conversation in the
//     same call;
//   - its members' sessions leave it out, and, where the damage is in a
//     record Rebuild makes anew (not an op of its log), tell their devices
//     no feed position past its entry (see Session.hold): once it is
//     repaired, their next catch-up takes it, whatever it missed;
//   - a read of it (History, Repair, Conversation) fails with ErrDamaged.
//
// The first sighting of each is logged once, with the cause, for the
// operator; the error a client gets names the conversation only.
type damageSet struct {
	any   atomic.Bool // convs is not empty: the writer's check costs a load until then
	mu    sync.Mutex
	convs map[ulid.ULID]struct{}
}

// damaged records that conv is damaged, as cause (a decoding error)
// shows, logging it the first time, and returns the error that clients
// get for it.
func (e *Engine) damaged(conv ulid.ULID, cause error) error {
	e.damage.mu.Lock()
	_, seen := e.damage.convs[conv]
	if !seen {
		if e.damage.convs == nil {
			e.damage.convs = map[ulid.ULID]struct{}{}
		}
		e.damage.convs[conv] = struct{}{}
		e.damage.any.Store(true)
	}
	e.damage.mu.Unlock()
	if !seen {
		e.log.Error("conversation damaged in the store: its ops wait, and its members' devices leave it out, until the store is repaired: stop the server, back the store up (ferryd backup) and run ferryd rebuild",
			"conv", conv, "err", cause)
	}
	return damagedErr(conv)
}

func damagedErr(conv ulid.ULID) error {
	return fmt.Errorf("%w: conversation %s cannot be read or written until the server's operator repairs the server's store", ErrDamaged, conv)
}

// isDamaged reports whether conv was found damaged.
func (e *Engine) isDamaged(conv ulid.ULID) bool {
	if !e.damage.any.Load() {
		return false
	}
	e.damage.mu.Lock()
	defer e.damage.mu.Unlock()
	_, ok := e.damage.convs[conv]
	return ok
}

// Damaged returns the conversations found damaged since the engine
// opened, in ascending order.
func (e *Engine) Damaged() []ulid.ULID {
	e.damage.mu.Lock()
	out := make([]ulid.ULID, 0, len(e.damage.convs))
	for c := range e.damage.convs {
		out = append(out, c)
	}
	e.damage.mu.Unlock()
	slices.SortFunc(out, ulid.ULID.Compare)
	return out
}

// corrupt reports whether err is a record of the store that does not
// decode: the damage a conversation is fenced off for. Other errors (a
// read that failed) are the store's, not the conversation's.
func corrupt(err error) bool { return errors.Is(err, record.ErrCorrupt) }

// logDamage is an op of a conversation's log that does not decode, as the
// reader's reads of ops give it (readOps, messagesAt): nothing makes it
// anew, so sessions hold no device below it (Session.leaveOut).
type logDamage struct{ err error }

func (d *logDamage) Error() string { return d.err.Error() }
func (d *logDamage) Unwrap() error { return d.err }

// fenceErr returns, for an error err of a read of conv, the error to give:
// ErrDamaged for a record that does not decode (recording the damage),
// else err.
func (e *Engine) fenceErr(conv ulid.ULID, err error) error {
	if err != nil && corrupt(err) {
		return e.damaged(conv, err)
	}
	return err
}
