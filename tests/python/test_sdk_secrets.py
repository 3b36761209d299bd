"""Secrets through the sbx Python SDK (sync and async): set, listed by name
only, given to a sandbox's commands, deleted."""

import asyncio
import json
import uuid

import pytest

from sbx import AsyncSandboxClient, BadRequestError, NotFoundError, SandboxClient, SecretInfo


# Waits at module end until the server tore down what the module deleted.
pytestmark = pytest.mark.usefixtures("torn_down")


def test_secrets_are_set_listed_injected_and_deleted(sbx):
    value = f"py-{uuid.uuid4().hex} 'quoted' $HOME"
    with SandboxClient(api_url=sbx.api_url) as client:
        info = client.set_secret("PY_TOKEN", value)
        assert isinstance(info, SecretInfo) and info.name == "PY_TOKEN"
        assert info.created_at is not None and info.updated_at is not None
        listed = client.list_secrets()
        assert "PY_TOKEN" in [s.name for s in listed]
        assert value not in json.dumps([s.raw for s in listed]) + json.dumps(info.raw)

        with pytest.raises(BadRequestError):
            client.set_secret("not-an-env-name", "x")
        with pytest.raises(BadRequestError) as e:
            client.create(secret_names=["PY_NO_SUCH_SECRET"])
        assert "PY_NO_SUCH_SECRET" in str(e.value)

        with client.create_and_connect(secret_names=["PY_TOKEN"]) as box:
            # The expected value goes in as the command's own variable.
            r = box.commands.run('test "$PY_TOKEN" = "$EXPECTED"', env={"EXPECTED": value})
            assert r.exit_code == 0, r

        client.delete_secret("PY_TOKEN")
        assert "PY_TOKEN" not in [s.name for s in client.list_secrets()]
        with pytest.raises(NotFoundError):
            client.delete_secret("PY_TOKEN")


def test_async_secrets(sbx):
    async def main():
        async with AsyncSandboxClient(api_url=sbx.api_url) as client:
            info = await client.set_secret("PY_ASYNC", "v1")
            assert info.name == "PY_ASYNC"
            again = await client.set_secret("PY_ASYNC", "v2")
            assert again.created_at == info.created_at
            assert "PY_ASYNC" in [s.name for s in await client.list_secrets()]
            await client.delete_secret("PY_ASYNC")
            with pytest.raises(NotFoundError):
                await client.delete_secret("PY_ASYNC")

    asyncio.run(main())
