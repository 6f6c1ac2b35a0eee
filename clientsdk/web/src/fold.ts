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
  for (const { seq, op } of ops.filter((o) => o.seq > 0).sort((a, b) => a.seq - b.seq)) f.add(seq, op);
  return f.view(
    ops.filter((o) => o.seq === 0),
    me,
  );
}

/**
 * Folding folds a conversation's stored ops one at a time, in seq order,
 * and keeps what they made: a message that arrives costs itself, not the
 * history before it. view lays the ops still in the outbox over the
 * stored ones, on copies of the messages they touch, and sets the user's
 * statuses. An op below the last one added (an older page arriving after
 * a newer one) cannot be added: fold the conversation anew.
 */
export class Folding {
  /** The highest seq added. */
  top = 0;
  private readonly order: MessageView[] = []; // stored messages, in seq order
  private readonly at = new Map<string, number>(); // message id -> its place in order
  private readonly editSeq = new Map<string, number>();
  // Reactions: target -> key -> users; kept for targets not (yet) here too,
  // as a pending message may be reacted to before it is stored.
  private readonly reactions = new Map<string, Map<string, Set<string>>>();
  // The statuses set: for whom and which receipts, up to which message.
  private statusKey = "";
  private statusDone = 0;

  constructor(readonly convId: string) {}

  /** Folds a stored op; seq must be above every seq added before. */
  add(seq: number, op: Op): void {
    if (!(seq > this.top)) throw new Error(`ferry: fold of ${this.convId}: seq ${seq} after ${this.top}`);
    this.top = seq;
    this.apply(seq, op, undefined, (id) => {
      const i = this.at.get(id);
      return i === undefined ? undefined : this.order[i];
    });
  }

  /**
   * The conversation's messages: the stored ones in seq order, then those
   * of the pending ops (in outbox order), with pending edits, deletes and
   * reactions shown; and, given me (the same user on every view of a
   * Folding), the status of the user's own. The array is the caller's; its
   * stored messages are shared with later views, which change them.
   */
  view(pending: { op: Op; failed?: string }[], me?: StatusInput): MessageView[] {
    if (me) this.setStatuses(me);
    const out = this.order.slice();
    if (pending.length === 0) return out;
    const copies = new Map<string, MessageView>(); // in out, the view's own
    const target = (id: string): MessageView | undefined => {
      let m = copies.get(id);
      if (m) return m;
      const i = this.at.get(id);
      if (i === undefined) return undefined;
      m = { ...out[i]!, reactions: { ...out[i]!.reactions } };
      out[i] = m;
      copies.set(id, m);
      return m;
    };
    const users = new Map<string, Map<string, Set<string>>>(); // reactions of the view, copied on write
    for (const { op, failed } of pending) {
      const m = this.apply(0, op, failed, target, users);
      if (!m) continue;
      copies.set(m.id, m);
      out.push(m);
      if (me) m.status = failed !== undefined ? "failed" : "pending";
    }
    return out;
  }

  // apply folds op at seq (0: pending, after every stored op) onto the
  // messages find returns, and returns the message it makes, if it makes
  // one. Stored ops pass no users: they change the kept reactions; a view
  // passes its own, which copy the kept ones they change.
  private apply(
    seq: number,
    op: Op,
    failed: string | undefined,
    find: (id: string) => MessageView | undefined,
    users?: Map<string, Map<string, Set<string>>>,
  ): MessageView | undefined {
    const p = op.payload;
    switch (p.case) {
      case "message": {
        const m: MessageView = {
          id: op.id,
          convId: this.convId,
          seq,
          userId: op.userId,
          deviceId: op.deviceId,
          text: decoder.decode(p.value.body),
          contentType: p.value.contentType || "text/plain",
          edited: false,
          deleted: op.erased,
          reactions: {},
          time: new Date(ulidTime(op.id)),
        };
        if (failed !== undefined) m.error = failed;
        for (const [key, who] of users?.get(op.id) ?? this.reactions.get(op.id) ?? []) {
          if (who.size > 0) m.reactions[key] = [...who].sort();
        }
        if (seq > 0) {
          this.at.set(op.id, this.order.length);
          this.order.push(m);
        }
        return m;
      }
      case "edit": {
        const m = find(p.value.targetId);
        const at = seq || Infinity;
        if (m && !m.deleted && at >= (this.editSeq.get(m.id) ?? 0)) {
          m.text = decoder.decode(p.value.body);
          m.edited = true;
          if (seq > 0) this.editSeq.set(m.id, at);
        }
        return undefined;
      }
      case "delete": {
        const m = find(p.value.targetId);
        if (m) {
          m.deleted = true;
          m.text = "";
        }
        return undefined;
      }
      case "reactionAdd":
      case "reactionRemove": {
        const target = p.value.targetId;
        const key = p.value.key;
        let byKey: Map<string, Set<string>>;
        if (users) {
          byKey = users.get(target) ?? new Map([...(this.reactions.get(target) ?? [])].map(([k, v]) => [k, new Set(v)]));
          users.set(target, byKey);
        } else {
          byKey = this.reactions.get(target) ?? new Map<string, Set<string>>();
          this.reactions.set(target, byKey);
        }
        const who = byKey.get(key) ?? new Set<string>();
        byKey.set(key, who);
        if (p.case === "reactionAdd") who.add(op.userId);
        else who.delete(op.userId);
        const m = find(target);
        if (m) {
          if (who.size > 0) m.reactions[key] = [...who].sort();
          else delete m.reactions[key];
        }
        return undefined;
      }
    }
    return undefined;
  }

  // setStatuses sets the status of the user's stored messages from the
  // other members' receipts: all of them when the receipts moved, else
  // those added since the last view.
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
