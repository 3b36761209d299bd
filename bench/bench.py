#!/usr/bin/env python3
"""sbx benchmark: sbx beside raw runsc, measured in the same run.

Measures, as median and p90:
  - time to interactive: create -> first command finished
      sbx: blocking POST /sandboxes + POST /api/v1/processes/run `true`
      raw: runsc create + start + exec `true` on the same image rootfs
  - command round trip: `true` through the API vs `runsc exec true`, beside
      the floor: posix_spawn + waitpid of `true` inside the sandbox itself,
      the two measured in alternating blocks
  - snapshots (skip with --no-snapshots):
      memory- and filesystem-snapshot pauses (sbx's pause_ms) of a sandbox
        holding 256 MB of random memory, with an empty disk and with 1 GB
        written, vs raw `runsc checkpoint --leave-running` of the same memory
      bytes newly stored by a second snapshot of that unchanged sandbox
      warm restore -> first command: POST /sandboxes {snapshot_id} + `true`
        vs raw runsc restore --detach + exec `true`, of a minimal sandbox and
        of one configured like sbx's (netns, cgroup limits, host rootfs)
      copy x10: POST /sandboxes/{id}/copy?times=10 until all run (3 times)
      suspend -> suspended vs raw `runsc checkpoint` (which stops it) of sbx
        sandboxes like it and of a minimal one; resume -> first command vs
        raw restore + `true` of the same memory, its image not in the page
        cache (a suspend writes it with O_DIRECT)
  - idle cost: CPU and memory of idle sandboxes (--idle N)
  - many hosts (skip with --no-cluster; see cluster.py): create on a remote
      node, and restore of a snapshot the node must fetch from S3
  - density (only, with --density N): sandboxes until N or refusal
and prints the ratios against the targets of the issues, after what it ran
on (CPU, cgroup version, kernel, runsc).
Needs root, runsc, and built binaries (`make build`).

The sbx server runs under a cgroup parent of its own (named after its data
dir), the raw baseline under another (named after its work dir); both are
made fresh for this run and removed after it.
"""

import argparse
import http.client
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import cluster

ROOT = pathlib.Path(__file__).resolve().parents[1]
CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")


# Blocks the round trips and the floor are measured in, alternately.
ROUND_TRIP_BLOCKS = 5
# Copies x10 measured (each ten restores at once).
COPY_RUNS = 3

# Runs inside a sandbox: posix_spawn + waitpid of /bin/true, the process
# creation every command pays under gVisor; prints the times in ms.
SPAWN_FLOOR = ("import os, time\n"
               "for _ in range({n}):\n"
               "    t = time.perf_counter()\n"
               "    os.waitpid(os.posix_spawn('/bin/true', ['true'], os.environ), 0)\n"
               "    print((time.perf_counter() - t) * 1000)\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cgroup_version():
    return "v2" if (CGROUP_ROOT / "cgroup.controllers").exists() else "v1"


def host_info():
    """What the bench runs on, as report lines."""
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        r = subprocess.run(["runsc", "--version"], capture_output=True, text=True, timeout=30)
        runsc_version = (r.stdout.splitlines() or ["unknown"])[0].removeprefix("runsc version ")
    except (OSError, subprocess.SubprocessError):
        runsc_version = "unknown"
    usable = len(os.sched_getaffinity(0))
    return [
        f"cpu: {model}",
        f"cpus: {os.cpu_count()}" + (f" ({usable} usable by the bench)" if usable != os.cpu_count() else ""),
        f"cgroup: {cgroup_version()}",
        f"kernel: {platform.release()}",
        f"runsc: {runsc_version}",
    ]


def cgroup_dirs(name):
    """The directories of cgroup `name` that exist: one per v1 hierarchy, or the v2 one."""
    return [d for d in [CGROUP_ROOT / name, *sorted(CGROUP_ROOT.glob(f"*/{name}"))] if d.is_dir()]


def assert_no_cgroup(name):
    left = cgroup_dirs(name)
    if left:
        raise RuntimeError(f"cgroup {name} already exists: {', '.join(map(str, left))}")


def remove_cgroup(name):
    """Removes cgroup `name` and what is left under it, children first;
    returns the directories that could not be removed."""
    stuck = []
    for d in cgroup_dirs(name):
        for sub, _, _ in sorted(os.walk(d), key=lambda w: -len(w[0])):
            try:
                os.rmdir(sub)
            except FileNotFoundError:
                pass
            except OSError as e:
                stuck.append(f"{sub}: {e}")
    return stuck


def make_raw_cgroup_parent(name):
    """Makes the cgroup parent of the raw baseline's sandboxes ready for runsc,
    as sbx does for its own: on v1 a new cpuset cgroup has empty cpuset.cpus
    and cpuset.mems, and runsc then cannot give its child any ("permission
    denied" writing the child's cpuset.cpus), so the parent gets the root's;
    on v2 the controllers are enabled down to it (where they can be)."""
    if cgroup_version() == "v1":
        cpuset = CGROUP_ROOT / "cpuset"
        if (cpuset / "cpuset.cpus").exists():
            (cpuset / name).mkdir()
            for f in ("cpuset.cpus", "cpuset.mems"):
                (cpuset / name / f).write_text((cpuset / f).read_text())
        # runsc makes the parent in the other hierarchies itself.
    else:
        (CGROUP_ROOT / name).mkdir()
        for level in (CGROUP_ROOT, CGROUP_ROOT / name):
            available = (level / "cgroup.controllers").read_text().split()
            for c in ("cpu", "cpuset", "memory", "pids", "io"):
                if c in available:
                    try:
                        (level / "cgroup.subtree_control").write_text(f"+{c}")
                    except OSError:
                        pass


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(name, xs):
    return f"{name:<34} median {statistics.median(xs):8.1f} ms   p90 {pct(xs, 90):8.1f} ms   (n={len(xs)})"


class Sbx:
    def __init__(self, sbx_bin, agent, images, command=("server",), args=(), env=None):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sbx-bench-", dir="/var/tmp"))
        # A cgroup parent of this server's own, made by the server.
        self.cgroup_parent = self.dir.name
        self.proc = None
        if cgroup_dirs(self.cgroup_parent):
            shutil.rmtree(self.dir, ignore_errors=True)
            assert_no_cgroup(self.cgroup_parent)
        # SBX_BENCH_SERVER_LOG=FILE keeps the server's log (else dropped).
        log_path = os.environ.get("SBX_BENCH_SERVER_LOG")
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            (self.dir / "images").symlink_to(images)
            self.api_port, self.proxy_port = free_port(), free_port()
            self.proc = subprocess.Popen(
                [sbx_bin, *command, "--data-dir", str(self.dir),
                 "--cgroup-parent", self.cgroup_parent,
                 "--api-addr", f"127.0.0.1:{self.api_port}",
                 "--proxy-addr", f"127.0.0.1:{self.proxy_port}",
                 "--agent-bin", agent, *args],
                stdout=self.log, stderr=self.log,
                env=dict(os.environ, **(env or {})),
            )
            self.wait_ready()
        except BaseException:
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            shutil.rmtree(self.dir, ignore_errors=True)
            remove_cgroup(self.cgroup_parent)
            raise

    def wait_ready(self):
        """Waits until /healthz says sandboxes can start (the first server on
        a fresh host builds the default image first)."""
        deadline = time.time() + 900
        health = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sbx server exited ({self.proc.returncode}) during start")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=2)
                c.request("GET", "/healthz")
                r = c.getresponse()
                if r.status == 200:
                    health = json.loads(r.read())
            except (OSError, ValueError):
                pass
            if health and health.get("ready") is True:
                return
            image = (health or {}).get("default_image") or {}
            if image.get("status") == "failed":
                raise RuntimeError(f"sbx server cannot build its default image: {image.get('error')}")
            time.sleep(0.1)
        raise RuntimeError(f"sbx server not ready in time; last /healthz {health}")

    def cpuset_file(self, sid):
        """The cpuset.cpus file of a sandbox's cgroup (None without cpuset)."""
        f = CGROUP_ROOT / "cpuset" / self.cgroup_parent / sid / "cpuset.cpus"
        if not f.exists():
            f = CGROUP_ROOT / self.cgroup_parent / sid / "cpuset.cpus"
        return f if f.exists() else None

    def all_cpus(self):
        """The CPUs this server's sandboxes may use (its cgroup parent's)."""
        for d in (CGROUP_ROOT / "cpuset" / self.cgroup_parent, CGROUP_ROOT / self.cgroup_parent):
            for name in ("cpuset.effective_cpus", "cpuset.cpus"):
                if (d / name).exists() and (d / name).read_text().strip():
                    return (d / name).read_text().strip()
        return f"0-{os.cpu_count() - 1}"

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

    def run(self, sid, command, args=(), conn=None):
        """Runs a command to completion through the proxy; returns the SSE body."""
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=120)
        conn.request("POST", "/api/v1/processes/run",
                     body=json.dumps({"command": command, "args": list(args)}),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream",
                              "X-Tensorlake-Sandbox-Id": sid})
        return conn.getresponse().read().decode()

    def run_true(self, conn, sid):
        body = self.run(sid, "true", conn=conn)
        assert '"exit_code":0' in body.replace(" ", ""), body

    def daemon(self, sid, method, path, body):
        conn = http.client.HTTPConnection("127.0.0.1", self.proxy_port, timeout=120)
        conn.request(method, "/api/v1" + path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "X-Tensorlake-Sandbox-Id": sid})
        r = conn.getresponse()
        data = r.read()
        assert r.status < 300, (r.status, data)
        return json.loads(data) if data else None

    def sh_ok(self, sid, script):
        """True when `sh -c script` exits 0 in the sandbox."""
        return '"exit_code":0' in self.run(sid, "sh", ["-c", script]).replace(" ", "")

    def spawn_floor(self, sid, n):
        """Times process creation inside the sandbox itself (no API)."""
        body = self.run(sid, "python3", ["-c", SPAWN_FLOOR.format(n=n)])
        lines = [json.loads(l[len("data: "):]) for l in body.splitlines() if l.startswith("data: ")]
        return [float(ev["line"]) for ev in lines if ev.get("stream") == "stdout"]

    def snapshot(self, sid, kind="memory"):
        """Takes a snapshot and waits until it is stored; returns its SnapshotInfo."""
        st, v = self.api("POST", f"/sandboxes/{sid}/snapshot", {"snapshot_type": kind})
        assert st == 200, v
        deadline = time.time() + 300
        while time.time() < deadline:
            _, info = self.api("GET", f"/snapshots/{v['snapshot_id']}")
            if info["status"] in ("completed", "failed"):
                assert info["status"] == "completed", info
                return info
            time.sleep(0.05)
        raise RuntimeError(f"snapshot {v['snapshot_id']} did not complete")

    def stop(self):
        # Whatever a failed measurement left running goes first: a server
        # stopped with live sandboxes leaves their mounts behind.
        try:
            _, v = self.api("GET", "/sandboxes")
            for box in v.get("sandboxes", []):
                self.delete_and_wait(box["sandbox_id"])
        except (OSError, ValueError, KeyError):
            pass
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        # The server removes its cgroup parent at a clean stop.
        if cgroup_dirs(self.cgroup_parent):
            print(f"warning: the sbx server left its cgroup parent {self.cgroup_parent}", file=sys.stderr)
        for stuck in remove_cgroup(self.cgroup_parent):
            print(f"warning: cannot remove cgroup {stuck}", file=sys.stderr)


# Two baselines:
#   minimal:    runsc with no network, no cgroup limits, gVisor's default rootfs overlay
#   equivalent: what sbx asks of runsc: cgroup CPU/memory limits, host-backed
#               rootfs (--overlay2=none), a network namespace (made before the
#               clock starts) with the same start workaround sbx needs.
BASELINES = ("minimal", "equivalent")


def runsc(root, kind, *args, netns=None):
    flags = ["--network=none"] if kind == "minimal" else ["--overlay2=none"]
    cmd = ["runsc", f"--root={root}", *flags, *args]
    if netns and args[0] in ("start", "restore"):
        # What sbx does: the bundle names the netns; runsc only needs a
        # private /proc/sys/net to believe it is not the host's. (Not
        # `ip netns exec`: its fresh /sys hides the cgroup mounts that
        # `restore`, which also creates, needs.)
        cmd = ["unshare", "-m", "sh", "-c",
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
        # The cgroup parent of the raw baseline is named after its work dir.
        cfg["linux"]["cgroupsPath"] = f"/{workdir.name}/{name}"
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


# Holds 256 MB of random (incompressible, non-zero) memory, then sleeps.
HOLD_256MB = ("import os, time; b = os.urandom(256 << 20); "
              "open('/tmp/ready', 'w').write('1'); time.sleep(1e9)")
# 1 GB of incompressible files in eight pieces.
WRITE_1GB = "mkdir -p /root/gb && for i in 1 2 3 4 5 6 7 8; do head -c 128M /dev/urandom > /root/gb/$i; done"


def busybox_oci_archive(work):
    """An OCI archive of a busybox-only image (Debian's busybox-static,
    packed by umoci, written by skopeo); None without those tools."""
    if not all(shutil.which(t) for t in ("umoci", "skopeo")) or not pathlib.Path("/bin/busybox").exists():
        return None
    d = work / "bb-image"
    rootfs = d / "rootfs"
    for sub in ("bin", "etc", "tmp", "root"):
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "true", "sleep", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    layout, bundle = d / "layout", d / "bundle"
    image = f"{layout}:1"
    q = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(["umoci", "init", "--layout", str(layout)], **q)
    subprocess.run(["umoci", "new", "--image", image], **q)
    subprocess.run(["umoci", "unpack", "--image", image, str(bundle)], **q)
    subprocess.run(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], **q)
    subprocess.run(["umoci", "repack", "--image", image, str(bundle)], **q)
    subprocess.run(["umoci", "config", "--image", image, "--config.env", "PATH=/bin"], **q)
    archive = d / "bb.tar"
    subprocess.run(["skopeo", "copy", f"oci:{image}", f"oci-archive:{archive}"], **q)
    return archive


def bench_imported_image(s, work, raw_root, n):
    """TTI of sandboxes of an imported (busybox-only) image, and raw runsc
    on the same root filesystem; None when the image cannot be made."""
    archive = busybox_oci_archive(work)
    if archive is None:
        print("note: no umoci/skopeo/busybox-static: the imported-image case is skipped", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", s.api_port, timeout=300)
    c.request("POST", "/v1/namespaces/default/images/import-archive?name=bench-bb&format=oci-archive",
              body=archive.read_bytes(), headers={"Content-Type": "application/x-tar"})
    r = c.getresponse()
    lines = [json.loads(x) for x in r.read().decode().splitlines() if x.strip()]
    assert r.status == 200 and lines[-1]["event"] == "done", (r.status, lines)
    out = {"import_ms": (time.perf_counter() - t0) * 1000}
    image = lines[-1]["image"]
    rootfs = s.dir / "custom-images" / image["id"] / "rootfs"
    out["sbx"], out["raw"] = [], {k: [] for k in BASELINES}
    for i in range(n):
        t0 = time.perf_counter()
        st, v = s.api("POST", "/sandboxes", {"image": "bench-bb"})
        assert st == 200 and v["status"] == "running", v
        conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=60)
        s.run_true(conn, v["sandbox_id"])
        out["sbx"].append((time.perf_counter() - t0) * 1000)
        s.delete_and_wait(v["sandbox_id"])
        for kind in BASELINES:
            ms, cleanup = raw_tti(rootfs, work, raw_root, kind, f"bb{i}")
            out["raw"][kind].append(ms)
            cleanup()
    return out


def print_imported_image(r):
    print(f"image import (oci-archive, busybox, {r['import_ms']:.0f} ms)")
    print(summary("sbx create -i imported -> first command", r["sbx"]))
    for kind in BASELINES:
        print(summary(f"raw runsc ({kind}), same rootfs", r["raw"][kind]))
    for kind in BASELINES:
        ratio = statistics.median(r["sbx"]) / statistics.median(r["raw"][kind])
        print(f"imported-image TTI ratio vs {kind:<10} (median) {ratio:.2f}x   target <= 1.2x   {verdict(ratio <= 1.2)}")


def bench_pool(s, n, settle=6.0):
    """Claim -> first command on a warm pool of n sandboxes, each claimed
    once (max_containers = n: no refill runs beside the measurement). The
    pool is left to settle first, as a pool waits between claims (its idle
    sandboxes are frozen then: the claim's first request thaws one)."""
    st, v = s.api("POST", "/sandbox-pools", {"warm_containers": n, "max_containers": n})
    assert st == 200, v
    pool = v["pool_id"]

    def warm_running():
        _, p = s.api("GET", f"/sandbox-pools/{pool}")
        ids = [c["id"] for c in p["containers"] if c["state"] == "Idle"]
        return len(ids) == n and all(s.api("GET", f"/sandboxes/{i}")[1]["status"] == "running" for i in ids)

    wait_for(warm_running, f"{n} warm sandboxes")
    time.sleep(settle)
    out = []
    claimed = []
    for _ in range(n):
        t0 = time.perf_counter()
        st, v = s.api("POST", f"/sandbox-pools/{pool}/sandboxes", {})
        assert st == 200 and v["status"] == "running", v
        conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=60)
        s.run_true(conn, v["sandbox_id"])
        out.append((time.perf_counter() - t0) * 1000)
        claimed.append(v["sandbox_id"])
    for sid in claimed:
        s.delete_and_wait(sid)
    s.api("DELETE", f"/sandbox-pools/{pool}")
    return out


def print_pool(r):
    m = statistics.median(r)
    print(summary("pool claim -> first command", r))
    print(f"pool claim -> first command median {m:.1f} ms   target <= 30 ms   {verdict(m <= 30)}")


def settle():
    """Flushes what earlier steps left dirty (GBs of snapshots and written
    disks), so that the kernel's writeback of it does not land in the next
    measurement."""
    os.sync()
    time.sleep(1)


def wait_for(cond, what, limit=120):
    deadline = time.time() + limit
    while not cond():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def raw_container(rootfs, work, root, name, args):
    """A raw runsc sandbox (minimal baseline) running `args`."""
    b = raw_bundle(rootfs, work, name, "minimal")
    cfg = json.loads((b / "config.json").read_text())
    cfg["process"]["args"] = args
    (b / "config.json").write_text(json.dumps(cfg))
    runsc(root, "minimal", "create", f"--bundle={b}", name)
    runsc(root, "minimal", "start", name)
    return b


def raw_ok(root, name, *cmd):
    r = subprocess.run(["runsc", f"--root={root}", "exec", name, *cmd],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def raw_restores_equivalent(rootfs, work, raw_root, n):
    """Times `runsc restore` + exec true of a sandbox configured like sbx's
    (network namespace, cgroup limits, host-backed rootfs), n times."""
    netns = "sbxbenchrestore"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        b = raw_bundle(rootfs, work, "rawsmalleq", "equivalent", netns)
        runsc(raw_root, "equivalent", "create", f"--bundle={b}", "rawsmalleq")
        runsc(raw_root, "equivalent", "start", "rawsmalleq", netns=netns)
        img = work / "rawsmalleq-img"
        img.mkdir()
        runsc(raw_root, "equivalent", "checkpoint", "--compression=none", "--direct",
              f"--image-path={img}", "rawsmalleq")
        runsc(raw_root, "equivalent", "delete", "--force", "rawsmalleq")
        times = []
        for i in range(n):
            name = f"rawrestoreeq{i}"
            t0 = time.perf_counter()
            runsc(raw_root, "equivalent", "restore", "--detach", f"--image-path={img}",
                  f"--bundle={b}", name, netns=netns)
            runsc(raw_root, "equivalent", "exec", name, "/bin/true")
            times.append((time.perf_counter() - t0) * 1000)
            runsc(raw_root, "equivalent", "delete", "--force", name)
        return times
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def evict_from_page_cache(img):
    """Drops an image's files from the host's page cache, as they are right
    after a checkpoint writes them with O_DIRECT."""
    for f in img.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_restores(raw_root, img, bundle, prefix, n, cold=False):
    """Milliseconds of n raw `runsc restore` + `exec true` of one image;
    `cold`: each restore reads it from disk, not from the page cache."""
    times = []
    for i in range(n):
        name = f"{prefix}{i}"
        if cold:
            evict_from_page_cache(img)
        t0 = time.perf_counter()
        runsc(raw_root, "minimal", "restore", "--detach", f"--image-path={img}", f"--bundle={bundle}", name)
        runsc(raw_root, "minimal", "exec", name, "/bin/true")
        times.append((time.perf_counter() - t0) * 1000)
        runsc(raw_root, "minimal", "delete", "--force", name)
    return times


def bench_snapshots(s, rootfs, work, raw_root, n):
    """Snapshot measurements, sbx and raw runsc side by side; returns a dict."""
    out = {}
    # 1. Pauses of memory and filesystem snapshots of a sandbox with 256 MB
    # touched, with an empty disk and with 1 GB written to it; and dedup of
    # the second memory snapshot.
    _, v = s.api("POST", "/sandboxes", {})
    big = v["sandbox_id"]
    s.daemon(big, "POST", "/processes", {"command": "python3", "args": ["-c", HOLD_256MB]})
    wait_for(lambda: s.sh_ok(big, "test -f /tmp/ready"), "256 MB in the sandbox")

    def pauses(kind, key, raw_key=None, n=3):
        # With `raw_key`, each snapshot is followed by a raw checkpoint of
        # the same sandbox: the two alternate, so that the VM's drift over
        # the run weighs on both sides alike.
        snaps = []
        if raw_key:
            out[raw_key] = []
        for i in range(n):
            snaps.append(s.snapshot(big, kind))
            if raw_key:
                out[raw_key].append(raw_checkpoint_of_big(f"{raw_key}{i}"))
        out[key] = [x["pause_ms"] for x in snaps]
        for x in snaps:
            s.api("DELETE", f"/snapshots/{x['snapshot_id']}")
        return snaps

    def raw_checkpoint_of_big(name):
        # Raw runsc on sbx's own sandbox: the same memory, configuration and
        # CPUs (where sbx pins a sandbox by a one-CPU cpuset, on kernels
        # before 6.2, it lets it use every CPU for its checkpoint, and so
        # does this; a sandbox pinned by its affinity stays pinned).
        cpus = s.cpuset_file(big)
        pinned = cpus.read_text() if cpus else None
        if pinned is not None and ("," in pinned or "-" in pinned):
            cpus = None  # a two-CPU cpuset: pinned by its affinity
        img = work / f"same-sandbox-{name}"
        img.mkdir()
        assert s.sh_ok(big, "true")  # thawed, if it was idle
        if cpus:
            cpus.write_text(s.all_cpus())
        t0 = time.perf_counter()
        subprocess.run(["runsc", f"--root={s.dir / 'runsc'}", "--overlay2=none",
                        "--net-disconnect-ok", "checkpoint", "--leave-running",
                        "--compression=none", "--direct", f"--image-path={img}", big],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        took = (time.perf_counter() - t0) * 1000
        if cpus:
            cpus.write_text(pinned)
        shutil.rmtree(img)
        return took

    snaps = pauses("memory", "pause", "same_ckpt", n=7)
    out["first_stored"] = snaps[0]["stored_bytes"]
    out["first_size"] = snaps[0]["size_bytes"]
    out["again_stored"] = [x["stored_bytes"] for x in snaps[1:]]
    pauses("filesystem", "fs_pause")
    assert s.sh_ok(big, WRITE_1GB), "writing 1 GB in the sandbox"
    pauses("memory", "pause_1g", "same_ckpt_1g", n=7)
    pauses("filesystem", "fs_pause_1g")
    s.delete_and_wait(big)

    b = raw_container(rootfs, work, raw_root, "rawbig", ["/usr/bin/python3", "-c", HOLD_256MB])
    wait_for(lambda: raw_ok(raw_root, "rawbig", "test", "-f", "/tmp/ready"), "256 MB raw")
    # The flags sbx uses: no compression, O_DIRECT writes. `checkpoint
    # --leave-running` pauses the sandbox for the image by itself; capturing
    # its files at the same instant takes a pause + resume around it.
    for key, around in (("raw_ckpt", False), ("raw_pause", True)):
        out[key] = []
        for i in range(3):
            img = work / f"rawbig-img-{key}{i}"
            img.mkdir()
            t0 = time.perf_counter()
            if around:
                runsc(raw_root, "minimal", "pause", "rawbig")
            runsc(raw_root, "minimal", "checkpoint", "--leave-running", "--compression=none",
                  "--direct", f"--image-path={img}", "rawbig")
            if around:
                runsc(raw_root, "minimal", "resume", "rawbig")
            out[key].append((time.perf_counter() - t0) * 1000)
            shutil.rmtree(img)
    # Suspend = a plain checkpoint (the sandbox stops); resume = restore + a command.
    settle()
    susp_img = work / "rawbig-suspend"
    susp_img.mkdir()
    t0 = time.perf_counter()
    runsc(raw_root, "minimal", "checkpoint", "--compression=none", "--direct",
          f"--image-path={susp_img}", "rawbig")
    out["raw_suspend"] = [(time.perf_counter() - t0) * 1000]
    runsc(raw_root, "minimal", "delete", "--force", "rawbig")
    # A resume reads an image its suspend has just written with O_DIRECT,
    # which leaves nothing in the page cache: so do these.
    out["raw_resume"] = raw_restores(raw_root, susp_img, b, "rawresume", 5, cold=True)
    shutil.rmtree(susp_img)

    # Raw `runsc checkpoint` (it stops the sandbox) of sbx sandboxes like the
    # one suspended below: the same configuration, CPUs and memory.
    out["raw_suspend_same"] = []
    # Five: one checkpoint moves by ~40 ms from one sandbox to the next.
    for i in range(5):
        _, v = s.api("POST", "/sandboxes", {})
        twin = v["sandbox_id"]
        s.daemon(twin, "POST", "/processes", {"command": "python3", "args": ["-c", HOLD_256MB]})
        wait_for(lambda: s.sh_ok(twin, "test -f /tmp/ready"), "256 MB in the twin sandbox")
        img = work / f"twin-suspend{i}"
        img.mkdir()
        t0 = time.perf_counter()
        subprocess.run(["runsc", f"--root={s.dir / 'runsc'}", "--overlay2=none",
                        "--net-disconnect-ok", "checkpoint", "--compression=none", "--direct",
                        f"--image-path={img}", twin],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out["raw_suspend_same"].append((time.perf_counter() - t0) * 1000)
        s.delete_and_wait(twin)
        shutil.rmtree(img)

    # Suspend -> suspended and resume -> first command of a named sandbox
    # holding 256 MB, eight cycles.
    st, v = s.api("POST", "/sandboxes", {"name": "bench-suspend"})
    assert st == 200, v
    named = v["sandbox_id"]
    s.daemon(named, "POST", "/processes", {"command": "python3", "args": ["-c", HOLD_256MB]})
    wait_for(lambda: s.sh_ok(named, "test -f /tmp/ready"), "256 MB in the named sandbox")
    out["suspend"], out["resume"], out["resume_later"] = [], [], []
    # Five resumes right after their suspend (the old sandbox is still
    # being torn down), then three that come 2 s later, as a resume after
    # any idle time does.
    for wait in (0, 0, 0, 0, 0, 2, 2, 2):
        t0 = time.perf_counter()
        st, v = s.api("POST", "/sandboxes/bench-suspend/suspend?wait_ms=30000")
        assert st == 200 and v["status"] == "suspended", (st, v)
        out["suspend"].append((time.perf_counter() - t0) * 1000)
        time.sleep(wait)
        t0 = time.perf_counter()
        st, v = s.api("POST", "/sandboxes/bench-suspend/resume?wait_ms=30000")
        assert st == 200 and v["status"] == "running", (st, v)
        conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=60)
        s.run_true(conn, named)
        out["resume_later" if wait else "resume"].append((time.perf_counter() - t0) * 1000)
    s.delete_and_wait(named)

    # 2. Warm restore -> first command, of a small sandbox.
    settle()
    _, v = s.api("POST", "/sandboxes", {})
    small = v["sandbox_id"]
    snap = s.snapshot(small)["snapshot_id"]
    out["restore"] = []
    for i in range(n):
        t0 = time.perf_counter()
        st, r = s.api("POST", "/sandboxes", {"snapshot_id": snap})
        assert st == 200 and r["status"] == "running", r
        conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=60)
        s.run_true(conn, r["sandbox_id"])
        out["restore"].append((time.perf_counter() - t0) * 1000)
        s.delete_and_wait(r["sandbox_id"])

    b = raw_container(rootfs, work, raw_root, "rawsmall", ["/bin/sleep", "infinity"])
    img = work / "rawsmall-img"
    img.mkdir()
    runsc(raw_root, "minimal", "checkpoint", "--compression=none", "--direct",
          f"--image-path={img}", "rawsmall")
    runsc(raw_root, "minimal", "delete", "--force", "rawsmall")
    out["raw_restore"] = raw_restores(raw_root, img, b, "rawrestore", n)
    out["raw_restore_eq"] = raw_restores_equivalent(rootfs, work, raw_root, n)

    # 3. Ten running copies of a running sandbox, COPY_RUNS times: one copy
    # is ten restores at once on this host's CPUs, and its time moves by
    # ~200 ms from one to the next.
    out["copy10"], out["copies_running"] = [], []
    for _ in range(COPY_RUNS):
        settle()
        t0 = time.perf_counter()
        st, r = s.api("POST", f"/sandboxes/{small}/copy?times=10")
        out["copy10"].append((time.perf_counter() - t0) * 1000)
        assert st == 200, r
        out["copies_running"].append(sum(1 for c in r["sandboxes"] if c["status"] == "running"))
        for c in r["sandboxes"]:
            s.delete_and_wait(c["sandbox_id"])
        s.api("DELETE", f"/snapshots/{r['snapshot_id']}")
    s.api("DELETE", f"/snapshots/{snap}")
    s.delete_and_wait(small)
    return out


def verdict(ok):
    return "OK" if ok else "MISSED"


def print_snapshots(r):
    med = statistics.median
    print(summary("raw runsc checkpoint --leave-running, minimal sandbox (256MB)", r["raw_ckpt"]))
    print(summary("raw pause+checkpoint+resume, minimal sandbox (256MB)", r["raw_pause"]))
    for key, raw_key, disk in (("pause", "same_ckpt", "empty disk"),
                               ("pause_1g", "same_ckpt_1g", "1 GB written")):
        m, raw = med(r[key]), med(r[raw_key])
        print(summary(f"sbx memory-snapshot pause (256MB, {disk})", r[key]))
        print(summary(f"raw runsc checkpoint --leave-running of that sandbox", r[raw_key]))
        print(f"memory-snapshot pause, {disk:<12}: {m:.0f} ms = {m / raw:.2f}x raw checkpoint of the same "
              f"sandbox ({m / med(r['raw_ckpt']):.2f}x the minimal one)   target <= 1.1x   {verdict(m <= 1.1 * raw)}")
    for key, disk in (("fs_pause", "empty disk"), ("fs_pause_1g", "1 GB written")):
        m = med(r[key])
        print(summary(f"sbx filesystem-snapshot pause ({disk})", r[key]))
        print(f"filesystem-snapshot pause, {disk:<12}: {m:.0f} ms   target <= 50 ms   {verdict(m <= 50)}")
    again = max(r["again_stored"])
    share = again / r["first_stored"] * 100
    print(f"second snapshot of unchanged sandbox: {again / 1e6:.2f} MB new of {r['first_stored'] / 1e6:.1f} MB "
          f"first ({r['first_size'] / 1e6:.0f} MB logical) = {share:.2f}%   target <= 5%   "
          f"{verdict(share <= 5)}")
    print(summary("sbx warm restore -> first command", r["restore"]))
    print(summary("raw restore + exec true (minimal)", r["raw_restore"]))
    print(summary("raw restore + exec true (equivalent)", r["raw_restore_eq"]))
    for kind, key in (("minimal", "raw_restore"), ("equivalent", "raw_restore_eq")):
        ratio = med(r["restore"]) / med(r[key])
        print(f"warm restore ratio vs {kind:<10} (median) {ratio:.2f}x   target <= 1.2x   "
              f"{verdict(ratio <= 1.2)}")
    copy = med(r["copy10"])
    ok = copy <= 1000 and all(n == 10 for n in r["copies_running"])
    runs = ", ".join(f"{ms:.0f} ms" for ms in r["copy10"])
    running = ", ".join(f"{n}/10" for n in r["copies_running"])
    print(f"copy x10: median {copy:.0f} ms ({runs}), running {running}   target <= 1000 ms, all running   "
          f"{verdict(ok)}")
    print(summary("sbx suspend -> suspended (256MB)", r["suspend"]))
    print(summary("raw runsc checkpoint (stops it), sbx sandbox like it", r["raw_suspend_same"]))
    print(summary("raw runsc checkpoint (stops it), minimal sandbox", r["raw_suspend"]))
    ratio = med(r["suspend"]) / med(r["raw_suspend_same"])
    print(f"suspend ratio vs the same sandbox (median) {ratio:.2f}x   target <= 1.2x   "
          f"{verdict(ratio <= 1.2)}   "
          f"({med(r['suspend']) / med(r['raw_suspend']):.2f}x the minimal one)")
    print(summary("sbx resume -> first command, at once", r["resume"]))
    print(summary("sbx resume -> first command, 2 s later", r["resume_later"]))
    print(summary("raw restore + exec true (256MB, image not cached)", r["raw_resume"]))
    for what, key in (("at once", "resume"), ("2 s later", "resume_later")):
        ratio = med(r[key]) / med(r["raw_resume"])
        print(f"resume ratio, {what} (median) {ratio:.2f}x   target <= 1.0x   {verdict(ratio <= 1.0)}")


def cgroup_read(path):
    try:
        return int(pathlib.Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def sandbox_cpu_ns(s, sid):
    """CPU time a sandbox's cgroup has used (v1 cpuacct.usage; v2 cpu.stat usage_usec)."""
    if cgroup_version() == "v1":
        return cgroup_read(CGROUP_ROOT / "cpuacct" / s.cgroup_parent / sid / "cpuacct.usage")
    try:
        for line in (CGROUP_ROOT / s.cgroup_parent / sid / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) * 1000
    except OSError:
        pass
    return None


def sandbox_memory_bytes(s, sid):
    """Memory the sandbox's cgroup is charged with, without reclaimable file cache."""
    base = CGROUP_ROOT / ("memory" if cgroup_version() == "v1" else "") / s.cgroup_parent / sid
    usage = cgroup_read(base / ("memory.usage_in_bytes" if cgroup_version() == "v1" else "memory.current"))
    try:
        stat = dict(l.split() for l in (base / "memory.stat").read_text().splitlines())
        cache = int(stat.get("total_inactive_file", stat.get("inactive_file", 0)))
    except (OSError, ValueError):
        cache = 0
    return None if usage is None else usage - cache


def bench_idle(s, n, settle=8.0, window=10.0):
    """Creates n default sandboxes, lets them settle (past the server's
    default --idle-freeze-secs of 5), and measures the CPU each uses while
    idle (its cgroup's accounting over `window` seconds) and the memory each
    holds."""
    ids = []
    try:
        for _ in range(n):
            st, v = s.api("POST", "/sandboxes", {})
            assert st == 200 and v["status"] == "running", v
            ids.append(v["sandbox_id"])
        for sid in ids:
            assert s.sh_ok(sid, "true")
        time.sleep(settle)
        t0 = time.monotonic()
        before = {sid: sandbox_cpu_ns(s, sid) for sid in ids}
        time.sleep(window)
        after = {sid: sandbox_cpu_ns(s, sid) for sid in ids}
        secs = time.monotonic() - t0
        cpu = [(after[i] - before[i]) / 1e6 / secs for i in ids if before[i] is not None and after[i] is not None]
        mem = [m / 2**20 for m in (sandbox_memory_bytes(s, i) for i in ids) if m is not None]
        return {"n": n, "cpu_ms_per_s": cpu, "mem_mb": mem}
    finally:
        for sid in ids:
            s.delete_and_wait(sid)


def host_meminfo_mb(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def sandbox_tasks(s, sid):
    """Host threads of a sandbox (sentry, gofer, stubs): they count against kernel.pid_max."""
    h = "pids" if cgroup_version() == "v1" else ""
    try:
        return len((CGROUP_ROOT / h / s.cgroup_parent / sid / "tasks").read_text().split())
    except OSError:
        return None


def timed_true(s, sid):
    """Milliseconds for a `true` through the API, or why it failed."""
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=30)
        s.run_true(conn, sid)
    except (OSError, AssertionError, ValueError) as e:
        return f"{sid}: {type(e).__name__}: {e}"[:300]
    return (time.perf_counter() - t0) * 1000


def bench_density(s, n, step):
    """Creates default sandboxes until n or a refusal; at every `step` it
    reports create latency, memory and idle CPU per sandbox as the count
    grows; at the end every sandbox must answer `true` within 1 s."""
    ids, rows, refused = [], [], None
    creates = []
    try:
        while len(ids) < n:
            t0 = time.perf_counter()
            try:
                st, v = s.api("POST", "/sandboxes", {})
            except OSError as e:
                refused = f"create failed: {e}"
                break
            if st != 200 or v.get("status") != "running":
                refused = f"{st} {v}"
                break
            creates.append((time.perf_counter() - t0) * 1000)
            ids.append(v["sandbox_id"])
            if len(ids) % step == 0 or len(ids) == n:
                time.sleep(8)  # past the default idle freeze
                sample = ids[-min(len(ids), 20):]
                before = {i: sandbox_cpu_ns(s, i) for i in sample}
                time.sleep(5)
                after = {i: sandbox_cpu_ns(s, i) for i in sample}
                cpu = [(after[i] - before[i]) / 1e6 / 5 for i in sample if before[i] is not None and after[i] is not None]
                mem = [m / 2**20 for m in (sandbox_memory_bytes(s, i) for i in sample) if m is not None]
                tasks = [t for t in (sandbox_tasks(s, i) for i in sample) if t is not None]
                rows.append({
                    "count": len(ids),
                    "create_ms": statistics.median(creates[-step:]),
                    "mem_mb": statistics.median(mem) if mem else 0,
                    "cpu_ms_s": statistics.median(cpu) if cpu else 0,
                    "tasks": statistics.median(tasks) if tasks else 0,
                    "host_avail_gb": host_meminfo_mb("MemAvailable") / 1024,
                })
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
        answers = [timed_true(s, i) for i in ids]
        return {"rows": rows, "refused": refused, "answers": answers, "n": n}
    finally:
        for sid in ids:
            s.api("DELETE", f"/sandboxes/{sid}")
        deadline = time.time() + 600
        while any((s.dir / "sandboxes" / i).exists() for i in ids) and time.time() < deadline:
            time.sleep(0.5)


def print_density(r):
    print(f"density: asked for {r['n']}, created {r['rows'][-1]['count'] if r['rows'] else 0}"
          + (f"; refused: {r['refused']}" if r["refused"] else ""))
    print("  count  create ms  mem MB/sandbox  idle CPU ms/s  host tasks/sandbox  host available GB")
    for row in r["rows"]:
        print(f"  {row['count']:>5}  {row['create_ms']:>9.0f}  {row['mem_mb']:>14.1f}  {row['cpu_ms_s']:>13.2f}"
              f"  {row['tasks']:>18.0f}  {row['host_avail_gb']:>17.1f}")
    ok = [a for a in r["answers"] if not isinstance(a, str)]
    slow = [a for a in ok if a > 1000]
    failed = [a for a in r["answers"] if isinstance(a, str)]
    print(f"  every sandbox asked to run `true`: {len(ok)} answered, {len(failed)} failed, {len(slow)} over 1 s"
          + (f"; median {statistics.median(ok):.0f} ms, max {max(ok):.0f} ms" if ok else ""))
    for why in failed[:5]:
        print(f"  failed: {why}")


def print_idle(r):
    cpu, mem = r["cpu_ms_per_s"], r["mem_mb"]
    if not cpu:
        print("idle sandboxes: no CPU accounting found")
        return
    m = statistics.median(cpu)
    print(f"idle CPU per sandbox ({r['n']} idle)   median {m:.2f} ms/s  max {max(cpu):.2f} ms/s"
          f"   target <= 1 ms/s   {verdict(m <= 1)}")
    if mem:
        mm = statistics.median(mem)
        print(f"idle memory per sandbox             median {mm:.1f} MB  max {max(mem):.1f} MB"
              f"   target <= 25 MB   {verdict(mm <= 25)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sbx", default=str(ROOT / "target/release/sbx"))
    ap.add_argument("--agent", default=str(ROOT / "target/x86_64-unknown-linux-gnu/release/sbx-agent"))
    ap.add_argument("--images", default=str(ROOT / "target/sbx-test-images"))
    ap.add_argument("-n", type=int, default=10, help="sandboxes per side")
    ap.add_argument("--round-trips", type=int, default=100)
    ap.add_argument("--no-snapshots", action="store_true", help="skip the snapshot measurements")
    ap.add_argument("--idle", type=int, default=20, help="idle sandboxes for the idle-cost measurement (0: skip)")
    ap.add_argument("--idle-only", action="store_true", help="only the idle-cost measurement")
    ap.add_argument("--density", type=int, default=0,
                    help="only the density run: create up to N idle sandboxes, then check each answers")
    ap.add_argument("--density-step", type=int, default=50)
    ap.add_argument("--no-cluster", action="store_true",
                    help="skip the many-hosts case (control plane on PostgreSQL + S3, two nodes)")
    ap.add_argument("--cluster-only", action="store_true",
                    help="only the many-hosts case (its remote-create ratio needs the raw runs: not printed)")
    args = ap.parse_args()
    images = pathlib.Path(args.images)
    images.mkdir(parents=True, exist_ok=True)

    host = host_info()
    if args.cluster_only:
        many = cluster.bench_cluster(Sbx, args.sbx, args.agent, images, free_port, HOLD_256MB, args.n)
        for line in host:
            print(line)
        if many:
            cluster.print_cluster(many, None, summary, verdict)
        return
    rootfs = images / "default" / "rootfs"
    # The raw baseline's work dir; its name is also its cgroup parent's, unique to this run.
    work = pathlib.Path(tempfile.mkdtemp(prefix="sbx-bench-raw-", dir="/var/tmp"))
    raw_root = work / "state"
    try:
        assert_no_cgroup(work.name)
        s = Sbx(args.sbx, args.agent, images)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if args.idle_only or args.density:
        try:
            if args.density:
                density = bench_density(s, args.density, args.density_step)
            else:
                idle = bench_idle(s, args.idle or 20)
        finally:
            s.stop()
            shutil.rmtree(work, ignore_errors=True)
        for line in host:
            print(line)
        if args.density:
            print_density(density)
        else:
            print_idle(idle)
        return
    try:
        make_raw_cgroup_parent(work.name)
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

        sbx_rt, raw_rt, floor = [], [], []
        conn = http.client.HTTPConnection("127.0.0.1", s.proxy_port, timeout=60)
        # In alternating blocks: gVisor's own speed drifts within a run (its
        # floor has moved between ~3.5 and ~6 ms from one minute to the
        # next here), and the ratio is of two measurements of the same time.
        per = max(1, args.round_trips // ROUND_TRIP_BLOCKS)
        for _ in range(ROUND_TRIP_BLOCKS):
            for _ in range(per):
                t0 = time.perf_counter()
                s.run_true(conn, keep)
                sbx_rt.append((time.perf_counter() - t0) * 1000)
            floor += s.spawn_floor(keep, per)
        for _ in range(min(args.round_trips, 20)):
            t0 = time.perf_counter()
            runsc(raw_root, "minimal", "exec", keep_raw[0], "/bin/true")
            raw_rt.append((time.perf_counter() - t0) * 1000)
        s.api("DELETE", f"/sandboxes/{keep}")
        keep_raw[1]()
        imported = bench_imported_image(s, work, raw_root, args.n)
        pool = bench_pool(s, args.n)
        snapshots = None if args.no_snapshots else bench_snapshots(s, rootfs, work, raw_root, args.n)
        idle = bench_idle(s, args.idle) if args.idle else None
        s.stop()
        s = None
        # Last: its servers and services run after the single host's is gone.
        many = None if args.no_cluster else cluster.bench_cluster(
            Sbx, args.sbx, args.agent, images, free_port, HOLD_256MB, args.n)
    finally:
        if s:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)
        for stuck in remove_cgroup(work.name):
            print(f"warning: cannot remove cgroup {stuck}", file=sys.stderr)

    for line in host:
        print(line)
    print(summary("sbx create -> first command", sbx_tti))
    for kind in BASELINES:
        print(summary(f"raw runsc ({kind})", raw[kind]))
    for kind in BASELINES:
        r = statistics.median(sbx_tti) / statistics.median(raw[kind])
        print(f"TTI ratio vs {kind:<10} (median) {r:.2f}x   target <= 1.05x   {verdict(r <= 1.05)}")
    print(summary("sbx command round trip (true)", sbx_rt))
    print(summary("raw runsc exec true", raw_rt))
    print(summary("in-sandbox spawn+wait of true", floor) + "   (gVisor's floor for any command)")
    m = statistics.median(sbx_rt)
    f = statistics.median(floor)
    print(f"round trip median {m:.1f} ms = {m / f:.2f}x the floor   target <= 1.5x   {verdict(m <= 1.5 * f)}   "
          f"({statistics.median(raw_rt) / m:.1f}x faster than runsc exec)")
    if imported:
        print_imported_image(imported)
    print_pool(pool)
    if snapshots:
        print_snapshots(snapshots)
    if idle:
        print_idle(idle)
    if many:
        cluster.print_cluster(many, raw["equivalent"], summary, verdict)


if __name__ == "__main__":
    main()
