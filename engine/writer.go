package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/clock"
)

// A request is one caller's part of a group commit. apply runs on the
// writer goroutine and records the caller's results in variables the caller
// reads once done delivers the commit's outcome.
type request struct {
	weight int // ops, for sizing groups
	apply  func(tx *txn)
	done   chan error
}

// write queues apply for the next group commit and waits until that commit
// is durable. If ctx ends first, write returns ctx.Err() and the write may or
// may not happen.
func (e *Engine) write(ctx context.Context, weight int, apply func(*txn)) error {
	r, err := e.queue(ctx, weight, apply)
	if err != nil {
		return err
	}
	return e.await(ctx, r)
}

// queue queues apply for the next group commit, as write does, without
// waiting for the commit: await does.
func (e *Engine) queue(ctx context.Context, weight int, apply func(*txn)) (*request, error) {
	if err := e.Failed(); err != nil {
		return nil, err
	}
	r := &request{weight: weight, apply: apply, done: make(chan error, 1)}
	select {
	case e.reqs <- r:
		return r, nil
	case <-e.quit:
		return nil, ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// await waits until the commit that holds r is durable, as write does.
func (e *Engine) await(ctx context.Context, r *request) error {
	select {
	case err := <-r.done:
		return err
	case <-e.writerDone:
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// A Pending is a write queued for a group commit, as StartMark returns it.
// Its zero value has nothing to wait for.
type Pending struct {
	e       *Engine
	r       *request
	err     error        // how it failed before it was queued
	outcome func() error // what the call returns once committed
}

// Wait waits until the write is durable and returns what the call that
// started it would have. If ctx ends first, Wait returns ctx.Err() and the
// write may or may not happen; only then may Wait be called again.
func (p Pending) Wait(ctx context.Context) error {
	if p.err != nil || p.r == nil {
		return p.err
	}
	if err := p.e.await(ctx, p.r); err != nil {
		return err
	}
	return p.outcome()
}

// writer is the state owned by the writer goroutine.
type writer struct {
	e       *Engine
	feedPos uint64 // the last feed position committed
	convs   *lru[ulid.ULID, *convState]
	// marks caches markers as committed: every ack reads the device's and
	// the user's marker, and only the writer writes them.
	marks *lru[markKey, record.Marker]
	// usage caches users' usage as committed (keys.TUsage), which every
	// op reads and only the writer writes.
	usage *lru[ulid.ULID, int64]

	// receipts holds the conversations whose receipts changed since their
	// feed last moved, with when they began to wait (each also has a
	// durable TReceipts key, so a restart loses none); receiptQ lists them
	// in that order, and may still list some whose feed moved since. Each
	// conversation's receipts wait ReceiptDelay, so that a message in the
	// meantime carries them; when the oldest are due, one commit moves
	// every conversation that has waited half the delay.
	receipts map[ulid.ULID]time.Time
	receiptQ []waitingReceipts
	timer    clock.Timer
	armed    bool

	// kicks are the callbacks of the sessions the last commit woke, which
	// the writer runs once it has answered the commit's requests.
	kicks []func()

	// runs holds what remember handed the views of the conversations
	// written in the last carryCommits commits, and recent which those
	// were; commitN counts the commits remember has seen.
	runs   map[ulid.ULID]*convRun
	recent [carryCommits]struct {
		commit uint64
		convs  []ulid.ULID
	}
	commitN uint64
	carry   []*convRun // remember's, reused
	// added is the room finish decodes each conversation's new ops into
	// for remember (txConv.added), reused: remember copies what it keeps.
	added []model.Op

	// active caches devices found not revoked since the last revocation,
	// sparing a store read on every write of an active device.
	active map[idPair]struct{} // (user, device)
}

type waitingReceipts struct {
	conv  ulid.ULID
	since time.Time
}

// markKey is a marker's key: TDevMark or TUserMark, conversation, device or
// user.
type markKey struct {
	table     byte
	conv, who ulid.ULID
}

// markCacheSize bounds writer.marks (about 100 bytes each).
const markCacheSize = 1 << 16

// usageCacheSize is how many users' usage the writer keeps in memory.
const usageCacheSize = 1 << 16

// maxActiveCache bounds writer.active; past it the cache starts over.
const maxActiveCache = 1 << 16

func (w *writer) init(e *Engine) error {
	w.e = e
	w.convs = newLRU[ulid.ULID, *convState](e.opts.ConvCacheSize)
	w.marks = newLRU[markKey, record.Marker](markCacheSize)
	w.usage = newLRU[ulid.ULID, int64](usageCacheSize)
	v := e.st.View()
	defer v.Release()
	var err error
	if w.feedPos, err = readFeedPos(v); err != nil {
		return fmt.Errorf("read feed position: %w", err)
	}
	e.feedPos.Store(w.feedPos)
	e.hub.start(w.feedPos)
	w.receipts = map[ulid.ULID]time.Time{}
	w.active = map[idPair]struct{}{}
	w.runs = map[ulid.ULID]*convRun{}
	now := e.opts.Clock.Now() // receipts waiting at a restart wait a delay more
	err = scan(v, []byte{keys.TReceipts}, func(k, _ []byte) error {
		id, ok := keys.ParseID1(k)
		if !ok {
			return fmt.Errorf("%w: receipts key %x", record.ErrCorrupt, k)
		}
		w.wait(id, now)
		return nil
	})
	if err != nil {
		return fmt.Errorf("read waiting receipts: %w", err)
	}
	w.armReceipts()
	return nil
}

// wait notes that conv's receipts began to wait at since.
func (w *writer) wait(conv ulid.ULID, since time.Time) {
	w.receipts[conv] = since
	w.receiptQ = append(w.receiptQ, waitingReceipts{conv, since})
}

// oldestWaiting drops the conversations at the head of receiptQ whose feed
// moved since, and returns the head: the receipts that have waited
// longest. ok is false when none wait.
func (w *writer) oldestWaiting() (_ waitingReceipts, ok bool) {
	for len(w.receiptQ) > 0 {
		head := w.receiptQ[0]
		if since, waiting := w.receipts[head.conv]; waiting && since.Equal(head.since) {
			return head, true
		}
		w.receiptQ[0] = waitingReceipts{}
		w.receiptQ = w.receiptQ[1:]
	}
	return waitingReceipts{}, false
}

// armReceipts starts the receipt timer, for when the oldest waiting
// receipts are due, when receipts wait and it is not running.
func (w *writer) armReceipts() {
	if w.armed {
		return
	}
	oldest, ok := w.oldestWaiting()
	if !ok {
		return
	}
	d := max(oldest.since.Add(w.e.opts.ReceiptDelay).Sub(w.e.opts.Clock.Now()), 0)
	if w.timer == nil {
		w.timer = w.e.opts.Clock.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	w.armed = true
}

// receiptsDue fires when waiting receipts are due; nil (never) when none
// wait.
func (w *writer) receiptsDue() <-chan time.Time {
	if !w.armed {
		return nil
	}
	return w.timer.C()
}

// flushReceipts moves every conversation whose receipts have waited half
// the delay or more in its members' feeds (finish then clears their
// TReceipts keys): one commit for the receipts due and those nearly due.
func (w *writer) flushReceipts(tx *txn) {
	cutoff := w.e.opts.Clock.Now().Add(-w.e.opts.ReceiptDelay / 2)
	for {
		oldest, ok := w.oldestWaiting()
		if !ok || oldest.since.After(cutoff) {
			return
		}
		w.receiptQ[0] = waitingReceipts{}
		w.receiptQ = w.receiptQ[1:]
		if tc := tx.conv(oldest.conv); tc.damaged != nil {
			// Its receipts wait in the store (TReceipts) for the server's
			// next start, after a repair.
			continue
		} else if tc.exists {
			tc.feed = true
		} else {
			tx.b.Delete(keys.ID1(keys.TReceipts, oldest.conv))
			tx.receiptsDone = append(tx.receiptsDone, oldest.conv)
		}
	}
}

func readFeedPos(v *store.View) (uint64, error) {
	raw, err := v.Get(keys.Meta(keys.MetaFeedPos))
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return record.DecodeUint(raw)
}

// writeLoop is the writer goroutine: it takes every queued request, applies
// them to one batch, commits it with a WAL sync and answers them all.
func (e *Engine) writeLoop() {
	defer close(e.writerDone)
	for {
		var first *request
		select {
		case first = <-e.reqs:
		case <-e.w.receiptsDue():
			e.w.armed = false
			first = &request{apply: e.w.flushReceipts, done: make(chan error, 1)}
		case <-e.quit:
			e.drain(ErrClosed)
			return
		}
		group := []*request{first}
		weight := first.weight
	gather:
		for weight < e.opts.MaxGroupOps {
			select {
			case r := <-e.reqs:
				group = append(group, r)
				weight += r.weight
			default:
				break gather
			}
		}
		err := e.w.commit(group)
		for _, r := range group {
			r.done <- err
		}
		e.w.kick()
		e.w.armReceipts()
	}
}

func (e *Engine) drain(err error) {
	for {
		select {
		case r := <-e.reqs:
			r.done <- err
		default:
			return
		}
	}
}

func (w *writer) commit(group []*request) error {
	if err := w.e.Failed(); err != nil {
		return err
	}
	tx := w.begin()
	for _, r := range group {
		r.apply(tx)
		if tx.err != nil {
			break
		}
	}
	if tx.err == nil {
		tx.finish()
	}
	tx.v.Release()
	if tx.err != nil {
		// A read or decode error inside the writer means the store cannot be
		// trusted: stop rather than guess. (A conversation's record that
		// does not decode, met before its op changed anything, fences that
		// conversation off instead: tx.conv, tx.fence.)
		tx.b.Close()
		w.e.st.Fail(tx.err)
		return fmt.Errorf("%w: %v", ErrFailed, tx.err)
	}
	if tx.b.Count() == 0 {
		tx.b.Close()
		return nil
	}
	if tx.pos != 0 {
		// Before the commit, so that a view that includes it finds its
		// moves in the journal.
		w.e.hub.record(tx.pos, tx.moves)
	}
	// The users' own markers the commit changes, grouped by user: the hub
	// counts the commit for them, and hands what it wrote to their
	// sessions' next live rounds.
	var marked []userMark
	for _, tm := range tx.markOrder {
		if tm.dirty && tm.ck.table == keys.TUserMark {
			marked = append(marked, userMark{user: tm.ck.who, conv: tm.ck.conv, m: tm.m})
		}
	}
	slices.SortStableFunc(marked, func(a, b userMark) int { return a.user.Compare(b.user) })
	w.e.hub.markersChanging(marked)
	start := w.e.opts.Clock.Now()
	if err := w.e.st.Commit(tx.b); err != nil {
		return fmt.Errorf("%w: %v", ErrFailed, err)
	}
	now := w.e.opts.Clock.Now()
	w.e.commitTime.Observe(now.Sub(start))
	if f := w.e.testMarking.Load(); f != nil && len(marked) > 0 {
		(*f)()
	}
	w.e.hub.markersChanged(marked)
	for _, tm := range tx.markOrder {
		if tm.drop {
			w.marks.remove(tm.ck)
		} else {
			w.marks.put(tm.ck, tm.m)
		}
	}
	w.shareReceipts(tx)
	w.e.commits.Add(1)
	w.e.requests.Add(uint64(len(group)))
	if tx.pos != 0 {
		w.feedPos = tx.pos
		w.e.feedPos.Store(tx.pos)
	}
	if len(tx.revoked) > 0 {
		// Before the wake: a woken session that sees the new count reads a
		// view that includes the revocation.
		w.e.revocations.Add(1)
		clear(w.active)
	}
	for _, id := range tx.receiptsDone {
		delete(w.receipts, id)
	}
	w.e.setQuotas(tx.quotaSets)
	for _, id := range tx.receiptsWait {
		w.wait(id, now)
	}
	w.kicks = w.e.hub.wake(tx.wake, tx.pos, w.kicks[:0])
	return nil
}

// kick runs the callbacks of the sessions the last commit woke (hub.wake),
// once its requests are answered.
func (w *writer) kick() {
	for i, f := range w.kicks {
		f()
		w.kicks[i] = nil
	}
	w.kicks = w.kicks[:0]
}

// shareReceipts puts the receipts of each conversation whose feed the
// group moved, as of the commit, into the engine's receipt cache, when the
// writer holds every active member's marker: the first session the commit
// wakes in each such conversation would otherwise scan the members'
// records and markers (5% of the server's CPU in the bench's ingest).
// Before the wake, so that the sessions find them.
func (w *writer) shareReceipts(tx *txn) {
	for _, tc := range tx.convOrder {
		if !tc.feed || !tc.exists || int(tc.rec.Members) > w.e.opts.ReceiptMembers {
			continue
		}
		all, known := make([]Receipt, 0, tc.rec.Members), true
		for u := range tc.current {
			mk, ok := w.marks.get(markKey{keys.TUserMark, tc.id, u})
			if !ok {
				known = false
				break
			}
			all = append(all, Receipt{User: u, Delivered: mk.Delivered, Read: mk.PublicRead})
		}
		if known {
			// In the order a reader's scan of the member records finds them.
			slices.SortFunc(all, func(a, b Receipt) int { return a.User.Compare(b.User) })
			w.e.receiptCache.put(tc.id, tc.rec.FeedPos, all)
		}
	}
}

// txn is one group commit being built. Its maps overlay the durable view
// with this group's writes, so later requests in the group see earlier ones.
type txn struct {
	w   *writer
	e   *Engine
	v   *store.View
	b   *store.Batch
	err error // an internal error: the group fails and the engine stops

	convs     map[ulid.ULID]*txConv
	convOrder []*txConv
	ops       map[idPair]*txOp // ops written or rewritten in this group, by (conv, op id)
	opOrder   []*txOp
	feedSet   map[string]bool     // feed keys set in this group, under verifyCaches
	edits     map[idPair][]uint64 // (conv, target) -> seqs of edits added in this group
	devMarks  map[idPair]*txMarker
	userMarks map[idPair]*txMarker
	markOrder []*txMarker
	userFeed  map[idPair]bool // (user, conv): move the user's own feed entry
	userFeedO []idPair
	ufeedIdx  map[idPair]uint64
	wake      map[ulid.ULID]struct{}    // the users to wake (wakeUser)
	moves     []idPair                  // (user, conversation) feed entries moved to pos
	claims    map[string]bool           // unique keys (usernames) claimed by this group
	users     map[ulid.ULID]record.User // user records this group wrote (userRecord)
	added     map[ulid.ULID]int         // devices this group added, by user: the view does not hold them
	usage     map[ulid.ULID]*txUsage    // users' usage, as of this group's writes (usageOf)
	revoked   map[ulid.ULID]ulid.ULID   // devices revoked by this group, to their users
	blockSet  map[idPair]bool           // (user, by) blocks set (true) or lifted (false) by this group
	blockAdds map[ulid.ULID]int         // blocks this group added, by user: the view does not hold them
	quotaSets map[ulid.ULID]int64       // quotas this group set (SetUserQuota), by user
	pos       uint64                    // the feed position this group's changes get; 0 if none
	// Conversations whose receipts start waiting, and whose waiting
	// receipts this group's feed moves deliver: applied to the writer's
	// receipts once the group is durable.
	receiptsWait, receiptsDone []ulid.ULID
}

type idPair struct{ a, b ulid.ULID }

// txUsage is a user's usage in a group (Engine.Usage, Options.UserQuota),
// and whether the group moved it.
type txUsage struct {
	n     int64
	dirty bool
}

// usageOf returns user's usage as of this group's writes, reading it on
// first use.
func (tx *txn) usageOf(user ulid.ULID) *txUsage {
	if u := tx.usage[user]; u != nil {
		return u
	}
	u := &txUsage{}
	if n, ok := tx.w.usage.get(user); ok {
		u.n = n
	} else {
		n, err := readUsage(tx.v, user)
		switch {
		case corrupt(err):
			// One user's count stops no one: it starts again from 0,
			// written by their next op, until ferryd rebuild counts it
			// from their ops (check reports it meanwhile), their quota
			// holding them to more room than it should.
			tx.e.accountDamaged("the user's usage counts again from 0, their quota holding them to more than it should", err, "user", user)
			n = 0
			tx.w.usage.put(user, n)
		case err != nil:
			tx.fail(err)
		default:
			tx.w.usage.put(user, n)
		}
		u.n = n
	}
	if tx.usage == nil {
		tx.usage = map[ulid.ULID]*txUsage{}
	}
	tx.usage[user] = u
	return u
}

// addUsage moves user's usage by delta bytes.
func (tx *txn) addUsage(user ulid.ULID, delta int64) {
	if delta == 0 {
		return
	}
	u := tx.usageOf(user)
	u.n += delta
	u.dirty = true
}

// readUsage reads user's usage as committed: 0 when none is recorded.
func readUsage(v *store.View, user ulid.ULID) (int64, error) {
	raw, err := v.Get(keys.ID1(keys.TUsage, user))
	switch {
	case errors.Is(err, store.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, err
	}
	n, err := record.DecodeUint(raw)
	if err != nil {
		return 0, fmt.Errorf("usage of user %s: %w", user, err)
	}
	return int64(n), nil
}

type txOp struct {
	rec   record.Op
	write bool
	// accepted is set on an op the group appended: finish writes its id
	// and dot indexes.
	accepted bool
}

type txMarker struct {
	key   []byte
	ck    markKey
	m     record.Marker
	dirty bool
	drop  bool // delete the key: a device marker of a device this group revoked
}

// raiseRead moves a user's marker's Read up to seq, with the number of
// messages up to it when counted (record.Marker.ReadMessages), and reports
// whether it moved.
func (tm *txMarker) raiseRead(seq, messages uint64, counted bool) bool {
	if tm.m.Read >= seq {
		return false
	}
	if !counted {
		messages = 0
	}
	tm.m.Read, tm.m.ReadMessages, tm.m.ReadCounted, tm.dirty = seq, messages, counted, true
	return true
}

func (w *writer) begin() *txn {
	return &txn{
		w:         w,
		e:         w.e,
		v:         w.e.st.View(),
		b:         w.e.st.NewBatch(),
		convs:     map[ulid.ULID]*txConv{},
		ops:       map[idPair]*txOp{},
		edits:     map[idPair][]uint64{},
		devMarks:  map[idPair]*txMarker{},
		userMarks: map[idPair]*txMarker{},
		userFeed:  map[idPair]bool{},
		ufeedIdx:  map[idPair]uint64{},
	}
}

// deviceActive reports whether a's device is still valid: writes from a
// revoked device stop at once, even on a stream opened before.
func (tx *txn) deviceActive(a Actor) bool {
	if _, ok := tx.revoked[a.Device]; ok {
		return false
	}
	if _, ok := tx.w.active[idPair{a.User, a.Device}]; ok {
		return true
	}
	ok, err := tx.e.deviceActive(tx.v, a)
	if err != nil {
		tx.fail(err)
		return false
	}
	if ok {
		if len(tx.w.active) >= maxActiveCache {
			clear(tx.w.active)
		}
		tx.w.active[idPair{a.User, a.Device}] = struct{}{}
	}
	return ok
}

func (tx *txn) fail(err error) {
	if tx.err == nil {
		tx.err = err
	}
}

// convState is what the writer keeps in memory about a conversation to
// validate appends without scanning: its record, every membership and the
// version vector.
type convState struct {
	id      ulid.ULID
	exists  bool
	rec     record.Conv
	members map[ulid.ULID]*record.Member // everyone who was ever a member
	// current holds the members of members whose role is not RoleNone:
	// what a change walks. A conversation that many joined and left
	// keeps their records in members, for their reads up to their
	// removal; walking them on every message cost each message a map
	// step per member ever.
	current map[ulid.ULID]*record.Member
	owners  int
	vector  map[ulid.ULID]uint64 // device -> highest dot
	// newest holds the conversation's greatest op ids. Clients make op
	// ids from their clock when they send, so a new op's id is nearly
	// always among or past them, and the writer then knows without a
	// store read that it is not a retry: the op-id index read was 10% of
	// the server's CPU in batched ingest. Only the writer adds ops, and it
	// keeps newest.
	newest idWindow
}

// idWindow holds the greatest ids of a set, at most windowIDs of them,
// in ascending order: whether an id not below the least of them is in the
// set is known without reading the set. Empty, it stands for an empty set.
type idWindow struct{ ids []ulid.ULID }

// windowIDs bounds an idWindow: pushes from the members' devices that
// cross on the way (made in one order, committed in another) still fall
// within it.
const windowIDs = 32

// knows returns whether w decides id, and if so, whether the set has it.
func (w *idWindow) knows(id ulid.ULID) (known, has bool) {
	if len(w.ids) > 0 && id.Compare(w.ids[0]) < 0 {
		return false, false
	}
	_, has = slices.BinarySearchFunc(w.ids, id, ulid.ULID.Compare)
	return true, has
}

// add puts an id that the set did not have into w.
func (w *idWindow) add(id ulid.ULID) {
	i, _ := slices.BinarySearchFunc(w.ids, id, ulid.ULID.Compare)
	if i == 0 && len(w.ids) > 0 {
		return // below the least: w does not know the set's ids between
	}
	w.ids = slices.Insert(w.ids, i, id)
	if len(w.ids) > windowIDs {
		w.ids = slices.Delete(w.ids, 0, 1)
	}
}

func (c *convState) role(u ulid.ULID) model.Role {
	if m := c.members[u]; m != nil {
		return m.Role
	}
	return model.RoleNone
}

// txConv is a conversation touched by the current group.
type txConv struct {
	*convState
	// feed is set by a conversation-wide change: every member's feed entry
	// moves to the group's feed position.
	feed bool
	// receipt is set when a member's receipt changed: the feed moves once
	// Options.ReceiptDelay has passed, unless something else moves it
	// first.
	receipt bool
	// before holds, for members whose role changed in this group, their role
	// before the group.
	before map[ulid.ULID]model.Role
	// memberWrites lists members whose record must be written; fresh,
	// those whose record this group made (none was stored).
	memberWrites map[ulid.ULID]bool
	fresh        map[ulid.ULID]bool
	dirty        bool // the conversation record must be written
	// head0 is the conversation's head before the group; added holds the
	// ops the group appended after it, as a reader decodes them (remember).
	// rewrote is set when the group wrote an op at or before head0 again
	// (erase).
	head0   uint64
	added   []model.Op
	rewrote bool
	// damaged: the conversation is fenced off (see damageSet). Its state
	// is empty, and the group changes nothing of it: every caller of conv
	// looks at damaged before anything else.
	damaged error
}

// conv returns the write state of conversation id, loading it on first use.
// A conversation whose state does not decode is fenced off (damaged set)
// rather than failing the group, and the store: its ops are refused, and
// the others go on.
func (tx *txn) conv(id ulid.ULID) *txConv {
	if tc := tx.convs[id]; tc != nil {
		return tc
	}
	var damaged error
	c, ok := tx.w.convs.get(id)
	if tx.e.isDamaged(id) { // found by a read, or an earlier group
		c, ok, damaged = newConvState(id), true, damagedErr(id)
	}
	if !ok {
		var err error
		if c, err = loadConv(tx.v, id); corrupt(err) {
			damaged = tx.e.damaged(id, err)
		} else if err != nil {
			tx.fail(err)
		}
		if err != nil {
			c = newConvState(id)
		}
		// Only conversations that exist are cached (at the end of the
		// group, once a Create may have made this one exist): unknown ids
		// must not push real conversations out.
	}
	tc := &txConv{convState: c, before: map[ulid.ULID]model.Role{}, memberWrites: map[ulid.ULID]bool{}, head0: c.rec.Head, damaged: damaged}
	tx.convs[id] = tc
	if damaged == nil {
		tx.convOrder = append(tx.convOrder, tc)
	}
	return tc
}

func newConvState(id ulid.ULID) *convState {
	return &convState{id: id, members: map[ulid.ULID]*record.Member{}, current: map[ulid.ULID]*record.Member{}, vector: map[ulid.ULID]uint64{}}
}

func loadConv(v *store.View, id ulid.ULID) (*convState, error) {
	c := newConvState(id)
	raw, err := v.Get(keys.ID1(keys.TConv, id))
	if errors.Is(err, store.ErrNotFound) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("load conversation %s: %w", id, err)
	}
	if c.rec, err = record.DecodeConv(raw); err != nil {
		return nil, fmt.Errorf("load conversation %s: %w", id, err)
	}
	c.exists = true
	for _, t := range []byte{keys.TMember, keys.TFormer} {
		err = scan(v, keys.ID1(t, id), func(k, val []byte) error {
			_, u, ok := keys.ParseID2(k)
			if !ok {
				return fmt.Errorf("%w: member key %x", record.ErrCorrupt, k)
			}
			m, err := record.DecodeMember(val)
			if err != nil {
				return err
			}
			c.members[u] = &m
			if m.Role != model.RoleNone {
				c.current[u] = &m
			}
			if m.Role == model.RoleOwner {
				c.owners++
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("load members of %s: %w", id, err)
		}
	}
	vec, err := readVector(v, id)
	if err != nil {
		return nil, err
	}
	for _, d := range vec.Entries() {
		c.vector[d.Device] = d.N
	}
	last, ok, err := readLastID(v, id)
	if err != nil {
		return nil, err
	}
	if ok {
		c.newest.ids = append(make([]ulid.ULID, 0, 4), last)
	}
	return c, nil
}

// readLastID returns the greatest op id in conv's op-id index; ok is
// false if the index is empty.
func readLastID(v *store.View, conv ulid.ULID) (id ulid.ULID, ok bool, err error) {
	lo, hi := keys.Prefix(keys.ID1(keys.TOpID, conv))
	it, err := v.Iter(lo, hi)
	if err != nil {
		return id, false, err
	}
	if ok = it.Last(); ok {
		var valid bool
		if _, id, valid = keys.ParseID2(it.Key()); !valid {
			_ = it.Close()
			return id, false, fmt.Errorf("%w: op-id key %x", record.ErrCorrupt, it.Key())
		}
	}
	if err := it.Close(); err != nil {
		return id, false, fmt.Errorf("read last op id of %s: %w", conv, err)
	}
	return id, ok, nil
}

// scan calls fn for every key with prefix p. fn's arguments are only valid
// during the call.
func scan(v *store.View, p []byte, fn func(k, val []byte) error) error {
	lo, hi := keys.Prefix(p)
	it, err := v.Iter(lo, hi)
	if err != nil {
		return err
	}
	for ok := it.First(); ok; ok = it.Next() {
		val, err := it.Value()
		if err != nil {
			_ = it.Close()
			return err
		}
		if err := fn(it.Key(), val); err != nil {
			_ = it.Close()
			return err
		}
	}
	return it.Close()
}

// readVector reads a conversation's version vector from its dot index by
// skipping from device to device: O(devices), not O(ops). Dots are accepted
// without gaps, so a device's highest dot is the end of its last run.
func readVector(v *store.View, conv ulid.ULID) (model.Vector, error) {
	lo, hi := keys.Prefix(keys.ID1(keys.TDot, conv))
	it, err := v.Iter(lo, hi)
	if err != nil {
		return model.Vector{}, err
	}
	var entries []model.Dot
	for ok := it.First(); ok; {
		_, dev, _, valid := keys.ParseDot(it.Key())
		if !valid {
			_ = it.Close()
			return model.Vector{}, fmt.Errorf("%w: dot key %x", record.ErrCorrupt, it.Key())
		}
		end := keys.Dot(conv, dev, ^uint64(0))
		if !it.SeekLT(end) {
			break
		}
		val, err := it.Value()
		if err != nil {
			_ = it.Close()
			return model.Vector{}, err
		}
		run, err := decodeDotRun(it.Key(), val)
		if err != nil {
			_ = it.Close()
			return model.Vector{}, err
		}
		entries = append(entries, model.Dot{Device: dev, N: run.last()})
		ok = it.SeekGE(end)
	}
	if err := it.Close(); err != nil {
		return model.Vector{}, fmt.Errorf("read vector of %s: %w", conv, err)
	}
	return model.NewVector(entries...), nil
}

// dotRun is an entry of the dot index: count dots of dev in conv from
// first, at the seqs from seq.
type dotRun struct {
	conv, dev         ulid.ULID
	first, seq, count uint64
}

func (r dotRun) last() uint64 { return r.first + r.count - 1 }

// decodeDotRun decodes a dot index entry, its key and its value.
func decodeDotRun(k, val []byte) (dotRun, error) {
	var r dotRun
	var ok bool
	r.conv, r.dev, r.first, ok = keys.ParseDot(k)
	seq, count, err := record.DecodeDotRun(val)
	if !ok || err != nil {
		return r, fmt.Errorf("dot index entry %x: %w", k, errors.Join(err, record.ErrCorrupt))
	}
	r.seq, r.count = seq, count
	return r, nil
}

// lookupOp finds the op with this id in c: first among this group's
// writes, then in the durable view, unless c's newest ids tell it is not
// there.
func (tx *txn) lookupOp(c *txConv, id ulid.ULID) (*txOp, error) {
	k := idPair{c.id, id}
	if o := tx.ops[k]; o != nil {
		return o, nil
	}
	conv := c.id
	known, has := c.newest.knows(id)
	absent := known && !has
	if absent && !verifyCaches {
		return nil, nil
	}
	raw, err := tx.v.Get(keys.ID2(keys.TOpID, conv, id))
	if errors.Is(err, store.ErrNotFound) {
		if known && has {
			return nil, fmt.Errorf("engine: op id %s is among the newest known of %s, yet not stored", id, conv)
		}
		return nil, nil
	}
	if err == nil && absent {
		err = fmt.Errorf("engine: op id %s is not among the newest known of %s, yet stored", id, conv)
	}
	if err != nil {
		return nil, fmt.Errorf("look up op %s: %w", id, err)
	}
	seq, err := record.DecodeUint(raw)
	if err != nil {
		return nil, fmt.Errorf("look up op %s: %w", id, err)
	}
	rec, err := readOp(tx.v, conv, seq)
	if errors.Is(err, store.ErrNotFound) {
		err = fmt.Errorf("%w: the op-id index names seq %d, which the log lacks", record.ErrCorrupt, seq)
	}
	if err != nil {
		return nil, fmt.Errorf("look up op %s: %w", id, err)
	}
	o := &txOp{rec: rec}
	tx.ops[k] = o
	return o, nil
}

func readOp(v *store.View, conv ulid.ULID, seq uint64) (record.Op, error) {
	raw, err := v.Get(keys.Op(conv, seq))
	if err != nil {
		return record.Op{}, fmt.Errorf("read op %s/%d: %w", conv, seq, err)
	}
	return record.DecodeOp(conv, seq, raw)
}

// putOp records an op to be written when the group finishes.
func (tx *txn) putOp(o *txOp) {
	k := idPair{o.rec.Conv, o.rec.ID}
	tx.ops[k] = o
	if !o.write {
		o.write = true
		tx.opOrder = append(tx.opOrder, o)
	}
}

// marker returns the device's (table TDevMark) or user's (TUserMark) marker
// in conv, loading it on first use.
func (tx *txn) marker(table byte, conv, who ulid.ULID) *txMarker {
	tm, err := tx.loadMarker(table, conv, who)
	if err != nil {
		tx.fail(err)
		return &txMarker{key: keys.ID2(table, conv, who), ck: markKey{table, conv, who}}
	}
	return tm
}

// loadMarker is marker, for a caller that has changed nothing yet: a
// marker that does not decode is returned as an error (see tx.fence).
func (tx *txn) loadMarker(table byte, conv, who ulid.ULID) (*txMarker, error) {
	m := tx.devMarks
	if table == keys.TUserMark {
		m = tx.userMarks
	}
	k := idPair{conv, who}
	if tm := m[k]; tm != nil {
		return tm, nil
	}
	tm := &txMarker{key: keys.ID2(table, conv, who), ck: markKey{table, conv, who}}
	cached, ok := tx.w.marks.get(tm.ck)
	if ok && !verifyCaches {
		tm.m = cached
	} else {
		raw, err := tx.v.Get(tm.key)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return nil, fmt.Errorf("read marker: %w", err)
		default:
			if tm.m, err = record.DecodeMarker(raw); err != nil && table == keys.TDevMark {
				// A device's marker only says where its sessions resume
				// (reader.deviceMarker): the group writes it anew.
				tx.e.log.Warn("device marker does not decode: written anew", "conv", conv, "device", who, "err", err)
				tm.m, tm.dirty = record.Marker{}, true
			} else if err != nil {
				return nil, fmt.Errorf("read marker: %w", err)
			}
		}
		if ok && cached != tm.m {
			tx.fail(fmt.Errorf("engine: cached marker %x is %+v; the store says %+v", tm.key, cached, tm.m))
		}
	}
	m[k] = tm
	tx.markOrder = append(tx.markOrder, tm)
	return tm, nil
}

// fence fences c off (see damageSet) for err, a read of it that failed,
// and returns the error its ops get, when err is a record that does not
// decode; else it fails the group with err and returns nil. The caller has
// changed nothing of c for the op at hand: the group's earlier ops of c
// commit, and its later ones are refused.
func (tx *txn) fence(c *txConv, err error) error {
	if !corrupt(err) {
		tx.fail(err)
		return nil
	}
	c.damaged = tx.e.damaged(c.id, err)
	return c.damaged
}

// dropRevokedMarkers deletes the device markers of the devices this group
// revoked: nothing reads them again (a revoked device never syncs), and
// nothing else would ever delete them. A device marks only conversations
// of its user's, which TUserConv lists (it keeps those the user left); a
// marker of a conversation the user joined in this very group is in
// tx.devMarks alone. A point deletion a conversation: a revocation is rare,
// and a device syncs nearly all of its user's conversations.
func (tx *txn) dropRevokedMarkers() {
	if len(tx.revoked) == 0 {
		return
	}
	drop := func(conv, dev ulid.ULID) {
		tm := tx.devMarks[idPair{conv, dev}]
		if tm == nil {
			tm = &txMarker{key: keys.ID2(keys.TDevMark, conv, dev), ck: markKey{keys.TDevMark, conv, dev}}
			tx.devMarks[idPair{conv, dev}] = tm
			tx.markOrder = append(tx.markOrder, tm)
		}
		tm.m, tm.dirty, tm.drop = record.Marker{}, false, true
	}
	for _, tm := range tx.markOrder {
		if _, ok := tx.revoked[tm.ck.who]; ok && tm.ck.table == keys.TDevMark {
			drop(tm.ck.conv, tm.ck.who)
		}
	}
	for dev, user := range tx.revoked {
		err := scan(tx.v, keys.ID1(keys.TUserConv, user), func(k, _ []byte) error {
			_, conv, ok := keys.ParseID2(k)
			if !ok {
				return fmt.Errorf("malformed key %x", k)
			}
			drop(conv, dev)
			return nil
		})
		if err != nil {
			tx.fail(fmt.Errorf("revoke: list the user's conversations: %w", err))
			return
		}
	}
}

// moveUserFeed moves user's own feed entry for conv to this group's
// position: a change only the user's devices need to hear of.
func (tx *txn) moveUserFeed(user, conv ulid.ULID) {
	k := idPair{user, conv}
	if !tx.userFeed[k] {
		tx.userFeed[k] = true
		tx.userFeedO = append(tx.userFeedO, k)
	}
}

// wakeUser adds u to the users the group's commit wakes. n sizes the set
// when this makes it: for a conversation's feed move, all its members
// (see moveConvFeed).
func (tx *txn) wakeUser(u ulid.ULID, n int) {
	if tx.wake == nil {
		tx.wake = make(map[ulid.ULID]struct{}, n)
	}
	tx.wake[u] = struct{}{}
}

// setFeedEntry sets a feed entry's key, which holds this group's position
// and so is new; deleteFeedEntry removes it with a single deletion (see
// store.Batch.SingleDelete), which is right only for a key set once: under
// verifyCaches, both check that it was.
func (tx *txn) setFeedEntry(key []byte) {
	if verifyCaches {
		has, err := tx.v.Has(key)
		if tx.feedSet == nil {
			tx.feedSet = map[string]bool{}
		}
		if err != nil || has || tx.feedSet[string(key)] {
			tx.fail(fmt.Errorf("engine: feed key %x set again (stored %v, %v)", key, has, err))
			return
		}
		tx.feedSet[string(key)] = true
	}
	tx.b.Set(key, nil)
}

// deleteFeedEntry removes a feed entry set by an earlier group.
func (tx *txn) deleteFeedEntry(key []byte) {
	if verifyCaches {
		if has, err := tx.v.Has(key); err != nil || !has || tx.feedSet[string(key)] {
			tx.fail(fmt.Errorf("engine: single deletion of feed key %x, which an earlier group did not set (stored %v, %v)", key, has, err))
			return
		}
	}
	tx.b.SingleDelete(key)
}

// feedPos allocates the group's feed position.
func (tx *txn) feedPos() uint64 {
	if tx.pos == 0 {
		tx.pos = tx.w.feedPos + 1
	}
	return tx.pos
}

// finish writes what the group derived: feed entries, conversation and
// member records, ops, markers and the feed position.
func (tx *txn) finish() {
	// val holds each value while Set copies it into the batch.
	var val []byte
	for _, tc := range tx.convOrder {
		_, waiting := tx.w.receipts[tc.id]
		switch {
		case tc.feed && waiting:
			tx.b.Delete(keys.ID1(keys.TReceipts, tc.id))
			tx.receiptsDone = append(tx.receiptsDone, tc.id)
		case tc.receipt && !tc.feed && !waiting && tc.exists:
			tx.b.Set(keys.ID1(keys.TReceipts, tc.id), nil)
			tx.receiptsWait = append(tx.receiptsWait, tc.id)
		}
	}
	for _, tc := range tx.convOrder {
		if tc.feed {
			tx.moveConvFeed(tc, tx.feedPos())
		}
	}
	for _, k := range tx.userFeedO {
		user, conv := k.a, k.b
		pos := tx.feedPos()
		old, ok := tx.ufeedIdx[k]
		if !ok {
			raw, err := tx.v.Get(keys.ID2(keys.TUFeedIdx, user, conv))
			switch {
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				tx.fail(err)
				return
			default:
				if old, err = record.DecodeUint(raw); err != nil {
					// Where the user's entry sits is lost: it stays there,
					// stray and harmless (a reader takes the newest), till
					// ferryd rebuild; the new one goes in.
					tx.e.log.Warn("user feed index entry does not decode: its entry is left where it was; ferryd check reports it, and ferryd rebuild removes it",
						"user", user, "conv", conv, "err", err)
					old = 0
				}
			}
		}
		if old != 0 {
			tx.deleteFeedEntry(keys.Feed(keys.TUFeed, user, old, conv))
		}
		tx.setFeedEntry(keys.Feed(keys.TUFeed, user, pos, conv))
		val = record.AppendUint(val[:0], pos)
		tx.b.Set(keys.ID2(keys.TUFeedIdx, user, conv), val)
		tx.ufeedIdx[k] = pos
		tx.wakeUser(user, len(tx.userFeedO))
		tx.moves = append(tx.moves, k)
	}
	for user, u := range tx.usage {
		if !u.dirty {
			continue
		}
		if u.n < 0 {
			// Derived data, wrong (Check says so): not worth stopping
			// the server for everyone.
			tx.e.log.Warn("a user's usage went below zero: set to zero; ferryd check compares the counts with the ops", "user", user, "usage", u.n)
			u.n = 0
		}
		if u.n == 0 {
			tx.b.Delete(keys.ID1(keys.TUsage, user))
		} else {
			val = record.AppendUint(val[:0], uint64(u.n))
			tx.b.Set(keys.ID1(keys.TUsage, user), val)
		}
		tx.w.usage.put(user, u.n)
	}
	for _, tc := range tx.convOrder {
		if verifyCaches {
			tx.checkCurrent(tc.convState)
		}
		if tc.exists {
			tx.w.convs.put(tc.id, tc.convState)
		}
		for u := range tc.memberWrites {
			val = record.AppendMember(val[:0], tc.members[u])
			tx.writeMember(tc, u, val)
		}
		if tc.dirty || tc.feed {
			val = record.AppendConv(val[:0], &tc.rec)
			tx.b.Set(keys.ID1(keys.TConv, tc.id), val)
		}
	}
	// The ops and their indexes go in key order, each kind in a run: each
	// insert into Pebble's memtable then starts its search from the last
	// one, which is near (see sortOps).
	sortOps(tx.opOrder)
	var dec record.OpDecoder
	// Each conversation's new ops (seqs head0+1 to its head) take their
	// share of one buffer of room for every op the group wrote.
	room := tx.w.added[:0]
	if cap(room) < len(tx.opOrder) {
		room = make([]model.Op, 0, max(len(tx.opOrder), 2*cap(room)))
	}
	for _, o := range tx.opOrder {
		val = record.AppendOp(val[:0], &o.rec)
		tx.b.Set(keys.Op(o.rec.Conv, o.rec.Seq), val)
		tc := tx.convs[o.rec.Conv]
		if tc != nil && o.rec.Seq <= tc.head0 {
			tc.rewrote = true
		}
		if tc != nil && o.rec.Seq > tc.head0 {
			rec, err := dec.Decode(o.rec.Conv, o.rec.Seq, val)
			if err != nil {
				tx.fail(fmt.Errorf("decode the op just encoded: %w", err))
				return
			}
			if tc.added == nil {
				n := min(int(tc.rec.Head-tc.head0), cap(room)-len(room))
				tc.added, room = room[len(room):len(room):len(room)+n], room[:len(room)+n]
			}
			tc.added = append(tc.added, rec.Op)
		}
	}
	tx.w.added = room
	for _, o := range tx.opOrder {
		if o.accepted {
			val = record.AppendUint(val[:0], o.rec.Seq)
			tx.b.Set(keys.ID2(keys.TOpID, o.rec.Conv, o.rec.ID), val)
		}
	}
	// One dot index entry for each run of a device's dots at consecutive
	// seqs: a push's ops to a conversation are one.
	var run *record.Op // the run's first op
	n := uint64(0)
	setRun := func() {
		if run != nil {
			val = record.AppendDotRun(val[:0], run.Seq, n)
			tx.b.Set(keys.Dot(run.Conv, run.Dot.Device, run.Dot.N), val)
		}
	}
	for _, o := range tx.opOrder {
		if !o.accepted {
			continue
		}
		if r := &o.rec; run == nil || r.Conv != run.Conv || r.Dot.Device != run.Dot.Device || r.Dot.N != run.Dot.N+n || r.Seq != run.Seq+n {
			setRun()
			run, n = r, 0
		}
		n++
	}
	setRun()
	tx.dropRevokedMarkers()
	for _, tm := range tx.markOrder {
		switch {
		case tm.drop:
			tx.b.Delete(tm.key)
		case tm.dirty:
			val = record.AppendMarker(val[:0], &tm.m)
			tx.b.Set(tm.key, val)
		}
	}
	if tx.pos != 0 {
		val = record.AppendUint(val[:0], tx.pos)
		tx.b.Set(keys.Meta(keys.MetaFeedPos), val)
	}
	tx.remember()
}

// remember hands the view this group's commit publishes what the sessions
// it wakes would otherwise read back from the store at once (see
// store.Batch.Remember): the records of the conversations it wrote
// (reader.conv), and their ops since each of their last few commits
// (reader.liveOps, which also keeps the member record): a session that
// was up to date before one of those commits reads that range. A session
// reads the latest view, often one whose commit wrote other
// conversations, so the view also gets what the last carryCommits commits
// handed theirs for conversations this one left as they were. In the
// bench's ingest those reads were 11% of the server's CPU with the group's
// own records and ops alone, and 2-3% more from rounds that spanned
// commits or read a later view. Under verifyCaches every use is checked
// against the store.
func (tx *txn) remember() {
	w := tx.w
	w.commitN++
	slot := &w.recent[w.commitN%carryCommits]
	for _, id := range slot.convs { // written carryCommits commits ago
		if r := w.runs[id]; r != nil && r.commit == slot.commit {
			delete(w.runs, id)
		}
	}
	slot.commit, slot.convs = w.commitN, slot.convs[:0]
	for _, tc := range tx.convOrder {
		if tc.rewrote {
			delete(w.runs, tc.id) // it holds an op as it was
		}
		if !tc.exists || !(tc.dirty || tc.feed) {
			continue // the record was not written: an ack's group, say
		}
		r := w.runs[tc.id]
		// The ops come in seq order: seqs are given in append order, and
		// an op rewritten later in the group keeps its first place.
		n := len(tc.added)
		switch {
		case n == 0 && r != nil: // the record alone changed
		case n == 0 || uint64(n) != tc.rec.Head-tc.head0 || tc.added[0].Seq != tc.head0+1:
			r = &convRun{}
		default:
			if r == nil || r.through() != tc.head0 {
				r = &convRun{}
			}
			r.extend(tc.head0, tc.added)
		}
		r.commit = w.commitN
		r.memos = append(r.memos[:0], memoed{convMemo{tc.id}, convRead{tc.rec, true}})
		for _, h := range r.heads {
			r.memos = append(r.memos, memoed{opsMemo{tc.id, h, tc.rec.Head}, slices.Clip(opsPrefix(r.from(h), maxMemoOps, maxMemoBytes, true))})
		}
		w.runs[tc.id] = r
		slot.convs = append(slot.convs, tc.id)
	}
	w.carry = w.carry[:0]
	memos, carried := 0, 0
collect:
	for i := range carryCommits {
		s := &w.recent[(w.commitN-uint64(i))%carryCommits]
		for _, id := range s.convs {
			r := w.runs[id]
			if r == nil || r.commit != s.commit {
				continue // dropped, or written again since
			}
			if i > 0 {
				if carried++; carried > carryRuns {
					break collect
				}
			}
			w.carry = append(w.carry, r)
			memos += len(r.memos)
		}
	}
	tx.b.GrowMemo(memos)
	for _, r := range w.carry {
		for _, m := range r.memos {
			tx.b.Remember(m.key, m.val)
		}
	}
	clear(w.carry) // the runs may go
	// The runs copied the new ops: let go of their bodies, and of room
	// that a large group needed.
	clear(w.added)
	w.added = w.added[:0]
	if cap(w.added) > maxAddedRoom {
		w.added = nil
	}
}

// sortOps orders a group's ops by conversation and seq, the order of
// their keys (keys.Op).
func sortOps(ops []*txOp) {
	slices.SortFunc(ops, func(a, b *txOp) int {
		if c := a.rec.Conv.Compare(b.rec.Conv); c != 0 {
			return c
		}
		return cmp.Compare(a.rec.Seq, b.rec.Seq)
	})
}

// maxAddedRoom is the most ops the writer keeps room for between groups.
const maxAddedRoom = 4096

// convRun is what remember hands the views of a conversation's last
// commits: its record, and its ops since the head before each of its last
// commits, as a reader decodes them. The ops are never written in place
// once handed out, only appended to and dropped from the front.
type convRun struct {
	ops   []model.Op
	heads []uint64 // ascending; ops start at heads[0]+1
	// memos is what the views get: the record (convMemo), then the ops
	// from each head as liveOps reads them (opsMemo). Each key and value
	// goes into an interface once, when the run is written, and not again
	// for each commit that carries it: that boxing, and the memo entries
	// the store made of them, were a fifth of the server's allocations.
	memos  []memoed
	commit uint64 // the writer's commit count when last written
}

// memoed is a key and value for store.Batch.Remember.
type memoed struct{ key, val any }

// A run keeps at most runHeads commits, whose ops reach back at most
// maxMemoOps from the head unless the last commit alone added more. Views
// get the runs of the conversations written in the last carryCommits
// commits, at most carryRuns of them, the most recently written first;
// older runs are dropped. The runs this commit wrote all go to its view.
const (
	runHeads     = 4
	carryCommits = 8
	carryRuns    = 64
)

// through is the seq of the run's last op, zero when it has none.
func (r *convRun) through() uint64 {
	if len(r.ops) == 0 {
		return 0
	}
	return r.ops[len(r.ops)-1].Seq
}

// extend adds the ops a commit appended after head0, which must follow the
// run's own.
func (r *convRun) extend(head0 uint64, added []model.Op) {
	r.ops = append(r.ops, added...)
	r.heads = append(r.heads, head0)
	through := r.through()
	drop := 0
	for len(r.heads)-drop > 1 && (len(r.heads)-drop > runHeads || through-r.heads[drop] > maxMemoOps) {
		drop++
	}
	if drop > 0 {
		r.heads = slices.Delete(r.heads, 0, drop)
		r.ops = r.ops[r.heads[0]+1-r.ops[0].Seq:]
	}
}

// from returns the run's ops after seq h, one of its heads.
func (r *convRun) from(h uint64) []model.Op { return r.ops[h+1-r.ops[0].Seq:] }

// maxEntryLag is how far below a conversation's feed position its
// members' own feed entries may sit (record.Conv.EntryPos): a change
// within it leaves them where they are. A reader of a user's feed from
// position after then scans from after - maxEntryLag and takes each entry
// at its conversation's EntryPos for one at its FeedPos, reading the
// record of every conversation in that band. A position is a commit, so a
// small bound keeps a busy conversation's entries in place about as well
// as a large one, and keeps the band's reads few (the README's design
// notes have the figures). Part of the store format: a build that scans
// less would miss entries that a build which allowed more left behind,
// and one that allows more would leave entries that a build which scans
// less misses, so changing it takes a new format.
const maxEntryLag = 64

// moveConvFeed moves the conversation in every member's feed to pos.
//
// All current members' entries sit at the conversation's EntryPos, so the
// old entries are known without reading them. A change to a conversation
// whose entries sit no more than maxEntryLag below pos, and whose
// membership it leaves as it was, leaves them there and moves the
// record's FeedPos alone: moving them would write two keys per member for
// every change (8 of the 15 keys a message to 4 members wrote). A busy
// conversation's entries then move about once every maxEntryLag
// positions, and the record says where they are.
//
// A removed member's entry stays where their removal put it (DetachedPos)
// and stops following the conversation. The change that removes them
// moves the members' entries to pos too, and marks the record so that the
// next change moves them again (MoveEntries): until then the removed
// member's entry may sit where the members' do.
//
// A conversation past Options.SharedFeedMembers shares one entry among its
// members: its record's FeedPos, found through each member's TShared key.
// Moving it writes nothing per member, where moving one entry each would
// write two keys per member for every message (2,000 for a message to
// 1,000 members, all before any of them hears of it). Only members who
// join or leave, and every member once when the conversation becomes
// shared, change keys. A removed member's entry is a TFeed entry as
// before.
func (tx *txn) moveConvFeed(tc *txConv, pos uint64) {
	old, wasShared := tc.rec.EntryPos, tc.rec.SharedFeed
	shared := wasShared || int(tc.rec.Members) > tx.e.opts.SharedFeedMembers
	stay := !shared && len(tc.before) == 0 && !tc.rec.MoveEntries && old != 0 && pos-old <= maxEntryLag
	// Room for every member at once, in moves and in the set wakeUser
	// makes: a message to a large conversation grew these by doubling, a
	// seventh of what the server allocated in live fan-out to 1,000
	// devices.
	tx.moves = slices.Grow(tx.moves, len(tc.current)+len(tc.before))
	mv := entryMove{tc: tc, pos: pos, old: old, wasShared: wasShared, shared: shared, stay: stay}
	// The current members, and those this group removed: a member removed
	// before it has an entry of their own at their removal, which stays.
	for u, m := range tc.current {
		tx.moveFeedEntry(&mv, u, m)
	}
	for u := range tc.before {
		if m := tc.members[u]; m.Role == model.RoleNone {
			tx.moveFeedEntry(&mv, u, m)
		}
	}
	tc.rec.FeedPos, tc.rec.SharedFeed = pos, shared
	if !stay {
		tc.rec.EntryPos, tc.rec.MoveEntries = pos, mv.removed
	}
}

// entryMove is a conversation's feed move (moveConvFeed): where its
// members' entries were and go.
type entryMove struct {
	tc                      *txConv
	pos, old                uint64
	wasShared, shared, stay bool
	removed                 bool // a member's entry was detached
}

// moveFeedEntry moves member u's entry, or the record's, in mv.
func (tx *txn) moveFeedEntry(mv *entryMove, u ulid.ULID, m *record.Member) {
	tc := mv.tc
	was, changed := tc.before[u]
	if !changed {
		was = m.Role
	}
	tx.wakeUser(u, len(tc.current))
	tx.moves = append(tx.moves, idPair{u, tc.id})
	if mv.stay || mv.wasShared && was != model.RoleNone && m.Role != model.RoleNone {
		return // their entry is where it was, or the record's
	}
	switch { // the old entry
	case was != model.RoleNone && mv.wasShared:
		tx.b.Delete(keys.ID2(keys.TShared, u, tc.id))
	case was != model.RoleNone && mv.old != 0:
		tx.deleteFeedEntry(keys.Feed(keys.TFeed, u, mv.old, tc.id))
	case was == model.RoleNone && m.DetachedPos != 0:
		tx.deleteFeedEntry(keys.Feed(keys.TFeed, u, m.DetachedPos, tc.id))
	}
	detached := uint64(0)
	switch { // the new one
	case m.Role == model.RoleNone:
		detached, mv.removed = mv.pos, true
		tx.setFeedEntry(keys.Feed(keys.TFeed, u, mv.pos, tc.id))
	case mv.shared:
		tx.b.Set(keys.ID2(keys.TShared, u, tc.id), nil)
	default:
		tx.setFeedEntry(keys.Feed(keys.TFeed, u, mv.pos, tc.id))
	}
	if m.DetachedPos != detached {
		m.DetachedPos = detached
		tc.memberWrites[u] = true
	}
}

// checkCurrent fails the group when c.current is not exactly the members
// whose role is not RoleNone (under verifyCaches).
func (tx *txn) checkCurrent(c *convState) {
	n := 0
	for u, m := range c.members {
		if m.Role == model.RoleNone {
			continue
		}
		n++
		if c.current[u] != m {
			tx.fail(fmt.Errorf("engine: member %s of %s (%v) is not among its current members", u, c.id, m.Role))
			return
		}
	}
	if n != len(c.current) {
		tx.fail(fmt.Errorf("engine: %s has %d current members, and %d members whose role is not none", c.id, len(c.current), n))
	}
}

// lru is a small least-recently-used cache, used only by the writer
// goroutine.
type lru[K comparable, V any] struct {
	max   int
	items map[K]*lruItem[K, V]
	head  lruItem[K, V] // sentinel: head.next is the most recent
}

type lruItem[K comparable, V any] struct {
	key        K
	val        V
	prev, next *lruItem[K, V]
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	l := &lru[K, V]{max: max, items: map[K]*lruItem[K, V]{}}
	l.head.next, l.head.prev = &l.head, &l.head
	return l
}

func (l *lru[K, V]) unlink(it *lruItem[K, V]) { it.prev.next, it.next.prev = it.next, it.prev }

func (l *lru[K, V]) front(it *lruItem[K, V]) {
	it.next, it.prev = l.head.next, &l.head
	l.head.next.prev = it
	l.head.next = it
}

func (l *lru[K, V]) get(k K) (V, bool) {
	it := l.items[k]
	if it == nil {
		var zero V
		return zero, false
	}
	l.unlink(it)
	l.front(it)
	return it.val, true
}

func (l *lru[K, V]) remove(k K) {
	if it := l.items[k]; it != nil {
		l.unlink(it)
		delete(l.items, k)
	}
}

func (l *lru[K, V]) put(k K, v V) {
	if it := l.items[k]; it != nil {
		it.val = v
		l.unlink(it)
		l.front(it)
		return
	}
	it := &lruItem[K, V]{key: k, val: v}
	l.items[k] = it
	l.front(it)
	if len(l.items) > l.max {
		last := l.head.prev
		l.unlink(last)
		delete(l.items, last.key)
	}
}
