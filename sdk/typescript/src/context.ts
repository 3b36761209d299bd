/**
 * A build context as `sbx image build` sends it: the directory as a tar,
 * without what its `.dockerignore` excludes, and the Dockerfile added as
 * `.sbx-dockerfile`, where the server reads it. The tar is a Blob of
 * headers and the files themselves (read as the request goes out).
 */

import { openAsBlob } from "node:fs";
import { lstat, readdir, readFile, readlink } from "node:fs/promises";
import { join } from "node:path";

/** Where the server reads the Dockerfile that comes with the context. */
const DOCKERFILE_IN_CONTEXT = ".sbx-dockerfile";

/** Directory `context` (its files, directories and symlinks) and `dockerfile`
 * (default `CONTEXT/Dockerfile`), as a tar. */
export async function contextTar(context: string, dockerfile?: string): Promise<Blob> {
  const text = await readFile(dockerfile ?? join(context, "Dockerfile"));
  const ignore = new DockerIgnore(await readFile(join(context, ".dockerignore"), "utf8").catch(() => ""));
  const parts: (Uint8Array | Blob)[] = [];
  const todo = [""];
  while (todo.length) {
    const rel = todo.pop()!;
    for (const name of (await readdir(join(context, rel))).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      if (ignore.excludes(path)) continue;
      const full = join(context, path);
      const st = await lstat(full);
      const entry = { path, mode: st.mode, uid: st.uid, gid: st.gid, mtime: st.mtimeMs / 1000, size: 0 };
      if (st.isDirectory()) {
        parts.push(...header({ ...entry, type: "5" }));
        todo.push(path);
      } else if (st.isSymbolicLink()) {
        parts.push(...header({ ...entry, type: "2", link: await readlink(full) }));
      } else if (st.isFile()) {
        const file = await openAsBlob(full);
        parts.push(...header({ ...entry, type: "0", size: file.size }), file, padding(file.size));
      }
    }
  }
  const entry = { path: DOCKERFILE_IN_CONTEXT, type: "0", mode: 0o644, uid: 0, gid: 0, mtime: 0, size: text.length };
  parts.push(...header(entry), text, padding(text.length), new Uint8Array(1024));
  return new Blob(parts);
}

interface Entry {
  path: string;
  /** `0` file, `2` symlink, `5` directory, `x` pax extended header. */
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  size: number;
  link?: string;
}

/** The ustar header of `e`, after a pax header for what does not fit (long paths, large sizes). */
function header(e: Entry): Uint8Array[] {
  const h = Buffer.alloc(512);
  const pax: string[] = [];
  const text = (at: number, len: number, value: string, key: string) => {
    const b = Buffer.from(value);
    b.copy(h, at, 0, len);
    if (b.length > len) pax.push(paxRecord(key, value));
  };
  const octal = (at: number, len: number, value: number, key?: string) => {
    const digits = Math.max(0, Math.floor(value)).toString(8);
    if (digits.length < len) h.write(digits.padStart(len - 1, "0"), at, "ascii");
    else if (key) pax.push(paxRecord(key, String(Math.floor(value))));
  };
  text(0, 100, e.path, "path");
  octal(100, 8, e.mode & 0o7777);
  octal(108, 8, e.uid, "uid");
  octal(116, 8, e.gid, "gid");
  octal(124, 12, e.size, "size");
  octal(136, 12, e.mtime, "mtime");
  h.write(e.type, 156, "ascii");
  text(157, 100, e.link ?? "", "linkpath");
  h.write("ustar\x0000", 257, "ascii");
  // The checksum counts its own field as spaces.
  h.fill(0x20, 148, 156);
  h.write(`${h.reduce((sum, b) => sum + b, 0).toString(8).padStart(6, "0")}\0`, 148, "ascii");
  if (!pax.length) return [h];
  const data = Buffer.from(pax.join(""));
  const paxEntry = { path: "././@PaxHeader", type: "x", mode: 0o644, uid: 0, gid: 0, mtime: 0, size: data.length };
  return [...header(paxEntry), data, padding(data.length), h];
}

/** `LEN key=value\n`, LEN counting the whole record, itself included. */
function paxRecord(key: string, value: string): string {
  const rest = ` ${key}=${value}\n`;
  const len = Buffer.byteLength(rest);
  let n = len + 1;
  while (String(n).length + len !== n) n = String(n).length + len;
  return `${n}${rest}`;
}

function padding(size: number): Uint8Array {
  return new Uint8Array((512 - (size % 512)) % 512);
}

/**
 * `.dockerignore` rules as `sbx image build` applies them: a path is
 * excluded when the last pattern that matches it (or a directory above it)
 * is not a `!` exception. `*`, `?` and `[…]` match within one path
 * component, `**` any number of them.
 */
export class DockerIgnore {
  private readonly rules: [exclude: boolean, pattern: string][] = [];

  constructor(text: string) {
    for (let line of text.split("\n")) {
      line = line.trim();
      if (!line || line.startsWith("#")) continue;
      const exclude = !line.startsWith("!");
      const pattern = cleanPattern(exclude ? line : line.slice(1));
      if (pattern) this.rules.push([exclude, pattern]);
    }
  }

  excludes(path: string): boolean {
    const parts = path.split("/").filter(Boolean);
    let excluded = false;
    for (const [exclude, pattern] of this.rules) {
      if (parts.some((_, i) => pathMatches(pattern, parts.slice(0, i + 1).join("/")))) excluded = exclude;
    }
    return excluded;
  }
}

/** A pattern without a leading `/` or `./`, or a trailing `/`. */
function cleanPattern(p: string): string {
  while (p.startsWith("./")) p = p.slice(2);
  return p.replace(/^\/+|\/+$/g, "");
}

function pathMatches(pattern: string, path: string): boolean {
  const split = (s: string) => s.split("/").filter((c) => c !== "" && c !== ".");
  const go = (p: string[], n: string[]): boolean => {
    if (!p.length) return !n.length;
    if (p[0] === "**") return anyRest(n, (rest) => go(p.slice(1), rest));
    return n.length > 0 && componentMatches([...p[0]], [...n[0]]) && go(p.slice(1), n.slice(1));
  };
  return go(split(pattern), split(path));
}

/** Whether one path component (as characters) matches a pattern component. */
function componentMatches(p: string[], n: string[]): boolean {
  if (!p.length) return !n.length;
  const c = p[0];
  if (c === "*") return anyRest(n, (rest) => componentMatches(p.slice(1), rest));
  if (c === "?") return n.length > 0 && componentMatches(p.slice(1), n.slice(1));
  if (c === "[") {
    const end = p.indexOf("]", 1);
    if (end < 0) return n[0] === "[" && componentMatches(p.slice(1), n.slice(1));
    if (!n.length) return false;
    let set = p.slice(1, end);
    const negate = set[0] === "!" || set[0] === "^";
    if (negate) set = set.slice(1);
    const code = (s: string) => s.codePointAt(0)!;
    let hit = false;
    for (let i = 0; i < set.length; ) {
      if (i + 2 < set.length && set[i + 1] === "-") {
        hit ||= code(set[i]) <= code(n[0]) && code(n[0]) <= code(set[i + 2]);
        i += 3;
      } else {
        hit ||= set[i] === n[0];
        i += 1;
      }
    }
    return hit !== negate && componentMatches(p.slice(end + 1), n.slice(1));
  }
  if (c === "\\" && p.length > 1) return n[0] === p[1] && componentMatches(p.slice(2), n.slice(1));
  return n[0] === c && componentMatches(p.slice(1), n.slice(1));
}

/** Whether `f` holds for some tail of `n`, the empty one included. */
function anyRest<T>(n: T[], f: (rest: T[]) => boolean): boolean {
  for (let i = 0; i <= n.length; i++) if (f(n.slice(i))) return true;
  return false;
}
