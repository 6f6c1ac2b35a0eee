// IndexedDBReplica keeps a device in the browser's IndexedDB, so a reload
// (or a browser restart) finds it where it was: signed in, with its
// conversations, ops, sync position and outbox. Every Change is one
// readwrite transaction over all stores: it lands whole or not at all.

import { emptyMeta, type Change, type ConvRecord, type Meta, type OpRecord, type OutboxEntry, type Replica, type Snapshot } from "./replica.js";

const version = 1;
const stores = ["meta", "convs", "ops", "outbox"] as const;

/** A replica in IndexedDB; open it with IndexedDBReplica.open. */
export class IndexedDBReplica implements Replica {
  private constructor(private readonly db: IDBDatabase) {}

  /**
   * Opens (creating if needed) the database `name`. One database is one
   * device: use a name per account or profile. `factory` defaults to the
   * page's indexedDB.
   */
  static async open(name = "ferry", factory: IDBFactory = globalThis.indexedDB): Promise<IndexedDBReplica> {
    if (!factory) throw new Error("ferry: IndexedDB is not available here; use MemoryReplica");
    const req = factory.open(name, version);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains("meta")) db.createObjectStore("meta");
      if (!db.objectStoreNames.contains("convs")) db.createObjectStore("convs", { keyPath: "id" });
      if (!db.objectStoreNames.contains("ops")) db.createObjectStore("ops", { keyPath: ["convId", "seq"] });
      if (!db.objectStoreNames.contains("outbox")) db.createObjectStore("outbox", { keyPath: "id" });
    };
    const db = await done(req);
    return new IndexedDBReplica(db);
  }

  async load(): Promise<Snapshot> {
    const tx = this.db.transaction([...stores], "readonly");
    const [meta, convs, ops, outbox] = await Promise.all([
      done(tx.objectStore("meta").get("meta")) as Promise<Meta | undefined>,
      done(tx.objectStore("convs").getAll()) as Promise<ConvRecord[]>,
      done(tx.objectStore("ops").getAll()) as Promise<OpRecord[]>,
      done(tx.objectStore("outbox").getAll()) as Promise<OutboxEntry[]>,
    ]);
    return { meta: meta ?? emptyMeta(), convs, ops, outbox };
  }

  async apply(c: Change): Promise<void> {
    const tx = this.db.transaction([...stores], "readwrite", { durability: "strict" });
    const committed = new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onabort = () => reject(tx.error ?? new Error("ferry: IndexedDB transaction aborted"));
      tx.onerror = () => reject(tx.error ?? new Error("ferry: IndexedDB transaction failed"));
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

  close(): void {
    this.db.close();
  }
}

function done<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}
