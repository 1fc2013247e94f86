// Compares the per-iteration training losses of two `--metrics-file` runs (JSON lines, as
// src/training/metrics.ts writes them): scripts/gpu_check.sh trains the embedded default on the CPU and
// on CUDA with --log-interval 1 and checks here that every iteration's lm loss agrees within --rtol.
//
//   deno run -A scripts/compare_losses.ts REF.jsonl OTHER.jsonl [--rtol 1e-4] [--iters N]
//
// Prints one line starting "compare_losses:" and exits 0 when every iteration agrees, 1 when one does
// not (or a loss is not finite), 2 on bad input (a missing file, a line that is not a train record's
// JSON, different iterations in the two files, fewer than --iters iterations).

/** Per-iteration lm loss of a metrics file's "train" records, in iteration order. */
export function trainLosses(text: string, name: string): Map<number, number> {
  const losses = new Map<number, number>();
  text.split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(line);
    } catch {
      throw new InputError(`${name}:${i + 1}: expected a JSON object per line, found ${line.slice(0, 60)}`);
    }
    if (rec === null || typeof rec !== "object" || rec.kind !== "train") return;
    const it = rec.iteration;
    // The writer stores non-finite numbers as strings ("NaN", "Infinity"): keep them as numbers.
    const loss = typeof rec.lm_loss === "string" ? Number(rec.lm_loss) : rec.lm_loss;
    if (typeof it !== "number" || !Number.isInteger(it) || typeof loss !== "number") {
      throw new InputError(`${name}:${i + 1}: expected a train record with an integer iteration and lm_loss`);
    }
    if (losses.has(it)) throw new InputError(`${name}:${i + 1}: iteration ${it} appears twice`);
    losses.set(it, loss);
  });
  if (losses.size === 0) throw new InputError(`${name}: expected train records with lm_loss, found none`);
  return new Map([...losses].sort((a, b) => a[0] - b[0]));
}

export class InputError extends Error {}

export interface Comparison {
  ok: boolean;
  line: string;
}

/** Relative difference |other - ref| / |ref| at every iteration; ok when all are <= rtol. */
export function compareLosses(
  ref: Map<number, number>,
  other: Map<number, number>,
  opts: { rtol: number; refName: string; otherName: string; iters?: number },
): Comparison {
  const a = [...ref.keys()], b = [...other.keys()];
  if (a.length !== b.length || a.some((k, i) => k !== b[i])) {
    const span = (k: number[]) => `${k.length} (${k[0]}..${k[k.length - 1]})`;
    throw new InputError(
      `expected the same iterations in both files, found ${span(a)} in ${opts.refName} and ${span(b)} in ` +
        opts.otherName,
    );
  }
  if (opts.iters !== undefined && a.length < opts.iters) {
    throw new InputError(`expected ${opts.iters} iterations, found ${a.length} in ${opts.refName}`);
  }
  let worst = 0, at = a[0];
  for (const k of a) {
    const r = ref.get(k)!, o = other.get(k)!;
    if (!Number.isFinite(r) || !Number.isFinite(o)) {
      return {
        ok: false,
        line: `compare_losses: FAILED: iteration ${k} loss is not finite (${opts.refName} ${r}, ` +
          `${opts.otherName} ${o})`,
      };
    }
    const d = Math.abs(o - r) / Math.abs(r);
    if (d > worst) [worst, at] = [d, k];
  }
  const first = ref.get(a[0])!, last = ref.get(a[a.length - 1])!;
  const ok = worst <= opts.rtol;
  return {
    ok,
    line: `compare_losses: ${ok ? "ok" : "FAILED"}: ${a.length} iterations, ${opts.refName} loss ` +
      `${first.toFixed(4)} -> ${
        last.toFixed(4)
      }, max |${opts.otherName} - ${opts.refName}| / |${opts.refName}| ` +
      `${worst.toExponential(2)} at iteration ${at} (bound ${opts.rtol.toExponential(0)})`,
  };
}

function parseFlags(args: string[]): { files: string[]; rtol: number; iters?: number } {
  const files: string[] = [];
  let rtol = 1e-4, iters: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--rtol" || a === "--iters") {
      const v = Number(args[++i]);
      const good = a === "--rtol" ? Number.isFinite(v) && v >= 0 : Number.isInteger(v) && v > 0;
      if (args[i] === undefined || !good) {
        throw new InputError(
          `${a}: expected ${a === "--rtol" ? "a number >= 0" : "an integer > 0"}, found ${
            args[i] ?? "nothing"
          }`,
        );
      }
      if (a === "--rtol") rtol = v;
      else iters = v;
    } else if (a.startsWith("--")) {
      throw new InputError(`${a}: unknown flag (expected --rtol or --iters)`);
    } else files.push(a);
  }
  if (files.length !== 2) {
    throw new InputError(`expected two metrics files (reference, other), found ${files.length}`);
  }
  return { files, rtol, iters };
}

function main(args: string[]): number {
  try {
    const { files, rtol, iters } = parseFlags(args);
    const [ref, other] = files.map((f) => {
      let text: string;
      try {
        text = Deno.readTextFileSync(f);
      } catch (e) {
        throw new InputError(`${f}: cannot read: ${(e as Error).message}`);
      }
      return trainLosses(text, f);
    });
    const name = (f: string) => f.replace(/^.*\//, "").replace(/\.jsonl$/, "");
    const r = compareLosses(ref, other, { rtol, iters, refName: name(files[0]), otherName: name(files[1]) });
    console.log(r.line);
    return r.ok ? 0 : 1;
  } catch (e) {
    if (!(e instanceof InputError)) throw e;
    console.error(`compare_losses: ${e.message}`);
    return 2;
  }
}

if (import.meta.main) Deno.exit(main(Deno.args));
