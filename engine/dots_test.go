package engine_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

// dotsChat is a conversation of two members whose devices pushed ops in
// runs of several, one of one, and their log as the engine gives it.
type dotsChat struct {
	e            *engine.Engine
	alice, bob   *enginetest.Device
	conv         ulid.ULID
	log          []model.Op // by seq - 1
	pushes, dots int
}

func newDotsChat(t *testing.T, o engine.Options) *dotsChat {
	t.Helper()
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	c := &dotsChat{e: e, alice: enginetest.Register(t, e, "alice"), bob: enginetest.Register(t, e, "bob")}
	c.conv = c.alice.Create("runs", c.bob) // one push: the create and the addition
	c.pushes = 1
	for _, p := range []struct {
		d *enginetest.Device
		n int
	}{{c.alice, 16}, {c.bob, 10}, {c.alice, 1}, {c.bob, 5}, {c.alice, 7}} {
		c.push(t, p.d, p.n)
	}
	return c
}

// push pushes n messages of d in one push.
func (c *dotsChat) push(t *testing.T, d *enginetest.Device, n int) {
	t.Helper()
	ops := make([]model.Op, n)
	for i := range ops {
		ops[i] = d.Op(c.conv, model.Op{Kind: model.KindMessage, Body: []byte(fmt.Sprint("message ", i)), ContentType: "text/plain"})
	}
	d.Push(ops...)
	c.pushes++
}

// reload reads the log again, after pushes.
func (c *dotsChat) reload(t *testing.T) {
	t.Helper()
	page, err := c.e.History(c.alice.Actor, c.conv, engine.HistoryQuery{Limit: engine.MaxHistoryLimit})
	if err != nil {
		t.Fatal(err)
	}
	c.log = page.Ops
}

// check repairs from every vector a device of either member could hold,
// with a limit that cuts the answer and one that does not, and compares
// the answers with the log; and compares the vector with it.
func (c *dotsChat) check(t *testing.T) {
	t.Helper()
	c.reload(t)
	highest := map[ulid.ULID]uint64{}
	for _, op := range c.log {
		highest[op.Dot.Device] = max(highest[op.Dot.Device], op.Dot.N)
	}
	a, b := c.alice.Actor.Device, c.bob.Actor.Device
	for ha := range highest[a] + 1 {
		for _, hb := range []uint64{0, 1, highest[b] / 2, highest[b]} {
			have := model.NewVector(model.Dot{Device: a, N: ha}, model.Dot{Device: b, N: hb})
			for _, limit := range []int{3, 1000} {
				rep := checkRepair(t, c.e, c.bob.Actor, c.conv, c.log, have, limit)
				if !rep.Vector.Equal(model.NewVector(model.Dot{Device: a, N: highest[a]}, model.Dot{Device: b, N: highest[b]})) {
					t.Fatalf("repair's vector %v; the log's highest dots are %v", rep.Vector, highest)
				}
			}
		}
	}
	enginetest.MustCheck(t, c.e)
}

// checkRepair repairs conv from have for a, limit ops a page, and fails
// the test unless the answer brings the lowest seqs of log that have
// lacks, and says whether there are more.
func checkRepair(t *testing.T, e *engine.Engine, a engine.Actor, conv ulid.ULID, log []model.Op, have model.Vector, limit int) engine.RepairResult {
	t.Helper()
	var want []uint64
	for _, op := range log {
		if op.Dot.N > have.Get(op.Dot.Device) {
			want = append(want, op.Seq)
		}
	}
	rep, err := e.Repair(a, conv, have, limit)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, op := range rep.Missing {
		got = append(got, op.Seq)
	}
	w := want[:min(limit, len(want))]
	if !slices.Equal(got, w) || rep.More != (len(want) > limit) {
		t.Fatalf("repair from %v, limit %d: seqs %v (more %v); want %v (more %v)", have, limit, got, rep.More, w, len(want) > limit)
	}
	return rep
}

// TestDotIndexInRuns: the dot index holds an entry for each run of a
// device's dots at consecutive seqs, a push's, not one for each op; repairs
// from every vector, the conversation's vector and Check read the runs as
// the dots they stand for, in a store written so, in one written a dot an
// entry (format 4 and before), and in one holding both.
func TestDotIndexInRuns(t *testing.T) {
	o := enginetest.Options(t, 3)
	c := newDotsChat(t, o)
	if n, err := engine.DotEntries(c.e, c.conv); err != nil || n != c.pushes {
		t.Fatalf("%d pushes left %d dot index entries (%v); want one each", c.pushes, n, err)
	}
	c.check(t)

	// The same store as format 4 left it, a dot an entry.
	if err := c.e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := engine.AsFormat4(o.FS, "db"); err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c.e, c.alice.E, c.bob.E = e, e, e
	if n, err := engine.DotEntries(e, c.conv); err != nil || n != len(c.log) {
		t.Fatalf("as format 4 wrote it, the dot index holds %d entries (%v); want one for each of the %d ops", n, err, len(c.log))
	}
	c.check(t)

	// Runs after single dots, of the same devices.
	c.push(t, c.bob, 9)
	c.push(t, c.alice, 12)
	c.check(t)
}

// TestCheckFindsBrokenDotRuns: Check says which dot index entry is wrong:
// a run pointing at the wrong seqs, one past the log, one that covers an
// op twice, and a run gone.
func TestCheckFindsBrokenDotRuns(t *testing.T) {
	for _, c := range []struct {
		name       string
		seq, count uint64 // seq 0: the run's own
		want       string
	}{
		{"wrong seqs", 1, 16, "which holds"},
		{"past the log", 38, 16, "outside the log"},
		{"twice", 0, 17, "twice"},
		{"gone", 0, 0, "missing"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := enginetest.Options(t, 4)
			chat := newDotsChat(t, o)
			defer chat.e.Close()
			chat.reload(t)
			// Alice's run of 16, after the create's run of 2.
			first := chat.log[2]
			if first.Dot.N != 3 || chat.log[17].Dot.N != 18 {
				t.Fatalf("alice's 16 messages hold dots %d to %d; want 3 to 18", first.Dot.N, chat.log[17].Dot.N)
			}
			seq := first.Seq
			if c.seq != 0 {
				seq = c.seq
			}
			if err := engine.SetDotRun(chat.e, chat.conv, first.Dot.Device, first.Dot.N, seq, c.count); err != nil {
				t.Fatal(err)
			}
			rep, err := chat.e.Check()
			if err != nil {
				t.Fatal(err)
			}
			if err := rep.Err(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("check of a dot index with a run %s: %v; want a problem saying %q", c.name, err, c.want)
			}
		})
	}
}

// TestCheckOfOpsAtStraySeqs: an op key moved to seq 0 or far past the
// head (a corrupt key) leaves a gap in the log; Check says so, and that
// the dot index points into the gap, and ends: it once filled the log's
// gaps up to each seq, which at seq 0 wrapped around and ran the process
// out of memory.
func TestCheckOfOpsAtStraySeqs(t *testing.T) {
	for _, seq := range []uint64{0, 1 << 56} {
		t.Run(fmt.Sprint("seq ", seq), func(t *testing.T) {
			chat := newDotsChat(t, enginetest.Options(t, 4))
			defer chat.e.Close()
			// Seq 10 is in alice's run of 16 (seqs 3 to 18).
			if err := engine.MoveOp(chat.e, chat.conv, 10, seq); err != nil {
				t.Fatal(err)
			}
			rep, err := chat.e.Check()
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{fmt.Sprintf("seq %d follows", seq), "at seq 10, which the log lacks"} {
				if !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, want) }) {
					t.Fatalf("check of a log with seq 10 moved to %d: %q; want a problem saying %q", seq, rep.Problems, want)
				}
			}
		})
	}
}

// TestRepairMergesManyDevices: a repair's missing ops are the lowest seqs
// the vector lacks, however many devices wrote, and finding them reads a
// few entries a device, not the limit's worth each: a new device's repair
// of a conversation every device of its members ever wrote to.
func TestRepairMergesManyDevices(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("many")
	devs := []*enginetest.Device{alice}
	for len(devs) < 60 {
		devs = append(devs, enginetest.Login(t, e, "alice"))
	}
	for round := range 20 {
		for i, d := range devs {
			// Runs of one to three ops, in turn: seqs interleave.
			n := 1 + (i+round)%3
			ops := make([]model.Op, n)
			for k := range ops {
				ops[k] = d.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("m"), ContentType: "text/plain"})
			}
			d.Push(ops...)
		}
	}
	var log []model.Op
	for after := uint64(0); ; {
		page, err := e.History(alice.Actor, conv, engine.HistoryQuery{After: after, Limit: engine.MaxHistoryLimit})
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, page.Ops...)
		if !page.More {
			break
		}
		after = page.Ops[len(page.Ops)-1].Seq
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 1))
	for try := range 20 {
		// The first try is a new device's (an empty vector); the others
		// hold a random share of each device's dots.
		var dots []model.Dot
		if try > 0 {
			for _, d := range devs {
				dots = append(dots, model.Dot{Device: d.Actor.Device, N: rnd.Uint64N(70)})
			}
		}
		limit := []int{10, 1, 500}[try%3]
		reads := e.Metrics().Reads
		checkRepair(t, e, alice.Actor, conv, log, model.NewVector(dots...), limit)
		reads = e.Metrics().Reads - reads
		if try == 0 {
			t.Logf("a new device's repair of %d ops read the store %d times, over %d devices", limit, reads, len(devs))
		}
		if try == 0 && reads > uint64(3*len(devs)+3*limit+20) {
			t.Errorf("a new device's repair of %d ops read the store %d times, over %d devices", limit, reads, len(devs))
		}
	}
}
