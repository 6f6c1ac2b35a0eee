package h2

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/net/http2/hpack"
)

// HPACK (RFC 7541), the two halves a server needs, each as small as the
// connection's life makes it matter. x/net's Decoder keeps two maps per
// connection beside its dynamic table, to find entries by name and value,
// which only an encoder needs: with a connection per device, those maps
// were 0.7 KB of every idle device. And since responses are never indexed
// (see encodeField), encoding needs no state at all.

// field is an entry of the static or a dynamic table.
type field struct{ name, value string }

// size is an entry's size as RFC 7541 section 4.1 counts it.
func (f field) size() int { return len(f.name) + len(f.value) + 32 }

// decoder decodes the header blocks of one connection's requests.
type decoder struct {
	dyn       []field // the dynamic table, its newest entry last
	size      int     // of the dynamic table's entries
	max       int     // the table's size as the peer last set it
	limit     int     // the size our SETTINGS allow the peer
	maxString int     // the longest name or value accepted, decoded
	changed   bool    // the block being decoded changed the table
}

var (
	errTruncated    = errors.New("a header block ends inside a field")
	errIntOverflow  = errors.New("an integer too large")
	errStringLength = errors.New("a name or value longer than the server accepts")
	errLateUpdate   = errors.New("a dynamic table size update after the block's first field")
)

// decode decodes one whole header block, calling emit for each field in
// order. A block that fails to decode leaves the table unusable: the
// caller must end the connection (COMPRESSION_ERROR).
func (d *decoder) decode(p []byte, emit func(hpack.HeaderField)) error {
	// The block changes the table in a pooled array, and the table moves
	// to an array of its size only if the block changed it. Clients add
	// the fields of their first requests and then refer to them for the
	// connection's life: grown by doubling, a Connect client's nine
	// entries left 1 KB of garbage and an array of sixteen.
	scratch := tables.Get().(*[]field)
	held := d.dyn
	d.dyn, d.changed = append((*scratch)[:0], held...), false
	err := d.decodeFields(p, emit)
	switch {
	case err != nil || len(d.dyn) == 0:
		d.dyn = nil // on an error, the connection ends
	case d.changed:
		d.dyn = slices.Clone(d.dyn)
	default:
		d.dyn = held
	}
	clear((*scratch)[:cap(*scratch)])
	tables.Put(scratch)
	return err
}

// tables holds the arrays in which header blocks change their
// connection's table.
var tables = sync.Pool{New: func() any { t := make([]field, 0, 64); return &t }}

func (d *decoder) decodeFields(p []byte, emit func(hpack.HeaderField)) error {
	fields := false // a field was decoded: a size update may no longer come
	for len(p) > 0 {
		b := p[0]
		switch {
		case b&0x80 != 0: // indexed field, section 6.1
			i, rest, err := readInt(p, 7)
			if err != nil {
				return err
			}
			p = rest
			f, err := d.at(i)
			if err != nil {
				return err
			}
			fields = true
			emit(hpack.HeaderField{Name: f.name, Value: f.value})
		case b&0xe0 == 0x20: // dynamic table size update, section 6.3
			if fields {
				return errLateUpdate
			}
			n, rest, err := readInt(p, 5)
			if err != nil {
				return err
			}
			p = rest
			if n > uint64(d.limit) {
				return fmt.Errorf("a dynamic table size update to %d, over the %d allowed", n, d.limit)
			}
			d.max = int(n)
			d.evict(0)
		default: // a literal, sections 6.2.1 to 6.2.3
			prefix, index, sensitive := uint8(4), false, b&0xf0 == 0x10
			if b&0xc0 == 0x40 {
				prefix, index = 6, true
			}
			i, rest, err := readInt(p, prefix)
			if err != nil {
				return err
			}
			p = rest
			var f field
			if i > 0 {
				nf, err := d.at(i)
				if err != nil {
					return err
				}
				f.name = nf.name
			} else if f.name, p, err = d.readString(p); err != nil {
				return err
			}
			if f.value, p, err = d.readString(p); err != nil {
				return err
			}
			if index {
				d.add(f)
			}
			fields = true
			emit(hpack.HeaderField{Name: f.name, Value: f.value, Sensitive: sensitive})
		}
	}
	return nil
}

// at returns the entry at index i of the static and dynamic tables.
func (d *decoder) at(i uint64) (field, error) {
	switch {
	case i == 0:
		return field{}, errors.New("index 0")
	case i <= uint64(len(staticTable)):
		return staticTable[i-1], nil
	case i-uint64(len(staticTable)) <= uint64(len(d.dyn)):
		return d.dyn[len(d.dyn)-int(i-uint64(len(staticTable)))], nil
	}
	return field{}, fmt.Errorf("index %d, past the %d entries of the tables", i, len(staticTable)+len(d.dyn))
}

// add inserts f into the dynamic table, evicting the oldest entries to
// make room for it (section 4.4).
func (d *decoder) add(f field) {
	if f.size() > d.max {
		d.evict(d.max) // all of them; f is not added
		return
	}
	d.evict(f.size())
	d.dyn, d.changed = append(d.dyn, f), true
	d.size += f.size()
}

// evict removes the oldest entries until room bytes more fit in the
// table's size.
func (d *decoder) evict(room int) {
	n := 0
	for d.size+room > d.max && n < len(d.dyn) {
		d.size -= d.dyn[n].size()
		d.dyn[n] = field{}
		n++
	}
	if n > 0 {
		d.dyn, d.changed = d.dyn[n:], true
	}
}

// readString reads a string literal (section 5.2).
func (d *decoder) readString(p []byte) (string, []byte, error) {
	if len(p) == 0 {
		return "", nil, errTruncated
	}
	huffman := p[0]&0x80 != 0
	n, p, err := readInt(p, 7)
	if err != nil {
		return "", nil, err
	}
	if n > uint64(len(p)) {
		return "", nil, errTruncated
	}
	if n > uint64(d.maxString) {
		return "", nil, errStringLength
	}
	raw, p := p[:n], p[n:]
	if !huffman {
		return string(raw), p, nil
	}
	s, err := hpack.HuffmanDecodeToString(raw)
	if err != nil {
		return "", nil, err
	}
	if len(s) > d.maxString {
		return "", nil, errStringLength
	}
	return s, p, nil
}

// readInt reads an integer with an n-bit prefix from the first byte of p
// (section 5.1). Integers over 2^32 are refused: nothing in a header
// block is that large.
func readInt(p []byte, n uint8) (uint64, []byte, error) {
	if len(p) == 0 {
		return 0, nil, errTruncated
	}
	mask := uint64(1)<<n - 1
	i := uint64(p[0]) & mask
	p = p[1:]
	if i < mask {
		return i, p, nil
	}
	for shift := uint(0); shift <= 28; shift += 7 {
		if len(p) == 0 {
			return 0, nil, errTruncated
		}
		b := p[0]
		p = p[1:]
		i += uint64(b&0x7f) << shift
		if i > 1<<32 {
			break
		}
		if b&0x80 == 0 {
			return i, p, nil
		}
	}
	return 0, nil, errIntOverflow
}

// appendInt appends i with an n-bit prefix, the prefix's other bits
// from first.
func appendInt(dst []byte, first byte, n uint8, i uint64) []byte {
	mask := uint64(1)<<n - 1
	if i < mask {
		return append(dst, first|byte(i))
	}
	dst = append(dst, first|byte(mask))
	for i -= mask; i >= 0x80; i >>= 7 {
		dst = append(dst, byte(i)|0x80)
	}
	return append(dst, byte(i))
}

// appendString appends a string literal, Huffman-coded when that is
// shorter.
func appendString(dst []byte, s string) []byte {
	if h := hpack.HuffmanEncodeLength(s); h < uint64(len(s)) {
		dst = appendInt(dst, 0x80, 7, h)
		return hpack.AppendHuffmanString(dst, s)
	}
	dst = appendInt(dst, 0, 7, uint64(len(s)))
	return append(dst, s...)
}

// appendField encodes a response field. Responses are never indexed, as
// nginx does: a dynamic table would hold each connection's few response
// headers (and a new Date each second) for its life, 0.8 KB per idle
// device, to save some 100 bytes per response after a connection's
// first. So a field is the static table's entry when it has the name and
// value, and otherwise a literal without indexing (section 6.2.2), its
// name from the static table when it is there.
func appendField(dst []byte, name, value string) []byte {
	nameIndex := 0
	for i, f := range staticTable {
		if f.name != name {
			continue
		}
		if f.value == value {
			return appendInt(dst, 0x80, 7, uint64(i+1))
		}
		if nameIndex == 0 {
			nameIndex = i + 1
		}
	}
	dst = appendInt(dst, 0, 4, uint64(nameIndex))
	if nameIndex == 0 {
		dst = appendString(dst, name)
	}
	return appendString(dst, value)
}

// staticTable is RFC 7541's Appendix A: index i is staticTable[i-1].
var staticTable = [...]field{
	{":authority", ""},
	{":method", "GET"},
	{":method", "POST"},
	{":path", "/"},
	{":path", "/index.html"},
	{":scheme", "http"},
	{":scheme", "https"},
	{":status", "200"},
	{":status", "204"},
	{":status", "206"},
	{":status", "304"},
	{":status", "400"},
	{":status", "404"},
	{":status", "500"},
	{"accept-charset", ""},
	{"accept-encoding", "gzip, deflate"},
	{"accept-language", ""},
	{"accept-ranges", ""},
	{"accept", ""},
	{"access-control-allow-origin", ""},
	{"age", ""},
	{"allow", ""},
	{"authorization", ""},
	{"cache-control", ""},
	{"content-disposition", ""},
	{"content-encoding", ""},
	{"content-language", ""},
	{"content-length", ""},
	{"content-location", ""},
	{"content-range", ""},
	{"content-type", ""},
	{"cookie", ""},
	{"date", ""},
	{"etag", ""},
	{"expect", ""},
	{"expires", ""},
	{"from", ""},
	{"host", ""},
	{"if-match", ""},
	{"if-modified-since", ""},
	{"if-none-match", ""},
	{"if-range", ""},
	{"if-unmodified-since", ""},
	{"last-modified", ""},
	{"link", ""},
	{"location", ""},
	{"max-forwards", ""},
	{"proxy-authenticate", ""},
	{"proxy-authorization", ""},
	{"range", ""},
	{"referer", ""},
	{"refresh", ""},
	{"retry-after", ""},
	{"server", ""},
	{"set-cookie", ""},
	{"strict-transport-security", ""},
	{"transfer-encoding", ""},
	{"user-agent", ""},
	{"vary", ""},
	{"via", ""},
	{"www-authenticate", ""},
}
