"""Warm pools through the sbx Python SDK (sync and async): a pool keeps a
sandbox booted, a claim hands it over, updates keep what they do not
change, a pool in use is not deleted, unknown pools are 404s."""

import asyncio
import time

import pytest

from sbx import (
    AsyncSandboxClient,
    ConflictError,
    NotFoundError,
    PoolInfo,
    PoolNotFoundError,
    SandboxClient,
    SandboxStatus,
)


# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down", "no_pools_left")


@pytest.fixture
def no_pools_left(sbx):
    """Deletes what a failed test left: warm sandboxes outlive a server stop."""
    yield
    with SandboxClient(api_url=sbx.api_url) as client:
        for pool in client.list_pools():
            for x in client.get_pool(pool.pool_id).containers or []:
                if x.state != "Idle":
                    client.delete(x.id)
            client.delete_pool(pool.pool_id)


def wait_idle(client: SandboxClient, pool_id: str, timeout: float = 120) -> PoolInfo:
    """The pool once one of its sandboxes is warm and running."""
    deadline = time.monotonic() + timeout
    while True:
        pool = client.get_pool(pool_id)
        if any(client.get(x.id).status == SandboxStatus.RUNNING for x in pool.idle):
            return pool
        assert time.monotonic() < deadline, f"no warm sandbox in {pool}"
        time.sleep(0.2)


def test_a_pool_hands_out_a_warm_sandbox(sbx):
    with SandboxClient(api_url=sbx.api_url) as client:
        pool = client.create_pool(cpus=1, memory_mb=1024, timeout_secs=600, warm_containers=1, max_containers=2)
        assert pool.pool_id.startswith("pool")
        assert (pool.warm_containers, pool.max_containers, pool.timeout_secs) == (1, 2, 600)
        assert pool.resources.cpus == 1 and pool.resources.memory_mb == 1024
        assert pool.pool_id in [p.pool_id for p in client.list_pools()]

        pool = wait_idle(client, pool.pool_id)
        warm = pool.idle[0]
        assert warm.executor_id
        # Warm sandboxes are the pool's, not listed as the user's.
        assert warm.id not in [s.sandbox_id for s in client.list()]

        info = client.claim(pool.pool_id, name="py-pool-claimed")
        assert info.status == SandboxStatus.RUNNING
        assert info.sandbox_id == warm.id
        got = client.get("py-pool-claimed")
        assert got.pool_id == pool.pool_id and got.name == "py-pool-claimed"
        box = client.connect(info.sandbox_id)
        assert box.commands.run("echo claimed").stdout == "claimed\n"
        listed = {x.id: x for x in client.get_pool(pool.pool_id).containers}
        assert listed[warm.id].state == "Running" and listed[warm.id].sandbox_id == warm.id

        # An update changes only what it names.
        updated = client.update_pool(pool.pool_id, warm_containers=0, max_containers=None)
        assert (updated.warm_containers, updated.max_containers) == (0, None)
        assert (updated.resources.cpus, updated.resources.memory_mb, updated.timeout_secs) == (1, 1024, 600)
        assert updated.image == pool.image

        with pytest.raises(ConflictError) as e:
            client.delete_pool(pool.pool_id)
        assert e.value.code == "pool_in_use"
        client.delete(info.sandbox_id)
        client.delete_pool(pool.pool_id)
        assert pool.pool_id not in [p.pool_id for p in client.list_pools()]

        with pytest.raises(PoolNotFoundError):
            client.get_pool(pool.pool_id)
        with pytest.raises(NotFoundError):
            client.claim("pool-none")
        with pytest.raises(NotFoundError):
            client.update_pool("pool-none", warm_containers=2)
        with pytest.raises(NotFoundError):
            client.delete_pool("pool-none")


def test_async_pools_claim_cold(sbx):
    async def main():
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            # No warm sandbox: a claim starts one.
            pool = await client.create_pool(warm_containers=0, memory_mb=1024)
            assert pool.warm_containers == 0 and pool.containers == []
            info = await client.claim(pool.pool_id)
            assert info.status == SandboxStatus.RUNNING
            assert (await client.get(info.sandbox_id)).pool_id == pool.pool_id
            box = await client.connect(info.sandbox_id)
            assert (await box.commands.run("echo cold")).stdout == "cold\n"
            assert pool.pool_id in [p.pool_id for p in await client.list_pools()]
            await client.delete(info.sandbox_id)
            await client.delete_pool(pool.pool_id)
            with pytest.raises(PoolNotFoundError):
                await client.get_pool(pool.pool_id)
            with pytest.raises(NotFoundError):
                await client.claim(pool.pool_id)

    asyncio.run(main())
