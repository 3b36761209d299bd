/**
 * Images: imports from a registry on 127.0.0.1 (Debian's `docker-registry`)
 * and from the archives `skopeo` writes, listed, booted and deleted. The
 * image is made here: a busybox-only root filesystem packed by `umoci`.
 * Builds from Dockerfiles `FROM default` (nothing downloaded): booted,
 * rebuilt from the cache, and their errors.
 */

import assert from "node:assert/strict";
import { ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  BadRequestError,
  ConflictError,
  ImageBuildError,
  ImageImportError,
  ImageNotFoundError,
  type ImageBuildProgress,
  type ImageImportProgress,
  Sandbox,
  SandboxClient,
} from "@sbx/sdk";
import { startServer, TestServer } from "./helpers/server.js";

let server: TestServer;
let client: SandboxClient;
let registry: ChildProcess | undefined;
let tmp: string;
/** `127.0.0.1:PORT` */
let registryAddr: string;
/** `127.0.0.1:PORT/t/bb:1` */
let reference: string;

const run = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });

/** An OCI layout, tag `1`: busybox and a few applets; `FOO=bar`, workdir `/app`, command `sleep 1000000`. */
function busyboxLayout(): string {
  const rootfs = join(tmp, "rootfs");
  for (const d of ["bin", "etc", "tmp", "app", "root"]) mkdirSync(join(rootfs, d), { recursive: true });
  chmodSync(join(rootfs, "tmp"), 0o1777);
  copyFileSync("/bin/busybox", join(rootfs, "bin/busybox"));
  for (const applet of ["sh", "cat", "pwd", "env", "true", "sleep"]) symlinkSync("busybox", join(rootfs, "bin", applet));
  writeFileSync(join(rootfs, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  const layout = join(tmp, "layout");
  const bundle = join(tmp, "bundle");
  const image = `${layout}:1`;
  run("umoci", "init", "--layout", layout);
  run("umoci", "new", "--image", image);
  run("umoci", "unpack", "--image", image, bundle);
  run("cp", "-a", `${rootfs}/.`, join(bundle, "rootfs"));
  run("umoci", "repack", "--image", image, bundle);
  run("umoci", "config", "--image", image, "--config.env", "FOO=bar", "--config.workingdir", "/app",
    "--config.cmd", "sleep", "--config.cmd", "1000000");
  return layout;
}

/** An OCI archive (`./oci-layout` at its top) whose one layer is not a tar: its import fails after it started. */
function brokenArchive(path: string): void {
  const dir = join(tmp, "broken");
  mkdirSync(join(dir, "blobs/sha256"), { recursive: true });
  const blob = (data: string) => {
    const hex = createHash("sha256").update(data).digest("hex");
    writeFileSync(join(dir, "blobs/sha256", hex), data);
    return { digest: `sha256:${hex}`, size: Buffer.byteLength(data) };
  };
  const layer = "this is not a tar archive\n".repeat(40);
  const config = blob(JSON.stringify({
    architecture: "amd64",
    os: "linux",
    config: {},
    rootfs: { type: "layers", diff_ids: [blob(layer).digest] },
  }));
  const manifest = blob(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
    layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", ...blob(layer) }],
  }));
  writeFileSync(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  writeFileSync(join(dir, "index.json"), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", ...manifest }],
  }));
  run("tar", "-C", dir, "-cf", path, ".");
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

function listening(port: number): Promise<boolean> {
  return new Promise((res) => {
    const c = createConnection({ host: "127.0.0.1", port });
    c.once("connect", () => (c.destroy(), res(true)));
    c.once("error", () => res(false));
  });
}

before(async () => {
  tmp = mkdtempSync("/var/tmp/sbx-ts-images-");
  const layout = busyboxLayout();
  const port = await freePort();
  registryAddr = `127.0.0.1:${port}`;
  const config = join(tmp, "registry.yml");
  writeFileSync(
    config,
    `version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: ${join(tmp, "regdata")}\nhttp:\n  addr: ${registryAddr}\n`,
  );
  registry = spawn("docker-registry", ["serve", config], { stdio: "ignore" });
  for (let i = 0; !(await listening(port)); i++) {
    assert.ok(i < 100 && registry.exitCode === null, "docker-registry did not listen");
    await new Promise((r) => setTimeout(r, 100));
  }
  const oci = `oci:${layout}:1`;
  reference = `${registryAddr}/t/bb:1`;
  run("skopeo", "copy", "--dest-tls-verify=false", oci, `docker://${reference}`);
  run("skopeo", "copy", oci, `docker-archive:${join(tmp, "bb-docker.tar")}:bb:1`);
  run("skopeo", "copy", oci, `oci-archive:${join(tmp, "bb-oci.tar")}`);
  brokenArchive(join(tmp, "broken.tar"));
  writeFileSync(join(tmp, "notatar.tar"), "not a tar archive at all");
  server = await startServer();
  client = server.client;
});

after(async () => {
  await server?.stop();
  registry?.kill();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe("images", () => {
  test("importImage from a registry reports progress; listImages, getImage", async () => {
    const events: ImageImportProgress[] = [];
    const bb = await client.importImage(reference, { insecure: true, onProgress: (e) => events.push(e) });
    const first = events[0];
    assert.ok(first?.event === "resolved" && first.layers === 1 && first.bytes > 0, JSON.stringify(events));
    const kinds = new Set(events.map((e) => e.event));
    assert.ok(kinds.has("fetched") && kinds.has("applied"), JSON.stringify(events));
    assert.equal(bb.name, "bb");
    assert.equal(bb.source, reference);
    assert.equal(bb.layers, 1);
    assert.equal(bb.workingDir, "/app");
    assert.ok(bb.env.includes("FOO=bar"), JSON.stringify(bb.env));
    assert.deepEqual(bb.entrypoint, ["sleep", "1000000"]);
    assert.match(bb.digest ?? "", /^sha256:/);
    assert.ok((bb.sizeBytes ?? 0) > 0 && bb.createdAt);

    const names = (await client.listImages()).map((i) => i.name);
    assert.ok(names.includes("default") && names.includes("bb"), JSON.stringify(names));
    assert.equal((await client.getImage("bb")).id, bb.id);
    assert.equal((await client.getImage("default")).source, "debootstrap");
  });

  test("importImageArchive takes format and name from the file; a sandbox boots from it", async (t) => {
    const docker = await client.importImageArchive(join(tmp, "bb-docker.tar"));
    const events: ImageImportProgress[] = [];
    const oci = await client.importImageArchive(join(tmp, "bb-oci.tar"), { onProgress: (e) => events.push(e) });
    assert.deepEqual([docker.name, docker.source], ["bb-docker", "docker-archive"]);
    assert.deepEqual([oci.name, oci.source], ["bb-oci", "oci-archive"]);
    assert.equal(events[0]?.event, "resolved");
    const named = await client.importImageArchive(join(tmp, "bb-oci.tar"), { name: "bb-named", format: "oci-archive" });
    assert.equal(named.workingDir, "/app");

    const sb = await Sandbox.create({ client, image: "bb-oci" });
    t.after(() => sb.kill().catch(() => {}));
    assert.equal((await sb.commands.run("pwd")).stdout, "/app\n");
    assert.match((await sb.commands.run("env")).stdout, /^FOO=bar$/m);
    assert.equal((await sb.info()).image, "bb-oci");
  });

  test("deleteImage takes an image off the list", async () => {
    await client.deleteImage("bb-docker");
    const err = await client.getImage("bb-docker").catch((e: unknown) => e);
    assert.ok(err instanceof ImageNotFoundError, String(err));
    assert.equal(err.status, 404);
    assert.ok(!(await client.listImages()).some((i) => i.name === "bb-docker"));
    await assert.rejects(client.deleteImage("bb-docker"), ImageNotFoundError);
    await assert.rejects(client.deleteImage("default"), BadRequestError);
  });

  test("import errors", async () => {
    await assert.rejects(client.importImage(`${registryAddr}/t/bb:nope`, { insecure: true }), (e: unknown) => {
      assert.ok(e instanceof ImageNotFoundError);
      assert.deepEqual([e.status, e.code], [404, "image_not_found"]);
      return true;
    });
    await assert.rejects(client.importImage("Not A Ref"), (e: unknown) => e instanceof BadRequestError && e.status === 400);
    await assert.rejects(client.importImage(reference, { name: "default", insecure: true }), ConflictError);
    await assert.rejects(client.importImageArchive(join(tmp, "notatar.tar")), BadRequestError);

    // The import starts (its manifest is read), then its layer fails.
    const events: ImageImportProgress[] = [];
    await assert.rejects(
      client.importImageArchive(join(tmp, "broken.tar"), { onProgress: (e) => events.push(e) }),
      ImageImportError,
    );
    assert.equal(events[0]?.event, "resolved");
    await assert.rejects(client.getImage("broken"), ImageNotFoundError);
  });
});

const DOCKERFILE = `FROM default
ARG GREETING=hello
ENV GREETING=\${GREETING} APP_HOME=/srv/app
WORKDIR /srv/app
COPY . ./
`;

/** Per step (by its text): whether the build took it from the cache. */
function steps(events: ImageBuildProgress[]): [string, boolean][] {
  const out: [string, boolean][] = [];
  for (const e of events) {
    if (e.event === "step") out.push([e.text, false]);
    else if (e.event === "cached") out[out.length - 1][1] = true;
  }
  return out;
}

describe("image builds", () => {
  let ctx: string;
  before(() => {
    ctx = join(tmp, "ctx");
    mkdirSync(ctx);
    writeFileSync(join(ctx, "Dockerfile"), DOCKERFILE);
    writeFileSync(join(ctx, "hello.txt"), "hello from the context\n");
    writeFileSync(join(ctx, "secret.txt"), "not for the image\n");
    writeFileSync(join(ctx, ".dockerignore"), "secret.txt\n");
  });

  test("buildImage sends the context without what .dockerignore excludes; the image boots", async (t) => {
    const events: ImageBuildProgress[] = [];
    const app = await client.buildImage("built", {
      context: ctx,
      buildArgs: { GREETING: "bonjour" },
      onProgress: (e) => events.push(e),
    });
    assert.deepEqual([app.name, app.source, app.workingDir], ["built", "build", "/srv/app"]);
    assert.ok(app.env.includes("GREETING=bonjour") && app.env.includes("APP_HOME=/srv/app"), JSON.stringify(app.env));
    assert.deepEqual(events.find((e) => e.event === "step"), {
      event: "step", stage: 1, stages: 1, step: 1, steps: 4, line: 2, text: "ARG GREETING=hello",
    });
    assert.deepEqual(steps(events).map(([text]) => text), [
      "ARG GREETING=hello", "ENV GREETING=${GREETING} APP_HOME=/srv/app", "WORKDIR /srv/app", "COPY . ./",
    ]);
    assert.equal((await client.getImage("built")).id, app.id);

    const sb = await Sandbox.create({ client, image: "built" });
    t.after(() => sb.kill().catch(() => {}));
    const r = await sb.commands.run("cat hello.txt; pwd; echo $GREETING");
    assert.equal(r.stdout, "hello from the context\n/srv/app\nbonjour\n");
    const files = (await sb.commands.run("ls -a")).stdout.split("\n");
    assert.ok(files.includes("Dockerfile"), String(files));
    assert.ok(!files.includes("secret.txt") && !files.includes(".sbx-dockerfile"), String(files));
  });

  test("a rebuild takes the copy from the cache, also with the Dockerfile outside the context", async () => {
    const dockerfile = join(tmp, "app.Dockerfile");
    writeFileSync(dockerfile, DOCKERFILE);
    const events: ImageBuildProgress[] = [];
    const again = await client.buildImage("built", {
      context: ctx,
      dockerfile,
      buildArgs: { GREETING: "bonjour" },
      onProgress: (e) => events.push(e),
    });
    assert.ok(again.env.includes("GREETING=bonjour"));
    assert.deepEqual(steps(events).at(-1), ["COPY . ./", true]);
    events.length = 0;
    await client.buildImage("built", { context: ctx, dockerfile, noCache: true, onProgress: (e) => events.push(e) });
    assert.ok(!events.some((e) => e.event === "cached"), JSON.stringify(events));
  });

  test("build errors: a 400 naming the line, a failing step with its output", async () => {
    const broken = join(tmp, "broken.Dockerfile");
    const build = (text: string, onProgress?: (e: ImageBuildProgress) => void) => {
      writeFileSync(broken, text);
      return client.buildImage("broken-build", { context: ctx, dockerfile: broken, onProgress });
    };
    await assert.rejects(build("FROM default\nRUN --mount=type=cache,target=/c true\n"), (e: unknown) => {
      assert.ok(e instanceof BadRequestError && e.status === 400 && e.message.includes("line 2"), String(e));
      return true;
    });
    await assert.rejects(build("FROM no-such-image\n"), (e: unknown) => {
      assert.ok(e instanceof BadRequestError && /line 1.*no-such-image/.test(e.message), String(e));
      return true;
    });

    const events: ImageBuildProgress[] = [];
    const failing = build("FROM default\nRUN echo about to fail && exit 3\n", (e) => events.push(e));
    await assert.rejects(failing, (e: unknown) => {
      assert.ok(e instanceof ImageBuildError, String(e));
      assert.match(e.message, /line 2.*exited with code 3\nabout to fail$/s);
      assert.deepEqual(e.output, ["about to fail"]);
      return true;
    });
    const kinds = new Set(events.map((e) => e.event));
    assert.ok(kinds.has("step") && kinds.has("output"), JSON.stringify(events));
    await assert.rejects(build("FROM default\nCOPY missing.txt /\n"), (e: unknown) => {
      assert.ok(e instanceof ImageBuildError && e.message.includes("line 2") && e.output.length === 0, String(e));
      return true;
    });
    await assert.rejects(client.getImage("broken-build"), ImageNotFoundError);
    await assert.rejects(client.buildImage("broken-build", { context: join(tmp, "nowhere") }), { code: "ENOENT" });
  });
});
