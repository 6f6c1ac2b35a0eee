package model

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/oklog/ulid/v2"
)

// Kind is the kind of an op.
type Kind uint8

// The op kinds. The values are stored on disk: never renumber them.
const (
	KindUnknown        Kind = 0
	KindCreate         Kind = 1
	KindMessage        Kind = 2
	KindEdit           Kind = 3
	KindDelete         Kind = 4
	KindReactionAdd    Kind = 5
	KindReactionRemove Kind = 6
	KindMemberAdd      Kind = 7
	KindMemberRemove   Kind = 8
	KindMemberRole     Kind = 9
	KindSetTitle       Kind = 10
)

var kindNames = [...]string{
	KindUnknown:        "unknown",
	KindCreate:         "create",
	KindMessage:        "message",
	KindEdit:           "edit",
	KindDelete:         "delete",
	KindReactionAdd:    "reaction-add",
	KindReactionRemove: "reaction-remove",
	KindMemberAdd:      "member-add",
	KindMemberRemove:   "member-remove",
	KindMemberRole:     "member-role",
	KindSetTitle:       "set-title",
}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k > KindUnknown && k <= KindSetTitle }

// HasTarget reports whether ops of kind k refer to a message by op id.
func (k Kind) HasTarget() bool {
	switch k {
	case KindEdit, KindDelete, KindReactionAdd, KindReactionRemove:
		return true
	}
	return false
}

// HasMember reports whether ops of kind k refer to a user.
func (k Kind) HasMember() bool {
	return k == KindMemberAdd || k == KindMemberRemove || k == KindMemberRole
}

// HasBody reports whether ops of kind k carry a body and content type.
func (k Kind) HasBody() bool { return k == KindMessage || k == KindEdit }

// Role is a member's role in a conversation. Roles are ordered: a higher
// role can do everything a lower one can.
type Role uint8

// The roles. The values are stored on disk: never renumber them.
const (
	RoleNone   Role = 0 // not a member
	RoleMember Role = 1
	RoleAdmin  Role = 2
	RoleOwner  Role = 3
)

func (r Role) String() string {
	switch r {
	case RoleNone:
		return "none"
	case RoleMember:
		return "member"
	case RoleAdmin:
		return "admin"
	case RoleOwner:
		return "owner"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Dot identifies the N-th op (N = 1, 2, 3...) that Device authored in one
// conversation.
type Dot struct {
	Device ulid.ULID
	N      uint64
}

func (d Dot) String() string { return fmt.Sprintf("%s:%d", d.Device, d.N) }

// Limits on op contents. Servers may enforce lower limits on bodies.
const (
	MaxTitleBytes       = 256
	MaxContentTypeBytes = 64
	MaxReactionKeyBytes = 64
	// MaxBodyBytes is the largest body any Ferry component accepts.
	MaxBodyBytes = 1 << 20
)

// Op is one entry of a conversation's log. Which payload fields are set
// depends on Kind; the others are zero.
type Op struct {
	ID   ulid.ULID // chosen by the author's device; the idempotency key
	Conv ulid.ULID // the conversation
	Seq  uint64    // assigned by the server; 0 until then
	Dot  Dot       // the author device and its op number
	User ulid.ULID // the author's user; set by the server
	Kind Kind
	// Erased is set when a delete-for-everyone removed the body from the
	// server. Body and ContentType are then empty.
	Erased bool

	Target      ulid.ULID // Edit, Delete, ReactionAdd, ReactionRemove: the message's op id
	Member      ulid.ULID // MemberAdd, MemberRemove, MemberRole: the user
	Role        Role      // MemberAdd, MemberRole
	Title       string    // Create, SetTitle
	ReactionKey string    // ReactionAdd, ReactionRemove
	ContentType string    // Message, Edit
	Body        []byte    // Message, Edit
}

// ErrInvalidOp is wrapped by every error of [Op.Validate].
var ErrInvalidOp = errors.New("invalid op")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidOp, fmt.Sprintf(format, args...))
}

// Validate checks the op's shape: ids present, the payload fields that its
// kind uses and no others, and sizes within limits (bodies within
// maxBody, which is capped at MaxBodyBytes). It does not check permissions or
// server-assigned fields (Seq, User).
func (o *Op) Validate(maxBody int) error {
	if maxBody <= 0 || maxBody > MaxBodyBytes {
		maxBody = MaxBodyBytes
	}
	if o.ID == (ulid.ULID{}) {
		return invalid("op id is missing, or is the zero ULID, which is no one's id")
	}
	if o.Conv == (ulid.ULID{}) {
		return invalid("op %s: conversation id is missing, or is the zero ULID, which is no conversation's", o.ID)
	}
	if o.Dot.Device == (ulid.ULID{}) {
		return invalid("op %s: author device is missing", o.ID)
	}
	if o.Dot.N == 0 {
		return invalid("op %s: dot must be 1 or more", o.ID)
	}
	if !o.Kind.Valid() {
		return invalid("op %s: unknown kind %d", o.ID, o.Kind)
	}
	if o.Kind.HasTarget() != (o.Target != ulid.ULID{}) {
		if o.Kind.HasTarget() {
			return invalid("op %s: %s needs a target message id", o.ID, o.Kind)
		}
		return invalid("op %s: %s takes no target", o.ID, o.Kind)
	}
	if o.Kind.HasMember() != (o.Member != ulid.ULID{}) {
		if o.Kind.HasMember() {
			return invalid("op %s: %s needs a user id", o.ID, o.Kind)
		}
		return invalid("op %s: %s takes no user id", o.ID, o.Kind)
	}
	switch o.Kind {
	case KindMemberAdd:
		if o.Role != RoleMember && o.Role != RoleAdmin {
			return invalid("op %s: a member can be added as member or admin, not %s", o.ID, o.Role)
		}
	case KindMemberRole:
		if o.Role < RoleMember || o.Role > RoleOwner {
			return invalid("op %s: role must be member, admin or owner", o.ID)
		}
	default:
		if o.Role != RoleNone {
			return invalid("op %s: %s takes no role", o.ID, o.Kind)
		}
	}
	hasTitle := o.Kind == KindCreate || o.Kind == KindSetTitle
	if !hasTitle && o.Title != "" {
		return invalid("op %s: %s takes no title", o.ID, o.Kind)
	}
	if err := checkText("title", o.Title, MaxTitleBytes); err != nil {
		return invalid("op %s: %v", o.ID, err)
	}
	isReaction := o.Kind == KindReactionAdd || o.Kind == KindReactionRemove
	if isReaction {
		if o.ReactionKey == "" {
			return invalid("op %s: reaction key is empty", o.ID)
		}
		if err := checkText("reaction key", o.ReactionKey, MaxReactionKeyBytes); err != nil {
			return invalid("op %s: %v", o.ID, err)
		}
	} else if o.ReactionKey != "" {
		return invalid("op %s: %s takes no reaction key", o.ID, o.Kind)
	}
	if !o.Kind.HasBody() && (len(o.Body) > 0 || o.ContentType != "") {
		return invalid("op %s: %s takes no body", o.ID, o.Kind)
	}
	if len(o.Body) > maxBody {
		return invalid("op %s: body is %d bytes, more than the limit of %d", o.ID, len(o.Body), maxBody)
	}
	if err := checkText("content type", o.ContentType, MaxContentTypeBytes); err != nil {
		return invalid("op %s: %v", o.ID, err)
	}
	if o.Erased && (len(o.Body) > 0 || o.ContentType != "") {
		return invalid("op %s: an erased op has no body", o.ID)
	}
	return nil
}

func checkText(what, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s is %d bytes, more than the limit of %d", what, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s contains a control character", what)
		}
	}
	return nil
}

// SamePayload reports whether two ops with the same id say the same thing:
// the same author dot, kind and payload. Server-assigned fields (Seq, User)
// and erasure are not compared; an erased op compares by [PayloadHash].
func SamePayload(a, b *Op) bool {
	return a.Dot == b.Dot && a.Kind == b.Kind && a.Target == b.Target &&
		a.Member == b.Member && a.Role == b.Role && a.Title == b.Title &&
		a.ReactionKey == b.ReactionKey && a.ContentType == b.ContentType &&
		bytes.Equal(a.Body, b.Body)
}

// PayloadHash is a digest of what [SamePayload] compares. The server keeps it
// for ops whose body it erased, so a late retry of such an op is still
// recognised as the same op.
func PayloadHash(o *Op) [16]byte {
	h := sha256.New()
	var buf [binary.MaxVarintLen64]byte
	writeBytes := func(b []byte) {
		h.Write(buf[:binary.PutUvarint(buf[:], uint64(len(b)))])
		h.Write(b)
	}
	h.Write(o.Dot.Device[:])
	h.Write(buf[:binary.PutUvarint(buf[:], o.Dot.N)])
	h.Write([]byte{byte(o.Kind), byte(o.Role)})
	h.Write(o.Target[:])
	h.Write(o.Member[:])
	writeBytes([]byte(o.Title))
	writeBytes([]byte(o.ReactionKey))
	writeBytes([]byte(o.ContentType))
	writeBytes(o.Body)
	var out [16]byte
	copy(out[:], h.Sum(nil))
	return out
}
