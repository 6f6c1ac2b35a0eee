// End to end in a real Chromium (Debian's, driven by playwright-core): the
// demo page served by ferryd, alice and bob in two browser contexts, and a
// Go SDK device (the ferry command) talking with the browser. Screenshots
// of the key steps go to build/e2e/.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";

import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";

import { AccountService } from "../src/gen/ferry/v1/account_pb.js";

import { goBuild, startServer, type Server } from "./server.js";

const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const shots = resolve(process.cwd(), "build", "e2e");

let server: Server;
let browser: Browser;

before(async () => {
  if (!existsSync(chromiumPath)) {
    throw new Error(`no Chromium at ${chromiumPath}: run 'make test-web' (it installs Debian's chromium) or set CHROMIUM`);
  }
  mkdirSync(shots, { recursive: true });
  server = await startServer();
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // A closed network: no background connections, no first-run chores.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signUp(ctx: BrowserContext, username: string, how: "Sign up" | "Log in" = "Sign up"): Promise<Page> {
  const page = await ctx.newPage();
  page.on("pageerror", (err) => console.error(`${username}: page error: ${err.message}`));
  await page.goto(server.url + "/");
  await page.fill("#username", username);
  await page.fill("#password", "correct horse battery");
  await page.click(how === "Sign up" ? "#register" : "#login");
  await page.waitForSelector('#status[data-state="live"]');
  return page;
}

const texts = (page: Page) => page.$$eval("#messages .msg .text", (els) => els.map((e) => e.textContent ?? ""));
const unread = (page: Page, conv: string) =>
  page.$eval(`[data-conv="${conv}"]`, (row) => row.querySelector(".unread")?.textContent ?? "0");

test("two browsers and a Go device chat; an offline browser catches up once, in order", { timeout: 180_000 }, async () => {
  const aliceCtx = await browser.newContext();
  const bobCtx = await browser.newContext();
  const alice = await signUp(aliceCtx, "alice");
  const bob = await signUp(bobCtx, "bob");

  // Alice starts a conversation with bob.
  await alice.fill("#title", "e2e");
  await alice.fill("#members", "bob");
  await alice.click("#newconv button");
  const conv = await (await alice.waitForSelector("[data-conv]")).getAttribute("data-conv") as string;
  await bob.waitForSelector(`[data-conv="${conv}"]`);
  await shot(alice, "1-conversation-created");

  // Bob goes offline; alice writes 50 messages.
  await bobCtx.setOffline(true);
  await bob.waitForSelector('#status:not([data-state="live"])');
  await shot(bob, "2-bob-offline");
  await alice.click(`[data-conv="${conv}"]`);
  const want: string[] = [];
  for (let i = 1; i <= 50; i++) {
    want.push(`message ${i}`);
    await alice.fill("#text", `message ${i}`);
    await alice.press("#text", "Enter");
  }
  // Enter queues a send: wait until all 50 are queued and pushed.
  await alice.waitForFunction((c) => {
    const f = (globalThis as any).ferry;
    return f.messages(c).length === 50 && f.status().pending === 0;
  }, conv);
  await alice.waitForFunction(() => document.querySelectorAll("#messages .msg").length === 50);
  assert.deepEqual(await texts(alice), want);

  // Bob comes back: all 50 arrive, and his list says 50 unread.
  await bobCtx.setOffline(false);
  await bob.waitForSelector('#status[data-state="live"]');
  await bob.waitForFunction((c) => (globalThis as any).ferry.messages(c).length === 50, conv);
  assert.equal(await unread(bob, conv), "50");

  // Bob's second tab is a second device of his: 50 unread there too.
  const bob2 = await signUp(bobCtx, "bob", "Log in");
  await bob2.waitForSelector(`[data-conv="${conv}"] .unread`);
  assert.equal(await unread(bob2, conv), "50");
  await shot(bob2, "3-bob-second-tab-unread");

  // Bob reads in the first tab: all 50, once, in order; the second tab's
  // unread count clears, and alice sees her messages read.
  await bob.bringToFront();
  await bob.click(`[data-conv="${conv}"]`);
  await bob.waitForFunction(() => document.querySelectorAll("#messages .msg").length === 50);
  assert.deepEqual(await texts(bob), want);
  // Alice's messages say who wrote them, once bob's device has her name.
  await bob.waitForFunction(() => {
    const authors = [...document.querySelectorAll("#messages .msg .author")];
    return authors.length === 50 && authors.every((e) => e.textContent === "alice");
  });
  await shot(bob, "4-bob-caught-up");
  await bob2.waitForSelector(`[data-conv="${conv}"] .unread`, { state: "detached" });
  await shot(bob2, "5-bob-second-tab-read");
  await alice.waitForFunction((c) => (globalThis as any).ferry.messages(c).every((m: any) => m.status === "read"), conv);
  await shot(alice, "6-alice-read-marks");

  // Alice sets the name others see her by; bob's page shows it once it
  // asks for the members again, after its reload below.
  alice.once("dialog", (d) => void d.accept("Alice Liddell"));
  await alice.click("#setname");
  await alice.waitForFunction((c) => (globalThis as any).ferry.knownMembers(c)?.some((m: any) => m.displayName === "Alice Liddell"), conv);

  // A reload keeps them: they come from IndexedDB, not the server.
  await bob.reload();
  await bob.waitForSelector('#status[data-state="live"]');
  await bob.click(`[data-conv="${conv}"]`);
  await bob.waitForFunction(() => document.querySelectorAll("#messages .msg").length === 50);
  assert.deepEqual(await texts(bob), want);
  assert.equal(await bob.evaluate(() => (globalThis as any).ferry.status().receivedOps), 0, "the reloaded page fetched nothing again");
  await bob.waitForFunction(() => {
    const authors = [...document.querySelectorAll("#messages .msg .author")];
    return authors.length === 50 && authors.every((e) => e.textContent === "Alice Liddell (alice)");
  });

  // A Go SDK device (the ferry command, as bob) and the browser, both ways.
  const ferry = goBuild("ferry");
  const profile = mkdtempSync(join(tmpdir(), "ferry-e2e-cli-"));
  const cli = (...args: string[]) => {
    const r = spawnSync(ferry, ["--profile", profile, "--server", server.url, "--json", ...args], {
      encoding: "utf8", env: { ...process.env, FERRY_PASSWORD: "correct horse battery" }, timeout: 60_000,
    });
    assert.equal(r.status, 0, `ferry ${args.join(" ")}: ${r.stderr}`);
    return r.stdout;
  };
  cli("login", "bob", "--device", "go-sdk");
  cli("sync");
  cli("send", conv, "hello from Go");
  await alice.waitForFunction(() => [...document.querySelectorAll("#messages .msg .text")].some((e) => e.textContent === "hello from Go"));
  await alice.fill("#text", "hello from the browser");
  await alice.press("#text", "Enter");
  await alice.waitForFunction((c) => {
    const f = (globalThis as any).ferry;
    return f.messages(c).some((m: any) => m.text === "hello from the browser" && m.seq > 0);
  }, conv);
  cli("sync");
  const history = cli("history", conv, "--limit", "5");
  assert.match(history, /hello from the browser/);
  await shot(alice, "7-go-and-browser");

  // The conversation's header lists its members; alice adds carol there,
  // and carol leaves with its button.
  const members = (page: Page) => page.$eval("#convmembers", (e) => e.textContent ?? "");
  await alice.waitForFunction(() => document.querySelector("#convmembers")?.textContent === "alice (owner), bob");
  const carol = await signUp(await browser.newContext(), "carol");
  await alice.fill("#newmember", "carol");
  await alice.click("#addmember button");
  await carol.waitForSelector(`[data-conv="${conv}"]`);
  await alice.waitForFunction(() => document.querySelector("#convmembers")?.textContent === "alice (owner), bob, carol");
  await carol.click(`[data-conv="${conv}"]`);
  await carol.waitForFunction(() => document.querySelector("#convmembers")?.textContent === "alice (owner), bob, carol");
  await shot(carol, "8-carol-added");
  carol.on("dialog", (d) => void d.accept());
  await carol.click("#leave");
  await carol.waitForFunction(() => document.querySelector("#convmembers")?.textContent === "you are no longer a member");
  await alice.waitForFunction(() => document.querySelector("#convmembers")?.textContent === "alice (owner), bob");
  assert.equal(await members(bob), "alice (owner), bob");
  // Bob, a member, may not add anyone: no form for it.
  assert.equal(await bob.isVisible("#addmember"), false, "a member is shown the add form");
  await shot(alice, "9-carol-left");

  // The last owner's leave is refused, and the header says so until
  // dismissed.
  alice.on("dialog", (d) => void d.accept());
  await alice.click("#leave");
  await alice.waitForSelector("#convfailed .failed");
  assert.match(await alice.$eval("#convfailed .failed", (e) => e.textContent ?? ""), /leave or removal refused: .*last owner/);
  await shot(alice, "10-last-owner-refused");
  // The page draws again between the dismiss's mouse-down and mouse-up
  // (for her own message, sent then): the click still lands.
  await alice.hover("#convfailed .failed button");
  await alice.mouse.down();
  await alice.evaluate((c) => (globalThis as any).ferry.send(c, "sent while dismissing"), conv);
  await alice.waitForFunction(() => [...document.querySelectorAll("#messages .msg .text")].some((e) => e.textContent === "sent while dismissing"));
  await alice.mouse.up();
  await alice.waitForSelector("#convfailed .failed", { state: "detached" });
  assert.equal(await alice.isVisible("#leave"), true, "Leave stays hidden after its refusal");
});

test("a duplicated tab is a new device: the original holds its database", { timeout: 60_000 }, async () => {
  const ctx = await browser.newContext();
  const first = await signUp(ctx, "dora");
  const tab = await first.evaluate(() => sessionStorage.getItem("ferry-tab"));
  const device = await first.evaluate(() => (globalThis as any).ferry.session.deviceId);
  assert.ok(tab && device);

  // Chromium's "Duplicate tab" copies sessionStorage, and with it the tab
  // id that names the database: a page given the same id stands for it.
  const duplicate = async () => {
    const page = await ctx.newPage();
    page.on("pageerror", (err) => console.error(`dora: page error: ${err.message}`));
    await page.addInitScript((id) => sessionStorage.setItem("ferry-tab", id), tab);
    await page.goto(server.url + "/");
    await page.waitForFunction(() => (globalThis as any).ferry !== undefined);
    return page;
  };
  const second = await duplicate();
  assert.notEqual(await second.evaluate(() => sessionStorage.getItem("ferry-tab")), tab, "the duplicate took a new tab id");
  assert.equal(await second.evaluate(() => (globalThis as any).ferry.session), undefined, "the duplicate is a new device, signed out");
  assert.equal(await first.evaluate(() => (globalThis as any).ferry.session.deviceId), device);

  // Once the original tab is gone, its database is free again: a page with
  // its id opens it, signed in as its device.
  await first.close();
  const third = await duplicate();
  assert.equal(await third.evaluate(() => sessionStorage.getItem("ferry-tab")), tab);
  assert.equal(await third.evaluate(() => (globalThis as any).ferry.session?.deviceId), device);
  await ctx.close();
});

test("a long conversation draws its newest messages, and older ones when asked", { timeout: 60_000 }, async () => {
  const ctx = await browser.newContext();
  const page = await signUp(ctx, "erin");
  await page.fill("#title", "long");
  await page.click("#newconv button");
  const conv = await (await page.waitForSelector("[data-conv]")).getAttribute("data-conv") as string;
  await page.evaluate(async (c) => {
    const f = (globalThis as any).ferry;
    for (let i = 1; i <= 130; i++) await f.send(c, `long ${i}`);
  }, conv);
  await page.waitForFunction(() => (globalThis as any).ferry.status().pending === 0);
  await page.waitForFunction(() => document.querySelectorAll("#messages .msg").length === 100);
  assert.equal((await texts(page)).at(-1), "long 130");
  assert.equal((await texts(page))[0], "long 31");
  await page.click("#messages button:text('show older messages')");
  await page.waitForFunction(() => document.querySelectorAll("#messages .msg").length === 130);
  assert.equal((await texts(page))[0], "long 1");
  assert.equal(await page.locator("#messages button:text('show older messages')").count(), 0);
  await ctx.close();
});

test("a revoked browser signs in again from the form, and what it queued goes out", { timeout: 60_000 }, async () => {
  const ctx = await browser.newContext();
  const page = await signUp(ctx, "fay");
  await page.fill("#title", "notes");
  await page.click("#newconv button");
  const conv = await (await page.waitForSelector("[data-conv]")).getAttribute("data-conv") as string;
  await page.click(`[data-conv="${conv}"]`);

  // Another device of fay's revokes the browser.
  let token = "";
  const auth: Interceptor = (next) => async (req) => {
    if (token) req.header.set("Authorization", `Bearer ${token}`);
    return next(req);
  };
  const accounts = createClient(AccountService, createConnectTransport({ baseUrl: server.url, interceptors: [auth] }));
  token = (await accounts.login({ username: "fay", password: "correct horse battery", deviceName: "other" })).session!.token;
  const revoked = await page.evaluate(() => (globalThis as any).ferry.session.deviceId);
  await accounts.revokeDevice({ deviceId: revoked });
  await page.waitForSelector('#status[data-state="failed"]');

  // Written while refused: it waits in the outbox.
  await page.fill("#text", "written while revoked");
  await page.press("#text", "Enter");
  await page.waitForFunction(() => (globalThis as any).ferry.status().pending === 1);
  await page.waitForSelector("#signin", { state: "visible" });
  await shot(page, "8-revoked-sign-in-again");
  await page.fill("#username", "fay");
  await page.fill("#password", "correct horse battery");
  await page.click("#login");
  await page.waitForSelector('#status[data-state="live"]');
  await page.waitForFunction((c) => (globalThis as any).ferry.messages(c).some((m: any) => m.text === "written while revoked" && m.seq > 0), conv);
  assert.notEqual(await page.evaluate(() => (globalThis as any).ferry.session.deviceId), revoked);
  assert.deepEqual(await texts(page), ["written while revoked"]);
  await ctx.close();
});

// A click lands on a row that did not change while the page draws again
// between its mouse-down and mouse-up, for a row added or changed in the
// same list: the row's node stays in the document (taken out and put
// back, the click is lost).
test("a click on a row lands while another row of its list changes", { timeout: 60_000 }, async () => {
  const page = await signUp(await browser.newContext(), "gwen");
  const create = async (title: string) => {
    await page.fill("#title", title);
    await page.click("#newconv button");
    return (await page.waitForSelector(`[data-conv] .title:text-is("${title}")`)).evaluate((e) => e.closest("[data-conv]")!.getAttribute("data-conv")!);
  };
  const send = (conv: string, text: string) => page.evaluate(([c, t]) => (globalThis as any).ferry.send(c, t), [conv, text]);
  const a = await create("a");
  const b = await create("b"); // the newest: listed first, and stays so below

  // A 👍 on a message while another message is added.
  await page.click(`[data-conv="${b}"]`);
  await send(b, "first");
  await page.waitForSelector("#messages .msg .actions button:text-is('👍')");
  await page.waitForFunction(() => (globalThis as any).ferry.status().pending === 0);
  await page.hover("#messages .msg .actions button:text-is('👍')");
  await page.mouse.down();
  await send(b, "second");
  await page.waitForFunction(() => [...document.querySelectorAll("#messages .msg .text")].some((e) => e.textContent === "second"));
  await page.mouse.up();
  await page.waitForFunction((c) => ((globalThis as any).ferry.messages(c)[0].reactions["👍"] ?? []).length === 1, b);

  // A click on conversation a while b's row (its last message) changes,
  // staying where it is.
  assert.deepEqual(await page.$$eval("[data-conv]", (rows) => rows.map((r) => r.getAttribute("data-conv"))), [b, a]);
  await page.hover(`[data-conv="${a}"] .title`);
  await page.mouse.down();
  await send(b, "third");
  await page.waitForFunction((c) => document.querySelector(`[data-conv="${c}"] .last`)?.textContent === "third", b);
  assert.deepEqual(await page.$$eval("[data-conv]", (rows) => rows.map((r) => r.getAttribute("data-conv"))), [b, a]);
  await page.mouse.up();
  await page.waitForSelector(`[data-conv="${a}"].open`);
});
