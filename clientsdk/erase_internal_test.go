package clientsdk

import (
	"bytes"
	"context"
	"testing"

	"github.com/oklog/ulid/v2"

	ferryv1 "github.com/ferrysync/ferry/proto/ferry/v1"
)

// heldBodies reports which of texts a replica's stored ops still hold.
func heldBodies(t *testing.T, d *Device, conv ulid.ULID, seqs []uint64, texts ...string) []string {
	t.Helper()
	var held []string
	for _, seq := range seqs {
		raw, err := d.db.Get(opKey(conv, seq))
		if err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		for _, text := range texts {
			if bytes.Contains(raw, []byte(text)) {
				held = append(held, text)
			}
		}
	}
	return held
}

// TestOwnOpsStoredAfterTheirDeleteAreErased: a message of the device's
// own, and its edit, whose push's answer comes after the delete of the
// message (another member's, an admin's, delivered first) are stored
// erased, as the server holds them: a message deleted for everyone keeps
// no text on the device.
func TestOwnOpsStoredAfterTheirDeleteAreErased(t *testing.T) {
	d, conv, s := signedInDevice(t)
	ids := sendTexts(t, d, conv, "top secret")
	edit, err := d.Edit(context.Background(), conv, ids[0], []byte("edited secret"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	admin, adminDev := ulid.Make(), ulid.Make()
	del := &ferryv1.Op{Id: ulid.Make().String(), Seq: 3, DeviceId: adminDev.String(), Dot: 1, UserId: admin.String(),
		Payload: &ferryv1.Op_Delete{Delete: &ferryv1.Delete{TargetId: ids[0].String()}}}
	b, err := parseRows(&ferryv1.OpBatch{ConversationId: conv.String(), Ops: []*ferryv1.Op{del}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.applyOps([]received{b}); err != nil {
		t.Fatal(err)
	}
	// Still pending, it shows deleted already, without its edit's text.
	if p, err := d.Messages(conv, PageOptions{}); err != nil || len(p.Messages) != 1 || !p.Messages[0].Deleted || len(p.Messages[0].Body) > 0 || p.Messages[0].Edited {
		t.Errorf("the pending message: %+v %v; want it deleted", p.Messages, err)
	}
	if err := s.results(&ferryv1.PushResult{Results: []*ferryv1.OpResult{
		{OpId: ids[0].String(), Status: ferryv1.OpStatus_OP_STATUS_DUPLICATE, Seq: 1},
		{OpId: edit.String(), Status: ferryv1.OpStatus_OP_STATUS_DUPLICATE, Seq: 2},
	}}); err != nil {
		t.Fatal(err)
	}
	if held := heldBodies(t, d, conv, []uint64{1, 2}, "top secret", "edited secret"); len(held) > 0 {
		t.Errorf("the replica keeps %q, deleted for everyone", held)
	}
	p, err := d.Messages(conv, PageOptions{})
	if err != nil || len(p.Messages) != 1 || !p.Messages[0].Deleted || len(p.Messages[0].Body) > 0 {
		t.Errorf("the messages: %+v %v; want the one, deleted", p.Messages, err)
	}
}

// TestMessageDeletedInItsOwnPushIsErased: a message sent, edited and
// deleted while offline goes in one push; their answers, stored together,
// leave no text of it on the device.
func TestMessageDeletedInItsOwnPushIsErased(t *testing.T) {
	d, conv, s := signedInDevice(t)
	ids := sendTexts(t, d, conv, "sent in haste")
	edit, err := d.Edit(context.Background(), conv, ids[0], []byte("edited in haste"), "text/plain")
	if err != nil {
		t.Fatal(err)
	}
	del, err := d.Delete(context.Background(), conv, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := s.results(&ferryv1.PushResult{Results: []*ferryv1.OpResult{
		{OpId: ids[0].String(), Status: ferryv1.OpStatus_OP_STATUS_ACCEPTED, Seq: 1},
		{OpId: edit.String(), Status: ferryv1.OpStatus_OP_STATUS_ACCEPTED, Seq: 2},
		{OpId: del.String(), Status: ferryv1.OpStatus_OP_STATUS_ACCEPTED, Seq: 3},
	}}); err != nil {
		t.Fatal(err)
	}
	if held := heldBodies(t, d, conv, []uint64{1, 2}, "sent in haste", "edited in haste"); len(held) > 0 {
		t.Errorf("the replica keeps %q, deleted for everyone", held)
	}
}

// TestDeletesStoredBeforeTheIndexAreIndexed: a replica written before the
// deletes it holds were indexed (tDeleted) has them indexed at its next
// Open, once, so that an own message's copy stored after them is erased.
func TestDeletesStoredBeforeTheIndexAreIndexed(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	conv, msg := ulid.Make(), ulid.Make()
	del := &ferryv1.Op{Id: ulid.Make().String(), Seq: 2, DeviceId: ulid.Make().String(), Dot: 1, UserId: ulid.Make().String(),
		Payload: &ferryv1.Op_Delete{Delete: &ferryv1.Delete{TargetId: msg.String()}}}
	// As an SDK before the index stored it: the op alone.
	b := d.db.NewBatch()
	b.Set(opKey(conv, 2), encodeOp(del))
	b.Delete(metaKey("deletes-indexed"))
	if err := d.db.Commit(b); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if d, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.db.Get(deletedKey(conv, msg)); err != nil {
		t.Fatalf("the stored delete is not indexed after Open: %v", err)
	}
	if ok, err := getJSON(d.db, metaKey("deletes-indexed"), new(bool)); !ok || err != nil {
		t.Fatalf("the index is not marked done (%v): the next Open reads every op again", err)
	}
}
