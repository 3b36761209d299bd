"""The asyncio flavour: :class:`AsyncSandboxClient` and :class:`AsyncSandbox`
have the methods of their synchronous twins, as coroutines (iterators become
async iterators; callbacks may be plain functions or coroutine functions)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import struct
import time
from typing import List, Any, AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping, Optional, Union

import httpx

from . import _common as c
from ._ws import BINARY, AsyncWebSocket
from .errors import (
    CommandError,
    ConflictError,
    CopyError,
    ImageNotFoundError,
    NotFoundError,
    PoolNotFoundError,
    SandboxError,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
    SbxConnectionError,
    SbxError,
    SbxTimeoutError,
    SnapshotNotFoundError,
    error_from_response,
)
from .models import (
    NetworkPolicy,
    CheckpointType,
    CommandResult,
    CopyResult,
    FileEntry,
    ImageInfo,
    LogEntry,
    LogPage,
    LogProcess,
    OutputLine,
    PoolInfo,
    ProcessInfo,
    PtySessionInfo,
    SandboxInfo,
    SandboxStatus,
    SecretInfo,
    SnapshotInfo,
    SnapshotType,
)

__all__ = ["AsyncSandboxClient", "AsyncSandbox", "AsyncPtySession"]


class _AsyncTransport:
    def __init__(self, cfg: c.Config, timeout: float) -> None:
        self.cfg = cfg
        self.http = httpx.AsyncClient(headers=cfg.headers(), timeout=httpx.Timeout(timeout, connect=10.0))

    async def request(
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
                resp = await self.http.request(method, url, **kw)
            except httpx.TransportError as e:
                if last:
                    raise SbxConnectionError(f"{method} {url}: {e}") from e
            else:
                if resp.status_code in c.RETRY_STATUSES and not last:
                    await resp.aclose()
                elif resp.is_success or resp.status_code in ok_statuses:
                    return resp
                else:
                    raise error_from_response(resp.status_code, resp.content, not_found)
            await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, *, not_found: type[NotFoundError] = NotFoundError, **kw: Any
    ) -> AsyncIterator[httpx.Response]:
        try:
            async with self.http.stream(method, url, **kw) as resp:
                if not resp.is_success:
                    await resp.aread()
                    raise error_from_response(resp.status_code, resp.content, not_found)
                yield resp
        except httpx.TransportError as e:
            raise SbxConnectionError(f"{method} {url}: {e}") from e

    async def close(self) -> None:
        await self.http.aclose()


class AsyncSandboxClient:
    """Async twin of :class:`sbx.SandboxClient` (same arguments and methods)."""

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
        self._t = _AsyncTransport(self._cfg, timeout)

    @property
    def api_url(self) -> str:
        return self._cfg.api_url

    @property
    def namespace(self) -> str:
        return self._cfg.namespace

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> "AsyncSandboxClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return (await self._t.request(method, self._cfg.api(path), **kw)).json()

    # --- sandboxes ---------------------------------------------------------

    async def create(self, image: Optional[str] = None, *, wait: bool = True, wait_timeout: float = 300.0, **kwargs: Any) -> SandboxInfo:
        """See :meth:`sbx.SandboxClient.create` (same keyword arguments)."""
        body = c.create_body(image=image, wait=wait, **kwargs)
        deadline = time.monotonic() + wait_timeout
        info = SandboxInfo.from_json(
            await self._json(
                "POST",
                "/sandboxes",
                json=body,
                headers=c.create_timeout_headers(wait_timeout) if wait else None,
                timeout=wait_timeout + 10 if wait else httpx.USE_CLIENT_DEFAULT,
                not_found=SnapshotNotFoundError if kwargs.get("snapshot_id") else SandboxNotFoundError,
            )
        )
        if not wait:
            return info
        return await self._wait_running(info, deadline)

    async def wait_until_running(self, identifier: str, timeout: float = 300.0) -> SandboxInfo:
        """Polls a sandbox (for example one created with ``wait=False``) until it runs."""
        return await self._wait_running(await self.get(identifier), time.monotonic() + timeout)

    async def _wait_running(self, info: SandboxInfo, deadline: float) -> SandboxInfo:
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
            await asyncio.sleep(0.5)
            info = await self.get(info.sandbox_id)

    async def create_and_connect(
        self, image: Optional[str] = None, *, env: Optional[Mapping[str, str]] = None, **kwargs: Any
    ) -> "AsyncSandbox":
        kwargs.pop("wait", None)
        info = await self.create(image, **kwargs)
        return AsyncSandbox(self, info, env=env, owns_sandbox=True)

    async def connect(self, identifier: str, *, env: Optional[Mapping[str, str]] = None) -> "AsyncSandbox":
        return AsyncSandbox(self, await self.get(identifier), env=env)

    async def get(self, identifier: str) -> SandboxInfo:
        return SandboxInfo.from_json(
            await self._json("GET", f"/sandboxes/{c.seg(identifier)}", not_found=SandboxNotFoundError)
        )

    async def list(self, status: Union[SandboxStatus, str, None] = None, *, all: bool = False) -> list[SandboxInfo]:
        params: dict[str, Any] = {}
        if status is not None:
            params["status"] = str(status)
        if all:
            params["all"] = "true"
        data = await self._json("GET", "/sandboxes", params=params)
        return [SandboxInfo.from_json(s) for s in data.get("sandboxes", [])]

    async def delete(self, identifier: str) -> None:
        await self._t.request(
            "DELETE", self._cfg.api(f"/sandboxes/{c.seg(identifier)}"), not_found=SandboxNotFoundError
        )

    terminate = delete

    async def update(
        self,
        identifier: str,
        *,
        name: Optional[str] = c._UNSET,
        auto_resume: Optional[bool] = c._UNSET,
        allow_unauthenticated_access: Optional[bool] = c._UNSET,
        exposed_ports: Optional[List[int]] = c._UNSET,
        network: Optional[Union[NetworkPolicy, dict]] = c._UNSET,
    ) -> SandboxInfo:
        body = c.update_body(
            name=name,
            auto_resume=auto_resume,
            allow_unauthenticated_access=allow_unauthenticated_access,
            exposed_ports=exposed_ports,
            network=c.network_body(network),
        )
        return SandboxInfo.from_json(
            await self._json("PATCH", f"/sandboxes/{c.seg(identifier)}", json=body, not_found=SandboxNotFoundError)
        )

    async def rename(self, identifier: str, name: Optional[str]) -> SandboxInfo:
        return await self.update(identifier, name=name)

    async def suspend(
        self, identifier: str, *, wait: bool = True, wait_ms: int = c.MAX_WAIT_MS, timeout: float = 120.0
    ) -> SandboxInfo:
        return await self._lifecycle(identifier, "suspend", SandboxStatus.SUSPENDED, wait, wait_ms, timeout)

    async def resume(
        self, identifier: str, *, wait: bool = True, wait_ms: int = c.MAX_WAIT_MS, timeout: float = 120.0
    ) -> SandboxInfo:
        return await self._lifecycle(identifier, "resume", SandboxStatus.RUNNING, wait, wait_ms, timeout)

    async def _lifecycle(
        self, identifier: str, action: str, target: SandboxStatus, wait: bool, wait_ms: int, timeout: float
    ) -> SandboxInfo:
        deadline = time.monotonic() + timeout
        wait_ms = max(0, min(wait_ms, c.MAX_WAIT_MS, int(timeout * 1000))) if wait else 0
        try:
            info = SandboxInfo.from_json(
                await self._json(
                    "POST",
                    f"/sandboxes/{c.seg(identifier)}/{action}",
                    params={"wait_ms": wait_ms} if wait_ms else None,
                    timeout=wait_ms / 1000 + 30,
                    not_found=SandboxNotFoundError,
                )
            )
        except ConflictError:
            info = await self.get(identifier)
            if info.status != target:
                raise
        while wait and info.status != target:
            if info.status in c.FINAL_SANDBOX_STATUSES:
                raise SandboxError(f"sandbox {info.sandbox_id} is {info.status}", body=info.raw)
            if time.monotonic() > deadline:
                raise SbxTimeoutError(f"sandbox {info.sandbox_id} is {info.status}, not {target}, after {timeout} s")
            await asyncio.sleep(0.25)
            info = await self.get(info.sandbox_id)
        return info

    async def copy(self, identifier: str, times: int = 1) -> CopyResult:
        resp = await self._t.request(
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

    async def snapshot(self, identifier: str, snapshot_type: Union[SnapshotType, str, None] = None) -> SnapshotInfo:
        kind = c.snapshot_type_value(snapshot_type)
        data = await self._json(
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

    async def get_snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return SnapshotInfo.from_json(
            await self._json("GET", f"/snapshots/{c.seg(snapshot_id)}", not_found=SnapshotNotFoundError)
        )

    async def list_snapshots(self, sandbox_id: Optional[str] = None) -> List[SnapshotInfo]:
        if sandbox_id is None:
            data = await self._json("GET", "/snapshots")
        else:
            data = await self._json(
                "GET", f"/sandboxes/{c.seg(sandbox_id)}/snapshots", not_found=SandboxNotFoundError
            )
        return [SnapshotInfo.from_json(s) for s in data.get("snapshots", [])]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._t.request(
            "DELETE", self._cfg.api(f"/snapshots/{c.seg(snapshot_id)}"), not_found=SnapshotNotFoundError
        )

    async def wait_for_snapshot(
        self,
        snapshot_id: str,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        require_completed: bool = False,
    ) -> SnapshotInfo:
        deadline = time.monotonic() + timeout
        while True:
            info = await self.get_snapshot(snapshot_id)
            if c.check_snapshot(info, require_completed):
                return info
            if time.monotonic() > deadline:
                raise SbxTimeoutError(f"snapshot {snapshot_id} still {info.status} after {timeout} s")
            await asyncio.sleep(poll_interval)

    async def snapshot_and_wait(
        self,
        identifier: str,
        snapshot_type: Union[SnapshotType, str, None] = None,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        require_completed: bool = False,
    ) -> SnapshotInfo:
        snap = await self.snapshot(identifier, snapshot_type)
        return await self.wait_for_snapshot(
            snap.snapshot_id, timeout=timeout, poll_interval=poll_interval, require_completed=require_completed
        )

    async def checkpoint(
        self,
        identifier: str,
        checkpoint_type: Union[CheckpointType, str] = CheckpointType.MEMORY,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> SnapshotInfo:
        return await self.snapshot_and_wait(identifier, checkpoint_type, timeout=timeout, poll_interval=poll_interval)

    # --- logs --------------------------------------------------------------

    async def get_logs(
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
        """See :meth:`sbx.SandboxClient.get_logs`."""
        params = c.log_params(levels, process_ids, body, head, tail, next_token)
        data = await self._json(
            "GET", f"/sandboxes/{c.seg(identifier)}/logs", params=params, not_found=SandboxNotFoundError
        )
        return LogPage.from_json(data)

    async def list_log_processes(self, identifier: str) -> List[LogProcess]:
        """See :meth:`sbx.SandboxClient.list_log_processes`."""
        data = await self._json("GET", f"/sandboxes/{c.seg(identifier)}/processes", not_found=SandboxNotFoundError)
        return [LogProcess.from_json(p) for p in data.get("processes", [])]

    async def follow_logs(
        self,
        identifier: str,
        *,
        levels: Optional[List[Union[int, str]]] = None,
        process_ids: Optional[List[Union[int, str]]] = None,
        body: Optional[str] = None,
        tail: Optional[int] = None,
        poll_interval: float = 0.5,
    ) -> AsyncIterator[LogEntry]:
        """See :meth:`sbx.SandboxClient.follow_logs`."""
        token: Optional[str] = None
        first = True
        while True:
            ended = str((await self.get(identifier)).status) in c.FINAL_SANDBOX_STATUSES
            while True:
                page = await self.get_logs(
                    identifier, levels=levels, process_ids=process_ids, body=body,
                    tail=tail if first and tail is not None else None, next_token=token,
                )
                for entry in page.entries:
                    yield entry
                token = page.next_token or page.cursor
                if first and tail is not None:
                    first = False
                    break
                first = False
                if not page.next_token:
                    break
            if ended:
                return
            await asyncio.sleep(poll_interval)

    # --- secrets -----------------------------------------------------------

    async def set_secret(self, name: str, value: str) -> SecretInfo:
        """See :meth:`sbx.SandboxClient.set_secret`."""
        data = await self._json("PUT", f"/secrets/{c.seg(name)}", json={"value": value})
        return SecretInfo.from_json(data)

    async def list_secrets(self) -> List[SecretInfo]:
        data = await self._json("GET", "/secrets")
        return [SecretInfo.from_json(s) for s in data.get("secrets", [])]

    async def delete_secret(self, name: str) -> None:
        await self._t.request("DELETE", self._cfg.api(f"/secrets/{c.seg(name)}"))

    # --- warm pools --------------------------------------------------------

    async def create_pool(self, image: Optional[str] = None, **kwargs: Any) -> PoolInfo:
        """See :meth:`sbx.SandboxClient.create_pool` (same keyword arguments)."""
        created = await self._json("POST", "/sandbox-pools", json=c.pool_body(image=image, **kwargs))
        return await self.get_pool(created["pool_id"])

    async def list_pools(self) -> List[PoolInfo]:
        data = await self._json("GET", "/sandbox-pools")
        return [PoolInfo.from_json(p) for p in data.get("pools", [])]

    async def get_pool(self, pool_id: str) -> PoolInfo:
        return PoolInfo.from_json(
            await self._json("GET", f"/sandbox-pools/{c.seg(pool_id)}", not_found=PoolNotFoundError)
        )

    async def update_pool(self, pool_id: str, **fields: Any) -> PoolInfo:
        """See :meth:`sbx.SandboxClient.update_pool` (same keyword arguments)."""
        known = {
            "image", "cpus", "memory_mb", "disk_mb", "timeout_secs", "entrypoint", "warm_containers",
            "max_containers", "allow_internet_access", "allow_out", "deny_out",
        }
        unknown = set(fields) - known
        if unknown:
            raise TypeError(f"update_pool() got unexpected keyword arguments: {sorted(unknown)}")
        current = await self._json("GET", f"/sandbox-pools/{c.seg(pool_id)}", not_found=PoolNotFoundError)
        body = c.pool_update_body(current, **fields)
        return PoolInfo.from_json(
            await self._json("PUT", f"/sandbox-pools/{c.seg(pool_id)}", json=body, not_found=PoolNotFoundError)
        )

    async def delete_pool(self, pool_id: str) -> None:
        await self._t.request(
            "DELETE", self._cfg.api(f"/sandbox-pools/{c.seg(pool_id)}"), not_found=PoolNotFoundError
        )

    async def claim(
        self, pool_id: str, name: Optional[str] = None, *, wait: bool = True, wait_timeout: float = 300.0
    ) -> SandboxInfo:
        """See :meth:`sbx.SandboxClient.claim`."""
        deadline = time.monotonic() + wait_timeout
        info = SandboxInfo.from_json(
            await self._json(
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
        return await self._wait_running(info, deadline)

    # --- images ------------------------------------------------------------

    async def list_images(self) -> List[ImageInfo]:
        data = await self._json("GET", "/images")
        return [ImageInfo.from_json(i) for i in data.get("images", [])]

    async def get_image(self, name: str) -> ImageInfo:
        return ImageInfo.from_json(
            await self._json("GET", f"/images/{c.seg(name)}", not_found=ImageNotFoundError)
        )

    async def delete_image(self, name: str) -> None:
        await self._t.request("DELETE", self._cfg.api(f"/images/{c.seg(name)}"), not_found=ImageNotFoundError)

    async def import_image(
        self,
        reference: str,
        *,
        name: Optional[str] = None,
        insecure: bool = False,
        username: Optional[str] = None,
        password: Optional[str] = None,
        on_progress: Optional[Callable[[dict], Any]] = None,
    ) -> ImageInfo:
        """See :meth:`sbx.SandboxClient.import_image` (``on_progress`` may be a coroutine function)."""
        return await self._import(
            c.ImportReader(reference),
            on_progress,
            "/images/import",
            json=c.import_body(reference, name, insecure, username, password),
        )

    async def import_image_archive(
        self,
        path: Union[str, os.PathLike],
        *,
        name: Optional[str] = None,
        format: Optional[str] = None,
        on_progress: Optional[Callable[[dict], Any]] = None,
    ) -> ImageInfo:
        """See :meth:`sbx.SandboxClient.import_image_archive`."""
        params = c.archive_params(path, name, format)
        with open(path, "rb") as f:
            return await self._import(
                c.ImportReader(os.fspath(path)),
                on_progress,
                "/images/import-archive",
                params=params,
                content=_achunks(f),
                headers={"Content-Type": "application/x-tar"},
            )

    async def build_image(
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
        """See :meth:`sbx.SandboxClient.build_image` (``on_progress`` may be a coroutine function)."""
        with await asyncio.to_thread(c.context_tar, context, dockerfile) as f:
            return await self._import(
                c.BuildReader(name),
                on_progress,
                "/images/build",
                params=c.build_params(name, build_args, no_cache, insecure),
                content=_achunks(f),
                headers={"Content-Type": "application/x-tar"},
            )

    async def _import(
        self, reader: c.ImportReader, on_progress: Optional[Callable[[dict], Any]], path: str, **kw: Any
    ) -> ImageInfo:
        timeout = httpx.Timeout(60.0, read=None)
        async with self._t.stream(
            "POST", self._cfg.api(path), timeout=timeout, not_found=ImageNotFoundError, **kw
        ) as resp:
            async for line in resp.aiter_lines():
                event = reader.feed(line)
                if event is not None:
                    await _acall(on_progress, event)
        return reader.result()


class _Opening:
    """What ``AsyncSandbox.create``/``connect`` return: await it for the sandbox,
    or use it directly in ``async with``."""

    def __init__(self, coro: Awaitable["AsyncSandbox"]) -> None:
        self._coro = coro
        self._sandbox: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, "AsyncSandbox"]:
        return self._coro.__await__()

    async def __aenter__(self) -> "AsyncSandbox":
        self._sandbox = await self._coro
        return self._sandbox

    async def __aexit__(self, *exc: Any) -> None:
        assert self._sandbox is not None
        await self._sandbox.__aexit__(*exc)


class AsyncSandbox:
    """Async twin of :class:`sbx.Sandbox`."""

    def __init__(
        self,
        client: AsyncSandboxClient,
        info: SandboxInfo,
        *,
        env: Optional[Mapping[str, str]] = None,
        owns_client: bool = False,
        owns_sandbox: bool = False,
    ) -> None:
        self.client = client
        self.sandbox_id = info.sandbox_id
        self.name = info.name
        self.env: dict[str, str] = dict(env or {})
        self._owns_client = owns_client
        self._owns_sandbox = owns_sandbox
        self._base = client._cfg.daemon_base(info.sandbox_url)
        self._headers = {c.SANDBOX_HEADER: self.sandbox_id}
        self.commands = AsyncCommands(self)
        self.processes = AsyncProcesses(self)
        self.files = AsyncFiles(self)
        self.pty = AsyncPty(self)

    def __repr__(self) -> str:
        return f"AsyncSandbox(sandbox_id={self.sandbox_id!r}, name={self.name!r})"

    @classmethod
    def create(
        cls,
        image: Optional[str] = None,
        *,
        snapshot_id: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        namespace: Optional[str] = None,
        **kwargs: Any,
    ) -> _Opening:
        """``await AsyncSandbox.create(...)`` or ``async with AsyncSandbox.create(...) as sbx:``."""

        async def open() -> AsyncSandbox:
            client = AsyncSandboxClient(api_url, api_key, namespace)
            try:
                kwargs.pop("wait", None)
                info = await client.create(image, snapshot_id=snapshot_id, **kwargs)
            except BaseException:
                await client.close()
                raise
            return cls(client, info, env=env, owns_client=True, owns_sandbox=True)

        return _Opening(open())

    @classmethod
    def connect(
        cls,
        identifier: str,
        *,
        env: Optional[Mapping[str, str]] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        namespace: Optional[str] = None,
    ) -> _Opening:
        async def open() -> AsyncSandbox:
            client = AsyncSandboxClient(api_url, api_key, namespace)
            try:
                info = await client.get(identifier)
            except BaseException:
                await client.close()
                raise
            return cls(client, info, env=env, owns_client=True)

        return _Opening(open())

    async def info(self) -> SandboxInfo:
        return await self.client.get(self.sandbox_id)

    async def rename(self, name: Optional[str]) -> SandboxInfo:
        info = await self.client.rename(self.sandbox_id, name)
        self.name = info.name
        return info

    async def suspend(self, **kwargs: Any) -> SandboxInfo:
        return await self.client.suspend(self.sandbox_id, **kwargs)

    async def resume(self, **kwargs: Any) -> SandboxInfo:
        return await self.client.resume(self.sandbox_id, **kwargs)

    async def create_snapshot(
        self,
        snapshot_type: Union[SnapshotType, str] = SnapshotType.FILESYSTEM,
        *,
        wait: bool = True,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> SnapshotInfo:
        if not wait:
            return await self.client.snapshot(self.sandbox_id, snapshot_type)
        return await self.client.snapshot_and_wait(
            self.sandbox_id, snapshot_type, timeout=timeout, poll_interval=poll_interval
        )

    async def checkpoint(
        self,
        checkpoint_type: Union[CheckpointType, str] = CheckpointType.MEMORY,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> SnapshotInfo:
        return await self.client.checkpoint(
            self.sandbox_id, checkpoint_type, timeout=timeout, poll_interval=poll_interval
        )

    async def get_logs(self, **kwargs: Any) -> LogPage:
        """This sandbox's persisted logs: see :meth:`AsyncSandboxClient.get_logs`."""
        return await self.client.get_logs(self.sandbox_id, **kwargs)

    async def list_log_processes(self) -> List[LogProcess]:
        return await self.client.list_log_processes(self.sandbox_id)

    def follow_logs(self, **kwargs: Any) -> AsyncIterator[LogEntry]:
        """See :meth:`AsyncSandboxClient.follow_logs`."""
        return self.client.follow_logs(self.sandbox_id, **kwargs)

    async def copy(self, times: int = 1) -> list["AsyncSandbox"]:
        result = await self.client.copy(self.sandbox_id, times)
        if result.snapshot_id:
            try:
                await self.client.delete_snapshot(result.snapshot_id)
            except NotFoundError:
                pass
        cfg = self.client._cfg
        return [
            AsyncSandbox(
                AsyncSandboxClient(cfg.api_url, cfg.api_key, cfg.namespace, proxy_url=cfg.proxy_url),
                info,
                env=self.env,
                owns_client=True,
                owns_sandbox=True,
            )
            for info in result.sandboxes
        ]

    async def kill(self) -> None:
        try:
            await self.client.delete(self.sandbox_id)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._owns_client:
            await self.client.close()

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._owns_sandbox:
            await self.kill()
        else:
            await self.close()

    def _url(self, path: str) -> str:
        return self._base + path

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self._headers, **kw.pop("headers", {})}
        return await self.client._t.request(method, self._url(path), headers=headers, **kw)

    def _stream(self, method: str, path: str, **kw: Any) -> Any:
        headers = {**self._headers, **kw.pop("headers", {})}
        return self.client._t.stream(method, self._url(path), headers=headers, **kw)

    def _env(self, env: Optional[Mapping[str, str]]) -> Optional[dict[str, str]]:
        return c.merge_env(self.env, env)


async def _acall(cb: Optional[Callable[[Any], Any]], value: Any) -> None:
    if cb is not None:
        out = cb(value)
        if inspect.isawaitable(out):
            await out


async def _sse_events(resp: httpx.Response) -> AsyncIterator[dict]:
    dec = c.SSEDecoder()
    buf = b""
    async for chunk in resp.aiter_bytes():
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            event = dec.feed(line.decode("utf-8", "replace"))
            if event is not None:
                yield event
    if buf:
        event = dec.feed(buf.decode("utf-8", "replace"))
        if event is not None:
            yield event
    event = dec.flush()
    if event is not None:
        yield event


class AsyncCommands:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def run(
        self,
        cmd: str,
        args: Optional[Iterable[str]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        timeout: Optional[float] = None,
        on_stdout: Optional[Callable[[str], Any]] = None,
        on_stderr: Optional[Callable[[str], Any]] = None,
        user: Optional[Union[str, dict]] = None,
        check: bool = False,
    ) -> CommandResult:
        """See :meth:`sbx.sandbox.Commands.run`."""
        body = c.process_body(cmd, args, self._sb._env(env), cwd, user, timeout=timeout)
        acc = c.RunAccumulator()
        read_timeout = None if timeout is None else timeout + 60
        async with self._sb._stream(
            "POST",
            "/processes/run",
            json=body,
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(30.0, read=read_timeout),
        ) as resp:
            async for event in _sse_events(resp):
                out = acc.add(event)
                if out is not None:
                    await _acall(on_stderr if out.stream == "stderr" else on_stdout, out.line)
        result = acc.result(c.describe(cmd, args))
        if check and not result.ok:
            raise CommandError(result)
        return result


class AsyncProcesses:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def start(
        self,
        cmd: str,
        args: Optional[Iterable[str]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: bool = False,
        name: Optional[str] = None,
        user: Optional[Union[str, dict]] = None,
        discard_output: bool = False,
        restart: Optional[dict] = None,
        health_check: Optional[dict] = None,
    ) -> ProcessInfo:
        body = c.process_body(
            cmd,
            args,
            self._sb._env(env),
            cwd,
            user,
            stdin_mode="pipe" if stdin else None,
            stdout_mode="discard" if discard_output else None,
            stderr_mode="discard" if discard_output else None,
            name=name,
            restart=restart,
            health_check=health_check,
        )
        return ProcessInfo.from_json((await self._sb._request("POST", "/processes", json=body)).json())

    async def list(self) -> list[ProcessInfo]:
        data = (await self._sb._request("GET", "/processes")).json()
        return [ProcessInfo.from_json(p) for p in data.get("processes", [])]

    async def get(self, pid: Union[int, str]) -> ProcessInfo:
        return ProcessInfo.from_json((await self._sb._request("GET", f"/processes/{c.seg(pid)}")).json())

    async def kill(self, pid: Union[int, str]) -> ProcessInfo:
        return ProcessInfo.from_json((await self._sb._request("DELETE", f"/processes/{c.seg(pid)}")).json())

    async def signal(self, pid: Union[int, str], sig: Union[int, str] = 15) -> None:
        await self._sb._request("POST", f"/processes/{c.seg(pid)}/signal", json={"signal": c.signal_number(sig)})

    async def restart(self, pid: Union[int, str]) -> ProcessInfo:
        return ProcessInfo.from_json((await self._sb._request("POST", f"/processes/{c.seg(pid)}/restart")).json())

    async def write_stdin(self, pid: Union[int, str], data: Union[bytes, str]) -> None:
        content = data.encode() if isinstance(data, str) else data
        await self._sb._request("POST", f"/processes/{c.seg(pid)}/stdin", content=content)

    async def close_stdin(self, pid: Union[int, str]) -> None:
        await self._sb._request("POST", f"/processes/{c.seg(pid)}/stdin/close")

    async def output(self, pid: Union[int, str], stream: str = "output") -> List[str]:
        resp = await self._sb._request("GET", f"/processes/{c.seg(pid)}/{_stream_name(stream)}")
        return list(resp.json()["lines"])

    async def follow(self, pid: Union[int, str], stream: str = "output") -> AsyncIterator[OutputLine]:
        async with self._sb._stream(
            "GET",
            f"/processes/{c.seg(pid)}/{_stream_name(stream)}/follow",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(30.0, read=None),
        ) as resp:
            async for event in _sse_events(resp):
                if "line" in event:
                    yield OutputLine.from_json(event)

    async def wait(
        self, pid: Union[int, str], *, timeout: Optional[float] = None, poll_interval: float = 0.2
    ) -> ProcessInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await self.get(pid)
            if not info.running:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise SbxTimeoutError(f"process {pid} still running after {timeout} s")
            await asyncio.sleep(poll_interval)


def _stream_name(stream: str) -> str:
    if stream not in ("stdout", "stderr", "output"):
        raise ValueError("stream must be 'stdout', 'stderr' or 'output'")
    return stream


async def _achunks(data: Any) -> AsyncIterator[bytes]:
    if hasattr(data, "__aiter__"):
        async for chunk in data:
            yield chunk
    elif hasattr(data, "read"):
        for chunk in c.file_chunks(data):
            yield chunk
    else:
        for chunk in data:
            yield chunk


class AsyncFiles:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def read(self, path: str) -> bytes:
        resp = await self._sb._request("GET", "/files", params={"path": path}, not_found=SandboxFileNotFoundError)
        return resp.content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def iter_read(self, path: str, chunk_size: int = c.CHUNK) -> AsyncIterator[bytes]:
        async with self._sb._stream(
            "GET", "/files", params={"path": path}, not_found=SandboxFileNotFoundError,
            timeout=httpx.Timeout(60.0, read=300.0),
        ) as resp:
            async for chunk in resp.aiter_bytes(chunk_size):
                yield chunk

    async def download(self, path: str, local_path: Union[str, os.PathLike]) -> int:
        n = 0
        with open(local_path, "wb") as out:
            async for chunk in self.iter_read(path):
                out.write(chunk)
                n += len(chunk)
        return n

    async def write(self, path: str, data: Any) -> None:
        """bytes, str, a binary file object, or a (async) iterable of byte chunks."""
        if isinstance(data, str):
            content: Any = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            content = bytes(data)
        else:
            content = _achunks(data)
        await self._sb._request(
            "PUT", "/files", params={"path": path}, content=content,
            timeout=httpx.Timeout(60.0, read=300.0, write=300.0),
        )

    async def upload(self, local_path: Union[str, os.PathLike], path: str) -> None:
        with open(local_path, "rb") as f:
            await self.write(path, f)

    async def list(self, path: str = "/") -> list[FileEntry]:
        resp = await self._sb._request("GET", "/files/list", params={"path": path}, not_found=SandboxFileNotFoundError)
        return [FileEntry.from_json(e) for e in resp.json().get("entries", [])]

    async def remove(self, path: str) -> None:
        await self._sb._request("DELETE", "/files", params={"path": path}, not_found=SandboxFileNotFoundError)

    async def exists(self, path: str) -> bool:
        parent, _, name = path.rstrip("/").rpartition("/")
        try:
            return any(e.name == name for e in await self.list(parent or "/"))
        except NotFoundError:
            return False


class AsyncPty:
    def __init__(self, sandbox: AsyncSandbox) -> None:
        self._sb = sandbox

    async def create(
        self,
        command: str = "/bin/bash",
        args: Optional[Iterable[str]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        rows: int = 24,
        cols: int = 80,
        user: Optional[Union[str, dict]] = None,
    ) -> "AsyncPtySession":
        env = {"TERM": "xterm-256color", **(self._sb._env(env) or {})}
        body: dict[str, Any] = {"command": command, "args": list(args or []), "env": env, "rows": rows, "cols": cols}
        if cwd is not None:
            body["working_dir"] = cwd
        if user is not None:
            body["user"] = user
        data = (await self._sb._request("POST", "/pty", json=body)).json()
        return await self.connect(data["session_id"], data["token"])

    async def connect(self, session_id: str, token: str) -> "AsyncPtySession":
        sb = self._sb
        url = sb._url(f"/pty/{c.seg(session_id)}/ws")
        headers = {**sb.client._cfg.headers(), **sb._headers, "X-PTY-Token": token}
        ws = await AsyncWebSocket.connect(url, headers)
        session = AsyncPtySession(self, session_id, token, ws)
        await ws.send(BINARY, b"\x02")
        return session

    async def list(self) -> list[PtySessionInfo]:
        data = (await self._sb._request("GET", "/pty")).json()
        return [PtySessionInfo.from_json(s) for s in data.get("sessions", [])]

    async def kill(self, session_id: str) -> None:
        await self._sb._request("DELETE", f"/pty/{c.seg(session_id)}")


class AsyncPtySession:
    """Async twin of :class:`sbx.PtySession`."""

    def __init__(self, pty: AsyncPty, session_id: str, token: str, ws: AsyncWebSocket) -> None:
        self._pty = pty
        self.session_id = session_id
        self.token = token
        self._ws = ws
        self._buffer = b""
        self.exit_code: Optional[int] = None

    async def send(self, data: Union[bytes, str]) -> None:
        await self._ws.send(BINARY, b"\x00" + (data.encode() if isinstance(data, str) else bytes(data)))

    async def resize(self, cols: int, rows: int) -> None:
        await self._ws.send(BINARY, b"\x01" + struct.pack("!HH", cols, rows))

    async def recv(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """The next output chunk; None after the process exited. Raises
        ``TimeoutError`` if nothing arrives within ``timeout`` seconds."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        while True:
            try:
                msg = await asyncio.wait_for(self._ws.recv(), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError("no terminal output within the timeout") from None
            if msg is None:
                reason = self._ws.close_reason
                if self.exit_code is None and reason.startswith("exit:"):
                    with contextlib.suppress(ValueError):
                        self.exit_code = int(reason[5:])
                return None
            opcode, payload = msg
            if opcode != BINARY:
                continue
            if payload[:1] == b"\x00":
                return payload[1:]
            if payload[:1] == b"\x03" and len(payload) >= 5:
                self.exit_code = struct.unpack("!i", payload[1:5])[0]

    async def read_until(self, marker: Union[bytes, str], timeout: float = 30.0) -> bytes:
        marker_b = marker.encode() if isinstance(marker, str) else marker
        deadline = time.monotonic() + timeout
        got = b""
        while marker_b not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SbxTimeoutError(f"{marker!r} did not appear within {timeout} s; got {got[-200:]!r}")
            try:
                chunk = await self.recv(timeout=left)
            except TimeoutError:
                continue
            if chunk is None:
                raise SbxError(f"the terminal exited before {marker!r} appeared; got {got[-200:]!r}")
            got += chunk
        end = got.index(marker_b) + len(marker_b)
        self._buffer = got[end:] + self._buffer
        return got[:end]

    async def wait(self, timeout: Optional[float] = None, on_data: Optional[Callable[[bytes], Any]] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise SbxTimeoutError(f"terminal {self.session_id} still running after {timeout} s")
            try:
                chunk = await self.recv(timeout=left)
            except TimeoutError:
                continue
            if chunk is None:
                break
            await _acall(on_data, chunk)
        if self.exit_code is None:
            raise SbxError(f"terminal {self.session_id} closed without an exit code")
        return self.exit_code

    async def kill(self) -> None:
        try:
            await self._pty.kill(self.session_id)
        except NotFoundError:
            pass

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> "AsyncPtySession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.exit_code is None:
            await self.kill()
        await self.close()
