#!/usr/bin/env python3
"""sbx benchmark: sbx beside raw runsc, measured in the same run.

Measures, as median and p90:
  - time to interactive: create -> first command finished
      sbx: blocking POST /sandboxes + POST /api/v1/processes/run `true`
      raw: runsc create + start + exec `true` on the same image rootfs
  - command round trip: `true` through the API vs `runsc exec true`
and prints the ratios against the targets of the issues.
Needs root, runsc, and built binaries (`make build`).
"""

import argparse
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(name, xs):
    return f"{name:<34} median {statistics.median(xs):8.1f} ms   p90 {pct(xs, 90):8.1f} ms   (n={len(xs)})"


class Sbx:
    def __init__(self, sbx_bin, agent, images):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sbx-bench-", dir="/var/tmp"))
        (self.dir / "images").symlink_to(images)
        self.api_port, self.proxy_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sbx_bin, "server", "--data-dir", str(self.dir),
             "--api-addr", f"127.0.0.1:{self.api_port}",
             "--proxy-addr", f"127.0.0.1:{self.proxy_port}",
             "--agent-bin", agent],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sbx server did not start")

    def api(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=120)
        c.request(method, "/v1/namespaces/default" + path,
                  body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None

    def delete_and_wait(self, sid):
        """Terminates and waits until the host holds nothing of it, so that
        the background teardown does not compete with the next measurement
        (the raw baseline deletes synchronously too)."""
        self.api("DELETE", f"/sandboxes/{sid}")
        d = self.dir / "sandboxes" / sid
        deadline = time.time() + 60
        while d.exists() and time.time() < deadline:
            time.sleep(0.02)

    def run_true(self, conn, sid):
        conn.request("POST", "/api/v1/processes/run", body=json.dumps({"command": "true"}),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream",
                              "X-Tensorlake-Sandbox-Id": sid})
        r = conn.getresponse()
        body = r.read().decode()
        assert '"exit_code":0' in body.replace(" ", ""), body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


# Two baselines:
#   minimal:    runsc with no network, no cgroup limits, gVisor's default rootfs overlay
#   equivalent: what sbx asks of runsc: cgroup CPU/memory limits, host-backed
#               rootfs (--overlay2=none), a network namespace (made before the
#               clock starts) with the same start workaround sbx needs.
BASELINES = ("minimal", "equivalent")


def runsc(root, kind, *args, netns=None):
    flags = ["--network=none"] if kind == "minimal" else ["--overlay2=none"]
    cmd = ["runsc", f"--root={root}", *flags, *args]
    if netns and args[0] == "start":
        cmd = ["ip", "netns", "exec", netns, "unshare", "-m", "sh", "-c",
               "mount -t tmpfs none /proc/sys/net && exec " + " ".join(cmd)]
    # No pipes: the sandbox runsc create starts inherits its stdio and would hold them open.
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def raw_bundle(rootfs, workdir, name, kind, netns=None):
    b = workdir / name
    b.mkdir()
    ns = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    ns.append({"type": "network", "path": f"/var/run/netns/{netns}"} if netns else {"type": "network"})
    cfg = {
        "ociVersion": "1.0.2",
        "process": {"args": ["/bin/sleep", "infinity"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"],
                    "user": {"uid": 0, "gid": 0}},
        "root": {"path": str(rootfs), "readonly": True},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": ns},
    }
    if kind == "equivalent":
        cfg["linux"]["cgroupsPath"] = f"/sbx-bench/{name}"
        cfg["linux"]["resources"] = {"memory": {"limit": 1280 << 20},
                                     "cpu": {"quota": 100000, "period": 100000}}
    (b / "config.json").write_text(json.dumps(cfg))
    return b


def raw_tti(rootfs, work, root, kind, i):
    """Times create + start + exec true of one raw sandbox; returns (ms, cleanup)."""
    name = f"{kind}{i}"
    netns = None
    if kind == "equivalent":
        netns = f"sbxbench{i}"
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    b = raw_bundle(rootfs, work, name, kind, netns)
    t0 = time.perf_counter()
    runsc(root, kind, "create", f"--bundle={b}", name)
    runsc(root, kind, "start", name, netns=netns)
    runsc(root, kind, "exec", name, "/bin/true")
    ms = (time.perf_counter() - t0) * 1000

    def cleanup():
        runsc(root, kind, "delete", "--force", name)
        if netns:
            subprocess.run(["ip", "netns", "del", netns], check=False)
    return ms, cleanup


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sbx", default=str(ROOT / "target/release/sbx"))
    ap.add_argument("--agent", default=str(ROOT / "target/x86_64-unknown-linux-gnu/release/sbx-agent"))
    ap.add_argument("--images", default=str(ROOT / "target/sbx-test-images"))
    ap.add_argument("-n", type=int, default=10, help="sandboxes per side")
    ap.add_argument("--round-trips", type=int, default=50)
    args = ap.parse_args()
    images = pathlib.Path(args.images)
    images.mkdir(parents=True, exist_ok=True)

    s = Sbx(args.sbx, args.agent, images)
    rootfs = images / "default" / "rootfs"
    work = pathlib.Path(tempfile.mkdtemp(prefix="sbx-bench-raw-", dir="/var/tmp"))
    raw_root = work / "state"
    try:
        # Warm both paths once (page cache, first-run costs).
        _, v = s.api("POST", "/sandboxes", {})
        s.delete_and_wait(v["sandbox_id"])

        sbx_tti = []
        raw = {k: [] for k in BASELINES}
        keep_raw = None
        for i in range(args.n):
            t0 = time.perf_counter()
            st, v = s.api("POST", "/sandboxes", {})
            assert st == 200 and v["status"] == "running", v
            conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=60)
            s.run_true(conn, v["sandbox_id"])
            sbx_tti.append((time.perf_counter() - t0) * 1000)
            if i < args.n - 1:
                s.delete_and_wait(v["sandbox_id"])
            keep = v["sandbox_id"]
            for kind in BASELINES:
                ms, cleanup = raw_tti(rootfs, work, raw_root, kind, i)
                raw[kind].append(ms)
                if kind == "minimal" and i == args.n - 1:
                    keep_raw = (f"{kind}{i}", cleanup)
                else:
                    cleanup()

        sbx_rt, raw_rt = [], []
        conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=60)
        for _ in range(args.round_trips):
            t0 = time.perf_counter()
            s.run_true(conn, keep)
            sbx_rt.append((time.perf_counter() - t0) * 1000)
        for _ in range(min(args.round_trips, 20)):
            t0 = time.perf_counter()
            runsc(raw_root, "minimal", "exec", keep_raw[0], "/bin/true")
            raw_rt.append((time.perf_counter() - t0) * 1000)
        s.api("DELETE", f"/sandboxes/{keep}")
        keep_raw[1]()
    finally:
        s.stop()
        shutil.rmtree(work, ignore_errors=True)
        for d in pathlib.Path("/sys/fs/cgroup").glob("*/sbx-bench"):
            for sub in d.iterdir():
                if sub.is_dir():
                    sub.rmdir()
            d.rmdir()

    print(summary("sbx create -> first command", sbx_tti))
    for kind in BASELINES:
        print(summary(f"raw runsc ({kind})", raw[kind]))
    for kind in BASELINES:
        r = statistics.median(sbx_tti) / statistics.median(raw[kind])
        print(f"TTI ratio vs {kind:<10} (median) {r:.2f}x   target <= 1.2x   {'OK' if r <= 1.2 else 'MISSED'}")
    print(summary("sbx command round trip (true)", sbx_rt))
    print(summary("raw runsc exec true", raw_rt))
    m = statistics.median(sbx_rt)
    print(f"round trip median {m:.1f} ms   target <= 10 ms   {'OK' if m <= 10 else 'MISSED'}   "
          f"({statistics.median(raw_rt) / m:.1f}x faster than runsc exec)")


if __name__ == "__main__":
    main()
