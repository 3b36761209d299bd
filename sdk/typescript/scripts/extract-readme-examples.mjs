// Writes each ```ts block of README.md to test/readme-examples/example-N.ts,
// so the examples are type-checked with the tests and run against a server.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const readme = readFileSync(join(root, "README.md"), "utf8");
const out = join(root, "test", "readme-examples");
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const blocks = [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1]);
blocks.forEach((code, i) => {
  writeFileSync(join(out, `example-${i + 1}.ts`), `// Extracted from README.md: do not edit.\n${code}export {};\n`);
});
console.log(`extracted ${blocks.length} README examples`);
