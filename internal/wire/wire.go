// Package wire converts between the ferry.v1 wire types and the model, in
// one place for the server and the SDK, and gives clients their bearer
// credentials. Errors name the offending field and are written for the
// developer who sent it.
package wire

import (
	"errors"
	"fmt"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ferrysync/ferry/engine/model"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// ErrMalformed is wrapped by every conversion error.
var ErrMalformed = errors.New("malformed")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// ParseID parses a required ULID field.
func ParseID(field, s string) (ulid.ULID, error) {
	if s == "" {
		return ulid.ULID{}, malformed("%s is required", field)
	}
	id, err := ulid.ParseStrict(s)
	if err != nil {
		if len(s) > 40 {
			s = s[:40] + "…"
		}
		return ulid.ULID{}, malformed("%s %q is not a ULID (26 characters of Crockford base32)", field, s)
	}
	return id, nil
}

// ParseOptionalID parses a ULID field that may be empty.
func ParseOptionalID(field, s string) (ulid.ULID, error) {
	if s == "" {
		return ulid.ULID{}, nil
	}
	return ParseID(field, s)
}

// ID formats an id, empty for the zero id.
func ID(id ulid.ULID) string {
	if id == (ulid.ULID{}) {
		return ""
	}
	return id.String()
}

// Role converts a wire role.
func Role(field string, r ferryv1.Role) (model.Role, error) {
	if r < ferryv1.Role_ROLE_UNSPECIFIED || r > ferryv1.Role_ROLE_OWNER {
		return 0, malformed("%s: unknown role %d", field, r)
	}
	return model.Role(r), nil
}

// Op converts a wire op of conversation conv, including the fields the
// server assigns (seq, user_id, erased). field prefixes error messages. An
// op without a payload this version knows is malformed: what a server says
// of an op pushed to it.
func Op(field string, conv ulid.ULID, p *ferryv1.Op) (model.Op, error) {
	return parseOp(field, conv, p, false)
}

// ReceivedOp converts an op from the server as Op does, but an op without a
// payload this version knows (a newer server's kind) is one of
// model.KindUnknown, with the fields every op has: what a client keeps.
func ReceivedOp(field string, conv ulid.ULID, p *ferryv1.Op) (model.Op, error) {
	return parseOp(field, conv, p, true)
}

func parseOp(field string, conv ulid.ULID, p *ferryv1.Op, newer bool) (model.Op, error) {
	var op model.Op
	var err error
	if op.ID, err = subID(field, ".id", p.GetId(), false); err != nil {
		return op, err
	}
	if op.Dot.Device, err = subID(field, ".device_id", p.GetDeviceId(), true); err != nil {
		return op, err
	}
	if op.User, err = subID(field, ".user_id", p.GetUserId(), true); err != nil {
		return op, err
	}
	op.Conv, op.Seq, op.Dot.N, op.Erased = conv, p.GetSeq(), p.GetDot(), p.GetErased()
	// An error names the payload's field (".member_add.user_id"), not
	// the op's own field of the same name (".user_id", the author).
	target := func(payload, s string) error {
		op.Target, err = subID(field, "."+payload+".target_id", s, false)
		return err
	}
	member := func(payload, s string) error {
		op.Member, err = subID(field, "."+payload+".user_id", s, false)
		return err
	}
	switch pl := p.GetPayload().(type) {
	case *ferryv1.Op_Create:
		op.Kind, op.Title = model.KindCreate, pl.Create.GetTitle()
	case *ferryv1.Op_Message:
		op.Kind, op.Body, op.ContentType = model.KindMessage, pl.Message.GetBody(), pl.Message.GetContentType()
	case *ferryv1.Op_Edit:
		op.Kind, op.Body, op.ContentType = model.KindEdit, pl.Edit.GetBody(), pl.Edit.GetContentType()
		err = target("edit", pl.Edit.GetTargetId())
	case *ferryv1.Op_Delete:
		op.Kind = model.KindDelete
		err = target("delete", pl.Delete.GetTargetId())
	case *ferryv1.Op_ReactionAdd:
		op.Kind, op.ReactionKey = model.KindReactionAdd, pl.ReactionAdd.GetKey()
		err = target("reaction_add", pl.ReactionAdd.GetTargetId())
	case *ferryv1.Op_ReactionRemove:
		op.Kind, op.ReactionKey = model.KindReactionRemove, pl.ReactionRemove.GetKey()
		err = target("reaction_remove", pl.ReactionRemove.GetTargetId())
	case *ferryv1.Op_MemberAdd:
		op.Kind = model.KindMemberAdd
		if err = member("member_add", pl.MemberAdd.GetUserId()); err == nil {
			op.Role, err = Role(field+".member_add.role", pl.MemberAdd.GetRole())
			if op.Role == model.RoleNone {
				op.Role = model.RoleMember
			}
		}
	case *ferryv1.Op_MemberRemove:
		op.Kind = model.KindMemberRemove
		err = member("member_remove", pl.MemberRemove.GetUserId())
	case *ferryv1.Op_MemberRole:
		op.Kind = model.KindMemberRole
		if err = member("member_role", pl.MemberRole.GetUserId()); err == nil {
			op.Role, err = Role(field+".member_role.role", pl.MemberRole.GetRole())
		}
	case *ferryv1.Op_SetTitle:
		op.Kind, op.Title = model.KindSetTitle, pl.SetTitle.GetTitle()
	case nil:
		// A payload this version does not know decodes as none.
		if newer {
			return op, nil
		}
		if num, _, n := protowire.ConsumeTag(p.ProtoReflect().GetUnknown()); n > 0 {
			return op, malformed("%s has no payload this server knows: it has field %d, which this server does not (an op kind newer than the server?)", field, num)
		}
		return op, malformed("%s has no payload: set one of create, message, edit, delete, reaction_add, reaction_remove, member_add, member_remove, member_role or set_title", field)
	default:
		return op, malformed("%s has an unknown payload", field)
	}
	return op, err
}

// subID parses the ULID of field's sub-field (ParseID, or ParseOptionalID
// when optional), naming it field+sub: joined only for an error, since
// every op of every push and catch-up goes through here.
func subID(field, sub, s string, optional bool) (ulid.ULID, error) {
	if s == "" && optional {
		return ulid.ULID{}, nil
	}
	if id, err := ulid.ParseStrict(s); err == nil {
		return id, nil
	}
	return ParseID(field+sub, s)
}

// OpToProto converts an op for the wire. The conversation id travels on the
// batch.
func OpToProto(op *model.Op) *ferryv1.Op {
	p := &ferryv1.Op{
		Id:       op.ID.String(),
		Seq:      op.Seq,
		DeviceId: ID(op.Dot.Device),
		Dot:      op.Dot.N,
		UserId:   ID(op.User),
		Erased:   op.Erased,
	}
	target := ID(op.Target)
	switch op.Kind {
	case model.KindCreate:
		p.Payload = &ferryv1.Op_Create{Create: &ferryv1.Create{Title: op.Title}}
	case model.KindMessage:
		p.Payload = &ferryv1.Op_Message{Message: &ferryv1.Message{Body: op.Body, ContentType: op.ContentType}}
	case model.KindEdit:
		p.Payload = &ferryv1.Op_Edit{Edit: &ferryv1.Edit{TargetId: target, Body: op.Body, ContentType: op.ContentType}}
	case model.KindDelete:
		p.Payload = &ferryv1.Op_Delete{Delete: &ferryv1.Delete{TargetId: target}}
	case model.KindReactionAdd:
		p.Payload = &ferryv1.Op_ReactionAdd{ReactionAdd: &ferryv1.Reaction{TargetId: target, Key: op.ReactionKey}}
	case model.KindReactionRemove:
		p.Payload = &ferryv1.Op_ReactionRemove{ReactionRemove: &ferryv1.Reaction{TargetId: target, Key: op.ReactionKey}}
	case model.KindMemberAdd:
		p.Payload = &ferryv1.Op_MemberAdd{MemberAdd: &ferryv1.MemberAdd{UserId: op.Member.String(), Role: ferryv1.Role(op.Role)}}
	case model.KindMemberRemove:
		p.Payload = &ferryv1.Op_MemberRemove{MemberRemove: &ferryv1.MemberRemove{UserId: op.Member.String()}}
	case model.KindMemberRole:
		p.Payload = &ferryv1.Op_MemberRole{MemberRole: &ferryv1.MemberRole{UserId: op.Member.String(), Role: ferryv1.Role(op.Role)}}
	case model.KindSetTitle:
		p.Payload = &ferryv1.Op_SetTitle{SetTitle: &ferryv1.SetTitle{Title: op.Title}}
	}
	return p
}

// VectorToProto converts a vector for the wire.
func VectorToProto(v model.Vector) *ferryv1.Vector {
	es := v.Entries()
	p := &ferryv1.Vector{Entries: make([]*ferryv1.VectorEntry, len(es))}
	for i, e := range es {
		p.Entries[i] = &ferryv1.VectorEntry{DeviceId: e.Device.String(), Dot: e.N}
	}
	return p
}

// Vector converts a wire vector, canonicalising it.
func Vector(field string, p *ferryv1.Vector) (model.Vector, error) {
	es := make([]model.Dot, len(p.GetEntries()))
	for i, e := range p.GetEntries() {
		d, err := ParseID(fmt.Sprintf("%s.entries[%d].device_id", field, i), e.GetDeviceId())
		if err != nil {
			return model.Vector{}, err
		}
		es[i] = model.Dot{Device: d, N: e.GetDot()}
	}
	return model.NewVector(es...), nil
}
