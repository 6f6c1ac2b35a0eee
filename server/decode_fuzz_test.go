package server

import (
	"errors"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/feedseal"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// Every decoder of client input either returns a value or a *connect.Error
// with a client-facing code; none panics. The seed corpora run in make test;
// make fuzz explores further.

func seed(f *testing.F, msgs ...proto.Message) {
	for _, m := range msgs {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func clientError(t *testing.T, err error) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) {
		t.Fatalf("decoder returned %T %v, not a *connect.Error", err, err)
	}
	switch ce.Code() {
	case connect.CodeInvalidArgument, connect.CodeResourceExhausted:
	default:
		t.Fatalf("decoder returned code %v for bad input", ce.Code())
	}
}

func FuzzDecodePush(f *testing.F) {
	id := ulid.Make().String()
	seed(f,
		&ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: id, Ops: []*ferryv1.Op{
			{Id: id, Dot: 1, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: []byte("hi")}}},
			{Id: id, Dot: 2, Payload: &ferryv1.Op_Edit{Edit: &ferryv1.Edit{TargetId: id}}},
			{Id: id, Dot: 3, Payload: &ferryv1.Op_MemberAdd{MemberAdd: &ferryv1.MemberAdd{UserId: id, Role: 7}}},
			{Id: id, Dot: 4, Payload: &ferryv1.Op_ReactionAdd{ReactionAdd: &ferryv1.Reaction{TargetId: id, Key: "x"}}},
		}}}},
		&ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: "bad"}}},
	)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req ferryv1.PushRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		ops, refused, err := opsFromBatches(req.GetBatches(), maxOpsPerPush)
		if err != nil {
			clientError(t, err)
			return
		}
		for i := range ops {
			if refused != nil && refused[i] != nil {
				// An op refused on its own says what is wrong with it.
				if r := refused[i]; r.GetReason() != ferryv1.RejectReason_REJECT_REASON_INVALID || r.GetMessage() == "" {
					t.Fatalf("a malformed op's result is %v", r)
				}
				continue
			}
			// Whatever decodes and validates survives the trip to the wire
			// and back unchanged: the server sends what it stored.
			op := ops[i]
			if op.Dot.Device == (ulid.ULID{}) {
				op.Dot.Device = ulid.Make()
			}
			if op.Validate(0) != nil {
				continue
			}
			back, err := opFromProto("op", op.Conv, opToProto(&op))
			if err != nil {
				t.Fatalf("a valid op does not decode after encoding: %v", err)
			}
			if !model.SamePayload(&op, &back) || back.ID != op.ID || back.Conv != op.Conv {
				t.Fatalf("round trip changed the op:\n%+v\n%+v", op, back)
			}
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	id := ulid.Make().String()
	seed(f,
		&ferryv1.Hello{Epoch: id, FeedPos: 9, Cursors: []*ferryv1.Cursor{{ConversationId: id, Seq: 3}}, PageSize: 50},
		&ferryv1.Hello{Epoch: "x"},
	)
	seal, err := feedseal.New(make([]byte, feedseal.KeySize), 0)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var h ferryv1.Hello
		if proto.Unmarshal(b, &h) != nil {
			return
		}
		if _, err := sessionOptions(&h, seal); err != nil {
			clientError(t, err)
		}
	})
}

func FuzzDecodeVectorAndMarkers(f *testing.F) {
	id := ulid.Make().String()
	seed(f,
		&ferryv1.RepairRequest{ConversationId: id, Vector: &ferryv1.Vector{Entries: []*ferryv1.VectorEntry{{DeviceId: id, Dot: 3}, {DeviceId: id, Dot: 0}}}},
		&ferryv1.RepairRequest{Vector: &ferryv1.Vector{Entries: []*ferryv1.VectorEntry{{DeviceId: "?"}}}},
	)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req ferryv1.RepairRequest
		if proto.Unmarshal(b, &req) == nil {
			if v, err := vectorFromProto("vector", req.GetVector()); err != nil {
				clientError(t, err)
			} else if _, err := model.DecodeVector(must(v.MarshalBinary())); err != nil {
				t.Fatalf("decoded vector is not canonical: %v", err)
			}
		}
		var ack ferryv1.AckRequest
		if proto.Unmarshal(b, &ack) == nil {
			if _, err := markersFromProto(ack.GetMarkers(), maxOpsPerPush); err != nil {
				clientError(t, err)
			}
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
