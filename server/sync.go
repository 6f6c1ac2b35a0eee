package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/clock"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

type syncService struct{ s *Server }

var _ ferryv1connect.SyncServiceHandler = syncService{}

// push validates and appends pushed ops, answering each op: malformed ones
// are rejected as INVALID without being stored, the others go to the engine
// in order. Batch-level problems fail the whole push.
func (s *Server) push(ctx context.Context, a engine.Actor, batches []*ferryv1.OpBatch) ([]*ferryv1.OpResult, error) {
	ops, err := opsFromBatches(batches, maxOpsPerPush)
	if err != nil {
		return nil, err
	}
	results := make([]*ferryv1.OpResult, len(ops))
	valid := make([]model.Op, 0, len(ops))
	at := make([]int, 0, len(ops))
	for i := range ops {
		if err := s.eng.CheckOp(a, &ops[i]); err != nil {
			results[i] = &ferryv1.OpResult{
				ConversationId: ops[i].Conv.String(), OpId: ops[i].ID.String(),
				Status: ferryv1.OpStatus_OP_STATUS_REJECTED, Reason: ferryv1.RejectReason_REJECT_REASON_INVALID,
				Message: err.Error(),
			}
			continue
		}
		valid = append(valid, ops[i])
		at = append(at, i)
	}
	if len(valid) > 0 {
		res, err := s.eng.Append(ctx, a, valid)
		if err != nil {
			return nil, connectError(err)
		}
		for i, r := range resultsToProto(res) {
			results[at[i]] = r
		}
	}
	return results, nil
}

// maxOpsPerPush caps one push; the engine's default limit.
const maxOpsPerPush = 1000

func (h syncService) Push(ctx context.Context, req *ferryv1.PushRequest) (*ferryv1.PushResponse, error) {
	results, err := h.s.push(ctx, actorFrom(ctx), req.GetBatches())
	if err != nil {
		return nil, err
	}
	return &ferryv1.PushResponse{Results: results}, nil
}

func (h syncService) Ack(ctx context.Context, req *ferryv1.AckRequest) (*ferryv1.AckResponse, error) {
	marks, err := markersFromProto(req.GetMarkers())
	if err != nil {
		return nil, err
	}
	if err := h.s.eng.Mark(ctx, actorFrom(ctx), marks); err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.AckResponse{}, nil
}

func (h syncService) History(ctx context.Context, req *ferryv1.HistoryRequest) (*ferryv1.HistoryResponse, error) {
	conv, err := parseID("conversation_id", req.GetConversationId())
	if err != nil {
		return nil, err
	}
	if req.GetLimit() > engine.MaxHistoryLimit {
		return nil, invalidf("limit %d is over the maximum of %d", req.GetLimit(), engine.MaxHistoryLimit)
	}
	q := engine.HistoryQuery{Limit: int(req.GetLimit())}
	switch r := req.GetRange().(type) {
	case *ferryv1.HistoryRequest_BeforeSeq:
		if r.BeforeSeq == 0 {
			return nil, invalidf("before_seq must be at least 1; use head + 1 for the newest page")
		}
		q.Before = r.BeforeSeq
	case *ferryv1.HistoryRequest_AfterSeq:
		q.After = r.AfterSeq
	case *ferryv1.HistoryRequest_TimeRange:
		if r.TimeRange.GetStart() == nil || r.TimeRange.GetEnd() == nil {
			return nil, invalidf("time_range needs both start and end")
		}
		if err := r.TimeRange.GetStart().CheckValid(); err != nil {
			return nil, invalidf("time_range.start: %v", err)
		}
		if err := r.TimeRange.GetEnd().CheckValid(); err != nil {
			return nil, invalidf("time_range.end: %v", err)
		}
		q.Start, q.End = r.TimeRange.GetStart().AsTime(), r.TimeRange.GetEnd().AsTime()
	case nil:
		// The oldest page.
	}
	page, err := h.s.eng.History(actorFrom(ctx), conv, q)
	if err != nil {
		return nil, connectError(err)
	}
	return &ferryv1.HistoryResponse{ConversationId: conv.String(), Ops: opsToProto(page.Ops), Head: page.Head, More: page.More}, nil
}

func (h syncService) Repair(ctx context.Context, req *ferryv1.RepairRequest) (*ferryv1.RepairResponse, error) {
	conv, err := parseID("conversation_id", req.GetConversationId())
	if err != nil {
		return nil, err
	}
	have, err := vectorFromProto("vector", req.GetVector())
	if err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = 500
	}
	if limit > engine.MaxHistoryLimit {
		return nil, invalidf("limit %d is over the maximum of %d", limit, engine.MaxHistoryLimit)
	}
	res, err := h.s.eng.Repair(actorFrom(ctx), conv, have, limit)
	if err != nil {
		return nil, connectError(err)
	}
	resp := &ferryv1.RepairResponse{
		ConversationId: conv.String(), Head: res.Head, Vector: vectorToProto(res.Vector),
		Missing: opsToProto(res.Missing), More: res.More,
	}
	for _, w := range res.Want {
		resp.Want = append(resp.Want, &ferryv1.DotRange{DeviceId: w.Device.String(), FromDot: w.From, ToDot: w.To})
	}
	return resp, nil
}

// Limits on a hello.
const (
	maxHelloCursors = 100_000
	maxClientName   = 64
)

func sessionOptions(h *ferryv1.Hello) (engine.SessionOptions, error) {
	var o engine.SessionOptions
	var err error
	if h == nil {
		return o, invalidf("the first message of a session must be a hello")
	}
	if len(h.GetClient()) > maxClientName {
		return o, invalidf("hello.client is longer than %d bytes", maxClientName)
	}
	if o.Epoch, err = parseOptionalID("hello.epoch", h.GetEpoch()); err != nil {
		return o, err
	}
	o.FeedPos = h.GetFeedPos()
	if len(h.GetCursors()) > maxHelloCursors {
		return o, connect.NewError(connect.CodeResourceExhausted, fmt.Sprintf("hello has %d cursors; the limit is %d", len(h.GetCursors()), maxHelloCursors))
	}
	if len(h.GetCursors()) > 0 {
		o.Cursors = make(map[ulid.ULID]uint64, len(h.GetCursors()))
		for i, c := range h.GetCursors() {
			id, err := parseID(fmt.Sprintf("hello.cursors[%d].conversation_id", i), c.GetConversationId())
			if err != nil {
				return o, err
			}
			o.Cursors[id] = c.GetSeq()
		}
	}
	o.PageSize, o.MaxBatchOps, o.MaxBatchBytes = int(h.GetPageSize()), int(h.GetMaxBatchOps()), int(h.GetMaxBatchBytes())
	return o, nil
}

// sink sends a session's messages on one kind of stream.
type sink interface {
	welcome(*ferryv1.Welcome) error
	conversations(*ferryv1.Conversations) error
	ops(*ferryv1.Ops) error
	caughtUp(*ferryv1.CaughtUp) error
	heartbeat(*ferryv1.Heartbeat) error
	reset(*ferryv1.ResetRequired) error
	goaway(*ferryv1.Goaway) error
	pushResult(*ferryv1.PushResult) error
}

type syncSink struct {
	st ferryv1connect.SyncServiceSyncServerStream
}

func (k syncSink) send(m *ferryv1.SyncResponse) error { return k.st.Send(m) }
func (k syncSink) welcome(m *ferryv1.Welcome) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Welcome{Welcome: m}})
}
func (k syncSink) conversations(m *ferryv1.Conversations) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Conversations{Conversations: m}})
}
func (k syncSink) ops(m *ferryv1.Ops) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Ops{Ops: m}})
}
func (k syncSink) caughtUp(m *ferryv1.CaughtUp) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_CaughtUp{CaughtUp: m}})
}
func (k syncSink) heartbeat(m *ferryv1.Heartbeat) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Heartbeat{Heartbeat: m}})
}
func (k syncSink) reset(m *ferryv1.ResetRequired) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_ResetRequired{ResetRequired: m}})
}
func (k syncSink) goaway(m *ferryv1.Goaway) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_Goaway{Goaway: m}})
}
func (k syncSink) pushResult(m *ferryv1.PushResult) error {
	return k.send(&ferryv1.SyncResponse{Message: &ferryv1.SyncResponse_PushResult{PushResult: m}})
}

type subscribeSink struct {
	st ferryv1connect.SyncServiceSubscribeServerStream
}

func (k subscribeSink) send(m *ferryv1.SubscribeResponse) error { return k.st.Send(m) }
func (k subscribeSink) welcome(m *ferryv1.Welcome) error {
	return k.send(&ferryv1.SubscribeResponse{Message: &ferryv1.SubscribeResponse_Welcome{Welcome: m}})
}
func (k subscribeSink) conversations(m *ferryv1.Conversations) error {
	return k.send(&ferryv1.SubscribeResponse{Message: &ferryv1.SubscribeResponse_Conversations{Conversations: m}})
}
func (k subscribeSink) ops(m *ferryv1.Ops) error {
	return k.send(&ferryv1.SubscribeResponse{Message: &ferryv1.SubscribeResponse_Ops{Ops: m}})
}
func (k subscribeSink) caughtUp(m *ferryv1.CaughtUp) error {
	return k.send(&ferryv1.SubscribeResponse{Message: &ferryv1.SubscribeResponse_CaughtUp{CaughtUp: m}})
}
func (k subscribeSink) heartbeat(m *ferryv1.Heartbeat) error {
	return k.send(&ferryv1.SubscribeResponse{Message: &ferryv1.SubscribeResponse_Heartbeat{Heartbeat: m}})
}
func (k subscribeSink) reset(m *ferryv1.ResetRequired) error {
	return k.send(&ferryv1.SubscribeResponse{Message: &ferryv1.SubscribeResponse_ResetRequired{ResetRequired: m}})
}
func (k subscribeSink) goaway(m *ferryv1.Goaway) error {
	return k.send(&ferryv1.SubscribeResponse{Message: &ferryv1.SubscribeResponse_Goaway{Goaway: m}})
}
func (k subscribeSink) pushResult(*ferryv1.PushResult) error {
	return errors.New("server: push result on a subscribe stream")
}

// inbound is what a Sync session's receiver hands to its sender.
type inbound struct {
	result *ferryv1.PushResult // a push was answered
	err    error               // the client's side ended (nil: cleanly) or broke the protocol
	done   bool
}

func (h syncService) Sync(ctx context.Context, st ferryv1connect.SyncServiceSyncServerStream) error {
	a := actorFrom(ctx)
	release, err := h.s.acquireStream(a.Device)
	if err != nil {
		return err
	}
	defer release()
	// The hello must come within three heartbeat intervals: a client that
	// opens streams and says nothing must not hold slots.
	type first struct {
		req *ferryv1.SyncRequest
		err error
	}
	got := make(chan first, 1)
	h.s.active.Add(1)
	go func() {
		defer h.s.active.Done()
		req, err := st.Receive()
		got <- first{req, err}
	}()
	deadline := h.s.opts.Clock.NewTimer(3 * h.s.opts.HeartbeatInterval)
	var f first
	select {
	case f = <-got:
		deadline.Stop()
	case <-deadline.C():
		return connect.NewError(connect.CodeDeadlineExceeded, "no hello: a Sync session starts with a hello")
	case <-ctx.Done():
		deadline.Stop()
		return ctx.Err()
	}
	if f.err != nil {
		return f.err
	}
	hello := f.req.GetHello()
	if hello == nil {
		return invalidf("the first message of a Sync session must be a hello")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := make(chan inbound, 4)
	h.s.active.Add(1)
	go h.s.receive(ctx, a, st, in)
	return h.s.session(ctx, a, hello, syncSink{st}, in)
}

// receive reads a Sync session's client messages until the stream ends,
// answering pushes and acks as they come; the results go to the sender.
func (s *Server) receive(ctx context.Context, a engine.Actor, st ferryv1connect.SyncServiceSyncServerStream, in chan<- inbound) {
	defer s.active.Done()
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in sync receiver", "panic", r, "stack", string(debug.Stack()))
			select {
			case in <- inbound{done: true, err: connect.NewError(connect.CodeInternal, "internal error")}:
			case <-ctx.Done():
			}
		}
	}()
	hand := func(m inbound) bool {
		select {
		case in <- m:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		req, err := st.Receive()
		if err != nil {
			if errors.Is(err, context.Canceled) || ctx.Err() != nil {
				return
			}
			hand(inbound{done: true, err: ignoreEOF(err)})
			return
		}
		var m inbound
		switch msg := req.GetMessage().(type) {
		case *ferryv1.SyncRequest_Push:
			results, err := s.push(ctx, a, msg.Push.GetBatches())
			if err != nil {
				hand(inbound{done: true, err: err})
				return
			}
			m.result = &ferryv1.PushResult{RequestId: msg.Push.GetRequestId(), Results: results}
		case *ferryv1.SyncRequest_Ack:
			marks, err := markersFromProto(msg.Ack.GetMarkers())
			if err == nil {
				err = connectError(s.eng.Mark(ctx, a, marks))
			}
			if err != nil {
				hand(inbound{done: true, err: err})
				return
			}
		case *ferryv1.SyncRequest_Heartbeat:
		case *ferryv1.SyncRequest_Hello:
			hand(inbound{done: true, err: invalidf("hello may only be sent once, as the first message")})
			return
		default:
			hand(inbound{done: true, err: invalidf("empty or unknown message: send push, ack or heartbeat")})
			return
		}
		if !hand(m) {
			return
		}
	}
}

func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func (h syncService) Subscribe(ctx context.Context, req *ferryv1.SubscribeRequest, st ferryv1connect.SyncServiceSubscribeServerStream) error {
	a := actorFrom(ctx)
	release, err := h.s.acquireStream(a.Device)
	if err != nil {
		return err
	}
	defer release()
	if req.GetHello() == nil {
		return invalidf("a Subscribe request needs a hello")
	}
	return h.s.session(ctx, a, req.GetHello(), subscribeSink{st}, nil)
}

// session runs one sync session: the catch-up, then live rounds, with push
// results, heartbeats and a Goaway at shutdown interleaved. It is the only
// goroutine that sends on the stream.
func (s *Server) session(ctx context.Context, a engine.Actor, hello *ferryv1.Hello, out sink, in <-chan inbound) error {
	o, err := sessionOptions(hello)
	if err != nil {
		return err
	}
	sess, err := s.eng.OpenSession(a, o)
	var reset *engine.ResetError
	if errors.As(err, &reset) {
		return out.reset(&ferryv1.ResetRequired{Reason: resetReason(reset.Reason), Message: reset.Detail, Epoch: reset.Epoch})
	}
	if err != nil {
		return connectError(err)
	}
	defer sess.Close()
	w := sess.Welcome()
	err = out.welcome(&ferryv1.Welcome{
		Epoch: w.Epoch.String(), UserId: a.User.String(), DeviceId: a.Device.String(),
		FeedPos: w.FeedPos, ChangedConversations: uint32(w.Changed), MissingOps: w.MissingOps,
		HeartbeatIntervalMs: uint32(s.opts.HeartbeatInterval / time.Millisecond),
		Limits: &ferryv1.Limits{
			MaxOpsPerPush: maxOpsPerPush, MaxBodyBytes: uint32(s.eng.MaxBodyBytes()), MaxMessageBytes: uint32(s.opts.MaxMessageBytes),
		},
		ServerTime: timestamppb.New(s.opts.Clock.Now()),
	})
	if err != nil {
		return err
	}
	s.log.Debug("session started", "user", a.User, "device", a.Device, "changed", w.Changed, "missing", w.MissingOps)

	l := &loop{s: s, sess: sess, out: out, in: in, hb: s.opts.Clock.NewTimer(s.opts.HeartbeatInterval), hold: holdFlushes(ctx),
		packed: hello.GetPackedOps()}
	defer l.hb.Stop()
	if in != nil {
		// Sync clients send heartbeats; silence means a dead peer.
		l.idle = s.opts.Clock.NewTimer(3 * s.opts.HeartbeatInterval)
		defer l.idle.Stop()
	}
	return l.run(ctx)
}

// loop is one session's sending side.
type loop struct {
	s    *Server
	sess *engine.Session
	out  sink
	in   <-chan inbound // nil on Subscribe
	hb   clock.Timer    // fires after HeartbeatInterval without a send
	idle clock.Timer    // Sync only: fires after three intervals without a client message
	hold func(bool)     // holds the stream's flushes while more is ready to send
	// packed: the client reads Ops packed (Hello.packed_ops).
	packed bool
	// ahead delivers the event being read ahead, while the previous one
	// is sent; nil when none is. While it is set, the session belongs to
	// the reading goroutine.
	ahead chan step
}

// step is one event of the session, with its Ops message built.
type step struct {
	ev  engine.Event
	ok  bool
	ops *ferryv1.Ops // for EventOps
	err error
}

func (l *loop) run(ctx context.Context) error {
	// The session is closed after run returns: first wait for a read in
	// progress, which uses it.
	defer func() {
		if l.ahead != nil {
			<-l.ahead
			<-l.s.aheads
		}
	}()
	var idle <-chan time.Time
	if l.idle != nil {
		idle = l.idle.C()
	}
	for {
		st := l.next()
		if err := st.err; err != nil {
			if errors.Is(err, engine.ErrUnauthenticated) {
				return connect.NewError(connect.CodeUnauthenticated, "this device was revoked; log in again")
			}
			return err
		}
		if st.ok {
			ev := st.ev
			// A round's conversations and their ops leave in one write:
			// hold the flush of a message whose ops follow at once. Ops
			// of a catch-up still leave one message at a time, so the
			// newest pages are not held up behind the backfill.
			pending := l.sess.Pending()
			l.hold(pending && (ev.Kind == engine.EventConversations || ev.Phase == engine.PhaseLive))
			if pending && ev.Kind == engine.EventOps && ev.Phase != engine.PhaseLive {
				// A catch-up: read and pack the next message while this
				// one is compressed and written, when a read-ahead slot
				// is free (Options.MaxReadAheads).
				l.readAhead()
			}
			err := l.send(st)
			l.hold(false)
			if err != nil {
				return err
			}
			l.hb.Reset(l.s.opts.HeartbeatInterval)
			// Between catch-up messages, answer pushes and notice the end.
			select {
			case m := <-l.in:
				if done, err := l.handle(m); done {
					return err
				}
			case <-l.s.goaway:
				return l.s.sayGoaway(l.out)
			case <-ctx.Done():
				return ctx.Err()
			default:
			}
			continue
		}
		select {
		case <-l.sess.Changed():
		case <-l.hb.C():
			if err := l.out.heartbeat(&ferryv1.Heartbeat{Time: timestamppb.New(l.s.opts.Clock.Now())}); err != nil {
				return err
			}
			l.hb.Reset(l.s.opts.HeartbeatInterval)
		case <-idle:
			return connect.NewError(connect.CodeDeadlineExceeded, fmt.Sprintf(
				"no message from the client for %s: send a heartbeat at least every %s", 3*l.s.opts.HeartbeatInterval, l.s.opts.HeartbeatInterval))
		case m := <-l.in:
			if done, err := l.handle(m); done {
				return err
			}
		case <-l.s.goaway:
			return l.s.sayGoaway(l.out)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// next returns the session's next event: the one read ahead, or a new one.
func (l *loop) next() step {
	if l.ahead == nil {
		return l.read()
	}
	st := <-l.ahead
	l.ahead = nil
	<-l.s.aheads // the slot: this session holds no extra message now
	return st
}

// read reads the session's next event and builds its Ops message.
func (l *loop) read() step {
	ev, ok, err := l.sess.Next()
	if err != nil {
		if !errors.Is(err, engine.ErrUnauthenticated) {
			err = connectError(err)
		}
		return step{err: err}
	}
	st := step{ev: ev, ok: ok}
	if ok && ev.Kind == engine.EventOps {
		st.ops, st.err = opsMessage(ev, l.packed)
	}
	return st
}

// readAhead starts reading the next event on another goroutine, if one of
// the server's read-ahead slots is free; next collects it.
func (l *loop) readAhead() {
	select {
	case l.s.aheads <- struct{}{}:
	default:
		return // all taken (or none): read when needed
	}
	ch := make(chan step, 1)
	l.ahead = ch
	go func() {
		defer func() {
			if r := recover(); r != nil {
				l.s.log.Error("panic reading a session ahead", "panic", r, "stack", string(debug.Stack()))
				ch <- step{err: connect.NewError(connect.CodeInternal, "internal error")}
			}
		}()
		ch <- l.read()
	}()
}

// handle deals with one message from the receiver; it reports whether the
// session ends, and with what error (nil for a clean end).
func (l *loop) handle(m inbound) (bool, error) {
	if l.idle != nil {
		l.idle.Reset(3 * l.s.opts.HeartbeatInterval)
	}
	if m.done {
		return true, m.err
	}
	if m.result != nil {
		if err := l.out.pushResult(m.result); err != nil {
			return true, err
		}
		l.hb.Reset(l.s.opts.HeartbeatInterval)
	}
	return false, nil
}

func (s *Server) sayGoaway(out sink) error {
	return out.goaway(&ferryv1.Goaway{
		Reason:           "the server is shutting down",
		ReconnectAfterMs: uint32(s.opts.ReconnectAfter / time.Millisecond),
	})
}

// send sends one event of the session.
func (l *loop) send(st step) error {
	ev := st.ev
	switch ev.Kind {
	case engine.EventConversations:
		return l.out.conversations(&ferryv1.Conversations{Conversations: infosToProto(ev.Conversations)})
	case engine.EventOps:
		return l.out.ops(st.ops)
	case engine.EventCaughtUp:
		return l.out.caughtUp(&ferryv1.CaughtUp{FeedPos: ev.FeedPos, Conversations: uint32(ev.Convs), Ops: ev.Ops})
	}
	return fmt.Errorf("server: unknown session event %d", ev.Kind)
}

// opsMessage is an Ops event as sent: packed, or as rows.
func opsMessage(ev engine.Event, packed bool) (*ferryv1.Ops, error) {
	m := &ferryv1.Ops{Phase: ferryv1.Phase(ev.Phase), FeedPos: ev.FeedPos}
	if !packed {
		m.Batches = batchesToProto(ev.Batches)
		return m, nil
	}
	var err error
	if m.Packed, err = packBatches(ev.Batches); err != nil {
		return nil, connectError(err)
	}
	return m, nil
}

func resetReason(r engine.ResetReason) ferryv1.ResetReason {
	switch r {
	case engine.ResetEpochMismatch:
		return ferryv1.ResetReason_RESET_REASON_EPOCH_MISMATCH
	case engine.ResetPositionAhead:
		return ferryv1.ResetReason_RESET_REASON_POSITION_AHEAD
	}
	return ferryv1.ResetReason_RESET_REASON_UNSPECIFIED
}
