"""Typed results of the API: plain dataclasses parsed from the server's JSON.

Every model keeps the JSON it was parsed from in ``raw`` so that fields the
SDK does not know yet stay reachable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional, Union

__all__ = [
    "SandboxStatus",
    "SnapshotStatus",
    "SnapshotType",
    "CheckpointType",
    "ProcessStatus",
    "Resources",
    "NetworkPolicy",
    "SandboxInfo",
    "SnapshotInfo",
    "PoolInfo",
    "PoolContainer",
    "CopyResult",
    "ImageInfo",
    "LogEntry",
    "LogPage",
    "LogProcess",
    "CommandResult",
    "OutputLine",
    "ProcessInfo",
    "FileEntry",
    "PtySessionInfo",
]


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return self.value


class SandboxStatus(_StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SNAPSHOTTING = "snapshotting"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"
    TIMEOUT = "timeout"
    FAILED = "failed"


class SnapshotStatus(_StrEnum):
    IN_PROGRESS = "in_progress"
    LOCAL_READY = "local_ready"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETING = "deleting"
    REPLICATING = "replicating"


class SnapshotType(_StrEnum):
    """``FILESYSTEM``: the writable layer; a restore is a cold boot.
    ``MEMORY``: filesystem, memory and processes; a restore continues where it was."""

    FILESYSTEM = "filesystem"
    MEMORY = "memory"


#: A checkpoint is a snapshot taken to come back to; same two kinds.
CheckpointType = SnapshotType


class ProcessStatus(_StrEnum):
    RUNNING = "running"
    EXITED = "exited"
    SIGNALED = "signaled"
    OOM_KILLED = "oom_killed"


def _enum(cls: Any, value: Any) -> Any:
    """The enum member for ``value``, or the raw value if this SDK does not know it."""
    try:
        return cls(value)
    except ValueError:
        return value


def parse_time(value: Any) -> Optional[datetime]:
    """Parses RFC 3339 (with ``Z`` and nanoseconds, which 3.10's
    ``fromisoformat`` rejects) or epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    date, sep, rest = text.partition("T")
    if sep and "." in rest:
        clock, frac = rest.split(".", 1)
        digits = ""
        while frac and frac[0].isdigit():
            digits, frac = digits + frac[0], frac[1:]
        rest = f"{clock}.{digits[:6].ljust(6, '0')}{frac}"
    try:
        return datetime.fromisoformat(f"{date}{sep}{rest}")
    except ValueError:
        return None


@dataclass
class Resources:
    cpus: float
    memory_mb: int
    disk_mb: Optional[int] = None

    @classmethod
    def from_json(cls, d: Optional[dict]) -> Optional["Resources"]:
        if not d:
            return None
        return cls(cpus=float(d.get("cpus", 0)), memory_mb=int(d.get("memory_mb", 0)), disk_mb=d.get("disk_mb"))


@dataclass
class NetworkPolicy:
    allow_internet_access: bool = True
    allow_out: list[str] = field(default_factory=list)
    deny_out: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: Optional[dict]) -> Optional["NetworkPolicy"]:
        if not d:
            return None
        return cls(
            allow_internet_access=bool(d.get("allow_internet_access", True)),
            allow_out=list(d.get("allow_out") or []),
            deny_out=list(d.get("deny_out") or []),
        )


@dataclass
class SandboxInfo:
    """A sandbox as the control plane reports it (create answers fill fewer fields)."""

    sandbox_id: str
    status: Union[SandboxStatus, str]
    name: Optional[str] = None
    namespace: Optional[str] = None
    image: Optional[str] = None
    resources: Optional[Resources] = None
    sandbox_url: Optional[str] = None
    timeout_secs: Optional[int] = None
    entrypoint: Optional[list[str]] = None
    network: Optional[NetworkPolicy] = None
    pending_reason: Optional[str] = None
    termination_reason: Optional[str] = None
    #: Why the sandbox failed, when it did.
    error: Optional[str] = None
    created_at: Optional[datetime] = None
    terminated_at: Optional[datetime] = None
    auto_resume: Optional[bool] = None
    allow_unauthenticated_access: Optional[bool] = None
    exposed_ports: list[int] = field(default_factory=list)
    #: The snapshot this sandbox was restored from.
    snapshot_id: Optional[str] = None
    #: The warm pool this sandbox was claimed from.
    pool_id: Optional[str] = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> "SandboxInfo":
        details = d.get("error_details") or {}
        return cls(
            sandbox_id=d.get("sandbox_id") or d.get("id") or "",
            status=_enum(SandboxStatus, d.get("status")),
            name=d.get("name"),
            namespace=d.get("namespace"),
            image=d.get("image"),
            resources=Resources.from_json(d.get("resources")),
            sandbox_url=d.get("sandbox_url"),
            timeout_secs=d.get("timeout_secs"),
            entrypoint=d.get("entrypoint"),
            network=NetworkPolicy.from_json(d.get("network_policy") or d.get("network")),
            pending_reason=d.get("pending_reason"),
            termination_reason=d.get("termination_reason"),
            error=details.get("message") or d.get("reason"),
            created_at=parse_time(d.get("created_at")),
            terminated_at=parse_time(d.get("terminated_at")),
            auto_resume=d.get("auto_resume"),
            allow_unauthenticated_access=d.get("allow_unauthenticated_access"),
            exposed_ports=list(d.get("exposed_ports") or []),
            snapshot_id=d.get("snapshot_id"),
            pool_id=d.get("pool_id"),
            raw=d,
        )


@dataclass
class SnapshotInfo:
    snapshot_id: str
    status: Union[SnapshotStatus, str]
    sandbox_id: Optional[str] = None
    snapshot_type: Union[SnapshotType, str, None] = None
    namespace: Optional[str] = None
    base_image: Optional[str] = None
    #: Why the snapshot failed, when it did.
    error: Optional[str] = None
    #: Bytes captured, and bytes newly stored after deduplication.
    size_bytes: Optional[int] = None
    stored_bytes: Optional[int] = None
    #: How long a memory snapshot paused the source sandbox.
    pause_ms: Optional[int] = None
    created_at: Optional[datetime] = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def is_ready(self) -> bool:
        """True once the snapshot can be restored (``local_ready`` or ``completed``)."""
        return self.status in (SnapshotStatus.LOCAL_READY, SnapshotStatus.COMPLETED)

    @classmethod
    def from_json(cls, d: dict) -> "SnapshotInfo":
        kind = d.get("snapshot_type")
        return cls(
            snapshot_id=d.get("snapshot_id") or d.get("id") or "",
            status=_enum(SnapshotStatus, d.get("status")),
            sandbox_id=d.get("sandbox_id"),
            snapshot_type=_enum(SnapshotType, kind) if kind else None,
            namespace=d.get("namespace"),
            base_image=d.get("base_image"),
            error=d.get("error"),
            size_bytes=d.get("size_bytes"),
            stored_bytes=d.get("stored_bytes"),
            pause_ms=d.get("pause_ms"),
            created_at=parse_time(d.get("created_at")),
            raw=d,
        )


@dataclass
class CopyResult:
    """Answer to ``copy``: the running copies and the memory snapshot they came from."""

    source_sandbox_id: str
    sandboxes: list[SandboxInfo]
    snapshot_id: Optional[str] = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> "CopyResult":
        return cls(
            source_sandbox_id=d.get("source_sandbox_id", ""),
            sandboxes=[SandboxInfo.from_json(s) for s in d.get("sandboxes") or []],
            snapshot_id=d.get("snapshot_id"),
            raw=d,
        )


@dataclass
class ImageInfo:
    """An image sandboxes can be created from (``create(image=name)``). Images
    belong to the host: every namespace sees the same ones."""

    name: str
    #: Fixed at import: sandboxes and snapshots keep their image when a later import takes the name.
    id: str
    #: A registry reference, ``docker-archive``, ``oci-archive``, or ``debootstrap`` (built in).
    source: str
    digest: Optional[str] = None
    created_at: Optional[datetime] = None
    size_bytes: Optional[int] = None
    layers: Optional[int] = None
    #: ``KEY=value`` pairs every process of its sandboxes gets.
    env: list[str] = field(default_factory=list)
    #: Where and as whom commands run unless they say otherwise.
    working_dir: Optional[str] = None
    user: Optional[str] = None
    #: The image's ENTRYPOINT + CMD: started in a sandbox created without an entrypoint.
    entrypoint: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> "ImageInfo":
        return cls(
            name=d.get("name", ""),
            id=d.get("id", ""),
            source=d.get("source", ""),
            digest=d.get("digest"),
            created_at=parse_time(d.get("created_at")),
            size_bytes=d.get("size_bytes"),
            layers=d.get("layers"),
            env=list(d.get("env") or []),
            working_dir=d.get("working_dir"),
            user=d.get("user"),
            entrypoint=list(d.get("entrypoint") or []),
            raw=d,
        )


@dataclass
class PoolContainer:
    """One sandbox of a warm pool."""

    #: The sandbox's id.
    id: str
    #: ``Idle`` (warm: booted, unclaimed) or ``Running`` (claimed).
    state: str
    #: Set once claimed.
    sandbox_id: Optional[str] = None
    #: The node it runs on.
    executor_id: Optional[str] = None

    @classmethod
    def from_json(cls, d: dict) -> "PoolContainer":
        return cls(
            id=d.get("id", ""),
            state=d.get("state", ""),
            sandbox_id=d.get("sandbox_id"),
            executor_id=d.get("executor_id"),
        )


@dataclass
class PoolInfo:
    """A warm pool: a sandbox template with ``warm_containers`` sandboxes of
    it kept booted, handed out by ``claim``; at most ``max_containers`` of
    the pool at once (``None``: no cap)."""

    pool_id: str
    namespace: Optional[str] = None
    image: Optional[str] = None
    resources: Optional[Resources] = None
    #: Counted from the claim; 0: none.
    timeout_secs: int = 0
    entrypoint: Optional[list[str]] = None
    max_containers: Optional[int] = None
    warm_containers: int = 0
    network: Optional[NetworkPolicy] = None
    #: Only from ``get_pool``: its sandboxes, warm and claimed.
    containers: Optional[list[PoolContainer]] = None
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def idle(self) -> list[PoolContainer]:
        """The warm (unclaimed) sandboxes, as ``get_pool`` lists them."""
        return [x for x in self.containers or [] if x.state == "Idle"]

    @classmethod
    def from_json(cls, d: dict) -> "PoolInfo":
        containers = d.get("containers")
        return cls(
            pool_id=d.get("id") or d.get("pool_id") or "",
            namespace=d.get("namespace"),
            image=d.get("image"),
            resources=Resources.from_json(d.get("resources")),
            timeout_secs=int(d.get("timeout_secs") or 0),
            entrypoint=d.get("entrypoint"),
            max_containers=d.get("max_containers"),
            warm_containers=int(d.get("warm_containers") or 0),
            network=NetworkPolicy.from_json(d.get("network_policy") or d.get("network")),
            containers=None if containers is None else [PoolContainer.from_json(x) for x in containers],
            created_at=parse_time(d.get("created_at")),
            updated_at=parse_time(d.get("updated_at")),
            raw=d,
        )


@dataclass
class SecretInfo:
    """A secret of the namespace: its name and dates. Its value is never
    shown again; sandboxes created with ``secret_names=[name]`` get it as an
    environment variable."""

    name: str
    created_at: Optional[datetime] = None
    updated_at: Optional[datetime] = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> "SecretInfo":
        return cls(
            name=d.get("name", ""),
            created_at=parse_time(d.get("created_at")),
            updated_at=parse_time(d.get("updated_at")),
            raw=d,
        )


@dataclass
class LogEntry:
    """One record of a sandbox's persisted logs: a line a process printed
    (``process_id`` and ``stream`` set) or a lifecycle event (``event`` set:
    ``created``, ``running``, ``suspended``, ``resumed``, ``snapshot``,
    ``terminated``, ``failed``, ``process_started``, ``process_exited``…)."""

    timestamp_ns: int
    body: str
    level: int
    sandbox_id: str = ""
    uuid: str = ""
    attributes: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ns / 1e9, tz=timezone.utc)

    @property
    def process_id(self) -> Optional[str]:
        return self.attributes.get("processId")

    @property
    def stream(self) -> Optional[str]:
        return self.attributes.get("stream")

    @property
    def event(self) -> Optional[str]:
        return self.attributes.get("event")

    @classmethod
    def from_json(cls, d: dict) -> "LogEntry":
        import json

        try:
            attrs = json.loads(d.get("logAttributes") or "{}")
        except ValueError:
            attrs = {}
        return cls(
            timestamp_ns=int(d.get("timestamp", 0)),
            body=d.get("body", ""),
            level=int(d.get("level") or 0),
            sandbox_id=d.get("sandboxId", ""),
            uuid=d.get("uuid", ""),
            attributes=attrs if isinstance(attrs, dict) else {},
            raw=d,
        )


@dataclass
class LogPage:
    """One page of logs. ``next_token`` is set when more matching records
    follow; ``cursor`` is where newer records will start (pass it as
    ``next_token`` later to read only what came since)."""

    entries: list
    next_token: Optional[str] = None
    cursor: Optional[str] = None

    @classmethod
    def from_json(cls, d: dict) -> "LogPage":
        return cls(
            entries=[LogEntry.from_json(e) for e in d.get("logs", [])],
            next_token=d.get("nextToken"),
            cursor=d.get("cursor"),
        )


@dataclass
class LogProcess:
    """A process a sandbox's logs have records of."""

    process_id: str
    command: str = ""
    managed_id: str = ""
    managed_name: str = ""
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    log_count: int = 0
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict) -> "LogProcess":
        return cls(
            process_id=str(d.get("processId", "")),
            command=d.get("processCommand", ""),
            managed_id=d.get("processManagedId", ""),
            managed_name=d.get("processManagedName", ""),
            first_seen_ns=int(d.get("firstSeen", 0)),
            last_seen_ns=int(d.get("lastSeen", 0)),
            log_count=int(d.get("logCount", 0)),
            raw=d,
        )


@dataclass
class CommandResult:
    """The outcome of ``commands.run``. Output is line-based: each line ends in ``\\n``."""

    stdout: str
    stderr: str
    #: None when the process was killed by a signal (see ``signal`` and ``reason``).
    exit_code: Optional[int]
    signal: Optional[int] = None
    #: ``exited``, ``signaled``, ``oom_killed`` or ``timed_out``.
    reason: str = "exited"
    oom_killed: bool = False
    pid: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def timed_out(self) -> bool:
        return self.reason == "timed_out"


@dataclass
class OutputLine:
    """One output line of a process (without its newline)."""

    line: str
    #: ``stdout`` or ``stderr`` (None when the server did not say).
    stream: Optional[str] = None
    timestamp: Optional[datetime] = None

    @classmethod
    def from_json(cls, d: dict) -> "OutputLine":
        return cls(line=d.get("line", ""), stream=d.get("stream"), timestamp=parse_time(d.get("timestamp")))


@dataclass
class ProcessInfo:
    pid: int
    status: Union[ProcessStatus, str]
    command: str = ""
    args: list[str] = field(default_factory=list)
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    oom_killed: bool = False
    stdin_writable: bool = False
    name: Optional[str] = None
    started_at: Optional[datetime] = None
    ended_at: Optional[datetime] = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def running(self) -> bool:
        return self.status == ProcessStatus.RUNNING

    @classmethod
    def from_json(cls, d: dict) -> "ProcessInfo":
        return cls(
            pid=int(d["pid"]),
            status=_enum(ProcessStatus, d.get("status")),
            command=d.get("command", ""),
            args=list(d.get("args") or []),
            exit_code=d.get("exit_code"),
            signal=d.get("signal"),
            oom_killed=bool(d.get("oom_killed", False)),
            stdin_writable=bool(d.get("stdin_writable", False)),
            name=d.get("name"),
            started_at=parse_time(d.get("started_at")),
            ended_at=parse_time(d.get("ended_at")),
            raw=d,
        )


@dataclass
class FileEntry:
    name: str
    is_dir: bool
    size: Optional[int] = None
    modified_at: Optional[datetime] = None

    @classmethod
    def from_json(cls, d: dict) -> "FileEntry":
        return cls(
            name=d["name"],
            is_dir=bool(d.get("is_dir", False)),
            size=d.get("size"),
            modified_at=parse_time(d.get("modified_at")),
        )


@dataclass
class PtySessionInfo:
    session_id: str
    pid: Optional[int] = None
    command: str = ""
    args: list[str] = field(default_factory=list)
    rows: Optional[int] = None
    cols: Optional[int] = None
    is_alive: bool = True
    exit_code: Optional[int] = None
    created_at: Optional[datetime] = None

    @classmethod
    def from_json(cls, d: dict) -> "PtySessionInfo":
        return cls(
            session_id=d["session_id"],
            pid=d.get("pid"),
            command=d.get("command", ""),
            args=list(d.get("args") or []),
            rows=d.get("rows"),
            cols=d.get("cols"),
            is_alive=bool(d.get("is_alive", True)),
            exit_code=d.get("exit_code"),
            created_at=parse_time(d.get("created_at")),
        )
