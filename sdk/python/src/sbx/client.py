"""The synchronous control-plane client."""

from __future__ import annotations

import contextlib
import os
import time
from typing import List, TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Union

import httpx

from . import _common as c
from .errors import (
    ConflictError,
    CopyError,
    ImageNotFoundError,
    NotFoundError,
    PoolNotFoundError,
    SandboxError,
    SandboxNotFoundError,
    SbxConnectionError,
    SbxTimeoutError,
    SnapshotNotFoundError,
    error_from_response,
)
from .models import (
    NetworkPolicy,
    CheckpointType,
    CopyResult,
    ImageInfo,
    LogEntry,
    LogPage,
    LogProcess,
    PoolInfo,
    SandboxInfo,
    SecretInfo,
    SandboxStatus,
    SnapshotInfo,
    SnapshotType,
)

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = ["SandboxClient"]


class _Transport:
    """httpx plus the SDK's error mapping and retries of idempotent calls."""

    def __init__(self, cfg: c.Config, timeout: float) -> None:
        self.cfg = cfg
        self.http = httpx.Client(headers=cfg.headers(), timeout=httpx.Timeout(timeout, connect=10.0))

    def request(
        self,
        method: str,
        url: str,
        *,
        not_found: type[NotFoundError] = NotFoundError,
        ok_statuses: tuple[int, ...] = (),
        **kw: Any,
    ) -> httpx.Response:
        idempotent = method in ("GET", "HEAD") and "content" not in kw
        attempts = c.RETRIES if idempotent else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                resp = self.http.request(method, url, **kw)
            except httpx.TransportError as e:
                if last:
                    raise SbxConnectionError(f"{method} {url}: {e}") from e
            else:
                if resp.status_code in c.RETRY_STATUSES and not last:
                    resp.close()
                elif resp.is_success or resp.status_code in ok_statuses:
                    return resp
                else:
                    raise error_from_response(resp.status_code, resp.content, not_found)
            time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def stream(
        self, method: str, url: str, *, not_found: type[NotFoundError] = NotFoundError, **kw: Any
    ) -> Iterator[httpx.Response]:
        try:
            with self.http.stream(method, url, **kw) as resp:
                if not resp.is_success:
                    resp.read()
                    raise error_from_response(resp.status_code, resp.content, not_found)
                yield resp
        except httpx.TransportError as e:
            raise SbxConnectionError(f"{method} {url}: {e}") from e

    def close(self) -> None:
        self.http.close()


class SandboxClient:
    """Lifecycle of sandboxes, snapshots and images.

    ``api_url``, ``api_key`` and ``namespace`` default to the environment
    (``SBX_API_URL``, default ``http://localhost:8900``; ``SBX_API_KEY``;
    ``SBX_NAMESPACE``, default ``default``). ``proxy_url`` (``SBX_PROXY_URL``)
    overrides the ``sandbox_url`` the server hands out, for clients that reach
    the proxy under another address. ``timeout`` bounds each control-plane request.
    """

    def __init__(
        self,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        namespace: Optional[str] = None,
        *,
        proxy_url: Optional[str] = None,
        timeout: float = 60.0,
    ) -> None:
        self._cfg = c.Config.resolve(api_url, api_key, namespace, proxy_url)
        self._t = _Transport(self._cfg, timeout)

    @property
    def api_url(self) -> str:
        return self._cfg.api_url

    @property
    def namespace(self) -> str:
        return self._cfg.namespace

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> "SandboxClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._t.request(method, self._cfg.api(path), **kw).json()

    # --- sandboxes ---------------------------------------------------------

    def create(
        self,
        image: Optional[str] = None,
        *,
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
        wait_timeout: float = 300.0,
    ) -> SandboxInfo:
        """Creates a sandbox (or restores ``snapshot_id``) and, with ``wait``,
        returns once it runs. Unset fields take the server's defaults (or,
        on a restore, the snapshot's). ``wait=False`` returns it ``pending``.
        With ``max_pending_secs`` a create no node has room for waits
        ``pending`` that long for room instead of being refused.

        Raises :class:`SandboxError` when it fails to start and
        :class:`SbxTimeoutError` when it is not running after ``wait_timeout`` s.
        """
        body = c.create_body(
            image=image,
            cpus=cpus,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            timeout_secs=timeout_secs,
            name=name,
            entrypoint=entrypoint,
            snapshot_id=snapshot_id,
            allow_internet_access=allow_internet_access,
            allow_out=allow_out,
            deny_out=deny_out,
            secret_names=secret_names,
            auto_resume=auto_resume,
            allow_unauthenticated_access=allow_unauthenticated_access,
            exposed_ports=exposed_ports,
            max_pending_secs=max_pending_secs,
            wait=wait,
        )
        deadline = time.monotonic() + wait_timeout
        info = SandboxInfo.from_json(
            self._json(
                "POST",
                "/sandboxes",
                json=body,
                headers=c.create_timeout_headers(wait_timeout) if wait else None,
                timeout=wait_timeout + 10 if wait else httpx.USE_CLIENT_DEFAULT,
                not_found=SnapshotNotFoundError if snapshot_id else SandboxNotFoundError,
            )
        )
        if not wait:
            return info
        return self._wait_running(info, deadline)

    def wait_until_running(self, identifier: str, timeout: float = 300.0) -> SandboxInfo:
        """Polls a sandbox (for example one created with ``wait=False``) until it runs."""
        return self._wait_running(self.get(identifier), time.monotonic() + timeout)

    def _wait_running(self, info: SandboxInfo, deadline: float) -> SandboxInfo:
        while True:
            if info.status == SandboxStatus.RUNNING:
                return info
            if info.status in c.FINAL_SANDBOX_STATUSES or info.status == SandboxStatus.SUSPENDED:
                raise SandboxError(
                    f"sandbox {info.sandbox_id} is {info.status}" + (f": {info.error}" if info.error else ""),
                    body=info.raw,
                )
            if time.monotonic() > deadline:
                raise SbxTimeoutError(f"sandbox {info.sandbox_id} still {info.status} after the wait timeout")
            time.sleep(0.5)
            info = self.get(info.sandbox_id)

    def create_and_connect(
        self, image: Optional[str] = None, *, env: Optional[Mapping[str, str]] = None, **kwargs: Any
    ) -> "Sandbox":
        """:meth:`create`, then :meth:`connect`. ``env`` becomes the default
        environment of every command, process and PTY started through the
        returned object (sbx has no sandbox-wide environment). Using the
        result as a context manager terminates the sandbox on exit."""
        from .sandbox import Sandbox

        kwargs.pop("wait", None)
        info = self.create(image, **kwargs)
        return Sandbox(self, info, env=env, owns_sandbox=True)

    def connect(self, identifier: str, *, env: Optional[Mapping[str, str]] = None) -> "Sandbox":
        """A handle on an existing sandbox (id or name) for commands, files and PTYs."""
        from .sandbox import Sandbox

        return Sandbox(self, self.get(identifier), env=env)

    def get(self, identifier: str) -> SandboxInfo:
        return SandboxInfo.from_json(
            self._json("GET", f"/sandboxes/{c.seg(identifier)}", not_found=SandboxNotFoundError)
        )

    def list(self, status: Union[SandboxStatus, str, None] = None, *, all: bool = False) -> list[SandboxInfo]:
        """Live sandboxes (pending to suspended); ``all=True`` adds ended ones,
        ``status`` filters on one status."""
        params: dict[str, Any] = {}
        if status is not None:
            params["status"] = str(status)
        if all:
            params["all"] = "true"
        data = self._json("GET", "/sandboxes", params=params)
        return [SandboxInfo.from_json(s) for s in data.get("sandboxes", [])]

    def delete(self, identifier: str) -> None:
        """Terminates a sandbox. Idempotent: deleting an ended sandbox is fine."""
        self._t.request("DELETE", self._cfg.api(f"/sandboxes/{c.seg(identifier)}"), not_found=SandboxNotFoundError)

    terminate = delete

    def update(
        self,
        identifier: str,
        *,
        name: Optional[str] = c._UNSET,
        auto_resume: Optional[bool] = c._UNSET,
        allow_unauthenticated_access: Optional[bool] = c._UNSET,
        exposed_ports: Optional[List[int]] = c._UNSET,
        network: Optional[Union[NetworkPolicy, dict]] = c._UNSET,
    ) -> SandboxInfo:
        """Changes the given fields (``name=None`` removes the name)."""
        body = c.update_body(
            name=name,
            auto_resume=auto_resume,
            allow_unauthenticated_access=allow_unauthenticated_access,
            exposed_ports=exposed_ports,
            network=c.network_body(network),
        )
        return SandboxInfo.from_json(
            self._json("PATCH", f"/sandboxes/{c.seg(identifier)}", json=body, not_found=SandboxNotFoundError)
        )

    def rename(self, identifier: str, name: Optional[str]) -> SandboxInfo:
        return self.update(identifier, name=name)

    def suspend(
        self, identifier: str, *, wait: bool = True, wait_ms: int = c.MAX_WAIT_MS, timeout: float = 120.0
    ) -> SandboxInfo:
        """Suspends a named sandbox (memory and disk are kept; it stops using CPU
        and RAM). With ``wait`` returns once it is ``suspended``."""
        return self._lifecycle(identifier, "suspend", SandboxStatus.SUSPENDED, wait, wait_ms, timeout)

    def resume(
        self, identifier: str, *, wait: bool = True, wait_ms: int = c.MAX_WAIT_MS, timeout: float = 120.0
    ) -> SandboxInfo:
        """Resumes a suspended sandbox. With ``wait`` returns once it runs."""
        return self._lifecycle(identifier, "resume", SandboxStatus.RUNNING, wait, wait_ms, timeout)

    def _lifecycle(
        self, identifier: str, action: str, target: SandboxStatus, wait: bool, wait_ms: int, timeout: float
    ) -> SandboxInfo:
        deadline = time.monotonic() + timeout
        wait_ms = max(0, min(wait_ms, c.MAX_WAIT_MS, int(timeout * 1000))) if wait else 0
        try:
            info = SandboxInfo.from_json(
                self._json(
                    "POST",
                    f"/sandboxes/{c.seg(identifier)}/{action}",
                    params={"wait_ms": wait_ms} if wait_ms else None,
                    timeout=wait_ms / 1000 + 30,
                    not_found=SandboxNotFoundError,
                )
            )
        except ConflictError:
            # Already there (or on its way): the call is done if the state is.
            info = self.get(identifier)
            if info.status != target:
                raise
        while wait and info.status != target:
            if info.status in c.FINAL_SANDBOX_STATUSES:
                raise SandboxError(f"sandbox {info.sandbox_id} is {info.status}", body=info.raw)
            if time.monotonic() > deadline:
                raise SbxTimeoutError(f"sandbox {info.sandbox_id} is {info.status}, not {target}, after {timeout} s")
            time.sleep(0.25)
            info = self.get(info.sandbox_id)
        return info

    def copy(self, identifier: str, times: int = 1) -> CopyResult:
        """Live copies: a memory checkpoint of the sandbox booted ``times`` times.
        The copies run on with the source's memory, processes and files. The
        intermediate snapshot (``snapshot_id``) stays until deleted."""
        resp = self._t.request(
            "POST",
            self._cfg.api(f"/sandboxes/{c.seg(identifier)}/copy"),
            params={"times": times},
            timeout=600.0,
            not_found=SandboxNotFoundError,
            ok_statuses=(422, 504),
        )
        result = CopyResult.from_json(resp.json())
        if not resp.is_success:
            raise CopyError(
                f"{len(result.sandboxes)} of {times} copies started",
                result=result,
                status=resp.status_code,
                body=resp.json(),
            )
        return result

    # --- snapshots ---------------------------------------------------------

    def snapshot(self, identifier: str, snapshot_type: Union[SnapshotType, str, None] = None) -> SnapshotInfo:
        """Starts a snapshot (``filesystem`` by default) and returns it ``in_progress``;
        see :meth:`snapshot_and_wait`."""
        kind = c.snapshot_type_value(snapshot_type)
        data = self._json(
            "POST",
            f"/sandboxes/{c.seg(identifier)}/snapshot",
            json={"snapshot_type": kind} if kind else {},
            timeout=120.0,
            not_found=SandboxNotFoundError,
        )
        data.setdefault("snapshot_type", kind or "filesystem")
        info = SnapshotInfo.from_json(data)
        if info.sandbox_id is None:
            info.sandbox_id = identifier
        return info

    def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return SnapshotInfo.from_json(
            self._json("GET", f"/snapshots/{c.seg(snapshot_id)}", not_found=SnapshotNotFoundError)
        )

    def list_snapshots(self, sandbox_id: Optional[str] = None) -> List[SnapshotInfo]:
        """Every snapshot in the namespace, or those of one sandbox."""
        if sandbox_id is None:
            data = self._json("GET", "/snapshots")
        else:
            data = self._json("GET", f"/sandboxes/{c.seg(sandbox_id)}/snapshots", not_found=SandboxNotFoundError)
        return [SnapshotInfo.from_json(s) for s in data.get("snapshots", [])]

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._t.request("DELETE", self._cfg.api(f"/snapshots/{c.seg(snapshot_id)}"), not_found=SnapshotNotFoundError)

    def wait_for_snapshot(
        self,
        snapshot_id: str,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        require_completed: bool = False,
    ) -> SnapshotInfo:
        """Polls until the snapshot can be restored (``local_ready`` or
        ``completed``; only ``completed`` with ``require_completed``). Raises
        :class:`SnapshotError` if it fails, :class:`SbxTimeoutError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.get_snapshot(snapshot_id)
            if c.check_snapshot(info, require_completed):
                return info
            if time.monotonic() > deadline:
                raise SbxTimeoutError(f"snapshot {snapshot_id} still {info.status} after {timeout} s")
            time.sleep(poll_interval)

    def snapshot_and_wait(
        self,
        identifier: str,
        snapshot_type: Union[SnapshotType, str, None] = None,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        require_completed: bool = False,
    ) -> SnapshotInfo:
        """:meth:`snapshot` then :meth:`wait_for_snapshot`."""
        snap = self.snapshot(identifier, snapshot_type)
        return self.wait_for_snapshot(
            snap.snapshot_id, timeout=timeout, poll_interval=poll_interval, require_completed=require_completed
        )

    def checkpoint(
        self,
        identifier: str,
        checkpoint_type: Union[CheckpointType, str] = CheckpointType.MEMORY,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> SnapshotInfo:
        """A snapshot to come back to, ready to restore when this returns.
        ``MEMORY`` (default) also keeps running processes and memory."""
        return self.snapshot_and_wait(identifier, checkpoint_type, timeout=timeout, poll_interval=poll_interval)

    # --- logs --------------------------------------------------------------

    def get_logs(
        self,
        identifier: str,
        *,
        levels: Optional[List[Union[int, str]]] = None,
        process_ids: Optional[List[Union[int, str]]] = None,
        body: Optional[str] = None,
        head: Optional[int] = None,
        tail: Optional[int] = None,
        next_token: Optional[str] = None,
    ) -> LogPage:
        """One page of a sandbox's persisted logs (also of one that ended):
        its processes' output lines and its lifecycle events, oldest first.
        ``levels``: 1-6 or names (``info`` is stdout, ``error`` stderr);
        ``process_ids``: pids; ``body``: text the line contains; ``head`` /
        ``tail``: the first / last N; ``next_token``: continue a read."""
        params = c.log_params(levels, process_ids, body, head, tail, next_token)
        return LogPage.from_json(
            self._json("GET", f"/sandboxes/{c.seg(identifier)}/logs", params=params, not_found=SandboxNotFoundError)
        )

    def list_log_processes(self, identifier: str) -> List[LogProcess]:
        """The processes a sandbox's logs have records of."""
        data = self._json("GET", f"/sandboxes/{c.seg(identifier)}/processes", not_found=SandboxNotFoundError)
        return [LogProcess.from_json(p) for p in data.get("processes", [])]

    def follow_logs(
        self,
        identifier: str,
        *,
        levels: Optional[List[Union[int, str]]] = None,
        process_ids: Optional[List[Union[int, str]]] = None,
        body: Optional[str] = None,
        tail: Optional[int] = None,
        poll_interval: float = 0.5,
    ) -> Iterator[LogEntry]:
        """Yields the logs (the last ``tail`` records, or all), then new
        records as they come, until the sandbox ends."""
        token: Optional[str] = None
        first = True
        while True:
            ended = str(self.get(identifier).status) in c.FINAL_SANDBOX_STATUSES
            while True:
                page = self.get_logs(
                    identifier, levels=levels, process_ids=process_ids, body=body,
                    tail=tail if first and tail is not None else None, next_token=token,
                )
                yield from page.entries
                token = page.next_token or page.cursor
                if first and tail is not None:
                    first = False
                    break
                first = False
                if not page.next_token:
                    break
            if ended:
                return
            time.sleep(poll_interval)

    # --- secrets -----------------------------------------------------------

    def set_secret(self, name: str, value: str) -> SecretInfo:
        """Sets secret ``name`` (an environment variable name) of the
        namespace, stored encrypted; sandboxes created later with
        ``secret_names=[name]`` get it. Running sandboxes keep the value they have."""
        return SecretInfo.from_json(self._json("PUT", f"/secrets/{c.seg(name)}", json={"value": value}))

    def list_secrets(self) -> List[SecretInfo]:
        """The namespace's secrets: names and dates, never values."""
        return [SecretInfo.from_json(s) for s in self._json("GET", "/secrets").get("secrets", [])]

    def delete_secret(self, name: str) -> None:
        """Deletes a secret (:class:`NotFoundError` if there is none)."""
        self._t.request("DELETE", self._cfg.api(f"/secrets/{c.seg(name)}"))

    # --- warm pools --------------------------------------------------------

    def create_pool(
        self,
        image: Optional[str] = None,
        *,
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
    ) -> PoolInfo:
        """Creates a warm pool: the server keeps ``warm_containers`` (default
        1) sandboxes of this template booted for :meth:`claim`, at most
        ``max_containers`` of the pool at once (default: no cap).
        ``timeout_secs`` counts from a claim. Returns the pool (fetched
        after the create, with its sandboxes, usually still starting)."""
        body = c.pool_body(
            image=image,
            cpus=cpus,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            timeout_secs=timeout_secs,
            entrypoint=entrypoint,
            warm_containers=warm_containers,
            max_containers=max_containers,
            allow_internet_access=allow_internet_access,
            allow_out=allow_out,
            deny_out=deny_out,
        )
        created = self._json("POST", "/sandbox-pools", json=body)
        return self.get_pool(created["pool_id"])

    def list_pools(self) -> List[PoolInfo]:
        """The namespace's pools (without their sandboxes: see :meth:`get_pool`)."""
        return [PoolInfo.from_json(p) for p in self._json("GET", "/sandbox-pools").get("pools", [])]

    def get_pool(self, pool_id: str) -> PoolInfo:
        """A pool with its sandboxes (``containers``: ``Idle`` = warm, ``Running`` = claimed)."""
        return PoolInfo.from_json(self._json("GET", f"/sandbox-pools/{c.seg(pool_id)}", not_found=PoolNotFoundError))

    def update_pool(
        self,
        pool_id: str,
        *,
        image: Optional[str] = c._UNSET,
        cpus: Optional[float] = c._UNSET,
        memory_mb: Optional[int] = c._UNSET,
        disk_mb: Optional[int] = c._UNSET,
        timeout_secs: Optional[int] = c._UNSET,
        entrypoint: Optional[list[str]] = c._UNSET,
        warm_containers: Optional[int] = c._UNSET,
        max_containers: Optional[int] = c._UNSET,
        allow_internet_access: Optional[bool] = c._UNSET,
        allow_out: Optional[list[str]] = c._UNSET,
        deny_out: Optional[list[str]] = c._UNSET,
    ) -> PoolInfo:
        """Changes the given fields of a pool's template and counts; the
        others stay (``max_containers=None`` lifts the cap,
        ``entrypoint=None`` drops it). Warm sandboxes of the old template are
        replaced; claimed ones keep running."""
        current = self._json("GET", f"/sandbox-pools/{c.seg(pool_id)}", not_found=PoolNotFoundError)
        body = c.pool_update_body(
            current,
            image=image,
            cpus=cpus,
            memory_mb=memory_mb,
            disk_mb=disk_mb,
            timeout_secs=timeout_secs,
            entrypoint=entrypoint,
            warm_containers=warm_containers,
            max_containers=max_containers,
            allow_internet_access=allow_internet_access,
            allow_out=allow_out,
            deny_out=deny_out,
        )
        return PoolInfo.from_json(
            self._json("PUT", f"/sandbox-pools/{c.seg(pool_id)}", json=body, not_found=PoolNotFoundError)
        )

    def delete_pool(self, pool_id: str) -> None:
        """Deletes a pool and its warm sandboxes. :class:`ConflictError`
        (``pool_in_use``) while sandboxes claimed from it still run."""
        self._t.request("DELETE", self._cfg.api(f"/sandbox-pools/{c.seg(pool_id)}"), not_found=PoolNotFoundError)

    def claim(
        self, pool_id: str, name: Optional[str] = None, *, wait: bool = True, wait_timeout: float = 300.0
    ) -> SandboxInfo:
        """A sandbox from pool ``pool_id``: a warm one when there is one
        (it runs at once), else one started now. At the pool's cap it stays
        ``pending`` (``pool_at_capacity``) until a sandbox of the pool ends;
        with ``wait`` this returns once it runs, as :meth:`create` does."""
        deadline = time.monotonic() + wait_timeout
        info = SandboxInfo.from_json(
            self._json(
                "POST",
                f"/sandbox-pools/{c.seg(pool_id)}/sandboxes",
                json={"name": name} if name is not None else {},
                headers=c.claim_headers(wait, wait_timeout),
                timeout=wait_timeout + 10 if wait else httpx.USE_CLIENT_DEFAULT,
                not_found=PoolNotFoundError,
            )
        )
        if not wait:
            return info
        return self._wait_running(info, deadline)

    # --- images ------------------------------------------------------------

    def list_images(self) -> List[ImageInfo]:
        """The images sandboxes can be created from: ``default`` and every import."""
        return [ImageInfo.from_json(i) for i in self._json("GET", "/images").get("images", [])]

    def get_image(self, name: str) -> ImageInfo:
        return ImageInfo.from_json(self._json("GET", f"/images/{c.seg(name)}", not_found=ImageNotFoundError))

    def delete_image(self, name: str) -> None:
        """Takes an imported image off the list; sandboxes and snapshots made
        from it keep it. The built-in ``default`` cannot be deleted (400)."""
        self._t.request("DELETE", self._cfg.api(f"/images/{c.seg(name)}"), not_found=ImageNotFoundError)

    def import_image(
        self,
        reference: str,
        *,
        name: Optional[str] = None,
        insecure: bool = False,
        username: Optional[str] = None,
        password: Optional[str] = None,
        on_progress: Optional[Callable[[dict], Any]] = None,
    ) -> ImageInfo:
        """Pulls ``HOST[:PORT]/REPO[:TAG|@DIGEST]`` from a registry as image
        ``name`` (default: the repository's last component), replacing an
        earlier import of that name. ``insecure`` talks plain HTTP.
        ``on_progress`` gets each progress event (``{"event": "resolved",
        "layers", "bytes"}``, ``fetched`` and ``applied`` with ``layer``).

        Raises :class:`ImageNotFoundError` when the registry has no such image
        and :class:`ImageImportError` when the import fails on the way.
        """
        return self._import(
            c.ImportReader(reference),
            on_progress,
            "/images/import",
            json=c.import_body(reference, name, insecure, username, password),
        )

    def import_image_archive(
        self,
        path: Union[str, os.PathLike],
        *,
        name: Optional[str] = None,
        format: Optional[str] = None,
        on_progress: Optional[Callable[[dict], Any]] = None,
    ) -> ImageInfo:
        """Uploads a ``docker save`` / ``skopeo`` archive as image ``name``
        (default: the file name up to its first dot). ``format`` is
        ``docker-archive`` or ``oci-archive``; by default ``oci-archive`` when
        the tar has an ``oci-layout``. Otherwise as :meth:`import_image`."""
        params = c.archive_params(path, name, format)
        with open(path, "rb") as f:
            return self._import(
                c.ImportReader(os.fspath(path)),
                on_progress,
                "/images/import-archive",
                params=params,
                content=c.file_chunks(f),
                headers={"Content-Type": "application/x-tar"},
            )

    def build_image(
        self,
        name: str,
        context: Union[str, os.PathLike] = ".",
        *,
        dockerfile: Optional[Union[str, os.PathLike]] = None,
        build_args: Optional[Mapping[str, str]] = None,
        no_cache: bool = False,
        insecure: bool = False,
        on_progress: Optional[Callable[[dict], Any]] = None,
    ) -> ImageInfo:
        """Builds image ``name`` from a Dockerfile, as ``sbx image build`` does:
        each ``RUN`` in a builder sandbox, each step's result cached (an
        unchanged rebuild takes seconds; ``no_cache`` runs every step again).
        ``context`` is the directory ``COPY`` and ``ADD`` see, sent without
        what its ``.dockerignore`` excludes; ``dockerfile`` a local path
        (relative to the current directory, as ``sbx image build -f`` takes
        it; default: ``CONTEXT/Dockerfile``), inside the context or not.
        ``build_args`` set ``ARG`` values; ``insecure`` pulls a ``FROM``
        image over plain HTTP. ``on_progress`` gets each progress event
        (``warning`` with ``line`` and ``message``; ``step`` with ``stage``,
        ``stages``, ``step``, ``steps``, ``line`` and ``text``; ``cached``;
        ``output`` with ``line``; ``step_done`` with ``ms`` and ``bytes``).

        Raises :class:`BadRequestError` for a Dockerfile the server refuses
        before building (its message names the line) and
        :class:`ImageBuildError` when a step fails.
        """
        with c.context_tar(context, dockerfile) as f:
            return self._import(
                c.BuildReader(name),
                on_progress,
                "/images/build",
                params=c.build_params(name, build_args, no_cache, insecure),
                content=c.file_chunks(f),
                headers={"Content-Type": "application/x-tar"},
            )

    def _import(
        self, reader: c.ImportReader, on_progress: Optional[Callable[[dict], Any]], path: str, **kw: Any
    ) -> ImageInfo:
        # No read timeout: fetching one large layer (or a quiet build step) may take minutes without a line.
        timeout = httpx.Timeout(60.0, read=None)
        with self._t.stream("POST", self._cfg.api(path), timeout=timeout, not_found=ImageNotFoundError, **kw) as resp:
            for line in resp.iter_lines():
                event = reader.feed(line)
                if event is not None and on_progress is not None:
                    on_progress(event)
        return reader.result()
