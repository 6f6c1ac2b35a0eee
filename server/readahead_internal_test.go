package server

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// recordSink keeps a session's messages and ends it at CaughtUp, or after
// stopAfter Ops messages when set.
type recordSink struct {
	end       context.CancelFunc
	stopAfter int
	got       []*ferryv1.Ops
	done      bool
}

func (k *recordSink) welcome(*ferryv1.Welcome) error             { return nil }
func (k *recordSink) conversations(*ferryv1.Conversations) error { return nil }
func (k *recordSink) ops(m *ferryv1.Ops) error {
	k.got = append(k.got, proto.Clone(m).(*ferryv1.Ops)) // the loop reuses m
	if len(k.got) == k.stopAfter {
		k.end()
	}
	return nil
}
func (k *recordSink) caughtUp(*ferryv1.CaughtUp) error     { k.done = true; k.end(); return nil }
func (k *recordSink) heartbeat(*ferryv1.Heartbeat) error   { return nil }
func (k *recordSink) reset(*ferryv1.ResetRequired) error   { return nil }
func (k *recordSink) goaway(*ferryv1.Goaway) error         { return nil }
func (k *recordSink) pushResult(*ferryv1.PushResult) error { return nil }

// TestReadAheadSlots: catch-ups read ahead only while a slot is free, every
// slot comes back when the catch-ups end, and with no slot free (or none
// at all) a catch-up still arrives whole and in order.
func TestReadAheadSlots(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	ops := make([]model.Op, 200)
	for i := range ops {
		ops[i] = alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(fmt.Sprint("m", i)), ContentType: "text/plain"})
	}
	alice.Push(ops...)
	for _, slots := range []int{-1, 1, 8} {
		s, err := New(e, Options{Logger: slog.New(slog.DiscardHandler), MaxReadAheads: slots})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		sinks := make([]*recordSink, 4)
		for i := range sinks {
			ctx, cancel := context.WithCancel(context.Background())
			sinks[i] = &recordSink{end: cancel}
			wg.Go(func() {
				_ = s.subscribe(ctx, bob.Actor, &ferryv1.Hello{MaxBatchOps: 9, PackedOps: i%2 == 0}, sinks[i])
			})
		}
		wg.Wait()
		if n := len(s.aheads); n != 0 {
			t.Fatalf("slots %d: %d read-ahead slots still taken after every session ended", slots, n)
		}
		// Sessions that end mid catch-up, a message read ahead, give their
		// slots back too.
		for range 4 {
			ctx, cancel := context.WithCancel(context.Background())
			k := &recordSink{end: cancel, stopAfter: 2}
			_ = s.subscribe(ctx, bob.Actor, &ferryv1.Hello{MaxBatchOps: 9}, k)
			if k.done || len(k.got) != 2 {
				t.Fatalf("slots %d: a session ended after %d messages (caught up: %v), want 2", slots, len(k.got), k.done)
			}
		}
		if n := len(s.aheads); n != 0 {
			t.Fatalf("slots %d: %d read-ahead slots still taken after sessions ended mid catch-up", slots, n)
		}
		for i, k := range sinks {
			var seqs []uint64
			for j, m := range k.got {
				rows := m.GetBatches()
				for _, p := range m.GetPacked() {
					b, err := wire.UnpackRows(fmt.Sprintf("ops[%d]", j), p)
					if err != nil {
						t.Fatal(err)
					}
					rows = append(rows, b)
				}
				for _, b := range rows {
					for _, op := range b.GetOps() {
						seqs = append(seqs, op.GetSeq())
					}
				}
			}
			if !k.done || len(seqs) != 202 {
				t.Fatalf("slots %d, session %d: caught up %v with %d ops, want 202", slots, i, k.done, len(seqs))
			}
			for j, seq := range seqs {
				if seq != uint64(j+1) {
					t.Fatalf("slots %d, session %d: op %d has seq %d", slots, i, j, seq)
				}
			}
		}
	}
}
