"""The many-hosts part of the bench (issue 16): a control plane on
PostgreSQL + S3 that runs no sandboxes (`sbx server --no-local-node`) and
two `sbx node`s that joined it, all on this machine.

  - create on a remote node -> first command, through the control plane's
    API and proxy, against raw runsc's create -> first command measured in
    the same run (the main bench's "equivalent" baseline)
  - restore of a 256 MB memory snapshot on a node that has nothing of it
    (its chunks come from S3) -> first command, against a warm restore of
    the same snapshot on that node once it holds it

PostgreSQL (a throwaway cluster: initdb + postgres on a free port, as the
`postgres` user) and SeaweedFS (`weed mini`, S3 with one bucket) are
started here and removed after; they come with `scripts/install-deps.sh
--test`. Without them the case is skipped with a note.
"""

import glob
import http.client
import json
import os
import pathlib
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

WEED_INSTALLED = "/opt/sbx/test-tools/bin/weed"
TOKEN = "bench-node-token-0123456789"
S3_KEY, S3_SECRET = "sbx-bench-access", "sbx-bench-secret-key"


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(pathlib.Path(p).parts[-3]))
    return pathlib.Path(found[-1]).parent if found else None


def weed_bin():
    for p in (os.environ.get("SBX_WEED_BIN"), shutil.which("weed"), WEED_INSTALLED):
        if p and os.path.isfile(p):
            return p
    return None


def wait(cond, what, limit=60.0, every=0.05):
    deadline = time.time() + limit
    while time.time() < deadline:
        if cond():
            return
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def port_open(port):
    import socket
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Services:
    """PostgreSQL and SeaweedFS of this run's own, in one temp dir."""

    def __init__(self, free_port):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="sbx-bench-cluster-", dir="/var/tmp"))
        self.procs = []
        try:
            self._postgres(free_port)
            self._weed(free_port)
        except BaseException:
            self.stop()
            raise

    def _postgres(self, free_port):
        bin_dir = pg_bin()
        user = pwd.getpwnam("postgres")
        as_pg = lambda: (os.setgid(user.pw_gid), os.setuid(user.pw_uid))  # noqa: E731
        pg = self.dir / "pg"
        pg.mkdir()
        self.dir.chmod(0o711)
        os.chown(pg, user.pw_uid, user.pw_gid)
        subprocess.run([bin_dir / "initdb", "-A", "trust", "-U", "sbx", "-E", "UTF8", "--no-sync",
                        "-D", pg / "data"], check=True, preexec_fn=as_pg, cwd=pg,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pg_port = free_port()
        self.procs.append(subprocess.Popen(
            [bin_dir / "postgres", "-D", pg / "data", "-k", pg, "-p", str(self.pg_port),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            preexec_fn=as_pg, cwd=pg, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait(lambda: subprocess.run([bin_dir / "pg_isready", "-q", "-h", "127.0.0.1", "-p",
                                     str(self.pg_port)]).returncode == 0, "postgres")
        subprocess.run([bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "sbx",
                        "bench"], check=True)
        self.state_url = f"postgres://sbx@127.0.0.1:{self.pg_port}/bench"

    def _weed(self, free_port):
        w = self.dir / "weed"
        for sub in ("data", "tmp"):
            (w / sub).mkdir(parents=True)
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
        args = [weed_bin(), "mini", f"-dir={w / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false"]
        for name, port in ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={free_port()}"]
        env = dict(os.environ, TMPDIR=str(w / "tmp"), AWS_ACCESS_KEY_ID=S3_KEY,
                   AWS_SECRET_ACCESS_KEY=S3_SECRET, S3_BUCKET="sbx")
        self.procs.append(subprocess.Popen(args, env=env, cwd=w, stdout=subprocess.DEVNULL,
                                           stderr=open(w / "weed.log", "wb")))
        wait(lambda: port_open(ports["s3"]) and self._bucket_made(ports["filer"]), "SeaweedFS", limit=60)
        self.blobs_url = f"s3://sbx?endpoint=http://127.0.0.1:{ports['s3']}&region=us-east-1"

    @staticmethod
    def _bucket_made(filer_port):
        try:
            c = http.client.HTTPConnection("127.0.0.1", filer_port, timeout=2)
            c.request("GET", "/buckets/", headers={"Accept": "application/json"})
            entries = json.loads(c.getresponse().read()).get("Entries") or []
            return any(e["FullPath"] == "/buckets/sbx" for e in entries)
        except (OSError, ValueError):
            return False

    def env(self):
        return {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def missing_tools():
    missing = []
    if pg_bin() is None:
        missing.append("PostgreSQL")
    if weed_bin() is None:
        missing.append("SeaweedFS (weed)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing.append("the postgres user")
    return missing


def post(cp, path):
    c = http.client.HTTPConnection("127.0.0.1", cp.api_port, timeout=60)
    c.request("POST", path)
    r = c.getresponse()
    data = r.read()
    assert r.status == 200, (path, r.status, data)


def bench_cluster(Sbx, sbx_bin, agent, images, free_port, hold_256mb, n):
    """Runs the cluster cases; returns a dict of lists of ms, or None when
    the tools are missing."""
    missing = missing_tools()
    if missing:
        print(f"note: no {', '.join(missing)}: the many-hosts case is skipped "
              "(scripts/install-deps.sh --test installs them)", file=sys.stderr)
        return None
    svc = Services(free_port)
    servers = []
    try:
        shared = ["--state", svc.state_url, "--blobs", svc.blobs_url, "--node-lost-secs", "30"]
        cp = Sbx(sbx_bin, agent, images, args=shared + ["--no-local-node", "--node-token", TOKEN],
                 env=svc.env())
        servers.append(cp)
        cp_url = f"http://127.0.0.1:{cp.api_port}"
        nodes = []
        for _ in range(2):
            node = Sbx(sbx_bin, agent, images, command=["node", "--server", cp_url, "--node-token", TOKEN],
                       args=["--suspend-linger-secs", "0"])
            servers.append(node)
            nodes.append(node)
        node_ids = [(nd.dir / "node-id").read_text().strip() for nd in nodes]

        def on(node, sid):
            return (node.dir / "sandboxes" / sid).exists()

        def end(sid):
            """Terminates through the control plane and waits until no
            node's host holds anything of it."""
            cp.api("DELETE", f"/sandboxes/{sid}")
            wait(lambda: not any(on(nd, sid) for nd in nodes),
                 f"{sid} torn down")

        def listed_alive():
            c = http.client.HTTPConnection("127.0.0.1", cp.api_port, timeout=10)
            c.request("GET", "/v1/nodes")
            v = json.loads(c.getresponse().read())
            alive = {x["id"] for x in v["nodes"] if x.get("alive")}
            return set(node_ids) <= alive
        wait(listed_alive, "both nodes alive", limit=120, every=0.2)
        out = {"remote_tti": [], "cold_restore": [], "warm_restore": []}

        # Warm-up: one create on each node.
        for _ in range(2):
            st, v = cp.api("POST", "/sandboxes", {})
            assert st == 200 and v["status"] == "running", v
            end(v["sandbox_id"])

        for _ in range(n):
            t0 = time.perf_counter()
            st, v = cp.api("POST", "/sandboxes", {})
            assert st == 200 and v["status"] == "running", v
            conn = http.client.HTTPConnection("127.0.0.1", cp.proxy_port, timeout=60)
            cp.run_true(conn, v["sandbox_id"])
            out["remote_tti"].append((time.perf_counter() - t0) * 1000)
            end(v["sandbox_id"])

        # Snapshots are taken on node 0 (node 1 drained), restored on node 1
        # (node 0 drained): node 1 has none of them on its disk.
        post(cp, f"/v1/nodes/{node_ids[1]}/drain")
        snaps = []
        # Five: a fetch from S3 moves by ~100 ms from one to the next here.
        for _ in range(5):
            st, v = cp.api("POST", "/sandboxes", {})
            assert st == 200, v
            src = v["sandbox_id"]
            assert on(nodes[0], src)
            cp.daemon(src, "POST", "/processes", {"command": "python3", "args": ["-c", hold_256mb]})
            wait(lambda: cp.sh_ok(src, "test -f /tmp/ready"), "256 MB in the source", limit=120)
            info = cp.snapshot(src, "memory")
            snaps.append(info["snapshot_id"])
            end(src)
        post(cp, f"/v1/nodes/{node_ids[1]}/undrain")
        post(cp, f"/v1/nodes/{node_ids[0]}/drain")
        for kind in ("cold_restore", "warm_restore"):
            for sid in snaps:
                t0 = time.perf_counter()
                st, v = cp.api("POST", "/sandboxes", {"snapshot_id": sid})
                assert st == 200 and v["status"] == "running", v
                conn = http.client.HTTPConnection("127.0.0.1", cp.proxy_port, timeout=60)
                cp.run_true(conn, v["sandbox_id"])
                out[kind].append((time.perf_counter() - t0) * 1000)
                assert on(nodes[1], v["sandbox_id"])
                end(v["sandbox_id"])
        post(cp, f"/v1/nodes/{node_ids[0]}/undrain")
        for sid in snaps:
            cp.api("DELETE", f"/snapshots/{sid}")
        return out
    finally:
        # Nodes first: they leave nothing on their hosts at a clean stop.
        for s in reversed(servers):
            s.stop()
        svc.stop()


def print_cluster(r, raw_equivalent, summary, verdict):
    print("many hosts: a control plane on PostgreSQL + S3 (no local node), two nodes")
    print(summary("remote node: create -> first command", r["remote_tti"]))
    if raw_equivalent:
        ratio = statistics.median(r["remote_tti"]) / statistics.median(raw_equivalent)
        print(f"remote create ratio vs raw equivalent (median) {ratio:.2f}x   target <= 1.3x   {verdict(ratio <= 1.3)}")
    print(summary("restore, nothing cached on the node", r["cold_restore"]))
    print(summary("restore, warm on the node", r["warm_restore"]))
    ratio = statistics.median(r["cold_restore"]) / statistics.median(r["warm_restore"])
    print(f"uncached restore ratio vs warm (median) {ratio:.2f}x   target <= 2x   {verdict(ratio <= 2)}")
