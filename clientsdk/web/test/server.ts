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
  stop(): Promise<void>;
}

/** Starts ferryd on a free loopback port with a fresh store. */
export async function startServer(): Promise<Server> {
  const bin = goBuild("ferryd");
  const dir = mkdtempSync(join(tmpdir(), "ferry-web-"));
  const p: ChildProcess = spawn(bin, [
    "--addr", "127.0.0.1:0", "--data", join(dir, "data"), "--allow-registration",
    "--password-memory-kib", "64", "--password-passes", "1", "--log-level", "warn",
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
    stop: async () => {
      const exited = new Promise((r) => p.once("exit", r));
      p.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
