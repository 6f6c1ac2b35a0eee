package model

import (
	"bytes"
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/oklog/ulid/v2"
	"pgregory.net/rapid"
)

func id(n int) ulid.ULID {
	var u ulid.ULID
	u[0] = 1
	u[14] = byte(n >> 8)
	u[15] = byte(n)
	return u
}

var (
	conv           = id(1000)
	alice, bob     = id(1), id(2)
	carol          = id(3)
	aliceD, bobD   = id(11), id(12)
	carolD, alice2 = id(13), id(14)
)

// history builds ops with consecutive seqs, as a server would assign them.
type history struct {
	ops  []Op
	dots map[ulid.ULID]uint64
	next int
}

func newHistory() *history { return &history{dots: map[ulid.ULID]uint64{}, next: 100} }

func (h *history) add(user, device ulid.ULID, op Op) Op {
	h.next++
	h.dots[device]++
	op.ID = id(h.next)
	op.Conv = conv
	op.Seq = uint64(len(h.ops) + 1)
	op.User = user
	op.Dot = Dot{Device: device, N: h.dots[device]}
	h.ops = append(h.ops, op)
	return op
}

func TestStateSemantics(t *testing.T) {
	h := newHistory()
	h.add(alice, aliceD, Op{Kind: KindCreate, Title: "first"})
	h.add(alice, aliceD, Op{Kind: KindMemberAdd, Member: bob, Role: RoleMember})
	m1 := h.add(alice, aliceD, Op{Kind: KindMessage, Body: []byte("hello"), ContentType: "text/plain"})
	m2 := h.add(bob, bobD, Op{Kind: KindMessage, Body: []byte("hi")})
	h.add(alice, alice2, Op{Kind: KindEdit, Target: m1.ID, Body: []byte("hello, edited")})
	h.add(alice, aliceD, Op{Kind: KindEdit, Target: m1.ID, Body: []byte("hello, edited twice")})
	h.add(bob, bobD, Op{Kind: KindReactionAdd, Target: m1.ID, ReactionKey: "👍"})
	h.add(alice, aliceD, Op{Kind: KindReactionAdd, Target: m1.ID, ReactionKey: "👍"})
	h.add(bob, bobD, Op{Kind: KindReactionAdd, Target: m1.ID, ReactionKey: "🎉"})
	h.add(bob, bobD, Op{Kind: KindReactionRemove, Target: m1.ID, ReactionKey: "🎉"})
	h.add(bob, bobD, Op{Kind: KindEdit, Target: m2.ID, Body: []byte("hi there")})
	h.add(bob, bobD, Op{Kind: KindDelete, Target: m2.ID})
	h.add(bob, bobD, Op{Kind: KindEdit, Target: m2.ID, Body: []byte("edit after delete")})
	h.add(alice, aliceD, Op{Kind: KindSetTitle, Title: "second"})
	h.add(alice, aliceD, Op{Kind: KindMemberAdd, Member: carol, Role: RoleAdmin})
	h.add(alice, aliceD, Op{Kind: KindMemberRole, Member: bob, Role: RoleAdmin})
	h.add(alice, aliceD, Op{Kind: KindMemberRemove, Member: carol})

	s := Fold(conv, h.ops)
	if got := s.Title(); got != "second" {
		t.Errorf("title = %q, want the later title", got)
	}
	wantMembers := []MemberView{{User: alice, Role: RoleOwner, Since: 1}, {User: bob, Role: RoleAdmin, Since: 16}}
	if got := s.Members(); !slices.Equal(got, wantMembers) {
		t.Errorf("members = %v, want %v", got, wantMembers)
	}
	if s.Role(carol) != RoleNone {
		t.Errorf("carol was removed but has role %v", s.Role(carol))
	}
	msgs := s.Messages()
	if len(msgs) != 2 {
		t.Fatalf("got %d messages, want 2", len(msgs))
	}
	got := msgs[0]
	if string(got.Body) != "hello, edited twice" || !got.Edited || got.EditSeq != 6 || got.ContentType != "" {
		t.Errorf("edited message = %+v, want the highest-seq edit's body and content type", got)
	}
	wantReactions := []ReactionView{{Key: "👍", Users: []ulid.ULID{alice, bob}}}
	if !reactionsEqual(got.Reactions, wantReactions) {
		t.Errorf("reactions = %v, want %v (🎉 was removed)", got.Reactions, wantReactions)
	}
	if del := msgs[1]; !del.Deleted || del.Body != nil || del.Edited {
		t.Errorf("deleted message = %+v, want a tombstone without body", del)
	}
}

func TestEditByOtherUserIgnored(t *testing.T) {
	h := newHistory()
	h.add(alice, aliceD, Op{Kind: KindCreate})
	m := h.add(alice, aliceD, Op{Kind: KindMessage, Body: []byte("mine")})
	h.add(bob, bobD, Op{Kind: KindEdit, Target: m.ID, Body: []byte("forged")})
	v, _ := Fold(conv, h.ops).Message(m.ID)
	if string(v.Body) != "mine" || v.Edited {
		t.Fatalf("an edit by another user changed the message: %+v", v)
	}
}

func TestDeleteForgetsBodiesInEveryOrder(t *testing.T) {
	h := newHistory()
	h.add(alice, aliceD, Op{Kind: KindCreate})
	m := h.add(alice, aliceD, Op{Kind: KindMessage, Body: []byte("secret")})
	h.add(alice, aliceD, Op{Kind: KindEdit, Target: m.ID, Body: []byte("secret 2")})
	h.add(alice, aliceD, Op{Kind: KindDelete, Target: m.ID})
	for _, order := range [][]int{{0, 1, 2, 3}, {3, 2, 1, 0}, {0, 3, 1, 2}, {2, 3, 0, 1}} {
		s := NewState(conv)
		for _, i := range order {
			s.Apply(&h.ops[i])
		}
		if d := s.Digest(); bytes.Contains(d, []byte("secret")) {
			t.Errorf("order %v: state still holds a deleted body", order)
		}
	}
}

func TestErasedRepeatErases(t *testing.T) {
	h := newHistory()
	h.add(alice, aliceD, Op{Kind: KindCreate})
	m := h.add(alice, aliceD, Op{Kind: KindMessage, Body: []byte("secret")})
	s := Fold(conv, h.ops)
	erased := m
	erased.Body, erased.Erased = nil, true
	if s.Apply(&erased) {
		t.Fatal("a repeat was applied as new")
	}
	if v, _ := s.Message(m.ID); v.Body != nil {
		t.Fatalf("an erased repeat left the body: %q", v.Body)
	}
}

// TestErasedMessageShowsDeleted: a message, or an edit of it, that arrives
// erased was deleted for everyone; the state says so before the delete
// itself comes, in every order.
func TestErasedMessageShowsDeleted(t *testing.T) {
	h := newHistory()
	h.add(alice, aliceD, Op{Kind: KindCreate})
	m := h.add(alice, aliceD, Op{Kind: KindMessage, Body: []byte("secret"), ContentType: "text/plain"})
	e := h.add(alice, aliceD, Op{Kind: KindEdit, Target: m.ID, Body: []byte("secret 2"), ContentType: "text/plain"})
	erasedM, erasedE := m, e
	erasedM.Body, erasedM.ContentType, erasedM.Erased = nil, "", true
	erasedE.Body, erasedE.ContentType, erasedE.Erased = nil, "", true
	for name, ops := range map[string][]Op{
		"the message erased":                       {h.ops[0], erasedM},
		"the message erased, then its edit":        {h.ops[0], erasedM, erasedE},
		"its edit erased, then the message":        {h.ops[0], erasedE, m},
		"the message, then its edit erased":        {h.ops[0], m, erasedE},
		"the message, then a repeat erased":        {h.ops[0], m, erasedM},
		"the message and edit, the edit erased":    {h.ops[0], m, e, erasedE},
		"the message and edit, the message erased": {h.ops[0], m, e, erasedM},
	} {
		s := NewState(conv)
		for i := range ops {
			s.Apply(&ops[i])
		}
		v, ok := s.Message(m.ID)
		if !ok || !v.Deleted || v.Body != nil || v.ContentType != "" || v.Edited {
			t.Errorf("%s: %+v (found %v); want it deleted, with no body", name, v, ok)
		}
		if d := s.Digest(); bytes.Contains(d, []byte("secret")) {
			t.Errorf("%s: the state still holds a deleted body", name)
		}
	}
}

func reactionsEqual(a, b []ReactionView) bool {
	return slices.EqualFunc(a, b, func(x, y ReactionView) bool { return x.Key == y.Key && slices.Equal(x.Users, y.Users) })
}

// randomHistory makes a valid history: each op is authorised against the
// state so far, as the server would do.
func randomHistory(t *rapid.T) []Op {
	users := []ulid.ULID{alice, bob, carol}
	deviceOf := map[ulid.ULID][]ulid.ULID{alice: {aliceD, alice2}, bob: {bobD}, carol: {carolD}}
	h := newHistory()
	h.add(alice, aliceD, Op{Kind: KindCreate, Title: "t0"})
	var msgs []Op
	n := rapid.IntRange(1, 40).Draw(t, "ops")
	for range n {
		u := rapid.SampledFrom(users).Draw(t, "user")
		dev := rapid.SampledFrom(deviceOf[u]).Draw(t, "device")
		s := Fold(conv, h.ops)
		op := Op{Kind: Kind(rapid.IntRange(int(KindMessage), int(KindSetTitle)).Draw(t, "kind"))}
		switch op.Kind {
		case KindMessage, KindEdit:
			op.Body = []byte(rapid.SampledFrom([]string{"a", "b", "c", "longer text"}).Draw(t, "body"))
		case KindReactionAdd, KindReactionRemove:
			op.ReactionKey = rapid.SampledFrom([]string{"+1", "heart"}).Draw(t, "key")
		case KindMemberAdd, KindMemberRemove, KindMemberRole:
			op.Member = rapid.SampledFrom(users).Draw(t, "member")
			op.Role = RoleMember
			if op.Kind == KindMemberRole {
				op.Role = Role(rapid.IntRange(1, 3).Draw(t, "role"))
			}
			if op.Kind == KindMemberRemove {
				op.Role = RoleNone
			}
		case KindSetTitle:
			op.Title = fmt.Sprintf("t%d", len(h.ops))
		}
		var target Target
		if op.Kind.HasTarget() {
			if len(msgs) == 0 {
				continue
			}
			m := rapid.SampledFrom(msgs).Draw(t, "target")
			op.Target = m.ID
			mv, _ := s.Message(m.ID)
			target = Target{Found: true, Kind: KindMessage, User: m.User, Deleted: mv.Deleted}
		}
		owners := 0
		for _, mv := range s.Members() {
			if mv.Role == RoleOwner {
				owners++
			}
		}
		facts := Facts{ActorRole: s.Role(u), Target: target, SubjectRole: s.Role(op.Member), Owners: owners}
		if Authorize(u, &op, facts) != nil {
			continue
		}
		op = h.add(u, dev, op)
		if op.Kind == KindMessage {
			msgs = append(msgs, op)
		}
	}
	return h.ops
}

// TestStateConvergesInAnyOrder is the convergence property: every delivery
// order, with duplicates, of the same ops gives the same state, and that
// state is what a naive sequential interpretation of the log gives.
func TestStateConvergesInAnyOrder(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		ops := randomHistory(t)
		want := Fold(conv, ops)
		seed := rapid.Uint64().Draw(t, "seed")
		r := rand.New(rand.NewPCG(seed, seed))
		for range 3 {
			delivery := slices.Clone(ops)
			for range r.IntN(len(ops) + 1) {
				delivery = append(delivery, ops[r.IntN(len(ops))])
			}
			r.Shuffle(len(delivery), func(i, j int) { delivery[i], delivery[j] = delivery[j], delivery[i] })
			got := NewState(conv)
			for i := range delivery {
				got.Apply(&delivery[i])
			}
			if !got.Equal(want) {
				t.Fatalf("delivery order changed the state (seed %d)", seed)
			}
		}
		checkAgainstNaive(t, ops, want)
	})
}

// checkAgainstNaive replays the log in seq order with the obvious sequential
// rules and compares what a user would see.
func checkAgainstNaive(t *rapid.T, ops []Op, s *State) {
	type msg struct {
		op      Op
		body    []byte
		edited  uint64
		deleted bool
		reacts  map[string]map[ulid.ULID]bool
	}
	sorted := slices.SortedFunc(slices.Values(ops), func(a, b Op) int { return cmp.Compare(a.Seq, b.Seq) })
	msgs := map[ulid.ULID]*msg{}
	roles := map[ulid.ULID]Role{}
	title := ""
	for _, op := range sorted {
		switch op.Kind {
		case KindCreate:
			title = op.Title
			roles[op.User] = RoleOwner
		case KindSetTitle:
			title = op.Title
		case KindMemberAdd, KindMemberRole:
			roles[op.Member] = op.Role
		case KindMemberRemove:
			delete(roles, op.Member)
		case KindMessage:
			msgs[op.ID] = &msg{op: op, body: op.Body, reacts: map[string]map[ulid.ULID]bool{}}
		case KindEdit:
			if m := msgs[op.Target]; !m.deleted && m.op.User == op.User {
				m.body, m.edited = op.Body, op.Seq
			}
		case KindDelete:
			msgs[op.Target].deleted = true
		case KindReactionAdd, KindReactionRemove:
			m := msgs[op.Target]
			if m.reacts[op.ReactionKey] == nil {
				m.reacts[op.ReactionKey] = map[ulid.ULID]bool{}
			}
			m.reacts[op.ReactionKey][op.User] = op.Kind == KindReactionAdd
		}
	}
	if s.Title() != title {
		t.Fatalf("title %q, naive %q", s.Title(), title)
	}
	for _, mv := range s.Members() {
		if roles[mv.User] != mv.Role {
			t.Fatalf("member %s role %v, naive %v", mv.User, mv.Role, roles[mv.User])
		}
	}
	if len(s.Members()) != len(roles) {
		t.Fatalf("%d members, naive %d", len(s.Members()), len(roles))
	}
	views := s.Messages()
	if len(views) != len(msgs) {
		t.Fatalf("%d messages, naive %d", len(views), len(msgs))
	}
	for _, v := range views {
		m := msgs[v.ID]
		if v.Deleted != m.deleted {
			t.Fatalf("message %s deleted=%v, naive %v", v.ID, v.Deleted, m.deleted)
		}
		if m.deleted {
			if v.Body != nil {
				t.Fatalf("deleted message %s shows a body", v.ID)
			}
			continue
		}
		if !bytes.Equal(v.Body, m.body) || v.EditSeq != m.edited {
			t.Fatalf("message %s body %q edit %d, naive %q edit %d", v.ID, v.Body, v.EditSeq, m.body, m.edited)
		}
		var want []ReactionView
		for key, users := range m.reacts {
			var us []ulid.ULID
			for u, on := range users {
				if on {
					us = append(us, u)
				}
			}
			if len(us) > 0 {
				slices.SortFunc(us, ulid.ULID.Compare)
				want = append(want, ReactionView{Key: key, Users: us})
			}
		}
		slices.SortFunc(want, func(a, b ReactionView) int { return cmp.Compare(a.Key, b.Key) })
		if !reactionsEqual(v.Reactions, want) {
			t.Fatalf("message %s reactions %v, naive %v", v.ID, v.Reactions, want)
		}
	}
}

// TestNewestPages: Newest walks the messages newest first, from below a
// seq when asked, in seq order whatever order they arrived in (a catch-up
// brings the newest page before older ones), and sees a message that
// arrives between two walks.
func TestNewestPages(t *testing.T) {
	s := NewState(conv)
	if slices.Collect(s.Newest(0)) != nil {
		t.Fatal("an empty state has messages")
	}
	msg := func(seq int) {
		s.Apply(&Op{ID: id(500 + seq), Conv: conv, Seq: uint64(seq), Dot: Dot{Device: aliceD, N: uint64(seq)}, User: alice, Kind: KindMessage, Body: []byte{byte(seq)}})
	}
	s.Apply(&Op{ID: id(600), Conv: conv, Seq: 8, Dot: Dot{Device: bobD, N: 1}, User: bob, Kind: KindReactionAdd, Target: id(509), ReactionKey: "+1"}) // before its message
	seqs := func(before uint64) []uint64 {
		var out []uint64
		for v := range s.Newest(before) {
			out = append(out, v.Seq)
		}
		return out
	}
	for _, seq := range []int{5, 3, 9} {
		msg(seq)
	}
	if got := seqs(0); !slices.Equal(got, []uint64{9, 5, 3}) {
		t.Fatalf("Newest(0) = %v", got)
	}
	if got := seqs(5); !slices.Equal(got, []uint64{3}) {
		t.Fatalf("Newest(5) = %v", got)
	}
	if got := seqs(4); !slices.Equal(got, []uint64{3}) {
		t.Fatalf("Newest(4) = %v", got)
	}
	msg(7)
	msg(1)
	if got := seqs(0); !slices.Equal(got, []uint64{9, 7, 5, 3, 1}) {
		t.Fatalf("after 7 and 1 arrived: Newest(0) = %v", got)
	}
	for v := range s.Newest(0) {
		if len(v.Reactions) != 1 || v.Seq != 9 {
			t.Fatalf("the newest message %d has reactions %v; want seq 9's +1, applied before it arrived", v.Seq, v.Reactions)
		}
		break
	}
	newest := slices.Collect(s.Newest(0))
	slices.Reverse(newest)
	if !slices.EqualFunc(s.Messages(), newest, func(a, b MessageView) bool { return a.Seq == b.Seq }) {
		t.Fatal("Messages is not Newest reversed")
	}
}
