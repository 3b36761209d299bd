/**
 * TypeScript SDK for sbx: self-hosted gVisor sandboxes behind the Tensorlake
 * sandbox HTTP API.
 *
 * ```ts
 * import { Sandbox } from "@sbx/sdk";
 * await using sb = await Sandbox.create();
 * const r = await sb.commands.run("python3", { args: ["-c", "print(6*7)"] });
 * ```
 */

export { SandboxClient } from "./client.js";
export type {
  BuildImageOptions,
  CheckpointOptions,
  ClaimOptions,
  ClientOptions,
  CreateSandboxOptions,
  ImportImageArchiveOptions,
  ImportImageOptions,
  LifecycleWaitOptions,
  PoolOptions,
  SnapshotWaitOptions,
  UpdatePoolOptions,
  UpdateSandboxOptions,
} from "./client.js";
export { Sandbox } from "./sandbox.js";
export type { SandboxConnectOptions, SandboxCreateOptions } from "./sandbox.js";
export { Commands, Files, Processes } from "./daemon.js";
export type {
  CommandEvent,
  CommandResult,
  ExitReason,
  OutputSelector,
  ProcessRef,
  RunOptions,
  StartProcessOptions,
} from "./daemon.js";
export { Pty, PtySession } from "./pty.js";
export type { PtyOptions } from "./pty.js";
export * from "./errors.js";
export * from "./types.js";
export { SDK_VERSION } from "./http.js";
