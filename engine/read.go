package engine

import (
	"cmp"
	"container/heap"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/internal/keys"
	"github.com/ferrysync/ferry/engine/internal/record"
	"github.com/ferrysync/ferry/engine/internal/store"
	"github.com/ferrysync/ferry/engine/model"
)

// ConvInfo is a conversation as one user sees it.
type ConvInfo struct {
	ID      ulid.ULID
	Title   string
	Role    model.Role // RoleNone once removed
	Removed bool
	// Head is the highest seq the user can read: the conversation's head, or
	// for a removed member the seq of their removal.
	Head uint64
	// Unread counts messages from other members after the user's read marker.
	Unread uint64
	// The user's markers, merged over their devices.
	Delivered, Read uint64
	// Receipts are the other members' markers, in conversations of up to
	// Options.ReceiptMembers members.
	Receipts []Receipt
	// ReceiptsShared says the conversation shares receipts (it has up to
	// Options.ReceiptMembers members): the user's delivered marker then
	// reaches the other members. Otherwise it only sets where the device's
	// next session resumes, and clients may send it lazily.
	ReceiptsShared bool
	Members        uint32
	// ResumeAfter is set in sessions: the device's cursor, after which the
	// session sends this conversation's ops.
	ResumeAfter uint64
}

// Receipt is another member's markers.
type Receipt struct {
	User      ulid.ULID
	Delivered uint64
	Read      uint64 // public reads only
}

// reader bundles a durable view with the engine's settings for one read.
type reader struct {
	e *Engine
	v *store.View
	// live: a live round's read, which shares what it reads of a
	// conversation (its record, the round's ops) with the other sessions
	// reading the same view (memo).
	live bool
	// memo, in a session's read, is what the session's reads remember;
	// nil elsewhere. A session's read also takes receipts from the cache.
	memo *sessionMemo
	// marking: a live round's read, which remembers the user's own marker
	// per conversation (see userMarker), with the hub's counts of commits
	// that changed the user's markers: marksDone read before the view was
	// taken, marksBegun after.
	marking               bool
	marksDone, marksBegun uint64
	// lastMarks is what the last commit counted in marksDone wrote of the
	// user's markers (nil if none was counted): it was done before the
	// view, so the view holds what it wrote if marksBegun is its count.
	lastMarks *markWrite
	// scanned, in a catch-up's read, holds the records of the conversations
	// on a shared feed that its scan of the user's feed read (changed):
	// the catch-up then reads each for its info, from here.
	scanned map[ulid.ULID]record.Conv
	// dec, in a catch-up read, decodes the ops of the whole Ops event, whose
	// bodies are sent together; elsewhere (nil) each read of ops decodes
	// with its own OpDecoder.
	dec *record.OpDecoder
}

// seqCount is the number of message ops up to and including seq.
type seqCount struct{ seq, messages uint64 }

// sessionMemo is what a session's reads remember per conversation. Each
// map is made with its first entry (setIn).
type sessionMemo struct {
	counts  map[ulid.ULID]seqCount // the message count at the user's read marker (see messagesAtRead)
	members map[ulid.ULID]memberAt // the user's member record, with the head it was read at (see member)
	marks   map[ulid.ULID]markAt   // the user's own marker, as a live round read it (see userMarker)
}

// setIn sets m[k] to v, making m if it is nil, and returns m.
func setIn[V any](m map[ulid.ULID]V, k ulid.ULID, v V) map[ulid.ULID]V {
	if m == nil {
		m = make(map[ulid.ULID]V)
	}
	m[k] = v
	return m
}

func (e *Engine) reader() reader { return reader{e: e, v: e.st.View()} }

// reader is a read of the session, in a live round if live.
func (s *Session) reader(live bool) reader {
	return reader{e: s.e, v: s.e.st.View(), live: live, memo: &s.memo}
}

func (r reader) release() { r.v.Release() }

// opDecoder decodes the ops a read returns: the session's, or one for them.
func (r reader) opDecoder() *record.OpDecoder {
	if r.dec != nil {
		return r.dec
	}
	return new(record.OpDecoder)
}

// memo is View.Memo for a live round's reads, checking what it takes from
// the memo against a read of its own under verifyCaches; other reads
// compute their own. T is what fill returns.
//
// It looks first (View.Lookup), with key still on the stack: a live round
// to a thousand devices finds the same few results a thousand times, and
// Memo's key, which its map may keep, goes to the heap. Under
// verifyCaches it goes through Memo every time, to check a hit.
func memo[K comparable, T any](r reader, key K, fill func() (T, error)) (T, error) {
	if !r.live {
		return fill()
	}
	if !verifyCaches {
		if v, ok, err := r.v.Lookup(key); ok {
			if err != nil {
				var zero T
				return zero, err
			}
			return v.(T), nil
		}
	}
	v, hit, err := r.v.Memo(key, func() (any, error) { return fill() })
	if err != nil {
		var zero T
		return zero, err
	}
	if hit && verifyCaches {
		own, err := fill()
		if err != nil {
			return own, err
		}
		if !reflect.DeepEqual(own, v) {
			return own, fmt.Errorf("engine: a view's memo has %+v for %+v; the view has %+v", v, key, own)
		}
	}
	return v.(T), nil
}

// Keys of what sessions memoize on a view.
type (
	convMemo struct{ conv ulid.ULID }
	opsMemo  struct {
		conv           ulid.ULID
		after, through uint64
	}
)

// maxMemoOps and maxMemoBytes bound the ops reads that live rounds share
// and the ops a session looks through to keep its user's member record
// (see member): a live round's worth. A read that stops at maxMemoBytes
// covers part of its range, and its readers read the rest later.
const (
	maxMemoOps   = 64
	maxMemoBytes = 256 << 10
)

type convRead struct {
	c  record.Conv
	ok bool
}

func (r reader) conv(id ulid.ULID) (record.Conv, bool, error) {
	scanned, ok := r.scanned[id]
	if ok && !verifyCaches {
		return scanned, true, nil
	}
	cr, err := memo(r, convMemo{id}, func() (convRead, error) {
		c, ok, err := r.readConv(id)
		return convRead{c, ok}, err
	})
	if ok && err == nil && (!cr.ok || !reflect.DeepEqual(cr.c, scanned)) {
		return cr.c, cr.ok, fmt.Errorf("engine: the feed scan read %+v for conversation %s; the view has %+v", scanned, id, cr.c)
	}
	return cr.c, cr.ok, err
}

func (r reader) readConv(id ulid.ULID) (record.Conv, bool, error) {
	raw, err := r.v.Get(keys.ID1(keys.TConv, id))
	if errors.Is(err, store.ErrNotFound) {
		return record.Conv{}, false, nil
	}
	if err != nil {
		return record.Conv{}, false, err
	}
	c, err := record.DecodeConv(raw)
	return c, err == nil, err
}

// memberAt is a member record and the conversation's head when it was
// read.
type memberAt struct {
	m    record.Member
	head uint64
}

// member reads user's member record in conv, whose head is head.
//
// A session's read remembers an active member's record with the head it
// was read at. The record changes only with an op of the user's
// membership: the create of a conversation they created, or a member_add,
// member_remove or member_role naming them. While the ops since that head
// (which the live round sends, read once per view) hold no such op, the
// record is the one remembered: a live round then reads no member record.
func (r reader) member(conv, user ulid.ULID, head uint64) (record.Member, bool, error) {
	if r.memo == nil {
		return r.readMember(conv, user)
	}
	k, same := r.memo.members[conv]
	if same = same && k.m.Role != model.RoleNone && k.head <= head && head-k.head <= maxMemoOps; same {
		var err error
		if same, err = r.membershipSame(conv, user, k.head, head); err != nil {
			return record.Member{}, false, err
		}
	}
	if same && !verifyCaches {
		r.memo.members[conv] = memberAt{k.m, head}
		return k.m, true, nil
	}
	m, ok, err := r.readMember(conv, user)
	if err != nil || !ok {
		delete(r.memo.members, conv)
		if err == nil && same {
			err = fmt.Errorf("engine: remembered member %+v of %s in %s at head %d; the store has none at head %d", k.m, user, conv, k.head, head)
		}
		return m, ok, err
	}
	if same && m != k.m {
		return m, ok, fmt.Errorf("engine: remembered member %+v of %s in %s at head %d; the store has %+v at head %d", k.m, user, conv, k.head, m, head)
	}
	r.memo.members = setIn(r.memo.members, conv, memberAt{m, head})
	return m, true, nil
}

// membershipSame reports whether conv's ops after < seq <= through (at
// most maxMemoOps) leave user's membership as it was.
func (r reader) membershipSame(conv, user ulid.ULID, after, through uint64) (bool, error) {
	if through == after {
		return true, nil
	}
	ops, err := r.liveOps(conv, after, through)
	if err != nil {
		return false, err
	}
	if uint64(len(ops)) != through-after {
		return false, nil // cut short by maxMemoBytes, or a hole (the read of the ops reports it)
	}
	for i := range ops {
		if ops[i].Kind == model.KindCreate || (ops[i].Kind.HasMember() && ops[i].Member == user) {
			return false, nil
		}
	}
	return true, nil
}

func (r reader) readMember(conv, user ulid.ULID) (record.Member, bool, error) {
	raw, err := r.v.Get(keys.ID2(keys.TMember, conv, user))
	if errors.Is(err, store.ErrNotFound) {
		raw, err = r.v.Get(keys.ID2(keys.TFormer, conv, user))
	}
	if errors.Is(err, store.ErrNotFound) {
		return record.Member{}, false, nil
	}
	if err != nil {
		return record.Member{}, false, err
	}
	m, err := record.DecodeMember(raw)
	return m, err == nil, err
}

// deviceMarker is device's marker in conv: where its sessions resume the
// conversation when the device sends no cursor. One that does not decode
// is taken for none, with a warning: the device takes the conversation
// from the start (clients drop ops they hold), and its next ack writes it
// anew; it fences nothing off.
func (r reader) deviceMarker(conv, device ulid.ULID) (record.Marker, error) {
	m, err := r.marker(keys.TDevMark, conv, device)
	if corrupt(err) {
		r.e.log.Warn("device marker does not decode: the device resumes the conversation from the start; its next ack writes it anew (ferryd rebuild deletes it)",
			"conv", conv, "device", device, "err", err)
		return record.Marker{}, nil
	}
	return m, err
}

func (r reader) marker(table byte, conv, who ulid.ULID) (record.Marker, error) {
	raw, err := r.v.Get(keys.ID2(table, conv, who))
	if errors.Is(err, store.ErrNotFound) {
		return record.Marker{}, nil
	}
	if err != nil {
		return record.Marker{}, err
	}
	return record.DecodeMarker(raw)
}

// markAt is a user's marker with the count of commits that had changed
// the user's markers before the view it was read at.
type markAt struct {
	m    record.Marker
	done uint64
}

// userMarker is the user's own marker for conv. A live round's read
// (marks set) remembers it and takes it from there while no commit has
// changed the user's markers since: the writer counts such commits in the
// hub before and after each, and a view taken after the done count was
// read holds every commit it counts; if the begun count, read after this
// view, is still that number, no commit in between changed a marker of the
// user. That saves a store read per woken session and live round.
//
// A device that acknowledges what it received changes its user's marker
// before every round, though. So the hub also keeps what the last such
// commit wrote of the user's markers, with its done count, and the round
// takes the marker from there by the same rule: at 10,000 devices a
// message's round no longer reads 10,000 markers back from the store.
func (r reader) userMarker(conv, user ulid.ULID) (record.Marker, error) {
	if !r.marking {
		return r.marker(keys.TUserMark, conv, user)
	}
	at, ok := r.memo.marks[conv]
	same := ok && at.done == r.marksBegun
	if w := r.lastMarks; !same && w != nil && w.done == r.marksBegun {
		if cm, ok := w.of(conv); ok {
			at, same = markAt{m: cm.m, done: w.done}, true
		}
	}
	if same && !verifyCaches {
		return at.m, nil
	}
	m, err := r.marker(keys.TUserMark, conv, user)
	if err != nil {
		return m, err
	}
	if same && at.m != m {
		return m, fmt.Errorf("engine: remembered marker of user %s in %s is %+v; the store says %+v", user, conv, at.m, m)
	}
	r.memo.marks = setIn(r.memo.marks, conv, markAt{m: m, done: r.marksDone})
	return m, nil
}

// access returns the conversation's record and the highest seq user can
// read, or ErrNotFound when the user was never a member (or there is no such
// conversation: the two are not told apart).
func (r reader) access(conv, user ulid.ULID) (record.Conv, record.Member, uint64, error) {
	c, ok, err := r.conv(conv)
	if err != nil {
		return c, record.Member{}, 0, err
	}
	if !ok {
		return c, record.Member{}, 0, fmt.Errorf("%w: conversation %s", ErrNotFound, conv)
	}
	m, ok, err := r.member(conv, user, c.Head)
	if err != nil {
		return c, m, 0, err
	}
	if !ok {
		return c, m, 0, fmt.Errorf("%w: conversation %s", ErrNotFound, conv)
	}
	if m.Role == model.RoleNone {
		return c, m, m.Since, nil
	}
	return c, m, c.Head, nil
}

// messagesAt is the number of message ops up to and including seq.
func (r reader) messagesAt(conv ulid.ULID, seq uint64) (uint64, error) {
	if seq == 0 {
		return 0, nil
	}
	op, err := readOp(r.v, conv, seq)
	if corrupt(err) {
		err = &logDamage{err} // no hold (Session.leaveOut)
	}
	if err != nil {
		return 0, err
	}
	return op.Messages, nil
}

// messagesAtRead is messagesAt for read, the user's read marker m's Read
// (or, for a removed member, the seq they left at). The writer counts the
// messages as it moves the marker wherever it knows them
// (record.Marker.ReadMessages): then no op is read. Markers it could not
// count (a read short of the head, a marker written before counts were
// kept) are looked up; a session asks in every live round of every
// conversation with unread messages, while the marker moves only when the
// user reads, so it keeps the last answer per conversation.
func (r reader) messagesAtRead(conv ulid.ULID, m record.Marker, read uint64) (uint64, error) {
	counted := m.ReadCounted && m.Read == read
	if counted && !verifyCaches {
		return m.ReadMessages, nil
	}
	var c seqCount
	hit := false
	if r.memo != nil {
		c, hit = r.memo.counts[conv]
		hit = hit && c.seq == read
	}
	if hit && !verifyCaches {
		return c.messages, nil
	}
	n, err := r.messagesAt(conv, read)
	if err != nil {
		return 0, err
	}
	if counted && m.ReadMessages != n {
		return 0, fmt.Errorf("engine: the read marker of %s counts %d messages up to seq %d; the store says %d", conv, m.ReadMessages, read, n)
	}
	if hit && c.messages != n {
		return 0, fmt.Errorf("engine: remembered %d messages up to seq %d of %s; the store says %d", c.messages, read, conv, n)
	}
	if r.memo != nil && !counted {
		r.memo.counts = setIn(r.memo.counts, conv, seqCount{seq: read, messages: n})
	}
	return n, nil
}

// info computes what user sees of conv.
func (r reader) info(conv, user ulid.ULID) (ConvInfo, error) {
	c, m, head, err := r.access(conv, user)
	if err != nil {
		return ConvInfo{}, err
	}
	info := ConvInfo{ID: conv, Title: c.Title, Role: m.Role, Removed: m.Role == model.RoleNone, Head: head, Members: c.Members}
	if info.Removed {
		// A removed member sees the conversation as it was when they left.
		info.Title, info.Members = m.Title, 0
	}
	um, err := r.userMarker(conv, user)
	if err != nil {
		return ConvInfo{}, err
	}
	info.Delivered, info.Read = min(um.Delivered, head), min(um.Read, head)
	if info.Read < head {
		atHead := c.Messages
		if info.Removed {
			if atHead, err = r.messagesAt(conv, head); err != nil {
				return ConvInfo{}, err
			}
		}
		atRead, err := r.messagesAtRead(conv, um, info.Read)
		if err != nil {
			return ConvInfo{}, err
		}
		info.Unread = atHead - atRead
	}
	if !info.Removed && int(c.Members) <= r.e.opts.ReceiptMembers {
		info.ReceiptsShared = true
		all, err := r.receipts(conv, c.FeedPos)
		if err != nil {
			return ConvInfo{}, err
		}
		if len(all) > 1 {
			info.Receipts = make([]Receipt, 0, len(all)-1) // all but the user's
		}
		for _, rc := range all {
			if rc.User != user {
				info.Receipts = append(info.Receipts, rc)
			}
		}
	}
	return info, nil
}

// receipts returns the markers of every active member of conv, whose feed
// is at feedPos. Every member's session woken by a change of the
// conversation needs them, so sessions read them once per feed position: a
// marker that moves a receipt also moves the conversation's feed (after
// Options.ReceiptDelay), so a feed position's receipts are at most that
// delay behind the markers, and the next position has them. Other reads
// (a Conversation call) read the markers as they are.
func (r reader) receipts(conv ulid.ULID, feedPos uint64) ([]Receipt, error) {
	cached, hit := r.e.receiptCache.get(conv, feedPos)
	// In the engine's tests without a receipt delay, a feed position's
	// receipts are exact: check the cache against the store.
	checkCache := verifyCaches && r.e.opts.ReceiptDelay < 0
	if hit && r.memo != nil && !checkCache {
		return cached, nil
	}
	var all []Receipt
	err := scan(r.v, keys.ID1(keys.TMember, conv), func(k, val []byte) error {
		_, u, _ := keys.ParseID2(k)
		mm, err := record.DecodeMember(val)
		if err != nil || mm.Role == model.RoleNone {
			return err
		}
		rm, err := r.marker(keys.TUserMark, conv, u)
		if err != nil {
			return err
		}
		all = append(all, Receipt{User: u, Delivered: rm.Delivered, Read: rm.PublicRead})
		return nil
	})
	if err != nil {
		return nil, err
	}
	if hit && r.memo != nil && !slices.Equal(cached, all) {
		return nil, fmt.Errorf("engine: cached receipts of %s at feed position %d are %v; the store says %v", conv, feedPos, cached, all)
	}
	r.e.receiptCache.put(conv, feedPos, all)
	return all, nil
}

// receiptCache holds, per conversation, the receipts at its latest feed
// position read. Bounded: a full shard starts over.
type receiptCache struct {
	shards [16]receiptShard
}

type receiptShard struct {
	mu sync.Mutex
	m  map[ulid.ULID]receiptsAt
}

type receiptsAt struct {
	feedPos uint64
	all     []Receipt // shared by readers: never modified
}

// receiptShardSize bounds each shard: 16 x 256 conversations of up to
// Options.ReceiptMembers receipts.
const receiptShardSize = 256

func (c *receiptCache) shard(conv ulid.ULID) *receiptShard {
	return &c.shards[conv[15]%byte(len(c.shards))]
}

func (c *receiptCache) get(conv ulid.ULID, feedPos uint64) ([]Receipt, bool) {
	s := c.shard(conv)
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.m[conv]
	return at.all, ok && at.feedPos == feedPos && feedPos != 0
}

func (c *receiptCache) put(conv ulid.ULID, feedPos uint64, all []Receipt) {
	s := c.shard(conv)
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.m[conv]
	if ok && at.feedPos > feedPos {
		return // a reader with a newer view was first
	}
	if !ok && len(s.m) >= receiptShardSize {
		// Past 4,096 conversations with receipts in play the cache starts
		// over more often; it then costs a map, and the reads it saved.
		clear(s.m)
	}
	if s.m == nil {
		s.m = make(map[ulid.ULID]receiptsAt, receiptShardSize)
	}
	s.m[conv] = receiptsAt{feedPos: feedPos, all: all}
}

// feedEntry is one changed conversation in a user's feed.
type feedEntry struct {
	conv ulid.ULID
	pos  uint64
}

// changed returns the conversations in user's feeds with after < pos <=
// through, most recently changed first. Both feeds hold one entry per
// conversation, so this is O(changed conversations), plus one record read
// per shared-feed conversation the user is in (see moveConvFeed).
//
// A member's own entry for a conversation may sit up to maxEntryLag below
// the conversation's position, at its record's EntryPos: the scan of
// TFeed starts that much earlier and reads the record of each
// conversation it finds, whose FeedPos is then the entry's position. An
// entry elsewhere is a removed member's, which stays where the removal
// put it.
func (r reader) changed(user ulid.ULID, after, through uint64) ([]feedEntry, error) {
	latest := map[ulid.ULID]uint64{}
	for _, t := range []byte{keys.TFeed, keys.TUFeed} {
		from := after
		if t == keys.TFeed {
			from -= min(after, maxEntryLag)
		}
		lo, hi := keys.FeedSpan(t, user, from, through)
		it, err := r.v.Iter(lo, hi)
		if err != nil {
			return nil, err
		}
		for ok := it.First(); ok; ok = it.Next() {
			_, pos, conv, valid := keys.ParseFeed(it.Key())
			if !valid {
				_ = it.Close()
				return nil, fmt.Errorf("%w: feed key %x", record.ErrCorrupt, it.Key())
			}
			if t == keys.TFeed {
				at := pos
				if pos, err = r.entryPos(conv, pos); corrupt(err) {
					// Damaged: the conversation's position is not known,
					// but no lower than its entry's, and maybe past after
					// (the entry may lag): the session leaves it out and
					// holds its device below it (Session.hold).
					if after >= through {
						continue
					}
					pos, err = max(at, after+1), nil
				}
				if err != nil {
					_ = it.Close()
					return nil, err
				}
			}
			if after < pos && pos <= through {
				latest[conv] = max(latest[conv], pos)
			}
		}
		if err := it.Close(); err != nil {
			return nil, err
		}
	}
	// Shared-feed conversations: one record read each.
	err := scan(r.v, keys.ID1(keys.TShared, user), func(k, _ []byte) error {
		_, conv, valid := keys.ParseID2(k)
		if !valid {
			return fmt.Errorf("%w: shared feed key %x", record.ErrCorrupt, k)
		}
		c, ok, err := r.conv(conv)
		if corrupt(err) {
			// Damaged, at a position not known: as in TFeed above.
			if after < through {
				latest[conv] = max(latest[conv], after+1)
			}
			return nil
		}
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: user %s has a shared feed entry for conversation %s, which does not exist", record.ErrCorrupt, user, conv)
		}
		if after < c.FeedPos && c.FeedPos <= through {
			latest[conv] = max(latest[conv], c.FeedPos)
			if r.scanned != nil {
				r.scanned[conv] = c
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]feedEntry, 0, len(latest))
	for c, p := range latest {
		out = append(out, feedEntry{conv: c, pos: p})
	}
	sortFeed(out)
	return out, nil
}

// entryPos returns the position of a user's TFeed entry for conv that sits
// at pos: its conversation's FeedPos if pos is where the members' entries
// sit (EntryPos), else pos.
func (r reader) entryPos(conv ulid.ULID, pos uint64) (uint64, error) {
	c, ok, err := r.conv(conv)
	if err != nil || !ok || pos != c.EntryPos {
		return pos, err
	}
	if r.scanned != nil {
		r.scanned[conv] = c
	}
	return c.FeedPos, nil
}

// sortFeed orders changed conversations most recently changed first.
func sortFeed(es []feedEntry) {
	slices.SortFunc(es, func(a, b feedEntry) int {
		if c := cmp.Compare(b.pos, a.pos); c != 0 {
			return c
		}
		return a.conv.Compare(b.conv)
	})
}

// opSize estimates an op's size on the wire, for bounding batches.
func opSize(op *model.Op) int {
	return opOverhead + len(op.Body) + len(op.ContentType) + len(op.Title) + len(op.ReactionKey)
}

const opOverhead = 96

// opsCap is the most ops a read of n ops within maxOps and maxBytes can
// return: the capacity to allocate for it at once.
func opsCap(n uint64, maxOps, maxBytes int) uint64 {
	return min(n, uint64(maxOps), uint64(max(maxBytes, 0)/opOverhead+1))
}

// ops reads the ops of conv with after < seq <= through, ascending, at most
// maxOps of them and maxBytes of them (by opSize), except that with
// atLeastOne a first op larger than maxBytes is still returned.
//
// The ops of a live round (a small range) are read once per view and
// shared by the sessions reading it: they are read-only.
func (r reader) ops(conv ulid.ULID, after, through uint64, maxOps, maxBytes int, atLeastOne bool) ([]model.Op, error) {
	if through <= after || maxOps <= 0 {
		return nil, nil
	}
	if !r.live || through-after > maxMemoOps {
		return r.readOps(conv, after, through, maxOps, maxBytes, atLeastOne)
	}
	all, err := r.liveOps(conv, after, through)
	if err != nil {
		return nil, err
	}
	return opsPrefix(all, maxOps, maxBytes, atLeastOne), nil
}

// opsPrefix is the prefix of ops that readOps returns with the same bounds.
func opsPrefix(ops []model.Op, maxOps, maxBytes int, atLeastOne bool) []model.Op {
	size := 0
	for i := range ops {
		if size += opSize(&ops[i]); i == maxOps || (size > maxBytes && (i > 0 || !atLeastOne)) {
			return ops[:i:i]
		}
	}
	return ops
}

// liveOps reads conv's ops after < seq <= through (at most maxMemoOps, and
// as many as fit in maxMemoBytes but at least one): in a live round, once
// per view.
func (r reader) liveOps(conv ulid.ULID, after, through uint64) ([]model.Op, error) {
	return memo(r, opsMemo{conv, after, through}, func() ([]model.Op, error) {
		ops, err := r.readOps(conv, after, through, maxMemoOps, maxMemoBytes, true)
		return slices.Clip(ops), err // an append makes a copy of its own
	})
}

func (r reader) readOps(conv ulid.ULID, after, through uint64, maxOps, maxBytes int, atLeastOne bool) ([]model.Op, error) {
	lo, hi := keys.OpSpan(conv, after+1, through+1)
	it, err := r.v.Iter(lo, hi)
	if err != nil {
		return nil, err
	}
	out := make([]model.Op, 0, opsCap(through-after, maxOps, maxBytes))
	dec := r.opDecoder()
	size := 0
	for ok := it.First(); ok && len(out) < maxOps; ok = it.Next() {
		_, seq, valid := keys.ParseOp(it.Key())
		if !valid {
			_ = it.Close()
			return nil, &logDamage{fmt.Errorf("%w: op key %x", record.ErrCorrupt, it.Key())}
		}
		val, err := it.Value()
		if err != nil {
			_ = it.Close()
			return nil, err
		}
		rec, err := dec.Decode(conv, seq, val)
		if err != nil {
			_ = it.Close()
			return nil, &logDamage{err}
		}
		size += opSize(&rec.Op)
		if size > maxBytes && (len(out) > 0 || !atLeastOne) {
			break
		}
		out = append(out, rec.Op)
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	return out, nil
}

// opsBefore reads the newest ops of conv with seq <= through, at most
// maxOps and maxBytes of them (at least one), and returns them ascending.
func (r reader) opsBefore(conv ulid.ULID, through uint64, maxOps, maxBytes int) ([]model.Op, error) {
	if through == 0 || maxOps <= 0 {
		return nil, nil
	}
	lo, hi := keys.OpSpan(conv, 1, through+1)
	it, err := r.v.Iter(lo, hi)
	if err != nil {
		return nil, err
	}
	out := make([]model.Op, 0, opsCap(through, maxOps, maxBytes))
	dec := r.opDecoder()
	size := 0
	for ok := it.Last(); ok && len(out) < maxOps; ok = it.Prev() {
		_, seq, valid := keys.ParseOp(it.Key())
		if !valid {
			_ = it.Close()
			return nil, &logDamage{fmt.Errorf("%w: op key %x", record.ErrCorrupt, it.Key())}
		}
		val, err := it.Value()
		if err != nil {
			_ = it.Close()
			return nil, err
		}
		rec, err := dec.Decode(conv, seq, val)
		if err != nil {
			_ = it.Close()
			return nil, &logDamage{err}
		}
		if size += opSize(&rec.Op); size > maxBytes && len(out) > 0 {
			break
		}
		out = append(out, rec.Op)
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	slices.Reverse(out)
	return out, nil
}

// HistoryQuery selects a page of a conversation's log. Exactly one of
// Before, After or the time range is used: Before when non-zero, else the
// time range when End is set, else After.
type HistoryQuery struct {
	Before     uint64    // ops with seq < Before, the newest page
	After      uint64    // ops with seq > After, the oldest page
	Start, End time.Time // ops whose id time is in [Start, End)
	AfterID    ulid.ULID // in a time range, only ops whose id is greater; zero: from Start
	Limit      int       // 1 to MaxHistoryLimit; 0 means 100
}

// MaxHistoryLimit is the largest history page.
const MaxHistoryLimit = 1000

// HistoryPage is a page of history, ascending by seq (by id for a time
// range).
type HistoryPage struct {
	Ops  []model.Op
	Head uint64 // the highest seq the user can read
	More bool   // the range holds more ops
	// NextAfterID, in a time range with More, is the AfterID of the next
	// page: its last op's id.
	NextAfterID ulid.ULID
}

// History reads a page of conv's log for a's user: a member reads it all, a
// removed member up to their removal.
func (e *Engine) History(a Actor, conv ulid.ULID, q HistoryQuery) (_ HistoryPage, err error) {
	if q.Limit == 0 {
		q.Limit = 100
	}
	if q.Limit < 0 || q.Limit > MaxHistoryLimit {
		return HistoryPage{}, fmt.Errorf("%w: limit must be between 1 and %d", ErrInvalid, MaxHistoryLimit)
	}
	r := e.reader()
	defer r.release()
	defer func() { err = e.fenceErr(conv, err) }()
	_, _, head, err := r.access(conv, a.User)
	if err != nil {
		return HistoryPage{}, err
	}
	page := HistoryPage{Head: head}
	switch {
	case q.Before != 0:
		page.Ops, err = r.opsBefore(conv, min(q.Before-1, head), q.Limit, MaxPageBytes)
		page.More = len(page.Ops) > 0 && page.Ops[0].Seq > 1
	case !q.End.IsZero():
		if !q.End.After(q.Start) {
			return HistoryPage{}, fmt.Errorf("%w: the time range's end must be after its start", ErrInvalid)
		}
		page.Ops, page.More, page.NextAfterID, err = r.opsByTime(conv, head, q.Start, q.End, q.AfterID, q.Limit)
	default:
		page.Ops, err = r.ops(conv, q.After, head, q.Limit, MaxPageBytes, true)
		page.More = len(page.Ops) > 0 && page.Ops[len(page.Ops)-1].Seq < head
	}
	return page, err
}

// MaxPageBytes bounds a History or Repair page by the estimated size of its
// ops (a single larger op is still returned alone), so that a page always
// fits in a response.
const MaxPageBytes = 1 << 20

// opsByTime reads ops whose id time is in [start, end), and whose id is
// greater than after, through the op-id index, which is ordered by id and
// so by time. It returns the id to continue after when there is more: the
// last op's it returns.
//
// A removed member may read only the ops up to their removal (head), and
// the index holds all of them in id order, whatever their seqs: the ops
// after the removal are passed over, and the page must say nothing of
// them (a removed member does not learn how the conversation went on), so
// the next page passes over again those after its last op. A page passes
// over at most maxPassedOver of them: one that then holds ops ends there,
// and one that holds none fails, saying to read by seq, which reaches
// every op the member may read. So one small request reads a bounded part
// of the conversation however long it went on, and what the member can
// tell of it is only that a range they asked for holds many ops written
// after their removal.
func (r reader) opsByTime(conv ulid.ULID, head uint64, start, end time.Time, after ulid.ULID, limit int) (out []model.Op, more bool, next ulid.ULID, err error) {
	var lo, hi ulid.ULID
	if err := lo.SetTime(ulid.Timestamp(start)); err != nil {
		return nil, false, next, fmt.Errorf("%w: start time out of range", ErrInvalid)
	}
	if err := hi.SetTime(ulid.Timestamp(end)); err != nil {
		return nil, false, next, fmt.Errorf("%w: end time out of range", ErrInvalid)
	}
	if after.Compare(hi) >= 0 {
		// Nothing after it is in the range: an iterator with its lower
		// bound past its upper is one Pebble leaves unspecified.
		return nil, false, next, nil
	}
	from := keys.ID2(keys.TOpID, conv, lo)
	if after.Compare(lo) >= 0 {
		from = append(keys.ID2(keys.TOpID, conv, after), 0) // the first key past after's
	}
	it, err := r.v.Iter(from, keys.ID2(keys.TOpID, conv, hi))
	if err != nil {
		return nil, false, next, err
	}
	defer func() {
		if cerr := it.Close(); err == nil {
			err = cerr
		}
	}()
	size, passed := 0, 0
	for ok := it.First(); ok; ok = it.Next() {
		val, err := it.Value()
		if err != nil {
			return nil, false, next, err
		}
		seq, err := record.DecodeUint(val)
		if err != nil {
			return nil, false, next, err
		}
		if seq > head {
			if passed++; passed > maxPassedOver {
				if len(out) == 0 {
					return nil, false, next, fmt.Errorf("%w: this time range passes over more than %d ops written after your removal from the conversation, which you may not read; read its history by seq, which holds every op up to your removal", ErrInvalid, maxPassedOver)
				}
				return out, true, next, nil
			}
			continue
		}
		if len(out) == limit {
			return out, true, next, nil
		}
		rec, err := readOp(r.v, conv, seq)
		if err != nil {
			return nil, false, next, err
		}
		if size += opSize(&rec.Op); size > MaxPageBytes && len(out) > 0 {
			return out, true, next, nil
		}
		out = append(out, rec.Op)
		next = rec.Op.ID
	}
	return out, false, ulid.ULID{}, nil
}

// maxPassedOver bounds the ops a time range's page passes over, unread:
// those after a removed member's removal (opsByTime).
const maxPassedOver = 4 * MaxHistoryLimit

// Vector returns the server's version vector of conv and the highest seq a's
// user can read. A removed member gets an empty vector: the vector as of
// their removal is not kept, and the current one would describe ops they
// may not read.
func (e *Engine) Vector(a Actor, conv ulid.ULID) (_ model.Vector, _ uint64, err error) {
	r := e.reader()
	defer r.release()
	defer func() { err = e.fenceErr(conv, err) }()
	_, m, head, err := r.access(conv, a.User)
	if err != nil {
		return model.Vector{}, 0, err
	}
	if m.Role == model.RoleNone {
		return model.Vector{}, head, nil
	}
	vec, err := readVector(r.v, conv)
	return vec, head, err
}

// RepairResult is the outcome of comparing a device's vector with the
// server's.
type RepairResult struct {
	Head    uint64
	Vector  model.Vector
	Missing []model.Op // ops the device lacks, ascending by seq
	More    bool       // more ops are missing than returned
	// Want names dots the server lacks that a's user authored, which the
	// device should push.
	Want []model.DotRange
}

// Repair compares have, a device's vector for conv, with the server's: it
// returns up to limit ops the device lacks and the dots of a's user that the
// server lacks. Work is O(devices × limit), whatever the history's length.
func (e *Engine) Repair(a Actor, conv ulid.ULID, have model.Vector, limit int) (_ RepairResult, err error) {
	if limit <= 0 || limit > MaxHistoryLimit {
		return RepairResult{}, fmt.Errorf("%w: limit must be between 1 and %d", ErrInvalid, MaxHistoryLimit)
	}
	r := e.reader()
	defer r.release()
	defer func() { err = e.fenceErr(conv, err) }()
	_, m, head, err := r.access(conv, a.User)
	if err != nil {
		return RepairResult{}, err
	}
	res := RepairResult{Head: head}
	vec, err := readVector(r.v, conv)
	if err != nil {
		return RepairResult{}, err
	}
	removed := m.Role == model.RoleNone
	if !removed {
		// A removed member must not learn how the conversation went on.
		res.Vector = vec
	}
	seqs, err := lackedSeqs(r.v, conv, have.Lacks(vec), head, limit+1)
	if err != nil {
		return RepairResult{}, err
	}
	if len(seqs) > limit {
		seqs, res.More = seqs[:limit], true
	}
	size := 0
	for i, seq := range seqs {
		rec, err := readOp(r.v, conv, seq)
		if err != nil {
			return RepairResult{}, err
		}
		if size += opSize(&rec.Op); size > MaxPageBytes && i > 0 {
			res.More = true
			break
		}
		res.Missing = append(res.Missing, rec.Op)
	}
	if removed {
		return res, nil // a removed member cannot push
	}
	for _, rg := range vec.Lacks(have) {
		owner, err := deviceUser(r.v, rg.Device)
		if errors.Is(err, ErrNotFound) || corrupt(err) {
			// Not known to be the user's: not asked for (as a re-upload
			// of it would be refused).
			continue
		}
		if err != nil {
			return RepairResult{}, err
		}
		if owner == a.User {
			res.Want = append(res.Want, rg)
		}
	}
	return res, nil
}

// MaxConversationsPage is the largest page of Conversations.
const MaxConversationsPage = 500

// Conversations pages through a's user's conversations (including those
// they were removed from) in id order, starting after the id after. It
// returns the id to continue after, zero on the last page.
func (e *Engine) Conversations(a Actor, after ulid.ULID, limit int) ([]ConvInfo, ulid.ULID, error) {
	if limit <= 0 || limit > MaxConversationsPage {
		return nil, ulid.ULID{}, fmt.Errorf("%w: page size must be between 1 and %d", ErrInvalid, MaxConversationsPage)
	}
	r := e.reader()
	defer r.release()
	lo, hi := keys.Prefix(keys.ID1(keys.TUserConv, a.User))
	if after != (ulid.ULID{}) {
		lo = append(keys.ID2(keys.TUserConv, a.User, after), 0)
	}
	it, err := r.v.Iter(lo, hi)
	if err != nil {
		return nil, ulid.ULID{}, err
	}
	var ids []ulid.ULID
	more := false
	for ok := it.First(); ok; ok = it.Next() {
		if len(ids) == limit {
			more = true
			break
		}
		_, c, valid := keys.ParseID2(it.Key())
		if !valid {
			_ = it.Close()
			return nil, ulid.ULID{}, fmt.Errorf("%w: user conversation key %x", record.ErrCorrupt, it.Key())
		}
		ids = append(ids, c)
	}
	if err := it.Close(); err != nil {
		return nil, ulid.ULID{}, err
	}
	out := make([]ConvInfo, 0, len(ids))
	for _, id := range ids {
		info, err := r.info(id, a.User)
		if corrupt(err) {
			_ = e.damaged(id, err) // left out, as sessions do (see damageSet)
			continue
		}
		if err != nil {
			return nil, ulid.ULID{}, err
		}
		out = append(out, info)
	}
	var next ulid.ULID
	if more {
		next = ids[len(ids)-1]
	}
	return out, next, nil
}

// Member is a current member of a conversation.
type Member struct {
	User
	Role  model.Role
	Since uint64
}

// Conversation describes conv for a's user, with its current members and
// the server's vector (empty for a removed member).
func (e *Engine) Conversation(a Actor, conv ulid.ULID) (_ ConvInfo, _ []Member, _ model.Vector, err error) {
	r := e.reader()
	defer r.release()
	defer func() { err = e.fenceErr(conv, err) }()
	info, err := r.info(conv, a.User)
	if err != nil {
		return ConvInfo{}, nil, model.Vector{}, err
	}
	if info.Removed {
		return info, nil, model.Vector{}, nil
	}
	var members []Member
	err = scan(r.v, keys.ID1(keys.TMember, conv), func(k, val []byte) error {
		_, u, _ := keys.ParseID2(k)
		m, err := record.DecodeMember(val)
		if err != nil || m.Role == model.RoleNone {
			return err
		}
		// One member's account record fences off nothing.
		user, err := e.listedUser(r.v, u, "the member", "conv", conv)
		if err != nil {
			return err
		}
		members = append(members, Member{User: user, Role: m.Role, Since: m.Since})
		return nil
	})
	if err != nil {
		return ConvInfo{}, nil, model.Vector{}, err
	}
	vec, err := readVector(r.v, conv)
	return info, members, vec, err
}

// lackedSeqs returns the lowest `most` seqs, at or below head, of the dots
// in lacks, ascending. A device's dots are in seq order, so the lowest
// lacking seqs are a merge of the devices' runs of dots (the dot index's
// entries), taken lowest first: it reads each device's first run and then
// only the runs it takes, so a vector lacking the dots of many devices
// (every one that ever wrote, for a new device) costs a read or two each
// and `most` in all, not `most` each.
func lackedSeqs(v *store.View, conv ulid.ULID, lacks []model.DotRange, head uint64, most int) ([]uint64, error) {
	lo, hi := keys.Prefix(keys.ID1(keys.TDot, conv))
	it, err := v.Iter(lo, hi)
	if err != nil {
		return nil, err
	}
	// runAt finds dev's run that holds dot d, or its first run after d.
	runAt := func(dev ulid.ULID, d uint64) (dotRun, bool, error) {
		for _, seek := range []func() bool{
			func() bool { return it.SeekLT(keys.Dot(conv, dev, d+1)) },
			func() bool { return it.SeekGE(keys.Dot(conv, dev, d)) },
		} {
			if !seek() {
				continue
			}
			val, err := it.Value()
			if err != nil {
				return dotRun{}, false, err
			}
			run, err := decodeDotRun(it.Key(), val)
			if err != nil {
				return dotRun{}, false, err
			}
			if run.dev == dev && run.last() >= d {
				return run, true, nil
			}
		}
		return dotRun{}, false, nil
	}
	cs := make(lackCursors, 0, len(lacks))
	for _, rg := range lacks {
		c := lackCursor{rg: rg, d: rg.From}
		ok, err := c.load(runAt)
		if err != nil {
			_ = it.Close()
			return nil, err
		}
		if ok && c.seq() <= head {
			cs = append(cs, c)
		}
	}
	heap.Init(&cs)
	var seqs []uint64
	for len(cs) > 0 && len(seqs) < most {
		c := &cs[0]
		seqs = append(seqs, c.seq())
		c.d++
		ok := c.d <= c.rg.To
		if ok && c.d > c.run.last() {
			if ok, err = c.load(runAt); err != nil {
				_ = it.Close()
				return nil, err
			}
		}
		// A device's later dots are later seqs: past head, none readable.
		if ok && c.seq() <= head {
			heap.Fix(&cs, 0)
		} else {
			heap.Pop(&cs)
		}
	}
	return seqs, it.Close()
}

// lackCursor is a device's place in lackedSeqs: its next lacking dot, d,
// in its run.
type lackCursor struct {
	rg  model.DotRange
	run dotRun
	d   uint64
}

func (c *lackCursor) seq() uint64 { return c.run.seq + (c.d - c.run.first) }

// load reads the run that holds d, or the first after it, moving d there;
// false when the device has no dot left in its range.
func (c *lackCursor) load(runAt func(ulid.ULID, uint64) (dotRun, bool, error)) (bool, error) {
	run, ok, err := runAt(c.rg.Device, c.d)
	if err != nil || !ok || run.first > c.rg.To {
		return false, err
	}
	c.run, c.d = run, max(c.d, run.first)
	return true, nil
}

// lackCursors is a min-heap of cursors by their next seq (container/heap).
type lackCursors []lackCursor

func (h lackCursors) Len() int           { return len(h) }
func (h lackCursors) Less(i, j int) bool { return h[i].seq() < h[j].seq() }
func (h lackCursors) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *lackCursors) Push(x any)        { *h = append(*h, x.(lackCursor)) }
func (h *lackCursors) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}
