package wire

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	"github.com/ferrysync/ferry/engine/model"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// genRun draws a run of one conversation's ops as the log holds them:
// consecutive seqs, each author's dots rising, every kind with its payload,
// some erased, id times that may step back (device clocks lie).
func genRun(t *rapid.T, conv ulid.ULID) []model.Op {
	ids := func(label string) ulid.ULID {
		var id ulid.ULID
		copy(id[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, label))
		return id
	}
	type author struct {
		device, user ulid.ULID
		dot          uint64
	}
	authors := make([]*author, rapid.IntRange(1, 4).Draw(t, "authors"))
	for i := range authors {
		device := ids("device")
		device[15] = byte(i) // distinct: a device belongs to one user
		authors[i] = &author{device: device, user: ids("user"), dot: rapid.Uint64Range(0, 1<<40).Draw(t, "first dot")}
	}
	first := rapid.Uint64Range(1, 1<<50).Draw(t, "first seq")
	ms := rapid.Uint64Range(0, 1<<47).Draw(t, "time")
	ops := make([]model.Op, rapid.IntRange(0, 60).Draw(t, "ops"))
	for i := range ops {
		a := rapid.SampledFrom(authors).Draw(t, "author")
		a.dot += rapid.Uint64Range(1, 3).Draw(t, "dot step")
		ms = uint64(int64(ms) + rapid.Int64Range(-5000, 5000).Draw(t, "time step"))
		ms = min(max(ms, 0), maxIDTime)
		id := ids("id")
		_ = id.SetTime(ms)
		op := model.Op{ID: id, Conv: conv, Seq: first + uint64(i), User: a.user, Dot: model.Dot{Device: a.device, N: a.dot},
			Kind: model.Kind(rapid.IntRange(int(model.KindCreate), int(model.KindSetTitle)).Draw(t, "kind"))}
		switch op.Kind {
		case model.KindCreate, model.KindSetTitle:
			op.Title = rapid.String().Draw(t, "title")
		case model.KindReactionAdd, model.KindReactionRemove:
			op.ReactionKey = rapid.String().Draw(t, "key")
		}
		if op.Kind.HasBody() {
			op.Body = rapid.SliceOfN(rapid.Byte(), 0, 40).Draw(t, "body")
			op.ContentType = rapid.SampledFrom([]string{"", "text/plain", "image/png"}).Draw(t, "content type")
		}
		if op.Kind.HasTarget() {
			op.Target = ids("target")
		}
		if op.Kind.HasMember() {
			op.Member = ids("member")
		}
		if op.Kind == model.KindMemberAdd || op.Kind == model.KindMemberRole {
			op.Role = model.Role(rapid.IntRange(1, 3).Draw(t, "role"))
		}
		op.Erased = op.Kind.HasBody() && rapid.IntRange(0, 4).Draw(t, "erased") == 0
		ops[i] = op
	}
	return ops
}

// sameOps compares ops field by field, a nil body equal to an empty one.
func sameOps(a, b []model.Op) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d ops, want %d", len(a), len(b))
	}
	for i := range a {
		x, y := a[i], b[i]
		if !bytes.Equal(x.Body, y.Body) {
			return fmt.Errorf("op %d: body %q, want %q", i, x.Body, y.Body)
		}
		x.Body, y.Body = nil, nil
		if !reflect.DeepEqual(x, y) {
			return fmt.Errorf("op %d: %+v, want %+v", i, x, y)
		}
	}
	return nil
}

// TestPackedBatchRoundTrips: any run of ops packs, crosses the wire and
// unpacks to the same ops, and to the same rows as OpToProto makes.
func TestPackedBatchRoundTrips(t *testing.T) {
	conv := ulid.MustParseStrict("01JCQ0000000000000000C0NV1")
	rapid.Check(t, func(t *rapid.T) {
		ops := genRun(t, conv)
		p, err := PackBatch(conv, ops)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := proto.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var back ferryv1.PackedBatch
		if err := proto.Unmarshal(raw, &back); err != nil {
			t.Fatal(err)
		}
		gotConv, got, err := UnpackBatch("packed", &back)
		if err != nil {
			t.Fatalf("unpack: %v", err)
		}
		if gotConv != conv {
			t.Fatalf("conversation %s, want %s", gotConv, conv)
		}
		if err := sameOps(got, ops); err != nil {
			t.Fatal(err)
		}
		for i := range ops {
			if !proto.Equal(OpToProto(&got[i]), OpToProto(&ops[i])) {
				t.Fatalf("op %d: rows differ: %v, want %v", i, OpToProto(&got[i]), OpToProto(&ops[i]))
			}
		}
	})
}

// TestPackRefusesWhatTheLogCannotHold: a packed batch has consecutive
// seqs, and each device's dots rise with them.
func TestPackRefusesWhatTheLogCannotHold(t *testing.T) {
	conv, dev := ulid.Make(), ulid.Make()
	ops := []model.Op{{ID: ulid.Make(), Seq: 4, Dot: model.Dot{Device: dev, N: 1}, Kind: model.KindDelete},
		{ID: ulid.Make(), Seq: 6, Dot: model.Dot{Device: dev, N: 2}, Kind: model.KindDelete}}
	if _, err := PackBatch(conv, ops); err == nil || !strings.Contains(err.Error(), "consecutive") {
		t.Errorf("pack of seqs 4, 6: %v; want an error about consecutive seqs", err)
	}
	ops[1].Seq, ops[1].Dot.N = 5, 1
	if _, err := PackBatch(conv, ops); err == nil || !strings.Contains(err.Error(), "dots rise") {
		t.Errorf("pack of dots 1, 1: %v; want an error about dots", err)
	}
	ops[1].Dot.N, ops[1].User = 2, ulid.Make()
	if _, err := PackBatch(conv, ops); err == nil || !strings.Contains(err.Error(), "authors ops of users") {
		t.Errorf("pack of one device's ops of two users: %v; want an error", err)
	}
}

// TestUnpackRefusesMalformedBatches: each way a batch can lie about its ops
// gets an error that names the field, and no ops.
func TestUnpackRefusesMalformedBatches(t *testing.T) {
	conv := ulid.Make()
	dev, user := ulid.Make(), ulid.Make()
	valid := func() *ferryv1.PackedBatch {
		ops := []model.Op{
			{ID: ulid.Make(), Seq: 1, User: user, Dot: model.Dot{Device: dev, N: 1}, Kind: model.KindCreate, Title: "t"},
			{ID: ulid.Make(), Seq: 2, User: user, Dot: model.Dot{Device: dev, N: 2}, Kind: model.KindMemberAdd, Member: ulid.Make(), Role: model.RoleMember},
			{ID: ulid.Make(), Seq: 3, User: user, Dot: model.Dot{Device: dev, N: 3}, Kind: model.KindMessage, Body: []byte("hi"), ContentType: "text/plain"},
			{ID: ulid.Make(), Seq: 4, User: user, Dot: model.Dot{Device: dev, N: 4}, Kind: model.KindDelete, Target: ulid.Make()},
		}
		p, err := PackBatch(conv, ops)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if _, ops, err := UnpackBatch("b", valid()); err != nil || len(ops) != 4 {
		t.Fatalf("the valid batch: %d ops, %v", len(ops), err)
	}
	for _, c := range []struct {
		name, want string
		spoil      func(p *ferryv1.PackedBatch)
	}{
		{"bad conversation", "b.conversation_id", func(p *ferryv1.PackedBatch) { p.ConversationId = "nope" }},
		{"seq zero", "b.first_seq", func(p *ferryv1.PackedBatch) { p.FirstSeq = 0 }},
		{"seq overflow", "b.first_seq", func(p *ferryv1.PackedBatch) { p.FirstSeq = 1<<64 - 2 }},
		{"short authors", "b.authors", func(p *ferryv1.PackedBatch) { p.Authors = p.Authors[1:] }},
		{"short dots", "b.dot_steps", func(p *ferryv1.PackedBatch) { p.DotSteps = p.DotSteps[1:] }},
		{"short times", "b.time_steps", func(p *ferryv1.PackedBatch) { p.TimeSteps = nil }},
		{"short entropy", "b.id_entropy", func(p *ferryv1.PackedBatch) { p.IdEntropy = p.IdEntropy[1:] }},
		{"author out of range", "b.authors[1]", func(p *ferryv1.PackedBatch) { p.Authors[1] = 1 }},
		{"author table", "author devices", func(p *ferryv1.PackedBatch) { p.AuthorUsers = nil }},
		{"author id size", "author 0", func(p *ferryv1.PackedBatch) { p.AuthorDevices[0] = p.AuthorDevices[0][:15] }},
		{"same device twice", "the same device", func(p *ferryv1.PackedBatch) {
			p.AuthorDevices, p.AuthorUsers = append(p.AuthorDevices, p.AuthorDevices[0]), append(p.AuthorUsers, make([]byte, 16))
		}},
		{"more authors than ops", "5 authors for 4 ops", func(p *ferryv1.PackedBatch) {
			for range 4 {
				p.AuthorDevices, p.AuthorUsers = append(p.AuthorDevices, make([]byte, 16)), append(p.AuthorUsers, make([]byte, 16))
			}
		}},
		{"dot step zero", "b.dot_steps[2]", func(p *ferryv1.PackedBatch) { p.DotSteps[2] = 0 }},
		{"dot overflow", "b.dot_steps[3]", func(p *ferryv1.PackedBatch) { p.DotSteps[3] = 1<<64 - 1 }},
		{"time before zero", "b.time_steps[0]", func(p *ferryv1.PackedBatch) { p.TimeSteps[0] = -1 }},
		{"time too big", "b.time_steps[1]", func(p *ferryv1.PackedBatch) { p.TimeSteps[1] = 1 << 48 }},
		{"unspecified kind", "b.kinds[0] is unspecified", func(p *ferryv1.PackedBatch) { p.Kinds[0] = ferryv1.OpKind_OP_KIND_UNSPECIFIED }},
		// A newer kind takes no entry of the payload fields: the create's
		// title is then one text too many.
		{"newer kind", "b.texts", func(p *ferryv1.PackedBatch) { p.Kinds[0] = 99 }},
		{"missing text", "b.texts", func(p *ferryv1.PackedBatch) { p.Texts = nil }},
		{"extra text", "b.texts", func(p *ferryv1.PackedBatch) { p.Texts = append(p.Texts, "x") }},
		{"missing body", "b.body_sizes", func(p *ferryv1.PackedBatch) { p.BodySizes = nil }},
		{"extra body", "2 body sizes", func(p *ferryv1.PackedBatch) { p.BodySizes = append(p.BodySizes, 0) }},
		{"short body data", "b.body_data ends inside body 0", func(p *ferryv1.PackedBatch) { p.BodyData = p.BodyData[:1] }},
		{"long body data", "b.body_data has 1 bytes after", func(p *ferryv1.PackedBatch) { p.BodyData = append(p.BodyData, '!') }},
		{"extra content type", "content types", func(p *ferryv1.PackedBatch) { p.ContentTypes = append(p.ContentTypes, "x") }},
		{"short target", "b.targets", func(p *ferryv1.PackedBatch) { p.Targets = p.Targets[:15] }},
		{"long target", "b.targets", func(p *ferryv1.PackedBatch) { p.Targets = append(p.Targets, 0) }},
		{"short member", "b.members", func(p *ferryv1.PackedBatch) { p.Members = nil }},
		{"missing role", "b.roles", func(p *ferryv1.PackedBatch) { p.Roles = nil }},
		{"bad role", "b.roles[0]", func(p *ferryv1.PackedBatch) { p.Roles[0] = 9 }},
		{"erased order", "b.erased", func(p *ferryv1.PackedBatch) { p.Erased = []uint32{2, 1} }},
		{"erased range", "b.erased", func(p *ferryv1.PackedBatch) { p.Erased = []uint32{4} }},
	} {
		p := valid()
		c.spoil(p)
		_, ops, err := UnpackBatch("b", p)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) || ops != nil {
			t.Errorf("%s: %d ops, error %v; want ErrMalformed naming %q", c.name, len(ops), err, c.want)
		}
	}
}

// TestUnpackKeepsNewerKinds: an op of a kind a newer version added, whose
// payload lies in fields this version does not know, unpacks as one of
// KindUnknown with its id, seq, author and dot, and the ops after it read
// their payloads as before; a row of a payload this version does not know
// parses the same way as received, and is malformed as pushed.
func TestUnpackKeepsNewerKinds(t *testing.T) {
	conv := ulid.Make()
	dev, user := ulid.Make(), ulid.Make()
	ops := []model.Op{
		{ID: ulid.Make(), Seq: 5, User: user, Dot: model.Dot{Device: dev, N: 1}, Kind: model.KindSetTitle, Title: "t"},
		{ID: ulid.Make(), Seq: 6, User: user, Dot: model.Dot{Device: dev, N: 2}, Kind: model.KindMessage, Body: []byte("from the future"), ContentType: "x/new"},
		{ID: ulid.Make(), Seq: 7, User: user, Dot: model.Dot{Device: dev, N: 3}, Kind: model.KindReactionAdd, Target: ulid.Make(), ReactionKey: "+1"},
		{ID: ulid.Make(), Seq: 8, User: user, Dot: model.Dot{Device: dev, N: 4}, Kind: model.KindEdit, Target: ulid.Make(), Body: []byte("edited"), ContentType: "text/plain"},
	}
	p, err := PackBatch(conv, ops)
	if err != nil {
		t.Fatal(err)
	}
	// The message becomes an op of kind 99, which carries its payload in
	// fields of its own: its body and content type leave the batch.
	p.Kinds[1] = 99
	p.BodySizes, p.ContentTypes = p.BodySizes[1:], p.ContentTypes[1:]
	p.BodyData = p.BodyData[len(ops[1].Body):]
	_, got, err := UnpackBatch("b", p)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(ops)
	want[1] = model.Op{ID: ops[1].ID, Conv: conv, Seq: 6, User: user, Dot: ops[1].Dot, Kind: model.KindUnknown}
	for i := range want {
		want[i].Conv = conv
	}
	if err := sameOps(got, want); err != nil {
		t.Fatal(err)
	}

	// As a row: an Op whose payload is a field this version does not know.
	row := OpToProto(&ops[1])
	row.Payload = nil
	row.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), []byte("new")))
	b, err := proto.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	var again ferryv1.Op
	if err := proto.Unmarshal(b, &again); err != nil {
		t.Fatal(err)
	}
	op, err := ReceivedOp("op", conv, &again)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameOps([]model.Op{op}, want[1:2]); err != nil {
		t.Fatalf("received row: %v", err)
	}
	if _, err := Op("op", conv, &again); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "op has no payload") {
		t.Fatalf("pushed row: error %v; want ErrMalformed, no payload", err)
	}
}

// FuzzUnpackBatch: any bytes decode to an error or to ops that pack and
// unpack to themselves (but for a newer kind's, which this version cannot
// pack); nothing panics.
func FuzzUnpackBatch(f *testing.F) {
	conv, dev := ulid.Make(), ulid.Make()
	p, _ := PackBatch(conv, []model.Op{
		{ID: ulid.Make(), Seq: 7, User: ulid.Make(), Dot: model.Dot{Device: dev, N: 3}, Kind: model.KindEdit, Target: ulid.Make(), Body: []byte("x")},
		{ID: ulid.Make(), Seq: 8, Dot: model.Dot{Device: dev, N: 9}, Kind: model.KindReactionAdd, Target: ulid.Make(), ReactionKey: "+1"},
	})
	seed, _ := proto.Marshal(p)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, raw []byte) {
		var p ferryv1.PackedBatch
		if proto.Unmarshal(raw, &p) != nil {
			return
		}
		conv, ops, err := UnpackBatch("fuzz", &p)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(ops) != len(p.GetKinds()) {
			t.Fatalf("%d ops of %d kinds", len(ops), len(p.GetKinds()))
		}
		if slices.ContainsFunc(ops, func(op model.Op) bool { return op.Kind == model.KindUnknown }) {
			return // a newer kind's op, which this version cannot pack
		}
		again, err := PackBatch(conv, ops)
		if err != nil {
			t.Fatalf("repack of unpacked ops: %v", err)
		}
		_, back, err := UnpackBatch("again", again)
		if err != nil {
			t.Fatalf("unpack of the repacked batch: %v", err)
		}
		if err := sameOps(back, ops); err != nil {
			t.Fatal(err)
		}
	})
}

// TestPackedBatchesCompressBetter: on a thousand chat messages of two
// authors, packed and compressed is at most 85% of rows compressed (the
// bench's catch-up measures about 80%).
func TestPackedBatchesCompressBetter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	words := strings.Fields("ok see you at lunch the deploy is done can you review my branch thanks 👍 meeting at 10am later")
	conv := ulid.Make()
	devs := [2]ulid.ULID{ulid.Make(), ulid.Make()}
	users := [2]ulid.ULID{ulid.Make(), ulid.Make()}
	entropy := ulid.Monotonic(rand.NewChaCha8([32]byte{1}), 0)
	ms := uint64(1_760_000_000_000)
	ops := make([]model.Op, 1000)
	for i := range ops {
		a := r.IntN(2)
		var text []string
		for range 1 + r.IntN(20) {
			text = append(text, words[r.IntN(len(words))])
		}
		ms += uint64(r.IntN(3000))
		ops[i] = model.Op{ID: ulid.MustNew(ms, entropy), Seq: uint64(i + 1), User: users[a], Dot: model.Dot{Device: devs[a], N: uint64(i + 1)},
			Kind: model.KindMessage, Body: []byte(strings.Join(text, " ")), ContentType: "text/plain"}
	}
	rows := &ferryv1.OpBatch{ConversationId: conv.String()}
	for i := range ops {
		rows.Ops = append(rows.Ops, OpToProto(&ops[i]))
	}
	packed, err := PackBatch(conv, ops)
	if err != nil {
		t.Fatal(err)
	}
	enc, _ := zstd.NewWriter(nil)
	size := func(m proto.Message) int {
		raw, _ := proto.Marshal(m)
		return len(enc.EncodeAll(raw, nil))
	}
	rowBytes, packedBytes := size(rows), size(packed)
	t.Logf("1000 ops compressed: rows %d B, packed %d B (%.2f)", rowBytes, packedBytes, float64(packedBytes)/float64(rowBytes))
	if packedBytes > rowBytes*85/100 {
		t.Errorf("packed %d B is over 85%% of rows %d B", packedBytes, rowBytes)
	}
}

// TestAppendPackedBatchIsCanonical: the encoding AppendPackedBatch writes
// is what protobuf itself marshals for the message it parses to (its
// fields in order, none empty), appended after what dst held.
func TestAppendPackedBatchIsCanonical(t *testing.T) {
	conv := ulid.MustParseStrict("01JCQ0000000000000000C0NV1")
	rapid.Check(t, func(t *rapid.T) {
		ops := genRun(t, conv)
		prefix := rapid.SliceOfN(rapid.Byte(), 0, 3).Draw(t, "prefix")
		b, err := AppendPackedBatch(slices.Clone(prefix), conv, ops)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, prefix) {
			t.Fatalf("the encoding overwrote what dst held: %x, want it after %x", b, prefix)
		}
		var p ferryv1.PackedBatch
		if err := proto.Unmarshal(b[len(prefix):], &p); err != nil {
			t.Fatal(err)
		}
		want, err := proto.Marshal(&p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b[len(prefix):], want) {
			t.Fatalf("encoded\n%x\nprotobuf marshals\n%x", b[len(prefix):], want)
		}
		// As a field of Ops, whose length is guessed before the batch is
		// encoded and corrected after.
		num := protowire.Number((&ferryv1.Ops{}).ProtoReflect().Descriptor().Fields().ByName("packed").Number())
		f, err := AppendPackedField(slices.Clone(prefix), num, conv, ops)
		if err != nil {
			t.Fatal(err)
		}
		var m ferryv1.Ops
		if err := proto.Unmarshal(f[len(prefix):], &m); err != nil || len(m.GetPacked()) != 1 || !proto.Equal(m.GetPacked()[0], &p) {
			t.Fatalf("as a field of Ops: %v, %v; want the one batch %v", &m, err, &p)
		}
	})
}
