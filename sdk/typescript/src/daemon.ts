/** Calls to the in-sandbox daemon (`/api/v1/...`) through the sandbox proxy. */

import { constants as osConstants } from "node:os";
import { BadRequestError, CommandError, NotFoundError, SandboxNotFoundError, SbxError, SbxTimeoutError, ServerError } from "./errors.js";
import { Body, camelize, HttpClient, RequestOptions, sleep, sseEvents } from "./http.js";
import type { DirEntry, OutputLine, ProcessInfo, ProcessUser } from "./types.js";

/** @internal The proxy route to one sandbox's daemon. */
export class Daemon {
  constructor(
    readonly http: HttpClient,
    readonly baseUrl: string,
    readonly sandboxId: string,
  ) {}

  url(path: string): string {
    return `${this.baseUrl}/api/v1${path}`;
  }

  /** Headers that route a request to this sandbox (and authenticate it). */
  headers(): Record<string, string> {
    return { ...this.http.baseHeaders(), "X-Tensorlake-Sandbox-Id": this.sandboxId };
  }

  async request(path: string, opts: RequestOptions = {}): Promise<Response> {
    try {
      return await this.http.request(this.url(path), {
        ...opts,
        headers: { "X-Tensorlake-Sandbox-Id": this.sandboxId, ...opts.headers },
      });
    } catch (e) {
      throw sandboxGone(e);
    }
  }

  async json<T>(path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.request(path, opts);
    const text = await res.text();
    try {
      return camelize<T>(text.trim() ? JSON.parse(text) : undefined);
    } catch (e) {
      throw new ServerError(`invalid JSON from the sandbox at ${path}: ${text.slice(0, 200)}`, { status: res.status, cause: e });
    }
  }
}

/** The proxy's 404 for an unknown sandbox, told apart from the daemon's own 404s. */
function sandboxGone(e: unknown): unknown {
  if (e instanceof NotFoundError && !(e instanceof SandboxNotFoundError) && /^sandbox ".*" not found$/.test(e.message)) {
    return new SandboxNotFoundError(e.message, { status: e.status, code: e.code });
  }
  return e;
}

interface ProcessOptions {
  args?: string[];
  env?: Record<string, string>;
  /** Working directory. */
  cwd?: string;
  user?: ProcessUser;
}

export interface RunOptions extends ProcessOptions {
  /** Seconds; the process is killed after it and the result's `reason` is `timed_out`. */
  timeout?: number;
  /** Called with each stdout line (without its newline). */
  onStdout?: (line: string) => void;
  /** Called with each stderr line (without its newline). */
  onStderr?: (line: string) => void;
  /** Throw a {@link CommandError} unless the command exits 0. */
  check?: boolean;
  /** Aborting stops waiting for the command. */
  signal?: AbortSignal;
}

export type ExitReason = "exited" | "signaled" | "oom_killed" | "timed_out";

/** One event of a streamed command. */
export type CommandEvent =
  | { type: "start"; pid: number; startedAt: string }
  | { type: "stdout" | "stderr"; line: string; timestamp: string }
  | {
      type: "exit";
      /** `null` when the process was killed by a signal (see `signal` and `reason`). */
      exitCode: number | null;
      signal?: number;
      oomKilled: boolean;
      reason: ExitReason;
    };

/** The outcome of `commands.run`. Output is line-based: each line ends in `\n`. */
export interface CommandResult {
  pid: number;
  stdout: string;
  stderr: string;
  /** `null` when the process was killed by a signal (see `signal` and `reason`). */
  exitCode: number | null;
  signal?: number;
  oomKilled: boolean;
  /** `exited`, `signaled`, `oom_killed` or `timed_out`. */
  reason: ExitReason;
  /** Exited with code 0. */
  ok: boolean;
  /** Killed because its `timeout` ran out. */
  timedOut: boolean;
}

type RawRunEvent = {
  pid?: number;
  started_at?: string;
  line?: string;
  timestamp?: string;
  stream?: "stdout" | "stderr";
  exit_code?: number | null;
  signal?: number | null;
  oom_killed?: boolean;
  reason?: ExitReason;
};

/**
 * Without `args` the command is a shell command line (`/bin/sh -c command`);
 * with `args` it is the program itself, looked up in `PATH`.
 */
function processBody(command: string, o: ProcessOptions): Record<string, unknown> {
  const body: Record<string, unknown> =
    o.args === undefined ? { command: "/bin/sh", args: ["-c", command] } : { command, args: o.args };
  if (o.env) body.env = o.env;
  if (o.cwd) body.working_dir = o.cwd;
  if (o.user !== undefined) body.user = o.user;
  return body;
}

/**
 * Commands run to completion. `run("ls -l /tmp")` is a shell command line
 * (`/bin/sh -c`); `run("ls", { args: ["-l", "/tmp"] })` executes `ls` directly.
 */
export class Commands {
  /** @internal */
  constructor(private readonly daemon: Daemon) {}

  /** Runs a command and waits for it; output lines go to the callbacks as they come. */
  async run(command: string, options: RunOptions = {}): Promise<CommandResult> {
    const stdout: string[] = [];
    const stderr: string[] = [];
    let pid = -1;
    for await (const ev of this.stream(command, options)) {
      switch (ev.type) {
        case "start":
          pid = ev.pid;
          break;
        case "stdout":
          stdout.push(ev.line);
          options.onStdout?.(ev.line);
          break;
        case "stderr":
          stderr.push(ev.line);
          options.onStderr?.(ev.line);
          break;
        case "exit": {
          const result: CommandResult = {
            pid,
            stdout: stdout.map((l) => `${l}\n`).join(""),
            stderr: stderr.map((l) => `${l}\n`).join(""),
            exitCode: ev.exitCode,
            signal: ev.signal,
            oomKilled: ev.oomKilled,
            reason: ev.reason,
            ok: ev.exitCode === 0,
            timedOut: ev.reason === "timed_out",
          };
          if (options.check && !result.ok) throw new CommandError(result);
          return result;
        }
      }
    }
    throw new SbxError(`the output stream of ${command} ended without an exit status`);
  }

  /**
   * Runs a command and yields its events as they come: `start`, then
   * `stdout`/`stderr` lines, then one `exit`. Leaving the loop early stops
   * reading (the process keeps its timeout).
   */
  async *stream(
    command: string,
    options: Omit<RunOptions, "onStdout" | "onStderr" | "check"> = {},
  ): AsyncGenerator<CommandEvent> {
    const body = processBody(command, options);
    if (options.timeout !== undefined) body.timeout = options.timeout;
    const res = await this.daemon.request("/processes/run", {
      method: "POST",
      json: body,
      headers: { Accept: "text/event-stream" },
      signal: options.signal,
    });
    for await (const raw of sseEvents<RawRunEvent>(res)) {
      if (raw.reason !== undefined) {
        yield {
          type: "exit",
          exitCode: raw.exit_code ?? null,
          signal: raw.signal ?? undefined,
          oomKilled: raw.oom_killed ?? false,
          reason: raw.reason,
        };
        return;
      }
      if (raw.line !== undefined) {
        yield { type: raw.stream === "stderr" ? "stderr" : "stdout", line: raw.line, timestamp: raw.timestamp ?? "" };
      } else if (raw.pid !== undefined) {
        yield { type: "start", pid: raw.pid, startedAt: raw.started_at ?? "" };
      }
    }
  }
}

export interface StartProcessOptions extends ProcessOptions {
  /** Give the process a stdin pipe to write to (default: no stdin). */
  stdin?: boolean;
  /** Drop stdout / stderr instead of keeping it for `output` and `follow`. */
  discardStdout?: boolean;
  discardStderr?: boolean;
  /** A name to address the process by instead of its pid. */
  name?: string;
  /** Restart policy, as on the wire: `{policy: "never"|"on_failure"|"always", max_restarts?, ...}`. */
  restart?: Record<string, unknown>;
  /** Health check, as on the wire: `{type: "http"|"tcp", port, path?, ...}`. */
  healthCheck?: Record<string, unknown>;
}

/** Which output of a process: stdout, stderr, or both interleaved. */
export type OutputSelector = "stdout" | "stderr" | "output";

/** A process is named by its pid or, for a managed process, its name. */
export type ProcessRef = number | string;

/** Background processes of the sandbox. */
export class Processes {
  /** @internal */
  constructor(private readonly daemon: Daemon) {}

  private path(p: ProcessRef, rest = ""): string {
    return `/processes/${encodeURIComponent(String(p))}${rest}`;
  }

  /** Starts a process in the background (a shell command line unless `args` is given). */
  start(command: string, options: StartProcessOptions = {}): Promise<ProcessInfo> {
    const body = processBody(command, options);
    if (options.stdin) body.stdin_mode = "pipe";
    if (options.discardStdout) body.stdout_mode = "discard";
    if (options.discardStderr) body.stderr_mode = "discard";
    if (options.name) body.name = options.name;
    if (options.restart) body.restart = options.restart;
    if (options.healthCheck) body.health_check = options.healthCheck;
    return this.daemon.json("/processes", { method: "POST", json: body });
  }

  async list(): Promise<ProcessInfo[]> {
    return (await this.daemon.json<{ processes: ProcessInfo[] }>("/processes")).processes;
  }

  get(p: ProcessRef): Promise<ProcessInfo> {
    return this.daemon.json(this.path(p));
  }

  /** Kills the process (and its group) and forgets it; returns its final state. */
  kill(p: ProcessRef): Promise<ProcessInfo> {
    return this.daemon.json(this.path(p), { method: "DELETE" });
  }

  /** Sends a signal to the process group: a number or a name such as `"SIGTERM"`. */
  async signal(p: ProcessRef, signal: number | NodeJS.Signals): Promise<void> {
    const num = typeof signal === "number" ? signal : osConstants.signals[signal];
    if (num === undefined) throw new BadRequestError(`unknown signal ${signal}`);
    await this.daemon.request(this.path(p, "/signal"), { method: "POST", json: { signal: num } });
  }

  /** Writes to the stdin of a process started with `stdin: true`. */
  async writeStdin(p: ProcessRef, data: string | Uint8Array): Promise<void> {
    await this.daemon.request(this.path(p, "/stdin"), {
      method: "POST",
      body: data,
      headers: { "Content-Type": "application/octet-stream" },
    });
  }

  /** Closes stdin: the process reads end of file. */
  async closeStdin(p: ProcessRef): Promise<void> {
    await this.daemon.request(this.path(p, "/stdin/close"), { method: "POST" });
  }

  /** The output lines kept so far. */
  async output(p: ProcessRef, options: { stream?: OutputSelector } = {}): Promise<string[]> {
    const body = await this.daemon.json<{ lines: string[] }>(this.path(p, `/${options.stream ?? "output"}`));
    return body.lines;
  }

  /**
   * Yields output lines as they come, from the first one kept, until the
   * process's output ends.
   */
  async *follow(
    p: ProcessRef,
    options: { stream?: OutputSelector; signal?: AbortSignal } = {},
  ): AsyncGenerator<OutputLine> {
    const res = await this.daemon.request(this.path(p, `/${options.stream ?? "output"}/follow`), {
      headers: { Accept: "text/event-stream" },
      timeoutMs: 0,
      signal: options.signal,
    });
    yield* sseEvents<OutputLine>(res);
  }

  /**
   * Polls until the process is no longer running and returns its final
   * state; throws {@link SbxTimeoutError} after `timeout` seconds (default 300).
   */
  async wait(p: ProcessRef, options: { timeout?: number; pollInterval?: number } = {}): Promise<ProcessInfo> {
    const deadline = Date.now() + (options.timeout ?? 300) * 1000;
    for (;;) {
      const info = await this.get(p);
      if (info.status !== "running") return info;
      if (Date.now() > deadline) throw new SbxTimeoutError(`process ${p} still runs after ${options.timeout ?? 300}s`);
      await sleep((options.pollInterval ?? 0.2) * 1000);
    }
  }
}

/** Files of the sandbox, as raw bytes. */
export class Files {
  /** @internal */
  constructor(private readonly daemon: Daemon) {}

  /** The file's bytes (a Buffer). */
  async read(path: string): Promise<Buffer> {
    const res = await this.daemon.request("/files", { query: { path }, timeoutMs: 0, notFound: "file" });
    return Buffer.from(await res.arrayBuffer());
  }

  async readText(path: string): Promise<string> {
    return (await this.read(path)).toString("utf8");
  }

  /** Writes (creates or replaces) a file; a stream is sent as it is read. */
  async write(path: string, data: Body): Promise<void> {
    await this.daemon.request("/files", {
      method: "PUT",
      query: { path },
      body: data,
      headers: { "Content-Type": "application/octet-stream" },
    });
  }

  /** Entries of a directory. */
  async list(path: string): Promise<DirEntry[]> {
    return (await this.daemon.json<{ entries: DirEntry[] }>("/files/list", { query: { path }, notFound: "file" })).entries;
  }

  async remove(path: string): Promise<void> {
    await this.daemon.request("/files", { method: "DELETE", query: { path }, notFound: "file" });
  }
}
