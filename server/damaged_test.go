package server_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/oklog/ulid/v2"

	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/enginetest"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// TestDamagedConversation: a conversation whose store holds a member
// record that does not decode is fenced off, and the server serves every
// other conversation: a push's ops there are answered RETRY_LATER with
// reason CONVERSATION_DAMAGED, beside the push's other ops, stored, for a
// client that asked for RETRY_LATER (a unary push that did not fails
// UNAVAILABLE); reads of it fail DATA_LOSS; its members' sessions catch
// up on the rest; /metrics counts it.
func TestDamagedConversation(t *testing.T) {
	var alice, bob *dev
	var good, bad string
	_, srvB := damagedServer(t, func(srv *servertest.Server) {
		alice, bob = newDev(t, srv.Register("alice")), newDev(t, srv.Register("bob"))
		good = alice.createConv("good", bob)
		bad = alice.createConv("bad", bob)
		alice.send(good, "g1")
		alice.send(bad, "b1")
	}, func(fs vfs.FS) error {
		_, err := enginetest.GarbleMember(fs, "db", ulid.MustParseStrict(bad), ulid.MustParseStrict(bob.user()))
		return err
	})
	alice.Clients, bob.Clients = srvB.Clients(alice.Session.GetToken()), srvB.Clients(bob.Session.GetToken())

	// Without retry_later, the push fails whole.
	_, err := alice.Sync.Push(context.Background(), &ferryv1.PushRequest{Batches: []*ferryv1.OpBatch{{ConversationId: bad, Ops: []*ferryv1.Op{alice.op(bad, msg("b2"))}}}})
	if ce := new(connect.Error); !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || !strings.Contains(ce.Message(), "conversation "+bad) {
		t.Fatalf("push to the damaged conversation: %v; want unavailable, naming it", err)
	}
	// With it, the ops of bad wait, and good's go on. The op refused
	// above took no dot: the same one goes again.
	alice.dots[bad]--
	resp, err := alice.Sync.Push(context.Background(), &ferryv1.PushRequest{RetryLater: true, Batches: []*ferryv1.OpBatch{
		{ConversationId: bad, Ops: []*ferryv1.Op{alice.op(bad, msg("b2"))}},
		{ConversationId: good, Ops: []*ferryv1.Op{alice.op(good, msg("g2"))}},
	}})
	if err != nil {
		t.Fatalf("push: %v", err)
	}
	rs := resp.GetResults()
	if len(rs) != 2 || rs[0].GetStatus() != ferryv1.OpStatus_OP_STATUS_RETRY_LATER || rs[0].GetReason() != ferryv1.RejectReason_REJECT_REASON_CONVERSATION_DAMAGED ||
		!strings.Contains(rs[0].GetMessage(), "conversation "+bad) || rs[1].GetStatus() != ferryv1.OpStatus_OP_STATUS_ACCEPTED || rs[1].GetSeq() != 4 {
		t.Fatalf("results %v; want bad's op to wait, naming it, and good's stored at seq 4", rs)
	}
	if resp.GetRetryAfterMs() != 60_000 {
		t.Errorf("retry after %d ms, want a minute", resp.GetRetryAfterMs())
	}

	// Reads of it fail DATA_LOSS.
	_, err = bob.Sync.History(context.Background(), &ferryv1.HistoryRequest{ConversationId: bad})
	if ce := new(connect.Error); !errors.As(err, &ce) || ce.Code() != connect.CodeDataLoss || !strings.Contains(ce.Message(), "conversation "+bad) {
		t.Fatalf("history of the damaged conversation: %v; want data_loss, naming it", err)
	}
	// Bob's session catches up on good alone.
	s := bob.open(hello("", 0))
	s.untilCaughtUp()
	s.close()
	if _, ok := s.infos[bad]; ok || s.infos[good].GetHead() != 4 {
		t.Fatalf("bob's catch-up: %v; want good at head 4 alone", s.infos)
	}

	rec := httptest.NewRecorder()
	srvB.Server.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "\nferry_conversations_damaged 1\n") {
		t.Errorf("/metrics does not count one damaged conversation:\n%s", rec.Body.String())
	}
}

// TestDamagedAccount: a user whose record does not decode cannot sign in
// (DATA_LOSS, naming the account), and stops nothing else: the
// conversations they are in list them by id alone, and the others sign
// in and read.
func TestDamagedAccount(t *testing.T) {
	var alice, carol *dev
	var conv string
	engB, srvB := damagedServer(t, func(srv *servertest.Server) {
		alice, carol = newDev(t, srv.Register("alice")), newDev(t, srv.Register("carol"))
		conv = alice.createConv("pair", carol)
	}, func(fs vfs.FS) error {
		_, err := enginetest.GarbleUser(fs, "db", ulid.MustParseStrict(carol.user()))
		return err
	})
	alice.Clients = srvB.Clients(alice.Session.GetToken())

	_, err := srvB.Clients("").Account.Login(context.Background(), &ferryv1.LoginRequest{Username: "carol", Password: "correct horse", DeviceName: "phone"})
	if ce := new(connect.Error); !errors.As(err, &ce) || ce.Code() != connect.CodeDataLoss || !strings.Contains(ce.Message(), `"carol"`) {
		t.Fatalf("carol's login: %v; want data_loss, naming her", err)
	}
	resp, err := alice.Conversation.GetConversation(context.Background(), &ferryv1.GetConversationRequest{ConversationId: conv})
	if err != nil {
		t.Fatalf("alice's conversation with carol: %v", err)
	}
	var listed bool
	for _, m := range resp.GetMembers() {
		listed = listed || m.GetUserId() == carol.user() && m.GetUsername() == ""
	}
	if !listed {
		t.Errorf("members %v; want carol listed by id alone", resp.GetMembers())
	}
	srvB.Login("alice", "laptop")
	if err := engB.Failed(); err != nil {
		t.Fatalf("the store failed: %v", err)
	}
}

// damagedServer serves a new store that setup fills, then, the server
// stopped, damages it with damage, and serves it again: it returns the
// engine and the server of the second start.
func damagedServer(t *testing.T, setup func(*servertest.Server), damage func(vfs.FS) error) (*engine.Engine, *servertest.Server) {
	t.Helper()
	fs := vfs.NewMem()
	o := enginetest.Options(t, 1)
	o.FS = fs
	engA, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	srvA := servertest.New(t, servertest.Config{Use: engA})
	setup(srvA)
	srvA.Stop()
	if err := engA.Close(); err != nil {
		t.Fatal(err)
	}
	if err := damage(fs); err != nil {
		t.Fatal(err)
	}
	engB, err := engine.Open("db", o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engB.Close() }) // after the server's cleanup: LIFO
	return engB, servertest.New(t, servertest.Config{Use: engB})
}
