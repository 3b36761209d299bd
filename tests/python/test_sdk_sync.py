"""The sbx Python SDK (synchronous API) against a real sbx server."""

import hashlib
import os
import re
import time
import uuid

import pytest

from sbx import (
    BadRequestError,
    CheckpointType,
    CommandError,
    ConflictError,
    NotFoundError,
    ProcessStatus,
    Sandbox,
    SandboxClient,
    SandboxFileNotFoundError,
    SandboxNotFoundError,
    SandboxStatus,
    SbxError,
    SnapshotNotFoundError,
    SnapshotStatus,
    SnapshotType,
    ValidationError,
)


# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def client(sbx):
    with SandboxClient(api_url=sbx.api_url) as c:
        yield c


@pytest.fixture(scope="module")
def box(client):
    """One named sandbox shared by the tests of this module."""
    sandbox = client.create_and_connect(name=unique("sdk-sync"), env={"SDK_DEFAULT": "from-create"})
    try:
        yield sandbox
    finally:
        client.delete(sandbox.sandbox_id)


@pytest.fixture
def snapshots(client):
    """Snapshot ids to delete after the test."""
    ids: list[str] = []
    yield ids
    for sid in ids:
        try:
            client.delete_snapshot(sid)
        except NotFoundError:
            pass


def test_get_list_rename(client, box):
    info = client.get(box.sandbox_id)
    assert info.status == SandboxStatus.RUNNING
    assert info.name == box.name
    assert info.resources.cpus == 1.0 and info.resources.memory_mb == 1024
    assert client.get(box.name).sandbox_id == box.sandbox_id
    assert box.sandbox_id in [s.sandbox_id for s in client.list()]
    assert box.sandbox_id in [s.sandbox_id for s in client.list(status="running")]

    old, new = box.name, unique("sdk-renamed")
    renamed = box.rename(new)
    try:
        assert renamed.name == new and box.name == new
        assert client.get(new).sandbox_id == box.sandbox_id
        with pytest.raises(SandboxNotFoundError):
            client.get(old)
    finally:
        client.rename(box.sandbox_id, old)
        box.name = old
    assert client.get(old).sandbox_id == box.sandbox_id


def test_network_policy_update(client):
    sandbox = client.create(allow_internet_access=True)
    try:
        walled = client.update(
            sandbox.sandbox_id,
            network={"allow_internet_access": False, "allow_out": ["203.0.113.0/24", "pypi.org"]},
        )
        assert not walled.network.allow_internet_access
        assert walled.network.allow_out == ["203.0.113.0/24", "pypi.org"]
        back = client.update(sandbox.sandbox_id, network=None)
        assert back.network.allow_internet_access and back.network.allow_out == []
    finally:
        client.delete(sandbox.sandbox_id)


def test_create_delete_and_context_manager(client, sbx):
    with Sandbox.create(api_url=sbx.api_url, cpus=1, memory_mb=1024, timeout_secs=600) as sandbox:
        info = sandbox.info()
        assert info.status == SandboxStatus.RUNNING and info.timeout_secs == 600
        assert sandbox.commands.run("echo", ["alive"]).stdout == "alive\n"
        # A handle from connect() leaves the sandbox running when it closes.
        with Sandbox.connect(sandbox.sandbox_id, api_url=sbx.api_url) as other:
            assert other.commands.run("true").exit_code == 0
        assert client.get(sandbox.sandbox_id).status == SandboxStatus.RUNNING
    # Leaving the `with` of Sandbox.create terminated it.
    assert client.get(sandbox.sandbox_id).status == SandboxStatus.TERMINATED
    assert sandbox.sandbox_id not in [s.sandbox_id for s in client.list()]
    client.delete(sandbox.sandbox_id)  # idempotent


def test_create_without_wait(client):
    info = client.create(wait=False)
    try:
        assert info.status == SandboxStatus.PENDING
        assert client.wait_until_running(info.sandbox_id, timeout=120).status == SandboxStatus.RUNNING
        assert client.connect(info.sandbox_id).commands.run("echo ok").stdout == "ok\n"
    finally:
        client.delete(info.sandbox_id)


def test_run_env_cwd_and_streaming(box):
    out, err = [], []
    result = box.commands.run(
        "echo $A $SDK_DEFAULT; pwd; echo warn >&2; echo second; exit 3",
        env={"A": "1"},
        cwd="/tmp",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert result.exit_code == 3 and not result.ok
    assert result.reason == "exited"
    assert out == ["1 from-create", "/tmp", "second"]
    assert err == ["warn"]
    assert result.stdout == "1 from-create\n/tmp\nsecond\n"
    assert result.stderr == "warn\n"

    # With args the command is executed directly, not through a shell.
    direct = box.commands.run("echo", ["$HOME", "a b"])
    assert direct.stdout == "$HOME a b\n"

    with pytest.raises(CommandError) as e:
        box.commands.run("echo boom >&2; exit 2", check=True)
    assert e.value.result.exit_code == 2 and "boom" in str(e.value)


def test_run_timeout(box):
    result = box.commands.run("echo started; sleep 30", timeout=1)
    assert result.timed_out
    assert result.exit_code is None and result.signal == 9
    assert result.stdout == "started\n"


def test_run_unknown_program_is_a_bad_request(box):
    with pytest.raises(BadRequestError) as e:
        box.commands.run("/no/such/program", [])
    assert e.value.status == 400


def test_background_process_with_stdin_and_follow(box):
    proc = box.processes.start("tr a-z A-Z", stdin=True)
    assert proc.status == ProcessStatus.RUNNING and proc.stdin_writable
    assert proc.pid in [p.pid for p in box.processes.list()]
    box.processes.write_stdin(proc.pid, "hello\n")
    box.processes.write_stdin(proc.pid, b"world\n")
    box.processes.close_stdin(proc.pid)
    lines = [(o.line, o.stream) for o in box.processes.follow(proc.pid)]
    assert lines == [("HELLO", "stdout"), ("WORLD", "stdout")]
    done = box.processes.wait(proc.pid, timeout=30)
    assert done.status == ProcessStatus.EXITED and done.exit_code == 0
    assert box.processes.output(proc.pid, "stdout") == ["HELLO", "WORLD"]
    assert box.processes.output(proc.pid, "stderr") == []


def test_background_process_signal_and_kill(box):
    proc = box.processes.start("sleep", ["300"])
    box.processes.signal(proc.pid, "TERM")
    info = box.processes.wait(proc.pid, timeout=30)
    assert info.status == ProcessStatus.SIGNALED and info.signal == 15

    proc = box.processes.start("echo out; echo err >&2; sleep 300")
    lines = []
    for line in box.processes.follow(proc.pid):
        lines.append((line.line, line.stream))
        if len(lines) == 2:
            break
    assert sorted(lines) == [("err", "stderr"), ("out", "stdout")]
    killed = box.processes.kill(proc.pid)
    assert killed.status == ProcessStatus.SIGNALED and killed.signal == 9
    with pytest.raises(NotFoundError):
        box.processes.get(proc.pid)


def test_files(box, tmp_path):
    box.files.write("/tmp/sdk/dir/hello.txt", "héllo\n")
    assert box.files.read_text("/tmp/sdk/dir/hello.txt") == "héllo\n"
    assert box.commands.run("cat /tmp/sdk/dir/hello.txt").stdout == "héllo\n"

    # A few MB of binary, streamed up from a local file and down again.
    payload = os.urandom(3 * 1024 * 1024 + 7)
    local = tmp_path / "blob.bin"
    local.write_bytes(payload)
    box.files.upload(local, "/tmp/sdk/blob.bin")
    assert box.files.read("/tmp/sdk/blob.bin") == payload
    digest = box.commands.run("sha256sum /tmp/sdk/blob.bin").stdout.split()[0]
    assert digest == hashlib.sha256(payload).hexdigest()
    back = tmp_path / "back.bin"
    assert box.files.download("/tmp/sdk/blob.bin", back) == len(payload)
    assert back.read_bytes() == payload
    # Chunks from a generator are streamed as the body.
    box.files.write("/tmp/sdk/chunks.bin", (payload[i : i + 100_000] for i in range(0, len(payload), 100_000)))
    assert b"".join(box.files.iter_read("/tmp/sdk/chunks.bin")) == payload

    entries = {e.name: e for e in box.files.list("/tmp/sdk")}
    assert set(entries) == {"dir", "blob.bin", "chunks.bin"}
    assert entries["dir"].is_dir and not entries["blob.bin"].is_dir
    assert entries["blob.bin"].size == len(payload)
    assert box.files.exists("/tmp/sdk/dir/hello.txt")

    box.files.remove("/tmp/sdk/blob.bin")
    assert not box.files.exists("/tmp/sdk/blob.bin")
    with pytest.raises(SandboxFileNotFoundError) as e:
        box.files.read("/tmp/sdk/blob.bin")
    assert isinstance(e.value, FileNotFoundError) and e.value.status == 404
    box.files.remove("/tmp/sdk")  # a directory, recursively
    with pytest.raises(FileNotFoundError):
        box.files.list("/tmp/sdk")


def test_pty(box):
    with box.pty.create("/bin/bash", rows=30, cols=100) as term:
        assert term.session_id in [s.session_id for s in box.pty.list()]
        term.resize(cols=120, rows=40)
        term.send("stty size\n")
        assert b"40 120" in term.read_until("40 120", timeout=30)
        term.send("echo hi\n")
        term.send("exit 3\n")
        output = bytearray()
        code = term.wait(timeout=30, on_data=output.extend)
    assert code == 3 and term.exit_code == 3
    # "hi" on a line of its own: the command's output, not its echo.
    assert re.search(rb"[\r\n]hi\r\n", bytes(output)), bytes(output)


def test_pty_wrong_token_is_rejected(box):
    session = box.pty.create("/bin/sh")
    try:
        with pytest.raises(SbxError) as e:
            box.pty.connect(session.session_id, "wrong-token")
        assert e.value.status == 403
    finally:
        session.kill()
        session.close()


def test_filesystem_snapshot_and_restore(client, box, sbx, snapshots):
    box.files.write("/opt/app/installed.txt", "numpy-ish\n")
    snap = client.snapshot_and_wait(box.sandbox_id, SnapshotType.FILESYSTEM, timeout=300, poll_interval=0.5)
    snapshots.append(snap.snapshot_id)
    assert snap.status in (SnapshotStatus.LOCAL_READY, SnapshotStatus.COMPLETED) and snap.is_ready
    assert snap.snapshot_type == SnapshotType.FILESYSTEM and snap.sandbox_id == box.sandbox_id
    assert client.get_snapshot(snap.snapshot_id).snapshot_id == snap.snapshot_id
    assert snap.snapshot_id in [s.snapshot_id for s in client.list_snapshots()]
    assert snap.snapshot_id in [s.snapshot_id for s in client.list_snapshots(box.sandbox_id)]

    with Sandbox.create(snapshot_id=snap.snapshot_id, api_url=sbx.api_url) as restored:
        assert restored.sandbox_id != box.sandbox_id
        assert restored.info().snapshot_id == snap.snapshot_id
        assert restored.files.read_text("/opt/app/installed.txt") == "numpy-ish\n"
        # The source keeps running and is independent of the restore.
        restored.files.write("/opt/app/installed.txt", "changed\n")
        assert box.files.read_text("/opt/app/installed.txt") == "numpy-ish\n"

    client.delete_snapshot(snap.snapshot_id)
    with pytest.raises(SnapshotNotFoundError):
        client.get_snapshot(snap.snapshot_id)


def test_memory_checkpoint_and_restore(client, box, sbx, snapshots):
    # A process whose state lives in memory: it counts and writes the count out
    # (to a new file renamed into place: a reader never sees it half-written).
    counter = box.processes.start("i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done")
    try:
        box.commands.run("until [ -s /tmp/count ]; do sleep 0.05; done", timeout=30, check=True)
        ckpt = box.checkpoint(CheckpointType.MEMORY, timeout=300, poll_interval=0.5)
        snapshots.append(ckpt.snapshot_id)
        assert ckpt.is_ready and ckpt.snapshot_type == SnapshotType.MEMORY

        with Sandbox.create(snapshot_id=ckpt.snapshot_id, api_url=sbx.api_url) as restored:
            # The counter came back running: the count keeps growing.
            check = restored.commands.run(
                'a=$(cat /tmp/count); sleep 1; b=$(cat /tmp/count); echo "$a $b"; [ "$b" -gt "$a" ]'
            )
            assert check.exit_code == 0, check
    finally:
        box.processes.kill(counter.pid)


def test_suspend_and_resume_named_sandbox(client, box):
    box.files.write("/root/kept.txt", "still here\n")
    suspended = box.suspend()
    assert suspended.status == SandboxStatus.SUSPENDED
    assert client.get(box.sandbox_id).status == SandboxStatus.SUSPENDED
    resumed = client.resume(box.name, wait_ms=30_000)
    assert resumed.status == SandboxStatus.RUNNING
    assert box.files.read_text("/root/kept.txt") == "still here\n"
    # Resuming a running sandbox is accepted (the target state is reached).
    assert client.resume(box.sandbox_id).status == SandboxStatus.RUNNING


def test_suspend_ephemeral_is_a_bad_request(client):
    info = client.create()
    try:
        with pytest.raises(BadRequestError):
            client.suspend(info.sandbox_id)
    finally:
        client.delete(info.sandbox_id)


def test_copy_twice(client, box):
    box.files.write("/root/source.txt", "from the source\n")
    result = client.copy(box.sandbox_id, times=2)
    try:
        assert result.source_sandbox_id == box.sandbox_id
        assert len(result.sandboxes) == 2
        ids = {s.sandbox_id for s in result.sandboxes}
        assert len(ids) == 2 and box.sandbox_id not in ids
        for info in result.sandboxes:
            assert info.status == SandboxStatus.RUNNING
            copy = client.connect(info.sandbox_id)
            assert copy.files.read_text("/root/source.txt") == "from the source\n"
    finally:
        for info in result.sandboxes:
            client.delete(info.sandbox_id)
        if result.snapshot_id:
            client.delete_snapshot(result.snapshot_id)


def test_errors(client, box):
    with pytest.raises(SandboxNotFoundError) as e:
        client.get("sbx-sdk-no-such-sandbox")
    assert e.value.status == 404 and e.value.code == "not_found"
    assert isinstance(e.value, NotFoundError) and isinstance(e.value, SbxError)
    with pytest.raises(SandboxNotFoundError):
        client.delete("sbx-sdk-no-such-sandbox")
    with pytest.raises(SandboxNotFoundError):
        client.connect("sbx-sdk-no-such-sandbox")

    with pytest.raises(BadRequestError) as e:
        client.create(cpus=999)
    assert e.value.status == 400 and e.value.code == "invalid_argument"
    assert "cpus" in e.value.message
    assert isinstance(e.value, ValidationError)

    with pytest.raises(ConflictError) as e:
        client.create(name=box.name)
    assert e.value.status == 409

    with pytest.raises(SnapshotNotFoundError):
        client.get_snapshot("snap-sdk-no-such-snapshot")
    with pytest.raises(ValueError):
        client.snapshot(box.sandbox_id, "bogus")


def test_logs_filters_paging_and_follow(client):
    sandbox = client.create_and_connect()
    sid = sandbox.sandbox_id
    try:
        sandbox.commands.run("sh", ["-c", "echo sdk-out-1; echo sdk-err-1 >&2; echo sdk-out-2"])
        deadline = time.monotonic() + 10
        while not any(e.body == "sdk-out-2" for e in sandbox.get_logs().entries):
            assert time.monotonic() < deadline, "the output never reached the logs"
            time.sleep(0.1)
        out = client.get_logs(sid, levels=["info"], body="sdk-out")
        assert [e.body for e in out.entries] == ["sdk-out-1", "sdk-out-2"]
        assert all(e.stream == "stdout" and e.level == 3 for e in out.entries)
        pid = out.entries[0].process_id
        assert pid and out.entries[0].time.year >= 2025
        err = client.get_logs(sid, levels=["error"], process_ids=[pid])
        assert [e.body for e in err.entries] == ["sdk-err-1"]
        first = client.get_logs(sid, head=1)
        assert len(first.entries) == 1 and first.entries[0].event == "created"
        rest = client.get_logs(sid, next_token=first.next_token)
        assert rest.entries[0].uuid != first.entries[0].uuid
        assert [e.body for e in client.get_logs(sid, tail=1, levels=[3]).entries] == ["sdk-out-2"]
        procs = client.list_log_processes(sid)
        assert any(p.process_id == pid and p.log_count == 3 and p.command.startswith("sh -c") for p in procs)
    finally:
        client.delete(sid)
    # Ended: follow yields what is there and stops; the logs stay.
    followed = list(client.follow_logs(sid, levels=["info"], poll_interval=0.1))
    assert [e.body for e in followed if e.stream] == ["sdk-out-1", "sdk-out-2"]
    events = [e.event for e in client.get_logs(sid).entries if e.event]
    assert "terminated" in events or client.get(sid).status == SandboxStatus.TERMINATED
    with pytest.raises(SandboxNotFoundError):
        client.get_logs("no-such-sandbox")
