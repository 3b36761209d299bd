"""Shared fixtures and helpers for the tensorlake-client compatibility suite.

Test modules import the fixtures they use (`from tl_helpers import tl, box`).
Every sandbox and snapshot made here is deleted when its fixture or context
ends, even when the test fails.
"""

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from tensorlake.sandbox import (
    Sandbox,
    SandboxClient,
    SandboxNotFoundError,
    SandboxStatus,
)

T = TypeVar("T")


def unique(prefix: str) -> str:
    """A sandbox name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def eventually(probe: Callable[[], T], what: str, timeout: float = 30.0, every: float = 0.1) -> T:
    """Calls `probe` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(every)


def delete_quietly(client: SandboxClient, sandbox_id: str) -> None:
    with contextlib.suppress(SandboxNotFoundError):
        client.delete(sandbox_id)


class Tl:
    """The tensorlake client bound to the test server, plus cleanup bookkeeping."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.client = SandboxClient.for_localhost(api_url=api_url)

    @contextlib.contextmanager
    def sandbox(self, **create_args) -> Iterator[Sandbox]:
        """`Sandbox.create(...)` (blocking) that is deleted on exit."""
        sandbox = Sandbox.create(api_url=self.api_url, **create_args)
        try:
            yield sandbox
        finally:
            delete_quietly(self.client, sandbox.sandbox_id)

    @contextlib.contextmanager
    def adopted(self, sandbox_id: str) -> Iterator[Sandbox]:
        """Connects to a sandbox made elsewhere (a copy, a no-wait create) and deletes it on exit."""
        try:
            yield Sandbox.connect(sandbox_id, api_url=self.api_url)
        finally:
            delete_quietly(self.client, sandbox_id)

    @contextlib.contextmanager
    def deleting_snapshots(self) -> Iterator[list[str]]:
        """A list to put snapshot ids in; they are deleted on exit."""
        ids: list[str] = []
        try:
            yield ids
        finally:
            for sid in ids:
                with contextlib.suppress(Exception):
                    self.client.delete_snapshot(sid)

    def status(self, sandbox_id: str) -> SandboxStatus:
        return self.client.get(sandbox_id).value.status




@pytest.fixture(scope="session")
def tl(sbx) -> Tl:
    return Tl(sbx.api_url)


@pytest.fixture(scope="module")
def box(tl) -> Iterator[Sandbox]:
    """One named sandbox shared by the tests of a module (only for tests that leave it running)."""
    with tl.sandbox(name=unique("tl-box")) as sandbox:
        yield sandbox
