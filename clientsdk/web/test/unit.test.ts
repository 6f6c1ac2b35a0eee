import assert from "node:assert/strict";
import { test } from "node:test";

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";

import { IDBFactory, forceCloseDatabase } from "fake-indexeddb";

import { fold, ulid, isULID, ulidFromBytes, unpackBatch, IndexedDBReplica, MalformedBatchError, OpIds, ReplicaLostError, type MessageView, type MessagePage, type ConversationView } from "../src/index.js";
import { Folding, ulidTime, type FoldInput, type StatusInput } from "../src/fold.js";
import type { Change } from "../src/replica.js";
import { OpKind, OpSchema, PackedBatchSchema, Role, type Op, type PackedBatch } from "../src/gen/ferry/v1/op_pb.js";

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

test("OpIds: a prefix per client, a tail that counts up within a millisecond", () => {
  let draws = 0;
  const counting = (b: Uint8Array) => b.forEach((_, i) => (b[i] = (draws++ * 37 + i * 11) & 255));
  const ids = new OpIds(counting);
  const bytesOf = (id: string) => {
    // Decode the 26 characters back to 16 bytes through BigInt.
    let v = 0n;
    for (const c of id) v = v * 32n + BigInt("0123456789ABCDEFGHJKMNPQRSTVWXYZ".indexOf(c));
    const b = new Uint8Array(16);
    for (let i = 15; i >= 0; i--, v >>= 8n) b[i] = Number(v & 255n);
    return b;
  };
  const tail = (b: Uint8Array) => (b[13]! << 16) | (b[14]! << 8) | b[15]!;
  const a = bytesOf(ids.next(1000));
  const b = bytesOf(ids.next(1000));
  const d = bytesOf(ids.next(1001));
  assert.ok(tail(a) < 2 ** 23, "a millisecond's first tail leaves room to count up");
  assert.equal(tail(b), tail(a) + 1);
  assert.deepEqual(a.subarray(6, 13), d.subarray(6, 13), "one prefix per OpIds");
  assert.notEqual(tail(d), tail(b) + 1, "a new millisecond draws its tail");
  const c = bytesOf(ids.next(999)); // the clock stepped back
  assert.equal(ulidTime(ulidFromBytes(c)), 999, "ids keep the clock's time");
  assert.notDeepEqual(c.subarray(6, 13), d.subarray(6, 13), "a step back draws a new prefix");
  assert.ok(tail(c) < 2 ** 23);
  const other = bytesOf(new OpIds().next(1000));
  assert.notDeepEqual(other.subarray(6, 13), a.subarray(6, 13), "clients have their own prefixes");
  assert.throws(() => ids.next(-1), /outside/);
  // A full tail goes on under a new prefix.
  (ids as unknown as { tail: number }).tail = 2 ** 24 - 1;
  const e = bytesOf(ids.next(999));
  assert.notDeepEqual(e.subarray(6, 13), c.subarray(6, 13), "a new prefix after a full millisecond");
  assert.ok(tail(e) < 2 ** 23);
  assert.equal(ulidTime(ulidFromBytes(e)), 999);
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
    { seq: 8, op: op("alice", { case: "reactionAdd", value: { targetId: m2.id, key: "🎉" } }) },
    { seq: 9, op: op("bob", { case: "edit", value: { targetId: m2.id, body: enc.encode("hi!") } }) },
    { seq: 10, op: op("bob", { case: "delete", value: { targetId: m2.id } }) },
    { seq: 11, op: op("bob", { case: "edit", value: { targetId: m2.id, body: enc.encode("back?") } }) },
    { seq: 12, op: op("alice", { case: "reactionAdd", value: { targetId: m2.id, key: "👍" } }) },
  ];
  const got = fold("C", ops);
  assert.equal(got.length, 2);
  assert.equal(got[0]!.text, "hello!!");
  assert.equal(got[0]!.edited, true);
  assert.deepEqual(got[0]!.reactions, { "👍": ["bob"] });
  assert.equal(got[1]!.deleted, true);
  assert.equal(got[1]!.text, "", "a delete wins over a later edit");
  assert.equal(got[1]!.edited, false, "deleted for everyone: not edited");
  assert.deepEqual(got[1]!.reactions, {}, "deleted for everyone: no reactions, before the delete or after (as in Go)");
});

test("fold: an edit's content type shows; an erased op's message shows deleted before its delete comes (as in Go)", () => {
  const m1 = op("alice", { case: "message", value: { body: enc.encode("*hi*"), contentType: "text/plain" } });
  const m2 = op("alice", { case: "message", value: { body: enc.encode("raw") } });
  const m3 = op("bob", { case: "message", value: { body: enc.encode("secret") } });
  const edit = op("alice", { case: "edit", value: { targetId: m1.id, body: enc.encode("**hi**"), contentType: "text/markdown" } });
  const erasedEdit = op("bob", { case: "edit", value: { targetId: m3.id, body: new Uint8Array(), contentType: "" } });
  erasedEdit.erased = true;
  const stored = [
    { seq: 1, op: m1 },
    { seq: 2, op: m2 },
    { seq: 3, op: m3 },
    { seq: 4, op: edit },
    { seq: 5, op: erasedEdit },
  ];
  const want = [
    ["**hi**", "text/markdown", true, false],
    ["raw", "", false, false],
    ["", "", false, true],
  ];
  const show = (ms: MessageView[]) => ms.map((m) => [m.text, m.contentType, m.edited, m.deleted]);
  assert.deepEqual(show(fold("C", stored)), want);
  assert.deepEqual(show(fold("C", [...stored].reverse())), want, "in any order");
  // Pending: the edit's content type shows over the stored message, and a
  // delete takes it away.
  const pending = [
    { seq: 0, op: op("alice", { case: "edit", value: { targetId: m2.id, body: enc.encode("# raw"), contentType: "text/markdown" } }) },
    { seq: 0, op: op("alice", { case: "delete", value: { targetId: m1.id } }) },
  ];
  assert.deepEqual(show(fold("C", [...stored, ...pending])), [
    ["", "", false, true],
    ["# raw", "text/markdown", true, false],
    ["", "", false, true],
  ]);
  // An edit stored again erased deletes its message in a Folding too.
  const f = new Folding("C");
  f.add(1, m1);
  f.add(4, edit);
  assert.deepEqual(show(f.view([])), [["**hi**", "text/markdown", true, false]]);
  f.add(4, create(OpSchema, { id: edit.id, userId: edit.userId, deviceId: edit.deviceId, erased: true, payload: { case: "edit", value: { targetId: m1.id } } }));
  assert.deepEqual(show(f.view([])), [["", "", false, true]]);
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

// referenceFold is fold as it was before it was incremental: every op of
// the conversation folded at once, in seq order. Folding must agree.
function referenceFold(convId: string, ops: FoldInput[], me?: StatusInput): MessageView[] {
  const byId = new Map<string, MessageView>();
  const order: MessageView[] = [];
  const editSeq = new Map<string, number>();
  const reactions = new Map<string, Map<string, Set<string>>>();
  const sorted = [...ops].sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity));
  // An edit stored erased says its message was deleted, wherever it lies.
  const erasedEdits = new Set(ops.flatMap(({ seq, op }) => (seq > 0 && op.erased && op.payload.case === "edit" ? [op.payload.value.targetId] : [])));
  // A pending message that a stored delete names was deleted before its
  // push's answer came.
  const deletedPending = new Set(ops.flatMap(({ seq, op }) => (seq > 0 && op.payload.case === "delete" ? [op.payload.value.targetId] : [])));
  for (const { seq, op, failed } of sorted) {
    const p = op.payload;
    switch (p.case) {
      case "message": {
        const m: MessageView = {
          id: op.id,
          convId,
          seq,
          userId: op.userId,
          deviceId: op.deviceId,
          text: op.erased || erasedEdits.has(op.id) || (seq === 0 && deletedPending.has(op.id)) ? "" : refDecoder.decode(p.value.body),
          contentType: op.erased || erasedEdits.has(op.id) || (seq === 0 && deletedPending.has(op.id)) ? "" : p.value.contentType,
          edited: false,
          deleted: op.erased || erasedEdits.has(op.id) || (seq === 0 && deletedPending.has(op.id)),
          reactions: {},
          time: new Date(ulidTime(op.id)),
        };
        if (failed !== undefined) m.error = failed;
        byId.set(op.id, m);
        order.push(m);
        break;
      }
      case "edit": {
        const m = byId.get(p.value.targetId);
        const at = seq || Infinity;
        if (m && !m.deleted && at >= (editSeq.get(m.id) ?? 0)) {
          m.text = refDecoder.decode(p.value.body);
          m.contentType = p.value.contentType;
          m.edited = true;
          editSeq.set(m.id, at);
        }
        break;
      }
      case "delete": {
        const m = byId.get(p.value.targetId);
        if (m) {
          m.deleted = true;
          m.text = "";
          m.contentType = "";
          m.edited = false;
        }
        break;
      }
      case "reactionAdd":
      case "reactionRemove": {
        const users = reactions.get(p.value.targetId) ?? new Map<string, Set<string>>();
        reactions.set(p.value.targetId, users);
        const set = users.get(p.value.key) ?? new Set<string>();
        users.set(p.value.key, set);
        if (p.case === "reactionAdd") set.add(op.userId);
        else set.delete(op.userId);
        break;
      }
    }
  }
  for (const [target, keys] of reactions) {
    const m = byId.get(target);
    if (!m || m.deleted) continue; // deleted for everyone: no reactions
    for (const [key, users] of keys) {
      if (users.size > 0) m.reactions[key] = [...users].sort();
    }
  }
  if (me) {
    const delivered = me.receipts.length ? Math.min(...me.receipts.map((r) => r.delivered)) : 0;
    const read = me.receipts.length ? Math.min(...me.receipts.map((r) => r.read)) : 0;
    for (const m of order) {
      if (m.userId !== me.userId && m.userId !== "") continue;
      if (m.error !== undefined) m.status = "failed";
      else if (m.seq === 0) m.status = "pending";
      else if (me.receipts.length > 0 && read >= m.seq) m.status = "read";
      else if (me.receipts.length > 0 && delivered >= m.seq) m.status = "delivered";
      else m.status = "sent";
    }
  }
  return order;
}
const refDecoder = new TextDecoder();

// mulberry32: a small seeded generator, so a failure names its seed.
function rand(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// holds reports whether anything reachable from root (own properties,
// maps, sets, arrays) is a string or bytes that contain text.
function holds(root: unknown, text: string): boolean {
  const seen = new Set<object>();
  const dec = new TextDecoder();
  const visit = (v: unknown): boolean => {
    if (typeof v === "string") return v.includes(text);
    if (v === null || typeof v !== "object" || seen.has(v)) return false;
    seen.add(v);
    if (v instanceof Uint8Array) return dec.decode(v).includes(text);
    if (v instanceof Map) return [...v].some(([k, x]) => visit(k) || visit(x));
    if (v instanceof Set) return [...v].some(visit);
    return Object.values(v).some(visit);
  };
  return visit(root);
}

test("Folding: a message deleted for everyone keeps no edit's text in memory", () => {
  const f = new Folding("C");
  const m = op("alice", { case: "message", value: { body: enc.encode("hello") } });
  f.add(1, m);
  f.add(2, op("alice", { case: "edit", value: { targetId: m.id, body: enc.encode("secret edit") } }));
  assert.equal(f.view([])[0]!.text, "secret edit");
  assert.ok(holds(f, "secret edit"), "the scan finds what the fold holds");
  f.add(3, op("alice", { case: "delete", value: { targetId: m.id } }));
  f.add(4, op("alice", { case: "edit", value: { targetId: m.id, body: enc.encode("later secret") } }));
  const [v] = f.view([]);
  assert.equal(v!.deleted, true);
  assert.equal(v!.text, "");
  assert.ok(!holds(f, "secret"), "an edit's text stayed in the fold");
  // A message that arrives erased, its delete not held yet: the same.
  const g = new Folding("C");
  const m2 = op("alice", { case: "message", value: { body: new Uint8Array() } });
  m2.erased = true;
  g.add(2, op("alice", { case: "edit", value: { targetId: m2.id, body: enc.encode("secret edit") } }));
  g.add(1, m2);
  assert.deepEqual(g.view([]).map((m) => [m.text, m.deleted]), [["", true]]);
  assert.ok(!holds(g, "secret"), "an edit's text stayed in the fold of an erased message");
});

test("Folding, stored ops in any order with views between, agrees with folding every op at once", () => {
  const seed = Number(process.env.FOLD_SEED ?? Date.now() % 1_000_000);
  for (let round = 0; round < 200; round++) {
    const r = rand(seed + round);
    const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
    const users = ["alice", "bob", "carol"];
    const count = 1 + Math.floor(r() * 60);
    // Messages first, so that the other ops may target any of them, later
    // ones too (a reaction the server took to a message it refused).
    const all: (Op | undefined)[] = Array.from({ length: count }, (_, i) => {
      if (i > 0 && r() >= 0.4) return undefined;
      const o = op(pick(users), { case: "message", value: { body: enc.encode(`m${i}`), contentType: pick(["", "text/plain", "text/markdown"]) } });
      o.erased = r() < 0.1;
      return o;
    });
    const ids = all.filter((o) => o !== undefined).map((o) => o.id);
    for (let i = 0; i < count; i++) {
      if (all[i]) continue;
      const who = pick(users);
      const k = r();
      if (k < 0.25) {
        all[i] = op(who, { case: "edit", value: { targetId: pick(ids), body: enc.encode(`e${i}`), contentType: pick(["text/plain", "text/markdown"]) } });
        all[i]!.erased = r() < 0.05;
      }
      else if (k < 0.4) all[i] = op(who, { case: "delete", value: { targetId: pick(ids) } });
      else if (k < 0.75) all[i] = op(who, { case: "reactionAdd", value: { targetId: pick(ids), key: pick(["👍", "🎉"]) } });
      else all[i] = op(who, { case: "reactionRemove", value: { targetId: pick(ids), key: pick(["👍", "🎉"]) } });
    }
    // The last ops are alice's outbox (the user's own: alice's), some failed.
    const stored = Math.floor(r() * (count + 1));
    const pending = all.slice(stored).map((o) => {
      o = o!;
      o.userId = "alice";
      return r() < 0.2 ? { op: o, failed: "refused" } : { op: o };
    });
    const f = new Folding("C");
    const signedIn = r() < 0.8; // a Folding's views are for one user, or none
    // The stored ops arrive in seq order, or in any order (pages newest
    // first, then older ones), and some again, erased or not.
    const arrival = Array.from({ length: stored }, (_, i) => i + 1);
    if (r() < 0.7) {
      for (let i = arrival.length - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [arrival[i], arrival[j]] = [arrival[j]!, arrival[i]!];
      }
    }
    const held = new Map<number, Op>();
    let again = 0;
    for (let step = 0; step <= arrival.length; step++) {
      const receipts = r() < 0.2 ? [] : [{ delivered: Math.floor(r() * (step + 1)), read: Math.floor(r() * (step + 1)) }, { delivered: stored, read: stored }];
      const me = signedIn ? { userId: "alice", receipts } : undefined;
      const shown = r() < 0.5 ? pending : [];
      const want = referenceFold("C", [...[...held].map(([seq, o]) => ({ seq, op: o })), ...shown.map((p) => ({ seq: 0, ...p }))], me);
      assert.deepEqual(f.view(shown, me), want, `seed ${seed + round}: after ${step} stored ops, ${shown.length} pending`);
      if (step === arrival.length) break;
      let seq = arrival[step]!;
      let o = all[seq - 1]!;
      if (held.size > 0 && again < 10 && r() < 0.15) {
        again++;
        seq = pick([...held.keys()]); // stored again, erased maybe
        o = create(OpSchema, { ...held.get(seq)!, erased: held.get(seq)!.erased || r() < 0.5 }); // erased for good
        step--;
      }
      held.set(seq, o);
      f.add(seq, o);
    }
  }
});

test("IndexedDBReplica: changes land whole and survive reopening", async () => {
  const { IDBFactory } = await import("fake-indexeddb");
  const { IndexedDBReplica } = await import("../src/index.js");
  const factory = new IDBFactory();
  const r = await IndexedDBReplica.open("dev", { factory });
  const op = new Uint8Array([1, 2, 3]);
  await r.apply({
    meta: { epoch: "E", feedPos: "7", dots: { C: 2 } },
    convs: [{ id: "C", title: "t", role: 1, removed: false, head: 1, unread: 0, delivered: 1, read: 0, memberCount: 2, receipts: [], changedAt: 1 }],
    ops: [{ convId: "C", seq: 1, id: "A", op }],
    outboxPut: [{ convId: "C", id: "B", dot: 2, op, createdAt: 1 }, { convId: "C", id: "X", dot: 3, op, createdAt: 1 }],
  });
  await r.apply({ outboxDelete: ["X"], ops: [{ convId: "C", seq: 1, id: "A", op }] });
  r.close();
  const again = await IndexedDBReplica.open("dev", { factory });
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

test("the client's folds, kept and fed a change at a time, agree with folding every op at once", async () => {
  const { FerryClient, MemoryReplica } = await import("../src/index.js");
  const seed = Number(process.env.FOLD_SEED ?? Date.now() % 1_000_000);
  const C = "C";
  const conv = (receipts: { userId: string; delivered: number; read: number }[], head = 0) =>
    ({ id: C, title: "t", role: 1, removed: false, head, unread: 0, delivered: 0, read: 0, memberCount: 2, receipts, changedAt: 1 });
  const session = (who: string) => ({ userId: who, deviceId: "D", token: "t", username: who });
  for (let round = 0; round < 100; round++) {
    const r = rand(seed + round);
    const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
    const replica = new MemoryReplica();
    await replica.apply({ meta: { epoch: "", feedPos: "0", dots: {}, session: session("alice") }, convs: [conv([])] });
    // The client's own state, as its sync loop changes it (commit).
    const c = (await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica })) as any;
    const reference = () => {
      const me = c.meta.session;
      const inputs: FoldInput[] = [...(c.ops.get(C)?.values() ?? [])].map((x: any) => ({ seq: x.seq, op: fromBinary(OpSchema, x.op) }));
      for (const e of c.outbox.values()) {
        const o = fromBinary(OpSchema, e.op);
        if (e.failed !== undefined && o.payload.case !== "message") continue; // refused: changes nothing
        o.userId = me.userId;
        inputs.push({ seq: 0, op: o, ...(e.failed !== undefined ? { failed: e.failed } : {}) });
      }
      // The client names the user's own messages; others' names it has
      // not fetched here.
      return referenceFold(C, inputs, { userId: me.userId, receipts: c.convs.get(C).receipts }).map((m) =>
        m.userId === me.userId ? { ...m, authorName: me.username } : m,
      );
    };
    // A log of ops that target ops before them, as the server takes them
    // (the Folding test above covers targets after).
    const size = 5 + Math.floor(r() * 40);
    const ids = Array.from({ length: size }, () => op("x", { case: "message", value: { body: enc.encode("") } }).id);
    const log = ids.map((id, i) => {
      const pick = <T>(xs: T[]): T => xs[Math.floor(r() * Math.min(i, xs.length))]!;
      const k = i === 0 ? 0 : r();
      const payload: MessageInitShape<typeof OpSchema>["payload"] =
        k < 0.45 ? { case: "message", value: { body: enc.encode(`m${i}`) } } :
        k < 0.6 ? { case: "edit", value: { targetId: pick(ids), body: enc.encode(`e${i}`) } } :
        k < 0.7 ? { case: "delete", value: { targetId: pick(ids) } } :
        k < 0.88 ? { case: "reactionAdd", value: { targetId: pick(ids), key: pick(["a", "b"]) } } :
        { case: "reactionRemove", value: { targetId: pick(ids), key: pick(["a", "b"]) } };
      return create(OpSchema, { id, userId: pick(["alice", "bob"]), deviceId: "D", payload });
    });
    let next = size + 1; // seqs for outbox ops that get stored
    const erasedSeqs = new Set<number>();
    const steps: string[] = [];
    for (let step = 0; step < 40; step++) {
      const k = r();
      let change: Change;
      if (k < 0.35) {
        // Ops stored at any seq: in order, out of order, again, erased.
        change = {
          ops: Array.from({ length: 1 + Math.floor(r() * 4) }, () => {
            const seq = 1 + Math.floor(r() * size);
            if (r() < 0.15) erasedSeqs.add(seq); // erased for good, as the server erases
            const o = create(OpSchema, { ...log[seq - 1]!, seq: BigInt(seq), erased: erasedSeqs.has(seq) });
            return { convId: C, seq, id: o.id, op: toBinary(OpSchema, o) };
          }),
        };
      } else if (k < 0.5) {
        // A new outbox op: a copy of a log op, or an edit, reaction or
        // delete of a pending one; some failed.
        let o = create(OpSchema, { ...log[Math.floor(r() * size)]!, id: op("", { case: "message", value: {} }).id, userId: "" });
        if (r() < 0.3 && c.outbox.size > 0) {
          const target = fromBinary(OpSchema, c.outbox.get(pick([...c.outbox.keys()])).op).id;
          o = create(OpSchema, { id: o.id, deviceId: "D", payload: pick<MessageInitShape<typeof OpSchema>["payload"]>([
            { case: "edit", value: { targetId: target, body: enc.encode("pe") } },
            { case: "reactionAdd", value: { targetId: target, key: "a" } },
            { case: "delete", value: { targetId: target } },
          ]) });
        }
        change = { outboxPut: [{ convId: C, id: o.id, dot: step, op: toBinary(OpSchema, o), createdAt: 0, ...(r() < 0.3 ? { failed: "no" } : {}) }] };
      } else if (k < 0.6) {
        // An outbox op is stored (a push's result) or dropped. The server
        // takes an op only after its target: one whose target is still
        // pending is refused, so dropped.
        if (c.outbox.size === 0) continue;
        const id = pick([...c.outbox.keys()]);
        const o = fromBinary(OpSchema, c.outbox.get(id).op);
        const target = o.payload.case === "edit" || o.payload.case === "delete" || o.payload.case === "reactionAdd" || o.payload.case === "reactionRemove" ? o.payload.value.targetId : "";
        const refused = [...c.outbox.values()].some((e: any) => fromBinary(OpSchema, e.op).id === target);
        o.seq = BigInt(next);
        o.userId = "alice";
        change = r() < 0.6 && !refused ? { ops: [{ convId: C, seq: next++, id: o.id, op: toBinary(OpSchema, o) }], outboxDelete: [id] } : { outboxDelete: [id] };
      } else if (k < 0.75) {
        // The info's head: what the device must hold (pages stop at holes
        // up to it), all the log or part of it.
        const head = r() < 0.5 ? size : Math.floor(r() * (size + 1));
        change = { convs: [conv(r() < 0.2 ? [] : [{ userId: "bob", delivered: Math.floor(r() * size), read: Math.floor(r() * size) }], head)] };
      } else if (k < 0.8) {
        const who = pick(["alice", "bob"]);
        change = { clear: true, meta: { epoch: "", feedPos: "0", dots: {}, session: session(who) }, convs: [conv([])] };
      } else {
        // The conversation list's last message, from the tail alone until
        // the messages are asked for (and again after a sign-in), then from
        // the fold the client keeps; and from the tail on a client just
        // opened on the same replica.
        const lastOf = (x: any) => x.conversations().find((v: { id: string }) => v.id === C)?.lastMessage;
        const listFirst = r() < 0.5;
        if (listFirst) assert.deepEqual(lastOf(c), reference().at(-1), `seed ${seed + round}, step ${step}: the last message`);
        if (r() < 0.7) {
          let want = reference();
          let got: MessageView[];
          if (r() < 0.5) got = c.messages(C);
          else {
            // A page stops at the highest hole below what the device holds.
            const page: MessagePage = c.page(C, { limit: 1000 });
            got = page.messages;
            // A page stops at the highest hole up to the info's head.
            const seqs = new Set<number>(c.ops.get(C)?.keys() ?? []);
            let hole = Math.min(Math.max(0, ...seqs), c.convs.get(C).head);
            while (hole > 0 && seqs.has(hole)) hole--;
            want = want.filter((m) => m.seq === 0 || m.seq > hole);
            assert.equal(page.more, false, `seed ${seed + round}, step ${step}: more`);
          }
          assert.deepEqual(got, want, `seed ${seed + round}, step ${step}, after ${steps.join(" ")}`);
        }
        if (!listFirst) assert.deepEqual(lastOf(c), reference().at(-1), `seed ${seed + round}, step ${step}: the last message`);
        const reopened = await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica });
        assert.deepEqual(lastOf(reopened), reference().at(-1), `seed ${seed + round}, step ${step}: the reopened client's last message`);
        // What it holds, counted afresh.
        const seqs = [...(c.ops.get(C)?.keys() ?? [])] as number[];
        let held = 0;
        while (seqs.includes(held + 1)) held++;
        assert.equal(c.held(C), held, `seed ${seed + round}, step ${step}: held`);
        assert.equal(c.olderLoading(C), seqs.some((q) => q > held), `seed ${seed + round}, step ${step}: olderLoading`);
        steps.push("view");
        continue;
      }
      steps.push(Object.keys(change).join("+"));
      await c.commit(() => change);
    }
    assert.deepEqual(c.messages(C), reference(), `seed ${seed + round}, at the end, after ${steps.join(" ")}`);
  }
});

test("pages stop at a hole in what the device holds, and fill in once it has", async () => {
  const { FerryClient, MemoryReplica } = await import("../src/index.js");
  const replica = new MemoryReplica();
  const conv = { id: "C", title: "t", role: 1, removed: false, head: 1000, unread: 0, delivered: 0, read: 0, memberCount: 2, receipts: [], changedAt: 1 };
  await replica.apply({ meta: { epoch: "", feedPos: "0", dots: {}, session: { userId: "alice", deviceId: "D", token: "t", username: "alice" } }, convs: [conv] });
  const c = (await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica })) as any;
  const hold = (lo: number, hi: number) =>
    c.commit(() => ({
      ops: Array.from({ length: hi - lo + 1 }, (_, i) => {
        const o = op("bob", { case: "message", value: { body: enc.encode(`m${lo + i}`) } });
        return { convId: "C", seq: lo + i, id: o.id, op: toBinary(OpSchema, o) };
      }),
    }));
  await hold(1, 100);
  await hold(901, 1000); // 101-900 still on their way, as a catch-up leaves them
  const check = (before: number, want: [number, number, boolean, boolean] | [boolean, boolean]) => {
    const p: MessagePage = c.page("C", { before, limit: 50 });
    const got = p.messages.length > 0 ? [p.messages[0]!.seq, p.messages.at(-1)!.seq, p.more, p.olderLoading] : [p.more, p.olderLoading];
    assert.deepEqual(got, want, `page before ${before}`);
  };
  check(0, [951, 1000, true, true]);
  check(951, [901, 950, false, true]); // not on to 100, below the hole
  check(901, [false, true]); // in the hole
  check(500, [false, true]);
  check(101, [51, 100, true, false]); // below it, every seq held
  check(2000, [951, 1000, true, true]);
  await hold(101, 900);
  check(951, [901, 950, true, false]);
  check(901, [851, 900, true, false]);
  // The device's own message, accepted at 1003 while others' at 1001 and
  // 1002 are still on their way (above the head the last info gave, 1000):
  // not a hole to stop at.
  await hold(1003, 1003);
  check(0, [952, 1003, true, false]);
});

test("dismissFailed takes a refused message out of the conversation, and only a refused one", async () => {
  const { FerryClient, MemoryReplica } = await import("../src/index.js");
  const replica = new MemoryReplica();
  const conv = { id: "C", title: "t", role: 1, removed: false, head: 0, unread: 0, delivered: 0, read: 0, memberCount: 2, receipts: [], changedAt: 1 };
  const entry = (text: string, failed?: string) => {
    const o = op("", { case: "message", value: { body: enc.encode(text) } });
    return { convId: "C", id: o.id, dot: n, op: toBinary(OpSchema, o), createdAt: 0, ...(failed !== undefined ? { failed } : {}) };
  };
  const refused = entry("refused", "not a member"), pending = entry("pending");
  await replica.apply({ meta: { epoch: "", feedPos: "0", dots: {}, session: { userId: "alice", deviceId: "D", token: "t", username: "alice" } }, convs: [conv], outboxPut: [refused, pending] });
  const c = await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica });
  assert.deepEqual(c.messages("C").map((m) => [m.text, m.status]).sort(), [["pending", "pending"], ["refused", "failed"]]);
  const events: string[] = [];
  c.on((e) => events.push(`${e.kind} ${e.convId}`));
  await assert.rejects(c.dismissFailed(pending.id), /not a failed op/);
  await assert.rejects(c.dismissFailed("01ARZ3NDEKTSV4RRFFQ69G5FAV"), /not a failed op/);
  assert.deepEqual(events, []);
  await c.dismissFailed(refused.id);
  assert.deepEqual(c.messages("C").map((m) => m.text), ["pending"]);
  assert.equal(c.conversations()[0]!.lastMessage?.text, "pending");
  assert.deepEqual(events, ["messages C", "conversations C"]);
  const reopened = await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica });
  assert.deepEqual(reopened.messages("C").map((m) => m.text), ["pending"], "dismissed for good");
});

test("a catch-up's conversations are listed in the server's order, across its messages", async () => {
  const { FerryClient, MemoryReplica } = await import("../src/index.js");
  const { ConversationInfoSchema } = await import("../src/gen/ferry/v1/conversation_pb.js");
  const replica = new MemoryReplica();
  const known = { id: ulid(1_790_000_000_000), title: "known", role: 1, removed: false, head: 5, unread: 0, delivered: 5, read: 5, memberCount: 2, receipts: [], changedAt: 7 };
  await replica.apply({ meta: { epoch: "", feedPos: "0", dots: {}, session: { userId: "alice", deviceId: "D", token: "t", username: "alice" } }, convs: [known] });
  const c = (await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica })) as any;
  // 300 changed conversations, most recently changed first, in messages of
  // 256 as the server sends them; the known one's read marker alone moved.
  const infos = Array.from({ length: 300 }, (_, i) =>
    create(ConversationInfoSchema, { id: ulid(1_790_000_001_000 + i), title: `c${i}`, head: 1n, memberCount: 2 }));
  infos.splice(100, 0, create(ConversationInfoSchema, { id: known.id, title: "known", head: 5n, read: 5n, memberCount: 2 }));
  c.places = c.reservePlaces(infos.length);
  await c.takeConversations(infos.slice(0, 256));
  await c.takeConversations(infos.slice(256));
  const titles = c.conversations().map((v: ConversationView) => v.title);
  assert.deepEqual(titles, [...infos.filter((i) => i.title !== "known").map((i) => i.title), "known"]);
  // A catch-up of 300 new conversations cut off after its first message
  // placed those above the rest of its own; the next lists them all again
  // (no position saved), in the server's order.
  const more = Array.from({ length: 300 }, (_, i) =>
    create(ConversationInfoSchema, { id: ulid(1_790_000_002_000 + i), title: `n${i}`, head: 1n, memberCount: 2 }));
  c.places = c.reservePlaces(more.length);
  await c.takeConversations(more.slice(0, 256));
  c.places = c.reservePlaces(more.length);
  await c.takeConversations(more.slice(0, 256));
  await c.takeConversations(more.slice(256));
  assert.deepEqual(c.conversations().slice(0, 300).map((v: ConversationView) => v.title), more.map((i) => i.title), "after a catch-up cut off");
  // Live: a conversation that moves goes to the top.
  c.places = null;
  await c.takeConversations([create(ConversationInfoSchema, { id: infos[299]!.id, title: "c299", head: 2n, memberCount: 2 })]);
  assert.equal(c.conversations()[0].title, "c299");
});

test("a refused op takes no dot: the device's later ops are numbered again, and dot errors say from where", async () => {
  const { FerryClient, MemoryReplica } = await import("../src/index.js");
  const { OpStatus, RejectReason } = await import("../src/gen/ferry/v1/op_pb.js");
  const replica = new MemoryReplica();
  const conv = { id: "C", title: "t", role: 1, removed: false, head: 0, unread: 0, delivered: 0, read: 0, memberCount: 2, receipts: [], changedAt: 1 };
  await replica.apply({ meta: { epoch: "", feedPos: "0", dots: {}, session: { userId: "alice", deviceId: "D", token: "t", username: "alice" } }, convs: [conv] });
  const c = (await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica })) as any;
  const ids = [await c.send("C", "a"), await c.send("C", "b"), await c.send("C", "c"), await c.send("C", "d")];
  const dots = () => ids.map((id) => c.outbox.get(id)?.failed !== undefined ? "failed" : c.outbox.get(id) ? Number(fromBinary(OpSchema, c.outbox.get(id).op).dot) : "gone");
  assert.deepEqual(dots(), [1, 2, 3, 4]);
  const result = (id: string, status: number, extra = {}) => ({ opId: id, status, seq: 0n, reason: 0, message: "", serverDot: 0n, ...extra });
  // A push of the first two: a accepted, b refused. c and d, not pushed
  // yet, take b's dot and the next. The list hears of it (its last
  // message's status).
  const events: string[] = [];
  c.on((e: { kind: string; convId?: string }) => events.push(`${e.kind} ${e.convId ?? ""}`));
  await c.takeResults([c.outbox.get(ids[0]), c.outbox.get(ids[1])], [
    result(ids[0], OpStatus.ACCEPTED, { seq: 1n }),
    result(ids[1], OpStatus.REJECTED, { reason: RejectReason.PERMISSION_DENIED, message: "no" }),
  ]);
  assert.deepEqual(dots(), ["gone", "failed", 2, 3]);
  assert.ok(events.includes("messages C") && events.includes("conversations C"), `events ${events}`);
  assert.equal(c.meta.dots.C, 3);
  assert.equal(Number(c.outbox.get(ids[2]).dot), 2, "the entry's dot moves with its op's");
  // A dot error says the server holds the device's ops up to dot 3 (a
  // replica restored from a backup, say): the pending ones go on from 4.
  await c.takeResults([c.outbox.get(ids[2])], [result(ids[2], OpStatus.REJECTED, { reason: RejectReason.DOT_GAP, serverDot: 3n })]);
  assert.deepEqual(dots(), ["gone", "failed", 4, 5]);
  assert.equal(c.meta.dots.C, 5);
  assert.equal(c.failed().length, 1);
  assert.equal(await c.send("C", "e").then((id: string) => Number(c.outbox.get(id).dot)), 6);
});

test("own ops stored after their message's delete are stored erased; so are those deleted in their own push (as in Go)", async () => {
  const { FerryClient, MemoryReplica } = await import("../src/index.js");
  const { OpStatus } = await import("../src/gen/ferry/v1/op_pb.js");
  const { OpsSchema } = await import("../src/gen/ferry/v1/sync_pb.js");
  const replica = new MemoryReplica();
  const conv = { id: "C", title: "t", role: 1, removed: false, head: 0, unread: 0, delivered: 0, read: 0, memberCount: 2, receipts: [], changedAt: 1 };
  await replica.apply({ meta: { epoch: "", feedPos: "0", dots: {}, session: { userId: "alice", deviceId: "D", token: "t", username: "alice" } }, convs: [conv] });
  const c = (await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica })) as any;
  const result = (id: string, status: number, seq: bigint) => ({ opId: id, status, seq, reason: 0, message: "", serverDot: 0n });
  // Sent and edited; the push's answer is lost, and an admin's delete of
  // the message comes before the answer to the push sent again.
  const id = await c.send("C", "top secret");
  const edit = await c.edit("C", id, "edited secret");
  const del = op("admin", { case: "delete", value: { targetId: id } });
  del.seq = 3n;
  await c.takeOps(create(OpsSchema, { batches: [{ conversationId: "C", ops: [del] }] }));
  assert.deepEqual(c.messages("C").map((m: MessageView) => [m.text, m.deleted, m.edited]), [["", true, false]], "still pending, it shows deleted");
  await c.takeResults([c.outbox.get(id), c.outbox.get(edit)], [result(id, OpStatus.DUPLICATE, 1n), result(edit, OpStatus.DUPLICATE, 2n)]);
  assert.deepEqual([...c.ops.get("C").keys()].sort(), [1, 2, 3]);
  assert.ok(!holds(c.ops, "secret"), "the replica keeps the text of a message deleted for everyone");
  assert.ok(!holds(await replica.load(), "secret"), "the stored replica keeps the text of a message deleted for everyone");
  // Sent, edited and deleted while offline: one push, answered at once.
  const id2 = await c.send("C", "sent in haste");
  const edit2 = await c.edit("C", id2, "edited in haste");
  const del2 = await c.delete("C", id2);
  await c.takeResults([id2, edit2, del2].map((x) => c.outbox.get(x)), [
    result(id2, OpStatus.ACCEPTED, 4n), result(edit2, OpStatus.ACCEPTED, 5n), result(del2, OpStatus.ACCEPTED, 6n),
  ]);
  assert.ok(!holds(await replica.load(), "haste"), "the replica keeps the text of a message deleted in its own push");
  assert.deepEqual(c.messages("C").map((m: MessageView) => [m.text, m.deleted]), [["", true], ["", true]]);
});

test("after a sign-in replaced a refused device, its queued ops go first and are numbered apart", async () => {
  const { FerryClient, MemoryReplica } = await import("../src/index.js");
  const { OpStatus, RejectReason } = await import("../src/gen/ferry/v1/op_pb.js");
  const replica = new MemoryReplica();
  const conv = { id: "C", title: "t", role: 1, removed: false, head: 0, unread: 0, delivered: 0, read: 0, memberCount: 2, receipts: [], changedAt: 1 };
  await replica.apply({ meta: { epoch: "", feedPos: "0", dots: { C: 2 }, session: { userId: "alice", deviceId: "OLD", token: "t", username: "alice" } }, convs: [conv] });
  let now = 1_000;
  const c = (await FerryClient.open({ baseUrl: "http://127.0.0.1:1", replica, now: () => now++ })) as any;
  const old = [await c.send("C", "o1"), await c.send("C", "o2")]; // OLD's dots 3 and 4
  // A login as the same user replaced the refused device (as resignedIn
  // does): its own ops count from 1.
  await c.resignedIn({ userId: "alice", deviceId: "NEW", token: "t2", username: "alice" });
  const mine = [await c.send("C", "n1"), await c.send("C", "n2")];
  const op = (id: string) => fromBinary(OpSchema, c.outbox.get(id).op);
  const show = (ids: string[]) => ids.map((id) => c.outbox.get(id) ? `${op(id).deviceId}:${op(id).dot}${c.outbox.get(id).failed !== undefined ? " failed" : ""}` : "gone");
  assert.deepEqual(show([...old, ...mine]), ["OLD:3", "OLD:4", "NEW:1", "NEW:2"]);
  // The new device's ops, numbered lower, still go after the old ones,
  // which were written first.
  assert.deepEqual(c.pushOrder([...c.outbox.values()].reverse()).map((e: { id: string }) => e.id), [...old, ...mine]);
  const result = (id: string, status: number, extra = {}) => ({ opId: id, status, seq: 0n, reason: 0, message: "", serverDot: 0n, ...extra });
  // A dot error of the old device's renumbers its ops alone.
  await c.takeResults([c.outbox.get(old[0])], [result(old[0], OpStatus.REJECTED, { reason: RejectReason.DOT_GAP, serverDot: 4n })]);
  assert.deepEqual(show([...old, ...mine]), ["OLD:5", "OLD:6", "NEW:1", "NEW:2"]);
  assert.equal(c.meta.dots.C, 2, "the old device's dots are not the new one's");
  // A refused op of the new device's renumbers its later ones, and its
  // dots.
  await c.takeResults([c.outbox.get(mine[0])], [result(mine[0], OpStatus.REJECTED, { reason: RejectReason.PERMISSION_DENIED, message: "no" })]);
  assert.deepEqual(show([...old, ...mine]), ["OLD:5", "OLD:6", "NEW:1 failed", "NEW:1"]);
  assert.equal(c.meta.dots.C, 1);
});

// fakeLocks is the Web Locks API as browsers have it, for exclusive locks
// asked with a signal (Node has none): a request waits for the lock until
// its signal aborts.
function fakeLocks() {
  const held = new Map<string, (() => void)[]>(); // name -> who waits
  const locks = {
    async request(name: string, opts: { signal?: AbortSignal }, cb: (lock: Lock | null) => unknown) {
      while (held.has(name)) {
        await new Promise<void>((resolve, reject) => {
          held.get(name)!.push(resolve);
          opts.signal?.addEventListener("abort", () => reject(opts.signal!.reason), { once: true });
        });
      }
      held.set(name, []);
      try {
        return await cb({ name, mode: "exclusive" } as Lock);
      } finally {
        const waiting = held.get(name)!;
        held.delete(name);
        for (const w of waiting) w();
      }
    },
  } as unknown as LockManager;
  return { locks, held };
}

test("IndexedDBReplica: a database serves one replica at a time, until it closes", async () => {
  const { IDBFactory } = await import("fake-indexeddb");
  const { IndexedDBReplica, ReplicaInUseError } = await import("../src/index.js");
  const { locks, held } = fakeLocks();
  const factory = new IDBFactory();

  const first = await IndexedDBReplica.open("dev", { factory, locks });
  await assert.rejects(IndexedDBReplica.open("dev", { factory, locks, waitMs: 20 }), (err: unknown) => {
    assert.ok(err instanceof ReplicaInUseError);
    assert.equal(err.database, "dev");
    assert.match(err.message, /open in another tab/);
    return true;
  });
  const other = await IndexedDBReplica.open("other", { factory, locks });

  // A tab being reloaded lets go while the new page waits.
  const waiting = IndexedDBReplica.open("dev", { factory, locks, waitMs: 60_000 });
  first.close();
  const second = await waiting;

  // Closed, a database opens again (the wait covers the lock's release,
  // which comes in a later turn); closing twice does no harm.
  second.close();
  const third = await IndexedDBReplica.open("dev", { factory, locks });
  third.close();
  second.close();
  const fourth = await IndexedDBReplica.open("dev", { factory, locks });
  fourth.close();
  other.close();

  // An open that fails lets go of the lock.
  const broken = { open: () => { throw new Error("disk on fire"); } } as unknown as IDBFactory;
  await assert.rejects(IndexedDBReplica.open("dev", { factory: broken, locks }), /disk on fire/);
  (await IndexedDBReplica.open("dev", { factory, locks })).close();
  await new Promise((r) => setImmediate(r));
  assert.equal(held.size, 0, "every lock released");

  // A page whose origin may not take locks opens without.
  const refused = { request: () => Promise.reject(new DOMException("opaque origin", "SecurityError")) } as unknown as LockManager;
  (await IndexedDBReplica.open("dev", { factory, locks: refused })).close();
});

test("ulidFromBytes: the 16 bytes of a ULID, in the same 26 characters", () => {
  assert.equal(ulidFromBytes(new Uint8Array(16)), "00000000000000000000000000");
  assert.equal(ulidFromBytes(new Uint8Array(16).fill(255)), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
  const entropy = Uint8Array.from({ length: 10 }, (_, i) => 17 * i + 3);
  const t = 1_790_000_000_123;
  const b = new Uint8Array(16);
  for (let k = 0, x = t; k < 6; k++, x = Math.floor(x / 256)) b[5 - k] = x % 256;
  b.set(entropy, 6);
  assert.equal(ulidFromBytes(b), ulid(t, (r) => r.set(entropy)));
  assert.throws(() => ulidFromBytes(new Uint8Array(15)), /15 bytes/);
  // A known answer, from the Go SDK's oklog/ulid: MustParse's bytes.
  const known = Uint8Array.from([1, 86, 62, 58, 181, 211, 214, 118, 76, 97, 239, 185, 147, 2, 189, 91]);
  assert.equal(ulidFromBytes(known), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
  assert.equal(ulid(1469922850259, (r) => r.set(known.subarray(6))), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
});

// A packed batch of every kind of op, built by hand as the server packs:
// two authors, ids with time steps, payload lists in op order.
function packedSample(): PackedBatch {
  const id = (n: number) => Uint8Array.from({ length: 16 }, (_, i) => (i === 15 ? n : i === 0 ? 1 : 0));
  const kinds = [OpKind.CREATE, OpKind.MEMBER_ADD, OpKind.MESSAGE, OpKind.EDIT, OpKind.REACTION_ADD, OpKind.REACTION_REMOVE,
    OpKind.DELETE, OpKind.MEMBER_ROLE, OpKind.MEMBER_REMOVE, OpKind.SET_TITLE];
  return create(PackedBatchSchema, {
    conversationId: ulidFromBytes(id(9)),
    firstSeq: 1n,
    authorDevices: [id(1), id(2)],
    authorUsers: [id(3), id(4)],
    authors: [0, 0, 1, 1, 0, 0, 1, 0, 0, 1],
    dotSteps: [1n, 1n, 1n, 1n, 1n, 1n, 1n, 2n, 1n, 1n],
    timeSteps: [1_790_000_000_000n, 0n, 5n, 1n, 0n, 2n, 3n, -1n, 4n, 0n],
    idEntropy: Uint8Array.from({ length: 10 * kinds.length }, (_, i) => i),
    kinds,
    erased: [2],
    bodySizes: [0, 6],
    bodyData: enc.encode("edited"),
    contentTypes: ["", "text/plain"],
    texts: ["team", "👍", "👍", "new title"],
    targets: Uint8Array.from([...id(20), ...id(20), ...id(20), ...id(20)]),
    members: Uint8Array.from([...id(4), ...id(4), ...id(4)]),
    roles: [Role.MEMBER, Role.ADMIN],
  });
}

test("unpackBatch: rows with ids, seqs, dots, authors and payloads in op order", () => {
  const b = unpackBatch(packedSample());
  assert.equal(b.ops.length, 10);
  assert.deepEqual(b.ops.map((o) => o.seq), [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n]);
  assert.deepEqual(b.ops.map((o) => o.payload.case), ["create", "memberAdd", "message", "edit", "reactionAdd", "reactionRemove",
    "delete", "memberRole", "memberRemove", "setTitle"]);
  // Dots count per author: device 1 has ops 1, 2, 5, 6, 8 (a step of 2), 9.
  assert.deepEqual(b.ops.map((o) => o.dot), [1n, 2n, 1n, 2n, 3n, 4n, 3n, 6n, 7n, 4n]);
  assert.deepEqual(b.ops.map((o) => ulidTime(o.id) - 1_790_000_000_000), [0, 0, 5, 6, 6, 8, 11, 10, 14, 14]);
  assert.ok(b.ops.every((o) => isULID(o.id)));
  assert.equal(new Set(b.ops.map((o) => o.id)).size, 10, "each id its own entropy");
  assert.deepEqual(b.ops.map((o) => o.erased), [false, false, true, false, false, false, false, false, false, false]);
  const [create0, add, , edit, react, , , role, remove, title] = b.ops;
  assert.equal(create0!.payload.case === "create" && create0!.payload.value.title, "team");
  assert.equal(add!.payload.case === "memberAdd" && add!.payload.value.role, Role.MEMBER);
  assert.equal(role!.payload.case === "memberRole" && role!.payload.value.role, Role.ADMIN);
  assert.equal(remove!.payload.case === "memberRemove" && remove!.payload.value.userId, add!.payload.case === "memberAdd" && add!.payload.value.userId);
  assert.equal(edit!.payload.case === "edit" && new TextDecoder().decode(edit!.payload.value.body), "edited");
  assert.equal(react!.payload.case === "reactionAdd" && react!.payload.value.key, "👍");
  assert.equal(title!.payload.case === "setTitle" && title!.payload.value.title, "new title");
  assert.equal(b.ops[2]!.deviceId, b.ops[3]!.deviceId);
  const lower = packedSample();
  lower.conversationId = lower.conversationId.toLowerCase();
  assert.equal(unpackBatch(lower).conversationId, b.conversationId, "a lowercase id comes out canonical");
  assert.notEqual(b.ops[0]!.userId, b.ops[2]!.userId);
});

test("unpackBatch: an op of a newer kind comes without a payload, and the ops after it read theirs", () => {
  // The title op becomes kind 42, which carries its payload in lists of
  // its own: its title leaves the texts.
  const p = packedSample();
  p.kinds[9] = 42 as OpKind;
  p.texts.pop();
  const b = unpackBatch(p);
  const all = unpackBatch(packedSample());
  assert.equal(b.ops.length, 10);
  const newer = b.ops[9]!;
  assert.equal(newer.payload.case, undefined);
  assert.deepEqual([newer.id, newer.seq, newer.deviceId, newer.dot, newer.userId], [all.ops[9]!.id, 10n, all.ops[9]!.deviceId, 4n, all.ops[9]!.userId]);
  assert.deepEqual(b.ops.slice(0, 9), all.ops.slice(0, 9));

  // One in the middle: the delete's target leaves the targets; the ops
  // after it read theirs.
  const q = packedSample();
  q.kinds[6] = 42 as OpKind;
  q.targets = q.targets.subarray(16);
  const c = unpackBatch(q);
  assert.equal(c.ops[6]!.payload.case, undefined);
  assert.deepEqual(c.ops.filter((_, i) => i !== 6), all.ops.filter((_, i) => i !== 6));
});

test("unpackBatch: a malformed batch is refused, naming the field", () => {
  const cases: [string, (p: PackedBatch) => void, RegExp][] = [
    ["bad conversation id", (p) => (p.conversationId = "nope"), /conversation_id/],
    ["seq 0", (p) => (p.firstSeq = 0n), /first_seq/],
    ["short authors", (p) => p.authors.pop(), /authors has 9 entries for 10/],
    ["short time steps", (p) => p.timeSteps.pop(), /time_steps/],
    ["short entropy", (p) => (p.idEntropy = p.idEntropy.subarray(1)), /id_entropy/],
    ["author out of range", (p) => (p.authors[3] = 2), /authors\[3\] is 2/],
    ["same device twice", (p) => (p.authorDevices[1] = p.authorDevices[0]!), /same device/],
    ["user missing", (p) => p.authorUsers.pop(), /author users/],
    ["dot step 0", (p) => (p.dotSteps[4] = 0n), /dot_steps\[4\]/],
    ["time before 1970", (p) => (p.timeSteps[1] = -2_000_000_000_000n), /time_steps\[1\]/],
    ["texts short", (p) => p.texts.pop(), /texts ends before op 9/],
    ["texts long", (p) => p.texts.push("x"), /texts has 5 entries/],
    ["body sizes short", (p) => p.bodySizes.pop(), /body_sizes or content_types/],
    ["body sizes long", (p) => p.bodySizes.push(0), /3 body sizes/],
    ["body data short", (p) => (p.bodyData = p.bodyData.subarray(1)), /body_data ends inside body 1/],
    ["body data long", (p) => (p.bodyData = enc.encode("edited!")), /body_data has 1 bytes after/],
    ["targets short", (p) => (p.targets = p.targets.subarray(16)), /targets ends/],
    ["members long", (p) => (p.members = new Uint8Array(64)), /members has 64 bytes/],
    ["roles short", (p) => p.roles.pop(), /roles ends/],
    ["unknown role", (p) => (p.roles[1] = 9 as Role), /unknown role 9/],
    ["unspecified kind", (p) => (p.kinds[5] = OpKind.UNSPECIFIED), /kinds\[5\] is unspecified/],
    // A newer kind takes no entry of the payload lists: the reaction's key
    // and target are then one too many.
    ["newer kind", (p) => (p.kinds[5] = 42 as OpKind), /texts has 4 entries; the ops need 3/],
    ["erased out of range", (p) => (p.erased = [10]), /erased names op 10/],
    ["erased not ascending", (p) => (p.erased = [3, 2]), /not ascending/],
  ];
  for (const [name, spoil, want] of cases) {
    const p = packedSample();
    spoil(p);
    assert.throws(() => unpackBatch(p, "ops.packed[0]"), (e: unknown) => {
      assert.ok(e instanceof MalformedBatchError, `${name}: ${e}`);
      assert.match(e.message, /^ops\.packed\[0\]/, name);
      assert.match(e.message, want, name);
      return true;
    }, name);
  }
});

test("pushPiece: a push takes at most the server's op count and keeps within its message size, but always one op", async () => {
  const { pushPiece } = await import("../src/client.js");
  assert.equal(pushPiece(Array(80).fill(60_000), 100, (4 << 20) - (64 << 10)), 68); // 68 x 60,048 bytes fit in 4,128,768
  assert.equal(pushPiece(Array(1500).fill(10), 1000, 4 << 20), 1000);
  assert.equal(pushPiece([100, 100], 1000, 10), 1);
  assert.equal(pushPiece([], 1000, 10), 0);
});

test("IndexedDBReplica: a database the browser closes is lost at once, its writes throw, and it lets another page have it", async () => {
  const { locks } = fakeLocks();
  const factory = new IDBFactory();
  const replica = await IndexedDBReplica.open("gone", { factory, locks });
  await replica.apply({ meta: { epoch: "e", feedPos: "1", dots: {} } });
  let lost: Error | undefined;
  replica.watch((err) => (lost = err));
  // With no transaction running, the browser closes the connection, and
  // fires its close event, at once.
  forceCloseDatabase((replica as unknown as { db: Parameters<typeof forceCloseDatabase>[0] }).db);
  assert.ok(lost instanceof ReplicaLostError, `lost: ${lost}`);
  assert.match(lost.message, /the browser closed the replica "gone" \(its data was cleared or evicted, or its storage failed\)/);
  await assert.rejects(replica.apply({ meta: { epoch: "e", feedPos: "2", dots: {} } }), ReplicaLostError);
  await assert.rejects(replica.load(), ReplicaLostError);
  let again: Error | undefined;
  replica.watch((err) => (again = err));
  assert.equal(again, lost, "a watch after the loss hears of it");
  // The lost replica holds the database's Web Lock no longer: a reload,
  // or another tab, opens it without waiting.
  const other = await IndexedDBReplica.open("gone", { factory, locks, waitMs: 20 });
  assert.equal((await other.load()).meta.feedPos, "1");
  other.close();
  replica.close();
});

test("IndexedDBReplica: a write the browser aborts as it closes the database loses the replica, and stores nothing", async () => {
  const { locks } = fakeLocks();
  const factory = new IDBFactory();
  const replica = await IndexedDBReplica.open("aborted", { factory, locks });
  await replica.apply({ meta: { epoch: "e", feedPos: "1", dots: {} } });
  let lost: Error | undefined;
  replica.watch((err) => (lost = err));
  // A browser closing a connection under the page aborts its running
  // transactions with AbortError before the close event. fake-indexeddb
  // lets them finish instead, so the test aborts the write as a browser
  // does (_abort is its transactions' own way to), then closes.
  type Internal = IDBDatabase & Parameters<typeof forceCloseDatabase>[0];
  const db = (replica as unknown as { db: Internal }).db;
  const open = db.transaction.bind(db);
  let tx: (IDBTransaction & { _abort(name: string): void }) | undefined;
  db.transaction = ((...args: Parameters<IDBDatabase["transaction"]>) => (tx = open(...args) as typeof tx)) as IDBDatabase["transaction"];
  const write = replica.apply({ meta: { epoch: "e", feedPos: "2", dots: {} } });
  assert.ok(tx, "apply started a transaction");
  tx._abort("AbortError");
  forceCloseDatabase(db);
  // The write fails as the replica's loss, not as the abort, whichever
  // of the abort and the close event comes first.
  await assert.rejects(write, (err: unknown) => {
    assert.ok(err instanceof ReplicaLostError, `the write threw ${err}`);
    assert.match(err.message, /the browser closed the replica "aborted"/);
    assert.equal(err, lost, "the write's error is the loss the watcher heard of");
    return true;
  });
  await assert.rejects(replica.apply({}), ReplicaLostError);
  const other = await IndexedDBReplica.open("aborted", { factory, locks, waitMs: 20 });
  assert.equal((await other.load()).meta.feedPos, "1", "the aborted write stored nothing");
  other.close();
});

test("IndexedDBReplica: one closed by its page says so, and is not lost", async () => {
  const replica = await IndexedDBReplica.open("shut", { factory: new IDBFactory(), locks: undefined });
  let lost: Error | undefined;
  replica.watch((err) => (lost = err));
  replica.close();
  await assert.rejects(replica.apply({}), /ferry: the replica is closed/);
  assert.equal(lost, undefined);
});
