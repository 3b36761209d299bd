"""Sandbox lifecycle through the unmodified tensorlake client: create, get, list, update, delete."""

import socket

import httpx
import pytest
from tensorlake.sandbox import (
    NetworkConfig,
    RemoteAPIError,
    Sandbox,
    SandboxClient,
    SandboxError,
    SandboxNotFoundError,
    SandboxStatus,
)

from tl_helpers import delete_quietly, eventually, tl, unique  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def test_blocking_create_with_options(tl):
    name = unique("tl-create")
    with tl.sandbox(
        name=name,
        cpus=1.0,
        memory_mb=1024,
        timeout_secs=600,
        entrypoint=["sleep", "infinity"],
        allow_unauthenticated_access=False,
        exposed_ports=[8080],
    ) as sandbox:
        assert sandbox.sandbox_id
        assert sandbox.name == name
        assert sandbox.status == SandboxStatus.RUNNING
        info = sandbox.info()
        assert (info.resources.cpus, info.resources.memory_mb) == (1.0, 1024)
        assert info.resources.disk_mb > 0
        assert info.timeout_secs == 600
        assert info.entrypoint == ["sleep", "infinity"]
        assert info.exposed_ports == [8080]
        assert info.sandbox_url
        assert info.created_at is not None
        # The entrypoint runs in the sandbox.
        assert "sleep infinity" in sandbox.run("ps", args=["-eo", "args"]).stdout
        meminfo = sandbox.run("head", args=["-1", "/proc/meminfo"]).stdout.split()
        assert int(meminfo[1]) // 1024 >= 1024


def test_create_without_wait_then_ready(tl):
    name = unique("tl-nowait")
    pending = Sandbox.create(api_url=tl.api_url, name=name, wait=False)
    try:
        assert pending.sandbox_id
        assert pending.name == name
        assert pending.state in (SandboxStatus.PENDING, SandboxStatus.RUNNING)
        assert pending.status().sandbox_id == pending.sandbox_id
        sandbox = pending.ready(timeout=120, poll_interval=0.2)
        assert sandbox.sandbox_id == pending.sandbox_id
        assert sandbox.status == SandboxStatus.RUNNING
        assert sandbox.run("echo", args=["ready"]).stdout == "ready"
        # Another process would collect it by id or name.
        again = Sandbox.connect(name, api_url=tl.api_url)
        assert again.sandbox_id == pending.sandbox_id
        assert again.run("cat", args=["/proc/sys/kernel/hostname"]).exit_code == 0
    finally:
        delete_quietly(tl.client, pending.sandbox_id)


def test_client_create_without_wait_polls_to_running(tl):
    pending = tl.client.create(wait=False)
    try:
        info = eventually(
            lambda: (i := pending.status()).status == SandboxStatus.RUNNING and i,
            "the sandbox to run",
            timeout=120,
        )
        assert info.sandbox_url
        sandbox = tl.client.connect(pending.sandbox_id)
        assert sandbox.run("true").exit_code == 0
    finally:
        delete_quietly(tl.client, pending.sandbox_id)


def test_get_list_update_delete(tl):
    client = tl.client
    first, renamed = unique("tl-first"), unique("tl-renamed")
    with tl.sandbox(name=first) as sandbox:
        sid = sandbox.sandbox_id
        by_id = client.get(sid).value
        by_name = client.get(first).value
        assert by_id.sandbox_id == by_name.sandbox_id == sid
        assert by_id.namespace == "default"
        assert by_id.status == SandboxStatus.RUNNING

        listed = {s.sandbox_id: s for s in client.list()}
        assert listed[sid].name == first
        assert listed[sid].status == SandboxStatus.RUNNING
        assert sid in {s.sandbox_id for s in Sandbox.list(api_url=tl.api_url)}

        updated = sandbox.update(name=renamed).value
        assert updated.name == renamed
        assert client.get(renamed).value.sandbox_id == sid
        with pytest.raises(SandboxNotFoundError):
            client.get(first)
        sandbox.name = first
        assert client.get(sid).value.name == first

        updated = client.update_sandbox(sid, auto_resume=False).value
        assert updated.auto_resume is False

        client.delete(sid)
        assert client.get(sid).value.status == SandboxStatus.TERMINATED
        # Deleting again is fine.
        client.delete(sid)
        assert sid not in {s.sandbox_id for s in client.list()}


def test_name_conflicts_and_bad_names(tl):
    name = unique("tl-taken")
    with tl.sandbox(name=name):
        with pytest.raises(RemoteAPIError) as e:
            tl.client.create(name=name)
        assert e.value.status_code == 409
        with pytest.raises(RemoteAPIError) as e:
            tl.client.create(name="bad name!")
        assert e.value.status_code == 400


def test_get_or_create_attaches_to_the_named_sandbox(tl):
    name = unique("tl-goc")
    created = Sandbox.get_or_create(name, api_url=tl.api_url)
    try:
        assert created.bind_outcome == "created"
        created.write_file("/tmp/marker", b"first")
        attached = Sandbox.get_or_create(name, api_url=tl.api_url)
        assert attached.bind_outcome == "attached"
        assert attached.sandbox_id == created.sandbox_id
        assert attached.read_file("/tmp/marker").value == b"first"
    finally:
        delete_quietly(tl.client, created.sandbox_id)


def test_context_manager_terminates_what_it_created(tl):
    with Sandbox.create(api_url=tl.api_url) as sandbox:
        sid = sandbox.sandbox_id
        assert sandbox.run("echo", args=["inside"]).stdout == "inside"
    assert tl.status(sid) == SandboxStatus.TERMINATED


def test_unknown_sandbox_is_not_found(tl):
    with pytest.raises(SandboxNotFoundError):
        tl.client.get("no-such-sandbox")
    with pytest.raises(SandboxNotFoundError):
        tl.client.delete("no-such-sandbox")
    with pytest.raises(SandboxNotFoundError):
        Sandbox.connect("no-such-sandbox", api_url=tl.api_url)


def test_connect_to_terminated_sandbox_is_refused(tl):
    with tl.sandbox() as sandbox:
        sid = sandbox.sandbox_id
    with pytest.raises(SandboxError):
        Sandbox.connect(sid, api_url=tl.api_url).run("true")


def test_logs_of_an_unknown_sandbox_are_not_found(tl):
    with pytest.raises(SandboxNotFoundError):
        tl.client.get_logs("no-such-sandbox")


def test_updates_sbx_cannot_apply_are_refused_not_ignored(tl):
    """A live resize sbx cannot make is refused with why, and changes nothing."""
    with tl.sandbox(cpus=1.0, memory_mb=2048) as sandbox:
        # Memory below what the sandbox holds now.
        hold = "import time; b = bytearray(1500 << 20); open('/tmp/held', 'w').write('1'); time.sleep(600)"
        sandbox.run("sh", args=["-c", f'nohup python3 -c "{hold}" >/dev/null 2>&1 &'])
        eventually(lambda: sandbox.run("cat", args=["/tmp/held"]).stdout == "1", "the memory held")
        with pytest.raises(RemoteAPIError) as e:
            sandbox.update(memory_mb=1024, timeout=10)
        assert e.value.status_code == 409
        assert "holds now" in str(e.value)
        assert sandbox.info().resources.memory_mb == 2048
        # A live volume only grows: the client refuses a shrink itself, and
        # so does the server.
        disk = sandbox.info().resources.disk_mb
        with pytest.raises(SandboxError):
            sandbox.update(disk_mb=disk - 1024)
        url = f"{tl.api_url}/v1/namespaces/default/sandboxes/{sandbox.sandbox_id}"
        r = httpx.patch(url, json={"resources": {"disk_mb": disk - 1024}})
        assert r.status_code == 409 and "only grows" in r.text, r.text
        assert sandbox.info().resources.disk_mb == disk


def test_live_resize(tl):
    with tl.sandbox() as sandbox:
        info = sandbox.update(memory_mb=2048, timeout=30, poll_interval=0.2).value
        assert info.resources.memory_mb == 2048
        assert info.resource_resize.status == "succeeded"
        assert sandbox.info().resources.memory_mb == 2048
        info = sandbox.update(cpus=2.0, disk_mb=info.resources.disk_mb + 1024).value
        assert info.resources.cpus == 2.0
        df = sandbox.run("df", args=["-m", "/"]).stdout.splitlines()[1].split()
        assert int(df[1]) > info.resources.disk_mb - 1024
        assert sandbox.run("echo", args=["resized"]).stdout.strip() == "resized"


def test_network_policy_update(tl):
    # That traffic really stops (and forbidden connections close) is tested
    # against a stand-in outside host in crates/e2e/tests/limits.rs.
    with tl.sandbox() as sandbox:
        info = sandbox.update(network=NetworkConfig(allow_internet_access=False)).value
        assert not info.network_policy.allow_internet_access
        assert not sandbox.info().network_policy.allow_internet_access
        assert sandbox.run("echo", args=["walled"]).stdout.strip() == "walled"


def test_egress_lists_are_kept_and_bad_entries_refused(tl):
    with tl.sandbox(allow_internet_access=False, allow_out=["198.18.0.7"], deny_out=["0.0.0.0/0"]) as sandbox:
        policy = sandbox.info().network_policy
        assert not policy.allow_internet_access
        assert policy.allow_out == ["198.18.0.7"]
        assert policy.deny_out == ["0.0.0.0/0"]
        assert sandbox.run("echo", args=["walled"]).stdout.strip() == "walled"
    with pytest.raises(RemoteAPIError) as e:
        Sandbox.create(api_url=tl.api_url, allow_out=["pypi..org"])
    assert e.value.status_code == 400
    assert "network.allow_out" in str(e.value) and "host name" in str(e.value)


def test_unknown_image_is_refused(tl):
    with pytest.raises(RemoteAPIError) as e:
        Sandbox.create(api_url=tl.api_url, image="no-such-image")
    assert e.value.status_code == 400
    assert "no-such-image" in str(e.value)


def loopback_alias() -> str | None:
    """A host name other than localhost that resolves to 127.0.0.1, if this machine has one."""
    try:
        names = [n for line in open("/etc/hosts") if line.split()[:1] == ["127.0.0.1"] for n in line.split()[1:]]
    except OSError:
        return None
    for name in [*names, socket.gethostname()]:
        if name not in ("localhost", "localhost.localdomain") and not name.startswith("#"):
            try:
                if socket.gethostbyname(name) == "127.0.0.1":
                    return name
            except OSError:
                pass
    return None


def test_flat_routes_for_a_non_localhost_api(tl, monkeypatch):
    """With an API host other than localhost the client uses flat `/sandboxes` routes
    on TENSORLAKE_SANDBOX_API_URL."""
    alias = loopback_alias()
    if alias is None:
        pytest.skip("no host name other than localhost resolves to 127.0.0.1 here")
    url = tl.api_url.replace("localhost", alias)
    monkeypatch.setenv("TENSORLAKE_SANDBOX_API_URL", url)
    client = SandboxClient(api_url=url)
    name = unique("tl-flat")
    sandbox = Sandbox.create(api_url=url, name=name)
    try:
        assert client.get(name).value.sandbox_id == sandbox.sandbox_id
        assert sandbox.run("echo", args=["flat"]).stdout == "flat"
        assert name in {s.name for s in client.list()}
        sandbox.write_file("/tmp/flat.txt", b"flat routes")
        assert sandbox.read_file("/tmp/flat.txt").value == b"flat routes"
    finally:
        client.delete(sandbox.sandbox_id)
    assert tl.status(sandbox.sandbox_id) == SandboxStatus.TERMINATED


def test_connect_with_an_explicit_proxy_url(tl):
    name = unique("tl-proxyurl")
    with tl.sandbox(name=name) as sandbox:
        proxy = sandbox.info().sandbox_url
        # With a proxy URL the client skips the lookup and routes by the name it was given.
        direct = Sandbox.connect(name, api_url=tl.api_url, proxy_url=proxy)
        assert direct.run("echo", args=["direct"]).stdout == "direct"
        assert direct.sandbox_id == sandbox.sandbox_id


def test_archived_sandboxes(tl):
    client = tl.client
    ended = []
    for _ in range(3):
        with tl.sandbox() as sandbox:
            ended.append(sandbox.sandbox_id)
    with tl.sandbox() as running:
        archived = client.get_archived(ended[0]).value
        assert (archived.sandbox_id, archived.status) == (ended[0], SandboxStatus.TERMINATED)
        assert archived.archived_at >= archived.created_at
        assert archived.termination_reason
        with pytest.raises(SandboxNotFoundError):
            client.get_archived(running.sandbox_id)
        with pytest.raises(SandboxNotFoundError):
            client.get_archived("no-such-sandbox")

        listed = client.list_archived().value
        ids = [s.sandbox_id for s in listed.sandboxes]
        assert running.sandbox_id not in ids
        # Newest first.
        assert [i for i in ids if i in ended] == ended[::-1]

        # Two at a time, forward to the end and back again.
        pages, cursor = [], None
        while True:
            page = client.list_archived(limit=2, cursor=cursor).value
            pages.append([s.sandbox_id for s in page.sandboxes])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [i for p in pages for i in p] == ids
        assert all(len(p) == 2 for p in pages[:-1])
        if len(pages) > 1:
            back = client.list_archived(limit=2, cursor=page.prev_cursor, direction="backward").value
            assert [s.sandbox_id for s in back.sandboxes] == pages[-2]
