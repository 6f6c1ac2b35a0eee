package clientsdk

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// Conversation is a conversation as the device shows it.
type Conversation struct {
	ID      ulid.ULID
	Title   string
	Role    Role // RoleNone once removed
	Removed bool
	Unread  uint64
	Members int
	// Head is the highest seq the device knows of.
	Head uint64
	// LastMessage is the newest message held (or pending), if any.
	LastMessage *Message
	// Loading says older messages are still arriving: the replica holds the
	// newest ones but has holes below them.
	Loading bool
}

// MessageStatus is where a message stands.
type MessageStatus int

// The statuses. Messages from others are Received.
const (
	StatusReceived  MessageStatus = iota // someone else's message
	StatusPending                        // in the outbox, not yet accepted
	StatusSent                           // accepted by the server: it has a seq
	StatusDelivered                      // on a device of every other member
	StatusRead                           // read by every other member
	StatusFailed                         // refused by the server (see Failed)
)

func (s MessageStatus) String() string {
	switch s {
	case StatusReceived:
		return "received"
	case StatusPending:
		return "pending"
	case StatusSent:
		return "sent"
	case StatusDelivered:
		return "delivered"
	case StatusRead:
		return "read"
	case StatusFailed:
		return "failed"
	}
	return fmt.Sprintf("status(%d)", int(s))
}

// Message is a message with everything later ops did to it.
type Message struct {
	ID         ulid.ULID
	Conv       ulid.ULID
	Seq        uint64 // 0 while pending
	Author     ulid.ULID
	AuthorName string // the author's username, when known
	// AuthorDisplayName is the author's display name, when known, as the
	// device last learned it (Members, LookupUser, SetDisplayName).
	AuthorDisplayName string
	Device            ulid.ULID
	Sent              time.Time // the author's clock, from the op id
	ContentType       string
	Body              []byte // the latest edit's body; nil once deleted
	Edited            bool
	Deleted           bool
	Reactions         []model.ReactionView
	Status            MessageStatus
	// ReadBy lists the other members who read it (small conversations).
	ReadBy []ulid.ULID
}

// Text returns the body as a string.
func (m *Message) Text() string { return string(m.Body) }

// Conversations lists the conversations, the most recently active first:
// new ops (messages, edits, reactions, title and membership changes) move
// a conversation up, read markers and receipts do not.
func (d *Device) Conversations() ([]Conversation, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	ids := make([]ulid.ULID, 0, len(d.convs))
	for id := range d.convs {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b ulid.ULID) int {
		if c := cmp.Compare(d.convs[b].Changed, d.convs[a].Changed); c != 0 {
			return c
		}
		return a.Compare(b)
	})
	out := make([]Conversation, 0, len(ids))
	for _, id := range ids {
		c, err := d.conversationLocked(id)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// Conversation returns one conversation.
func (d *Device) Conversation(id ulid.ULID) (Conversation, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Conversation{}, ErrClosed
	}
	if d.convs[id] == nil {
		return Conversation{}, fmt.Errorf("%w: %s", ErrUnknownConversation, id)
	}
	return d.conversationLocked(id)
}

func (d *Device) conversationLocked(id ulid.ULID) (Conversation, error) {
	rec := d.convs[id]
	c := Conversation{
		ID: id, Title: rec.Title, Role: Role(rec.Role), Removed: rec.Removed,
		Unread: rec.Unread, Members: int(rec.Members), Head: max(rec.Head, rec.maxHeld()),
	}
	if rec.ReadWanted >= rec.Head || rec.Read >= rec.Head {
		c.Unread = 0 // read here, or on another device, since the server counted
	}
	// The conversation list asks every conversation for its last message:
	// from the folded state when the device holds it, otherwise from the
	// replica's newest ops alone, without folding (and keeping) the
	// whole history of every conversation in memory.
	s := d.states[id]
	if s == nil {
		var err error
		if s, err = d.tailState(id); err != nil {
			return c, err
		}
	}
	msgs, _, err := d.pageLocked(s, id, 0, 1, 0, true) // past holes: Loading says them
	if err != nil {
		return c, err
	}
	if len(msgs) > 0 {
		last := msgs[0]
		c.LastMessage = &last
		if last.Seq > 0 {
			c.Loading = rec.missingBelow(last.Seq) || rec.missingBelow(c.Head+1)
		}
	}
	return c, nil
}

// Page is a page of messages, newest first.
type Page struct {
	Messages []Message
	// More says older messages are held locally: ask for the next page
	// with Before set to the oldest seq of this one.
	More bool
	// OlderLoading says older messages are still arriving (a hole below the
	// page): show "older messages loading", not the start of the
	// conversation. A page stops at such a hole, with More false, and the
	// page below it fills as the messages arrive (see Subscribe).
	OlderLoading bool
}

// PageOptions select a page of Messages.
type PageOptions struct {
	// Limit is the page size in sent messages; 0 means 50. The first page
	// (Before 0) also holds every pending and failed message, before them.
	Limit int
	// Before returns sent messages with a seq below it; 0 asks for the
	// first page.
	Before uint64
}

// Messages returns a page of conv's messages, newest first: on the first
// page the failed and pending ones, then the sent ones held, with edits,
// deletions, reactions and the status of the user's own.
func (d *Device) Messages(conv ulid.ULID, opts PageOptions) (Page, error) {
	if opts.Limit <= 0 {
		opts.Limit = 50
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Page{}, ErrClosed
	}
	rec := d.convs[conv]
	if rec == nil {
		return Page{}, fmt.Errorf("%w: %s", ErrUnknownConversation, conv)
	}
	var page Page
	s, err := d.state(conv)
	if err != nil {
		return Page{}, err
	}
	// A page keeps to the run of held seqs it starts in: a catch-up
	// fetches the newest ops first, and a page across the hole below them
	// would show messages from before the hole right after those from
	// after it. It stops there instead, with OlderLoading, until the hole
	// fills. Seqs above the head the conversation's info gave are not such
	// a hole: others' ops of a round still coming, below the device's own
	// that a push result brought first.
	top := rec.maxHeld()
	if opts.Before != 0 {
		top = min(opts.Before-1, top)
	}
	if page.Messages, page.More, err = d.pageLocked(s, conv, opts.Before, opts.Limit, rec.runStart(top, rec.InfoHead), false); err != nil {
		return Page{}, err
	}
	// Older messages are loading when a seq is missing below the page's
	// oldest sent message or, when it has none, below where it began.
	below := rec.Head + 1
	if opts.Before != 0 {
		below = min(opts.Before, below)
	}
	if n := len(page.Messages); n > 0 && page.Messages[n-1].Seq > 0 {
		below = page.Messages[n-1].Seq
	}
	page.OlderLoading = rec.missingBelow(below)
	return page, nil
}

// ErrNoMessage is returned by Message for an id that is no message of the
// conversation the device holds.
var ErrNoMessage = errors.New("ferry: no such message in this conversation")

// Message returns conv's message with op id id, as Messages shows it: sent,
// pending or failed, with edits, deletions, reactions and the status of the
// user's own. It returns ErrNoMessage when the device holds no message with
// that id, such as the id of an edit or a reaction, or of a message still
// to arrive (MessagesChanged.Messages names the messages that change).
func (d *Device) Message(conv, id ulid.ULID) (Message, error) {
	ms, err := d.MessagesByID(conv, id)
	switch {
	case err != nil:
		return Message{}, err
	case len(ms) == 0:
		return Message{}, fmt.Errorf("%w: %s", ErrNoMessage, id)
	}
	return ms[0], nil
}

// MessagesByID returns conv's messages with the op ids given, as Message
// gives each, in the order of ids; an id of no message the device holds is
// left out. Reading the messages an event names (MessagesChanged.Messages)
// at once costs the conversation's outbox once, where Message costs it
// for each.
func (d *Device) MessagesByID(conv ulid.ULID, ids ...ulid.ULID) ([]Message, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	rec := d.convs[conv]
	if rec == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownConversation, conv)
	}
	s, err := d.state(conv)
	if err != nil {
		return nil, err
	}
	me := d.me()
	found := make(map[ulid.ULID]Message, len(ids))
	effects := map[ulid.ULID][]model.Op{}
	wanted := make(map[ulid.ULID]bool, len(ids))
	for _, id := range ids {
		wanted[id] = true
	}
	pend, err := d.pendingOps(conv, false)
	if err != nil {
		return nil, err
	}
	for _, op := range pend {
		switch {
		case op.Kind == model.KindMessage && wanted[op.ID]:
			found[op.ID] = d.pendingMessage(s, &op, me)
		case op.Kind.HasTarget() && wanted[op.Target]:
			effects[op.Target] = append(effects[op.Target], op)
		}
	}
	missing := false
	for _, id := range ids {
		if v, ok := s.Message(id); ok {
			found[id] = d.sentMessage(conv, rec, v, me)
		} else if _, ok := found[id]; !ok {
			missing = true
		}
	}
	if missing && len(d.failed[conv]) > 0 {
		failed, err := d.failedMessagesLocked(conv, me)
		if err != nil {
			return nil, err
		}
		for _, m := range failed {
			if _, ok := found[m.ID]; !ok && wanted[m.ID] {
				found[m.ID] = m
			}
		}
	}
	out := make([]Message, 0, len(found))
	for _, id := range ids {
		if m, ok := found[id]; ok {
			out = append(out, withEffects(m, effects[id], me))
			delete(found, id) // an id given twice is given once
		}
	}
	return out, nil
}

// me is the signed-in user, zero before a sign-in. d.mu is held.
func (d *Device) me() ulid.ULID {
	if d.creds == nil {
		return ulid.ULID{}
	}
	return ulid.MustParseStrict(d.creds.User)
}

// pageLocked returns a page of conv's messages, newest first: on the
// first page (before 0) every failed and pending one, which come after
// every sent one (failed last), then up to limit sent ones, those with a
// seq below before or the newest, and none below floor. more says the
// replica holds sent messages older than the page's, from floor up. It
// builds the page's messages alone, the caller's own copies: a page of a
// long conversation, or a conversation list's last messages, costs what
// they hold, not the history. With newest, only the page's first message
// is sure to be whole, and an outbox of the conversation's costs what
// was queued since its newest message: the conversation list's. d.mu is
// held.
func (d *Device) pageLocked(s *model.State, conv ulid.ULID, before uint64, limit int, floor uint64, newest bool) (page []Message, more bool, err error) {
	rec := d.convs[conv]
	me := d.me()
	var failed []Message
	if before == 0 {
		if failed, err = d.failedMessagesLocked(conv, me); err != nil {
			return nil, false, err
		}
	}
	// Pending ops, in outbox order: messages appear after the sent ones;
	// edits, deletes and reactions show on their targets, sent or pending.
	// The first message, unless one failed, is the newest pending one, on
	// which only ops queued after it show; or, if none is pending, the
	// newest sent one, on which any may.
	pend, err := d.pendingOps(conv, newest && len(failed) == 0)
	if err != nil {
		return nil, false, err
	}
	var pending []Message
	effects := map[ulid.ULID][]model.Op{}
	for _, op := range pend {
		switch op.Kind {
		case model.KindMessage:
			pending = append(pending, d.pendingMessage(s, &op, me))
		case model.KindEdit, model.KindDelete, model.KindReactionAdd, model.KindReactionRemove:
			effects[op.Target] = append(effects[op.Target], op)
		}
	}
	sent := 0
	add := func(m Message) {
		page = append(page, withEffects(m, effects[m.ID], me))
		if m.Seq > 0 {
			sent++
		}
	}
	if before == 0 {
		// Messages the server refused stay visible, marked failed; they and
		// the pending ones are all on the first page, not counted in limit,
		// so that the next page's Before, the oldest seq of this one, is a
		// sent message's.
		for i := len(failed) - 1; i >= 0; i-- {
			add(failed[i])
		}
		for i := len(pending) - 1; i >= 0; i-- {
			add(pending[i])
		}
	}
	for v := range s.Newest(before) {
		if v.Seq < floor {
			break
		}
		if sent == limit {
			more = true
			break
		}
		add(d.sentMessage(conv, rec, v, me))
	}
	return page, more, nil
}

// sentMessage is the Message of v, a message the server stored. d.mu is
// held.
func (d *Device) sentMessage(conv ulid.ULID, rec *convRecord, v model.MessageView, me ulid.ULID) Message {
	m := Message{ID: v.ID, Conv: conv, Seq: v.Seq, Author: v.User, Device: v.Device, Sent: ulid.Time(v.ID.Time()),
		ContentType: v.ContentType, Body: v.Body, Edited: v.Edited, Deleted: v.Deleted, Reactions: v.Reactions}
	m.AuthorName, m.AuthorDisplayName = d.users[v.User].Username, d.users[v.User].DisplayName
	if v.User == me {
		m.Status = ownStatus(rec, v.Seq)
	}
	for _, r := range rec.Receipts {
		if r.Read >= v.Seq {
			if u, err := ulid.ParseStrict(r.User); err == nil {
				m.ReadBy = append(m.ReadBy, u)
			}
		}
	}
	return m
}

// pendingMessage is the Message of op, a message of the user's own in the
// outbox; s is its conversation's state. d.mu is held.
func (d *Device) pendingMessage(s *model.State, op *model.Op, me ulid.ULID) Message {
	m := Message{ID: op.ID, Conv: s.Conv(), Author: me, AuthorName: d.users[me].Username, AuthorDisplayName: d.users[me].DisplayName, Device: op.Dot.Device,
		Sent: ulid.Time(op.ID.Time()), ContentType: op.ContentType, Body: op.Body, Status: StatusPending}
	if s.Deleted(op.ID) {
		// Another member deleted it before its push's answer came (a lost
		// answer, the push sent again).
		m.Body, m.ContentType, m.Deleted = nil, "", true
	}
	return m
}

// withEffects returns m with the pending ops that target it applied, in
// outbox order, as the caller's own copy: its body and reactions are
// otherwise the cached state's or the outbox's.
func withEffects(m Message, effects []model.Op, me ulid.ULID) Message {
	for _, op := range effects {
		switch op.Kind {
		case model.KindEdit:
			if !m.Deleted {
				m.Body, m.ContentType, m.Edited = op.Body, op.ContentType, true
			}
		case model.KindDelete: // deleted for everyone: no body, edit or reactions
			m.Body, m.ContentType, m.Deleted, m.Edited, m.Reactions = nil, "", true, false, nil
		default:
			if !m.Deleted {
				m.Reactions = react(m.Reactions, op.ReactionKey, me, op.Kind == model.KindReactionAdd)
			}
		}
	}
	m.Body = bytes.Clone(m.Body)
	m.Reactions = slices.Clone(m.Reactions)
	for i := range m.Reactions {
		m.Reactions[i].Users = slices.Clone(m.Reactions[i].Users)
	}
	return m
}

// failedMessagesLocked returns conv's messages that the server refused,
// in the order they failed. d.mu is held.
func (d *Device) failedMessagesLocked(conv, me ulid.ULID) ([]Message, error) {
	var out []Message
	for _, local := range d.failed[conv] {
		var e failedEntry
		switch ok, err := getJSON(d.db, seqKey(tFailed, local), &e); {
		case err != nil:
			return nil, err
		case !ok:
			return nil, fmt.Errorf("%w: failed entry %d is missing", errCorrupt, local)
		}
		p, err := decodeOp(e.Op)
		if err != nil {
			return nil, err
		}
		if op, err := wire.Op("op", conv, p); err == nil && op.Kind == model.KindMessage {
			out = append(out, Message{ID: op.ID, Conv: conv, Author: me, AuthorName: d.users[me].Username, AuthorDisplayName: d.users[me].DisplayName, Device: op.Dot.Device,
				Sent: ulid.Time(op.ID.Time()), ContentType: op.ContentType, Body: op.Body, Status: StatusFailed})
		}
	}
	return out, nil
}

// ownStatus derives a sent message's status from the other members'
// markers (known in conversations small enough for receipts).
func ownStatus(rec *convRecord, seq uint64) MessageStatus {
	if len(rec.Receipts) == 0 {
		return StatusSent
	}
	delivered, read := true, true
	for _, r := range rec.Receipts {
		delivered = delivered && r.Delivered >= seq
		read = read && r.Read >= seq
	}
	switch {
	case read:
		return StatusRead
	case delivered:
		return StatusDelivered
	}
	return StatusSent
}

func react(rs []model.ReactionView, key string, user ulid.ULID, add bool) []model.ReactionView {
	rs = slices.Clone(rs)
	i := slices.IndexFunc(rs, func(r model.ReactionView) bool { return r.Key == key })
	if i < 0 {
		if add {
			rs = append(rs, model.ReactionView{Key: key, Users: []ulid.ULID{user}})
		}
		return rs
	}
	users := slices.DeleteFunc(slices.Clone(rs[i].Users), func(u ulid.ULID) bool { return u == user })
	if add {
		users = append(users, user)
		slices.SortFunc(users, ulid.ULID.Compare)
	}
	rs[i].Users = users
	if len(users) == 0 {
		rs = slices.Delete(rs, i, i+1)
	}
	return rs
}

// pendingOps returns conv's outbox ops in order; with fromNewest, only
// those from its newest message on (all when none is a message). d.mu is
// held.
func (d *Device) pendingOps(conv ulid.ULID, fromNewest bool) ([]model.Op, error) {
	var locals []uint64
	for _, ref := range d.pending {
		if ref.conv == conv {
			locals = append(locals, ref.local)
		}
	}
	slices.Sort(locals)
	var out []model.Op
	for i := len(locals) - 1; i >= 0; i-- {
		_, p, err := d.outboxOp(locals[i])
		if err != nil {
			return nil, err
		}
		op, err := wire.Op("op", conv, p)
		if err != nil {
			return nil, err
		}
		out = append(out, op)
		if fromNewest && op.Kind == model.KindMessage {
			break
		}
	}
	slices.Reverse(out)
	return out, nil
}

// state returns conv's folded state, building it from the replica on first
// use. d.mu is held.
func (d *Device) state(conv ulid.ULID) (*model.State, error) {
	d.stateTick++
	if s := d.states[conv]; s != nil {
		d.stateUse[conv] = d.stateTick
		return s, nil
	}
	s := model.NewState(conv)
	err := scanPrefix(d.db, idKey(tOp, conv), func(_, v []byte) error {
		p, err := decodeOp(v)
		if err != nil {
			return err
		}
		op, err := wire.ReceivedOp("op", conv, p)
		if err != nil {
			return err
		}
		s.Apply(&op)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(d.states) >= maxStates {
		// The least recently used goes: it is folded again from the
		// replica when asked for.
		var lru ulid.ULID
		oldest := d.stateTick
		for id, used := range d.stateUse {
			if used < oldest {
				lru, oldest = id, used
			}
		}
		delete(d.states, lru)
		delete(d.stateUse, lru)
	}
	d.states[conv], d.stateUse[conv] = s, d.stateTick
	return s, nil
}

// maxStates bounds the folded conversations a device keeps in memory
// (their messages, bodies included): those whose messages were asked for
// last.
const maxStates = 64

// tailState folds conv's ops from its newest message on (the ops after
// it edit, delete or react to it, or to older messages, or change the
// conversation): enough for its last message, not kept. d.mu is held.
func (d *Device) tailState(conv ulid.ULID) (*model.State, error) {
	s := model.NewState(conv)
	p := idKey(tOp, conv)
	it, err := d.db.Iter(p, prefixEnd(p))
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for ok := it.Last(); ok; ok = it.Prev() {
		v, err := it.Value()
		if err != nil {
			return nil, err
		}
		raw, err := decodeOp(v)
		if err != nil {
			return nil, err
		}
		op, err := wire.ReceivedOp("op", conv, raw)
		if err != nil {
			return nil, err
		}
		s.Apply(&op)
		if op.Kind == model.KindMessage {
			break
		}
	}
	return s, nil
}

// Member is a member of a conversation.
type Member struct {
	User
	Role Role
}

// Members returns conv's current members. It asks the server (which also
// teaches the device the members' usernames) and falls back to what the
// replica knows when the server cannot be reached. It returns
// ErrUnknownConversation for a conversation the device does not know, the
// server's error when the server refuses (such as a conversation the user
// is not in), and ctx's error when ctx ends.
func (d *Device) Members(ctx context.Context, conv ulid.ULID) ([]Member, error) {
	switch err := d.fetchMembers(ctx, conv); {
	case err == nil:
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case !errors.Is(err, errUnreachable):
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var out []Member
	if _, ok := d.members[conv]; !ok && d.convs[conv] == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownConversation, conv)
	}
	if ms, ok := d.members[conv]; ok {
		for _, m := range ms {
			id := ulid.MustParseStrict(m.User)
			u := d.users[id]
			out = append(out, Member{User: User{ID: id, Username: u.Username, DisplayName: u.DisplayName}, Role: Role(m.Role)})
		}
		return out, nil
	}
	s, err := d.state(conv)
	if err != nil {
		return nil, err
	}
	for _, m := range s.Members() {
		u := d.users[m.User]
		out = append(out, Member{User: User{ID: m.User, Username: u.Username, DisplayName: u.DisplayName}, Role: m.Role})
	}
	return out, nil
}

// errUnreachable wraps the error of a call that did not reach the server,
// or that it could not answer for now: retrying may fix it.
var errUnreachable = errors.New("ferry: the server could not be reached")

// fetchMembers asks the server for conv's members, and keeps them and
// their usernames in the replica. A failure retrying may fix wraps
// errUnreachable. What it fetched for a user who signed out meanwhile,
// and for whom another signed in, is dropped: it is not the new user's.
func (d *Device) fetchMembers(ctx context.Context, conv ulid.ULID) error {
	_, cs, _, err := d.authedClients()
	if err != nil {
		return err
	}
	d.mu.Lock()
	_, known := d.members[conv]
	known = known || d.convs[conv] != nil
	owner, profiles := d.owner, d.profileChanges
	d.mu.Unlock()
	if !known {
		return fmt.Errorf("%w: %s", ErrUnknownConversation, conv)
	}
	resp, err := cs.GetConversation(ctx, &ferryv1.GetConversationRequest{ConversationId: conv.String()})
	switch {
	case err != nil && !retryable(err):
		return fmt.Errorf("ferry: members of %s: %w", conv, err)
	case err != nil:
		return fmt.Errorf("%w: members of %s: %w", errUnreachable, conv, err)
	}
	var ms []memberRecord
	b := d.db.NewBatch()
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.closed:
		return ErrClosed
	case d.owner != owner:
		return fmt.Errorf("%w: %s (another user signed in meanwhile)", ErrUnknownConversation, conv)
	}
	learned := map[string]bool{} // users whose names the device learned
	renamed := false             // a name it knew changed
	for _, m := range resp.GetMembers() {
		// The user's own name, changed here since the server answered,
		// stays as it was set.
		stale := m.GetUserId() == owner && d.profileChanges != profiles
		if id, err := ulid.ParseStrict(m.GetUserId()); err == nil && !stale {
			_, knew := d.users[id]
			if d.rememberUserLocked(b, id, m.GetUsername(), m.GetDisplayName()) {
				learned[m.GetUserId()] = true
				renamed = renamed || knew
			}
		}
		ms = append(ms, memberRecord{User: m.GetUserId(), Role: m.GetRole()})
	}
	old, had := d.members[conv]
	d.members[conv] = ms
	b.Set(idKey(tMembers, conv), encodeJSON(ms))
	if err := d.db.Commit(b); err != nil {
		return err
	}
	// This conversation changed, and those whose messages show the names.
	evs := d.namesEvents(learned, renamed)
	if changed := (ConversationChanged{Conv: conv}); (!had || !slices.Equal(old, ms)) && !slices.Contains(evs, Event(changed)) {
		evs = append(evs, changed)
	}
	d.emit(evs...)
	return nil
}

// namesEvents are the events of users' names the device learned: a
// ConversationChanged for each conversation whose members it holds that
// has one of them, and, when a name it knew changed (renamed), for every
// conversation it holds: their messages show the name in conversations
// they left too. d.mu is held.
func (d *Device) namesEvents(users map[string]bool, renamed bool) []Event {
	if len(users) == 0 {
		return nil
	}
	told := map[ulid.ULID]bool{}
	for conv, list := range d.members {
		if renamed || slices.ContainsFunc(list, func(m memberRecord) bool { return users[m.User] }) {
			told[conv] = true
		}
	}
	if renamed {
		for conv := range d.convs {
			told[conv] = true
		}
	}
	evs := make([]Event, 0, len(told))
	for conv := range told {
		evs = append(evs, ConversationChanged{Conv: conv})
	}
	return evs
}

// Pending is an op waiting in the outbox.
type Pending struct {
	Conv ulid.ULID
	Op   ulid.ULID
	// Kind is the op's kind: "create", "message", "edit", "delete",
	// "reaction-add", "reaction-remove", "member-add", "member-remove",
	// "member-role" or "set-title".
	Kind string
}

// Outbox lists the ops waiting to be accepted, oldest first.
func (d *Device) Outbox() ([]Pending, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var out []Pending
	err := scanPrefix(d.db, []byte{tOutbox}, func(_, v []byte) error {
		var e outboxEntry
		if err := decodeJSON(v, &e); err != nil {
			return err
		}
		p, err := decodeOp(e.Op)
		if err != nil {
			return err
		}
		conv := ulid.MustParseStrict(e.Conv)
		op, err := wire.Op("op", conv, p)
		if err != nil {
			return err
		}
		out = append(out, Pending{Conv: conv, Op: op.ID, Kind: op.Kind.String()})
		return nil
	})
	return out, err
}

// FailedOp is an op the server refused for good.
type FailedOp struct {
	Conv ulid.ULID
	Op   ulid.ULID
	// Kind is the op's kind, as Pending's ("" for one this version of
	// the SDK cannot read).
	Kind    string
	Reason  string
	Message string
}

// Failed lists the ops the server refused, oldest first.
func (d *Device) Failed() ([]FailedOp, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, ErrClosed
	}
	var out []FailedOp
	err := scanPrefix(d.db, []byte{tFailed}, func(_, v []byte) error {
		var e failedEntry
		if err := decodeJSON(v, &e); err != nil {
			return err
		}
		p, err := decodeOp(e.Op)
		if err != nil {
			return err
		}
		f := FailedOp{Conv: ulid.MustParseStrict(e.Conv), Op: ulid.MustParseStrict(p.GetId())}
		if op, err := wire.Op("op", f.Conv, p); err == nil {
			f.Kind = op.Kind.String()
		}
		f.Reason, f.Message = reasonName(ferryv1.RejectReason(ferryv1.RejectReason_value[e.Reason])), e.Message
		out = append(out, f)
		return nil
	})
	return out, err
}

// ErrNotFailed is returned by DismissFailed for an op that is not among
// Failed's.
var ErrNotFailed = errors.New("ferry: no such failed op: Failed lists them")

// DismissFailed removes an op the server refused from Failed and, for a
// message, from its conversation's pages (StatusFailed): what an app does
// when its user deletes a message that could not be sent. To send it
// again, send its body as a new message. Subscribers get MessagesChanged
// and ConversationChanged.
// It returns ErrNotFailed for an op that Failed does not list.
func (d *Device) DismissFailed(op ulid.ULID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	var key []byte
	var dismissed *ferryv1.Op
	var conv ulid.ULID
	err := scanPrefix(d.db, []byte{tFailed}, func(k, v []byte) error {
		var e failedEntry
		if err := decodeJSON(v, &e); err != nil {
			return err
		}
		p, err := decodeOp(e.Op)
		if err != nil || p.GetId() != op.String() {
			return err
		}
		key, dismissed = bytes.Clone(k), p
		conv, err = ulid.ParseStrict(e.Conv)
		return err
	})
	switch {
	case err != nil:
		return err
	case key == nil:
		return fmt.Errorf("%w: %s", ErrNotFailed, op)
	}
	b := d.db.NewBatch()
	b.Delete(key)
	if err := d.db.Commit(b); err != nil {
		return err
	}
	local := binary.BigEndian.Uint64(key[1:])
	if d.failed[conv] = slices.DeleteFunc(d.failed[conv], func(l uint64) bool { return l == local }); len(d.failed[conv]) == 0 {
		delete(d.failed, conv)
	}
	d.emit(outboxChanged(conv, op, dismissed), ConversationChanged{Conv: conv})
	return nil
}

// Vector returns the version vector of what the replica holds of conv: for
// each authoring device, the highest dot held with all lower ones.
func (d *Device) Vector(conv ulid.ULID) (model.Vector, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return model.Vector{}, ErrClosed
	}
	dots := map[ulid.ULID]map[uint64]bool{}
	err := scanPrefix(d.db, idKey(tOp, conv), func(_, v []byte) error {
		p, err := decodeOp(v)
		if err != nil {
			return err
		}
		dev, err := wire.ParseID("device id", p.GetDeviceId())
		if err != nil {
			return err
		}
		if dots[dev] == nil {
			dots[dev] = map[uint64]bool{}
		}
		dots[dev][p.GetDot()] = true
		return nil
	})
	if err != nil {
		return model.Vector{}, err
	}
	var es []model.Dot
	for dev, held := range dots {
		n := uint64(0)
		for held[n+1] {
			n++
		}
		es = append(es, model.Dot{Device: dev, N: n})
	}
	return model.NewVector(es...), nil
}
