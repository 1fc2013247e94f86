// deno task preprocess: loose JSON lines -> Megatron mmap datasets (see src/data/preprocess.ts).
// Exit codes: 0 success, 1 bad input or failure, 2 bad usage (as argparse).

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
  try {
    await preprocess(opts, {
      log: (line) => console.error(line),
      progressBar: Deno.stdout.isTerminal() ? Deno.stdout : undefined,
    });
    return 0;
  } catch (e) {
    console.error((e as Error).message);
    return 1;
  } finally {
    watch.stop();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
