// The replica is what a device keeps between runs: its session, where its
// sync stands, the conversations and ops it holds, and the outbox. The
// client holds the whole replica in memory and writes every change through
// Replica.apply as one atomic step, so a reload finds either all of a change
// or none of it.

/** A signed-in device. */
export interface Session {
  userId: string;
  deviceId: string;
  username: string;
  token: string;
}

/** Where the device's sync stands, and its next dots. */
export interface Meta {
  session?: Session;
  /** The server epoch feedPos belongs to; empty before the first catch-up. */
  epoch: string;
  /** The feed position of the last CaughtUp or live Ops, as a decimal string. */
  feedPos: string;
  /** Per conversation, the highest dot this device has given an op. */
  dots: Record<string, number>;
  /**
   * Set when the server refused the session's token (the device was
   * revoked): login() and register() may then replace the session without
   * a signOut(). Cleared when a session with the same token is welcomed.
   */
  refused?: boolean;
}

/** A member's delivered and read positions. */
export interface ReceiptRecord {
  userId: string;
  delivered: number;
  read: number;
}

/** A conversation as the server last described it. */
export interface ConvRecord {
  id: string;
  title: string;
  role: number;
  removed: boolean;
  head: number;
  unread: number;
  delivered: number;
  read: number;
  memberCount: number;
  receipts: ReceiptRecord[];
  /**
   * The members do not see each other's markers: the device's delivered
   * marker can wait. (Absent in replicas written before it existed.)
   */
  noReceipts?: boolean;
  /**
   * The read marker the user set that the server has yet to take: kept
   * until it does, across reloads. (Absent when none waits.)
   */
  readWanted?: number;
  /** When the device last saw a change of it, for ordering the list. */
  changedAt: number;
}

/** An op the device holds: its server seq and its encoded protobuf. */
export interface OpRecord {
  convId: string;
  seq: number;
  id: string;
  /** ferry.v1.Op in the protobuf binary encoding. */
  op: Uint8Array;
}

/** An op waiting to be pushed, or refused by the server. */
export interface OutboxEntry {
  convId: string;
  id: string;
  dot: number;
  /** ferry.v1.Op in the protobuf binary encoding. */
  op: Uint8Array;
  createdAt: number;
  /** Set when the server refused the op: it will not be retried. */
  failed?: string;
}

/** Everything a replica holds. */
export interface Snapshot {
  meta: Meta;
  convs: ConvRecord[];
  ops: OpRecord[];
  outbox: OutboxEntry[];
}

/** One atomic change. */
export interface Change {
  meta?: Meta;
  convs?: ConvRecord[];
  ops?: OpRecord[];
  outboxPut?: OutboxEntry[];
  outboxDelete?: string[];
  /** Forget every conversation and op (a new sign-in). */
  clear?: boolean;
}

/** Durable storage of a device. */
export interface Replica {
  load(): Promise<Snapshot>;
  apply(change: Change): Promise<void>;
  close(): void;
  /**
   * Calls lost, once, if the replica can no longer store anything (a
   * database the browser closed): the client then stops syncing, with
   * status "failed" and the error as lastError. Optional.
   */
  watch?(lost: (err: Error) => void): void;
}

export function emptyMeta(): Meta {
  return { epoch: "", feedPos: "0", dots: {} };
}

/**
 * MemoryReplica keeps a device in memory: for tests and for devices that
 * need not outlive the page. Values are copied in and out, as a durable
 * replica would.
 */
export class MemoryReplica implements Replica {
  private snap: Snapshot = { meta: emptyMeta(), convs: [], ops: [], outbox: [] };

  async load(): Promise<Snapshot> {
    return structuredClone(this.snap);
  }

  async apply(change: Change): Promise<void> {
    const c = structuredClone(change);
    const s = this.snap;
    if (c.clear) {
      s.convs = [];
      s.ops = [];
      s.outbox = [];
    }
    if (c.meta) s.meta = c.meta;
    for (const conv of c.convs ?? []) {
      const i = s.convs.findIndex((x) => x.id === conv.id);
      if (i >= 0) s.convs[i] = conv;
      else s.convs.push(conv);
    }
    for (const op of c.ops ?? []) {
      const i = s.ops.findIndex((x) => x.convId === op.convId && x.seq === op.seq);
      if (i >= 0) s.ops[i] = op;
      else s.ops.push(op);
    }
    const gone = new Set(c.outboxDelete ?? []);
    s.outbox = s.outbox.filter((e) => !gone.has(e.id));
    for (const e of c.outboxPut ?? []) {
      const i = s.outbox.findIndex((x) => x.id === e.id);
      if (i >= 0) s.outbox[i] = e;
      else s.outbox.push(e);
    }
  }

  close(): void {}
}
