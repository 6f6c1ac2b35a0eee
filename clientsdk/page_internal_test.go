package clientsdk

import (
	"fmt"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
)

// longConversation gives d a conversation of n sent messages, straight
// into its state (no server, no replica): what paging reads.
func longConversation(tb testing.TB, d *Device, n int) ulid.ULID {
	tb.Helper()
	conv, author, dev := ulid.Make(), ulid.Make(), ulid.Make()
	s := model.NewState(conv)
	for i := range n {
		op := model.Op{ID: ulid.Make(), Conv: conv, Seq: uint64(i + 1), Dot: model.Dot{Device: dev, N: uint64(i + 1)}, User: author,
			Kind: model.KindMessage, ContentType: "text/plain", Body: fmt.Appendf(nil, "message %d", i+1)}
		s.Apply(&op)
	}
	d.mu.Lock()
	d.convs[conv] = &convRecord{Title: "long", Head: uint64(n)}
	d.states[conv] = s
	d.mu.Unlock()
	return conv
}

// BenchmarkMessagesPage: the newest page of a long conversation, and the
// conversation list's last message, cost the page and not the history:
// compare the ns/op and allocations across the history sizes.
func BenchmarkMessagesPage(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		d, err := OpenMemory()
		if err != nil {
			b.Fatal(err)
		}
		conv := longConversation(b, d, n)
		b.Run(fmt.Sprintf("history=%d/Messages", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if p, err := d.Messages(conv, PageOptions{Limit: 50}); err != nil || len(p.Messages) != 50 {
					b.Fatal(len(p.Messages), err)
				}
			}
		})
		b.Run(fmt.Sprintf("history=%d/Conversation", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c, err := d.Conversation(conv); err != nil || c.LastMessage == nil {
					b.Fatal(err)
				}
			}
		})
		_ = d.Close()
	}
}

// TestPagesWalkTheHistory: pages of a long conversation, each asked
// Before the last one's oldest seq, give every message once, newest
// first, with More until the oldest.
func TestPagesWalkTheHistory(t *testing.T) {
	d := memoryDevice(t)
	conv := longConversation(t, d, 120)
	var seqs []uint64
	var mores []bool
	before := uint64(0)
	for range 10 { // bounded: 3 pages hold it
		p, err := d.Messages(conv, PageOptions{Limit: 50, Before: before})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			seqs = append(seqs, m.Seq)
		}
		mores = append(mores, p.More)
		if !p.More {
			break
		}
		before = p.Messages[len(p.Messages)-1].Seq
	}
	if len(seqs) != 120 || fmt.Sprint(mores) != "[true true false]" {
		t.Fatalf("pages gave %d messages, More %v; want 120 in pages of 50, 50, 20", len(seqs), mores)
	}
	for i, s := range seqs {
		if s != uint64(120-i) {
			t.Fatalf("message %d of the walk has seq %d, want %d", i, s, 120-i)
		}
	}
	c, err := d.Conversation(conv)
	if err != nil || c.LastMessage == nil || c.LastMessage.Seq != 120 || c.LastMessage.Text() != "message 120" {
		t.Fatalf("last message %+v, %v", c.LastMessage, err)
	}
}
