package engine

import (
	"errors"
	"fmt"

	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// Errors returned by the engine. Each error a method returns wraps at most
// one of them; the wrapping text is written for the person who sent the
// request and never contains storage internals, so an edge may show it.
// Errors that wrap none of them are internal.
var (
	// ErrClosed: the engine was closed.
	ErrClosed = store.ErrClosed
	// ErrFailed: a storage failure stopped the engine; nothing more is
	// acknowledged.
	ErrFailed = errors.New("engine stopped after a storage failure")
	// ErrUnauthenticated: an unknown or revoked token, or a wrong password.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrNotFound: no such conversation (or not a member: the two are not told
	// apart), device, user or message.
	ErrNotFound = errors.New("not found")
	// ErrExists: the username is taken.
	ErrExists = errors.New("already exists")
	// ErrInvalid: a malformed argument. Invalid ops wrap model.ErrInvalidOp
	// instead.
	ErrInvalid = errors.New("invalid argument")
	// ErrForbidden: the actor's role or registration settings do not allow it.
	ErrForbidden = model.ErrForbidden
	// ErrPrecondition: the conversation's state does not allow the op.
	ErrPrecondition = model.ErrPrecondition
	// ErrDotGap: an op's dot skips ahead of the server's entry + 1.
	ErrDotGap = errors.New("dot gap")
	// ErrDotReused: a new op id with a dot the server already holds.
	ErrDotReused = errors.New("dot reused")
	// ErrOpConflict: an op id stored before with a different payload.
	ErrOpConflict = errors.New("op id conflict")
	// ErrConversationExists: a Create op for an existing conversation.
	ErrConversationExists = errors.New("conversation exists")
	// ErrResetRequired: a session's epoch or position cannot be trusted; the
	// error is a *ResetError.
	ErrResetRequired = errors.New("reset required")
	// ErrTooMany: a request exceeds a count limit.
	ErrTooMany = errors.New("too many")
	// ErrQuota: an op's body would take its user past Options.UserQuota.
	ErrQuota = errors.New("quota exceeded")
	// ErrDamaged: the conversation's records in the store do not decode; it
	// is fenced off until the store is repaired (see damageSet).
	ErrDamaged = errors.New("conversation damaged")
	// ErrAccountDamaged: a user's record, or their username's, does not
	// decode: they cannot sign in until the store is repaired (ferryd
	// rebuild makes a username's anew; a user's record it cannot).
	ErrAccountDamaged = errors.New("account damaged")
)

// ResetReason says why a session cannot resume.
type ResetReason uint8

// The reset reasons.
const (
	// ResetEpochMismatch: the client's epoch is not the store's.
	ResetEpochMismatch ResetReason = iota + 1
	// ResetPositionAhead: the client's feed position or a cursor is beyond
	// what the store holds.
	ResetPositionAhead
)

func (r ResetReason) String() string {
	switch r {
	case ResetEpochMismatch:
		return "epoch-mismatch"
	case ResetPositionAhead:
		return "position-ahead"
	}
	return fmt.Sprintf("reset(%d)", uint8(r))
}

// ResetError is returned by OpenSession when the client must repair and start
// over with Epoch.
type ResetError struct {
	Reason ResetReason
	Epoch  string // the store's epoch
	Detail string
}

func (e *ResetError) Error() string { return "reset required: " + e.Detail }

// Unwrap makes errors.Is(err, ErrResetRequired) true.
func (e *ResetError) Unwrap() error { return ErrResetRequired }
