"""Flows the tensorlake client offers that sbx does not serve yet. Each is a strict
xfail: it starts passing (and so fails the suite) the day sbx serves it. The list is
also in README.md, "Tensorlake client compatibility"."""

import pytest
from tensorlake.sandbox import SandboxError

from tl_helpers import box, eventually, tl, unique  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


@pytest.mark.xfail(strict=True, reason="sbx keeps no sandbox logs: GET .../logs always answers an empty list")
def test_process_output_reaches_the_sandbox_logs(box):
    box.run("echo", args=["hello-logs"])
    eventually(
        lambda: any("hello-logs" in entry.body for entry in box.get_logs().value.logs),
        "the command's output in the logs",
        timeout=2,
    )


@pytest.mark.xfail(strict=True, reason="sbx keeps no sandbox logs: no GET .../sandboxes/{id}/processes")
def test_log_processes_are_listed(box):
    box.run("echo", args=["for the log filters"])
    assert box.list_log_processes().value.processes


@pytest.mark.xfail(strict=True, reason="sbx has no sandbox pools (.../sandbox-pools)")
def test_sandbox_pool_create_and_claim(tl):
    client = tl.client
    pool = client.create_pool(image="default", warm_containers=1).value
    try:
        claimed = client.claim(pool.pool_id).value
        try:
            assert client.get(claimed.sandbox_id).value.pool_id == pool.pool_id
        finally:
            client.delete(claimed.sandbox_id)
    finally:
        client.delete_pool(pool.pool_id)


@pytest.mark.xfail(strict=True, reason="sbx has no file-system service to attach file systems from")
def test_attach_file_system(box):
    box.attach_file_system("fs-" + unique("x"), "/mnt/shared")
    assert [m.mount_path for m in box.list_file_systems()] == ["/mnt/shared"]


@pytest.mark.xfail(strict=True, reason="the default sbx image has no VNC desktop on port 5901", raises=SandboxError)
def test_connect_desktop(box):
    box.connect_desktop(connect_timeout=2).screenshot()

