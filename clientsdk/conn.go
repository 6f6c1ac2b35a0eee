package clientsdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect/v2"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/internal/clock"
	"github.com/ferrysync/ferry/internal/failpoint"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/proto/ferry/v1/ferryv1connect"
)

// Start syncs the device in the background: it connects, flushes the
// outbox, catches up, stays live, and reconnects with backoff when the
// connection drops. A terminal error (such as a revoked device) stops it
// with Status.State == StateFailed and a *TerminalError in Status.Err;
// Start then starts over. It returns ErrNotSignedIn before Register or
// Login, and ErrClosed after Close.
func (d *Device) Start() error {
	if _, err := d.Account(); err != nil {
		return err
	}
	d.runMu.Lock()
	defer d.runMu.Unlock()
	return d.startLocked()
}

// startLocked is Start under runMu.
func (d *Device) startLocked() error {
	if err := d.refuseRun(); err != nil {
		return err
	}
	if d.cancel != nil {
		return nil // running
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.loops++
	d.cancel, d.done = cancel, make(chan struct{})
	go d.loop(ctx, d.done, d.loops)
	return nil
}

// Stop stops syncing and waits for the connection to close. The replica
// and the outbox stay as they are. A device that was live then sends the
// markers it was still gathering, waiting at most two seconds for the
// server.
func (d *Device) Stop() {
	d.runMu.Lock()
	cancel, done := d.cancel, d.done
	d.cancel, d.done = nil, nil
	d.stops++
	d.runMu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// TerminalError is an error that retrying cannot fix: the device stops
// syncing until the application acts (for example, logs in again: a
// profile whose device the server refused may Login without a Logout).
type TerminalError struct{ Err error }

func (e *TerminalError) Error() string {
	msg := e.Err.Error()
	if strings.HasPrefix(msg, "ferry: ") {
		return msg
	}
	return "ferry: " + msg
}

func (e *TerminalError) Unwrap() error { return e.Err }

// terminal wraps an error retrying cannot fix in a TerminalError, once.
func terminal(err error) error {
	var te *TerminalError
	if errors.As(err, &te) {
		return err
	}
	return &TerminalError{Err: err}
}

// retryable tells connection errors worth retrying (the network, a server
// restart, overload) from those that need the application.
func retryable(err error) bool {
	var te *TerminalError
	if errors.As(err, &te) || errors.Is(err, ErrClosed) {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnauthenticated, connect.CodePermissionDenied, connect.CodeInvalidArgument,
		connect.CodeUnimplemented, connect.CodeNotFound, connect.CodeAlreadyExists, connect.CodeOutOfRange:
		return false
	}
	return true
}

// ErrPushDeferred is in Status.Err, with the server's reason, while the
// server turns this device's ops away for now (its disk is nearly full, or
// the user's devices push more than its push limit): they wait in the
// outbox, and go again at Status.RetryAt, the session staying live. It
// clears once the server takes a push. A SyncOnce whose context ends while
// ops wait returns an error that wraps it too.
//
// The ops of a conversation damaged in the server's store wait on their
// own, until its operator repairs it: the device pushes them again every
// minute or so, and its other ops go on, so Status does not say so. A
// SyncOnce that is done but for them returns an error that wraps
// ErrPushDeferred, naming the conversation.
var ErrPushDeferred = errors.New("ferry: the server cannot take new ops for now; they wait in the outbox")

// goaway asks to reconnect after a delay.
type goaway struct{ after time.Duration }

func (g *goaway) Error() string { return "server going away" }

var (
	errResynced = errors.New("ferry: resynced after the server's store was replaced")
	errDone     = errors.New("ferry: caught up")
)

// loop is Start's loop, the n-th Start began (Device.loops).
func (d *Device) loop(ctx context.Context, done chan struct{}, n uint64) {
	defer close(done)
	attempt := 0
	preempted := false
	for {
		// One stream at a time (stream.go): a SyncOnce may hold it, or end
		// this session to take it. The session's background work (member
		// refreshes) runs under ctx: a SyncOnce does not cut it.
		var live bool
		// A SyncOnce that succeeds once this session has ended ends the
		// backoff below.
		var synced <-chan struct{}
		sctx, endSession := context.WithCancel(ctx)
		err := d.stream.takeForLoop(ctx, endSession)
		if err != nil {
			synced = d.syncedSince()
		} else {
			// Back from a SyncOnce's turn, the status stays as the session
			// it ended left it (live, for a pull to refresh): the
			// reconnect is the device's own, not news to show.
			if !preempted {
				d.mu.Lock()
				d.setStatus(func(s *Status) { *s = Status{State: StateConnecting} })
				d.mu.Unlock()
			}
			live, err = d.session(ctx, sctx, false)
			synced = d.syncedSince() // before a SyncOnce can take the stream
			d.stream.release()
		}
		preempted = sctx.Err() != nil
		endSession()
		if ctx.Err() != nil {
			if live {
				d.ackOnStop()
			}
			d.offlineUnlessRestarted(n)
			return
		}
		if live {
			attempt = 0
		}
		if preempted { // for a SyncOnce: connect again once it is done
			continue
		}
		var delay time.Duration
		var ga *goaway
		switch {
		case errors.As(err, &ga):
			delay = ga.after
		case errors.Is(err, errResynced):
			continue
		case !retryable(err):
			err = terminal(err)
			d.log.Error("sync stopped", "err", err)
			// Stopped as it says so, in one step under runMu: a Start
			// that sees the failure starts over, and one just before it
			// waits for it. A Stop and a Start since (while this session
			// failed) began another loop, whose status stands, as in
			// offlineUnlessRestarted.
			d.runMu.Lock()
			if d.done == done {
				d.cancel()
				d.cancel, d.done = nil, nil
			}
			if d.loops == n {
				d.mu.Lock()
				d.setStatus(func(s *Status) { *s = Status{State: StateFailed, Err: err} })
				d.mu.Unlock()
			}
			d.runMu.Unlock()
			return
		default:
			attempt++
			delay = d.backoff(attempt)
			d.log.Info("sync disconnected; retrying", "err", err, "in", delay)
		}
		// Arm the timer before telling anyone when it fires: whoever
		// reads RetryAt (a test moving a fake clock) must find it armed.
		retryAt := d.opts.clock.Now().Add(delay)
		t := d.opts.clock.NewTimer(delay)
		d.mu.Lock()
		d.setStatus(func(s *Status) { *s = Status{State: StateOffline, Err: err, RetryAt: retryAt} })
		d.mu.Unlock()
		select {
		case <-t.C():
		case <-synced: // the server is there: connect now, and afresh
			t.Stop()
			attempt = 0
		case <-ctx.Done():
			t.Stop()
			d.offlineUnlessRestarted(n)
			return
		}
	}
}

// syncedSince returns what a SyncOnce that succeeds from now on closes.
func (d *Device) syncedSince() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.synced == nil {
		d.synced = make(chan struct{})
	}
	return d.synced
}

// onceSynced tells Start's loop that a SyncOnce succeeded (syncedSince).
func (d *Device) onceSynced() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.synced != nil {
		close(d.synced)
		d.synced = nil
	}
}

// offlineUnlessRestarted sets the status offline as loop n stops, unless
// a Start has begun another loop meanwhile (while this one sent its last
// markers), whose status stands, even once that loop has ended too
// (failed for good, say).
func (d *Device) offlineUnlessRestarted(n uint64) {
	d.runMu.Lock()
	defer d.runMu.Unlock()
	if d.loops != n {
		return
	}
	d.mu.Lock()
	d.setStatus(func(s *Status) { *s = Status{State: StateOffline} })
	d.mu.Unlock()
}

// backoff is the delay before reconnect attempt n (1, 2, ...): doubling
// from the minimum up to the maximum, with "equal jitter" so that devices
// that lost the server together do not return together.
func (d *Device) backoff(n int) time.Duration {
	delay := d.opts.minBackoff
	for i := 1; i < n && delay < d.opts.maxBackoff; i++ {
		delay *= 2
	}
	delay = min(delay, d.opts.maxBackoff)
	half := delay / 2
	return half + time.Duration(rand.Int64N(int64(half)+1))
}

// SyncOnce connects, pushes the outbox, catches up, and returns once the
// device is caught up and every pushed op is answered. It retries
// retryable errors with backoff until ctx ends; an error retrying cannot
// fix is a *TerminalError. While it waits to retry, Status is offline
// with RetryAt. Markers are sent with acknowledgement, and the member
// lists that changed are fetched (best effort, for up to 30 seconds),
// before it returns; Status is then offline again, or failed after a
// terminal error (a failure of Start's loop stands until a SyncOnce
// succeeds). A device has one Sync stream at a time: SyncOnce calls at
// once take turns, and while Start's loop runs, SyncOnce ends its session
// and the loop connects again after it (at once, too, when the loop was
// waiting to reconnect and SyncOnce got through). The loop waits while
// any SyncOnce waits: SyncOnce calls that overlap without a break keep it
// from connecting until they stop.
func (d *Device) SyncOnce(ctx context.Context) (err error) {
	if _, err := d.Account(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.runMu.Lock()
	if err := d.refuseRun(); err != nil {
		d.runMu.Unlock()
		return err
	}
	if d.onces == nil {
		d.onces = map[*context.CancelFunc]struct{}{}
	}
	d.onces[&cancel] = struct{}{}
	d.syncs.Add(1)
	d.runMu.Unlock()
	defer func() {
		d.runMu.Lock()
		delete(d.onces, &cancel)
		if d.closing && err != nil {
			err = ErrClosed // cut by Close
		}
		if d.cancel == nil { // offline again, unless Start's loop runs: its status stands
			var te *TerminalError
			d.mu.Lock()
			switch {
			case errors.As(err, &te):
				d.setStatus(func(s *Status) { *s = Status{State: StateFailed, Err: err} })
			case err != nil && d.status.State == StateFailed:
				// Failed for good before (Start's loop, or a SyncOnce),
				// and this call could not tell whether that is over.
			default:
				d.setStatus(func(s *Status) { *s = Status{State: StateOffline} })
			}
			d.mu.Unlock()
		}
		d.runMu.Unlock()
		d.syncs.Done()
	}()
	attempt := 0
	for {
		// One stream at a time (stream.go): this ends the session of
		// Start's loop, if one runs, which connects again after it.
		if err := d.stream.takeForOnce(ctx); err != nil {
			return err
		}
		_, err := d.session(ctx, ctx, true)
		d.stream.release()
		if errors.Is(err, errDone) {
			d.onceSynced()
			if err := d.ackRetrying(ctx); err != nil {
				return err
			}
			// The member lists that changed (and so usernames), which
			// Start's loop fetches in the background (session.refreshMembers).
			rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
			d.refreshMembers(rctx)
			cancel()
			if err := ctx.Err(); err != nil {
				return err // cut short: Close's ErrClosed, or ctx's error
			}
			if held := (*heldOps)(nil); errors.As(err, &held) {
				return fmt.Errorf("ferry: sync: %w: %s", ErrPushDeferred, held.why)
			}
			return nil
		}
		if ctx.Err() != nil {
			d.mu.Lock()
			waiting := d.statusLocked().Err
			d.mu.Unlock()
			if errors.Is(waiting, ErrPushDeferred) {
				return fmt.Errorf("ferry: sync: %w; %w", ctx.Err(), waiting)
			}
			return ctx.Err()
		}
		var ga *goaway
		if errors.Is(err, errResynced) {
			continue
		}
		if !retryable(err) {
			return terminal(err)
		}
		attempt++
		delay := d.backoff(attempt)
		if errors.As(err, &ga) {
			delay = ga.after
		}
		if err := d.retryAfter(ctx, delay, err); err != nil {
			return err
		}
	}
}

// retryAfter waits delay before SyncOnce tries again after err, or
// returns why it cannot: ctx ended. Meanwhile the status says so, as
// Start's loop's does while it waits to reconnect, unless that loop runs
// or the status says failed.
func (d *Device) retryAfter(ctx context.Context, delay time.Duration, err error) error {
	// Armed before the status tells anyone when it fires (see loop).
	retryAt := d.opts.clock.Now().Add(delay)
	t := d.opts.clock.NewTimer(delay)
	d.runMu.Lock()
	d.mu.Lock()
	// Start's loop, when it runs, keeps the status: it connects again
	// meanwhile, and says how it fares. A failure for good stands until
	// a SyncOnce gets through.
	if d.cancel == nil && d.status.State != StateFailed {
		d.setStatus(func(s *Status) { *s = Status{State: StateOffline, Err: err, RetryAt: retryAt} })
	}
	d.mu.Unlock()
	d.runMu.Unlock()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		t.Stop()
		return fmt.Errorf("ferry: sync: %w (last error: %v)", ctx.Err(), err)
	}
}

// session is one Sync stream.
type session struct {
	d     *Device
	token string // the credentials' token as the session began
	st    ferryv1connect.SyncServiceSyncClientStream
	sc    ferryv1connect.SyncServiceClient
	once  bool
	// outer is the context the session runs under (Start's loop, or
	// SyncOnce's call), which the session's end does not cancel: for
	// background calls that need not end with the stream.
	outer context.Context

	epoch string
	live  atomic.Bool // reached CaughtUp (set by the receiver, read by the sender)
	// unseen holds, per conversation, the highest seq the server accepted
	// from this device beyond the head the device was last told of; a
	// conversation's info that reaches the seq clears it (its round brings
	// what the ops changed: titles, heads). SyncOnce waits for none to be
	// left, and for the round under way to end: inRound is set from a
	// round's first message to its last (a live Ops with a feed position,
	// or CaughtUp), since a push result can come between them. Both are
	// the receiver's alone.
	unseen  map[ulid.ULID]uint64
	inRound bool
	// unseenAtCaught is unseen as CaughtUp found it, for the first live
	// round's end (roundEnded); caughtPos is CaughtUp's feed position.
	unseenAtCaught map[ulid.ULID]uint64
	caughtPos      uint64
	// ranks places the catch-up's conversations in the list (applyInfos);
	// the receiver's alone.
	ranks     catchUpRanks
	flushWake chan struct{}
	// streamAcked holds the markers sent on this stream, per conversation
	// (delivered, read): the sender's alone. The server applies them as it
	// reads them, which it may not do (a stream cut by Stop, or broken),
	// so they are not recorded as acknowledged: only the unary Ack, which
	// answers once they are durable, records markers (ackNow), and the
	// next session sends again what this one sent.
	streamAcked map[string][2]uint64 // conversation id, as in the markers

	mu       sync.Mutex
	nextReq  uint64
	inflight map[uint64][]ulid.ULID // push request id -> op ids
	sent     map[ulid.ULID]uint64   // op ids in flight -> the request id of the last push that holds them
	// pushAt holds every push back until then: the server answered ops
	// RETRY_LATER (its disk nearly full, or the push limit), and later
	// ops of their devices may not pass them. Set by the receiver, which
	// arms wait, a timer that wakes flush then, unless the session has
	// ended, which stops it.
	pushAt time.Time
	wait   Timer
	// convAt holds the ops of one conversation back, each until its
	// time: the server answered them RETRY_LATER for a reason of that
	// conversation alone (its store damaged), and pushes of the others go
	// on. convWait wakes flush at the first of them, as wait does.
	convAt   map[ulid.ULID]convHold
	convWait Timer
	ended    bool
}

// convHold is how long the ops of one conversation are held back, and
// why, as the server said.
type convHold struct {
	at  time.Time
	why string
}

// accepted notes the ops a push result accepted beyond the heads the
// device was told of: their conversations' infos are still to come. It
// runs before results, which moves the heads to the accepted seqs.
func (s *session) accepted(results []*ferryv1.OpResult) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	for _, r := range results {
		if r.GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED {
			continue
		}
		id, err := wire.ParseID("op id", r.GetOpId())
		if err != nil {
			continue // results fails the session on it
		}
		ref, ok := s.d.pending[id]
		if !ok {
			continue // its round came first
		}
		if rec := s.d.convs[ref.conv]; rec != nil && rec.Head >= r.GetSeq() {
			continue
		}
		if s.unseen == nil {
			s.unseen = map[ulid.ULID]uint64{}
		}
		s.unseen[ref.conv] = max(s.unseen[ref.conv], r.GetSeq())
	}
}

// caughtUp notes CaughtUp at pos: it ends the catch-up's round, and keeps
// unseen as it is for the first live round's end (roundEnded).
func (s *session) caughtUp(pos uint64) {
	s.inRound, s.caughtPos = false, pos
	if len(s.unseen) > 0 {
		s.unseenAtCaught = maps.Clone(s.unseen)
	}
}

// roundEnded notes that a live round has ended since CaughtUp: it ends
// the wait for the infos of the ops accepted by results that came before
// CaughtUp (unseenAtCaught). Each such result was answered after its
// commit, and before the server planned any live round, so that round
// reached the commit: an info it did not bring is of a conversation the
// server leaves out (damaged in its store), which no later round brings
// either.
func (s *session) roundEnded() {
	for conv, seq := range s.unseenAtCaught {
		if s.unseen[conv] <= seq {
			delete(s.unseen, conv)
		}
	}
	s.unseenAtCaught = nil
}

// opsArrived notes an Ops message: a live one with a feed position ends
// its round, and it reports whether it did; any other leaves one open.
func (s *session) opsArrived(ops *ferryv1.Ops) bool {
	s.inRound = ops.GetPhase() != ferryv1.Phase_PHASE_LIVE || ops.GetFeedPos() == 0
	if !s.inRound {
		s.roundEnded()
	}
	return !s.inRound
}

// resultEnds notes a push result with a feed position, pos: it ends the
// round under way, which left the push's ops out, and says a live round
// ended since CaughtUp when pos is not CaughtUp's (a position moves only
// with a live round; a round whose position the server left to the
// result to say, while the push was in flight, ends here).
func (s *session) resultEnds(pos uint64) {
	s.inRound = false
	if pos != s.caughtPos {
		s.roundEnded()
	}
}

// seen clears the accepted ops that infos reach. Infos open a round.
func (s *session) seen(infos []*ferryv1.ConversationInfo) {
	s.inRound = true
	for _, c := range infos {
		conv, err := wire.ParseID("conversation id", c.GetId())
		if err != nil {
			continue // applyInfos failed the session on it already
		}
		if seq, ok := s.unseen[conv]; ok && c.GetHead() >= seq {
			delete(s.unseen, conv)
		}
	}
}

// session runs one Sync stream until it ends. It reports whether the
// session caught up (so the backoff can reset). The stream ends with
// stream; outer bounds the session's background work (member refreshes),
// which may outlive it: for Start's loop, a SyncOnce ends the stream
// only.
func (d *Device) session(outer, stream context.Context, once bool) (live bool, err error) {
	token := d.token()
	defer func() { d.noteRefused(token, err) }()
	_, _, sc, err := d.clients()
	if err != nil {
		return false, &TerminalError{Err: err}
	}
	ctx, cancel := context.WithCancel(stream)
	defer cancel()
	st, err := sc.Sync(ctx)
	if err != nil {
		return false, err
	}
	defer st.Close()
	d.mu.Lock()
	hello := &ferryv1.Hello{Epoch: d.epoch, FeedPos: d.feedPos, PageSize: uint32(max(d.opts.pageSize, 0)), Client: d.opts.client,
		PackedOps: true, SkipOwnOps: true, RetryLater: true}
	d.mu.Unlock()
	if err := st.Send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Hello{Hello: hello}}); err != nil {
		// A refused stream fails Send with a bare EOF; Receive has the status.
		if _, rerr := st.Receive(); rerr != nil {
			return false, rerr
		}
		return false, err
	}
	s := &session{d: d, token: token, st: st, sc: sc, once: once, outer: outer, flushWake: make(chan struct{}, 1),
		inflight: map[uint64][]ulid.ULID{}, sent: map[ulid.ULID]uint64{}}
	// A hold of an earlier session (holdPushes) is not this one's: it
	// pushes at once.
	d.mu.Lock()
	d.endDeferralLocked()
	d.mu.Unlock()
	// Deferred before the receiver's wait below, so run after it: the
	// receiver may arm the hold's timer until it is done.
	defer func() {
		s.mu.Lock()
		s.ended = true
		if s.wait != nil {
			s.wait.Stop()
		}
		if s.convWait != nil {
			s.convWait.Stop()
		}
		s.mu.Unlock()
	}()
	recv := make(chan error, 1)
	go func() { recv <- s.receive(ctx) }()
	received := false
	defer func() {
		// The receiver writes to the replica: it must be done before the
		// session returns (and the device may close).
		if !received {
			cancel()
			_ = st.Close()
			<-recv
		}
	}()
	hb := d.opts.clock.NewTimer(d.opts.heartbeat)
	defer hb.Stop()
	// Acks gather for ackDelay after the first marker to send, or for
	// resumeAckDelay when only markers nobody else sees wait.
	var ackDue <-chan time.Time
	var ackAt time.Time // when ackDue fires
	var ackTimer Timer
	defer func() {
		if ackTimer != nil {
			ackTimer.Stop()
		}
	}()
	ackIn := func(delay time.Duration) {
		at := d.opts.clock.Now().Add(delay)
		if ackDue != nil && !at.Before(ackAt) {
			return // due sooner already
		}
		if ackTimer == nil {
			ackTimer = d.opts.clock.NewTimer(delay)
		} else {
			ackTimer.Reset(delay)
		}
		ackDue, ackAt = ackTimer.C(), at
	}
	s.flush()
	s.sendAcks()
	for {
		select {
		case err := <-recv:
			received = true
			return s.live.Load(), err
		case <-d.outboxWake:
			s.flush()
		case <-s.flushWake:
			s.flush()
		case <-d.ackWake:
			if d.opts.ackDelay == 0 {
				s.sendAcks()
			} else {
				ackIn(d.opts.ackDelay)
			}
		case <-d.resumeAckWake:
			ackIn(d.opts.resumeAckDelay)
		case <-ackDue:
			ackDue = nil
			s.sendAcks()
		case <-hb.C():
			s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Heartbeat{Heartbeat: &ferryv1.Heartbeat{}}})
		case <-ctx.Done():
			return s.live.Load(), ctx.Err()
		}
		hb.Reset(d.opts.heartbeat)
	}
}

// send writes one message; a failure ends the stream, which the receive
// side reports.
func (s *session) send(m *ferryv1.SyncRequest) {
	if err := s.st.Send(m); err != nil {
		s.d.log.Debug("send failed; waiting for the stream's status", "err", err)
	}
}

// maxPush is the most ops in one push (the server's limit).
const maxPush = 1000

// pushFraming is room left in a push for what is not its ops' bytes.
const pushFraming = 64 << 10

// flush pushes outbox entries not already in flight, in outbox order (which
// is dot order within each conversation). While the server asked to wait
// (pushAt), it pushes nothing: the wait's timer flushes when it is over.
//
// The hold, the outbox and what is in flight are read together under
// d.mu, which results holds as it takes a push's ops out of flight and
// holds them: read apart, flush could take held ops for gone and clear
// the status's word of the hold. The push goes after d.mu is let go (a
// stream's flow control may block it): an answer handled in between may
// start a hold, or renumber its ops, first, and the server answers the
// push as one sent just before that answer.
func (s *session) flush() {
	d := s.d
	type item struct {
		conv ulid.ULID
		op   *ferryv1.Op
	}
	var items []item
	more := false
	size := 0
	d.mu.Lock()
	now := d.opts.clock.Now()
	s.mu.Lock()
	held := s.pushAt.After(now)
	convHeld := s.heldConvsLocked(now) // conversations whose ops wait
	s.mu.Unlock()
	if held {
		d.mu.Unlock()
		return
	}
	limit := d.maxMessage - pushFraming
	err := scanPrefix(d.db, []byte{tOutbox}, func(_, v []byte) error {
		var e outboxEntry
		if err := decodeJSON(v, &e); err != nil {
			return err
		}
		op, err := decodeOp(e.Op)
		if err != nil {
			return err
		}
		id := ulid.MustParseStrict(op.GetId())
		s.mu.Lock()
		inFlight := s.sent[id] != 0
		s.mu.Unlock()
		if inFlight {
			return nil
		}
		conv := ulid.MustParseStrict(e.Conv)
		if convHeld[conv] {
			return nil
		}
		// As many as the server takes in one push: its count, and its
		// message size less room for the framing (pushPiece's rule, kept
		// as the outbox is read, so that no more of it is decoded).
		n := proto.Size(op) + 48 // the op's field and its batch's
		if len(items) == maxPush || len(items) > 0 && size+n > limit {
			more = true
			return io.EOF
		}
		size += n
		items = append(items, item{conv: conv, op: op})
		return nil
	})
	if err == nil && len(d.pending) == 0 {
		// A hold over with nothing to push again (the ops it held left
		// the outbox another way): the status no longer says it. Ops in
		// flight still wait for their answer.
		d.endDeferralLocked()
	}
	d.mu.Unlock()
	if err != nil && !errors.Is(err, io.EOF) {
		d.log.Error("read outbox", "err", err)
		return
	}
	if len(items) == 0 {
		return
	}
	push := &ferryv1.Push{}
	var ids []ulid.ULID
	for _, it := range items {
		if n := len(push.Batches); n == 0 || push.Batches[n-1].GetConversationId() != it.conv.String() {
			push.Batches = append(push.Batches, &ferryv1.OpBatch{ConversationId: it.conv.String()})
		}
		b := push.Batches[len(push.Batches)-1]
		b.Ops = append(b.Ops, it.op)
		ids = append(ids, ulid.MustParseStrict(it.op.GetId()))
	}
	s.mu.Lock()
	s.nextReq++
	push.RequestId = s.nextReq
	s.inflight[push.RequestId] = ids
	for _, id := range ids {
		s.sent[id] = push.RequestId
	}
	s.mu.Unlock()
	s.send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Push{Push: push}})
	failpoint.Hit(failpoint.SDKAfterPush)
	if more {
		s.wakeFlush()
	}
}

// holdPushes holds every push back until pushAgainAt: the server answered
// ops RETRY_LATER, asking to wait after, saying why. Status says so meanwhile. The timer that ends
// the hold is armed before the status tells anyone when it ends. d.mu is
// held.
func (s *session) holdPushes(after time.Duration, why string) {
	d := s.d
	if why == "" {
		why = "the server asked to push them again later"
	}
	now := d.opts.clock.Now()
	at := pushAgainAt(now, after)
	s.mu.Lock()
	if at.After(s.pushAt) && !s.ended {
		s.pushAt = at
		if s.wait == nil {
			s.wait = clock.AfterFunc(d.opts.clock, at.Sub(now), s.wakeFlush)
		} else {
			s.wait.Reset(at.Sub(now))
		}
	}
	at = s.pushAt
	s.mu.Unlock()
	d.status.Err, d.status.RetryAt = fmt.Errorf("%w: %s", ErrPushDeferred, why), at
	d.log.Warn("the server asked to push again later", "in", at.Sub(now).Round(time.Millisecond), "why", why)
}

// heldConvsLocked returns the conversations whose ops wait at now
// (convAt), forgetting those whose wait is over, and arms convWait for the
// next end of a wait. s.mu is held.
func (s *session) heldConvsLocked(now time.Time) map[ulid.ULID]bool {
	var held map[ulid.ULID]bool
	var first time.Time
	for c, h := range s.convAt {
		if at := h.at; !at.After(now) {
			delete(s.convAt, c)
			continue
		}
		if held == nil {
			held = map[ulid.ULID]bool{}
		}
		held[c] = true
		if first.IsZero() || h.at.Before(first) {
			first = h.at
		}
	}
	if !first.IsZero() && !s.ended {
		if s.convWait == nil {
			s.convWait = clock.AfterFunc(s.d.opts.clock, first.Sub(now), s.wakeFlush)
		} else {
			s.convWait.Reset(first.Sub(now))
		}
	}
	return held
}

// holdConv holds the ops of conv back for after, as holdPushes holds
// every push: the server answered them RETRY_LATER for a reason of conv
// alone (REJECT_REASON_CONVERSATION_DAMAGED), why. d.mu is held.
func (s *session) holdConv(conv ulid.ULID, after time.Duration, why string) {
	d := s.d
	now := d.opts.clock.Now()
	at := pushAgainAt(now, after)
	s.mu.Lock()
	if s.ended || s.convAt[conv].at.After(now) { // held already: by another op of the push
		s.mu.Unlock()
		return
	}
	if s.convAt == nil {
		s.convAt = map[ulid.ULID]convHold{}
	}
	s.convAt[conv] = convHold{at, why}
	s.heldConvsLocked(now)
	list := s.heldListLocked()
	s.mu.Unlock()
	d.setStatus(func(st *Status) { st.Held = list })
	d.log.Warn("the server holds a conversation's ops", "conv", conv, "in", at.Sub(now).Round(time.Millisecond), "why", why)
}

// heldListLocked returns the conversations held (convAt), as Status.Held
// gives them: a new slice, in id order. s.mu is held.
func (s *session) heldListLocked() []HeldConversation {
	if len(s.convAt) == 0 {
		return nil
	}
	list := make([]HeldConversation, 0, len(s.convAt))
	for c, h := range s.convAt {
		list = append(list, HeldConversation{Conv: c, RetryAt: h.at, Err: fmt.Errorf("%w: %s", ErrPushDeferred, h.why)})
	}
	slices.SortFunc(list, func(a, b HeldConversation) int { return a.Conv.Compare(b.Conv) })
	return list
}

// releasePushes ends a hold (holdPushes) early, and the status's word of
// it: the server answered a push without turning any of its ops away, so
// what turned the held ones away may be over (a push the push limit
// refused that then goes early is refused again, and held again). It
// reports whether there was a hold. d.mu is held.
func (s *session) releasePushes() bool {
	s.mu.Lock()
	// Held still, or its timer's flush may not have run yet: a flush
	// more costs little, and the stop below may have cancelled that one.
	held := !s.pushAt.IsZero()
	s.pushAt = time.Time{}
	if s.wait != nil {
		s.wait.Stop()
	}
	s.mu.Unlock()
	if errors.Is(s.d.status.Err, ErrPushDeferred) {
		s.d.status.Err, s.d.status.RetryAt = nil, time.Time{}
	}
	return held
}

// endDeferralLocked clears the status's word of a hold (holdPushes), and
// says so, when it has one. d.mu is held.
func (d *Device) endDeferralLocked() {
	if errors.Is(d.status.Err, ErrPushDeferred) {
		d.setStatus(func(st *Status) { st.Err, st.RetryAt = nil, time.Time{} })
	}
}

// pushAgainAt is when ops the server answered RETRY_LATER at now, asking
// to wait after, go again: after, at least minPushWait, and up to a fifth
// more at random (the devices the server turned away together do not all
// come back together).
func pushAgainAt(now time.Time, after time.Duration) time.Time {
	after = max(after, minPushWait)
	return now.Add(after + time.Duration(rand.Int64N(int64(after)/5+1)))
}

// minPushWait is the least a device waits before pushing ops the server
// answered RETRY_LATER again, whatever delay it asked for (none, from a
// server that did not say).
const minPushWait = 100 * time.Millisecond

func (s *session) wakeFlush() {
	select {
	case s.flushWake <- struct{}{}:
	default:
	}
}

// idle reports whether nothing is pending or in flight, and the effects of
// accepted ops have come back in a live round. Only the receive goroutine
// calls it.
func (s *session) idle() bool {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	pending := len(s.d.pending)
	if len(s.convAt) > 0 {
		// Ops of a conversation held (holdConv) wait for its repair,
		// which may take the server's operator hours: a SyncOnce ends
		// without them (done).
		held := s.heldConvsLocked(s.d.opts.clock.Now())
		for _, ref := range s.d.pending {
			if held[ref.conv] {
				pending--
			}
		}
	}
	return len(s.inflight) == 0 && pending == 0 && len(s.unseen) == 0 && !s.inRound
}

// done is what a SyncOnce's session that is idle returns: errDone, and
// with ops held in a conversation (holdConv), an error that wraps
// ErrPushDeferred too, with the server's reason.
func (s *session) done() error {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.d.pending) > 0 && len(s.heldConvsLocked(s.d.opts.clock.Now())) > 0 {
		return &heldOps{why: s.convAt[s.heldListLocked()[0].Conv].why}
	}
	return errDone
}

// heldOps ends a SyncOnce that is done but for ops of a conversation the
// server cannot take for now (its store damaged): they wait in the outbox.
type heldOps struct{ why string }

func (h *heldOps) Error() string   { return ErrPushDeferred.Error() + ": " + h.why }
func (h *heldOps) Unwrap() []error { return []error{errDone, ErrPushDeferred} }

// receive handles the server's messages until the stream ends.
func (s *session) receive(ctx context.Context) error {
	d := s.d
	for {
		m, err := s.st.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("ferry: the server ended the session")
			}
			return err
		}
		switch x := m.GetMessage().(type) {
		case *ferryv1.SyncResponse_Welcome:
			s.epoch = x.Welcome.GetEpoch()
			d.mu.Lock()
			d.noteAcceptedLocked(s.token)
			if l := x.Welcome.GetLimits(); l.GetMaxBodyBytes() > 0 {
				d.maxBody = int(l.GetMaxBodyBytes())
			}
			if l := x.Welcome.GetLimits(); l.GetMaxMessageBytes() > 0 {
				d.maxMessage = int(l.GetMaxMessageBytes())
			}
			// A session that follows a live one on the same stream's turn
			// (a SyncOnce's, or the loop's after it) and misses nothing
			// leaves the device live: no catch-up to show.
			if d.status.State != StateLive || x.Welcome.GetMissingOps() > 0 || x.Welcome.GetChangedConversations() > 0 {
				d.setStatus(func(st *Status) {
					*st = Status{State: StateCatchingUp, Conversations: int(x.Welcome.GetChangedConversations()), OpsTotal: x.Welcome.GetMissingOps()}
				})
			}
			s.ranks = d.reserveRanks(x.Welcome.GetChangedConversations())
			d.mu.Unlock()
		case *ferryv1.SyncResponse_Conversations:
			ranks := &s.ranks
			if s.live.Load() {
				ranks = nil
			}
			gaps, err := d.applyInfos(x.Conversations.GetConversations(), ranks)
			if err != nil {
				return &TerminalError{Err: err}
			}
			s.seen(x.Conversations.GetConversations())
			for _, g := range gaps {
				if err := d.fetch(ctx, s.sc, g); err != nil {
					return err
				}
			}
			if s.live.Load() { // a catch-up's refresh waits for its end
				s.refreshMembers()
			}
		case *ferryv1.SyncResponse_Ops:
			batches, err := batchesOf(x.Ops)
			if err != nil {
				return &TerminalError{Err: err}
			}
			n, err := d.applyOps(batches)
			if err != nil {
				return &TerminalError{Err: err}
			}
			d.mu.Lock()
			if d.status.State == StateCatchingUp {
				ready := 0
				if x.Ops.GetPhase() == ferryv1.Phase_PHASE_NEWEST {
					// A newest page ends at the conversation's head.
					for _, b := range batches {
						if ops := b.ops; len(ops) > 0 && d.convs[b.conv] != nil && ops[len(ops)-1].Seq >= d.convs[b.conv].Head {
							ready++
						}
					}
				}
				backfill := x.Ops.GetPhase() == ferryv1.Phase_PHASE_BACKFILL
				d.setStatus(func(st *Status) {
					st.OpsReceived += uint64(n)
					st.Ready += ready
					if backfill {
						st.Backfilled += uint64(n)
					}
				})
			}
			if pos := x.Ops.GetFeedPos(); pos != 0 {
				if err := d.savePosition(s.epoch, pos); err != nil {
					d.mu.Unlock()
					return &TerminalError{Err: err}
				}
			}
			// The delivered markers these ops move go soon where other
			// members see them as receipts; elsewhere they only set where
			// the next session resumes, and can wait.
			soon := false
			for _, b := range batches {
				soon = soon || d.convs[b.conv] == nil || !d.convs[b.conv].NoReceipts
			}
			d.mu.Unlock()
			d.wakeAcks(soon)
			if s.opsArrived(x.Ops) {
				if s.once && s.idle() {
					return s.done()
				}
			}
		case *ferryv1.SyncResponse_CaughtUp:
			d.mu.Lock()
			err := d.savePosition(s.epoch, x.CaughtUp.GetFeedPos())
			if err == nil {
				d.catchingUp = false
				// Live before the status says so: a Stop that follows the
				// status must find the session live, and send the markers
				// it gathered (ackOnStop).
				s.live.Store(true)
				d.setStatus(func(st *Status) { st.State = StateLive })
			}
			d.mu.Unlock()
			if err != nil {
				return &TerminalError{Err: err}
			}
			s.caughtUp(x.CaughtUp.GetFeedPos())
			s.refreshMembers()
			if s.once && s.idle() {
				return s.done()
			}
		case *ferryv1.SyncResponse_PushResult:
			// With a feed position, the result ends the live round that held
			// its ops, sent before it without them (Hello.skip_own_ops):
			// what they changed has come. Without one, their round is still
			// to come.
			pos := x.PushResult.GetFeedPos()
			if pos == 0 {
				s.accepted(x.PushResult.GetResults()) // before results moves the heads
			}
			if err := s.results(x.PushResult); err != nil {
				return &TerminalError{Err: err}
			}
			if pos != 0 {
				d.mu.Lock()
				err := d.savePosition(s.epoch, pos)
				d.mu.Unlock()
				if err != nil {
					return &TerminalError{Err: err}
				}
				s.resultEnds(pos)
				d.wakeAcks(false) // the ops moved this device's delivered markers
			}
			if s.once && s.live.Load() && s.idle() {
				return s.done()
			}
		case *ferryv1.SyncResponse_ResetRequired:
			d.log.Warn("the server's store was replaced or restored; repairing", "reason", x.ResetRequired.GetReason(), "detail", x.ResetRequired.GetMessage())
			if err := d.repairAll(ctx, s.sc, x.ResetRequired.GetEpoch()); err != nil {
				return err
			}
			return errResynced
		case *ferryv1.SyncResponse_Goaway:
			return &goaway{after: time.Duration(x.Goaway.GetReconnectAfterMs()) * time.Millisecond}
		case *ferryv1.SyncResponse_Heartbeat:
		}
	}
}

// batchesOf parses an Ops message's batches. The session asks for them
// packed (fewer bytes on the wire); the replica keeps rows, which a packed
// batch's ops are turned into once, not parsed again.
func batchesOf(m *ferryv1.Ops) ([]received, error) {
	if len(m.GetPacked()) > 0 && len(m.GetBatches()) > 0 {
		return nil, errors.New("ferry: the server sent an Ops message with both packed and row batches")
	}
	out := make([]received, 0, len(m.GetBatches())+len(m.GetPacked()))
	for _, b := range m.GetBatches() {
		r, err := parseRows(b)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	for i, p := range m.GetPacked() {
		conv, ops, err := wire.UnpackBatch(fmt.Sprintf("ops.packed[%d]", i), p)
		if err != nil {
			return nil, fmt.Errorf("ferry: the server sent a malformed batch: %w", err)
		}
		r := received{conv: conv, ops: ops, rows: make([]*ferryv1.Op, len(ops))}
		for j := range ops {
			r.rows[j] = wire.OpToProto(&ops[j])
		}
		out = append(out, r)
	}
	return out, nil
}

// refreshTimeout bounds one round of a background member refresh
// (Device.refreshInBackground).
const refreshTimeout = 30 * time.Second

// refreshMembers has the member lists that changed fetched, at the end of
// a catch-up and as live rounds change them. A SyncOnce's session leaves
// them to SyncOnce, which fetches them before it returns: its context,
// which would cut a refresh in the background, ends then.
func (s *session) refreshMembers() {
	if !s.once {
		s.d.refreshInBackground(s.outer)
	}
}

// refreshInBackground runs refreshMembers on a goroutine of its own, one
// at a time: a call while one runs has it go round again.
//
// Under outer, the loop's context, not the session's: cancelling a call
// that a server going away (GOAWAY) has just cut, as the stream's end
// did, raced in net/http's retry of it (readTrackingBody, Go 1.26 and
// 1.27), once in some 600 runs of TestConvergenceSimulation with -race.
// Each round is bounded (refreshTimeout): a call on a connection gone
// silent would otherwise hold the refresher until TCP gives up.
func (d *Device) refreshInBackground(outer context.Context) {
	d.mu.Lock()
	d.refreshOuter = outer // the latest loop's: an earlier one's may have ended
	d.mu.Unlock()
	select {
	case d.refreshWake <- struct{}{}:
	default: // a round is due already
	}
	if !d.refreshing.CompareAndSwap(false, true) {
		return // the refresher takes the wake
	}
	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		for {
			select {
			case <-d.refreshWake:
				d.mu.Lock()
				outer := d.refreshOuter
				d.mu.Unlock()
				ctx, cancel := context.WithTimeout(outer, refreshTimeout)
				d.refreshMembers(ctx)
				cancel()
				continue
			default:
			}
			d.refreshing.Store(false)
			// A wake that came after the select, while refreshing was
			// still set, is this goroutine's to take, unless another
			// took over.
			if len(d.refreshWake) == 0 || !d.refreshing.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// refreshMembers fetches the member lists that changed (memberRefresh),
// teaching the device its members' usernames. Best effort: a list it
// could not fetch for now stays listed for a refresh refreshTimeout
// later at the soonest; one the server refuses (the user left
// meanwhile) does not.
func (d *Device) refreshMembers(ctx context.Context) {
	d.mu.Lock()
	if d.opts.clock.Now().Before(d.refreshNotBefore) {
		d.mu.Unlock()
		return // the last refresh could not reach the server
	}
	var convs []ulid.ULID
	for id, due := range d.memberRefresh {
		if due {
			convs = append(convs, id)
			d.memberRefresh[id] = false // being fetched: a change from now on makes it due again
		}
	}
	d.mu.Unlock()
	// A few at once: a first sync has every conversation's to fetch.
	sem := make(chan struct{}, refreshWidth)
	var wg sync.WaitGroup
	var unreachable atomic.Bool
	for _, id := range convs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := d.fetchMembers(ctx, id)
			if err != nil {
				d.log.Debug("refresh members", "conv", id, "err", err)
			}
			d.mu.Lock()
			defer d.mu.Unlock()
			if due, ok := d.memberRefresh[id]; ok && !due {
				if err == nil || !errors.Is(err, errUnreachable) && ctx.Err() == nil {
					delete(d.memberRefresh, id)
				} else {
					d.memberRefresh[id] = true
				}
			}
			if errors.Is(err, errUnreachable) && ctx.Err() == nil {
				unreachable.Store(true)
			}
		})
	}
	wg.Wait()
	if unreachable.Load() {
		// Not again at every live round that follows: a server that
		// turns calls away (overloaded, or a push limit's) gets a rest.
		d.mu.Lock()
		d.refreshNotBefore = d.opts.clock.Now().Add(refreshTimeout)
		d.mu.Unlock()
	}
}

// refreshWidth is how many member lists a refresh fetches at once.
const refreshWidth = 8

// wakeAcks tells the session that markers moved: ones to send soon, or
// ones that can wait resumeAckDelay.
func (d *Device) wakeAcks(soon bool) {
	wake := d.resumeAckWake
	if soon {
		wake = d.ackWake
	}
	select {
	case wake <- struct{}{}:
	default:
	}
}

// savePosition records the feed position (and epoch) every change up to
// which is in the replica. d.mu is held.
func (d *Device) savePosition(epoch string, pos uint64) error {
	if d.closed {
		return ErrClosed
	}
	// A position is a cursor to give back, not a number to compare: the
	// server seals it (it would count every commit on the server). A
	// session sends its positions in order, and an older one saved
	// would only make the next catch-up longer.
	if epoch == d.epoch && pos == d.feedPos {
		return nil
	}
	b := d.db.NewBatch()
	b.Set(metaKey("epoch"), encodeJSON(epoch))
	b.Set(metaKey("feedpos"), encodeJSON(pos))
	if err := d.db.Commit(b); err != nil {
		return err
	}
	d.epoch, d.feedPos = epoch, pos
	return nil
}

// markers lists the markers to send: each conversation's held prefix as
// delivered, and reads the application asked for.
func (d *Device) markers() []*ferryv1.Marker {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*ferryv1.Marker
	for id, c := range d.convs {
		delivered := c.prefix()
		if delivered > c.AckedDelivered || c.ReadWanted > c.AckedRead {
			out = append(out, &ferryv1.Marker{ConversationId: id.String(), Delivered: delivered, Read: c.ReadWanted})
		}
	}
	return out
}

// acked records that markers reached the server.
func (d *Device) acked(ms []*ferryv1.Marker) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	b := d.db.NewBatch()
	for _, m := range ms {
		id := ulid.MustParseStrict(m.GetConversationId())
		c := d.convs[id]
		if c == nil {
			continue
		}
		c.AckedDelivered = max(c.AckedDelivered, m.GetDelivered())
		c.AckedRead = max(c.AckedRead, m.GetRead())
		b.Set(idKey(tConv, id), encodeJSON(c))
	}
	if err := d.db.Commit(b); err != nil {
		d.log.Warn("record acks", "err", err)
	}
}

// sendAcks sends on the stream the markers it has not sent yet. They are
// not recorded as acknowledged (see streamAcked): Stop sends them with the
// unary Ack, and a later session sends them again (markers only move
// forward, so repeats are harmless).
func (s *session) sendAcks() { s.sendAcksWith(s.st.Send) }

// sendAcksWith is sendAcks with the stream's Send.
func (s *session) sendAcksWith(send func(*ferryv1.SyncRequest) error) {
	if s.streamAcked == nil {
		s.streamAcked = map[string][2]uint64{}
	}
	var ms []*ferryv1.Marker
	for _, m := range s.d.markers() {
		sent, ok := s.streamAcked[m.GetConversationId()]
		if !ok || m.GetDelivered() > sent[0] || m.GetRead() > sent[1] {
			ms = append(ms, m)
		}
	}
	for _, part := range pieces(ms) {
		if err := send(&ferryv1.SyncRequest{Message: &ferryv1.SyncRequest_Ack{Ack: &ferryv1.Ack{Markers: part}}}); err != nil {
			return
		}
		for _, m := range part {
			s.streamAcked[m.GetConversationId()] = [2]uint64{m.GetDelivered(), m.GetRead()}
		}
	}
}

// pieces splits markers into acks the server takes: at most maxPush
// markers each, its limit, as on the ops of one push.
func pieces(ms []*ferryv1.Marker) [][]*ferryv1.Marker {
	var out [][]*ferryv1.Marker
	for len(ms) > 0 {
		n := min(len(ms), maxPush)
		out = append(out, ms[:n])
		ms = ms[n:]
	}
	return out
}

// stopAckTimeout bounds the ack that Stop sends (ackOnStop).
const stopAckTimeout = 2 * time.Second

// ackOnStop sends, as syncing stops after a live session, the markers that
// were still gathering (WithAckDelay, WithResumeAckDelay): the server then
// resumes the next session where this one ended, rather than up to a
// resume ack delay before. A failure costs only that; the next session
// sends them.
func (d *Device) ackOnStop() {
	ctx, cancel := context.WithTimeout(context.Background(), stopAckTimeout)
	defer cancel()
	if err := d.ackNow(ctx); err != nil {
		d.log.Info("markers not sent as sync stopped; the next session sends them", "err", err)
	}
}

// ackRetrying is ackNow for SyncOnce, which retries a retryable error with
// backoff until ctx ends, as its session does.
func (d *Device) ackRetrying(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := d.ackNow(ctx)
		switch {
		case err == nil || errors.Is(err, ErrClosed):
			return err
		case !retryable(err):
			return terminal(err) // the device revoked since its session, say
		}
		if err := d.retryAfter(ctx, d.backoff(attempt), err); err != nil {
			return err
		}
	}
}

// ackNow sends pending markers with the unary Ack, which answers once they
// are durable.
func (d *Device) ackNow(ctx context.Context) error {
	ms := d.markers()
	if len(ms) == 0 {
		return nil
	}
	_, _, sc, err := d.clients()
	if err != nil {
		return err
	}
	for _, part := range pieces(ms) {
		if _, err := sc.Ack(ctx, &ferryv1.AckRequest{Markers: part}); err != nil {
			return fmt.Errorf("ferry: send markers: %w", err)
		}
		d.acked(part)
	}
	return nil
}
