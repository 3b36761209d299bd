/**
 * Errors raised by the SDK. Every error is an {@link SbxError}; errors from an
 * HTTP answer carry its `status` and the server's `code` and `message`
 * (sbx answers every failure with JSON `{"code", "message"}`).
 */

export interface SbxErrorOptions {
  /** HTTP status of the answer, when the error comes from one. */
  status?: number;
  /** The server's machine-readable code, e.g. `not_found`, `invalid_argument`. */
  code?: string;
  cause?: unknown;
}

export class SbxError extends Error {
  readonly status?: number;
  readonly code?: string;

  constructor(message: string, options: SbxErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = options.status;
    this.code = options.code;
  }
}

/** 400: the request was invalid (bad resources, ephemeral suspend, ...). */
export class BadRequestError extends SbxError {}

/** 401: missing or wrong API key (403 is the {@link PermissionDeniedError} subclass). */
export class AuthenticationError extends SbxError {}

/** 403: the key is not allowed to do this. */
export class PermissionDeniedError extends AuthenticationError {}

/** 404 on anything else than a sandbox or a snapshot (a file, a process, a PTY session). */
export class NotFoundError extends SbxError {}

/** 404: no sandbox with this id or name. */
export class SandboxNotFoundError extends NotFoundError {}

/** 404: no snapshot with this id. */
export class SnapshotNotFoundError extends NotFoundError {}

/** 404: no image of this name, or (on an import) no such image in the registry. */
export class ImageNotFoundError extends NotFoundError {}

/** 404: no warm pool with this id. */
export class PoolNotFoundError extends NotFoundError {}

/** 404: no such file or directory in the sandbox. */
export class SandboxFileNotFoundError extends NotFoundError {}

/** 409: the name is taken, or the sandbox is not in a state that allows the call. */
export class ConflictError extends SbxError {}

/** 5xx: the server failed. */
export class ServerError extends SbxError {}

/** The server could not be reached (refused, reset, DNS, ...). */
export class SbxConnectionError extends SbxError {}

/** A wait ran out: the awaited state was not reached in time. */
export class SbxTimeoutError extends SbxError {}

/** `snapshotAndWait` / `checkpoint` ran out of time before the snapshot was ready. */
export class SnapshotTimeoutError extends SbxTimeoutError {}

/** A snapshot failed (its `error` is the message) or was deleted while waited for. */
export class SnapshotError extends SbxError {}

/** An image import failed after the server accepted it (its progress ended in an error, or without the image). */
export class ImageImportError extends SbxError {}

/**
 * An image build failed after the server accepted it: a step failed (the
 * message names its Dockerfile line and ends with the last lines the step
 * printed; `output` has them all), or the answer ended without the image. A
 * Dockerfile the server refuses at once is a {@link BadRequestError}.
 */
export class ImageBuildError extends SbxError {
  /** What the failed step printed. */
  readonly output: string[];

  constructor(message: string, output: string[] = []) {
    const tail = output.slice(-5).join("\n");
    super(tail ? `${message}\n${tail}` : message);
    this.output = output;
  }
}

/** The sandbox failed or ended while it was expected to run. */
export class SandboxError extends SbxError {}

/** `commands.run(…, { check: true })`: the command did not exit 0. */
export class CommandError extends SbxError {
  /** The full result: output, exit code, signal, reason. */
  readonly result: {
    stdout: string;
    stderr: string;
    exitCode: number | null;
    signal?: number;
    reason: string;
  };

  constructor(result: CommandError["result"]) {
    const what = result.exitCode !== null ? `exit code ${result.exitCode}` : `${result.reason} (signal ${result.signal})`;
    const tail = result.stderr.trim().split("\n").filter(Boolean).slice(-5).join("\n");
    super(`command failed with ${what}${tail ? `: ${tail}` : ""}`);
    this.result = result;
  }
}

/** What a 404 is about, for the right error class. */
export type NotFoundKind = "sandbox" | "snapshot" | "image" | "pool" | "file" | "other";

/** The error for a non-2xx answer with this status and body text. */
export function errorFromResponse(
  status: number,
  bodyText: string,
  notFound: NotFoundKind = "other",
): SbxError {
  let code: string | undefined;
  let message = bodyText.trim();
  try {
    const body = JSON.parse(bodyText) as unknown;
    if (body && typeof body === "object") {
      const b = body as Record<string, unknown>;
      if (typeof b.code === "string") code = b.code;
      if (typeof b.message === "string") message = b.message;
      else if (typeof b.error === "string") message = b.error;
    }
  } catch {
    // Not JSON: the text is the message.
  }
  if (!message) message = `HTTP ${status}`;
  const opts = { status, code };
  switch (status) {
    case 400:
    case 422:
      return new BadRequestError(message, opts);
    case 401:
      return new AuthenticationError(message, opts);
    case 403:
      return new PermissionDeniedError(message, opts);
    case 404:
      if (notFound === "sandbox") return new SandboxNotFoundError(message, opts);
      if (notFound === "snapshot") return new SnapshotNotFoundError(message, opts);
      if (notFound === "image") return new ImageNotFoundError(message, opts);
      if (notFound === "pool") return new PoolNotFoundError(message, opts);
      if (notFound === "file") return new SandboxFileNotFoundError(message, opts);
      return new NotFoundError(message, opts);
    case 409:
      return new ConflictError(message, opts);
    default:
      return status >= 500 ? new ServerError(message, opts) : new SbxError(message, opts);
  }
}
