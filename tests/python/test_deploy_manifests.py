"""The deployment files under deploy/ (docs/deploy.md) stay valid and true to
the `sbx` binary: every Kubernetes manifest parses as YAML and is a named
object, the node DaemonSet is privileged and keeps what sandboxes need, the
server Deployment runs `--no-local-node`, every reference (Secret and
ConfigMap keys, `$(VAR)` in args, volumes) resolves, and every flag the
manifests and the systemd units give `sbx` is one `$SBX_BIN server --help` /
`node --help` lists — and the whole command line parses (`sbx ARGS --help`
exits 0 only when every argument before `--help` is a known flag with a valid
value). With `systemd-analyze` on the host, the units also pass
`systemd-analyze verify`.

Needs no running server (none of conftest's fixtures is used).
"""

import configparser
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
UNITS = {"server": SYSTEMD / "sbx-server.service", "node": SYSTEMD / "sbx-node.service"}
ENV_EXAMPLES = {"server": SYSTEMD / "server.env.example", "node": SYSTEMD / "node.env.example"}
# Directives that give a service a mount namespace of its own (the mounts and
# netns files sbx makes would then be invisible to the host and lost at a
# restart) or filters runsc inherits and cannot live with.
FORBIDDEN_DIRECTIVES = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateNetwork",
    "PrivateMounts", "PrivateUsers", "ProtectKernelTunables", "ProtectKernelModules",
    "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset",
    "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "TemporaryFileSystem",
    "BindPaths", "BindReadOnlyPaths", "RootDirectory", "RootImage", "ProtectClock",
    "SystemCallFilter", "RestrictNamespaces", "RestrictAddressFamilies",
    "CapabilityBoundingSet", "RestrictSUIDSGID", "MemoryDenyWriteExecute",
}


def sbx_bin() -> str:
    path = os.environ.get("SBX_BIN", str(ROOT / "target/release/sbx"))
    assert os.access(path, os.X_OK), f"SBX_BIN {path} is not an executable: build sbx first"
    return path


_help_cache: dict[str, set[str]] = {}


def known_flags(command: str) -> set[str]:
    """The long flags `sbx COMMAND --help` lists (its options and the global ones)."""
    if command not in _help_cache:
        out = subprocess.run(
            [sbx_bin(), command, "--help"], capture_output=True, text=True, check=True
        ).stdout
        flags = set()
        for line in out.splitlines():
            m = re.match(r"^\s+(?:-\w,\s+)?(--[a-z0-9][a-z0-9-]*)", line)
            if m:
                flags.add(m.group(1))
        assert "--data-dir" in flags and "--help" in flags, out
        _help_cache[command] = flags
    return _help_cache[command]


def flags_in(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--")]


def assert_parses(args: list[str], what: str) -> None:
    """`sbx ARGS --help` exits 0 only when clap took every argument before
    `--help`: known flags, values of the right type (addresses, numbers)."""
    r = subprocess.run([sbx_bin(), *args, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, f"{what}: `sbx {shlex.join(args)}` does not parse:\n{r.stderr}"


# ------------------------------------------------------------------ Kubernetes


def manifest_files() -> list[pathlib.Path]:
    files = sorted([*KUBE.glob("*.yaml"), *KUBE.glob("*.yml")])
    assert files, f"no manifests under {KUBE}"
    return files


def documents() -> list[tuple[pathlib.Path, dict]]:
    docs = []
    for f in manifest_files():
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                docs.append((f, doc))
    return docs


def objects(kind: str) -> list[dict]:
    return [d for _, d in documents() if d.get("kind") == kind]


def the(kind: str) -> dict:
    found = objects(kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def sbx_container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "sbx")


def substituted(args: list[str], container: dict) -> list[str]:
    """args with Kubernetes' `$(VAR)` expansion, from the container's env
    (literal values, the ConfigMap's, or a sample address for fieldRefs)."""
    cm = {o["metadata"]["name"]: o.get("data", {}) for o in objects("ConfigMap")}
    values = {}
    for e in container.get("env", []):
        if "value" in e:
            values[e["name"]] = e["value"]
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            values[e["name"]] = cm[ref["name"]][ref["key"]]
        elif "fieldRef" in e.get("valueFrom", {}):
            values[e["name"]] = "10.0.0.7"
        else:
            values[e["name"]] = "secret"
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values[m.group(1)], a) for a in args]


def test_every_document_parses_and_is_a_named_object():
    docs = documents()
    assert docs
    for f, doc in docs:
        assert isinstance(doc, dict), f"{f.name}: a document is not a mapping"
        for key in ("apiVersion", "kind"):
            assert isinstance(doc.get(key), str) and doc[key], f"{f.name}: no {key}"
        name = (doc.get("metadata") or {}).get("name")
        assert isinstance(name, str) and name, f"{f.name}: {doc['kind']} has no metadata.name"
    namespaced = [d for _, d in docs if d["kind"] not in ("Namespace", "Kustomization")]
    namespace = the("Namespace")["metadata"]["name"]
    for d in namespaced:
        assert d["metadata"].get("namespace") == namespace, f"{d['kind']} {d['metadata']['name']}"
    # Privileged pods need a namespace whose Pod Security level allows them.
    labels = the("Namespace")["metadata"].get("labels", {})
    assert labels.get("pod-security.kubernetes.io/enforce") == "privileged"


def test_the_kustomization_lists_every_manifest():
    kustomization = the("Kustomization")
    listed = set(kustomization["resources"])
    files = {f.name for f in manifest_files() if f.name != "kustomization.yaml"}
    assert listed == files


def test_the_node_daemonset_is_privileged_and_keeps_what_sandboxes_need():
    ds = the("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    c = sbx_container(ds)
    assert c.get("securityContext", {}).get("privileged") is True
    assert pod.get("hostPID") is True, "sandboxes must outlive a restart of the container"
    assert ds["spec"].get("updateStrategy", {}).get("type") == "OnDelete"
    args = c["args"]
    assert args[0] == "node" and "--server" in args
    assert "--no-local-node" not in args
    env = {e["name"]: e for e in c.get("env", [])}
    # `sbx node` refuses them: the state and blob stores come from the control plane.
    assert "SBX_STATE" not in env and "SBX_BLOBS" not in env
    assert "--state" not in args and "--blobs" not in args
    assert "SBX_NODE_TOKEN" in env or "--node-token" in args
    # It advertises an address the control plane reaches it at.
    ip_var = "HOST_IP" if pod.get("hostNetwork") else "POD_IP"
    field = "status.hostIP" if pod.get("hostNetwork") else "status.podIP"
    assert env[ip_var]["valueFrom"]["fieldRef"]["fieldPath"] == field
    for flag, port in (("--advertise", "9443"), ("--advertise-api", "8900")):
        assert args[args.index(flag) + 1] == f"$({ip_var}):{port}"
    for flag, port in (("--proxy-addr", "9443"), ("--api-addr", "8900")):
        assert args[args.index(flag) + 1].endswith(f":{port}")
    # The host's paths sbx works in.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    data_dir = args[args.index("--data-dir") + 1] if "--data-dir" in args else "/var/lib/sbx"
    for path, propagation in ((data_dir, "Bidirectional"), ("/run/netns", "Bidirectional"),
                              ("/sys/fs/cgroup", None), ("/dev", None)):
        assert path in mounts, f"{path} is not mounted"
        assert "hostPath" in volumes[mounts[path]["name"]], f"{path} is not the host's"
        if propagation:
            assert mounts[path].get("mountPropagation") == propagation, path


def test_the_server_deployment_runs_no_local_node():
    dep = the("Deployment")
    assert dep["spec"]["replicas"] == 2
    c = sbx_container(dep)
    args = c["args"]
    assert args[0] == "server"
    assert "--no-local-node" in args
    env = {e["name"]: e for e in c.get("env", [])}
    # A control plane for nodes needs PostgreSQL, a shared blob store, the
    # node token, and a key (it listens beyond loopback).
    for name in ("SBX_STATE", "SBX_BLOBS", "SBX_NODE_TOKEN", "SBX_API_KEY", "SBX_SECRETS_KEY_FILE"):
        assert name in env, f"{name} is not set"
    assert env["SBX_STATE"]["valueFrom"]["secretKeyRef"], "the state URL holds a password"
    # The secrets key file is a mounted Secret, the same for every replica.
    key_file = env["SBX_SECRETS_KEY_FILE"]["value"]
    mounts = c["volumeMounts"]
    mount = next(m for m in mounts if key_file.startswith(m["mountPath"].rstrip("/") + "/"))
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert "secret" in volumes[mount["name"]]
    # A control plane runs no runtime: it needs no privileges.
    security = c.get("securityContext", {})
    assert security.get("privileged") is False
    assert security.get("allowPrivilegeEscalation") is False


def test_the_service_exposes_the_api_and_the_proxy():
    dep = the("Deployment")
    svc = next(s for s in objects("Service") if s["metadata"]["name"] == "sbx-server")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    c = sbx_container(dep)
    args = c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert args[args.index("--api-addr") + 1].endswith(f":{ports['api']}")
    assert args[args.index("--proxy-addr") + 1].endswith(f":{ports['proxy']}")
    service_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(service_ports) == {"api", "proxy"}
    for name, p in service_ports.items():
        assert p["targetPort"] in (name, ports[name])
    # Nodes join through it.
    cm = the("ConfigMap")["data"]
    assert cm["server-url"].startswith(f"http://{svc['metadata']['name']}.")
    assert cm["server-url"].endswith(f":{service_ports['api']['port']}")


def test_every_reference_resolves():
    secrets = {o["metadata"]["name"]: set(o.get("stringData", {})) | set(o.get("data", {}))
               for o in objects("Secret")}
    configmaps = {o["metadata"]["name"]: set(o.get("data", {})) for o in objects("ConfigMap")}
    for workload in [*objects("Deployment"), *objects("DaemonSet")]:
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "secret" in v:
                for item in v["secret"].get("items", []):
                    assert item["key"] in secrets[v["secret"]["secretName"]]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            env_names = set()
            for e in c.get("env", []):
                env_names.add(e["name"])
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    s = ref["secretKeyRef"]
                    assert s["key"] in secrets[s["name"]], f"{c['name']}: {e['name']}"
                if "configMapKeyRef" in ref:
                    s = ref["configMapKeyRef"]
                    assert s["key"] in configmaps[s["name"]], f"{c['name']}: {e['name']}"
            for a in c.get("args", []):
                for var in re.findall(r"\$\(([^)]*)\)", a):
                    assert var in env_names, f"{c['name']}: $({var}) is not in its env"
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{c['name']}: no volume {m['name']}"
            assert c["image"] == sbx_container(workload)["image"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl here")
def test_kustomize_builds_the_same_objects():
    r = subprocess.run(["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(r.stdout) if d}
    ours = {(d["kind"], d["metadata"]["name"]) for _, d in documents() if d["kind"] != "Kustomization"}
    assert built == ours

@pytest.mark.parametrize("kind,command", [("Deployment", "server"), ("DaemonSet", "node")])
def test_the_containers_flags_are_sbx_flags(kind, command):
    c = sbx_container(the(kind))
    args = c["args"]
    assert args[0] == command
    unknown = set(flags_in(args[1:])) - known_flags(command)
    assert not unknown, f"{kind}: `sbx {command}` has no {sorted(unknown)}"
    assert_parses(substituted(args, c), kind)


def test_the_image_has_what_sbx_runs():
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    for package in ("runsc", "iptables", "iproute2", "conntrack", "btrfs-progs", "e2fsprogs",
                    "debootstrap", "ca-certificates", "curl"):
        assert re.search(rf"\b{re.escape(package)}\b", dockerfile), package
    assert re.search(r"^COPY sbx sbx-agent /usr/local/bin/", dockerfile, re.M)
    images = {sbx_container(w)["image"] for w in (the("Deployment"), the("DaemonSet"))}
    assert len(images) == 1


# ------------------------------------------------------------------ systemd


def unit_directives(path: pathlib.Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, every assignment kept (Environment= repeats)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def env_file(path: pathlib.Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The assignments of an EnvironmentFile, and its commented-out ones (variants)."""
    active, variants = {}, []
    for line in path.read_text().splitlines():
        m = re.match(r"^(#?)([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.strip())
        if m and m.group(1):
            variants.append((m.group(2), m.group(3)))
        elif m:
            active[m.group(2)] = m.group(3)
    return active, variants


def expand(exec_start: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion of ExecStart: `${VAR}` within a word, `$VAR` as a
    whole word split at whitespace (nothing when empty)."""
    out = []
    for word in shlex.split(exec_start):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            out.extend(env.get(m.group(1), "").split())
        else:
            out.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env[m.group(1)], word))
    return out


@pytest.mark.parametrize("role", ["server", "node"])
def test_the_units_parse_and_keep_sandboxes_running(role):
    unit = UNITS[role]
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    directives = unit_directives(unit)
    service = directives["Service"]
    assert service["ExecStart"][0].split()[:2] == ["/usr/local/bin/sbx", role]
    # A stop signals sbx alone: its sandboxes keep running and are adopted
    # at the next start.
    assert service["KillMode"] == ["process"]
    assert service.get("User", ["root"]) == ["root"]
    assert any(f.lstrip("-") == f"/etc/sbx/{role}.env" for f in service["EnvironmentFile"])
    used = set().union(*(set(s) for s in directives.values()))
    assert not used & FORBIDDEN_DIRECTIVES, sorted(used & FORBIDDEN_DIRECTIVES)


@pytest.mark.parametrize("role", ["server", "node"])
def test_the_units_flags_are_sbx_flags(role):
    service = unit_directives(UNITS[role])["Service"]
    defaults = {}
    for value in service.get("Environment", []):
        for assignment in shlex.split(value):
            k, _, v = assignment.partition("=")
            defaults[k] = v
    active, variants = env_file(ENV_EXAMPLES[role])
    if role == "node":
        # A node refuses these: they come from the control plane.
        assert not {"SBX_STATE", "SBX_BLOBS"} & (set(active) | {k for k, _ in variants})
    base = {**defaults, **active}
    runs = [base] + [{**base, k: v} for k, v in variants if "--" in v]
    assert len(runs) > 1 or role == "node"
    for env in runs:
        args = expand(service["ExecStart"][0], env)[1:]
        unknown = set(flags_in(args)) - known_flags(role)
        assert not unknown, f"{UNITS[role].name}: `sbx {role}` has no {sorted(unknown)}"
        assert_parses(args, UNITS[role].name)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_units(tmp_path):
    # verify checks that ExecStart's program exists: point it at $SBX_BIN.
    paths = []
    for unit in UNITS.values():
        text = unit.read_text().replace("/usr/local/bin/sbx ", f"{sbx_bin()} ")
        path = tmp_path / unit.name
        path.write_text(text)
        paths.append(str(path))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True, text=True, cwd=tmp_path,
    )
    # Unknown keys and bad values are only warnings: fail on any line about the units.
    complaints = [
        line for line in (r.stdout + r.stderr).splitlines()
        if any(u.name in line for u in UNITS.values())
    ]
    assert r.returncode == 0 and not complaints, r.stdout + r.stderr
