// The package is ready to publish: its version is the repository's VERSION
// (and index.js's VERSION), its exports resolve, and the viewer's copy is
// the same file (scripts/viewer serves it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import * as lib from "@trm-live/client";

const read = (rel) => readFileSync(fileURLToPath(new URL(rel, import.meta.url)), "utf8");
const pkg = JSON.parse(read("../package.json"));

test("package.json, index.js and the repository's VERSION agree", () => {
  const repo = read("../../../VERSION").trim();
  assert.match(repo, /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/, "VERSION is a semantic version");
  assert.equal(pkg.version, repo, "clients/js/package.json version");
  assert.equal(lib.VERSION, repo, "VERSION exported by index.js");
});

test("package.json is publishable: name, ES module, exports with types", () => {
  assert.equal(pkg.name, "@trm-live/client");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.private, undefined);
  assert.deepEqual(pkg.exports["."], { types: "./index.d.ts", import: "./index.js", default: "./index.js" });
  assert.deepEqual(pkg.dependencies, undefined, "no runtime dependencies");
  for (const f of pkg.files) read("../" + f);
  assert.equal(typeof lib.LiveClient, "function");
  assert.equal(lib.default, lib.LiveClient);
});

test("the dev viewer serves this very file", () => {
  assert.equal(read("../../../scripts/viewer/static/trm-live-client.js"), read("../index.js"),
    "scripts/viewer/static/trm-live-client.js differs: run `go generate ./viewer` in scripts/");
});

test("npm pack would publish exactly the module, its declarations, README and package.json", () => {
  const r = spawnSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
    cwd: fileURLToPath(new URL("..", import.meta.url)), encoding: "utf8",
  });
  assert.equal(r.status, 0, "npm pack --dry-run failed:\n" + r.stderr);
  const [info] = JSON.parse(r.stdout);
  assert.equal(info.id, "@trm-live/client@" + pkg.version);
  assert.deepEqual(info.files.map((f) => f.path).sort(), ["README.md", "index.d.ts", "index.js", "package.json"]);
});
