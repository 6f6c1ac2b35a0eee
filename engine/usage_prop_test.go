package engine_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

type pmsg struct {
	author ulid.ULID
	size   int64
	edits  []int64
	gone   bool
}

// TestUsageProperty: users push messages, edits, deletes, reactions and
// retries at once, into three conversations, under a quota; the store is
// restarted now and then, at times as one of format 5 that counts its
// usage again. After each round every user's usage is what a model of
// the accepted ops gives, and Check agrees. (From a review of the quota.)
func TestUsageProperty(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { usageProperty(t, seed) })
	}
}

func usageProperty(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	o := enginetest.Options(t, seed)
	const quota = 3000
	o.UserQuota = quota
	e, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { e.Close() }()
	ids := enginetest.NewIDs(seed + 100)
	var devs []*enginetest.Device
	for i := range 4 {
		devs = append(devs, enginetest.Register(t, e, fmt.Sprintf("user%d", i)))
	}
	var convs []ulid.ULID
	for range 3 {
		c := devs[0].Create("c", devs[1:]...)
		convs = append(convs, c)
		// everyone admin, so anyone may delete
		for _, d := range devs[1:] {
			devs[0].Push(devs[0].Op(c, model.Op{Kind: model.KindMemberRole, Member: d.Actor.User, Role: model.RoleAdmin}))
		}
	}
	// Each device's dot in each conversation, from the server's answer to
	// an op with a dot far too high: rejected, saying where it stands.
	dots := map[[2]ulid.ULID]uint64{}
	for _, d := range devs {
		for _, c := range convs {
			op := model.Op{ID: ids.New(), Conv: c, Kind: model.KindSetTitle, Title: "x", Dot: model.Dot{Device: d.Actor.Device, N: 1 << 40}}
			res, err := e.Append(context.Background(), d.Actor, []model.Op{op})
			if err != nil {
				t.Fatal(err)
			}
			dots[[2]ulid.ULID{d.Actor.Device, c}] = res[0].ServerDot
		}
	}
	base := map[ulid.ULID]int64{} // each user's usage before the rounds
	for _, d := range devs {
		n, err := e.Usage(d.Actor.User)
		if err != nil {
			t.Fatal(err)
		}
		base[d.Actor.User] = n
	}
	added := map[ulid.ULID]int64{} // what the accepted ops of the rounds count
	msgs := map[ulid.ULID]*pmsg{}  // by op id, accepted messages
	msgConv := map[ulid.ULID]ulid.ULID{}
	var msgIDs []ulid.ULID
	var stored []model.Op // accepted ops, for retries
	var storedBy []engine.Actor

	stats := map[string]int{}
	defer func() { t.Logf("stats %v", stats) }()
	for round := range 60 {
		type push struct {
			d   *enginetest.Device
			ops []model.Op
		}
		var pushes []push
		for _, d := range devs {
			if rng.IntN(4) == 0 {
				continue
			}
			c := convs[rng.IntN(len(convs))]
			k := [2]ulid.ULID{d.Actor.Device, c}
			var ops []model.Op
			local := []ulid.ULID{}
			for range 1 + rng.IntN(5) {
				dots[k]++
				op := model.Op{ID: ids.New(), Conv: c, Dot: model.Dot{Device: d.Actor.Device, N: dots[k]}}
				// candidate targets: messages in c (known) or made in this push
				var targets []ulid.ULID
				for _, id := range msgIDs {
					if msgConv[id] == c {
						targets = append(targets, id)
					}
				}
				targets = append(targets, local...)
				switch r := rng.IntN(10); {
				case r < 4 || len(targets) == 0:
					op.Kind, op.Body, op.ContentType = model.KindMessage, []byte(strings.Repeat("m", 1+rng.IntN(700))), "text/plain"
					local = append(local, op.ID)
				case r < 7:
					op.Kind, op.Target = model.KindEdit, targets[rng.IntN(len(targets))]
					op.Body, op.ContentType = []byte(strings.Repeat("e", 1+rng.IntN(300))), "text/plain"
				case r < 9:
					op.Kind, op.Target = model.KindDelete, targets[rng.IntN(len(targets))]
				default:
					op.Kind, op.Target, op.ReactionKey = model.KindReactionAdd, targets[rng.IntN(len(targets))], "x"
				}
				ops = append(ops, op)
			}
			// sometimes a retry of a stored op of this user
			if len(stored) > 0 && rng.IntN(3) == 0 {
				i := rng.IntN(len(stored))
				if storedBy[i].User == d.Actor.User {
					ops = append(ops, stored[i])
				}
			}
			pushes = append(pushes, push{d, ops})
		}
		results := make([][]engine.AppendResult, len(pushes))
		var wg sync.WaitGroup
		for i, p := range pushes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := e.Append(context.Background(), p.d.Actor, p.ops)
				if err != nil {
					t.Error(err)
				}
				results[i] = res
			}()
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		// apply accepted ops in (conv, seq) order
		type acc struct {
			op  model.Op
			a   engine.Actor
			seq uint64
		}
		var accs []acc
		for i, p := range pushes {
			last := uint64(0)
			for j, r := range results[i] {
				switch {
				case r.Err != nil:
					msg := r.Err.Error()
					if i := strings.Index(msg, ":"); i > 0 {
						msg = msg[:i]
					}
					stats["rej "+msg]++
				case r.Duplicate:
					stats["dup"]++
				default:
					stats[p.ops[j].Kind.String()]++
				}
				if r.Err == nil && !r.Duplicate {
					accs = append(accs, acc{p.ops[j], p.d.Actor, r.Seq})
				}
				if r.Err != nil && !strings.Contains(r.Err.Error(), "not a message") && !strings.Contains(r.Err.Error(), "quota") && !strings.Contains(r.Err.Error(), "dot") && !strings.Contains(r.Err.Error(), "deleted") && !strings.Contains(r.Err.Error(), "not in this conversation") {
					t.Logf("rejected: %v", r.Err)
				}
				if p.ops[j].Conv == p.ops[0].Conv && r.ServerDot > 0 {
					last = r.ServerDot
				}
			}
			if len(p.ops) > 0 {
				c := p.ops[0].Conv
				dots[[2]ulid.ULID{p.d.Actor.Device, c}] = max(last, 0)
			}
		}
		sort.Slice(accs, func(i, j int) bool {
			if accs[i].op.Conv != accs[j].op.Conv {
				return accs[i].op.Conv.Compare(accs[j].op.Conv) < 0
			}
			return accs[i].seq < accs[j].seq
		})
		for _, a := range accs {
			op := a.op
			stored = append(stored, op)
			storedBy = append(storedBy, a.a)
			added[a.a.User] += engine.UsagePerOp + int64(len(op.Body)+len(op.ContentType)+len(op.Title)+len(op.ReactionKey))
			switch op.Kind {
			case model.KindMessage:
				msgs[op.ID] = &pmsg{author: a.a.User, size: int64(len(op.Body) + len(op.ContentType))}
				msgConv[op.ID] = op.Conv
				msgIDs = append(msgIDs, op.ID)
			case model.KindEdit:
				m := msgs[op.Target]
				if m.gone {
					t.Fatalf("round %d: an edit of a deleted message accepted", round)
				}
				m.edits = append(m.edits, int64(len(op.Body)+len(op.ContentType)))
			case model.KindDelete:
				msgs[op.Target].gone = true
			}
		}
		want := map[ulid.ULID]int64{}
		for u, n := range base {
			want[u] = n + added[u]
		}
		for _, m := range msgs {
			if !m.gone {
				continue
			}
			want[m.author] -= engine.UsagePerOp + m.size // erased, with its edits
			for _, n := range m.edits {
				want[m.author] -= engine.UsagePerOp + n
			}
		}
		for _, d := range devs {
			got, err := e.Usage(d.Actor.User)
			if err != nil {
				t.Fatal(err)
			}
			if got != want[d.Actor.User] {
				t.Fatalf("seed %d round %d: usage of %s = %d, model %d", seed, round, d.Actor.User, got, want[d.Actor.User])
			}
		}
		enginetest.MustCheck(t, e)
		if rng.IntN(8) == 0 {
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if rng.IntN(2) == 0 {
				if err := engine.ForgetUsage(o.FS, "db", 5); err != nil {
					t.Fatal(err)
				}
			}
			if e, err = engine.Open("db", o); err != nil {
				t.Fatal(err)
			}
			for _, d := range devs {
				d.E = e
			}
			enginetest.MustCheck(t, e)
		}
	}
}
