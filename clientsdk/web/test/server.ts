// Test helpers: a real ferryd on loopback, with a fresh store.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

/** The repository root: tests run from clientsdk/web. */
export const repoRoot = resolve(process.cwd(), "../..");

/** Builds a Go command of the repository into build/, once per run. */
export function goBuild(cmd: string): string {
  const out = resolve(process.cwd(), "build", cmd);
  if (process.env.FERRY_SKIP_BUILD && existsSync(out)) return out;
  // Test files run in parallel processes: build aside, then rename, so no
  // process runs a half-written binary.
  const tmp = `${out}.${process.pid}`;
  const r = spawnSync("go", ["build", "-o", tmp, `./cmd/${cmd}`], { cwd: repoRoot, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`go build ./cmd/${cmd} failed:\n${r.stderr}`);
  renameSync(tmp, out);
  return out;
}

export interface Server {
  url: string;
  /** The listen address, host:port, to start another server on. */
  addr: string;
  stop(): Promise<void>;
}

export interface ServerOptions {
  /** The store folder; the caller owns it. Default: a fresh one, removed on stop. */
  data?: string;
  /** host:port; default a free loopback port. */
  addr?: string;
  /** More ferryd flags. */
  args?: string[];
}

/** Starts ferryd on loopback with a fresh store (or the given one). */
export async function startServer(opts: ServerOptions = {}): Promise<Server> {
  const bin = goBuild("ferryd");
  const own = opts.data === undefined ? mkdtempSync(join(tmpdir(), "ferry-web-")) : undefined;
  const data = opts.data ?? join(own!, "data");
  const p: ChildProcess = spawn(bin, [
    "--addr", opts.addr ?? "127.0.0.1:0", "--data", data, "--allow-registration",
    // Every test signs up from 127.0.0.1: no sign-in limit.
    "--password-memory-kib", "64", "--password-passes", "1", "--log-level", "warn", "--sign-in-limit", "0", ...(opts.args ?? []),
  ], { stdio: ["ignore", "pipe", "inherit"] });
  const url = await new Promise<string>((res, rej) => {
    let out = "";
    const timer = setTimeout(() => rej(new Error(`ferryd did not start listening: ${out}`)), 30_000);
    p.stdout!.on("data", (b: Buffer) => {
      out += b.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        res(m[1]!);
      }
    });
    p.on("exit", (code) => rej(new Error(`ferryd exited with ${code}: ${out}`)));
  });
  return {
    url,
    addr: new URL(url).host,
    stop: async () => {
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      await exited;
      if (own) rmSync(own, { recursive: true, force: true });
    },
  };
}

/** Copies a stopped server's store with `ferryd backup`. */
export function backup(data: string, to: string): void {
  const r = spawnSync(goBuild("ferryd"), ["backup", "--data", data, "--to", to], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`ferryd backup failed:\n${r.stderr}`);
}
