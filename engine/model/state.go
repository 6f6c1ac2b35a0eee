package model

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"iter"
	"slices"

	"github.com/oklog/ulid/v2"
)

// State is a conversation's state computed from its ops. Ops may be applied
// in any order, any number of times: two States that were given the same set
// of ops are [State.Equal], which is what makes replicas converge. Each
// register (a message's body, a reaction, a membership, the title) keeps the
// value of its op with the highest seq.
//
// The zero State is not usable; call [NewState]. A State is not safe for
// concurrent use.
type State struct {
	conv     ulid.ULID
	seen     map[ulid.ULID]uint64 // op id -> seq of every op applied
	title    register[string]
	members  map[ulid.ULID]register[Role] // RoleNone: removed
	messages map[ulid.ULID]*message       // by op id; placeholders until the message op arrives
	head     uint64
	// order holds the messages whose op arrived, by seq, for paging
	// (Newest); nil when a message arrived since it was sorted.
	order []*message
}

type register[T any] struct {
	seq   uint64
	value T
}

// set keeps v if seq is higher than the register's.
func (r *register[T]) set(seq uint64, v T) {
	if seq > r.seq {
		r.seq, r.value = seq, v
	}
}

type edit struct {
	contentType string
	body        []byte
}

type reactionKey struct {
	user ulid.ULID
	key  string
}

type message struct {
	op        *Op // the message op; nil while only later ops have arrived
	edits     map[ulid.ULID]register[edit]
	deleted   bool
	reactions map[reactionKey]register[bool]
}

// NewState returns the empty state of conversation conv.
func NewState(conv ulid.ULID) *State {
	return &State{
		conv:     conv,
		seen:     make(map[ulid.ULID]uint64),
		members:  make(map[ulid.ULID]register[Role]),
		messages: make(map[ulid.ULID]*message),
	}
}

// Fold computes the state of conversation conv from ops, in any order.
func Fold(conv ulid.ULID, ops []Op) *State {
	s := NewState(conv)
	for i := range ops {
		s.Apply(&ops[i])
	}
	return s
}

// Conv is the conversation's id.
func (s *State) Conv() ulid.ULID { return s.conv }

// Len is how many distinct ops were applied.
func (s *State) Len() int { return len(s.seen) }

// Head is the highest seq applied.
func (s *State) Head() uint64 { return s.head }

// Has reports whether the op with this id was applied, and its seq.
func (s *State) Has(id ulid.ULID) (uint64, bool) {
	seq, ok := s.seen[id]
	return seq, ok
}

// Apply adds op to the state. Ops of other conversations and ops without a
// seq are ignored. It reports whether the op was new. A repeat of an op that
// now arrives erased erases the body the state kept.
func (s *State) Apply(op *Op) bool {
	if op.Conv != s.conv || op.Seq == 0 {
		return false
	}
	if _, dup := s.seen[op.ID]; dup {
		if op.Erased {
			s.erase(op)
		}
		return false
	}
	s.seen[op.ID] = op.Seq
	s.head = max(s.head, op.Seq)
	switch op.Kind {
	case KindCreate:
		s.title.set(op.Seq, op.Title)
		r := s.members[op.User]
		r.set(op.Seq, RoleOwner)
		s.members[op.User] = r
	case KindSetTitle:
		s.title.set(op.Seq, op.Title)
	case KindMemberAdd, KindMemberRole:
		r := s.members[op.Member]
		r.set(op.Seq, op.Role)
		s.members[op.Member] = r
	case KindMemberRemove:
		r := s.members[op.Member]
		r.set(op.Seq, RoleNone)
		s.members[op.Member] = r
	case KindMessage:
		m := s.message(op.ID)
		c := *op
		c.Body = bytes.Clone(op.Body)
		m.op = &c
		s.order = nil
		if m.deleted || op.Erased {
			m.delete() // an erased message was deleted, whether its delete is here yet or not
		}
	case KindEdit:
		m := s.message(op.Target)
		if op.Erased {
			m.delete() // only a delete of its message erases an edit
		}
		if m.deleted {
			// Keep the register's seq so that the result does not depend on
			// whether the delete or the edit came first.
			s.setEdit(m, op.User, op.Seq, edit{})
			break
		}
		s.setEdit(m, op.User, op.Seq, edit{contentType: op.ContentType, body: bytes.Clone(op.Body)})
	case KindDelete:
		s.message(op.Target).delete()
	case KindReactionAdd, KindReactionRemove:
		m := s.message(op.Target)
		if m.reactions == nil {
			m.reactions = make(map[reactionKey]register[bool])
		}
		k := reactionKey{user: op.User, key: op.ReactionKey}
		r := m.reactions[k]
		r.set(op.Seq, op.Kind == KindReactionAdd)
		m.reactions[k] = r
	}
	return true
}

func (s *State) erase(op *Op) {
	switch op.Kind {
	case KindMessage:
		if m := s.messages[op.ID]; m != nil && m.op != nil {
			m.delete()
			m.op.Erased = true
		}
	case KindEdit:
		if m := s.messages[op.Target]; m != nil {
			m.delete()
		}
	}
}

// delete marks m deleted, for good, and forgets its body and its edits'.
// The state learns it from a delete, or from the message or an edit of it
// arriving erased: the server erases those only when it deletes the
// message, and the delete may come later (a catch-up in pages, a live
// round read behind), so the view does not wait for it to say so.
func (m *message) delete() {
	m.deleted = true
	if m.op != nil {
		m.op.Body, m.op.ContentType = nil, ""
	}
	for u, r := range m.edits {
		r.value = edit{}
		m.edits[u] = r
	}
}

func (s *State) message(id ulid.ULID) *message {
	m := s.messages[id]
	if m == nil {
		m = &message{}
		s.messages[id] = m
	}
	return m
}

func (s *State) setEdit(m *message, user ulid.ULID, seq uint64, e edit) {
	if m.edits == nil {
		m.edits = make(map[ulid.ULID]register[edit])
	}
	r := m.edits[user]
	r.set(seq, e)
	m.edits[user] = r
}

// Title is the conversation's current title.
func (s *State) Title() string { return s.title.value }

// Role is user's current role; RoleNone for non-members.
func (s *State) Role(user ulid.ULID) Role { return s.members[user].value }

// MemberView is one current member.
type MemberView struct {
	User  ulid.ULID
	Role  Role
	Since uint64 // seq of the op that set the role
}

// Members lists the current members, sorted by user id.
func (s *State) Members() []MemberView {
	out := make([]MemberView, 0, len(s.members))
	for u, r := range s.members {
		if r.value != RoleNone {
			out = append(out, MemberView{User: u, Role: r.value, Since: r.seq})
		}
	}
	slices.SortFunc(out, func(a, b MemberView) int { return a.User.Compare(b.User) })
	return out
}

// MessageView is a message as a user sees it.
type MessageView struct {
	ID          ulid.ULID
	Seq         uint64
	User        ulid.ULID
	Device      ulid.ULID
	ContentType string
	Body        []byte // the latest edit's body, or the original; nil once deleted
	Edited      bool
	EditSeq     uint64
	Deleted     bool
	Reactions   []ReactionView // sorted by key; none on deleted messages
}

// ReactionView is one reaction key and the users who reacted with it.
type ReactionView struct {
	Key   string
	Users []ulid.ULID // sorted
}

// Deleted reports whether the state holds the delete of message id, or an
// op of it that arrived erased, whether it holds the message or not: for
// a message still in its device's outbox.
func (s *State) Deleted(id ulid.ULID) bool {
	m := s.messages[id]
	return m != nil && m.deleted
}

// Message returns the message with op id id, once its message op is applied.
func (s *State) Message(id ulid.ULID) (MessageView, bool) {
	m := s.messages[id]
	if m == nil || m.op == nil {
		return MessageView{}, false
	}
	return m.view(), true
}

// Messages lists the messages in seq order.
func (s *State) Messages() []MessageView {
	order := s.sorted()
	out := make([]MessageView, len(order))
	for i, m := range order {
		out[i] = m.view()
	}
	return out
}

// Newest yields the messages with a seq below before (0: all), newest
// first: a page of the latest messages builds the views of its own alone.
// The State must not change during the iteration.
func (s *State) Newest(before uint64) iter.Seq[MessageView] {
	return func(yield func(MessageView) bool) {
		order := s.sorted()
		i := len(order)
		if before != 0 {
			i, _ = slices.BinarySearchFunc(order, before, func(m *message, seq uint64) int { return cmp.Compare(m.op.Seq, seq) })
		}
		for i--; i >= 0; i-- {
			if !yield(order[i].view()) {
				return
			}
		}
	}
}

// sorted returns the messages whose op arrived, by seq, sorting them
// again only when one arrived since.
func (s *State) sorted() []*message {
	if s.order == nil {
		s.order = make([]*message, 0, len(s.messages))
		for _, m := range s.messages {
			if m.op != nil {
				s.order = append(s.order, m)
			}
		}
		slices.SortFunc(s.order, func(a, b *message) int { return cmp.Compare(a.op.Seq, b.op.Seq) })
	}
	return s.order
}

func (m *message) view() MessageView {
	v := MessageView{
		ID:          m.op.ID,
		Seq:         m.op.Seq,
		User:        m.op.User,
		Device:      m.op.Dot.Device,
		ContentType: m.op.ContentType,
		Body:        m.op.Body,
		Deleted:     m.deleted,
	}
	if m.deleted {
		v.Body, v.ContentType = nil, ""
		return v
	}
	// Only the author's edits count; the server accepts no others, and a
	// replica that somehow holds one must not show it.
	if e, ok := m.edits[m.op.User]; ok && e.seq > m.op.Seq {
		v.Edited, v.EditSeq = true, e.seq
		v.Body, v.ContentType = e.value.body, e.value.contentType
	}
	byKey := map[string][]ulid.ULID{}
	for k, r := range m.reactions {
		if r.value {
			byKey[k.key] = append(byKey[k.key], k.user)
		}
	}
	for key, users := range byKey {
		slices.SortFunc(users, ulid.ULID.Compare)
		v.Reactions = append(v.Reactions, ReactionView{Key: key, Users: users})
	}
	slices.SortFunc(v.Reactions, func(a, b ReactionView) int { return cmp.Compare(a.Key, b.Key) })
	return v
}

// Equal reports whether two states are the same: same ops applied, and the
// same registers. It compares everything a replica keeps, including
// registers that are not visible yet (an edit whose message has not
// arrived), so it is stricter than comparing the views.
func (s *State) Equal(t *State) bool { return bytes.Equal(s.Digest(), t.Digest()) }

// Digest is a canonical encoding of the whole state, for comparing replicas.
func (s *State) Digest() []byte {
	var b []byte
	putID := func(id ulid.ULID) { b = append(b, id[:]...) }
	putU := func(u uint64) { b = binary.AppendUvarint(b, u) }
	putS := func(x []byte) { putU(uint64(len(x))); b = append(b, x...) }

	putID(s.conv)
	putU(s.head)
	ids := sortedKeys(s.seen)
	putU(uint64(len(ids)))
	for _, id := range ids {
		putID(id)
		putU(s.seen[id])
	}
	putU(s.title.seq)
	putS([]byte(s.title.value))
	users := sortedKeys(s.members)
	putU(uint64(len(users)))
	for _, u := range users {
		putID(u)
		putU(s.members[u].seq)
		b = append(b, byte(s.members[u].value))
	}
	mids := sortedKeys(s.messages)
	putU(uint64(len(mids)))
	for _, id := range mids {
		m := s.messages[id]
		putID(id)
		if m.op != nil {
			b = append(b, 1)
			putU(m.op.Seq)
			putID(m.op.User)
			putID(m.op.Dot.Device)
			putS([]byte(m.op.ContentType))
			putS(m.op.Body)
		} else {
			b = append(b, 0)
		}
		if m.deleted {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		eus := sortedKeys(m.edits)
		putU(uint64(len(eus)))
		for _, u := range eus {
			e := m.edits[u]
			putID(u)
			putU(e.seq)
			putS([]byte(e.value.contentType))
			putS(e.value.body)
		}
		rks := make([]reactionKey, 0, len(m.reactions))
		for k := range m.reactions {
			rks = append(rks, k)
		}
		slices.SortFunc(rks, func(a, b reactionKey) int {
			if c := a.user.Compare(b.user); c != 0 {
				return c
			}
			return cmp.Compare(a.key, b.key)
		})
		putU(uint64(len(rks)))
		for _, k := range rks {
			r := m.reactions[k]
			putID(k.user)
			putS([]byte(k.key))
			putU(r.seq)
			if r.value {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		}
	}
	return b
}

func sortedKeys[V any](m map[ulid.ULID]V) []ulid.ULID {
	keys := make([]ulid.ULID, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, ulid.ULID.Compare)
	return keys
}
