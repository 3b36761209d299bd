/**
 * Objects the SDK returns: the server's JSON answers with `camelCase` keys.
 * Fields the server may add later are kept at run time (as camelCase), untyped.
 */

export type SandboxStatus =
  | "pending"
  | "running"
  | "snapshotting"
  | "suspending"
  | "suspended"
  | "terminated"
  | "timeout"
  | "failed";

export type SnapshotType = "filesystem" | "memory";

export type SnapshotStatus =
  | "in_progress"
  | "local_ready"
  | "completed"
  | "failed"
  | "deleting"
  | "replicating";

export interface Resources {
  cpus: number;
  memoryMb: number;
  diskMb: number;
}

export interface NetworkPolicy {
  allowInternetAccess: boolean;
  allowOut: string[];
  denyOut: string[];
}

/** `GET …/sandboxes/{id}`. */
export interface SandboxInfo {
  sandboxId: string;
  namespace: string;
  status: SandboxStatus;
  resources: Resources;
  name?: string;
  image?: string;
  runtime?: string;
  timeoutSecs?: number;
  entrypoint?: string[];
  secretNames?: string[];
  networkPolicy?: NetworkPolicy;
  pendingReason?: string;
  terminationReason?: string;
  errorDetails?: { message: string };
  /** ISO 8601. */
  createdAt?: string;
  terminatedAt?: string;
  allowUnauthenticatedAccess?: boolean;
  exposedPorts?: number[];
  /** Base URL of the sandbox proxy that reaches this sandbox. */
  sandboxUrl?: string;
  autoResume?: boolean;
  /** The snapshot it was restored from. */
  snapshotId?: string;
  /** The warm pool it was claimed from. */
  poolId?: string;
}

/** One sandbox of a warm pool. */
export interface PoolContainer {
  /** The sandbox's id. */
  id: string;
  /** `Idle` (warm: booted, unclaimed) or `Running` (claimed). */
  state: "Idle" | "Running" | string;
  /** Set once claimed. */
  sandboxId?: string;
  /** The node it runs on. */
  executorId: string;
}

/**
 * `GET …/sandbox-pools/{id}`: a warm pool, a sandbox template with
 * `warmContainers` sandboxes of it kept booted and handed out by `claim`.
 */
export interface PoolInfo {
  /** The pool's id (also as `id`). */
  poolId: string;
  id: string;
  namespace: string;
  image: string;
  resources: Resources;
  /** Counted from a claim; 0: none. */
  timeoutSecs: number;
  entrypoint?: string[];
  /** At most this many sandboxes of the pool at once; absent: no cap. */
  maxContainers?: number;
  warmContainers: number;
  networkPolicy: NetworkPolicy;
  /** Only from `getPool`: its sandboxes, warm and claimed. */
  containers?: PoolContainer[];
  /** ISO 8601. */
  createdAt: string;
  updatedAt: string;
}

/** Answer to create (and each sandbox of a copy). */
export interface CreateSandboxResult {
  sandboxId: string;
  status: SandboxStatus;
  sandboxUrl?: string;
  name?: string;
  pendingReason?: string;
  reason?: string;
  terminationReason?: string;
  errorDetails?: { message: string };
}

/** `GET …/snapshots/{sid}`. */
export interface SnapshotInfo {
  snapshotId: string;
  namespace: string;
  /** The sandbox it was taken from (which may be gone by now). */
  sandboxId: string;
  status: SnapshotStatus;
  snapshotType?: SnapshotType;
  baseImage?: string;
  error?: string;
  /** Logical size: the files plus the memory image. */
  sizeBytes?: number;
  /** Compressed bytes this snapshot added to the store. */
  storedBytes?: number;
  rootfsDiskBytes?: number;
  /** How long the source sandbox was paused for the capture. */
  pauseMs?: number;
  snapshotUri?: string;
  createdAt?: string;
}

/** Answer to `POST …/sandboxes/{id}/snapshot`. */
export interface CreateSnapshotResult {
  snapshotId: string;
  status: SnapshotStatus;
}

/** Answer to a live copy. */
export interface CopyResult {
  sourceSandboxId: string;
  /** The memory snapshot the copies were booted from; it stays until deleted. */
  snapshotId?: string;
  sandboxes: CreateSandboxResult[];
}

/** `GET …/images/{name}`: an image sandboxes can be created from (`create({ image: name })`). */
export interface ImageInfo {
  name: string;
  /** Fixed at import: sandboxes and snapshots keep their image when a later import takes the name. */
  id: string;
  /** A registry reference, `docker-archive`, `oci-archive`, or `debootstrap` (built in). */
  source: string;
  digest?: string;
  /** ISO 8601. */
  createdAt?: string;
  sizeBytes?: number;
  layers?: number;
  /** `KEY=value` pairs every process of its sandboxes gets. */
  env: string[];
  /** Where and as whom commands run unless they say otherwise. */
  workingDir?: string;
  user?: string;
  /** The image's ENTRYPOINT + CMD: started in a sandbox created without an entrypoint. */
  entrypoint: string[];
}

/**
 * A secret of the namespace: its name and dates. Its value is never shown
 * again; sandboxes created with `secretNames: [name]` get it as an
 * environment variable.
 */
export interface SecretInfo {
  name: string;
  /** ISO 8601. */
  createdAt: string;
  /** ISO 8601. */
  updatedAt: string;
}

/** Log levels by name (`info` is stdout, `error` stderr) or number 1-6. */
export type LogLevel = "trace" | "debug" | "info" | "warn" | "error" | "fatal" | number;

/** Which records of a sandbox's logs to read. */
export interface LogQuery {
  levels?: LogLevel[];
  /** Pids (as `processId` in the records). */
  processIds?: (string | number)[];
  /** Only records whose body contains this text. */
  body?: string;
  /** The first N matching records. */
  head?: number;
  /** The last N matching records (not with `head`). */
  tail?: number;
  /** Continue from an earlier page's `nextToken` (or `cursor`). */
  nextToken?: string;
}

/**
 * One record of a sandbox's persisted logs: a process's output line
 * (`processId`, `stream` set) or a lifecycle event (`event` set: created,
 * running, suspended, resumed, snapshot, terminated, failed,
 * process_started, process_exited…).
 */
export interface LogEntry {
  /** Nanoseconds since the Unix epoch (a number: sub-microsecond digits may round). */
  timestamp: number;
  /** Milliseconds since the Unix epoch, for `new Date(...)`. */
  timeMs: number;
  uuid: string;
  sandboxId: string;
  namespace: string;
  body: string;
  /** 1 trace … 6 fatal; 3 for stdout, 5 for stderr. */
  level: number;
  attributes: Record<string, unknown>;
  processId?: string;
  stream?: "stdout" | "stderr";
  event?: string;
}

export interface LogPage {
  entries: LogEntry[];
  /** Set when more matching records follow. */
  nextToken?: string;
  /** Where newer records will start: pass it as `nextToken` later. */
  cursor: string;
}

/** A process a sandbox's logs have records of. */
export interface LogProcess {
  processId: string;
  processPid: string;
  processCommand: string;
  processManagedId: string;
  processManagedName: string;
  firstSeen: number;
  lastSeen: number;
  logCount: number;
}

export type ImageArchiveFormat = "docker-archive" | "oci-archive";

/** A progress line of an image import (layers count from 1). */
export type ImageImportProgress =
  | { event: "resolved"; layers: number; bytes: number }
  | { event: "fetched"; layer: number; bytes: number }
  | { event: "applied"; layer: number; entries: number };

/** A progress line of an image build (stages and steps count from 1; `line` is the Dockerfile's). */
export type ImageBuildProgress =
  /** An instruction that has no effect here, or an ignored directive. */
  | { event: "warning"; line: number; message: string }
  /** A step starts. */
  | { event: "step"; stage: number; stages: number; step: number; steps: number; line: number; text: string }
  /** The step's result comes from the build cache. */
  | { event: "cached" }
  /** A line the step's command printed. */
  | { event: "output"; line: string }
  /** The step is done: its milliseconds and the bytes it added. */
  | { event: "step_done"; ms: number; bytes: number };

export type ProcessStatus = "running" | "exited" | "signaled" | "oom_killed";

/** A process in a sandbox (`/api/v1/processes`). */
export interface ProcessInfo {
  pid: number;
  status: ProcessStatus;
  command: string;
  args: string[];
  startedAt: string;
  endedAt?: string;
  exitCode?: number;
  signal?: number;
  oomKilled?: boolean;
  stdinWritable?: boolean;
  name?: string;
  /** Restart and health state of a managed process. */
  managed?: Record<string, unknown>;
}

export type OutputStreamName = "stdout" | "stderr";

/** One line of process output. */
export interface OutputLine {
  line: string;
  /** ISO 8601. */
  timestamp: string;
  stream?: OutputStreamName;
}

export interface DirEntry {
  name: string;
  isDir: boolean;
  size?: number;
  modifiedAt?: string;
}

/** Who a process runs as: `"root"`, `"1000:1000"`, a user name, or ids. */
export type ProcessUser = string | { name?: string; uid?: number; gid?: number };
