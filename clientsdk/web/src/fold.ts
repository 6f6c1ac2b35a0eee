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
  const byId = new Map<string, MessageView>();
  const order: MessageView[] = [];
  const editSeq = new Map<string, number>();
  const reactions = new Map<string, Map<string, Set<string>>>();
  const sorted = [...ops].sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity));
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
          text: decoder.decode(p.value.body),
          contentType: p.value.contentType || "text/plain",
          edited: false,
          deleted: op.erased,
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
          m.text = decoder.decode(p.value.body);
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
    if (!m) continue;
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
