package server

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/compression"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// liveBatches encodes the batches of live rounds once for every session
// that sends them.
//
// A commit to a conversation of a thousand members goes to each member's
// device in a live round of its own, and each round packed and marshaled
// the same ops again. A live Ops message now carries its batches already
// encoded, as Ops fields 1 (batches) or 4 (packed) in the message's unknown
// fields: protobuf marshals unknown fields verbatim, and a receiver reads
// them as the batches they are. Only the phase and feed position, which
// differ per session, are marshaled per message.
//
// A batch is the ops of one conversation from one seq to another. Stored
// ops never change but for erasure (a delete for everyone empties a
// message's body), which only ever erases more: the number of erased ops
// in a range tells its versions apart.
type liveBatches struct {
	shards [16]batchShard
}

type batchShard struct {
	mu    sync.Mutex
	m     map[batchKey][]byte
	bytes int
}

type batchKey struct {
	conv        ulid.ULID
	first, last uint64
	erased      int
	packed      bool
}

// batchShardBytes bounds each shard's memory: 16 x 256 KiB, counting each
// encoding and batchEntryBytes for its entry. A full shard starts over;
// live rounds want the newest ops. A batch encoded larger is not kept: it
// is encoded per session, as every batch was.
const (
	batchShardBytes = 256 << 10
	batchEntryBytes = 96 // the key, the slice header and the map's share
)

var (
	opsBatchesField = protowire.Number((&ferryv1.Ops{}).ProtoReflect().Descriptor().Fields().ByName("batches").Number())
	opsPackedField  = protowire.Number((&ferryv1.Ops{}).ProtoReflect().Descriptor().Fields().ByName("packed").Number())
)

// fields returns bs encoded as Ops fields, rows or packed: for one batch
// its shared encoding, which the caller only reads; for more, their
// encodings copied into one buffer of their size. (Grown by appending,
// those buffers were a fifth of the bytes the server allocated in batched
// ingest, where a member's round holds each other author's batch.)
func (c *liveBatches) fields(bs []engine.Batch, packed bool) ([]byte, error) {
	if len(bs) == 1 {
		return c.field(&bs[0], packed)
	}
	var held [8][]byte // a round's few batches, without an allocation
	fs, size := held[:0], 0
	for i := range bs {
		f, err := c.field(&bs[i], packed)
		if err != nil {
			return nil, err
		}
		fs, size = append(fs, f), size+len(f)
	}
	out := make([]byte, 0, size)
	for _, f := range fs {
		out = append(out, f...)
	}
	return out, nil
}

// minRun is the fewest ops of one author that a live batch is cut around.
//
// A member is spared their own ops, so the live rounds of one commit
// differ from member to member: to a conversation of four whose members
// each pushed, each member's round holds the three others' ops, as one
// batch when their seqs follow on. Compressed whole, each round
// compressed every author's ops again, three times a push. Cut where the
// author changes, a round is the batches of each other author's ops,
// encoded once (liveBatches) and compressed once (sharedBatches), for
// every member they go to. A batch costs its conversation id and authors
// again: runs shorter than minRun are not cut out.
const minRun = 8

// byAuthor returns a live round's batches cut where their author changes
// between runs of minRun ops or more: bs itself when none is.
func byAuthor(bs []engine.Batch) []engine.Batch {
	var out []engine.Batch
	for i, b := range bs {
		for ops := b.Ops; ; {
			n := firstRun(ops)
			if n == len(ops) && out == nil {
				break // not cut, nor any before it
			}
			if out == nil {
				out = append(make([]engine.Batch, 0, len(bs)+2), bs[:i]...)
			}
			out = append(out, engine.Batch{Conv: b.Conv, Ops: ops[:n]})
			if ops = ops[n:]; len(ops) == 0 {
				break
			}
		}
	}
	if out == nil {
		return bs
	}
	return out
}

// firstRun returns how many of ops go in the first batch of their cut:
// up to the first change of author with minRun ops or more on either
// side, or all.
func firstRun(ops []model.Op) int {
	for i := minRun; i <= len(ops)-minRun; i++ {
		if ops[i].Dot.Device != ops[i-1].Dot.Device {
			return i
		}
	}
	return len(ops)
}

// minShared is the smallest batch field worth a frame of its own in a
// compressed live round (sharedBatches): a frame costs some 13 bytes.
const minShared = 512

var (
	responseOpsField = protowire.Number((&ferryv1.SyncResponse{}).ProtoReflect().Descriptor().Fields().ByName("ops").Number())
	opsPhaseField    = protowire.Number((&ferryv1.Ops{}).ProtoReflect().Descriptor().Fields().ByName("phase").Number())
)

// sharedBatches appends to dst the batch fields of msg, a marshaled
// SyncResponse or SubscribeResponse, that other members' live rounds
// likely repeat, for compression.WithShared: the batches of a live
// round's Ops, minShared bytes or more. Other messages have none; a
// catch-up's batches are compressed together, since they are not shared
// and compress better so.
func sharedBatches(msg []byte, dst []compression.Span) []compression.Span {
	num, typ, n := protowire.ConsumeTag(msg)
	if n < 0 || num != responseOpsField || typ != protowire.BytesType {
		return dst
	}
	ops, m := protowire.ConsumeBytes(msg[n:])
	if m < 0 || n+m != len(msg) {
		return dst
	}
	at := len(msg) - len(ops)
	found, live := len(dst), false
	for len(ops) > 0 {
		num, typ, n := protowire.ConsumeTag(ops)
		if n < 0 {
			return dst[:found]
		}
		m := protowire.ConsumeFieldValue(num, typ, ops[n:])
		if m < 0 {
			return dst[:found]
		}
		switch {
		case num == opsPhaseField && typ == protowire.VarintType:
			v, _ := protowire.ConsumeVarint(ops[n:])
			live = v == uint64(ferryv1.Phase_PHASE_LIVE)
		case (num == opsPackedField || num == opsBatchesField) && typ == protowire.BytesType && n+m >= minShared:
			dst = append(dst, compression.Span{Start: at, End: at + n + m})
		}
		at += n + m
		ops = ops[n+m:]
	}
	if !live {
		return dst[:found]
	}
	return dst
}

// field returns one batch encoded as an Ops field, from the cache when a
// session encoded it before.
func (c *liveBatches) field(b *engine.Batch, packed bool) ([]byte, error) {
	if len(b.Ops) == 0 {
		return nil, nil
	}
	k := batchKey{conv: b.Conv, first: b.Ops[0].Seq, last: b.Ops[len(b.Ops)-1].Seq, packed: packed}
	for i := range b.Ops {
		if b.Ops[i].Erased {
			k.erased++
		}
	}
	s := &c.shards[k.conv[15]%byte(len(c.shards))]
	s.mu.Lock()
	f, ok := s.m[k]
	s.mu.Unlock()
	if ok {
		return f, nil
	}
	f, err := encodeBatch(b, packed)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if size := len(f) + batchEntryBytes; s.m[k] == nil && size <= batchShardBytes {
		if s.bytes+size > batchShardBytes || s.m == nil {
			s.m, s.bytes = make(map[batchKey][]byte), 0
		}
		s.m[k], s.bytes = f, s.bytes+size
	}
	return f, nil
}

// encodeBatch encodes b as one Ops field: an OpBatch in batches, or a
// PackedBatch in packed. The field is in a buffer of exactly its size:
// sessions share it, and an append must copy.
func encodeBatch(b *engine.Batch, packed bool) ([]byte, error) {
	if packed {
		scratch := fieldScratch.Get().(*[]byte)
		f, err := wire.AppendPackedField((*scratch)[:0], opsPackedField, b.Conv, b.Ops)
		if err != nil {
			fieldScratch.Put(scratch)
			return nil, err
		}
		out := bytes.Clone(f)
		if cap(f) <= maxFieldScratch {
			*scratch = f[:0]
			fieldScratch.Put(scratch)
		}
		return out, nil
	}
	m := &ferryv1.OpBatch{ConversationId: b.Conv.String(), Ops: opsToProto(b.Ops)}
	// Marshaled in place after its tag and length.
	size := proto.Size(m)
	f := make([]byte, 0, protowire.SizeTag(opsBatchesField)+protowire.SizeBytes(size))
	f = protowire.AppendTag(f, opsBatchesField, protowire.BytesType)
	f = protowire.AppendVarint(f, uint64(size))
	f, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(f, m)
	if err != nil {
		return nil, err
	}
	if len(f) != cap(f) { // a length prefix that lies would garble the message
		return nil, fmt.Errorf("server: a batch of %s marshaled to a %d-byte field, not %d", b.Conv, len(f), cap(f))
	}
	return f, nil
}

// fieldScratch holds the buffers live batches are packed in before their
// copy of exactly their size. A live round's batch is a few KB; a buffer
// grown past maxFieldScratch (a round of large messages) is left to the
// collector rather than kept.
var fieldScratch = sync.Pool{New: func() any { return new([]byte) }}

const maxFieldScratch = 64 << 10
