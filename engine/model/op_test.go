package model

import (
	"errors"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	base := func(k Kind) Op {
		return Op{ID: id(500), Conv: conv, Dot: Dot{Device: aliceD, N: 1}, Kind: k}
	}
	with := func(k Kind, f func(*Op)) Op { o := base(k); f(&o); return o }
	valid := []Op{
		base(KindCreate),
		with(KindCreate, func(o *Op) { o.Title = "Team ☕" }),
		with(KindMessage, func(o *Op) { o.Body = []byte{0, 1, 2}; o.ContentType = "application/octet-stream" }),
		base(KindMessage), // an empty message is allowed: the body is opaque
		with(KindEdit, func(o *Op) { o.Target = id(7); o.Body = []byte("x") }),
		with(KindDelete, func(o *Op) { o.Target = id(7) }),
		with(KindReactionAdd, func(o *Op) { o.Target = id(7); o.ReactionKey = "👍" }),
		with(KindReactionRemove, func(o *Op) { o.Target = id(7); o.ReactionKey = "👍" }),
		with(KindMemberAdd, func(o *Op) { o.Member = bob; o.Role = RoleMember }),
		with(KindMemberAdd, func(o *Op) { o.Member = bob; o.Role = RoleAdmin }),
		with(KindMemberRemove, func(o *Op) { o.Member = bob }),
		with(KindMemberRole, func(o *Op) { o.Member = bob; o.Role = RoleOwner }),
		with(KindSetTitle, func(o *Op) { o.Title = "" }),
	}
	for _, o := range valid {
		if err := o.Validate(100); err != nil {
			t.Errorf("%s: unexpected error %v", o.Kind, err)
		}
	}
	invalid := []struct {
		op   Op
		want string
	}{
		{with(KindMessage, func(o *Op) { o.ID = [16]byte{} }), "op id is missing, or is the zero ULID"},
		{with(KindMessage, func(o *Op) { o.Conv = [16]byte{} }), "conversation id is missing, or is the zero ULID"},
		{with(KindMessage, func(o *Op) { o.Dot.Device = [16]byte{} }), "author device is missing"},
		{with(KindMessage, func(o *Op) { o.Dot.N = 0 }), "dot must be 1 or more"},
		{base(KindUnknown), "unknown kind"},
		{base(Kind(99)), "unknown kind"},
		{base(KindEdit), "needs a target"},
		{with(KindMessage, func(o *Op) { o.Target = id(7) }), "takes no target"},
		{base(KindMemberAdd), "needs a user id"},
		{with(KindMessage, func(o *Op) { o.Member = bob }), "takes no user id"},
		{with(KindMemberAdd, func(o *Op) { o.Member = bob; o.Role = RoleOwner }), "member or admin"},
		{with(KindMemberAdd, func(o *Op) { o.Member = bob }), "member or admin"},
		{with(KindMemberRole, func(o *Op) { o.Member = bob }), "role must be"},
		{with(KindMessage, func(o *Op) { o.Role = RoleAdmin }), "takes no role"},
		{with(KindMessage, func(o *Op) { o.Title = "x" }), "takes no title"},
		{with(KindCreate, func(o *Op) { o.Title = strings.Repeat("x", MaxTitleBytes+1) }), "title is 257 bytes"},
		{with(KindCreate, func(o *Op) { o.Title = "a\x00b" }), "control character"},
		{with(KindCreate, func(o *Op) { o.Title = "\xff" }), "not valid UTF-8"},
		{with(KindReactionAdd, func(o *Op) { o.Target = id(7) }), "reaction key is empty"},
		{with(KindMessage, func(o *Op) { o.ReactionKey = "x" }), "takes no reaction key"},
		{with(KindDelete, func(o *Op) { o.Target = id(7); o.Body = []byte("x") }), "takes no body"},
		{with(KindMessage, func(o *Op) { o.Body = make([]byte, 101) }), "more than the limit of 100"},
		{with(KindMessage, func(o *Op) { o.ContentType = strings.Repeat("x", 65) }), "content type is 65 bytes"},
		{with(KindMessage, func(o *Op) { o.Erased = true; o.Body = []byte("x") }), "erased op has no body"},
	}
	for _, tt := range invalid {
		err := tt.op.Validate(100)
		if !errors.Is(err, ErrInvalidOp) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an ErrInvalidOp saying %q", tt.op.Kind, err, tt.want)
		}
	}
}

func TestSamePayloadAndHash(t *testing.T) {
	a := Op{ID: id(1), Dot: Dot{aliceD, 1}, Kind: KindMessage, Body: []byte("x"), Seq: 4, User: alice}
	b := a
	b.Seq, b.User = 9, bob // server-assigned fields do not count
	if !SamePayload(&a, &b) || PayloadHash(&a) != PayloadHash(&b) {
		t.Fatal("same payload compared different")
	}
	for _, change := range []func(*Op){
		func(o *Op) { o.Body = []byte("y") },
		func(o *Op) { o.Dot.N = 2 },
		func(o *Op) { o.Kind = KindEdit },
		func(o *Op) { o.ContentType = "text/plain" },
	} {
		c := a
		change(&c)
		if SamePayload(&a, &c) || PayloadHash(&a) == PayloadHash(&c) {
			t.Errorf("different payload compared equal: %+v", c)
		}
	}
	// Length-prefixing keeps field boundaries apart.
	x := Op{Kind: KindReactionAdd, ReactionKey: "ab", Title: ""}
	y := Op{Kind: KindReactionAdd, ReactionKey: "a", Title: "b"}
	if PayloadHash(&x) == PayloadHash(&y) {
		t.Fatal("hash is ambiguous across field boundaries")
	}
}
