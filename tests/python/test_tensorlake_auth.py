"""The tensorlake client against an sbx server that requires an API key: the
bearer key on the control plane, the proxy and user ports."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import httpx
import pytest
from tensorlake.sandbox import RemoteAPIError, Sandbox, SandboxClient, SandboxNotFoundError

from tl_helpers import eventually, unique

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY = "tl-compat-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def keyed():
    """A second sbx server of this module's own, started with `--api-key`."""
    data = pathlib.Path(tempfile.mkdtemp(prefix="sbx-tl-auth-", dir="/var/tmp"))
    (data / "images").symlink_to(ROOT / "target" / "sbx-test-images")
    api, proxy = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "SBX_API_KEY"}
    proc = subprocess.Popen(
        [
            os.environ.get("SBX_BIN", str(ROOT / "target/release/sbx")),
            "server",
            "--data-dir", str(data),
            "--api-addr", f"127.0.0.1:{api}",
            "--proxy-addr", f"127.0.0.1:{proxy}",
            "--api-key", KEY,
            "--agent-bin", os.environ.get(
                "SBX_AGENT_BIN", str(ROOT / "target/x86_64-unknown-linux-gnu/release/sbx-agent")
            ),
        ],
        env=env,
    )
    url = f"http://localhost:{api}"
    sandboxes = data / "sandboxes"
    try:
        def healthy():
            assert proc.poll() is None, "the keyed server exited"
            try:
                return httpx.get(f"{url}/healthz", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
                return False

        eventually(healthy, "the keyed server", timeout=120)
        yield url
        # A server stopped mid-teardown leaks mounts: wait for the sandboxes to go.
        eventually(lambda: not sandboxes.exists() or not any(sandboxes.iterdir()), "the teardown", timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def test_the_key_is_required_and_checked(keyed):
    with pytest.raises(RemoteAPIError) as e:
        SandboxClient(api_url=keyed, api_key=None).list()
    assert e.value.status_code == 401
    with pytest.raises(RemoteAPIError) as e:
        SandboxClient(api_url=keyed, api_key="wrong").list()
    assert e.value.status_code == 401
    with pytest.raises(SandboxNotFoundError):
        SandboxClient(api_url=keyed, api_key=KEY).get("no-such-sandbox")


def test_sandbox_and_user_port_access_with_a_key(keyed):
    client = SandboxClient(api_url=keyed, api_key=KEY)
    sandbox = Sandbox.create(api_url=keyed, api_key=KEY, name=unique("tl-auth"), exposed_ports=[8090])
    try:
        # The client's bearer key goes through the proxy to the sandbox.
        assert sandbox.run("echo", args=["authorized"]).stdout == "authorized"
        sandbox.write_file("/tmp/www/index.html", b"private page")
        server = sandbox.start_process(
            "python3", args=["-m", "http.server", "8090"], working_dir="/tmp/www"
        ).value
        proxy = sandbox.info().sandbox_url

        def get(host, key=None):
            headers = {"Host": host}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            return httpx.get(f"{proxy}/index.html", headers=headers, timeout=10)

        port_host = f"8090-{sandbox.sandbox_id}.local"
        r = eventually(lambda: (r := get(port_host, KEY)).status_code == 200 and r, "the user server")
        assert r.text == "private page"
        # Without the key, neither the user port nor the daemon answers.
        assert get(port_host).status_code == 401
        assert get(port_host, "wrong").status_code == 401
        daemon = httpx.get(f"{proxy}/api/v1/health", headers={"Host": f"{sandbox.sandbox_id}.local"}, timeout=10)
        assert daemon.status_code == 401

        # Public user ports need no key; the daemon still does.
        client.update_sandbox(sandbox.sandbox_id, allow_unauthenticated_access=True)
        assert get(port_host).text == "private page"
        daemon = httpx.get(f"{proxy}/api/v1/health", headers={"Host": f"{sandbox.sandbox_id}.local"}, timeout=10)
        assert daemon.status_code == 401
        # A port that is not exposed stays closed, key or not.
        assert get(f"8091-{sandbox.sandbox_id}.local").status_code == 403
        assert get(f"8091-{sandbox.sandbox_id}.local", KEY).status_code == 403
        sandbox.kill_process(server.pid)
    finally:
        client.delete(sandbox.sandbox_id)
