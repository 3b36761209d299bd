/** Secrets: set, listed by name only, given to a sandbox's commands, deleted. */

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { BadRequestError, NotFoundError, Sandbox, SandboxClient } from "@sbx/sdk";
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

describe("secrets", () => {
  test("set, list, inject into a sandbox, delete", async () => {
    const value = `ts-${randomUUID()} 'quoted' $HOME`;
    const info = await client.setSecret("TS_TOKEN", value);
    assert.equal(info.name, "TS_TOKEN");
    assert.ok(info.createdAt && info.updatedAt);
    const again = await client.setSecret("TS_TOKEN", value);
    assert.equal(again.createdAt, info.createdAt, "a new value keeps created_at");
    const listed = await client.listSecrets();
    assert.ok(listed.some((s) => s.name === "TS_TOKEN"));
    assert.ok(!JSON.stringify([listed, info]).includes(value), "values never come back");

    await assert.rejects(client.setSecret("not-an-env-name", "x"), BadRequestError);
    await assert.rejects(client.create({ secretNames: ["TS_NO_SUCH_SECRET"] }), (e: unknown) => {
      assert.ok(e instanceof BadRequestError);
      assert.match(e.message, /TS_NO_SUCH_SECRET/);
      return true;
    });

    const sb = await Sandbox.create({ client, secretNames: ["TS_TOKEN"] });
    try {
      // The expected value goes in as the command's own variable.
      const r = await sb.commands.run('test "$TS_TOKEN" = "$EXPECTED"', { env: { EXPECTED: value } });
      assert.equal(r.exitCode, 0, JSON.stringify(r));
    } finally {
      await sb.kill().catch(() => {});
    }

    await client.deleteSecret("TS_TOKEN");
    assert.ok(!(await client.listSecrets()).some((s) => s.name === "TS_TOKEN"));
    await assert.rejects(client.deleteSecret("TS_TOKEN"), NotFoundError);
  });
});
