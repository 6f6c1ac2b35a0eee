// The demo chat page that ferryd serves at /. Each tab is one device: its
// IndexedDB database is named after a tab id kept in sessionStorage, so a
// reload finds the same device and a second tab is a second device.

import { FerryClient, IndexedDBReplica, ReplicaInUseError, type MessageView, type Status } from "../src/index.js";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

// openTabReplica opens the tab's database. A duplicated tab comes with a
// copy of its original's sessionStorage, so with its tab id, whose
// database the original holds: it takes a new id, and is a new device.
async function openTabReplica(): Promise<IndexedDBReplica> {
  const id = sessionStorage.getItem("ferry-tab");
  if (id) {
    try {
      return await IndexedDBReplica.open(`ferry-demo-${id}`);
    } catch (err) {
      if (!(err instanceof ReplicaInUseError)) throw err;
    }
  }
  const fresh = crypto.randomUUID();
  sessionStorage.setItem("ferry-tab", fresh);
  return IndexedDBReplica.open(`ferry-demo-${fresh}`);
}

const pageSize = 100;

// opNames name the ops the header shows refused.
const opNames: Record<string, string> = { memberAdd: "add", memberRemove: "leave or removal", memberRole: "role change", setTitle: "rename", edit: "edit", delete: "delete", reactionAdd: "reaction", reactionRemove: "reaction" };

const marks: Record<string, string> = { pending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "⚠" };

class App {
  private open?: string; // the conversation shown
  private scheduled = false;
  private shown = pageSize; // how many of the open conversation's newest messages are drawn
  // membersAsked: the conversations whose members were asked for, in
  // which live session (lives counts them), and whether the ask failed:
  // one that failed is asked again in the next.
  private membersAsked = new Map<string, { lives: number; failed: boolean }>();
  private lives = 0;
  private wasLive = false;
  private leaving = new Set<string>(); // conversations left here, until the leave is done or refused

  constructor(private readonly c: FerryClient) {
    c.on(() => this.render());
    $("signin").addEventListener("submit", (e) => {
      e.preventDefault();
      void this.signIn("login");
    });
    $("register").addEventListener("click", () => void this.signIn("register"));
    $("signout").addEventListener("click", () =>
      void c.signOut().then(() => {
        this.open = undefined;
        this.membersAsked.clear();
        this.leaving.clear();
        this.render();
      }, (err) => alert(err instanceof Error ? err.message : String(err))),
    );
    $("newconv").addEventListener("submit", (e) => {
      e.preventDefault();
      void this.create();
    });
    $("compose").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $<HTMLInputElement>("text");
      if (this.open && input.value.trim()) void c.send(this.open, input.value.trim());
      input.value = "";
    });
    $("addmember").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $<HTMLInputElement>("newmember");
      const who = input.value.trim();
      if (this.open && who) {
        void c.addMember(this.open, who).then(() => (input.value = ""), (err) => alert(err instanceof Error ? err.message : String(err)));
      }
    });
    $("leave").addEventListener("click", () => {
      const conv = this.open;
      if (conv && confirm("Leave this conversation? You keep what you have of it.")) {
        this.leaving.add(conv);
        this.render();
        void c.leave(conv).catch((err) => {
          this.leaving.delete(conv);
          this.render();
          alert(err instanceof Error ? err.message : String(err));
        });
      }
    });
    $("setname").addEventListener("click", () => {
      const name = prompt("The name others see you by (empty: your username)");
      if (name !== null) void c.setDisplayName(name.trim()).catch((err) => alert(err instanceof Error ? err.message : String(err)));
    });
    document.addEventListener("visibilitychange", () => this.markRead());
    if (c.session) c.start();
    this.render();
  }

  private async signIn(how: "login" | "register"): Promise<void> {
    const u = $<HTMLInputElement>("username").value.trim();
    const p = $<HTMLInputElement>("password").value;
    $("error").textContent = "";
    try {
      await (how === "login" ? this.c.login(u, p) : this.c.register(u, p));
      this.membersAsked.clear();
      this.leaving.clear();
      this.open = undefined;
      this.c.start();
    } catch (err) {
      $("error").textContent = err instanceof Error ? err.message : String(err);
    }
    this.render();
  }

  private async create(): Promise<void> {
    const title = $<HTMLInputElement>("title").value.trim();
    const members = $<HTMLInputElement>("members").value.split(",").map((s) => s.trim()).filter(Boolean);
    try {
      this.open = await this.c.createConversation(title, members);
      this.shown = pageSize;
      $<HTMLInputElement>("title").value = "";
      $<HTMLInputElement>("members").value = "";
    } catch (err) {
      alert(err instanceof Error ? err.message : String(err));
    }
    this.render();
  }

  private markRead(): void {
    if (this.open && document.visibilityState === "visible") {
      const conv = this.c.conversations().find((x) => x.id === this.open);
      if (conv && conv.unread > 0) void this.c.markRead(this.open).catch(() => {});
    }
  }

  // render redraws at most once per frame.
  private render(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.draw();
    });
  }

  private draw(): void {
    const s = this.c.session;
    // A device the server refused (revoked) may sign in again over its
    // session, keeping what it queued.
    $("signin").classList.toggle("hidden", !!s && this.c.status().state !== "failed");
    $("sidebar").classList.toggle("hidden", !s);
    // A conversation the device does not know (another account's, after a
    // sign-in in this tab) is not shown.
    if (this.open && !this.c.conversations().some((x) => x.id === this.open)) this.open = undefined;
    $("chat").classList.toggle("hidden", !s || !this.open);
    $("signout").classList.toggle("hidden", !s);
    $("setname").classList.toggle("hidden", !s);
    $("me").textContent = s ? s.username : "";
    this.drawStatus(this.c.status());
    if (!s) return;
    drawRows(
      $("convs"),
      this.c.conversations().map((conv) => ({
        key: conv.id,
        sig: JSON.stringify([conv.id === this.open, conv.title, conv.lastMessage?.text, conv.unread]),
        build: () => {
          const row = el("div", { class: `conv${conv.id === this.open ? " open" : ""}`, "data-conv": conv.id });
          const text = el("div");
          text.append(el("div", { class: "title" }, conv.title || "(untitled)"), el("div", { class: "last" }, conv.lastMessage?.text ?? ""));
          row.append(text);
          if (conv.unread > 0) row.append(el("span", { class: "unread" }, String(conv.unread)));
          row.addEventListener("click", () => {
            if (this.open !== conv.id) this.shown = pageSize;
            this.open = conv.id;
            this.render();
          });
          return row;
        },
      })),
    );
    if (this.open) {
      this.drawHead(this.open);
      const box = $("messages");
      const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      // The newest messages: a long conversation draws what is shown.
      const page = this.c.page(this.open, { limit: this.shown });
      const top: Row[] = page.more
        ? [{ key: "older", sig: "", build: () => button("show older messages", () => { this.shown += pageSize; this.render(); }) }]
        : page.olderLoading ? [{ key: "loading", sig: "", build: () => el("div", { class: "older" }, "older messages loading…") }] : [];
      const me = this.c.session?.userId;
      drawRows(box, [
        ...top,
        ...page.messages.map((m) => ({ key: `${m.convId} ${m.id}`, sig: JSON.stringify([me, m]), build: () => this.message(m) })),
      ]);
      if (atBottom) box.scrollTop = box.scrollHeight;
      this.markRead();
    }
  }

  // drawHead draws the open conversation's title and members, asking the
  // server for them once it has the conversation, while live (again in the
  // next live session when the ask failed); the client keeps the list up
  // to date after. The ops of the conversation the server refused (an add
  // the user's role does not allow, the last owner's leave) show there,
  // to dismiss.
  private drawHead(convId: string): void {
    const conv = this.c.conversations().find((x) => x.id === convId);
    $("convtitle").textContent = conv ? conv.title || "(untitled)" : "";
    const members = this.c.knownMembers(convId);
    const asked = this.membersAsked.get(convId);
    if (!members && conv && conv.head > 0 && this.c.status().state === "live" && (!asked || (asked.failed && asked.lives < this.lives))) {
      const ask = { lives: this.lives, failed: false };
      this.membersAsked.set(convId, ask);
      void this.c.members(convId).then(
        () => this.render(),
        () => (ask.failed = true),
      );
    }
    const me = this.c.session?.userId;
    const role = members?.find((m) => m.userId === me)?.role;
    const failed = this.c.failed().filter((f) => f.convId === convId && f.kind !== "message");
    if (failed.length > 0 || conv?.removed) this.leaving.delete(convId);
    $("convmembers").textContent = conv?.removed
      ? "you are no longer a member"
      : (members ?? []).map((m) => (m.role === "member" ? m.username : `${m.username} (${m.role})`)).join(", ");
    $("addmember").classList.toggle("hidden", !conv || conv.removed || role === "member");
    $("leave").classList.toggle("hidden", !conv || conv.removed || this.leaving.has(convId));
    drawRows(
      $("convfailed"),
      failed.map((f) => ({
        key: f.opId,
        sig: JSON.stringify([f.kind, f.error]),
        build: () => {
          const line = el("div", { class: "failed" }, `⚠ ${opNames[f.kind] ?? f.kind} refused: ${f.error} `);
          line.append(button("dismiss", () => this.c.dismissFailed(f.opId)));
          return line;
        },
      })),
    );
  }

  private drawStatus(st: Status): void {
    // Count live sessions: a members ask that failed goes again in the next.
    if (st.state === "live" && !this.wasLive) {
      this.lives++;
      queueMicrotask(() => this.render());
    }
    this.wasLive = st.state === "live";
    const b = $("status");
    b.dataset.state = st.state;
    b.textContent =
      st.state === "catching-up" ? `catching up ${Math.min(st.receivedOps, st.missingOps)}/${st.missingOps}` :
      st.state === "live" ? (st.pending ? `online, sending ${st.pending}${st.held ? ` (${st.held.length} conversation${st.held.length > 1 ? "s" : ""} the server cannot take for now)` : ""}` : "online") :
      st.state === "signed-out" ? "signed out" :
      st.state === "failed" ? `stopped: ${st.lastError ?? "signed out by the server"}` :
      st.pending ? `offline, ${st.pending} waiting` : st.state;
  }

  private message(m: MessageView): HTMLElement {
    const mine = m.userId === this.c.session?.userId;
    const div = el("div", { class: `msg${mine ? " mine" : ""}`, "data-id": m.id });
    // The names come with the members' list. A display name goes with
    // the username, which is the user's alone: anyone may take another's
    // display name, or username, as theirs.
    if (!mine) {
      const d = m.authorDisplayName;
      div.append(el("div", { class: "author" }, d && d !== m.authorName ? `${d} (${m.authorName})` : (m.authorName ?? "…")));
    }
    div.append(m.deleted ? el("div", { class: "deleted" }, "message deleted") : el("div", { class: "text" }, m.text));
    const meta = el("div", { class: "meta" });
    const reactions = Object.entries(m.reactions).map(([k, users]) => `${k} ${users.length}`).join(" ");
    if (reactions) meta.append(el("span", { class: "reactions" }, reactions));
    if (m.edited && !m.deleted) meta.append(el("span", {}, "edited"));
    meta.append(el("span", {}, m.time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    if (mine && m.status) meta.append(el("span", { class: "mark", "data-status": m.status, title: m.error ?? m.status }, marks[m.status] ?? ""));
    div.append(meta);
    if (!m.deleted && m.seq > 0 && this.open) {
      const conv = this.open;
      const actions = el("div", { class: "actions" });
      const mineReaction = m.reactions["👍"]?.includes(this.c.session?.userId ?? "") ?? false;
      actions.append(button("👍", () => this.c.react(conv, m.id, "👍", !mineReaction)));
      if (mine) {
        actions.append(
          button("edit", () => {
            const text = prompt("Edit message", m.text);
            if (text !== null && text.trim()) return this.c.edit(conv, m.id, text.trim());
          }),
          button("delete", () => this.c.delete(conv, m.id)),
        );
      }
      div.append(actions);
    } else if (mine && m.status === "failed") {
      const actions = el("div", { class: "actions" });
      actions.append(button("remove", () => this.c.dismissFailed(m.id)));
      div.append(actions);
    }
    return div;
  }
}

// A row of a list drawRows draws: its node is built again only when its
// sig (what the node shows, and what its buttons act on) changed.
type Row = { key: string; sig: string; build: () => HTMLElement };

const drawn = new WeakMap<HTMLElement, Map<string, { sig: string; node: HTMLElement }>>();

// drawRows draws a list, keeping in place the node of each row that did
// not change. The page draws again for every op that arrives: a list
// drawn anew each time would replace the node under a click between its
// mouse-down and its mouse-up, and the click would be lost.
function drawRows(list: HTMLElement, rows: Row[]): void {
  const before = drawn.get(list) ?? new Map<string, { sig: string; node: HTMLElement }>();
  const now = new Map<string, { sig: string; node: HTMLElement }>();
  const nodes = rows.map((r) => {
    const had = before.get(r.key);
    const row = had && had.sig === r.sig ? had : { sig: r.sig, node: r.build() };
    now.set(r.key, row);
    return row.node;
  });
  drawn.set(list, now);
  // Only the nodes gone are taken out, and only those new or out of place
  // put in: a kept node taken out and put back would lose the click too.
  const keep = new Set<Node>(nodes);
  for (const child of [...list.childNodes]) if (!keep.has(child)) child.remove();
  let at = list.firstChild;
  for (const n of nodes) {
    if (at === n) at = n.nextSibling;
    else list.insertBefore(n, at);
  }
}

function el(tag: string, attrs: Record<string, string> = {}, text?: string): HTMLElement {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function button(label: string, onClick: () => unknown): HTMLButtonElement {
  const b = el("button", { type: "button" }, label) as HTMLButtonElement;
  b.addEventListener("click", () => void Promise.resolve(onClick()).catch((err) => alert(String(err))));
  return b;
}

const client = await FerryClient.open({ baseUrl: location.origin, replica: await openTabReplica(), deviceName: "browser tab" });
(globalThis as { ferry?: FerryClient }).ferry = client; // for the console and end-to-end tests
new App(client);
