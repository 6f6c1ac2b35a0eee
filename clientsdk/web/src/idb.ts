// IndexedDBReplica keeps a device in the browser's IndexedDB, so a reload
// (or a browser restart) finds it where it was: signed in, with its
// conversations, ops, sync position and outbox. Every Change is one
// readwrite transaction over all stores: it lands whole or not at all.
//
// One database is one device, and a device must run in one tab at a time:
// two tabs on one database would each number their ops from the same last
// dot, and hand out the same dots to different ops. A Web Lock named after
// the database, held from open to close, enforces it; the browser releases
// it when the tab goes, however it goes.

import { emptyMeta, type Change, type ConvRecord, type Meta, type OpRecord, type OutboxEntry, type Replica, type Snapshot } from "./replica.js";

const version = 1;
const stores = ["meta", "convs", "ops", "outbox"] as const;

/**
 * ReplicaInUseError: the database is open in another tab or window of the
 * browser (or elsewhere in this page). Open another database (one per tab),
 * or tell the user the app is open elsewhere.
 */
export class ReplicaInUseError extends Error {
  constructor(readonly database: string) {
    super(`ferry: the replica "${database}" is open in another tab or window; a database serves one tab at a time: close it there, or open another database in this tab`);
    this.name = "ReplicaInUseError";
  }
}

/**
 * ReplicaLostError: the browser closed the replica's database under the
 * page (the user cleared the site's data, the browser evicted it, or
 * another page deleted or upgraded the database). Nothing more can be
 * stored in it: the client stops syncing (status "failed"), and its writes
 * throw this. Reload the page to start again from what the database still
 * holds.
 */
export class ReplicaLostError extends Error {
  constructor(readonly database: string, why: string) {
    super(`ferry: the browser closed the replica "${database}" (${why}): nothing more can be stored in it; reload the page to start again from what it still holds`);
    this.name = "ReplicaLostError";
  }
}

/** Where IndexedDBReplica.open finds IndexedDB and Web Locks. */
export interface IndexedDBOptions {
  /** Defaults to the page's indexedDB. */
  factory?: IDBFactory;
  /**
   * Defaults to the page's navigator.locks. Without Web Locks (Node, pages
   * served over plain http other than localhost, browsers before 2022)
   * nothing enforces one tab per database.
   */
  locks?: LockManager;
  /**
   * How long open waits for a tab that holds the database to let go (one
   * being reloaded or closed) before it throws ReplicaInUseError; default
   * 1000 ms.
   */
  waitMs?: number;
}

/** A replica in IndexedDB; open it with IndexedDBReplica.open. */
export class IndexedDBReplica implements Replica {
  private lostErr?: ReplicaLostError;
  private onLost?: (err: Error) => void;
  private closed = false; // by close()

  private constructor(
    private readonly name: string,
    private readonly db: IDBDatabase,
    private readonly release: () => void,
  ) {
    // The browser closes the connection itself when the site's data is
    // cleared or evicted; another page deleting or upgrading the database
    // asks this one to close first, which it does rather than block it.
    db.onclose = () => this.lose("its data was cleared or evicted, or its storage failed");
    db.onversionchange = (e) => {
      db.close();
      this.lose(e.newVersion === null ? "another page deleted it" : `another page upgraded it to version ${e.newVersion}`);
    };
  }

  private lose(why: string): ReplicaLostError {
    if (!this.lostErr) {
      this.lostErr = new ReplicaLostError(this.name, why);
      this.release();
      this.onLost?.(this.lostErr);
    }
    return this.lostErr;
  }

  /**
   * Calls lost, once, when the browser closes the database under the page
   * (replacing a listener given before).
   */
  watch(lost: (err: Error) => void): void {
    this.onLost = lost;
    if (this.lostErr) lost(this.lostErr);
  }

  // transaction starts a transaction, or throws ReplicaLostError once the
  // database is closed (a closing connection throws InvalidStateError).
  private transaction(mode: IDBTransactionMode, opts?: IDBTransactionOptions): IDBTransaction {
    if (this.closed) throw new Error("ferry: the replica is closed");
    if (this.lostErr) throw this.lostErr;
    try {
      return this.db.transaction([...stores], mode, opts);
    } catch (err) {
      if ((err as { name?: unknown } | undefined)?.name === "InvalidStateError") throw this.lose("its connection closed");
      throw err;
    }
  }

  /**
   * Opens (creating if needed) the database `name`, and holds it for this
   * tab until close: it throws ReplicaInUseError while another tab (or
   * another replica of this page) has it open. One database is one device:
   * use a name per account or profile, and per tab where an app runs in
   * several.
   */
  static async open(name = "ferry", opts: IndexedDBOptions = {}): Promise<IndexedDBReplica> {
    const factory = opts.factory ?? globalThis.indexedDB;
    if (!factory) throw new Error("ferry: IndexedDB is not available here; use MemoryReplica");
    const locks = "locks" in opts ? opts.locks : globalThis.navigator?.locks;
    const release = locks ? await hold(locks, name, opts.waitMs ?? 1000) : () => {};
    try {
      const req = factory.open(name, version);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains("meta")) db.createObjectStore("meta");
        if (!db.objectStoreNames.contains("convs")) db.createObjectStore("convs", { keyPath: "id" });
        if (!db.objectStoreNames.contains("ops")) db.createObjectStore("ops", { keyPath: ["convId", "seq"] });
        if (!db.objectStoreNames.contains("outbox")) db.createObjectStore("outbox", { keyPath: "id" });
      };
      const db = await done(req);
      return new IndexedDBReplica(name, db, release);
    } catch (err) {
      release();
      throw err;
    }
  }

  async load(): Promise<Snapshot> {
    const tx = this.transaction("readonly");
    const [meta, convs, ops, outbox] = await Promise.all([
      done(tx.objectStore("meta").get("meta")) as Promise<Meta | undefined>,
      done(tx.objectStore("convs").getAll()) as Promise<ConvRecord[]>,
      done(tx.objectStore("ops").getAll()) as Promise<OpRecord[]>,
      done(tx.objectStore("outbox").getAll()) as Promise<OutboxEntry[]>,
    ]);
    return { meta: meta ?? emptyMeta(), convs, ops, outbox };
  }

  async apply(c: Change): Promise<void> {
    const tx = this.transaction("readwrite", { durability: "strict" });
    const committed = new Promise<void>((resolve, reject) => {
      // A connection the browser closes first aborts its transactions
      // with AbortError, which their pending requests' errors (they come
      // first) and the abort both see as the transaction's error.
      const failed = (what: string) =>
        reject(tx.error?.name === "AbortError" ? this.lose("its connection closed") : tx.error ?? new Error(`ferry: IndexedDB transaction ${what}`));
      tx.oncomplete = () => resolve();
      tx.onabort = () => failed("aborted");
      tx.onerror = () => failed("failed");
    });
    if (c.clear) {
      tx.objectStore("convs").clear();
      tx.objectStore("ops").clear();
      tx.objectStore("outbox").clear();
    }
    if (c.meta) tx.objectStore("meta").put(c.meta, "meta");
    for (const conv of c.convs ?? []) tx.objectStore("convs").put(conv);
    for (const op of c.ops ?? []) tx.objectStore("ops").put(op);
    for (const id of c.outboxDelete ?? []) tx.objectStore("outbox").delete(id);
    for (const e of c.outboxPut ?? []) tx.objectStore("outbox").put(e);
    await committed;
  }

  /** Closes the database and lets another tab open it. */
  close(): void {
    this.closed = true;
    this.db.onclose = null;
    this.db.onversionchange = null;
    this.db.close();
    this.release();
  }
}

// hold takes the Web Lock of database name, waiting up to waitMs for it,
// and returns what releases it (once; later calls do nothing). The lock is
// held while the request's callback has not settled: the callback hands
// its settling out as the release. The wait also covers a page that opens
// a database it has just closed: the lock manager lets go of a released
// lock in a later turn. A page whose origin may not take locks (an opaque
// one: a sandboxed iframe) goes without.
function hold(locks: LockManager, name: string, waitMs: number): Promise<() => void> {
  const waited = new AbortController();
  const timer = setTimeout(() => waited.abort(new DOMException(`waited ${waitMs} ms`, "TimeoutError")), waitMs);
  return new Promise((resolve, reject) => {
    const held = locks.request(`ferry-replica:${name}`, { signal: waited.signal }, () => {
      clearTimeout(timer);
      return new Promise<void>((release) => {
        let released = false;
        resolve(() => {
          if (!released) {
            released = true;
            release();
          }
        });
      });
    });
    held.catch((err: unknown) => {
      clearTimeout(timer);
      const kind = (err as { name?: unknown } | undefined)?.name;
      if (kind === "TimeoutError" || kind === "AbortError") reject(new ReplicaInUseError(name));
      else if (kind === "SecurityError") resolve(() => {});
      else reject(err);
    });
  });
}

function done<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
