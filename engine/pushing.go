package engine

import (
	"sync"
	"sync/atomic"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
)

// Pushing is the set of ops a device is pushing on its session's stream,
// from before they are appended until their push's result has been sent.
// A session given one (SessionOptions.Pushing) leaves those ops out of its
// live rounds: the device holds them already, and the push's result gives
// their seqs. The stream's reader adds and removes while the session's
// sender reads it, so it is safe for concurrent use. The zero value is an
// empty set.
type Pushing struct {
	n    atomic.Int32 // len(ids), read without the lock
	left atomic.Int32 // how many of them a live round left out
	mu   sync.Mutex
	ids  map[opRef]bool // true once a live round left the op out
}

type opRef struct{ conv, id ulid.ULID }

// maxPushing bounds a set: a device with more ops in flight gets the
// excess back in its live rounds, as every device did before.
const maxPushing = 4096

// Add adds ops, as many as the set has room for.
func (p *Pushing) Add(ops []model.Op) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ids == nil {
		p.ids = make(map[opRef]bool, len(ops))
	}
	for i := range ops {
		if len(p.ids) >= maxPushing {
			break
		}
		p.ids[opRef{ops[i].Conv, ops[i].ID}] = false
	}
	p.n.Store(int32(len(p.ids)))
}

// Remove removes ops. It does nothing on a nil set.
func (p *Pushing) Remove(ops []model.Op) {
	if p == nil || p.n.Load() == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range ops {
		ref := opRef{ops[i].Conv, ops[i].ID}
		if p.ids[ref] {
			p.left.Add(-1)
		}
		delete(p.ids, ref)
	}
	if len(p.ids) == 0 {
		p.ids = nil // a burst's map does not stay with an idle session
	}
	p.n.Store(int32(len(p.ids)))
}

// Len is the number of ops in the set: 0 for a nil set.
func (p *Pushing) Len() int {
	if p == nil {
		return 0
	}
	return int(p.n.Load())
}

// LeftOut reports whether a live round left out ops still in the set:
// until they leave it (their push's result is sent), a further round
// would tell the device of what follows them, which it cannot yet place.
func (p *Pushing) LeftOut() bool { return p != nil && p.left.Load() > 0 }

// appendRuns appends to q the live items for ops, the consecutive ops of
// a conversation after..through (all of them), less those of device the
// set holds: one item per run between them. It returns the seq of the
// last message it left out, 0 if none.
func (p *Pushing) appendRuns(q []item, device ulid.ULID, ops []model.Op) ([]item, uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := 0 // ops[start:i] is the run being built
	read := uint64(0)
	for i := range ops {
		if ops[i].Dot.Device != device {
			continue
		}
		ref := opRef{ops[i].Conv, ops[i].ID}
		left, ok := p.ids[ref]
		if !ok {
			continue
		}
		if !left {
			p.ids[ref] = true
			p.left.Add(1)
		}
		if ops[i].Kind == model.KindMessage {
			read = ops[i].Seq
		}
		q = appendRun(q, ops[start:i])
		start = i + 1
	}
	return appendRun(q, ops[start:]), read
}

func appendRun(q []item, run []model.Op) []item {
	if len(run) == 0 {
		return q
	}
	return append(q, item{kind: itemOps, conv: run[0].Conv, after: run[0].Seq - 1, through: run[len(run)-1].Seq,
		phase: PhaseLive, ops: run[:len(run):len(run)]})
}
