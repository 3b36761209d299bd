/**
 * Starts a real `sbx server` for a test file: free loopback ports, a data
 * dir under /var/tmp whose `images` is the repository's shared test images,
 * a cgroup parent of its own (`--cgroup-parent`, named after the data dir,
 * made fresh for it and removed after it), and a teardown that removes every
 * sandbox and snapshot left behind. The server is handed out once `/healthz`
 * says it is `ready` (the first one on a fresh machine builds the default image).
 */

import { ChildProcess, spawn } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  statSync,
  symlinkSync,
} from "node:fs";
import { createServer } from "node:net";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { SandboxClient } from "@sbx/sdk";

export interface TestServer {
  apiUrl: string;
  apiKey?: string;
  proxyUrl: string;
  client: SandboxClient;
  /** Deletes what is left, SIGTERMs the server and removes its data dir. */
  stop(): Promise<void>;
}

/** The first server on a fresh machine builds the default image (1-2 minutes). */
const START_TIMEOUT_MS = 15 * 60 * 1000;

const CGROUP_ROOT = "/sys/fs/cgroup";

function isDir(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/** The directories of cgroup `name` that exist: one per v1 hierarchy, or the v2 one. */
function cgroupDirs(name: string): string[] {
  const dirs = [join(CGROUP_ROOT, name)];
  for (const h of readdirSync(CGROUP_ROOT)) dirs.push(join(CGROUP_ROOT, h, name));
  return dirs.filter(isDir);
}

/** Removes what is left of cgroup `name` (children first), quietly: the server removes it at a clean stop. */
function removeCgroup(name: string): void {
  const rmTree = (dir: string) => {
    try {
      for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) rmTree(join(dir, e.name));
      rmdirSync(dir);
    } catch {
      // busy or gone
    }
  };
  for (const d of cgroupDirs(name)) rmTree(d);
}

/** sdk/typescript: the nearest directory above this file with a package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("package.json not found above the tests");
    dir = up;
  }
  return dir;
}

function requiredEnv(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must name the ${name === "SBX_BIN" ? "sbx" : "sbx-agent"} binary to test`);
  return resolve(v);
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

const children = new Set<ChildProcess>();
// If the test process dies without teardown, do not leave servers behind.
process.once("exit", () => {
  for (const c of children) c.kill("SIGTERM");
});

export interface ServerOptions {
  /** Start the server with this API key (`--api-key`); the client sends it. */
  apiKey?: string;
}

export async function startServer(options: ServerOptions = {}): Promise<TestServer> {
  const sbx = requiredEnv("SBX_BIN");
  const agent = requiredEnv("SBX_AGENT_BIN");
  const images = resolve(packageRoot(), "../../target/sbx-test-images");
  mkdirSync(images, { recursive: true });
  const dataDir = mkdtempSync("/var/tmp/sbx-ts-test-");
  const cgroupParent = basename(dataDir);
  const left = cgroupDirs(cgroupParent);
  if (left.length) {
    rmSync(dataDir, { recursive: true, force: true });
    throw new Error(`cgroup ${cgroupParent} already exists: ${left.join(", ")}`);
  }
  symlinkSync(images, join(dataDir, "images"));
  const logPath = join(dataDir, "server.log");
  const giveUp = (message: string): Error => {
    const err = new Error(`${message}; log:\n${tail(logPath)}`);
    removeDataDir(dataDir);
    removeCgroup(cgroupParent);
    return err;
  };

  // A port found free may be taken before the server binds it: retry on others.
  for (let attempt = 0; attempt < 5; attempt++) {
    const apiPort = await freePort();
    const proxyPort = await freePort();
    const log = openSync(logPath, "a");
    const env: NodeJS.ProcessEnv = { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" };
    delete env.SBX_API_KEY;
    const child = spawn(
      sbx,
      [
        "server",
        "--data-dir", dataDir,
        "--cgroup-parent", cgroupParent,
        "--api-addr", `127.0.0.1:${apiPort}`,
        "--proxy-addr", `127.0.0.1:${proxyPort}`,
        "--agent-bin", agent,
        ...(options.apiKey ? ["--api-key", options.apiKey] : []),
      ],
      { stdio: ["ignore", log, log], env },
    );
    children.add(child);
    let exited = false;
    const exit = new Promise<void>((r) => child.once("exit", () => ((exited = true), children.delete(child), r())));
    const apiUrl = `http://127.0.0.1:${apiPort}`;
    const deadline = Date.now() + START_TIMEOUT_MS;
    let health: Health | undefined;
    let ready = false;
    while (!exited && Date.now() < deadline) {
      health = (await healthz(apiUrl, options.apiKey)) ?? health;
      if (health?.ready === true) {
        ready = true;
        break;
      }
      if (health?.default_image?.status === "failed") break;
      await new Promise((r) => setTimeout(r, 100));
    }
    if (exited) {
      // A port taken meanwhile: the next attempt makes the parent afresh.
      removeCgroup(cgroupParent);
      continue;
    }
    if (!ready) {
      child.kill("SIGKILL");
      await exit;
      const image = health?.default_image;
      throw giveUp(
        image?.status === "failed"
          ? `sbx server cannot build its default image: ${image.error}`
          : `sbx server not ready in time; last /healthz ${JSON.stringify(health)}`,
      );
    }
    const client = new SandboxClient({ apiUrl, apiKey: options.apiKey ?? "", namespace: "default" });
    return {
      apiUrl,
      apiKey: options.apiKey,
      proxyUrl: `http://127.0.0.1:${proxyPort}`,
      client,
      async stop() {
        try {
          await removeEverything(client);
          await waitForTeardown(dataDir);
        } finally {
          child.kill("SIGTERM");
          const killer = setTimeout(() => child.kill("SIGKILL"), 20_000);
          await exit;
          clearTimeout(killer);
          removeDataDir(dataDir);
          removeCgroup(cgroupParent);
        }
      },
    };
  }
  throw giveUp("sbx server kept exiting during start");
}

interface Health {
  healthy?: boolean;
  ready?: boolean;
  default_image?: { status?: string; steps?: number; progress?: string; error?: string };
}

/** The server's `/healthz`, or undefined while it does not answer. */
async function healthz(apiUrl: string, apiKey?: string): Promise<Health | undefined> {
  try {
    const r = await fetch(`${apiUrl}/healthz`, {
      headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {},
      signal: AbortSignal.timeout(2000),
    });
    return r.ok ? ((await r.json()) as Health) : undefined;
  } catch {
    return undefined; // not up yet
  }
}

/** Sandboxes outlive the server process: terminate them before it stops. */
async function removeEverything(client: SandboxClient): Promise<void> {
  for (const s of await client.list()) {
    if (s.status !== "terminated") await client.delete(s.sandboxId).catch(() => {});
  }
  for (const s of await client.listSnapshots()) {
    await client.deleteSnapshot(s.snapshotId).catch(() => {});
  }
}

/** The server tears sandboxes down in the background after a delete: wait for it. */
async function waitForTeardown(dataDir: string): Promise<void> {
  const dir = join(dataDir, "sandboxes");
  const deadline = Date.now() + 60_000;
  while (existsSync(dir) && readdirSync(dir).length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Removes the data dir, unless something is still mounted in it (then it is left, with a warning). */
function removeDataDir(dataDir: string): void {
  const mounts = readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[1])
    .filter((m) => m && (m === dataDir || m.startsWith(`${dataDir}/`)));
  if (mounts.length) {
    console.error(`sbx test server left mounts under ${dataDir}; not removing it:\n${mounts.join("\n")}`);
    return;
  }
  rmSync(dataDir, { recursive: true, force: true });
}

function tail(path: string): string {
  try {
    return readFileSync(path, "utf8").split("\n").slice(-40).join("\n");
  } catch {
    return "(no log)";
  }
}
