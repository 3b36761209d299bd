/** Persisted logs: output with pids and levels, filters, paging, follow, after the end. */

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Sandbox, SandboxClient, SandboxNotFoundError } from "@sbx/sdk";
import type { LogEntry } from "@sbx/sdk";
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

describe("logs", () => {
  test("output, filters, paging, processes, follow, after the end", async () => {
    const sb = await Sandbox.create({ client });
    const id = sb.sandboxId;
    try {
      await sb.commands.run("sh", { args: ["-c", "echo ts-out-1; echo ts-err-1 >&2; echo ts-out-2"] });
      const deadline = Date.now() + 10_000;
      while (!(await sb.getLogs()).entries.some((e) => e.body === "ts-out-2")) {
        assert.ok(Date.now() < deadline, "the output never reached the logs");
        await new Promise((r) => setTimeout(r, 100));
      }
      const out = await client.getLogs(id, { levels: ["info"], body: "ts-out" });
      assert.deepEqual(out.entries.map((e) => e.body), ["ts-out-1", "ts-out-2"]);
      assert.ok(out.entries.every((e) => e.stream === "stdout" && e.level === 3));
      const pid = out.entries[0].processId!;
      assert.ok(pid);
      assert.ok(new Date(out.entries[0].timeMs).getFullYear() >= 2025);
      const err = await client.getLogs(id, { levels: [5], processIds: [pid] });
      assert.deepEqual(err.entries.map((e) => e.body), ["ts-err-1"]);
      const first = await client.getLogs(id, { head: 1 });
      assert.equal(first.entries[0].event, "created");
      assert.ok(first.nextToken);
      const rest = await client.getLogs(id, { nextToken: first.nextToken });
      assert.notEqual(rest.entries[0].uuid, first.entries[0].uuid);
      const tail = await client.getLogs(id, { tail: 1, levels: ["info"] });
      assert.deepEqual(tail.entries.map((e) => e.body), ["ts-out-2"]);
      const procs = await sb.listLogProcesses();
      assert.ok(procs.some((p) => p.processId === pid && p.logCount === 3 && p.processCommand.startsWith("sh -c")));

      // Follow: the tail, then what comes next.
      const follow = sb.followLogs({ levels: ["info"], tail: 1, pollInterval: 0.1 });
      assert.equal((await follow.next()).value?.body, "ts-out-2");
      await sb.commands.run("echo", { args: ["ts-followed"] });
      assert.equal((await follow.next()).value?.body, "ts-followed");
      await follow.return(undefined);
    } finally {
      await client.delete(id);
    }
    // Ended: following stops by itself; the logs stay.
    const seen: LogEntry[] = [];
    for await (const e of client.followLogs(id, { levels: ["info"], pollInterval: 0.1 })) seen.push(e);
    assert.deepEqual(
      seen.filter((e) => e.stream).map((e) => e.body),
      ["ts-out-1", "ts-out-2", "ts-followed"],
    );
    await assert.rejects(client.getLogs("no-such-sandbox"), SandboxNotFoundError);
  });
});
