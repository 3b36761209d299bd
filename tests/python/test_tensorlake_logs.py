"""Persisted sandbox logs through the unmodified tensorlake client: process
output with its process ids, lifecycle events, the client's filters (levels,
processes, body, head/tail) and nextToken paging, and the logs of a sandbox
that ended."""

import json

import pytest
from tensorlake.sandbox import SandboxLogLevel

from tl_helpers import box, eventually, tl, unique  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def attrs(entry) -> dict:
    return json.loads(entry.log_attributes)


def test_process_output_reaches_the_sandbox_logs(box):
    box.run("echo", args=["hello-logs"])
    eventually(
        lambda: any("hello-logs" in entry.body for entry in box.get_logs().value.logs),
        "the command's output in the logs",
        timeout=5,
    )
    entry = next(e for e in box.get_logs().value.logs if e.body == "hello-logs")
    assert entry.sandbox_id == box.sandbox_id
    assert entry.level == 3
    assert entry.timestamp > 1_600_000_000 * 10**9  # nanoseconds
    assert attrs(entry)["stream"] == "stdout"


def test_log_processes_are_listed(box):
    box.run("echo", args=["for the log filters"])
    processes = eventually(
        lambda: [p for p in box.list_log_processes().value.processes
                 if p.process_command == "echo for the log filters"],
        "the process in the log filters",
        timeout=5,
    )
    p = processes[0]
    assert p.log_count == 1
    assert p.first_seen <= p.last_seen
    # Its id filters the logs to its own records.
    logs = box.get_logs(process_ids=[p.process_id], levels=[SandboxLogLevel.INFO]).value.logs
    assert [e.body for e in logs] == ["for the log filters"]


def test_levels_body_head_tail_and_paging(box):
    box.run("sh", args=["-c", "for i in 1 2 3 4 5; do echo page-$i; done; echo oops-1 >&2"])
    eventually(
        lambda: any(e.body == "oops-1" for e in box.get_logs(levels=["error"]).value.logs),
        "stderr at level error",
        timeout=5,
    )
    errors = box.get_logs(levels=[SandboxLogLevel.ERROR]).value.logs
    assert all(e.level == 5 for e in errors)
    pages = box.get_logs(body="page-", levels=["info"]).value.logs
    assert [e.body for e in pages] == [f"page-{i}" for i in range(1, 6)]
    assert [e.body for e in box.get_logs(body="page-", levels=["info"], tail=2).value.logs] == ["page-4", "page-5"]
    seen, token = [], None
    while True:
        page = box.get_logs(body="page-", levels=["info"], head=2, next_token=token).value
        assert len(page.logs) <= 2
        seen += [e.body for e in page.logs]
        token = page.next_token
        if not token:
            break
    assert seen == [f"page-{i}" for i in range(1, 6)]


def test_lifecycle_events_and_logs_after_the_end(tl):
    client = tl.client
    with tl.sandbox(name=unique("tl-logs")) as sandbox:
        sandbox.run("echo", args=["before-the-end"])
        sandbox_id = sandbox.sandbox_id
        eventually(
            lambda: any(e.body == "before-the-end" for e in client.get_logs(sandbox_id).value.logs),
            "the output in the logs",
            timeout=5,
        )
    # Deleted on exit: the logs stay, ending with the termination.
    def ended():
        logs = client.get_logs(sandbox_id).value.logs
        return logs if logs and attrs(logs[-1]).get("event") == "terminated" else None

    logs = eventually(ended, "the termination in the logs", timeout=10)
    events = [attrs(e).get("event") for e in logs]
    assert events.index("created") < events.index("running") < events.index("terminated")
    assert any(e.body == "before-the-end" for e in logs)
