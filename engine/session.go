package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// Session limits.
const (
	// DefaultPageSize is a good newest page for a chat screen.
	DefaultPageSize      = 50
	MaxPageSize          = 1000
	DefaultBatchOps      = 1000
	DefaultBatchBytes    = 1 << 20
	conversationsPerInfo = 256 // conversations per Conversations event
)

// SessionOptions open a session.
type SessionOptions struct {
	// Epoch the client's position belongs to; zero for a new device, which
	// then receives every conversation.
	Epoch ulid.ULID
	// FeedPos from the client's last CaughtUp or live event.
	FeedPos uint64
	// Cursors override, per conversation, the server's record of what the
	// device holds (its delivered marker): the device holds every op up to
	// the seq. A cursor below the head also puts its conversation in the
	// catch-up, changed or not.
	Cursors map[ulid.ULID]uint64
	// PageSize, when positive, asks for the newest PageSize ops of each
	// changed conversation first (PhaseNewest), before the rest of each gap
	// oldest first (PhaseBackfill); the device then receives a
	// conversation's ops out of seq order and must track the ranges it
	// holds. Zero keeps every conversation in seq order (PhaseBackfill
	// only). At most MaxPageSize.
	PageSize int
	// MaxBatchOps and MaxBatchBytes bound one Ops event: defaults
	// DefaultBatchOps and DefaultBatchBytes, and never above them.
	MaxBatchOps   int
	MaxBatchBytes int
	// Pushing, when set, holds the ops the device is pushing on the
	// session's stream: live rounds leave them out, and a conversation's
	// info whose only changes are what those ops imply (the head, and the
	// read marker a message raises). The caller then tells the device
	// where its ops went (the push's result) and when the round that left
	// them out ended (Pos). Nil sends every op.
	Pushing *Pushing
}

// Phase says why ops are sent.
type Phase uint8

// The phases of a session.
const (
	PhaseNewest   Phase = iota + 1 // the newest page of a changed conversation
	PhaseBackfill                  // the rest of a gap, oldest first
	PhaseLive                      // ops committed after catch-up
)

func (p Phase) String() string {
	switch p {
	case PhaseNewest:
		return "newest"
	case PhaseBackfill:
		return "backfill"
	case PhaseLive:
		return "live"
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// Welcome describes a session's catch-up before it starts.
type Welcome struct {
	Epoch      ulid.ULID
	FeedPos    uint64 // the position the catch-up reaches (see Event.FeedPos)
	Changed    int    // conversations in the catch-up
	MissingOps uint64 // ops the device lacks in them
}

// EventKind is the kind of a session event.
type EventKind uint8

// The kinds of session events.
const (
	EventConversations EventKind = iota + 1 // changed conversations
	EventOps                                // batches of ops
	EventCaughtUp                           // catch-up is complete
)

// Batch is a contiguous run of one conversation's ops, ascending by seq.
// The ops of a live round may be shared with other sessions: read-only.
type Batch struct {
	Conv ulid.ULID
	Ops  []model.Op
}

// Event is one message of a session.
type Event struct {
	Kind          EventKind
	Conversations []ConvInfo // EventConversations
	Phase         Phase      // EventOps
	Batches       []Batch    // EventOps
	// FeedPos, on EventCaughtUp and on the last EventOps of a live round,
	// says every change up to it has been sent. It is the position of
	// the user's latest change (a round's, or one before), not the
	// server's, which moves with everyone's commits: two are equal when
	// nothing of the user's changed between them (see FeedSeal). It may
	// be zero: nothing, for a user with no changes, or a session held
	// below every change (Session.hold).
	FeedPos uint64
	// RoundEnd marks the last EventOps of a live round, which carries its
	// FeedPos.
	RoundEnd bool
	// Ops and Convs count the catch-up, on EventCaughtUp.
	Ops   uint64
	Convs int
}

// verifyCaches makes reads check what they take from memory (the hub's
// feed journal, cached receipts, a view's memo) against the store; the
// engine's tests set it.
var verifyCaches = false

// Session is one device's sync session: catch-up, then live updates. It
// reads the durable log at its own pace and keeps no payload queue: its
// memory is a plan of ranges to send (with, in a live round, at most one
// event's worth of ops read already) and, per conversation touched, the
// last seq sent, a digest of the last info sent, the message count at the
// user's read marker, and the user's member record and marker. Sessions woken by one
// commit share, through the view they read, what is the same for all of
// them: the conversation's record and the round's ops.
//
// A session is not safe for concurrent use: one goroutine at a time calls
// Next, Pending, Changed, AfterChange and Close.
type Session struct {
	e       *Engine
	a       Actor
	o       SessionOptions
	w       *watch
	welcome Welcome

	queue []item
	// spare and ranges are the arrays of the last live round's queue and
	// op ranges, emptied, for the next round: rounds are many and small.
	spare, ranges []item

	// The maps per conversation are made with their first entry: a
	// session of a user in no conversation holds none (240 bytes).
	sent  map[ulid.ULID]uint64    // conversation -> last seq sent or known held
	shown map[ulid.ULID]shownInfo // conversation -> the last info the device has
	memo  sessionMemo             // what the session's reads remember
	pos   uint64                  // every change up to here was sent
	// told is the feed position the device was last given: the position
	// of its user's latest change sent, not pos, which moves with every
	// commit on the server (see FeedSeal). Resuming from it is resuming
	// from pos: the user's feeds changed at no position in between (but
	// for a hold's, below).
	told uint64
	// hold, when holding, is the greatest position the device may be
	// told: one below the feed entry of a damaged conversation the
	// session left out (see damageSet). Told past it, the device would
	// never take what that conversation changed before the entry, once
	// the store is repaired; held, its next catch-up reads that entry
	// again, and the conversations changed after it, whose ops its cursors
	// keep it from taking twice.
	hold    uint64
	holding bool
	caught  bool
	// revocations is the engine's revocation count when the device was
	// last found active: Next looks the device up again (stillActive) only
	// after some device was revoked.
	revocations uint64
	// waiting: the last live round found nothing to send, at the user's
	// count of changes waitGen (watch.signal).
	waiting bool
	waitGen uint64
}

type itemKind uint8

const (
	itemInfos itemKind = iota + 1
	itemOps
	itemCaughtUp
	itemLivePos
)

// item is a piece of work: conversations to describe, a range of ops to
// send (after, through], or a position to report.
type item struct {
	kind           itemKind
	infos          []ConvInfo
	conv           ulid.ULID
	after, through uint64
	phase          Phase
	pos, told      uint64 // a position to report: Session.pos and told
	// ops, for a live round's ops, are the ops after..through when the
	// round read them already (to check the user's membership); nil when
	// nextOps reads them.
	ops []model.Op
}

// OpenSession starts a's sync session. It returns a *ResetError (wrapping
// ErrResetRequired) when the client's epoch is not the store's or its
// position is beyond the store's, and ErrUnauthenticated when the device was
// revoked.
func (e *Engine) OpenSession(a Actor, o SessionOptions) (*Session, error) {
	o.PageSize = min(max(o.PageSize, 0), MaxPageSize)
	if o.MaxBatchOps <= 0 || o.MaxBatchOps > DefaultBatchOps {
		o.MaxBatchOps = DefaultBatchOps
	}
	if o.MaxBatchBytes <= 0 || o.MaxBatchBytes > DefaultBatchBytes {
		o.MaxBatchBytes = DefaultBatchBytes
	}
	if o.Epoch != (ulid.ULID{}) && o.Epoch != e.epoch {
		return nil, &ResetError{Reason: ResetEpochMismatch, Epoch: e.epoch.String(),
			Detail: fmt.Sprintf("the client's epoch %s is not the server's %s: the server's store was replaced or restored", o.Epoch, e.epoch)}
	}
	if o.Epoch == (ulid.ULID{}) {
		o.FeedPos = 0
	}
	s := &Session{e: e, a: a, o: o}
	// Watch before reading, so that a commit after the read still wakes us.
	s.w = e.hub.watch(a.User)
	if err := s.plan(); err != nil {
		s.w.close()
		return nil, err
	}
	return s, nil
}

// plan reads the feed once and queues the whole catch-up.
func (s *Session) plan() error {
	s.revocations = s.e.revocations.Load() // before the view, which then includes them
	r := s.reader(false)
	defer r.release()
	if ok, err := s.e.deviceActive(r.v, s.a); err != nil || !ok {
		if err != nil {
			return err
		}
		return fmt.Errorf("%w: device %s was revoked", ErrUnauthenticated, s.a.Device)
	}
	pos, err := readFeedPos(r.v)
	if err != nil {
		return err
	}
	if s.o.FeedPos > pos {
		return &ResetError{Reason: ResetPositionAhead, Epoch: s.e.epoch.String(),
			// Neither position in the detail, which the client reads:
			// the server's counts every commit (see FeedSeal).
			Detail: "the feed position is beyond the server's: the device's store is newer than the server's, or the position was not one the server gave"}
	}
	r.scanned = map[ulid.ULID]record.Conv{}
	entries, err := r.changed(s.a.User, s.o.FeedPos, pos)
	if err != nil {
		return err
	}
	told := s.o.FeedPos
	inPlan := make(map[ulid.ULID]bool, len(entries))
	for _, en := range entries {
		inPlan[en.conv] = true
		told = max(told, en.pos)
	}
	// Cursors below the head bring their conversations in too.
	for c := range s.o.Cursors {
		if !inPlan[c] {
			entries = append(entries, feedEntry{conv: c})
			inPlan[c] = true
		}
	}
	var infos []ConvInfo
	var newest, backfill []item
	for _, en := range entries {
		info, err := r.info(en.conv, s.a.User)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if s.leaveOut(en, err) {
			continue
		}
		if err != nil {
			return err
		}
		cursor, given := s.o.Cursors[en.conv]
		if given && cursor > info.Head {
			return &ResetError{Reason: ResetPositionAhead, Epoch: s.e.epoch.String(),
				Detail: fmt.Sprintf("cursor %d of conversation %s is beyond the server's %d", cursor, en.conv, info.Head)}
		}
		if !given {
			dm, err := r.deviceMarker(en.conv, s.a.Device)
			if err != nil {
				return err
			}
			cursor = min(dm.Delivered, info.Head)
		}
		if en.pos == 0 && cursor == info.Head {
			s.sent = setIn(s.sent, en.conv, cursor) // live rounds go on from the cursor
			continue                                // a cursor that holds everything: nothing changed
		}
		info.ResumeAfter = cursor
		infos = append(infos, info)
		s.shown = setIn(s.shown, en.conv, shownOf(&info))
		s.sent = setIn(s.sent, en.conv, info.Head)
		if cursor == info.Head {
			continue
		}
		s.welcome.MissingOps += info.Head - cursor
		split := info.Head
		if s.o.PageSize > 0 {
			split = max(cursor, info.Head-min(info.Head, uint64(s.o.PageSize)))
			newest = append(newest, item{kind: itemOps, conv: en.conv, after: split, through: info.Head, phase: PhaseNewest})
		}
		if split > cursor {
			backfill = append(backfill, item{kind: itemOps, conv: en.conv, after: cursor, through: split, phase: PhaseBackfill})
		}
	}
	for len(infos) > 0 {
		n := min(len(infos), conversationsPerInfo)
		s.queue = append(s.queue, item{kind: itemInfos, infos: infos[:n:n]})
		infos = infos[n:]
	}
	s.queue = append(s.queue, newest...)
	s.queue = append(s.queue, backfill...)
	told = s.held(told)
	s.queue = append(s.queue, item{kind: itemCaughtUp, pos: pos, told: told})
	s.welcome.Epoch, s.welcome.FeedPos, s.welcome.Changed = s.e.epoch, told, countInfos(s.queue)
	return nil
}

// leaveOut reports whether err, of a read of en's conversation, shows it
// damaged: the session then leaves it out, and holds its device's
// position below its entry (hold). A conversation a cursor brought in
// (en.pos 0) is held by the cursor, which the device keeps.
//
// An op of the log that does not decode (it comes as a logDamage) is not
// held for: Rebuild cannot make it anew, so nothing will bring the
// conversation back that a hold would wait for, and a hold for good would
// have every catch-up of the device's take again every conversation
// changed since. (Nor can any catch-up send the ops past it.)
func (s *Session) leaveOut(en feedEntry, err error) bool {
	if !corrupt(err) {
		return false
	}
	_ = s.e.damaged(en.conv, err)
	if ld := (*logDamage)(nil); errors.As(err, &ld) {
		return true // an op: no hold, as below
	}
	if en.pos > 0 && (!s.holding || en.pos-1 < s.hold) {
		s.hold, s.holding = en.pos-1, true
	}
	return true
}

// held returns told, lowered to the hold if there is one.
func (s *Session) held(told uint64) uint64 {
	if s.holding {
		return min(told, s.hold)
	}
	return told
}

func countInfos(q []item) int {
	n := 0
	for _, it := range q {
		n += len(it.infos)
	}
	return n
}

// Pending reports whether the session has its next event ready: Next will
// return it without waiting for a change.
func (s *Session) Pending() bool { return len(s.queue) > 0 }

// Welcome describes the catch-up this session will send.
func (s *Session) Welcome() Welcome { return s.welcome }

// Live reports whether the catch-up has been sent: Next now sends live
// rounds.
func (s *Session) Live() bool { return s.caught }

// Reaches reports whether the session's rounds reach seq of conv: the op
// was sent, or left out, or is queued to be sent.
func (s *Session) Reaches(conv ulid.ULID, seq uint64) bool { return s.sent[conv] >= seq }

// Pos is the feed position every change up to which has been sent: the
// one of the session's last CaughtUp or live round, as the device was
// given it (the position of its user's latest change, not the server's).
func (s *Session) Pos() uint64 { return s.told }

// Next returns the session's next event. When there is nothing to send it
// returns ok == false: wait for Changed (or AfterChange's call, or a
// heartbeat) and call it again.
// It fails with ErrUnauthenticated once the device is revoked.
func (s *Session) Next() (ev Event, ok bool, err error) {
	if len(s.queue) == 0 {
		if !s.caught {
			return Event{}, false, errors.New("engine: session has no plan")
		}
		if err := s.live(); err != nil {
			return Event{}, false, err
		}
		if len(s.queue) == 0 {
			return Event{}, false, nil
		}
	} else if err := s.stillActive(s.e.revocations.Load(), nil); err != nil {
		// A catch-up under way: a device revoked meanwhile gets no more of
		// it than the event its server may have read ahead (a stolen device
		// reading slowly would otherwise get the whole history it asked for
		// before the revocation).
		return Event{}, false, err
	}
	switch it := s.queue[0]; it.kind {
	case itemInfos:
		s.pop()
		return Event{Kind: EventConversations, Conversations: it.infos}, true, nil
	case itemCaughtUp:
		s.pop()
		s.pos, s.told, s.caught = it.pos, it.told, true
		return Event{Kind: EventCaughtUp, FeedPos: it.told, Convs: s.welcome.Changed, Ops: s.welcome.MissingOps}, true, nil
	case itemLivePos:
		s.pop()
		s.pos, s.told = it.pos, it.told
		return Event{Kind: EventOps, Phase: PhaseLive, FeedPos: it.told, RoundEnd: true}, true, nil
	}
	return s.nextOps()
}

// stillActive fails with ErrUnauthenticated once the session's device is
// revoked. revocations is Engine.revocations as read before v was taken;
// a nil v means a view of its own, taken after. A revocation counts there
// once its commit is in views, and before it wakes sessions: the device is
// looked up only when some device was revoked since it was last found
// active, and otherwise the check costs the caller's atomic load.
func (s *Session) stillActive(revocations uint64, v *store.View) error {
	if revocations == s.revocations {
		return nil
	}
	if v == nil {
		v = s.e.st.View()
		defer v.Release()
	}
	ok, err := s.e.deviceActive(v, s.a)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: device %s was revoked", ErrUnauthenticated, s.a.Device)
	}
	s.revocations = revocations
	return nil
}

// nextOps packs queued op ranges of one phase into one event, within the
// session's batch limits. A range that does not fit stays queued with its
// start moved on, so batches stay contiguous and nothing is sent twice.
func (s *Session) nextOps() (Event, bool, error) {
	ev := Event{Kind: EventOps, Phase: s.queue[0].phase}
	r := s.reader(ev.Phase == PhaseLive)
	defer r.release()
	if ev.Phase != PhaseLive {
		r.dec = new(record.OpDecoder) // a catch-up: many ops, sent together
	}
	opsLeft, bytesLeft := s.o.MaxBatchOps, s.o.MaxBatchBytes
	for len(s.queue) > 0 && opsLeft > 0 && bytesLeft > 0 {
		it := &s.queue[0]
		if it.kind == itemLivePos && ev.Phase == PhaseLive {
			ev.FeedPos, ev.RoundEnd, s.pos, s.told = it.told, true, it.pos, it.told
			s.pop()
			return ev, true, nil
		}
		if it.kind != itemOps || it.phase != ev.Phase {
			break
		}
		var ops []model.Op
		if it.ops != nil {
			ops = opsPrefix(it.ops, opsLeft, bytesLeft, len(ev.Batches) == 0)
			it.ops = it.ops[len(ops):]
		} else {
			var err error
			ops, err = r.ops(it.conv, it.after, it.through, opsLeft, bytesLeft, len(ev.Batches) == 0)
			if s.leaveOut(feedEntry{conv: it.conv}, err) {
				s.drop(it.conv)
				continue
			}
			if err != nil {
				return Event{}, false, err
			}
		}
		if len(ops) == 0 {
			if len(ev.Batches) > 0 {
				break // the next op does not fit in this event
			}
			// Ops are never removed from the log: a hole is corruption, and
			// sending around it would be a silent gap.
			return Event{}, false, fmt.Errorf("engine: seqs %d..%d of conversation %s are missing from the log", it.after+1, it.through, it.conv)
		}
		for i := range ops {
			bytesLeft -= opSize(&ops[i])
		}
		opsLeft -= len(ops)
		ev.Batches = append(ev.Batches, Batch{Conv: it.conv, Ops: ops})
		it.after = ops[len(ops)-1].Seq
		if it.after >= it.through {
			s.pop()
		}
	}
	if len(ev.Batches) == 0 {
		// The ops were a damaged conversation's, dropped: what follows
		// them is the event.
		return s.Next()
	}
	return ev, true, nil
}

// drop takes the ops of conv, found damaged, out of the queue, and lowers
// the position it ends with to the hold.
func (s *Session) drop(conv ulid.ULID) {
	q := s.queue[:0]
	for _, it := range s.queue {
		switch {
		case it.kind == itemOps && it.conv == conv:
			continue
		case it.kind == itemCaughtUp || it.kind == itemLivePos:
			it.told = s.held(it.told)
		}
		q = append(q, it)
	}
	clear(s.queue[len(q):])
	s.queue = q
	delete(s.sent, conv)
}

// live plans one round of live updates: what changed in the user's feed
// since the last round.
func (s *Session) live() error {
	gen, marksDone, lastMarks, woke := s.w.signal()
	revocations := s.e.revocations.Load()
	if woke <= s.pos && revocations == s.revocations {
		// Every commit that woke the user is in what was sent: nothing
		// is new. The server asks again after every event it sends, and
		// other users' commits move the feed position all the time: a
		// round for each ask found nothing and sent its position anyway,
		// a third of the messages of live fan-out to conversations of ten.
		s.waiting, s.waitGen = true, gen
		return nil
	}
	s.queue = s.spare // empty: Next plans a round only then
	// The position before the view, which then includes it; a commit in
	// between closes sig, and the next round takes it.
	pos := s.e.feedPos.Load()
	r := s.reader(true)
	defer r.release()
	// Revoking a device wakes its sessions without moving any feed.
	if err := s.stillActive(revocations, r.v); err != nil {
		return err
	}
	// woke <= s.pos: woken by a revocation only (any user's device), and
	// nothing of the user's changed; a round would send the position
	// alone, and so tell the device that someone revoked a device and
	// someone committed. pos < s.pos: the catch-up's view may be newer
	// than the position read.
	if woke <= s.pos || pos <= s.pos {
		s.waiting, s.waitGen = true, gen
		return nil
	}
	entries, ok, marksBegun := s.w.changed(s.pos, pos) // after the view, as userMarker needs
	r.marking, r.marksDone, r.marksBegun, r.lastMarks = true, marksDone, marksBegun, lastMarks
	if !ok {
		var err error
		if entries, err = r.changed(s.a.User, s.pos, pos); err != nil {
			return err
		}
	} else if verifyCaches {
		if err := s.verifyJournal(r, entries, pos); err != nil {
			return err
		}
	}
	var infos []ConvInfo
	ranges := s.ranges[:0]
	held := 0 // bytes of the ops the round holds read already
	told := s.told
	for _, en := range entries {
		told = max(told, en.pos)
		info, err := r.info(en.conv, s.a.User)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if s.leaveOut(en, err) {
			continue
		}
		if err != nil {
			return err
		}
		from, known := s.sent[en.conv]
		if !known {
			dm, err := r.deviceMarker(en.conv, s.a.Device)
			if err != nil {
				return err
			}
			from = min(dm.Delivered, info.Head)
		}
		info.ResumeAfter = from
		n := len(ranges)
		ownRead := uint64(0) // the last message the round leaves out as the device's own
		if info.Head > from {
			// Reading the info read these ops already, in most rounds (see
			// reader.member): take them from the view's memo, so that the
			// round does not read them again on a later view. The round
			// holds up to an event's worth; nextOps reads the rest when it
			// sends them. Ops held are as of this view: a delete committed
			// before they leave is in the next round.
			var ops []model.Op
			if info.Head-from <= maxMemoOps && held < s.o.MaxBatchBytes {
				all, err := r.liveOps(en.conv, from, info.Head)
				if s.leaveOut(en, err) {
					continue
				}
				if err != nil {
					return err
				}
				size := 0
				for i := range all {
					size += opSize(&all[i])
				}
				if uint64(len(all)) == info.Head-from && held+size <= s.o.MaxBatchBytes {
					ops, held = all, held+size
				}
			}
			if ops != nil && s.o.Pushing.Len() > 0 {
				// Only ops read can be told apart: a larger round sends the
				// device's own ops too.
				ranges, ownRead = s.o.Pushing.appendRuns(ranges, s.a.Device, ops)
			} else {
				ranges = append(ranges, item{kind: itemOps, conv: en.conv, after: from, through: info.Head, phase: PhaseLive, ops: ops})
			}
			s.sent = setIn(s.sent, en.conv, info.Head)
		}
		// The user's own delivered marker moves with every ack and matters
		// to the other members only: an info that changed in nothing else
		// is not worth a message. Nor is one that changed only in what the
		// device makes of ops it pushed, left out of the round
		// (SessionOptions.Pushing): their push's result gives their seqs,
		// so the head; and a message raises its author's read marker to
		// itself, with nothing unread before it. Ops to send always bring
		// their info.
		sh := s.shown[en.conv]
		if ownRead > sh.read {
			sh.read, sh.unread = ownRead, 0
		}
		now := shownOf(&info)
		if now != sh || len(ranges) > n {
			infos = append(infos, info)
		}
		s.shown = setIn(s.shown, en.conv, now)
	}
	told = s.held(told)
	if len(infos) == 0 && len(ranges) == 0 && told == s.told {
		// Nothing to show, at the position the device has: a round
		// would only say that someone committed (the user was woken in
		// the group of another's commit, by a revocation of theirs).
		s.pos = pos
		s.waiting, s.waitGen = true, gen
		s.ranges = keepSpare(ranges)
		return nil
	}
	for len(infos) > 0 {
		n := min(len(infos), conversationsPerInfo)
		s.queue = append(s.queue, item{kind: itemInfos, infos: infos[:n:n]})
		infos = infos[n:]
	}
	s.queue = append(s.queue, ranges...)
	s.queue = append(s.queue, item{kind: itemLivePos, pos: pos, told: told})
	clear(ranges)
	s.ranges = keepSpare(ranges)
	s.spare = keepSpare(s.queue)
	return nil
}

// pop drops the queue's first item, letting go of what it holds: the
// queue's array may live on as the spare.
func (s *Session) pop() {
	s.queue[0] = item{}
	s.queue = s.queue[1:]
}

// maxSpare bounds the arrays a session keeps between live rounds: a round
// queues a few items, and a rare large one should not stay with the
// session.
const maxSpare = 16

func keepSpare(q []item) []item {
	if cap(q) > maxSpare {
		return nil
	}
	return q[:0]
}

// verifyJournal checks what the journal said changed up to pos against the
// store (verifyCaches). The view may be newer than pos: a conversation that
// moved again past pos is then in the journal's answer (at its move up to
// pos) and not the store's (which has it at its latest position only), and
// either answer is right; the check needs a view at pos exactly.
func (s *Session) verifyJournal(r reader, entries []feedEntry, pos uint64) error {
	viewPos, err := readFeedPos(r.v)
	if err != nil || viewPos < pos {
		return fmt.Errorf("engine: feed position %d committed, the view has %d (%v)", pos, viewPos, err)
	}
	if viewPos != pos {
		return nil
	}
	stored, err := r.changed(s.a.User, s.pos, pos)
	if err != nil {
		return err
	}
	// A damaged conversation's entry may be there at a position not known
	// (changed) that no commit moved, which the journal rightly lacks:
	// damaged conversations are left out of the comparison.
	damaged := func(en feedEntry) bool { return s.e.isDamaged(en.conv) }
	stored = slices.DeleteFunc(stored, damaged)
	if !slices.Equal(slices.DeleteFunc(slices.Clone(entries), damaged), stored) {
		return fmt.Errorf("engine: the feed journal of user %s says %v after %d through %d; the store says %v", s.a.User, entries, s.pos, pos, stored)
	}
	return nil
}

// Changed returns a channel that is closed when the user's feed changes
// after the last time Next found nothing to send. Before that, it returns a
// closed channel.
func (s *Session) Changed() <-chan struct{} {
	if !s.waiting {
		return closedChan
	}
	return s.w.changedAfter(s.waitGen)
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// AfterChange calls f once Changed's channel is closed, instead of the
// caller parking a goroutine on it: at once, on the caller's goroutine, if
// it is closed already; otherwise on the goroutine of the commit that
// closes it. f must be quick and must not use the session. A later call
// replaces f; Close drops it, except that a commit waking the user as
// Close runs may still call it once.
func (s *Session) AfterChange(f func()) {
	if !s.waiting {
		f()
		return
	}
	s.w.afterChange(s.waitGen, f)
}

// Close ends the session.
func (s *Session) Close() { s.w.close() }

// shownInfo is what a device shows of a conversation, as far as a live
// round compares it: the info's read marker and unread count, and a
// digest of the rest. The head is left out: a round sends the info with
// any op it sends, so a head that moved by ops sent goes with them.
type shownInfo struct{ digest, read, unread uint64 }

func shownOf(c *ConvInfo) shownInfo {
	return shownInfo{digest: infoDigest(c), read: c.Read, unread: c.Unread}
}

// infoDigest hashes the rest of what a device shows of a conversation:
// everything in the info but the head, the read marker and unread count
// (shownInfo has them), the user's own delivered marker and the resume
// point (ReceiptsShared follows from the role and the member count).
func infoDigest(c *ConvInfo) uint64 {
	h := fnv.New64a()
	var b [8]byte
	u := func(v uint64) { binary.LittleEndian.PutUint64(b[:], v); h.Write(b[:]) }
	h.Write([]byte(c.Title))
	u(uint64(c.Role))
	u(uint64(c.Members))
	for _, r := range c.Receipts {
		h.Write(r.User[:])
		u(r.Delivered)
		u(r.Read)
	}
	return h.Sum64()
}
