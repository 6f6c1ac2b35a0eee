package server_test

import (
	"strconv"
	"strings"
	"testing"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestFeedPositionsSayNothingOfOthersCommits: a feed position counts every
// commit on the server, so a client that saw them could tell, between two
// of its rounds, how many commits other users made, in conversations it is
// not in. It sees each position sealed instead, which it gives back to
// resume, as the plain position a server sent before sealing still does.
// A position the server did not give resets the device, and the reset's
// message names no position.
func TestFeedPositionsSayNothingOfOthersCommits(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	alice, bob := newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
	carol, dave := newDev(t, srv.Register("carol")), newDev(t, srv.Register("dave"))
	ours := alice.createConv("ours", bob)
	theirs := carol.createConv("theirs", dave)

	s := alice.open(hello("", 0))
	s.untilCaughtUp()
	epoch := s.welcome.GetEpoch()
	seen := []uint64{s.welcome.GetFeedPos(), s.caught.GetFeedPos()}
	live := func() uint64 {
		t.Helper()
		return s.until(func(m *ferryv1.SyncResponse) bool { return m.GetOps().GetFeedPos() != 0 }).GetOps().GetFeedPos()
	}
	bob.send(ours, "one")
	before := live()
	const others = 5
	for i := range others {
		carol.send(theirs, "not for alice "+strconv.Itoa(i))
	}
	bob.send(ours, "two")
	after := live()
	seen = append(seen, before, after)
	s.close()

	// The positions moved by the others' commits; what alice saw did not
	// say so.
	if got := alice.Position(after) - alice.Position(before); got != others+1 {
		t.Fatalf("the server's position moved %d between alice's rounds; the test wants %d", got, others+1)
	}
	for _, c := range seen {
		if pos := alice.Position(c); c == pos || c>>63 == 0 {
			t.Fatalf("alice was sent %d for position %d: not sealed", c, pos)
		}
	}

	// A sealed position resumes where it was, and so does the plain one a
	// server sent before sealing: nothing comes again.
	for _, resume := range []uint64{after, alice.Position(after)} {
		s = alice.open(hello(epoch, resume))
		s.untilCaughtUp()
		if n := s.caught.GetOps(); n != 0 || s.welcome.GetMissingOps() != 0 {
			t.Fatalf("resumed from %#x: %d ops again (welcome says %d missing)", resume, n, s.welcome.GetMissingOps())
		}
		s.close()
	}

	// Made up, or beyond the server's: the device repairs, and learns no
	// position from the message.
	now := alice.Position(after)
	for _, bad := range []uint64{after ^ 1<<40, now + 1000, 1<<63 | 1<<62} {
		s = alice.open(hello(epoch, bad))
		m := s.recv().GetResetRequired()
		if m.GetReason() != ferryv1.ResetReason_RESET_REASON_POSITION_AHEAD {
			t.Fatalf("hello with %#x: %v; want a reset, position ahead", bad, m)
		}
		if msg := m.GetMessage(); strings.Contains(msg, strconv.FormatUint(now, 10)) || strings.ContainsAny(msg, "0123456789") {
			t.Fatalf("hello with %#x: the reset says %q, with a number in it", bad, msg)
		}
		s.close()
	}
}
