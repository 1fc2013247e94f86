// Flags of the commands that use a trained model (convert, merge-checkpoints, generate-gpt, evaluate):
// a typed table per command, parsed strictly (an unknown flag or a bad value is one line naming it),
// path flags made absolute against the user's directory, and --help generated from the table.

import { isAbsolute, resolve } from "node:path";
import { userCwd } from "./user_paths.ts";
import { CHECKPOINT_FORMATS, type CheckpointFormat } from "../src/inference/gpt_weights.ts";

export type FlagKind = "string" | "path" | "int" | "float" | "bool" | "format";

export interface FlagSpec {
  kind: FlagKind;
  help: string;
  default?: string | number | boolean;
  required?: boolean;
  choices?: readonly string[];
}

export type FlagTable = Record<string, FlagSpec>;
export type FlagValues = Record<string, string | number | boolean | undefined>;

/** A usage error: the command prints it and exits with 2. */
export class UsageError extends Error {}

export function helpText(command: string, what: string, table: FlagTable): string {
  const lines = [`usage: megatron ${command} [flags]`, "", what, "", "flags:"];
  for (const [name, s] of Object.entries(table)) {
    const arg = s.kind === "bool"
      ? ""
      : s.kind === "format"
      ? ` {${CHECKPOINT_FORMATS.join(",")}}`
      : s.choices
      ? ` {${s.choices.join(",")}}`
      : ` ${s.kind.toUpperCase()}`;
    const def = s.required ? " (required)" : s.default !== undefined ? ` (default ${s.default})` : "";
    lines.push(`  --${name}${arg}`.padEnd(36) + ` ${s.help}${def}`);
  }
  return lines.join("\n");
}

/** Parse `argv` against `table`; null for --help. Throws UsageError with one line. */
export function parseFlags(argv: readonly string[], table: FlagTable): FlagValues | null {
  const out: FlagValues = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--help" || a === "-h") return null;
    if (!a.startsWith("--")) {
      throw new UsageError(`unexpected argument ${JSON.stringify(a)}; flags start with --`);
    }
    let name = a.slice(2);
    let value: string | undefined;
    const eq = name.indexOf("=");
    if (eq >= 0) [name, value] = [name.slice(0, eq), name.slice(eq + 1)];
    const spec = table[name];
    if (!spec) throw new UsageError(`--${name}: unknown flag (see --help)`);
    if (spec.kind === "bool") {
      if (value !== undefined) {
        throw new UsageError(`--${name}: takes no value, found ${JSON.stringify(value)}`);
      }
      out[name] = true;
      continue;
    }
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new UsageError(`--${name}: expected a value`);
      value = argv[++i];
    }
    out[name] = convert(name, spec, value);
  }
  for (const [name, s] of Object.entries(table)) {
    if (out[name] === undefined && s.default !== undefined) out[name] = s.default;
    if (out[name] === undefined && s.required) throw new UsageError(`--${name}: required`);
  }
  return out;
}

function convert(name: string, s: FlagSpec, v: string): string | number {
  switch (s.kind) {
    case "int": {
      if (!/^[+-]?\d+$/.test(v)) {
        throw new UsageError(`--${name}: expected an integer, found ${JSON.stringify(v)}`);
      }
      return Number(v);
    }
    case "float": {
      const x = Number(v);
      if (v.trim() === "" || !Number.isFinite(x)) {
        throw new UsageError(`--${name}: expected a number, found ${JSON.stringify(v)}`);
      }
      return x;
    }
    case "format":
      if (!CHECKPOINT_FORMATS.includes(v as CheckpointFormat)) {
        throw new UsageError(
          `--${name}: expected one of ${CHECKPOINT_FORMATS.join(", ")}, found ${JSON.stringify(v)}`,
        );
      }
      return v;
    case "path":
      return isAbsolute(v) ? v : resolve(userCwd(), v);
    default:
      if (s.choices && !s.choices.includes(v)) {
        throw new UsageError(
          `--${name}: expected one of ${s.choices.join(", ")}, found ${JSON.stringify(v)}`,
        );
      }
      return v;
  }
}

/** Run a command body: --help prints and exits 0; a UsageError is one line and exit 2; any other
 *  error one line `<command>: <message>` and exit 1. */
export async function runCommand(
  command: string,
  what: string,
  table: FlagTable,
  argv: readonly string[],
  body: (flags: FlagValues) => Promise<number> | number,
): Promise<number> {
  let flags: FlagValues | null;
  try {
    flags = parseFlags(argv, table);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`${command}: ${e.message}`);
      return 2;
    }
    throw e;
  }
  if (flags === null) {
    console.log(helpText(command, what, table));
    return 0;
  }
  try {
    return await body(flags);
  } catch (e) {
    const msg = (e as Error).message.split("\n")[0];
    console.error(`${command}: ${msg}`);
    return e instanceof UsageError ? 2 : 1;
  }
}
