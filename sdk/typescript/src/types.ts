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

export type ImageArchiveFormat = "docker-archive" | "oci-archive";

/** A progress line of an image import (layers count from 1). */
export type ImageImportProgress =
  | { event: "resolved"; layers: number; bytes: number }
  | { event: "fetched"; layer: number; bytes: number }
  | { event: "applied"; layer: number; entries: number };

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
