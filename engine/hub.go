package engine

import (
	"slices"
	"sync"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/record"
)

// hub wakes the sessions of users whose feed changed. It carries no
// payloads: a woken session reads what changed from the durable view at its
// own pace, so a slow device only slows itself and memory does not grow
// with its lag.
//
// Each watched user has a channel that a commit closes and replaces; a
// session takes the current channel before reading, so a commit that lands
// after the read still wakes it.
//
// For watched users the hub also keeps a short journal of their feed moves
// (position, conversation), written by the writer before each commit. A
// live round reads what changed from the journal instead of scanning the
// user's two feeds in the store: those scans were the largest single cost
// of live fan-out (two Pebble iterators per woken session, 14% of server
// CPU with 1,000 devices in conversations of 10). The journal is an index
// of the feed, not a copy of any payload, and it is bounded: a session that
// falls behind it reads the feed from the store as before.
type hub struct {
	shards [64]hubShard

	// rec orders the writer's journal records and marker counts against
	// new watches: a journal started at recorded holds every move after
	// it, and a user's marker counts started while marking was set count
	// the commit under way as begun.
	rec      sync.Mutex
	recorded uint64 // the highest feed position recorded
	// marking holds the user markers the writer's commit under way
	// changes, from markersChanging to markersChanged (the writer makes one
	// commit at a time).
	marking []userMark
}

type hubShard struct {
	mu    sync.Mutex
	users map[ulid.ULID]*userSignal
}

type userSignal struct {
	// gen counts the commits that woke the user: a session waits for it to
	// move past what it last saw (watch.afterChange). ch is made only for a
	// caller that waits on a channel (Session.Changed), and closed by the
	// next wake: sessions are woken by their armed callbacks, and a channel
	// made for every member at every commit was a tenth of what the server
	// allocated in live fan-out.
	gen  uint64
	ch   chan struct{}
	refs int
	// armed are the callbacks of sessions that wait for the next change
	// without a goroutine parked on ch (Session.AfterChange).
	armed []armedWatch
	// moves are the user's feed moves after position since (every one of
	// them), ascending by position; moves at positions not yet committed
	// may be at the end.
	moves []feedMove
	since uint64
	// marksBegun counts the commits that change the user's own markers,
	// as the writer starts each (before it commits); marksDone as each
	// has committed. A session's marker read at a view taken after it read
	// marksDone is still the store's at a later view if marksBegun, read
	// after that view, is the same number: no commit changed it in between.
	marksBegun, marksDone uint64
	// lastMarks is what the last commit counted in marksDone wrote of the
	// user's own markers; nil until one is counted. Never modified once
	// set: a reader keeps it past the lock.
	lastMarks *markWrite
	// woke is the highest feed position of the commits that woke the
	// user (a commit that moves no feed, such as a revocation alone,
	// leaves it).
	woke uint64
}

type armedWatch struct {
	w *watch
	f func()
}

type feedMove struct {
	pos  uint64
	conv ulid.ULID
}

// journalMoves bounds each watched user's journal. A session more than
// this many of its user's feed moves behind reads the store instead.
const journalMoves = 64

func newHub() *hub {
	h := &hub{}
	for i := range h.shards {
		h.shards[i].users = map[ulid.ULID]*userSignal{}
	}
	return h
}

func (h *hub) shard(u ulid.ULID) *hubShard { return &h.shards[u[15]%byte(len(h.shards))] }

// watch registers interest in user's changes until the watch is closed.
func (h *hub) watch(user ulid.ULID) *watch {
	h.rec.Lock()
	defer h.rec.Unlock()
	s := h.shard(user)
	s.mu.Lock()
	sig := s.users[user]
	if sig == nil {
		sig = &userSignal{since: h.recorded}
		if slices.ContainsFunc(h.marking, func(um userMark) bool { return um.user == user }) {
			// The commit under way began before these counts, and its
			// markersChanged counts it done: count it begun too. With
			// done past begun, a marker read before the user's next
			// marker commit would pass userMarker's check after it, and
			// a read on another device would never reach this session.
			sig.marksBegun = 1
		}
		s.users[user] = sig
	}
	sig.refs++
	s.mu.Unlock()
	return &watch{h: h, user: user}
}

// record journals one commit's feed moves, (user, conversation) pairs, all
// at position pos, for the users being watched. The writer calls it before
// the commit: readers take only the moves their view includes.
func (h *hub) record(pos uint64, moves []idPair) {
	h.rec.Lock()
	defer h.rec.Unlock()
	for _, m := range moves {
		s := h.shard(m.a)
		s.mu.Lock()
		if sig := s.users[m.a]; sig != nil && !sig.has(pos, m.b) {
			if len(sig.moves) == journalMoves {
				sig.since = max(sig.since, sig.moves[0].pos)
				sig.moves = append(sig.moves[:0], sig.moves[1:]...)
			}
			sig.moves = append(sig.moves, feedMove{pos: pos, conv: m.b})
		}
		s.mu.Unlock()
	}
	h.recorded = max(h.recorded, pos)
}

// has reports whether the journal has conv's move to pos (a commit can
// move both of the user's feeds for one conversation).
func (sig *userSignal) has(pos uint64, conv ulid.ULID) bool {
	for i := len(sig.moves) - 1; i >= 0 && sig.moves[i].pos == pos; i-- {
		if sig.moves[i].conv == conv {
			return true
		}
	}
	return false
}

// userMark is a user's own marker in one conversation, as a commit wrote
// it.
type userMark struct {
	user, conv ulid.ULID
	m          record.Marker
}

// markWrite is what one commit wrote of a user's own markers, with the
// user's count of commits done that changed them, this one included. Its
// own copy: a commit's marks of other users are not kept alive by it.
type markWrite struct {
	done  uint64
	marks []convMark // one per conversation
	one   [1]convMark
}

type convMark struct {
	conv ulid.ULID
	m    record.Marker
}

func newMarkWrite(done uint64, ms []userMark) *markWrite {
	w := &markWrite{done: done}
	w.marks = w.one[:0] // one allocation for the usual acknowledgement
	if len(ms) > 1 {
		w.marks = make([]convMark, 0, len(ms))
	}
	for _, um := range ms {
		w.marks = append(w.marks, convMark{um.conv, um.m})
	}
	return w
}

// of returns the user's marker in conv as the commit wrote it, if it
// wrote it.
func (w *markWrite) of(conv ulid.ULID) (convMark, bool) {
	for _, cm := range w.marks {
		if cm.conv == conv {
			return cm, true
		}
	}
	return convMark{}, false
}

// markersChanging counts, before a commit, that it changes the markers of
// the users in written: every user marker the commit writes, grouped by
// user.
func (h *hub) markersChanging(written []userMark) {
	if len(written) == 0 {
		return
	}
	h.rec.Lock()
	defer h.rec.Unlock()
	h.marking = written
	h.eachMarked(written, func(sig *userSignal, _ []userMark) { sig.marksBegun++ })
}

// markersChanged counts, after the commit, that it changed them, and keeps
// for each watched user what it wrote of the user's markers.
func (h *hub) markersChanged(written []userMark) {
	if len(written) == 0 {
		return
	}
	h.rec.Lock()
	defer h.rec.Unlock()
	h.marking = nil
	h.eachMarked(written, func(sig *userSignal, ms []userMark) {
		sig.marksDone++
		sig.lastMarks = newMarkWrite(sig.marksDone, ms)
	})
}

// eachMarked calls f, under its shard's lock, with the signal of each
// watched user in written, grouped by user, and the user's marks.
func (h *hub) eachMarked(written []userMark, f func(*userSignal, []userMark)) {
	for i, n := 0, 0; i < len(written); i += n {
		n = 1
		for i+n < len(written) && written[i+n].user == written[i].user {
			n++
		}
		s := h.shard(written[i].user)
		s.mu.Lock()
		if sig := s.users[written[i].user]; sig != nil {
			f(sig, written[i:i+n])
		}
		s.mu.Unlock()
	}
}

// start sets the position journals begin after: the store's at open.
func (h *hub) start(pos uint64) {
	h.rec.Lock()
	h.recorded = pos
	h.rec.Unlock()
}

// wake counts a change for every watched user in users (closing the
// channel a caller waits on, if one does) and appends the callbacks armed
// for it to fs, for the caller to run. pos is
// the commit's feed position; 0 when it moved no feed. A session that
// reads after wake returns sees the commit (Session.live checks the
// position it woke), callbacks run or not: the writer answers the
// commit's requests first and runs them after, so that a push to a
// conversation of 10,000 online members is not acknowledged only once
// 10,000 senders were kicked.
func (h *hub) wake(users map[ulid.ULID]struct{}, pos uint64, fs []func()) []func() {
	for u := range users {
		s := h.shard(u)
		s.mu.Lock()
		if sig := s.users[u]; sig != nil {
			sig.woke = max(sig.woke, pos)
			sig.gen++
			if sig.ch != nil {
				close(sig.ch)
				sig.ch = nil
			}
			for i, a := range sig.armed {
				fs = append(fs, a.f)
				sig.armed[i] = armedWatch{}
			}
			sig.armed = sig.armed[:0]
		}
		s.mu.Unlock()
	}
	return fs
}

// watching counts watched users, for tests and metrics.
func (h *hub) watching() int {
	n := 0
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		n += len(s.users)
		s.mu.Unlock()
	}
	return n
}

// watch is one session's registration with the hub.
type watch struct {
	h    *hub
	user ulid.ULID
	once sync.Once
}

// signal returns the count of changes of the user's feed so far (gen: the
// next change moves it), the count of commits done that changed the
// user's markers with what the last of them wrote of the markers (nil if
// none was counted), and the highest feed position of the commits that
// woke the user.
func (w *watch) signal() (gen, marksDone uint64, lastMarks *markWrite, woke uint64) {
	s := w.h.shard(w.user)
	s.mu.Lock()
	defer s.mu.Unlock()
	sig := s.users[w.user]
	return sig.gen, sig.marksDone, sig.lastMarks, sig.woke
}

// changedAfter returns a channel closed once the user's feed changes after
// gen, a count signal returned: a closed one if it has.
func (w *watch) changedAfter(gen uint64) <-chan struct{} {
	s := w.h.shard(w.user)
	s.mu.Lock()
	defer s.mu.Unlock()
	sig := s.users[w.user]
	if sig == nil || sig.gen != gen {
		return closedChan
	}
	if sig.ch == nil {
		sig.ch = make(chan struct{})
	}
	return sig.ch
}

// changed is reader.changed from the journal: the conversations whose feed
// entries moved to after < pos <= through, most recently changed first. It
// reports false when the journal does not reach back to after; the caller
// then reads the store. It also returns the count of commits begun that
// change the user's markers, which a live round reads after its view.
func (w *watch) changed(after, through uint64) (_ []feedEntry, ok bool, marksBegun uint64) {
	s := w.h.shard(w.user)
	s.mu.Lock()
	sig := s.users[w.user]
	marksBegun = sig.marksBegun
	if sig.since > after {
		s.mu.Unlock()
		return nil, false, marksBegun
	}
	var out []feedEntry
	for i := len(sig.moves) - 1; i >= 0 && sig.moves[i].pos > after; i-- {
		m := sig.moves[i]
		if m.pos > through || slices.ContainsFunc(out, func(e feedEntry) bool { return e.conv == m.conv }) {
			continue
		}
		out = append(out, feedEntry{conv: m.conv, pos: m.pos})
	}
	s.mu.Unlock()
	sortFeed(out)
	return out, true, marksBegun
}

// afterChange arranges for f to run once the user's feed changes after
// gen, a count signal returned: at once if it has. It replaces the watch's
// armed callback, if one is.
func (w *watch) afterChange(gen uint64, f func()) {
	s := w.h.shard(w.user)
	s.mu.Lock()
	sig := s.users[w.user]
	if sig == nil || sig.gen != gen {
		s.mu.Unlock()
		f()
		return
	}
	sig.disarm(w)
	sig.armed = append(sig.armed, armedWatch{w: w, f: f})
	s.mu.Unlock()
}

func (sig *userSignal) disarm(w *watch) {
	for i, a := range sig.armed {
		if a.w == w {
			last := len(sig.armed) - 1
			sig.armed[i] = sig.armed[last]
			sig.armed[last] = armedWatch{}
			sig.armed = sig.armed[:last]
			return
		}
	}
}

func (w *watch) close() {
	w.once.Do(func() {
		s := w.h.shard(w.user)
		s.mu.Lock()
		if sig := s.users[w.user]; sig != nil {
			sig.disarm(w)
			sig.refs--
			if sig.refs == 0 {
				delete(s.users, w.user)
			}
		}
		s.mu.Unlock()
	})
}
