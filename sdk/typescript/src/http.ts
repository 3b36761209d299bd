/** HTTP plumbing shared by the control-plane client and the sandbox (data-plane) calls. */

import {
  errorFromResponse,
  NotFoundKind,
  SbxConnectionError,
  SbxError,
  SbxTimeoutError,
  ServerError,
} from "./errors.js";

export const SDK_VERSION = "0.1.0";
const USER_AGENT = `sbx-typescript-sdk/${SDK_VERSION}`;

/** Reads answer well inside this; a slower answer is retried. */
const READ_TIMEOUT_MS = 30_000;
const RETRIES = 3;
const RETRY_STATUSES = new Set([502, 503, 504]);

export type Body = string | Uint8Array | Blob | ReadableStream<Uint8Array>;

export interface RequestOptions {
  method?: string;
  /** Query parameters; `undefined` values are left out, an array's values repeat the key. */
  query?: Record<string, string | number | boolean | undefined | string[]>;
  headers?: Record<string, string>;
  /** Sent as JSON. */
  json?: unknown;
  /** Sent as is (raw bytes, text, or a stream). */
  body?: Body;
  /** What a 404 means, for the error class. */
  notFound?: NotFoundKind;
  /** Per-attempt limit; defaults to 30 s for GETs and none for anything else. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export class HttpClient {
  constructor(private readonly apiKey?: string) {}

  /** Headers every request carries (auth, user agent), for WebSocket upgrades too. */
  baseHeaders(): Record<string, string> {
    const h: Record<string, string> = { "User-Agent": USER_AGENT };
    if (this.apiKey) h.Authorization = `Bearer ${this.apiKey}`;
    return h;
  }

  /**
   * Sends a request and returns the 2xx response (its body unread). Non-2xx
   * answers become {@link SbxError}s. Bodyless GETs are retried on connection
   * errors and 502/503/504.
   */
  async request(url: string, opts: RequestOptions = {}): Promise<Response> {
    const method = opts.method ?? "GET";
    const target = withQuery(url, opts.query);
    const headers: Record<string, string> = { ...this.baseHeaders(), ...opts.headers };
    let body: RequestInit["body"] | undefined;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.body !== undefined) {
      body = opts.body as RequestInit["body"];
    }
    const retryable = method === "GET" && body === undefined;
    const timeoutMs = opts.timeoutMs ?? (method === "GET" ? READ_TIMEOUT_MS : undefined);
    const attempts = retryable ? RETRIES : 1;
    let lastError: unknown;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) await sleep(250 * 2 ** (attempt - 1));
      const signals = [opts.signal, timeoutMs ? AbortSignal.timeout(timeoutMs) : undefined].filter(
        (s): s is AbortSignal => s !== undefined,
      );
      const init: RequestInit & { duplex?: "half" } = {
        method,
        headers,
        body,
        signal: signals.length ? AbortSignal.any(signals) : undefined,
      };
      if (body instanceof ReadableStream) init.duplex = "half";
      let res: Response;
      try {
        res = await fetch(target, init);
      } catch (e) {
        if (opts.signal?.aborted) throw opts.signal.reason ?? e;
        lastError = wrapFetchError(e, method, target, timeoutMs);
        if (lastError instanceof SbxConnectionError || lastError instanceof SbxTimeoutError) continue;
        throw lastError;
      }
      if (res.ok) return res;
      const text = await res.text().catch(() => "");
      lastError = errorFromResponse(res.status, text, opts.notFound);
      if (!(retryable && RETRY_STATUSES.has(res.status))) throw lastError;
    }
    throw lastError;
  }

  /** Sends a request and parses the JSON answer (undefined for an empty body). */
  async json<T>(url: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.request(url, opts);
    const text = await res.text();
    if (!text.trim()) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch (e) {
      throw new ServerError(`invalid JSON from ${opts.method ?? "GET"} ${url}: ${text.slice(0, 200)}`, {
        status: res.status,
        cause: e,
      });
    }
  }
}

export function withQuery(url: string, query?: RequestOptions["query"]): string {
  if (!query) return url;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (Array.isArray(v)) for (const item of v) params.append(k, item);
    else if (v !== undefined) params.set(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${url}${url.includes("?") ? "&" : "?"}${qs}` : url;
}

function wrapFetchError(e: unknown, method: string, url: string, timeoutMs?: number): SbxError {
  if (e instanceof SbxError) return e;
  const err = e as { name?: string; message?: string; cause?: { message?: string; code?: string } };
  if (err?.name === "TimeoutError") {
    return new SbxTimeoutError(`${method} ${url}: no answer within ${timeoutMs} ms`, { cause: e });
  }
  const detail = err?.cause?.message ?? err?.cause?.code ?? err?.message ?? String(e);
  return new SbxConnectionError(`${method} ${url}: ${detail}`, { cause: e });
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** `snake_case` keys to `camelCase`, recursively (wire answers to SDK objects). */
export function camelize<T>(value: unknown): T {
  if (Array.isArray(value)) return value.map((v) => camelize(v)) as T;
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase())] = camelize(v);
    }
    return out as T;
  }
  return value as T;
}

/**
 * Parses a `text/event-stream` body into the JSON payloads of its `data:`
 * events. Stops when the body ends; cancels the body when the consumer stops.
 */
export async function* sseEvents<T>(res: Response): AsyncGenerator<T> {
  let data: string[] = [];
  for await (let line of bodyLines(res, false)) {
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line === "") {
      if (data.length) {
        const payload = data.join("\n");
        data = [];
        yield JSON.parse(payload) as T;
      }
    } else if (line.startsWith("data:")) {
      data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
    }
    // Comments (":") and other fields (event, id, retry) are ignored.
  }
  if (data.length) yield JSON.parse(data.join("\n")) as T;
}

/** Parses an `application/x-ndjson` body into one JSON value per line; cancels the body when the consumer stops. */
export async function* ndjsonLines<T>(res: Response): AsyncGenerator<T> {
  for await (const line of bodyLines(res, true)) {
    if (line.trim()) yield JSON.parse(line) as T;
  }
}

/** The lines of a streamed body (without their "\n"), and with `tail` what
 * follows the last one; cancels the body when the consumer stops. */
async function* bodyLines(res: Response, tail: boolean): AsyncGenerator<string> {
  if (!res.body) return;
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        yield line;
      }
    }
    if (tail && buffer) yield buffer;
  } finally {
    await reader.cancel().catch(() => {});
  }
}
