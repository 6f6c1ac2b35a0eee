// Package keys encodes Ferry's Pebble keys.
//
// Every key starts with a one-byte table prefix, followed by fixed-width
// big-endian fields, so that byte order is the order the engine scans in:
// ops of a conversation by seq, a user's feed by position, and so on. IDs are
// 16-byte ULIDs (time-ordered), numbers 8-byte big-endian.
//
// The table bytes are part of the on-disk format: never renumber them.
package keys

import (
	"encoding/binary"

	"github.com/oklog/ulid/v2"
)

// Table prefixes. Comments give the key fields and what the value holds.
const (
	TMeta     byte = 0x01 // name -> meta value (epoch, feed position)
	TUser     byte = 0x02 // user -> user record
	TUsername byte = 0x03 // lower-case username -> user id
	TDevice   byte = 0x04 // user, device -> device record
	TDeviceOf byte = 0x05 // device -> user id
	TToken    byte = 0x06 // sha256(token) -> user id, device id
	TUsage    byte = 0x07 // user -> what the user's ops count against the quota (format 6)
	TBlock    byte = 0x08 // user, blocked user -> empty: those who may not add user to a conversation
	TQuota    byte = 0x09 // user -> the user's quota in bytes, in place of the server's (format 10)

	TConv     byte = 0x10 // conv -> conversation record
	TMember   byte = 0x11 // conv, user -> member record of a current member (format 8: role not none)
	TUserConv byte = 0x12 // user, conv -> empty: the user's conversations
	TOp       byte = 0x13 // conv, seq -> op record: the log
	TOpID     byte = 0x14 // conv, op id -> seq
	TDot      byte = 0x15 // conv, device, n -> seq
	TEdit     byte = 0x16 // conv, target op id, seq -> empty: edits of a message
	TFormer   byte = 0x17 // conv, user -> member record of a member who left or was removed (format 8)

	TFeed     byte = 0x20 // user, pos, conv -> empty: conversation-wide changes
	TUFeed    byte = 0x21 // user, pos, conv -> empty: changes only this user sees
	TUFeedIdx byte = 0x22 // user, conv -> pos of the user's TUFeed entry
	TShared   byte = 0x23 // user, conv -> empty: a shared-feed conversation the user is in

	TDevMark  byte = 0x30 // conv, device -> device marker record
	TUserMark byte = 0x31 // conv, user -> user marker record
	TReceipts byte = 0x32 // conv -> empty: receipts not yet in the members' feeds
)

// Meta key names.
const (
	MetaEpoch   = "epoch"
	MetaFeedPos = "feedpos"
	MetaFormat  = "format"
	// MetaFormerMove is set, with format 8, while the upgrade moves the
	// records of former members to TFormer (engine.moveFormerMembers).
	MetaFormerMove = "formermove"
	// MetaSealSecret is 32 random bytes, from which each epoch's key for
	// sealing feed positions is derived (engine.FeedSeal), then the last
	// feed position the store's server sent plain (8 bytes, big-endian).
	MetaSealSecret = "sealsecret"
)

// Meta is the key of a meta value.
func Meta(name string) []byte { return append([]byte{TMeta}, name...) }

// key starts a key of table t with room for n more bytes: a key made in
// one allocation, where appending past its capacity would take more.
func key(t byte, n int) []byte {
	b := make([]byte, 1, 1+n)
	b[0] = t
	return b
}

func u64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// ID1 is the key of a table keyed by one id: TUser, TDeviceOf, TConv.
func ID1(t byte, a ulid.ULID) []byte { return id1(t, a, 0) }

// id1 is ID1 with room for more bytes.
func id1(t byte, a ulid.ULID, more int) []byte { return append(key(t, 16+more), a[:]...) }

// ID2 is the key of a table keyed by two ids: TDevice, TBlock, TMember, TFormer, TUserConv,
// TOpID, TUFeedIdx, TShared, TDevMark, TUserMark.
func ID2(t byte, a, b ulid.ULID) []byte { return id2(t, a, b, 0) }

// id2 is ID2 with room for more bytes.
func id2(t byte, a, b ulid.ULID, more int) []byte {
	k := append(key(t, 32+more), a[:]...)
	return append(k, b[:]...)
}

// Username is the key of a username's entry.
func Username(lower string) []byte { return append(key(TUsername, len(lower)), lower...) }

// Token is the key of a token hash.
func Token(hash [32]byte) []byte { return append(key(TToken, 32), hash[:]...) }

// Op is the key of the op at seq in conv.
func Op(conv ulid.ULID, seq uint64) []byte { return u64(id1(TOp, conv, 8), seq) }

// Dot is the key of dot (device, n) in conv.
func Dot(conv, device ulid.ULID, n uint64) []byte { return u64(id2(TDot, conv, device, 8), n) }

// Edit is the key recording that the op at seq edits target.
func Edit(conv, target ulid.ULID, seq uint64) []byte { return u64(id2(TEdit, conv, target, 8), seq) }

// Feed is the key of a feed entry in table t (TFeed or TUFeed).
func Feed(t byte, user ulid.ULID, pos uint64, conv ulid.ULID) []byte {
	k := u64(id1(t, user, 8+16), pos)
	return append(k, conv[:]...)
}

// Prefix returns the bounds [lower, upper) of all keys that start with p.
func Prefix(p []byte) (lower, upper []byte) {
	upper = append([]byte(nil), p...)
	for i := len(upper) - 1; i >= 0; i-- {
		upper[i]++
		if upper[i] != 0 {
			return p, upper[:i+1]
		}
	}
	return p, nil // p is all 0xff: no upper bound
}

// OpSpan returns the bounds of the ops of conv with from <= seq < to.
func OpSpan(conv ulid.ULID, from, to uint64) (lower, upper []byte) {
	return Op(conv, from), Op(conv, to)
}

// FeedSpan returns the bounds of user's entries in table t with
// after < pos <= through.
func FeedSpan(t byte, user ulid.ULID, after, through uint64) (lower, upper []byte) {
	return u64(id1(t, user, 8), after+1), u64(id1(t, user, 8), through+1)
}

// ParseID returns the id at byte offset off of key k (after the table byte,
// offset 1 is the first field).
func ParseID(k []byte, off int) (ulid.ULID, bool) {
	var id ulid.ULID
	if len(k) < off+16 {
		return id, false
	}
	copy(id[:], k[off:off+16])
	return id, true
}

// ParseU64 returns the number at byte offset off of key k.
func ParseU64(k []byte, off int) (uint64, bool) {
	if len(k) < off+8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[off:]), true
}

// ParseOp splits an op key into its conversation and seq.
func ParseOp(k []byte) (conv ulid.ULID, seq uint64, ok bool) {
	if len(k) != 25 || k[0] != TOp {
		return conv, 0, false
	}
	conv, _ = ParseID(k, 1)
	seq, _ = ParseU64(k, 17)
	return conv, seq, true
}

// ParseDot splits a dot key.
func ParseDot(k []byte) (conv, device ulid.ULID, n uint64, ok bool) {
	if len(k) != 41 || k[0] != TDot {
		return conv, device, 0, false
	}
	conv, _ = ParseID(k, 1)
	device, _ = ParseID(k, 17)
	n, _ = ParseU64(k, 33)
	return conv, device, n, true
}

// ParseFeed splits a feed key of table TFeed or TUFeed.
func ParseFeed(k []byte) (user ulid.ULID, pos uint64, conv ulid.ULID, ok bool) {
	if len(k) != 41 || (k[0] != TFeed && k[0] != TUFeed) {
		return user, 0, conv, false
	}
	user, _ = ParseID(k, 1)
	pos, _ = ParseU64(k, 17)
	conv, _ = ParseID(k, 25)
	return user, pos, conv, true
}

// ParseID1 reads the id of a key of a table keyed by one id.
func ParseID1(k []byte) (a ulid.ULID, ok bool) {
	if len(k) != 17 {
		return a, false
	}
	a, _ = ParseID(k, 1)
	return a, true
}

// ParseID2 splits a key of a table keyed by two ids.
func ParseID2(k []byte) (a, b ulid.ULID, ok bool) {
	if len(k) != 33 {
		return a, b, false
	}
	a, _ = ParseID(k, 1)
	b, _ = ParseID(k, 17)
	return a, b, true
}

// ParseEdit splits an edit key.
func ParseEdit(k []byte) (conv, target ulid.ULID, seq uint64, ok bool) {
	if len(k) != 41 || k[0] != TEdit {
		return conv, target, 0, false
	}
	conv, _ = ParseID(k, 1)
	target, _ = ParseID(k, 17)
	seq, _ = ParseU64(k, 33)
	return conv, target, seq, true
}
