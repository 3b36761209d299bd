"""File transfer through the unmodified tensorlake client."""

import hashlib
import os

import pytest
from tensorlake.sandbox import SandboxError

from tl_helpers import box, tl  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def test_write_read_binary_round_trip(box):
    data = bytes(range(256)) * 7 + b"\x00\r\n\xff"
    box.write_file("/tmp/files-bin/blob.bin", data)
    assert box.read_file("/tmp/files-bin/blob.bin").value == data
    # The sandbox sees the same bytes.
    digest = box.run("sha256sum", args=["/tmp/files-bin/blob.bin"]).stdout.split()[0]
    assert digest == hashlib.sha256(data).hexdigest()


def test_overwrite_replaces_content(box):
    box.write_file("/tmp/over.txt", b"a much longer first version")
    box.write_file("/tmp/over.txt", b"short")
    assert box.read_file("/tmp/over.txt").value == b"short"


def test_file_written_in_sandbox_is_readable(box):
    box.run("sh", args=["-c", "printf 'made inside\\n' > /tmp/inside.txt"])
    assert box.read_file("/tmp/inside.txt").value == b"made inside\n"


def test_large_upload_and_download(box, tmp_path):
    data = os.urandom(12 * 1024 * 1024 + 5)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    box.upload_file(local, "/tmp/big.bin")
    size = box.run("stat", args=["-c", "%s", "/tmp/big.bin"]).stdout
    assert int(size) == len(data)
    assert hashlib.sha256(box.read_file("/tmp/big.bin").value).digest() == hashlib.sha256(data).digest()
    box.delete_file("/tmp/big.bin")


def test_list_directory(box):
    box.run("sh", args=["-c", "rm -rf /tmp/ls && mkdir -p /tmp/ls/sub"])
    box.write_file("/tmp/ls/a.txt", b"12345")
    box.write_file("/tmp/ls/b.txt", b"")
    listing = box.list_directory("/tmp/ls").value
    assert listing.path.rstrip("/") == "/tmp/ls"
    entries = {e.name: e for e in listing.entries}
    assert set(entries) == {"a.txt", "b.txt", "sub"}
    assert entries["sub"].is_dir
    assert not entries["a.txt"].is_dir
    assert entries["a.txt"].size == 5
    assert entries["b.txt"].size == 0
    assert entries["a.txt"].modified_at is not None


def test_delete_file(box):
    box.write_file("/tmp/doomed.txt", b"x")
    box.delete_file("/tmp/doomed.txt")
    assert box.run("test", args=["-e", "/tmp/doomed.txt"]).exit_code == 1
    with pytest.raises(SandboxError):
        box.read_file("/tmp/doomed.txt")


def test_missing_paths_are_errors(box):
    with pytest.raises(SandboxError):
        box.read_file("/tmp/no/such/file")
    with pytest.raises(SandboxError):
        box.list_directory("/tmp/no/such/dir")
    with pytest.raises(SandboxError):
        box.delete_file("/tmp/no/such/file")
