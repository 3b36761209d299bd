import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import {
  AuthenticationError,
  CommandError,
  CommandEvent,
  NotFoundError,
  Sandbox,
  SandboxClient,
  SandboxFileNotFoundError,
} from "@sbx/sdk";
import { startServer, TestServer } from "./helpers/server.js";

let server: TestServer;
let sb: Sandbox;

before(async () => {
  // With an API key: the proxy, file and terminal routes must carry it too.
  server = await startServer({ apiKey: "sdk-test-key" });
  sb = await Sandbox.create({ client: server.client });
});
after(async () => {
  await sb?.kill().catch(() => {});
  await server?.stop();
});

describe("authentication", () => {
  test("a wrong or missing key is an AuthenticationError, on the API and the proxy", async () => {
    for (const apiKey of ["wrong-key", ""]) {
      const other = new SandboxClient({ apiUrl: server.apiUrl, apiKey });
      const err = await other.get(sb.sandboxId).catch((e: unknown) => e);
      assert.ok(err instanceof AuthenticationError, `expected AuthenticationError, got ${err}`);
      assert.ok(err.status === 401 || err.status === 403);
      const viaProxy = new Sandbox(other, { sandboxId: sb.sandboxId, sandboxUrl: sb.sandboxUrl });
      await assert.rejects(viaProxy.files.list("/"), AuthenticationError);
    }
  });
});

describe("commands", () => {
  test("a shell command line with env, cwd and output callbacks", async () => {
    const out: string[] = [];
    const err: string[] = [];
    const r = await sb.commands.run('echo "greeting=$GREETING"; pwd; echo oops >&2; exit 3', {
      env: { GREETING: "hello" },
      cwd: "/tmp",
      onStdout: (l) => out.push(l),
      onStderr: (l) => err.push(l),
    });
    assert.equal(r.exitCode, 3);
    assert.equal(r.ok, false);
    assert.equal(r.reason, "exited");
    assert.equal(r.stdout, "greeting=hello\n/tmp\n");
    assert.equal(r.stderr, "oops\n");
    assert.deepEqual(out, ["greeting=hello", "/tmp"]);
    assert.deepEqual(err, ["oops"]);
    assert.ok(r.pid > 0);
  });

  test("with args the program runs directly, without a shell", async () => {
    const r = await sb.commands.run("echo", { args: ["$HOME", "a  b"] });
    assert.equal(r.stdout, "$HOME a  b\n");
    assert.ok(r.ok);
  });

  test("check: true throws a CommandError carrying the result", async () => {
    const err = await sb.commands.run("echo bad >&2; exit 4", { check: true }).catch((e: unknown) => e);
    assert.ok(err instanceof CommandError);
    assert.equal(err.result.exitCode, 4);
    assert.match(err.message, /exit code 4: bad/);
  });

  test("a timeout kills the command", async () => {
    const r = await sb.commands.run("echo started; sleep 30", { timeout: 1 });
    assert.equal(r.reason, "timed_out");
    assert.ok(r.timedOut);
    assert.equal(r.stdout, "started\n");
    assert.notEqual(r.exitCode, 0);
  });

  test("stream yields start, lines in order, then exit", async () => {
    const events: CommandEvent[] = [];
    for await (const ev of sb.commands.stream("sh", {
      args: ["-c", "for i in 1 2 3; do echo line$i; done; echo warn >&2"],
    })) {
      events.push(ev);
    }
    assert.equal(events[0]?.type, "start");
    const last = events.at(-1);
    assert.ok(last && last.type === "exit");
    assert.equal(last.exitCode, 0);
    const stdout = events.flatMap((e) => (e.type === "stdout" ? [e.line] : []));
    const stderr = events.flatMap((e) => (e.type === "stderr" ? [e.line] : []));
    assert.deepEqual(stdout, ["line1", "line2", "line3"]);
    assert.deepEqual(stderr, ["warn"]);
  });
});

describe("background processes", () => {
  test("stdin, follow, output, wait", async (t) => {
    const p = await sb.processes.start("python3", {
      args: ["-u", "-c", "import sys\nfor l in sys.stdin: print(l.strip().upper())\nprint('eof', file=sys.stderr)"],
      stdin: true,
    });
    t.after(() => sb.processes.kill(p.pid).catch(() => {}));
    assert.equal(p.status, "running");
    assert.equal(p.stdinWritable, true);
    assert.ok((await sb.processes.list()).some((q) => q.pid === p.pid));

    await sb.processes.writeStdin(p.pid, "alpha\n");
    await sb.processes.writeStdin(p.pid, new TextEncoder().encode("beta\n"));
    await sb.processes.closeStdin(p.pid);

    const followed = [];
    for await (const line of sb.processes.follow(p.pid)) followed.push(`${line.stream}:${line.line}`);
    assert.deepEqual(followed.filter((l) => l.startsWith("stdout:")), ["stdout:ALPHA", "stdout:BETA"]);
    assert.ok(followed.includes("stderr:eof"));

    const done = await sb.processes.wait(p.pid, { timeout: 60 });
    assert.equal(done.status, "exited");
    assert.equal(done.exitCode, 0);
    assert.deepEqual(await sb.processes.output(p.pid, { stream: "stdout" }), ["ALPHA", "BETA"]);
    assert.deepEqual(await sb.processes.output(p.pid, { stream: "stderr" }), ["eof"]);
  });

  test("signal and kill", async () => {
    const p = await sb.processes.start("sleep", { args: ["300"] });
    await sb.processes.signal(p.pid, "SIGTERM");
    const ended = await sb.processes.wait(p.pid, { timeout: 60 });
    assert.equal(ended.status, "signaled");
    assert.equal(ended.signal, 15);

    const q = await sb.processes.start("sleep", { args: ["300"] });
    const killed = await sb.processes.kill(q.pid);
    assert.notEqual(killed.status, "running");
    await assert.rejects(sb.processes.get(q.pid), NotFoundError);
  });
});

describe("files", () => {
  test("write, read, list and remove, text and a few MB of binary", async () => {
    await sb.files.write("/root/dir/hello.txt", "hi there\n");
    assert.equal(await sb.files.readText("/root/dir/hello.txt"), "hi there\n");

    const blob = randomBytes(3 * 1024 * 1024 + 17);
    await sb.files.write("/root/dir/blob.bin", blob);
    const back = await sb.files.read("/root/dir/blob.bin");
    assert.equal(back.length, blob.length);
    assert.ok(back.equals(blob));
    // The sandbox sees the same bytes.
    const sum = await sb.commands.run("sha256sum", { args: ["/root/dir/blob.bin"] });
    assert.equal(sum.stdout.split(" ")[0], createHash("sha256").update(blob).digest("hex"));

    // A stream is sent as it is read.
    const chunks = [randomBytes(100_000), randomBytes(50_000)];
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        for (const ch of chunks) c.enqueue(ch);
        c.close();
      },
    });
    await sb.files.write("/root/dir/streamed.bin", stream);
    assert.ok((await sb.files.read("/root/dir/streamed.bin")).equals(Buffer.concat(chunks)));

    const entries = await sb.files.list("/root/dir");
    const byName = new Map(entries.map((e) => [e.name, e]));
    assert.equal(byName.get("blob.bin")?.size, blob.length);
    assert.equal(byName.get("blob.bin")?.isDir, false);
    assert.ok(byName.has("hello.txt") && byName.has("streamed.bin"));

    await sb.files.remove("/root/dir/blob.bin");
    await assert.rejects(sb.files.read("/root/dir/blob.bin"), SandboxFileNotFoundError);
    assert.ok(!(await sb.files.list("/root/dir")).some((e) => e.name === "blob.bin"));
  });
});

describe("pty", () => {
  test("interactive shell: output, resize, exit code", async () => {
    let output = "";
    const pty = await sb.pty.create({
      command: "/bin/sh",
      rows: 24,
      cols: 80,
      onData: (d) => (output += Buffer.from(d).toString("utf8")),
    });
    pty.resize(120, 40);
    pty.write("stty size; echo marker-$((6*7))\n");
    pty.write("exit 5\n");
    assert.equal(await pty.wait(), 5);
    assert.match(output, /40 120/);
    assert.match(output, /marker-42/);
  });

  test("kill ends the session", async () => {
    const pty = await sb.pty.create({ command: "sleep", args: ["300"] });
    await pty.kill();
    const code = await pty.wait();
    assert.notEqual(code, 0);
  });
});
