/** A running sandbox: commands, background processes, files and terminals through the sandbox proxy. */

import type { CheckpointOptions, ClientOptions, CreateSandboxOptions, LifecycleWaitOptions, SnapshotWaitOptions } from "./client.js";
import { SandboxClient } from "./client.js";
import { NotFoundError, SandboxNotFoundError, SbxError } from "./errors.js";
import { Commands, Daemon, Files, Processes } from "./daemon.js";
import { Pty } from "./pty.js";
import type { LogEntry, LogPage, LogProcess, LogQuery, SandboxInfo, SnapshotInfo } from "./types.js";

// Older Node 20 releases lack the symbol; `await using` needs it.
(Symbol as { asyncDispose?: symbol }).asyncDispose ??= Symbol.for("Symbol.asyncDispose");

export interface SandboxCreateOptions extends CreateSandboxOptions, ClientOptions {
  /** Use this client instead of one built from the connection options. */
  client?: SandboxClient;
}

export interface SandboxConnectOptions extends ClientOptions {
  client?: SandboxClient;
}

export class Sandbox implements AsyncDisposable {
  readonly client: SandboxClient;
  readonly sandboxId: string;
  /** The name it had when this object was made. */
  readonly name?: string;
  /** Base URL of the sandbox proxy. */
  readonly sandboxUrl: string;
  /** Run commands to completion, with their output streamed. */
  readonly commands: Commands;
  /** Background processes: start, stdin, output, signals. */
  readonly processes: Processes;
  readonly files: Files;
  /** Interactive terminals. */
  readonly pty: Pty;

  /** Use {@link Sandbox.create}, {@link Sandbox.connect} or the client's `createAndConnect`. */
  constructor(client: SandboxClient, info: { sandboxId: string; name?: string; sandboxUrl?: string }) {
    this.client = client;
    this.sandboxId = info.sandboxId;
    this.name = info.name ?? undefined;
    const url = info.sandboxUrl ?? client.proxyUrl;
    if (!url) {
      throw new SbxError(`the server gave no sandbox_url for ${info.sandboxId}; set proxyUrl or SBX_PROXY_URL`);
    }
    this.sandboxUrl = url.replace(/\/+$/, "");
    const daemon = new Daemon(client.http, this.sandboxUrl, this.sandboxId);
    this.commands = new Commands(daemon);
    this.processes = new Processes(daemon);
    this.files = new Files(daemon);
    this.pty = new Pty(daemon);
  }

  /** Creates a sandbox (restores one with `snapshotId`) and waits until it runs. */
  static async create(options: SandboxCreateOptions = {}): Promise<Sandbox> {
    const { client, apiUrl, apiKey, namespace, proxyUrl, ...create } = options;
    const c = client ?? new SandboxClient({ apiUrl, apiKey, namespace, proxyUrl });
    return c.createAndConnect(create);
  }

  /** Connects to an existing sandbox by id or name. */
  static async connect(identifier: string, options: SandboxConnectOptions = {}): Promise<Sandbox> {
    const { client, ...conn } = options;
    return (client ?? new SandboxClient(conn)).connect(identifier);
  }

  /** Fresh state from the server. */
  info(): Promise<SandboxInfo> {
    return this.client.get(this.sandboxId);
  }

  /** Takes a snapshot (default `filesystem`) and waits until it can be restored from. */
  createSnapshot(options: SnapshotWaitOptions = {}): Promise<SnapshotInfo> {
    return this.client.snapshotAndWait(this.sandboxId, options);
  }

  /** This sandbox's persisted logs: see {@link SandboxClient.getLogs}. */
  getLogs(query: LogQuery = {}): Promise<LogPage> {
    return this.client.getLogs(this.sandboxId, query);
  }

  listLogProcesses(): Promise<LogProcess[]> {
    return this.client.listLogProcesses(this.sandboxId);
  }

  /** See {@link SandboxClient.followLogs}. */
  followLogs(query: Omit<LogQuery, "head" | "nextToken"> & { pollInterval?: number } = {}): AsyncGenerator<LogEntry> {
    return this.client.followLogs(this.sandboxId, query);
  }

  /** A checkpoint to come back to with `Sandbox.create({ snapshotId })`. */
  checkpoint(options: CheckpointOptions = {}): Promise<SnapshotInfo> {
    return this.client.checkpoint(this.sandboxId, options);
  }

  suspend(options?: LifecycleWaitOptions): Promise<SandboxInfo> {
    return this.client.suspend(this.sandboxId, options);
  }

  resume(options?: LifecycleWaitOptions): Promise<SandboxInfo> {
    return this.client.resume(this.sandboxId, options);
  }

  rename(name: string | null): Promise<SandboxInfo> {
    return this.client.rename(this.sandboxId, name);
  }

  /**
   * `times` running copies of this sandbox (memory, processes and files).
   * The intermediate checkpoint `snapshotId` stays until deleted.
   */
  async copy(options: { times?: number } = {}): Promise<{ snapshotId?: string; sandboxes: Sandbox[] }> {
    const result = await this.client.copy(this.sandboxId, options);
    return {
      snapshotId: result.snapshotId,
      sandboxes: result.sandboxes.map((s) => new Sandbox(this.client, s)),
    };
  }

  /** Terminates the sandbox. */
  kill(): Promise<void> {
    return this.client.delete(this.sandboxId);
  }

  /** `await using sb = await Sandbox.create()` terminates it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    try {
      await this.kill();
    } catch (e) {
      if (!(e instanceof SandboxNotFoundError || e instanceof NotFoundError)) throw e;
    }
  }
}
