// Package record encodes the values Ferry stores in Pebble.
//
// Every value starts with a format version byte (currently 1), then the
// record's fields as bytes, uvarints, 16-byte ids and length-prefixed
// strings. Decoders copy what they return, because Pebble's value buffers
// are only valid until the iterator moves, and they reject anything
// malformed or trailing with an error wrapping [ErrCorrupt] rather than
// guessing.
package record

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
)

// Version is the format version byte written at the start of every value.
const Version byte = 1

// ErrCorrupt is wrapped by every decoding error.
var ErrCorrupt = errors.New("corrupt record")

type reader struct {
	b   []byte
	err error
	// dec, when set, is where bytes copies go (see OpDecoder).
	dec *OpDecoder
}

// newReader returns a reader by value: kept on the caller's stack, it costs
// no allocation per record.
func newReader(what string, b []byte) reader {
	if len(b) == 0 || b[0] != Version {
		return reader{err: fmt.Errorf("%w: %s: unknown format version", ErrCorrupt, what)}
	}
	return reader{b: b[1:]}
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: truncated %s", ErrCorrupt, what)
	}
}

func (r *reader) byte(what string) byte {
	if r.err != nil || len(r.b) < 1 {
		r.fail(what)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail(what)
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) id(what string) ulid.ULID {
	var id ulid.ULID
	if r.err != nil || len(r.b) < 16 {
		r.fail(what)
		return id
	}
	copy(id[:], r.b)
	r.b = r.b[16:]
	return id
}

// bytes reads a length-prefixed byte string and copies it.
func (r *reader) bytes(what string) []byte {
	n := r.uvarint(what)
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail(what)
		return nil
	}
	if n == 0 {
		return nil
	}
	v := r.copy(r.b[:n])
	r.b = r.b[n:]
	return v
}

// Arena chunks: an OpDecoder copies its first few bodies on their own,
// then into chunks that start at 4 KiB and double up to 64 KiB. Copies over
// an eighth of the largest chunk are made on their own.
const (
	arenaAfter    = 8
	arenaMinChunk = 4 << 10
	arenaMaxChunk = 64 << 10
)

func (r *reader) copy(b []byte) []byte {
	d := r.dec
	if d == nil || len(b) > arenaMaxChunk/8 {
		return append([]byte(nil), b...)
	}
	if d.copies++; d.copies <= arenaAfter {
		return append([]byte(nil), b...)
	}
	a := d.arena
	if cap(a)-len(a) < len(b) {
		a = make([]byte, 0, max(len(b), min(arenaMaxChunk, max(arenaMinChunk, 2*cap(a)))))
	}
	i := len(a)
	a = append(a, b...)
	d.arena = a
	return a[i:len(a):len(a)] // capped: an append to it cannot reach the next copy
}

func (r *reader) str(what string) string {
	n := r.uvarint(what)
	if r.err != nil || n > uint64(len(r.b)) {
		r.fail(what)
		return ""
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return intern(v)
}

// intern returns b as a string, without allocating for the content types
// nearly every message has.
func intern(b []byte) string {
	switch string(b) {
	case "":
		return ""
	case "text/plain":
		return "text/plain"
	case "text/markdown":
		return "text/markdown"
	case "application/json":
		return "application/json"
	}
	return string(b)
}

func (r *reader) done(what string) error {
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %s: %d trailing bytes", ErrCorrupt, what, len(r.b))
	}
	return r.err
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

const flagErased = 1

// Op is an op as stored: the op plus what the server derived when it
// accepted it.
type Op struct {
	model.Op
	// Messages is the number of message ops up to and including this one:
	// unread counts are differences of it.
	Messages uint64
	// Hash is model.PayloadHash of the op as accepted; kept only once its
	// body was erased, so that a retry can still be compared.
	Hash [16]byte
}

// AppendOp appends the encoding of op. The conversation and seq are not
// encoded: they are the key.
func AppendOp(b []byte, op *Op) []byte {
	b = append(b, Version, byte(op.Kind))
	var flags byte
	if op.Erased {
		flags |= flagErased
	}
	b = append(b, flags)
	b = append(b, op.Dot.Device[:]...)
	b = binary.AppendUvarint(b, op.Dot.N)
	b = append(b, op.User[:]...)
	b = append(b, op.ID[:]...)
	b = binary.AppendUvarint(b, op.Messages)
	switch op.Kind {
	case model.KindCreate, model.KindSetTitle:
		b = appendStr(b, op.Title)
	case model.KindMessage, model.KindEdit:
		if op.Kind == model.KindEdit {
			b = append(b, op.Target[:]...)
		}
		if op.Erased {
			b = append(b, op.Hash[:]...)
		} else {
			b = appendStr(b, op.ContentType)
			b = appendBytes(b, op.Body)
		}
	case model.KindDelete:
		b = append(b, op.Target[:]...)
	case model.KindReactionAdd, model.KindReactionRemove:
		b = append(b, op.Target[:]...)
		b = appendStr(b, op.ReactionKey)
	case model.KindMemberAdd, model.KindMemberRole:
		b = append(b, op.Member[:]...)
		b = append(b, byte(op.Role))
	case model.KindMemberRemove:
		b = append(b, op.Member[:]...)
	}
	return b
}

// DecodeOp decodes an op record stored under (conv, seq).
func DecodeOp(conv ulid.ULID, seq uint64, b []byte) (Op, error) {
	r := newReader("op", b)
	return decodeOp(&r, conv, seq)
}

// OpDecoder decodes runs of ops. After the first few, their bodies share
// chunks of up to 64 KiB rather than taking an allocation each, which
// halves the allocations of a catch-up read. A body keeps its whole chunk
// alive, so an OpDecoder suits ops that are sent and dropped together, not
// ops kept one by one. The zero value is ready to use.
type OpDecoder struct {
	arena  []byte
	copies int
}

// Decode decodes an op record stored under (conv, seq).
func (d *OpDecoder) Decode(conv ulid.ULID, seq uint64, b []byte) (Op, error) {
	r := newReader("op", b)
	r.dec = d
	return decodeOp(&r, conv, seq)
}

func decodeOp(r *reader, conv ulid.ULID, seq uint64) (Op, error) {
	var op Op
	op.Conv, op.Seq = conv, seq
	op.Kind = model.Kind(r.byte("op kind"))
	flags := r.byte("op flags")
	op.Erased = flags&flagErased != 0
	op.Dot.Device = r.id("op device")
	op.Dot.N = r.uvarint("op dot")
	op.User = r.id("op user")
	op.ID = r.id("op id")
	op.Messages = r.uvarint("op message count")
	if r.err == nil && (!op.Kind.Valid() || flags&^flagErased != 0) {
		return Op{}, fmt.Errorf("%w: op with kind %d and flags %#x", ErrCorrupt, op.Kind, flags)
	}
	switch op.Kind {
	case model.KindCreate, model.KindSetTitle:
		op.Title = r.str("title")
	case model.KindMessage, model.KindEdit:
		if op.Kind == model.KindEdit {
			op.Target = r.id("edit target")
		}
		if op.Erased {
			h := r.id("payload hash")
			op.Hash = h
		} else {
			op.ContentType = r.str("content type")
			op.Body = r.bytes("body")
		}
	case model.KindDelete:
		op.Target = r.id("delete target")
	case model.KindReactionAdd, model.KindReactionRemove:
		op.Target = r.id("reaction target")
		op.ReactionKey = r.str("reaction key")
	case model.KindMemberAdd, model.KindMemberRole:
		op.Member = r.id("member")
		op.Role = model.Role(r.byte("role"))
	case model.KindMemberRemove:
		op.Member = r.id("member")
	}
	if err := r.done("op"); err != nil {
		return Op{}, err
	}
	return op, nil
}

// Conv is a conversation's record: what the writer needs to append without
// scanning the log.
type Conv struct {
	Head     uint64 // highest seq
	FeedPos  uint64 // the feed position of the last conversation-wide change
	Messages uint64 // message ops in the log
	Members  uint32 // active members
	Title    string
	// SharedFeed: the conversation grew past Options.SharedFeedMembers, and
	// its members' feed entry is FeedPos itself (see TShared) rather than a
	// TFeed entry each. Never cleared.
	SharedFeed bool
	// EntryPos is where the members' own feed entries (TFeed) sit: FeedPos,
	// or a position a little below it, since a change need not move them
	// (the engine bounds FeedPos - EntryPos). A reader takes an entry at
	// EntryPos for one at FeedPos. Records written before it decode with
	// EntryPos = FeedPos.
	EntryPos uint64
	// MoveEntries: the next conversation-wide change moves the members'
	// entries to its own position rather than leave them at EntryPos,
	// since a removed member's entry may sit at EntryPos too, where a
	// reader could not tell it from a member's once FeedPos moved on. Set
	// by a change that removed a member; records written before EntryPos
	// decode with it set, as they do not tell.
	MoveEntries bool
}

// The flags byte that ends a conversation record. A record written before
// EntryPos ends without one, or with the byte 1 alone for a shared feed.
const (
	convShared      = 1 << 0
	convEntryPos    = 1 << 1 // FeedPos - EntryPos follows, as a uvarint
	convMoveEntries = 1 << 2
)

// AppendConv appends the encoding of c.
func AppendConv(b []byte, c *Conv) []byte {
	b = append(b, Version)
	b = binary.AppendUvarint(b, c.Head)
	b = binary.AppendUvarint(b, c.FeedPos)
	b = binary.AppendUvarint(b, c.Messages)
	b = binary.AppendUvarint(b, uint64(c.Members))
	b = appendStr(b, c.Title)
	flags := byte(convEntryPos)
	if c.SharedFeed {
		flags |= convShared
	}
	if c.MoveEntries {
		flags |= convMoveEntries
	}
	b = append(b, flags)
	return binary.AppendUvarint(b, c.FeedPos-c.EntryPos)
}

// DecodeConv decodes a conversation record.
func DecodeConv(b []byte) (Conv, error) {
	r := newReader("conversation", b)
	var c Conv
	c.Head = r.uvarint("head")
	c.FeedPos = r.uvarint("feed position")
	c.Messages = r.uvarint("message count")
	c.Members = uint32(r.uvarint("member count"))
	c.Title = r.str("title")
	c.EntryPos, c.MoveEntries = c.FeedPos, true
	if len(r.b) > 0 && r.err == nil {
		switch f := r.byte("flags"); {
		case f == convShared: // written before EntryPos
			c.SharedFeed = true
		case f&convEntryPos == 0 || f&^(convShared|convEntryPos|convMoveEntries) != 0:
			r.err = fmt.Errorf("%w: conversation: flags %#x", ErrCorrupt, f)
		default:
			c.SharedFeed, c.MoveEntries = f&convShared != 0, f&convMoveEntries != 0
			lag := r.uvarint("feed entries' lag")
			if lag > c.FeedPos && r.err == nil {
				r.err = fmt.Errorf("%w: conversation: feed entries %d below feed position %d", ErrCorrupt, lag, c.FeedPos)
			}
			c.EntryPos = c.FeedPos - lag
		}
	}
	return c, r.done("conversation")
}

// Member is one user's membership of a conversation.
type Member struct {
	Role  model.Role // RoleNone once removed
	Since uint64     // seq of the op that set Role
	// DetachedPos is, once the user was removed, the feed position of their
	// last feed entry for the conversation (their entry stops following the
	// conversation's); 0 while they are a member.
	DetachedPos uint64
	// Title is, once the user was removed, the conversation's title at the
	// removal: what they may still see. Empty while they are a member.
	Title string
}

// AppendMember appends the encoding of m.
func AppendMember(b []byte, m *Member) []byte {
	b = append(b, Version, byte(m.Role))
	b = binary.AppendUvarint(b, m.Since)
	b = binary.AppendUvarint(b, m.DetachedPos)
	return appendStr(b, m.Title)
}

// DecodeMember decodes a member record.
func DecodeMember(b []byte) (Member, error) {
	r := newReader("member", b)
	var m Member
	m.Role = model.Role(r.byte("role"))
	m.Since = r.uvarint("since")
	m.DetachedPos = r.uvarint("detached position")
	m.Title = r.str("title at removal")
	if r.err == nil && m.Role > model.RoleOwner {
		return Member{}, fmt.Errorf("%w: member role %d", ErrCorrupt, m.Role)
	}
	return m, r.done("member")
}

// User is an account.
type User struct {
	Username     string
	DisplayName  string
	PasswordHash string // PHC string of the password hash
	CreatedMs    int64  // Unix milliseconds
}

// AppendUser appends the encoding of u.
func AppendUser(b []byte, u *User) []byte {
	b = append(b, Version)
	b = appendStr(b, u.Username)
	b = appendStr(b, u.DisplayName)
	b = appendStr(b, u.PasswordHash)
	return binary.AppendUvarint(b, uint64(u.CreatedMs))
}

// DecodeUser decodes a user record.
func DecodeUser(b []byte) (User, error) {
	r := newReader("user", b)
	var u User
	u.Username = r.str("username")
	u.DisplayName = r.str("display name")
	u.PasswordHash = r.str("password hash")
	u.CreatedMs = int64(r.uvarint("created"))
	return u, r.done("user")
}

// Device is one of a user's devices.
type Device struct {
	Name      string
	CreatedMs int64
	Revoked   bool
	TokenHash [32]byte // sha256 of the device's token, to delete it on revoke
}

// AppendDevice appends the encoding of d.
func AppendDevice(b []byte, d *Device) []byte {
	b = append(b, Version)
	b = appendStr(b, d.Name)
	b = binary.AppendUvarint(b, uint64(d.CreatedMs))
	if d.Revoked {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return append(b, d.TokenHash[:]...)
}

// DecodeDevice decodes a device record.
func DecodeDevice(b []byte) (Device, error) {
	r := newReader("device", b)
	var d Device
	d.Name = r.str("device name")
	d.CreatedMs = int64(r.uvarint("created"))
	switch r.byte("revoked") {
	case 0:
	case 1:
		d.Revoked = true
	default:
		if r.err == nil {
			return Device{}, fmt.Errorf("%w: device revoked flag", ErrCorrupt)
		}
	}
	h1, h2 := r.id("token hash"), r.id("token hash")
	copy(d.TokenHash[:16], h1[:])
	copy(d.TokenHash[16:], h2[:])
	return d, r.done("device")
}

// Marker is a device's or a user's markers in one conversation.
type Marker struct {
	Delivered uint64
	// Read is the user's read position: users only. A device's marker
	// keeps none (0), since nothing reads it: the user's is the maximum
	// over their devices. Older builds kept one, which is ignored.
	Read uint64
	// PublicRead is the read position shown to other members: Read, except
	// for reads marked private. Users only; 0 for devices.
	PublicRead uint64
	// ReadMessages is the number of messages up to and including Read,
	// when ReadCounted: a reader then has a conversation's unread count
	// without reading the op at Read. Users only, and only where the writer
	// knew the count as it moved Read; 0 when not counted. Encoded as a
	// trailing uvarint, absent when not counted, so markers written before
	// it decode unchanged, as not counted.
	ReadMessages uint64
	ReadCounted  bool
}

// AppendMarker appends the encoding of m.
func AppendMarker(b []byte, m *Marker) []byte {
	b = append(b, Version)
	b = binary.AppendUvarint(b, m.Delivered)
	b = binary.AppendUvarint(b, m.Read)
	b = binary.AppendUvarint(b, m.PublicRead)
	if m.ReadCounted {
		b = binary.AppendUvarint(b, m.ReadMessages)
	}
	return b
}

// DecodeMarker decodes a marker record.
func DecodeMarker(b []byte) (Marker, error) {
	r := newReader("marker", b)
	var m Marker
	m.Delivered = r.uvarint("delivered")
	m.Read = r.uvarint("read")
	m.PublicRead = r.uvarint("public read")
	if len(r.b) > 0 && r.err == nil {
		m.ReadMessages, m.ReadCounted = r.uvarint("messages up to read"), true
	}
	return m, r.done("marker")
}

// AppendIDs appends the encoding of a pair of ids (a token's user and
// device).
func AppendIDs(b []byte, a, c ulid.ULID) []byte {
	b = append(b, Version)
	b = append(b, a[:]...)
	return append(b, c[:]...)
}

// DecodeIDs decodes a pair of ids.
func DecodeIDs(b []byte) (a, c ulid.ULID, err error) {
	r := newReader("id pair", b)
	a = r.id("first id")
	c = r.id("second id")
	return a, c, r.done("id pair")
}

// AppendID appends the encoding of one id.
func AppendID(b []byte, a ulid.ULID) []byte { return append(append(b, Version), a[:]...) }

// DecodeID decodes one id.
func DecodeID(b []byte) (ulid.ULID, error) {
	r := newReader("id", b)
	a := r.id("id")
	return a, r.done("id")
}

// AppendUint appends the encoding of a number (seqs, positions).
func AppendUint(b []byte, v uint64) []byte { return binary.AppendUvarint(append(b, Version), v) }

// AppendDotRun appends the encoding of a run of a device's dots in a
// conversation's dot index: count dots from the key's, at the seqs from
// seq on. A run of one is a number (AppendUint), as stores of format 4
// and before hold every dot.
func AppendDotRun(b []byte, seq, count uint64) []byte {
	b = AppendUint(b, seq)
	if count > 1 {
		b = binary.AppendUvarint(b, count)
	}
	return b
}

// DecodeDotRun decodes a run of dots: its first seq and how many dots.
func DecodeDotRun(b []byte) (seq, count uint64, err error) {
	r := newReader("dot run", b)
	seq, count = r.uvarint("dot run's seq"), 1
	if r.err == nil && len(r.b) > 0 {
		if count = r.uvarint("dot run's length"); r.err == nil && (count < 2 || seq+count < seq) {
			r.err = fmt.Errorf("%w: dot run of %d from seq %d", ErrCorrupt, count, seq)
		}
	}
	return seq, count, r.done("dot run")
}

// DecodeUint decodes a number.
func DecodeUint(b []byte) (uint64, error) {
	r := newReader("number", b)
	v := r.uvarint("number")
	return v, r.done("number")
}
