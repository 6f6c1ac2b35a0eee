// The web client against a real ferryd: offline catch-up, read state across
// devices, the outbox across a reload, and derived state converging.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { IDBFactory, forceCloseDatabase } from "fake-indexeddb";

import { FerryClient, IndexedDBReplica, MemoryReplica, ReplicaLostError, unpackBatch, type ClientOptions, type MessagePage, type MessageView, type Replica } from "../src/index.js";
import { OpBatchSchema, OpKind, OpResultSchema, OpSchema, OpStatus, RejectReason } from "../src/gen/ferry/v1/op_pb.js";
import { AckRequestSchema, PushRequestSchema, PushResponseSchema, SubscribeResponseSchema, SyncService } from "../src/gen/ferry/v1/sync_pb.js";
import { AccountService } from "../src/gen/ferry/v1/account_pb.js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { backup, startServer, type Server } from "./server.js";

let server: Server;
const clients: FerryClient[] = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const c of clients) await c.stop();
  await server.stop();
});

// Deterministic tests: no timers of ours; reconnects happen at once.
async function open(replica: Replica = new MemoryReplica()): Promise<FerryClient> {
  const c = await FerryClient.open({ baseUrl: server.url, replica, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1 });
  clients.push(c);
  return c;
}

// openWith is open() calling the server through fetch.
async function openWith(fetch: typeof globalThis.fetch): Promise<FerryClient> {
  const c = await FerryClient.open({ baseUrl: server.url, replica: new MemoryReplica(), sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1, fetch });
  clients.push(c);
  return c;
}

// signUpRevoked signs a new user up on c, goes live, and has another
// device of theirs revoke c's: c is then failed, its session refused. It
// returns the username.
async function signUpRevoked(c: FerryClient): Promise<string> {
  const username = await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  const other = await otherDevice(username);
  await other.accounts.revokeDevice({ deviceId: c.session!.deviceId });
  await c.waitFor(() => c.status().state === "failed");
  return username;
}

// throttled is the server's answer to a push over its throttle, asking
// for a wait of seconds.
function throttled(seconds: bigint): Response {
  const detail = Buffer.from(toBinary(DurationSchema, create(DurationSchema, { seconds }))).toString("base64").replace(/=+$/, "");
  return new Response(JSON.stringify({ code: "resource_exhausted", message: `too many pushes; retry in ${seconds}s`, details: [{ type: "google.protobuf.Duration", value: detail }] }),
    { status: 429, headers: { "Content-Type": "application/json" } });
}

// subscribeGate calls the server through its fetch, and holds the answer
// of the next Subscribe after holdNext() until the release it returns;
// stripNext(n) drops the Authorization header of the next n Subscribes,
// as a proxy would, so that the server refuses a session still good.
function subscribeGate() {
  let hold: Promise<void> | undefined;
  let strip = 0;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const subscribe = String(input).endsWith("/ferry.v1.SyncService/Subscribe");
    if (subscribe && strip > 0) {
      strip--;
      const headers = new Headers(init?.headers);
      headers.delete("Authorization");
      init = { ...init, headers };
    }
    const held = subscribe ? hold : undefined;
    if (held) hold = undefined;
    const res = await globalThis.fetch(input, init);
    await held;
    return res;
  };
  return {
    fetch,
    stripNext(n: number) {
      strip = n;
    },
    holdNext(): () => void {
      let release = () => {};
      hold = new Promise<void>((r) => (release = r));
      return release;
    },
  };
}

const texts = (ms: MessageView[]) => ms.map((m) => m.text);

// otherDevice signs username in as a device of the test's own, with the
// clients it calls the server with: to revoke a client's device, say.
async function otherDevice(username: string, deviceName = "other") {
  let token = "";
  const auth: Interceptor = (next) => async (req) => {
    if (token) req.header.set("Authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createConnectTransport({ baseUrl: server.url, interceptors: [auth] });
  const accounts = createClient(AccountService, transport);
  token = (await accounts.login({ username, password: "correct horse battery", deviceName })).session!.token;
  return { accounts, sync: createClient(SyncService, transport) };
}

// signUp registers a new user (a fresh name from who) on the device and
// starts it; it returns the username.
async function signUp(c: FerryClient, who: string): Promise<string> {
  const username = name(who);
  await c.register(username, "correct horse battery");
  c.start();
  return username;
}
let users = 0;
const name = (who: string) => `${who}${++users}`;

test("a device offline while 50 messages arrive gets each once, in order", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("lunch", [b]);
  await bob.waitFor(() => bob.conversations().some((c) => c.id === conv) && bob.status().state === "live");

  await bob.stop();
  const want: string[] = [];
  for (let i = 0; i < 50; i++) {
    want.push(`message ${i}`);
    await alice.send(conv, `message ${i}`);
  }
  assert.equal(alice.messages(conv).length, 50, "sent messages show at once");
  await alice.waitFor(() => alice.status().pending === 0);

  bob.start();
  await bob.waitFor(() => bob.status().state === "live" && bob.messages(conv).length === 50);
  const got = bob.messages(conv);
  assert.deepEqual(texts(got), want);
  const seqs = got.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), "in seq order");
  assert.equal(new Set(seqs).size, 50, "each once");
  assert.equal(bob.conversations()[0]!.unread, 50);
  assert.ok(bob.status().receivedOps >= 50, "catch-up progress counted");

  // Bob's device acked what it holds: alice sees her messages delivered.
  await alice.waitFor(() => alice.messages(conv).every((m) => m.status === "delivered"));
});

test("reading on one device clears the unread count on the user's other device", { timeout: 60_000 }, async () => {
  const alice = await open();
  const phone = await open();
  const laptop = await open();
  const [a, b] = [name("alice"), name("bob")];
  await alice.register(a, "correct horse battery");
  await phone.register(b, "correct horse battery");
  await laptop.login(b, "correct horse battery");
  for (const c of [alice, phone, laptop]) c.start();
  const conv = await alice.createConversation("news", [b]);
  for (let i = 0; i < 3; i++) await alice.send(conv, `n${i}`);
  const unread = (c: FerryClient) => c.conversations().find((x) => x.id === conv)?.unread;
  // A read covers the messages the device holds: the phone's user reads
  // the three once they are there.
  await phone.waitFor(() => unread(phone) === 3 && phone.messages(conv).length === 3);
  await laptop.waitFor(() => unread(laptop) === 3);

  await phone.markRead(conv);
  assert.equal(unread(phone), 0);
  await laptop.waitFor(() => unread(laptop) === 0);
  await alice.waitFor(() => alice.messages(conv).every((m) => m.status === "read"));
});

test("the outbox survives a reload (IndexedDB) and every op is stored once", { timeout: 60_000 }, async () => {
  const factory = new IDBFactory();
  let alice = await open(await IndexedDBReplica.open("alice", { factory }));
  const bob = await open();
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("plans", [b]);
  await alice.waitFor(() => alice.status().pending === 0);
  await alice.stop();

  for (const t of ["offline 1", "offline 2", "offline 3"]) await alice.send(conv, t);
  assert.deepEqual(alice.messages(conv).map((m) => m.status), ["pending", "pending", "pending"]);

  // The page reloads: a new client on the same database.
  alice = await open(await IndexedDBReplica.open("alice", { factory }));
  assert.equal(alice.status().pending, 3);
  alice.start();
  await alice.waitFor(() => alice.status().pending === 0);
  await bob.waitFor(() => bob.messages(conv).length === 3);
  assert.deepEqual(texts(bob.messages(conv)), ["offline 1", "offline 2", "offline 3"]);
  assert.ok(alice.messages(conv).every((m) => m.seq > 0 && m.status !== "pending"));
});

test("edits, deletes and reactions converge on every device", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("edits", [b]);
  const m1 = await alice.send(conv, "helo");
  const m2 = await alice.send(conv, "oops");
  await bob.waitFor(() => bob.messages(conv).length === 2);
  await alice.edit(conv, m1, "hello");
  await alice.delete(conv, m2);
  await bob.react(conv, m1, "👍");
  const view = (c: FerryClient) => JSON.stringify(c.messages(conv).map((m) => [m.id, m.text, m.edited, m.deleted, m.reactions]));
  const want = JSON.stringify([[m1, "hello", true, false, { "👍": [bob.session!.userId] }], [m2, "", false, true, {}]]);
  await alice.waitFor(() => view(alice) === want);
  await bob.waitFor(() => view(bob) === want);
});

test("concurrent sends, while the session catches up, each get their own dot", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("burst", [b]);
  const want = Array.from({ length: 20 }, (_, i) => `burst ${i}`);
  await Promise.all(want.map((t) => alice.send(conv, t)));
  await alice.waitFor(() => alice.status().pending === 0);
  assert.ok(alice.messages(conv).every((m) => m.status !== "failed"), JSON.stringify(alice.messages(conv).map((m) => m.error)));
  await bob.waitFor(() => bob.messages(conv).length === 20);
  assert.deepEqual(texts(bob.messages(conv)).sort(), [...want].sort());
});

test("after a server restore, each device gives back its user's lost ops and starts over", { timeout: 90_000 }, async () => {
  const srv = await restorable("ferry-web-restore-");
  try {
    const alice = await openAt(srv.url);
    const bob = await openAt(srv.url);
    await signUp(alice, "alice");
    const b = await signUp(bob, "bob");
    const conv = await alice.createConversation("restore", [b]);
    await alice.send(conv, "before the backup");
    await bob.waitFor(() => bob.messages(conv).length === 1);

    await srv.backUp();
    await alice.send(conv, "after the backup");
    await bob.waitFor(() => bob.messages(conv).length === 2);

    // The operator restores the backup: the server lost "after the backup".
    await srv.restore();
    const want = ["before the backup", "after the backup"];
    await alice.waitFor(() => alice.status().state === "live" && JSON.stringify(texts(alice.messages(conv))) === JSON.stringify(want));
    await bob.waitFor(() => bob.status().state === "live" && JSON.stringify(texts(bob.messages(conv))) === JSON.stringify(want));
  } finally {
    await srv.done();
  }
});

test("catch-up shows the newest page of a conversation first, then fills in older messages", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await FerryClient.open({ baseUrl: server.url, sleep: async () => {}, pageSize: 20 });
  clients.push(bob);
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("long", [b]);
  await bob.waitFor(() => bob.conversations().some((c) => c.id === conv));
  await bob.stop();
  for (let i = 0; i < 120; i++) await alice.send(conv, `m${i}`);
  await alice.waitFor(() => alice.status().pending === 0);

  // The first messages bob shows are the newest, with older ones loading.
  let first: { texts: string[]; loading: boolean; page: MessagePage } | undefined;
  const stop = bob.on(() => {
    const ms = bob.messages(conv);
    if (!first && ms.length > 0) first = { texts: texts(ms), loading: bob.olderLoading(conv), page: bob.page(conv, { limit: 5 }) };
  });
  bob.start();
  await bob.waitFor(() => bob.status().state === "live" && bob.messages(conv).length === 120);
  stop();
  assert.ok(first, "no messages arrived");
  assert.equal(first.loading, true, "the first page arrived with older messages still loading");
  assert.deepEqual(first.texts.slice(-3), ["m117", "m118", "m119"], "the newest messages came first");
  assert.ok(first.texts.length <= 20, `the first page held ${first.texts.length} messages`);
  assert.deepEqual(texts(first.page.messages), first.texts.slice(-5));
  assert.equal(first.page.olderLoading, true, "page() says older messages are loading");
  assert.deepEqual(texts(bob.messages(conv)), Array.from({ length: 120 }, (_, i) => `m${i}`));
  assert.equal(bob.olderLoading(conv), false);
  assert.equal(bob.page(conv, { limit: 5 }).olderLoading, false);
});

test("an op the server refuses changes nothing, and the device's later ops go through", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("refusals", [b]);
  const m = await alice.send(conv, "alice's");
  await bob.waitFor(() => bob.messages(conv).length === 1);
  const del = await bob.delete(conv, m); // a member may not delete another's message
  await bob.send(conv, "after");
  await bob.waitFor(() => bob.status().pending === 0);
  assert.deepEqual(bob.messages(conv).map((x) => [x.text, x.deleted, x.status ?? ""]), [["alice's", false, ""], ["after", false, bob.messages(conv)[1]!.status ?? ""]]);
  assert.notEqual(bob.messages(conv)[1]!.status, "failed", bob.messages(conv)[1]!.error);
  assert.deepEqual(bob.failed().map((f) => [f.opId, f.kind]), [[del, "delete"]]);
  assert.match(bob.failed()[0]!.error, /delete/);
  await alice.waitFor(() => texts(alice.messages(conv)).join() === "alice's,after");
  await bob.dismissFailed(del);
  assert.deepEqual(bob.failed(), []);
  await assert.rejects(bob.send(conv, "x".repeat(1 << 20) + "x"), /the body is 1048577 bytes, more than the server's limit of \d+/);
});

test("a device back online lists the conversations in the order of their activity", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  const a = await signUp(alice, "alice");
  await signUp(bob, "bob");
  const convs: Record<string, string> = {};
  for (const title of ["one", "two", "three"]) convs[title] = await bob.createConversation(title, [a]);
  await alice.waitFor(() => alice.conversations().length === 3);
  await alice.stop();
  for (const title of ["three", "one", "two"]) {
    await bob.send(convs[title]!, `news in ${title}`);
    await bob.waitFor(() => bob.status().pending === 0); // a push each: three feed positions
  }
  alice.start();
  await alice.waitFor(() => alice.status().state === "live" && alice.conversations().every((c) => c.lastMessage?.text === `news in ${c.title}`));
  assert.deepEqual(alice.conversations().map((c) => c.title), ["two", "one", "three"]);
});

test("pages walk a conversation from the newest, pending messages on the first", { timeout: 60_000 }, async () => {
  const alice = await open();
  await signUp(alice, "alice");
  const conv = await alice.createConversation("pages", []);
  for (let i = 0; i < 120; i++) await alice.send(conv, `m${i}`);
  await alice.waitFor(() => alice.status().pending === 0);
  await alice.stop();
  await alice.send(conv, "draft 1");
  await alice.send(conv, "draft 2");
  const all = texts(alice.messages(conv));
  assert.equal(all.length, 122);

  const walked: string[][] = [];
  let page = alice.page(conv);
  for (;;) {
    walked.unshift(texts(page.messages));
    assert.equal(page.olderLoading, false);
    if (!page.more) break;
    page = alice.page(conv, { before: page.messages[0]!.seq });
  }
  assert.deepEqual(walked.map((p) => p.length), [20, 50, 52], "pages of 50 sent messages, newest first");
  assert.deepEqual(walked.flat(), all, "the pages are the history, each message once");
  assert.deepEqual(walked[2]!.slice(-2), ["draft 1", "draft 2"], "the pending messages end the first page");

  // More pending messages than a page's limit: the first page has them
  // all, and a sent one to go on from.
  const small = alice.page(conv, { limit: 1 });
  assert.deepEqual(texts(small.messages), ["m119", "draft 1", "draft 2"]);
  assert.deepEqual(texts(alice.page(conv, { before: small.messages[0]!.seq, limit: 1 }).messages), ["m118"]);
  assert.equal(alice.page(conv, { limit: 0.5 }).messages.length, 52, "a limit under 1 is the default");
  assert.deepEqual(texts(alice.page(conv, { before: 0, limit: 1 }).messages), texts(small.messages), "before 0 is the first page, as in Go");

  const seqs = alice.messages(conv).map((m) => m.seq);
  const mid = alice.page(conv, { before: seqs[60]!, limit: 3 });
  assert.deepEqual(texts(mid.messages), ["m57", "m58", "m59"]);
  assert.equal(mid.more, true);
  assert.deepEqual(texts(alice.page(conv, { before: 1 }).messages), [], "nothing before the first seq");
  assert.equal(alice.page(conv, { before: 1 }).more, false);

  // A page is the caller's copy.
  const mine = alice.page(conv, { limit: 1 });
  mine.messages.at(-1)!.text = "changed";
  assert.equal(alice.page(conv, { limit: 1 }).messages.at(-1)!.text, "draft 2");
});

// watchAcks records the markers of the Acks a device sends (through the
// fetch it gets) and holds its waits of holdMs (through its sleep) until the
// test releases them; other waits end at once. asked resolves when the
// first held wait begins.
function watchAcks(holdMs: number) {
  const acks: { delivered: number; read: number }[] = [];
  let acked: () => void = () => {};
  let release: () => void = () => {};
  let waiting: () => void = () => {};
  const asked = new Promise<void>((r) => (waiting = r));
  const opts: Pick<ClientOptions, "sleep" | "fetch"> = {
    sleep: (ms, signal) => {
      if (ms !== holdMs) return Promise.resolve();
      waiting();
      return new Promise<void>((r, reject) => {
        release = r;
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
    },
    fetch: async (input, init) => {
      if (String(input).endsWith("/ferry.v1.SyncService/Ack")) {
        const m = fromBinary(AckRequestSchema, init?.body as Uint8Array).markers[0]!;
        acks.push({ delivered: Number(m.delivered), read: Number(m.read) });
        acked();
      }
      return globalThis.fetch(input, init);
    },
  };
  return { acks, asked, opts, nextAck: () => new Promise<void>((r) => (acked = r)), release: () => release() };
}

// heldResumeAck starts a server where no conversation shares receipts,
// and has alice send bob "one" in a new conversation: it returns once bob
// holds it and his resume ack wait is held by watchAcks, before any ack.
// The wait is of delayMs, set on bob's client; without it, of the client's
// default, five seconds, which bob's client then keeps.
async function heldResumeAck(delayMs?: number) {
  const big = await startServer({ args: ["--receipt-members", "1"] });
  const watch = watchAcks(delayMs ?? 5000);
  const open2 = async (watching: boolean) => {
    const c = await FerryClient.open({
      baseUrl: big.url,
      ...(delayMs === undefined ? {} : { resumeAckDelayMs: delayMs }),
      minBackoffMs: 1,
      maxBackoffMs: 1,
      ...(watching ? watch.opts : { sleep: async () => {} }),
    });
    clients.push(c);
    return c;
  };
  try {
    const alice = await open2(false);
    const bob = await open2(true);
    await signUp(alice, "alice");
    const b = await signUp(bob, "bob");
    const conv = await alice.createConversation("big", [b]);
    const acked = watch.nextAck();
    await alice.send(conv, "one");
    await bob.waitFor(() => texts(bob.messages(conv)).includes("one"));
    // A wait of another length ends at once and its ack comes first: the
    // test fails here rather than waiting for a held wait that never comes.
    const first = await Promise.race([watch.asked.then(() => "the held wait"), acked.then(() => "an ack")]);
    assert.equal(first, "the held wait", `bob acked (${JSON.stringify(watch.acks)}) without waiting ${delayMs ?? 5000} ms`);
    assert.equal(watch.acks.length, 0, "bob acked before the resume ack delay passed");
    const one = bob.messages(conv).find((m) => m.text === "one")!.seq;
    return { big, alice, bob, conv, one, ...watch };
  } catch (err) {
    await big.stop();
    throw err;
  }
}

test("in a conversation without receipts, delivered acks wait five seconds by default; a read goes at once", { timeout: 60_000 }, async () => {
  const { big, alice, bob, conv, one, acks, nextAck, release } = await heldResumeAck();
  try {
    const first = nextAck();
    release();
    await first;
    assert.ok(acks[0]!.delivered >= one && acks[0]!.read === 0, `ack ${JSON.stringify(acks[0])}: want delivered >= ${one}, no read`);

    await alice.send(conv, "two");
    await bob.waitFor(() => texts(bob.messages(conv)).includes("two"));
    const two = bob.messages(conv).find((m) => m.text === "two")!.seq;
    await bob.markRead(conv); // the read goes without waiting for a release
    while (!acks.some((a) => a.read > 0)) await nextAck();
    const read = acks.find((a) => a.read > 0)!;
    assert.ok(read.read >= two && read.delivered >= two, `ack with the read ${JSON.stringify(read)}: want read and delivered >= ${two}`);
  } finally {
    await big.stop();
  }
});

test("stop sends the delivered markers still waiting for resumeAckDelayMs", { timeout: 60_000 }, async () => {
  // Bob's resume ack wait never ends on its own: only stop can send it.
  // Its length is the test's own, to tell it from a Goaway's delay.
  const { big, bob, one, acks } = await heldResumeAck(777);
  try {
    await bob.stop();
    assert.ok(acks.some((a) => a.delivered >= one), `acks ${JSON.stringify(acks)} after stop: want one with delivered >= ${one}`);
  } finally {
    await big.stop();
  }
});

test("delivered acks gather for ackDelayMs: two messages, one ack; a read goes at once", { timeout: 60_000 }, async () => {
  // Bob's ack wait has a length of the test's own, to tell it from others.
  const { acks, nextAck, asked, release, opts } = watchAcks(555);
  const alice = await open();
  const bob = await FerryClient.open({ baseUrl: server.url, ackDelayMs: 555, minBackoffMs: 1, maxBackoffMs: 1, ...opts });
  clients.push(bob);
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("gather", [b]);
  await bob.waitFor(() => bob.conversations().some((c) => c.id === conv) && bob.status().state === "live");
  await asked; // bob's device holds the conversation's first ops and waits to ack them
  await alice.send(conv, "one");
  await alice.send(conv, "two");
  await bob.waitFor(() => texts(bob.messages(conv)).includes("two"));
  assert.equal(acks.length, 0, "bob acked before the ack delay passed");
  const two = bob.messages(conv).find((m) => m.text === "two")!.seq;
  const first = nextAck();
  release();
  await first;
  assert.equal(acks.length, 1, "one ack for everything held");
  assert.ok(acks[0]!.delivered >= two, `ack ${JSON.stringify(acks[0])}: want delivered >= ${two}`);
  // A read goes at once: nothing releases a wait for it.
  const readAck = nextAck();
  await bob.markRead(conv);
  await readAck;
  assert.ok(acks.at(-1)!.read >= two, `ack ${JSON.stringify(acks.at(-1))}: want read >= ${two}`);
  // Alice sees both delivered.
  await alice.waitFor(() => alice.messages(conv).every((m) => m.status === "delivered" || m.status === "read"));
});

test("a packed catch-up unpacks to exactly the rows the server sends", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bobDevice = await open();
  await signUp(alice, "alice");
  const b = name("bob");
  const bob = await bobDevice.register(b, "correct horse battery");
  const conv = await alice.createConversation("packing", [b]);
  const first = await alice.send(conv, "first");
  const second = await alice.send(conv, "second");
  for (let i = 0; i < 20; i++) await alice.send(conv, `more ${i}`);
  await alice.edit(conv, first, "first, edited");
  await alice.react(conv, first, "👍");
  await alice.react(conv, first, "🎉");
  await alice.react(conv, first, "👍", false);
  await alice.delete(conv, second);
  await alice.waitFor(() => alice.status().pending === 0);

  const auth: Interceptor = (next) => (req) => {
    req.header.set("Authorization", `Bearer ${bob.token}`);
    return next(req);
  };
  const sync = createClient(SyncService, createConnectTransport({ baseUrl: server.url, interceptors: [auth] }));
  // One catch-up of a new device, as rows or packed, in small messages.
  const catchUp = async (packedOps: boolean) => {
    const out: { conv: string; op: Uint8Array }[] = [];
    let packed = 0;
    for await (const res of sync.subscribe({ hello: { client: "test", maxBatchOps: 7, packedOps } })) {
      const m = res.message;
      if (m.case === "ops") {
        packed += m.value.packed.length;
        const batches = [...m.value.batches, ...m.value.packed.map((p, i) => unpackBatch(p, `ops.packed[${i}]`))];
        for (const bt of batches) for (const op of bt.ops) out.push({ conv: bt.conversationId, op: toBinary(OpSchema, op) });
      }
      if (m.case === "caughtUp") break;
    }
    return { out, packed };
  };
  const rows = await catchUp(false);
  const packed = await catchUp(true);
  assert.equal(rows.packed, 0, "rows asked for, rows sent");
  assert.ok(packed.packed >= 4, `packed batches: ${packed.packed}`);
  assert.equal(rows.out.length, 29, "create, member add, 22 messages, edit, 3 reactions, delete");
  assert.deepEqual(packed.out, rows.out);
});

// Account changes on one client: what the Go SDK's lifecycle tests check,
// for the web client.

// recordingFetch passes requests to the server and keeps the path, content
// type and body of each (as text: the strings of a binary message, such as
// ids, read as themselves); seen(pred) resolves once a request matches.
type Recorded = { path: string; type: string; body: string };
function recordingFetch() {
  const requests: Recorded[] = [];
  const waits: { pred: (r: Recorded) => boolean; resolve: () => void }[] = [];
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const body = init?.body;
    const r = {
      path: new URL(String(input)).pathname,
      type: new Headers(init?.headers).get("content-type") ?? "",
      body: typeof body === "string" ? body : body ? new TextDecoder().decode(body as Uint8Array) : "",
    };
    requests.push(r);
    for (const w of waits) if (w.pred(r)) w.resolve();
    return globalThis.fetch(input, init);
  };
  const seen = (pred: (r: Recorded) => boolean) =>
    new Promise<void>((resolve) => {
      if (requests.some(pred)) return resolve();
      waits.push({ pred, resolve });
    });
  return { requests, fetch, seen };
}

test("the client speaks binary protobuf, not JSON", { timeout: 60_000 }, async () => {
  const rec = recordingFetch();
  const c = await FerryClient.open({ baseUrl: server.url, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1, fetch: rec.fetch });
  clients.push(c);
  await signUp(c, "alice");
  const conv = await c.createConversation("formats", []);
  await c.send(conv, "hi");
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  await c.markRead(conv);
  await rec.seen((r) => r.path.endsWith("/Ack"));
  const types = new Map(rec.requests.map((r) => [r.path.slice(r.path.lastIndexOf("/") + 1), r.type]));
  assert.deepEqual(Object.fromEntries(types), {
    Register: "application/proto",
    Subscribe: "application/connect+proto",
    Push: "application/proto",
    Ack: "application/proto",
  });
});

test("a signed-in device refuses login and register before it asks the server", { timeout: 60_000 }, async () => {
  const rec = recordingFetch();
  const c = await FerryClient.open({ baseUrl: server.url, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1, fetch: rec.fetch });
  clients.push(c);
  await signUp(c, "alice");
  const asked = rec.requests.filter((r) => r.path.startsWith("/ferry.v1.AccountService/")).length;
  await assert.rejects(c.login(name("bob"), "correct horse battery"), /signed in; sign out first/);
  await assert.rejects(c.register(name("bob"), "correct horse battery"), /signed in; sign out first/);
  assert.equal(rec.requests.filter((r) => r.path.startsWith("/ferry.v1.AccountService/")).length, asked, "a refused sign-in reached the server");
});

test("a read marker of an account signed out is not sent for the next one", { timeout: 60_000 }, async () => {
  const rec = recordingFetch();
  const shared = await FerryClient.open({ baseUrl: server.url, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1, fetch: rec.fetch });
  clients.push(shared);
  const bob = await open();
  const a = await signUp(shared, "alice");
  await signUp(bob, "bob");
  const alices = await bob.createConversation("with alice", [a]);
  await bob.send(alices, "hi");
  await shared.waitFor(() => texts(shared.messages(alices)).includes("hi"));
  await shared.stop();
  await shared.markRead(alices); // offline: kept to send with the next session's first ack
  await shared.signOut();
  const from = rec.requests.length; // alice's own acks came before
  const c = await signUp(shared, "carol");
  const carols = await bob.createConversation("with carol", [c]);
  await bob.send(carols, "yo");
  await shared.waitFor(() => texts(shared.messages(carols)).includes("yo"));
  await shared.markRead(carols);
  await rec.seen((r) => r.path.endsWith("/Ack") && r.body.includes(carols));
  const leaked = rec.requests.slice(from).filter((r) => r.path.endsWith("/Ack") && r.body.includes(alices));
  assert.equal(leaked.length, 0, `carol's session acked alice's conversation: ${JSON.stringify(leaked)}`);
});

test("signing out revokes the device on the server", { timeout: 60_000 }, async () => {
  const c = await open();
  const username = await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  const device = c.session!.deviceId;
  const other = await otherDevice(username);
  assert.ok((await other.accounts.listDevices({})).devices.some((d) => d.id === device));
  await c.signOut();
  assert.equal(c.status().state, "signed-out");
  assert.ok((await other.accounts.listDevices({})).devices.every((d) => d.id !== device), "the signed-out device is still active");
  // Signed out elsewhere already (revoked): signing out here still works.
  await c.login(username, "correct horse battery");
  await other.accounts.revokeDevice({ deviceId: c.session!.deviceId });
  await c.signOut();
  assert.equal(c.status().state, "signed-out");
});

test("a revoked device fails, and start tries again", { timeout: 60_000 }, async () => {
  const c = await open();
  const username = await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  // Another device of alice's revokes this one.
  const other = await otherDevice(username);
  await other.accounts.revokeDevice({ deviceId: c.session!.deviceId });
  await c.waitFor(() => c.status().state === "failed");
  assert.match(c.status().lastError ?? "", /revoked|unauthenticated/i);
  const states: string[] = [];
  const off = c.on(() => states.push(c.status().state));
  c.start();
  await c.waitFor(() => states.includes("connecting") && c.status().state === "failed");
  off();
});

test("a revoked device logs in again without signing out, keeping what it holds and sending what it queued", { timeout: 60_000 }, async () => {
  const c = await open();
  const username = await signUp(c, "alice");
  const conv = await c.createConversation("notes", []);
  await c.send(conv, "before");
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  await assert.rejects(c.login(username, "correct horse battery"), /sign out first/);
  const first = c.session!.deviceId;
  const other = await otherDevice(username);
  await other.accounts.revokeDevice({ deviceId: first });
  await c.waitFor(() => c.status().state === "failed");
  // Queued while refused: two messages, so that both take new dots.
  await c.send(conv, "queued 1");
  await c.send(conv, "queued 2");
  c.start(); // retrying, as an app might: the sign-in stops it first
  await c.login(username, "correct horse battery");
  assert.notEqual(c.session!.deviceId, first);
  assert.deepEqual(texts(c.messages(conv)), ["before", "queued 1", "queued 2"], "the replica and the outbox stay for the same user");
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  assert.ok(c.messages(conv).every((m) => m.status !== "failed"), JSON.stringify(c.messages(conv).map((m) => m.error)));
  // Another device of alice's sees each message once.
  const third = await open();
  await third.login(username, "correct horse battery");
  third.start();
  await third.waitFor(() => texts(third.messages(conv)).length === 3 && third.status().state === "live");
  assert.deepEqual(texts(third.messages(conv)), ["before", "queued 1", "queued 2"]);
  // The queued ops went out as the revoked device's, numbered on from its
  // dots (the conversation's creation 1, "before" 2); the new device's
  // own ops count from 1.
  await c.send(conv, "from the new device");
  await c.waitFor(() => c.status().pending === 0);
  const history = await other.sync.history({ conversationId: conv, range: { case: "afterSeq", value: 0n } });
  assert.deepEqual(history.ops.slice(-3).map((op) => [op.deviceId === first ? "revoked" : op.deviceId === c.session!.deviceId ? "new" : op.deviceId, op.dot]),
    [["revoked", 3n], ["revoked", 4n], ["new", 1n]]);

  // Refused again, it signs in as another user: the replica starts over.
  const fourth = await otherDevice(username, "fourth");
  await fourth.accounts.revokeDevice({ deviceId: c.session!.deviceId });
  await c.waitFor(() => c.status().state === "failed");
  const bob = name("bob");
  await c.register(bob, "correct horse battery");
  assert.equal(c.session!.username, bob);
  assert.deepEqual(c.conversations(), [], "alice's conversations stay hidden from bob");
});

test("an op the server took before the refusal, its answer lost, is sent once after the login", { timeout: 60_000 }, async () => {
  const replica = new MemoryReplica();
  const c = await open(replica);
  const username = await signUp(c, "alice");
  const conv = await c.createConversation("notes", []);
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  await c.stop();
  await c.send(conv, "stored, answer lost");
  // The device's push reaches the server, which stores the op, and its
  // answer is lost: here, the op goes from another client with the
  // device's token, and the device never hears of it.
  const queued = (await replica.load()).outbox.map((e) => fromBinary(OpSchema, e.op));
  assert.equal(queued.length, 1);
  const asDevice: Interceptor = (next) => async (req) => {
    req.header.set("Authorization", `Bearer ${c.session!.token}`);
    return next(req);
  };
  const pushed = await createClient(SyncService, createConnectTransport({ baseUrl: server.url, interceptors: [asDevice] }))
    .push({ batches: [{ conversationId: conv, ops: queued }] });
  assert.ok(pushed.results.every((r) => r.status === OpStatus.ACCEPTED));
  const other = await otherDevice(username);
  await other.accounts.revokeDevice({ deviceId: c.session!.deviceId });
  c.start();
  await c.waitFor(() => c.status().state === "failed");
  await c.login(username, "correct horse battery");
  c.start();
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  // Pushes go one at a time: once the next message is sent, the answer to
  // any push of the first is in.
  await c.send(conv, "after");
  await c.waitFor(() => c.status().pending === 0);
  assert.deepEqual(c.messages(conv).map((m) => [m.text, m.status]), [["stored, answer lost", "sent"], ["after", "sent"]]);
  assert.deepEqual(c.failed(), []);
});

test("a start() while a login replaces a refused session syncs with the new one", { timeout: 60_000 }, async () => {
  // A Subscribe's answer is held: the server refuses the refused token,
  // and the answer arrives after the login.
  const gate = subscribeGate();
  const c = await openWith(gate.fetch);
  const username = await signUpRevoked(c);
  const release = gate.holdNext();
  const login = c.login(username, "correct horse battery");
  c.start(); // with the refused token still the device's
  await login;
  release();
  await c.waitFor(() => c.status().state === "live" || c.status().state === "failed");
  assert.equal(c.status().state, "live", c.status().lastError);
});

test("a send while a login replaces a refused session counts for the new device", { timeout: 60_000 }, async () => {
  // The replica's write of the new session waits until the test has sent.
  let gate: ((apply: () => Promise<void>) => Promise<void>) | undefined;
  const mem = new MemoryReplica();
  const replica: Replica = {
    load: () => mem.load(),
    apply: (change) => {
      const g = change.meta?.session && !change.clear ? gate : undefined;
      return g ? g(() => mem.apply(change)) : mem.apply(change);
    },
    close: () => mem.close(),
  };
  const c = await open(replica);
  const username = await signUp(c, "alice");
  const conv = await c.createConversation("notes", []);
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  const other = await otherDevice(username);
  await other.accounts.revokeDevice({ deviceId: c.session!.deviceId });
  await c.waitFor(() => c.status().state === "failed");
  let sent: Promise<string> | undefined;
  gate = async (apply) => {
    gate = undefined;
    sent = c.send(conv, "during the login");
    await apply();
  };
  await c.login(username, "correct horse battery");
  await sent;
  c.start();
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  const history = await other.sync.history({ conversationId: conv, range: { case: "afterSeq", value: 0n } });
  const last = history.ops.at(-1)!;
  assert.deepEqual([last.deviceId, last.dot], [c.session!.deviceId, 1n], "the op sent during the login is the new device's first");
});

test("a send while a login as another user replaces a refused session is refused, not sent as them", { timeout: 60_000 }, async () => {
  // The replica's write of the new user's session waits until the test
  // has sent.
  let gate: ((apply: () => Promise<void>) => Promise<void>) | undefined;
  const mem = new MemoryReplica();
  const replica: Replica = {
    load: () => mem.load(),
    apply: (change) => {
      const g = change.clear && change.meta?.session ? gate : undefined;
      return g ? g(() => mem.apply(change)) : mem.apply(change);
    },
    close: () => mem.close(),
  };
  const c = await open(replica);
  const alice = await signUp(c, "alice");
  const bob = await open();
  const b = await signUp(bob, "bob");
  const conv = await c.createConversation("shared", [b]);
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  await (await otherDevice(alice)).accounts.revokeDevice({ deviceId: c.session!.deviceId });
  await c.waitFor(() => c.status().state === "failed");
  let sent: Promise<unknown> | undefined;
  gate = async (apply) => {
    gate = undefined;
    sent = c.send(conv, "alice's words").catch((err: Error) => err);
    await apply();
  };
  await c.login(b, "correct horse battery");
  const err = await sent;
  assert.match(String(err), /signed in as another user meanwhile/);
  assert.equal(c.status().pending, 0);
  assert.deepEqual(c.conversations(), [], "no conversation of alice's shows to bob");
  const history = await (await otherDevice(b)).sync.history({ conversationId: conv, range: { case: "afterSeq", value: 0n } });
  assert.ok(history.ops.every((op) => op.payload.case !== "message"), "alice's words reached the server");
});

test("a push that fails while the session stays up goes again after a backoff, or the delay a throttle asks", { timeout: 60_000 }, async () => {
  // The first push is lost on its way; the second is refused as a
  // throttle does, with the delay to wait as a detail.
  let pushes = 0;
  let subscribes = 0;
  const sleeps: number[] = [];
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const url = String(input);
    if (url.endsWith("/ferry.v1.SyncService/Subscribe")) subscribes++;
    if (url.endsWith("/ferry.v1.SyncService/Push") && ++pushes <= 2) {
      if (pushes === 1) throw new TypeError("the network dropped the request");
      return throttled(7n);
    }
    return globalThis.fetch(input, init);
  };
  const c = await FerryClient.open({ baseUrl: server.url, replica: new MemoryReplica(), minBackoffMs: 10, maxBackoffMs: 10, fetch,
    sleep: async (ms) => { sleeps.push(ms); } });
  clients.push(c);
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  const conv = await c.createConversation("notes", []);
  // Sent, and the answer to the push that went through taken: the status
  // no longer says the last push failed.
  await c.waitFor(() => c.status().pending === 0 && c.status().lastError === undefined);
  assert.equal(pushes, 3, "the push went three times");
  assert.equal(subscribes, 1, "the session stayed up");
  assert.ok(sleeps.some((ms) => ms >= 5 && ms <= 10), `waits ${sleeps}: want a backoff of 5-10ms (equal jitter on 10ms)`);
  assert.ok(sleeps.includes(7000), `waits ${sleeps}: want the throttle's 7s`);
  assert.equal(c.conversations().find((x) => x.id === conv)?.title, "notes");
});

// stalling wraps fetch for the tests of calls a connection never answers:
// push(n) says what the nth Push does ("hang" until its call is cancelled,
// "swallow" as hang, once the server stored it, "fail" as a network error,
// or "go" to the server); endSession ends the Subscribe stream running now,
// as a dropped connection would. hanging resolves when a push hangs, and
// cancelled when a hanging push's call is cancelled.
function stalling(push: (n: number) => "hang" | "swallow" | "fail" | "go") {
  let pushes = 0;
  let subscribes = 0;
  let stream: AbortController | undefined;
  let hung: () => void = () => {};
  const hanging = new Promise<void>((resolve) => { hung = resolve; });
  let cancel: () => void = () => {};
  const cancelled = new Promise<void>((resolve) => { cancel = resolve; });
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const url = String(input);
    if (url.endsWith("/ferry.v1.SyncService/Subscribe")) {
      subscribes++;
      stream = new AbortController();
      return globalThis.fetch(input, { ...init, signal: init?.signal ? AbortSignal.any([init.signal, stream.signal]) : stream.signal });
    }
    if (url.endsWith("/ferry.v1.SyncService/Push")) {
      const what = push(++pushes);
      if (what === "fail") throw new TypeError("the network dropped the request");
      if (what === "hang" || what === "swallow") {
        if (what === "swallow") await globalThis.fetch(input, { ...init, signal: undefined });
        hung();
        return new Promise<Response>((_, reject) => {
          const signal = init?.signal;
          if (!signal) return; // never answered: what this test must not see
          const abort = () => {
            cancel();
            reject(signal.reason);
          };
          if (signal.aborted) abort();
          signal.addEventListener("abort", abort, { once: true });
        });
      }
    }
    return globalThis.fetch(input, init);
  };
  return {
    fetch,
    hanging,
    cancelled,
    pushes: () => pushes,
    subscribes: () => subscribes,
    endSession: () => stream?.abort(new TypeError("the connection dropped")),
  };
}

// liveOver opens a client whose calls go through net's fetch (with opts),
// signs it up, and once it is live creates a conversation, whose push
// the test's net then handles; it returns the client and the conversation.
async function liveOver(net: { fetch: typeof globalThis.fetch }, opts: Partial<ClientOptions> = {}) {
  const c = await FerryClient.open({ baseUrl: server.url, replica: new MemoryReplica(), sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1,
    fetch: net.fetch, ...opts });
  clients.push(c);
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  return { c, conv: await c.createConversation("notes", []) };
}

test("a push the connection never answers is cancelled after callTimeoutMs and goes again", { timeout: 30_000 }, async () => {
  // The timeout holds for every call: long enough that only the hung one
  // meets it on a loaded machine.
  const net = stalling((n) => (n === 1 ? "hang" : "go"));
  const { c, conv } = await liveOver(net, { callTimeoutMs: 1000 });
  await c.waitFor(() => c.status().pending === 0 && c.status().lastError === undefined);
  assert.ok(net.pushes() >= 2, `the push went ${net.pushes()} times`);
  assert.equal(net.subscribes(), 1, "the session stayed up");
  assert.equal(c.conversations().find((x) => x.id === conv)?.title, "notes");
});

test("a push stored whose answer never comes says no error once its op is back", { timeout: 30_000 }, async () => {
  const net = stalling((n) => (n === 1 ? "swallow" : "go"));
  const { c, conv } = await liveOver(net, { callTimeoutMs: 1000 });
  await net.cancelled;
  await c.waitFor(() => c.status().lastError !== undefined); // the timeout said
  await c.waitFor(() => c.status().pending === 0 && c.status().lastError === undefined && c.conversations().some((x) => x.id === conv && x.head > 0));
  assert.equal(net.subscribes(), 1, "the session stayed up");
});

test("a session's end cancels its unanswered push, which the next session sends", { timeout: 30_000 }, async () => {
  const net = stalling((n) => (n === 1 ? "hang" : "go"));
  const { c, conv } = await liveOver(net);
  await net.hanging;
  net.endSession();
  await c.waitFor(() => c.status().pending === 0 && c.status().state === "live");
  assert.equal(net.pushes(), 2, "the push went again in the next session");
  assert.equal(net.subscribes(), 2);
  assert.equal(c.conversations().find((x) => x.id === conv)?.title, "notes");
});

test("a push's retry waiting when its session ends leaves the next session's push to retry", { timeout: 30_000 }, async () => {
  // The first two pushes fail, one in each session; the first's retry
  // waits (the sleep holds until it is cancelled) when its session ends.
  const net = stalling((n) => (n <= 2 ? "fail" : "go"));
  let hold = true;
  let held: () => void = () => {};
  const holding = new Promise<void>((resolve) => { held = resolve; });
  const { c, conv } = await liveOver(net, {
    sleep: (_ms, signal) => {
      if (!hold) return Promise.resolve();
      held();
      return new Promise((_, reject) => {
        if (signal.aborted) reject(signal.reason);
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
    },
  });
  await holding; // the first push failed, and its retry waits
  hold = false;
  net.endSession();
  await c.waitFor(() => c.status().pending === 0 && c.status().lastError === undefined);
  assert.equal(net.pushes(), 3, "the second session's failed push went again");
  assert.equal(net.subscribes(), 2);
  assert.equal(c.conversations().find((x) => x.id === conv)?.title, "notes");
});

test("an ack that fails while the session stays up goes again after a backoff", { timeout: 30_000 }, async () => {
  // The ack that fails is the first bob sends once he holds the message:
  // nothing else would make him ack again.
  let conv = "";
  let holds = () => false;
  let failed = 0;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    if (String(input).endsWith("/ferry.v1.SyncService/Ack") && holds() && failed++ === 0) throw new TypeError("the network dropped the request");
    return globalThis.fetch(input, init);
  };
  const alice = await open();
  const bob = await FerryClient.open({ baseUrl: server.url, replica: new MemoryReplica(), sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1,
    ackDelayMs: 0, fetch });
  clients.push(bob);
  holds = () => conv !== "" && bob.messages(conv).length > 0;
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  conv = await alice.createConversation("c", [b]);
  await alice.send(conv, "did you get this?");
  await alice.waitFor(() => alice.messages(conv).some((m) => m.status === "delivered"));
  assert.equal(failed > 0, true, "an ack failed");
});

test("markRead marks no further than the messages the device holds", { timeout: 30_000 }, async () => {
  // Bob's device learns of the conversation and its head before its
  // messages arrive: a read marked then leaves them unread.
  const alice = await open();
  const bob = await open();
  await signUp(alice, "alice");
  const b = name("bob");
  await bob.register(b, "correct horse battery");
  const conv = await alice.createConversation("c", [b]);
  for (const text of ["one", "two", "three"]) await alice.send(conv, text);
  await alice.waitFor(() => alice.status().pending === 0);
  let marked: Promise<void> | undefined;
  bob.on((e) => {
    const c = bob.conversations().find((x) => x.id === conv);
    if (!marked && e.kind === "conversations" && c && c.head > 0) {
      assert.equal(bob.messages(conv).length, 0, "the messages arrived with the conversation");
      marked = bob.markRead(conv);
    }
  });
  bob.start();
  await bob.waitFor(() => bob.status().state === "live" && bob.messages(conv).length === 3);
  assert.ok(marked, "bob saw the conversation before its messages");
  await marked;
  assert.equal(bob.conversations().find((x) => x.id === conv)?.unread, 3);
  assert.ok(alice.messages(conv).every((m) => m.status !== "read"), "alice's messages show read");
  // Read now, they are read.
  await bob.markRead(conv);
  await alice.waitFor(() => alice.messages(conv).every((m) => m.status === "read"));
  assert.equal(bob.conversations().find((x) => x.id === conv)?.unread, 0);

  // In another conversation bob holds three unread messages, and is
  // offline while two more arrive. He reads what he holds as his device
  // learns of them: two stay unread.
  const other = await alice.createConversation("d", [b]);
  for (const text of ["a", "b", "c"]) await alice.send(other, text);
  await bob.waitFor(() => bob.messages(other).length === 3 && bob.conversations().find((x) => x.id === other)?.unread === 3);
  await bob.stop();
  for (const text of ["d", "e"]) await alice.send(other, text);
  await alice.waitFor(() => alice.status().pending === 0);
  let partly: Promise<number | undefined> | undefined;
  bob.on((e) => {
    const c = bob.conversations().find((x) => x.id === other);
    if (!partly && e.kind === "conversations" && c && c.head > bob.messages(other).at(-1)!.seq) {
      partly = bob.markRead(other).then(() => bob.conversations().find((x) => x.id === other)?.unread);
    }
  });
  bob.start();
  await bob.waitFor(() => bob.status().state === "live" && bob.messages(other).length === 5);
  assert.ok(partly, "bob saw the head move before the messages");
  assert.equal(await partly, 2);
});

test("a replica that refuses to store a push's results keeps the session, and the ops go again", { timeout: 30_000 }, async () => {
  // The session's stream is held while the push goes, so that its answer
  // comes before the op's live echo, and the write of its results is the
  // one the replica refuses.
  let gate: Promise<void> | undefined;
  let open = () => {};
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const res = await globalThis.fetch(input, init);
    if (!String(input).endsWith("/ferry.v1.SyncService/Subscribe") || !res.body) return res;
    const body = res.body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
      async transform(chunk, ctrl) {
        if (gate) await gate;
        ctrl.enqueue(chunk);
      },
    }));
    return new Response(body, { status: res.status, headers: res.headers });
  };
  let refuse = false;
  let refused = 0;
  class Refusing extends MemoryReplica {
    override async apply(change: Parameters<MemoryReplica["apply"]>[0]): Promise<void> {
      // A push's results: they take ops out of the outbox, and may put
      // some back (a live op that takes one out puts none).
      if (refuse && change.outboxPut !== undefined && (change.outboxDelete?.length ?? 0) > 0) {
        refuse = false;
        refused++;
        gate = undefined;
        open();
        throw new Error("QuotaExceededError");
      }
      return super.apply(change);
    }
  }
  const c = await FerryClient.open({ baseUrl: server.url, replica: new Refusing(), sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1, fetch });
  clients.push(c);
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  refuse = true;
  gate = new Promise((resolve) => { open = resolve; });
  const conv = await c.createConversation("notes", []);
  await c.waitFor(() => refused === 1 && c.status().pending === 0 && c.conversations().some((x) => x.id === conv && x.head > 0));
  assert.equal(c.status().state, "live", "the session went on");
  assert.equal(c.conversations().find((x) => x.id === conv)?.title, "notes");
  assert.equal(c.failed().length, 0);
});

test("a push's answer that comes after a delete erased its message does not bring the text back", { timeout: 30_000 }, async () => {
  // The phone's push of the message is stored, but its answer is held
  // back: the message arrives live first, and the laptop deletes it.
  let holding = false;
  let release = () => {};
  const released = new Promise<void>((resolve) => { release = resolve; });
  const fetch: typeof globalThis.fetch = async (input, init) => {
    if (holding && String(input).endsWith("/ferry.v1.SyncService/Push")) {
      holding = false;
      const res = await globalThis.fetch(input, init);
      await released;
      return res;
    }
    return globalThis.fetch(input, init);
  };
  const replica = new MemoryReplica();
  const phone = await FerryClient.open({ baseUrl: server.url, replica, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1, fetch });
  clients.push(phone);
  const laptop = await open();
  const a = await signUp(phone, "alice");
  await laptop.login(a, "correct horse battery");
  laptop.start();
  const conv = await phone.createConversation("notes", []);
  await laptop.waitFor(() => laptop.status().state === "live" && laptop.conversations().some((c) => c.id === conv));
  await phone.waitFor(() => phone.status().pending === 0);
  holding = true;
  const m = await phone.send(conv, "the secret plan");
  await laptop.waitFor(() => laptop.messages(conv).some((x) => x.id === m));
  await laptop.delete(conv, m);
  await phone.waitFor(() => phone.messages(conv).find((x) => x.id === m)?.deleted === true);
  release();
  // The phone's next push goes once the held answer is taken.
  await phone.send(conv, "after");
  await phone.waitFor(() => phone.status().pending === 0 && phone.messages(conv).some((x) => x.text === "after"));
  const bodies = (await replica.load()).ops.map((r) => fromBinary(OpSchema, r.op)).flatMap((op) =>
    op.payload.case === "message" ? [new TextDecoder().decode(op.payload.value.body)] : []);
  assert.deepEqual(bodies.filter((t) => t.includes("secret")), []);
  assert.equal(phone.messages(conv).find((x) => x.id === m)?.deleted, true);
});

// restorable starts a server on a store of its own, for a test that backs
// it up and restores it: backUp stops it, copies its store (ferryd backup)
// and starts it again; restore starts it on that copy instead; both on
// the same address, so the clients reconnect. done stops the test's
// clients and the server, and removes the store.
async function restorable(prefix: string) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const data = join(dir, "data");
  let srv = await startServer({ data });
  const addr = srv.addr;
  return {
    url: srv.url,
    async backUp() {
      await srv.stop();
      backup(data, join(dir, "backup"));
      srv = await startServer({ data, addr });
    },
    async restore() {
      await srv.stop();
      srv = await startServer({ data: join(dir, "backup"), addr });
    },
    async done() {
      for (const c of clients) await c.stop().catch(() => {});
      await srv.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// openAt opens a client of the server at url, with a real backoff (a
// restarting server refuses connections meanwhile).
async function openAt(url: string): Promise<FerryClient> {
  const c = await FerryClient.open({ baseUrl: url, replica: new MemoryReplica(), minBackoffMs: 20, maxBackoffMs: 50 });
  clients.push(c);
  return c;
}

test("after a restore from a backup older than a conversation, the device syncs again, and its creator gives it back", { timeout: 90_000 }, async () => {
  const srv = await restorable("ferry-audit-restore-");
  try {
    const alice = await openAt(srv.url);
    const bob = await openAt(srv.url);
    await signUp(alice, "alice");
    const b = await signUp(bob, "bob");
    const old = await alice.createConversation("old", [b]);
    await alice.send(old, "before the backup");
    await bob.waitFor(() => bob.messages(old).length === 1);

    await srv.backUp();
    const fresh = await alice.createConversation("new", [b]); // after the backup
    await alice.send(fresh, "after the backup");
    await alice.send(old, "also after the backup");
    await bob.waitFor(() => bob.messages(fresh).length === 1 && bob.messages(old).length === 2);

    await srv.restore();
    await alice.waitFor(() => alice.status().state === "live" && alice.messages(old).length === 2);
    assert.deepEqual(texts(alice.messages(old)), ["before the backup", "also after the backup"]);
    // Alice created the new one: her device creates it again, and bob's,
    // whichever repaired first, has it back.
    await alice.waitFor(() => alice.status().pending === 0 && alice.messages(fresh).length === 1);
    await bob.waitFor(() => bob.status().state === "live" && bob.messages(fresh).length === 1);
    assert.deepEqual(texts(bob.messages(fresh)), ["after the backup"]);
    assert.deepEqual(alice.failed(), []);
  } finally {
    await srv.done();
  }
});

test("after a restore, a conversation the server lost that another user created blocks no ack", { timeout: 90_000 }, async () => {
  const srv = await restorable("ferry-ghost-restore-");
  try {
    const alice = await openAt(srv.url);
    const bob = await openAt(srv.url);
    const carol = await openAt(srv.url);
    await signUp(alice, "alice");
    const b = await signUp(bob, "bob");
    await signUp(carol, "carol");
    const old = await alice.createConversation("old", [b]);
    await alice.send(old, "before the backup");
    await bob.waitFor(() => bob.messages(old).length === 1);

    await srv.backUp();
    const fresh = await carol.createConversation("new", [b]); // after the backup
    await carol.send(fresh, "from carol");
    await bob.waitFor(() => bob.messages(fresh).length === 1);
    await carol.stop(); // gone: her device never gives it back
    await bob.stop();
    await bob.send(fresh, "queued"); // kept through the repair for it

    await srv.restore();
    bob.start();
    await bob.waitFor(() => bob.status().state === "live" && bob.status().pending === 0 && bob.failed().length === 1);
    await bob.markRead(fresh); // the server does not know it: nothing to mark
    const m = await alice.send(old, "after the restore");
    await bob.waitFor(() => bob.messages(old).some((x) => x.id === m));
    await bob.markRead(old);
    await alice.waitFor(() => alice.messages(old).find((x) => x.id === m)?.status === "read");
  } finally {
    await srv.done();
  }
});

test("repair gives back an op of the user's older device that targets a message of a newer one", { timeout: 90_000 }, async () => {
  const srv = await restorable("ferry-audit-repair-");
  try {
    const older = await openAt(srv.url);
    const a = await signUp(older, "alice");
    const newer = await openAt(srv.url);
    await newer.login(a, "correct horse battery"); // a later device id: the server's vectors list it after the older one
    newer.start();
    assert.ok(older.session!.deviceId < newer.session!.deviceId);
    const conv = await older.createConversation("notes", []);
    await newer.waitFor(() => newer.conversations().some((c) => c.id === conv) && newer.status().state === "live");

    await srv.backUp();
    const m = await newer.send(conv, "from the newer device");
    await older.waitFor(() => older.messages(conv).length === 1);
    await older.react(conv, m, "👍");
    await older.waitFor(() => older.status().pending === 0 && older.messages(conv)[0]!.seq > 0 && Object.keys(older.messages(conv)[0]!.reactions).length === 1);
    await newer.stop(); // the newer device is gone (a lost phone); the older one repairs alone

    await srv.restore();
    await older.waitFor(() => older.status().state === "live" && older.messages(conv).length === 1);
    const got = older.messages(conv)[0]!;
    assert.deepEqual([got.text, got.reactions], ["from the newer device", { "👍": [older.session!.userId] }], "the reaction was lost in the repair");
  } finally {
    await srv.done();
  }
});

test("stop() during a repair ends it at once; the next start repairs again", { timeout: 90_000 }, async () => {
  // The restored server's Repair answers are held until the call is
  // cancelled: stop() must not wait for them.
  let holdRepairs = true;
  let repairing: () => void = () => {};
  const repairs = new Promise<void>((resolve) => { repairing = resolve; });
  const fetch: typeof globalThis.fetch = async (input, init) => {
    if (holdRepairs && String(input).endsWith("/ferry.v1.SyncService/Repair")) {
      repairing();
      return new Promise<Response>((_, reject) => {
        const signal = init?.signal;
        if (!signal) return; // never answered: stop() would wait for ever
        if (signal.aborted) reject(signal.reason);
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
    }
    return globalThis.fetch(input, init);
  };
  const srv = await restorable("ferry-stop-repair-");
  try {
    const c = await FerryClient.open({ baseUrl: srv.url, replica: new MemoryReplica(), minBackoffMs: 20, maxBackoffMs: 50, fetch });
    clients.push(c);
    await signUp(c, "alice");
    const conv = await c.createConversation("notes", []);
    await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
    await srv.backUp();
    await c.send(conv, "after the backup");
    await c.waitFor(() => c.status().state === "live" && c.status().pending === 0 && c.messages(conv).some((m) => m.seq > 0));
    await srv.restore();
    await repairs;
    await c.stop();
    holdRepairs = false;
    c.start();
    await c.waitFor(() => c.status().state === "live" && c.messages(conv).some((m) => m.text === "after the backup" && m.seq > 0));
  } finally {
    await srv.done();
  }
});

// A device gives back a reaction the restored server refuses (its target,
// another user's message, is not back yet), then messages of its own,
// reactions its user sent from their laptop, and a message the laptop
// never had. A refused op takes no dot, so the messages go again a dot
// lower rather than being lost as dot gaps, the laptop's reactions after
// them and in their order, and each device's later sends go on. Whichever
// of the user's devices repairs first: the phone, which holds everything,
// or the laptop, after which the phone gives back the message the laptop
// did not have where the server stands.
for (const first of ["phone", "laptop"] as const) {
  test(`repair gives back the device's ops after one the restored server refuses, the ${first} first`, { timeout: 90_000 }, async () => {
    const srv = await restorable(`ferry-refused-repair-${first}-`);
    try {
      const alice = await openAt(srv.url);
      const phone = await openAt(srv.url);
      await signUp(alice, "alice");
      const bob = await signUp(phone, "bob");
      const laptop = await openAt(srv.url);
      await laptop.login(bob, "correct horse battery");
      laptop.start();
      const conv = await alice.createConversation("c", [bob]);
      const kept = await alice.send(conv, "kept");
      await phone.waitFor(() => phone.messages(conv).length === 1);
      await laptop.waitFor(() => laptop.messages(conv).length === 1);

      await srv.backUp();
      const a1 = await alice.send(conv, "a1");
      await phone.waitFor(() => phone.messages(conv).length === 2);
      await phone.react(conv, a1, "+1"); // refused in the repair: a1 is not back yet
      const b1 = await phone.send(conv, "b1");
      await phone.send(conv, "b2");
      // A reaction on, from the phone, then off, from the laptop: off
      // stays off only if the laptop's op keeps its place after the
      // phone's, which go again in the repair.
      await phone.react(conv, kept, "ok");
      await phone.waitFor(() => phone.status().pending === 0);
      const reactions = (c: FerryClient, id: string) => JSON.stringify(c.messages(conv).find((m) => m.id === id)?.reactions);
      await laptop.waitFor(() => laptop.messages(conv).length === 4 && reactions(laptop, kept) === JSON.stringify({ ok: [phone.session!.userId] }));
      await laptop.react(conv, kept, "ok", false);
      await laptop.react(conv, b1, "ok");
      const reacted = (c: FerryClient) => reactions(c, b1) === JSON.stringify({ ok: [phone.session!.userId] }) && reactions(c, kept) === "{}";
      await phone.waitFor(() => phone.status().pending === 0 && reacted(phone));
      await laptop.stop();
      await phone.send(conv, "b3"); // the laptop never has it before the restore
      await phone.waitFor(() => phone.status().pending === 0);
      await alice.waitFor(() => alice.messages(conv).length === 5);
      await alice.stop();
      await phone.stop();

      await srv.restore();
      const [d1, d2] = first === "phone" ? [phone, laptop] : [laptop, phone];
      d1.start();
      const want = first === "phone" ? ["kept", "b1", "b2", "b3"] : ["kept", "b1", "b2"];
      await d1.waitFor(() => d1.status().state === "live" && d1.status().pending === 0 && JSON.stringify(texts(d1.messages(conv))) === JSON.stringify(want) && reacted(d1));
      d2.start();
      await d2.waitFor(() => d2.status().state === "live" && d2.status().pending === 0 && JSON.stringify(texts(d2.messages(conv))) === JSON.stringify(["kept", "b1", "b2", "b3"]));
      await phone.send(conv, "after from the phone");
      await laptop.send(conv, "after from the laptop");
      alice.start();
      const all = JSON.stringify(["a1", "after from the laptop", "after from the phone", "b1", "b2", "b3", "kept"]);
      for (const c of [alice, phone, laptop]) {
        await c.waitFor(() => c.status().pending === 0 && JSON.stringify(texts(c.messages(conv)).sort()) === all && reacted(c));
      }
      assert.deepEqual(phone.failed(), []);
      assert.deepEqual(laptop.failed(), []);
    } finally {
      await srv.done();
    }
  });
}

test("a session that breaks before it catches up waits longer each time", { timeout: 60_000 }, async () => {
  // Once breaking is set, each Subscribe's answer ends, as a dropped
  // connection, right after its first message, the Welcome; the fourth
  // goes through.
  let breaking = false;
  let broken = 0;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const res = await globalThis.fetch(input, init);
    if (!breaking || !String(input).endsWith("/ferry.v1.SyncService/Subscribe") || broken === 3) return res;
    broken++;
    const reader = res.body!.getReader();
    let held = new Uint8Array(0);
    let passed = false;
    const body = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        if (passed) {
          void reader.cancel();
          ctrl.error(new TypeError("the network dropped the stream"));
          return;
        }
        const { value, done } = await reader.read();
        if (done) return ctrl.close();
        held = new Uint8Array([...held, ...value]);
        const size = held.length >= 5 ? 5 + new DataView(held.buffer).getUint32(1) : Infinity; // a Connect envelope
        if (held.length >= size) {
          ctrl.enqueue(held.slice(0, size)); // the Welcome, and no more
          passed = true;
        }
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  const sleeps: number[] = [];
  const c = await FerryClient.open({ baseUrl: server.url, replica: new MemoryReplica(), minBackoffMs: 10, maxBackoffMs: 10_000, random: () => 1, fetch,
    sleep: async (ms) => { sleeps.push(ms); } });
  clients.push(c);
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  await c.stop();
  breaking = true;
  sleeps.length = 0;
  c.start();
  await c.waitFor(() => c.status().state === "live" && broken === 3);
  assert.deepEqual(sleeps, [10, 20, 40], "the waits after three sessions that broke after their Welcome");
});

test("a device in more conversations than an ack may mark acks them all, in pieces", { timeout: 60_000 }, async () => {
  // The page reloads: the new client acks what it holds of every
  // conversation at once, more than the server takes in one ack.
  const acks: { markers: number; status: number }[] = [];
  let counting = false;
  let all = () => {};
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const res = await globalThis.fetch(input, init);
    if (counting && String(input).endsWith("/ferry.v1.SyncService/Ack")) {
      acks.push({ markers: fromBinary(AckRequestSchema, init!.body as Uint8Array).markers.length, status: res.status });
      if (acks.reduce((n, a) => n + (a.status === 200 ? a.markers : 0), 0) >= 1001) all();
    }
    return res;
  };
  const factory = new IDBFactory();
  const reopen = async () => {
    const c = await FerryClient.open({ baseUrl: server.url, replica: await IndexedDBReplica.open("many", { factory }), ackDelayMs: 0, resumeAckDelayMs: 0, fetch });
    clients.push(c);
    return c;
  };
  let c = await reopen();
  await signUp(c, "alice");
  for (let i = 0; i < 1001; i++) await c.createConversation(`c${i}`, []);
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0 && c.conversations().every((x) => x.head > 0));
  await c.stop();
  counting = true;
  const acked = new Promise<void>((resolve) => (all = resolve));
  c = await reopen();
  c.start();
  await acked;
  assert.ok(acks.every((a) => a.status === 200 && a.markers <= 1000), JSON.stringify(acks));
});

test("a read marked offline goes once the page reloads and connects", { timeout: 60_000 }, async () => {
  const factory = new IDBFactory();
  const reopen = async () => {
    const c = await FerryClient.open({ baseUrl: server.url, replica: await IndexedDBReplica.open("read-offline", { factory }) });
    clients.push(c);
    return c;
  };
  const alice = await open();
  await signUp(alice, "alice");
  let bob = await reopen();
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("c", [b]);
  const m = await alice.send(conv, "read me");
  await bob.waitFor(() => bob.messages(conv).length === 1);
  await bob.stop();
  await bob.markRead(conv); // offline: nothing goes
  assert.equal(bob.conversations().find((x) => x.id === conv)?.unread, 0);
  bob = await reopen(); // the page closed before it connected again
  assert.equal(bob.conversations().find((x) => x.id === conv)?.unread, 0, "the read shows after the reload");
  bob.start();
  await alice.waitFor(() => alice.messages(conv).find((x) => x.id === m)?.status === "read");
  assert.equal(bob.conversations().find((x) => x.id === conv)?.unread, 0);
});

test("malformed ops throw at the call, and the outbox goes on", { timeout: 60_000 }, async () => {
  const c = await open();
  await signUp(c, "alice");
  const conv = await c.createConversation("notes", []);
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  await assert.rejects(c.react(conv, "not-a-message-id", "+1"), /"not-a-message-id" is not a message id/);
  await assert.rejects(c.edit(conv, "", "x"), /"" is not a message id/);
  const m = await c.send(conv, "hello");
  await assert.rejects(c.react(conv, m, ""), /a reaction needs a key/);
  await assert.rejects(c.react(conv, m, "x".repeat(65)), /reaction key is 65 bytes, more than the limit of 64/);
  await assert.rejects(c.createConversation("two\nlines", []), /title contains a control character/);
  await assert.rejects(c.createConversation("t".repeat(257), []), /title is 257 bytes/);
  await c.react(conv, m, "+1");
  await c.waitFor(() => c.status().pending === 0);
  assert.deepEqual(c.conversations().map((x) => x.title), ["notes"]);
  assert.deepEqual(c.failed(), []);
});

test("messages queued offline go out even when together they exceed the server's message size", { timeout: 60_000 }, async () => {
  const c = await open();
  await signUp(c, "alice");
  const conv = await c.createConversation("photos", []);
  await c.waitFor(() => c.status().state === "live" && c.status().pending === 0);
  await c.stop();
  // 80 of 60 KB, each under the body limit: 4.8 MB, over the server's 4 MiB message.
  for (let i = 0; i < 80; i++) await c.send(conv, String(i % 10).repeat(60_000));
  c.start();
  await c.waitFor(() => c.status().pending === 0);
  assert.equal(c.messages(conv).length, 80);
  assert.deepEqual(c.failed(), []);
});

test("a second sign-in while one is under way is refused before it asks the server", { timeout: 60_000 }, async () => {
  const c = await open();
  const username = await signUp(c, "alice");
  await c.signOut();
  const first = c.login(username, "correct horse battery");
  await assert.rejects(c.login(username, "correct horse battery"), /a sign-in is under way/);
  await first;
  const other = await otherDevice(username);
  assert.equal((await other.accounts.listDevices({})).devices.length, 2, "a device the client could not keep is left on the server");
});

test("a refusal outlives a reload, and one the server takes back is forgotten", { timeout: 60_000 }, async () => {
  // A Subscribe goes without its token while strip > 0, as through a
  // proxy that dropped the header: the server refuses it as
  // unauthenticated.
  let strip = 1;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    if (String(input).endsWith("/ferry.v1.SyncService/Subscribe") && strip > 0) {
      strip--;
      const headers = new Headers(init?.headers);
      headers.delete("Authorization");
      init = { ...init, headers };
    }
    return globalThis.fetch(input, init);
  };
  const factory = new IDBFactory();
  const reopen = async () => {
    const c = await FerryClient.open({ baseUrl: server.url, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1, fetch, replica: await IndexedDBReplica.open("refused", { factory }) });
    clients.push(c);
    return c;
  };
  let c = await reopen();
  const username = await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "failed");
  await c.stop();
  // The page reloads: the refusal is kept, and a login replaces the
  // session without a signOut.
  c = await reopen();
  const refused = c.session!.deviceId;
  await c.login(username, "correct horse battery");
  assert.notEqual(c.session!.deviceId, refused);
  // Refused once more, then welcomed with the same token: the device is
  // signed in again, and a login is refused as on any signed-in device.
  strip = 1;
  c.start();
  await c.waitFor(() => c.status().state === "failed");
  c.start();
  await c.waitFor(() => c.status().state === "live");
  await assert.rejects(c.login(username, "correct horse battery"), /sign out first/);
});

test("options that would spin are refused; waitFor with an aborted signal rejects at once", async () => {
  await assert.rejects(FerryClient.open({ baseUrl: server.url, minBackoffMs: 0 }), /minBackoffMs/);
  await assert.rejects(FerryClient.open({ baseUrl: server.url, minBackoffMs: 10, maxBackoffMs: 5 }), /maxBackoffMs/);
  const c = await open();
  const ctrl = new AbortController();
  ctrl.abort(new Error("gone"));
  await assert.rejects(c.waitFor(() => false, ctrl.signal), /gone/);
});

test("messages are the caller's copies, and what is folded follows every change", { timeout: 60_000 }, async () => {
  const c = await open();
  await signUp(c, "alice");
  const conv = await c.createConversation("notes", []);
  await c.send(conv, "one");
  const last = () => c.conversations().find((x) => x.id === conv)?.lastMessage?.text;
  assert.equal(last(), "one");
  const mine = c.messages(conv);
  mine[0]!.text = "changed by the caller";
  mine[0]!.reactions["+1"] = ["someone"];
  assert.equal(c.messages(conv)[0]!.text, "one");
  assert.deepEqual(c.messages(conv)[0]!.reactions, {});
  await c.send(conv, "two"); // pending: the fold must see the outbox change
  assert.equal(last(), "two");
  await c.waitFor(() => c.messages(conv).every((m) => m.seq > 0)); // pushed: the ops change
  const [one, two] = c.messages(conv);
  await c.edit(conv, one!.id, "one, edited");
  assert.deepEqual(texts(c.messages(conv)), ["one, edited", "two"]);
  assert.ok(two!.seq > one!.seq);
});

test("start while a stop is under way starts the device again once it is done", { timeout: 60_000 }, async () => {
  const c = await open();
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  const stopped = c.stop(); // live: it first sends the markers still gathering
  c.start(); // as a UI's effect that is torn down and set up again
  await stopped;
  await c.waitFor(() => c.status().state === "live");
  // A later stop wins over a start queued behind an earlier one.
  const again = c.stop();
  c.start();
  await c.stop();
  await again;
  assert.equal(c.status().state, "offline");
});

// futureBody marks the messages newerServer turns into ops of a kind this
// version does not know.
const futureBody = "from the future";

// newerServer wraps fetch so that a client's Subscribe streams read as a
// newer server's would: each message whose body is futureBody arrives as an
// op of kind 42, which carries its payload in lists this version does not
// know (PackedBatch says where a newer kind's payload goes); with rows, the
// batches arrive as rows, and such an op's payload in a field of Op this
// version does not know.
function newerServer(rows: boolean): typeof globalThis.fetch {
  return async (input, init) => {
    const res = await globalThis.fetch(input, init);
    if (!String(input).endsWith("/ferry.v1.SyncService/Subscribe") || !res.body) return res;
    let buf = new Uint8Array(0);
    const body = res.body.pipeThrough(new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctrl) {
        buf = concat(buf, chunk);
        while (buf.length >= 5) {
          const size = 5 + new DataView(buf.buffer, buf.byteOffset, buf.length).getUint32(1);
          if (buf.length < size) break;
          ctrl.enqueue(futureKinds(buf.slice(0, size), rows));
          buf = buf.slice(size);
        }
      },
      flush(ctrl) {
        if (buf.length > 0) ctrl.enqueue(buf);
      },
    }));
    return new Response(body, { status: res.status, headers: res.headers });
  };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

// futureKinds rewrites one envelope of a Subscribe stream (see newerServer).
function futureKinds(env: Uint8Array, rows: boolean): Uint8Array {
  if (env[0] !== 0) return env;
  const m = fromBinary(SubscribeResponseSchema, env.subarray(5));
  if (m.message.case !== "ops") return env;
  const ops = m.message.value;
  const dec = new TextDecoder();
  let changed = false;
  for (const p of ops.packed) {
    if (rows) {
      // Field 99 of Op, a payload this version does not know.
      const newer = Uint8Array.from([0x9a, 0x06, 3, 1, 2, 3]);
      const batch = unpackBatch(p);
      batch.ops = batch.ops.map((op) => {
        if (op.payload.case !== "message" || dec.decode(op.payload.value.body) !== futureBody) return op;
        op.payload = { case: undefined };
        return fromBinary(OpSchema, concat(toBinary(OpSchema, op), newer));
      });
      ops.batches.push(create(OpBatchSchema, batch));
      changed = true;
      continue;
    }
    let body = 0;
    let at = 0;
    for (let i = 0; i < p.kinds.length; i++) {
      const k = p.kinds[i]!;
      if (k !== OpKind.MESSAGE && k !== OpKind.EDIT) continue;
      const size = p.bodySizes[body]!;
      if (k !== OpKind.MESSAGE || dec.decode(p.bodyData.subarray(at, at + size)) !== futureBody) {
        body++;
        at += size;
        continue;
      }
      p.kinds[i] = 42 as OpKind;
      p.bodySizes.splice(body, 1);
      p.contentTypes.splice(body, 1);
      p.bodyData = concat(p.bodyData.subarray(0, at), p.bodyData.subarray(at + size));
      changed = true;
    }
  }
  if (rows) ops.packed = [];
  if (!changed) return env;
  const b = toBinary(SubscribeResponseSchema, m);
  const out = new Uint8Array(5 + b.length);
  new DataView(out.buffer).setUint32(1, b.length);
  out.set(b, 5);
  return out;
}

for (const rows of [false, true]) {
  test(`ops of a kind this version does not know (a newer server's, ${rows ? "as rows" : "packed"}) are kept, not shown, and the session goes on`, { timeout: 30_000 }, async () => {
    const alice = await open();
    const replica = new MemoryReplica();
    const bob = await FerryClient.open({ baseUrl: server.url, replica, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1,
      fetch: newerServer(rows) });
    clients.push(bob);
    await signUp(alice, "alice");
    const b = await signUp(bob, "bob");
    await bob.waitFor(() => bob.status().state === "live");
    await bob.stop();
    const conv = await alice.createConversation("lunch", [b]);
    for (const text of ["before", futureBody, "after", futureBody]) await alice.send(conv, text);
    await alice.waitFor(() => alice.status().pending === 0);

    // A catch-up.
    bob.start();
    await bob.waitFor(() => bob.status().state === "live" && bob.messages(conv).length === 2);
    assert.deepEqual(texts(bob.messages(conv)), ["before", "after"]);
    assert.equal(bob.conversations().find((c) => c.id === conv)?.lastMessage?.text, "after");
    assert.equal(bob.status().lastError, undefined);
    // Kept: the replica holds every seq, two without a payload.
    const held = (await replica.load()).ops.filter((r) => r.convId === conv).sort((x, y) => x.seq - y.seq);
    const head = bob.conversations().find((c) => c.id === conv)!.head;
    assert.deepEqual(held.map((r) => r.seq), Array.from({ length: head }, (_, i) => i + 1));
    assert.equal(held.filter((r) => fromBinary(OpSchema, r.op).payload.case === undefined).length, 2);

    // Live.
    for (const text of [futureBody, "later"]) await alice.send(conv, text);
    await bob.waitFor(() => bob.messages(conv).length === 3);
    assert.deepEqual(texts(bob.messages(conv)), ["before", "after", "later"]);
    assert.equal(bob.status().state, "live");
    assert.equal(bob.status().lastError, undefined);
  });
}

test("after a restore, a device leaves its user's op of a kind it does not know to the device that sent it", { timeout: 60_000 }, async () => {
  // Before, the phone gave the op back without its payload: the server
  // refused it, the laptop's later op went again in its dot, and the
  // laptop could no longer give it back.
  const srv = await restorable("ferry-newer-restore-");
  try {
    const phone = await FerryClient.open({ baseUrl: srv.url, replica: new MemoryReplica(), minBackoffMs: 20, maxBackoffMs: 50, fetch: newerServer(false) });
    clients.push(phone);
    const laptop = await openAt(srv.url);
    const username = await signUp(phone, "alice");
    await laptop.login(username, "correct horse battery");
    laptop.start();
    const conv = await laptop.createConversation("notes", []);
    await laptop.send(conv, "kept");
    await phone.waitFor(() => phone.messages(conv).length === 1);

    await srv.backUp();
    for (const text of [futureBody, "lost"]) await laptop.send(conv, text);
    await phone.waitFor(() => phone.messages(conv).length === 2);
    assert.deepEqual(texts(phone.messages(conv)), ["kept", "lost"]);
    await laptop.waitFor(() => laptop.status().pending === 0);
    await phone.stop();
    await laptop.stop();

    // The phone repairs first, alone.
    await srv.restore();
    phone.start();
    await phone.waitFor(() => phone.status().state === "live" && phone.status().pending === 0);
    laptop.start();
    await laptop.waitFor(() => laptop.status().state === "live" && laptop.status().pending === 0 && laptop.messages(conv).length === 3);
    assert.deepEqual(texts(laptop.messages(conv)), ["kept", futureBody, "lost"]);
    assert.deepEqual(laptop.failed(), []);
    await phone.waitFor(() => phone.messages(conv).length === 2);
    assert.deepEqual(texts(phone.messages(conv)), ["kept", "lost"]);
  } finally {
    await srv.done();
  }
});

for (const how of ["its data was cleared", "another page deleted it"]) {
  test(`a replica the browser closes (${how}) stops the client with an error that says to reload`, { timeout: 30_000 }, async () => {
    const factory = new IDBFactory();
    const replica = await IndexedDBReplica.open("closed", { factory });
    const c = await open(replica);
    await signUp(c, "alice");
    await c.waitFor(() => c.status().state === "live");
    const conv = await c.createConversation("notes", []);
    let deleted: Promise<void> | undefined;
    let stopping: Promise<void> | undefined;
    if (how === "its data was cleared") {
      // While a stop() is under way: it ends failed, not offline.
      stopping = c.stop();
      // (fake-indexeddb's types want the class; it takes the connection.)
      forceCloseDatabase((replica as unknown as { db: Parameters<typeof forceCloseDatabase>[0] }).db);
    } else {
      // A delete waits for the page's connection to close: before, it
      // waited for good.
      const req = factory.deleteDatabase("closed");
      deleted = new Promise((resolve, reject) => {
        req.onsuccess = () => resolve();
        req.onerror = () => reject(req.error);
      });
    }
    await c.waitFor(() => c.status().state === "failed");
    await deleted;
    await stopping;
    assert.equal(c.status().state, "failed");
    assert.match(c.status().lastError ?? "", /the browser closed the replica "closed" .*reload the page/);
    await assert.rejects(c.send(conv, "not stored"), ReplicaLostError);
    c.start();
    assert.equal(c.status().state, "failed", "start() does not sync into a replica that stores nothing");
    // Nothing the server would do that the replica could not keep: no
    // device revoked, no device made.
    await assert.rejects(c.signOut(), ReplicaLostError);
    await assert.rejects(c.login("someone", "correct horse battery"), ReplicaLostError);
    await c.stop();
    assert.equal(c.status().state, "failed");
  });
}

// The private state a lifecycle test looks at: whether a loop runs, and
// the flush under way.
const internals = (c: FerryClient) => c as unknown as { run?: unknown; flushing?: Promise<void> };

test("a stop() while a login replaces a refused session holds: the login does not start the device again", { timeout: 60_000 }, async () => {
  const c = await open();
  const username = await signUpRevoked(c);
  c.start(); // an app retrying
  const login = c.login(username, "correct horse battery");
  await c.stop(); // the app stops syncing (a view torn down) while the login asks the server
  await login;
  assert.equal(internals(c).run, undefined, "the login started the device again after stop()");
  assert.equal(c.status().state, "offline");
  c.start(); // the app's own start still works
  await c.waitFor(() => c.status().state === "live");
});

test("a start() while a sign-in as another user replaces a refused session brings none of the old user's data", { timeout: 60_000 }, async () => {
  const gate = subscribeGate();
  const c = await openWith(gate.fetch);
  const alice = await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  await c.stop();
  gate.stripNext(1);
  c.start();
  await c.waitFor(() => c.status().state === "failed");
  // Meanwhile Carol writes to Alice.
  const carol = await open();
  await signUp(carol, "carol");
  const dm = await carol.createConversation("carol and alice", [alice]);
  await carol.send(dm, "alice, the party is on friday");
  await carol.waitFor(() => carol.status().pending === 0);
  // Bob signs up on the shared device; the app (a retry button, an online
  // handler) calls start() while the sign-in asks the server. A session
  // started then, with Alice's token, has its answer held until the
  // sign-in is done.
  const release = gate.holdNext();
  const bob = name("bob");
  const signIn = c.register(bob, "correct horse battery");
  c.start();
  await signIn;
  release();
  await c.waitFor(() => c.status().state === "live");
  assert.equal(c.session!.username, bob);
  assert.deepEqual(c.conversations().map((x) => x.title), [], "another user's conversations on bob's device");
});

test("signing out a live device never says it failed", { timeout: 60_000 }, async () => {
  // The revocation ends the device's stream while signOut waits for its
  // answer; the loop used to take that for a failure (most runs).
  const c = await open();
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  const seen: string[] = [];
  c.on(() => seen.push(`${c.status().state}${c.status().lastError ? ` (${c.status().lastError})` : ""}`));
  await c.signOut();
  assert.ok(!seen.some((s) => s.startsWith("failed")), seen.join(" -> "));
  assert.equal(c.status().state, "signed-out");
  assert.equal(c.status().lastError, undefined);
});

test("a send while a push waits out the server's throttle waits with it", { timeout: 60_000 }, async () => {
  let pushes = 0;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    if (String(input).endsWith("/ferry.v1.SyncService/Push")) {
      pushes++;
      return throttled(7n);
    }
    return globalThis.fetch(input, init);
  };
  let waiting = () => {};
  const waits = new Promise<void>((r) => (waiting = r));
  const c = await FerryClient.open({ baseUrl: server.url, replica: new MemoryReplica(), minBackoffMs: 1, maxBackoffMs: 1, fetch,
    // The throttle's 7 s never pass: the wait ends only with the session.
    sleep: (ms, signal) => {
      if (ms !== 7000) return Promise.resolve();
      waiting();
      return new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason), { once: true }));
    } });
  clients.push(c);
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  const conv = await c.createConversation("notes", []);
  await waits;
  assert.equal(pushes, 1);
  for (let i = 0; i < 5; i++) {
    await c.send(conv, `m${i}`);
    await internals(c).flushing; // the flush the send asked for, done
  }
  assert.equal(pushes, 1, `pushed ${pushes} times within the 7 s the server asked to wait`);
});

test("ops of a conversation damaged in the server's store wait alone, and go once it is repaired; the others go at once", { timeout: 60_000 }, async () => {
  // The server's answer for a damaged conversation (the Go tests damage a
  // store; here the network answers as its server does), until repaired.
  let damaged: string | undefined;
  let pushes = 0; // to the damaged conversation
  let askedLater = true;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    if (String(input).endsWith("/ferry.v1.SyncService/Push")) {
      const req = fromBinary(PushRequestSchema, init!.body as Uint8Array);
      askedLater &&= req.retryLater;
      const batch = req.batches[0]!;
      if (batch.conversationId === damaged) {
        pushes++;
        const results = batch.ops.map((op, i) => create(OpResultSchema, {
          conversationId: damaged, opId: op.id, status: OpStatus.RETRY_LATER, reason: RejectReason.CONVERSATION_DAMAGED,
          message: i === 0 ? `conversation damaged: conversation ${damaged} cannot be read or written until the server's operator repairs the server's store` : "",
        }));
        return new Response(toBinary(PushResponseSchema, create(PushResponseSchema, { results, retryAfterMs: 60_000 })),
          { status: 200, headers: { "Content-Type": "application/proto" } });
      }
    }
    return globalThis.fetch(input, init);
  };
  let repaired = () => {};
  const waits = new Promise<void>((r) => (repaired = r));
  let held = () => {};
  const holding = new Promise<void>((r) => (held = r));
  const c = await FerryClient.open({ baseUrl: server.url, replica: new MemoryReplica(), minBackoffMs: 1, maxBackoffMs: 1, fetch,
    sleep: (ms) => {
      if (ms !== 60_000) return Promise.resolve();
      held();
      return waits;
    } });
  clients.push(c);
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  const bad = await c.createConversation("bad", []);
  const good = await c.createConversation("good", []);
  await c.waitFor(() => c.status().pending === 0);

  damaged = bad;
  await c.send(bad, "kept for later");
  await holding;
  await c.send(good, "goes at once");
  await c.send(good, "and this");
  await c.waitFor(() => texts(c.messages(good)).join() === "goes at once,and this" && c.status().pending === 1);
  assert.equal(c.messages(bad).find((m) => m.text === "kept for later")?.status, "pending");
  assert.equal(pushes, 1, "the damaged conversation's op was pushed again while held");
  assert.equal(c.status().lastError, undefined);
  // The status says which conversation's ops wait, till when, and why.
  const waiting = c.status().held ?? [];
  assert.equal(waiting.length, 1, `held ${JSON.stringify(waiting)}`);
  assert.equal(waiting[0]!.conversationId, bad);
  assert.ok(waiting[0]!.retryAt >= Date.now() + 50_000, `retry at ${waiting[0]!.retryAt}, a minute after the answer`);
  assert.match(waiting[0]!.reason, new RegExp(`conversation ${bad}`));

  damaged = undefined;
  repaired();
  await c.waitFor(() => c.status().pending === 0 && c.status().held === undefined);
  assert.notEqual(c.messages(bad).find((m) => m.text === "kept for later")?.status, "pending");
  assert.ok(askedLater, "a push did not ask for RETRY_LATER");
});

test("a signOut whose answer is lost after the revocation leaves the device offline, and a stop() meanwhile holds", { timeout: 60_000 }, async () => {
  let c: FerryClient;
  const fetch: typeof globalThis.fetch = async (input, init) => {
    const res = await globalThis.fetch(input, init);
    if (String(input).endsWith("/ferry.v1.AccountService/RevokeDevice")) {
      // The server revoked the device, and its stream ended; the app
      // stops syncing; the revoke's answer is lost.
      await c.waitFor(() => internals(c).run === undefined);
      await c.stop();
      return new Response(JSON.stringify({ code: "unavailable", message: "the answer was lost (test)" }), { status: 503, headers: { "Content-Type": "application/json" } });
    }
    return res;
  };
  c = await openWith(fetch);
  await signUp(c, "alice");
  await c.waitFor(() => c.status().state === "live");
  await assert.rejects(c.signOut(), /the answer was lost/);
  assert.equal(internals(c).run, undefined, "signOut started the device again after the app's stop()");
  assert.equal(c.status().state, "offline");
});

test("changePassword() takes the current password, and signs the other devices out when asked", { timeout: 60_000 }, async () => {
  const phone = await open();
  const laptop = await open();
  const a = await signUp(phone, "alice");
  await laptop.login(a, "correct horse battery");
  laptop.start();
  await laptop.waitFor(() => laptop.status().state === "live");
  await assert.rejects(phone.changePassword("wrong horse battery", "battery staple horse"),
    (err: unknown) => ConnectError.from(err).code === Code.PermissionDenied && /current password is wrong/.test(String(err)));
  assert.equal(await phone.changePassword("correct horse battery", "battery staple horse", { signOutOtherDevices: true }), 1);
  await laptop.waitFor(() => laptop.status().state === "failed");
  await phone.waitFor(() => phone.status().state === "live");
  const again = await open();
  await assert.rejects(again.login(a, "correct horse battery"), (err: unknown) => ConnectError.from(err).code === Code.Unauthenticated);
  await again.login(a, "battery staple horse");
});

test("a user blocked cannot add the user who blocked them: the add fails, saying why; unblocked, it goes", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  await bob.blockUser(a);
  assert.deepEqual((await bob.blockedUsers()).map((u) => u.username), [a]);
  const conv = await alice.createConversation("spam", [b]);
  await alice.waitFor(() => alice.failed().length === 1);
  const [f] = alice.failed();
  assert.equal(f!.kind, "memberAdd");
  assert.match(f!.error, /does not accept being added to conversations by you/);
  await bob.unblockUser(a);
  assert.deepEqual(await bob.blockedUsers(), []);
  await alice.addMember(conv, b);
  await bob.waitFor(() => bob.conversations().some((c) => c.id === conv));
});

test("usage() says what the user stores and the quota; a message past it fails, saying so", { timeout: 60_000 }, async () => {
  const srv = await startServer({ args: ["--user-quota-mib", "1"] });
  try {
    const alice = await FerryClient.open({ baseUrl: srv.url, sleep: async () => {}, minBackoffMs: 1, maxBackoffMs: 1 });
    clients.push(alice);
    await signUp(alice, "alice");
    const conv = await alice.createConversation("notes", []);
    await alice.waitFor(() => alice.status().state === "live" && alice.status().pending === 0);
    assert.deepEqual(await alice.usage(), { bytes: 32 + "notes".length, quota: 1 << 20 });
    const big = "x".repeat(64_000);
    for (let i = 0; i < 16; i++) await alice.send(conv, big);
    const over = await alice.send(conv, big);
    await alice.waitFor(() => alice.status().pending === 0 && alice.failed().length === 1);
    const [f] = alice.failed();
    assert.equal(f!.opId, over);
    assert.match(f!.error, /QUOTA_EXCEEDED|quota exceeded/);
    assert.equal((await alice.usage()).bytes, 32 + "notes".length + 16 * (32 + 64_000 + "text/plain".length));
  } finally {
    await srv.stop();
  }
});

test("members: names show as authors, membership and titles change from the browser", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  const carol = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const c = await signUp(carol, "carol");
  const conv = await alice.createConversation("team", [b]);
  await alice.send(conv, "hello");
  await bob.waitFor(() => bob.messages(conv).length === 1);

  // Bob's device learns alice's name by itself once it shows her message;
  // its own messages carry its own.
  await bob.send(conv, "hi");
  await bob.waitFor(() => bob.messages(conv)[0]?.authorName === a);
  assert.equal(bob.messages(conv)[1]!.authorName, b);
  assert.equal(bob.conversations().find((x) => x.id === conv)!.lastMessage!.authorName, b);
  const roles = (ms: { username: string; role: string }[] | undefined) => (ms ?? []).map((m) => `${m.username}:${m.role}`).sort();
  assert.deepEqual(roles(bob.knownMembers(conv)), [`${a}:owner`, `${b}:member`]);

  // Alice adds carol, makes bob an admin, and renames the conversation.
  await alice.members(conv);
  await alice.addMember(conv, c);
  await alice.setRole(conv, b, "admin");
  await alice.setTitle(conv, "the team");
  // Her own ops, once accepted, have her list fetched again too.
  await alice.waitFor(() => roles(alice.knownMembers(conv)).join() === [`${a}:owner`, `${b}:admin`, `${c}:member`].join());
  await carol.waitFor(() => carol.conversations().some((x) => x.id === conv && x.title === "the team") && carol.messages(conv).length === 2);
  await carol.waitFor(() => carol.messages(conv).every((m) => m.authorName !== undefined));
  assert.deepEqual(carol.messages(conv).map((m) => m.authorName), [a, b]);
  await bob.waitFor(() => bob.conversations().find((x) => x.id === conv)?.title === "the team");
  // Bob's list was fetched before the changes: it is fetched again.
  await bob.waitFor(() => roles(bob.knownMembers(conv)).join() === [`${a}:owner`, `${b}:admin`, `${c}:member`].join());
  assert.deepEqual(roles(await carol.members(conv)), [`${a}:owner`, `${b}:admin`, `${c}:member`]);

  // Carol leaves; bob, an admin now, may remove no owner: the server says
  // so, as a failed op.
  await carol.leave(conv);
  await carol.waitFor(() => carol.conversations().find((x) => x.id === conv)?.removed === true);
  await bob.removeMember(conv, a);
  await bob.waitFor(() => bob.failed().length === 1);
  assert.equal(bob.failed()[0]!.kind, "memberRemove");
  assert.deepEqual(roles(await alice.members(conv)), [`${a}:owner`, `${b}:admin`]);

  // Mistakes are told at the call.
  await assert.rejects(alice.addMember(conv, "nobody-such"), /no such user: nobody-such/);
  await assert.rejects(alice.setRole(conv, b, "boss" as "admin"), /it is member, admin or owner/);
  await assert.rejects(alice.setTitle(conv, "a\u0007bell"), /control character/);
});

test("a device asks for a conversation's member list once, not at every view, and not again once refused", { timeout: 60_000 }, async () => {
  let asked = 0;
  let refuse = true;
  let answered!: () => void;
  const once = new Promise<void>((r) => (answered = r));
  const counting: typeof globalThis.fetch = async (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    if (!url.endsWith("/ferry.v1.ConversationService/GetConversation")) return globalThis.fetch(input, init);
    asked++;
    // Refused as the server refuses a conversation it does not know (a
    // restored server's, say).
    const res = refuse
      ? new Response(JSON.stringify({ code: "not_found", message: "conversation not found" }), { status: 404, headers: { "Content-Type": "application/json" } })
      : await globalThis.fetch(input, init);
    answered();
    return res;
  };
  const alice = await open();
  const bob = await openWith(counting);
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("lists", [b]);
  await alice.send(conv, "hello");
  await bob.waitFor(() => bob.status().state === "live" && bob.messages(conv).length === 1);
  await once;
  for (let i = 0; i < 5; i++) assert.equal(bob.messages(conv)[0]!.authorName, undefined);
  // members() asks once more, and is refused as the first was: by then any
  // view's wrongly queued ask would have been made.
  await assert.rejects(bob.members(conv), /not found/i);
  assert.equal(asked, 2, "views asked again for a list the server refused");

  // Once the list comes, views show the name without asking again.
  refuse = false;
  await bob.members(conv);
  for (let i = 0; i < 5; i++) assert.equal(bob.messages(conv)[0]!.authorName, a);
  await bob.members(conv);
  assert.equal(asked, 4, "views asked for a list the device holds");
});

test("a member list the server could not give for now is asked for again in the session, with nothing else happening", { timeout: 60_000 }, async () => {
  let failing = 0;
  let refused!: () => void;
  const failed = new Promise<void>((r) => (refused = r));
  const flaky: typeof globalThis.fetch = async (input, init) => {
    if (!isGetConversation(input) || failing === 0) return globalThis.fetch(input, init);
    if (--failing === 0) refused();
    return new Response(JSON.stringify({ code: "unavailable", message: "try again" }), { status: 503, headers: { "Content-Type": "application/json" } });
  };
  const alice = await open();
  const bob = await openWith(flaky);
  const carol = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const c = await signUp(carol, "carol");
  const conv = await alice.createConversation("flaky", [b]);
  await alice.send(conv, "hello");
  await bob.waitFor(() => bob.status().state === "live" && bob.messages(conv)[0]?.authorName === a);
  // carol's add comes live, and bob's asks for the new list fail, three
  // times. Nothing else comes after the add (acks of it, at most), and the
  // session goes on: the retries alone bring her.
  failing = 3;
  await alice.addMember(conv, c);
  await failed;
  await bob.waitFor(() => bob.knownMembers(conv)?.some((m) => m.username === c) === true);
});

// isGetConversation says a fetch is a member list's.
const isGetConversation = (input: RequestInfo | URL) =>
  (input instanceof Request ? input.url : String(input)).endsWith("/ferry.v1.ConversationService/GetConversation");

test("a member added while the list is on its way is named: the stale list is fetched again", { timeout: 60_000 }, async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let fetched!: () => void;
  const answered = new Promise<void>((r) => (fetched = r));
  let asked = 0;
  const slow: typeof globalThis.fetch = async (input, init) => {
    if (!isGetConversation(input)) return globalThis.fetch(input, init);
    const res = await globalThis.fetch(input, init);
    if (++asked === 1) {
      fetched();
      await gate; // the first answer, without carol, is slow to come back
    }
    return res;
  };
  const alice = await open();
  const bob = await openWith(slow);
  const carol = await open();
  await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const c = await signUp(carol, "carol");
  const conv = await alice.createConversation("late", [b]);
  await alice.send(conv, "hello");
  await bob.waitFor(() => bob.status().state === "live" && bob.messages(conv).length === 1);
  await answered;
  await alice.addMember(conv, c);
  await carol.waitFor(() => carol.conversations().some((x) => x.id === conv));
  await carol.send(conv, "hi, I'm carol");
  await bob.waitFor(() => bob.messages(conv).length === 2);
  release();
  await bob.waitFor(() => bob.messages(conv)[1]!.authorName === c);
  assert.ok(bob.knownMembers(conv)!.some((m) => m.username === c));
});

test("a list refused with the device's session is fetched once it signs in again", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("refused", [b]);
  await alice.send(conv, "hello");
  // Held, not yet shown (held() names no one): no list asked for yet.
  await bob.waitFor(() => bob.status().state === "live" && bob.held(conv) >= 3);
  const other = await otherDevice(b);
  await other.accounts.revokeDevice({ deviceId: bob.session!.deviceId });
  await bob.waitFor(() => bob.status().state === "failed");
  // An app's member panel asks meanwhile: refused, as the session is.
  await assert.rejects(bob.members(conv), /unauthenticated|invalid token/i);
  await bob.login(b, "correct horse battery");
  bob.start();
  await bob.waitFor(() => bob.status().state === "live");
  await bob.waitFor(() => bob.messages(conv)[0]?.authorName === a);
});

test("members() from a listener of the conversation's changes does not loop: an unchanged list says nothing", { timeout: 60_000 }, async () => {
  let asked = 0;
  let down = false;
  const counting: typeof globalThis.fetch = async (input, init) => {
    if (!isGetConversation(input)) return globalThis.fetch(input, init);
    asked++;
    return down ? Response.error() : globalThis.fetch(input, init);
  };
  const alice = await open();
  const bob = await openWith(counting);
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("panel", [b]);
  await bob.waitFor(() => bob.status().state === "live" && bob.conversations().some((x) => x.id === conv));
  await bob.members(conv);
  // An app's member panel: it reads the members when the conversation
  // changes.
  let reads = 0;
  const off = bob.on((e) => {
    if (e.kind !== "conversations" || e.convId !== conv) return;
    reads++;
    void bob.members(conv).catch(() => {});
  });
  const start = asked;
  await bob.members(conv);
  await bob.members(conv); // by now a listener's ask, had the first told, was made
  off();
  assert.equal(asked - start, 2, `an unchanged list was told, and read again (${reads} reads)`);
  // The server out of reach, members() gives the list last fetched.
  down = true;
  assert.deepEqual((await bob.members(conv)).map((m) => m.username).sort(), [a, b].sort());
  assert.equal(asked - start, 3);
});

test("setDisplayName() is what the members' lists give; renameDevice() and revokeDevice() act on the user's devices", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("room", [b]);
  await bob.waitFor(() => bob.conversations().some((c) => c.id === conv));
  await alice.waitFor(() => alice.conversations().find((c) => c.id === conv)?.head === 2);
  await alice.members(conv);
  let told = 0;
  alice.on((ev) => void (ev.kind === "conversations" && ev.convId === conv && told++));
  const me = await alice.setDisplayName("Alice Liddell");
  assert.deepEqual({ username: me.username, displayName: me.displayName }, { username: a, displayName: "Alice Liddell" });
  assert.equal(alice.knownMembers(conv)?.find((m) => m.username === a)?.displayName, "Alice Liddell", "her own list still shows the old name");
  assert.equal(told, 1, "listeners were not told of the conversation whose list changed");
  assert.equal((await bob.members(conv)).find((m) => m.username === a)?.displayName, "Alice Liddell");
  // Her messages show it, on both devices.
  await alice.send(conv, "hi");
  await bob.waitFor(() => bob.messages(conv).length === 1);
  for (const c of [alice, bob]) {
    const [m] = c.messages(conv);
    assert.deepEqual([m?.authorName, m?.authorDisplayName], [a, "Alice Liddell"]);
  }
  await assert.rejects(alice.setDisplayName("x".repeat(65)),
    (err: unknown) => ConnectError.from(err).code === Code.InvalidArgument && /longer than 64 bytes/.test(String(err)));

  const phone = await otherDevice(a, "phone");
  const phoneId = (await alice.devices()).find((d) => !d.current)!.id;
  await alice.renameDevice(phoneId, "Alice's phone");
  await alice.renameDevice(alice.session!.deviceId, "");
  const names = (await alice.devices()).map((d) => `${d.name}${d.current ? " (this one)" : ""}`).sort();
  assert.deepEqual(names, ["Alice's phone", "unnamed device (this one)"]);
  await assert.rejects(alice.renameDevice(bob.session!.deviceId, "mine"), (err: unknown) => ConnectError.from(err).code === Code.NotFound);
  await alice.revokeDevice(phoneId);
  await assert.rejects(phone.accounts.getAccount({}), (err: unknown) => ConnectError.from(err).code === Code.Unauthenticated);
  assert.deepEqual((await alice.devices()).map((d) => d.current), [true]);
});

test("a member list asked for before setDisplayName() and answered after it does not bring the old name back", { timeout: 60_000 }, async () => {
  // Holds the answer of the next GetConversation until released: the
  // server answered it before the name changed.
  let hold: Promise<void> | undefined;
  let answered = () => {};
  const alice = await openWith(async (input, init) => {
    const held = String(input).endsWith("/ferry.v1.ConversationService/GetConversation") ? hold : undefined;
    if (held) hold = undefined;
    const res = await globalThis.fetch(input, init);
    if (held) {
      answered();
      await held;
    }
    return res;
  });
  const bob = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("room", [b]);
  await alice.waitFor(() => alice.conversations().find((c) => c.id === conv)?.head === 2);
  await alice.members(conv);

  let release = () => {};
  hold = new Promise<void>((r) => (release = r));
  const serverAnswered = new Promise<void>((r) => (answered = r));
  const asked = alice.members(conv); // as the device's own refresh would
  await serverAnswered; // with the old name
  await alice.setDisplayName("Alice Liddell");
  release();
  await asked;
  assert.equal(alice.knownMembers(conv)?.find((m) => m.username === a)?.displayName, "Alice Liddell",
    "the list answered after setDisplayName() brought the old name back");
});

test("a lookup that learns a member's new display name tells listeners, and the member lists agree", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const conv = await alice.createConversation("room", [b]);
  await alice.send(conv, "hello");
  await bob.waitFor(() => bob.messages(conv).length === 1);
  await bob.members(conv);
  assert.equal(bob.messages(conv)[0]?.authorDisplayName, a);

  await alice.setDisplayName("Alice Liddell");
  const events: { kind: string; convId?: string }[] = [];
  const off = bob.on((e) => void events.push(e));
  await bob.createConversation("other", [a]); // looks alice up
  off();
  assert.equal(bob.messages(conv)[0]?.authorDisplayName, "Alice Liddell");
  assert.ok(events.some((e) => e.kind === "messages" && e.convId === undefined), `listeners were told ${JSON.stringify(events)}`);
  assert.ok(events.some((e) => e.kind === "conversations" && e.convId === conv), `listeners were told ${JSON.stringify(events)}`);
  assert.equal(bob.knownMembers(conv)?.find((m) => m.username === a)?.displayName, "Alice Liddell");
});

test("a member list that brings a new display name mends the other lists held", { timeout: 60_000 }, async () => {
  const alice = await open();
  const bob = await open();
  const a = await signUp(alice, "alice");
  const b = await signUp(bob, "bob");
  const one = await alice.createConversation("one", [b]);
  const two = await alice.createConversation("two", [b]);
  for (const conv of [one, two]) {
    await alice.waitFor(() => alice.conversations().find((c) => c.id === conv)?.head === 2);
    await alice.members(conv);
  }
  await bob.setDisplayName("Bob Dylan");
  const told: string[] = [];
  const off = alice.on((e) => void (e.kind === "conversations" && e.convId && told.push(e.convId)));
  await alice.members(one);
  off();
  assert.equal(alice.knownMembers(two)?.find((m) => m.username === b)?.displayName, "Bob Dylan", "the other list kept his old name");
  assert.ok(told.includes(two), `listeners were told of ${JSON.stringify(told)}`);
  assert.equal(alice.knownMembers(one)?.find((m) => m.username === a)?.displayName, a);
});
