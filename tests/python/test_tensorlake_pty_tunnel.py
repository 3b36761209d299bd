"""PTY sessions and TCP tunnels through the unmodified tensorlake client."""

import signal
import socket
import threading
import time
import urllib.request

import httpx
import pytest
from tensorlake.sandbox import SandboxConnectionError, SandboxError

from tl_helpers import box, eventually, tl  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


class Screen:
    """Collects what a PTY prints."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = b""

    def __call__(self, chunk: bytes) -> None:
        with self._lock:
            self._data += chunk

    @property
    def text(self) -> str:
        with self._lock:
            return self._data.decode(errors="replace")


def test_pty_interactive_shell(box):
    screen = Screen()
    exits: list[int] = []
    pty = box.create_pty(
        "bash",
        args=["--norc", "--noprofile", "-i"],
        env={"PS1": "$ ", "TL_PTY": "yes"},
        working_dir="/tmp",
        rows=30,
        cols=100,
        on_data=screen,
        on_exit=exits.append,
    )
    try:
        assert pty.connected
        pty.send_input("echo size=$(stty size) tty=$([ -t 0 ] && echo yes) env=$TL_PTY pwd=$PWD\n")
        eventually(lambda: "size=30 100 tty=yes env=yes pwd=/tmp" in screen.text, "the first command's output")
        pty.resize(cols=120, rows=40)
        pty.send_input("echo size=$(stty size)\n")
        eventually(lambda: "size=40 120" in screen.text, "the resized terminal")
        pty.send_input("exit 5\n")
        assert pty.wait(timeout=30) == 5
        assert exits == [5]
    finally:
        pty.disconnect()


def test_pty_kill_and_reattach(box):
    screen = Screen()
    session = box.create_pty_session("sh", args=["-c", "echo attached; sleep 300"]).value
    assert session["session_id"] and session["token"]
    pty = box.connect_pty(session["session_id"], session["token"], on_data=screen)
    eventually(lambda: "attached" in screen.text, "the session's output")
    pty.kill()
    assert pty.wait(timeout=30) == 128 + signal.SIGKILL
    # The session is gone.
    with pytest.raises(SandboxConnectionError, match="404"):
        box.connect_pty(session["session_id"], session["token"])


def test_pty_bad_token_is_refused(box):
    session = box.create_pty_session("sleep", args=["300"]).value
    try:
        with pytest.raises(SandboxConnectionError, match="403"):
            box.connect_pty(session["session_id"], "not-the-token")
    finally:
        box.connect_pty(session["session_id"], session["token"]).kill()


ECHO_SERVER = r"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000)); s.listen()
print("listening", flush=True)
def serve(c):
    with c:
        while (d := c.recv(65536)):
            c.sendall(d.upper())
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def test_tcp_tunnel_relays_bytes_both_ways(box):
    server = box.start_process("python3", args=["-c", ECHO_SERVER]).value
    try:
        eventually(lambda: box.get_stdout(server.pid).value.lines == ["listening"], "the echo server")
        with box.create_tunnel(7000, local_port=0) as tunnel:
            assert tunnel.local_port != 0
            addr = tunnel.address()
            payload = b"tunnel-" * 20000
            conns = [socket.create_connection((addr.host, addr.port), timeout=20) for _ in range(2)]
            for i, conn in enumerate(conns):
                with conn:
                    msg = payload + str(i).encode()
                    threading.Thread(target=conn.sendall, args=(msg,), daemon=True).start()
                    got = b""
                    while len(got) < len(msg):
                        chunk = conn.recv(65536)
                        assert chunk, "tunnel closed early"
                        got += chunk
                    assert got == msg.upper()
        assert tunnel.closed
    finally:
        box.kill_process(server.pid)


def test_tcp_tunnel_to_http_server(box):
    box.write_file("/tmp/www/index.html", b"<h1>through the tunnel</h1>")
    server = box.start_process("python3", args=["-m", "http.server", "7001", "--bind", "127.0.0.1"], working_dir="/tmp/www").value
    try:
        with box.create_tunnel(7001, local_port=0) as tunnel:
            url = f"http://{tunnel.local_host}:{tunnel.local_port}/index.html"

            def fetch():
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        return r.read()
                except OSError:
                    time.sleep(0.1)
                    return None

            assert eventually(fetch, "the http server through the tunnel") == b"<h1>through the tunnel</h1>"
    finally:
        box.kill_process(server.pid)


def test_tcp_tunnel_to_closed_port_drops_the_connection(box):
    with box.create_tunnel(7999, local_port=0) as tunnel:
        with socket.create_connection((tunnel.local_host, tunnel.local_port), timeout=20) as conn:
            try:
                assert conn.recv(1) == b""
            except ConnectionResetError:
                pass


def test_exposed_port_settings(tl, box):
    client = tl.client
    info = client.expose_ports(box.sandbox_id, [8080, 3000], allow_unauthenticated_access=True).value
    assert info.exposed_ports == [3000, 8080]
    assert info.allow_unauthenticated_access
    access = client.get_port_access(box.sandbox_id).value
    assert (access.exposed_ports, access.allow_unauthenticated_access) == ([3000, 8080], True)
    info = client.unexpose_ports(box.sandbox_id, [3000]).value
    assert info.exposed_ports == [8080]
    info = client.unexpose_ports(box.sandbox_id, [8080]).value
    assert info.exposed_ports == []
    assert not info.allow_unauthenticated_access
    # The client refuses the daemon's port itself; the server does too.
    with pytest.raises(SandboxError):
        client.expose_ports(box.sandbox_id, [9501])
    r = httpx.patch(f"{tl.api_url}/v1/namespaces/default/sandboxes/{box.sandbox_id}", json={"exposed_ports": [9501]})
    assert r.status_code == 400
    assert r.json()["code"]


def test_exposed_port_is_reachable_through_the_proxy(tl, box):
    box.write_file("/tmp/site/index.html", b"served on an exposed port")
    server = box.start_process(
        "python3", args=["-m", "http.server", "8081", "--bind", "0.0.0.0"], working_dir="/tmp/site"
    ).value
    try:
        proxy = box.info().sandbox_url
        host = f"8081-{box.sandbox_id}.local"

        def get(host_header):
            return httpx.get(f"{proxy}/index.html", headers={"Host": host_header}, timeout=10)

        # Not exposed yet: the proxy refuses.
        assert get(host).status_code == 403
        tl.client.expose_ports(box.sandbox_id, [8081], allow_unauthenticated_access=True)
        r = eventually(lambda: (r := get(host)).status_code == 200 and r, "the exposed server")
        assert r.text == "served on an exposed port"
        # The sandbox's name works in place of its id.
        assert get(f"8081-{box.name}.local").text == "served on an exposed port"
        # Other ports stay closed.
        assert get(f"8082-{box.sandbox_id}.local").status_code == 403
        tl.client.unexpose_ports(box.sandbox_id, [8081])
        assert get(host).status_code == 403
    finally:
        box.kill_process(server.pid)
