// The TypeScript declarations compile against a real use of the package
// (test/types/usage.ts, with two @ts-expect-error lines that must fail).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

const dir = fileURLToPath(new URL("..", import.meta.url));
const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));

test("index.d.ts type-checks a usage file with tsc --noEmit", () => {
  assert.ok(existsSync(tsc), "typescript is not installed: run npm ci in clients/js");
  const r = spawnSync(process.execPath, [tsc, "-p", "test/types"], { cwd: dir, encoding: "utf8" });
  assert.equal(r.status, 0, "tsc failed:\n" + r.stdout + r.stderr);
});
