package compression

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/klauspost/compress/zstd"
)

func roundTrip(t testing.TB, c connect.Compressor, in []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := c.Compress(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(in); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := c.Decompress(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRoundTripConcurrently: messages of many sizes, some sent on every
// stream alike (as a live round is), each stream's own in between, round
// trip on streams that share a compressor and its pooled buffers, with
// and without a memo.
func TestRoundTripConcurrently(t *testing.T) {
	for _, c := range []connect.Compressor{NewZstd(), NewGzip(), NewZstd(WithMemo()), NewGzip(WithMemo())} {
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 50 {
					own := bytes.Repeat([]byte(fmt.Sprintf("message %d from %d; ", i, g)), i*10+1)
					shared := bytes.Repeat([]byte(fmt.Sprintf("round %d for all; ", i)), (50-i)*10+1)
					for _, in := range [][]byte{own, shared} {
						if out := roundTrip(t, c, in); !bytes.Equal(in, out) {
							t.Errorf("%s: round trip changed %d bytes", c.Name(), len(in))
						}
					}
				}
			})
		}
		wg.Wait()
	}
}

func TestZstdCompressesBatches(t *testing.T) {
	var batch bytes.Buffer
	for i := range 100 {
		fmt.Fprintf(&batch, `{"id":"01HF7YAT%018d","body":"see you at lunch, around %d?"}`, i, i%12)
	}
	var buf bytes.Buffer
	w, _ := NewZstd().Compress(&buf)
	_, _ = w.Write(batch.Bytes())
	_ = w.Close()
	if ratio := float64(buf.Len()) / float64(batch.Len()); ratio > 0.5 {
		t.Fatalf("a batch of 100 similar ops compressed only to %.2f", ratio)
	}
}

// TestZstdLevelBySize: a message under RawLiteralsBelow is compressed at
// the fastest level with raw literals, one under FastBelow at the fastest
// level, one from it at the default level; all round-trip.
func TestZstdLevelBySize(t *testing.T) {
	z := NewZstd()
	raw := newEncoder(zstd.SpeedFastest, zstd.WithNoEntropyCompression(true))
	fast, def := newEncoder(zstd.SpeedFastest), newEncoder(zstd.SpeedDefault)
	for _, c := range []struct {
		size  int
		enc   *zstd.Encoder
		level string
	}{
		{2 << 10, raw, "fastest, raw literals"}, {RawLiteralsBelow - 1, raw, "fastest, raw literals"},
		{RawLiteralsBelow, fast, "fastest"}, {FastBelow - 1, fast, "fastest"},
		{FastBelow, def, "default"}, {256 << 10, def, "default"},
	} {
		var msg bytes.Buffer
		for i := 0; msg.Len() < c.size; i++ {
			fmt.Fprintf(&msg, "message %d: see you at lunch, around %d? ", i, i%12)
		}
		in := msg.Bytes()[:c.size]
		want := c.enc.EncodeAll(in, nil)
		if got := z.compress(nil, in); !bytes.Equal(got, want) {
			t.Errorf("%d bytes: not compressed as at level %s", c.size, c.level)
		}
		var out bytes.Buffer
		r, err := z.Decompress(bytes.NewReader(want))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(&out, r); err != nil || !bytes.Equal(out.Bytes(), in) {
			t.Errorf("%d bytes: round trip: %v", c.size, err)
		}
	}
}

// TestZstdRefusesHugeWindows: a frame that declares a window beyond
// MaxWindow is refused instead of allocated.
func TestZstdRefusesHugeWindows(t *testing.T) {
	enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(64<<20), zstd.WithSingleSegment(false))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc.Reset(&buf)
	_, _ = enc.Write(bytes.Repeat([]byte("x"), 32<<20))
	_ = enc.Close()
	r, err := NewZstd().Decompress(bytes.NewReader(buf.Bytes()))
	if err == nil {
		_, err = io.Copy(io.Discard, r)
	}
	if err == nil {
		t.Fatal("a 64 MiB window was accepted")
	}
}

func FuzzZstdDecompress(f *testing.F) {
	z := NewZstd()
	var buf bytes.Buffer
	w, _ := z.Compress(&buf)
	_, _ = w.Write([]byte("hello hello hello"))
	_ = w.Close()
	f.Add(buf.Bytes())
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := z.Decompress(bytes.NewReader(in))
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(r, 1<<20))
		_ = r.Close()
	})
}
