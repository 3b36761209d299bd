"""A connected sandbox (synchronous): commands, background processes, files and PTYs."""

from __future__ import annotations

import os
import struct
import time
from typing import List, Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Union

import httpx

from . import _common as c
from ._ws import BINARY, WebSocket
from .client import SandboxClient
from .errors import CommandError, NotFoundError, SandboxFileNotFoundError, SbxError, SbxTimeoutError
from .models import (
    CheckpointType,
    CommandResult,
    CopyResult,
    FileEntry,
    OutputLine,
    ProcessInfo,
    PtySessionInfo,
    SandboxInfo,
    SnapshotInfo,
    SnapshotType,
)

__all__ = ["Sandbox", "Commands", "Processes", "Files", "Pty", "PtySession"]

FileData = Union[bytes, bytearray, memoryview, str, BinaryIO, Iterable[bytes]]


class Sandbox:
    """A running sandbox. Get one from :meth:`Sandbox.create`,
    :meth:`Sandbox.connect` or :meth:`SandboxClient.create_and_connect`.

    Daemon calls go through the sbx proxy (the ``sandbox_url`` the server
    returned) with the ``X-Tensorlake-Sandbox-Id`` header.
    As a context manager it terminates a sandbox it created on exit (one it
    only connected to is left running).
    """

    def __init__(
        self,
        client: SandboxClient,
        info: SandboxInfo,
        *,
        env: Optional[Mapping[str, str]] = None,
        owns_client: bool = False,
        owns_sandbox: bool = False,
    ) -> None:
        self.client = client
        self.sandbox_id = info.sandbox_id
        self.name = info.name
        #: Default environment of commands, processes and PTYs started from here.
        self.env: dict[str, str] = dict(env or {})
        self._owns_client = owns_client
        self._owns_sandbox = owns_sandbox
        self._base = client._cfg.daemon_base(info.sandbox_url)
        self._headers = {c.SANDBOX_HEADER: self.sandbox_id}
        self.commands = Commands(self)
        self.processes = Processes(self)
        self.files = Files(self)
        self.pty = Pty(self)

    def __repr__(self) -> str:
        return f"Sandbox(sandbox_id={self.sandbox_id!r}, name={self.name!r})"

    # --- construction ------------------------------------------------------

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
    ) -> "Sandbox":
        """Creates a sandbox (or restores ``snapshot_id``) with its own client.
        Takes the arguments of :meth:`SandboxClient.create`; ``env`` is the
        default environment of everything started through this object."""
        client = SandboxClient(api_url, api_key, namespace)
        try:
            kwargs.pop("wait", None)
            info = client.create(image, snapshot_id=snapshot_id, **kwargs)
        except BaseException:
            client.close()
            raise
        return cls(client, info, env=env, owns_client=True, owns_sandbox=True)

    @classmethod
    def connect(
        cls,
        identifier: str,
        *,
        env: Optional[Mapping[str, str]] = None,
        api_url: Optional[str] = None,
        api_key: Optional[str] = None,
        namespace: Optional[str] = None,
    ) -> "Sandbox":
        """A handle on an existing sandbox (id or name), with its own client."""
        client = SandboxClient(api_url, api_key, namespace)
        try:
            info = client.get(identifier)
        except BaseException:
            client.close()
            raise
        return cls(client, info, env=env, owns_client=True)

    # --- lifecycle ---------------------------------------------------------

    def info(self) -> SandboxInfo:
        return self.client.get(self.sandbox_id)

    @property
    def status(self) -> Any:
        return self.info().status

    def rename(self, name: Optional[str]) -> SandboxInfo:
        info = self.client.rename(self.sandbox_id, name)
        self.name = info.name
        return info

    def suspend(self, **kwargs: Any) -> SandboxInfo:
        return self.client.suspend(self.sandbox_id, **kwargs)

    def resume(self, **kwargs: Any) -> SandboxInfo:
        return self.client.resume(self.sandbox_id, **kwargs)

    def create_snapshot(
        self,
        snapshot_type: Union[SnapshotType, str] = SnapshotType.FILESYSTEM,
        *,
        wait: bool = True,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> SnapshotInfo:
        """Snapshots this sandbox (which keeps running); with ``wait`` returns
        once the snapshot can be restored with ``Sandbox.create(snapshot_id=...)``."""
        if not wait:
            return self.client.snapshot(self.sandbox_id, snapshot_type)
        return self.client.snapshot_and_wait(
            self.sandbox_id, snapshot_type, timeout=timeout, poll_interval=poll_interval
        )

    def checkpoint(
        self,
        checkpoint_type: Union[CheckpointType, str] = CheckpointType.MEMORY,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
    ) -> SnapshotInfo:
        return self.client.checkpoint(self.sandbox_id, checkpoint_type, timeout=timeout, poll_interval=poll_interval)

    def get_logs(self, **kwargs: Any) -> Any:
        """This sandbox's persisted logs: see :meth:`SandboxClient.get_logs`."""
        return self.client.get_logs(self.sandbox_id, **kwargs)

    def list_log_processes(self) -> Any:
        return self.client.list_log_processes(self.sandbox_id)

    def follow_logs(self, **kwargs: Any) -> Any:
        """See :meth:`SandboxClient.follow_logs`."""
        return self.client.follow_logs(self.sandbox_id, **kwargs)

    def copy(self, times: int = 1) -> list["Sandbox"]:
        """Live copies of this sandbox, each connected with its own client;
        they are terminated when used as context managers. The intermediate
        memory snapshot is deleted."""
        result: CopyResult = self.client.copy(self.sandbox_id, times)
        if result.snapshot_id:
            try:
                self.client.delete_snapshot(result.snapshot_id)
            except NotFoundError:
                pass
        cfg = self.client._cfg
        return [
            Sandbox(
                SandboxClient(cfg.api_url, cfg.api_key, cfg.namespace, proxy_url=cfg.proxy_url),
                info,
                env=self.env,
                owns_client=True,
                owns_sandbox=True,
            )
            for info in result.sandboxes
        ]

    def kill(self) -> None:
        """Terminates the sandbox (and closes this object's own client)."""
        try:
            self.client.delete(self.sandbox_id)
        finally:
            self.close()

    def close(self) -> None:
        """Closes this object's own HTTP client; the sandbox keeps running."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owns_sandbox:
            self.kill()
        else:
            self.close()

    # --- daemon plumbing ---------------------------------------------------

    def _url(self, path: str) -> str:
        return self._base + path

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self._headers, **kw.pop("headers", {})}
        return self.client._t.request(method, self._url(path), headers=headers, **kw)

    def _stream(self, method: str, path: str, **kw: Any) -> Any:
        headers = {**self._headers, **kw.pop("headers", {})}
        return self.client._t.stream(method, self._url(path), headers=headers, **kw)

    def _env(self, env: Optional[Mapping[str, str]]) -> Optional[dict[str, str]]:
        return c.merge_env(self.env, env)


def _call(cb: Optional[Callable[[str], Any]], value: Any) -> None:
    if cb is not None:
        cb(value)


def _sse_events(resp: httpx.Response) -> Iterator[dict]:
    dec = c.SSEDecoder()
    for line in _lines(resp.iter_bytes()):
        event = dec.feed(line)
        if event is not None:
            yield event
    event = dec.flush()
    if event is not None:
        yield event


def _lines(chunks: Iterable[bytes]) -> Iterator[str]:
    buf = b""
    for chunk in chunks:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")


class Commands:
    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def run(
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
        """Runs a command to completion, streaming its output.

        Without ``args``, ``cmd`` is a shell command line (``/bin/sh -c cmd``);
        with ``args``, ``cmd`` is the program. ``on_stdout``/``on_stderr`` get
        each output line (without its newline) as it arrives. ``timeout``
        (seconds) kills the command: the result then has ``timed_out`` set.
        ``check=True`` raises :class:`CommandError` unless it exits 0.
        """
        body = c.process_body(cmd, args, self._sb._env(env), cwd, user, timeout=timeout)
        acc = c.RunAccumulator()
        read_timeout = None if timeout is None else timeout + 60
        with self._sb._stream(
            "POST",
            "/processes/run",
            json=body,
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(30.0, read=read_timeout),
        ) as resp:
            for event in _sse_events(resp):
                out = acc.add(event)
                if out is not None:
                    _call(on_stderr if out.stream == "stderr" else on_stdout, out.line)
        result = acc.result(c.describe(cmd, args))
        if check and not result.ok:
            raise CommandError(result)
        return result


class Processes:
    """Background processes: started, then watched, fed and stopped by pid (or name)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def start(
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
        """Starts a process in the background (``cmd``/``args`` as in
        ``commands.run``). ``stdin=True`` gives it a pipe to :meth:`write_stdin`.
        ``name``, ``restart`` (``{"policy": "on_failure", ...}``) and
        ``health_check`` make it a managed process (see the wire contract)."""
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
        return ProcessInfo.from_json(self._sb._request("POST", "/processes", json=body).json())

    def list(self) -> list[ProcessInfo]:
        data = self._sb._request("GET", "/processes").json()
        return [ProcessInfo.from_json(p) for p in data.get("processes", [])]

    def get(self, pid: Union[int, str]) -> ProcessInfo:
        return ProcessInfo.from_json(self._sb._request("GET", f"/processes/{c.seg(pid)}").json())

    def kill(self, pid: Union[int, str]) -> ProcessInfo:
        """SIGKILLs the process group, stops its supervision and forgets it."""
        return ProcessInfo.from_json(self._sb._request("DELETE", f"/processes/{c.seg(pid)}").json())

    def signal(self, pid: Union[int, str], sig: Union[int, str] = 15) -> None:
        """Sends a signal (number or name: 15, "TERM", "SIGTERM") to the process group."""
        self._sb._request("POST", f"/processes/{c.seg(pid)}/signal", json={"signal": c.signal_number(sig)})

    def restart(self, pid: Union[int, str]) -> ProcessInfo:
        return ProcessInfo.from_json(self._sb._request("POST", f"/processes/{c.seg(pid)}/restart").json())

    def write_stdin(self, pid: Union[int, str], data: Union[bytes, str, Iterable[bytes]]) -> None:
        """Writes to the stdin pipe of a process started with ``stdin=True``."""
        content = data.encode() if isinstance(data, str) else data
        self._sb._request("POST", f"/processes/{c.seg(pid)}/stdin", content=content)

    def close_stdin(self, pid: Union[int, str]) -> None:
        self._sb._request("POST", f"/processes/{c.seg(pid)}/stdin/close")

    def output(self, pid: Union[int, str], stream: str = "output") -> List[str]:
        """Output lines so far: ``stdout``, ``stderr`` or both (``output``)."""
        return list(self._sb._request("GET", f"/processes/{c.seg(pid)}/{_stream_name(stream)}").json()["lines"])

    def follow(self, pid: Union[int, str], stream: str = "output") -> Iterator[OutputLine]:
        """Yields output lines from the start, live, until the process's output ends."""
        with self._sb._stream(
            "GET",
            f"/processes/{c.seg(pid)}/{_stream_name(stream)}/follow",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(30.0, read=None),
        ) as resp:
            for event in _sse_events(resp):
                if "line" in event:
                    yield OutputLine.from_json(event)

    def wait(self, pid: Union[int, str], *, timeout: Optional[float] = None, poll_interval: float = 0.2) -> ProcessInfo:
        """Polls until the process has ended; returns its final info."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.get(pid)
            if not info.running:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise SbxTimeoutError(f"process {pid} still running after {timeout} s")
            time.sleep(poll_interval)


def _stream_name(stream: str) -> str:
    if stream not in ("stdout", "stderr", "output"):
        raise ValueError("stream must be 'stdout', 'stderr' or 'output'")
    return stream


class Files:
    """Files inside the sandbox. Reads and writes stream: large files never sit in memory whole
    unless you ask for ``bytes``."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def _q(self, path: str) -> dict[str, str]:
        return {"path": path}

    def read(self, path: str) -> bytes:
        return self._sb._request("GET", "/files", params=self._q(path), not_found=SandboxFileNotFoundError).content

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read(path).decode(encoding)

    def iter_read(self, path: str, chunk_size: int = c.CHUNK) -> Iterator[bytes]:
        """Yields the file in chunks as it downloads."""
        with self._sb._stream(
            "GET", "/files", params=self._q(path), not_found=SandboxFileNotFoundError,
            timeout=httpx.Timeout(60.0, read=300.0),
        ) as resp:
            yield from resp.iter_bytes(chunk_size)

    def download(self, path: str, local_path: Union[str, os.PathLike]) -> int:
        """Streams a sandbox file to a local file; returns the byte count."""
        n = 0
        with open(local_path, "wb") as out:
            for chunk in self.iter_read(path):
                out.write(chunk)
                n += len(chunk)
        return n

    def write(self, path: str, data: FileData) -> None:
        """Writes (replaces) a file, creating parent directories. ``data`` may be
        bytes, str (UTF-8), a binary file object or an iterable of byte chunks
        (streamed). The file appears whole or not at all."""
        if isinstance(data, str):
            content: Any = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            content = bytes(data)
        elif hasattr(data, "read"):
            content = c.file_chunks(data)
        else:
            content = data
        self._sb._request(
            "PUT", "/files", params=self._q(path), content=content, timeout=httpx.Timeout(60.0, read=300.0, write=300.0)
        )

    def upload(self, local_path: Union[str, os.PathLike], path: str) -> None:
        """Streams a local file into the sandbox."""
        with open(local_path, "rb") as f:
            self.write(path, f)

    def list(self, path: str = "/") -> list[FileEntry]:
        data = self._sb._request("GET", "/files/list", params=self._q(path), not_found=SandboxFileNotFoundError).json()
        return [FileEntry.from_json(e) for e in data.get("entries", [])]

    def remove(self, path: str) -> None:
        """Deletes a file, or a directory with everything in it."""
        self._sb._request("DELETE", "/files", params=self._q(path), not_found=SandboxFileNotFoundError)

    def exists(self, path: str) -> bool:
        parent, _, name = path.rstrip("/").rpartition("/")
        try:
            return any(e.name == name for e in self.list(parent or "/"))
        except NotFoundError:
            return False


class Pty:
    """Interactive terminals (a process on a pseudo-terminal, over a WebSocket)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def create(
        self,
        command: str = "/bin/bash",
        args: Optional[Iterable[str]] = None,
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        rows: int = 24,
        cols: int = 80,
        user: Optional[Union[str, dict]] = None,
    ) -> "PtySession":
        """Starts ``command`` on a terminal and connects to it. ``TERM`` defaults to ``xterm-256color``."""
        env = {"TERM": "xterm-256color", **(self._sb._env(env) or {})}
        body: dict[str, Any] = {"command": command, "args": list(args or []), "env": env, "rows": rows, "cols": cols}
        if cwd is not None:
            body["working_dir"] = cwd
        if user is not None:
            body["user"] = user
        data = self._sb._request("POST", "/pty", json=body).json()
        return self.connect(data["session_id"], data["token"])

    def connect(self, session_id: str, token: str) -> "PtySession":
        """Attaches to a session (one client at a time)."""
        sb = self._sb
        url = sb._url(f"/pty/{c.seg(session_id)}/ws")
        headers = {**sb.client._cfg.headers(), **sb._headers, "X-PTY-Token": token}
        ws = WebSocket.connect(url, headers)
        session = PtySession(self, session_id, token, ws)
        ws.send(BINARY, b"\x02")  # ready: the server starts sending output
        return session

    def list(self) -> list[PtySessionInfo]:
        data = self._sb._request("GET", "/pty").json()
        return [PtySessionInfo.from_json(s) for s in data.get("sessions", [])]

    def kill(self, session_id: str) -> None:
        self._sb._request("DELETE", f"/pty/{c.seg(session_id)}")


class PtySession:
    """A connected terminal. ``recv`` returns output chunks (bytes) and None
    once the process exited; ``exit_code`` is then set."""

    def __init__(self, pty: Pty, session_id: str, token: str, ws: WebSocket) -> None:
        self._pty = pty
        self.session_id = session_id
        self.token = token
        self._ws = ws
        self._buffer = b""
        self.exit_code: Optional[int] = None

    def send(self, data: Union[bytes, str]) -> None:
        """Types ``data`` into the terminal (``"echo hi\\n"``)."""
        self._ws.send(BINARY, b"\x00" + (data.encode() if isinstance(data, str) else bytes(data)))

    def resize(self, cols: int, rows: int) -> None:
        self._ws.send(BINARY, b"\x01" + struct.pack("!HH", cols, rows))

    def recv(self, timeout: Optional[float] = None) -> Optional[bytes]:
        """The next output chunk; None after the process exited. Raises
        ``TimeoutError`` if nothing arrives within ``timeout`` seconds."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        while True:
            msg = self._ws.recv(timeout)
            if msg is None:
                self._exit_from_close()
                return None
            opcode, payload = msg
            if opcode != BINARY:
                continue  # text frames are not part of the PTY protocol
            if payload[:1] == b"\x00":
                return payload[1:]
            if payload[:1] == b"\x03" and len(payload) >= 5:
                self.exit_code = struct.unpack("!i", payload[1:5])[0]

    def _exit_from_close(self) -> None:
        reason = self._ws.close_reason
        if self.exit_code is None and reason.startswith("exit:"):
            try:
                self.exit_code = int(reason[5:])
            except ValueError:
                pass

    def read_until(self, marker: Union[bytes, str], timeout: float = 30.0) -> bytes:
        """Reads until ``marker`` appears; returns everything up to and
        including it (the rest stays for the next read)."""
        marker_b = marker.encode() if isinstance(marker, str) else marker
        deadline = time.monotonic() + timeout
        got = b""
        while marker_b not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SbxTimeoutError(f"{marker!r} did not appear within {timeout} s; got {got[-200:]!r}")
            chunk = self.recv(timeout=left)
            if chunk is None:
                raise SbxError(f"the terminal exited before {marker!r} appeared; got {got[-200:]!r}")
            got += chunk
        end = got.index(marker_b) + len(marker_b)
        self._buffer = got[end:] + self._buffer
        return got[:end]

    def wait(self, timeout: Optional[float] = None, on_data: Optional[Callable[[bytes], Any]] = None) -> int:
        """Reads until the process exits (passing output to ``on_data``); returns its exit code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise SbxTimeoutError(f"terminal {self.session_id} still running after {timeout} s")
            chunk = self.recv(timeout=left)
            if chunk is None:
                break
            if on_data is not None:
                on_data(chunk)
        if self.exit_code is None:
            raise SbxError(f"terminal {self.session_id} closed without an exit code")
        return self.exit_code

    def kill(self) -> None:
        """Kills the terminal's process."""
        try:
            self._pty.kill(self.session_id)
        except NotFoundError:
            pass  # already exited

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> "PtySession":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.exit_code is None:
            self.kill()
        self.close()
