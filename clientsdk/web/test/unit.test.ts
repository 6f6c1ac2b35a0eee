import assert from "node:assert/strict";
import { test } from "node:test";

import { create, type MessageInitShape } from "@bufbuild/protobuf";

import { fold, ulid, isULID } from "../src/index.js";
import { ulidTime } from "../src/fold.js";
import { OpSchema, type Op } from "../src/gen/ferry/v1/op_pb.js";

test("ulid: 26 Crockford characters, time first", () => {
  const zero = ulid(0, (b) => b.fill(0));
  assert.equal(zero, "00000000000000000000000000");
  const max = ulid(2 ** 48 - 1, (b) => b.fill(255));
  assert.equal(max, "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
  const id = ulid(1_790_000_000_123);
  assert.ok(isULID(id), id);
  assert.equal(ulidTime(id), 1_790_000_000_123);
  assert.notEqual(ulid(5), ulid(5), "random part");
  assert.throws(() => ulid(-1), /outside/);
});

const enc = new TextEncoder();
let n = 0;
function op(userId: string, payload: MessageInitShape<typeof OpSchema>["payload"]): Op {
  return create(OpSchema, { id: ulid(1_790_000_000_000 + n++), userId, deviceId: "D", payload });
}

test("fold: edits (highest seq wins), deletes win, reactions per user", () => {
  const m1 = op("alice", { case: "message", value: { body: enc.encode("hello") } });
  const m2 = op("bob", { case: "message", value: { body: enc.encode("hi") } });
  const ops = [
    { seq: 1, op: m1 },
    { seq: 2, op: m2 },
    { seq: 4, op: op("alice", { case: "edit", value: { targetId: m1.id, body: enc.encode("hello!!") } }) },
    { seq: 3, op: op("alice", { case: "edit", value: { targetId: m1.id, body: enc.encode("hello!") } }) },
    { seq: 5, op: op("bob", { case: "reactionAdd", value: { targetId: m1.id, key: "👍" } }) },
    { seq: 6, op: op("alice", { case: "reactionAdd", value: { targetId: m1.id, key: "👍" } }) },
    { seq: 7, op: op("alice", { case: "reactionRemove", value: { targetId: m1.id, key: "👍" } }) },
    { seq: 8, op: op("bob", { case: "delete", value: { targetId: m2.id } }) },
    { seq: 9, op: op("bob", { case: "edit", value: { targetId: m2.id, body: enc.encode("back?") } }) },
  ];
  const got = fold("C", ops);
  assert.equal(got.length, 2);
  assert.equal(got[0]!.text, "hello!!");
  assert.equal(got[0]!.edited, true);
  assert.deepEqual(got[0]!.reactions, { "👍": ["bob"] });
  assert.equal(got[1]!.deleted, true);
  assert.equal(got[1]!.text, "", "a delete wins over a later edit");
});

test("fold: the status of the user's messages comes from the other members' receipts", () => {
  const mine = [1, 2, 3].map((seq) => ({ seq, op: op("alice", { case: "message", value: { body: enc.encode(`m${seq}`) } }) }));
  const pending = { seq: 0, op: op("alice", { case: "message", value: { body: enc.encode("later") } }) };
  const failed = { seq: 0, op: op("alice", { case: "message", value: { body: enc.encode("no") } }), failed: "not a member" };
  const got = fold("C", [pending, failed, ...mine], {
    userId: "alice",
    receipts: [{ delivered: 3, read: 1 }, { delivered: 2, read: 2 }],
  });
  assert.deepEqual(got.map((m) => [m.text, m.status]), [
    ["m1", "read"], ["m2", "delivered"], ["m3", "sent"], ["later", "pending"], ["no", "failed"],
  ]);
  assert.equal(got[4]!.error, "not a member");
});

test("IndexedDBReplica: changes land whole and survive reopening", async () => {
  const { IDBFactory } = await import("fake-indexeddb");
  const { IndexedDBReplica } = await import("../src/index.js");
  const factory = new IDBFactory();
  const r = await IndexedDBReplica.open("dev", factory);
  const op = new Uint8Array([1, 2, 3]);
  await r.apply({
    meta: { epoch: "E", feedPos: "7", dots: { C: 2 } },
    convs: [{ id: "C", title: "t", role: 1, removed: false, head: 1, unread: 0, delivered: 1, read: 0, memberCount: 2, receipts: [], changedAt: 1 }],
    ops: [{ convId: "C", seq: 1, id: "A", op }],
    outboxPut: [{ convId: "C", id: "B", dot: 2, op, createdAt: 1 }, { convId: "C", id: "X", dot: 3, op, createdAt: 1 }],
  });
  await r.apply({ outboxDelete: ["X"], ops: [{ convId: "C", seq: 1, id: "A", op }] });
  r.close();
  const again = await IndexedDBReplica.open("dev", factory);
  const s = await again.load();
  assert.equal(s.meta.feedPos, "7");
  assert.deepEqual(s.meta.dots, { C: 2 });
  assert.equal(s.convs.length, 1);
  assert.equal(s.ops.length, 1, "an op put twice is stored once");
  assert.deepEqual([...s.ops[0]!.op], [1, 2, 3]);
  assert.deepEqual(s.outbox.map((e) => e.id), ["B"]);
  await again.apply({ clear: true, meta: { epoch: "", feedPos: "0", dots: {} } });
  const cleared = await again.load();
  assert.equal(cleared.convs.length + cleared.ops.length + cleared.outbox.length, 0);
  again.close();
});
