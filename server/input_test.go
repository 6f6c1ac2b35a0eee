package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrysync/ferry/engine"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server"
	"github.com/ferrysync/ferry/server/servertest"
)

func TestBadInputGetsClearErrorsAndStoresNothing(t *testing.T) {
	srv := servertest.New(t, servertest.Config{
		Engine: func(o *engine.Options) { o.MaxBodyBytes = 1000 },
		Server: func(o *server.Options) { o.MaxMessageBytes = 256 << 10 },
	})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	pushOne := func(op *ferryv1.Op) (*ferryv1.PushResponse, error) {
		return alice.Sync.Push(bg, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{op}}}})
	}

	// A message over the read limit.
	big := &ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: make([]byte, 300<<10)}}}
	_, err := pushOne(big)
	mustCode(t, "message over the read limit", err, connect.CodeResourceExhausted)

	// Too many ops in one push.
	var many []*ferryv1.Op
	for range 1001 {
		many = append(many, &ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{}}})
	}
	_, err = alice.Sync.Push(bg, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: many}}})
	mustCode(t, "1001 ops", err, connect.CodeResourceExhausted)
	if !strings.Contains(err.Error(), "limit is 1000") {
		t.Errorf("1001 ops: message does not say the limit: %v", err)
	}

	// Malformed ops are rejected one by one, with what is wrong: whether
	// the engine finds it or the request's decoding. An op of a kind newer
	// than the server comes with its payload in a field the server does
	// not know.
	newer := &ferryv1.Op{Id: ulid.Make().String(), Dot: 2}
	newer.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 42, protowire.BytesType), []byte("new")))
	for name, tc := range map[string]struct {
		op   *ferryv1.Op
		want string
	}{
		"body over the limit": {&ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: make([]byte, 1001)}}}, "limit of 1000"},
		"no payload":          {&ferryv1.Op{Id: ulid.Make().String(), Dot: 2}, "batches[0].ops[0] has no payload: set one of"},
		"a newer kind":        {newer, "batches[0].ops[0] has no payload this server knows: it has field 42, which this server does not (an op kind newer than the server?)"},
		"zero dot":            {&ferryv1.Op{Id: ulid.Make().String(), Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{}}}, "dot must be 1 or more"},
		"edit without target": {&ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_Edit{Edit: &ferryv1.Edit{}}}, "batches[0].ops[0].edit.target_id is required"},
		// A payload's field is named as such, not as the op's own field
		// of the same name (user_id: the author, which the server sets).
		"malformed member": {&ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_MemberAdd{MemberAdd: &ferryv1.MemberAdd{UserId: "x"}}}, `batches[0].ops[0].member_add.user_id "x" is not a ULID`},
		"no member":        {&ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_MemberRemove{MemberRemove: &ferryv1.MemberRemove{}}}, "batches[0].ops[0].member_remove.user_id is required"},
		"malformed target": {&ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_ReactionAdd{ReactionAdd: &ferryv1.Reaction{TargetId: "t", Key: "👍"}}}, `batches[0].ops[0].reaction_add.target_id "t" is not a ULID`},
		"erased set":       {&ferryv1.Op{Id: ulid.Make().String(), Dot: 2, Erased: true, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{}}}, "batches[0].ops[0].erased is set by the server"},
		"malformed id":     {&ferryv1.Op{Id: "x", Dot: 2, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{}}}, `batches[0].ops[0].id "x" is not a ULID`},
		"malformed device": {&ferryv1.Op{Id: ulid.Make().String(), DeviceId: "d", Dot: 2, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{}}}, `batches[0].ops[0].device_id "d" is not a ULID`},
	} {
		resp, err := pushOne(tc.op)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r := resp.GetResults()[0]
		if r.GetStatus() != ferryv1.OpStatus_OP_STATUS_REJECTED || r.GetReason() != ferryv1.RejectReason_REJECT_REASON_INVALID ||
			!strings.Contains(r.GetMessage(), tc.want) || r.GetOpId() != tc.op.GetId() || r.GetConversationId() != conv {
			t.Errorf("%s: %v, want INVALID for op %q saying %q", name, r, tc.op.GetId(), tc.want)
		}
	}

	// A malformed op takes nothing from the push's other ops: they are
	// stored, and the device's next dot is the one it skipped. Only a
	// batch's malformed conversation id refuses the whole push, as no op
	// of the batch can be answered for.
	ok := func(dot uint64) *ferryv1.Op {
		return &ferryv1.Op{Id: ulid.Make().String(), Dot: dot, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{}}}
	}
	_, err = alice.Sync.Push(bg, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{ok(2)}}, {ConversationId: "nope"}}})
	mustCode(t, "second batch's conversation", err, connect.CodeInvalidArgument)
	if want := `batches[1].conversation_id "nope" is not a ULID`; err != nil && !strings.Contains(err.Error(), want) {
		t.Errorf("second batch's conversation: %v does not say %q", err, want)
	}
	mixed := []*ferryv1.Op{ok(2), {Id: "y", Dot: 3}, ok(3)}
	resp, err := alice.Sync.Push(bg, &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: mixed}}})
	if err != nil {
		t.Fatalf("a push with a malformed op: %v", err)
	}
	if rs := resp.GetResults(); len(rs) != 3 ||
		rs[0].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED || rs[0].GetSeq() != 2 ||
		rs[1].GetStatus() != ferryv1.OpStatus_OP_STATUS_REJECTED || rs[1].GetReason() != ferryv1.RejectReason_REJECT_REASON_INVALID ||
		rs[1].GetOpId() != "y" || !strings.Contains(rs[1].GetMessage(), `batches[0].ops[1].id "y" is not a ULID`) ||
		rs[2].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED || rs[2].GetSeq() != 3 {
		t.Fatalf("a push with a malformed op between two good ones answered %v", rs)
	}
	_, err = alice.Sync.Ack(bg, &ferryv1.AckRequest{Markers: []*ferryv1.Marker{{ConversationId: conv, Delivered: 1}, {ConversationId: "m"}}})
	mustCode(t, "malformed marker", err, connect.CodeInvalidArgument)
	if want := `markers[1].conversation_id "m" is not a ULID`; err != nil && !strings.Contains(err.Error(), want) {
		t.Errorf("malformed marker: %v does not say %q", err, want)
	}

	// Malformed ids and parameters.
	_, err = alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: "not-a-ulid"})
	mustCode(t, "malformed conversation id", err, connect.CodeInvalidArgument)
	_, err = alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv, Limit: 5000})
	mustCode(t, "history limit", err, connect.CodeInvalidArgument)
	_, err = alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv, Range: &ferryv1.HistoryRequest_BeforeSeq{}})
	mustCode(t, "before_seq 0", err, connect.CodeInvalidArgument)
	for name, r := range map[string][2]time.Time{
		"ends in year 1 (a zero time.Time)": {time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
		"starts in 1969":                    {time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC), time.Now()},
	} {
		_, err = alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv, Range: &ferryv1.HistoryRequest_TimeRange{
			TimeRange: &ferryv1.TimeRange{Start: timestamppb.New(r[0]), End: timestamppb.New(r[1])}}})
		mustCode(t, "time range that "+name, err, connect.CodeInvalidArgument)
		if err != nil && !strings.Contains(err.Error(), "before 1970") {
			t.Errorf("time range that %s: %v does not say why", name, err)
		}
	}
	_, err = alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv, Range: &ferryv1.HistoryRequest_TimeRange{
		TimeRange: &ferryv1.TimeRange{Start: timestamppb.New(time.UnixMilli(0)), End: timestamppb.Now(), AfterId: "z"}}})
	mustCode(t, "malformed after_id", err, connect.CodeInvalidArgument)
	if want := `time_range.after_id "z" is not a ULID`; err != nil && !strings.Contains(err.Error(), want) {
		t.Errorf("malformed after_id: %v does not say %q", err, want)
	}
	_, err = alice.Sync.Repair(bg, &ferryv1.RepairRequest{ConversationId: conv, Vector: &ferryv1.Vector{Entries: []*ferryv1.VectorEntry{{DeviceId: "x"}}}})
	mustCode(t, "malformed vector", err, connect.CodeInvalidArgument)
	_, err = srv.Clients("").Account.Register(bg, &ferryv1.RegisterRequest{Username: "x", Password: "correct horse"})
	mustCode(t, "short username", err, connect.CodeInvalidArgument)
	_, err = srv.Clients("").Account.Register(bg, &ferryv1.RegisterRequest{Username: "mallory", Password: "short"})
	mustCode(t, "short password", err, connect.CodeInvalidArgument)
	if err != nil && strings.Count(err.Error(), "invalid") != 1 {
		t.Errorf("short password: %q says invalid more than once", err.Error())
	}
	_, err = srv.Clients("").Account.Register(bg, &ferryv1.RegisterRequest{Username: "alice", Password: "correct horse"})
	mustCode(t, "taken username", err, connect.CodeAlreadyExists)
	_, err = srv.Clients("").Account.Login(bg, &ferryv1.LoginRequest{Username: "alice", Password: "wrong horse"})
	mustCode(t, "wrong password", err, connect.CodeUnauthenticated)
	// The message does not say the code again: a client prints both.
	if err != nil && err.Error() != "unauthenticated: wrong username or password" {
		t.Errorf("wrong password: %q", err.Error())
	}
	// A compressed body that decompresses past the account service's
	// small limit is refused before it is decoded: its zstd frame is a few
	// hundred bytes.
	_, err = srv.Clients("").Account.Register(bg, &ferryv1.RegisterRequest{Username: "mallory", Password: "correct horse", DisplayName: strings.Repeat("m", 100<<10)})
	mustCode(t, "a register of 100 KiB", err, connect.CodeResourceExhausted)
	_, err = srv.Clients("").Account.Login(bg, &ferryv1.LoginRequest{Username: "alice", Password: "correct horse", DeviceName: strings.Repeat("m", 100<<10)})
	mustCode(t, "a login of 100 KiB", err, connect.CodeResourceExhausted)

	// A session must start with a hello, and say it once.
	st, _ := alice.Sync.Sync(bg)
	_ = st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Heartbeat{Heartbeat: &ferryv1.Heartbeat{}}})
	_, err = st.Receive()
	mustCode(t, "no hello", err, connect.CodeInvalidArgument)
	s := alice.open(hello("", 0))
	s.untilCaughtUp()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: &ferryv1.Hello{}}})
	mustCode(t, "second hello", s.endErr(), connect.CodeInvalidArgument)
	s = alice.open(&ferryv1.Hello{Epoch: "bogus"})
	mustCode(t, "malformed epoch", s.endErr(), connect.CodeInvalidArgument)

	// Nothing of the above was stored but the two good ops.
	page, err := alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv})
	if err != nil || page.GetHead() != 3 {
		t.Fatalf("bad input changed the log: head %d (%v)", page.GetHead(), err)
	}
	if rep, err := srv.Engine.Check(); err != nil || rep.Err() != nil {
		t.Fatalf("check: %v %v", err, rep.Err())
	}
}

// TestCompressionBomb sends a small zstd body that inflates to 64 MiB: it is
// refused at the read limit, not inflated.
func TestCompressionBomb(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	req := &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: []*ferryv1.Op{{
		Id: ulid.Make().String(), Dot: 2, Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{Body: make([]byte, 64<<20)}}}}}}}
	raw, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	bomb := enc.EncodeAll(raw, nil)
	if len(bomb) > 64<<10 {
		t.Fatalf("bomb is %d bytes; it should be small", len(bomb))
	}
	httpReq, _ := http.NewRequest("POST", srv.URL+"/ferry.v1.SyncService/Push", bytes.NewReader(bomb))
	httpReq.Header.Set("Content-Type", "application/proto")
	httpReq.Header.Set("Content-Encoding", "zstd")
	httpReq.Header.Set("Connect-Protocol-Version", "1")
	httpReq.Header.Set("Authorization", "Bearer "+alice.Session.GetToken())
	resp, err := srv.HTTP.Do(httpReq)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var e struct{ Code string }
	_ = json.Unmarshal(body, &e)
	if e.Code != "resource_exhausted" {
		t.Fatalf("bomb: HTTP %d %s, want resource_exhausted", resp.StatusCode, body)
	}
	if page, _ := alice.Sync.History(bg, &ferryv1.HistoryRequest{ConversationId: conv}); page.GetHead() != 1 {
		t.Fatal("the bomb was stored")
	}
}

// TestStreamsPerDevice: a device cannot hold more sessions than the limit.
func TestStreamsPerDevice(t *testing.T) {
	srv := servertest.New(t, servertest.Config{Server: func(o *server.Options) { o.MaxStreamsPerDevice = 2 }})
	alice := newDev(t, srv.Register("alice"))
	for range 2 {
		alice.open(hello("", 0)).untilCaughtUp()
	}
	mustCode(t, "third session", alice.open(hello("", 0)).endErr(), connect.CodeResourceExhausted)
	// Another device of the same user is not affected.
	newDev(t, srv.Login("alice", "laptop")).open(hello("", 0)).untilCaughtUp()
}

// TestTimeRangePagesGoOnAfterAnID: a time range's pages carry the id to go
// on after, which the next request sends back, through every op once.
func TestTimeRangePagesGoOnAfterAnID(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice := newDev(t, srv.Register("alice"))
	conv := alice.createConv("c")
	alice.push(conv, messages(alice, conv, 5, 10)...)
	tr := &ferryv1.TimeRange{Start: timestamppb.New(time.UnixMilli(0)), End: timestamppb.New(time.Now().Add(time.Hour))}
	var ids []string
	for range 10 {
		page, err := alice.Sync.History(context.Background(), &ferryv1.HistoryRequest{ConversationId: conv, Limit: 2, Range: &ferryv1.HistoryRequest_TimeRange{TimeRange: tr}})
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range page.GetOps() {
			ids = append(ids, op.GetId())
		}
		if !page.GetMore() {
			break
		}
		if page.GetNextAfterId() != ids[len(ids)-1] {
			t.Fatalf("next_after_id %q, want the page's last id %q", page.GetNextAfterId(), ids[len(ids)-1])
		}
		tr.AfterId = page.GetNextAfterId()
	}
	if len(ids) != 6 || !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != 6 {
		t.Fatalf("paged %v: want the 6 ops (the creation and 5 messages), each once, in id order", ids)
	}
}
