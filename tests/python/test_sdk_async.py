"""The sbx Python SDK's asyncio API against a real sbx server (each test drives its own event loop)."""

import asyncio
import os
import re
import uuid

import pytest

from sbx import (
    AsyncSandbox,
    AsyncSandboxClient,
    BadRequestError,
    NotFoundError,
    ProcessStatus,
    SandboxClient,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
    SandboxStatus,
    SnapshotNotFoundError,
)


# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


@pytest.fixture(scope="module")
def box_id(sbx):
    """A named sandbox shared by this module (made with the sync client)."""
    with SandboxClient(api_url=sbx.api_url) as client:
        info = client.create(name=f"sdk-async-{uuid.uuid4().hex[:8]}")
        try:
            yield info.sandbox_id
        finally:
            client.delete(info.sandbox_id)


def test_async_client_lifecycle_and_errors(sbx, box_id):
    async def main():
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            info = await client.get(box_id)
            assert info.status == SandboxStatus.RUNNING
            assert box_id in [s.sandbox_id for s in await client.list()]
            new = f"sdk-async-renamed-{uuid.uuid4().hex[:8]}"
            old = info.name
            assert (await client.rename(box_id, new)).name == new
            assert (await client.get(new)).sandbox_id == box_id
            assert (await client.rename(box_id, old)).name == old

            with pytest.raises(SandboxNotFoundError) as e:
                await client.get("sbx-sdk-no-such-sandbox")
            assert e.value.status == 404 and e.value.code == "not_found"
            with pytest.raises(BadRequestError) as e:
                await client.create(cpus=999)
            assert e.value.status == 400
            with pytest.raises(SnapshotNotFoundError):
                await client.get_snapshot("snap-sdk-no-such-snapshot")

    asyncio.run(main())


def test_async_commands_processes_files(sbx, box_id, tmp_path):
    async def main():
        async with AsyncSandbox.connect(box_id, api_url=sbx.api_url, env={"BASE": "b"}) as box:
            seen = []

            async def on_out(line):
                seen.append(line)

            result = await box.commands.run(
                "echo $A$BASE; pwd; echo e >&2; exit 4",
                env={"A": "a"},
                cwd="/var",
                on_stdout=on_out,
                on_stderr=seen.append,
            )
            assert (result.exit_code, result.stdout, result.stderr) == (4, "ab\n/var\n", "e\n")
            assert sorted(seen) == sorted(["ab", "/var", "e"])

            # Commands run concurrently over one client.
            outs = await asyncio.gather(*(box.commands.run(f"sleep 0.2; echo {i}") for i in range(3)))
            assert [r.stdout for r in outs] == ["0\n", "1\n", "2\n"]

            timed = await box.commands.run("sleep 30", timeout=1)
            assert timed.timed_out and timed.signal == 9

            proc = await box.processes.start("cat", ["-n"], stdin=True)
            await box.processes.write_stdin(proc.pid, "one\ntwo\n")
            await box.processes.close_stdin(proc.pid)
            lines = [o.line.split() async for o in box.processes.follow(proc.pid)]
            assert lines == [["1", "one"], ["2", "two"]]
            done = await box.processes.wait(proc.pid, timeout=30)
            assert done.status == ProcessStatus.EXITED and done.exit_code == 0

            payload = os.urandom(2 * 1024 * 1024 + 3)

            async def chunks():
                for i in range(0, len(payload), 500_000):
                    yield payload[i : i + 500_000]

            await box.files.write("/tmp/async/blob.bin", chunks())
            assert await box.files.read("/tmp/async/blob.bin") == payload
            assert b"".join([c async for c in box.files.iter_read("/tmp/async/blob.bin")]) == payload
            local = tmp_path / "up.txt"
            local.write_text("uploaded\n")
            await box.files.upload(local, "/tmp/async/up.txt")
            names = {e.name: e.size for e in await box.files.list("/tmp/async")}
            assert names == {"blob.bin": len(payload), "up.txt": 9}
            await box.files.remove("/tmp/async")
            with pytest.raises(SandboxFileNotFoundError):
                await box.files.read("/tmp/async/up.txt")

        # connect() handles leave the sandbox running.
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            assert (await client.get(box_id)).status == SandboxStatus.RUNNING

    asyncio.run(main())


def test_async_pty(sbx, box_id):
    async def main():
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            box = await client.connect(box_id)
            async with await box.pty.create("/bin/sh") as term:
                await term.send("echo $((6*7))\n")
                assert b"42" in await term.read_until("42\r\n", timeout=30)
                await term.send("echo hi; exit 5\n")
                output = bytearray()
                assert await term.wait(timeout=30, on_data=output.extend) == 5
            assert re.search(rb"[\r\n]hi\r\n", bytes(output)), bytes(output)

    asyncio.run(main())


def test_async_snapshot_restore_and_create_context(sbx, box_id):
    async def main():
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            box = await client.connect(box_id)
            await box.files.write("/srv/state.txt", "snapshotted\n")
            snap = await box.create_snapshot(timeout=300)
            try:
                assert snap.is_ready
                async with AsyncSandbox.create(snapshot_id=snap.snapshot_id, api_url=sbx.api_url) as restored:
                    assert await restored.files.read_text("/srv/state.txt") == "snapshotted\n"
                    restored_id = restored.sandbox_id
                # Leaving `async with AsyncSandbox.create(...)` terminated it.
                assert (await client.get(restored_id)).status == SandboxStatus.TERMINATED
            finally:
                await client.delete_snapshot(snap.snapshot_id)
            with pytest.raises(NotFoundError):
                await client.get_snapshot(snap.snapshot_id)

    asyncio.run(main())


def test_async_logs(sbx, box_id):
    async def main():
        async with AsyncSandbox.connect(box_id, api_url=sbx.api_url) as box:
            await box.commands.run("echo", ["async-log-line"])
            for _ in range(100):
                page = await box.get_logs(body="async-log-line", levels=["info"])
                if page.entries:
                    break
                await asyncio.sleep(0.1)
            assert [e.body for e in page.entries] == ["async-log-line"]
            pid = page.entries[0].process_id
            procs = await box.list_log_processes()
            assert any(p.process_id == pid and p.command == "echo async-log-line" for p in procs)
            # Following a live sandbox: the tail, then new lines.
            follow = box.follow_logs(levels=["info"], tail=1, poll_interval=0.1)
            assert (await follow.__anext__()).body == "async-log-line"
            await box.commands.run("echo", ["async-followed"])
            assert (await asyncio.wait_for(follow.__anext__(), 10)).body == "async-followed"
            await follow.aclose()

    asyncio.run(main())
