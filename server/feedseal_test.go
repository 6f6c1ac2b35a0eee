package server_test

import (
	"strconv"
	"strings"
	"testing"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestFeedPositionsSayNothingOfOthersCommits: the server's feed position
// counts every commit on it, so a client that saw it could tell, between
// two of its rounds or reconnects, whether and how many commits other
// users made, in conversations it is not in. It is given instead the
// position of its own user's latest change, sealed: the same while only
// others write, and two of them say nothing of the commits between. It
// gives one back to resume. A position the server did not give (made up,
// or plain, which a new store never sent) resets the device, and the
// reset's message names no position.
func TestFeedPositionsSayNothingOfOthersCommits(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
	carol, dave := newDev(t, srv.Register("carol")), newDev(t, srv.Register("dave"))
	ours := alice.createConv("ours", bob)
	theirs := carol.createConv("theirs", dave)
	others := func(n int) {
		for i := range n {
			carol.send(theirs, "not for alice "+strconv.Itoa(i))
		}
	}

	h := hello("", 0)
	h.SkipOwnOps = true
	s := alice.open(h)
	s.untilCaughtUp()
	epoch := s.welcome.GetEpoch()
	seen := []uint64{s.welcome.GetFeedPos(), s.caught.GetFeedPos()}
	live := func() uint64 {
		t.Helper()
		return s.until(func(m *ferryv1.SyncResponse) bool { return m.GetOps().GetFeedPos() != 0 }).GetOps().GetFeedPos()
	}
	others(3)
	bob.send(ours, "one")
	before := live()
	others(5)
	bob.send(ours, "two")
	after := live()
	// Her own push's result carries a position too.
	s.push(1, ours, alice.op(ours, msg("three")))
	result := s.until(func(m *ferryv1.SyncResponse) bool { return m.GetPushResult() != nil }).GetPushResult().GetFeedPos()
	seen = append(seen, before, after, result)
	s.close()
	for _, c := range seen {
		if pos := alice.Position(c); c == pos || c>>63 == 0 {
			t.Fatalf("alice was sent %d for position %d: not sealed", c, pos)
		}
	}
	if got := alice.Position(after) - alice.Position(before); got != 6 {
		t.Fatalf("alice's rounds' positions are %d apart; want 6: the others' 5 commits and bob's", got)
	}

	// Reconnecting while only others write: the same position each time.
	var welcomes []uint64
	for range 2 {
		s = alice.open(hello(epoch, result))
		s.untilCaughtUp()
		if n := s.caught.GetOps(); n != 0 || s.caught.GetFeedPos() != result {
			t.Fatalf("resumed from %#x: %d ops again, caught up at %#x", result, n, s.caught.GetFeedPos())
		}
		welcomes = append(welcomes, s.welcome.GetFeedPos())
		s.close()
		others(2)
	}
	if welcomes[0] != result || welcomes[1] != result {
		t.Fatalf("alice's welcomes, others writing between: %#x; want her position %#x each time", welcomes, result)
	}

	// Made up, or plain (which this store never sent): the device repairs,
	// and learns no position from the message.
	now := alice.Position(result)
	for _, bad := range []uint64{result ^ 1<<40, now + 1000, 1<<63 | 1<<62, 1, now} {
		s = alice.open(hello(epoch, bad))
		m := s.recv().GetResetRequired()
		if m.GetReason() != ferryv1.ResetReason_RESET_REASON_POSITION_AHEAD {
			t.Fatalf("hello with %#x: %v; want a reset, position ahead", bad, m)
		}
		if msg := m.GetMessage(); strings.ContainsAny(msg, "0123456789") {
			t.Fatalf("hello with %#x: the reset says %q, with a number in it", bad, msg)
		}
		s.close()
	}
}
