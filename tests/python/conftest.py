"""Starts a real `sbx server` for the Python suites, on free loopback ports.

Every server gets a data dir of its own and a cgroup parent of its own
(`--cgroup-parent`, named after the data dir), made fresh for it and removed
after it, and is used only once `/healthz` says it is `ready` (the first
server on a fresh machine builds the default image first).
"""

import json
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
CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
# The first server on a fresh machine builds the default image (1-2 minutes).
START_TIMEOUT = 900


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cgroup_dirs(name: str) -> list[pathlib.Path]:
    """The directories of cgroup `name` that exist: one per v1 hierarchy, or the v2 one."""
    return [d for d in [CGROUP_ROOT / name, *sorted(CGROUP_ROOT.glob(f"*/{name}"))] if d.is_dir()]


def remove_cgroup(name: str) -> None:
    """Removes what is left of cgroup `name` (children first), ignoring errors:
    the server removes its parent itself at a clean stop."""
    for d in cgroup_dirs(name):
        for sub, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):
            try:
                os.rmdir(sub)
            except OSError:
                pass


class SbxServer:
    """One `sbx server` of the tests' own; `api_key` starts it with `--api-key`."""

    def __init__(self, api_key: str | None = None, prefix: str = "sbx-py-") -> None:
        self.api_key = api_key
        self.data_dir = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
        self.cgroup_parent = self.data_dir.name
        left = cgroup_dirs(self.cgroup_parent)
        if left:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise RuntimeError(f"cgroup {self.cgroup_parent} already exists: {left}")
        try:
            images = ROOT / "target" / "sbx-test-images"
            images.mkdir(parents=True, exist_ok=True)
            (self.data_dir / "images").symlink_to(images)
            # A port picked free may be taken before the server binds it: retry.
            for _ in range(5):
                if self._start():
                    return
                remove_cgroup(self.cgroup_parent)
            raise RuntimeError("sbx server did not start on free ports")
        except BaseException:
            if getattr(self, "proc", None) is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.data_dir, ignore_errors=True)
            remove_cgroup(self.cgroup_parent)
            raise

    def _health(self) -> dict | None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        req = urllib.request.Request(f"{self.api_url}/healthz", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                return json.loads(r.read()) if r.status == 200 else None
        except (OSError, ValueError):
            return None

    def _start(self) -> bool:
        """Starts the server and waits until it is ready; False when it exited
        (a port taken meanwhile)."""
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
                "--cgroup-parent", self.cgroup_parent,
                "--api-addr", f"127.0.0.1:{self.api_port}",
                "--proxy-addr", f"127.0.0.1:{self.proxy_port}",
                "--agent-bin", os.environ.get(
                    "SBX_AGENT_BIN",
                    str(ROOT / "target/x86_64-unknown-linux-gnu/release/sbx-agent"),
                ),
                *(["--api-key", self.api_key] if self.api_key else []),
            ],
            env=env,
        )
        deadline = time.time() + START_TIMEOUT
        health = None
        while True:
            health = self._health() or health
            if self.proc.poll() is not None:
                return False
            if health and health.get("ready") is True:
                return True
            image = (health or {}).get("default_image") or {}
            if image.get("status") == "failed":
                raise RuntimeError(f"sbx server cannot build its default image: {image.get('error')}")
            if time.time() > deadline:
                raise RuntimeError(f"sbx server not ready after {START_TIMEOUT} s; last /healthz {health}")
            time.sleep(0.1)

    def leftovers(self) -> list[str]:
        d = self.data_dir / "sandboxes"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def wait_torn_down(self, timeout: float = 60) -> bool:
        """Waits until no sandbox is left in the data dir (a server stopped
        mid-teardown leaks mounts); True when none is."""
        deadline = time.monotonic() + timeout
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.leftovers()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        remove_cgroup(self.cgroup_parent)


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
