// Running a task script as its own Deno process, as a user would, and reading its one-line errors.

import assert from "node:assert/strict";

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** `deno run -A <script> ...args` with NO_COLOR set (plus `env`); stdout and stderr decoded. */
export async function runScript(
  script: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<Ran> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Exactly one "<prefix>: ..." line on stderr and no stack trace; returns the text after the prefix. */
export function errorLine(r: Ran, prefix = "pretrain_gpt"): string {
  const lines = r.stderr.split("\n").filter((l) => l.startsWith(`${prefix}: `));
  assert.equal(lines.length, 1, `expected one error line, stderr:\n${r.stderr}\nstdout:\n${r.stdout}`);
  assert.ok(!/^\s+at /m.test(r.stderr), `stack trace in stderr:\n${r.stderr}`);
  return lines[0].slice(prefix.length + 2);
}
