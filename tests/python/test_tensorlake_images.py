"""Images through the unmodified tensorlake client (0.5.161): a sandbox of an
image imported into sbx (a busybox-only one, made here) takes the image's
environment and working directory; an unknown image names the images that
exist."""

import subprocess

import pytest
from tensorlake.sandbox import Sandbox, SandboxClient
from tensorlake.sandbox.exceptions import RemoteAPIError

import sbx as sbx_sdk
from test_sdk_images import busybox_layout
from tl_helpers import tl  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("torn_down")


@pytest.fixture(scope="module")
def image(sbx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tl-images")
    layout = busybox_layout(tmp)
    archive = tmp / "bb.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:1", f"oci-archive:{archive}"], check=True, capture_output=True)
    with sbx_sdk.SandboxClient(api_url=sbx.api_url) as c:
        info = c.import_image_archive(archive, name="tl-bb")
        yield info.name
        c.delete_image(info.name)


def test_create_and_connect_with_an_imported_image(sbx, image):
    client = SandboxClient.for_localhost(api_url=sbx.api_url)
    sandbox = client.create_and_connect(image=image)
    try:
        assert client.get(sandbox.sandbox_id).value.image == image
        result = sandbox.run("sh", args=["-c", "pwd; echo $FOO"])
        assert result.exit_code == 0, result.stderr
        assert result.stdout.split() == ["/app", "bar"]
        sandbox.write_file("/app/note.txt", b"from tensorlake")
        assert sandbox.read_file("/app/note.txt").value == b"from tensorlake"
    finally:
        client.delete(sandbox.sandbox_id)


def test_an_unknown_image_names_those_that_exist(tl, image):  # noqa: F811
    with pytest.raises(RemoteAPIError) as e:
        Sandbox.create(api_url=tl.api_url, image="not-imported")
    assert e.value.status_code == 400
    assert image in str(e.value) and "default" in str(e.value)
