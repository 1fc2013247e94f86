// README's "Using it as a library" section, run exactly as written: every ```ts block (with the URL import
// pointed at this checkout's mod.ts) is type-checked and run from a folder outside the project (no
// deno.json, no lock: as a URL importer), and its stdout must equal the ```text block that follows it.
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const URL_PREFIX = "https://…/megatron-deno/";

interface Example {
  code: string;
  expected: string;
  line: number;
}

/** The (code, expected output) pairs of the README's library section, in order. */
function examples(readme: string): Example[] {
  const start = readme.indexOf("\n## Using it as a library\n");
  assert.ok(start >= 0, "README has no '## Using it as a library' section");
  const next = readme.indexOf("\n## ", start + 1);
  const section = readme.slice(start, next < 0 ? undefined : next);
  const out: Example[] = [];
  const re = /```ts\n([\s\S]*?)```\n\n```text\n([\s\S]*?)```/g;
  for (const m of section.matchAll(re)) {
    const line = readme.slice(0, start + m.index!).split("\n").length + 1;
    out.push({ code: m[1], expected: m[2], line });
  }
  // Every ts block must have its output block (else the regex above would silently skip it).
  assert.equal(
    out.length,
    section.split("```ts\n").length - 1,
    "a ```ts block without a ```text block after it",
  );
  return out;
}

Deno.test("README library examples: the section's ts blocks, each followed by its output", async () => {
  const readme = await Deno.readTextFile(new URL("README.md", ROOT));
  const ex = examples(readme);
  assert.ok(ex.length >= 3, `expected the tokenizer, dataset and model examples, found ${ex.length}`);
  const dir = await Deno.makeTempDir({ prefix: "readme-lib-" });
  try {
    const files: string[] = [];
    for (const [i, e] of ex.entries()) {
      assert.ok(
        e.code.includes(`${URL_PREFIX}mod.ts`),
        `README line ${e.line}: expected an import of mod.ts`,
      );
      const f = `${dir}/example${i + 1}.ts`;
      await Deno.writeTextFile(f, e.code.replaceAll(URL_PREFIX, ROOT.href));
      files.push(f);
    }
    const run = (args: string[]) =>
      new Deno.Command(Deno.execPath(), { args, cwd: dir, stdout: "piped", stderr: "piped" }).output();
    const check = await run(["check", "--quiet", ...files]);
    assert.equal(
      check.code,
      0,
      `deno check of the README examples:\n${new TextDecoder().decode(check.stderr)}`,
    );
    for (const [i, e] of ex.entries()) {
      const r = await run(["run", "-A", "--quiet", files[i]]);
      const stderr = new TextDecoder().decode(r.stderr);
      assert.equal(r.code, 0, `README example at line ${e.line} failed:\n${stderr}`);
      assert.equal(
        new TextDecoder().decode(r.stdout),
        e.expected,
        `README example at line ${e.line}: output`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
