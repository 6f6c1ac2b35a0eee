package engine_test

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// openOnDisk opens an engine on the real filesystem, where fsync costs what
// it costs, without the tests' cache checks.
func openOnDisk(b *testing.B) *engine.Engine {
	engine.MeasureWithoutChecks(b)
	o := enginetest.Options(b, 1)
	o.FS = vfs.Default
	o.MemTableSize = 64 << 20
	o.CacheSize = 64 << 20
	e, err := engine.Open(b.TempDir(), o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	return e
}

// BenchmarkAppendDurable measures acknowledged, fsynced appends with
// concurrent writers, each a device of its own writing to one of 64
// conversations, in pushes of `batch` ops.
func BenchmarkAppendDurable(b *testing.B) {
	for _, writers := range []int{1, 16, 64, 256} {
		for _, batch := range []int{1, 16} {
			b.Run(fmt.Sprintf("writers=%d/batch=%d", writers, batch), func(b *testing.B) {
				e := openOnDisk(b)
				owner := enginetest.Register(b, e, "owner")
				convs := make([]ulid.ULID, 64)
				devs := make([]*enginetest.Device, writers)
				for i := range devs {
					devs[i] = enginetest.Register(b, e, fmt.Sprintf("writer%d", i))
				}
				for i := range convs {
					var members []*enginetest.Device
					for w := i; w < writers; w += len(convs) {
						members = append(members, devs[w])
					}
					convs[i] = owner.Create("bench", members...)
				}
				body := make([]byte, 150)
				var left atomic.Int64
				left.Store(int64(b.N))
				commits, writes0 := e.Metrics().Commits, e.Metrics().Writes
				b.ResetTimer()
				var wg sync.WaitGroup
				for w, d := range devs {
					conv := convs[w%len(convs)]
					wg.Go(func() {
						for left.Add(-int64(batch)) > -int64(batch) {
							ops := make([]model.Op, batch)
							for i := range ops {
								ops[i] = d.Op(conv, model.Op{Kind: model.KindMessage, Body: body})
							}
							d.Push(ops...)
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
				b.ReportMetric(float64(e.Metrics().Writes-writes0)/float64(b.N), "keys/op")
				if c := e.Metrics().Commits - commits; c > 0 {
					b.ReportMetric(float64(b.N)/float64(c), "ops/commit")
				}
			})
		}
	}
}

// BenchmarkCatchUpRead measures a device catching up on 10,000 missing ops
// across 100 conversations, through a session, to CaughtUp.
func BenchmarkCatchUpRead(b *testing.B) {
	e := openOnDisk(b)
	alice := enginetest.Register(b, e, "alice")
	bob := enginetest.Register(b, e, "bob")
	body := make([]byte, 150)
	for c := range 100 {
		conv := alice.Create(fmt.Sprint(c), bob)
		ops := make([]model.Op, 100)
		for i := range ops {
			ops[i] = alice.Op(conv, model.Op{Kind: model.KindMessage, Body: body})
		}
		alice.Push(ops...)
	}
	b.ResetTimer()
	total := 0
	for b.Loop() {
		s, err := e.OpenSession(bob.Actor, engine.SessionOptions{})
		if err != nil {
			b.Fatal(err)
		}
		total += drainCatchUp(b, s).Ops
		s.Close()
	}
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkCatchUpHistory measures the catch-up scaling workload in the
// engine: a device that held history-1 rounds of 100 ops in each of 100
// conversations catches up on the 10,000 that came since. The time per
// catch-up must not grow with the history.
func BenchmarkCatchUpHistory(b *testing.B) {
	for _, history := range []int{1, 10} {
		b.Run(fmt.Sprintf("history=%d", history), func(b *testing.B) {
			e := openOnDisk(b)
			alice := enginetest.Register(b, e, "alice")
			bob := enginetest.Register(b, e, "bob")
			convs := make([]ulid.ULID, 100)
			for c := range convs {
				convs[c] = alice.Create(fmt.Sprint(c), bob)
			}
			body := make([]byte, 150)
			round := func() {
				for _, conv := range convs {
					ops := make([]model.Op, 100)
					for i := range ops {
						ops[i] = alice.Op(conv, model.Op{Kind: model.KindMessage, Body: body})
					}
					alice.Push(ops...)
				}
			}
			for range history - 1 {
				round()
			}
			// The device's position before it went offline.
			s, err := e.OpenSession(bob.Actor, engine.SessionOptions{})
			if err != nil {
				b.Fatal(err)
			}
			held := drainCatchUp(b, s)
			s.Close()
			round()
			b.ResetTimer()
			for b.Loop() {
				s, err := e.OpenSession(bob.Actor, engine.SessionOptions{Epoch: held.Epoch, FeedPos: held.FeedPos, Cursors: held.Cursors})
				if err != nil {
					b.Fatal(err)
				}
				if ops := drainCatchUp(b, s).Ops; ops != 10_000 {
					b.Fatalf("caught up on %d ops, want 10000", ops)
				}
				s.Close()
			}
		})
	}
}

// caughtUp is where a session's catch-up ended.
type caughtUp struct {
	Epoch   ulid.ULID
	FeedPos uint64
	Cursors map[ulid.ULID]uint64 // the last seq received of each conversation
	Ops     int
}

// drainCatchUp reads s to its CaughtUp event.
func drainCatchUp(b *testing.B, s *engine.Session) caughtUp {
	b.Helper()
	cu := caughtUp{Epoch: s.Welcome().Epoch, Cursors: map[ulid.ULID]uint64{}}
	for {
		ev, ok, err := s.Next()
		if err != nil || !ok {
			b.Fatalf("session ended early: %v", err)
		}
		for _, bt := range ev.Batches {
			cu.Ops += len(bt.Ops)
			cu.Cursors[bt.Conv] = max(cu.Cursors[bt.Conv], bt.Ops[len(bt.Ops)-1].Seq)
		}
		if ev.Kind == engine.EventCaughtUp {
			cu.FeedPos = ev.FeedPos
			return cu
		}
	}
}

// BenchmarkLiveRound measures the engine's side of live fan-out: one
// message committed to a conversation of `members` users (not timed), then
// every member's session reads its live round (conversations, ops,
// position). ns/op is per delivery: one session's round.
func BenchmarkLiveRound(b *testing.B) {
	for _, members := range []int{10, 1000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			e := openOnDisk(b)
			devs := make([]*enginetest.Device, members)
			for i := range devs {
				devs[i] = enginetest.Register(b, e, fmt.Sprintf("member%d", i))
			}
			conv := devs[0].Create("live", devs[1:]...)
			sessions := caughtUpSessions(b, e, devs)
			body := []byte("a message of an everyday length, like most in a chat: see you at lunch?")
			b.ResetTimer()
			for n, round := 0, 0; n < b.N; round++ {
				b.StopTimer()
				author := devs[round%members]
				author.Push(author.Op(conv, model.Op{Kind: model.KindMessage, Body: body}))
				b.StartTimer()
				// The last round may stop short: one op is one delivery.
				for _, s := range sessions[:min(members, b.N-n)] {
					if got := drainSession(b, s); got != 1 {
						b.Fatalf("a live round brought %d ops, want 1", got)
					}
					n++
				}
			}
		})
	}
}

// caughtUpSessions opens a session for each device, closed with the
// benchmark, and takes each one's catch-up.
func caughtUpSessions(b *testing.B, e *engine.Engine, devs []*enginetest.Device) []*engine.Session {
	sessions := make([]*engine.Session, len(devs))
	for i, d := range devs {
		s, err := e.OpenSession(d.Actor, engine.SessionOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(s.Close)
		sessions[i] = s
		drainSession(b, s)
	}
	return sessions
}

// drainSession reads a session's events until it has nothing to send and
// returns the ops it brought.
func drainSession(b *testing.B, s *engine.Session) int {
	ops := 0
	for {
		ev, ok, err := s.Next()
		if err != nil {
			b.Fatal(err)
		}
		if !ok {
			return ops
		}
		for _, bt := range ev.Batches {
			ops += len(bt.Ops)
		}
	}
}

// BenchmarkAppendAfterChurn measures a message to a conversation of four
// members that `left` others joined and left before, and its live round
// to the members' sessions, on an in-memory store: what the members who
// left cost every message after them.
func BenchmarkAppendAfterChurn(b *testing.B) {
	for _, left := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("left=%d", left), func(b *testing.B) {
			engine.MeasureWithoutChecks(b)
			e, err := engine.Open("db", enginetest.Options(b, 1))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = e.Close() })
			devs := make([]*enginetest.Device, 4)
			for i := range devs {
				devs[i] = enginetest.Register(b, e, fmt.Sprintf("member%d", i))
			}
			owner := devs[0]
			conv := owner.Create("churn", devs[1:]...)
			for n := 0; n < left; {
				var in, out []model.Op
				for ; n < left && len(in) < 500; n++ {
					u := enginetest.Register(b, e, fmt.Sprintf("passer%d", n)).Actor.User
					in = append(in, owner.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: u, Role: model.RoleMember}))
					out = append(out, model.Op{Kind: model.KindMemberRemove, Member: u})
				}
				owner.Push(in...)
				for i := range out {
					out[i] = owner.Op(conv, out[i])
				}
				owner.Push(out...)
			}
			sessions := caughtUpSessions(b, e, devs)
			body := []byte("a message of an everyday length, like most in a chat: see you at lunch?")
			b.ResetTimer()
			for range b.N {
				owner.Push(owner.Op(conv, model.Op{Kind: model.KindMessage, Body: body}))
				for _, s := range sessions {
					drainSession(b, s)
				}
			}
		})
	}
}

// BenchmarkRebuild measures a Rebuild of a sound store on disk (which
// reads every log and index, and fixes nothing) of 20 conversations of
// 5,000 messages, and reports its rate in ops.
func BenchmarkRebuild(b *testing.B) {
	engine.MeasureWithoutChecks(b)
	o := enginetest.Options(b, 1)
	o.FS = vfs.Default
	o.MemTableSize, o.CacheSize = 64<<20, 64<<20
	dir := b.TempDir()
	e, err := engine.Open(dir, o)
	if err != nil {
		b.Fatal(err)
	}
	alice := enginetest.Register(b, e, "alice")
	bob := enginetest.Register(b, e, "bob")
	body := []byte("a message of some forty bytes, or so....")
	const convs, messages, push = 20, 5000, 250
	for range convs {
		conv := alice.Create("bench", bob)
		for range messages / push {
			ops := make([]model.Op, push)
			for i := range ops {
				ops[i] = alice.Op(conv, model.Op{Kind: model.KindMessage, Body: body, ContentType: "text/plain"})
			}
			alice.Push(ops...)
		}
	}
	if err := e.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		rep, err := engine.Rebuild(dir, o)
		if err != nil || len(rep.Fixes) > 0 || rep.Check.Err() != nil {
			b.Fatalf("rebuild: %v, fixes %v, check %v", err, rep.Fixes, rep.Check.Err())
		}
	}
	b.ReportMetric(float64(b.N)*convs*(messages+2)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkAuthenticate measures what every call pays to find its device
// from its token: the token's hash, its record's read, and its device's.
// 1000 users with a device each; the tokens asked in turn.
func BenchmarkAuthenticate(b *testing.B) {
	e := openOnDisk(b)
	tokens := make([]string, 1000)
	for i := range tokens {
		tokens[i] = enginetest.Register(b, e, fmt.Sprintf("user%d", i)).Token
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := e.Authenticate(tokens[i%len(tokens)]); err != nil {
			b.Fatal(err)
		}
	}
}
