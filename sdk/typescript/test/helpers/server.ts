/**
 * Starts a real `sbx server` for a test file: free loopback ports, a data
 * dir under /var/tmp whose `images` is the repository's shared test images,
 * and a teardown that removes every sandbox and snapshot left behind.
 */

import { ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
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

/** The first server on a fresh machine builds the default image (about a minute). */
const START_TIMEOUT_MS = 15 * 60 * 1000;

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
  symlinkSync(images, join(dataDir, "images"));
  const logPath = join(dataDir, "server.log");

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
    while (!exited && Date.now() < deadline) {
      try {
        const r = await fetch(`${apiUrl}/healthz`, {
          headers: options.apiKey ? { Authorization: `Bearer ${options.apiKey}` } : {},
          signal: AbortSignal.timeout(2000),
        });
        if (r.ok) break;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    if (exited) continue;
    if (Date.now() >= deadline) {
      child.kill("SIGKILL");
      throw new Error(`sbx server did not come up; log:\n${tail(logPath)}`);
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
        }
      },
    };
  }
  throw new Error(`sbx server kept exiting during start; log:\n${tail(logPath)}`);
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
