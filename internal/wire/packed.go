package wire

import (
	"fmt"
	"math"

	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/ferrysync/ferry/engine/model"
	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// A packed batch stores a run of one conversation's ops field by field
// (see ferryv1.PackedBatch). Rows repeat what compression then has to find
// again in every op: three 26-character ids, the author's device and user,
// the content type. Packed, an op's id is a time step of a byte or two and
// 10 bytes of entropy (7 of them the same for every op of a device: see
// package opid), its author an index and its dot a step of 1, and the
// bodies lie end to end, with no field tag or length between them. On the
// bench's catch-up (10,000 ops of chat text), the wire went from 0.57 of
// the payload as rows to 0.47 packed; with op ids from opid, 0.44, and
// bodies end to end rather than a repeated field, 1.5% fewer bytes again.

const (
	idTimeBytes    = 6
	idEntropyBytes = 16 - idTimeBytes
	maxIDTime      = 1<<48 - 1
)

// PackBatch packs ops, which must have the consecutive seqs of one run of
// conv's log (an engine.Batch), into a message: for a codec that needs one
// (JSON). Binary streams append the encoding itself (AppendPackedBatch).
func PackBatch(conv ulid.ULID, ops []model.Op) (*ferryv1.PackedBatch, error) {
	b, err := AppendPackedBatch(nil, conv, ops)
	if err != nil {
		return nil, err
	}
	p := new(ferryv1.PackedBatch)
	if err := proto.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("wire: pack %s: the packed encoding does not parse: %w", conv, err)
	}
	return p, nil
}

// packed holds ferryv1.PackedBatch's field numbers, as op.proto gives them.
var packed = func() (f struct {
	conversationID, firstSeq, authorDevices, authorUsers, authors, dotSteps, timeSteps, idEntropy, kinds,
	erased, contentTypes, texts, targets, members, roles, bodySizes, bodyData protowire.Number
}) {
	fields := (&ferryv1.PackedBatch{}).ProtoReflect().Descriptor().Fields()
	num := func(name protoreflect.Name) protowire.Number { return fields.ByName(name).Number() }
	f.conversationID = num("conversation_id")
	f.firstSeq = num("first_seq")
	f.authorDevices = num("author_devices")
	f.authorUsers = num("author_users")
	f.authors = num("authors")
	f.dotSteps = num("dot_steps")
	f.timeSteps = num("time_steps")
	f.idEntropy = num("id_entropy")
	f.kinds = num("kinds")
	f.erased = num("erased")
	f.contentTypes = num("content_types")
	f.texts = num("texts")
	f.targets = num("targets")
	f.members = num("members")
	f.roles = num("roles")
	f.bodySizes = num("body_sizes")
	f.bodyData = num("body_data")
	return f
}()

// packedAuthor is one author of a packed batch: its device and user, and
// the dot of its last op packed so far.
type packedAuthor struct {
	device, user ulid.ULID
	n            uint64
}

// AppendPackedBatch appends to dst the protobuf encoding of the
// ferryv1.PackedBatch that packs ops, which must have the consecutive seqs
// of one run of conv's log (an engine.Batch). It writes the fields
// straight from the ops, without the message's slices: a live round's
// batch, and each of a catch-up's (up to a MiB of bodies), is encoded in
// one buffer, its bodies copied once.
func AppendPackedBatch(dst []byte, conv ulid.ULID, ops []model.Op) ([]byte, error) {
	var id [ulid.EncodedSize]byte
	_ = conv.MarshalTextTo(id[:]) // cannot fail: the buffer has the size
	dst = protowire.AppendTag(dst, packed.conversationID, protowire.BytesType)
	dst = protowire.AppendBytes(dst, id[:])
	if len(ops) == 0 {
		return dst, nil
	}
	// Check the run, and find its authors in order of their first op.
	var buf [8]packedAuthor
	authors := buf[:0]
	first := ops[0].Seq
	bodyBytes := 0
	for i := range ops {
		op := &ops[i]
		if op.Seq != first+uint64(i) {
			return nil, fmt.Errorf("wire: pack %s: seq %d after %d ops from seq %d: a packed batch holds consecutive seqs", conv, op.Seq, i, first)
		}
		if !op.Kind.Valid() {
			return nil, fmt.Errorf("wire: pack %s: op %s has kind %v", conv, op.ID, op.Kind)
		}
		a := authorOf(authors, op.Dot.Device)
		if a == len(authors) {
			authors = append(authors, packedAuthor{device: op.Dot.Device, user: op.User})
		}
		if authors[a].user != op.User {
			return nil, fmt.Errorf("wire: pack %s: device %s authors ops of users %s and %s", conv, op.Dot.Device, authors[a].user, op.User)
		}
		if op.Dot.N <= authors[a].n {
			return nil, fmt.Errorf("wire: pack %s: dot %d of device %s after its dot %d: a device's dots rise with seq", conv, op.Dot.N, op.Dot.Device, authors[a].n)
		}
		authors[a].n = op.Dot.N
		if op.Kind.HasBody() {
			bodyBytes += len(op.Body)
		}
	}
	dst = protowire.AppendTag(dst, packed.firstSeq, protowire.VarintType)
	dst = protowire.AppendVarint(dst, first)
	for _, a := range authors {
		dst = protowire.AppendTag(dst, packed.authorDevices, protowire.BytesType)
		dst = protowire.AppendBytes(dst, a.device[:])
	}
	for _, a := range authors {
		dst = protowire.AppendTag(dst, packed.authorUsers, protowire.BytesType)
		dst = protowire.AppendBytes(dst, a.user[:])
	}
	dst = appendField(dst, packed.authors, len(ops), func(b []byte) []byte {
		for i := range ops {
			b = protowire.AppendVarint(b, uint64(authorOf(authors, ops[i].Dot.Device)))
		}
		return b
	})
	dst = appendField(dst, packed.dotSteps, len(ops), func(b []byte) []byte {
		for a := range authors {
			authors[a].n = 0
		}
		for i := range ops {
			a := &authors[authorOf(authors, ops[i].Dot.Device)]
			b = protowire.AppendVarint(b, ops[i].Dot.N-a.n)
			a.n = ops[i].Dot.N
		}
		return b
	})
	dst = appendField(dst, packed.timeSteps, 2*len(ops), func(b []byte) []byte {
		var last uint64
		for i := range ops {
			t := ops[i].ID.Time()
			b = protowire.AppendVarint(b, protowire.EncodeZigZag(int64(t-last)))
			last = t
		}
		return b
	})
	dst = appendField(dst, packed.idEntropy, idEntropyBytes*len(ops), func(b []byte) []byte {
		for i := range ops {
			b = append(b, ops[i].ID[idTimeBytes:]...)
		}
		return b
	})
	dst = appendField(dst, packed.kinds, len(ops), func(b []byte) []byte {
		for i := range ops {
			b = protowire.AppendVarint(b, uint64(ops[i].Kind))
		}
		return b
	})
	dst = appendField(dst, packed.erased, len(ops), func(b []byte) []byte {
		for i := range ops {
			if ops[i].Erased {
				b = protowire.AppendVarint(b, uint64(i))
			}
		}
		return b
	})
	for i := range ops {
		if ops[i].Kind.HasBody() {
			dst = protowire.AppendTag(dst, packed.contentTypes, protowire.BytesType)
			dst = protowire.AppendString(dst, ops[i].ContentType)
		}
	}
	for i := range ops {
		if hasText(ops[i].Kind) {
			dst = protowire.AppendTag(dst, packed.texts, protowire.BytesType)
			dst = protowire.AppendString(dst, textOf(&ops[i]))
		}
	}
	dst = appendField(dst, packed.targets, 16*len(ops), func(b []byte) []byte {
		for i := range ops {
			if ops[i].Kind.HasTarget() {
				b = append(b, ops[i].Target[:]...)
			}
		}
		return b
	})
	dst = appendField(dst, packed.members, 16*len(ops), func(b []byte) []byte {
		for i := range ops {
			if ops[i].Kind.HasMember() {
				b = append(b, ops[i].Member[:]...)
			}
		}
		return b
	})
	dst = appendField(dst, packed.roles, len(ops), func(b []byte) []byte {
		for i := range ops {
			if hasRole(ops[i].Kind) {
				b = protowire.AppendVarint(b, uint64(ops[i].Role))
			}
		}
		return b
	})
	dst = appendField(dst, packed.bodySizes, len(ops), func(b []byte) []byte {
		for i := range ops {
			if ops[i].Kind.HasBody() {
				b = protowire.AppendVarint(b, uint64(len(ops[i].Body)))
			}
		}
		return b
	})
	dst = appendField(dst, packed.bodyData, bodyBytes, func(b []byte) []byte {
		for i := range ops {
			if ops[i].Kind.HasBody() {
				b = append(b, ops[i].Body...)
			}
		}
		return b
	})
	return dst, nil
}

// authorOf returns the index of device's entry in authors, or len(authors).
func authorOf(authors []packedAuthor, device ulid.ULID) int {
	a := 0
	for a < len(authors) && authors[a].device != device {
		a++
	}
	return a
}

// hasText reports whether ops of kind k carry a text: a title, or a
// reaction's key.
func hasText(k model.Kind) bool {
	switch k {
	case model.KindCreate, model.KindSetTitle, model.KindReactionAdd, model.KindReactionRemove:
		return true
	}
	return false
}

func textOf(op *model.Op) string {
	if op.Kind == model.KindCreate || op.Kind == model.KindSetTitle {
		return op.Title
	}
	return op.ReactionKey
}

func hasRole(k model.Kind) bool { return k == model.KindMemberAdd || k == model.KindMemberRole }

// appendField appends field num, length-delimited, with the payload fill
// appends; nothing when the payload is empty. The payload is written in
// place after room for the length of a payload of about size bytes, and
// moved when its length takes another number of bytes.
func appendField(dst []byte, num protowire.Number, size int, fill func([]byte) []byte) []byte {
	start := len(dst)
	dst = protowire.AppendTag(dst, num, protowire.BytesType)
	at := len(dst)
	room := protowire.SizeVarint(uint64(size))
	dst = fill(append(dst, make([]byte, room)...))
	n := len(dst) - at - room
	if n == 0 {
		return dst[:start]
	}
	if k := protowire.SizeVarint(uint64(n)); k != room {
		if k > room {
			dst = append(dst, make([]byte, k-room)...)
		}
		copy(dst[at+k:], dst[at+room:at+room+n])
		dst = dst[:at+k+n]
	}
	protowire.AppendVarint(dst[:at], uint64(n))
	return dst
}

// PackedSize is about the size of a packed batch of ops as a field (a
// little more, as a rule): room to reserve before packing it.
func PackedSize(ops []model.Op) int {
	size := 48 // the tags, the conversation id, the first seq
	for i := range ops {
		op := &ops[i]
		// Author, dot and time steps, id entropy, kind, body size, and the
		// content type's tag and length.
		size += 20 + len(op.Body) + len(op.ContentType) + len(op.Title) + len(op.ReactionKey)
		if op.Kind.HasTarget() || op.Kind.HasMember() {
			size += 16
		}
	}
	return size
}

// AppendPackedField appends ops packed as field num of a message, a
// length-delimited PackedBatch (as Ops.packed holds them): see
// AppendPackedBatch.
func AppendPackedField(dst []byte, num protowire.Number, conv ulid.ULID, ops []model.Op) ([]byte, error) {
	var err error
	dst = appendField(dst, num, PackedSize(ops), func(b []byte) []byte {
		b, err = AppendPackedBatch(b, conv, ops)
		return b
	})
	if err != nil {
		return nil, err
	}
	return dst, nil
}

func bytesOf(id ulid.ULID) []byte { return id[:] }

// UnpackBatch unpacks a packed batch into its conversation and ops. It
// checks that every list has the length the ops need, so a malformed batch
// gets an error naming the field (wrapping ErrMalformed), never a panic or
// a guess. An op of any other kind than unspecified that this version
// does not know (a newer server's) is one of model.KindUnknown, with the
// fields every op has.
func UnpackBatch(field string, p *ferryv1.PackedBatch) (ulid.ULID, []model.Op, error) {
	conv, err := ParseID(field+".conversation_id", p.GetConversationId())
	if err != nil {
		return conv, nil, err
	}
	n := len(p.GetKinds())
	if n == 0 {
		return conv, nil, nil
	}
	if p.GetFirstSeq() == 0 || p.GetFirstSeq() > math.MaxUint64-uint64(n) {
		return conv, nil, malformed("%s.first_seq %d does not start %d ops", field, p.GetFirstSeq(), n)
	}
	for _, c := range []struct {
		name string
		len  int
	}{{"authors", len(p.GetAuthors())}, {"dot_steps", len(p.GetDotSteps())}, {"time_steps", len(p.GetTimeSteps())}} {
		if c.len != n {
			return conv, nil, malformed("%s.%s has %d entries for %d ops", field, c.name, c.len, n)
		}
	}
	if len(p.GetIdEntropy()) != n*idEntropyBytes {
		return conv, nil, malformed("%s.id_entropy has %d bytes; want %d (%d per op)", field, len(p.GetIdEntropy()), n*idEntropyBytes, idEntropyBytes)
	}
	if len(p.GetAuthorDevices()) != len(p.GetAuthorUsers()) {
		return conv, nil, malformed("%s has %d author devices and %d author users", field, len(p.GetAuthorDevices()), len(p.GetAuthorUsers()))
	}
	if len(p.GetAuthorDevices()) > n {
		return conv, nil, malformed("%s has %d authors for %d ops", field, len(p.GetAuthorDevices()), n)
	}
	devices := make([]ulid.ULID, len(p.GetAuthorDevices()))
	users := make([]ulid.ULID, len(devices))
	seen := make(map[ulid.ULID]int, len(devices))
	for i := range devices {
		if len(p.GetAuthorDevices()[i]) != 16 || len(p.GetAuthorUsers()[i]) != 16 {
			return conv, nil, malformed("%s: author %d is not two 16-byte ids", field, i)
		}
		devices[i], users[i] = ulid.ULID(p.GetAuthorDevices()[i]), ulid.ULID(p.GetAuthorUsers()[i])
		// One entry per device keeps each device's dots rising.
		if j, dup := seen[devices[i]]; dup {
			return conv, nil, malformed("%s: authors %d and %d are the same device", field, j, i)
		}
		seen[devices[i]] = i
	}
	// Payload lists are consumed in op order; each take checks there is
	// one left.
	texts, bodies, targets, members, roles := 0, 0, 0, 0, 0
	data := p.GetBodyData() // the bodies not yet taken
	takeText := func(i int) (string, error) {
		if texts == len(p.GetTexts()) {
			return "", malformed("%s.texts ends before op %d", field, i)
		}
		texts++
		return p.GetTexts()[texts-1], nil
	}
	takeID := func(i int, b []byte, at *int, name string) (ulid.ULID, error) {
		if len(b) < (*at+1)*16 {
			return ulid.ULID{}, malformed("%s.%s ends before op %d", field, name, i)
		}
		*at++
		return ulid.ULID(b[(*at-1)*16 : *at*16]), nil
	}
	erased := p.GetErased()
	for k := 1; k < len(erased); k++ {
		if erased[k] <= erased[k-1] {
			return conv, nil, malformed("%s.erased is not ascending", field)
		}
	}
	if len(erased) > 0 && uint64(erased[len(erased)-1]) >= uint64(n) {
		return conv, nil, malformed("%s.erased names op %d of %d", field, erased[len(erased)-1], n)
	}
	ops := make([]model.Op, n)
	lastDot := make([]uint64, len(devices))
	var t uint64
	for i := range ops {
		op := &ops[i]
		a := p.GetAuthors()[i]
		if uint64(a) >= uint64(len(devices)) {
			return conv, nil, malformed("%s.authors[%d] is %d; there are %d authors", field, i, a, len(devices))
		}
		step := p.GetDotSteps()[i]
		if step == 0 || lastDot[a] > math.MaxUint64-step {
			return conv, nil, malformed("%s.dot_steps[%d] is %d: dots of an author rise", field, i, step)
		}
		lastDot[a] += step
		ts := p.GetTimeSteps()[i]
		if (ts < 0 && uint64(-ts) > t) || (ts > 0 && uint64(ts) > maxIDTime-t) {
			return conv, nil, malformed("%s.time_steps[%d] takes the id time out of range", field, i)
		}
		t = uint64(int64(t) + ts)
		if err := op.ID.SetTime(t); err != nil {
			return conv, nil, malformed("%s.time_steps[%d]: %v", field, i, err)
		}
		copy(op.ID[idTimeBytes:], p.GetIdEntropy()[i*idEntropyBytes:])
		op.Conv, op.Seq = conv, p.GetFirstSeq()+uint64(i)
		op.Dot, op.User = model.Dot{Device: devices[a], N: lastDot[a]}, users[a]
		switch k := p.GetKinds()[i]; {
		case k == ferryv1.OpKind_OP_KIND_UNSPECIFIED:
			return conv, nil, malformed("%s.kinds[%d] is unspecified", field, i)
		case k > 0 && k <= math.MaxUint8 && model.Kind(k).Valid():
			op.Kind = model.Kind(k)
		default:
			// A newer kind: its payload lies in fields this version does
			// not know (PackedBatch says so), and it takes none of these.
			op.Kind = model.KindUnknown
		}
		var err error
		switch op.Kind {
		case model.KindCreate, model.KindSetTitle:
			op.Title, err = takeText(i)
		case model.KindReactionAdd, model.KindReactionRemove:
			op.ReactionKey, err = takeText(i)
		}
		if err == nil && op.Kind.HasBody() {
			switch {
			case bodies == len(p.GetBodySizes()) || bodies == len(p.GetContentTypes()):
				err = malformed("%s.body_sizes or content_types ends before op %d", field, i)
			case uint64(p.GetBodySizes()[bodies]) > uint64(len(data)):
				err = malformed("%s.body_data ends inside body %d", field, bodies)
			default:
				size := p.GetBodySizes()[bodies]
				op.Body, data = data[:size:size], data[size:]
				op.ContentType = p.GetContentTypes()[bodies]
				bodies++
			}
		}
		if err == nil && op.Kind.HasTarget() {
			op.Target, err = takeID(i, p.GetTargets(), &targets, "targets")
		}
		if err == nil && op.Kind.HasMember() {
			op.Member, err = takeID(i, p.GetMembers(), &members, "members")
		}
		if err == nil && hasRole(op.Kind) {
			if roles == len(p.GetRoles()) {
				err = malformed("%s.roles ends before op %d", field, i)
			} else {
				op.Role, err = Role(fmt.Sprintf("%s.roles[%d]", field, roles), p.GetRoles()[roles])
				roles++
			}
		}
		if err != nil {
			return conv, nil, err
		}
	}
	for _, i := range erased {
		ops[i].Erased = true
	}
	switch {
	case texts != len(p.GetTexts()):
		return conv, nil, malformed("%s.texts has %d entries; the ops need %d", field, len(p.GetTexts()), texts)
	case bodies != len(p.GetBodySizes()) || bodies != len(p.GetContentTypes()):
		return conv, nil, malformed("%s has %d body sizes and %d content types; the ops need %d", field, len(p.GetBodySizes()), len(p.GetContentTypes()), bodies)
	case len(data) != 0:
		return conv, nil, malformed("%s.body_data has %d bytes after the last body", field, len(data))
	case targets*16 != len(p.GetTargets()):
		return conv, nil, malformed("%s.targets has %d bytes; the ops need %d", field, len(p.GetTargets()), targets*16)
	case members*16 != len(p.GetMembers()):
		return conv, nil, malformed("%s.members has %d bytes; the ops need %d", field, len(p.GetMembers()), members*16)
	case roles != len(p.GetRoles()):
		return conv, nil, malformed("%s.roles has %d entries; the ops need %d", field, len(p.GetRoles()), roles)
	}
	return conv, ops, nil
}

// UnpackRows unpacks a packed batch into the rows a client reading rows
// would have received.
func UnpackRows(field string, p *ferryv1.PackedBatch) (*ferryv1.OpBatch, error) {
	conv, ops, err := UnpackBatch(field, p)
	if err != nil {
		return nil, err
	}
	b := &ferryv1.OpBatch{ConversationId: conv.String(), Ops: make([]*ferryv1.Op, len(ops))}
	for i := range ops {
		b.Ops[i] = OpToProto(&ops[i])
	}
	return b, nil
}
