import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  BadRequestError,
  ConflictError,
  NotFoundError,
  Sandbox,
  SandboxClient,
  SandboxFileNotFoundError,
  SandboxNotFoundError,
  SbxError,
  SnapshotNotFoundError,
} from "@sbx/sdk";
import { startServer, TestServer } from "./helpers/server.js";

let server: TestServer;
let client: SandboxClient;

before(async () => {
  server = await startServer();
  client = server.client;
});
after(async () => {
  await server?.stop();
});

/** A unique name per run, so reruns on one server do not collide. */
function uniqueName(prefix: string): string {
  return `${prefix}-${Math.random().toString(36).slice(2, 8)}`;
}

describe("sandbox lifecycle", () => {
  test("create, get, list, rename, delete", async (t) => {
    const name = uniqueName("life");
    const created = await client.create({ name, cpus: 1, memoryMb: 1024 });
    t.after(() => client.delete(created.sandboxId).catch(() => {}));
    assert.equal(created.status, "running");
    assert.equal(created.name, name);
    assert.ok(created.sandboxUrl, "a running sandbox carries its sandbox_url");

    const byName = await client.get(name);
    assert.equal(byName.sandboxId, created.sandboxId);
    assert.equal(byName.namespace, "default");
    assert.deepEqual(byName.resources, { cpus: 1, memoryMb: 1024, diskMb: byName.resources.diskMb });
    assert.ok(byName.resources.diskMb > 0);

    const listed = await client.list({ status: "running" });
    assert.ok(listed.some((s) => s.sandboxId === created.sandboxId));

    const newName = uniqueName("renamed");
    const renamed = await client.rename(created.sandboxId, newName);
    assert.equal(renamed.name, newName);
    assert.equal((await client.get(newName)).sandboxId, created.sandboxId);
    await assert.rejects(client.get(name), SandboxNotFoundError);

    await client.delete(newName);
    const gone = await client.get(created.sandboxId).catch((e: unknown) => e);
    // A terminated sandbox may stay readable for a while or be gone at once.
    if (gone instanceof SbxError) assert.ok(gone instanceof SandboxNotFoundError);
    else assert.equal((gone as { status: string }).status, "terminated");
    assert.ok(!(await client.list({ status: "running" })).some((s) => s.sandboxId === created.sandboxId));
  });

  test("network policy update", async (t) => {
    const created = await client.create({});
    t.after(() => client.delete(created.sandboxId).catch(() => {}));
    const walled = await client.update(created.sandboxId, {
      network: { allowInternetAccess: false, allowOut: ["203.0.113.0/24", "pypi.org"] },
    });
    assert.equal(walled.networkPolicy?.allowInternetAccess, false);
    assert.deepEqual(walled.networkPolicy?.allowOut, ["203.0.113.0/24", "pypi.org"]);
    const back = await client.update(created.sandboxId, { network: null });
    assert.equal(back.networkPolicy?.allowInternetAccess, true);
    assert.deepEqual(back.networkPolicy?.allowOut, []);
  });

  test("errors carry status, code and message", async (t) => {
    const missing = await client.get("no-such-sandbox").catch((e: unknown) => e);
    assert.ok(missing instanceof SandboxNotFoundError);
    assert.ok(missing instanceof NotFoundError && missing instanceof SbxError);
    assert.equal(missing.status, 404);
    assert.equal(missing.code, "not_found");
    assert.match(missing.message, /no-such-sandbox/);

    await assert.rejects(client.delete("no-such-sandbox"), SandboxNotFoundError);
    await assert.rejects(client.getSnapshot("snap-missing"), SnapshotNotFoundError);

    const bad = await client.create({ cpus: 4096 }).catch((e: unknown) => e);
    assert.ok(bad instanceof BadRequestError);
    assert.equal(bad.status, 400);
    assert.equal(bad.code, "invalid_argument");
    assert.match(bad.message, /cpus/);

    const name = uniqueName("taken");
    const sb = await Sandbox.create({ client, name });
    t.after(() => sb.kill().catch(() => {}));
    const dup = await client.create({ name }).catch((e: unknown) => e);
    assert.ok(dup instanceof ConflictError, `a taken name is a ConflictError, got ${dup}`);
    assert.equal(dup.status, 409);

    // Ephemeral sandboxes cannot be suspended; a missing file is a NotFoundError.
    const eph = await Sandbox.create({ client });
    t.after(() => eph.kill().catch(() => {}));
    await assert.rejects(eph.suspend(), BadRequestError);
    const noFile = await eph.files.read("/no/such/file").catch((e: unknown) => e);
    assert.ok(noFile instanceof SandboxFileNotFoundError && noFile instanceof NotFoundError);
    assert.equal(noFile.status, 404);
    // A 404 from the proxy (no such sandbox) is told apart from the daemon's.
    const ghost = new Sandbox(client, { sandboxId: "no-such-sandbox", sandboxUrl: eph.sandboxUrl });
    await assert.rejects(ghost.files.read("/etc/hostname"), SandboxNotFoundError);
  });

  test("connect by name; suspend and resume keep the files", async (t) => {
    const name = uniqueName("nap");
    const created = await Sandbox.create({ client, name });
    t.after(() => created.kill().catch(() => {}));
    await created.files.write("/root/note.txt", "before the nap");

    const sb = await Sandbox.connect(name, { apiUrl: server.apiUrl, apiKey: "" });
    assert.equal(sb.sandboxId, created.sandboxId);

    const suspended = await client.suspend(name, { waitMs: 30_000 });
    assert.equal(suspended.status, "suspended");
    assert.equal((await client.get(name)).status, "suspended");

    const resumed = await client.resume(name, { waitMs: 30_000 });
    assert.equal(resumed.status, "running");
    assert.equal(await sb.files.readText("/root/note.txt"), "before the nap");
    const r = await sb.commands.run("cat /root/note.txt");
    assert.equal(r.stdout, "before the nap\n");
  });

  test("copy makes running copies with the source's files", async (t) => {
    const source = await Sandbox.create({ client });
    t.after(() => source.kill().catch(() => {}));
    await source.files.write("/root/origin.txt", "copied");

    const result = await client.copy(source.sandboxId, { times: 2 });
    t.after(async () => {
      for (const s of result.sandboxes) await client.delete(s.sandboxId).catch(() => {});
      if (result.snapshotId) await client.deleteSnapshot(result.snapshotId).catch(() => {});
    });
    assert.equal(result.sourceSandboxId, source.sandboxId);
    assert.equal(result.sandboxes.length, 2);
    const ids = new Set(result.sandboxes.map((s) => s.sandboxId));
    assert.equal(ids.size, 2);
    assert.ok(!ids.has(source.sandboxId));
    for (const s of result.sandboxes) {
      assert.equal(s.status, "running");
      const copy = await client.connect(s.sandboxId);
      assert.equal(await copy.files.readText("/root/origin.txt"), "copied");
      // Copies are independent of each other and of the source.
      await copy.files.write("/root/mine.txt", s.sandboxId);
    }
    await assert.rejects(source.files.read("/root/mine.txt"), NotFoundError);
    assert.equal((await source.info()).status, "running");
  });
});
