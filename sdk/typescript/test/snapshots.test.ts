import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Sandbox, SandboxClient, SnapshotNotFoundError } from "@sbx/sdk";
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

describe("snapshots", () => {
  test("filesystem snapshotAndWait, restore with Sandbox.create({ snapshotId })", async (t) => {
    const source = await Sandbox.create({ client });
    t.after(() => source.kill().catch(() => {}));
    await source.files.write("/opt/data/state.txt", "snapshotted");

    const snap = await client.snapshotAndWait(source.sandboxId, { snapshotType: "filesystem", timeout: 120 });
    t.after(() => client.deleteSnapshot(snap.snapshotId).catch(() => {}));
    assert.ok(["local_ready", "completed"].includes(snap.status));
    assert.equal(snap.snapshotType, "filesystem");
    assert.equal(snap.sandboxId, source.sandboxId);
    assert.equal((await client.getSnapshot(snap.snapshotId)).snapshotId, snap.snapshotId);
    assert.ok((await client.listSnapshots()).some((s) => s.snapshotId === snap.snapshotId));
    assert.ok(
      (await client.listSnapshots({ sandboxId: source.sandboxId })).some((s) => s.snapshotId === snap.snapshotId),
    );

    // The source runs on; a change after the snapshot is not in the restore.
    await source.files.write("/opt/data/state.txt", "changed later");
    await source.kill();

    const restored = await Sandbox.create({ client, snapshotId: snap.snapshotId });
    t.after(() => restored.kill().catch(() => {}));
    assert.notEqual(restored.sandboxId, source.sandboxId);
    assert.equal(await restored.files.readText("/opt/data/state.txt"), "snapshotted");
    assert.equal((await restored.info()).snapshotId, snap.snapshotId);

    await client.deleteSnapshot(snap.snapshotId);
    await assert.rejects(client.getSnapshot(snap.snapshotId), SnapshotNotFoundError);
  });

  test("memory checkpoint keeps running processes across a restore", async (t) => {
    const source = await Sandbox.create({ client });
    t.after(() => source.kill().catch(() => {}));
    const sleeper = await source.processes.start("sh", { args: ["-c", "echo $$ > /root/sleeper.pid; exec sleep 600"] });
    // The pid file is written by the process itself: wait for it.
    let pid = "";
    for (let i = 0; i < 100 && !pid; i++) {
      pid = (await source.commands.run("cat", { args: ["/root/sleeper.pid"] })).stdout.trim();
    }
    assert.equal(pid, String(sleeper.pid));

    const cp = await source.checkpoint({ checkpointType: "memory", timeout: 120 });
    t.after(() => client.deleteSnapshot(cp.snapshotId).catch(() => {}));
    assert.equal(cp.snapshotType, "memory");
    assert.ok(["local_ready", "completed"].includes(cp.status));
    await source.kill();

    const restored = await Sandbox.create({ client, snapshotId: cp.snapshotId });
    t.after(() => restored.kill().catch(() => {}));
    // The sleeper is alive in the restored sandbox: memory and processes came back.
    const alive = await restored.commands.run("sh", { args: ["-c", `kill -0 ${pid} && cat /proc/${pid}/cmdline | tr '\\0' ' '`] });
    assert.equal(alive.exitCode, 0, alive.stderr);
    assert.match(alive.stdout, /sleep 600/);
    const info = await restored.processes.get(sleeper.pid);
    assert.equal(info.status, "running");
  });

  test("createSnapshot on a Sandbox defaults to filesystem", async (t) => {
    const sb = await Sandbox.create({ client });
    t.after(() => sb.kill().catch(() => {}));
    const snap = await sb.createSnapshot();
    t.after(() => client.deleteSnapshot(snap.snapshotId).catch(() => {}));
    assert.equal(snap.snapshotType, "filesystem");
    assert.ok(["local_ready", "completed"].includes(snap.status));
  });
});
