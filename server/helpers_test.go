package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect/v2"
	"connectrpc.com/connect/v2/connectproto"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
	"github.com/ferrysync/ferry/server/servertest"
)

// dev is a device at the protocol level: it numbers its ops and keeps what
// it received.
type dev struct {
	t *testing.T
	*servertest.Device
	mu   sync.Mutex
	dots map[string]uint64
}

func newDev(t *testing.T, d *servertest.Device) *dev {
	return &dev{t: t, Device: d, dots: map[string]uint64{}}
}

func (d *dev) user() string   { return d.Session.GetUserId() }
func (d *dev) device() string { return d.Session.GetDeviceId() }

// op builds an op with a fresh id and this device's next dot in conv.
func (d *dev) op(conv string, payload func(*ferryv1.Op)) *ferryv1.Op {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dots[conv]++
	op := &ferryv1.Op{Id: ulid.Make().String(), Dot: d.dots[conv]}
	payload(op)
	return op
}

func msg(text string) func(*ferryv1.Op) {
	return func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_Message{Message: &ferryv1.Message{Body: []byte(text), ContentType: "text/plain"}}
	}
}

// messages makes n messages of d's in conv, each of body bytes and more.
func messages(d *dev, conv string, n, body int) []*ferryv1.Op {
	ops := make([]*ferryv1.Op, n)
	for i := range ops {
		ops[i] = d.op(conv, msg(fmt.Sprint("hi ", i, strings.Repeat(".", body))))
	}
	return ops
}

func create(title string) func(*ferryv1.Op) {
	return func(o *ferryv1.Op) { o.Payload = &ferryv1.Op_Create{Create: &ferryv1.Create{Title: title}} }
}

func addMember(user string) func(*ferryv1.Op) {
	return func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_MemberAdd{MemberAdd: &ferryv1.MemberAdd{UserId: user, Role: ferryv1.Role_ROLE_MEMBER}}
	}
}

func removeMember(user string) func(*ferryv1.Op) {
	return func(o *ferryv1.Op) {
		o.Payload = &ferryv1.Op_MemberRemove{MemberRemove: &ferryv1.MemberRemove{UserId: user}}
	}
}

// push sends ops of conv and fails on any rejection.
func (d *dev) push(conv string, ops ...*ferryv1.Op) []*ferryv1.OpResult {
	d.t.Helper()
	resp, err := d.Sync.Push(context.Background(), &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: ops}}})
	if err != nil {
		d.t.Fatalf("push: %v", err)
	}
	for _, r := range resp.GetResults() {
		if r.GetStatus() == ferryv1.OpStatus_OP_STATUS_REJECTED {
			d.t.Fatalf("push %s rejected: %s: %s", r.GetOpId(), r.GetReason(), r.GetMessage())
		}
	}
	return resp.GetResults()
}

// createConv creates a conversation with members.
func (d *dev) createConv(title string, members ...*dev) string {
	d.t.Helper()
	conv := ulid.Make().String()
	ops := []*ferryv1.Op{d.op(conv, create(title))}
	for _, m := range members {
		ops = append(ops, d.op(conv, addMember(m.user())))
	}
	d.push(conv, ops...)
	return conv
}

func (d *dev) send(conv, text string) uint64 {
	d.t.Helper()
	return d.push(conv, d.op(conv, msg(text)))[0].GetSeq()
}

// stream is an open Sync session that checks the session properties on
// every message it reads.
type stream struct {
	t      *testing.T
	d      *dev
	st     ferryv1connect.SyncServiceSyncClientStream
	cancel context.CancelFunc

	welcome *ferryv1.Welcome
	infos   map[string]*ferryv1.ConversationInfo
	held    map[string]map[uint64]string // conv -> seq -> op id
	last    map[string]uint64            // conv -> last seq received (strict order)
	caught  *ferryv1.CaughtUp
	pos     uint64
	maxOps  int
	strict  bool // page_size 0: every conversation in seq order
	packed  bool // the hello asked for packed ops
	// skipOwn: the hello asked for skip_own_ops. Ops pushed on the stream
	// may then be missing from Ops; the push result that follows gives
	// their seqs, which held takes as the pushed ops' (own lists them).
	// The protocol lets an own op come back too (a large round): it must
	// be the same op.
	skipOwn  bool
	own      map[string]map[uint64]bool
	messages []*ferryv1.SyncResponse
}

func (d *dev) open(hello *ferryv1.Hello) *stream {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	st, err := d.Sync.Sync(ctx)
	if err != nil {
		cancel()
		d.t.Fatalf("open sync: %v", err)
	}
	// A stream the server refuses at once fails Send with a bare EOF; its
	// status comes from Receive, which the caller reads.
	_ = st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: hello}})
	s := &stream{t: d.t, d: d, st: st, cancel: cancel, infos: map[string]*ferryv1.ConversationInfo{},
		held: map[string]map[uint64]string{}, last: map[string]uint64{}, maxOps: int(hello.GetMaxBatchOps()), strict: hello.GetPageSize() == 0,
		packed: hello.GetPackedOps(), skipOwn: hello.GetSkipOwnOps(), own: map[string]map[uint64]bool{}}
	if s.maxOps == 0 {
		s.maxOps = 1000
	}
	d.t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	s.cancel()
	_ = s.st.Close()
}

// recv reads one message, checking it.
func (s *stream) recv() *ferryv1.SyncResponse {
	s.t.Helper()
	m, err := s.st.Receive()
	if err != nil {
		s.t.Fatalf("receive: %v", err)
	}
	s.messages = append(s.messages, m)
	switch x := m.GetMessage().(type) {
	case *ferryv1.SyncResponse_Welcome:
		s.welcome = x.Welcome
	case *ferryv1.SyncResponse_Conversations:
		for _, c := range x.Conversations.GetConversations() {
			s.infos[c.GetId()] = c
			// A live info resumes after an op the device holds: sent, or
			// its own (skip_own_ops), never one it has yet to learn of.
			if held, ra := s.held[c.GetId()], c.GetResumeAfter(); s.caught != nil && len(held) > 0 && ra > 0 {
				if _, ok := held[ra]; !ok {
					s.t.Fatalf("%s: info resumes after seq %d, which the device does not hold", c.GetId(), ra)
				}
			}
		}
	case *ferryv1.SyncResponse_Ops:
		if (s.packed && len(x.Ops.GetBatches()) > 0) || (!s.packed && len(x.Ops.GetPacked()) > 0) {
			s.t.Fatalf("the hello asked for packed ops: %v; the server sent %d packed and %d row batches", s.packed, len(x.Ops.GetPacked()), len(x.Ops.GetBatches()))
		}
		n := 0
		for _, b := range s.rows(x.Ops) {
			conv := b.GetConversationId()
			if s.infos[conv] == nil {
				s.t.Fatalf("ops of %s before its conversation info", conv)
			}
			if s.held[conv] == nil {
				s.held[conv] = map[uint64]string{}
				s.last[conv] = s.infos[conv].GetResumeAfter()
			}
			for i, op := range b.GetOps() {
				n++
				if i > 0 && op.GetSeq() != b.GetOps()[i-1].GetSeq()+1 {
					s.t.Fatalf("%s: batch not contiguous: %d after %d", conv, op.GetSeq(), b.GetOps()[i-1].GetSeq())
				}
				if id, dup := s.held[conv][op.GetSeq()]; dup && !(s.own[conv][op.GetSeq()] && id == op.GetId()) {
					s.t.Fatalf("%s: seq %d received twice", conv, op.GetSeq())
				}
				if s.strict && op.GetSeq() != s.last[conv]+1 && !s.skipOwn {
					s.t.Fatalf("%s: seq %d after %d: out of order or a hole", conv, op.GetSeq(), s.last[conv])
				}
				s.last[conv] = op.GetSeq()
				s.held[conv][op.GetSeq()] = op.GetId()
			}
		}
		if n > s.maxOps {
			s.t.Fatalf("an Ops message carried %d ops; the session's bound is %d", n, s.maxOps)
		}
		if x.Ops.GetFeedPos() != 0 {
			s.pos = x.Ops.GetFeedPos()
		}
	case *ferryv1.SyncResponse_CaughtUp:
		s.caught, s.pos = x.CaughtUp, x.CaughtUp.GetFeedPos()
	case *ferryv1.SyncResponse_PushResult:
		if x.PushResult.GetFeedPos() == 0 {
			break // the pushed ops come back in Ops
		}
		if !s.skipOwn {
			s.t.Fatalf("a push result with a feed position on a stream that did not ask for skip_own_ops")
		}
		if got, had := s.d.Position(x.PushResult.GetFeedPos()), s.d.Position(s.pos); got < had {
			s.t.Fatalf("push result's feed position %d is behind the session's %d", got, had)
		}
		s.pos = x.PushResult.GetFeedPos()
		for _, r := range x.PushResult.GetResults() {
			conv := r.GetConversationId()
			if r.GetSeq() == 0 {
				continue
			}
			if id, dup := s.held[conv][r.GetSeq()]; dup && id != r.GetOpId() {
				s.t.Fatalf("%s: seq %d is %s in Ops, and %s pushed", conv, r.GetSeq(), id, r.GetOpId())
			}
			if s.held[conv] == nil {
				s.held[conv] = map[uint64]string{}
			}
			if s.own[conv] == nil {
				s.own[conv] = map[uint64]bool{}
			}
			s.held[conv][r.GetSeq()] = r.GetOpId()
			s.own[conv][r.GetSeq()] = true
		}
	}
	return m
}

// rows returns an Ops message's batches as rows, unpacking packed ones.
func (s *stream) rows(m *ferryv1.Ops) []*ferryv1.OpBatch {
	s.t.Helper()
	return rowsOf(s.t, m)
}

// rowsOf returns an Ops message's batches as rows, unpacking packed ones.
func rowsOf(t *testing.T, m *ferryv1.Ops) []*ferryv1.OpBatch {
	t.Helper()
	if len(m.GetPacked()) == 0 {
		return m.GetBatches()
	}
	var out []*ferryv1.OpBatch
	for i, p := range m.GetPacked() {
		b, err := wire.UnpackRows(fmt.Sprintf("ops.packed[%d]", i), p)
		if err != nil {
			t.Fatalf("unpack: %v", err)
		}
		out = append(out, b)
	}
	return out
}

// untilCaughtUp reads until CaughtUp.
func (s *stream) untilCaughtUp() {
	s.t.Helper()
	for s.caught == nil {
		s.recv()
	}
}

// until reads until pred holds for a message (bounded by the stream's
// deadline).
func (s *stream) until(pred func(*ferryv1.SyncResponse) bool) *ferryv1.SyncResponse {
	s.t.Helper()
	for {
		if m := s.recv(); pred(m) {
			return m
		}
	}
}

// push pushes ops of conv on the stream as request id, without waiting
// for the result.
func (s *stream) push(id uint64, conv string, ops ...*ferryv1.Op) {
	s.t.Helper()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: &ferryv1.Push{
		RequestId: id, Batches: []*ferryv1.OpBatch{{ConversationId: conv, Ops: ops}}}}})
}

func (s *stream) send(m *ferryv1.SyncRequest) {
	s.t.Helper()
	if err := s.st.Send(m); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

// holds checks that the stream holds exactly seqs from..to of conv.
func (s *stream) holds(conv string, from, to uint64) {
	s.t.Helper()
	if got := uint64(len(s.held[conv])); got != to-from+1 {
		s.t.Fatalf("%s: holds %d ops, want seqs %d..%d", conv, got, from, to)
	}
	for q := from; q <= to; q++ {
		if _, ok := s.held[conv][q]; !ok {
			s.t.Fatalf("%s: missing seq %d", conv, q)
		}
	}
}

// endErr reads until the stream ends and returns its error (nil when it
// ended cleanly).
func (s *stream) endErr() error {
	for {
		_, err := s.st.Receive()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func code(err error) connect.Code { return connect.CodeOf(err) }

// retryDelay is the retry delay a throttled call's error carries (a
// google.protobuf.Duration detail), and whether it carries one.
func retryDelay(err error) (time.Duration, bool) {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return 0, false
	}
	for _, d := range ce.Details() {
		if m, derr := connectproto.UnmarshalErrorDetail(d); derr == nil {
			if dur, ok := m.(*durationpb.Duration); ok {
				return dur.AsDuration(), true
			}
		}
	}
	return 0, false
}

func mustCode(t *testing.T, what string, err error, want connect.Code) {
	t.Helper()
	if got := code(err); got != want {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, want)
	}
}

func hello(epoch string, pos uint64) *ferryv1.Hello {
	return &ferryv1.Hello{Epoch: epoch, FeedPos: pos, Client: "servertest"}
}

var _ = fmt.Sprint
