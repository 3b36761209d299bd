"""Images through the sbx Python SDK (sync and async): imports from a
registry on 127.0.0.1 (Debian's `docker-registry`) and from the archives
`skopeo` writes, listed, booted and deleted. The image is made here: a
busybox-only root filesystem packed by `umoci`. Builds from Dockerfiles
`FROM default` (nothing downloaded): booted, rebuilt from the cache, and
their errors."""

import asyncio
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sbx import (
    AsyncSandboxClient,
    BadRequestError,
    ConflictError,
    ImageBuildError,
    ImageImportError,
    ImageNotFoundError,
    NotFoundError,
    SandboxClient,
)


# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")

APPLETS = ("sh", "cat", "pwd", "env", "true", "sleep")


@dataclass
class Images:
    #: `127.0.0.1:PORT/t/bb:1` in the registry.
    reference: str
    registry: str
    docker_tar: Path
    oci_tar: Path
    #: An OCI archive whose layer is not a tar: its import fails after it started.
    broken_tar: Path


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def busybox_layout(tmp: Path) -> Path:
    """An OCI layout, tag `1`: busybox and a few applets; `FOO=bar`, workdir
    `/app`, command `sleep 1000000`."""
    rootfs = tmp / "rootfs"
    for d in ("bin", "etc", "tmp", "app", "root"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy("/bin/busybox", rootfs / "bin/busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    layout, bundle = tmp / "layout", tmp / "bundle"
    image = f"{layout}:1"
    run("umoci", "init", "--layout", str(layout))
    run("umoci", "new", "--image", image)
    run("umoci", "unpack", "--image", image, str(bundle))
    run("cp", "-a", f"{rootfs}/.", str(bundle / "rootfs"))
    run("umoci", "repack", "--image", image, str(bundle))
    run(
        "umoci", "config", "--image", image,
        "--config.env", "FOO=bar", "--config.workingdir", "/app",
        "--config.cmd", "sleep", "--config.cmd", "1000000",
    )
    return layout


def broken_archive(path: Path) -> None:
    """An OCI archive (`oci-layout` at its top) whose one layer is not a tar."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    layer = b"this is not a tar archive\n" * 40
    config = blob(json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}],
    }).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        **{f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()},
    }
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The image in a registry on 127.0.0.1 and in both archive formats."""
    tmp = tmp_path_factory.mktemp("images")
    layout = busybox_layout(tmp)
    port = free_port()
    addr = f"127.0.0.1:{port}"
    config = tmp / "registry.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp / 'regdata'}\nhttp:\n  addr: {addr}\n"
    )
    registry = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert registry.poll() is None and time.monotonic() < deadline, "docker-registry did not listen"
                time.sleep(0.1)
        oci = f"oci:{layout}:1"
        reference = f"{addr}/t/bb:1"
        run("skopeo", "copy", "--dest-tls-verify=false", oci, f"docker://{reference}")
        docker_tar, oci_tar, broken = tmp / "bb-docker.tar", tmp / "bb-oci.tar", tmp / "broken.tar"
        run("skopeo", "copy", oci, f"docker-archive:{docker_tar}:bb:1")
        run("skopeo", "copy", oci, f"oci-archive:{oci_tar}")
        broken_archive(broken)
        yield Images(reference, addr, docker_tar, oci_tar, broken)
    finally:
        registry.kill()
        registry.wait()


@pytest.fixture(scope="module")
def client(sbx):
    with SandboxClient(api_url=sbx.api_url) as c:
        yield c


@pytest.fixture
def imported(client):
    """Image names to delete after the test."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            client.delete_image(name)
        except NotFoundError:
            pass


def test_sync_import_list_boot_delete(client, images, imported):
    events: list[dict] = []
    bb = client.import_image(images.reference, insecure=True, on_progress=events.append)
    imported.append(bb.name)
    assert [e["event"] for e in events][:1] == ["resolved"]
    assert {"fetched", "applied"} <= {e["event"] for e in events}
    assert events[0]["layers"] == 1 and events[0]["bytes"] > 0
    assert (bb.name, bb.source, bb.layers) == ("bb", images.reference, 1)
    assert bb.working_dir == "/app" and "FOO=bar" in bb.env
    assert bb.entrypoint == ["sleep", "1000000"]
    assert bb.digest.startswith("sha256:") and bb.size_bytes > 0 and bb.created_at is not None

    # Archives: the format from the tar, the name from the file.
    docker = client.import_image_archive(images.docker_tar)
    imported.append(docker.name)
    oci = client.import_image_archive(str(images.oci_tar))
    imported.append(oci.name)
    assert (docker.name, docker.source) == ("bb-docker", "docker-archive")
    assert (oci.name, oci.source) == ("bb-oci", "oci-archive")
    assert oci.working_dir == "/app" and "FOO=bar" in oci.env

    assert {"default", "bb", "bb-docker", "bb-oci"} <= {i.name for i in client.list_images()}
    assert client.get_image("bb-oci").id == oci.id
    assert client.get_image("default").source == "debootstrap"

    with client.create_and_connect(image="bb") as box:
        assert box.commands.run("pwd").stdout == "/app\n"
        assert "FOO=bar\n" in box.commands.run("env").stdout

    client.delete_image("bb-docker")
    with pytest.raises(ImageNotFoundError) as e:
        client.get_image("bb-docker")
    assert (e.value.status, e.value.code) == (404, "not_found")
    assert "bb-docker" not in {i.name for i in client.list_images()}


def test_sync_import_errors(client, images):
    with pytest.raises(ImageNotFoundError) as e:
        client.import_image(f"{images.registry}/t/bb:nope", insecure=True)
    assert (e.value.status, e.value.code) == (404, "image_not_found")
    with pytest.raises(BadRequestError) as e:
        client.import_image("Not A Ref")
    assert e.value.status == 400
    with pytest.raises(ConflictError):
        client.import_image(images.reference, name="default", insecure=True)
    with pytest.raises(BadRequestError):
        client.delete_image("default")
    with pytest.raises(ImageNotFoundError):
        client.delete_image("sdk-no-such-image")

    # The import starts (the manifest is read), then its layer fails.
    events: list[dict] = []
    with pytest.raises(ImageImportError) as e:
        client.import_image_archive(images.broken_tar, on_progress=events.append)
    assert e.value.body["event"] == "error" and e.value.message
    assert events[0]["event"] == "resolved"
    with pytest.raises(ImageNotFoundError):
        client.get_image("broken")

    not_tar = images.broken_tar.with_name("notatar.tar")
    not_tar.write_bytes(b"not a tar archive at all")
    with pytest.raises(BadRequestError):
        client.import_image_archive(not_tar)
    with pytest.raises(ValueError):
        client.import_image_archive(not_tar, format="zip")


def test_async_import_list_boot_delete(sbx, images):
    async def main():
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            events: list[dict] = []

            async def progress(event):
                events.append(event)

            bb = await client.import_image(images.reference, name="abb", insecure=True, on_progress=progress)
            assert {"resolved", "fetched", "applied"} <= {e["event"] for e in events}
            assert (bb.name, bb.working_dir) == ("abb", "/app") and "FOO=bar" in bb.env

            docker = await client.import_image_archive(images.docker_tar, name="abb-docker")
            oci = await client.import_image_archive(images.oci_tar, name="abb-oci", on_progress=events.append)
            assert (docker.source, oci.source) == ("docker-archive", "oci-archive")
            names = {i.name for i in await client.list_images()}
            assert {"default", "abb", "abb-docker", "abb-oci"} <= names
            assert (await client.get_image("abb-docker")).id == docker.id

            async with await client.create_and_connect(image="abb-oci") as box:
                assert (await box.commands.run("pwd")).stdout == "/app\n"

            for name in ("abb", "abb-docker", "abb-oci"):
                await client.delete_image(name)
            with pytest.raises(ImageNotFoundError) as e:
                await client.get_image("abb")
            assert e.value.status == 404

            with pytest.raises(NotFoundError) as e:
                await client.import_image(f"{images.registry}/t/none:1", insecure=True)
            assert e.value.status == 404
            with pytest.raises(BadRequestError) as e:
                await client.import_image("Not A Ref")
            assert e.value.status == 400
            with pytest.raises(ImageImportError):
                await client.import_image_archive(images.broken_tar, name="abroken")

    asyncio.run(main())


# --- builds ---------------------------------------------------------------

DOCKERFILE = """FROM default
ARG GREETING=hello
ENV GREETING=${GREETING} APP_HOME=/srv/app
WORKDIR /srv/app
COPY . ./
"""


@pytest.fixture
def context(tmp_path):
    """A build context: its Dockerfile, a file to copy and one its
    `.dockerignore` leaves out."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "hello.txt").write_text("hello from the context\n")
    (ctx / "secret.txt").write_text("not for the image\n")
    (ctx / ".dockerignore").write_text("secret.txt\n")
    return ctx


def steps(events: list[dict]) -> list[tuple[str, bool]]:
    """Per step (by its text): whether the build took it from the cache."""
    out: list[tuple[str, bool]] = []
    for e in events:
        if e["event"] == "step":
            out.append((e["text"], False))
        elif e["event"] == "cached":
            out[-1] = (out[-1][0], True)
    return out


def test_sync_build_boot_rebuild(client, context, imported):
    events: list[dict] = []
    app = client.build_image("sdk-built", context, build_args={"GREETING": "bonjour"}, on_progress=events.append)
    imported.append(app.name)
    assert (app.name, app.source, app.working_dir) == ("sdk-built", "build", "/srv/app")
    assert "GREETING=bonjour" in app.env and "APP_HOME=/srv/app" in app.env
    first = next(e for e in events if e["event"] == "step")
    assert (first["stage"], first["stages"], first["step"], first["steps"], first["line"]) == (1, 1, 1, 4, 2)
    assert [t for t, _ in steps(events)] == ["ARG GREETING=hello", "ENV GREETING=${GREETING} APP_HOME=/srv/app",
                                             "WORKDIR /srv/app", "COPY . ./"]
    assert client.get_image("sdk-built").id == app.id

    with client.create_and_connect(image="sdk-built") as box:
        assert box.commands.run("cat hello.txt; pwd; echo $GREETING").stdout == (
            "hello from the context\n/srv/app\nbonjour\n"
        )
        files = box.commands.run("ls -a").stdout.split()
        assert "Dockerfile" in files and "secret.txt" not in files and ".sbx-dockerfile" not in files

    # Unchanged: the copy comes from the cache.
    events.clear()
    client.build_image("sdk-built", context, build_args={"GREETING": "bonjour"}, on_progress=events.append)
    assert dict(steps(events))["COPY . ./"] is True


def test_sync_build_errors(client, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()

    def build(dockerfile: str, **kw):
        (ctx / "Dockerfile").write_text(dockerfile)
        return client.build_image("sdk-broken", ctx, **kw)

    # Refused before it starts: a 400 naming the line.
    with pytest.raises(BadRequestError) as e:
        build("FROM default\nRUN --mount=type=cache,target=/c true\n")
    assert e.value.status == 400 and "line 2" in e.value.message
    with pytest.raises(BadRequestError) as e:
        build("FROM no-such-image\n")
    assert "line 1" in e.value.message and "no-such-image" in e.value.message
    # A Dockerfile outside the context is read from where it is.
    outside = tmp_path / "outside.Dockerfile"
    outside.write_text("FROM default\nENV A=1\nFROBNICATE now\n")
    with pytest.raises(BadRequestError) as e:
        client.build_image("sdk-broken", ctx, dockerfile=outside)
    assert "line 3" in e.value.message

    # A step that fails: its line, code and output.
    events: list[dict] = []
    with pytest.raises(ImageBuildError) as e:
        build("FROM default\nRUN echo about to fail && exit 3\n", on_progress=events.append)
    assert "line 2" in e.value.message and "exited with code 3" in e.value.message
    assert e.value.output == ["about to fail"] and e.value.message.endswith("\nabout to fail")
    assert e.value.body["event"] == "error"
    assert {"step", "output"} <= {ev["event"] for ev in events}
    with pytest.raises(ImageNotFoundError):
        client.get_image("sdk-broken")

    with pytest.raises(FileNotFoundError):
        client.build_image("sdk-broken", tmp_path / "nowhere")  # no Dockerfile: nothing sent


def test_async_build_boot_rebuild(sbx, context, imported):
    imported.append("sdk-abuilt")

    async def main():
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            events: list[dict] = []

            async def progress(event):
                events.append(event)

            # The Dockerfile outside the context.
            dockerfile = context.parent / "app.Dockerfile"
            (context / "Dockerfile").rename(dockerfile)
            app = await client.build_image(
                "sdk-abuilt", context, dockerfile=dockerfile, no_cache=True, on_progress=progress
            )
            assert app.source == "build" and "GREETING=hello" in app.env
            assert [t for t, cached in steps(events) if cached] == []
            async with await client.create_and_connect(image="sdk-abuilt") as box:
                r = await box.commands.run("cat /srv/app/hello.txt; echo $GREETING")
                assert r.stdout == "hello from the context\nhello\n"

            events.clear()
            await client.build_image("sdk-abuilt", context, dockerfile=dockerfile, on_progress=events.append)
            assert dict(steps(events))["COPY . ./"] is True

            # Dockerfile errors: at once, or once the step runs.
            (context / "bad.Dockerfile").write_text("FROM default\nFROBNICATE now\n")
            with pytest.raises(BadRequestError) as e:
                await client.build_image("sdk-abroken", context, dockerfile=context / "bad.Dockerfile")
            assert "line 2" in e.value.message
            (context / "bad.Dockerfile").write_text("FROM default\nCOPY missing.txt /\n")
            with pytest.raises(ImageBuildError) as e:
                await client.build_image("sdk-abroken", context, dockerfile=context / "bad.Dockerfile")
            assert "line 2" in e.value.message and e.value.output == []

    asyncio.run(main())
