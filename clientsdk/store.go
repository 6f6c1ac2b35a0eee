package clientsdk

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/clientsdk/internal/kv"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// The replica's keys: a one-byte table, then fixed-width fields. Values
// start with a format version byte; records are JSON, ops their wire form.
const (
	tMeta    byte = 0x01 // name -> value
	tConv    byte = 0x10 // conv -> convRecord
	tOp      byte = 0x11 // conv, seq -> ferryv1.Op
	tOpID    byte = 0x12 // conv, op id -> seq
	tOutbox  byte = 0x20 // local seq -> outboxEntry
	tFailed  byte = 0x21 // local seq -> failedEntry
	tUser    byte = 0x30 // user -> userRecord
	tMembers byte = 0x31 // conv -> []memberRecord
)

const recordVersion byte = 1

func metaKey(name string) []byte { return append([]byte{tMeta}, name...) }

func idKey(t byte, id ulid.ULID) []byte { return append([]byte{t}, id[:]...) }

func opKey(conv ulid.ULID, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(idKey(tOp, conv), seq)
}

func opIDKey(conv, id ulid.ULID) []byte { return append(idKey(tOpID, conv), id[:]...) }

func seqKey(t byte, n uint64) []byte { return binary.BigEndian.AppendUint64([]byte{t}, n) }

func prefixEnd(p []byte) []byte {
	end := slices.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i]++; end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}

func encodeJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("clientsdk: encode record: %v", err)) // only unencodable types fail
	}
	return append([]byte{recordVersion}, b...)
}

var errCorrupt = errors.New("ferry: local store record is corrupt")

func decodeJSON(b []byte, v any) error {
	if len(b) == 0 || b[0] != recordVersion {
		return fmt.Errorf("%w: unknown format version", errCorrupt)
	}
	if err := json.Unmarshal(b[1:], v); err != nil {
		return fmt.Errorf("%w: %v", errCorrupt, err)
	}
	return nil
}

func encodeOp(op *ferryv1.Op) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(op)
	if err != nil {
		panic(fmt.Sprintf("clientsdk: encode op: %v", err))
	}
	return append([]byte{recordVersion}, b...)
}

func decodeOp(b []byte) (*ferryv1.Op, error) {
	if len(b) == 0 || b[0] != recordVersion {
		return nil, fmt.Errorf("%w: unknown op format version", errCorrupt)
	}
	op := &ferryv1.Op{}
	if err := proto.Unmarshal(b[1:], op); err != nil {
		return nil, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	return op, nil
}

// credentials are what the device needs to act as itself.
type credentials struct {
	Server   string `json:"server"`
	User     string `json:"user"`
	Device   string `json:"device"`
	Username string `json:"username"`
	Token    string `json:"token"`
	// Refused: the server refused Token (the device was revoked, or the
	// server's store does not know it), so Register and Login may replace
	// these credentials without a Logout, in this process or a later one.
	Refused bool `json:"refused,omitempty"`
}

// convRecord is what the replica knows of a conversation besides its ops.
type convRecord struct {
	Title   string       `json:"title"`
	Role    ferryv1.Role `json:"role"`
	Removed bool         `json:"removed,omitempty"`
	Head    uint64       `json:"head"` // highest seq the user can read, as the server last said
	// InfoHead is the head the conversation's last info gave: what the
	// device knows it must hold. Seqs above it that it lacks (others' ops
	// of a round still coming, under the device's own just accepted) are
	// not a hole a page stops at.
	InfoHead  uint64          `json:"info_head,omitempty"`
	Unread    uint64          `json:"unread"` // as the server last said
	Delivered uint64          `json:"delivered"`
	Read      uint64          `json:"read"`
	Receipts  []receiptRecord `json:"receipts,omitempty"`
	Members   uint32          `json:"members"`
	// NoReceipts: the members do not see each other's markers, so this
	// device's delivered marker can wait (see wakeAcks).
	NoReceipts bool `json:"no_receipts,omitempty"`
	// NextDot is the dot this device gives its next op in the conversation.
	NextDot uint64 `json:"next_dot"`
	// Ranges are the seq ranges held, sorted and disjoint, inclusive.
	Ranges [][2]uint64 `json:"ranges,omitempty"`
	// AckedDelivered and AckedRead are the markers last sent to the server.
	AckedDelivered uint64 `json:"acked_delivered"`
	AckedRead      uint64 `json:"acked_read"`
	// ReadWanted is a read marker asked for and not yet acknowledged.
	ReadWanted uint64 `json:"read_wanted,omitempty"`
	// Changed orders the conversation list: the device's counter
	// (Device.changed) when the conversation last had activity (it is
	// new, has new ops, or the user was removed), not marker moves.
	Changed uint64 `json:"changed"`
}

type receiptRecord struct {
	User      string `json:"user"`
	Delivered uint64 `json:"delivered"`
	Read      uint64 `json:"read"`
}

// prefix is the highest seq such that every seq up to it is held.
func (c *convRecord) prefix() uint64 {
	if len(c.Ranges) > 0 && c.Ranges[0][0] == 1 {
		return c.Ranges[0][1]
	}
	return 0
}

// holds reports whether seq is held.
func (c *convRecord) holds(seq uint64) bool {
	for _, r := range c.Ranges {
		if seq >= r[0] && seq <= r[1] {
			return true
		}
	}
	return false
}

// runStart is the first seq of the run of held seqs that ends at seq,
// where a seq above known that is not held counts as held: the seqs from
// it through seq are all held or above known. It is seq+1 when seq is
// neither.
func (c *convRecord) runStart(seq, known uint64) uint64 {
	lo := seq + 1 // the run so far: lo..seq
	for i := len(c.Ranges) - 1; i >= 0; i-- {
		r := c.Ranges[i]
		if r[0] > seq {
			continue
		}
		if top := min(r[1], seq); top+1 < lo && top+1 <= known {
			return lo // top+1..lo-1 are missing, some at or below known
		}
		lo = r[0]
	}
	return lo
}

// addRange records that seqs lo..hi are held, merging ranges.
func (c *convRecord) addRange(lo, hi uint64) {
	rs := append(c.Ranges, [2]uint64{lo, hi})
	slices.SortFunc(rs, func(a, b [2]uint64) int {
		switch {
		case a[0] < b[0]:
			return -1
		case a[0] > b[0]:
			return 1
		}
		return 0
	})
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r[0] <= out[n-1][1]+1 {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	c.Ranges = out
}

// missingBelow reports whether any seq below hi is not held: older
// messages are still loading.
func (c *convRecord) missingBelow(hi uint64) bool { return hi > 1 && c.prefix() < hi-1 }

// outboxEntry is an op waiting for the server's answer.
type outboxEntry struct {
	Conv     string `json:"conv"`
	Op       []byte `json:"op"` // ferryv1.Op, wire form
	Created  int64  `json:"created_ms"`
	Attempts int    `json:"attempts"`
}

// failedEntry is an op the server rejected for good.
type failedEntry struct {
	Conv    string `json:"conv"`
	Op      []byte `json:"op"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	At      int64  `json:"at_ms"`
}

type userRecord struct {
	Username    string `json:"username"`
	DisplayName string `json:"display_name"`
}

type memberRecord struct {
	User string       `json:"user"`
	Role ferryv1.Role `json:"role"`
}

// getJSON reads a JSON record; it reports false when the key is missing.
func getJSON(db *kv.DB, key []byte, v any) (bool, error) {
	b, err := db.Get(key)
	if errors.Is(err, kv.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, decodeJSON(b, v)
}

// scanPrefix calls fn for every key with prefix p, in order.
func scanPrefix(db *kv.DB, p []byte, fn func(k, v []byte) error) (err error) {
	it, err := db.Iter(p, prefixEnd(p))
	if err != nil {
		return err
	}
	// Closed however fn returns: an open iterator holds the replica's
	// Close.
	defer func() { err = errors.Join(err, it.Close()) }()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.Value()
		if err == nil {
			err = fn(it.Key(), v)
		}
		if err != nil {
			return err
		}
	}
	return nil
}
