package clientsdk_test

import (
	"encoding/binary"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/ferrysync/ferry/clientsdk"
	"github.com/ferrysync/ferry/engine"
	"github.com/ferrysync/ferry/engine/model"
	"github.com/ferrysync/ferry/internal/wire"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
	"github.com/ferrysync/ferry/server/servertest"
)

// futureBody marks the messages newerServer turns into ops of a kind this
// version does not know.
const futureBody = "from the future"

// newerServer makes a device's Sync streams read as a newer server's would:
// each message whose body is futureBody arrives as an op of kind 99, which
// carries its payload in fields this version does not know (PackedBatch
// says where a newer kind's payload goes); with rows, the batches arrive as
// rows, and such an op's payload in a field of Op this version does not
// know.
type newerServer struct {
	base http.RoundTripper
	rows bool
}

func (n newerServer) RoundTrip(r *http.Request) (*http.Response, error) {
	return syncRewrite{base: n.base, rewrite: func(env []byte) []byte { return futureKinds(env, n.rows) }}.RoundTrip(r)
}

// syncRewrite passes a device's Sync streams' responses through rewrite,
// one envelope at a time, uncompressed.
type syncRewrite struct {
	base    http.RoundTripper
	rewrite func(env []byte) []byte
}

func (w syncRewrite) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, "/Sync") {
		return w.base.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Del("Connect-Accept-Encoding") // uncompressed envelopes, to rewrite
	resp, err := w.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &rewrittenBody{ReadCloser: resp.Body, rewrite: w.rewrite}
	return resp, nil
}

// rewrittenBody passes a Connect stream's envelopes on with rewrite
// applied to each.
type rewrittenBody struct {
	io.ReadCloser
	rewrite func(env []byte) []byte
	in, out []byte
	err     error
}

func (b *rewrittenBody) Read(p []byte) (int, error) {
	for len(b.out) == 0 && b.err == nil {
		if len(b.in) >= 5 {
			if size := 5 + int(binary.BigEndian.Uint32(b.in[1:5])); len(b.in) >= size {
				b.out = append(b.out, b.rewrite(b.in[:size])...)
				b.in = b.in[size:]
				continue
			}
		}
		buf := make([]byte, 32<<10)
		n, err := b.ReadCloser.Read(buf)
		b.in = append(b.in, buf[:n]...)
		if err != nil {
			b.out, b.in, b.err = append(b.out, b.in...), nil, err
		}
	}
	if len(b.out) == 0 {
		return 0, b.err
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	return n, nil
}

// futureKinds rewrites one envelope: in its packed batches, each message
// whose body is futureBody becomes kind 99, without its body and content
// type; with rows, the batches become rows, and such a message's payload
// field 99 of Op.
func futureKinds(env []byte, rows bool) []byte {
	var m ferryv1.SyncResponse
	if env[0] != 0 || proto.Unmarshal(env[5:], &m) != nil || m.GetOps() == nil {
		return env
	}
	changed := false
	for i, p := range m.GetOps().GetPacked() {
		conv, ops, err := wire.UnpackBatch("packed", p)
		if err != nil {
			panic(err)
		}
		if rows {
			b := &ferryv1.OpBatch{ConversationId: conv.String()}
			for j := range ops {
				row := wire.OpToProto(&ops[j])
				if ops[j].Kind == model.KindMessage && string(ops[j].Body) == futureBody {
					row.Payload = nil
					row.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), []byte("new")))
				}
				b.Ops = append(b.Ops, row)
			}
			m.GetOps().Batches = append(m.GetOps().Batches, b)
			changed = true
			continue
		}
		packed, err := wire.PackBatch(conv, ops)
		if err != nil {
			panic(err)
		}
		body, at := 0, 0 // the op's body among the batch's, and where it starts
		for j := range ops {
			if !ops[j].Kind.HasBody() {
				continue
			}
			size := int(packed.BodySizes[body])
			if ops[j].Kind != model.KindMessage || string(ops[j].Body) != futureBody {
				body, at = body+1, at+size
				continue
			}
			packed.Kinds[j] = 99
			packed.BodySizes = slices.Delete(packed.BodySizes, body, body+1)
			packed.ContentTypes = slices.Delete(packed.ContentTypes, body, body+1)
			packed.BodyData = slices.Delete(packed.BodyData, at, at+size)
			changed = true
		}
		m.GetOps().Packed[i] = packed
	}
	if rows {
		m.GetOps().Packed = nil
	}
	if !changed {
		return env
	}
	b, err := proto.Marshal(&m)
	if err != nil {
		panic(err)
	}
	return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b))), b...)
}

// TestNewerKindsAreKeptNotShown: a device that gets ops of a kind its
// version does not know (from a newer server) keeps them as ops it cannot
// show: it syncs on, lists the messages around them and the conversation's
// last message it can show, and holds every dot of their author. Before,
// it refused the whole batch as malformed, and read the same batch again
// at each reconnect, never getting past it.
func TestNewerKindsAreKeptNotShown(t *testing.T) {
	for _, rows := range []bool{false, true} {
		t.Run(map[bool]string{false: "packed", true: "rows"}[rows], func(t *testing.T) { testNewerKinds(t, rows) })
	}
}

func testNewerKinds(t *testing.T, rows bool) {
	srv := servertest.New(t, servertest.Config{})
	alice := device(t, srv, "alice", false)
	bob := device(t, srv, "bob", false, clientsdk.WithHTTPClient(&http.Client{Transport: newerServer{base: srv.HTTP.Transport, rows: rows}}))
	conv, err := alice.CreateConversation(ctx, "c", lookup(t, alice, "bob"))
	if err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{"before", futureBody, "after", futureBody} {
		if _, err := alice.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
	}
	if err := alice.SyncOnce(ctx); err != nil {
		t.Fatal(err)
	}

	if err := bob.SyncOnce(ctx); err != nil {
		t.Fatalf("sync with ops of a newer kind: %v", err)
	}
	if got := texts(messages(t, bob, conv)); !slices.Equal(got, []string{"before", "after"}) {
		t.Fatalf("bob's messages %q; want before, after", got)
	}
	c, err := bob.Conversation(conv)
	if err != nil {
		t.Fatal(err)
	}
	if c.LastMessage == nil || c.LastMessage.Text() != "after" {
		t.Fatalf("bob's last message %+v; want after", c.LastMessage)
	}
	v, err := bob.Vector(conv)
	if err != nil {
		t.Fatal(err)
	}
	av, err := alice.Vector(conv)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Equal(av) {
		t.Fatalf("bob holds %v of the conversation; alice %v", v, av)
	}

	// Live, the same.
	if err := bob.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, bob, "live", func() bool { return bob.Status().State == clientsdk.StateLive })
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{futureBody, "later"} {
		if _, err := alice.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, bob, "the message after a newer kind's op", has(t, bob, conv, "before", "after", "later"))
	if st := bob.Status(); st.State != clientsdk.StateLive || st.Err != nil {
		t.Fatalf("bob's status %+v; want live, no error", st)
	}
}

// TestRestoreLeavesNewerKindsToTheirDevice: after a restore, a device of
// an older version holds its user's op of a newer kind without its
// payload, so it leaves that op, and its device's ops after it, to the
// device that sent it. Before, it gave the op back without a payload: the
// server refused it, the op's later ones went again a dot lower, and the
// sending device could no longer give it back.
func TestRestoreLeavesNewerKindsToTheirDevice(t *testing.T) {
	srv, url := restoreServer(t, 9)
	open := func(login bool, opts ...clientsdk.Option) *clientsdk.Device {
		d, err := clientsdk.OpenMemory(append([]clientsdk.Option{clientsdk.WithServer(url), clientsdk.WithBackoff(5*time.Millisecond, 50*time.Millisecond)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		if login {
			err = d.Login(ctx, "alice", "correct horse", "laptop")
		} else {
			err = d.Register(ctx, "alice", "correct horse", "phone")
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		return d
	}
	phone := open(false, clientsdk.WithHTTPClient(&http.Client{Transport: newerServer{base: servertest.H2CClient().Transport}}))
	laptop := open(true)
	conv, err := laptop.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := laptop.SendText(ctx, conv, "kept"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, phone, "the kept message", has(t, phone, conv, "kept"))
	if err := srv.eng.Backup("backup"); err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{futureBody, "lost"} {
		if _, err := laptop.SendText(ctx, conv, text); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, phone, "the laptop's ops", has(t, phone, conv, "kept", "lost"))
	phone.Stop()
	laptop.Stop()

	// The phone repairs first, alone.
	restore(t, srv)
	if err := phone.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, phone, "the phone repaired", func() bool { return phone.Status().State == clientsdk.StateLive && phone.Status().Pending == 0 })
	if err := laptop.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, laptop, "the laptop repaired", func() bool {
		return laptop.Status().State == clientsdk.StateLive && laptop.Status().Pending == 0 && has(t, laptop, conv, "kept", futureBody, "lost")()
	})
	acc, err := laptop.Account()
	if err != nil {
		t.Fatal(err)
	}
	if got := serverFingerprint(t, srv.eng, engine.Actor{User: acc.User, Device: acc.Device}, conv); len(got) != 3 || !strings.Contains(got[1], futureBody) {
		t.Fatalf("the server holds %q; want kept, %s, lost", got, futureBody)
	}
	if fs, _ := laptop.Failed(); len(fs) != 0 {
		t.Fatalf("the laptop's ops failed: %+v", fs)
	}
	waitFor(t, phone, "the phone has what it can show", has(t, phone, conv, "kept", "lost"))
}

// TestPushResultOfAnUnreadableOpIsSkipped: a push result may answer an op
// by the id it was sent, which the server could not read; a device sends
// ULIDs, so such an answer is not for one of its ops, and it goes on with
// the rest. Here a rewriting transport adds one to each push result: the
// device still sends its message, and stays live.
func TestPushResultOfAnUnreadableOpIsSkipped(t *testing.T) {
	srv := servertest.New(t, servertest.Config{})
	unreadable := func(env []byte) []byte {
		var m ferryv1.SyncResponse
		if env[0] != 0 || proto.Unmarshal(env[5:], &m) != nil || m.GetPushResult() == nil {
			return env
		}
		pr := m.GetPushResult()
		pr.Results = append([]*ferryv1.OpResult{{ConversationId: "?", OpId: "not an id", Status: ferryv1.OpStatus_OP_STATUS_REJECTED,
			Reason: ferryv1.RejectReason_REJECT_REASON_INVALID, Message: "op_id: not a ULID"}}, pr.GetResults()...)
		b, err := proto.Marshal(&m)
		if err != nil {
			panic(err)
		}
		return append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(b))), b...)
	}
	alice := device(t, srv, "alice", false,
		clientsdk.WithHTTPClient(&http.Client{Transport: syncRewrite{base: srv.HTTP.Transport, rewrite: unreadable}}))
	conv, err := alice.CreateConversation(ctx, "notes")
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Start(); err != nil {
		t.Fatal(err)
	}
	id, err := alice.SendText(ctx, conv, "after an answer to someone else's op")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, alice, "the message sent", func() bool {
		st := alice.Status()
		return st.State == clientsdk.StateLive && st.Pending == 0
	})
	if s := status(t, alice, conv, id); s != clientsdk.StatusSent {
		t.Fatalf("message status %v, want sent", s)
	}
	if f, err := alice.Failed(); err != nil || len(f) != 0 {
		t.Fatalf("failed ops %v (%v), want none", f, err)
	}
}
