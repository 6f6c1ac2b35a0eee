package model

import (
	"errors"
	"testing"
)

func TestAuthorize(t *testing.T) {
	msgBy := func(u [16]byte) Target { return Target{Found: true, Kind: KindMessage, User: u} }
	tests := []struct {
		name  string
		actor [16]byte
		op    Op
		facts Facts
		want  error
	}{
		{"member sends", bob, Op{Kind: KindMessage}, Facts{ActorRole: RoleMember}, nil},
		{"non-member sends", bob, Op{Kind: KindMessage}, Facts{}, ErrForbidden},
		{"create on existing", alice, Op{Kind: KindCreate}, Facts{ActorRole: RoleOwner}, ErrPrecondition},
		{"author edits", bob, Op{Kind: KindEdit, Target: id(9)}, Facts{ActorRole: RoleMember, Target: msgBy(bob)}, nil},
		{"owner edits other's message", alice, Op{Kind: KindEdit, Target: id(9)}, Facts{ActorRole: RoleOwner, Target: msgBy(bob)}, ErrForbidden},
		{"edit deleted", bob, Op{Kind: KindEdit, Target: id(9)}, Facts{ActorRole: RoleMember, Target: Target{Found: true, Kind: KindMessage, User: bob, Deleted: true}}, ErrPrecondition},
		{"edit unknown target", bob, Op{Kind: KindEdit, Target: id(9)}, Facts{ActorRole: RoleMember}, ErrPrecondition},
		{"react to a non-message", bob, Op{Kind: KindReactionAdd, Target: id(9)}, Facts{ActorRole: RoleMember, Target: Target{Found: true, Kind: KindMemberAdd}}, ErrPrecondition},
		{"author deletes", bob, Op{Kind: KindDelete, Target: id(9)}, Facts{ActorRole: RoleMember, Target: msgBy(bob)}, nil},
		{"admin deletes other's", carol, Op{Kind: KindDelete, Target: id(9)}, Facts{ActorRole: RoleAdmin, Target: msgBy(bob)}, nil},
		{"member deletes other's", carol, Op{Kind: KindDelete, Target: id(9)}, Facts{ActorRole: RoleMember, Target: msgBy(bob)}, ErrForbidden},
		{"member reacts", carol, Op{Kind: KindReactionAdd, Target: id(9)}, Facts{ActorRole: RoleMember, Target: msgBy(bob)}, nil},
		{"member sets title", carol, Op{Kind: KindSetTitle}, Facts{ActorRole: RoleMember}, ErrForbidden},
		{"admin sets title", carol, Op{Kind: KindSetTitle}, Facts{ActorRole: RoleAdmin}, nil},
		{"admin adds member", carol, Op{Kind: KindMemberAdd, Member: bob, Role: RoleMember}, Facts{ActorRole: RoleAdmin}, nil},
		{"admin adds admin", carol, Op{Kind: KindMemberAdd, Member: bob, Role: RoleAdmin}, Facts{ActorRole: RoleAdmin}, ErrForbidden},
		{"owner adds admin", alice, Op{Kind: KindMemberAdd, Member: bob, Role: RoleAdmin}, Facts{ActorRole: RoleOwner}, nil},
		{"member adds", carol, Op{Kind: KindMemberAdd, Member: bob, Role: RoleMember}, Facts{ActorRole: RoleMember}, ErrForbidden},
		{"add existing member", alice, Op{Kind: KindMemberAdd, Member: bob, Role: RoleMember}, Facts{ActorRole: RoleOwner, SubjectRole: RoleMember}, ErrPrecondition},
		{"member leaves", bob, Op{Kind: KindMemberRemove, Member: bob}, Facts{ActorRole: RoleMember, SubjectRole: RoleMember}, nil},
		{"last owner leaves", alice, Op{Kind: KindMemberRemove, Member: alice}, Facts{ActorRole: RoleOwner, SubjectRole: RoleOwner, Owners: 1}, ErrPrecondition},
		{"one of two owners leaves", alice, Op{Kind: KindMemberRemove, Member: alice}, Facts{ActorRole: RoleOwner, SubjectRole: RoleOwner, Owners: 2}, nil},
		{"admin removes member", carol, Op{Kind: KindMemberRemove, Member: bob}, Facts{ActorRole: RoleAdmin, SubjectRole: RoleMember}, nil},
		{"admin removes admin", carol, Op{Kind: KindMemberRemove, Member: bob}, Facts{ActorRole: RoleAdmin, SubjectRole: RoleAdmin}, ErrForbidden},
		{"owner removes admin", alice, Op{Kind: KindMemberRemove, Member: bob}, Facts{ActorRole: RoleOwner, SubjectRole: RoleAdmin}, nil},
		{"member removes member", carol, Op{Kind: KindMemberRemove, Member: bob}, Facts{ActorRole: RoleMember, SubjectRole: RoleMember}, ErrForbidden},
		{"remove non-member", alice, Op{Kind: KindMemberRemove, Member: bob}, Facts{ActorRole: RoleOwner}, ErrPrecondition},
		{"owner promotes", alice, Op{Kind: KindMemberRole, Member: bob, Role: RoleOwner}, Facts{ActorRole: RoleOwner, SubjectRole: RoleMember}, nil},
		{"admin promotes", carol, Op{Kind: KindMemberRole, Member: bob, Role: RoleAdmin}, Facts{ActorRole: RoleAdmin, SubjectRole: RoleMember}, ErrForbidden},
		{"role of non-member", alice, Op{Kind: KindMemberRole, Member: bob, Role: RoleAdmin}, Facts{ActorRole: RoleOwner}, ErrPrecondition},
		{"last owner demotes self", alice, Op{Kind: KindMemberRole, Member: alice, Role: RoleAdmin}, Facts{ActorRole: RoleOwner, SubjectRole: RoleOwner, Owners: 1}, ErrPrecondition},
	}
	for _, tt := range tests {
		err := Authorize(tt.actor, &tt.op, tt.facts)
		if (tt.want == nil) != (err == nil) || (tt.want != nil && !errors.Is(err, tt.want)) {
			t.Errorf("%s: got %v, want %v", tt.name, err, tt.want)
		}
	}
}
