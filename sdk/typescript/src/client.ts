/** The control-plane client: sandbox lifecycle, snapshots, suspend/resume, copies, images. */

import { openAsBlob } from "node:fs";
import { open } from "node:fs/promises";
import { basename, posix } from "node:path";
import { contextTar } from "./context.js";
import {
  ConflictError,
  ImageBuildError,
  ImageImportError,
  SandboxError,
  SbxError,
  SbxTimeoutError,
  SnapshotError,
  SnapshotTimeoutError,
} from "./errors.js";
import { camelize, HttpClient, ndjsonLines, sleep } from "./http.js";
import { Sandbox } from "./sandbox.js";
import type {
  CopyResult,
  CreateSandboxResult,
  CreateSnapshotResult,
  ImageArchiveFormat,
  ImageBuildProgress,
  ImageImportProgress,
  ImageInfo,
  NetworkPolicy,
  PoolInfo,
  SandboxInfo,
  SandboxStatus,
  LogEntry,
  LogPage,
  LogProcess,
  LogQuery,
  SecretInfo,
  SnapshotInfo,
  SnapshotStatus,
  SnapshotType,
} from "./types.js";

export interface ClientOptions {
  /** Control-plane URL; default `SBX_API_URL` or `http://localhost:8900`. */
  apiUrl?: string;
  /** Sent as `Authorization: Bearer …`; default `SBX_API_KEY`. */
  apiKey?: string;
  /** Default `SBX_NAMESPACE` or `default`. */
  namespace?: string;
  /**
   * Sandbox proxy URL, used only when the server's answer carries no
   * `sandbox_url`; default `SBX_PROXY_URL`.
   */
  proxyUrl?: string;
}

export interface CreateSandboxOptions {
  /** A name makes the sandbox addressable by it and suspendable. */
  name?: string;
  image?: string;
  cpus?: number;
  memoryMb?: number;
  diskMb?: number;
  /** Idle time after which the sandbox is suspended (named) or terminated (ephemeral). */
  timeoutSecs?: number;
  entrypoint?: string[];
  secretNames?: string[];
  allowInternetAccess?: boolean;
  allowOut?: string[];
  denyOut?: string[];
  /**
   * Restore from this snapshot. Everything not given here is inherited from
   * it; a memory snapshot also fixes image and resources.
   */
  snapshotId?: string;
  allowUnauthenticatedAccess?: boolean;
  exposedPorts?: number[];
  /** Resume a suspended sandbox when traffic reaches it (server default: true). */
  autoResume?: boolean;
  /**
   * Wait until the sandbox runs (default). With `false` the call returns at
   * once with status `pending`.
   */
  wait?: boolean;
  maxPendingSecs?: number;
  /** Seconds to wait for a pending sandbox to run (default 300). */
  timeout?: number;
}

/** A warm pool's template and counts (`createPool`, `updatePool`). */
export interface PoolOptions {
  image?: string;
  cpus?: number;
  memoryMb?: number;
  diskMb?: number;
  /** Idle time after which a claimed sandbox ends, counted from the claim (0: none). */
  timeoutSecs?: number;
  entrypoint?: string[];
  /** Booted, unclaimed sandboxes to keep (server default 1). */
  warmContainers?: number;
  /** At most this many sandboxes of the pool at once, warm and claimed (default: no cap). */
  maxContainers?: number;
  allowInternetAccess?: boolean;
  allowOut?: string[];
  denyOut?: string[];
}

/**
 * Changes to a pool: what is given replaces that setting, the rest stays.
 * `null` drops the entrypoint or lifts the cap.
 */
export interface UpdatePoolOptions extends Omit<PoolOptions, "entrypoint" | "maxContainers"> {
  entrypoint?: string[] | null;
  maxContainers?: number | null;
}

export interface ClaimOptions {
  /** A name for the claimed sandbox. */
  name?: string;
  /**
   * Wait until the sandbox runs (default). At the pool's cap a claim stays
   * `pending` (`pool_at_capacity`) until a sandbox of the pool ends; with
   * `false` the call returns within about a second, maybe `pending`.
   */
  wait?: boolean;
  /** Seconds to wait for a pending sandbox to run (default 300). */
  timeout?: number;
}

export interface SnapshotWaitOptions {
  snapshotType?: SnapshotType;
  /** Seconds (default 300). */
  timeout?: number;
  /** Seconds between polls (default 1). */
  pollInterval?: number;
  /**
   * `local_ready` (default) is enough to restore from; `completed` waits
   * until the snapshot is in the store.
   */
  waitUntil?: "local_ready" | "completed";
}

export interface CheckpointOptions extends Omit<SnapshotWaitOptions, "snapshotType"> {
  /** `filesystem` (server default) or `memory` (processes and memory too). */
  checkpointType?: SnapshotType;
  /** Wait until restorable (default true); otherwise return the snapshot as just started. */
  wait?: boolean;
}

export interface LifecycleWaitOptions {
  /**
   * How long the server may hold the call until the target state (ms,
   * at most 30000; default 30000).
   */
  waitMs?: number;
  /** Wait for the target state at all (default true). */
  wait?: boolean;
  /** Seconds to wait in total, polling after the server's wait (default 300). */
  timeout?: number;
}

export interface UpdateSandboxOptions {
  /** A new name; `null` removes it. */
  name?: string | null;
  allowUnauthenticatedAccess?: boolean;
  exposedPorts?: number[];
  autoResume?: boolean;
  /** A new egress policy, applied at once (entries: addresses, CIDR blocks, host names,
   * `*.domain` patterns); `null`: back to the default policy. */
  network?: Partial<NetworkPolicy> | null;
}

export interface ImportImageOptions {
  /** The name sandboxes use; default: the repository's last component. An earlier import of it is replaced. */
  name?: string;
  /** Plain HTTP to the registry. */
  insecure?: boolean;
  username?: string;
  password?: string;
  /** Called with each progress line: `resolved`, then `fetched` and `applied` per layer. */
  onProgress?: (event: ImageImportProgress) => void;
}

export interface ImportImageArchiveOptions {
  /** Default: the file name up to its first dot. */
  name?: string;
  /** Default: `oci-archive` when the tar has an `oci-layout` at its top, else `docker-archive`. */
  format?: ImageArchiveFormat;
  onProgress?: (event: ImageImportProgress) => void;
}

export interface BuildImageOptions {
  /** The directory COPY and ADD see (default `.`), sent without what its `.dockerignore` excludes. */
  context?: string;
  /** The Dockerfile: a local path (relative to the current directory, as `sbx image build -f` takes it),
   * inside the context or not; default `CONTEXT/Dockerfile`. */
  dockerfile?: string;
  /** ARG values. */
  buildArgs?: Record<string, string>;
  /** Run every step again instead of taking its result from the cache. */
  noCache?: boolean;
  /** FROM images from a plain-HTTP registry. */
  insecure?: boolean;
  /** Called with each progress line: `warning`, then per step `step`, `cached` or `output` lines, `step_done`. */
  onProgress?: (event: ImageBuildProgress) => void;
}

const FINAL_STATUSES: ReadonlySet<SandboxStatus> = new Set(["terminated", "failed", "timeout"]);

export class SandboxClient {
  readonly apiUrl: string;
  readonly namespace: string;
  /** @internal */
  readonly http: HttpClient;
  /** @internal */
  readonly proxyUrl?: string;

  constructor(options: ClientOptions = {}) {
    this.apiUrl = (options.apiUrl ?? process.env.SBX_API_URL ?? "http://localhost:8900").replace(/\/+$/, "");
    this.namespace = options.namespace ?? process.env.SBX_NAMESPACE ?? "default";
    this.proxyUrl = options.proxyUrl ?? process.env.SBX_PROXY_URL;
    this.http = new HttpClient(options.apiKey ?? process.env.SBX_API_KEY);
  }

  private url(path: string): string {
    return `${this.apiUrl}/v1/namespaces/${encodeURIComponent(this.namespace)}${path}`;
  }

  private sandboxPath(id: string, rest = ""): string {
    return this.url(`/sandboxes/${encodeURIComponent(id)}${rest}`);
  }

  // ---- sandboxes ----

  /**
   * Creates a sandbox (or restores one with `snapshotId`). Unless
   * `wait: false`, returns once it runs; throws {@link SandboxError}
   * when it fails to start.
   */
  async create(options: CreateSandboxOptions = {}): Promise<CreateSandboxResult> {
    const result = camelize<CreateSandboxResult>(
      await this.http.json(this.url("/sandboxes"), {
        method: "POST",
        json: createBody(options),
        headers: { "X-Tensorlake-Request-Timeout-Grace-Ms": "5000" },
      }),
    );
    if (options.wait === false || result.status === "running") return result;
    if (result.status !== "pending") throw sandboxFailed(result);
    const info = await this.waitForStatus(result.sandboxId, "running", options.timeout ?? 300);
    return { ...result, status: info.status, sandboxUrl: info.sandboxUrl, name: info.name };
  }

  /** Creates a sandbox and returns a {@link Sandbox} to work in it. */
  async createAndConnect(options: CreateSandboxOptions = {}): Promise<Sandbox> {
    const result = await this.create({ ...options, wait: true });
    return new Sandbox(this, {
      sandboxId: result.sandboxId,
      name: result.name ?? options.name,
      sandboxUrl: result.sandboxUrl,
    });
  }

  /**
   * A {@link Sandbox} for an existing sandbox (by id or name); waits for a
   * pending one to run. A suspended one resumes on its first request.
   */
  async connect(identifier: string): Promise<Sandbox> {
    let info = await this.get(identifier);
    if (FINAL_STATUSES.has(info.status)) throw sandboxFailed(info);
    if (info.status === "pending") info = await this.waitForStatus(identifier, "running");
    return new Sandbox(this, info);
  }

  async get(identifier: string): Promise<SandboxInfo> {
    return normalizeSandbox(await this.http.json(this.sandboxPath(identifier), { notFound: "sandbox" }));
  }

  /** Sandboxes of the namespace, optionally only those with this status. */
  async list(options: { status?: SandboxStatus } = {}): Promise<SandboxInfo[]> {
    const body = await this.http.json<{ sandboxes: unknown[] }>(this.url("/sandboxes"), {
      query: { status: options.status },
    });
    return (body?.sandboxes ?? []).map(normalizeSandbox);
  }

  /** Terminates a sandbox. Idempotent on the server; throws SandboxNotFoundError for an unknown id. */
  async delete(identifier: string): Promise<void> {
    await this.http.request(this.sandboxPath(identifier), { method: "DELETE", notFound: "sandbox" });
  }

  async update(identifier: string, changes: UpdateSandboxOptions): Promise<SandboxInfo> {
    const body: Record<string, unknown> = {};
    if (changes.name !== undefined) body.name = changes.name;
    if (changes.allowUnauthenticatedAccess !== undefined)
      body.allow_unauthenticated_access = changes.allowUnauthenticatedAccess;
    if (changes.exposedPorts !== undefined) body.exposed_ports = changes.exposedPorts;
    if (changes.autoResume !== undefined) body.auto_resume = changes.autoResume;
    if (changes.network !== undefined) {
      body.network =
        changes.network === null
          ? null
          : {
              allow_internet_access: changes.network.allowInternetAccess ?? true,
              allow_out: changes.network.allowOut ?? [],
              deny_out: changes.network.denyOut ?? [],
            };
    }
    return normalizeSandbox(
      await this.http.json(this.sandboxPath(identifier), { method: "PATCH", json: body, notFound: "sandbox" }),
    );
  }

  /** Gives the sandbox a new name (`null` removes it). */
  rename(identifier: string, name: string | null): Promise<SandboxInfo> {
    return this.update(identifier, { name });
  }

  /** Suspends a named sandbox (ephemeral ones answer 400) and waits until it is `suspended`. */
  suspend(identifier: string, options: LifecycleWaitOptions = {}): Promise<SandboxInfo> {
    return this.changeLifecycle(identifier, "suspend", "suspended", options);
  }

  /** Resumes a suspended sandbox and waits until it is `running`. */
  resume(identifier: string, options: LifecycleWaitOptions = {}): Promise<SandboxInfo> {
    return this.changeLifecycle(identifier, "resume", "running", options);
  }

  private async changeLifecycle(
    identifier: string,
    action: "suspend" | "resume",
    target: SandboxStatus,
    options: LifecycleWaitOptions,
  ): Promise<SandboxInfo> {
    const wait = options.wait ?? true;
    const waitMs = wait ? Math.min(options.waitMs ?? 30_000, 30_000) : undefined;
    let res: Response;
    try {
      res = await this.http.request(this.sandboxPath(identifier, `/${action}`), {
        method: "POST",
        query: { wait_ms: waitMs },
        notFound: "sandbox",
      });
    } catch (e) {
      // Already there (or on the way): accept, as the Tensorlake client does.
      if (!(e instanceof ConflictError)) throw e;
      const info = await this.get(identifier);
      if (info.status !== target && !wait) throw e;
      if (info.status === target) return info;
      return this.waitForStatus(identifier, target, options.timeout ?? 300);
    }
    const text = await res.text();
    let info: SandboxInfo | undefined;
    if (text.trim()) {
      const body = JSON.parse(text) as Record<string, unknown>;
      if (body && typeof body.status === "string" && body.resources) info = normalizeSandbox(body);
    }
    if (!wait) return info ?? this.get(identifier);
    if (res.status === 200 && info?.status === target) return info;
    return this.waitForStatus(identifier, target, options.timeout ?? 300);
  }

  /**
   * Polls until the sandbox has `status`; throws {@link SandboxError}
   * if it ends instead and {@link SbxTimeoutError} after `timeout` seconds.
   */
  async waitForStatus(identifier: string, status: SandboxStatus, timeout = 300): Promise<SandboxInfo> {
    const deadline = Date.now() + timeout * 1000;
    for (;;) {
      const info = await this.get(identifier);
      if (info.status === status) return info;
      if (FINAL_STATUSES.has(info.status)) throw sandboxFailed(info);
      if (Date.now() > deadline) {
        throw new SbxTimeoutError(
          `sandbox ${identifier} did not become ${status} within ${timeout}s (it is ${info.status})`,
        );
      }
      await sleep(250);
    }
  }

  /**
   * Live copies: `times` new running sandboxes booted from a memory
   * checkpoint of this one. The checkpoint (`snapshotId`) stays until deleted.
   */
  async copy(identifier: string, options: { times?: number } = {}): Promise<CopyResult> {
    return camelize<CopyResult>(
      await this.http.json(this.sandboxPath(identifier, "/copy"), {
        method: "POST",
        query: { times: options.times ?? 1 },
        notFound: "sandbox",
      }),
    );
  }

  // ---- snapshots ----

  /** Starts a snapshot and returns at once (status `in_progress`). */
  async snapshot(identifier: string, options: { snapshotType?: SnapshotType } = {}): Promise<CreateSnapshotResult> {
    return camelize<CreateSnapshotResult>(
      await this.http.json(this.sandboxPath(identifier, "/snapshot"), {
        method: "POST",
        json: options.snapshotType ? { snapshot_type: options.snapshotType } : undefined,
        notFound: "sandbox",
      }),
    );
  }

  async getSnapshot(snapshotId: string): Promise<SnapshotInfo> {
    return normalizeSnapshot(
      await this.http.json(this.url(`/snapshots/${encodeURIComponent(snapshotId)}`), { notFound: "snapshot" }),
    );
  }

  /** Snapshots of the namespace, or only those taken from one sandbox. */
  async listSnapshots(options: { sandboxId?: string } = {}): Promise<SnapshotInfo[]> {
    const url = options.sandboxId ? this.sandboxPath(options.sandboxId, "/snapshots") : this.url("/snapshots");
    const body = await this.http.json<{ snapshots: unknown[] }>(url, { notFound: "sandbox" });
    return (body?.snapshots ?? []).map(normalizeSnapshot);
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    await this.http.request(this.url(`/snapshots/${encodeURIComponent(snapshotId)}`), {
      method: "DELETE",
      notFound: "snapshot",
    });
  }

  /**
   * Takes a snapshot and waits until it can be restored from. Throws
   * {@link SnapshotError} or {@link SnapshotTimeoutError}.
   */
  async snapshotAndWait(identifier: string, options: SnapshotWaitOptions = {}): Promise<SnapshotInfo> {
    const started = await this.snapshot(identifier, { snapshotType: options.snapshotType });
    return this.waitForSnapshot(started.snapshotId, options);
  }

  /** Waits until a snapshot reaches `waitUntil` (default `local_ready`). */
  async waitForSnapshot(snapshotId: string, options: Omit<SnapshotWaitOptions, "snapshotType"> = {}): Promise<SnapshotInfo> {
    const timeout = options.timeout ?? 300;
    const pollMs = (options.pollInterval ?? 1) * 1000;
    const ready: ReadonlySet<SnapshotStatus> =
      options.waitUntil === "completed" ? new Set(["completed"]) : new Set(["local_ready", "completed"]);
    const deadline = Date.now() + timeout * 1000;
    for (;;) {
      const info = await this.getSnapshot(snapshotId);
      if (ready.has(info.status)) return info;
      if (info.status === "failed") {
        throw new SnapshotError(`snapshot ${snapshotId} failed: ${info.error ?? "no reason given"}`);
      }
      if (info.status === "deleting") throw new SnapshotError(`snapshot ${snapshotId} is being deleted`);
      if (Date.now() + pollMs > deadline) {
        throw new SnapshotTimeoutError(
          `snapshot ${snapshotId} did not become ${options.waitUntil ?? "local_ready"} within ${timeout}s (it is ${info.status})`,
        );
      }
      await sleep(pollMs);
    }
  }

  /**
   * A checkpoint: a snapshot to come back to, by default waited for until
   * restorable. `checkpointType: "memory"` captures running processes too.
   */
  async checkpoint(identifier: string, options: CheckpointOptions = {}): Promise<SnapshotInfo> {
    if (options.wait === false) {
      const started = await this.snapshot(identifier, { snapshotType: options.checkpointType });
      return this.getSnapshot(started.snapshotId);
    }
    return this.snapshotAndWait(identifier, { ...options, snapshotType: options.checkpointType });
  }

  // ---- secrets (the namespace's; values go in, never out) ----

  /**
   * Sets secret `name` (an environment variable name) of the namespace,
   * stored encrypted. Sandboxes created later with `secretNames: [name]`
   * get it; running ones keep the value they have.
   */
  async setSecret(name: string, value: string): Promise<SecretInfo> {
    const body = await this.http.json(this.secretPath(name), { method: "PUT", json: { value } });
    return camelize<SecretInfo>(body);
  }

  /** The namespace's secrets: names and dates, never values. */
  async listSecrets(): Promise<SecretInfo[]> {
    const body = await this.http.json<{ secrets: unknown[] }>(this.url("/secrets"));
    return (body?.secrets ?? []).map((s) => camelize<SecretInfo>(s));
  }

  /** Deletes a secret (`NotFoundError` if there is none). */
  async deleteSecret(name: string): Promise<void> {
    await this.http.request(this.secretPath(name), { method: "DELETE" });
  }

  // ---- warm pools ----

  /**
   * Creates a warm pool: the server keeps `warmContainers` (default 1)
   * sandboxes of this template booted for {@link claim}. Returns the pool
   * (fetched after the create, with its sandboxes, usually still starting).
   */
  async createPool(options: PoolOptions = {}): Promise<PoolInfo> {
    const created = await this.http.json<{ pool_id: string }>(this.url("/sandbox-pools"), {
      method: "POST",
      json: poolBody(options),
    });
    return this.getPool(created.pool_id);
  }

  /** The namespace's pools (without their sandboxes: see {@link getPool}). */
  async listPools(): Promise<PoolInfo[]> {
    const body = await this.http.json<{ pools: unknown[] }>(this.url("/sandbox-pools"));
    return (body?.pools ?? []).map(normalizePool);
  }

  /** A pool with its sandboxes (`containers`: `Idle` = warm, `Running` = claimed). */
  async getPool(poolId: string): Promise<PoolInfo> {
    return normalizePool(await this.http.json(this.poolPath(poolId), { notFound: "pool" }));
  }

  /**
   * Changes the given settings of a pool; the others stay. Warm sandboxes
   * of the old template are replaced; claimed ones keep running.
   */
  async updatePool(poolId: string, changes: UpdatePoolOptions): Promise<PoolInfo> {
    const cur = await this.getPool(poolId);
    const pick = <T>(given: T | undefined, now: T) => (given === undefined ? now : given);
    const body = poolBody({
      image: pick(changes.image, cur.image),
      cpus: pick(changes.cpus, cur.resources.cpus),
      memoryMb: pick(changes.memoryMb, cur.resources.memoryMb),
      diskMb: pick(changes.diskMb, cur.resources.diskMb),
      timeoutSecs: pick(changes.timeoutSecs, cur.timeoutSecs),
      entrypoint: pick(changes.entrypoint, cur.entrypoint) ?? undefined,
      warmContainers: pick(changes.warmContainers, cur.warmContainers),
      maxContainers: pick(changes.maxContainers, cur.maxContainers) ?? undefined,
    });
    // The server keeps the network policy unless one is sent.
    if (changes.allowInternetAccess !== undefined || changes.allowOut !== undefined || changes.denyOut !== undefined) {
      const now = cur.networkPolicy;
      body.network = {
        allow_internet_access: changes.allowInternetAccess ?? now?.allowInternetAccess ?? true,
        allow_out: changes.allowOut ?? now?.allowOut ?? [],
        deny_out: changes.denyOut ?? now?.denyOut ?? [],
      };
    }
    return normalizePool(
      await this.http.json(this.poolPath(poolId), { method: "PUT", json: body, notFound: "pool" }),
    );
  }

  /**
   * Deletes a pool and its warm sandboxes; a {@link ConflictError}
   * (`pool_in_use`) while sandboxes claimed from it still run.
   */
  async deletePool(poolId: string): Promise<void> {
    await this.http.request(this.poolPath(poolId), { method: "DELETE", notFound: "pool" });
  }

  /**
   * A sandbox from pool `poolId`: a warm one when there is one (it runs at
   * once), else one started now. Unless `wait: false`, returns once it
   * runs, as {@link create} does.
   */
  async claim(poolId: string, options: ClaimOptions = {}): Promise<CreateSandboxResult> {
    const wait = options.wait !== false;
    const timeout = options.timeout ?? 300;
    const result = camelize<CreateSandboxResult>(
      await this.http.json(this.poolPath(poolId, "/sandboxes"), {
        method: "POST",
        json: options.name !== undefined ? { name: options.name } : {},
        headers: wait
          ? {
              "X-Tensorlake-Request-Timeout-Ms": String(timeout * 1000),
              "X-Tensorlake-Request-Timeout-Grace-Ms": "5000",
            }
          : { "X-Tensorlake-Request-Timeout-Ms": "1000", "X-Tensorlake-Request-Timeout-Grace-Ms": "0" },
        notFound: "pool",
      }),
    );
    if (!wait || result.status === "running") return result;
    if (result.status !== "pending") throw sandboxFailed(result);
    const info = await this.waitForStatus(result.sandboxId, "running", timeout);
    return { ...result, status: info.status, sandboxUrl: info.sandboxUrl, name: info.name };
  }

  private poolPath(id: string, rest = ""): string {
    return this.url(`/sandbox-pools/${encodeURIComponent(id)}${rest}`);
  }

  // ---- logs ----

  /**
   * One page of a sandbox's persisted logs (also of one that ended): its
   * processes' output lines and its lifecycle events, oldest first.
   */
  async getLogs(identifier: string, query: LogQuery = {}): Promise<LogPage> {
    const params = new URLSearchParams();
    const levels: Record<string, number> = { trace: 1, debug: 2, info: 3, warn: 4, error: 5, fatal: 6 };
    for (const l of query.levels ?? []) params.append("level", String(typeof l === "number" ? l : levels[l] ?? l));
    for (const p of query.processIds ?? []) params.append("processId", String(p));
    for (const k of ["body", "head", "tail", "nextToken"] as const) {
      if (query[k] !== undefined) params.append(k, String(query[k]));
    }
    const qs = params.toString();
    const body = await this.http.json<{ logs: Record<string, unknown>[]; nextToken?: string; cursor: string }>(
      this.sandboxPath(identifier, "/logs") + (qs ? `?${qs}` : ""),
      { notFound: "sandbox" },
    );
    return {
      entries: (body?.logs ?? []).map(logEntry),
      nextToken: body?.nextToken ?? undefined,
      cursor: body?.cursor ?? "0",
    };
  }

  /** The processes a sandbox's logs have records of. */
  async listLogProcesses(identifier: string): Promise<LogProcess[]> {
    const body = await this.http.json<{ processes: LogProcess[] }>(this.sandboxPath(identifier, "/processes"), {
      notFound: "sandbox",
    });
    return body?.processes ?? [];
  }

  /**
   * The logs (the last `tail` records, or all), then new records as they
   * come, until the sandbox ends.
   */
  async *followLogs(
    identifier: string,
    query: Omit<LogQuery, "head" | "nextToken"> & { pollInterval?: number } = {},
  ): AsyncGenerator<LogEntry> {
    const { pollInterval = 0.5, tail, ...filter } = query;
    let token: string | undefined;
    let first = true;
    for (;;) {
      const ended = FINAL_STATUSES.has((await this.get(identifier)).status);
      for (;;) {
        const page = await this.getLogs(identifier, {
          ...filter,
          tail: first ? tail : undefined,
          nextToken: token,
        });
        yield* page.entries;
        token = page.nextToken ?? page.cursor;
        const tailed = first && tail !== undefined;
        first = false;
        if (tailed || !page.nextToken) break;
      }
      if (ended) return;
      await sleep(pollInterval * 1000);
    }
  }

  private secretPath(name: string): string {
    return this.url(`/secrets/${encodeURIComponent(name)}`);
  }

  // ---- images (the host's: every namespace sees the same ones) ----

  /** The images sandboxes can be created from: `default` and every import. */
  async listImages(): Promise<ImageInfo[]> {
    const body = await this.http.json<{ images: unknown[] }>(this.url("/images"));
    return (body?.images ?? []).map((i) => camelize<ImageInfo>(i));
  }

  async getImage(name: string): Promise<ImageInfo> {
    return camelize<ImageInfo>(await this.http.json(this.imagePath(name), { notFound: "image" }));
  }

  /**
   * Takes an imported image off the list; sandboxes and snapshots made from
   * it keep it. The built-in `default` cannot be deleted (400).
   */
  async deleteImage(name: string): Promise<void> {
    await this.http.request(this.imagePath(name), { method: "DELETE", notFound: "image" });
  }

  /**
   * Pulls `HOST[:PORT]/REPO[:TAG|@DIGEST]` from a registry. Throws
   * `ImageNotFoundError` when the registry has no such image and
   * {@link ImageImportError} when the import fails on the way.
   */
  async importImage(reference: string, options: ImportImageOptions = {}): Promise<ImageInfo> {
    const body: Record<string, unknown> = { reference };
    if (options.name !== undefined) body.name = options.name;
    if (options.insecure) body.insecure = true;
    if (options.username !== undefined) body.username = options.username;
    if (options.password !== undefined) body.password = options.password;
    const res = await this.http.request(this.url("/images/import"), { method: "POST", json: body, notFound: "image" });
    return readImport(res, reference, options.onProgress);
  }

  /** Uploads a `docker save` or `skopeo` archive (streamed from `path`); otherwise as {@link importImage}. */
  async importImageArchive(path: string, options: ImportImageArchiveOptions = {}): Promise<ImageInfo> {
    const res = await this.http.request(this.url("/images/import-archive"), {
      method: "POST",
      query: {
        name: options.name ?? basename(path).split(".")[0],
        format: options.format ?? (await archiveFormat(path)),
      },
      headers: { "Content-Type": "application/x-tar" },
      body: await openAsBlob(path),
      notFound: "image",
    });
    return readImport(res, path, options.onProgress);
  }

  /**
   * Builds image `name` from a Dockerfile, as `sbx image build` does: each
   * RUN in a builder sandbox, each step's result cached (an unchanged
   * rebuild takes seconds). Throws `BadRequestError` for a Dockerfile the
   * server refuses before building (its message names the line) and
   * {@link ImageBuildError} when a step fails.
   */
  async buildImage(name: string, options: BuildImageOptions = {}): Promise<ImageInfo> {
    const res = await this.http.request(this.url("/images/build"), {
      method: "POST",
      query: {
        name,
        no_cache: options.noCache || undefined,
        insecure: options.insecure || undefined,
        build_arg: Object.entries(options.buildArgs ?? {}).map(([k, v]) => `${k}=${v}`),
      },
      headers: { "Content-Type": "application/x-tar" },
      body: await contextTar(options.context ?? ".", options.dockerfile),
      notFound: "image",
    });
    return readBuild(res, name, options.onProgress);
  }

  private imagePath(name: string): string {
    return this.url(`/images/${encodeURIComponent(name)}`);
  }
}

/** Reads an import's NDJSON answer: progress lines to `onProgress`, then the image. */
async function readImport(
  res: Response,
  what: string,
  onProgress?: (event: ImageImportProgress) => void,
): Promise<ImageInfo> {
  type Line = ImageImportProgress | { event: "done"; image: unknown } | { event: "error"; message: string };
  for await (const line of ndjsonLines<Line>(res)) {
    if (line.event === "done") return camelize<ImageInfo>(line.image);
    if (line.event === "error") throw new ImageImportError(`importing ${what} failed: ${line.message}`);
    onProgress?.(line);
  }
  throw new ImageImportError(`the import of ${what} ended without its result`);
}

/** Reads a build's NDJSON answer: progress lines to `onProgress`, then the image. */
async function readBuild(
  res: Response,
  name: string,
  onProgress?: (event: ImageBuildProgress) => void,
): Promise<ImageInfo> {
  type Line = ImageBuildProgress | { event: "done"; image: unknown } | { event: "error"; message: string };
  // What the step under way printed, for the error.
  let output: string[] = [];
  for await (const line of ndjsonLines<Line>(res)) {
    if (line.event === "done") return camelize<ImageInfo>(line.image);
    if (line.event === "error") throw new ImageBuildError(`building ${name} failed: ${line.message}`, output);
    if (line.event === "step") output = [];
    else if (line.event === "output") output.push(line.line);
    onProgress?.(line);
  }
  throw new ImageBuildError(`the build of ${name} ended without its result`);
}

/**
 * `oci-archive` when the tar at `path` has `oci-layout` at its top, else
 * `docker-archive` (also for a file that is no tar: the server says so).
 */
async function archiveFormat(path: string): Promise<ImageArchiveFormat> {
  const file = await open(path);
  try {
    const h = Buffer.alloc(512);
    const text = (start: number, end: number) => {
      const nul = h.indexOf(0, start);
      return h.toString("utf8", start, nul >= 0 && nul < end ? nul : end);
    };
    for (let offset = 0; ; ) {
      const { bytesRead } = await file.read(h, 0, 512, offset);
      if (bytesRead < 512 || h[0] === 0) return "docker-archive";
      // The checksum counts its own field as spaces.
      let sum = 8 * 0x20;
      for (let i = 0; i < 512; i++) if (i < 148 || i >= 156) sum += h[i];
      if (sum !== parseInt(text(148, 156).trim(), 8)) return "docker-archive";
      // POSIX ustar ("ustar\0") may put the start of the name in a prefix field; GNU ("ustar ") has none.
      const prefix = text(257, 263) === "ustar" ? text(345, 500) : "";
      const name = prefix ? `${prefix}/${text(0, 100)}` : text(0, 100);
      if (posix.normalize(name) === "oci-layout") return "oci-archive";
      // Sizes past 8 GiB are base-256 with the top bit set.
      const size = h[124] & 0x80 ? Number(h.readBigUInt64BE(128)) : parseInt(text(124, 136).trim(), 8) || 0;
      offset += 512 + Math.ceil(size / 512) * 512;
    }
  } finally {
    await file.close();
  }
}

function createBody(o: CreateSandboxOptions): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  const set = (k: string, v: unknown) => {
    if (v !== undefined && v !== null) body[k] = v;
  };
  set("image", o.image);
  if (o.cpus !== undefined || o.memoryMb !== undefined || o.diskMb !== undefined) {
    const r: Record<string, unknown> = {};
    if (o.cpus !== undefined) r.cpus = o.cpus;
    if (o.memoryMb !== undefined) r.memory_mb = o.memoryMb;
    if (o.diskMb !== undefined) r.disk_mb = o.diskMb;
    body.resources = r;
  }
  set("timeout_secs", o.timeoutSecs);
  set("entrypoint", o.entrypoint);
  set("secret_names", o.secretNames);
  if (o.allowInternetAccess !== undefined || o.allowOut !== undefined || o.denyOut !== undefined) {
    body.network = {
      allow_internet_access: o.allowInternetAccess ?? true,
      allow_out: o.allowOut ?? [],
      deny_out: o.denyOut ?? [],
    };
  }
  set("snapshot_id", o.snapshotId);
  set("name", o.name);
  set("allow_unauthenticated_access", o.allowUnauthenticatedAccess);
  set("exposed_ports", o.exposedPorts);
  set("auto_resume", o.autoResume);
  set("wait", o.wait);
  set("max_pending_secs", o.maxPendingSecs);
  return body;
}

function poolBody(o: PoolOptions): Record<string, unknown> {
  const body = createBody({
    image: o.image,
    cpus: o.cpus,
    memoryMb: o.memoryMb,
    diskMb: o.diskMb,
    timeoutSecs: o.timeoutSecs,
    entrypoint: o.entrypoint,
    allowInternetAccess: o.allowInternetAccess,
    allowOut: o.allowOut,
    denyOut: o.denyOut,
  });
  if (o.warmContainers !== undefined) body.warm_containers = o.warmContainers;
  if (o.maxContainers !== undefined) body.max_containers = o.maxContainers;
  return body;
}

function normalizePool(raw: unknown): PoolInfo {
  const info = camelize<PoolInfo>(raw);
  info.poolId = info.id;
  return info;
}

function normalizeSandbox(raw: unknown): SandboxInfo {
  const info = camelize<SandboxInfo & { id?: string; network?: SandboxInfo["networkPolicy"] }>(raw);
  if (!info.sandboxId && info.id) info.sandboxId = info.id;
  if (!info.networkPolicy && info.network) info.networkPolicy = info.network;
  return info;
}

function normalizeSnapshot(raw: unknown): SnapshotInfo {
  const info = camelize<SnapshotInfo & { id?: string }>(raw);
  if (!info.snapshotId && info.id) info.snapshotId = info.id;
  return info;
}

function sandboxFailed(info: {
  sandboxId: string;
  status: string;
  reason?: string;
  terminationReason?: string;
  errorDetails?: { message: string };
}): SbxError {
  const why = info.errorDetails?.message ?? info.reason ?? info.terminationReason;
  return new SandboxError(`sandbox ${info.sandboxId} is ${info.status}${why ? `: ${why}` : ""}`);
}

function logEntry(d: Record<string, unknown>): LogEntry {
  let attributes: Record<string, unknown> = {};
  try {
    const parsed = JSON.parse(String(d.logAttributes ?? "{}"));
    if (parsed && typeof parsed === "object") attributes = parsed;
  } catch {
    // not JSON: no attributes
  }
  const timestamp = Number(d.timestamp ?? 0);
  return {
    timestamp,
    timeMs: Math.floor(timestamp / 1e6),
    uuid: String(d.uuid ?? ""),
    sandboxId: String(d.sandboxId ?? ""),
    namespace: String(d.namespace ?? ""),
    body: String(d.body ?? ""),
    level: Number(d.level ?? 0),
    attributes,
    processId: typeof attributes.processId === "string" ? attributes.processId : undefined,
    stream: attributes.stream === "stdout" || attributes.stream === "stderr" ? attributes.stream : undefined,
    event: typeof attributes.event === "string" ? attributes.event : undefined,
  };
}
