"""Fuzzes the control plane of a real sbx server with schemathesis, from the
OpenAPI document it serves (crates/server/openapi.json).

Every control-plane operation gets generated requests that fit the spec
(positive) and that do not (negative). Each answer must come in time, not be
a 5xx, have a documented status and content type, fit the documented schema,
and a body that breaks the spec must be refused. Afterwards the server
must still work: /healthz, a new sandbox runs `echo ok` through the proxy,
and the timeout sweeper still ends sandboxes. Whatever the fuzzer created is
deleted.

Operations on one sandbox get random ids (404) and, for the cheap ones and
suspend/resume/snapshot, a second round against a real named sandbox, so that
bodies and queries reach their validation. Sandbox creation is bounded: each
one costs a boot.
"""

import collections
import copy
import json
import pathlib
import subprocess
import sys
import time
import urllib.parse

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC_FILE = ROOT / "crates" / "server" / "openapi.json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}

# Every sandbox the fuzzer made is gone from the host at the end.
pytestmark = pytest.mark.usefixtures("torn_down")


def invalid_body_refused(ctx, response, case) -> None:
    """A JSON body that breaks the spec is refused, not acted on.

    Narrower than schemathesis' `negative_data_rejection`, which also
    flags extra query parameters (ignored here, as by most HTTP servers)
    and mutations that vanish when serialized.
    """
    meta = case.meta
    body = meta.components.get(ParameterLocation.BODY) if meta else None
    if body is None or not body.mode.is_negative or not isinstance(case.body, (dict, list, str, int, float, bool)):
        return None
    assert not 200 <= response.status_code < 300, (
        f"accepted a body that breaks the spec ({response.status_code}): {json.dumps(case.body)[:500]}"
    )
    return None


def no_server_error(ctx, response, case) -> None:
    """No 5xx, but for the documented 503 of a resize the host has no memory
    for (a PATCH of `resources`)."""
    op = base_id(case.operation.definition.raw["operationId"])
    resize = isinstance(case.body, dict) and "resources" in case.body
    if response.status_code == 503 and op == "updateSandbox" and resize:
        assert response.json().get("code") == "no_resources_available", response.text
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    invalid_body_refused,
]

# Examples per operation and mode (flat, namespaced and on-target forms each).
DEFAULT_EXAMPLES = 20
EXAMPLES = {
    # Every accepted create boots a sandbox.
    "createSandbox": 6,
    # On the real sandbox these capture or checkpoint it.
    "snapshotSandbox": 3,
    "suspendSandbox": 4,
    "resumeSandbox": 4,
    "copySandbox": 10,
    "terminateSandbox": 10,
}
# Also fuzzed against one real named sandbox, so that bodies and queries
# reach their validation (never terminate or copy: that would end it, or
# boot up to 32 sandboxes).
TARGETED = {
    "getSandbox", "updateSandbox", "sandboxLogs", "sandboxLogProcesses", "snapshotSandbox",
    "listSandboxSnapshots", "suspendSandbox", "resumeSandbox",
}
# Seconds an answer may take: blocking creates, copies and suspend/resume
# (wait_ms up to 30 s) legitimately wait.
SLOW = {"createSandbox": 90, "copySandbox": 90, "suspendSandbox": 45, "resumeSandbox": 45}
FAST_TIMEOUT = 15


def base_id(operation_id: str) -> str:
    return operation_id.removesuffix("OnTarget").removesuffix("InNamespace")


class Api:
    """Plain calls to the server, for setup, tracking and cleanup."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()

    def prefix(self, ns: str) -> str:
        return f"{self.url}/v1/namespaces/{urllib.parse.quote(ns, safe='')}"

    def call(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", FAST_TIMEOUT)
        return self.http.request(method, path if path.startswith("http") else self.url + path, **kw)

    def sandboxes(self, ns: str) -> list[dict]:
        r = self.call("GET", f"{self.prefix(ns)}/sandboxes", params={"all": "true"})
        return r.json()["sandboxes"] if r.status_code == 200 else []

    def snapshots(self, ns: str) -> list[dict]:
        r = self.call("GET", f"{self.prefix(ns)}/snapshots")
        return r.json()["snapshots"] if r.status_code == 200 else []

    def terminate(self, ns: str, sandbox_id: str) -> None:
        self.call("DELETE", f"{self.prefix(ns)}/sandboxes/{sandbox_id}")

    def pools(self, ns: str) -> list[dict]:
        r = self.call("GET", f"{self.prefix(ns)}/sandbox-pools")
        return r.json()["pools"] if r.status_code == 200 else []

    def delete_pool(self, ns: str, pool_id: str) -> None:
        self.call("DELETE", f"{self.prefix(ns)}/sandbox-pools/{pool_id}")

    def delete_snapshot(self, ns: str, snapshot_id: str) -> None:
        """Deletes a snapshot once its capture is over (409 until then)."""
        deadline = time.monotonic() + 60
        while True:
            r = self.call("DELETE", f"{self.prefix(ns)}/snapshots/{snapshot_id}")
            if r.status_code != 409 or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def run_echo(self, proxy_url: str, sandbox_id: str) -> str:
        r = self.call(
            "POST", f"{proxy_url}/api/v1/processes/run",
            headers={"X-Tensorlake-Sandbox-Id": sandbox_id, "Accept": "text/event-stream"},
            json={"command": "echo", "args": ["ok"]}, timeout=60,
        )
        assert r.status_code == 200, r.text
        lines = [json.loads(l[5:]) for l in r.text.splitlines() if l.startswith("data:")]
        return "".join(e["line"] for e in lines if "line" in e)


class Tracker:
    """What the fuzzer made: sandboxes are terminated at once (at most a
    couple boot or tear down at any time), snapshots deleted at the end."""

    def __init__(self, api: Api, keep: set[str]) -> None:
        self.api = api
        self.keep = keep
        self.namespaces = {"default"}
        self.snapshots: set[tuple[str, str]] = set()

    def saw(self, operation_id: str, ns: str, response: requests.Response) -> None:
        self.namespaces.add(ns)
        if response.status_code not in (200, 202):
            return
        try:
            body = response.json()
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        op = base_id(operation_id)
        if op in ("createSandbox", "claimSandbox") and "sandbox_id" in body:
            self.api.terminate(ns, body["sandbox_id"])
        elif op == "createPool" and "pool_id" in body:
            self.api.delete_pool(ns, body["pool_id"])
        elif op == "copySandbox":
            for s in body.get("sandboxes", []):
                self.api.terminate(ns, s["sandbox_id"])
            if body.get("snapshot_id"):
                self.snapshots.add((ns, body["snapshot_id"]))
        elif op == "snapshotSandbox" and "snapshot_id" in body:
            self.snapshots.add((ns, body["snapshot_id"]))

    def clean(self) -> None:
        for ns, sid in sorted(self.snapshots):
            self.api.delete_snapshot(ns, sid)
        for ns in sorted(self.namespaces):
            for pool in self.api.pools(ns):
                self.api.delete_pool(ns, pool["id"])
            for snap in self.api.snapshots(ns):
                if snap["snapshot_id"] not in self.keep:
                    self.api.delete_snapshot(ns, snap["snapshot_id"])
            for box in self.api.sandboxes(ns):
                live = box["status"] not in ("terminated", "failed", "timeout")
                if live and box["sandbox_id"] not in self.keep:
                    self.api.terminate(ns, box["sandbox_id"])


def test_served_spec_is_the_committed_one(sbx):
    served = requests.get(f"{sbx.api_url}/openapi.json", timeout=5)
    assert served.status_code == 200
    assert served.headers["content-type"] == "application/json"
    assert served.json() == json.loads(SPEC_FILE.read_text())


def test_committed_spec_is_generated(tmp_path):
    out = tmp_path / "openapi.json"
    subprocess.run([sys.executable, str(SPEC_FILE.with_name("gen-openapi.py")), str(out)],
                   check=True, capture_output=True)
    assert out.read_text() == SPEC_FILE.read_text(), "run python3 crates/server/gen-openapi.py"


def on_target(spec: dict, target_id: str) -> dict:
    """The TARGETED operations with `{id}` bound to the real sandbox (and
    `{ns}` to `default`): no path parameters left, so schemathesis' negative
    mode (which cannot negate a free string in a path) breaks their
    queries and bodies instead."""
    out = copy.deepcopy(spec)
    out["paths"] = {}
    for path, item in spec["paths"].items():
        ops = {m: o for m, o in item.items() if m in HTTP_METHODS and base_id(o["operationId"]) in TARGETED}
        if not ops or "{id}" not in path:
            continue
        bound = path.replace("{id}", target_id).replace("{ns}", "default")
        params = [p for p in item.get("parameters", []) if p["in"] != "path"]
        out["paths"][bound] = {"parameters": params} if params else {}
        for m, o in ops.items():
            out["paths"][bound][m] = {**o, "operationId": o["operationId"] + "OnTarget"}
    return out


def test_fuzz_control_plane(sbx):
    api = Api(sbx.api_url)
    spec = api.call("GET", "/openapi.json").json()

    before = {b["sandbox_id"] for b in api.sandboxes("default")}
    before |= {s["snapshot_id"] for s in api.snapshots("default")}
    target = api.call("POST", "/sandboxes", json={"name": "fuzz-target"}, timeout=90)
    assert target.status_code == 200, target.text
    target_id = target.json()["sandbox_id"]

    operations = []
    for document in (spec, on_target(spec, target_id)):
        # Not image imports or builds: a fuzzed reference (or FROM) names a
        # registry on the internet; tests reach only this machine.
        # tests/python/test_sdk_images.py imports from a local registry.
        schema = (
            schemathesis.openapi.from_dict(document)
            .exclude(tag="daemon")
            .exclude(operation_id_regex="^(importImage|buildImage)")
        )
        # The server runs without keys: bearer tokens would be noise. Control
        # characters in a header value are refused by the HTTP parser itself,
        # before any route (an empty 400 the application never sees).
        schema.config.generation.update(
            with_security_parameters=False,
            exclude_header_characters="".join(map(chr, [*range(0x20), 0x7F])),
        )
        found = [r.ok() for r in schema.get_all_operations()]
        # On the target: PATCH last (it may clear the name, and an ephemeral
        # sandbox cannot be suspended); snapshot before suspend.
        order = ["snapshotSandbox", "suspendSandbox", "resumeSandbox", "updateSandbox"]
        found.sort(key=lambda o: order.index(k) if (k := base_id(o.definition.raw["operationId"])) in order else -1)
        operations += found
    assert len(operations) >= 40

    tracker = Tracker(api, keep=before)
    failures: list[str] = []
    answers: collections.Counter = collections.Counter()
    took: dict[str, float] = {}
    session = requests.Session()

    def exercise(case, operation_id: str) -> None:
        op = base_id(operation_id)
        # Schemathesis hands path parameters over percent-encoded.
        ns = urllib.parse.unquote(str((case.path_parameters or {}).get("ns", "default")))
        limit = SLOW.get(op, FAST_TIMEOUT)
        try:
            try:
                response = case.call(base_url=sbx.api_url, session=session, timeout=limit)
            except requests.ConnectionError:
                # A kept-alive connection the server closed after answering
                # before it read the request's body (a 400 of the path, say)
                # can be reused by the client at that moment: HTTP lets a
                # client retry on a fresh connection.
                session.close()
                response = case.call(base_url=sbx.api_url, session=session, timeout=limit)
        except requests.Timeout:
            raise AssertionError(f"no answer within {limit}s: {case.method} {case.formatted_path}")
        tracker.saw(operation_id, ns, response)
        answers[(case.method, case.path.replace(target_id, "TARGET"), response.status_code)] += 1
        case.validate_response(response, checks=CHECKS)

    def fuzz(operation, operation_id: str, mode: GenerationMode, n: int):
        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):
            exercise(case, operation_id)

        return run

    try:
        for operation in operations:
            operation_id = operation.definition.raw["operationId"]
            n = EXAMPLES.get(base_id(operation_id), DEFAULT_EXAMPLES)
            modes = [GenerationMode.POSITIVE]
            # Schemathesis cannot negate a free string in a path: with path
            # parameters left, negative generation is unsatisfiable (and slow
            # to find out); the on-target copies have none.
            if "{" not in operation.path:
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                started = time.monotonic()
                try:
                    fuzz(operation, operation_id, mode, n)()
                except hypothesis.errors.Unsatisfiable:
                    pass  # nothing to break in this operation's inputs
                except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - reported below
                    failures.append(f"{operation.label} [{mode.value}]: {type(e).__name__}: {e} "
                                        f"{[repr(x)[:800] for x in getattr(e, 'exceptions', [])]}")
                finally:
                    took[f"{operation.label} [{mode.value}]"] = time.monotonic() - started

        # Still healthy afterwards.
        assert sbx.proc.poll() is None, "the server exited"
        health = api.call("GET", "/healthz")
        assert health.status_code == 200, health.text
        assert health.json()["healthy"] is True and health.json()["ready"] is True, health.text
        fresh = api.call("POST", "/sandboxes", json={}, timeout=90)
        assert fresh.status_code == 200 and fresh.json()["status"] == "running", fresh.text
        fresh_id = fresh.json()["sandbox_id"]
        proxy_url = fresh.json()["sandbox_url"]
        try:
            assert api.run_echo(proxy_url, fresh_id).strip() == "ok"
        finally:
            api.terminate("default", fresh_id)
        # The sweeper still runs: a sandbox with a 1 s timeout ends.
        short = api.call("POST", "/sandboxes", json={"timeout_secs": 1}, timeout=90)
        assert short.status_code == 200, short.text
        short_id = short.json()["sandbox_id"]
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                info = api.call("GET", f"/sandboxes/{short_id}").json()
                if info["status"] != "running":
                    break
                time.sleep(0.5)
            assert info["status"] == "terminated" and info["termination_reason"] == "timeout", info
        finally:
            api.terminate("default", short_id)
    finally:
        tracker.clean()

    print("answers (method, path, status): count")
    for key, count in sorted(answers.items()):
        print(f"  {key}: {count}")
    print("slowest operations (s):")
    for label, secs in sorted(took.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {secs:6.1f} {label.replace(target_id, 'TARGET')}")
    assert not failures, "\n\n".join(failures)
    leftover = [
        x
        for ns in tracker.namespaces
        for x in [b["sandbox_id"] for b in api.sandboxes(ns) if b["status"] not in ("terminated", "failed", "timeout")]
        + [s["snapshot_id"] for s in api.snapshots(ns)]
        if x not in before
    ]
    assert not leftover, leftover
