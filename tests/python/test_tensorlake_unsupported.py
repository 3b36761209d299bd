"""Flows the tensorlake client offers that sbx does not serve yet. Each is a strict
xfail: it starts passing (and so fails the suite) the day sbx serves it. The list is
also in README.md, "Tensorlake client compatibility"."""

import pytest

from tl_helpers import box, eventually, tl, unique  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


@pytest.mark.xfail(strict=True, reason="sbx has no file-system service to attach file systems from")
def test_attach_file_system(box):
    box.attach_file_system("fs-" + unique("x"), "/mnt/shared")
    assert [m.mount_path for m in box.list_file_systems()] == ["/mnt/shared"]
