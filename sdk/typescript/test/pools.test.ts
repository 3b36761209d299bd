/** Warm pools: a pool keeps a sandbox booted, a claim hands it over, an update keeps what it does not name. */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { ConflictError, NotFoundError, PoolInfo, PoolNotFoundError, Sandbox, SandboxClient } from "@sbx/sdk";
import { startServer, TestServer } from "./helpers/server.js";

let server: TestServer;
let client: SandboxClient;

before(async () => {
  server = await startServer();
  client = server.client;
});
after(async () => {
  // Warm sandboxes outlive the server: delete what a failed test left.
  for (const p of (await client?.listPools().catch(() => [])) ?? []) {
    const pool = await client.getPool(p.poolId).catch(() => undefined);
    for (const c of pool?.containers ?? []) {
      if (c.state !== "Idle") await client.delete(c.id).catch(() => {});
    }
    await client.deletePool(p.poolId).catch(() => {});
  }
  await server?.stop();
});

/** The pool once one of its sandboxes is warm and running. */
async function waitIdle(poolId: string, timeoutMs = 120_000): Promise<PoolInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pool = await client.getPool(poolId);
    for (const c of pool.containers ?? []) {
      if (c.state === "Idle" && (await client.get(c.id)).status === "running") return pool;
    }
    assert.ok(Date.now() < deadline, `no warm sandbox in ${JSON.stringify(pool)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe("warm pools", () => {
  test("create, claim a warm sandbox, update, delete", async () => {
    const created = await client.createPool({
      cpus: 1,
      memoryMb: 1024,
      timeoutSecs: 600,
      warmContainers: 1,
      maxContainers: 2,
    });
    assert.match(created.poolId, /^pool/);
    assert.equal(created.id, created.poolId);
    assert.deepEqual(
      [created.warmContainers, created.maxContainers, created.timeoutSecs, created.resources.memoryMb],
      [1, 2, 600, 1024],
    );
    assert.ok((await client.listPools()).some((p) => p.poolId === created.poolId));

    const pool = await waitIdle(created.poolId);
    const warm = pool.containers!.find((c) => c.state === "Idle")!;
    assert.ok(warm.executorId);
    // Warm sandboxes are the pool's, not listed as the user's.
    assert.ok(!(await client.list()).some((s) => s.sandboxId === warm.id));

    const claimed = await client.claim(pool.poolId, { name: "ts-pool-claimed" });
    assert.equal(claimed.status, "running");
    assert.equal(claimed.sandboxId, warm.id);
    const info = await client.get("ts-pool-claimed");
    assert.equal(info.poolId, pool.poolId);
    const sb = await Sandbox.connect(claimed.sandboxId, { client });
    assert.equal((await sb.commands.run("echo claimed")).stdout, "claimed\n");
    const listed = (await client.getPool(pool.poolId)).containers!.find((c) => c.id === warm.id)!;
    assert.deepEqual([listed.state, listed.sandboxId], ["Running", warm.id]);

    // An update changes only what it names.
    const updated = await client.updatePool(pool.poolId, { warmContainers: 0, maxContainers: null });
    assert.deepEqual([updated.warmContainers, updated.maxContainers], [0, undefined]);
    assert.deepEqual(
      [updated.resources.cpus, updated.resources.memoryMb, updated.timeoutSecs, updated.image],
      [1, 1024, 600, pool.image],
    );

    await assert.rejects(client.deletePool(pool.poolId), (e: unknown) => {
      assert.ok(e instanceof ConflictError);
      assert.equal(e.code, "pool_in_use");
      return true;
    });
    await client.delete(claimed.sandboxId);
    await client.deletePool(pool.poolId);
    assert.ok(!(await client.listPools()).some((p) => p.poolId === pool.poolId));

    await assert.rejects(client.getPool(pool.poolId), PoolNotFoundError);
    await assert.rejects(client.claim("pool-none"), NotFoundError);
    await assert.rejects(client.updatePool("pool-none", { warmContainers: 2 }), PoolNotFoundError);
    await assert.rejects(client.deletePool("pool-none"), PoolNotFoundError);
  });

  test("a pool without warm sandboxes starts one for a claim", async () => {
    const pool = await client.createPool({ warmContainers: 0, memoryMb: 1024 });
    assert.deepEqual(pool.containers, []);
    const claimed = await client.claim(pool.poolId);
    assert.equal(claimed.status, "running");
    assert.equal((await client.get(claimed.sandboxId)).poolId, pool.poolId);
    await client.delete(claimed.sandboxId);
    await client.deletePool(pool.poolId);
  });
});
