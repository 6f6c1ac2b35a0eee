// Package compression provides the Connect compressors Ferry negotiates:
// zstd for native clients and gzip for browsers, both from
// github.com/klauspost/compress.
//
// Connect asks for one writer per message and closes it when the message is
// written. Both compressors buffer the message and compress it on Close:
// zstd with one encoder shared by every stream (Encoder.EncodeAll is safe
// for concurrent use), instead of a streaming encoder per connection, which
// would cost megabytes per idle stream; gzip with pooled writers. A message
// that many streams send alike (a live round to every member of a
// conversation) is compressed twice, not once per stream: see memo. The
// parts of messages that other messages repeat (a live round's batch of
// one author's ops, sent to each other member in rounds that differ
// otherwise) can be compressed once as zstd frames of their own
// (WithShared).
// Decoders are pooled and refuse frames whose window exceeds a bound, so a
// hostile frame cannot make the server allocate more than that; Connect
// limits the decompressed size itself.
//
// Compressors are safe for concurrent use.
package compression

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"connectrpc.com/connect/v2"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// MinBytes is the smallest message worth compressing. A live message (one
// op, a receipt, an ack) is a few hundred bytes of mostly ids and short
// text: zstd saves little on it and costs about 7µs of CPU per message and
// stream, which in a fan-out was the server's largest single cost. Catch-up
// batches, up to a MiB, are where compression pays.
const MinBytes = 1024

// FastBelow is the size under which zstd compresses at its fastest level,
// and from which at its default level. Messages of a few KB (live rounds
// of a push's ops, pushes) are most of what a server compresses while
// clients push: zstd's fastest level takes 25-35% less time on them than
// its default, for 5-10% more bytes (and under RawLiteralsBelow it leaves
// literals raw too). Catch-up batches, up to a MiB, are where the default
// level's smaller output pays.
const FastBelow = 64 << 10

// RawLiteralsBelow is the size under which zstd leaves literals (the bytes
// no match covers) raw, without Huffman coding. A Huffman table is built
// and written for each block, a fixed cost that dominates small messages:
// on a live round of 16 chat messages (1.7 KB) zstd's fastest level took
// 11 µs for a ratio of 0.64, and 4.2 µs for 0.75 with raw literals; on 64
// (8 KB), 32 µs for 0.50 and 21 µs for 0.57. Such rounds and push results
// were a fifth of the server's CPU in batched ingest, compressed once per
// member's stream. Catch-up batches are mostly larger, and keep the
// entropy coding that the wire's bytes depend on.
const RawLiteralsBelow = 8 << 10

// MaxWindow is the largest zstd window a decoder accepts. Ferry's messages
// are bounded well below it.
const MaxWindow = 8 << 20

// Zstd is a "zstd" compressor.
type Zstd struct {
	enc     *zstd.Encoder // from FastBelow
	fast    *zstd.Encoder // under FastBelow
	raw     *zstd.Encoder // under RawLiteralsBelow
	memo    *memo
	shared  func(msg []byte, dst []Span) []Span // nil: messages are compressed whole
	spans   sync.Pool                           // *[]Span
	bufs    sync.Pool                           // *buffers
	readers sync.Pool                           // *zstdReader
}

// Option configures a compressor.
type Option func(*config)

type config struct {
	memo   bool
	shared func(msg []byte, dst []Span) []Span
}

// WithMemo makes the compressor remember its recent compressions, so that a
// message many streams send alike is compressed twice, not once per stream
// (see memo). For a server; a client's messages are its own.
func WithMemo() Option { return func(c *config) { c.memo = true } }

// A Span is the part msg[Start:End] of a message.
type Span struct{ Start, End int }

// WithShared makes zstd compress the parts of a message that other
// messages likely repeat on their own: spans appends them to dst, in
// order and apart. Each is compressed as a zstd frame of its own, kept by
// the memo (WithMemo) the first time, and the bytes around them as frames
// between; a zstd decoder reads concatenated frames as the concatenation
// of their contents (RFC 8878, section 3), so the message arrives as it
// was. A live round of a conversation differs per member, who is spared
// their own ops, but its batches of each other author's ops are the same
// bytes in every member's round: compressed whole, each round compressed
// them again. Where the spans lie does not change what arrives, only what
// the memo finds: spans that are out of order or out of bounds leave the
// message compressed whole. Gzip, for browsers, compresses whole.
func WithShared(spans func(msg []byte, dst []Span) []Span) Option {
	return func(c *config) { c.shared = spans }
}

func configure(opts []Option) (c config) {
	for _, o := range opts {
		o(&c)
	}
	return c
}

// NewZstd returns a zstd compressor: at the fastest level with raw literals
// under RawLiteralsBelow, at the fastest level under FastBelow, at the
// default level from it.
func NewZstd(opts ...Option) *Zstd {
	z := &Zstd{
		enc:  newEncoder(zstd.SpeedDefault),
		fast: newEncoder(zstd.SpeedFastest),
		raw:  newEncoder(zstd.SpeedFastest, zstd.WithNoEntropyCompression(true)),
	}
	c := configure(opts)
	if c.memo {
		z.memo = newMemo()
	}
	z.shared = c.shared
	return z
}

// Name is the content-encoding token.
func (z *Zstd) Name() string { return connect.CompressionNameZstd }

// Compress returns a writer that compresses what it was given into dst when
// closed.
func (z *Zstd) Compress(dst io.Writer) (io.WriteCloser, error) {
	return newBufWriter(dst, &z.bufs, z.compress), nil
}

// compress appends the compression of in to dst.
func (z *Zstd) compress(dst, in []byte) []byte {
	if z.shared == nil {
		return z.memo.compress(dst, in, z.encode)
	}
	sp, _ := z.spans.Get().(*[]Span)
	if sp == nil {
		sp = new([]Span)
	}
	defer z.spans.Put(sp)
	spans := z.shared(in, (*sp)[:0])
	*sp = spans[:0]
	if !inOrder(spans, len(in)) {
		return z.memo.compress(dst, in, z.encode)
	}
	// Every frame at the level the whole message's size calls for: its
	// parts are smaller, and would get a faster level and fewer bytes
	// saved than the message compressed whole.
	enc := z.encoder(len(in))
	at := 0
	for _, s := range spans {
		if at < s.Start {
			dst = enc.EncodeAll(in[at:s.Start], dst)
		}
		dst = z.memo.share(dst, in[s.Start:s.End], func(dst, in []byte) []byte { return enc.EncodeAll(in, dst) })
		at = s.End
	}
	if at < len(in) {
		dst = enc.EncodeAll(in[at:], dst)
	}
	return dst
}

// inOrder reports whether spans lie in order and apart within n bytes,
// and are not all of them.
func inOrder(spans []Span, n int) bool {
	at := 0
	for _, s := range spans {
		if s.Start < at || s.End <= s.Start || s.End > n {
			return false
		}
		at = s.End
	}
	return len(spans) > 0 && !(len(spans) == 1 && spans[0] == Span{0, n})
}

func (z *Zstd) encode(dst, in []byte) []byte { return z.encoder(len(in)).EncodeAll(in, dst) }

// encoder returns the encoder for a message of n bytes.
func (z *Zstd) encoder(n int) *zstd.Encoder {
	switch {
	case n < RawLiteralsBelow:
		return z.raw
	case n < FastBelow:
		return z.fast
	}
	return z.enc
}

func newEncoder(level zstd.EncoderLevel, opts ...zstd.EOption) *zstd.Encoder {
	enc, err := zstd.NewWriter(nil, append([]zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithLowerEncoderMem(true)}, opts...)...)
	if err != nil {
		panic(fmt.Sprintf("compression: zstd encoder: %v", err)) // only invalid options fail
	}
	return enc
}

// bufWriter buffers one message and writes its compression to dst on
// Close. Both the message and its compression go into pooled buffers
// (buffers): a live round is compressed for each stream that sends it, and
// fresh buffers, grown as zstd wrote, were a tenth of the bytes a server
// allocated in batched ingest.
type bufWriter struct {
	dst      io.Writer
	pool     *sync.Pool // *buffers
	b        *buffers
	compress func(dst, in []byte) []byte
}

type buffers struct{ in, out []byte }

// maxPooled is the largest buffer returned to a pool: one large message
// must not pin megabytes per pooled buffer forever.
const maxPooled = 1 << 20

func newBufWriter(dst io.Writer, pool *sync.Pool, compress func(dst, in []byte) []byte) *bufWriter {
	b, _ := pool.Get().(*buffers)
	if b == nil {
		b = new(buffers)
	}
	return &bufWriter{dst: dst, pool: pool, b: b, compress: compress}
}

var errClosed = errors.New("compression: use after Close")

func (w *bufWriter) Write(p []byte) (int, error) {
	if w.b == nil {
		return 0, errClosed
	}
	w.b.in = append(w.b.in, p...)
	return len(p), nil
}

func (w *bufWriter) Close() error {
	b := w.b
	if b == nil {
		return nil
	}
	w.b = nil
	b.out = w.compress(b.out[:0], b.in)
	_, err := w.dst.Write(b.out)
	if cap(b.in) <= maxPooled && cap(b.out) <= maxPooled {
		b.in, b.out = b.in[:0], b.out[:0]
		w.pool.Put(b)
	}
	return err
}

// Decompress returns a reader of src's decompressed bytes.
func (z *Zstd) Decompress(src io.Reader) (io.ReadCloser, error) {
	r, _ := z.readers.Get().(*zstdReader)
	if r == nil {
		d, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(MaxWindow))
		if err != nil {
			return nil, fmt.Errorf("compression: zstd decoder: %w", err)
		}
		r = &zstdReader{z: z, d: d}
	}
	if err := r.d.Reset(src); err != nil {
		return nil, fmt.Errorf("compression: zstd: %w", err)
	}
	r.closed = false
	return r, nil
}

type zstdReader struct {
	z      *Zstd
	d      *zstd.Decoder
	closed bool
}

func (r *zstdReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errClosed
	}
	return r.d.Read(p)
}

func (r *zstdReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if err := r.d.Reset(nil); err != nil {
		r.d.Close()
		return nil
	}
	r.z.readers.Put(r)
	return nil
}

// Gzip is a "gzip" compressor with pooled writers and readers.
type Gzip struct {
	level   int
	memo    *memo
	bufs    sync.Pool // *buffers
	writers sync.Pool // *gzip.Writer
	readers sync.Pool // *gzipReader
}

// NewGzip returns a gzip compressor at the default level.
func NewGzip(opts ...Option) *Gzip {
	g := &Gzip{level: gzip.DefaultCompression}
	if configure(opts).memo {
		g.memo = newMemo()
	}
	return g
}

// Name is the content-encoding token.
func (g *Gzip) Name() string { return connect.CompressionNameGzip }

// Compress returns a writer that compresses what it was given into dst
// when closed.
func (g *Gzip) Compress(dst io.Writer) (io.WriteCloser, error) {
	return newBufWriter(dst, &g.bufs, g.compress), nil
}

// compress appends the compression of in to dst.
func (g *Gzip) compress(dst, in []byte) []byte {
	return g.memo.compress(dst, in, g.encode)
}

func (g *Gzip) encode(dst, in []byte) []byte {
	out := bytes.NewBuffer(dst)
	w, _ := g.writers.Get().(*gzip.Writer)
	if w == nil {
		// Only an invalid level fails, and the level is a constant.
		w, _ = gzip.NewWriterLevel(out, g.level)
	} else {
		w.Reset(out)
	}
	// Writes to a bytes.Buffer do not fail.
	_, _ = w.Write(in)
	_ = w.Close()
	w.Reset(io.Discard) // let go of out
	g.writers.Put(w)
	return out.Bytes()
}

// Decompress returns a reader of src's decompressed bytes.
func (g *Gzip) Decompress(src io.Reader) (io.ReadCloser, error) {
	if r, _ := g.readers.Get().(*gzipReader); r != nil {
		if err := r.r.Reset(src); err != nil {
			return nil, fmt.Errorf("compression: gzip: %w", err)
		}
		r.closed = false
		return r, nil
	}
	gr, err := gzip.NewReader(src)
	if err != nil {
		return nil, fmt.Errorf("compression: gzip: %w", err)
	}
	return &gzipReader{g: g, r: gr}, nil
}

type gzipReader struct {
	g      *Gzip
	r      *gzip.Reader
	closed bool
}

func (r *gzipReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, errClosed
	}
	return r.r.Read(p)
}

func (r *gzipReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.r.Close()
	r.g.readers.Put(r)
	return err
}

var (
	_ connect.Compressor = (*Zstd)(nil)
	_ connect.Compressor = (*Gzip)(nil)
)
