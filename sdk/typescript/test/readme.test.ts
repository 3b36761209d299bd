/**
 * Runs the ```ts blocks of README.md (extracted to test/readme-examples and
 * compiled with the tests) against a real server, each as its own program.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { startServer, TestServer } from "./helpers/server.js";

let server: TestServer;

before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

const examplesDir = join(dirname(fileURLToPath(import.meta.url)), "readme-examples");

/**
 * A stand-in for `pip install numpy` that needs no network: a module named
 * numpy in site-packages. The example still proves that what the setup step
 * installs is in every sandbox restored from the snapshot.
 */
const OFFLINE_INSTALL =
  "d=/usr/local/lib/python3.11/dist-packages/numpy && mkdir -p $d && echo '__version__ = \"0-offline\"' > $d/__init__.py";

/** What each README block must print, in README order. */
const EXPECTED: { name: string; output: RegExp[] }[] = [
  { name: "configuration", output: [/^0 sandboxes$/m] },
  {
    name: "tour",
    output: [
      /^live: hello tour from \/tmp$/m,
      /^0 "hello tour from \/tmp\\n" "careful\\n"$/m,
      /^true$/m,
      /^line 2$/m,
      /^followed: desserts$/m,
      /^process ended: 0$/m,
      /30 100/,
      /^terminal exit code: 3$/m,
      /^after resume: hi$/m,
    ],
  },
  { name: "numpy snapshot", output: [/^numpy 0-offline$/m, /^numpy is here$/m] },
  { name: "checkpoint and retry", output: [/attempt 1 failed \(exit 1\)/, /^attempt 2 succeeded: 3 lines$/m] },
  { name: "branches", output: [/rate=0\.03: 134\.39$/m, /rate=0\.07: 196\.72$/m] },
  { name: "errors", output: [/^404 not_found sandbox "no-such-sandbox" not found$/m, /^400 .*cpus/m] },
];

function runExample(file: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file], {
      env: { ...process.env, SBX_API_URL: server.apiUrl, SBX_API_KEY: "", SBX_NAMESPACE: "default", SBX_EXAMPLE_INSTALL: OFFLINE_INSTALL },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

describe("README examples", () => {
  const files = readdirSync(examplesDir)
    .filter((f) => /^example-\d+\.js$/.test(f))
    .sort((a, b) => Number(a.match(/\d+/)![0]) - Number(b.match(/\d+/)![0]));

  test("every ts block has expectations", () => {
    assert.equal(files.length, EXPECTED.length, `README has ${files.length} ts blocks, the test knows ${EXPECTED.length}`);
  });

  files.forEach((file, i) => {
    const expected = EXPECTED[i];
    test(`example ${i + 1}: ${expected?.name ?? "unknown"}`, { timeout: 300_000 }, async () => {
      assert.ok(expected, `no expectations for ${file}`);
      const { code, stdout, stderr } = await runExample(join(examplesDir, file));
      assert.equal(code, 0, `${file} failed:\n${stdout}\n${stderr}`);
      for (const re of expected.output) assert.match(stdout, re, `${file} output:\n${stdout}`);
      // The examples clean up after themselves.
      const left = (await server.client.list()).filter((s) => s.status !== "terminated");
      assert.deepEqual(left.map((s) => s.sandboxId), [], "sandboxes left running");
      assert.deepEqual((await server.client.listSnapshots()).map((s) => s.snapshotId), [], "snapshots left");
    });
  });
});
