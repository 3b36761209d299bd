"""The tensorlake client against an sbx server that requires an API key: the
bearer key on the control plane, the proxy and user ports."""

import httpx
import pytest
from tensorlake.sandbox import RemoteAPIError, Sandbox, SandboxClient, SandboxNotFoundError

from conftest import SbxServer
from tl_helpers import eventually, unique

KEY = "tl-compat-key"


@pytest.fixture(scope="module")
def keyed():
    """A second sbx server of this module's own, started with `--api-key`."""
    server = SbxServer(api_key=KEY, prefix="sbx-py-auth-")
    try:
        yield server.api_url
        # A server stopped mid-teardown leaks mounts: wait for the sandboxes to go.
        assert server.wait_torn_down(), "the keyed server's sandboxes were not torn down"
    finally:
        server.stop()


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
