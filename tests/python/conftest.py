"""Starts a real `sbx server` for the Python suites, on free loopback ports."""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SbxServer:
    def __init__(self) -> None:
        self.data_dir = pathlib.Path(tempfile.mkdtemp(prefix="sbx-py-", dir="/var/tmp"))
        images = ROOT / "target" / "sbx-test-images"
        images.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "images").symlink_to(images)
        # A port picked free may be taken before the server binds it: retry.
        for _ in range(5):
            if self._start():
                return
        raise RuntimeError("sbx server did not start on free ports")

    def _start(self) -> bool:
        self.api_port = _free_port()
        self.proxy_port = _free_port()
        self.api_url = f"http://localhost:{self.api_port}"
        env = dict(os.environ)
        env.pop("SBX_API_KEY", None)
        self.proc = subprocess.Popen(
            [
                os.environ.get("SBX_BIN", str(ROOT / "target/release/sbx")),
                "server",
                "--data-dir", str(self.data_dir),
                "--api-addr", f"127.0.0.1:{self.api_port}",
                "--proxy-addr", f"127.0.0.1:{self.proxy_port}",
                "--agent-bin", os.environ.get(
                    "SBX_AGENT_BIN",
                    str(ROOT / "target/x86_64-unknown-linux-gnu/release/sbx-agent"),
                ),
            ],
            env=env,
        )
        deadline = time.time() + 900
        while True:
            try:
                with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            if self.proc.poll() is not None:
                return False
            if time.time() > deadline:
                raise RuntimeError("sbx server did not start")
            time.sleep(0.1)

    def leftovers(self) -> list[str]:
        d = self.data_dir / "sandboxes"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def sbx():
    server = SbxServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def torn_down(sbx):
    """At the end of a module that uses it, waits until the server has torn
    down every sandbox the module terminated (a server stopped mid-teardown
    leaks mounts), and fails if one stays behind."""
    before = set(sbx.leftovers())
    yield
    deadline = time.monotonic() + 60
    while set(sbx.leftovers()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(sbx.leftovers()) - before, "sandboxes not torn down"
