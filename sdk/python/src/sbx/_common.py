"""What the sync and async clients share: configuration, request bodies,
answer parsing and the server-sent-events decoder. No network I/O here."""

from __future__ import annotations

import io
import json
import os
import posixpath
import shlex
import tarfile
import tempfile
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Mapping, Optional, Union
from urllib.parse import quote, urlsplit

from . import __version__
from .errors import ImageBuildError, ImageImportError, SbxError
from .models import CommandResult, ImageInfo, OutputLine, SnapshotInfo, SnapshotStatus, SnapshotType

DEFAULT_API_URL = "http://localhost:8900"
SANDBOX_HEADER = "X-Tensorlake-Sandbox-Id"
#: Statuses from which a sandbox never comes back to running.
FINAL_SANDBOX_STATUSES = frozenset({"terminated", "failed", "timeout"})
#: GETs are retried on these answers and on connection errors.
RETRY_STATUSES = frozenset({502, 503, 504})
RETRIES = 3
#: Most a suspend/resume call may ask the server to wait (its limit).
MAX_WAIT_MS = 30_000


@dataclass(frozen=True)
class Config:
    api_url: str
    api_key: Optional[str]
    namespace: str
    #: Overrides the ``sandbox_url`` the server returns (``SBX_PROXY_URL``).
    proxy_url: Optional[str]

    @classmethod
    def resolve(
        cls,
        api_url: Optional[str],
        api_key: Optional[str],
        namespace: Optional[str],
        proxy_url: Optional[str],
    ) -> "Config":
        url = api_url or os.environ.get("SBX_API_URL") or DEFAULT_API_URL
        return cls(
            api_url=url.rstrip("/"),
            api_key=api_key if api_key is not None else os.environ.get("SBX_API_KEY") or None,
            namespace=namespace or os.environ.get("SBX_NAMESPACE") or "default",
            proxy_url=(proxy_url or os.environ.get("SBX_PROXY_URL") or "").rstrip("/") or None,
        )

    def headers(self) -> dict[str, str]:
        h = {"User-Agent": f"sbx-python/{__version__}"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def api(self, path: str) -> str:
        """A control-plane URL under this namespace."""
        return f"{self.api_url}/v1/namespaces/{seg(self.namespace)}{path}"

    def daemon_base(self, sandbox_url: Optional[str]) -> str:
        """Base URL of the daemon routes for a sandbox reached through the proxy."""
        base = self.proxy_url or sandbox_url
        if not base:
            # The server sends sandbox_url for every live sandbox; fall back to
            # the conventional proxy port on the API host.
            parts = urlsplit(self.api_url)
            base = f"{parts.scheme}://{parts.hostname}:9443"
        return base.rstrip("/") + "/api/v1"


def seg(value: Union[str, int]) -> str:
    """Percent-encodes one path segment."""
    return quote(str(value), safe="")


def create_body(
    *,
    image: Optional[str] = None,
    cpus: Optional[float] = None,
    memory_mb: Optional[int] = None,
    disk_mb: Optional[int] = None,
    timeout_secs: Optional[int] = None,
    name: Optional[str] = None,
    entrypoint: Optional[list[str]] = None,
    snapshot_id: Optional[str] = None,
    allow_internet_access: Optional[bool] = None,
    allow_out: Optional[list[str]] = None,
    deny_out: Optional[list[str]] = None,
    secret_names: Optional[list[str]] = None,
    auto_resume: Optional[bool] = None,
    allow_unauthenticated_access: Optional[bool] = None,
    exposed_ports: Optional[list[int]] = None,
    max_pending_secs: Optional[int] = None,
    wait: bool = True,
) -> dict[str, Any]:
    """The JSON of ``POST /sandboxes``; unset fields are left out (server defaults)."""
    body: dict[str, Any] = {}
    resources = {k: v for k, v in (("cpus", cpus), ("memory_mb", memory_mb), ("disk_mb", disk_mb)) if v is not None}
    if resources:
        body["resources"] = resources
    network = {
        k: v
        for k, v in (("allow_internet_access", allow_internet_access), ("allow_out", allow_out), ("deny_out", deny_out))
        if v is not None
    }
    if network:
        body["network"] = network
    for key, value in (
        ("image", image),
        ("timeout_secs", timeout_secs),
        ("name", name),
        ("entrypoint", entrypoint),
        ("snapshot_id", snapshot_id),
        ("secret_names", secret_names),
        ("auto_resume", auto_resume),
        ("allow_unauthenticated_access", allow_unauthenticated_access),
        ("exposed_ports", exposed_ports),
        ("max_pending_secs", max_pending_secs),
    ):
        if value is not None:
            body[key] = value
    if not wait:
        body["wait"] = False
    return body


def pool_body(
    *,
    image: Optional[str] = None,
    cpus: Optional[float] = None,
    memory_mb: Optional[int] = None,
    disk_mb: Optional[int] = None,
    timeout_secs: Optional[int] = None,
    entrypoint: Optional[list[str]] = None,
    warm_containers: Optional[int] = None,
    max_containers: Optional[int] = None,
    allow_internet_access: Optional[bool] = None,
    allow_out: Optional[list[str]] = None,
    deny_out: Optional[list[str]] = None,
) -> dict[str, Any]:
    """The JSON of ``POST /sandbox-pools``; unset fields are left out (server defaults)."""
    body = create_body(
        image=image,
        cpus=cpus,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        timeout_secs=timeout_secs,
        entrypoint=entrypoint,
        allow_internet_access=allow_internet_access,
        allow_out=allow_out,
        deny_out=deny_out,
    )
    for key, value in (("warm_containers", warm_containers), ("max_containers", max_containers)):
        if value is not None:
            body[key] = value
    return body


def pool_update_body(current: dict, **given: Any) -> dict[str, Any]:
    """The JSON of ``PUT /sandbox-pools/{id}``: the server replaces the
    whole template, so pool ``current`` (its JSON) with the ``given`` fields
    changed (``_UNSET`` = keep; ``None`` clears ``entrypoint`` and
    ``max_containers``, and resets the others to the server's default). The
    network policy is sent only when one of its fields is given (merged into
    the current one); the server keeps it otherwise."""
    given = {k: v for k, v in given.items() if v is not _UNSET}
    res = dict(current.get("resources") or {})
    for key in ("cpus", "memory_mb", "disk_mb"):
        if key in given:
            res[key] = given[key]
    body: dict[str, Any] = {"resources": {k: v for k, v in res.items() if v is not None}}
    for key in ("image", "timeout_secs", "entrypoint", "warm_containers", "max_containers"):
        value = given[key] if key in given else current.get(key)
        if value is not None:
            body[key] = value
    net_keys = ("allow_internet_access", "allow_out", "deny_out")
    if any(k in given for k in net_keys):
        network = dict(current.get("network_policy") or {})
        for key in net_keys:
            if key in given:
                if given[key] is None:
                    network.pop(key, None)
                else:
                    network[key] = given[key]
        body["network"] = network
    return body


def claim_headers(wait: bool, wait_timeout: float) -> dict[str, str]:
    """How long a claim may block: ``wait_timeout``, or about a second
    without ``wait`` (it then answers ``pending`` at the pool's cap)."""
    if wait:
        return create_timeout_headers(wait_timeout)
    return {"X-Tensorlake-Request-Timeout-Ms": "1000", "X-Tensorlake-Request-Timeout-Grace-Ms": "0"}


def network_body(network: Any) -> Any:
    """A PATCH's ``network``: a policy (an object with ``allow_internet_access``,
    ``allow_out``, ``deny_out``, or such a dict), None (the default policy), or
    ``_UNSET`` (keep it)."""
    if network is _UNSET or network is None or isinstance(network, dict):
        return network
    return {
        "allow_internet_access": network.allow_internet_access,
        "allow_out": list(network.allow_out),
        "deny_out": list(network.deny_out),
    }


def update_body(**fields: Any) -> dict[str, Any]:
    """PATCH body: only the given fields (``_UNSET`` = keep; None = clear the name)."""
    return {k: v for k, v in fields.items() if v is not _UNSET}


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


_UNSET: Any = _Unset()


def snapshot_type_value(kind: Union[SnapshotType, str, None]) -> Optional[str]:
    if kind is None:
        return None
    value = kind.value if isinstance(kind, SnapshotType) else str(kind)
    if value not in ("memory", "filesystem"):
        raise ValueError(f"snapshot type must be 'memory' or 'filesystem', not {kind!r}")
    return value


def check_snapshot(info: SnapshotInfo, require_completed: bool) -> bool:
    """True when a waited-for snapshot is ready; raises when it never will be."""
    from .errors import SnapshotError

    if info.status in (SnapshotStatus.FAILED, SnapshotStatus.DELETING):
        raise SnapshotError(
            f"snapshot {info.snapshot_id} is {info.status}" + (f": {info.error}" if info.error else ""),
            body=info.raw,
        )
    if require_completed:
        return info.status == SnapshotStatus.COMPLETED
    return info.is_ready


def import_body(
    reference: str, name: Optional[str], insecure: bool, username: Optional[str], password: Optional[str]
) -> dict[str, Any]:
    """The JSON of ``POST /images/import``; unset fields are left out."""
    body: dict[str, Any] = {"reference": reference}
    if insecure:
        body["insecure"] = True
    for key, value in (("name", name), ("username", username), ("password", password)):
        if value is not None:
            body[key] = value
    return body


ARCHIVE_FORMATS = ("docker-archive", "oci-archive")


def archive_params(path: Union[str, os.PathLike], name: Optional[str], format: Optional[str]) -> dict[str, str]:
    """The query of ``POST /images/import-archive``: ``name`` defaults to the
    file name up to its first dot, ``format`` to what the tar holds."""
    if format is not None and format not in ARCHIVE_FORMATS:
        raise ValueError(f"format must be 'docker-archive' or 'oci-archive', not {format!r}")
    return {
        "name": name if name is not None else os.path.basename(os.fspath(path)).split(".", 1)[0],
        "format": format or archive_format(path),
    }


def archive_format(path: Union[str, os.PathLike]) -> str:
    """``oci-archive`` when the tar has ``oci-layout`` at its top, else ``docker-archive``."""
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if posixpath.normpath(member.name) == "oci-layout":
                    return "oci-archive"
    except tarfile.TarError:
        pass  # not a tar: the server says so
    return "docker-archive"


class ImportReader:
    """Reads the NDJSON answer of an image import: progress events, then the image."""

    error: type[SbxError] = ImageImportError
    work = "import"

    def __init__(self, what: str) -> None:
        self.what = what
        self.image: Optional[ImageInfo] = None

    def feed(self, line: str) -> Optional[dict]:
        """Records one line; returns it when it is a progress event. Raises
        :attr:`error` on the ``error`` event."""
        line = line.strip()
        if not line:
            return None
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise SbxError(f"bad line from the {self.work} of {self.what}: {line[:200]!r}")
        kind = event.get("event")
        if kind == "done":
            self.image = ImageInfo.from_json(event.get("image") or {})
            return None
        if kind == "error":
            raise self.failed(event)
        return event

    def failed(self, event: dict) -> SbxError:
        return ImageImportError(f"importing {self.what} failed: {event.get('message')}", body=event)

    def result(self) -> ImageInfo:
        if self.image is None:
            raise self.error(f"the {self.work} of {self.what} ended without its result")
        return self.image


class BuildReader(ImportReader):
    """Reads the NDJSON answer of an image build; keeps the output of the
    step under way for the error."""

    error = ImageBuildError
    work = "build"

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.output: list[str] = []

    def feed(self, line: str) -> Optional[dict]:
        event = super().feed(line)
        if event is not None:
            if event.get("event") == "step":
                self.output = []
            elif event.get("event") == "output":
                self.output.append(str(event.get("line", "")))
        return event

    def failed(self, event: dict) -> SbxError:
        return ImageBuildError(
            f"building {self.what} failed: {event.get('message')}", output=self.output, body=event
        )


def build_params(
    name: str, build_args: Optional[Mapping[str, str]], no_cache: bool, insecure: bool
) -> list[tuple[str, str]]:
    """The query of ``POST /images/build``."""
    params = [("name", name)]
    if no_cache:
        params.append(("no_cache", "true"))
    if insecure:
        params.append(("insecure", "true"))
    params += [("build_arg", f"{k}={v}") for k, v in (build_args or {}).items()]
    return params


#: Where the server reads the Dockerfile that comes with the context.
DOCKERFILE_IN_CONTEXT = ".sbx-dockerfile"


def context_tar(
    context: Union[str, os.PathLike], dockerfile: Optional[Union[str, os.PathLike]]
) -> IO[bytes]:
    """What ``sbx image build`` sends: directory ``context`` as a tar, without
    what its ``.dockerignore`` excludes, and the Dockerfile (default
    ``CONTEXT/Dockerfile``; it may lie anywhere) added as
    ``.sbx-dockerfile``. In a temporary file, at its start."""
    root = os.fspath(context)
    with open(dockerfile if dockerfile is not None else os.path.join(root, "Dockerfile"), "rb") as f:
        text = f.read()
    try:
        with open(os.path.join(root, ".dockerignore"), encoding="utf-8", errors="replace") as f:
            ignore = DockerIgnore(f.read())
    except OSError:
        ignore = DockerIgnore("")
    out = tempfile.SpooledTemporaryFile(max_size=8 << 20)
    try:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
            todo = [""]
            while todo:
                rel = todo.pop()
                for entry in sorted(os.scandir(os.path.join(root, rel)), key=lambda e: e.name):
                    name = posixpath.join(rel, entry.name)
                    if ignore.excludes(name):
                        continue
                    tar.add(entry.path, arcname=name, recursive=False)
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(name)
            info = tarfile.TarInfo(DOCKERFILE_IN_CONTEXT)
            info.size, info.mode = len(text), 0o644
            tar.addfile(info, io.BytesIO(text))
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out


class DockerIgnore:
    """``.dockerignore`` rules as ``sbx image build`` applies them: a path is
    excluded when the last pattern that matches it (or a directory above it)
    is not a ``!`` exception. ``*``, ``?`` and ``[…]`` match within one path
    component, ``**`` any number of them."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, str]] = []
        for line in text.split("\n"):
            line = line.strip()
            if line and not line.startswith("#"):
                exclude = not line.startswith("!")
                pattern = _clean_pattern(line if exclude else line[1:])
                if pattern:
                    self.rules.append((exclude, pattern))

    def excludes(self, path: str) -> bool:
        parts = [p for p in path.split("/") if p]
        excluded = False
        for exclude, pattern in self.rules:
            if any(_path_matches(pattern, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
                excluded = exclude
        return excluded


def _clean_pattern(p: str) -> str:
    """A pattern without a leading ``/`` or ``./``, or a trailing ``/``."""
    while p.startswith("./"):
        p = p[2:]
    return p.lstrip("/").rstrip("/")


def _path_matches(pattern: str, path: str) -> bool:
    def split(s: str) -> list[str]:
        return [c for c in s.split("/") if c not in ("", ".")]

    def go(p: list[str], n: list[str]) -> bool:
        if not p:
            return not n
        if p[0] == "**":
            return any(go(p[1:], n[i:]) for i in range(len(n) + 1))
        return bool(n) and _component_matches(p[0], n[0]) and go(p[1:], n[1:])

    return go(split(pattern), split(path))


def _component_matches(p: str, n: str) -> bool:
    if not p:
        return not n
    c = p[0]
    if c == "*":
        return any(_component_matches(p[1:], n[i:]) for i in range(len(n) + 1))
    if c == "?":
        return bool(n) and _component_matches(p[1:], n[1:])
    if c == "[":
        end = p.find("]", 1)
        if end < 0:
            return n[:1] == "[" and _component_matches(p[1:], n[1:])
        if not n:
            return False
        chars = p[1:end]
        negate = chars[:1] in ("!", "^")
        if negate:
            chars = chars[1:]
        hit, i = False, 0
        while i < len(chars):
            if i + 2 < len(chars) and chars[i + 1] == "-":
                hit |= chars[i] <= n[0] <= chars[i + 2]
                i += 3
            else:
                hit |= chars[i] == n[0]
                i += 1
        return hit != negate and _component_matches(p[end + 1 :], n[1:])
    if c == "\\" and len(p) > 1:
        return n[:1] == p[1] and _component_matches(p[2:], n[1:])
    return n[:1] == c and _component_matches(p[1:], n[1:])


def command_argv(cmd: str, args: Optional[Iterable[str]]) -> tuple[str, list[str]]:
    """``run("ls -l /tmp")`` goes through ``/bin/sh -c``; ``run("ls", args=[...])`` executes ``ls`` directly."""
    if args is None:
        return "/bin/sh", ["-c", cmd]
    return cmd, [str(a) for a in args]


def process_body(
    cmd: str,
    args: Optional[Iterable[str]],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    user: Optional[Union[str, dict]] = None,
    **extra: Any,
) -> dict[str, Any]:
    command, argv = command_argv(cmd, args)
    body: dict[str, Any] = {"command": command, "args": argv}
    if env:
        body["env"] = {str(k): str(v) for k, v in env.items()}
    if cwd is not None:
        body["working_dir"] = cwd
    if user is not None:
        body["user"] = user
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def merge_env(default: Optional[Mapping[str, str]], env: Optional[Mapping[str, str]]) -> Optional[dict[str, str]]:
    if not default and not env:
        return None
    merged = dict(default or {})
    merged.update(env or {})
    return merged


def signal_number(sig: Union[int, str]) -> int:
    """15, "TERM", "SIGTERM" -> 15."""
    if isinstance(sig, int):
        return sig
    import signal as _signal

    name = sig.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(getattr(_signal, name))
    except AttributeError:
        raise ValueError(f"unknown signal {sig!r}") from None


class SSEDecoder:
    """Turns the lines of a ``text/event-stream`` into the JSON of each event."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Optional[dict]:
        line = line.rstrip("\r\n")
        if line == "":
            if not self._data:
                return None
            payload = "\n".join(self._data)
            self._data = []
            try:
                event = json.loads(payload)
            except ValueError:
                raise SbxError(f"bad event from the sandbox: {payload[:200]!r}") from None
            return event if isinstance(event, dict) else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> Optional[dict]:
        return self.feed("") if self._data else None


Callback = Callable[[str], Any]


class RunAccumulator:
    """Collects the events of ``processes/run`` into a :class:`CommandResult`."""

    def __init__(self) -> None:
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.pid: Optional[int] = None
        self.exit: Optional[dict] = None

    def add(self, event: dict) -> Optional[OutputLine]:
        """Records one event; returns it when it is an output line."""
        if "line" in event:
            out = OutputLine.from_json(event)
            (self.stderr if out.stream == "stderr" else self.stdout).append(out.line + "\n")
            return out
        if "reason" in event or "exit_code" in event:
            self.exit = event
        elif "pid" in event:
            self.pid = event["pid"]
        return None

    def result(self, what: str) -> CommandResult:
        if self.exit is None:
            raise SbxError(f"the output stream of `{what}` ended before the process exited")
        e = self.exit
        return CommandResult(
            stdout="".join(self.stdout),
            stderr="".join(self.stderr),
            exit_code=e.get("exit_code"),
            signal=e.get("signal"),
            reason=e.get("reason") or ("exited" if e.get("exit_code") is not None else "signaled"),
            oom_killed=bool(e.get("oom_killed", False)),
            pid=self.pid,
        )


def describe(cmd: str, args: Optional[Iterable[str]]) -> str:
    return cmd if args is None else shlex.join([cmd, *map(str, args)])


def create_timeout_headers(timeout: float) -> dict[str, str]:
    """Tells a blocking create how long we wait (the server answers pending before that)."""
    return {
        "X-Tensorlake-Request-Timeout-Ms": str(int(timeout * 1000)),
        "X-Tensorlake-Request-Timeout-Grace-Ms": "5000",
    }


CHUNK = 256 * 1024


def file_chunks(f: Any) -> Iterable[bytes]:
    """Reads a binary file object in chunks (httpx would split it on newlines)."""
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk.encode() if isinstance(chunk, str) else chunk


LOG_LEVELS = {"trace": 1, "debug": 2, "info": 3, "warn": 4, "warning": 4, "error": 5, "fatal": 6}


def log_params(
    levels: Optional[Iterable[Union[int, str]]],
    process_ids: Optional[Iterable[Union[int, str]]],
    body: Optional[str],
    head: Optional[int],
    tail: Optional[int],
    next_token: Optional[str],
) -> list[tuple[str, str]]:
    """The query of ``GET …/logs`` (repeated ``level`` and ``processId``)."""
    params: list[tuple[str, str]] = []
    for lvl in levels or ():
        value = getattr(lvl, "value", lvl)
        params.append(("level", str(LOG_LEVELS.get(str(value).lower(), value))))
    params += [("processId", str(p)) for p in process_ids or ()]
    for key, value in (("body", body), ("head", head), ("tail", tail), ("nextToken", next_token)):
        if value is not None:
            params.append((key, str(value)))
    return params
