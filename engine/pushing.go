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
//
// A device may push an op again before the first push is answered: a
// client that renumbers its pending ops sends them again, in flight or
// not. So the set counts the pushes that hold each op, and the op leaves
// it, ending the wait it imposed if a round left it out (LeftOut), when
// the last of them is answered: an earlier answer may be a refusal of the
// old numbering, which gives no seq.
type Pushing struct {
	n    atomic.Int32 // len(ops), read without the lock
	left atomic.Int32 // how many of them a live round left out
	mu   sync.Mutex
	ops  map[opRef]pushed
}

type opRef struct{ conv, id ulid.ULID }

// pushed is an op in the set.
type pushed struct {
	pushes int32 // the pushes holding it, not yet answered
	left   bool  // a live round left it out
}

// maxPushing bounds a set: a device with more ops in flight gets the
// excess back in its live rounds, as every device did before.
const maxPushing = 4096

// Add adds a push's ops, as many new ones as the set has room for, and
// returns those it counted (ops itself when it counted all): the ones to
// Remove once the push is answered, and no others, or the answer would
// take away the count of another push holding the same op.
func (p *Pushing) Add(ops []model.Op) []model.Op {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ops == nil {
		p.ops = make(map[opRef]pushed, len(ops))
	}
	var counted []model.Op // nil while every op so far was counted
	for i := range ops {
		ref := opRef{ops[i].Conv, ops[i].ID}
		o, ok := p.ops[ref]
		if !ok && len(p.ops) >= maxPushing {
			if counted == nil {
				counted = append(make([]model.Op, 0, len(ops)), ops[:i]...)
			}
			continue
		}
		o.pushes++
		p.ops[ref] = o
		if counted != nil {
			counted = append(counted, ops[i])
		}
	}
	p.n.Store(int32(len(p.ops)))
	if counted == nil {
		return ops
	}
	return counted
}

// Remove removes the ops Add counted for a push, once the push is
// answered: its result has been sent. It does nothing on a nil set.
func (p *Pushing) Remove(ops []model.Op) {
	if p == nil || p.n.Load() == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range ops {
		ref := opRef{ops[i].Conv, ops[i].ID}
		o, ok := p.ops[ref]
		if !ok {
			continue
		}
		if o.pushes--; o.pushes > 0 {
			p.ops[ref] = o
			continue
		}
		if o.left {
			p.left.Add(-1)
		}
		delete(p.ops, ref)
	}
	if len(p.ops) == 0 {
		p.ops = nil // a burst's map does not stay with an idle session
	}
	p.n.Store(int32(len(p.ops)))
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
		o, ok := p.ops[ref]
		if !ok {
			continue
		}
		if !o.left {
			o.left = true
			p.ops[ref] = o
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
