// Derived state: a conversation's messages folded from its ops, the way the
// Go SDK folds them. Edits replace a body (the highest seq wins), a delete
// wins over every edit, reactions are a set per user and key. Ops still in
// the outbox are folded after the stored ones, so a pending edit shows.

import type { Op } from "./gen/ferry/v1/op_pb.js";

/** Where an op of this device stands. */
export type SendStatus = "pending" | "sent" | "delivered" | "read" | "failed";

/** A message as an application shows it. */
export interface MessageView {
  id: string;
  convId: string;
  /** The server's seq; 0 while pending. */
  seq: number;
  userId: string;
  /**
   * The author's username, once the device knows it (FerryClient fills it
   * in: the user's own, and members' once their conversations' member
   * lists were fetched).
   */
  authorName?: string;
  /** The author's display name, once the device knows it (as authorName). */
  authorDisplayName?: string;
  deviceId: string;
  text: string;
  contentType: string;
  edited: boolean;
  deleted: boolean;
  /** Reaction key -> users who reacted with it. */
  reactions: Record<string, string[]>;
  /** The author's clock when the message was written (from its id). */
  time: Date;
  /** Set for messages of the signed-in user. */
  status?: SendStatus;
  /** Why the server refused it, when status is "failed". */
  error?: string;
}

/** An op to fold: stored (seq > 0) or pending (seq 0). */
export interface FoldInput {
  seq: number;
  op: Op;
  failed?: string;
}

/** Receipts of the other members: the lowest positions decide the status. */
export interface StatusInput {
  userId: string;
  /** Other members' delivered and read positions. */
  receipts: { delivered: number; read: number }[];
}

const decoder = new TextDecoder();

/** Returns the messages of one conversation in log order, pending last. */
export function fold(convId: string, ops: FoldInput[], me?: StatusInput): MessageView[] {
  const f = new Folding(convId);
  for (const { seq, op } of ops) if (seq > 0) f.add(seq, op);
  return f.view(
    ops.filter((o) => o.seq === 0),
    me,
  );
}

/**
 * Folding folds a conversation's stored ops as they arrive, in any order,
 * and keeps what they made: a message that arrives costs itself, not the
 * history (an older page after a newer one too, as in a catch-up). It
 * keeps, for each message id, the message and the ops that target it, each
 * with its seq, and folds them as folding in seq order would: an edit
 * counts between the message and its first delete, the highest such edit's
 * body wins, and each user's last reaction op per key decides. view lays
 * the ops still in the outbox over copies of the messages they touch, and
 * sets the user's statuses.
 */
export class Folding {
  private readonly targets = new Map<string, Target>(); // message id -> what targets it
  private readonly stored = new Set<number>(); // the seqs added
  private readonly order: MessageView[] = []; // the stored messages, in seq order once sorted
  private sorted = true;
  private readonly dirty = new Set<Target>(); // to fold again before the next view
  // The statuses set: for whom and which receipts, up to which message.
  private statusKey = "";
  private statusDone = 0;

  constructor(readonly convId: string) {}

  /**
   * Folds a stored op, at any seq. An op stored again at its seq is the
   * same op, but for a message erased since, which replaces the one before.
   */
  add(seq: number, op: Op): void {
    const again = this.stored.has(seq);
    this.stored.add(seq);
    const id = targetOf(op);
    if (id === undefined) return;
    const p = op.payload;
    if (again && p.case !== "message") {
      // An edit stored again erased: its message was deleted.
      if (p.case === "edit" && op.erased) this.erasedEdit(this.target(id));
      return;
    }
    const t = this.target(id);
    switch (p.case) {
      case "message":
        t.message = { seq, op };
        if (!t.view) {
          t.view = messageView(this.convId, seq, op, undefined);
          const last = this.order[this.order.length - 1];
          this.order.push(t.view);
          if (last && last.seq > seq) this.sorted = false;
          if (!t.edits && !t.deletes && !t.reactions) return; // folded as made
        }
        break;
      case "edit":
        (t.edits ??= []).push({ seq, body: p.value.body, contentType: p.value.contentType });
        if (op.erased) t.erased = true;
        break;
      case "delete":
        (t.deletes ??= []).push(seq);
        break;
      case "reactionAdd":
      case "reactionRemove": {
        t.reactions ??= new Map();
        const users = t.reactions.get(p.value.key) ?? new Map<string, { seq: number; on: boolean }[]>();
        t.reactions.set(p.value.key, users);
        const ops = users.get(op.userId) ?? [];
        users.set(op.userId, ops);
        ops.push({ seq, on: p.case === "reactionAdd" });
        break;
      }
    }
    this.dirty.add(t);
  }

  // erasedEdit notes that an edit of t's message arrived erased.
  private erasedEdit(t: Target): void {
    if (t.erased) return;
    t.erased = true;
    this.dirty.add(t);
  }

  private target(id: string): Target {
    let t = this.targets.get(id);
    if (!t) this.targets.set(id, (t = {}));
    return t;
  }

  /**
   * The conversation's messages: the stored ones in seq order, then those
   * of the pending ops (in outbox order), with pending edits, deletes and
   * reactions shown; and, given me (the same user on every view of a
   * Folding), the status of the user's own. The array is the caller's; its
   * stored messages are shared with later views, which change them.
   */
  view(pending: { op: Op; failed?: string }[], me?: StatusInput): MessageView[] {
    this.settle();
    if (me) this.setStatuses(me);
    const out = this.order.slice();
    if (pending.length === 0) return out;
    const copies = new Map<string, MessageView>(); // in out, the view's own
    const find = (id: string): MessageView | undefined => {
      let m = copies.get(id);
      if (m) return m;
      const stored = this.targets.get(id)?.view;
      if (!stored) return undefined;
      const i = this.indexOf(stored.seq);
      m = { ...out[i]!, reactions: { ...out[i]!.reactions } };
      out[i] = m;
      copies.set(id, m);
      return m;
    };
    const users = new Map<string, Map<string, Set<string>>>(); // the view's reactions: target -> key -> users
    const usersOf = (id: string) => {
      let byKey = users.get(id);
      if (!byKey) users.set(id, (byKey = reactionSets(this.targets.get(id))));
      return byKey;
    };
    for (const { op, failed } of pending) {
      const p = op.payload;
      switch (p.case) {
        case "message": {
          const m = messageView(this.convId, 0, op, failed);
          // Deleted already, by another member, before its push's answer
          // came (a lost answer, the push sent again): as in the Go SDK.
          const t = this.targets.get(op.id);
          if (t?.erased || t?.deletes?.length) Object.assign(m, { deleted: true, text: "", contentType: "" });
          if (!m.deleted) for (const [key, who] of usersOf(op.id)) if (who.size > 0) m.reactions[key] = [...who].sort();
          if (me) m.status = failed !== undefined ? "failed" : "pending";
          copies.set(m.id, m);
          out.push(m);
          break;
        }
        case "edit": {
          const m = find(p.value.targetId);
          if (m && !m.deleted) {
            m.text = decoder.decode(p.value.body);
            m.contentType = p.value.contentType;
            m.edited = true;
          }
          break;
        }
        case "delete": {
          const m = find(p.value.targetId);
          if (m) {
            m.deleted = true;
            m.text = "";
            m.contentType = "";
            m.edited = false;
            m.reactions = {};
          }
          break;
        }
        case "reactionAdd":
        case "reactionRemove": {
          const byKey = usersOf(p.value.targetId);
          const who = byKey.get(p.value.key) ?? new Set<string>();
          byKey.set(p.value.key, who);
          if (p.case === "reactionAdd") who.add(op.userId);
          else who.delete(op.userId);
          const m = find(p.value.targetId);
          if (m && !m.deleted) {
            if (who.size > 0) m.reactions[p.value.key] = [...who].sort();
            else delete m.reactions[p.value.key];
          }
          break;
        }
      }
    }
    return out;
  }

  // settle folds again the messages whose ops changed, and puts the
  // stored messages in seq order.
  private settle(): void {
    for (const t of this.dirty) if (t.view) refold(t, t.view);
    this.dirty.clear();
    if (!this.sorted) {
      this.order.sort((a, b) => a.seq - b.seq);
      this.sorted = true;
      this.statusDone = 0;
    }
  }

  // indexOf finds the stored message at seq in order (sorted).
  private indexOf(seq: number): number {
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.order[mid]!.seq < seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  // setStatuses sets the status of the user's stored messages from the
  // other members' receipts: all of them when the receipts moved or the
  // order changed, else those added since the last view.
  private setStatuses(me: StatusInput): void {
    const delivered = me.receipts.length ? Math.min(...me.receipts.map((r) => r.delivered)) : 0;
    const read = me.receipts.length ? Math.min(...me.receipts.map((r) => r.read)) : 0;
    const key = `${me.userId} ${me.receipts.length > 0} ${delivered} ${read}`;
    if (key !== this.statusKey) {
      this.statusKey = key;
      this.statusDone = 0;
    }
    for (; this.statusDone < this.order.length; this.statusDone++) {
      const m = this.order[this.statusDone]!;
      if (m.userId !== me.userId && m.userId !== "") continue;
      if (me.receipts.length > 0 && read >= m.seq) m.status = "read";
      else if (me.receipts.length > 0 && delivered >= m.seq) m.status = "delivered";
      else m.status = "sent";
    }
  }
}

// Target is what the stored ops say of one message id.
interface Target {
  message?: { seq: number; op: Op };
  edits?: { seq: number; body: Uint8Array; contentType: string }[];
  deletes?: number[];
  /**
   * An edit of the message arrived erased: the server erases edits only
   * when it deletes their message, so it is deleted, whether its delete
   * is held yet or not (as in the Go SDK).
   */
  erased?: boolean;
  reactions?: Map<string, Map<string, { seq: number; on: boolean }[]>>; // key -> user -> their ops
  view?: MessageView; // the folded message, once there is one
}

// targetOf is the message id an op is about: its own for a message.
function targetOf(op: Op): string | undefined {
  const p = op.payload;
  switch (p.case) {
    case "message":
      return op.id;
    case "edit":
    case "delete":
    case "reactionAdd":
    case "reactionRemove":
      return p.value.targetId;
  }
  return undefined;
}

function messageView(convId: string, seq: number, op: Op, failed: string | undefined): MessageView {
  const body = op.payload.case === "message" ? op.payload.value : undefined;
  const m: MessageView = {
    id: op.id,
    convId,
    seq,
    userId: op.userId,
    deviceId: op.deviceId,
    text: op.erased ? "" : decoder.decode(body?.body), // the server erased it: deleted
    contentType: op.erased ? "" : (body?.contentType ?? ""), // as sent, empty too, as in the Go SDK
    edited: false,
    deleted: op.erased,
    reactions: {},
    time: new Date(ulidTime(op.id)),
  };
  if (failed !== undefined) m.error = failed;
  return m;
}

// none is the body of an edit whose message is deleted.
const none = new Uint8Array(0);

// refold sets m from t's message and the ops that target it, as folding
// them in seq order would; m keeps its status.
function refold(t: Target, m: MessageView): void {
  const { seq, op } = t.message!;
  const fresh = messageView(m.convId, seq, op, undefined);
  // Ops before their target, in seq order, found no message to change.
  let deleted = Infinity;
  for (const d of t.deletes ?? []) if (d > seq) deleted = Math.min(deleted, d);
  if (t.erased) deleted = -Infinity; // an erased edit says it was deleted
  let edit: { seq: number; body: Uint8Array; contentType: string } | undefined;
  if (!fresh.deleted) {
    for (const e of t.edits ?? []) if (e.seq > seq && e.seq < deleted && (!edit || e.seq > edit.seq)) edit = e;
  }
  if (edit) {
    fresh.text = decoder.decode(edit.body);
    fresh.contentType = edit.contentType;
    fresh.edited = true;
  }
  if (deleted < Infinity || fresh.deleted) {
    // A delete is for good: the edits' bodies go from memory, as the
    // replica erases them.
    fresh.deleted = true;
    for (const e of t.edits ?? []) e.body = none;
  }
  if (fresh.deleted) {
    // Deleted for everyone: no text, content type, edits or reactions, as
    // in the Go SDK.
    fresh.text = "";
    fresh.contentType = "";
    fresh.edited = false;
  } else {
    for (const [key, who] of reactionSets(t)) if (who.size > 0) fresh.reactions[key] = [...who].sort();
  }
  Object.assign(m, fresh); // fresh has no status: m keeps its own
}

// reactionSets are the users of each reaction key whose last op on it added
// it.
function reactionSets(t: Target | undefined): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const [key, users] of t?.reactions ?? []) {
    const who = new Set<string>();
    for (const [user, ops] of users) {
      let last: { seq: number; on: boolean } | undefined;
      for (const r of ops) if (!last || r.seq > last.seq) last = r;
      if (last?.on) who.add(user);
    }
    out.set(key, who);
  }
  return out;
}

/** The millisecond time part of a ULID. */
export function ulidTime(id: string): number {
  const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  let t = 0;
  for (const ch of id.slice(0, 10)) {
    const v = alphabet.indexOf(ch);
    if (v < 0) return 0;
    t = t * 32 + v;
  }
  return t;
}
