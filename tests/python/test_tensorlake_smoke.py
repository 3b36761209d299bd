"""The unmodified tensorlake client (0.5.161) against a real sbx server."""

import time

from tensorlake.sandbox import SandboxClient, SandboxStatus


def test_create_run_files_list_delete(sbx):
    client = SandboxClient.for_localhost(api_url=sbx.api_url)
    sandbox = client.create_and_connect(name="tl-smoke")
    try:
        result = sandbox.run("echo", args=["hello"], env={"A": "1"}, working_dir="/tmp")
        assert result.exit_code == 0
        assert result.stdout.strip() == "hello"
        result = sandbox.run("sh", args=["-c", "echo $A; pwd; echo oops >&2; exit 4"], env={"A": "1"}, working_dir="/tmp")
        assert result.exit_code == 4
        assert result.stdout.split() == ["1", "/tmp"]
        assert result.stderr.strip() == "oops"

        sandbox.write_file("/tmp/a.txt", b"hi there")
        assert sandbox.read_file("/tmp/a.txt").value == b"hi there"
        names = [e.name for e in sandbox.list_directory("/tmp").value.entries]
        assert "a.txt" in names

        ids = [s.sandbox_id for s in client.list()]
        assert sandbox.sandbox_id in ids
        info = client.get(sandbox.sandbox_id).value
        assert info.status == SandboxStatus.RUNNING
        assert info.name == "tl-smoke"
    finally:
        client.delete(sandbox.sandbox_id)
    assert client.get(sandbox.sandbox_id).value.status == SandboxStatus.TERMINATED
    # The server is shared with other modules: only this sandbox must be gone.
    deadline = time.time() + 30
    while sandbox.sandbox_id in sbx.leftovers() and time.time() < deadline:
        time.sleep(0.2)
    assert sandbox.sandbox_id not in sbx.leftovers()
