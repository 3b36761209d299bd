/**
 * Interactive terminals: `POST /api/v1/pty`, then a WebSocket to
 * `/pty/{id}/ws` with binary frames whose first byte is the opcode.
 */

import WebSocket from "ws";
import { errorFromResponse, SbxConnectionError, SbxError } from "./errors.js";
import type { Daemon } from "./daemon.js";
import type { ProcessUser } from "./types.js";

const OP_DATA = 0x00;
const OP_RESIZE = 0x01;
const OP_READY = 0x02;
const OP_EXIT = 0x03;

export interface PtyOptions {
  /** Default `/bin/bash`. */
  command?: string;
  args?: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: ProcessUser;
  /** Default 24. */
  rows?: number;
  /** Default 80. */
  cols?: number;
  /** Called with each chunk of terminal output. */
  onData?: (data: Uint8Array) => void;
}

export class Pty {
  /** @internal */
  constructor(private readonly daemon: Daemon) {}

  /** Starts a command on a new terminal and connects to it. */
  async create(options: PtyOptions = {}): Promise<PtySession> {
    const body: Record<string, unknown> = {
      command: options.command ?? "/bin/bash",
      args: options.args ?? [],
      rows: options.rows ?? 24,
      cols: options.cols ?? 80,
    };
    if (options.env) body.env = options.env;
    if (options.cwd) body.working_dir = options.cwd;
    if (options.user !== undefined) body.user = options.user;
    const created = await this.daemon.json<{ sessionId: string; token: string }>("/pty", { method: "POST", json: body });
    const session = new PtySession(this.daemon, created.sessionId, options.onData);
    await session.connect(created.token);
    return session;
  }
}

/** A connected terminal. Output goes to `onData`; `wait()` gives the exit code. */
export class PtySession {
  private ws?: WebSocket;
  private exitCode?: number;
  private readonly done: Promise<number>;
  private settle!: { resolve: (code: number) => void; reject: (e: Error) => void };

  /** @internal */
  constructor(
    private readonly daemon: Daemon,
    readonly sessionId: string,
    private onData?: (data: Uint8Array) => void,
  ) {
    this.done = new Promise<number>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // A rejection nobody awaits yet must not crash the process.
    this.done.catch(() => {});
  }

  /** @internal Opens the WebSocket and sends the ready frame. */
  connect(token: string): Promise<void> {
    const url = this.daemon
      .url(`/pty/${encodeURIComponent(this.sessionId)}/ws?token=${encodeURIComponent(token)}`)
      .replace(/^http/, "ws");
    const ws = new WebSocket(url, { headers: { ...this.daemon.headers(), "X-PTY-Token": token } });
    this.ws = ws;
    return new Promise<void>((resolve, reject) => {
      let opened = false;
      ws.on("unexpected-response", (_req, res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => {
          const err = errorFromResponse(res.statusCode ?? 0, text);
          reject(err);
          this.settle.reject(err);
        });
        res.on("error", () => {});
      });
      ws.on("open", () => {
        opened = true;
        ws.send(Buffer.from([OP_READY]));
        resolve();
      });
      ws.on("message", (data: Buffer, isBinary: boolean) => {
        if (!isBinary || data.length === 0) return;
        if (data[0] === OP_DATA) this.onData?.(data.subarray(1));
        else if (data[0] === OP_EXIT && data.length >= 5) this.exitCode = data.readInt32BE(1);
      });
      ws.on("close", (code: number, reason: Buffer) => {
        const m = /^exit:(-?\d+)$/.exec(reason.toString());
        if (this.exitCode === undefined && m) this.exitCode = Number(m[1]);
        if (this.exitCode !== undefined) this.settle.resolve(this.exitCode);
        else this.settle.reject(new SbxError(`terminal ${this.sessionId} closed without an exit code (${code} ${reason})`));
      });
      ws.on("error", (e: Error) => {
        const err = new SbxConnectionError(`terminal ${this.sessionId}: ${e.message}`, { cause: e });
        if (!opened) reject(err);
        this.settle.reject(err);
      });
    });
  }

  /** Replaces the output callback. */
  setOnData(onData: (data: Uint8Array) => void): void {
    this.onData = onData;
  }

  /** Sends keystrokes / input bytes. */
  write(data: string | Uint8Array): void {
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    this.sendFrame(Buffer.concat([Buffer.from([OP_DATA]), bytes]));
  }

  /** Changes the terminal size. */
  resize(cols: number, rows: number): void {
    const frame = Buffer.alloc(5);
    frame[0] = OP_RESIZE;
    frame.writeUInt16BE(cols, 1);
    frame.writeUInt16BE(rows, 3);
    this.sendFrame(frame);
  }

  /** Resolves with the command's exit code once it ends. */
  wait(): Promise<number> {
    return this.done;
  }

  /** Kills the terminal's process; `wait()` then resolves with its exit code. */
  async kill(): Promise<void> {
    await this.daemon.request(`/pty/${encodeURIComponent(this.sessionId)}`, { method: "DELETE" });
  }

  /** Closes the connection without ending the command. */
  disconnect(): void {
    this.ws?.close(1000);
  }

  private sendFrame(frame: Buffer): void {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      throw new SbxError(`terminal ${this.sessionId} is not connected`);
    }
    this.ws.send(frame);
  }
}
