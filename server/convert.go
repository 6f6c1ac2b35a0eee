package server

import (
	"fmt"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

func invalidf(format string, args ...any) *connect.Error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Sprintf(format, args...))
}

// parseID parses a required ULID field.
func parseID(field, s string) (ulid.ULID, error) {
	if s == "" {
		return ulid.ULID{}, invalidf("%s is required", field)
	}
	id, err := ulid.ParseStrict(s)
	if err != nil {
		return ulid.ULID{}, invalidf("%s %q is not a ULID (26 characters of Crockford base32)", field, truncate(s))
	}
	return id, nil
}

// parseOptionalID parses a ULID field that may be empty.
func parseOptionalID(field, s string) (ulid.ULID, error) {
	if s == "" {
		return ulid.ULID{}, nil
	}
	return parseID(field, s)
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func roleFromProto(field string, r ferryv1.Role) (model.Role, error) {
	if r < ferryv1.Role_ROLE_UNSPECIFIED || r > ferryv1.Role_ROLE_OWNER {
		return 0, invalidf("%s: unknown role %d", field, r)
	}
	return model.Role(r), nil
}

// opsFromBatches converts pushed batches, in order, checking every id and
// the op count before anything is stored.
func opsFromBatches(batches []*ferryv1.OpBatch, maxOps int) ([]model.Op, error) {
	n := 0
	for _, b := range batches {
		n += len(b.GetOps())
	}
	if n > maxOps {
		return nil, connect.NewError(connect.CodeResourceExhausted,
			fmt.Sprintf("%d ops in one push; the limit is %d: split the push", n, maxOps))
	}
	ops := make([]model.Op, 0, n)
	for i, b := range batches {
		conv, err := parseID(fmt.Sprintf("batches[%d].conversation_id", i), b.GetConversationId())
		if err != nil {
			return nil, err
		}
		for j, p := range b.GetOps() {
			op, err := opFromProto(fmt.Sprintf("batches[%d].ops[%d]", i, j), conv, p)
			if err != nil {
				return nil, err
			}
			ops = append(ops, op)
		}
	}
	return ops, nil
}

// opFromProto converts a pushed op. Server-assigned fields (seq, user_id)
// are ignored; erased may not be set.
func opFromProto(field string, conv ulid.ULID, p *ferryv1.Op) (model.Op, error) {
	var op model.Op
	var err error
	if op.ID, err = parseID(field+".id", p.GetId()); err != nil {
		return op, err
	}
	if op.Dot.Device, err = parseOptionalID(field+".device_id", p.GetDeviceId()); err != nil {
		return op, err
	}
	if p.GetErased() {
		return op, invalidf("%s.erased is set by the server, not by clients", field)
	}
	op.Conv, op.Dot.N = conv, p.GetDot()
	target := func(s string) error {
		op.Target, err = parseID(field+".target_id", s)
		return err
	}
	member := func(s string) error {
		op.Member, err = parseID(field+".user_id", s)
		return err
	}
	switch pl := p.GetPayload().(type) {
	case *ferryv1.Op_Create:
		op.Kind, op.Title = model.KindCreate, pl.Create.GetTitle()
	case *ferryv1.Op_Message:
		op.Kind, op.Body, op.ContentType = model.KindMessage, pl.Message.GetBody(), pl.Message.GetContentType()
	case *ferryv1.Op_Edit:
		op.Kind, op.Body, op.ContentType = model.KindEdit, pl.Edit.GetBody(), pl.Edit.GetContentType()
		err = target(pl.Edit.GetTargetId())
	case *ferryv1.Op_Delete:
		op.Kind = model.KindDelete
		err = target(pl.Delete.GetTargetId())
	case *ferryv1.Op_ReactionAdd:
		op.Kind, op.ReactionKey = model.KindReactionAdd, pl.ReactionAdd.GetKey()
		err = target(pl.ReactionAdd.GetTargetId())
	case *ferryv1.Op_ReactionRemove:
		op.Kind, op.ReactionKey = model.KindReactionRemove, pl.ReactionRemove.GetKey()
		err = target(pl.ReactionRemove.GetTargetId())
	case *ferryv1.Op_MemberAdd:
		op.Kind = model.KindMemberAdd
		if err = member(pl.MemberAdd.GetUserId()); err == nil {
			op.Role, err = roleFromProto(field+".member_add.role", pl.MemberAdd.GetRole())
			if op.Role == model.RoleNone {
				op.Role = model.RoleMember
			}
		}
	case *ferryv1.Op_MemberRemove:
		op.Kind = model.KindMemberRemove
		err = member(pl.MemberRemove.GetUserId())
	case *ferryv1.Op_MemberRole:
		op.Kind = model.KindMemberRole
		if err = member(pl.MemberRole.GetUserId()); err == nil {
			op.Role, err = roleFromProto(field+".member_role.role", pl.MemberRole.GetRole())
		}
	case *ferryv1.Op_SetTitle:
		op.Kind, op.Title = model.KindSetTitle, pl.SetTitle.GetTitle()
	case nil:
		return op, invalidf("%s has no payload: set one of create, message, edit, delete, reaction_add, reaction_remove, member_add, member_remove, member_role or set_title", field)
	default:
		return op, invalidf("%s has an unknown payload", field)
	}
	return op, err
}

func idString(id ulid.ULID) string {
	if id == (ulid.ULID{}) {
		return ""
	}
	return id.String()
}

// opToProto converts a stored op for sending. The conversation id travels
// on the batch.
func opToProto(op *model.Op) *ferryv1.Op {
	p := &ferryv1.Op{
		Id:       op.ID.String(),
		Seq:      op.Seq,
		DeviceId: op.Dot.Device.String(),
		Dot:      op.Dot.N,
		UserId:   idString(op.User),
		Erased:   op.Erased,
	}
	target := idString(op.Target)
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

func opsToProto(ops []model.Op) []*ferryv1.Op {
	out := make([]*ferryv1.Op, len(ops))
	for i := range ops {
		out[i] = opToProto(&ops[i])
	}
	return out
}

func batchesToProto(bs []engine.Batch) []*ferryv1.OpBatch {
	out := make([]*ferryv1.OpBatch, len(bs))
	for i, b := range bs {
		out[i] = &ferryv1.OpBatch{ConversationId: b.Conv.String(), Ops: opsToProto(b.Ops)}
	}
	return out
}

func infoToProto(c *engine.ConvInfo) *ferryv1.ConversationInfo {
	p := &ferryv1.ConversationInfo{
		Id:          c.ID.String(),
		Title:       c.Title,
		Role:        ferryv1.Role(c.Role),
		Removed:     c.Removed,
		Head:        c.Head,
		ResumeAfter: c.ResumeAfter,
		Unread:      c.Unread,
		Delivered:   c.Delivered,
		Read:        c.Read,
		MemberCount: c.Members,
	}
	for _, r := range c.Receipts {
		p.Receipts = append(p.Receipts, &ferryv1.Receipt{UserId: r.User.String(), Delivered: r.Delivered, Read: r.Read})
	}
	return p
}

func infosToProto(cs []engine.ConvInfo) []*ferryv1.ConversationInfo {
	out := make([]*ferryv1.ConversationInfo, len(cs))
	for i := range cs {
		out[i] = infoToProto(&cs[i])
	}
	return out
}

func vectorToProto(v model.Vector) *ferryv1.Vector {
	es := v.Entries()
	p := &ferryv1.Vector{Entries: make([]*ferryv1.VectorEntry, len(es))}
	for i, e := range es {
		p.Entries[i] = &ferryv1.VectorEntry{DeviceId: e.Device.String(), Dot: e.N}
	}
	return p
}

// maxVectorEntries bounds a client's vector: one entry per device that ever
// wrote to the conversation.
const maxVectorEntries = 100_000

func vectorFromProto(field string, p *ferryv1.Vector) (model.Vector, error) {
	if len(p.GetEntries()) > maxVectorEntries {
		return model.Vector{}, connect.NewError(connect.CodeResourceExhausted,
			fmt.Sprintf("%s has %d entries; the limit is %d", field, len(p.GetEntries()), maxVectorEntries))
	}
	es := make([]model.Dot, len(p.GetEntries()))
	for i, e := range p.GetEntries() {
		d, err := parseID(fmt.Sprintf("%s.entries[%d].device_id", field, i), e.GetDeviceId())
		if err != nil {
			return model.Vector{}, err
		}
		es[i] = model.Dot{Device: d, N: e.GetDot()}
	}
	return model.NewVector(es...), nil
}

func resultsToProto(res []engine.AppendResult) []*ferryv1.OpResult {
	out := make([]*ferryv1.OpResult, len(res))
	for i, r := range res {
		p := &ferryv1.OpResult{ConversationId: r.Conv.String(), OpId: r.Op.String(), Seq: r.Seq, ServerDot: r.ServerDot}
		switch {
		case r.Err != nil:
			p.Status, p.Reason, p.Message = ferryv1.OpStatus_OP_STATUS_REJECTED, rejectReason(r.Err), r.Err.Error()
		case r.Duplicate:
			p.Status = ferryv1.OpStatus_OP_STATUS_DUPLICATE
		default:
			p.Status = ferryv1.OpStatus_OP_STATUS_ACCEPTED
		}
		out[i] = p
	}
	return out
}

func markersFromProto(ms []*ferryv1.Marker) ([]engine.Marker, error) {
	out := make([]engine.Marker, len(ms))
	for i, m := range ms {
		conv, err := parseID(fmt.Sprintf("markers[%d].conversation_id", i), m.GetConversationId())
		if err != nil {
			return nil, err
		}
		out[i] = engine.Marker{Conv: conv, Delivered: m.GetDelivered(), Read: m.GetRead(), Private: m.GetPrivateRead()}
	}
	return out, nil
}

func userToProto(u engine.User) *ferryv1.User {
	return &ferryv1.User{Id: u.ID.String(), Username: u.Username, DisplayName: u.DisplayName}
}

func deviceToProto(d engine.Device, current ulid.ULID) *ferryv1.Device {
	return &ferryv1.Device{Id: d.ID.String(), Name: d.Name, CreatedAt: timestamppb.New(d.Created), Current: d.ID == current}
}
