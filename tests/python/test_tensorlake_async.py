"""The tensorlake client's asyncio API (AsyncSandbox, AsyncSandboxClient, AsyncPty,
AsyncTcpTunnel): its own transports, so the same flows once more."""

import asyncio
import contextlib

import pytest
from tensorlake.sandbox import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandExitReason,
    ProcessStatus,
    SandboxNotFoundError,
    SandboxStatus,
    SnapshotStatus,
    SnapshotType,
    StdinMode,
)

from tl_helpers import tl, unique  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


async def until(probe, what: str, timeout: float = 30.0):
    """Awaits `probe()` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def async_sandbox(tl, **create_args):
    sandbox = await AsyncSandbox.create(api_url=tl.api_url, **create_args)
    try:
        yield sandbox
    finally:
        with contextlib.suppress(SandboxNotFoundError):
            await AsyncSandboxClient.for_localhost(api_url=tl.api_url).delete(sandbox.sandbox_id)


def test_async_lifecycle_commands_and_files(tl):
    async def scenario():
        client = AsyncSandboxClient.for_localhost(api_url=tl.api_url)
        name = unique("tl-async")
        async with async_sandbox(tl, name=name) as sandbox:
            assert await sandbox.status() == SandboxStatus.RUNNING
            assert (await client.get(name)).value.sandbox_id == sandbox.sandbox_id
            assert sandbox.sandbox_id in {s.sandbox_id for s in await client.list()}

            result = await sandbox.run("sh", args=["-c", "echo $X; pwd; exit 3"], env={"X": "async"}, working_dir="/etc")
            assert (result.exit_code, result.stdout.splitlines()) == (3, ["async", "/etc"])
            slow = await sandbox.run("sleep", args=["60"], timeout=0.5)
            assert slow.reason == CommandExitReason.TIMED_OUT

            await sandbox.write_file("/tmp/async.bin", b"\x00async\xff")
            assert (await sandbox.read_file("/tmp/async.bin")).value == b"\x00async\xff"
            names = {e.name for e in (await sandbox.list_directory("/tmp")).value.entries}
            assert "async.bin" in names
            await sandbox.delete_file("/tmp/async.bin")

            proc = (await sandbox.start_process("cat", stdin_mode=StdinMode.PIPE)).value
            await sandbox.write_stdin(proc.pid, b"through stdin\n")
            await sandbox.close_stdin(proc.pid)
            events = await sandbox.follow_stdout(proc.pid)
            assert [e.line for e in events] == ["through stdin"]
            done = await until(
                lambda: _ended(sandbox, proc.pid), "cat to exit"
            )
            assert (done.status, done.exit_code) == (ProcessStatus.EXITED, 0)

            again = await AsyncSandbox.connect(name, api_url=tl.api_url)
            assert (await again.run("echo", args=["connected"])).stdout == "connected"
        assert (await client.get(sandbox.sandbox_id)).value.status == SandboxStatus.TERMINATED

    asyncio.run(scenario())


async def _ended(sandbox, pid):
    info = (await sandbox.get_process(pid)).value
    return info if info.status != ProcessStatus.RUNNING else None


def test_async_pty_and_tunnel(tl):
    async def scenario():
        async with async_sandbox(tl) as sandbox:
            seen = bytearray()
            pty = await sandbox.create_pty(
                "sh", env={"PS1": "# "}, rows=10, cols=50, on_data=seen.extend
            )
            await pty.send_input("stty size; exit 9\n")
            assert await pty.wait(timeout=30) == 9
            assert b"10 50" in bytes(seen)

            server = (
                await sandbox.start_process(
                    "python3", args=["-m", "http.server", "7002", "--bind", "127.0.0.1"], working_dir="/etc"
                )
            ).value
            tunnel = await sandbox.create_tunnel(7002, local_port=0)
            try:
                async def fetch():
                    try:
                        reader, writer = await asyncio.open_connection(tunnel.local_host, tunnel.local_port)
                        writer.write(b"GET /hostname HTTP/1.0\r\n\r\n")
                        await writer.drain()
                        data = await asyncio.wait_for(reader.read(), 10)
                        writer.close()
                        return data if data.startswith(b"HTTP/1.0 200") else None
                    except OSError:
                        return None

                reply = await until(fetch, "the http server through the async tunnel")
                hostname = (await sandbox.read_file("/etc/hostname")).value
                assert reply.endswith(hostname)
            finally:
                await tunnel.close()
                await sandbox.kill_process(server.pid)

    asyncio.run(scenario())


def test_async_snapshot_suspend_and_copy(tl):
    async def scenario():
        client = AsyncSandboxClient.for_localhost(api_url=tl.api_url)
        async with async_sandbox(tl, name=unique("tl-async-snap")) as source:
            await source.write_file("/root/a.txt", b"async snapshot")
            snap = (
                await client.snapshot_and_wait(
                    source.sandbox_id, snapshot_type=SnapshotType.MEMORY, poll_interval=0.2
                )
            ).value
            try:
                assert snap.status in (SnapshotStatus.LOCAL_READY, SnapshotStatus.COMPLETED)
                async with async_sandbox(tl, snapshot_id=snap.snapshot_id) as restored:
                    assert (await restored.read_file("/root/a.txt")).value == b"async snapshot"
            finally:
                await client.delete_snapshot(snap.snapshot_id)

            await source.suspend(poll_interval=0.2)
            assert await source.status() == SandboxStatus.SUSPENDED
            await source.resume(poll_interval=0.2)
            assert (await source.read_file("/root/a.txt")).value == b"async snapshot"

            copies = (await source.copy()).value
            fork_id = copies.sandboxes[0].sandbox_id
            try:
                fork = await AsyncSandbox.connect(fork_id, api_url=tl.api_url)
                assert (await fork.read_file("/root/a.txt")).value == b"async snapshot"
            finally:
                await client.delete(fork_id)
                for s in await client.list_sandbox_snapshots(source.sandbox_id):
                    await client.delete_snapshot(s.snapshot_id)

    asyncio.run(scenario())
