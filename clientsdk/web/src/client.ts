// FerryClient is a Ferry device for web applications: the same
// offline-first behaviour as the Go SDK, over the browser form of the
// protocol (Subscribe for the session, Push for ops, Ack for markers).
//
// Concurrency: JavaScript runs one task at a time; the client serialises
// its own changes to the replica, so an application may call any method at
// any time, and listeners run after each change is durable.

import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { DurationSchema, timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";

import { AccountService } from "./gen/ferry/v1/account_pb.js";
import { ConversationService, type ConversationInfo } from "./gen/ferry/v1/conversation_pb.js";
import { OpBatchSchema, OpSchema, OpStatus, RejectReason, Role as WireRole, type Op, type OpResult } from "./gen/ferry/v1/op_pb.js";
import { HelloSchema, SyncService, type Ops } from "./gen/ferry/v1/sync_pb.js";
import { unpackBatch } from "./packed.js";
import { Folding, type MessageView, type StatusInput } from "./fold.js";
import { emptyMeta, MemoryReplica, type Change, type ConvRecord, type Meta, type OpRecord, type OutboxEntry, type Replica, type Session } from "./replica.js";
import { OpIds, isULID, ulid } from "./ulid.js";

/** Where the device's connection stands. */
export type State = "signed-out" | "offline" | "connecting" | "catching-up" | "live" | "failed";

/** The device's status, for an online indicator and catch-up progress. */
export interface Status {
  state: State;
  /** During catch-up: ops the server said were missing, and received so far. */
  missingOps: number;
  receivedOps: number;
  /** Ops waiting in the outbox. */
  pending: number;
  /**
   * The last error, retryable or not. With state "failed" it is one that
   * retrying cannot fix (the device was revoked, or its token is wrong):
   * the client stopped; start() tries again, and login() signs it in
   * again without signOut().
   */
  lastError?: string;
  /**
   * Conversations whose ops the server turns away for now, in id order,
   * while the device's other ops go on: a conversation damaged in the
   * server's store (RejectReason.CONVERSATION_DAMAGED), which its
   * operator repairs. Each stays listed until its wait ends (its ops then
   * go again), or the session does, even if its ops left the outbox
   * meanwhile. Absent when there are none.
   */
  held?: HeldConversation[];
}

/** A conversation whose ops wait (Status.held). */
export interface HeldConversation {
  conversationId: string;
  /** When its ops go again, in the client's clock (ms since the epoch). */
  retryAt: number;
  /** Why, as the server said. */
  reason: string;
}

/** A conversation as an application lists it. */
export interface ConversationView {
  id: string;
  title: string;
  unread: number;
  head: number;
  memberCount: number;
  removed: boolean;
  /** The device holds newer messages but not yet all older ones. */
  olderLoading: boolean;
  lastMessage?: MessageView;
}

/**
 * A page of a conversation's messages (FerryClient.page), oldest first as
 * a chat view shows them.
 */
export interface MessagePage {
  messages: MessageView[];
  /**
   * The device holds older messages: ask for them with `before` set to the
   * seq of this page's first message.
   */
  more: boolean;
  /**
   * Older messages are still on their way (a hole below the page): show
   * "older messages loading", not the start of the conversation. A page
   * stops at such a hole, with `more` false, and the page below it fills
   * as the messages arrive.
   */
  olderLoading: boolean;
}

/** A member's role in a conversation. */
export type Role = "member" | "admin" | "owner";

/** A member of a conversation (FerryClient.members). */
export interface MemberView {
  userId: string;
  username: string;
  displayName: string;
  role: Role;
}

const roleNames: Record<number, Role> = { [WireRole.MEMBER]: "member", [WireRole.ADMIN]: "admin", [WireRole.OWNER]: "owner" };
const wireRoles: Record<Role, WireRole> = { member: WireRole.MEMBER, admin: WireRole.ADMIN, owner: WireRole.OWNER };

// refreshWidth is how many member lists a refresh fetches at once.
const refreshWidth = 8;

// memberRetries is how many times in a row a session asks again, after
// the reconnects' backoff, for member lists the server could not give
// for now: past them, the lists wait for the next session or live op.
const memberRetries = 6;

/** What changed: listeners re-read what they show. */
export interface ClientEvent {
  kind: "status" | "conversations" | "messages";
  /**
   * The conversation that changed, when one did; a "messages" event
   * without one says authors' names arrived, which may show in any.
   */
  convId?: string;
}

export interface ClientOptions {
  /** The server, e.g. "http://127.0.0.1:8080" or "" for the page's origin. */
  baseUrl: string;
  /** Where the device lives between runs. Default: memory (lost on reload). */
  replica?: Replica;
  /** Shown in the user's device list. */
  deviceName?: string;
  /** The fetch to use. Default: globalThis.fetch. */
  fetch?: typeof globalThis.fetch;
  /**
   * Catch-up sends the newest pageSize ops of every changed conversation
   * first, then the rest oldest first (0: each conversation oldest first).
   * Default 50.
   */
  pageSize?: number;
  /**
   * Reconnect backoff: the first delay and the largest, in ms. open()
   * refuses a first delay that is not positive (a reconnect loop without a
   * pause) or a largest below it.
   */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /**
   * How long delivered markers (what the device holds) that other members
   * see as receipts gather before they go out in one Ack. In a group every
   * member's device acks each message it receives, and each Ack is a
   * request to the server; the server holds receipts about as long anyway
   * (250 ms by default). Default 250 ms, as the Go SDK's; 0 sends them at
   * once. Reads go at once.
   */
  ackDelayMs?: number;
  /**
   * How long delivered markers that nobody else sees gather before an Ack:
   * those of conversations without receipts (larger than the server's
   * receipt limit), where they only set where the next session resumes.
   * Default 5000 ms, as the Go SDK's; never shorter than ackDelayMs.
   */
  resumeAckDelayMs?: number;
  /**
   * How long a Push or an Ack may go unanswered before it is cancelled
   * and sent again: a connection that died without a word (over HTTP/1.1
   * one apart from the session's stream, whose silence the client would
   * not hear). The server gets it as the call's deadline. Default 30000
   * ms, and a second more for each 32 KiB of the request, which a slow
   * uplink takes to send. The session's end cancels them too: its next
   * one sends again.
   */
  callTimeoutMs?: number;
  /** Timers, injectable in tests. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  random?: () => number;
  now?: () => number;
}

const clientName = "ferry-web/0.1";

// uploadBytesPerSecond is the slowest uplink a call's timeout allows for.
const uploadBytesPerSecond = 32 << 10;

// askedDelay is the wait a throttled call's error asks for, if it does.
function askedDelay(err: ConnectError): number | undefined {
  const asked = err.findDetails(DurationSchema)[0];
  return asked ? Number(asked.seconds) * 1000 + Math.ceil(asked.nanos / 1e6) : undefined;
}

// terminalCodes are the errors of a push that pushing again cannot fix:
// the session says the first two (the device refused), and the rest are
// a client's bug, not a state of the server's.
const terminalCodes = new Set([Code.Unauthenticated, Code.PermissionDenied, Code.InvalidArgument, Code.FailedPrecondition, Code.Unimplemented]);

// goneCodes are the errors of a member list's fetch that say the
// conversation's list is not the user's to have (the server does not know
// it): fetching it again cannot fix them until its membership changes.
// A refused session (unauthenticated) is the account's, not the
// conversation's: its lists are fetched once it signs in again.
const goneCodes = new Set([Code.NotFound, Code.InvalidArgument]);

// fallbackCodes are the errors of a member list's fetch that members()
// answers with the list last fetched, as the Go SDK's Members does: the
// server out of reach, or slow.
const fallbackCodes = new Set([Code.Unavailable, Code.DeadlineExceeded, Code.Unknown, Code.Canceled, Code.ResourceExhausted]);

// roleOf is the wire role of a role name, refusing another.
function roleOf(role: Role): WireRole {
  const wire = wireRoles[role];
  if (wire === undefined) throw new Error(`ferry: role ${JSON.stringify(role)}: it is member, admin or owner`);
  return wire;
}

type Payload = MessageInitShape<typeof OpSchema>["payload"];

// checkPayload refuses at the call what the server would refuse as
// malformed (REJECT_REASON_INVALID): a caller's mistake is told at once,
// not as a failed message after a round trip.
function checkPayload(p: Payload): void {
  switch (p?.case) {
    case "edit":
    case "delete":
    case "reactionAdd":
    case "reactionRemove":
      if (!isULID(p.value.targetId ?? "")) throw new Error(`ferry: ${JSON.stringify(p.value.targetId ?? "")} is not a message id`);
      break;
  }
  switch (p?.case) {
    case "reactionAdd":
    case "reactionRemove":
      if (!p.value.key) throw new Error("ferry: a reaction needs a key");
      checkText("reaction key", p.value.key, maxReactionKeyBytes);
      break;
    case "create":
    case "setTitle":
      checkText("title", p.value.title ?? "", maxTitleBytes);
      break;
  }
}

// checkText refuses what the server refuses in a title or reaction key: more
// than max bytes, or a control character.
function checkText(what: string, s: string, max: number): void {
  const n = encoder.encode(s).length;
  if (n > max) throw new Error(`ferry: the ${what} is ${n} bytes, more than the limit of ${max}`);
  if (/[\u0000-\u001f\u007f]/.test(s)) throw new Error(`ferry: the ${what} contains a control character`);
}

// pushFraming is room left in a push for what is not its ops' bytes.
const pushFraming = 64 << 10;

// minPushWaitMs is the least a device waits before pushing again ops the
// server answered RETRY_LATER, whatever delay it asked for (as the Go
// SDK's).
const minPushWaitMs = 100;

/**
 * pushPiece is how many ops, of the encoded sizes given, go in one push:
 * at least one, at most maxOps, and as many as keep within limit bytes.
 * @internal
 */
export function pushPiece(sizes: number[], maxOps: number, limit: number): number {
  let bytes = 0;
  for (let i = 0; i < sizes.length; i++) {
    const n = sizes[i]! + 48; // the op's field and its batch's
    if (i === maxOps || (i > 0 && bytes + n > limit)) return i;
    bytes += n;
  }
  return sizes.length;
}

const maxTitleBytes = 256;
const maxReactionKeyBytes = 64;

/** A Ferry device. Create one with FerryClient.open. */
export class FerryClient {
  private readonly opts: Required<Omit<ClientOptions, "replica" | "fetch" | "deviceName">> & { deviceName: string };
  private readonly replica: Replica;
  private readonly transport: Transport;
  private readonly accounts: Client<typeof AccountService>;
  private readonly conversationsService: Client<typeof ConversationService>;
  private readonly sync: Client<typeof SyncService>;

  private meta: Meta = emptyMeta();
  private convs = new Map<string, ConvRecord>();
  private ops = new Map<string, Map<number, OpRecord>>(); // conv -> seq -> op
  // Per conversation, once it got a delete: its messages' seqs by id, and
  // its edits' seqs by the message they edit; kept from then on (erasing).
  private deletable = new Map<string, DeleteIndex>();
  // The ops a change stores, decoded already: the index reads them.
  private decoded = new WeakMap<OpRecord, Op>();
  // spans hold, per conversation, the seqs held from 1 without a gap as last
  // counted (held moves it on) and the highest seq held: asked for every
  // conversation after every change, they cost what arrived since.
  private spans = new Map<string, { held: number; top: number }>();
  private outbox = new Map<string, OutboxEntry>(); // op id -> entry
  // folded holds each conversation's messages as messages() folded them,
  // until a change to the conversation (applyInMemory): conversations()
  // asks every conversation for its last message after every change.
  private folded = new Map<string, MessageView[]>();
  // tails hold the last messages of conversations not folded (null: none),
  // until a change to them.
  private tails = new Map<string, MessageView | null>();
  // foldings hold each folded conversation's stored ops folded so far, and
  // unfolded the seqs stored since: a message into a long conversation, or
  // an older page in a catch-up, folds itself, not the history.
  private foldings = new Map<string, Folding>();
  private unfolded = new Map<string, number[]>();
  private readonly opIds = new OpIds();
  // names are the members' usernames and display names the device learned,
  // by user id; memberLists each conversation's members as last fetched.
  // In memory: after a reload they are fetched again, for the
  // conversations whose messages are shown (membersDue, refreshMembers).
  private names = new Map<string, { username: string; displayName: string }>();
  private memberLists = new Map<string, MemberView[]>();
  // membersDue are the conversations whose member lists to fetch: shown
  // with an author not known by name, or whose membership changed.
  private membersDue = new Set<string>();
  // membersGone are the conversations whose list the server refused for
  // good (the user left): not asked for again until a membership op.
  private membersGone = new Set<string>();
  private membersFetching = new Set<string>(); // asked for now
  // memberChanges counts, per conversation, the membership ops stored: a
  // list asked for before the count moved is stale when it comes.
  private memberChanges = new Map<string, number>();
  private refreshing = false;
  // membersRetry is the wait before the lists due are asked for again,
  // after the server could not answer for now (membersAttempt times in a
  // row); the session's end ends it.
  private membersRetry?: AbortController;
  private membersAttempt = 0;
  // lastChange is the highest changedAt given: the conversation list's
  // order, by activity, strictly increasing (see changeTick).
  private lastChange = 0;
  // places are the changedAt values kept for a catch-up's conversations:
  // its Conversations messages list them most recently changed first, each
  // message after the last, so the first listed takes the highest (next)
  // and each one after the one below. Null when live.
  private places: { next: number; left: number; below: number } | null = null;
  // catchUpFrom is lastChange before the first catch-up since the last one
  // that completed, while a catch-up runs or was cut off (else null): what
  // one cut off placed lies between it and the places kept now (below),
  // and the next places it again.
  private catchUpFrom: number | null = null;
  private acked = new Map<string, number>(); // conv -> delivered marker sent
  private reads = new Map<string, number>(); // conv -> read marker not yet sent
  // account counts sign-ins and sign-outs: a push or an ack answered after
  // one belongs to the account before it, and its answer is dropped.
  private account = 0;
  // profileChanges counts setDisplayName() answers: a member list asked
  // for before one keeps the name it set.
  private profileChanges = 0;
  private attempt = 0; // reconnects since the last session that caught up

  private st: Status = { state: "signed-out", missingOps: 0, receivedOps: 0, pending: 0 };
  private listeners = new Set<(e: ClientEvent) => void>();
  private writes: Promise<void> = Promise.resolve();
  private run?: { ctrl: AbortController; done: Promise<void> };
  // stopping is the stop() under way; restart, a start() asked for
  // meanwhile (a UI that stops and starts again without waiting), which
  // runs once it is done, unless a later stop() or signOut() says otherwise.
  private stopping?: Promise<void>;
  private restart = false;
  private leaving = false; // signOut() runs: start() does nothing
  private revoking = false; // signOut() asks the server to revoke the device
  private revokedQuietly = false; // the loop ended on the revocation signOut asked for
  // holding: a sign-in replaces a refused session, and start() waits for
  // it (startAsked); stops counts stop() calls, so that the sign-in starts
  // the device again after it only if none came meanwhile.
  private holding = false;
  private startAsked = false;
  private stops = 0;
  private lost?: Error; // the replica can store nothing more: no more syncing
  private connected = false;
  private maxOpsPerPush = 100;
  private maxBodyBytes = 1 << 20; // the server's, once a Welcome says (Limits)
  private maxMessageBytes = 4 << 20; // the server's, once a Welcome says (Limits)
  private flushing?: Promise<void>;
  private flushWanted = false;
  private wake?: AbortController; // ends the reconnect backoff early
  private current?: AbortController; // ends the current session
  private readonly onOnline = () => this.reconnectNow();
  private readonly onOffline = () => this.current?.abort(new ConnectError("the browser went offline", Code.Unavailable));
  private entryDevices = new WeakMap<OutboxEntry, string>();
  // The wait before a failed push goes again, in the session it is for:
  // the session's pushes wait for it (a send meanwhile too).
  private pushRetry?: { ctrl: AbortController; session: AbortController };
  private pushAttempt = 0; // pushes failed in a row
  // heldConvs are conversations whose ops wait, until the session's wait
  // for each is over: the server answered them RETRY_LATER for a reason of
  // theirs alone (damaged in its store), and the others' ops go on.
  private readonly heldConvs = new Map<string, HeldConversation>();
  private signingIn = false; // a login or register is asking the server
  private acking = false;
  private ackWait?: { due: number; ctrl: AbortController }; // the wait running
  private ackDue = false; // a wait ended: what waits goes now
  private ackAttempt = 0; // acks that failed in a row

  private constructor(opts: ClientOptions) {
    const minBackoffMs = opts.minBackoffMs ?? 250;
    const maxBackoffMs = opts.maxBackoffMs ?? 30_000;
    if (!(minBackoffMs > 0) || !(maxBackoffMs >= minBackoffMs)) {
      throw new Error(`ferry: minBackoffMs ${minBackoffMs}, maxBackoffMs ${maxBackoffMs}: the first must be positive and the second at least the first`);
    }
    this.opts = {
      baseUrl: opts.baseUrl,
      deviceName: opts.deviceName ?? "web",
      pageSize: opts.pageSize ?? 50,
      minBackoffMs,
      maxBackoffMs,
      ackDelayMs: Math.max(opts.ackDelayMs ?? 250, 0),
      resumeAckDelayMs: Math.max(opts.resumeAckDelayMs ?? 5000, opts.ackDelayMs ?? 250, 0),
      callTimeoutMs: opts.callTimeoutMs ?? 30_000,
      sleep: opts.sleep ?? sleep,
      random: opts.random ?? Math.random,
      now: opts.now ?? Date.now,
    };
    this.replica = opts.replica ?? new MemoryReplica();
    const auth: Interceptor = (next) => async (req) => {
      const s = this.meta.session;
      if (s) req.header.set("Authorization", `Bearer ${s.token}`);
      return next(req);
    };
    this.transport = createConnectTransport({
      baseUrl: opts.baseUrl,
      // Binary: a catch-up of chat text in JSON (connect-web's default)
      // takes 1.6 times the bytes, its packed batches base64 text, and
      // misses the server's shared encoding of fanned-out batches.
      useBinaryFormat: true,
      interceptors: [auth],
      fetch: opts.fetch ?? ((input, init) => globalThis.fetch(input, init)),
    });
    this.accounts = createClient(AccountService, this.transport);
    this.conversationsService = createClient(ConversationService, this.transport);
    this.sync = createClient(SyncService, this.transport);
  }

  /** Opens the device stored in the replica (or a new, signed-out one). */
  static async open(opts: ClientOptions): Promise<FerryClient> {
    const c = new FerryClient(opts);
    const snap = await c.replica.load();
    c.meta = snap.meta;
    for (const conv of snap.convs) {
      c.convs.set(conv.id, conv);
      c.lastChange = Math.max(c.lastChange, conv.changedAt);
      if (conv.readWanted) c.reads.set(conv.id, conv.readWanted); // marked read before the page closed, not yet sent
    }
    for (const op of snap.ops) c.storeOp(op);
    for (const e of snap.outbox) c.outbox.set(e.id, e);
    c.st = { ...c.st, state: c.meta.session ? "offline" : "signed-out", pending: c.pendingCount() };
    c.replica.watch?.((err) => c.replicaLost(err));
    return c;
  }

  /** The signed-in device, if any (a copy). */
  get session(): Session | undefined {
    return this.meta.session && { ...this.meta.session };
  }

  /**
   * Creates an account and signs this device in as its first device. A
   * signed-in device refuses, before it asks the server: sign out first;
   * unless the server refused its session, which this replaces as login()
   * does.
   */
  async register(username: string, password: string, displayName = ""): Promise<Session> {
    this.mustBeSignedOut();
    return this.replacingRefused(async () => {
      const res = await this.accounts.register({ username, password, displayName, deviceName: this.opts.deviceName });
      return this.signedIn(res.session);
    });
  }

  /**
   * Signs this device in: a new device of the account. A signed-in device
   * refuses, before it asks the server: sign out first. A device whose
   * session the server refused as unauthenticated (it was revoked; status
   * "failed") may log in without signing out: as the same user, it keeps
   * what it holds, its queued messages too, which go out with the new
   * session; as another user, it starts over empty. Syncing stops for the
   * sign-in if it runs (a start() after the refusal retries) and starts
   * again after, unless stop() was called meanwhile; otherwise call
   * start(), as after any sign-in. A start() while the sign-in asks the
   * server waits for it, and then starts the new session.
   */
  async login(username: string, password: string): Promise<Session> {
    this.mustBeSignedOut();
    return this.replacingRefused(async () => {
      const res = await this.accounts.login({ username, password, deviceName: this.opts.deviceName });
      return this.signedIn(res.session);
    });
  }

  private mustBeSignedOut(): void {
    // Before the server makes an account or a device the replica could
    // not keep.
    if (this.lost) throw this.lost;
    if (this.meta.session && !this.meta.refused) throw new Error("ferry: this device is signed in; sign out first");
    // A second sign-in while one is asking the server would make a second
    // device there, whose session the client could not keep.
    if (this.signingIn) throw new Error("ferry: a sign-in is under way");
  }

  // replacingRefused runs a sign-in. Over a refused session, the device
  // stops syncing first, so that nothing of that session lands after the
  // sign-in, and starts again after if it was running.
  private async replacingRefused(signIn: () => Promise<Session>): Promise<Session> {
    this.signingIn = true;
    try {
      if (!this.meta.session) return await signIn();
      const running = this.run !== undefined || this.restart;
      // No session of the refused account runs while the sign-in asks
      // the server: what it would receive would land in the next
      // account's replica. A start() meanwhile waits for the sign-in.
      this.holding = true;
      const stops = this.stops + 1; // with the stop below, this sign-in's own
      try {
        await this.stop();
        return await signIn();
      } finally {
        this.holding = false;
        const again = (running && this.stops === stops) || this.startAsked;
        this.startAsked = false;
        if (again) this.start();
      }
    } finally {
      this.signingIn = false;
    }
  }

  // forgetAccount drops what the client holds in memory for the account it
  // leaves: markers not yet sent, and the answers still to come.
  private forgetAccount(): void {
    this.account++;
    // What a refused session or the last account was told of lists is not
    // the next session's: it asks again.
    this.membersGone.clear();
    this.membersFetching.clear();
    this.acked.clear();
    this.reads.clear();
    this.ackWait?.ctrl.abort();
    this.ackWait = undefined;
    this.ackDue = false;
  }

  private async signedIn(s: { userId: string; deviceId: string; token: string; username: string } | undefined): Promise<Session> {
    if (!s) throw new Error("ferry: the server answered without a session");
    if (this.meta.session && !this.meta.refused) throw new Error("ferry: this device is signed in; sign out first"); // another sign-in finished meanwhile
    const session: Session = { userId: s.userId, deviceId: s.deviceId, token: s.token, username: s.username };
    if (this.meta.session?.userId === session.userId) {
      await this.resignedIn(session);
      return session;
    }
    // A new device: nothing of a previous account stays.
    this.forgetAccount();
    await this.commit(() => ({ clear: true, meta: { ...emptyMeta(), session } }));
    this.setStatus({ state: "offline", pending: 0, lastError: undefined });
    this.emit({ kind: "conversations" });
    return session;
  }

  // resignedIn replaces a refused session with the same user's new one.
  // The replica stays: the conversations and ops are the user's, and the
  // feed position theirs to resume from. The queued ops stay as they are,
  // the refused device's, with its dots: the server takes a user's ops
  // from any of their devices (a revoked device's id stays its user's),
  // and answers one it stored already, whose answer was lost, as a
  // duplicate, which a new id and dot would make a conflict. The new
  // device numbers its own ops from 1.
  private async resignedIn(session: Session): Promise<void> {
    const reads = new Map(this.reads); // the user's, not yet sent
    this.forgetAccount();
    for (const [id, read] of reads) this.reads.set(id, read);
    await this.commit(() => ({ meta: { ...this.meta, session, refused: undefined, dots: {} } }));
    this.setStatus({ state: "offline", pending: this.pendingCount(), lastError: undefined });
    this.emit({ kind: "conversations" });
  }

  /**
   * Revokes this device on the server (its token stops working, and it no
   * longer counts toward the account's device limit), stops syncing and
   * forgets the device (its outbox too). It throws, changing nothing, when
   * the server cannot be asked: sign out again once online. A device the
   * server revoked already signs out. After the browser closed the
   * replica's database it throws ReplicaLostError: reload the page.
   */
  async signOut(): Promise<void> {
    if (this.lost) throw this.lost; // it could not forget the account: the next reload would find it signed in
    const s = this.meta.session;
    if (s) {
      // The loop's session, which the revocation ends, ends quietly: a
      // sign-out is no failure to report.
      this.revoking = true;
      this.revokedQuietly = false;
      const stops = this.stops;
      try {
        await this.accounts.revokeDevice({ deviceId: s.deviceId });
      } catch (err) {
        if (ConnectError.from(err).code !== Code.Unauthenticated) {
          // Still signed in: a loop that ended on a revocation whose
          // answer was lost runs again, and says what it finds, unless
          // the application stopped syncing meanwhile.
          if (this.revokedQuietly && this.stops === stops) this.start();
          throw err;
        }
      } finally {
        // leaving, set at once below, keeps the loop quiet from here on
        // (the stream's end can come after the revoke's answer).
        this.revoking = false;
      }
    }
    this.leaving = true;
    try {
      await this.stop();
      this.forgetAccount();
      await this.commit(() => ({ clear: true, meta: emptyMeta() }));
    } finally {
      this.leaving = false;
    }
    this.setStatus({ state: "signed-out", pending: 0, lastError: undefined });
    this.emit({ kind: "conversations" });
  }

  /**
   * Starts syncing: connects, catches up, stays live, reconnects. In a
   * browser, coming back online reconnects at once.
   */
  start(): void {
    if (this.leaving) return;
    if (this.holding) {
      this.startAsked = true;
      return;
    }
    if (this.lost) {
      this.setStatus({ state: "failed", lastError: this.lost.message });
      return;
    }
    if (this.stopping) {
      this.restart = true;
      return;
    }
    if (this.run || !this.meta.session) return;
    const ctrl = new AbortController();
    this.run = { ctrl, done: this.loop(ctrl.signal) };
    globalThis.addEventListener?.("online", this.onOnline);
    globalThis.addEventListener?.("offline", this.onOffline);
  }

  // replicaLost ends syncing for good: the replica can store nothing more
  // (the browser closed its database), so what the device would receive
  // it could not keep, and what it holds in memory only a reload can
  // square with what the replica still has. Writes throw the replica's
  // error meanwhile.
  private replicaLost(err: Error): void {
    if (this.lost) return;
    this.lost = err;
    console.warn(err.message);
    const r = this.run;
    this.detachRun();
    r?.ctrl.abort(err);
    this.setStatus({ state: "failed", lastError: err.message });
  }

  // detachRun forgets the run, which is ending, and its browser
  // listeners: start() may begin another.
  private detachRun(): void {
    this.run = undefined;
    globalThis.removeEventListener?.("online", this.onOnline);
    globalThis.removeEventListener?.("offline", this.onOffline);
  }

  /** Ends a reconnect backoff now, for when the network is known to be back. */
  reconnectNow(): void {
    this.wake?.abort();
  }

  /**
   * Stops syncing; resolves when the connection is closed. A connected
   * device first sends the markers it was still gathering (ackDelayMs,
   * resumeAckDelayMs), waiting at most two seconds for the server, as the
   * Go SDK's Stop does. A start() called meanwhile (a UI that stops and
   * starts again without waiting) starts the device again once the stop is
   * done.
   */
  async stop(): Promise<void> {
    this.restart = false;
    this.stops++;
    this.startAsked = false;
    if (this.stopping) return this.stopping;
    const r = this.run;
    if (!r) return;
    this.stopping = this.stopRun(r).finally(() => {
      this.stopping = undefined;
      if (this.restart) {
        this.restart = false;
        this.start();
      }
    });
    return this.stopping;
  }

  private async stopRun(r: { ctrl: AbortController; done: Promise<void> }): Promise<void> {
    if (this.connected) {
      this.ackDue = true;
      await within(stopAckMs, this.sendAcks().catch(() => {})); // else the next session sends them
    }
    this.detachRun();
    r.ctrl.abort();
    await r.done;
    await this.writes;
    if (this.meta.session) this.setStatus({ state: "offline" });
  }

  /** The device's status. */
  status(): Status {
    return { ...this.st };
  }

  /** Calls listener after every change; returns the function that stops it. */
  on(listener: (e: ClientEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves once test() is true, checking now and after every change; for
   * applications that wait for a state (and for tests).
   */
  waitFor(test: () => boolean, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      if (test()) return resolve();
      if (signal?.aborted) return reject(signal.reason);
      const aborted = () => {
        stop();
        reject(signal!.reason);
      };
      const stop = this.on(() => {
        if (test()) {
          stop();
          signal?.removeEventListener("abort", aborted);
          resolve();
        }
      });
      signal?.addEventListener("abort", aborted, { once: true });
    });
  }

  /** Conversations, most recently changed first. */
  conversations(): ConversationView[] {
    return [...this.convs.values()]
      .sort((a, b) => b.changedAt - a.changedAt || a.id.localeCompare(b.id))
      .map((c) => {
        const last = this.lastMessage(c.id);
        return {
          id: c.id,
          title: c.title,
          unread: c.unread,
          head: c.head,
          memberCount: c.memberCount,
          removed: c.removed,
          olderLoading: this.olderLoading(c.id),
          lastMessage: last && this.named(copyView(last)),
        };
      });
  }

  /**
   * A conversation's messages, oldest first, with pending ones last: the
   * whole history, copied; page gives a part.
   */
  messages(convId: string): MessageView[] {
    return this.fold(convId).map((m) => this.named(copyView(m)));
  }

  /**
   * A page of a conversation's messages, oldest first: the newest `limit`
   * (default 50) sent messages with a seq below `before`, or without
   * `before` (or with 0) the newest, followed by every pending and failed
   * one (as the Go SDK's Messages gives them, newest first). Scrolling up
   * asks for the page above with `before` set to the seq of this one's
   * first message, a sent one. It copies the page alone, so a long
   * conversation's page costs the page.
   */
  page(convId: string, opts: { before?: number; limit?: number } = {}): MessagePage {
    const limit = Math.floor(opts.limit ?? 50) >= 1 ? Math.floor(opts.limit ?? 50) : 50;
    const all = this.fold(convId); // sent ones in seq order, then pending (seq 0)
    let sent = all.length;
    while (sent > 0 && all[sent - 1]!.seq === 0) sent--;
    const before = opts.before !== undefined && opts.before > 0 ? opts.before : undefined; // 0: the first page, as in Go
    let end = sent;
    if (before !== undefined) {
      // The first sent message at or past before: a binary search.
      let lo = 0;
      while (lo < end) {
        const mid = (lo + end) >>> 1;
        if (all[mid]!.seq < before) lo = mid + 1;
        else end = mid;
      }
    }
    let start = Math.max(0, end - limit);
    let more = start > 0;
    if (end > 0) {
      // A page keeps to the run of held seqs it starts in: a catch-up brings
      // the newest ops first, and a page across the hole below them would
      // show messages from before it right after those from after it. It
      // stops at the hole instead, with olderLoading and no more, until the
      // hole fills. The run is looked at down to the message under the page.
      const from = Math.min(before === undefined ? Infinity : before - 1, this.spans.get(convId)?.top ?? 0);
      const hole = this.missing(convId, all[Math.max(0, start - 1)]!.seq, from);
      if (hole > 0) {
        while (start < end && all[start]!.seq < hole) start++;
        more = false;
      }
    }
    const messages = all.slice(start, before === undefined ? all.length : end).map((m) => this.named(copyView(m)));
    // Older messages are loading when a seq is missing below the page's
    // first sent message or, when it has none, below where it began.
    const top = (this.convs.get(convId)?.head ?? 0) + 1;
    const below = messages[0]?.seq || Math.min(before ?? top, top);
    return { messages, more, olderLoading: this.held(convId) < below - 1 };
  }

  // missing is the highest seq from hi down to lo that the device does not
  // hold, or 0: the top of a hole. It looks only above the held prefix,
  // and only up to the head the conversation's info gave: seqs above it
  // are others' ops of a round still coming, below the device's own that
  // a push result brought first, not a hole.
  private missing(convId: string, lo: number, hi: number): number {
    const ops = this.ops.get(convId);
    const known = this.convs.get(convId)?.head ?? 0;
    for (let seq = Math.min(hi, known); seq >= Math.max(lo, this.held(convId) + 1); seq--) {
      if (!ops?.has(seq)) return seq;
    }
    return 0;
  }

  // fold folds a conversation's ops, its outbox entries and its receipts
  // into its messages, once for each change to them.
  private fold(convId: string): MessageView[] {
    const hit = this.folded.get(convId);
    if (hit) return hit;
    const ops = this.ops.get(convId);
    let f = this.foldings.get(convId);
    let seqs = this.unfolded.get(convId) ?? [];
    if (!f) {
      f = new Folding(convId);
      this.foldings.set(convId, f);
      seqs = [...(ops?.keys() ?? [])];
    }
    this.unfolded.delete(convId);
    for (const seq of seqs) {
      const r = ops?.get(seq);
      if (r) f.add(seq, fromBinary(OpSchema, r.op)); // a seq stored again replaces what it held
    }
    const out = f.view(this.pendingOf(convId), this.statusOf(convId));
    this.folded.set(convId, out);
    return out;
  }

  // lastMessage is a conversation's last message, the last of fold's: from
  // its fold when the device keeps one, otherwise from its newest ops alone
  // (kept until a change to it), so that a conversation list, the first
  // thing an app shows, costs the conversations' tails and not their
  // histories.
  private lastMessage(convId: string): MessageView | undefined {
    if (this.foldings.has(convId)) return this.fold(convId).at(-1);
    let last = this.tails.get(convId);
    if (last === undefined) {
      last = this.foldTail(convId) ?? null;
      this.tails.set(convId, last);
    }
    return last ?? undefined;
  }

  // foldTail folds a conversation's newest message op and the ops above it,
  // which hold all its edits, deletes and reactions (the server takes an op
  // only after its target), with the outbox over them.
  private foldTail(convId: string): MessageView | undefined {
    const f = new Folding(convId);
    const ops = this.ops.get(convId);
    for (let seq = this.spans.get(convId)?.top ?? 0; seq >= 1; seq--) {
      const r = ops!.get(seq);
      if (!r) continue; // not held yet
      const op = fromBinary(OpSchema, r.op);
      f.add(seq, op);
      if (op.payload.case === "message") break;
    }
    return f.view(this.pendingOf(convId), this.statusOf(convId)).at(-1);
  }

  // pendingOf is a conversation's outbox, to fold over its stored ops: its
  // pending ops, and the messages the server refused (shown failed); an
  // edit, delete or reaction it refused changes nothing.
  private pendingOf(convId: string): { op: Op; failed?: string }[] {
    const pending: { op: Op; failed?: string }[] = [];
    for (const e of this.outbox.values()) {
      if (e.convId !== convId) continue;
      const op = fromBinary(OpSchema, e.op);
      if (e.failed !== undefined && op.payload.case !== "message") continue;
      op.userId = this.meta.session?.userId ?? "";
      pending.push({ op, ...(e.failed !== undefined ? { failed: e.failed } : {}) });
    }
    return pending;
  }

  // statusOf is what the status of the user's messages in a conversation
  // comes from.
  private statusOf(convId: string): StatusInput | undefined {
    const me = this.meta.session;
    const conv = this.convs.get(convId);
    return me && conv ? { userId: me.userId, receipts: conv.receipts } : undefined;
  }

  /**
   * Reports whether the device holds ops of the conversation beyond a gap:
   * the newest page came first and older ones are still on their way, so
   * the top of the list is not the start of the conversation.
   */
  olderLoading(convId: string): boolean {
    const span = this.spans.get(convId);
    return span !== undefined && this.held(convId) < span.top;
  }

  /** Ops this device holds of a conversation (contiguous from seq 1). */
  held(convId: string): number {
    const span = this.spans.get(convId);
    if (!span) return 0;
    const m = this.ops.get(convId)!;
    while (m.has(span.held + 1)) span.held++; // ops are only ever added, until a clear
    return span.held;
  }

  /** Sends a text message; returns its id at once, before it is pushed. */
  async send(convId: string, text: string): Promise<string> {
    return this.one(convId, { case: "message", value: { body: encoder.encode(text), contentType: "text/plain" } });
  }

  /** Replaces the body of one of the user's messages. */
  async edit(convId: string, targetId: string, text: string): Promise<string> {
    return this.one(convId, { case: "edit", value: { targetId, body: encoder.encode(text), contentType: "text/plain" } });
  }

  /** Deletes a message for everyone. */
  async delete(convId: string, targetId: string): Promise<string> {
    return this.one(convId, { case: "delete", value: { targetId } });
  }

  /** Adds (on) or removes the user's reaction key to a message. */
  async react(convId: string, targetId: string, key: string, on = true): Promise<string> {
    return this.one(convId, { case: on ? "reactionAdd" : "reactionRemove", value: { targetId, key } });
  }

  /**
   * The ops the server refused, oldest first, with its reason: a refused
   * message shows in its conversation with status "failed"; a refused edit,
   * delete or reaction changes nothing and shows only here. dismissFailed
   * removes one.
   */
  failed(): { convId: string; opId: string; kind: string; error: string }[] {
    return [...this.outbox.values()]
      .filter((e) => e.failed !== undefined)
      .sort((a, b) => a.createdAt - b.createdAt || a.convId.localeCompare(b.convId) || a.dot - b.dot)
      .map((e) => ({ convId: e.convId, opId: e.id, kind: fromBinary(OpSchema, e.op).payload.case ?? "", error: e.failed! }));
  }

  /**
   * Removes an op the server refused, such as a message shown with status
   * "failed": what an app does when its user deletes a message that could
   * not be sent. To send it again, send its text as a new message. Throws
   * for an op that is not a failed one.
   */
  async dismissFailed(opId: string): Promise<void> {
    const e = this.outbox.get(opId);
    if (e?.failed === undefined) throw new Error(`ferry: ${opId} is not a failed op`);
    await this.commit(() => ({ outboxDelete: [opId] }));
    this.emit({ kind: "messages", convId: e.convId });
    this.emit({ kind: "conversations", convId: e.convId });
  }

  /** Creates a conversation with the users of these usernames. */
  async createConversation(title: string, usernames: string[]): Promise<string> {
    // Each user once, however often named.
    const found = [...new Map((usernames.length ? await this.lookup(...usernames) : []).map((u) => [u.id, u])).values()];
    const convId = ulid(this.opts.now());
    await this.enqueue(convId, [
      { case: "create", value: { title } },
      ...found.map((u) => ({ case: "memberAdd" as const, value: { userId: u.id } })),
    ], title);
    return convId;
  }

  /**
   * Adds a user, by username, to a conversation: as a member, or as an
   * admin or owner (which only owners may). Like every op it is queued and pushed
   * when connected; the server refuses it (see failed()) when the user's
   * role does not allow it or the user is a member already. Looking the
   * username up needs the server.
   */
  async addMember(convId: string, username: string, role: Role = "member"): Promise<string> {
    const wire = roleOf(role);
    const [user] = await this.lookup(username);
    return this.one(convId, { case: "memberAdd", value: { userId: user!.id, role: wire } });
  }

  /** Removes a user, by username, from a conversation (admins remove members; owners anyone). */
  async removeMember(convId: string, username: string): Promise<string> {
    const [user] = await this.lookup(username);
    return this.one(convId, { case: "memberRemove", value: { userId: user!.id } });
  }

  /**
   * Leaves a conversation: the user's devices keep what they hold of it,
   * up to the leave. The last owner cannot leave (setRole another owner
   * first): the server refuses it.
   */
  async leave(convId: string): Promise<string> {
    const me = this.meta.session;
    if (!me) throw new Error("ferry: not signed in");
    return this.one(convId, { case: "memberRemove", value: { userId: me.userId } });
  }

  /** Changes a member's role (owners only); a conversation keeps at least one owner. */
  async setRole(convId: string, username: string, role: Role): Promise<string> {
    const wire = roleOf(role);
    const [user] = await this.lookup(username);
    return this.one(convId, { case: "memberRole", value: { userId: user!.id, role: wire } });
  }

  /** Renames a conversation (admins and owners). */
  async setTitle(convId: string, title: string): Promise<string> {
    return this.one(convId, { case: "setTitle", value: { title } });
  }

  /**
   * The conversation's members as the server lists them now, with their
   * usernames, which then show as messages' authorName. While the server
   * cannot be reached it gives the list last fetched, as the Go SDK's
   * Members does, and throws when there is none; it throws for a
   * conversation the server does not know (NotFound) and while the
   * device's session is refused. knownMembers gives the list last
   * fetched, without a request.
   */
  async members(convId: string): Promise<MemberView[]> {
    try {
      return (await this.fetchMembers(convId)).map((m) => ({ ...m }));
    } catch (err) {
      const held = this.memberLists.get(convId);
      if (held && fallbackCodes.has(ConnectError.from(err).code)) return held.map((m) => ({ ...m }));
      throw err;
    }
  }

  /**
   * The conversation's members as last fetched: by members(), or by the
   * device itself, which fetches the lists of conversations whose
   * messages it shows with an author it does not know by name, and again
   * when their membership changes. Undefined before the first fetch (and
   * after a reload: the lists are kept in memory).
   */
  knownMembers(convId: string): MemberView[] | undefined {
    return this.memberLists.get(convId)?.map((m) => ({ ...m }));
  }

  /**
   * What the user's ops hold on the server against its storage quota, in
   * bytes (each op's body, content type, title and reaction key, and 32
   * bytes for the rest of it), and the quota: 0 when there is none. An op
   * past it is refused with the reason QUOTA_EXCEEDED (failed()). Asks the
   * server.
   */
  async usage(): Promise<{ bytes: number; quota: number }> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    const res = await this.accounts.getAccount({}, { timeoutMs: this.opts.callTimeoutMs });
    return { bytes: Number(res.usageBytes), quota: Number(res.quotaBytes) };
  }

  /**
   * Changes the user's password, given the current one, and resolves to
   * how many devices were signed out: with signOutOtherDevices, every
   * other device of the user is revoked in the same change (this one stays
   * signed in). A wrong current password rejects with a ConnectError of
   * Code.PermissionDenied; such tries are throttled as failed logins are.
   * Asks the server.
   */
  async changePassword(currentPassword: string, newPassword: string, opts: { signOutOtherDevices?: boolean } = {}): Promise<number> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    const res = await this.accounts.changePassword(
      { currentPassword, newPassword, signOutOtherDevices: opts.signOutOtherDevices ?? false },
      { timeoutMs: this.opts.callTimeoutMs },
    );
    return res.devicesSignedOut;
  }

  /**
   * Sets the user's display name, as other users see it with their
   * username: in the next members() or lookup their devices ask for,
   * nothing pushed to them. Empty, or a name that shows nothing (spaces,
   * invisible characters), sets it back to the username. The server
   * refuses a name longer than 64 bytes or with control characters or
   * line breaks (Code.InvalidArgument). This device's member lists and
   * messages show it at once.
   */
  async setDisplayName(displayName: string): Promise<{ id: string; username: string; displayName: string }> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    const account = this.account;
    const { user } = await this.accounts.setDisplayName({ displayName }, { timeoutMs: this.opts.callTimeoutMs });
    const u = { id: user!.id, username: user!.username, displayName: user!.displayName };
    if (account === this.account) {
      this.profileChanges++;
      this.learnNames([u]);
    }
    return u;
  }

  /**
   * The user's devices, this one said current. Asks the server.
   */
  async devices(): Promise<{ id: string; name: string; createdAt?: Date; current: boolean }[]> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    const res = await this.accounts.listDevices({}, { timeoutMs: this.opts.callTimeoutMs });
    return res.devices.map((d) => ({ id: d.id, name: d.name, createdAt: d.createdAt && timestampDate(d.createdAt), current: d.current }));
  }

  /**
   * Renames one of the user's devices, this one too, as devices() lists
   * them. Empty names it "unnamed device". The server refuses a name
   * longer than 64 bytes or with control characters
   * (Code.InvalidArgument), and a device that is not the user's or was
   * revoked (Code.NotFound).
   */
  async renameDevice(deviceId: string, name: string): Promise<void> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    await this.accounts.renameDevice({ deviceId, name }, { timeoutMs: this.opts.callTimeoutMs });
  }

  /**
   * Revokes another of the user's devices: its token stops working at
   * once, and it signs in again to sync (signOut() revokes this one).
   */
  async revokeDevice(deviceId: string): Promise<void> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    await this.accounts.revokeDevice({ deviceId }, { timeoutMs: this.opts.callTimeoutMs });
  }

  /**
   * Stops a user, by username, from adding this user to conversations: the
   * server rejects such an add (their device lists it in failed(), as
   * PERMISSION_DENIED). Conversations they share stay. Asks the server.
   */
  async blockUser(username: string): Promise<void> {
    const [user] = await this.lookup(username);
    await this.accounts.blockUser({ userId: user!.id }, { timeoutMs: this.opts.callTimeoutMs });
  }

  /** Lets a user, by username, add this user to conversations again. Asks the server. */
  async unblockUser(username: string): Promise<void> {
    const [user] = await this.lookup(username);
    await this.accounts.unblockUser({ userId: user!.id }, { timeoutMs: this.opts.callTimeoutMs });
  }

  /** The users this user blocks, in id order. Asks the server. */
  async blockedUsers(): Promise<{ id: string; username: string; displayName: string }[]> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    const res = await this.accounts.listBlockedUsers({}, { timeoutMs: this.opts.callTimeoutMs });
    return res.users.map((u) => ({ id: u.id, username: u.username, displayName: u.displayName }));
  }

  // lookup finds users by username, in the order asked, and keeps their
  // names unless the device signed in or out meanwhile. It throws naming
  // the usernames no user has.
  private async lookup(...usernames: string[]): Promise<{ id: string; username: string; displayName: string }[]> {
    if (!this.meta.session) throw new Error("ferry: not signed in");
    const account = this.account;
    const res = await this.accounts.lookupUsers({ usernames }, { timeoutMs: this.opts.callTimeoutMs });
    const byName = new Map(res.users.map((u) => [u.username.toLowerCase(), u]));
    const missing = usernames.filter((n) => !byName.has(n.toLowerCase()));
    if (missing.length) throw new Error(`ferry: no such user: ${missing.join(", ")}`);
    if (account === this.account) this.learnNames(res.users);
    return usernames.map((n) => byName.get(n.toLowerCase())!);
  }

  // learnNames keeps users' names, as a member list, a lookup or a name
  // change gave them: in the member lists held too, and tells listeners
  // of the conversations whose lists changed, and of messages, which show
  // them. It reports whether it learned a name.
  private learnNames(users: { id: string; username: string; displayName: string }[]): boolean {
    let learned = false;
    for (const u of users) {
      const had = this.names.get(u.id);
      if (had?.username !== u.username || had.displayName !== u.displayName) {
        this.names.set(u.id, { username: u.username, displayName: u.displayName });
        learned = true;
      }
      for (const [convId, list] of this.memberLists) {
        const m = list.find((m) => m.userId === u.id);
        if (m && (m.username !== u.username || m.displayName !== u.displayName)) {
          m.username = u.username;
          m.displayName = u.displayName;
          this.emit({ kind: "conversations", convId });
        }
      }
    }
    if (learned) this.emit({ kind: "messages" }); // a name shows in every conversation
    return learned;
  }

  // fetchMembers asks the server for a conversation's members and keeps
  // the list and their names. One answered after a sign-in or out is the
  // last account's: dropped. One asked for before a membership op was
  // stored is kept, and the conversation stays due: fetched again. Only a
  // change is told to listeners, which may well ask again when told.
  private async fetchMembers(convId: string): Promise<MemberView[]> {
    const account = this.account;
    const changes = this.memberChanges.get(convId) ?? 0;
    const profiles = this.profileChanges;
    let res;
    this.membersFetching.add(convId);
    try {
      res = await this.conversationsService.getConversation({ conversationId: convId }, { timeoutMs: this.opts.callTimeoutMs });
    } catch (err) {
      if (account === this.account && goneCodes.has(ConnectError.from(err).code)) this.membersGone.add(convId);
      throw err;
    } finally {
      this.membersFetching.delete(convId);
    }
    if (account !== this.account) throw new Error("ferry: the device signed in or out meanwhile");
    const list: MemberView[] = res.members.map((m) => ({ userId: m.userId, username: m.username, displayName: m.displayName, role: roleNames[m.role] ?? "member" }));
    if (profiles !== this.profileChanges) {
      // The user's display name changed since the server answered.
      const me = this.meta.session?.userId;
      const mine = me === undefined ? undefined : this.names.get(me);
      for (const m of list) if (m.userId === me && mine) m.displayName = mine.displayName;
    }
    const before = this.memberLists.get(convId);
    const same = before?.length === list.length && before.every((m, i) => JSON.stringify(m) === JSON.stringify(list[i]));
    this.memberLists.set(convId, list);
    // The names, in the other lists held too.
    const learned = this.learnNames(list.map((m) => ({ id: m.userId, username: m.username, displayName: m.displayName })));
    this.membersGone.delete(convId);
    if ((this.memberChanges.get(convId) ?? 0) === changes) {
      this.membersDue.delete(convId);
    } else {
      this.membersDue.add(convId); // stale: the membership changed meanwhile
      queueMicrotask(() => void this.refreshMembers());
    }
    if (!same) this.emit({ kind: "conversations", convId });
    if (!same && !learned) this.emit({ kind: "messages", convId }); // learnNames told all of them
    return list;
  }

  // named gives a message its author's username, and display name, when
  // the device knows them; when it does not, and has no list of the
  // conversation's members yet, the list is fetched (refreshMembers), and
  // listeners hear when it came.
  private named(m: MessageView): MessageView {
    const me = this.meta.session;
    const name = m.userId === me?.userId ? me.username : this.names.get(m.userId)?.username;
    if (name) {
      m.authorName = name;
      const display = this.names.get(m.userId)?.displayName;
      if (display) m.authorDisplayName = display;
    } else if (m.userId && !this.memberLists.has(m.convId) && !this.membersDue.has(m.convId) && !this.membersGone.has(m.convId) && !this.membersFetching.has(m.convId)) {
      this.membersDue.add(m.convId);
      queueMicrotask(() => void this.refreshMembers());
    }
    return m;
  }

  // refreshMembers fetches the member lists due, a few at once, while
  // connected: best effort. One the server could not answer for now stays
  // due, and is asked for again after the reconnects' backoff, up to
  // memberRetries times in a row, then in the next session or at the next
  // live op; one it refuses (the user left) is not.
  private async refreshMembers(): Promise<void> {
    if (this.refreshing || !this.connected || !this.meta.session) return;
    this.refreshing = true;
    try {
      while (this.membersDue.size > 0 && this.connected) {
        const batch = [...this.membersDue].slice(0, refreshWidth);
        for (const id of batch) this.membersDue.delete(id);
        const account = this.account;
        const results = await Promise.allSettled(batch.map((id) => this.fetchMembers(id)));
        if (account !== this.account) return;
        const again = batch.filter((_, i) => {
          const r = results[i]!;
          return r.status === "rejected" && !goneCodes.has(ConnectError.from(r.reason).code);
        });
        if (again.length > 0) {
          for (const id of again) this.membersDue.add(id);
          this.retryMembers();
          return;
        }
        this.membersAttempt = 0;
      }
    } finally {
      this.refreshing = false;
    }
  }

  // retryMembers asks for the lists due again after the reconnects'
  // backoff, within the session, unless it did memberRetries times in a
  // row already or a wait is on.
  private retryMembers(): void {
    const session = this.current;
    if (!session || session.signal.aborted || this.membersRetry || this.membersAttempt >= memberRetries) return;
    const wait = this.backoff(this.membersAttempt);
    this.membersAttempt++;
    const ctrl = this.laterInSession(session, wait, () => void this.refreshMembers(), () => {
      if (this.membersRetry === ctrl) this.membersRetry = undefined;
    });
    this.membersRetry = ctrl;
  }

  /**
   * Marks the conversation read up to its newest message the device
   * holds, on all the user's devices: not the newer ones the server said
   * are there but that are still on their way (as the Go SDK's MarkRead).
   */
  async markRead(convId: string): Promise<void> {
    const conv = this.convs.get(convId);
    if (!conv) throw new Error(`ferry: unknown conversation ${convId}`);
    const read = this.spans.get(convId)?.top ?? 0;
    if (read === 0 || (read <= conv.read && (conv.unread === 0 || read < conv.head))) return;
    await this.commit(() => {
      const c = this.convs.get(convId)!;
      return { convs: [{ ...c, read: Math.max(c.read, read), unread: this.unreadAfter(c, read), readWanted: Math.max(c.readWanted ?? 0, read) }] };
    });
    this.reads.set(convId, Math.max(this.reads.get(convId) ?? 0, read));
    this.emit({ kind: "conversations", convId });
    await this.sendAcks().catch(() => {}); // retried on the next session
  }

  // unreadAfter is c's unread count once read up to read: none at its
  // head; short of it, the server's count less the other members' messages
  // the device holds up to read (the server says the exact count once it
  // has the read).
  private unreadAfter(c: ConvRecord, read: number): number {
    if (read >= c.head) return 0;
    const me = this.meta.session?.userId;
    const held = this.ops.get(c.id);
    let seen = 0;
    for (let seq = c.read + 1; seq <= read; seq++) {
      const r = held?.get(seq);
      if (!r) continue;
      const op = fromBinary(OpSchema, r.op);
      if (op.payload.case === "message" && op.userId !== me) seen++;
    }
    return Math.max(0, c.unread - seen);
  }

  // one enqueues a single op and returns its id.
  private async one(convId: string, payload: Payload): Promise<string> {
    const [id] = await this.enqueue(convId, [payload]);
    return id!;
  }

  // enqueue gives ops this device's next dots and stores them in the
  // outbox before returning; they are pushed when connected.
  private async enqueue(convId: string, payloads: Payload[], newTitle?: string): Promise<string[]> {
    const user = this.meta.session?.userId;
    // The checks run again in the write chain: a sign-in before it may
    // have changed what they saw.
    const check = () => {
      const s = this.meta.session;
      if (!s) throw new Error("ferry: not signed in");
      if (s.userId !== user) throw new Error("ferry: the device signed in as another user meanwhile; nothing was sent");
      const conv = this.convs.get(convId);
      if (!conv && newTitle === undefined) throw new Error(`ferry: unknown conversation ${convId}`);
      if (conv?.removed) throw new Error(`ferry: you are no longer a member of ${convId}`);
      return s;
    };
    check();
    for (const p of payloads) {
      const size = p?.case === "message" || p?.case === "edit" ? (p.value.body?.length ?? 0) : 0;
      if (size > this.maxBodyBytes) throw new Error(`ferry: the body is ${size} bytes, more than the server's limit of ${this.maxBodyBytes}`);
      checkPayload(p);
    }
    // Dots are given inside the write chain, so concurrent sends never
    // share one, with the device they count for (a sign-in as the same
    // user may have replaced it meanwhile).
    const ids: string[] = [];
    await this.commit(() => {
      const s = check();
      let dot = this.meta.dots[convId] ?? 0;
      const now = this.opts.now();
      const entries: OutboxEntry[] = [];
      for (const payload of payloads) {
        dot++;
        const id = this.opIds.next(now);
        const op = create(OpSchema, { id, deviceId: s.deviceId, dot: BigInt(dot), payload });
        entries.push({ convId, id, dot, op: toBinary(OpSchema, op), createdAt: now });
        ids.push(id);
      }
      const cur = this.convs.get(convId);
      const changedAt = this.changeTick();
      const rec: ConvRecord = cur
        ? { ...cur, changedAt }
        : { id: convId, title: newTitle ?? "", role: 0, removed: false, head: 0, unread: 0, delivered: 0, read: 0, memberCount: 1, receipts: [], changedAt };
      return { meta: { ...this.meta, dots: { ...this.meta.dots, [convId]: dot } }, outboxPut: entries, convs: [rec] };
    });
    this.setStatus({ pending: this.pendingCount() });
    this.emit({ kind: "messages", convId });
    this.emit({ kind: "conversations", convId });
    void this.flush();
    return ids;
  }

  // changeTick is the changedAt of a conversation that has activity now:
  // the time in ms, or one past the last given when that is later, so that
  // conversations moved together keep the order they moved in.
  private changeTick(): number {
    this.lastChange = Math.max(this.opts.now(), this.lastChange + 1);
    return this.lastChange;
  }

  // reservePlaces keeps n changedAt values above every conversation's, for
  // a catch-up's conversations; what moves later goes above them.
  private reservePlaces(n: number): { next: number; left: number; below: number } {
    this.catchUpFrom ??= this.lastChange;
    const below = this.lastChange;
    const first = this.changeTick();
    this.lastChange = first + Math.max(n, 1) - 1;
    return { next: this.lastChange, left: n, below };
  }

  // ---- the session ----

  private async loop(signal: AbortSignal): Promise<void> {
    this.attempt = 0;
    while (!signal.aborted) {
      let delay: number | undefined;
      const token = this.meta.session?.token; // the session's
      try {
        this.setStatus({ state: "connecting" });
        delay = await this.runSession(signal);
      } catch (err) {
        this.connected = false;
        if (signal.aborted) break;
        const ce = ConnectError.from(err);
        if (ce.code === Code.Unauthenticated && (this.revoking || this.leaving) && token === this.meta.session?.token) {
          // signOut revoked the device: the run ends with no failure to
          // report, offline, and signOut goes on to sign out.
          this.revokedQuietly = true;
          if (this.run?.ctrl.signal === signal) this.detachRun();
          this.setStatus({ state: "offline" });
          return;
        }
        this.setStatus({ lastError: ce.message });
        if (ce.code === Code.Unauthenticated && token !== this.meta.session?.token) {
          // The token refused is one a sign-in replaced meanwhile: the
          // next session goes with the new one.
        } else if (ce.code === Code.Unauthenticated || ce.code === Code.PermissionDenied) {
          // Terminal: the device was revoked or its token is wrong. The
          // run ends, so that start() tries again; a refused token is
          // noted, for login() to replace (if it is still the device's).
          if (ce.code === Code.Unauthenticated && token && token === this.meta.session?.token && !this.meta.refused) {
            await this.commit(() => ({ meta: { ...this.meta, refused: true } })).catch(() => {});
          }
          if (this.run?.ctrl.signal === signal) this.detachRun();
          this.setStatus({ state: "failed" });
          this.emit({ kind: "status" });
          return;
        }
      }
      this.connected = false;
      if (signal.aborted) break;
      this.setStatus({ state: "offline" });
      const attempt = this.attempt++;
      const wait = delay ?? this.backoff(attempt);
      const wake = new AbortController();
      this.wake = wake;
      await this.opts.sleep(wait, AbortSignal.any([signal, wake.signal])).catch(() => {});
      this.wake = undefined;
    }
  }

  // session runs one Subscribe session until it ends; it returns the delay
  // a Goaway asked for, if any.
  private async runSession(signal: AbortSignal): Promise<number | undefined> {
    // The session ends when the client stops, when the browser says it is
    // offline, or when the server has been silent for three heartbeat
    // intervals (a connection that died without a word); and however its
    // stream ends. Its end cancels what it started and still waits: a
    // push or an ack unanswered, a push's retry (the next session pushes
    // at its Welcome), an ack's wait.
    const session = new AbortController();
    const stopped = () => session.abort(signal.reason);
    signal.addEventListener("abort", stopped, { once: true });
    this.current = session;
    let silence: ReturnType<typeof setTimeout> | undefined;
    let heartbeatMs = 30_000;
    const heard = () => {
      clearTimeout(silence);
      silence = setTimeout(() => session.abort(new ConnectError("the server went silent", Code.Unavailable)), 3 * heartbeatMs);
    };
    try {
      heard();
      return await this.stream(AbortSignal.any([signal, session.signal]), (ms) => {
        if (ms > 0) heartbeatMs = ms;
        heard();
      }, () => clearTimeout(silence));
    } finally {
      clearTimeout(silence);
      signal.removeEventListener("abort", stopped);
      this.current = undefined;
      session.abort(new ConnectError("the session ended", Code.Canceled));
    }
  }

  // heard says the server spoke (a Welcome says its heartbeat interval);
  // hush stops listening for its silence, for work between messages that
  // waits on the client (a repair, which the server waits for).
  private async stream(signal: AbortSignal, heard: (heartbeatMs: number) => void, hush: () => void): Promise<number | undefined> {
    // Say what the device holds of every conversation it knows, even
    // nothing: the server's record of the device's position may be ahead of
    // the replica (after a restore on either side).
    const known = new Set([...this.convs.keys(), ...this.ops.keys()]);
    const cursors = [...known].map((id) => ({ conversationId: id, seq: BigInt(this.held(id)) }));
    // Packed batches: browsers read Connect streams uncompressed, and a
    // packed catch-up takes about 0.6 of the bytes of rows.
    const hello = create(HelloSchema, {
      epoch: this.meta.epoch,
      feedPos: BigInt(this.meta.feedPos),
      cursors,
      client: clientName,
      pageSize: this.opts.pageSize,
      packedOps: true,
    });
    let epoch = "";
    for await (const res of abortable(this.sync.subscribe({ hello }, { signal }), signal)) {
      const m = res.message;
      heard(m.case === "welcome" ? m.value.heartbeatIntervalMs : 0);
      switch (m.case) {
        case "welcome":
          epoch = m.value.epoch;
          this.connected = true;
          this.ackAttempt = 0;
          if (m.value.limits?.maxOpsPerPush) this.maxOpsPerPush = m.value.limits.maxOpsPerPush;
          if (m.value.limits?.maxBodyBytes) this.maxBodyBytes = m.value.limits.maxBodyBytes;
          if (m.value.limits?.maxMessageBytes) this.maxMessageBytes = m.value.limits.maxMessageBytes;
          this.setStatus({ state: "catching-up", missingOps: Number(m.value.missingOps), receivedOps: 0, lastError: undefined });
          if (this.meta.refused) {
            // The refusal was not for good (a proxy that dropped the
            // header, a server restored from a backup that knew the
            // device): the session is the device's again.
            await this.commit(() => ({ meta: { ...this.meta, refused: undefined } }));
          }
          this.places = this.reservePlaces(m.value.changedConversations);
          void this.flush();
          void this.sendAcks().catch(() => {});
          break;
        case "conversations":
          await this.takeConversations(m.value.conversations);
          break;
        case "ops":
          await this.takeOps(m.value);
          break;
        case "caughtUp": {
          const feedPos = m.value.feedPos.toString();
          await this.commit(() => ({ meta: { ...this.meta, epoch, feedPos } }));
          this.setStatus({ state: "live" });
          // A session that breaks from here starts its backoff over; one
          // that breaks before, however it ends, waits longer each time:
          // what fails right after the Welcome (a batch this client cannot
          // read, a replica write refused) fails the same way again.
          this.attempt = 0;
          this.membersAttempt = 0;
          this.places = null;
          this.catchUpFrom = null;
          void this.sendAcks().catch(() => {});
          void this.refreshMembers();
          break;
        }
        case "resetRequired": {
          // The server's store was replaced or restored: give it back this
          // user's ops it lost, then start over in the new history. The
          // repair's calls have their own timeouts: the stream may say
          // nothing meanwhile.
          hush();
          await this.repairAll();
          await this.commit(() => ({
            clear: true,
            meta: { ...emptyMeta(), session: this.meta.session, dots: this.meta.dots },
            // Keep knowing the conversations, so the next Hello asks for
            // all of each (cursor 0); the server then describes them anew.
            // Their positions, and reads not yet sent, were the old
            // history's seqs.
            convs: [...this.convs.values()].map(({ readWanted: _, ...c }) => ({ ...c, head: 0, read: 0, delivered: 0, unread: 0 })),
            outboxPut: [...this.outbox.values()],
          }));
          this.acked.clear();
          this.reads.clear();
          this.emit({ kind: "conversations" });
          return 0;
        }
        case "goaway":
          return m.value.reconnectAfterMs;
      }
    }
    return undefined;
  }

  // repairAll compares each conversation's version vector with the
  // server's (Repair), those the user left among them (the restored store
  // may have them a member still, and their leave is among the ops to give
  // back), and pushes back the ops of this user that the server lacks. A
  // conversation the restored server does not know, its creator's devices
  // create again with their user's ops; the others forget it until it
  // comes back so (their user's ops in it are lost). The replica's seqs
  // belong to the old history: the caller then forgets them and downloads
  // again.
  private async repairAll(): Promise<void> {
    const me = this.meta.session?.userId;
    if (!me) return;
    for (const [convId, ops] of this.ops) {
      const byDot = new Map<string, Map<number, Op>>();
      for (const r of ops.values()) {
        const op = fromBinary(OpSchema, r.op);
        const dots = byDot.get(op.deviceId) ?? new Map<number, Op>();
        byDot.set(op.deviceId, dots);
        dots.set(Number(op.dot), op);
      }
      const entries = [...byDot].map(([deviceId, dots]) => {
        let n = 0;
        while (dots.has(n + 1)) n++;
        return { deviceId, dot: BigInt(n) };
      });
      const account = this.account;
      const held: Op[] = [];
      let recreate = false;
      try {
        const res = await this.sync.repair({ conversationId: convId, vector: { entries } }, this.callOptions(this.current));
        for (const w of res.want) {
          for (let n = Number(w.fromDot); n <= Number(w.toDot); n++) {
            const op = byDot.get(w.deviceId)?.get(n);
            // Not held, not ours to vouch for, or of a kind this version
            // does not know (held without its payload): its device gives
            // it back.
            if (!op || op.userId !== me || op.payload.case === undefined) break;
            held.push(op);
          }
        }
      } catch (err) {
        if (ConnectError.from(err).code !== Code.NotFound) throw err;
        // The restored store is older than the conversation. Its creator
        // gives it back, create first, with every op of the user's held;
        // the other members' devices give theirs back if they repair after
        // that, and otherwise lose them.
        for (const dots of byDot.values()) {
          for (const op of dots.values()) if (op.userId === me) held.push(op);
        }
        held.sort((a, b) => Number(a.seq - b.seq));
        // An op of a kind this version does not know is held without its
        // payload: its device gives it back, and the ops of that device
        // after it, which would go in a dot gap.
        const newer = new Set<string>(); // devices
        for (let i = 0; i < held.length; i++) {
          if (held[i]!.payload.case === undefined) newer.add(held[i]!.deviceId);
          if (newer.has(held[i]!.deviceId)) held.splice(i--, 1);
        }
        if (held[0]?.payload.case !== "create") {
          console.warn(`ferry: repair: the server does not know conversation ${convId}, and this device holds no create of its user's to give it back with; forgetting it until it comes back`);
          if (account !== this.account) return;
          this.forget(convId);
          continue;
        }
        recreate = true;
        console.warn(`ferry: repair: the server does not know conversation ${convId}; creating it again with this user's ${held.length} ops`);
      }
      if (account !== this.account) return; // signed out meanwhile: these ops are not the next account's to push
      // In the order the ops had: the server lists the wanted ranges
      // device by device, and an op of one device may target another's (a
      // reaction to a message sent from the user's other device), which
      // must go first. Each device's dots keep their order.
      const push = held.sort((a, b) => Number(a.seq - b.seq))
        .map((op) => create(OpSchema, { id: op.id, deviceId: op.deviceId, dot: op.dot, payload: op.payload }));
      if (!(await this.giveBack(convId, push, recreate, account))) this.forget(convId);
    }
  }

  // giveBack pushes ops, of devices of the user, to a conversation in
  // their order: a repair's. It resolves false when the ops begin with the
  // conversation's create and the server refuses it.
  //
  // An op the server refuses takes no dot, so the same device's later ops,
  // numbered after it, would be refused as a dot gap and lost. Those go
  // again, a dot lower: in the dot the refused op left free, which another
  // device of the user can then no longer give it back in, even once its
  // target is back. Another device of the user may have done so first:
  // then the ops both hold are on the server under other dots (the server
  // answers op id conflicts for them), and the device's ops after those go
  // where the server stands. A dot gap after a hole in what this device
  // holds of a device renumbers nothing: the hole's ops may come from
  // another device.
  //
  // A piece pushed holds one device's ops: so none of another device's can
  // overtake the ops that go again, which would change what ops applied in
  // seq order (edits, reactions, roles) come to. That costs a push for each
  // run of one device's ops, and one more for each refused op: a repair is
  // rare, and the ops it gives back are one conversation's since the
  // backup.
  private async giveBack(convId: string, push: Op[], recreate: boolean, account: number): Promise<boolean> {
    const afterHole = new Set<string>(); // op ids
    const holed = new Set<string>(); // devices
    const last = new Map<string, bigint>(); // device -> its latest dot in push
    for (const op of push) {
      const prev = last.get(op.deviceId);
      if (prev !== undefined ? op.dot !== prev + 1n : recreate && op.dot !== 1n) holed.add(op.deviceId);
      if (holed.has(op.deviceId)) afterHole.add(op.id);
      last.set(op.deviceId, op.dot);
    }
    const renumbered = new Set<string>(); // devices whose dots here may not be the server's
    for (let rounds = 2 * push.length + 2; push.length > 0; rounds--) {
      if (account !== this.account) return true; // signed out meanwhile: not the next account's to push
      if (rounds === 0) { // only while another device of the user pushes too
        console.warn(`ferry: repair: ${push.length} ops of conversation ${convId} still refused as dot gaps after renumbering; giving them up`);
        break;
      }
      let run = 1;
      while (run < push.length && push[run]!.deviceId === push[0]!.deviceId) run++;
      const sizes = push.slice(0, Math.min(run, this.maxOpsPerPush + 1)).map((op) => toBinary(OpSchema, op).length);
      const n = pushPiece(sizes, this.maxOpsPerPush, this.maxMessageBytes - pushFraming);
      const r = await this.sync.push({ batches: [create(OpBatchSchema, { conversationId: convId, ops: push.slice(0, n) })] },
        this.callOptions(this.current, sizes.slice(0, n).reduce((a, b) => a + b, 0)));
      if (recreate && r.results[0]?.status === OpStatus.REJECTED) {
        // The create: the rest would be refused as not found.
        console.warn(`ferry: repair: the server refused to create conversation ${convId} again: ${r.results[0].message}; forgetting it`);
        return false;
      }
      recreate = false;
      let next = n;
      for (let i = 0; i < Math.min(n, r.results.length); i++) {
        const x = r.results[i]!;
        if (x.status !== OpStatus.REJECTED) continue;
        const op = push[i]!;
        const dev = op.deviceId;
        if (x.reason === RejectReason.OP_ID_CONFLICT) {
          // The user's other device gave it back first, under another
          // dot: it is there.
          renumbered.add(dev);
          continue;
        }
        if (x.reason === RejectReason.DOT_GAP && renumbered.has(dev) && !afterHole.has(op.id)) {
          // It and the rest go again, from where the server stands.
          const shift = op.dot - (x.serverDot + 1n);
          for (const o of push.slice(i)) if (o.deviceId === dev) o.dot -= shift;
          next = i;
          break;
        }
        console.warn(`ferry: repair: the server refused op ${x.opId} back: ${x.message}`);
        if (x.reason !== RejectReason.DOT_GAP && x.reason !== RejectReason.DOT_REUSED) renumbered.add(dev);
      }
      push = push.slice(next);
    }
    return true;
  }

  // forget drops, in a repair, a conversation the restored server does not
  // know: a marker for it would be refused as not found, and with it every
  // marker of the same ack. One with ops in the outbox stays, as one the
  // server has nothing of (no head to mark read): its create may be among
  // them, and the others' answers need it.
  private forget(convId: string): void {
    this.reads.delete(convId);
    const c = this.convs.get(convId);
    if (!c) return;
    for (const e of this.outbox.values()) {
      if (e.convId === convId) {
        const { readWanted: _, ...rest } = c;
        this.convs.set(convId, { ...rest, head: 0, read: 0, delivered: 0, unread: 0 });
        return;
      }
    }
    this.convs.delete(convId);
  }

  private async takeConversations(infos: ConversationInfo[]): Promise<void> {
    // The server describes them: it knows them now, and their member
    // lists are the user's to ask for (one refused before the server had
    // a conversation created here may be asked for again).
    for (const c of infos) this.membersGone.delete(c.id);
    let recs: ConvRecord[] = [];
    await this.commit(() => {
      // The infos come most recent first: the conversations they move (new,
      // with new ops, or the user removed; not markers) take changedAt in
      // that order, a catch-up's from the places kept for it, as do those a
      // catch-up cut off placed (above the rest of its own); not those live
      // rounds or sends moved, which the server's order, counting markers,
      // must not move.
      const moved = new Map<string, number>();
      const moves = (c: ConversationInfo) => {
        const before = this.convs.get(c.id);
        return !before || Number(c.head) > before.head || c.removed !== before.removed;
      };
      const places = this.places;
      for (const c of infos) {
        if (!places || places.left === 0) continue;
        const at = this.convs.get(c.id)?.changedAt ?? 0;
        const cut = this.catchUpFrom !== null && at > this.catchUpFrom && at <= places.below;
        if (!moves(c) && !cut) continue;
        moved.set(c.id, places.next--);
        places.left--;
      }
      for (let i = infos.length - 1; i >= 0; i--) {
        const c = infos[i]!;
        if (!moved.has(c.id) && moves(c)) moved.set(c.id, this.changeTick()); // live, or past the places kept
      }
      recs = infos.map((c): ConvRecord => {
        const before = this.convs.get(c.id);
        // A read the user set that the server has yet to take shows
        // until it does.
        const wanted = (before?.readWanted ?? 0) > Number(c.read) ? before!.readWanted! : 0;
        return {
          id: c.id,
          title: c.title,
          role: c.role,
          removed: c.removed,
          head: Number(c.head),
          unread: wanted >= Number(c.head) ? 0 : Number(c.unread),
          delivered: Number(c.delivered),
          read: Math.max(Number(c.read), wanted),
          memberCount: c.memberCount,
          receipts: c.receipts.map((r) => ({ userId: r.userId, delivered: Number(r.delivered), read: Number(r.read) })),
          noReceipts: c.noReceipts,
          ...(wanted ? { readWanted: wanted } : {}),
          changedAt: moved.get(c.id) ?? before!.changedAt,
        };
      });
      return { convs: recs };
    });
    this.emit({ kind: "conversations" });
    for (const r of recs) this.emit({ kind: "messages", convId: r.id });
  }

  private async takeOps(ops: Ops): Promise<void> {
    let recs: OpRecord[] = [];
    const live = this.st.state === "live";
    const batches = [...ops.batches, ...ops.packed.map((p, i) => unpackBatch(p, `ops.packed[${i}]`))];
    await this.commit(() => {
      recs = [];
      const mine: string[] = [];
      const fresh: Op[] = [];
      for (const b of batches) {
        for (const op of b.ops) {
          const seq = Number(op.seq);
          if (this.ops.get(b.conversationId)?.has(seq)) continue; // held already
          const rec = { convId: b.conversationId, seq, id: op.id, op: toBinary(OpSchema, op) };
          recs.push(rec);
          this.decoded.set(rec, op);
          fresh.push(op);
          this.membershipStored(b.conversationId, op);
          if (this.outbox.has(op.id)) mine.push(op.id);
        }
      }
      const erasures = this.erasing(recs, fresh);
      const change: Change = { ops: [...recs, ...erasures], outboxDelete: mine };
      if (ops.feedPos !== 0n && live) change.meta = { ...this.meta, feedPos: ops.feedPos.toString() };
      return change;
    });
    this.setStatus({ receivedOps: this.st.receivedOps + recs.length, pending: this.pendingCount() });
    for (const id of new Set(recs.map((r) => r.convId))) this.emit({ kind: "messages", convId: id });
    this.emit({ kind: "conversations" });
    void this.sendAcks().catch(() => {});
    if (live) void this.refreshMembers();
  }

  // flush pushes the outbox in dot order, one push at a time. Calls while a
  // flush runs make it look again before it stops.
  private flush(): Promise<void> {
    this.flushWanted = true;
    if (!this.flushing) {
      this.flushing = this.flushLoop().finally(() => {
        this.flushing = undefined;
        if (this.flushWanted && this.connected) void this.flush();
      });
    }
    return this.flushing;
  }

  private async flushLoop(): Promise<void> {
    while (this.flushWanted && this.connected) {
      this.flushWanted = false;
      for (;;) {
        const next = this.pushOrder([...this.outbox.values()].filter((e) => e.failed === undefined && !this.heldConvs.has(e.convId)));
        const session = this.current;
        // What a failed push held arrived meanwhile (its live echo, the
        // push having been stored after all): the failure is over.
        if (next.length === 0) this.pushRecovered();
        // A push that failed asked for a wait: what this one would push
        // goes as it ends (retryPush).
        if (next.length === 0 || !this.connected || !session || this.pushRetry?.session === session) break;
        // One conversation's ops, as many as a push takes: the server's
        // count, and its message size less room for the request's framing.
        const conv = next[0]!.convId;
        const same = next.filter((e) => e.convId === conv);
        const batch = same.slice(0, pushPiece(same.map((e) => e.op.length), this.maxOpsPerPush, this.maxMessageBytes - pushFraming));
        let res;
        const account = this.account;
        try {
          res = await this.sync.push(
            { batches: [create(OpBatchSchema, { conversationId: conv, ops: batch.map((e) => fromBinary(OpSchema, e.op)) })], retryLater: true },
            this.callOptions(session, batch.reduce((n, e) => n + e.op.length, 0)),
          );
        } catch (err) {
          // Pushes are idempotent, so a lost answer costs nothing: the
          // push goes again after a wait, or with the next session.
          const ce = ConnectError.from(err);
          this.setStatus({ lastError: ce.message });
          this.retryPush(ce);
          return;
        }
        if (account !== this.account) return; // answered for the account before a sign-out
        try {
          await this.takeResults(batch, res.results);
        } catch (err) {
          // The replica refused the write (its quota, a closed database):
          // the ops stay in the outbox, and the push goes again after a
          // backoff, the server answering DUPLICATE for those it took.
          const ce = new ConnectError(`the replica could not store a push's results: ${err instanceof Error ? err.message : String(err)}`, Code.Internal);
          this.setStatus({ lastError: ce.message });
          this.retryPush(ce);
          return;
        }
        // Ops the server cannot take for now stay in the outbox (RETRY_LATER):
        // those of a damaged conversation wait alone, the others with
        // every push, as a throttle's.
        const later = res.results.filter((r) => r.status === OpStatus.RETRY_LATER);
        const wait = Math.max(res.retryAfterMs, minPushWaitMs);
        if (later.length > 0 && later.every((r) => r.reason === RejectReason.CONVERSATION_DAMAGED)) {
          const reason = later.find((r) => r.message)?.message || `conversation ${conv} cannot take ops for now`;
          console.warn(`ferry: ${reason}; its ops wait, and go again in ${Math.round(wait / 1000)} s`);
          this.holdConversation(session, conv, wait, reason);
        } else if (later.length > 0) {
          const ce = new ConnectError(later.find((r) => r.message)?.message || "the server cannot take new ops for now", Code.Unavailable);
          this.setStatus({ lastError: ce.message });
          this.retryPush(ce, wait);
          return;
        }
        this.pushRecovered();
      }
    }
  }

  // holdConversation holds the pushes of a conversation's ops for wait ms
  // in the session: the server answered them RETRY_LATER, its store
  // damaged. The session's end ends the hold: the next one pushes them.
  // The status lists it meanwhile.
  private holdConversation(session: AbortController, convId: string, wait: number, reason: string): void {
    this.heldConvs.set(convId, { conversationId: convId, retryAt: this.opts.now() + wait, reason });
    this.setHeld();
    this.laterInSession(session, wait, () => void this.flush(), () => {
      this.heldConvs.delete(convId);
      this.setHeld();
    });
  }

  private setHeld(): void {
    const held = [...this.heldConvs.values()].sort((a, b) => (a.conversationId < b.conversationId ? -1 : a.conversationId > b.conversationId ? 1 : 0));
    this.setStatus({ held: held.length > 0 ? held : undefined });
  }

  // pushRecovered ends a run of failed pushes: the backoff starts over,
  // and the status no longer says the last failure.
  private pushRecovered(): void {
    if (this.pushAttempt === 0) return;
    this.pushAttempt = 0;
    this.setStatus({ lastError: undefined });
  }

  // retryPush pushes again after a push failed while the session stays
  // up (the server's disk nearly full, a throttle, a request lost on its
  // way): after the delay the server asked for (asked, with ops answered
  // RETRY_LATER; else a throttle's error's), else a backoff as the
  // reconnects' (minBackoffMs doubling up to maxBackoffMs, with equal
  // jitter). The session's end cancels it: the next one pushes at its
  // Welcome. An error that retrying cannot fix is the session's to say.
  private retryPush(err: ConnectError, asked?: number): void {
    const session = this.current;
    if (!session || session.signal.aborted || this.pushRetry?.session === session || terminalCodes.has(err.code)) return;
    const wait = asked ?? askedDelay(err) ?? this.backoff(this.pushAttempt);
    this.pushAttempt++;
    const ctrl = this.laterInSession(session, wait, () => void this.flush(), () => {
      if (this.pushRetry?.ctrl === ctrl) this.pushRetry = undefined;
    });
    this.pushRetry = { ctrl, session };
  }

  // laterInSession runs again after wait ms, if session is still the
  // current one and connected: the session's end, or an abort of the
  // controller it returns, cancels it. over runs once the wait is over,
  // whichever way it ended, before again.
  private laterInSession(session: AbortController, wait: number, again: () => void, over: () => void): AbortController {
    const ctrl = new AbortController();
    this.opts.sleep(wait, AbortSignal.any([session.signal, ctrl.signal])).then(() => {
      over();
      if (this.connected && this.current === session) again();
    }, over);
    return ctrl;
  }

  // callOptions are those of a call a session makes (a push, an ack, a
  // repair's): cancelled with the session, or when callTimeoutMs pass
  // without an answer, and a second more for each uploadBytesPerSecond of
  // the request (bytes), which a slow uplink takes to send: a push of 4
  // MiB gets two minutes more. A repair cancelled so runs again in the
  // next session, as its ResetRequired comes again.
  private callOptions(session: AbortController | undefined, bytes = 0): { signal?: AbortSignal; timeoutMs: number } {
    return { signal: session?.signal, timeoutMs: this.opts.callTimeoutMs + Math.ceil(bytes / uploadBytesPerSecond) * 1000 };
  }

  // backoff is the wait before the next try after attempt failed ones in
  // a row: minBackoffMs doubling up to maxBackoffMs, with equal jitter.
  private backoff(attempt: number): number {
    const base = Math.min(this.opts.maxBackoffMs, this.opts.minBackoffMs * 2 ** Math.min(attempt, 16));
    return base / 2 + this.opts.random() * (base / 2);
  }

  // pushOrder sorts pending ops as they go out: by conversation, each
  // device's in dot order, and the ops of a device a sign-in replaced
  // (resignedIn), all written before it, ahead of the current device's;
  // two such devices in the order of their first ops.
  private pushOrder(entries: OutboxEntry[]): OutboxEntry[] {
    const me = this.meta.session?.deviceId;
    const first = new Map<string, number>(); // conv and device -> its first op's createdAt
    for (const e of entries) {
      const d = this.deviceOf(e);
      if (d !== me) {
        const k = `${e.convId}/${d}`;
        first.set(k, Math.min(first.get(k) ?? Infinity, e.createdAt));
      }
    }
    const rank = (e: OutboxEntry) => {
      const d = this.deviceOf(e);
      return d === me ? Infinity : first.get(`${e.convId}/${d}`)!;
    };
    return entries.sort((a, b) => a.convId.localeCompare(b.convId) || rank(a) - rank(b) ||
      this.deviceOf(a).localeCompare(this.deviceOf(b)) || a.dot - b.dot);
  }

  // deviceOf is the device an outbox entry's op counts its dot for,
  // decoded once for each entry (an entry put again is a new object).
  private deviceOf(e: OutboxEntry): string {
    let d = this.entryDevices.get(e);
    if (d === undefined) {
      d = fromBinary(OpSchema, e.op).deviceId;
      this.entryDevices.set(e, d);
    }
    return d;
  }

  // takeResults handles a push's answers: accepted ops leave the outbox and
  // join the replica; ops refused for good stay in it, failed, and the
  // device's later ops in their conversation are numbered again from their
  // dot (the server numbers a device's ops without gaps, and a refused op
  // takes none); dot errors number them again from where the server stands.
  private async takeResults(batch: OutboxEntry[], results: Pick<OpResult, "opId" | "status" | "seq" | "reason" | "message" | "serverDot">[]): Promise<void> {
    await this.commit(() => {
      const me = this.meta.session!;
      const change: Change = { ops: [], outboxDelete: [], outboxPut: [] };
      // A device's dots count in each conversation for its own ops; the
      // outbox may hold a refused device's ops too, after a sign-in that
      // replaced it (resignedIn), numbered apart.
      const renumber = new Map<string, { convId: string; device: string; first: number }>(); // by conv and device: the first dot to give their pending ops
      const lower = (e: OutboxEntry, dot: number) => {
        const device = this.deviceOf(e);
        const k = `${e.convId}/${device}`;
        renumber.set(k, { convId: e.convId, device, first: Math.min(renumber.get(k)?.first ?? Infinity, dot) });
      };
      const settled = new Set<string>(); // entries no longer pending
      const stored: Op[] = []; // change.ops, decoded
      for (const r of results) {
        const e = this.outbox.get(r.opId) ?? batch.find((x) => x.id === r.opId);
        if (!e) continue;
        if (r.status === OpStatus.ACCEPTED || r.status === OpStatus.DUPLICATE) {
          settled.add(e.id);
          if (!this.outbox.has(e.id) || this.ops.get(e.convId)?.has(Number(r.seq))) {
            // Its live echo stored it first, and a delete since may have
            // erased it: the outbox's copy, with its body, must not
            // replace it (the Go SDK skips it too).
            if (this.outbox.has(e.id)) change.outboxDelete!.push(e.id);
            continue;
          }
          const op = fromBinary(OpSchema, e.op);
          op.seq = r.seq;
          op.userId = me.userId;
          // Its message's delete came first (another member's, over a
          // push answered late): the server erased it, and so does the
          // replica (the Go SDK does too). A delete held is indexed once
          // one arrived; over a push sent again (DUPLICATE), one held
          // from before a reload may be.
          const p = op.payload;
          const target = p.case === "message" ? e.id : p.case === "edit" ? p.value.targetId : undefined;
          const idx = r.status === OpStatus.DUPLICATE ? this.deletableIndex(e.convId) : this.deletable.get(e.convId);
          if (target !== undefined && idx?.deleted.has(target) && (p.case === "message" || p.case === "edit")) {
            p.value.body = new Uint8Array();
            p.value.contentType = "";
            op.erased = true;
          }
          const rec = { convId: e.convId, seq: Number(r.seq), id: e.id, op: toBinary(OpSchema, op) };
          change.ops!.push(rec);
          this.decoded.set(rec, op);
          stored.push(op);
          this.membershipStored(e.convId, op);
          change.outboxDelete!.push(e.id);
        } else if (r.status === OpStatus.REJECTED && (r.reason === RejectReason.DOT_GAP || r.reason === RejectReason.DOT_REUSED)) {
          lower(e, Number(r.serverDot) + 1);
        } else if (r.status === OpStatus.REJECTED) {
          change.outboxPut!.push({ ...e, failed: r.message || "rejected by the server" });
          settled.add(e.id);
          lower(e, e.dot);
        }
      }
      for (const { convId, device, first } of renumber.values()) {
        let dot = first;
        const pending = [...this.outbox.values()]
          .filter((x) => x.convId === convId && x.failed === undefined && !settled.has(x.id) && this.deviceOf(x) === device)
          .sort((a, b) => a.dot - b.dot);
        for (const x of pending) {
          const op = fromBinary(OpSchema, x.op);
          op.dot = BigInt(dot);
          change.outboxPut!.push({ ...x, dot, op: toBinary(OpSchema, op) });
          dot++;
        }
        if (device === me.deviceId) {
          const meta = change.meta ?? this.meta;
          change.meta = { ...meta, dots: { ...meta.dots, [convId]: dot - 1 } };
        }
      }
      change.ops!.push(...this.erasing(change.ops!, stored));
      return change;
    });
    this.setStatus({ pending: this.pendingCount() });
    for (const id of new Set(batch.map((e) => e.convId))) {
      this.emit({ kind: "messages", convId: id });
      this.emit({ kind: "conversations", convId: id }); // the list shows the last message's status
    }
    void this.refreshMembers();
  }

  // membershipStored notes an op about to be stored: one that changes the
  // membership makes the conversation's member list, held or being
  // fetched, stale: it is fetched again (refreshMembers).
  private membershipStored(convId: string, op: Op): void {
    switch (op.payload.case) {
      case "memberAdd":
      case "memberRemove":
      case "memberRole":
        this.memberChanges.set(convId, (this.memberChanges.get(convId) ?? 0) + 1);
        if (this.memberLists.has(convId) || this.membersFetching.has(convId) || this.membersGone.delete(convId)) this.membersDue.add(convId);
    }
  }

  // sendAcks sends delivered markers for what the device holds and read
  // markers not yet sent. A read goes at once; delivered markers wait:
  // those that other members see as receipts ackDelayMs, those of
  // conversations without receipts resumeAckDelayMs (or they go with the
  // next ack that goes sooner).
  private async sendAcks(): Promise<void> {
    if (this.acking || !this.connected) return;
    this.acking = true;
    try {
      for (;;) {
        const markers = [];
        let now = this.ackDue;
        let soon = false;
        for (const id of new Set([...this.ops.keys(), ...this.reads.keys()])) {
          const delivered = this.held(id);
          const read = this.reads.get(id) ?? 0;
          const moved = delivered > (this.acked.get(id) ?? 0);
          if (moved || read > 0) {
            markers.push({ conversationId: id, delivered: BigInt(delivered), read: BigInt(read) });
            now ||= read > 0;
            soon ||= moved && this.convs.get(id)?.noReceipts !== true;
          }
        }
        if (markers.length === 0) {
          this.ackDue = false;
          return;
        }
        if (!now && (!soon || this.opts.ackDelayMs > 0)) {
          this.ackLater(soon ? this.opts.ackDelayMs : this.opts.resumeAckDelayMs);
          return;
        }
        this.ackDue = false;
        const account = this.account;
        // In acks the server takes: at most as many markers as ops in a
        // push (it refuses more, whole).
        for (let i = 0; i < markers.length; i += this.maxOpsPerPush) {
          const piece = markers.slice(i, i + this.maxOpsPerPush);
          const session = this.current;
          if (!session) return; // the next session acks what the device holds
          try {
            await this.sync.ack({ markers: piece }, this.callOptions(session));
          } catch (err) {
            // What the device holds goes again after a backoff, as a
            // failed push does, or with the next session.
            const ce = ConnectError.from(err);
            if (this.current === session && !session.signal.aborted && !terminalCodes.has(ce.code) && ce.code !== Code.NotFound) {
              this.ackLater(askedDelay(ce) ?? this.backoff(this.ackAttempt++));
            }
            throw err;
          }
          this.ackAttempt = 0;
          if (account !== this.account) return; // the markers were the account's before a sign-out
          const taken: ConvRecord[] = [];
          for (const m of piece) {
            this.acked.set(m.conversationId, Math.max(this.acked.get(m.conversationId) ?? 0, Number(m.delivered)));
            if ((this.reads.get(m.conversationId) ?? 0) <= Number(m.read)) this.reads.delete(m.conversationId);
            const c = this.convs.get(m.conversationId);
            if (c?.readWanted !== undefined && c.readWanted <= Number(m.read)) taken.push(c);
          }
          if (taken.length > 0) {
            // The server has the reads: none waits across a reload.
            await this.commit(() => ({
              convs: taken.flatMap((t) => {
                const c = this.convs.get(t.id);
                if (!c || (c.readWanted ?? 0) > t.readWanted!) return []; // gone, or read further meanwhile
                const { readWanted: _, ...rest } = c;
                return [rest];
              }),
            }));
          }
        }
      }
    } finally {
      this.acking = false;
    }
  }

  // ackLater sends the waiting markers after ms, unless a wait that ends
  // sooner runs; a wait that would end later gives way to this one. The
  // end of the session or of the run (stop) ends the wait: the next
  // session acks what the device holds.
  private ackLater(ms: number): void {
    const due = this.opts.now() + ms;
    if (this.ackWait && this.ackWait.due <= due) return;
    this.ackWait?.ctrl.abort();
    const wait = { due, ctrl: new AbortController() };
    this.ackWait = wait;
    const ends = [this.current?.signal, this.run?.ctrl.signal].filter((s) => s !== undefined);
    const end = () => wait.ctrl.abort();
    for (const s of ends) {
      if (s.aborted) end();
      s.addEventListener("abort", end, { once: true });
    }
    void this.opts
      .sleep(ms, wait.ctrl.signal)
      .then(() => {
        if (this.ackWait !== wait || wait.ctrl.signal.aborted) return;
        this.ackWait = undefined;
        this.ackDue = true; // read by the sendAcks loop running now, if one is
        return this.sendAcks();
      })
      .catch(() => {})
      .finally(() => {
        if (this.ackWait === wait) this.ackWait = undefined;
        for (const s of ends) s.removeEventListener("abort", end);
      });
  }

  // erasing gives the records that the deletes among a change's ops
  // (recs, and the same ops decoded) erase, as the server erased them: the
  // deleted message and its edits, without their bodies and marked erased,
  // so that the replica keeps no text a sender deleted for everyone (the
  // Go SDK's eraseLocal). A target among recs is erased in place.
  private erasing(recs: OpRecord[], ops: Op[]): OpRecord[] {
    if (!ops.some((op) => op.payload.case === "delete")) return [];
    const at = new Map<string, number[]>(); // conv/id, and conv/target of edits -> positions in recs
    const add = (k: string, i: number) => {
      const l = at.get(k);
      if (l) l.push(i);
      else at.set(k, [i]);
    };
    ops.forEach((op, i) => {
      add(`${recs[i]!.convId}/${recs[i]!.id}`, i);
      if (op.payload.case === "edit") add(`${recs[i]!.convId}/${op.payload.value.targetId}`, i);
    });
    const out: OpRecord[] = [];
    ops.forEach((op, i) => {
      if (op.payload.case !== "delete") return;
      const { convId } = recs[i]!;
      const target = op.payload.value.targetId;
      for (const j of at.get(`${convId}/${target}`) ?? []) recs[j] = erased(recs[j]!) ?? recs[j]!;
      const idx = this.deletableIndex(convId);
      for (const seq of [idx.seqOf.get(target), ...(idx.edits.get(target) ?? [])]) {
        const rec = seq === undefined ? undefined : this.ops.get(convId)?.get(seq);
        const e = rec && erased(rec);
        if (e) out.push(e);
      }
    });
    return out;
  }

  // deletableIndex is a conversation's index of ids and edits, built from
  // what the device holds on the first delete that needs it.
  private deletableIndex(convId: string): DeleteIndex {
    let idx = this.deletable.get(convId);
    if (!idx) {
      idx = { seqOf: new Map(), edits: new Map(), deleted: new Set() };
      this.deletable.set(convId, idx);
      for (const r of this.ops.get(convId)?.values() ?? []) indexOp(idx, r);
    }
    return idx;
  }

  // ---- plumbing ----

  private storeOp(op: OpRecord): void {
    let m = this.ops.get(op.convId);
    if (!m) this.ops.set(op.convId, (m = new Map()));
    const idx = this.deletable.get(op.convId);
    if (idx && !m.has(op.seq)) indexOp(idx, op, this.decoded.get(op));
    m.set(op.seq, op);
    const span = this.spans.get(op.convId);
    if (span) span.top = Math.max(span.top, op.seq);
    else this.spans.set(op.convId, { held: 0, top: op.seq });
  }

  private pendingCount(): number {
    let n = 0;
    for (const e of this.outbox.values()) if (e.failed === undefined) n++;
    return n;
  }

  // commit runs make when the previous changes are written and applied,
  // writes its change durably, then applies it in memory: changes are
  // built from the state they follow, in call order.
  private commit(make: () => Change): Promise<void> {
    const p = this.writes.then(async () => {
      const change = make();
      await this.replica.apply(change);
      this.applyInMemory(change);
    });
    this.writes = p.catch(() => {});
    return p;
  }

  // changed forgets what the client made of a conversation that changed.
  private changed(convId: string): void {
    this.folded.delete(convId);
    this.tails.delete(convId);
  }

  private applyInMemory(c: Change): void {
    if (c.clear || (c.meta && c.meta.session?.userId !== this.meta.session?.userId)) {
      // Another account's: the people it knew are not this one's to see.
      this.names.clear();
      this.memberLists.clear();
      this.membersDue.clear();
      this.membersGone.clear();
      this.membersFetching.clear();
      this.memberChanges.clear();
      this.folded.clear();
      this.tails.clear();
      this.foldings.clear();
      this.unfolded.clear();
    }
    for (const conv of c.convs ?? []) this.changed(conv.id);
    for (const op of c.ops ?? []) {
      this.changed(op.convId);
      if (!this.foldings.has(op.convId)) continue;
      const q = this.unfolded.get(op.convId);
      if (q) q.push(op.seq);
      else this.unfolded.set(op.convId, [op.seq]);
    }
    for (const e of c.outboxPut ?? []) this.changed(e.convId);
    for (const id of c.outboxDelete ?? []) {
      const e = this.outbox.get(id);
      if (e) this.changed(e.convId);
    }
    if (c.clear) {
      this.convs.clear();
      this.ops.clear();
      this.deletable.clear();
      this.spans.clear();
      this.outbox.clear();
    }
    if (c.meta) this.meta = c.meta;
    for (const conv of c.convs ?? []) this.convs.set(conv.id, conv);
    for (const op of c.ops ?? []) this.storeOp(op);
    for (const id of c.outboxDelete ?? []) this.outbox.delete(id);
    for (const e of c.outboxPut ?? []) this.outbox.set(e.id, e);
  }

  private setStatus(s: Partial<Status>): void {
    const before = JSON.stringify(this.st);
    this.st = { ...this.st, ...s };
    // A replica lost stays the status's last word, whatever ends after it.
    if (this.lost) this.st = { ...this.st, state: "failed", lastError: this.lost.message };
    if (JSON.stringify(this.st) !== before) this.emit({ kind: "status" });
  }

  private emit(e: ClientEvent): void {
    for (const l of [...this.listeners]) {
      try {
        l(e);
      } catch (err) {
        console.error("ferry: a listener failed", err);
      }
    }
  }
}

const encoder = new TextEncoder();

// copyView is the caller's own copy of a folded message: the fold is kept
// for the next call.
function copyView(m: MessageView): MessageView {
  return structuredClone(m);
}

// abortable ends an iteration as soon as signal aborts. An aborted fetch
// stream may otherwise only notice at its next chunk: a heartbeat, up to 30
// seconds later.
async function* abortable<T>(it: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const iter = it[Symbol.asyncIterator]();
  let onAbort = () => {};
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
  });
  aborted.catch(() => {}); // observed through the race below
  try {
    for (;;) {
      const r = await Promise.race([iter.next(), aborted]);
      if (r.done) return;
      yield r.value;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
    void iter.return?.()?.catch(() => {});
  }
}

// stopAckMs bounds the ack that stop sends.
const stopAckMs = 2000;

// within resolves when p does, or after ms.
async function within(ms: number, p: Promise<void>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([p, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
  clearTimeout(timer);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
}

// DeleteIndex is a conversation's messages' seqs by id, and its edits'
// seqs by the message they edit: what a delete erases.
interface DeleteIndex {
  seqOf: Map<string, number>;
  edits: Map<string, number[]>;
  /** The messages whose delete is held. */
  deleted: Set<string>;
}

// indexOp adds a held op (decoded: op, when at hand) to a conversation's
// index of messages and edits.
function indexOp(idx: DeleteIndex, r: OpRecord, op = fromBinary(OpSchema, r.op)): void {
  if (op.payload.case === "message") idx.seqOf.set(r.id, r.seq);
  if (op.payload.case === "delete") idx.deleted.add(op.payload.value.targetId);
  if (op.payload.case !== "edit") return;
  const seqs = idx.edits.get(op.payload.value.targetId);
  if (seqs) seqs.push(r.seq);
  else idx.edits.set(op.payload.value.targetId, [r.seq]);
}

// erased is r with its body gone and marked erased, as the server keeps a
// deleted message and its edits; undefined when r has nothing to erase.
function erased(r: OpRecord): OpRecord | undefined {
  const op = fromBinary(OpSchema, r.op);
  if (op.erased || (op.payload.case !== "message" && op.payload.case !== "edit")) return undefined;
  op.payload.value.body = new Uint8Array();
  op.payload.value.contentType = "";
  op.erased = true;
  return { ...r, op: toBinary(OpSchema, op) };
}
