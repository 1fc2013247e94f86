// deno task preprocess: loose JSON lines -> Megatron mmap datasets (see src/data/preprocess.ts).
// Exit codes: 0 success, 1 bad input or failure, 2 bad usage (as argparse), 130/143 stopped by
// SIGINT/SIGTERM (no output written).

import { parsePreprocessArgs, preprocess, PREPROCESS_HELP, UsageError } from "../src/data/preprocess.ts";
import { watchNpmWrapper } from "./launcher_watch.ts";
import { resolvePreprocessPaths, userCwd } from "./user_paths.ts";

/** `megatron preprocess` and `deno task preprocess`; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  let opts;
  try {
    opts = parsePreprocessArgs(argv);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(e.message);
      return 2;
    }
    throw e;
  }
  if (opts === null) {
    console.log(PREPROCESS_HELP);
    return 0;
  }
  opts = resolvePreprocessPaths(opts, userCwd());
  const watch = watchNpmWrapper((line) => console.error(line));
  // SIGINT/SIGTERM stop the run between lines so its temporary files are removed, then exit with
  // the shell's 128 + signal number.
  const stop = new AbortController();
  const signals = { SIGINT: 130, SIGTERM: 143 } as const;
  let exitCode = 1;
  const handlers = (Object.keys(signals) as (keyof typeof signals)[]).map((sig) => {
    const h = () => {
      exitCode = signals[sig];
      stop.abort(new Error(`interrupted by ${sig}`));
    };
    Deno.addSignalListener(sig, h);
    return [sig, h] as const;
  });
  try {
    await preprocess(opts, {
      log: (line) => console.error(line),
      progressBar: Deno.stdout.isTerminal() ? Deno.stdout : undefined,
      signal: stop.signal,
    });
    return 0;
  } catch (e) {
    console.error((e as Error).message);
    return exitCode;
  } finally {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
    watch.stop();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
