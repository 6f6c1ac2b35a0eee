package server

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine/enginetest"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// FuzzUnaryHandlers feeds arbitrary bytes, decoded as the request of each
// unary RPC, to its handler as an authenticated member: whatever the input,
// the answer is a response or a client error, never Internal or Unknown,
// and the store stays consistent.
func FuzzUnaryHandlers(f *testing.F) {
	eng := enginetest.New(f)
	srv, err := New(eng, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	alice := enginetest.Register(f, eng, "alice")
	conv := alice.Create("c")
	alice.Send(conv, "hello")
	ctx := context.WithValue(context.Background(), actorKey{}, alice.Actor)
	acc, cs, ss := accountService{srv}, conversationService{srv}, syncService{srv}

	type rpc struct {
		req  func() proto.Message
		call func(proto.Message) error
	}
	rpcs := []rpc{
		{func() proto.Message { return &ferryv1.RegisterRequest{} }, func(m proto.Message) error {
			_, err := acc.Register(ctx, m.(*ferryv1.RegisterRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.LoginRequest{} }, func(m proto.Message) error {
			_, err := acc.Login(ctx, m.(*ferryv1.LoginRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.RevokeDeviceRequest{} }, func(m proto.Message) error {
			r := m.(*ferryv1.RevokeDeviceRequest)
			if r.GetDeviceId() == alice.Actor.Device.String() {
				return nil // revoking the fuzzer's own device would end the run
			}
			_, err := acc.RevokeDevice(ctx, r)
			return err
		}},
		{func() proto.Message { return &ferryv1.SetDisplayNameRequest{} }, func(m proto.Message) error {
			_, err := acc.SetDisplayName(ctx, m.(*ferryv1.SetDisplayNameRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.RenameDeviceRequest{} }, func(m proto.Message) error {
			_, err := acc.RenameDevice(ctx, m.(*ferryv1.RenameDeviceRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.LookupUsersRequest{} }, func(m proto.Message) error {
			_, err := acc.LookupUsers(ctx, m.(*ferryv1.LookupUsersRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.ListConversationsRequest{} }, func(m proto.Message) error {
			_, err := cs.ListConversations(ctx, m.(*ferryv1.ListConversationsRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.GetConversationRequest{} }, func(m proto.Message) error {
			_, err := cs.GetConversation(ctx, m.(*ferryv1.GetConversationRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.PushRequest{} }, func(m proto.Message) error {
			_, err := ss.Push(ctx, m.(*ferryv1.PushRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.AckRequest{} }, func(m proto.Message) error {
			_, err := ss.Ack(ctx, m.(*ferryv1.AckRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.HistoryRequest{} }, func(m proto.Message) error {
			_, err := ss.History(ctx, m.(*ferryv1.HistoryRequest))
			return err
		}},
		{func() proto.Message { return &ferryv1.RepairRequest{} }, func(m proto.Message) error {
			_, err := ss.Repair(ctx, m.(*ferryv1.RepairRequest))
			return err
		}},
	}
	id := conv.String()
	seeds := []proto.Message{
		&ferryv1.RegisterRequest{Username: "bob", Password: "correct horse"},
		&ferryv1.LoginRequest{Username: "alice", Password: "wrong"},
		&ferryv1.RevokeDeviceRequest{DeviceId: ulid.Make().String()},
		&ferryv1.SetDisplayNameRequest{DisplayName: "Alice"},
		&ferryv1.RenameDeviceRequest{DeviceId: alice.Actor.Device.String(), Name: "phone"},
		&ferryv1.LookupUsersRequest{Usernames: []string{"alice", "x"}},
		&ferryv1.ListConversationsRequest{PageSize: 3, PageToken: id},
		&ferryv1.GetConversationRequest{ConversationId: id},
		&ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: id, Ops: []*ferryv1.Op{{Id: ulid.Make().String(), Dot: 3,
			Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: []byte("x")}}}}}}},
		&ferryv1.AckRequest{Markers: []*ferryv1.Marker{{ConversationId: id, Read: 9}}},
		&ferryv1.HistoryRequest{ConversationId: id, Range: &ferryv1.HistoryRequest_BeforeSeq{BeforeSeq: 2}},
		&ferryv1.RepairRequest{ConversationId: id, Vector: &ferryv1.Vector{Entries: []*ferryv1.VectorEntry{{DeviceId: id, Dot: 1}}}},
	}
	for i, m := range seeds {
		b, _ := proto.Marshal(m)
		f.Add(uint8(i), b)
	}
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		r := rpcs[int(which)%len(rpcs)]
		req := r.req()
		if proto.Unmarshal(b, req) != nil {
			return
		}
		err := r.call(req)
		if err == nil {
			return
		}
		var ce *connect.Error
		if !errors.As(err, &ce) {
			t.Fatalf("%T: handler returned %T %v, not a *connect.Error", req, err, err)
		}
		if c := ce.Code(); c == connect.CodeInternal || c == connect.CodeUnknown {
			t.Fatalf("%T %v: %v", req, req, err)
		}
	})
	f.Cleanup(func() {
		if rep, err := eng.Check(); err != nil || rep.Err() != nil {
			f.Errorf("store inconsistent after fuzzing: %v %v", err, rep.Err())
		}
	})
}
