"""Snapshots, restores, suspend/resume, copies and checkpoints through the unmodified tensorlake client."""

import contextlib

import pytest
from tensorlake.sandbox import (
    CheckpointType,
    ProcessStatus,
    RemoteAPIError,
    Sandbox,
    SandboxError,
    SandboxNotFoundError,
    SandboxStatus,
    SnapshotStatus,
    SnapshotType,
    SnapshotWaitCondition,
)

from tl_helpers import eventually, tl, unique  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")

READY = (SnapshotStatus.LOCAL_READY, SnapshotStatus.COMPLETED)

# A counter that lives only in memory: it survives a memory restore, not a cold boot.
# Renamed into place: a reader never sees the file half-written.
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.05; done"


def counter_value(sandbox) -> int:
    """The counter's last value (0 before its first write)."""
    out = sandbox.run("sh", args=["-c", "cat /tmp/counter 2>/dev/null"]).stdout
    return int(out or "0")


def test_filesystem_snapshot_and_restore(tl):
    client = tl.client
    with tl.deleting_snapshots() as snaps, tl.sandbox(
        name=unique("tl-fs-src"), exposed_ports=[8080], allow_unauthenticated_access=True
    ) as source:
        source.write_file("/root/state.txt", b"kept on disk")
        source.run("sh", args=["-c", "mkdir -p /opt/app && echo built > /opt/app/artifact"])
        proc = source.start_process("sleep", args=["300"]).value

        snap = client.snapshot_and_wait(
            source.sandbox_id, snapshot_type=SnapshotType.FILESYSTEM, poll_interval=0.2
        ).value
        snaps.append(snap.snapshot_id)
        assert snap.status in READY
        assert snap.snapshot_type == SnapshotType.FILESYSTEM
        assert snap.sandbox_id == source.sandbox_id
        assert snap.namespace == "default"

        # The source keeps running.
        assert source.status == SandboxStatus.RUNNING
        assert source.get_process(proc.pid).value.status == ProcessStatus.RUNNING

        # Listed globally and per sandbox, and readable by id.
        assert snap.snapshot_id in {s.snapshot_id for s in client.list_snapshots()}
        assert snap.snapshot_id in {s.snapshot_id for s in source.list_snapshots()}
        got = Sandbox.get_snapshot(snap.snapshot_id, api_url=tl.api_url)
        assert (got.snapshot_id, got.sandbox_id) == (snap.snapshot_id, source.sandbox_id)

        with tl.sandbox(snapshot_id=snap.snapshot_id) as restored:
            assert restored.sandbox_id != source.sandbox_id
            assert restored.read_file("/root/state.txt").value == b"kept on disk"
            assert restored.read_file("/opt/app/artifact").value == b"built\n"
            # A cold boot: no process of the source runs here.
            assert restored.run("sh", args=["-c", "pgrep -x sleep || echo none"]).stdout == "none"
            # A restore inherits what it does not set.
            info = restored.info()
            assert info.resources == source.info().resources
            assert (info.exposed_ports, info.allow_unauthenticated_access) == ([8080], True)
            assert info.name is None

        # Restoring with more disk is allowed; the restore inherits the rest.
        disk = source.info().resources.disk_mb
        with tl.sandbox(snapshot_id=snap.snapshot_id, disk_mb=disk + 1024) as bigger:
            assert bigger.info().resources.disk_mb == disk + 1024
            assert bigger.read_file("/root/state.txt").value == b"kept on disk"


def test_memory_snapshot_restores_running_processes(tl):
    client = tl.client
    with tl.deleting_snapshots() as snaps, tl.sandbox(name=unique("tl-mem-src")) as source:
        counter = source.start_process("sh", args=["-c", COUNTER]).value
        eventually(lambda: counter_value(source) > 0, "the counter")
        source.run("sh", args=["-c", "echo in-memory-env > /dev/shm/shm.txt"])

        snap = client.snapshot_and_wait(
            source.sandbox_id,
            snapshot_type=SnapshotType.MEMORY,
            poll_interval=0.2,
            wait_until=SnapshotWaitCondition.COMPLETED,
        ).value
        snaps.append(snap.snapshot_id)
        assert snap.status == SnapshotStatus.COMPLETED
        assert snap.snapshot_type == SnapshotType.MEMORY
        at_snapshot = counter_value(source)

        with tl.sandbox(snapshot_id=snap.snapshot_id) as restored:
            # The counter process came back and keeps counting from where it was.
            proc = restored.get_process(counter.pid).value
            assert proc.status == ProcessStatus.RUNNING
            start = counter_value(restored)
            assert start >= at_snapshot - 50
            eventually(lambda: counter_value(restored) > start, "the restored counter to advance")
            assert restored.read_file("/dev/shm/shm.txt").value == b"in-memory-env\n"
            # The restored daemon serves everything as usual.
            assert restored.run("echo", args=["alive"]).stdout == "alive"


def test_snapshot_delete_and_errors(tl):
    client = tl.client
    with tl.sandbox() as source:
        created = client.snapshot(source.sandbox_id)
        assert created.snapshot_id
        assert created.status in (SnapshotStatus.IN_PROGRESS, *READY)
        eventually(
            lambda: client.get_snapshot(created.snapshot_id).value.status in READY,
            "the snapshot to be ready",
            timeout=120,
        )
        # The default snapshot type is a filesystem snapshot.
        assert client.get_snapshot(created.snapshot_id).value.snapshot_type == SnapshotType.FILESYSTEM
        Sandbox.delete_snapshot(created.snapshot_id, api_url=tl.api_url)
        assert created.snapshot_id not in {s.snapshot_id for s in client.list_snapshots()}
        with pytest.raises(RemoteAPIError) as e:
            client.get_snapshot(created.snapshot_id)
        assert e.value.status_code == 404
        with pytest.raises(SandboxError):
            tl.client.create(snapshot_id=created.snapshot_id)
    with pytest.raises(SandboxNotFoundError):
        client.snapshot("no-such-sandbox")


def test_snapshot_outlives_its_sandbox(tl):
    with tl.deleting_snapshots() as snaps:
        with tl.sandbox() as source:
            source.write_file("/root/legacy.txt", b"from a dead sandbox")
            snap = source.checkpoint(checkpoint_type=CheckpointType.FILESYSTEM, poll_interval=0.2)
            snaps.append(snap.snapshot_id)
            assert snap.status in READY
        assert tl.status(source.sandbox_id) == SandboxStatus.TERMINATED
        with tl.sandbox(snapshot_id=snap.snapshot_id) as restored:
            assert restored.read_file("/root/legacy.txt").value == b"from a dead sandbox"


def test_checkpoint_memory_and_no_wait(tl):
    with tl.deleting_snapshots() as snaps, tl.sandbox(name=unique("tl-ckpt")) as source:
        source.write_file("/tmp/ck.txt", b"checkpointed")
        snap = source.checkpoint(checkpoint_type=CheckpointType.MEMORY, poll_interval=0.2)
        snaps.append(snap.snapshot_id)
        assert snap.status in READY
        assert snap.snapshot_type == SnapshotType.MEMORY
        assert source.status == SandboxStatus.RUNNING

        assert source.checkpoint(wait=False) is None
        listed = eventually(
            lambda: [s for s in source.list_snapshots() if s.snapshot_id != snap.snapshot_id],
            "the second checkpoint to be listed",
        )
        snaps.extend(s.snapshot_id for s in listed)
        eventually(
            lambda: tl.client.get_snapshot(listed[0].snapshot_id).value.status in READY,
            "the no-wait checkpoint to finish",
            timeout=120,
        )
        with tl.sandbox(snapshot_id=snap.snapshot_id) as restored:
            assert restored.read_file("/tmp/ck.txt").value == b"checkpointed"


def test_suspend_and_resume(tl):
    client = tl.client
    with tl.sandbox(name=unique("tl-suspend")) as sandbox:
        sleeper = sandbox.start_process("sh", args=["-c", COUNTER]).value
        sandbox.write_file("/tmp/before.txt", b"before suspend")
        eventually(lambda: counter_value(sandbox) > 0, "the counter")

        sandbox.suspend(poll_interval=0.2)
        assert sandbox.status == SandboxStatus.SUSPENDED
        info = client.get(sandbox.sandbox_id).value
        assert info.status == SandboxStatus.SUSPENDED
        # Suspending again is accepted (already there).
        client.suspend(sandbox.sandbox_id, poll_interval=0.2)

        sandbox.resume(poll_interval=0.2)
        assert sandbox.status == SandboxStatus.RUNNING
        assert sandbox.read_file("/tmp/before.txt").value == b"before suspend"
        assert sandbox.get_process(sleeper.pid).value.status == ProcessStatus.RUNNING
        start = counter_value(sandbox)
        eventually(lambda: counter_value(sandbox) > start, "the counter to keep counting")

        # Without waiting: the client returns at once, the server gets there.
        client.suspend(sandbox.sandbox_id, wait=False)
        eventually(lambda: tl.status(sandbox.sandbox_id) == SandboxStatus.SUSPENDED, "the suspend")
        client.resume(sandbox.sandbox_id, wait=False)
        eventually(lambda: tl.status(sandbox.sandbox_id) == SandboxStatus.RUNNING, "the resume")
        assert Sandbox.connect(sandbox.sandbox_id, api_url=tl.api_url).run("echo", args=["back"]).stdout == "back"


def test_suspended_sandbox_auto_resumes_on_traffic(tl):
    with tl.sandbox(name=unique("tl-autoresume")) as sandbox:
        sandbox.write_file("/tmp/x.txt", b"still here")
        sandbox.suspend(poll_interval=0.2)
        assert sandbox.status == SandboxStatus.SUSPENDED
        # The handle still points at the proxy: traffic wakes the sandbox.
        assert sandbox.read_file("/tmp/x.txt").value == b"still here"
        assert sandbox.status == SandboxStatus.RUNNING


def test_get_or_create_resumes_a_suspended_sandbox(tl):
    name = unique("tl-goc-resume")
    with tl.sandbox(name=name) as sandbox:
        sandbox.suspend(poll_interval=0.2)
        again = Sandbox.get_or_create(name, api_url=tl.api_url)
        assert again.bind_outcome == "resumed"
        assert again.sandbox_id == sandbox.sandbox_id
        assert again.status == SandboxStatus.RUNNING


def test_ephemeral_sandbox_cannot_suspend(tl):
    with tl.sandbox() as sandbox:
        with pytest.raises(RemoteAPIError) as e:
            sandbox.suspend()
        assert e.value.status_code == 400
        assert sandbox.status == SandboxStatus.RUNNING
    with pytest.raises(SandboxNotFoundError):
        tl.client.suspend("no-such-sandbox")
    with pytest.raises(SandboxNotFoundError):
        tl.client.resume("no-such-sandbox")


def test_copy_makes_live_forks(tl):
    with tl.deleting_snapshots() as snaps, tl.sandbox(name=unique("tl-copy-src")) as source:
        source.write_file("/tmp/origin.txt", b"from the source")
        counter = source.start_process("sh", args=["-c", COUNTER]).value
        eventually(lambda: counter_value(source) > 0, "the counter")

        result = source.copy(times=2).value
        assert result.source_sandbox_id == source.sandbox_id
        ids = [c.sandbox_id for c in result.sandboxes]
        with contextlib.ExitStack() as stack:
            forks = [stack.enter_context(tl.adopted(sid)) for sid in ids]
            snaps.extend(s.snapshot_id for s in source.list_snapshots())
            assert [c.status for c in result.sandboxes] == [SandboxStatus.RUNNING.value] * 2
            assert len({source.sandbox_id, *ids}) == 3
            for i, fork in enumerate(forks):
                assert fork.read_file("/tmp/origin.txt").value == b"from the source"
                assert fork.get_process(counter.pid).value.status == ProcessStatus.RUNNING
                # Each fork is independent of its source and of the other fork.
                fork.write_file("/tmp/origin.txt", f"changed in fork {i}".encode())
            assert [f.read_file("/tmp/origin.txt").value for f in forks] == [b"changed in fork 0", b"changed in fork 1"]
            assert source.read_file("/tmp/origin.txt").value == b"from the source"
            assert source.status == SandboxStatus.RUNNING
    with pytest.raises(SandboxNotFoundError):
        tl.client.copy("no-such-sandbox")


def test_timeouts_end_ephemeral_and_suspend_named_sandboxes(tl):
    with tl.sandbox(timeout_secs=2) as ephemeral, tl.sandbox(timeout_secs=2, name=unique("tl-idle")) as named:
        named.write_file("/tmp/idle.txt", b"slept through it")
        info = eventually(
            lambda: (i := tl.client.get(ephemeral.sandbox_id).value).status == SandboxStatus.TERMINATED and i,
            "the ephemeral sandbox to time out",
        )
        assert info.termination_reason == "timeout"
        eventually(lambda: tl.status(named.sandbox_id) == SandboxStatus.SUSPENDED, "the named sandbox to suspend")
        # Traffic wakes it with its files.
        assert named.read_file("/tmp/idle.txt").value == b"slept through it"
        assert named.status == SandboxStatus.RUNNING


def test_auto_resume_off_needs_an_explicit_resume(tl):
    with pytest.raises(RemoteAPIError) as e:
        tl.client.create(auto_resume=False)
    assert e.value.status_code == 400
    with tl.sandbox() as ephemeral:
        with pytest.raises(RemoteAPIError) as e:
            ephemeral.update(auto_resume=False)
        assert e.value.status_code == 400

    with tl.sandbox(name=unique("tl-noresume"), auto_resume=False) as sandbox:
        assert sandbox.info().auto_resume is False
        sandbox.suspend(poll_interval=0.2)
        with pytest.raises(RemoteAPIError) as e:
            sandbox.read_file("/etc/hostname")
        assert e.value.status_code == 409
        assert sandbox.status == SandboxStatus.SUSPENDED
        sandbox.resume(poll_interval=0.2)
        assert sandbox.run("echo", args=["resumed"]).stdout == "resumed"
