package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/feedseal"
	"github.com/ferrysync/ferry/internal/timers"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

type syncService struct{ s *Server }

var _ ferryv1connect.SyncServiceHandler = syncService{}

// push validates and appends pushed ops, answering each op: malformed ones
// are rejected as INVALID without being stored, the others go to the engine
// in order. Batch-level problems fail the whole push.
//
// A push over its user's push limit waits first (throttlePush), until ctx
// ends or stop, a Sync session's end, is closed; a unary Push (stop nil)
// also stops waiting when the server goes away.
//
// A push the server cannot take for now (the push limit refuses it, or the
// disk is nearly full) fails whole, giving back what it spent of the push
// limit. With later (a client that asked for it: Hello.retry_later, or
// PushRequest.retry_later) its valid ops are answered RETRY_LATER instead,
// with the delay in pushedOps.retryAfter, and the session goes on: ending
// it would cut the device's live updates, and cost a catch-up, for a write
// that has to wait anyway. Ops of a damaged conversation (engine.ErrDamaged)
// are answered RETRY_LATER alone, with reason CONVERSATION_DAMAGED; without
// later, the push fails whole (UNAVAILABLE).
//
// On a Sync stream whose client asked for Hello.skip_own_ops, pushing
// gets the valid ops before they are appended, so that the session's live
// rounds leave them out; push returns them, with their seqs, and those
// pushing counted, which the sender removes once the result is sent.
func (s *Server) push(ctx context.Context, a engine.Actor, batches []*ferryv1.OpBatch, stop <-chan struct{}, pushing *engine.Pushing, later bool) ([]*ferryv1.OpResult, pushedOps, error) {
	ops, refused, err := opsFromBatches(batches, maxOpsPerPush)
	if err != nil {
		return nil, pushedOps{}, err
	}
	cost := pushCost(ops)
	var wait *deferral // why the push's valid ops must wait: answered RETRY_LATER
	if err := s.throttlePush(ctx, a.User, cost, stop); err != nil {
		if !errors.As(err, &wait) {
			return nil, pushedOps{}, err
		}
		if !later {
			return nil, pushedOps{}, throttled(wait.msg, wait.after)
		}
	}
	start := s.opts.Clock.Now()
	results := make([]*ferryv1.OpResult, len(ops))
	valid := make([]model.Op, 0, len(ops))
	at := make([]int, 0, len(ops))
	for i := range ops {
		if refused != nil && refused[i] != nil {
			results[i] = refused[i]
			continue
		}
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
	var counted []model.Op
	damaged, refund := "", 0 // why ops of a damaged conversation wait (the first's message), and what they cost
	if len(valid) > 0 && wait == nil {
		if pushing != nil {
			counted = pushing.Add(valid)
		}
		// An error gives no ops back to the push limit: an Append whose
		// ctx ended may still commit. One refused for want of disk space
		// stored nothing. The ops counted in pushing leave it as the
		// answer is sent (loop.answer), RETRY_LATER or not.
		res, err := s.eng.Append(ctx, a, valid)
		switch {
		case errors.Is(err, engine.ErrDiskFull):
			s.pushes.refund(a.User, cost)
			if !later {
				return nil, pushedOps{}, connectError(err)
			}
			wait = &deferral{msg: err.Error(), after: diskFullRetry}
		case err != nil:
			return nil, pushedOps{}, connectError(err)
		default:
			for i, r := range resultsToProto(res) {
				if r.GetStatus() == ferryv1.OpStatus_OP_STATUS_RETRY_LATER { // a damaged conversation's
					refund += pushCost(valid[i : i+1])
					if damaged == "" {
						damaged = r.Message
					}
				}
				results[at[i]] = r
				valid[i].Seq = res[i].Seq // 0 when rejected
			}
		}
	}
	var retryAfter time.Duration
	if damaged != "" {
		s.pushes.refund(a.User, refund) // they stored nothing
		if !later {
			// The push's other ops may be stored: their retry is told
			// they are (DUPLICATE).
			return nil, pushedOps{}, connect.NewError(connect.CodeUnavailable, damaged)
		}
		retryAfter = damagedRetry
	}
	if wait != nil && len(valid) > 0 {
		for j, i := range at {
			results[i] = &ferryv1.OpResult{
				ConversationId: ops[i].Conv.String(), OpId: ops[i].ID.String(),
				Status: ferryv1.OpStatus_OP_STATUS_RETRY_LATER,
			}
			if j == 0 { // the reason once: it is the push's, not each op's
				results[i].Message = wait.msg
			}
		}
		valid, retryAfter = nil, wait.after
	}
	s.stats.pushed(results)
	if retryAfter == 0 || damaged != "" { // a push turned away took no time to store anything; one with a damaged conversation's ops stored the others
		s.stats.pushTime.Observe(s.opts.Clock.Now().Sub(start))
	}
	return results, pushedOps{ops: valid, counted: counted, retryAfter: retryAfter}, nil
}

// deferral is why a push's ops must wait, and for how long: the push
// limit's refusal, or a disk nearly full.
type deferral struct {
	msg   string
	after time.Duration
}

func (d *deferral) Error() string { return d.msg }

// damagedRetry is how long a client whose ops wait for a damaged
// conversation's repair waits before pushing them again: the repair
// needs an operator, and stops the server.
const damagedRetry = time.Minute

// diskFullRetry is how long a client whose ops wait for disk space waits
// before pushing them again: an operator frees space in minutes, not
// seconds, and every device with an outbox asks again.
const diskFullRetry = 15 * time.Second

// pushedOps are a push's valid ops, with their seqs once appended, and
// those of them the stream's Pushing counted: to remove from it once the
// push's result is sent. retryAfter is the delay of ops answered
// RETRY_LATER, which are not among ops.
type pushedOps struct {
	ops        []model.Op
	counted    []model.Op
	retryAfter time.Duration
}

// maxOpsPerPush caps one push, and the markers of one ack; the engine's
// default limit.
const maxOpsPerPush = 1000

func (h syncService) Push(ctx context.Context, req *ferryv1.PushRequest) (*ferryv1.PushResponse, error) {
	results, pushed, err := h.s.push(ctx, actorFrom(ctx), req.GetBatches(), nil, nil, req.GetRetryLater())
	if err != nil {
		return nil, err
	}
	return &ferryv1.PushResponse{Results: results, RetryAfterMs: retryAfterMs(pushed.retryAfter)}, nil
}

func (h syncService) Ack(ctx context.Context, req *ferryv1.AckRequest) (*ferryv1.AckResponse, error) {
	marks, err := markersFromProto(req.GetMarkers(), maxOpsPerPush)
	if err != nil {
		return nil, err
	}
	a := actorFrom(ctx)
	if err := h.s.throttleAck(ctx, a.User, len(marks), nil); err != nil {
		return nil, err
	}
	if err := h.s.eng.Mark(ctx, a, marks); err != nil {
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
		if q.AfterID, err = parseOptionalID("time_range.after_id", r.TimeRange.GetAfterId()); err != nil {
			return nil, err
		}
		// Op ids (ULIDs) hold times from 1970 on; and a zero End would
		// read as no range at all.
		for _, t := range []struct {
			name string
			t    time.Time
		}{{"start", q.Start}, {"end", q.End}} {
			if t.t.Before(time.UnixMilli(0)) {
				return nil, invalidf("time_range.%s %s is before 1970, which no op id can hold", t.name, t.t.Format(time.RFC3339))
			}
		}
	case nil:
		// The oldest page.
	}
	page, err := h.s.eng.History(actorFrom(ctx), conv, q)
	if err != nil {
		return nil, connectError(err)
	}
	resp := &ferryv1.HistoryResponse{ConversationId: conv.String(), Ops: opsToProto(page.Ops), Head: page.Head, More: page.More}
	if page.NextAfterID != (ulid.ULID{}) {
		resp.NextAfterId = page.NextAfterID.String()
	}
	return resp, nil
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

// sessionOptions reads a hello. Its feed position is sealed (see
// engine.FeedSeal), and seal opens it; one it cannot open resumes from
// beyond every position, which resets the device as any position from
// another server's store does.
func sessionOptions(h *ferryv1.Hello, seal *feedseal.Codec) (engine.SessionOptions, error) {
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
	if o.FeedPos, err = seal.Open(h.GetFeedPos()); err != nil {
		o.FeedPos = math.MaxUint64
	}
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

// sink sends a session's messages on one kind of stream. It sends each
// within the call and keeps nothing of it: the loop reuses the messages of
// live rounds (opsPool, sentInfos), as Connect's Send allows.
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

// A live round sends two messages to each device it reaches, and each
// send wrapped its message in a response and a oneof anew. Connect
// marshals a message within Send and keeps nothing of it, so the
// wrappers of the two kinds every round sends come from a pool.
type response struct {
	r     ferryv1.SyncResponse
	convs ferryv1.SyncResponse_Conversations
	ops   ferryv1.SyncResponse_Ops
}

var responses = sync.Pool{New: func() any { return new(response) }}

func (x *response) put() {
	x.r.Message, x.convs.Conversations, x.ops.Ops = nil, nil, nil
	responses.Put(x)
}

func (k syncSink) conversations(m *ferryv1.Conversations) error {
	x := responses.Get().(*response)
	defer x.put()
	x.convs.Conversations, x.r.Message = m, &x.convs
	return k.send(&x.r)
}

func (k syncSink) ops(m *ferryv1.Ops) error {
	x := responses.Get().(*response)
	defer x.put()
	x.ops.Ops, x.r.Message = m, &x.ops
	return k.send(&x.r)
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

// Sync runs a Sync session. Its goroutine, the handler's, waits for the
// client's messages for the session's whole life, its hello first; it
// reads and answers each on a pooled goroutine (deep), so that its stack
// stays at 4 KB. Sends run on a goroutine started when something is ready
// to send (pumper), which ends when nothing more is. An idle session so
// holds one goroutine of its own, with 4 KB of stack.
func (h syncService) Sync(ctx context.Context, st ferryv1connect.SyncServiceSyncServerStream) error {
	var (
		adm *admission
		l   *loop
		err error
	)
	deep.run(func() { adm, err = h.s.admitSync(ctx, st) })
	if err != nil {
		return err
	}
	defer func() { // on an error, and on a panic
		if l == nil {
			adm.abort()
		}
	}()
	if adm.waitInput != nil {
		if f := h.s.testHelloWait.Load(); f != nil {
			(*f)()
		}
		adm.waitInput() // the hello, or its deadline
	}
	deep.run(func() { l, err = h.s.startSync(ctx, st, adm) })
	if err != nil {
		return err
	}
	adm = nil // the session holds what it needs of it, not the admission
	defer l.endSync()
	return l.syncErr(l.receive(ctx))
}

// admission is a Sync stream admitted, waiting for its hello.
type admission struct {
	release     func() // frees the stream's slot
	rd          requestReader
	stopReceive func()
	bg          *stoppableReader // nil unless the stream is read on a goroutine of its own
	waitInput   func()           // waits for the client's first bytes; nil with bg
	schedule    *timers.Schedule
	deadline    timers.Deadline // for the hello

	mu        sync.Mutex
	got, late bool
}

// admitSync admits a Sync stream and arms its hello's deadline: it must
// come within three heartbeat intervals, for a client that opens streams
// and says nothing must not hold slots.
func (s *Server) admitSync(ctx context.Context, st ferryv1connect.SyncServiceSyncServerStream) (*admission, error) {
	release, err := s.acquireStream(actorFrom(ctx).Device)
	if err != nil {
		return nil, err
	}
	adm := &admission{release: release, rd: st, schedule: &s.schedule}
	adm.stopReceive, err = receiveStopper(ctx)
	if err != nil {
		s.warnSyncReads.Do(func() {
			s.log.Warn("Sync streams are read on a goroutine of their own, 8 KB more per session: "+
				"the ResponseWriter cannot set read deadlines (a middleware's wrapper without Unwrap?)", "err", err)
		})
		adm.bg = s.stoppableReader(st)
		adm.rd, adm.stopReceive = adm.bg, adm.bg.Stop
	} else {
		adm.waitInput = inputWaiter(ctx)
	}
	adm.deadline.Fire = func() {
		adm.mu.Lock()
		defer adm.mu.Unlock()
		if !adm.got {
			adm.late = true
			adm.stopReceive()
		}
	}
	s.schedule.Arm(&adm.deadline, s.opts.Clock.Now().Add(3*s.opts.HeartbeatInterval))
	return adm, nil
}

// abort gives up an admitted stream whose session did not start.
func (adm *admission) abort() {
	adm.schedule.Stop(&adm.deadline)
	if adm.bg != nil {
		adm.bg.Stop()
	}
	adm.release()
}

// readHello reads the session's first message, which must be a hello,
// before its deadline.
func (adm *admission) readHello() (*ferryv1.Hello, error) {
	req, err := adm.rd.Receive()
	adm.mu.Lock()
	adm.got = true
	late := adm.late
	adm.mu.Unlock()
	adm.schedule.Stop(&adm.deadline)
	if late {
		return nil, connect.NewError(connect.CodeDeadlineExceeded, "no hello: a Sync session starts with a hello")
	}
	if err != nil {
		return nil, err
	}
	hello := req.GetHello()
	if hello == nil {
		return nil, invalidf("the first message of a Sync session must be a hello")
	}
	return hello, nil
}

// startSync reads an admitted stream's hello and starts the session's
// sender. On an error the caller aborts the admission.
func (s *Server) startSync(ctx context.Context, st ferryv1connect.SyncServiceSyncServerStream, adm *admission) (*loop, error) {
	hello, err := adm.readHello()
	if err != nil {
		return nil, err
	}
	l, err := s.newLoop(ctx, actorFrom(ctx), hello, syncSink{st})
	if err != nil {
		return nil, err
	}
	l.rd, l.results, l.release, l.opened = adm.rd, make(chan *answer, 4), adm.release, make(chan struct{})
	if hello.GetSkipOwnOps() {
		l.o.Pushing = new(engine.Pushing)
	}
	p := &pumper{l: l, ctx: ctx, stopReceive: adm.stopReceive, ended: make(chan struct{})}
	p.runPumps = p.run
	l.p, l.wake = p, p.kick
	// Sync clients send heartbeats; silence means a dead peer.
	l.startTimer()
	s.watchGoaway(p)
	// The request's context ends with the client's deadline
	// (Connect-Timeout-Ms, grpc-timeout), which a blocked read of the body
	// does not notice. Without one it ends when the stream does, which
	// the read does notice: then no watch (270 bytes per idle session).
	// A middleware that cancels the context and leaves the stream open is
	// noticed at the next heartbeat.
	l.unwatchCtx = func() bool { return false }
	if _, ok := ctx.Deadline(); ok {
		l.unwatchCtx = context.AfterFunc(ctx, p.kick)
	}
	if adm.bg != nil {
		l.stopReader = adm.bg.Stop
	}
	l.waitInput = adm.waitInput
	p.kick() // the welcome and the catch-up
	return l, nil
}

// endSync stops the session's sender, its timers and its reader, closes
// the session and frees the stream's slot. It may be called more than
// once.
func (l *loop) endSync() {
	l.p.stop()
	l.stopTimer()
	l.s.unwatchGoaway(l.p)
	l.unwatchCtx()
	if l.stopReader != nil {
		l.stopReader()
	}
	l.release()
}

// syncErr is the error that ends a Sync stream, given what ended the
// receiving side: the sender's, when the sender ended the session.
func (l *loop) syncErr(received error) error {
	l.p.stop()
	if ended, err := l.p.outcome(); ended {
		return err
	}
	// The client ended the session: answer the pushes it sent before (the
	// sender stopped between messages, and may have left some).
	// Nothing else fills results now: receive has returned.
	for l.sess != nil && len(l.results) > 0 {
		a := <-l.results
		if l.leavesOwnOut() && !l.sess.Pending() && l.reachesAll(a.ops) {
			// The round that may have left the ops out went whole.
			a.result.FeedPos = l.s.seal.SealAll(l.sess.Pos())
		}
		if err := l.out.pushResult(a.result); err != nil {
			return err
		}
	}
	return received
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
	if req.GetHello().GetSkipOwnOps() {
		return invalidf("hello.skip_own_ops is for Sync only: Subscribe's pushes are answered by Push, off the stream, so every op comes back on it")
	}
	if req.GetHello().GetRetryLater() {
		return invalidf("hello.retry_later is for Sync only: Subscribe's pushes go by the unary Push, which fails whole when the server cannot take them for now")
	}
	return h.s.subscribe(ctx, a, req.GetHello(), subscribeSink{st})
}

// subscribe runs a session whose handler's goroutine sends: a Subscribe
// session.
func (s *Server) subscribe(ctx context.Context, a engine.Actor, hello *ferryv1.Hello, out sink) error {
	l, err := s.newLoop(ctx, a, hello, out)
	if err != nil {
		return err
	}
	return l.serveSubscribe(ctx)
}

// newLoop is the sending side of a session that hello starts.
func (s *Server) newLoop(ctx context.Context, a engine.Actor, hello *ferryv1.Hello, out sink) (*loop, error) {
	o, err := sessionOptions(hello, s.seal)
	if err != nil {
		return nil, err
	}
	l := &loop{s: s, a: a, o: o, out: out, hold: holdFlushes(ctx), packed: hello.GetPackedOps(), retryLater: hello.GetRetryLater(),
		binary: binaryCodec(ctx)}
	l.onChange = l.changed
	l.wokeAt.Store(notWoken)
	return l, nil
}

// nanos is the clock's time in nanoseconds since New, the sessions' unit:
// on the monotonic clock when the clock has one (the system clock does),
// so that a step of the wall clock moves no session's deadline.
func (s *Server) nanos() int64 { return int64(s.opts.Clock.Now().Sub(s.started)) }

// at is the time of nanos n.
func (s *Server) at(n int64) time.Time { return s.started.Add(time.Duration(n)) }

// changed wakes the session for a change, noting when.
func (l *loop) changed() {
	l.wokeAt.CompareAndSwap(notWoken, l.s.nanos())
	l.wake()
}

// notWoken is loop.wokeAt while no change waits to be sent.
const notWoken = math.MinInt64

// binaryCodec reports whether the call's messages are marshaled as binary
// protobuf, whatever the protocol: not JSON, which has no verbatim unknown
// fields to carry encoded batches in, nor an in-process call, which passes
// messages without marshaling them.
func binaryCodec(ctx context.Context) bool {
	info, ok := connect.CallInfoForServerContext(ctx)
	return ok && info.Codec == connect.CodecNameProto
}

// loop is one session's sending side. pump sends what is ready and returns
// when nothing is; what makes more ready (a commit that changes the user's
// feed, the heartbeat timer, an answered push, the server's Goaway) calls
// wake to have it run again. One goroutine at a time runs pump.
type loop struct {
	s    *Server
	a    engine.Actor
	o    engine.SessionOptions
	sess *engine.Session // nil until the first pump opens it
	out  sink
	hold func(bool) // holds the stream's flushes while more is ready to send
	// packed: the client reads Ops packed (Hello.packed_ops).
	packed bool
	// retryLater: a push the server cannot take for now is answered
	// RETRY_LATER (Hello.retry_later), not the session's end.
	retryLater bool
	// binary: the call's codec is binary protobuf, so a live round's
	// batches can go encoded once (liveBatches).
	binary bool
	// ahead delivers the event being read ahead, while the previous one
	// is sent; nil when none is. While it is set, the session belongs to
	// the reading goroutine.
	ahead chan step
	wake  func()
	// onChange is changed, made once: the session calls it on the next
	// change after each pump. wokeAt is when a change woke the session
	// (Server.nanos), until the pump has sent all there was (notWoken
	// then): its live Ops messages count their delay from it.
	onChange func()
	wokeAt   atomic.Int64
	// The session's one deadline, in the server's schedule, is the next
	// of two: a heartbeat HeartbeatInterval after the last send, and for
	// Sync a look at the client's silence three intervals after its last
	// message. Sends and messages only note their time; tick, or the pump
	// once it has handled what was due, arms it for the next.
	deadline timers.Deadline
	rearm    atomic.Bool  // the deadline passed with something due: the pump arms it
	lastOut  atomic.Int64 // when the last message went (Server.nanos)
	hbDue    atomic.Bool  // a heartbeat is due

	// Sync only.
	rd         requestReader // the client's messages
	opened     chan struct{} // closed once the session is open and welcomed
	waitInput  func()        // waits for the next of them, when set
	p          *pumper       // runs pump
	results    chan *answer  // answered pushes, to send (pointers: the buffer is held for the session's life)
	idleDue    atomic.Bool   // the client's silence is to be looked at
	quit       atomic.Bool   // the receiving side ended the session
	release    func()        // frees the stream's slot
	unwatchCtx func() bool
	lastIn     atomic.Int64 // when the client's last message came (Server.nanos)
	handling   atomic.Bool  // the handler is answering one
	stopReader func()       // stops a stoppableReader, when one reads
}

// answer is a push's result, to send, and the push's valid ops, which
// leave the session's Pushing once it is sent.
type answer struct {
	result *ferryv1.PushResult
	pushedOps
}

// step is one event of the session, with its Ops message built.
type step struct {
	ev  engine.Event
	ok  bool
	ops *ferryv1.Ops // for EventOps
	err error
}

// pump sends what the session has ready: events, answered pushes, a due
// heartbeat, the Goaway. When nothing more is ready it arms the session's
// wake-up on a change and returns. It reports whether the session is over,
// and with what error (nil for a clean end).
func (l *loop) pump(ctx context.Context) (end bool, err error) {
	if l.sess == nil {
		if end, err := l.open(); end {
			return true, err
		}
	}
	for {
		if l.quit.Load() {
			return true, nil
		}
		// Between messages (and between a catch-up's), notice the end and
		// answer pushes. Loads, not a select: a select locks each channel
		// it names, and the goaway channel is every session's, so in a
		// fan-out the sessions' rounds took turns at its lock on every
		// message (the select was 4% of the server's CPU, fanning out to
		// 1k devices).
		if l.s.goaway.Err() != nil {
			return true, l.s.sayGoaway(l.out)
		}
		if err := ctx.Err(); err != nil {
			return true, err
		}
		if len(l.results) > 0 { // this loop is their only reader; none for Subscribe
			if err := l.answer(<-l.results); err != nil {
				return true, err
			}
			l.sent()
			continue
		}
		waiting := l.awaitsResult()
		var st step
		if !waiting {
			st = l.next()
		}
		if err := stepErr(st); err != nil {
			return true, err
		}
		if st.ok {
			ev := st.ev
			if l.deferPos(ev) {
				continue
			}
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
				return true, err
			}
			l.sent()
			continue
		}
		if l.idleDue.Swap(false) {
			if l.silent() {
				return true, connect.NewError(connect.CodeDeadlineExceeded, fmt.Sprintf(
					"no message from the client for %s: send a heartbeat at least every %s", 3*l.s.opts.HeartbeatInterval, l.s.opts.HeartbeatInterval))
			}
			// A message came meanwhile, or one is being answered: the
			// timer looks again when the window since the last one ends,
			// or a whole window from now while it is answered.
		}
		if l.hbDue.Load() {
			if err := l.out.heartbeat(&ferryv1.Heartbeat{Time: timestamppb.New(l.s.opts.Clock.Now())}); err != nil {
				return true, err
			}
			l.sent()
			continue
		}
		if !waiting { // the result wakes it, and its answer plans the round
			l.wokeAt.Store(notWoken)
			l.sess.AfterChange(l.onChange)
		} else if f := l.s.testAwaitResult.Load(); f != nil {
			(*f)()
		}
		if l.rearm.Swap(false) { // what the timer found due is handled
			l.arm()
		}
		return false, nil
	}
}

func stepErr(st step) error {
	if errors.Is(st.err, engine.ErrUnauthenticated) {
		return connect.NewError(connect.CodeUnauthenticated, "this device was revoked; log in again")
	}
	return st.err
}

// answer sends a push's result. When the session leaves the device's own
// ops out of its live rounds (Hello.skip_own_ops), the round that holds
// the push's ops goes first, without them, and the result then says the
// round is over (PushResult.feed_pos): the client takes those ops as held
// at the result's seqs, and learns that what they changed was sent. Both
// leave in one write.
//
// A round planned as the push came may have reached its ops already:
// what is left of it goes first, and no other (awaitsResult). Otherwise
// one is planned here: the commit's feed position was published before
// the push returned, so a round planned now reaches it. Only live rounds
// leave ops out: a result answered during the catch-up goes alone, and
// its ops come back.
func (l *loop) answer(a *answer) error {
	defer l.o.Pushing.Remove(a.counted)
	if !l.leavesOwnOut() {
		return l.out.pushResult(a.result)
	}
	l.hold(true)
	defer l.hold(false)
	// A round reaches the push's ops when one planned as the push came
	// did: then no other goes first, since the device cannot place what
	// follows ops it has not been told of (awaitsResult).
	planned := l.reachesAll(a.ops)
	for {
		if !l.sess.Pending() {
			if planned {
				break
			}
			planned = true // Next plans a round
		}
		st := l.read()
		if err := stepErr(st); err != nil {
			return err
		}
		if !st.ok {
			break
		}
		if isPos(st.ev) {
			continue // the result says it
		}
		if err := l.send(st); err != nil {
			return err
		}
	}
	a.result.FeedPos = l.s.seal.SealAll(l.sess.Pos())
	l.hold(false)
	return l.out.pushResult(a.result)
}

// leavesOwnOut reports whether the session's rounds now leave the
// device's own ops out: it asked (Hello.skip_own_ops) and is live. A read
// ahead owns the session until next collects it; it reads only during the
// catch-up.
func (l *loop) leavesOwnOut() bool {
	return l.o.Pushing != nil && l.ahead == nil && l.sess.Live()
}

// reachesAll reports whether the session's rounds reach every accepted op
// of ops.
func (l *loop) reachesAll(ops []model.Op) bool {
	for i := range ops {
		if op := &ops[i]; op.Seq != 0 && !l.sess.Reaches(op.Conv, op.Seq) {
			return false
		}
	}
	return true
}

// awaitsResult reports whether the next live round waits for the result
// of a push: a round left the push's ops out, and another planned before
// the result would carry a conversation info resuming after ops the
// device does not yet know it holds.
func (l *loop) awaitsResult() bool {
	return l.o.Pushing.LeftOut() && l.leavesOwnOut() && !l.sess.Pending()
}

// isPos reports whether ev is a live round's end with nothing else: a
// feed position alone.
func isPos(ev engine.Event) bool {
	return ev.Kind == engine.EventOps && ev.Phase == engine.PhaseLive && len(ev.Batches) == 0
}

// deferPos reports whether a live round's feed position, with nothing
// else, can wait for a push's result, which will carry it: the device has
// a push in flight. Such a round is one planned as the push came, whose
// commit it may have seen.
func (l *loop) deferPos(ev engine.Event) bool {
	return isPos(ev) && l.o.Pushing.Len() > 0
}

// open opens the engine's session and sends the welcome. The first pump
// does it rather than the handler: planning the catch-up reads the store
// deep in the call stack, and a Sync handler's goroutine that did would
// keep the larger stack while it waits for its client, for the session's
// whole life.
func (l *loop) open() (end bool, err error) {
	if f := l.s.testOpen.Load(); f != nil {
		(*f)()
	}
	sess, err := l.s.eng.OpenSession(l.a, l.o)
	var reset *engine.ResetError
	if errors.As(err, &reset) {
		return true, l.out.reset(&ferryv1.ResetRequired{Reason: resetReason(reset.Reason), Message: reset.Detail, Epoch: reset.Epoch})
	}
	if err != nil {
		return true, connectError(err)
	}
	l.sess = sess
	w := sess.Welcome()
	err = l.out.welcome(&ferryv1.Welcome{
		Epoch: w.Epoch.String(), UserId: l.a.User.String(), DeviceId: l.a.Device.String(),
		FeedPos: l.s.sealPos(w.FeedPos), ChangedConversations: uint32(w.Changed), MissingOps: w.MissingOps,
		HeartbeatIntervalMs: uint32(l.s.opts.HeartbeatInterval / time.Millisecond),
		Limits: &ferryv1.Limits{
			MaxOpsPerPush: maxOpsPerPush, MaxBodyBytes: uint32(l.s.eng.MaxBodyBytes()), MaxMessageBytes: uint32(l.s.opts.MaxMessageBytes),
		},
		ServerTime: timestamppb.New(l.s.opts.Clock.Now()),
	})
	if err != nil {
		return true, err
	}
	l.s.log.Debug("session started", "user", l.a.User, "device", l.a.Device, "changed", w.Changed, "missing", w.MissingOps)
	if l.opened != nil {
		close(l.opened)
	}
	return false, nil
}

// silent reports whether the client has said nothing for three heartbeat
// intervals. The timer's finding is not enough: a message may have come
// just in time after it fired, and one may be being answered.
func (l *loop) silent() bool {
	if l.handling.Load() {
		return false // a message is being answered (a push may wait for the push limit)
	}
	return time.Duration(l.s.nanos()-l.lastIn.Load()) >= 3*l.s.opts.HeartbeatInterval
}

// sent restarts the heartbeat interval: a heartbeat goes out only after
// an interval without any other message.
func (l *loop) sent() {
	l.hbDue.Store(false)
	l.lastOut.Store(l.s.nanos())
}

// startTimer starts the session's deadlines from now.
func (l *loop) startTimer() {
	now := l.s.nanos()
	l.lastOut.Store(now)
	l.lastIn.Store(now)
	l.deadline.Fire = l.tick
	l.arm()
}

// stopTimer stops the session's timer for good.
func (l *loop) stopTimer() {
	l.s.schedule.Stop(&l.deadline)
}

// deadlines returns when a heartbeat is due, and when the client's
// silence is to be looked at (a Sync session's; math.MaxInt64 for a
// Subscribe session's), in Server.nanos.
func (l *loop) deadlines() (heartbeat, silence int64) {
	interval := int64(l.s.opts.HeartbeatInterval)
	heartbeat, silence = l.lastOut.Load()+interval, math.MaxInt64
	if l.rd != nil {
		silence = l.lastIn.Load() + 3*interval
	}
	return heartbeat, silence
}

// tick runs when the timer fires: it marks what is due and wakes the
// pump, which arms the timer again as it returns, once it has handled
// that (rearm); with nothing due (a send or a message came since it was
// armed) it arms the timer for the next deadline.
func (l *loop) tick() {
	now := l.s.nanos()
	heartbeat, silence := l.deadlines()
	due := false
	if now >= heartbeat {
		l.hbDue.Store(true)
		due = true
	}
	if now >= silence {
		l.idleDue.Store(true)
		due = true
	}
	if due {
		l.rearm.Store(true)
		l.wake()
		return
	}
	l.arm()
}

// arm arms the timer for the next deadline; a look at the silence of a
// client whose message is being answered is a whole window away.
func (l *loop) arm() {
	now := l.s.nanos()
	heartbeat, silence := l.deadlines()
	if silence <= now {
		silence = now + 3*int64(l.s.opts.HeartbeatInterval)
	}
	l.s.schedule.Arm(&l.deadline, l.s.at(min(heartbeat, silence)))
}

// close waits for a read ahead in progress, which uses the session, and
// closes the session. It may be called more than once.
func (l *loop) close() {
	if l.ahead != nil {
		<-l.ahead
		<-l.s.aheads
		l.ahead = nil
	}
	if l.sess != nil {
		l.sess.Close()
	}
}

// serveSubscribe runs a Subscribe session: this goroutine, the handler's,
// sends, and waits between rounds.
func (l *loop) serveSubscribe(ctx context.Context) error {
	wake := make(chan struct{}, 1)
	l.wake = func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	l.startTimer()
	defer l.stopTimer()
	defer l.close()
	for {
		if end, err := l.pump(ctx); end {
			return err
		}
		select {
		case <-wake:
		case <-l.s.goaway.Done():
		case <-ctx.Done():
		}
	}
}

// errSenderEnded: the sender ended the session while a push result
// waited for it.
var errSenderEnded = errors.New("server: the session's sender ended it")

// receive reads a Sync session's client messages until the stream ends or
// the sender ends the session. It returns what ended it: nil when the
// client closed its side.
func (l *loop) receive(ctx context.Context) error {
	var (
		req    *ferryv1.SyncRequest
		commit engine.Pending // an ack's commit under way
		end    bool
		err    error
	)
	answer := func() {
		l.handling.Store(true)
		commit, err = l.handle(ctx, req)
	}
	readAndAnswer := func() {
		if req, err = l.rd.Receive(); err != nil {
			end, err = true, ignoreEOF(err)
			return
		}
		answer()
	}
	// The client's messages wait for the session to open: a hello from
	// another epoch (a store restored from a backup) or ahead of the
	// store is answered ResetRequired, and the client repairs first. A
	// push sent after such a hello would land ahead of the ops its repair
	// gives back, and an ack would move markers by another history's seqs.
	if f := l.s.testAwaitOpen.Load(); f != nil {
		(*f)()
	}
	select {
	case <-l.opened:
	case <-l.p.ended:
		return errSenderEnded // syncErr returns the sender's outcome: the reset, or its error
	}
	for !end {
		if l.waitInput == nil {
			// A stoppableReader's Receive waits on a channel, as shallow
			// as waitInput: only the answer goes deep.
			if req, err = l.rd.Receive(); err != nil {
				return ignoreEOF(err)
			}
			deep.run(answer)
		} else {
			l.waitInput()
			if deep.run(readAndAnswer); end {
				break
			}
		}
		// An ack's commit is waited for here, as shallow as waitInput, and
		// not on the pooled goroutine: the acks of thousands of devices
		// that arrive together would each hold one for a group commit,
		// and start as many more, each growing its stack by copying (10%
		// of the server's CPU in live fan-out to 10,000 devices).
		if err == nil {
			err = connectError(commit.Wait(ctx))
		}
		commit = engine.Pending{}
		// The client's silence counts from when the server reads again: a
		// push that waited for the push limit held its client's sends up.
		l.lastIn.Store(l.s.nanos())
		l.handling.Store(false)
		end = err != nil
	}
	return err
}

// handle answers one of the client's messages: pushes and acks. An ack's
// commit may still be under way when it returns: the caller waits for it.
func (l *loop) handle(ctx context.Context, req *ferryv1.SyncRequest) (engine.Pending, error) {
	s := l.s
	switch msg := req.GetMessage().(type) {
	case *ferryv1.SyncRequest_Push:
		results, pushed, err := s.push(ctx, l.a, msg.Push.GetBatches(), l.p.ended, l.o.Pushing, l.retryLater)
		if err != nil {
			return engine.Pending{}, err
		}
		if f := s.testPushed.Load(); f != nil {
			(*f)()
		}
		select {
		case l.results <- &answer{&ferryv1.PushResult{RequestId: msg.Push.GetRequestId(), Results: results,
			RetryAfterMs: retryAfterMs(pushed.retryAfter)}, pushed}:
			l.wake()
		case <-l.p.ended:
			return engine.Pending{}, errSenderEnded // syncErr returns the sender's error
		}
	case *ferryv1.SyncRequest_Ack:
		marks, err := markersFromProto(msg.Ack.GetMarkers(), maxOpsPerPush)
		if err == nil {
			err = s.throttleAck(ctx, l.a.User, len(marks), l.p.ended)
		}
		if err != nil {
			return engine.Pending{}, err
		}
		return s.eng.StartMark(ctx, l.a, marks), nil
	case *ferryv1.SyncRequest_Heartbeat:
	case *ferryv1.SyncRequest_Hello:
		return engine.Pending{}, invalidf("hello may only be sent once, as the first message")
	default:
		return engine.Pending{}, invalidf("empty or unknown message: send push, ack or heartbeat")
	}
	return engine.Pending{}, nil
}

// pumper runs a Sync session's pump when kicked, one at a time: a kick
// while one runs makes it pump once more. The pump runs as a call of the
// deep pool (deep.start), on a goroutine whose stack has grown already (a
// live round takes a new goroutine's stack past 8 KB, three growths by
// copying), and the session holds no goroutine between pumps. A kick hands
// the pump to a pooled goroutine, or queues it for one when a fan-out
// kicks many at once (see callPool).
type pumper struct {
	l           *loop
	ctx         context.Context
	stopReceive func()

	mu      sync.Mutex
	running bool // a pool goroutine pumps
	again   bool // kicked while it did
	stopped bool // no more pumps: the session is over
	wg      sync.WaitGroup
	ended   chan struct{} // closed when a pump ended the session
	err     error         // how, once ended is closed

	// runPumps is run as deep.start takes it, made once: a closure for
	// each kick would be garbage of each live round.
	runPumps func()
}

func (p *pumper) kick() {
	p.mu.Lock()
	switch {
	case p.stopped:
	case p.running:
		p.again = true
	default:
		p.running = true
		p.wg.Add(1)
		p.mu.Unlock()
		deep.start(p.runPumps)
		return
	}
	p.mu.Unlock()
}

// run pumps until a pump ends with no kick meanwhile, or the session ends.
func (p *pumper) run() {
	s := p.l.s
	s.pumps.Add(1)
	s.pumpStarts.Add(1)
	defer func() { // also when a test's hook ends the goroutine
		s.pumps.Add(-1)
		if f := s.testPumpEnd.Load(); f != nil {
			(*f)()
		}
		p.wg.Done()
	}()
	for {
		end, err := p.pump()
		p.mu.Lock()
		ends := end && !p.stopped // this pump ends the session
		if ends {
			p.stopped, p.err = true, err
			close(p.ended)
		}
		if end || p.stopped || !p.again {
			p.running = false
			p.mu.Unlock()
			if ends {
				p.stopReceive() // the receiving side returns with the error
			}
			return
		}
		p.again = false
		p.mu.Unlock()
	}
}

// pump runs the loop's pump, making a panic the session's end.
func (p *pumper) pump() (end bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			p.l.s.log.Error("panic in a sync session's sender", "panic", r, "stack", string(debug.Stack()))
			end, err = true, connect.NewError(connect.CodeInternal, "internal error")
		}
	}()
	return p.l.pump(p.ctx)
}

// stop starts no more pumps, waits for the running one, which stops
// between messages, and closes the session. It may be called more than
// once.
func (p *pumper) stop() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.l.quit.Store(true)
	p.wg.Wait()
	p.l.close()
}

// outcome reports whether a pump ended the session, and with what error.
func (p *pumper) outcome() (bool, error) {
	select {
	case <-p.ended:
		return true, p.err
	default:
		return false, nil
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
		st.ops, st.err = l.s.opsMessage(ev, l.packed, l.binary)
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

func (s *Server) sayGoaway(out sink) error {
	return out.goaway(&ferryv1.Goaway{
		Reason:           "the server is shutting down",
		ReconnectAfterMs: uint32(jitter(s.opts.ReconnectAfter) / time.Millisecond),
	})
}

// jitter returns a delay drawn evenly from d/2 to 3d/2; d is at least 1ms
// and at most maxReconnectAfter (Options.validate).
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d+1)
}

// sealPos is the feed position pos as clients see it: sealed, so that it
// says nothing of the commits in other users' conversations (see
// engine.FeedSeal).
func (s *Server) sealPos(pos uint64) uint64 { return s.seal.Seal(pos) }

// maxReconnectAfter is the longest Options.ReconnectAfter: 3/2 of it, in
// milliseconds, fits Goaway's uint32.
const maxReconnectAfter = 24 * time.Hour

// send sends one event of the session.
func (l *loop) send(st step) error {
	ev := st.ev
	// Counted before it goes: the client may read it before the send
	// returns.
	l.s.stats.sent(ev)
	switch ev.Kind {
	case engine.EventConversations:
		x := getInfos(ev.Conversations)
		err := l.out.conversations(&x.m)
		x.put()
		return err
	case engine.EventOps:
		err := l.out.ops(st.ops)
		putOps(st.ops)
		if w := l.wokeAt.Load(); err == nil && w != notWoken && ev.Phase == engine.PhaseLive {
			l.s.stats.liveDelay.Observe(time.Duration(l.s.nanos() - w))
		}
		return err
	case engine.EventCaughtUp:
		return l.out.caughtUp(&ferryv1.CaughtUp{FeedPos: l.s.sealPos(ev.FeedPos), Conversations: uint32(ev.Convs), Ops: ev.Ops})
	}
	return fmt.Errorf("server: unknown session event %d", ev.Kind)
}

// opsMessage is an Ops event as sent: packed, or as rows. For a binary
// codec, a live round's batches come encoded from s.batches, cut by
// author (byAuthor) so that zstd compresses each once too, and a
// catch-up's packed batches are encoded straight into the message's
// unknown fields (protobuf marshals them verbatim); the JSON codec needs
// the messages.
func (s *Server) opsMessage(ev engine.Event, packed, binary bool) (*ferryv1.Ops, error) {
	m := opsPool.Get().(*ferryv1.Ops)
	m.Phase, m.FeedPos = ferryv1.Phase(ev.Phase), s.sealPos(ev.FeedPos)
	if ev.RoundEnd { // its position, which zero would not say
		m.FeedPos = s.seal.SealAll(ev.FeedPos)
	}
	var err error
	switch {
	case len(ev.Batches) == 0:
	case binary && ev.Phase == engine.PhaseLive:
		var fields []byte
		if fields, err = s.batches.fields(byAuthor(ev.Batches), packed); err == nil {
			m.ProtoReflect().SetUnknown(fields)
		}
	case binary && packed:
		// A catch-up's batches hold up to a MiB of bodies each: one
		// buffer, sized up front.
		size := 0
		for i := range ev.Batches {
			size += wire.PackedSize(ev.Batches[i].Ops)
		}
		fields := make([]byte, 0, size)
		for i := range ev.Batches {
			if fields, err = wire.AppendPackedField(fields, opsPackedField, ev.Batches[i].Conv, ev.Batches[i].Ops); err != nil {
				break
			}
		}
		m.ProtoReflect().SetUnknown(fields)
	case packed:
		m.Packed, err = packBatches(ev.Batches)
	default:
		m.Batches = batchesToProto(ev.Batches)
	}
	if err != nil {
		putOps(m)
		return nil, connectError(err)
	}
	return m, nil
}

// opsPool holds the Ops messages opsMessage builds, one for each message
// a session sends, which go back once sent (putOps): Connect marshals a
// message within Send.
var opsPool = sync.Pool{New: func() any { return new(ferryv1.Ops) }}

func putOps(m *ferryv1.Ops) {
	*m = ferryv1.Ops{}
	opsPool.Put(m)
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
