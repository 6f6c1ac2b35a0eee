package server

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

func invalidf(format string, args ...any) *connect.Error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Sprintf(format, args...))
}

// invalid turns a wire conversion error into InvalidArgument; nil stays nil.
func invalid(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, wire.ErrMalformed) {
		return invalidf("%s", strings.TrimPrefix(err.Error(), wire.ErrMalformed.Error()+": "))
	}
	return err
}

// parseID parses a required ULID field.
func parseID(field, s string) (ulid.ULID, error) {
	id, err := wire.ParseID(field, s)
	return id, invalid(err)
}

// parseOptionalID parses a ULID field that may be empty.
func parseOptionalID(field, s string) (ulid.ULID, error) {
	id, err := wire.ParseOptionalID(field, s)
	return id, invalid(err)
}

// opsFromBatches converts pushed batches, in order. An op that does not
// convert (a malformed id, no payload this server knows, a field only the
// server sets) is refused on its own, as REJECT_REASON_INVALID says: its
// slot in refused holds its result, naming the field, and the push goes on
// with the others. A device's outbox then moves past the op, which takes
// no dot, instead of sending the same refused push forever (an SDK newer
// than the server, with an op kind the server does not know, would). What
// has no op to answer for refuses the whole push: too many ops, or a
// batch's malformed conversation id. refused is nil when every op
// converts; ops holds the zero Op in a refused op's slot.
func opsFromBatches(batches []*ferryv1.OpBatch, maxOps int) (ops []model.Op, refused []*ferryv1.OpResult, err error) {
	n := 0
	for _, b := range batches {
		n += len(b.GetOps())
	}
	if n > maxOps {
		return nil, nil, connect.NewError(connect.CodeResourceExhausted,
			fmt.Sprintf("%d ops in one push; the limit is %d: split the push", n, maxOps))
	}
	// Each field's path is formatted only for an error: converting again
	// with it gives the same error, named.
	ops = make([]model.Op, n)
	k := 0
	for i, b := range batches {
		conv, err := ulid.ParseStrict(b.GetConversationId())
		if err != nil {
			_, err = parseID(fmt.Sprintf("batches[%d].conversation_id", i), b.GetConversationId())
			return nil, nil, err
		}
		for j, p := range b.GetOps() {
			op, err := opFromProto("op", conv, p)
			if err != nil {
				_, err = opFromProto(fmt.Sprintf("batches[%d].ops[%d]", i, j), conv, p)
				if refused == nil {
					refused = make([]*ferryv1.OpResult, n)
				}
				refused[k] = &ferryv1.OpResult{
					ConversationId: conv.String(), OpId: p.GetId(),
					Status: ferryv1.OpStatus_OP_STATUS_REJECTED, Reason: ferryv1.RejectReason_REJECT_REASON_INVALID,
					Message: errorMessage(err),
				}
			}
			ops[k] = op
			k++
		}
	}
	return ops, refused, nil
}

// errorMessage is err's message without a Connect code's prefix.
func errorMessage(err error) string {
	if ce, ok := errors.AsType[*connect.Error](err); ok {
		return ce.Message()
	}
	return err.Error()
}

// opFromProto converts a pushed op. Server-assigned fields (seq, user_id)
// are ignored; erased may not be set.
func opFromProto(field string, conv ulid.ULID, p *ferryv1.Op) (model.Op, error) {
	if p.GetErased() {
		return model.Op{}, invalidf("%s.erased is set by the server, not by clients", field)
	}
	op, err := wire.Op(field, conv, p)
	if err != nil {
		return op, invalid(err)
	}
	op.Seq, op.User = 0, ulid.ULID{}
	return op, nil
}

func opToProto(op *model.Op) *ferryv1.Op { return wire.OpToProto(op) }

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

// packBatches packs a session's batches for a client that asked for them
// packed (Hello.packed_ops). The engine's batches are runs of consecutive
// seqs, which packing needs: an error here is the engine's bug.
func packBatches(bs []engine.Batch) ([]*ferryv1.PackedBatch, error) {
	out := make([]*ferryv1.PackedBatch, len(bs))
	for i, b := range bs {
		p, err := wire.PackBatch(b.Conv, b.Ops)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	return out, nil
}

func infoToProto(c *engine.ConvInfo) *ferryv1.ConversationInfo {
	p := new(ferryv1.ConversationInfo)
	fillInfo(p, c)
	return p
}

// fillInfo sets all of *p to c's info.
func fillInfo(p *ferryv1.ConversationInfo, c *engine.ConvInfo) {
	*p = ferryv1.ConversationInfo{
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
		NoReceipts:  !c.ReceiptsShared,
	}
	if len(c.Receipts) > 0 {
		// One allocation for the receipts and one for their pointers: a
		// live round sends every member an info with all the others'.
		rs := make([]ferryv1.Receipt, len(c.Receipts))
		p.Receipts = make([]*ferryv1.Receipt, len(c.Receipts))
		for i, r := range c.Receipts {
			rs[i].UserId, rs[i].Delivered, rs[i].Read = r.User.String(), r.Delivered, r.Read
			p.Receipts[i] = &rs[i]
		}
	}
}

// sentInfos is a Conversations message with its infos, pooled: a live
// round sends one to every device it reaches, and Connect marshals it
// within Send.
type sentInfos struct {
	m     ferryv1.Conversations
	infos []ferryv1.ConversationInfo
	ptrs  []*ferryv1.ConversationInfo
}

var sentInfosPool = sync.Pool{New: func() any { return new(sentInfos) }}

// maxPooledInfos bounds the infos a pooled message keeps room for: a
// catch-up's pages of conversations are not kept.
const maxPooledInfos = 64

// getInfos returns cs as a Conversations message (x.m), to give back with
// put once sent.
func getInfos(cs []engine.ConvInfo) *sentInfos {
	x := sentInfosPool.Get().(*sentInfos)
	if cap(x.infos) < len(cs) {
		x.infos, x.ptrs = make([]ferryv1.ConversationInfo, len(cs)), make([]*ferryv1.ConversationInfo, len(cs))
	}
	x.infos, x.ptrs = x.infos[:len(cs)], x.ptrs[:len(cs)]
	for i := range cs {
		fillInfo(&x.infos[i], &cs[i])
		x.ptrs[i] = &x.infos[i]
	}
	x.m.Conversations = x.ptrs
	return x
}

// put gives x back to the pool.
func (x *sentInfos) put() {
	clear(x.infos)
	clear(x.ptrs)
	x.m.Conversations = nil
	if cap(x.infos) <= maxPooledInfos {
		sentInfosPool.Put(x)
	}
}

func infosToProto(cs []engine.ConvInfo) []*ferryv1.ConversationInfo {
	out := make([]*ferryv1.ConversationInfo, len(cs))
	for i := range cs {
		out[i] = infoToProto(&cs[i])
	}
	return out
}

func vectorToProto(v model.Vector) *ferryv1.Vector { return wire.VectorToProto(v) }

// maxVectorEntries bounds a client's vector: one entry per device that ever
// wrote to the conversation.
const maxVectorEntries = 100_000

func vectorFromProto(field string, p *ferryv1.Vector) (model.Vector, error) {
	if len(p.GetEntries()) > maxVectorEntries {
		return model.Vector{}, connect.NewError(connect.CodeResourceExhausted,
			fmt.Sprintf("%s has %d entries; the limit is %d", field, len(p.GetEntries()), maxVectorEntries))
	}
	v, err := wire.Vector(field, p)
	return v, invalid(err)
}

func resultsToProto(res []engine.AppendResult) []*ferryv1.OpResult {
	out := make([]*ferryv1.OpResult, len(res))
	var conv ulid.ULID
	var convID string // conv's, shared by its results: a push's ops are mostly of one
	for i, r := range res {
		if convID == "" || r.Conv != conv {
			conv, convID = r.Conv, r.Conv.String()
		}
		p := &ferryv1.OpResult{ConversationId: convID, OpId: r.Op.String(), Seq: r.Seq, ServerDot: r.ServerDot}
		switch {
		case errors.Is(r.Err, engine.ErrDamaged):
			// Not rejected: stored once the operator repairs the
			// conversation, and the client keeps it until then.
			p.Status, p.Reason, p.Message = ferryv1.OpStatus_OP_STATUS_RETRY_LATER, ferryv1.RejectReason_REJECT_REASON_CONVERSATION_DAMAGED, r.Err.Error()
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

// markersFromProto reads an ack's markers, and refuses more than limit
// of them, as the engine would, before the ack spends the push limit.
func markersFromProto(ms []*ferryv1.Marker, limit int) ([]engine.Marker, error) {
	if len(ms) > limit {
		return nil, connect.NewError(connect.CodeResourceExhausted,
			fmt.Sprintf("%d markers in one ack; the limit is %d: split the ack", len(ms), limit))
	}
	out := make([]engine.Marker, len(ms))
	for i, m := range ms {
		conv, err := ulid.ParseStrict(m.GetConversationId())
		if err != nil { // the field's path is formatted for the error alone
			_, err = parseID(fmt.Sprintf("markers[%d].conversation_id", i), m.GetConversationId())
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
