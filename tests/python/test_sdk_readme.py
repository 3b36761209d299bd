"""Runs every ```python block of sdk/python/README.md against the test server,
each in its own interpreter, and checks that it left no sandboxes or snapshots."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from sbx import SandboxClient

README = pathlib.Path(__file__).resolve().parents[2] / "sdk" / "python" / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)

# Example 1 runs `pip install numpy` in a sandbox. Where sandboxes cannot reach
# PyPI (no DNS or no route out), it installs this stand-in `numpy` module
# instead, so that the snapshot/restore flow around it is still exercised.
OFFLINE_INSTALL = (
    "d=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')/numpy"
    " && mkdir -p $d && echo '__version__ = \"0+sbx-offline-stand-in\"' > $d/__init__.py"
)


# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def _title(block: str) -> str:
    before = README.read_text().split(block)[0]
    before = re.sub(r"^```.*?^```", "", before, flags=re.S | re.M)  # no code comments
    heading = re.findall(r"^#+ (.+)$", before, flags=re.M)
    return heading[-1] if heading else "block"


@pytest.fixture(scope="module")
def example_env(sbx):
    env = dict(os.environ, SBX_API_URL=sbx.api_url)
    env.pop("SBX_API_KEY", None)
    env.pop("SBX_NAMESPACE", None)
    with SandboxClient(api_url=sbx.api_url) as client, client.create_and_connect() as probe:
        reach = probe.commands.run(
            "pip download --no-deps --retries 0 --timeout 5 -d /tmp/probe six", timeout=15
        )
    if reach.exit_code != 0:
        env["SBX_EXAMPLE_INSTALL"] = OFFLINE_INSTALL
    return env


def test_readme_has_the_examples():
    assert len(BLOCKS) >= 5
    text = README.read_text()
    for title in ("Install a package once", "Checkpoint before a risky step", "Branch two sandboxes"):
        assert title in text


@pytest.mark.parametrize("block", BLOCKS, ids=[_title(b) for b in BLOCKS])
def test_readme_block_runs(block, sbx, example_env):
    with SandboxClient(api_url=sbx.api_url) as client:
        sandboxes_before = {s.sandbox_id for s in client.list()}
        snapshots_before = {s.snapshot_id for s in client.list_snapshots()}
        proc = subprocess.run(
            [sys.executable, "-c", block], env=example_env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        assert proc.stdout.strip(), "the example printed nothing"
        leaked = {s.sandbox_id for s in client.list()} - sandboxes_before
        for sid in leaked:
            client.delete(sid)
        leaked_snaps = {s.snapshot_id for s in client.list_snapshots()} - snapshots_before
        for sid in leaked_snaps:
            client.delete_snapshot(sid)
        assert not leaked and not leaked_snaps, "the example left sandboxes or snapshots behind"
