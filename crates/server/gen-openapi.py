#!/usr/bin/env python3
"""Writes crates/server/openapi.json, the OpenAPI 3.1 description of the sbx
HTTP API: the control plane (flat routes and `/v1/namespaces/{ns}` ones) and
the in-sandbox daemon reached through the sandbox proxy.

Edit this script, not the JSON, then run `python3 crates/server/gen-openapi.py`
(an argument writes elsewhere).
`cargo test -p sbx-server openapi` checks the spec against the routers, and
tests/python/test_openapi_fuzz.py fuzzes a real server with it.
"""

import json
import pathlib
import sys

OUT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent / "openapi.json"
NS_PREFIX = "/v1/namespaces/{ns}"


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def opt(schema):
    """An optional request field: the server also takes `null` (= omitted)."""
    s = dict(schema)
    t = s.get("type")
    if t is not None:
        s["type"] = [t, "null"] if isinstance(t, str) else t + ["null"]
        if "enum" in s:
            s["enum"] = s["enum"] + [None]
        return s
    return {"anyOf": [s, {"type": "null"}]}


def obj(required, props, extra=False, description=None):
    o = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        o["required"] = required
    if description:
        o["description"] = description
    return o


STR = {"type": "string"}
BOOL = {"type": "boolean"}
U64 = {"type": "integer", "minimum": 0}
I32 = {"type": "integer", "format": "int32"}
TIME = {"type": "string", "format": "date-time"}
STRS = {"type": "array", "items": STR}
OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
DESTINATIONS = {
    "type": "array",
    "maxItems": 256,
    "items": {"type": "string", "pattern": f"^({OCTET}\\.){{3}}{OCTET}(/(3[0-2]|[12]?[0-9]))?$"},
}
PORT = {"type": "integer", "minimum": 0, "maximum": 65535}

SANDBOX_STATUSES = [
    "pending", "running", "snapshotting", "suspending",
    "suspended", "terminated", "timeout", "failed",
]
PENDING_REASONS = [
    "scheduling", "waiting_for_container", "no_executors_available",
    "no_resources_available", "pool_at_capacity", "max_capacity_reached",
    "no_executor_for_snapshot_location", "unplaceable",
]
SNAPSHOT_STATUSES = [
    "in_progress", "local_ready", "completed", "failed", "deleting", "replicating",
]

schemas = {
    "Error": obj(
        ["code", "message"],
        {
            "code": {**STR, "description": "machine-readable, e.g. invalid_argument, not_found, conflict, unauthorized, forbidden, unavailable, internal"},
            "message": STR,
        },
        description="Body of every non-2xx answer.",
    ),
    "SandboxStatus": {"type": "string", "enum": SANDBOX_STATUSES},
    "PendingReason": {"type": "string", "enum": PENDING_REASONS},
    "SnapshotStatus": {"type": "string", "enum": SNAPSHOT_STATUSES},
    "SnapshotType": {
        "type": "string",
        "enum": ["filesystem", "memory"],
        "description": "filesystem: the writable layer, restore is a cold boot; memory: layer + memory + processes, restore is warm.",
    },
    "ErrorDetails": obj(["message"], {"message": STR}),
    "Resources": obj(
        ["cpus", "memory_mb", "disk_mb"],
        {"cpus": {"type": "number"}, "memory_mb": U64, "disk_mb": U64},
        description="Resources as granted.",
    ),
    "ResourcesRequest": obj(
        [],
        {
            "cpus": opt({"type": "number", "exclusiveMinimum": 0, "description": "default 1.0; at most the host's cores"}),
            "memory_mb": opt({**U64, "description": "default 1024; 1024-8192 MB per CPU and at most the host's memory"}),
            "disk_mb": opt({"type": "integer", "minimum": 128, "maximum": 1048576, "description": "default 10240"}),
            "gpus": {"description": "GPUs are not available: only null, 0 or [] are accepted"},
        },
        extra=True,
    ),
    "NetworkPolicy": obj(
        ["allow_internet_access", "allow_out", "deny_out"],
        {"allow_internet_access": BOOL, "allow_out": STRS, "deny_out": STRS},
    ),
    "NetworkPolicyRequest": obj(
        [],
        {
            "allow_internet_access": {**BOOL, "default": True,
                                      "description": "false: no outbound traffic (DNS included) but to `allow_out`"},
            "allow_out": {**DESTINATIONS,
                          "description": "reachable even when `deny_out` or `allow_internet_access: false` would block them; "
                                         "never opens private ranges, the host or other sandboxes"},
            "deny_out": {**DESTINATIONS, "description": "not reachable (`0.0.0.0/0`: nothing but `allow_out`)"},
        },
        extra=True,
        description="Egress policy. Entries are IPv4 addresses, CIDR blocks, host names or `*.domain` patterns "
                    "(names are enforced by a DNS guard: only allowed names resolve, and their answers are opened in "
                    "the firewall); IPv6 is a 400.",
    ),
    "CreateSandboxRequest": obj(
        [],
        {
            "image": opt({**STR, "description": "an image of this host; default `default`"}),
            "resources": opt(ref("ResourcesRequest")),
            "timeout_secs": opt({"type": "integer", "minimum": 0, "maximum": 315360000,
                                 "description": "0 or none: no timeout. An ephemeral sandbox terminates, a named one suspends after it"}),
            "entrypoint": opt({**STRS, "minItems": 1,
                               "description": "command (not empty) and arguments, started as the managed process `entrypoint`"}),
            "secret_names": opt({**STRS, "maxItems": 256,
                                 "description": "secrets of the namespace (`PUT /secrets/{name}`) set as environment variables of "
                                                "the entrypoint and every process; an unknown name is a 400 naming it. A memory "
                                                "snapshot's restore keeps the values it had (this must then be left out or equal)"}),
            "network": opt(ref("NetworkPolicyRequest")),
            "snapshot_id": opt({**STR, "description": "restore this snapshot; other fields are inherited from it"}),
            "name": opt({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
                         "description": "unique among live sandboxes of the namespace; must not look like a sandbox id; named sandboxes can be suspended"}),
            "allow_unauthenticated_access": opt(BOOL),
            "exposed_ports": opt({"type": "array", "items": {**PORT, "not": {"const": 9501}},
                                  "description": "user ports reachable through the proxy (9501 is the daemon's)"}),
            "auto_resume": opt({**BOOL, "description": "default true: proxy traffic resumes a suspended sandbox"}),
            "wait": opt({**BOOL, "description": "false: answer 202 `pending` at once"}),
            "max_pending_secs": opt({**U64, "maximum": 86400,
                                     "description": "when no node has room now: wait this long `pending` (its reason says why) "
                                                    "instead of a 503, then fail with that reason"}),
        },
        extra=True,
        description="Unknown fields are accepted and ignored.",
    ),
    "CreateSandboxResponse": obj(
        ["sandbox_id", "status"],
        {
            "sandbox_id": STR,
            "status": ref("SandboxStatus"),
            "sandbox_url": {**STR, "description": "base URL of the sandbox proxy"},
            "name": STR,
            "pending_reason": ref("PendingReason"),
            "reason": STR,
            "termination_reason": STR,
            "error_details": ref("ErrorDetails"),
        },
    ),
    "SandboxInfo": obj(
        ["sandbox_id", "namespace", "status", "resources", "network_policy", "network",
         "created_at", "allow_unauthenticated_access", "exposed_ports", "auto_resume"],
        {
            "sandbox_id": STR,
            "namespace": STR,
            "status": ref("SandboxStatus"),
            "resources": ref("Resources"),
            "name": STR,
            "image": STR,
            "runtime": {**STR, "description": "e.g. gvisor"},
            "timeout_secs": U64,
            "entrypoint": STRS,
            "secret_names": STRS,
            "network_policy": ref("NetworkPolicy"),
            "network": {**ref("NetworkPolicy"), "description": "same as network_policy, for older CLIs"},
            "pending_reason": ref("PendingReason"),
            "termination_reason": {**STR, "description": "e.g. user_request, timeout, startup_failed, sandbox_exited, host_lost"},
            "error_details": ref("ErrorDetails"),
            "created_at": TIME,
            "terminated_at": TIME,
            "allow_unauthenticated_access": BOOL,
            "exposed_ports": {"type": "array", "items": PORT},
            "sandbox_url": {**STR, "description": "absent once the sandbox is terminated, failed or timed out"},
            "auto_resume": BOOL,
            "snapshot_id": {**STR, "description": "the snapshot it was restored from"},
            "pool_id": {**STR, "description": "the warm pool it was claimed from"},
            "resource_resize": obj(
                ["generation", "status", "requested"],
                {"generation": {"type": "integer"}, "status": {"const": "succeeded"},
                 "requested": ref("Resources")},
                description="only in the answer to a resize (PATCH of `resources`), which is applied before it",
            ),
        },
    ),
    "PoolRequest": obj(
        [],
        {
            "image": opt({**STR, "description": "an image of this host; default `default`"}),
            "resources": opt(ref("ResourcesRequest")),
            "timeout_secs": opt({"type": "integer", "minimum": 0, "maximum": 315360000,
                                 "description": "0 or none: no timeout; counted from the claim"}),
            "entrypoint": opt({**STRS, "minItems": 1}),
            "max_containers": opt({"type": "integer", "minimum": 1,
                                   "description": "at most this many sandboxes of the pool at once, warm and claimed"}),
            "warm_containers": opt({"type": "integer", "minimum": 0, "maximum": 100,
                                    "description": "booted, unclaimed sandboxes kept ready (default 1)"}),
            "network": opt({**ref("NetworkPolicyRequest"),
                            "description": "on an update: absent keeps the policy, null clears it"}),
        },
        extra=True,
        description="A pool's template and counts. Unknown fields are accepted and ignored.",
    ),
    "CreatePoolResponse": obj(["pool_id", "namespace"], {"pool_id": STR, "namespace": STR}),
    "PoolContainer": obj(
        ["id", "state", "executor_id"],
        {"id": {**STR, "description": "the sandbox's id"},
         "state": {"type": "string", "enum": ["Idle", "Running"], "description": "Idle: warm, unclaimed; Running: claimed"},
         "sandbox_id": {**STR, "description": "set once claimed"},
         "executor_id": {**STR, "description": "the node it runs on"}},
    ),
    "PoolInfo": obj(
        ["id", "namespace", "image", "resources", "timeout_secs", "warm_containers", "network_policy",
         "created_at", "updated_at"],
        {"id": STR, "namespace": STR, "image": STR, "resources": ref("Resources"), "timeout_secs": U64,
         "entrypoint": STRS, "max_containers": {"type": "integer", "minimum": 1},
         "warm_containers": {"type": "integer", "minimum": 0}, "network_policy": ref("NetworkPolicy"),
         "containers": {"type": "array", "items": ref("PoolContainer"),
                        "description": "only in GET /sandbox-pools/{id}"},
         "created_at": TIME, "updated_at": TIME},
    ),
    "ListPoolsResponse": obj(["pools"], {"pools": {"type": "array", "items": ref("PoolInfo")}}),
    "ClaimRequest": obj(
        [],
        {"name": opt({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
                      "description": "a name for the claimed sandbox"}),
         "file_systems": opt({"type": "array", "maxItems": 0,
                              "description": "sbx has no file-system service: only empty"})},
        extra=True,
    ),
    "ListSandboxesResponse": obj(["sandboxes"], {"sandboxes": {"type": "array", "items": ref("SandboxInfo")}}),
    "UpdateSandboxRequest": obj(
        [],
        {
            "name": opt({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
                         "description": "null clears the name (the sandbox becomes ephemeral)"}),
            "allow_unauthenticated_access": opt(BOOL),
            "exposed_ports": opt({"type": "array", "items": {**PORT, "not": {"const": 9501}}}),
            "auto_resume": opt(BOOL),
            "resources": ({"allOf": [ref("ResourcesRequest")], "minProperties": 1,
                              "description": "a live resize of a running sandbox, alone in the body: memory and CPUs "
                                             "change at once, the disk grows (never shrinks); 409 for a memory "
                                             "decrease below use, a disk shrink or a sandbox that is not running; "
                                             "503 no_resources_available when the host cannot hold more memory"}),
            "network": opt({**ref("NetworkPolicyRequest"),
                            "description": "a new egress policy, applied to the running sandbox at once "
                                           "(connections it now forbids are closed); null: the default policy"}),
        },
        extra=True,
        description="Omitted = keep; null = clear (name), the default (network) or keep (the others).",
    ),
    "TerminateResponse": obj(
        ["sandbox_id", "status"],
        {"sandbox_id": STR, "status": {"type": "string", "enum": ["terminated"]}},
    ),
    "LogEntry": obj(
        ["timestamp", "uuid", "namespace", "application", "body", "logAttributes", "sandboxId", "level"],
        {
            "timestamp": {**U64, "description": "nanoseconds since the Unix epoch"},
            "uuid": {**STR, "format": "uuid"},
            "namespace": STR,
            "application": {**STR, "description": "always empty"},
            "body": {**STR, "description": "the output line, or the lifecycle event's text"},
            "logAttributes": {**STR, "description": "a JSON object: `stream`, `pid`, `processId` for output; "
                                                    "`event` (created, running, failed, suspended, resumed, snapshot, "
                                                    "terminated, process_started, process_exited…) and details for events"},
            "sandboxId": STR,
            "level": {"type": "integer", "minimum": 1, "maximum": 6,
                      "description": "1 trace, 2 debug, 3 info (stdout), 4 warn, 5 error (stderr), 6 fatal"},
        },
        description="One persisted log record: a process's output line or a lifecycle event.",
    ),
    "LogsResponse": obj(
        ["logs", "cursor"],
        {"logs": {"type": "array", "items": ref("LogEntry"), "description": "oldest first"},
         "nextToken": {**STR, "description": "present when more matching records follow: pass it as nextToken"},
         "cursor": {**STR, "description": "sbx: where newer records will start; poll with it as nextToken to follow"}},
    ),
    "LogProcess": obj(
        ["processId", "processPid", "processCommand", "processManagedId", "processManagedName",
         "firstSeen", "lastSeen", "logCount"],
        {
            "processId": {**STR, "description": "the value the logs' processId filter takes (the pid)"},
            "processPid": STR,
            "processCommand": STR,
            "processManagedId": {**STR, "description": "a background process's id; empty for `run`"},
            "processManagedName": {**STR, "description": "a background process's name, if it has one"},
            "firstSeen": {**U64, "description": "nanoseconds since the Unix epoch"},
            "lastSeen": U64,
            "logCount": {**U64, "description": "output lines kept"},
        },
    ),
    "LogProcessesResponse": obj(["processes"], {"processes": {"type": "array", "items": ref("LogProcess")}}),
    "CreateSnapshotRequest": obj(
        [], {"snapshot_type": opt({**ref("SnapshotType"), "description": "default filesystem"})}, extra=True,
    ),
    "CreateSnapshotResponse": obj(["snapshot_id", "status"], {"snapshot_id": STR, "status": ref("SnapshotStatus")}),
    "SnapshotInfo": obj(
        ["snapshot_id", "namespace", "sandbox_id", "snapshot_type", "status", "created_at"],
        {
            "snapshot_id": STR,
            "namespace": STR,
            "sandbox_id": {**STR, "description": "the source sandbox (which may be gone)"},
            "snapshot_type": ref("SnapshotType"),
            "status": ref("SnapshotStatus"),
            "base_image": STR,
            "error": STR,
            "size_bytes": {**U64, "description": "logical size: layer files plus memory image"},
            "stored_bytes": {**U64, "description": "compressed bytes this snapshot added to the store"},
            "rootfs_disk_bytes": {**U64, "description": "the disk size a restore gets by default"},
            "pause_ms": {**U64, "description": "how long the source was paused for the capture"},
            "snapshot_uri": STR,
            "created_at": TIME,
        },
    ),
    "ListSnapshotsResponse": obj(["snapshots"], {"snapshots": {"type": "array", "items": ref("SnapshotInfo")}}),
    "ImageInfo": obj(
        ["name", "id", "source", "env", "entrypoint"],
        {
            "name": {**STR, "description": "what creates name (`image`)"},
            "id": {**STR, "description": "fixed at import: sandboxes and snapshots keep their image when a later import takes the name"},
            "source": {**STR, "description": "a registry reference, `docker-archive`, `oci-archive`, or `debootstrap` (the built-in default)"},
            "digest": {**STR, "description": "the manifest's digest, when the source has one"},
            "created_at": TIME,
            "size_bytes": U64,
            "layers": U64,
            "stored_bytes": {**U64, "description": "compressed bytes its files added to the content-addressed store, once they are there"},
            "env": {**STRS, "description": "the image's Env: every process of its sandboxes gets it"},
            "working_dir": {**STR, "description": "the image's WorkingDir: where commands run unless they say otherwise"},
            "user": {**STR, "description": "the image's User: who commands run as unless they say otherwise"},
            "entrypoint": {**STRS, "description": "ENTRYPOINT + CMD: started in a sandbox whose create gives no entrypoint"},
        },
    ),
    "ListImagesResponse": obj(["images"], {"images": {"type": "array", "items": ref("ImageInfo")}}),
    "ImportImageRequest": obj(
        ["reference"],
        {
            "reference": {**STR, "description": "HOST[:PORT]/REPO[:TAG|@DIGEST]; Docker Hub when there is no host"},
            "name": opt({**STR, "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$", "description": "default: the repository's last component"}),
            "insecure": opt({**BOOL, "description": "plain HTTP to the registry"}),
            "username": opt(STR),
            "password": opt(STR),
        },
    ),
    "ImportEvent": {
        "description": "One line of an import's application/x-ndjson answer; the last is `done` or `error`.",
        "oneOf": [
            obj(["event", "layers", "bytes"], {"event": {"const": "resolved"}, "layers": U64, "bytes": U64}),
            obj(["event", "layer", "bytes"], {"event": {"const": "fetched"}, "layer": U64, "bytes": U64}),
            obj(["event", "layer", "entries"], {"event": {"const": "applied"}, "layer": U64, "entries": U64}),
            obj(["event", "image"], {"event": {"const": "done"}, "image": ref("ImageInfo")}),
            obj(["event", "message"], {"event": {"const": "error"}, "message": STR}),
        ],
    },
    "BuildEvent": {
        "description": "One line of a build's application/x-ndjson answer; the last is `done` or `error`.",
        "oneOf": [
            obj(["event", "line", "message"], {"event": {"const": "warning"}, "line": U64, "message": STR}),
            obj(["event", "stage", "stages", "step", "steps", "line", "text"],
                {"event": {"const": "step"}, "stage": U64, "stages": U64, "step": U64, "steps": U64, "line": U64, "text": STR}),
            obj(["event"], {"event": {"const": "cached"}}),
            obj(["event", "line"], {"event": {"const": "output"}, "line": STR}),
            obj(["event", "ms", "bytes"], {"event": {"const": "step_done"}, "ms": U64, "bytes": U64}),
            obj(["event", "image"], {"event": {"const": "done"}, "image": ref("ImageInfo")}),
            obj(["event", "message"], {"event": {"const": "error"}, "message": STR}),
        ],
    },
    "DeleteImageResponse": obj(
        ["name", "id", "status"],
        {"name": STR, "id": STR, "status": {"type": "string", "enum": ["removed"]}},
    ),
    "SetSecretRequest": obj(
        ["value"],
        {"value": {**STR, "maxLength": 65536, "description": "at most 65536 bytes of UTF-8, no NUL; never shown again"}},
    ),
    "SecretInfo": obj(
        ["name", "created_at", "updated_at"],
        {"name": STR, "created_at": TIME, "updated_at": TIME},
        description="A secret: its name and dates, never its value.",
    ),
    "ListSecretsResponse": obj(["secrets"], {"secrets": {"type": "array", "items": ref("SecretInfo")}}),
    "DeleteSecretResponse": obj(
        ["name", "status"],
        {"name": STR, "status": {"type": "string", "enum": ["deleted"]}},
    ),
    "DeleteSnapshotResponse": obj(
        ["snapshot_id", "status"],
        {"snapshot_id": STR, "status": {"type": "string", "enum": ["deleted"]}},
    ),
    "CopySandboxResponse": obj(
        ["source_sandbox_id", "sandboxes"],
        {
            "source_sandbox_id": STR,
            "snapshot_id": {**STR, "description": "the memory snapshot the copies were restored from; it stays listed until deleted"},
            "sandboxes": {"type": "array", "items": ref("CreateSandboxResponse")},
        },
    ),
    "Health": obj(["healthy"], {"healthy": BOOL}),
    "ServerHealth": obj(["healthy", "ready", "default_image"], {
        "healthy": BOOL,
        "ready": {**BOOL, "description": "sandboxes can start: the default image is built"},
        "default_image": obj(["status"], {
            "status": {"type": "string", "enum": ["building", "ready", "failed"]},
            "steps": {"type": "integer", "minimum": 0, "description": "build steps so far (building)"},
            "progress": {**STR, "description": "the build's last step (building)"},
            "error": {**STR, "description": "why the last build failed; it is tried again (failed)"},
        }),
    }),
    # Daemon (in-sandbox agent) types.
    "ProcessUser": {
        "description": '"root", "1000:1000", a user name, or {name|uid, gid?}',
        "anyOf": [
            STR,
            obj([], {"name": STR, "uid": {"type": "integer", "minimum": 0}, "gid": {"type": "integer", "minimum": 0}}),
        ],
    },
    "RunRequest": obj(
        ["command"],
        {
            "command": STR,
            "args": STRS,
            "env": {"type": "object", "additionalProperties": STR},
            "working_dir": STR,
            "timeout": {"type": "number", "description": "seconds; then the process is killed and the run ends timed_out"},
            "user": ref("ProcessUser"),
        },
        extra=True,
    ),
    "RestartPolicy": obj(
        [],
        {
            "policy": {"type": "string", "enum": ["never", "on_failure", "always"], "default": "on_failure"},
            "max_restarts": {"type": "integer", "minimum": 0},
            "initial_backoff_ms": {**U64, "default": 500},
            "max_backoff_ms": {**U64, "default": 30000},
        },
        extra=True,
    ),
    "HealthCheck": obj(
        ["type", "port"],
        {
            "type": {"type": "string", "enum": ["http", "tcp"]},
            "port": PORT,
            "path": STR,
            "initial_delay_ms": {**U64, "default": 5000},
            "interval_ms": {**U64, "default": 1000},
            "timeout_ms": {**U64, "default": 500},
            "failure_threshold": {"type": "integer", "minimum": 0, "default": 3},
        },
        extra=True,
    ),
    "StartProcessRequest": obj(
        ["command"],
        {
            "command": STR,
            "args": STRS,
            "env": {"type": "object", "additionalProperties": STR},
            "working_dir": STR,
            "stdin_mode": {"type": "string", "enum": ["closed", "pipe"]},
            "stdout_mode": {"type": "string", "enum": ["capture", "discard"]},
            "stderr_mode": {"type": "string", "enum": ["capture", "discard"]},
            "user": ref("ProcessUser"),
            "name": STR,
            "restart": ref("RestartPolicy"),
            "health_check": ref("HealthCheck"),
        },
        extra=True,
    ),
    "ManagedInfo": obj(
        ["id", "status", "restart_count", "restart", "health_status", "consecutive_health_failures"],
        {
            "id": STR,
            "name": STR,
            "status": {"type": "string", "enum": ["starting", "running", "backing_off", "stopped"]},
            "restart_count": {"type": "integer", "minimum": 0},
            "restart": ref("RestartPolicy"),
            "health_check": ref("HealthCheck"),
            "health_status": {"type": "string", "enum": ["disabled", "starting", "healthy", "unhealthy"]},
            "consecutive_health_failures": {"type": "integer", "minimum": 0},
            "last_exit": obj(["oom_killed", "ended_at"], {"exit_code": I32, "signal": I32, "oom_killed": BOOL, "ended_at": TIME}),
            "last_error": STR,
            "next_restart_at": TIME,
        },
    ),
    "ProcessInfo": obj(
        ["pid", "status", "oom_killed", "stdin_writable", "command", "args", "started_at"],
        {
            "pid": I32,
            "status": {"type": "string", "enum": ["running", "exited", "signaled", "oom_killed"]},
            "exit_code": I32,
            "signal": I32,
            "oom_killed": BOOL,
            "stdin_writable": BOOL,
            "command": STR,
            "args": STRS,
            "started_at": TIME,
            "ended_at": TIME,
            "name": STR,
            "managed": ref("ManagedInfo"),
        },
    ),
    "ProcessList": obj(["processes"], {"processes": {"type": "array", "items": ref("ProcessInfo")}}),
    "SignalRequest": obj(["signal"], {"signal": {"type": "integer", "minimum": 0, "maximum": 64}}, extra=True),
    "Success": obj(["success"], {"success": BOOL}),
    "OutputResponse": obj(
        ["pid", "lines", "line_count"],
        {"pid": I32, "lines": STRS, "line_count": {"type": "integer", "minimum": 0}},
    ),
    "OutputEvent": obj(
        ["line", "timestamp"],
        {"line": STR, "timestamp": TIME, "stream": {"type": "string", "enum": ["stdout", "stderr"]}},
        description="One output line (an SSE `data:` payload).",
    ),
    "StartedEvent": obj(["pid", "started_at"], {"pid": I32, "started_at": TIME},
                        description="First event of processes/run."),
    "ExitEvent": obj(
        ["oom_killed", "reason"],
        {
            "exit_code": I32,
            "signal": I32,
            "oom_killed": BOOL,
            "reason": {"type": "string", "enum": ["exited", "signaled", "oom_killed", "timed_out"]},
        },
        description="Last event of processes/run: exit_code or signal is set.",
    ),
    "RunEvent": {"oneOf": [ref("StartedEvent"), ref("OutputEvent"), ref("ExitEvent")]},
    "JournalEntry": obj(
        ["seq", "timestamp", "pid", "kind", "text"],
        {
            "seq": U64,
            "timestamp": TIME,
            "pid": I32,
            "kind": {"type": "string", "enum": ["stdout", "stderr", "started", "exited"]},
            "text": {**STR, "description": "the line; the command line (started); how it ended (exited)"},
            "managed_id": STR,
            "managed_name": STR,
            "exit": ref("ExitEvent"),
        },
    ),
    "JournalBatch": obj(
        ["first", "next", "entries"],
        {"first": {**U64, "description": "the oldest entry still held"},
         "next": {**U64, "description": "the number the next entry gets"},
         "entries": {"type": "array", "items": ref("JournalEntry")}},
    ),
    "DaemonInfo": obj(
        ["version", "uptime_secs", "running_processes", "total_processes"],
        {"version": STR, "uptime_secs": U64, "running_processes": U64, "total_processes": U64,
         "has_processes": {**BOOL, "description": "some process other than the daemon exists in the sandbox "
                                                  "(while none does, the host may freeze the idle sandbox)"}},
    ),
    "DirEntry": obj(["name", "is_dir"], {"name": STR, "is_dir": BOOL, "size": U64, "modified_at": TIME}),
    "DirListing": obj(["path", "entries"], {"path": STR, "entries": {"type": "array", "items": ref("DirEntry")}}),
    "CreatePtyRequest": obj(
        ["command"],
        {
            "command": STR,
            "args": STRS,
            "env": {"type": "object", "additionalProperties": STR},
            "working_dir": STR,
            "rows": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 24},
            "cols": {"type": "integer", "minimum": 0, "maximum": 65535, "default": 80},
            "user": ref("ProcessUser"),
        },
        extra=True,
    ),
    "CreatePtyResponse": obj(["session_id", "token"], {"session_id": STR, "token": STR}),
    "PtySessionInfo": obj(
        ["session_id", "pid", "command", "args", "rows", "cols", "created_at", "is_alive"],
        {
            "session_id": STR, "pid": I32, "command": STR, "args": STRS,
            "rows": {"type": "integer"}, "cols": {"type": "integer"},
            "created_at": TIME, "is_alive": BOOL, "exit_code": I32,
        },
    ),
    "PtyList": obj(["sessions"], {"sessions": {"type": "array", "items": ref("PtySessionInfo")}}),
}


schemas["NodeCapacity"] = obj(
    ["cpus", "memory_mb"],
    {"cpus": U64, "memory_mb": U64, "max_sandboxes": {**U64, "description": "`--max-sandboxes`, when capped"}},
    description="What a node can hold, as it reported at registration.",
)
schemas["NodeUsage"] = obj(
    ["sandboxes", "memory_available_mb"],
    {"sandboxes": {**U64, "description": "running or starting"}, "memory_available_mb": U64,
     "images": {**STRS, "description": "ids of the images on its disk"},
     "snapshots": {**STRS, "description": "ids of the snapshots on its disk"}},
    description="What a node uses, as of its last heartbeat.",
)
schemas["NodeInfo"] = obj(
    ["id", "state", "alive", "capacity", "usage", "registered_at", "heartbeat_at"],
    {
        "id": STR,
        "address": {**STR, "description": "where other servers' proxies reach its sandboxes (`HOST:PORT`); absent when it advertises none"},
        "api_address": {**STR, "description": "where other servers send lifecycle requests for its sandboxes (its server's API, `HOST:PORT`)"},
        "state": {"type": "string", "enum": ["ready", "draining"], "description": "`draining`: runs what it has, takes nothing new"},
        "alive": {**BOOL, "description": "it heartbeat recently enough to be given work"},
        "capacity": ref("NodeCapacity"),
        "usage": ref("NodeUsage"),
        "registered_at": TIME,
        "heartbeat_at": TIME,
    },
    description="A host that runs sandboxes.",
)
schemas["ListNodesResponse"] = obj(["nodes"], {"nodes": {"type": "array", "items": ref("NodeInfo")}})

schemas["ArchivedSandboxInfo"] = {
    **schemas["SandboxInfo"],
    "properties": {**schemas["SandboxInfo"]["properties"], "archived_at": {**U64, "description": "when it ended, in milliseconds since the epoch"}},
    "required": schemas["SandboxInfo"]["required"] + ["archived_at"],
    "description": "A sandbox that ended (terminated, failed or timeout).",
}
schemas["ListArchivedSandboxesResponse"] = obj(
    ["sandboxes"],
    {
        "sandboxes": {"type": "array", "items": ref("ArchivedSandboxInfo"), "description": "newest first"},
        "prev_cursor": {**STR, "description": "absent on the first page"},
        "next_cursor": {**STR, "description": "absent on the last page"},
    },
)


def json_body(schema):
    return {"content": {"application/json": {"schema": schema}}}


def ok(schema, description="OK"):
    return {"description": description, **json_body(schema)}


def err(description):
    return {"description": description, **json_body(ref("Error"))}


responses = {
    "BadRequest": err("Invalid input (body, query or path); nothing was changed."),
    "Unauthorized": err("Missing or wrong bearer key (servers started with API keys)."),
    "Forbidden": err("A server without API keys answers only loopback peers; (image import) the registry refused the login (code `registry_denied`)."),
    "NotFound": err("No such sandbox, snapshot, image or secret; (image import) the registry has no such image (code `image_not_found`)."),
    "Conflict": err("Not possible in the current state (or the name is taken)."),
    "Unavailable": err("The sandbox could not be started or captured; or (create) the default image is still being "
                       "built on this host's first start (code `image_building`) or its build failed "
                       "(`image_unavailable`): nothing was created, try again."),
    "Unsupported": err("A change sbx cannot make (code `unsupported`; the message says why)."),
    "TooLarge": err("The upload (or a secret's value) is larger than the server takes (code `too_large`)."),
    "BadGateway": err("The image registry could not be reached or failed (code `registry_error`)."),
}


def errors(*codes):
    names = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 413: "TooLarge", 501: "Unsupported",
             502: "BadGateway", 503: "Unavailable"}
    out = {str(c): {"$ref": f"#/components/responses/{names[c]}"} for c in codes}
    out["401"] = {"$ref": "#/components/responses/Unauthorized"}
    out["403"] = {"$ref": "#/components/responses/Forbidden"}
    return out


def path_param(name, description):
    return {"name": name, "in": "path", "required": True, "schema": STR, "description": description}


def query(name, schema, description=None):
    p = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        p["description"] = description
    return p


SANDBOX_ID = path_param("id", "sandbox id or name")
SNAPSHOT_ID = path_param("sid", "snapshot id")
NS = path_param("ns", "namespace (the flat routes use `default`)")
WAIT_MS = query("wait_ms", U64, "wait up to this long (capped at 30000) for the target state: 200 if reached, else 202")


def op(op_id, summary, resp, params=(), body=None, body_required=False, tags=("sandboxes",)):
    o = {"operationId": op_id, "summary": summary, "tags": list(tags)}
    if params:
        o["parameters"] = list(params)
    if body is not None:
        # The body is optional: none, or null, is the same as {}.
        o["requestBody"] = {"required": body_required, **json_body(opt(body))}
    o["responses"] = resp
    return o


# Control-plane routes relative to the namespace prefix: {path: {method: op}}.
ns_paths = {
    "/sandboxes": {
        "get": op(
            "listSandboxes", "List the sandboxes of a namespace (live ones unless `all` or `status`).",
            {"200": ok(ref("ListSandboxesResponse")), **errors(400)},
            params=[
                query("status", ref("SandboxStatus"), "only sandboxes in this status"),
                query("all", BOOL, "also terminated, failed and timed-out sandboxes"),
            ],
        ),
        "post": op(
            "createSandbox", "Create a sandbox (blocks until it runs unless `wait` is false).",
            {
                "200": ok(ref("CreateSandboxResponse"), "Started (running), or still pending when the client's time budget ran out."),
                "202": ok(ref("CreateSandboxResponse"), "`wait: false`: accepted, status pending."),
                **errors(400, 404, 409, 503),
            },
            params=[
                {"name": "X-Tensorlake-Request-Timeout-Ms", "in": "header", "required": False, "schema": STR,
                 "description": "milliseconds, the client's whole budget (default 300000): a blocking create answers "
                                "before it minus the grace (at least 1 s later). A value that is not an integer is ignored"},
                {"name": "X-Tensorlake-Request-Timeout-Grace-Ms", "in": "header", "required": False, "schema": STR,
                 "description": "milliseconds (default 5000); a value that is not an integer is ignored"},
            ],
            body=ref("CreateSandboxRequest"),
        ),
    },
    "/sandboxes/{id}": {
        "parameters": [SANDBOX_ID],
        "get": op("getSandbox", "One sandbox.", {"200": ok(ref("SandboxInfo")), **errors(400, 404)}),
        "delete": op("terminateSandbox", "Terminate a sandbox (idempotent; removal from the host continues in the background).",
                     {"200": ok(ref("TerminateResponse")), **errors(400, 404)}),
        "patch": op("updateSandbox", "Change name, access, exposed ports, auto_resume or the network policy, "
                    "or resize a running sandbox (`resources` alone; the answer then also has `resource_resize`).",
                    {"200": ok(ref("SandboxInfo")), **errors(400, 404, 409, 503)}, body=ref("UpdateSandboxRequest")),
    },
    "/sandboxes/{id}/logs": {
        "parameters": [SANDBOX_ID],
        "get": op(
            "sandboxLogs",
            "The sandbox's persisted logs: every process's output lines and the sandbox's lifecycle events, "
            "kept after it ends (within the server's log budget). Oldest first; without head or tail, a page of 1000.",
            {"200": ok(ref("LogsResponse")), **errors(400, 404)},
            params=[
                {**query("level", {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 6}},
                         "only these levels (repeat the parameter)"), "style": "form", "explode": True},
                {**query("processId", {"type": "array", "items": STR}, "only these processes' records (repeat)"),
                 "style": "form", "explode": True},
                query("nextToken", {"type": "string", "pattern": "^[0-9]{1,19}$"},
                      "continue from an earlier answer's nextToken (or cursor)"),
                query("head", {"type": "integer", "minimum": 0}, "the first N matching records (at most 10000)"),
                query("tail", {"type": "integer", "minimum": 0}, "the last N matching records (at most 10000); not with head"),
                query("body", STR, "only records whose body contains this text"),
            ],
        ),
    },
    "/sandboxes/{id}/processes": {
        "parameters": [SANDBOX_ID],
        "get": op("sandboxLogProcesses", "The processes the sandbox's logs have records of (filters for sandboxLogs).",
                  {"200": ok(ref("LogProcessesResponse")), **errors(400, 404)}),
    },
    "/sandboxes/{id}/snapshot": {
        "parameters": [SANDBOX_ID],
        "post": op("snapshotSandbox", "Start a snapshot of a running sandbox; poll the snapshot until local_ready or completed.",
                   {"200": ok(ref("CreateSnapshotResponse")), **errors(400, 404, 409)},
                   body=ref("CreateSnapshotRequest"), tags=("snapshots",)),
    },
    "/sandboxes/{id}/snapshots": {
        "parameters": [SANDBOX_ID],
        "get": op("listSandboxSnapshots", "Snapshots taken from this sandbox.",
                  {"200": ok(ref("ListSnapshotsResponse")), **errors(400, 404)}, tags=("snapshots",)),
    },
    "/sandboxes/{id}/suspend": {
        "parameters": [SANDBOX_ID],
        "post": op("suspendSandbox", "Suspend a named, running sandbox (idempotent). Ephemeral sandboxes answer 400.",
                   {"200": ok(ref("SandboxInfo"), "Suspended."), "202": ok(ref("SandboxInfo"), "Still suspending."),
                    **errors(400, 404, 409)}, params=[WAIT_MS]),
    },
    "/sandboxes/{id}/resume": {
        "parameters": [SANDBOX_ID],
        "post": op("resumeSandbox", "Resume a suspended sandbox (idempotent for a running one).",
                   {"200": ok(ref("SandboxInfo"), "Running."), "202": ok(ref("SandboxInfo"), "Still resuming."),
                    **errors(400, 404, 409)}, params=[WAIT_MS]),
    },
    "/sandboxes/{id}/copy": {
        "parameters": [SANDBOX_ID],
        "post": op("copySandbox", "Live fork: one memory snapshot of the sandbox, booted `times` times.",
                   {"200": ok(ref("CopySandboxResponse")), **errors(400, 404, 409, 503)},
                   params=[query("times", {"type": "integer", "minimum": 1, "maximum": 32, "default": 1})]),
    },
    "/sandbox-pools": {
        "get": op("listPools", "The namespace's warm pools.", {"200": ok(ref("ListPoolsResponse")), **errors(400)},
                  tags=("pools",)),
        "post": op("createPool", "Create a warm pool: its sandboxes are booted in the background.",
                   {"200": ok(ref("CreatePoolResponse")), **errors(400)}, body=ref("PoolRequest"), tags=("pools",)),
    },
    "/sandbox-pools/{id}": {
        "parameters": [path_param("id", "pool id")],
        "get": op("getPool", "One pool, with its sandboxes.", {"200": ok(ref("PoolInfo")), **errors(400, 404)},
                  tags=("pools",)),
        "put": op("updatePool", "Change a pool: warm sandboxes of an old template are recycled.",
                  {"200": ok(ref("PoolInfo")), **errors(400, 404)}, body=ref("PoolRequest"), tags=("pools",)),
        "delete": op("deletePool", "Delete a pool and its warm sandboxes; a 409 while claimed ones live.",
                     {"200": ok({"type": "object"}), **errors(400, 404, 409)}, tags=("pools",)),
    },
    "/sandbox-pools/{id}/sandboxes": {
        "parameters": [path_param("id", "pool id")],
        "post": op("claimSandbox", "Claim a sandbox of the pool: a warm one at once, else one started now, or at "
                   "the pool's cap one `pending` (`pool_at_capacity`) until a sandbox of the pool ends.",
                   {"200": ok(ref("CreateSandboxResponse")), **errors(400, 404, 409, 503)},
                   body=ref("ClaimRequest"), tags=("pools",)),
    },
    "/archived-sandboxes": {
        "get": op(
            "listArchivedSandboxes", "Sandboxes that ended, newest first, one page at a time.",
            {"200": ok(ref("ListArchivedSandboxesResponse")), **errors(400)},
            params=[
                query("limit", U64, "page size (default 100, at most 1000)"),
                query("cursor", STR, "a prev_cursor or next_cursor of an earlier page"),
                query("direction", {"type": "string", "enum": ["forward", "backward"]},
                      "forward (default): the page starts at the cursor; backward: it ends there"),
            ],
        ),
    },
    "/archived-sandboxes/{id}": {
        "parameters": [SANDBOX_ID],
        "get": op("getArchivedSandbox", "One sandbox that ended.",
                  {"200": ok(ref("ArchivedSandboxInfo")), **errors(400, 404)}),
    },
    "/snapshots": {
        "get": op("listSnapshots", "Snapshots of a namespace.", {"200": ok(ref("ListSnapshotsResponse")), **errors(400)},
                  tags=("snapshots",)),
    },
    "/images": {
        "get": op("listImages", "Images sandboxes can be created from (the same in every namespace).",
                  {"200": ok(ref("ListImagesResponse")), **errors(400)}, tags=("images",)),
    },
    "/images/import": {
        "post": op(
            "importImage",
            "Pull an image from an OCI registry. Errors found before the download (bad reference, unknown image, refused "
            "login, unreachable registry) are JSON errors; then the answer streams the import's progress as NDJSON.",
            {"200": {"description": "The import's progress, one ImportEvent per line.",
                     "content": {"application/x-ndjson": {"schema": ref("ImportEvent")}}},
             **errors(400, 404, 409, 502)},
            body=ref("ImportImageRequest"), body_required=True, tags=("images",)),
    },
    "/images/import-archive": {
        "post": {
            "operationId": "importImageArchive",
            "summary": "Import an uploaded archive: what `docker save` (docker-archive) or `skopeo copy … oci-archive:` writes.",
            "tags": ["images"],
            "parameters": [
                {**query("name", {**STR, "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"}, "the image's name"), "required": True},
                query("format", {"type": "string", "enum": ["docker-archive", "oci-archive"]}, "default: docker-archive"),
            ],
            "requestBody": {"required": True, "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "The import's progress, one ImportEvent per line.",
                                  "content": {"application/x-ndjson": {"schema": ref("ImportEvent")}}},
                          **errors(400, 409, 413)},
        },
    },
    "/images/build": {
        "post": {
            "operationId": "buildImage",
            "summary": "Build an image from a Dockerfile: each RUN in a builder sandbox, each step's layer cached. "
                       "A Dockerfile error (or an unknown base image) is a 400 naming its line; then the answer streams "
                       "the build's progress as NDJSON.",
            "tags": ["images"],
            "parameters": [
                {**query("name", {**STR, "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"}, "the image's name"), "required": True},
                query("dockerfile", STR, "the Dockerfile's path in the context (default: .sbx-dockerfile, where `sbx image build` puts it)"),
                query("build_arg", {**STR, "pattern": "^[^=]+=.*$"}, "KEY=VALUE for an ARG (repeatable)"),
                query("no_cache", BOOL, "run every step again"),
                query("insecure", BOOL, "base images from a plain-HTTP registry"),
            ],
            "requestBody": {"required": True, "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "The build's progress, one BuildEvent per line.",
                                  "content": {"application/x-ndjson": {"schema": ref("BuildEvent")}}},
                          **errors(400, 409)},
        },
    },
    "/images/{name}": {
        "parameters": [path_param("name", "image name")],
        "get": op("getImage", "One image.", {"200": ok(ref("ImageInfo")), **errors(400, 404)}, tags=("images",)),
        "delete": op("deleteImage", "Remove an image: off the list at once, its files kept while sandboxes or snapshots use it.",
                     {"200": ok(ref("DeleteImageResponse")), **errors(400, 404)}, tags=("images",)),
    },
    "/secrets": {
        "get": op("listSecrets", "Secrets of a namespace: names and dates, never values.",
                  {"200": ok(ref("ListSecretsResponse")), **errors(400)}, tags=("secrets",)),
    },
    "/secrets/{name}": {
        "parameters": [path_param("name", "an environment variable name: [A-Za-z_][A-Za-z0-9_]*, at most 128, not SBX_*")],
        "put": {
            "operationId": "setSecret",
            "summary": "Set a secret (new or replaced), stored encrypted. Sandboxes created later get the new value; "
                       "running ones keep theirs.",
            "tags": ["secrets"],
            "requestBody": {"required": True, **json_body(ref("SetSecretRequest"))},
            "responses": {"200": ok(ref("SecretInfo")), **errors(400, 413)},
        },
        "delete": op("deleteSecret", "Delete a secret (running sandboxes keep the value they have).",
                     {"200": ok(ref("DeleteSecretResponse")), **errors(400, 404)}, tags=("secrets",)),
    },
    "/snapshots/{sid}": {
        "parameters": [SNAPSHOT_ID],
        "get": op("getSnapshot", "One snapshot.", {"200": ok(ref("SnapshotInfo")), **errors(400, 404)}, tags=("snapshots",)),
        "delete": op("deleteSnapshot", "Delete a snapshot (sandboxes restored from it keep running).",
                     {"200": ok(ref("DeleteSnapshotResponse")), **errors(400, 404, 409)}, tags=("snapshots",)),
    },
}


def namespaced(item):
    """The same path item under /v1/namespaces/{ns}, with distinct operation ids."""
    out = {"parameters": [NS] + item.get("parameters", [])}
    for method, o in item.items():
        if method != "parameters":
            out[method] = {**o, "operationId": o["operationId"] + "InNamespace"}
    return out


paths = {
    "/healthz": {
        "get": op("health", "Liveness of the control plane, and whether sandboxes can start yet (on a host's first start the default image is built while the API answers).", {"200": ok(ref("ServerHealth")), **errors()}, tags=("meta",)),
    },
    "/openapi.json": {
        "get": op("openapi", "This document.", {"200": ok({"type": "object"}), **errors()}, tags=("meta",)),
    },
    "/metrics": {
        "get": op("metrics", "Prometheus metrics in the OpenMetrics text format: sandboxes by status and node, "
                  "create/restore/resume latency and snapshot pause histograms, blob-store bytes, the local "
                  "node's capacity and use. Behind the API key like every route.",
                  {"200": {"description": "OK", "content": {
                      "application/openmetrics-text": {"schema": STR}}},
                   **errors()}, tags=("meta",)),
    },
    "/v1/nodes": {
        "get": op("listNodes", "The hosts that run sandboxes.", {"200": ok(ref("ListNodesResponse")), **errors()}, tags=("nodes",)),
    },
    "/v1/nodes/{id}": {
        "parameters": [path_param("id", "node id")],
        "get": op("getNode", "One node.", {"200": ok(ref("NodeInfo")), **errors(404)}, tags=("nodes",)),
    },
    "/v1/nodes/{id}/drain": {
        "parameters": [path_param("id", "node id")],
        "post": op("drainNode", "Stop placing sandboxes on a node; what runs there keeps running.",
                   {"200": ok(ref("NodeInfo")), **errors(404)}, tags=("nodes",)),
    },
    "/v1/nodes/{id}/wake": {
        "parameters": [path_param("id", "node id")],
        "post": op("wakeNode", "Asks the node to look now for work recorded for it (sandboxes placed on it to launch, "
                   "ended ones to remove); sent by other servers to the node's own server, which alone takes it "
                   "(409 `not_this_node` elsewhere). A node also looks every half second.",
                   {"204": {"description": "Done."}, **errors(409)}, tags=("nodes",)),
    },
    "/v1/nodes/{id}/undrain": {
        "parameters": [path_param("id", "node id")],
        "post": op("undrainNode", "Place sandboxes on a drained node again.",
                   {"200": ok(ref("NodeInfo")), **errors(404)}, tags=("nodes",)),
    },
}
paths.update(ns_paths)
paths.update({NS_PREFIX + p: namespaced(item) for p, item in ns_paths.items()})

# The daemon: every route under /api/v1 on the sandbox proxy.
PROXY_SERVER = [{"url": "http://localhost:9443", "description": "sandbox proxy (routes to the sandbox's daemon on port 9501)"}]
SANDBOX_HEADER = {
    "name": "X-Tensorlake-Sandbox-Id", "in": "header", "required": True, "schema": STR,
    "description": "the sandbox (id or name); alternatively send `Host: {id}.local`",
}
PROC = path_param("p", "pid (digits) or a percent-encoded process name")
FILE_PATH = {"name": "path", "in": "query", "required": True, "schema": STR, "description": "absolute path in the sandbox"}


def derr(*codes):
    """Daemon errors, plus the proxy's own (no such sandbox, not running, auth)."""
    out = {str(c): err(d) for c, d in [
        (400, "Invalid input."), (404, "No such process, file or session (or no such sandbox, from the proxy)."),
        (409, "Not possible in the current state (or the sandbox is not running, from the proxy)."),
    ] if c in codes or c in (404, 409)}
    out["401"] = {"$ref": "#/components/responses/Unauthorized"}
    out["403"] = {"$ref": "#/components/responses/Forbidden"}
    out["502"] = err("The proxy could not reach the sandbox's daemon.")
    out["503"] = {"$ref": "#/components/responses/Unavailable"}
    return out


def dop(op_id, summary, resp, params=(), body=None, content=None):
    o = {"operationId": op_id, "summary": summary, "tags": ["daemon"], "parameters": [SANDBOX_HEADER, *params]}
    if body is not None:
        o["requestBody"] = {"required": True, **json_body(body)}
    if content is not None:
        o["requestBody"] = {"required": True, "content": content}
    o["responses"] = resp
    return o


SSE = {"text/event-stream": {"schema": {"type": "string",
       "description": "events `data: <json>`, each a RunEvent / OutputEvent"}}}
NO_CONTENT = {"204": {"description": "Done."}}
SWITCH = {"101": {"description": "WebSocket upgrade."}}

daemon = {
    "/health": {"get": dop("daemonHealth", "Daemon liveness.", {"200": ok(ref("Health")), **derr()})},
    "/info": {"get": dop("daemonInfo", "Daemon version and process counts.", {"200": ok(ref("DaemonInfo")), **derr()})},
    "/logs": {"get": dop(
        "daemonJournal",
        "The journal the host collects the sandbox's logs from: every process's output lines, starts and ends, "
        "numbered; those from `from` on that the daemon still holds (the newest 20000).",
        {"200": ok(ref("JournalBatch")), **derr(400)},
        params=[query("from", U64, "the first entry wanted"),
                query("max", U64, "at most this many entries (default 5000)"),
                query("wait_ms", U64, "when there is none yet, wait this long (at most 60000) for one"),
                query("linger_ms", U64, "after waiting, gather this long more (at most 1000)")])},
    "/sync": {"post": dop("syncFiles", "Flush the sandbox's file caches to its disk (sync(2)); sbx does this "
                          "before every snapshot.", {**NO_CONTENT, **derr()})},
    "/memory-limit": {"put": dop(
        "setMemoryLimit", "The host's word that the sandbox was resized: the agent's memory watcher (which kills "
        "the largest process group past the limit) keeps to this many MB from now on. The host's cgroup limit "
        "stays the bound; 404 when the agent runs no watcher.",
        {**NO_CONTENT, **derr(400, 404)},
        params=[{**query("mb", {"type": "integer", "minimum": 1}, "the new limit in MB"), "required": True}])},
    "/processes/run": {"post": dop(
        "runProcess", "Run to completion, streamed as SSE: StartedEvent, OutputEvent per line, one ExitEvent.",
        {"200": {"description": "event stream", "content": SSE}, **derr(400)}, body=ref("RunRequest"))},
    "/processes": {
        "get": dop("listProcesses", "All processes.", {"200": ok(ref("ProcessList")), **derr()}),
        "post": dop("startProcess", "Start a background process.", {"200": ok(ref("ProcessInfo")), **derr(400)},
                    body=ref("StartProcessRequest")),
    },
    "/processes/{p}": {
        "parameters": [PROC],
        "get": dop("getProcess", "One process.", {"200": ok(ref("ProcessInfo")), **derr()}),
        "delete": dop("deleteProcess", "Kill (if running) and forget a process.", {"200": ok(ref("ProcessInfo")), **derr()}),
    },
    "/processes/{p}/restart": {"parameters": [PROC], "post": dop(
        "restartProcess", "Restart a process.", {"200": ok(ref("ProcessInfo")), **derr()})},
    "/processes/{p}/signal": {"parameters": [PROC], "post": dop(
        "signalProcess", "Signal a running process's group.", {"200": ok(ref("Success")), **derr(400)},
        body=ref("SignalRequest"))},
    "/processes/{p}/stdin": {"parameters": [PROC], "post": dop(
        "writeStdin", "Write raw bytes to a process's stdin (stdin_mode pipe).", {"200": ok(ref("Success")), **derr(400)},
        content={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})},
    "/processes/{p}/stdin/close": {"parameters": [PROC], "post": dop(
        "closeStdin", "Close a process's stdin.", {"200": ok(ref("Success")), **derr()})},
    "/processes/{p}/{stream}": {
        "parameters": [PROC, {"name": "stream", "in": "path", "required": True,
                              "schema": {"type": "string", "enum": ["stdout", "stderr", "output"]}}],
        "get": dop("getOutput", "Captured output so far (output = both streams).", {"200": ok(ref("OutputResponse")), **derr()}),
    },
    "/processes/{p}/{stream}/follow": {
        "parameters": [PROC, {"name": "stream", "in": "path", "required": True,
                              "schema": {"type": "string", "enum": ["stdout", "stderr", "output"]}}],
        "get": dop("followOutput", "Output as SSE of OutputEvent, from the start, closed at EOF.",
                   {"200": {"description": "event stream", "content": SSE}, **derr()}),
    },
    "/files": {
        "parameters": [FILE_PATH],
        "get": dop("readFile", "Download a file.", {"200": {"description": "the file", "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}, **derr(400)}),
        "put": dop("writeFile", "Upload a file (streamed; parent directories are created; atomic rename).",
                   {**NO_CONTENT, **derr(400)},
                   content={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}),
        "delete": dop("deleteFile", "Delete a file, or a directory recursively.", {**NO_CONTENT, **derr(400)}),
    },
    "/files/list": {"parameters": [FILE_PATH], "get": dop(
        "listFiles", "List a directory.", {"200": ok(ref("DirListing")), **derr(400)})},
    "/pty": {
        "get": dop("listPtys", "PTY sessions.", {"200": ok(ref("PtyList")), **derr()}),
        "post": dop("createPty", "Start a process on a PTY; attach with the WebSocket.",
                    {"200": ok(ref("CreatePtyResponse")), **derr(400)}, body=ref("CreatePtyRequest")),
    },
    "/pty/{sid}": {"parameters": [path_param("sid", "PTY session id")], "delete": dop(
        "deletePty", "Kill a PTY session.", {**NO_CONTENT, **derr()})},
    "/pty/{sid}/ws": {"parameters": [path_param("sid", "PTY session id")], "get": dop(
        "ptyWebSocket",
        "WebSocket of a PTY session. Binary frames; client: 0x02 ready (first), 0x00+input, 0x01+cols u16 BE+rows u16 BE; "
        "server: 0x00+output, 0x03+exit code i32 BE, then close 1000 `exit:N`.",
        {**SWITCH, **derr(400)},
        params=[query("token", STR, "the session token (or header X-PTY-Token)"),
                {"name": "X-PTY-Token", "in": "header", "required": False, "schema": STR}])},
    "/tunnels/tcp": {"get": dop(
        "tcpTunnel", "WebSocket carrying one TCP connection to 127.0.0.1:port in the sandbox (binary frames; a text frame is an error).",
        {**SWITCH, **derr(400)},
        params=[{"name": "port", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1, "maximum": 65535}}])},
}
for p, item in daemon.items():
    paths["/api/v1" + p] = {"servers": PROXY_SERVER, **item}

spec = {
    "openapi": "3.1.0",
    "info": {
        "title": "sbx",
        "version": "0.1.0",
        "description": (
            "Self-hosted sandboxes behind the Tensorlake sandbox HTTP contract. "
            "Control-plane routes exist flat (namespace `default`) and under `/v1/namespaces/{ns}`; "
            "`{id}` is a sandbox id or its name. Every non-2xx answer is a JSON `Error`. "
            "Daemon routes (tag `daemon`) are served by each sandbox and reached through the sandbox proxy "
            "with the `X-Tensorlake-Sandbox-Id` header. Generated by crates/server/gen-openapi.py."
        ),
    },
    "servers": [{"url": "http://localhost:8900", "description": "control plane"}],
    "security": [{"bearerAuth": []}],
    "tags": [
        {"name": "sandboxes", "description": "sandbox lifecycle"},
        {"name": "snapshots", "description": "snapshots, suspend/resume, copies"},
        {"name": "images", "description": "images sandboxes boot: imported from registries and archives"},
        {"name": "secrets", "description": "values given to sandboxes as environment variables, never shown again"},
        {"name": "pools", "description": "warm pools: booted sandboxes handed out by a claim"},
        {"name": "meta", "description": "health and this document"},
        {"name": "daemon", "description": "the in-sandbox daemon, through the sandbox proxy"},
    ],
    "paths": paths,
    "components": {
        "schemas": schemas,
        "responses": responses,
        "securitySchemes": {
            "bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <key>` when the server has API keys (--api-key / SBX_API_KEY); "
                               "a server without keys needs none and answers only loopback peers. Applies to every route, "
                               "/healthz and /openapi.json included, and to the proxy.",
            },
        },
    },
}

OUT.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")
print(f"wrote {OUT}")
