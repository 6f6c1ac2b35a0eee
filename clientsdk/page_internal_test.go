package clientsdk

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine/model"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// longConversation gives d a conversation of n sent messages, straight
// into its state (no server, no replica): what paging reads.
func longConversation(tb testing.TB, d *Device, n int) ulid.ULID {
	tb.Helper()
	conv := ulid.Make()
	holdMessages(tb, d, conv, 1, uint64(n))
	return conv
}

// holdMessages gives d's conversation conv sent messages at seqs lo
// through hi, straight into its state, as held, the conversation's head
// at least hi.
func holdMessages(tb testing.TB, d *Device, conv ulid.ULID, lo, hi uint64) {
	tb.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	s, rec := d.states[conv], d.convs[conv]
	if s == nil {
		s, rec = model.NewState(conv), &convRecord{Title: "long"}
		d.states[conv], d.stateUse[conv], d.convs[conv] = s, 0, rec
	}
	author, dev := ulid.Make(), ulid.Make()
	for seq := lo; seq <= hi; seq++ {
		op := model.Op{ID: ulid.Make(), Conv: conv, Seq: seq, Dot: model.Dot{Device: dev, N: seq}, User: author,
			Kind: model.KindMessage, ContentType: "text/plain", Body: fmt.Appendf(nil, "message %d", seq)}
		s.Apply(&op)
	}
	rec.addRange(lo, hi)
	rec.Head = max(rec.Head, hi)
	rec.InfoHead = rec.Head // as a conversation info says
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

// TestPagesStopAtHoles: a catch-up brings a conversation's newest ops
// before older ones; until those arrive, a page stops at the hole instead
// of going on past it (older messages loading, no more pages), and the
// page below it fills once the hole has.
func TestPagesStopAtHoles(t *testing.T) {
	d := memoryDevice(t)
	conv := ulid.Make()
	holdMessages(t, d, conv, 1, 100)
	holdMessages(t, d, conv, 901, 1000) // 101-900 still on their way
	type want struct {
		newest, oldest uint64 // 0, 0: no messages
		more, loading  bool
	}
	check := func(before uint64, w want) {
		t.Helper()
		p, err := d.Messages(conv, PageOptions{Limit: 50, Before: before})
		if err != nil {
			t.Fatal(err)
		}
		var got want
		if n := len(p.Messages); n > 0 {
			got.newest, got.oldest = p.Messages[0].Seq, p.Messages[n-1].Seq
		}
		got.more, got.loading = p.More, p.OlderLoading
		if got != w {
			t.Errorf("page before %d: %+v; want %+v", before, got, w)
		}
	}
	check(0, want{1000, 951, true, true})
	check(951, want{950, 901, false, true}) // not on to 100 below the hole
	check(901, want{0, 0, false, true})     // in the hole
	check(500, want{0, 0, false, true})
	check(101, want{100, 51, true, false}) // below it, every seq held
	check(2000, want{1000, 951, true, true})

	holdMessages(t, d, conv, 101, 900)
	check(951, want{950, 901, true, false})
	check(901, want{900, 851, true, false})

	// The device's own message, accepted at 1003 while others' at 1001
	// and 1002 are still on their way in a live round (above the head the
	// last info gave): not a hole to stop at.
	infoHead := d.convs[conv].InfoHead
	holdMessages(t, d, conv, 1003, 1003)
	d.mu.Lock()
	d.convs[conv].InfoHead = infoHead
	d.mu.Unlock()
	check(0, want{1003, 952, true, false})
	check(1003, want{1000, 951, true, false})
	// Once an info says 1002 is there to hold, it is a hole.
	d.mu.Lock()
	d.convs[conv].InfoHead = 1003
	d.mu.Unlock()
	check(0, want{1003, 1003, false, true})
}

// TestDeletedMessagesShowNoReactions: a message deleted for everyone shows
// no body, edit or reactions, whether its delete is stored or still
// pending, and a pending reaction to it adds none (the web client's fold
// shows the same).
func TestDeletedMessagesShowNoReactions(t *testing.T) {
	d := memoryDevice(t)
	conv := ulid.Make()
	holdMessages(t, d, conv, 1, 2)
	ctx := context.Background()
	d.mu.Lock()
	me := ulid.Make()
	d.creds = &credentials{User: me.String(), Device: ulid.Make().String(), Username: "me"}
	d.convs[conv].Role = ferryv1.Role_ROLE_MEMBER
	s := d.states[conv]
	var ids [2]ulid.ULID
	for v := range s.Newest(0) {
		ids[v.Seq-1] = v.ID
	}
	other := ulid.Make()
	for i, op := range []model.Op{
		{Kind: model.KindReactionAdd, Target: ids[0], ReactionKey: "+1"},
		{Kind: model.KindReactionAdd, Target: ids[1], ReactionKey: "+1"},
		{Kind: model.KindDelete, Target: ids[1]}, // stored: seq 5
	} {
		op.ID, op.Conv, op.Seq, op.User, op.Dot = ulid.Make(), conv, uint64(3+i), other, model.Dot{Device: other, N: uint64(i + 1)}
		s.Apply(&op)
	}
	d.convs[conv].addRange(3, 5)
	d.mu.Unlock()
	if _, err := d.Delete(ctx, conv, ids[0]); err != nil { // pending
		t.Fatal(err)
	}
	if _, err := d.React(ctx, conv, ids[1], "party"); err != nil { // pending, to a deleted message
		t.Fatal(err)
	}
	p, err := d.Messages(conv, PageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) != 2 {
		t.Fatalf("%d messages", len(p.Messages))
	}
	for _, m := range p.Messages {
		if !m.Deleted || m.Body != nil || m.Edited || len(m.Reactions) != 0 {
			t.Errorf("message %d (%s): deleted %v, body %q, edited %v, reactions %v; want deleted and nothing else", m.Seq, m.ID, m.Deleted, m.Body, m.Edited, m.Reactions)
		}
	}
}

// TestOlderLoadingUnderPendingMessages: a first page that holds only
// pending messages, of a conversation whose sent messages are still on
// their way, says older messages are loading.
func TestOlderLoadingUnderPendingMessages(t *testing.T) {
	d := memoryDevice(t)
	conv := ulid.Make()
	d.mu.Lock()
	d.creds = &credentials{User: ulid.Make().String(), Device: ulid.Make().String(), Username: "me"}
	d.convs[conv] = &convRecord{Title: "c", Head: 10, Role: ferryv1.Role_ROLE_MEMBER} // seqs 1-10 not held yet
	d.states[conv], d.stateUse[conv] = model.NewState(conv), 0
	d.mu.Unlock()
	for range 2 {
		if _, err := d.SendText(context.Background(), conv, "draft"); err != nil {
			t.Fatal(err)
		}
	}
	p, err := d.Messages(conv, PageOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Messages) != 2 || p.Messages[0].Seq != 0 || !p.OlderLoading || p.More {
		t.Fatalf("page %d messages (first seq %d), older loading %v, more %v; want the 2 pending, older loading, no more",
			len(p.Messages), p.Messages[0].Seq, p.OlderLoading, p.More)
	}
}

// TestConversationListReadsTheTail: a conversation's last message, as the
// conversation list shows it, comes from the replica's newest ops (the
// edit and the reaction after it included) without folding and keeping
// the conversation's whole history; it is the message Messages shows.
func TestConversationListReadsTheTail(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	open := func(login bool) *Device {
		t.Helper()
		d, err := OpenMemory(WithServer(srv.URL), WithHTTPClient(srv.HTTP))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		if login {
			err = d.Login(context.Background(), "alice", "correct horse", "laptop")
		} else {
			err = d.Register(context.Background(), "alice", "correct horse", "phone")
		}
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	ctx := context.Background()
	phone := open(false)
	conv, err := phone.CreateConversation(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	var last ulid.ULID
	for _, text := range []string{"one", "two", "three"} {
		if last, err = phone.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := phone.Edit(ctx, conv, last, []byte("three, edited"), "text/plain"); err != nil {
		t.Fatal(err)
	}
	if _, err := phone.React(ctx, conv, last, "+1"); err != nil {
		t.Fatal(err)
	}
	if _, err := phone.SetTitle(ctx, conv, "renamed"); err != nil {
		t.Fatal(err)
	}
	if err := phone.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	laptop := open(true)
	if err := laptop.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}
	cs, err := laptop.Conversations()
	if err != nil || len(cs) != 1 || cs[0].LastMessage == nil {
		t.Fatalf("conversations %+v, %v", cs, err)
	}
	got := *cs[0].LastMessage
	laptop.mu.Lock()
	held := len(laptop.states)
	laptop.mu.Unlock()
	if held != 0 {
		t.Errorf("the conversation list folded and kept %d conversations' histories", held)
	}
	p, err := laptop.Messages(conv, PageOptions{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := p.Messages[0]
	if got.ID != want.ID || got.Text() != "three, edited" || !got.Edited || len(got.Reactions) != 1 || got.Seq != want.Seq || got.Status != want.Status {
		t.Errorf("last message from the tail %+v; Messages shows %+v", got, want)
	}
}

// TestFoldedStatesAreBounded: the device keeps the folded messages of the
// maxStates conversations asked for last, and folds an evicted one again
// when asked.
func TestFoldedStatesAreBounded(t *testing.T) {
	d := memoryDevice(t)
	first := longConversation(t, d, 3)
	// first's state is not in the replica: evicted, it would fold again
	// as empty. Asked for every tenth time, it stays among the recent.
	var ids []ulid.ULID
	for range maxStates + 5 {
		id := ulid.Make()
		d.mu.Lock()
		d.convs[id] = &convRecord{}
		d.mu.Unlock()
		ids = append(ids, id)
	}
	for i, id := range ids {
		if i%10 == 0 {
			if p, err := d.Messages(first, PageOptions{}); err != nil || len(p.Messages) != 3 {
				t.Fatalf("after %d other conversations: %d messages, %v; want the 3 held", i, len(p.Messages), err)
			}
		}
		if _, err := d.Messages(id, PageOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d.mu.Lock()
	n, evicted, kept := len(d.states), d.states[ids[0]] == nil, d.states[first] != nil
	d.mu.Unlock()
	if n != maxStates || !evicted || !kept {
		t.Errorf("%d folded conversations kept (want %d); the least recently used evicted: %v; the one used often kept: %v", n, maxStates, evicted, kept)
	}
	if _, err := d.Messages(ids[0], PageOptions{}); err != nil { // evicted: folded again
		t.Fatal(err)
	}
}

// BenchmarkConversationsWithPending: the conversation list, with a long
// outbox, whose messages wait for one conversation among many (a device
// offline for a while): compare ns/op across the outbox sizes.
func BenchmarkConversationsWithPending(b *testing.B) {
	for _, n := range []int{10, 2_000} {
		d, err := OpenMemory()
		if err != nil {
			b.Fatal(err)
		}
		d.mu.Lock()
		d.creds = &credentials{User: ulid.Make().String(), Device: ulid.Make().String(), Username: "me"}
		d.mu.Unlock()
		var busy ulid.ULID
		for i := range 50 {
			conv := longConversation(b, d, 20)
			d.mu.Lock()
			d.convs[conv].Role = ferryv1.Role_ROLE_MEMBER
			d.mu.Unlock()
			if i == 0 {
				busy = conv
			}
		}
		for i := range n {
			if _, err := d.SendText(context.Background(), busy, fmt.Sprintf("queued %d", i)); err != nil {
				b.Fatal(err)
			}
		}
		b.Run(fmt.Sprintf("pending=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				cs, err := d.Conversations()
				if err != nil || len(cs) != 50 {
					b.Fatal(len(cs), err)
				}
			}
		})
		_ = d.Close()
	}
}

// TestLastMessageIsThePagesFirst: a conversation's last message, which
// the conversation list reads from the outbox's tail alone, is the first
// message of its page, which reads the whole outbox, with every queued
// edit, delete and reaction shown, whatever the outbox holds.
func TestLastMessageIsThePagesFirst(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	d := memoryDevice(t)
	conv := longConversation(t, d, 5)
	d.mu.Lock()
	d.creds = &credentials{User: ulid.Make().String(), Device: ulid.Make().String(), Username: "me"}
	d.convs[conv].Role = ferryv1.Role_ROLE_MEMBER
	var ids []ulid.ULID
	for v := range d.states[conv].Newest(0) {
		ids = append(ids, v.ID)
	}
	d.mu.Unlock()
	ctx := context.Background()
	for i := range 200 {
		target := ids[rng.IntN(len(ids))]
		var err error
		switch k := rng.IntN(10); {
		case k < 3:
			var id ulid.ULID
			if id, err = d.SendText(ctx, conv, fmt.Sprintf("queued %d", i)); err == nil {
				ids = append(ids, id)
			}
		case k < 5:
			_, err = d.Edit(ctx, conv, target, fmt.Appendf(nil, "edited %d", i), "text/plain")
		case k < 6:
			_, err = d.Delete(ctx, conv, target)
		case k < 8:
			_, err = d.React(ctx, conv, target, []string{"+1", "ok"}[rng.IntN(2)])
		default:
			_, err = d.Unreact(ctx, conv, target, []string{"+1", "ok"}[rng.IntN(2)])
		}
		if err != nil {
			t.Fatal(err)
		}
		c, err := d.Conversation(conv)
		if err != nil {
			t.Fatal(err)
		}
		p, err := d.Messages(conv, PageOptions{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if c.LastMessage == nil || !reflect.DeepEqual(*c.LastMessage, p.Messages[0]) {
			t.Fatalf("after op %d: last message %+v, the page's first %+v", i, c.LastMessage, p.Messages[0])
		}
	}
}

// TestFailedMessagesByConversation: each conversation's page shows its own
// failed messages, in the order they failed, after the device opens again
// too, and a dismissed one is gone from its conversation's, for good.
func TestFailedMessagesByConversation(t *testing.T) {
	fs := vfs.NewMem()
	d, err := open("replica", fs, nil)
	if err != nil {
		t.Fatal(err)
	}
	me, dev := ulid.Make(), ulid.Make()
	creds := &credentials{User: me.String(), Device: dev.String(), Username: "me"}
	a, b := ulid.Make(), ulid.Make()
	batch := d.db.NewBatch()
	batch.Set(metaKey("creds"), encodeJSON(creds))
	batch.Set(metaKey("owner"), encodeJSON(creds.User))
	var ids []ulid.ULID
	for i, conv := range []ulid.ULID{a, b, a, a} {
		batch.Set(idKey(tConv, conv), encodeJSON(&convRecord{Title: "c", Role: ferryv1.Role_ROLE_MEMBER}))
		id := ulid.Make()
		ids = append(ids, id)
		op := &ferryv1.Op{Id: id.String(), DeviceId: dev.String(), Dot: uint64(i + 1),
			Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{ContentType: "text/plain", Body: fmt.Appendf(nil, "failed %d", i)}}}
		batch.Set(seqKey(tFailed, uint64(10+i)), encodeJSON(failedEntry{Conv: conv.String(), Op: encodeOp(op), Reason: "REJECT_REASON_PERMISSION_DENIED"}))
	}
	if err := d.db.Commit(batch); err != nil {
		t.Fatal(err)
	}
	_ = d.Close()
	failedIDs := func(d *Device, conv ulid.ULID) []ulid.ULID {
		t.Helper()
		p, err := d.Messages(conv, PageOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var out []ulid.ULID
		for _, m := range p.Messages {
			if m.Status != StatusFailed {
				t.Fatalf("message %s is %v on a conversation of failed ones", m.ID, m.Status)
			}
			out = append(out, m.ID)
		}
		return out
	}
	for round := range 2 {
		if d, err = open("replica", fs, nil); err != nil {
			t.Fatal(err)
		}
		wantA := []ulid.ULID{ids[3], ids[2], ids[0]} // newest first
		if round == 1 {
			wantA = []ulid.ULID{ids[3], ids[0]}
		}
		if got := failedIDs(d, a); !slices.Equal(got, wantA) {
			t.Fatalf("round %d: conversation a's failed %v, want %v", round, got, wantA)
		}
		if got := failedIDs(d, b); !slices.Equal(got, []ulid.ULID{ids[1]}) {
			t.Fatalf("round %d: conversation b's failed %v, want %v", round, got, ids[1:2])
		}
		if c, err := d.Conversation(a); err != nil || c.LastMessage == nil || c.LastMessage.ID != ids[3] {
			t.Fatalf("round %d: conversation a's last message %+v, %v", round, c.LastMessage, err)
		}
		if round == 0 {
			if err := d.DismissFailed(ids[2]); err != nil {
				t.Fatal(err)
			}
			if got := failedIDs(d, a); !slices.Equal(got, []ulid.ULID{ids[3], ids[0]}) {
				t.Fatalf("after dismissing: conversation a's failed %v", got)
			}
		}
		_ = d.Close()
	}
}

// BenchmarkConversationsWithFailed: the conversation list, with 100
// messages the server refused in 10 of its 50 conversations, kept until
// the app dismisses them.
func BenchmarkConversationsWithFailed(b *testing.B) {
	d, err := OpenMemory()
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	var convs []ulid.ULID
	for range 50 {
		convs = append(convs, longConversation(b, d, 20))
	}
	d.mu.Lock()
	d.creds = &credentials{User: ulid.Make().String(), Device: ulid.Make().String(), Username: "me"}
	batch := d.db.NewBatch()
	for i := range 100 {
		op := &ferryv1.Op{Id: ulid.Make().String(), DeviceId: d.creds.Device, Dot: uint64(i + 1),
			Payload: &ferryv1.Op_Message{Message: &ferryv1.Message{ContentType: "text/plain", Body: fmt.Appendf(nil, "failed %d", i)}}}
		conv, local := convs[i%10], uint64(1000+i)
		batch.Set(seqKey(tFailed, local), encodeJSON(failedEntry{Conv: conv.String(), Op: encodeOp(op)}))
		d.failed[conv] = append(d.failed[conv], local) // as a push's results add them
	}
	err = d.db.Commit(batch)
	d.mu.Unlock()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if cs, err := d.Conversations(); err != nil || len(cs) != 50 || cs[0].LastMessage == nil {
			b.Fatal(len(cs), err)
		}
	}
}
