// `deno task pretrain:gpt [flags]`: GPT pretraining with Megatron-LM's flags. Without --data-path it
// trains the embedded default: a small GPT (GPT-2 BPE vocabulary) on the bundled State of the Union
// corpus, preprocessed on first use into the cache folder; flags given adjust that default.

import { selectBackend } from "../src/backend/cuda/select.ts";
import { ensureDefaultCorpus } from "../src/data/corpus.ts";
import {
  type Config,
  ConfigError,
  flagName,
  type FlagValues,
  helpText,
  parseArgs,
  validateForTraining,
  withDefaults,
} from "../src/training/config.ts";
import { SaveDirLock } from "../src/training/lock.ts";
import { devicePeak } from "../src/training/peak.ts";
import { pretrainGPT } from "../src/training/train.ts";
import { watchNpmWrapper } from "./launcher_watch.ts";
import { resolveTrainingPaths, userCwd } from "./user_paths.ts";

/** The embedded default: sized to finish in about 3 minutes on a 2-core CPU with OpenBLAS. */
export const EMBEDDED_DEFAULT: Partial<FlagValues> = {
  numLayers: 4,
  hiddenSize: 128,
  numAttentionHeads: 4,
  seqLength: 128,
  maxPositionEmbeddings: 128,
  microBatchSize: 8,
  globalBatchSize: 8,
  trainIters: 200,
  lr: 1e-3,
  minLr: 1e-4,
  lrDecayStyle: "cosine",
  lrWarmupFraction: 0.1, // 20 iterations of 200; a fraction keeps --train-iters N valid for any N
  weightDecay: 0.01,
  clipGrad: 1.0,
  evalInterval: 50,
  evalIters: 4,
  logInterval: 10,
  split: "90,5,5", // the bundled corpus has 233 documents: keep the test split non-empty
  tokenizerType: "GPT2BPETokenizer",
  seed: 1234,
  save: "checkpoints/gpt-sotu",
};

function fail(msg: string, code: number): never {
  console.error(`pretrain_gpt: ${msg}`);
  Deno.exit(code);
}

async function main(argv: string[]): Promise<void> {
  let cfg: Config;
  try {
    cfg = parseArgs(argv);
    if (cfg.help) {
      console.log(helpText());
      return;
    }
    if (cfg.dataPath === undefined) {
      // No data of the user's: the embedded default, adjusted by whatever flags were given.
      for (const k of ["tokenizerType", "vocabFile", "mergeFile", "vocabSize"] as const) {
        if (cfg.explicit.has(k) && !(k === "tokenizerType" && cfg[k] === "GPT2BPETokenizer")) {
          throw new ConfigError(
            `${flagName(k)}: the embedded default trains on the bundled GPT-2 BPE corpus; give --data-path ` +
              `to train on other data`,
          );
        }
      }
      const { prefix } = await ensureDefaultCorpus({ log: (l) => console.log(l) });
      const given = [...cfg.explicit].map((k) => {
        const v = (cfg as unknown as Record<string, unknown>)[k];
        return flagName(k) + (v === true ? "" : ` ${Array.isArray(v) ? v.join(" ") : String(v)}`);
      });
      cfg = withDefaults(cfg, { ...EMBEDDED_DEFAULT, dataPath: [prefix] });
      console.log(
        `> no --data-path: training the embedded default GPT on ${prefix}` +
          (given.length > 0 ? `; from the command line: ${given.join(", ")}` : ""),
      );
    }
    cfg = validateForTraining(resolveTrainingPaths(cfg, userCwd()));
  } catch (e) {
    if (e instanceof ConfigError) fail(e.message, 2);
    throw e;
  }

  const watch = watchNpmWrapper((l) => console.log(l));

  if (cfg.save) {
    // One trainer per --save folder. The lock goes on every exit that runs JavaScript (normal end,
    // error, --exit-signal-handler); after a kill it names a dead pid and the next run takes it over.
    const lock = SaveDirLock.acquire(cfg.save, {
      command: ["pretrain_gpt", ...argv].join(" "),
      log: (l) => console.log(l),
    });
    globalThis.addEventListener("unload", () => lock.release());
  }

  const { backend, note } = await selectBackend(cfg.device as "cpu" | "cuda" | "auto", {
    log: (l) => console.log(l),
  });
  console.log(note);

  const tty = Deno.stdout.isTerminal() && !cfg.noProgress;
  const enc = new TextEncoder();
  let statusShown = false;
  const clearStatus = () => {
    if (statusShown) Deno.stdout.writeSync(enc.encode("\r\x1b[2K"));
    statusShown = false;
  };
  const log = (line: string) => {
    clearStatus();
    console.log(line);
  };
  const progress = tty
    ? (s: string) => {
      Deno.stdout.writeSync(enc.encode(`\r\x1b[2K${s}`));
      statusShown = true;
    }
    : undefined;

  const stopRequest: { stop: boolean; signal?: string } = { stop: false };
  if (cfg.exitSignalHandler) {
    for (const sig of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(sig, () => {
        stopRequest.stop = true;
        stopRequest.signal = sig;
      });
    }
  }

  const peak = devicePeak(backend, cfg.paramsDtype);
  log(`> MFU is measured against ${peak.what}: ${(peak.flops / 1e12).toFixed(3)} TFLOP/s`);
  const result = await pretrainGPT(cfg, {
    backend,
    log,
    progress,
    stopRequest: cfg.exitSignalHandler ? stopRequest : undefined,
    peak,
  });
  clearStatus();
  const last = result.validation.at(-1);
  const first = result.validation[0];
  log(
    `done: ${result.iteration} iterations, ${result.tokensPerSecond.toFixed(0)} tokens/s` +
      (first && last ? `, validation loss ${first.loss.toFixed(3)} -> ${last.loss.toFixed(3)}` : ""),
  );
  if (result.savedTo) log(`checkpoint saved in ${result.savedTo} (resume with --load ${cfg.save})`);
  watch.stop();
  if (cfg.exitSignalHandler) Deno.exit(0); // signal listeners would keep the process alive
}

/** `megatron pretrain-gpt` and `deno task pretrain:gpt`: a failure is one line and exit code 1. */
export async function run(argv: string[]): Promise<void> {
  try {
    await main(argv);
  } catch (e) {
    fail((e as Error).message, 1);
  }
}

if (import.meta.main) await run(Deno.args);
