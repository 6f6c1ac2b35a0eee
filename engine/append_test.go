package engine_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	"github.com/ferrysync/ferry/engine/model"
)

var ctx = context.Background()

func TestConversationStory(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("lunch", bob)
	alice.Send(conv, "pizza?")
	bob.Send(conv, "yes")

	page, err := e.History(bob.Actor, conv, engine.HistoryQuery{After: 0})
	if err != nil {
		t.Fatal(err)
	}
	if got := enginetest.Text(page.Ops); !slices.Equal(got, []string{"1:", "2:", "3:pizza?", "4:yes"}) || page.Head != 4 || page.More {
		t.Fatalf("history = %v head %d more %v", got, page.Head, page.More)
	}
	state := model.Fold(conv, page.Ops)
	if state.Title() != "lunch" || state.Role(bob.Actor.User) != model.RoleMember || len(state.Messages()) != 2 {
		t.Fatalf("state: title %q, bob %v, %d messages", state.Title(), state.Role(bob.Actor.User), len(state.Messages()))
	}
	info, members, vec, err := e.Conversation(alice.Actor, conv)
	if err != nil {
		t.Fatal(err)
	}
	if info.Head != 4 || info.Members != 2 || len(members) != 2 || vec.Get(alice.Actor.Device) != 3 || vec.Get(bob.Actor.Device) != 1 {
		t.Fatalf("conversation: %+v members %d vector %v", info, len(members), vec)
	}
	// Alice sent after bob's... no: bob's message is unread for alice, hers
	// is read for her (sending implies reading).
	if info.Unread != 1 || info.Read != 3 {
		t.Fatalf("alice: unread %d read %d, want 1 and 3", info.Unread, info.Read)
	}
	enginetest.MustCheck(t, e)
}

func TestRetriesAreIdempotent(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	a := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("a")})
	b := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("b")})
	first := alice.Push(a, b)

	// Resend each op several times, old retries after new ops, in one push
	// and across pushes.
	for range 3 {
		res := alice.Push(b, a, b)
		for i, want := range []engine.AppendResult{first[1], first[0], first[1]} {
			if !res[i].Duplicate || res[i].Seq != want.Seq {
				t.Fatalf("retry %d: %+v, want duplicate of seq %d", i, res[i], want.Seq)
			}
		}
	}
	c := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("c")})
	alice.Push(c)
	if res := alice.Push(a); !res[0].Duplicate || res[0].Seq != first[0].Seq {
		t.Fatalf("old retry after a new op: %+v", res[0])
	}
	// The same op id with another payload is refused and changes nothing.
	forged := a
	forged.Body = []byte("changed")
	res, err := e.Append(ctx, alice.Actor, []model.Op{forged})
	if err != nil || !errors.Is(res[0].Err, engine.ErrOpConflict) {
		t.Fatalf("conflicting payload: %v %+v", err, res)
	}
	page, _ := e.History(alice.Actor, conv, engine.HistoryQuery{})
	if got := enginetest.Text(page.Ops); !slices.Equal(got, []string{"1:", "2:a", "3:b", "4:c"}) {
		t.Fatalf("log after retries: %v", got)
	}
	enginetest.MustCheck(t, e)
}

// TestOpIDsBehindTheNewest: the writer reads the op-id index only for an
// op id behind the newest ids its conversation holds. An op that crossed
// another device's on the way is not looked up; one from an outbox kept
// long, and every retry, still are: before and after a restart, with the
// cache checks and without them.
func TestOpIDsBehindTheNewest(t *testing.T) {
	withAndWithoutChecks(t, func(t *testing.T) {
		checks := engine.Checking()
		o := enginetest.Options(t, 11)
		e := enginetest.Open(t, o)
		alice := enginetest.Register(t, e, "alice")
		bob := enginetest.Register(t, e, "bob")
		conv := alice.Create("c", bob)
		msg := func(d *enginetest.Device, text string) model.Op {
			return d.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte(text)})
		}
		reads := func(push func()) uint64 {
			before := e.Metrics().Reads
			push()
			return e.Metrics().Reads - before
		}
		// The ids, in ascending order: late's, those of bob's ops but
		// his last, crossed's, his last's.
		late := msg(alice, "late")
		var bobs []model.Op
		for i := range engine.WindowIDs {
			bobs = append(bobs, msg(bob, fmt.Sprint(i)))
		}
		crossed := msg(alice, "crossed")
		last := &bobs[len(bobs)-1]
		crossed.ID, last.ID = last.ID, crossed.ID
		crossed.Dot, late.Dot = late.Dot, crossed.Dot // pushed first
		bob.Push(bobs...)
		var first []engine.AppendResult
		if n := reads(func() { first = append(first, alice.Push(crossed)[0]) }); !checks && n != 0 {
			t.Fatalf("an op that crossed another on the way took %d store reads; want none", n)
		}
		if n := reads(func() { first = append(first, alice.Push(late)[0]) }); !checks && n == 0 {
			t.Fatalf("an op behind the conversation's newest ids took no store read")
		}
		taken := msg(bob, "late")
		taken.ID = late.ID
		retries := func(when string) {
			t.Helper()
			for i, r := range [][]engine.AppendResult{alice.Push(crossed), alice.Push(late)} {
				if !r[0].Duplicate || r[0].Seq != first[i].Seq {
					t.Fatalf("%s: retry %d: %+v, want a duplicate of seq %d", when, i, r[0], first[i].Seq)
				}
			}
			if r := bob.Push(bobs...); !r[len(r)-1].Duplicate {
				t.Fatalf("%s: bob's retry: %+v", when, r)
			}
			res, err := e.Append(ctx, bob.Actor, []model.Op{taken})
			if err != nil || !errors.Is(res[0].Err, engine.ErrOpConflict) {
				t.Fatalf("%s: another user's op with a taken id: %v %+v", when, err, res)
			}
		}
		retries("before a restart")
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		e = enginetest.Open(t, o, alice, bob)
		retries("after a restart")

		alice.Push(msg(alice, "warm"))
		next := msg(alice, "next")
		if n := reads(func() { alice.Push(next) }); !checks && n != 0 {
			t.Fatalf("pushing a new op took %d store reads; want none", n)
		}
		page, _ := e.History(alice.Actor, conv, engine.HistoryQuery{})
		got := enginetest.Text(page.Ops)
		want := []string{fmt.Sprintf("%d:crossed", 3+len(bobs)), fmt.Sprintf("%d:late", 4+len(bobs)), fmt.Sprintf("%d:warm", 5+len(bobs)), fmt.Sprintf("%d:next", 6+len(bobs))}
		if len(got) != 6+len(bobs) || !slices.Equal(got[len(got)-4:], want) {
			t.Fatalf("log: %v; want it to end with %v", got, want)
		}
		enginetest.MustCheck(t, e)
	})
}

func TestDots(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	msg := func(n uint64, text string) model.Op {
		return model.Op{ID: ulid.Make(), Conv: conv, Dot: model.Dot{Device: alice.Actor.Device, N: n}, Kind: model.KindMessage, Body: []byte(text)}
	}
	res, err := e.Append(ctx, alice.Actor, []model.Op{msg(3, "gap"), msg(1, "reused"), msg(2, "next"), msg(4, "after")})
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0].Err, engine.ErrDotGap) || res[0].ServerDot != 1 || !strings.Contains(res[0].Err.Error(), "holds up to 1") {
		t.Errorf("gap: %+v", res[0])
	}
	if !errors.Is(res[1].Err, engine.ErrDotReused) || res[1].ServerDot != 1 {
		t.Errorf("reuse: %+v", res[1])
	}
	if res[2].Err != nil || res[2].ServerDot != 2 {
		t.Errorf("next: %+v", res[2])
	}
	if !errors.Is(res[3].Err, engine.ErrDotGap) || res[3].ServerDot != 2 {
		t.Errorf("gap after the accepted one: %+v", res[3])
	}
	// A device of another user cannot be claimed.
	bob := enginetest.Register(t, e, "bob")
	forged := msg(2, "x")
	forged.Dot.Device = bob.Actor.Device
	if res, _ := e.Append(ctx, alice.Actor, []model.Op{forged}); !errors.Is(res[0].Err, engine.ErrForbidden) {
		t.Errorf("claimed another user's device: %+v", res[0])
	}
	enginetest.MustCheck(t, e)
}

func TestMalformedPushStoresNothing(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.MaxBodyBytes = 10 })
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	good := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("ok")})
	big := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("far too long a body")})
	_, err := e.Append(ctx, alice.Actor, []model.Op{good, big})
	if !errors.Is(err, model.ErrInvalidOp) || !strings.Contains(err.Error(), "limit of 10") {
		t.Fatalf("got %v, want an invalid-op error naming the limit", err)
	}
	erased := good
	erased.Erased, erased.Body = true, nil
	if _, err := e.Append(ctx, alice.Actor, []model.Op{erased}); !errors.Is(err, model.ErrInvalidOp) {
		t.Fatalf("client-set erased flag: %v", err)
	}
	many := make([]model.Op, 1001)
	if _, err := e.Append(ctx, alice.Actor, many); !errors.Is(err, engine.ErrTooMany) {
		t.Fatalf("1001 ops: %v", err)
	}
	if page, _ := e.History(alice.Actor, conv, engine.HistoryQuery{}); page.Head != 1 {
		t.Fatalf("a rejected push stored ops: head %d", page.Head)
	}
}

func TestPermissions(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	eve := enginetest.Register(t, e, "eve")
	conv := alice.Create("c", bob)
	m := alice.Send(conv, "mine")

	try := func(d *enginetest.Device, op model.Op) error { return d.Try(conv, op).Err }
	if err := try(bob, model.Op{Kind: model.KindEdit, Target: m.ID, Body: []byte("x")}); !errors.Is(err, engine.ErrForbidden) {
		t.Errorf("bob edits alice's message: %v", err)
	}
	if err := try(bob, model.Op{Kind: model.KindSetTitle, Title: "x"}); !errors.Is(err, engine.ErrForbidden) {
		t.Errorf("member sets title: %v", err)
	}
	if err := try(bob, model.Op{Kind: model.KindMemberAdd, Member: eve.Actor.User, Role: model.RoleMember}); !errors.Is(err, engine.ErrForbidden) {
		t.Errorf("member adds: %v", err)
	}
	if err := try(eve, model.Op{Kind: model.KindMessage}); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("stranger sends: %v", err)
	}
	if err := try(alice, model.Op{Kind: model.KindMemberAdd, Member: ulid.Make(), Role: model.RoleMember}); !errors.Is(err, engine.ErrPrecondition) {
		t.Errorf("add a user who does not exist: %v", err)
	}
	if err := try(alice, model.Op{Kind: model.KindEdit, Target: ulid.Make(), Body: []byte("x")}); !errors.Is(err, engine.ErrPrecondition) {
		t.Errorf("edit a message that does not exist: %v", err)
	}
	if err := try(alice, model.Op{Kind: model.KindCreate}); !errors.Is(err, engine.ErrConversationExists) {
		t.Errorf("create again: %v", err)
	}
	if _, err := e.History(eve.Actor, conv, engine.HistoryQuery{}); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("stranger reads: %v", err)
	}
	// Rejected ops took no seq and no dot: bob's next op still fits.
	bob.Send(conv, "still fine") // Push fails the test on a dot gap
	enginetest.MustCheck(t, e)
}

func TestDeleteErasesBodies(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	m := alice.Send(conv, "secret")
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindEdit, Target: m.ID, Body: []byte("secret 2")}))
	del := alice.Op(conv, model.Op{Kind: model.KindDelete, Target: m.ID})
	alice.Push(del)

	page, _ := e.History(bob.Actor, conv, engine.HistoryQuery{})
	for _, op := range page.Ops {
		if strings.Contains(string(op.Body), "secret") {
			t.Fatalf("op %d still carries a deleted body", op.Seq)
		}
	}
	if !page.Ops[2].Erased || !page.Ops[3].Erased || page.Ops[4].Erased {
		t.Fatalf("message and edit not marked erased (or delete marked): %+v %+v %+v", page.Ops[2], page.Ops[3], page.Ops[4])
	}
	// A late retry of the original message is still recognised.
	orig := m
	orig.Seq = 0
	if res := alice.Push(orig); !res[0].Duplicate || res[0].Seq != m.Seq {
		t.Fatalf("retry of an erased message: %+v", res[0])
	}
	// Editing a deleted message is refused.
	if res := alice.Try(conv, model.Op{Kind: model.KindEdit, Target: m.ID, Body: []byte("x")}); !errors.Is(res.Err, engine.ErrPrecondition) {
		t.Fatalf("edit after delete: %+v", res)
	}
	if v, _ := model.Fold(conv, page.Ops).Message(m.ID); !v.Deleted || v.Body != nil {
		t.Fatalf("state after delete: %+v", v)
	}
	enginetest.MustCheck(t, e)
}

// TestHistoryPagesFitInAResponse: pages are bounded in bytes as well as
// in ops, so a conversation of large messages can still be paged.
func TestHistoryPagesFitInAResponse(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("big")
	for range 40 {
		alice.Push(alice.Op(conv, model.Op{Kind: model.KindMessage, Body: make([]byte, 60<<10)}))
	}
	size := func(ops []model.Op) (n int) {
		for _, op := range ops {
			n += len(op.Body)
		}
		return n
	}
	var got []model.Op
	after := uint64(0)
	for range 100 {
		page, err := e.History(alice.Actor, conv, engine.HistoryQuery{After: after})
		if err != nil {
			t.Fatal(err)
		}
		if size(page.Ops) > engine.MaxPageBytes {
			t.Fatalf("a page carried %d bytes", size(page.Ops))
		}
		got = append(got, page.Ops...)
		if !page.More {
			break
		}
		after = page.Ops[len(page.Ops)-1].Seq
	}
	if len(got) != 41 {
		t.Fatalf("paged %d ops, want 41", len(got))
	}
	// The newest page ends at the head and is as large as fits.
	page, err := e.History(alice.Actor, conv, engine.HistoryQuery{Before: 42})
	if err != nil || page.Ops[len(page.Ops)-1].Seq != 41 || !page.More || size(page.Ops) > engine.MaxPageBytes {
		t.Fatalf("newest page: %d ops ending at %d, more %v (%v)", len(page.Ops), page.Ops[len(page.Ops)-1].Seq, page.More, err)
	}
}

func TestDeviceLimit(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.MaxDevicesPerUser = 2 })
	alice := enginetest.Register(t, e, "alice")
	enginetest.Login(t, e, "alice")
	if _, err := e.Login(ctx, "alice", "correct horse", "third"); !errors.Is(err, engine.ErrTooMany) {
		t.Fatalf("third device: %v", err)
	}
	devs, _ := e.Devices(alice.Actor)
	if err := e.RevokeDevice(ctx, alice.Actor, devs[1].ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Login(ctx, "alice", "correct horse", "third"); err != nil {
		t.Fatalf("after revoking one: %v", err)
	}
}

// TestRevokedDevicesLeaveNoRecords: revoking a device deletes its record,
// so that a user who signs in and out in a loop does not grow what every
// Login scans in the writer; a Login deletes the revoked records older
// stores kept.
func TestRevokedDevicesLeaveNoRecords(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	records := func() int {
		t.Helper()
		n, err := engine.DeviceRecords(e, alice.Actor.User)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for range 5 {
		d := enginetest.Login(t, e, "alice")
		if err := e.RevokeDevice(ctx, alice.Actor, d.Actor.Device); err != nil {
			t.Fatal(err)
		}
		if _, err := e.Authenticate(d.Token); !errors.Is(err, engine.ErrUnauthenticated) {
			t.Fatalf("a revoked device's token: %v", err)
		}
	}
	if n := records(); n != 1 {
		t.Fatalf("%d device records after 5 devices came and were revoked, want alice's 1", n)
	}
	if err := engine.AddRevokedDevice(e, alice.Actor.User); err != nil {
		t.Fatal(err)
	}
	enginetest.Login(t, e, "alice")
	if n := records(); n != 2 {
		t.Fatalf("%d device records after a login, want 2: the old revoked one deleted", n)
	}
	if devs, err := e.Devices(alice.Actor); err != nil || len(devs) != 2 {
		t.Fatalf("devices %v, %v; want 2", devs, err)
	}
	enginetest.MustCheck(t, e)
}

func TestRemovedMemberReadsUpToRemoval(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	alice.Send(conv, "before")
	rm := alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
	alice.Send(conv, "after")

	page, err := e.History(bob.Actor, conv, engine.HistoryQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if page.Head != rm[0].Seq || page.Ops[len(page.Ops)-1].Seq != rm[0].Seq {
		t.Fatalf("removed member reads to %d (head %d), want to the removal at %d", page.Ops[len(page.Ops)-1].Seq, page.Head, rm[0].Seq)
	}
	if res := bob.Try(conv, model.Op{Kind: model.KindMessage}); !errors.Is(res.Err, engine.ErrForbidden) ||
		!strings.Contains(res.Err.Error(), "no longer a member") || res.ServerDot != 0 {
		t.Fatalf("removed member sends: %+v (forbidden, saying why; a removed member learns no server dot)", res)
	}
	// Bob sees the conversation as it was when he left.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindSetTitle, Title: "after bob"}))
	info, members, vec, err := e.Conversation(bob.Actor, conv)
	if err != nil || info.Title != "c" || info.Members != 0 || members != nil || vec.Len() != 0 {
		t.Fatalf("removed member's view: %+v %v %v (%v)", info, members, vec, err)
	}
	rep, err := e.Repair(bob.Actor, conv, model.Vector{}, 100)
	if err != nil || rep.Vector.Len() != 0 || rep.Want != nil || len(rep.Missing) != int(rm[0].Seq) {
		t.Fatalf("removed member's repair: %+v (%v)", rep, err)
	}
	// Re-added, bob reads everything again.
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberAdd, Member: bob.Actor.User, Role: model.RoleMember}))
	if page, _ := e.History(bob.Actor, conv, engine.HistoryQuery{}); page.Head != 7 {
		t.Fatalf("re-added member's head %d, want 7", page.Head)
	}
	enginetest.MustCheck(t, e)
}

// TestMaxMembers: a conversation takes members up to Options.MaxMembers;
// one more is rejected, later or in the push that creates it, and is
// taken once a member leaves.
func TestMaxMembers(t *testing.T) {
	e := enginetest.New(t, func(o *engine.Options) { o.MaxMembers = 3 })
	alice := enginetest.Register(t, e, "alice")
	bob := enginetest.Register(t, e, "bob")
	carol := enginetest.Register(t, e, "carol")
	dave := enginetest.Register(t, e, "dave")
	addDave := model.Op{Kind: model.KindMemberAdd, Member: dave.Actor.User, Role: model.RoleMember}
	full := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, engine.ErrPrecondition) || !strings.Contains(err.Error(), "has 3 members, the most this server allows") {
			t.Fatalf("%s: %v, want the conversation full", what, err)
		}
	}

	conv := alice.Create("c", bob, carol)
	full("a fourth member", alice.Try(conv, addDave).Err)

	other := ulid.Make()
	ops := []model.Op{alice.Op(other, model.Op{Kind: model.KindCreate, Title: "other"})}
	for _, d := range []*enginetest.Device{bob, carol, dave} {
		ops = append(ops, alice.Op(other, model.Op{Kind: model.KindMemberAdd, Member: d.Actor.User, Role: model.RoleMember}))
	}
	res, err := e.Append(ctx, alice.Actor, ops)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res[:3] {
		if r.Err != nil {
			t.Fatalf("op %d of the creating push: %v", i, r.Err)
		}
	}
	full("a fourth member in the creating push", res[3].Err)

	carol.Push(carol.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: carol.Actor.User}))
	if r := alice.Try(conv, addDave); r.Err != nil {
		t.Fatalf("dave, once carol left: %v", r.Err)
	}
	info, members, _, err := e.Conversation(alice.Actor, conv)
	if err != nil || info.Members != 3 {
		t.Fatalf("conversation: %+v, %d listed, %v; want 3 members", info, len(members), err)
	}
	enginetest.MustCheck(t, e)
}

// TestTimeRangePagesThroughOneMillisecond: ops whose ids share a
// millisecond (clients choose them) are paged through with AfterID, each
// once, in id order; a range's start alone could not go past the first
// page.
func TestTimeRangePagesThroughOneMillisecond(t *testing.T) {
	e := enginetest.New(t)
	alice := enginetest.Register(t, e, "alice")
	conv := alice.Create("c")
	ms := ulid.Timestamp(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	var want []ulid.ULID
	for i := range 5 {
		var id ulid.ULID
		if err := id.SetTime(ms); err != nil {
			t.Fatal(err)
		}
		id[15] = byte(i + 1)
		op := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("m"), ContentType: "text/plain"})
		op.ID = id
		alice.Push(op)
		want = append(want, id)
	}
	q := engine.HistoryQuery{Start: ulid.Time(ms), End: ulid.Time(ms + 1), Limit: 2}
	var got []ulid.ULID
	for range 10 {
		page, err := e.History(alice.Actor, conv, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range page.Ops {
			got = append(got, op.ID)
		}
		if !page.More {
			if page.NextAfterID != (ulid.ULID{}) {
				t.Errorf("the last page gives a next id, %s", page.NextAfterID)
			}
			break
		}
		q.AfterID = page.NextAfterID
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged %v, want %v", got, want)
	}
	// An id to go on after that is past the range's end: an empty page.
	var past ulid.ULID
	if err := past.SetTime(ms + 1000); err != nil {
		t.Fatal(err)
	}
	q.AfterID = past
	if page, err := e.History(alice.Actor, conv, q); err != nil || len(page.Ops) > 0 || page.More {
		t.Fatalf("after an id past the range: %d ops, more %v, %v; want none", len(page.Ops), page.More, err)
	}
}

// TestRemovedMemberTimeRangeIsBounded: a removed member's time-range page
// passes over the ops after their removal, which they may not read, a
// bounded number a page, so that one small request never reads the
// conversation's whole later history: a page that holds ops ends at its
// last, and the next, which would hold none, fails, saying to read by seq.
func TestRemovedMemberTimeRangeIsBounded(t *testing.T) {
	e := enginetest.New(t)
	alice, bob := enginetest.Register(t, e, "alice"), enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	alice.Send(conv, "before")
	rm := alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
	const later = 10_000
	for range later / 1000 {
		ops := make([]model.Op, 1000)
		for i := range ops {
			ops[i] = alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("after"), ContentType: "text/plain"})
		}
		alice.Push(ops...)
	}
	q := engine.HistoryQuery{Start: time.UnixMilli(0), End: time.Now().Add(24 * time.Hour), Limit: 100}
	page := func() (engine.HistoryPage, error) {
		t.Helper()
		reads := e.Metrics().Reads
		p, err := e.History(bob.Actor, conv, q)
		if n := e.Metrics().Reads - reads; n > later/2 {
			t.Fatalf("a page read the store %d times, for %d ops", n, len(p.Ops))
		}
		return p, err
	}
	p, err := page()
	if err != nil || len(p.Ops) != 4 || !p.More || p.NextAfterID != rm[0].Op {
		t.Fatalf("first page: %d ops, more %v, next %s (%v); want the 4 up to bob's removal, more, and next its id", len(p.Ops), p.More, p.NextAfterID, err)
	}
	q.AfterID = p.NextAfterID
	if _, err := page(); !errors.Is(err, engine.ErrInvalid) || !strings.Contains(err.Error(), "by seq") {
		t.Fatalf("the page past the removal: %v, want it refused, saying to read by seq", err)
	}
}

// TestRemovedMemberTimeRangeSaysNothingLater: the id a removed member's
// page goes on after is always one of the ops it returns, never one of
// those written after the removal that it passed over, whose ids (clients
// choose them) may lie between.
func TestRemovedMemberTimeRangeSaysNothingLater(t *testing.T) {
	e := enginetest.New(t)
	alice, bob := enginetest.Register(t, e, "alice"), enginetest.Register(t, e, "bob")
	conv := alice.Create("c", bob)
	a := alice.Send(conv, "a")
	b := alice.Send(conv, "b")
	alice.Push(alice.Op(conv, model.Op{Kind: model.KindMemberRemove, Member: bob.Actor.User}))
	// Written after bob's removal, with an id between a's and b's.
	laterID := a.ID
	laterID[15]++
	later := alice.Op(conv, model.Op{Kind: model.KindMessage, Body: []byte("after"), ContentType: "text/plain"})
	later.ID = laterID
	alice.Push(later)
	if laterID.Compare(b.ID) >= 0 {
		t.Fatalf("the later op's id %s is not below b's %s", laterID, b.ID)
	}
	q := engine.HistoryQuery{Start: time.UnixMilli(0), End: time.Now().Add(24 * time.Hour), Limit: 1}
	returned := map[ulid.ULID]bool{}
	for range 10 {
		p, err := e.History(bob.Actor, conv, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range p.Ops {
			returned[op.ID] = true
		}
		if !p.More {
			break
		}
		if !returned[p.NextAfterID] {
			t.Fatalf("the page goes on after %s, which it did not return (the later op's is %s)", p.NextAfterID, laterID)
		}
		q.AfterID = p.NextAfterID
	}
	if returned[laterID] || !returned[a.ID] || !returned[b.ID] || len(returned) != 5 {
		t.Fatalf("returned %d ops (a %v, b %v, the later one %v); want the 5 up to the removal", len(returned), returned[a.ID], returned[b.ID], returned[laterID])
	}
}
