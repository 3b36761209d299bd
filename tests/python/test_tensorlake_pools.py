"""Warm pools through the unmodified tensorlake client: create, list, claim,
update, delete."""

import pytest
from tensorlake.sandbox import PoolNotFoundError

from tl_helpers import eventually, tl  # noqa: F401 (fixtures)

# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def idle(client, pool_id):
    return [c for c in (client.get_pool(pool_id).value.containers or []) if c.state == "Idle"]


def test_sandbox_pool_create_claim_update_and_delete(tl):
    client = tl.client
    pool = client.create_pool(image="default", warm_containers=1, max_containers=2, timeout_secs=600).value
    try:
        assert pool.pool_id in [p.pool_id for p in client.list_pools()]
        warm = eventually(lambda: idle(client, pool.pool_id), "a warm sandbox in the pool", timeout=60)
        claimed = client.claim(pool.pool_id).value
        try:
            assert claimed.sandbox_id == warm[0].id
            assert client.get(claimed.sandbox_id).value.pool_id == pool.pool_id
            sandbox = client.connect(claimed.sandbox_id)
            assert sandbox.run("echo", args=["claimed"]).stdout.strip() == "claimed"
            # The pool refills behind the claim.
            eventually(lambda: idle(client, pool.pool_id), "the pool refilled", timeout=60)
            updated = client.update_pool(pool.pool_id, image="default", memory_mb=2048, warm_containers=1).value
            assert updated.resources.memory_mb == 2048
        finally:
            client.delete(claimed.sandbox_id)
    finally:
        client.delete_pool(pool.pool_id)
    with pytest.raises(PoolNotFoundError):
        client.get_pool(pool.pool_id)
