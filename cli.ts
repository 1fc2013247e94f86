// `megatron <command> [flags]`: the one command-line entry point. Install it with
//   deno install -g -A -n megatron <checkout or URL>/cli.ts
// or run it in place (`deno run -A <checkout or URL>/cli.ts ...`); the deno.json tasks are aliases of
// it. Relative path flags are resolved against the directory the command was run in.
// Exit codes: 0 success, 1 failure, 2 bad usage (as argparse).

const COMMANDS = {
  "pretrain-gpt": {
    what: "GPT pretraining with Megatron-LM's flags; no flags: train the embedded default",
    run: async (argv: string[]) => {
      const { run } = await import("./tasks/pretrain_gpt.ts");
      await run(argv);
      return 0;
    },
  },
  "pretrain-t5": {
    what: "T5 pretraining (Megatron 2021's T5) with Megatron-LM's flags",
    run: async (argv: string[]) => {
      await (await import("./tasks/pretrain_t5.ts")).run(argv);
      return 0;
    },
  },
  "pretrain-bert": {
    what: "BERT pretraining with Megatron-LM's flags; no --data-path: the bundled corpus, BERT-tokenized",
    run: async (argv: string[]) => {
      await (await import("./tasks/pretrain_bert.ts")).run(argv);
      return 0;
    },
  },
  preprocess: {
    what: "tools/preprocess_data.py: loose JSON lines -> Megatron .bin/.idx",
    run: async (argv: string[]) => (await import("./tasks/preprocess_data.ts")).main(argv),
  },
  "inspect-data": {
    what: "the samples a pretraining run reads, as JSON lines (Megatron's field names)",
    run: async (argv: string[]) => (await import("./tasks/inspect_data.ts")).main(argv),
  },
  launch: {
    what: "torchrun for one node: N ranks of a command, output prefixed, failures and signals handled",
    run: async (argv: string[]) => (await import("./tasks/launch.ts")).main(argv),
  },
  convert: {
    what: "GPT checkpoints between hf, megatron-pt and megatron-deno formats",
    run: async (argv: string[]) => (await import("./tasks/convert.ts")).main(argv),
  },
  "merge-checkpoints": {
    what: "tools/merge_mp_partitions.py: reshard a GPT checkpoint, any (TP, PP) -> any (TP, PP)",
    run: async (argv: string[]) => (await import("./tasks/merge_checkpoints.ts")).main(argv),
  },
  "generate-gpt": {
    what: "tools/generate_samples_gpt.py: text generation (KV cache; --recompute without)",
    run: async (argv: string[]) => (await import("./tasks/generate_gpt.ts")).main(argv),
  },
  evaluate: {
    what: "tasks/main.py zero-shot GPT evaluation: WIKITEXT103 perplexity, LAMBADA accuracy",
    run: async (argv: string[]) => (await import("./tasks/evaluate.ts")).main(argv),
  },
  finetune: {
    what: "tasks/main.py BERT finetuning: RACE (multiple choice), MNLI / QQP (classification)",
    run: async (argv: string[]) => (await import("./tasks/finetune.ts")).main(argv),
  },
} as const satisfies Record<string, { what: string; run: (argv: string[]) => Promise<number> }>;

type Command = keyof typeof COMMANDS;

/** The subcommands, in the order --help lists them. */
export const COMMAND_NAMES: readonly string[] = Object.keys(COMMANDS);

export const CLI_HELP = [
  "usage: megatron <command> [flags]",
  "",
  "commands:",
  ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(14)} ${c.what}`),
  "",
  "`megatron <command> --help` lists a command's flags. Relative paths in flags are taken from the",
  "directory the command is run in.",
].join("\n");

/** Runs one command line; returns the exit code. */
export async function cli(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === "--help" || name === "-h" || name === "help") {
    console.log(CLI_HELP);
    return 0;
  }
  if (name === undefined) {
    console.error(CLI_HELP);
    return 2;
  }
  if (!Object.hasOwn(COMMANDS, name)) {
    console.error(
      `megatron: unknown command ${JSON.stringify(name)}; expected one of ${
        Object.keys(COMMANDS).join(", ")
      }`,
    );
    return 2;
  }
  return await COMMANDS[name as Command].run(rest);
}

if (import.meta.main) Deno.exit(await cli(Deno.args));
