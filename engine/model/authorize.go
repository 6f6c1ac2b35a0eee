package model

import (
	"errors"
	"fmt"

	"github.com/oklog/ulid/v2"
)

// Errors of [Authorize]. Each returned error wraps one of them.
var (
	// ErrForbidden: the actor's role does not allow the op.
	ErrForbidden = errors.New("not allowed")
	// ErrPrecondition: the conversation's state does not allow the op, such as
	// editing a deleted message or adding a user who is already a member.
	ErrPrecondition = errors.New("failed precondition")
)

// Target is what authorization needs to know about the message an op refers
// to.
type Target struct {
	Found   bool
	Kind    Kind
	User    ulid.ULID // the message's author
	Deleted bool
}

// Facts are what authorization needs to know about a conversation when an op
// arrives. The caller has already established that the conversation exists
// and that the actor is an active member (ActorRole > RoleNone).
type Facts struct {
	ActorRole   Role
	Target      Target // for ops of kinds with a target
	SubjectRole Role   // for member ops: the subject user's current role
	Owners      int    // how many owners the conversation has
}

// Authorize decides whether actor (a user) may author op, given the facts.
// The rules:
//   - any member may send messages and react to messages;
//   - only a message's author may edit it, and not after it was deleted;
//   - a message's author or an admin may delete it;
//   - admins may add and remove members, and set the title; only owners may
//     add admins, remove admins or change roles;
//   - anyone may leave, except the last owner.
func Authorize(actor ulid.ULID, op *Op, f Facts) error {
	if f.ActorRole == RoleNone {
		return fmt.Errorf("%w: %s is not a member", ErrForbidden, actor)
	}
	if op.Kind.HasTarget() {
		if !f.Target.Found {
			return fmt.Errorf("%w: message %s is not in this conversation", ErrPrecondition, op.Target)
		}
		if f.Target.Kind != KindMessage {
			return fmt.Errorf("%w: %s refers to %s, which is not a message", ErrPrecondition, op.Kind, op.Target)
		}
	}
	switch op.Kind {
	case KindCreate:
		return fmt.Errorf("%w: the conversation already exists", ErrPrecondition)
	case KindMessage, KindReactionAdd, KindReactionRemove:
		return nil
	case KindEdit:
		if f.Target.User != actor {
			return fmt.Errorf("%w: only the author may edit a message", ErrForbidden)
		}
		if f.Target.Deleted {
			return fmt.Errorf("%w: message %s was deleted", ErrPrecondition, op.Target)
		}
		return nil
	case KindDelete:
		if f.Target.User != actor && f.ActorRole < RoleAdmin {
			return fmt.Errorf("%w: only the author or an admin may delete a message", ErrForbidden)
		}
		return nil
	case KindSetTitle:
		if f.ActorRole < RoleAdmin {
			return fmt.Errorf("%w: only admins may change the title", ErrForbidden)
		}
		return nil
	case KindMemberAdd:
		if f.ActorRole < RoleAdmin {
			return fmt.Errorf("%w: only admins may add members", ErrForbidden)
		}
		if op.Role >= RoleAdmin && f.ActorRole < RoleOwner {
			return fmt.Errorf("%w: only owners may add admins", ErrForbidden)
		}
		if f.SubjectRole != RoleNone {
			return fmt.Errorf("%w: %s is already a member", ErrPrecondition, op.Member)
		}
		return nil
	case KindMemberRemove:
		if f.SubjectRole == RoleNone {
			return fmt.Errorf("%w: %s is not a member", ErrPrecondition, op.Member)
		}
		if op.Member == actor {
			if f.ActorRole == RoleOwner && f.Owners <= 1 {
				return fmt.Errorf("%w: the last owner cannot leave; make another member owner first", ErrPrecondition)
			}
			return nil
		}
		if f.ActorRole == RoleOwner || (f.ActorRole == RoleAdmin && f.SubjectRole == RoleMember) {
			return nil
		}
		return fmt.Errorf("%w: only owners may remove admins and owners, and only admins may remove members", ErrForbidden)
	case KindMemberRole:
		if f.ActorRole < RoleOwner {
			return fmt.Errorf("%w: only owners may change roles", ErrForbidden)
		}
		if f.SubjectRole == RoleNone {
			return fmt.Errorf("%w: %s is not a member", ErrPrecondition, op.Member)
		}
		if f.SubjectRole == RoleOwner && op.Role < RoleOwner && f.Owners <= 1 {
			return fmt.Errorf("%w: the conversation must keep an owner", ErrPrecondition)
		}
		return nil
	}
	return fmt.Errorf("%w: unknown kind %s", ErrInvalidOp, op.Kind)
}
