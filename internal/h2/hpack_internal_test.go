package h2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
)

// TestDecoderAgreesWithXNet: header blocks from x/net's encoder, on one
// connection, with every kind of field it writes (indexed, literals with
// and without indexing, never indexed, Huffman or not) and table size
// updates that evict, decode to the fields that went in, as x/net's own
// decoder decodes them.
func TestDecoderAgreesWithXNet(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	names := []string{":method", ":path", ":authority", "content-type", "authorization", "user-agent",
		"x-custom", "connect-protocol-version", "grpc-timeout", "accept-encoding", "x-ÿ-raw"}
	values := []string{"", "POST", "/ferry.v1.SyncService/Sync", "application/connect+proto",
		"gzip, deflate", "1", strings.Repeat("long value ", 40), "\x7f\x80binary\xff"}
	for conn := range 50 {
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		ours := decoder{max: defaultTable, limit: defaultTable, maxString: 1 << 20}
		var theirs []hpack.HeaderField
		ref := hpack.NewDecoder(defaultTable, func(f hpack.HeaderField) { theirs = append(theirs, f) })
		for b := range 30 {
			if rng.IntN(5) == 0 {
				enc.SetMaxDynamicTableSize(uint32(rng.IntN(defaultTable + 1)))
			}
			var in []hpack.HeaderField
			// At least one field: x/net's decoder refuses the two size
			// updates its encoder sends after an empty block, though
			// RFC 7541 (section 4.2) allows them.
			for range 1 + rng.IntN(12) {
				f := hpack.HeaderField{Name: names[rng.IntN(len(names))], Value: values[rng.IntN(len(values))], Sensitive: rng.IntN(6) == 0}
				if rng.IntN(3) == 0 {
					f.Value += string(rune('a' + rng.IntN(26))) // new entries, to evict old ones
				}
				in = append(in, f)
				if err := enc.WriteField(f); err != nil {
					t.Fatal(err)
				}
			}
			var got []hpack.HeaderField
			if err := ours.decode(block.Bytes(), func(f hpack.HeaderField) { got = append(got, f) }); err != nil {
				t.Fatalf("connection %d, block %d: %v", conn, b, err)
			}
			theirs = theirs[:0]
			if _, err := ref.Write(block.Bytes()); err != nil || ref.Close() != nil {
				t.Fatalf("connection %d, block %d: x/net: %v, %v", conn, b, err, ref.Close())
			}
			if !slices.Equal(got, in) || !slices.Equal(got, theirs) {
				t.Fatalf("connection %d, block %d:\nin     %q\nours   %q\nx/net  %q", conn, b, in, got, theirs)
			}
			block.Reset()
		}
		if ours.size > ours.max {
			t.Fatalf("connection %d: the table holds %d bytes, over its size of %d", conn, ours.size, ours.max)
		}
	}
}

// TestDecoderRefusesMalformedBlocks: each malformed block is an error (the
// connection's COMPRESSION_ERROR), never a field.
func TestDecoderRefusesMalformedBlocks(t *testing.T) {
	huffman := func(s string) []byte {
		return append([]byte{0x80 | byte(hpack.HuffmanEncodeLength(s))}, hpack.AppendHuffmanString(nil, s)...)
	}
	for _, c := range []struct {
		name  string
		block []byte
	}{
		{"index 0", []byte{0x80}},
		{"an index past the static table, the dynamic one empty", []byte{0x80 | 62}},
		{"a literal's name index past the tables", []byte{0x0f, 0x30, 0x01, 'x'}},
		{"a size update over SETTINGS_HEADER_TABLE_SIZE", []byte{0x3f, 0xe2, 0x1f}}, // 4097
		{"a size update after a field", []byte{0x82, 0x20}},
		{"a truncated integer", []byte{0xff}},
		{"an integer past 2^32", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0x7f}},
		{"an integer of too many bytes", []byte{0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00}},
		{"a string past the block's end", []byte{0x00, 0x05, 'a', 'b'}},
		{"a literal without its value", []byte{0x00, 0x01, 'a'}},
		{"a string over the longest accepted", append([]byte{0x00, 0x7f, 0x02}, make([]byte, 129+2)...)},
		{"a Huffman string decoding over the longest accepted", append([]byte{0x00, 0x01, 'a'}, huffman(strings.Repeat("0", 200))...)},
		{"Huffman padding other than EOS's high bits", []byte{0x00, 0x01, 'a', 0x81, 0x00}},
	} {
		d := decoder{max: defaultTable, limit: defaultTable, maxString: 128}
		var got []hpack.HeaderField
		if err := d.decode(c.block, func(f hpack.HeaderField) { got = append(got, f) }); err == nil {
			t.Errorf("%s: decoded %q", c.name, got)
		}
	}
}

// TestDecoderTableSize: an entry larger than the whole table empties it and
// is not added; a size update evicts the oldest entries.
func TestDecoderTableSize(t *testing.T) {
	d := decoder{max: 100, limit: defaultTable, maxString: 1 << 10}
	lit := func(name, value string) []byte { // literal with incremental indexing, new name
		b := []byte{0x40, byte(len(name))}
		b = append(append(b, name...), byte(len(value)))
		return append(b, value...)
	}
	emit := func(hpack.HeaderField) {}
	for _, b := range [][]byte{lit("a", "1"), lit("b", "2")} { // 34 bytes each
		if err := d.decode(b, emit); err != nil {
			t.Fatal(err)
		}
	}
	if len(d.dyn) != 2 || d.size != 68 {
		t.Fatalf("table %q of %d bytes, want a and b, 68", d.dyn, d.size)
	}
	if err := d.decode(lit("c", "3"), emit); err != nil || len(d.dyn) != 2 || d.dyn[0].name != "b" || d.size != 68 {
		t.Fatalf("after c: %v, table %q of %d bytes, want b and c", err, d.dyn, d.size)
	}
	// Two size updates at the block's start (RFC 7541, section 4.2): to 20
	// bytes, which evicts both, and to 50.
	if err := d.decode([]byte{0x20 | 20, 0x3f, 50 - 31, 0x80 | 62}, emit); err == nil {
		t.Fatalf("index 62 found in a table %q sized down to 20", d.dyn)
	}
	if d.size != 0 || len(d.dyn) != 0 || d.max != 50 {
		t.Fatalf("table %q of %d bytes, size %d, after size updates to 20 and 50", d.dyn, d.size, d.max)
	}
	d.max = 100
	if err := d.decode(lit("big", strings.Repeat("x", 70)), emit); err != nil || len(d.dyn) != 0 {
		t.Fatalf("an entry over the table's size: %v, table %q", err, d.dyn)
	}
}

// TestAppendField: the encoder's fields decode, with x/net's decoder, to
// what went in, each block alone (nothing is indexed), using the static
// table where it has the field or its name.
func TestAppendField(t *testing.T) {
	fields := [][2]string{
		{":status", "200"}, // static: name and value
		{":status", "429"}, // static name
		{"content-type", "application/connect+proto"},
		{"x-ferry", "{|}~{|}~"}, // longer in Huffman: sent raw
		{"grpc-message", strings.Repeat("a long message ", 20)},
		{"date", "Thu, 03 Dec 2026 10:48:40 GMT"},
	}
	var block []byte
	for _, f := range fields {
		block = appendField(block, f[0], f[1])
	}
	if block[0] != 0x80|8 {
		t.Errorf(":status 200 encoded as %#x, want index 8", block[0])
	}
	dec := hpack.NewDecoder(defaultTable, nil)
	got, err := dec.DecodeFull(block)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dec.DecodeFull([]byte{0x80 | 62}); err == nil {
		t.Error("the block added to the dynamic table")
	}
	if len(got) != len(fields) {
		t.Fatalf("%d fields decoded, want %d", len(got), len(fields))
	}
	for i, f := range fields {
		if got[i].Name != f[0] || got[i].Value != f[1] {
			t.Errorf("field %d: %s: %q, want %s: %q", i, got[i].Name, got[i].Value, f[0], f[1])
		}
	}
}

// TestDecoderTableHeldTight: after a block that adds fields, the table's
// array is of about their number, not the doubling growth's.
func TestDecoderTableHeldTight(t *testing.T) {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := range 9 {
		_ = enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-field-%d", i), Value: "v"})
	}
	d := decoder{max: defaultTable, limit: defaultTable, maxString: 1 << 10}
	if err := d.decode(block.Bytes(), func(hpack.HeaderField) {}); err != nil {
		t.Fatal(err)
	}
	if len(d.dyn) != 9 || cap(d.dyn) >= 9+4 {
		t.Fatalf("a table of %d entries in an array of %d", len(d.dyn), cap(d.dyn))
	}
}
