// Deno installs every npm package in deno.lock when a program first needs any npm package, so a package
// in the lock is downloaded by every first run (importing mod.ts, training on --data-path). The bundled
// corpus package and its ~200 @stdlib dependencies must therefore stay out of the lock: no source file
// may import it in a form Deno analyzes (src/data/corpus.ts reads it in a child process instead).
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);

async function* sources(dir: URL): AsyncGenerator<URL> {
  for await (const e of Deno.readDir(dir)) {
    if (e.name === "node_modules" || e.name.startsWith(".")) continue;
    const u = new URL(e.name + (e.isDirectory ? "/" : ""), dir);
    if (e.isDirectory) yield* sources(u);
    else if (/\.(ts|tsx|js|mjs)$/.test(e.name)) yield u;
  }
}

Deno.test("deno.lock holds no @stdlib package (the corpus is not installed by every first run)", async () => {
  const lock = JSON.parse(await Deno.readTextFile(new URL("deno.lock", ROOT)));
  const specs = Object.keys(lock.specifiers ?? {}).filter((s) => s.startsWith("npm:@stdlib/"));
  const pkgs = Object.keys(lock.npm ?? {}).filter((s) => s.startsWith("@stdlib/"));
  assert.deepEqual(specs, []);
  assert.deepEqual(pkgs, []);
});

Deno.test("no source imports npm:@stdlib/* in a form Deno would lock", async () => {
  // import ... from "npm:@stdlib/...", import("npm:@stdlib/..."), export ... from "npm:@stdlib/..."
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)["']npm:@stdlib\//;
  const found: string[] = [];
  for (const dir of ["src/", "tasks/", "tests/", "bench/", "scripts/"]) {
    for await (const f of sources(new URL(dir, ROOT))) {
      const lines = (await Deno.readTextFile(f)).split("\n");
      lines.forEach((l, i) => {
        if (!l.trimStart().startsWith("//") && re.test(l)) {
          found.push(`${f.pathname.slice(ROOT.pathname.length)}:${i + 1}`);
        }
      });
    }
  }
  assert.deepEqual(found, []);
});
