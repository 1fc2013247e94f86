// The trainer's view of the data: Megatron's build_train_valid_test_datasets over mmapped indexed
// datasets, with each split exposed as a source of samples (seq_length + 1 tokens each).

import type { SampleDataset } from "../data/blendable.ts";
import { buildTrainValidTestDatasets } from "../data/gpt_dataset.ts";
import { binPath, idxPath, inferDatasetImpl, MMapIndexedDataset } from "../data/indexed_dataset.ts";

export type SampleSource = SampleDataset<Int32Array>;

export interface GptData {
  train: SampleSource | null;
  valid: SampleSource | null;
  test: SampleSource | null;
  /** Unmap every opened dataset (samples already returned stay valid: they are copies). */
  close(): void;
}

export interface GptDataOptions {
  dataPath: readonly string[];
  split: string;
  seqLength: number;
  seed: number;
  /** The model's padded vocabulary: a sample with an id outside it fails as it is read. */
  vocabSize: number;
  /** Requested samples for train, valid and test (Megatron's train_val_test_num_samples). */
  numSamples: [number, number, number];
  log: (line: string) => void;
  /** --data-impl: "infer" reads the .idx magic first; "mmap" opens as MMIDIDX directly. */
  dataImpl?: "mmap" | "infer";
  /** --mmap-warmup: read each .idx and .bin through once before use (Megatron's _warmup_mmap_file). */
  mmapWarmup?: boolean;
}

/** Reads a file through in 100 MiB chunks so its pages are cached before training touches them. */
function warmUp(path: string): void {
  const f = Deno.openSync(path, { read: true });
  try {
    const buf = new Uint8Array(Math.min(100 * 2 ** 20, Math.max(1, f.statSync().size)));
    while ((f.readSync(buf) ?? 0) > 0) { /* reading is the point */ }
  } finally {
    f.close();
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Opens one --data-path prefix as an mmap indexed dataset, with one clear line when its .idx/.bin
 *  pair is missing or is a legacy format (shared by every task's dataset builder). */
export function openIndexedDataset(
  prefix: string,
  opts: Pick<GptDataOptions, "dataImpl" | "mmapWarmup" | "log">,
): MMapIndexedDataset {
  // Only a missing pair is "not found"; a present but bad .idx/.bin gets open()'s own message.
  const missing = [idxPath(prefix), binPath(prefix)].filter((p) => !isFile(p));
  if (missing.length === 2) {
    throw new Error(`--data-path ${prefix}: no ${prefix}.idx / ${prefix}.bin found`);
  }
  if (missing.length === 1) {
    throw new Error(
      `--data-path ${prefix}: ${missing[0]} not found (its ${
        missing[0].endsWith(".idx") ? ".bin" : ".idx"
      } exists)`,
    );
  }
  const impl = inferDatasetImpl(prefix);
  // --data-impl mmap reads the index as MMIDIDX whatever its magic says (and reports the magic).
  if (impl === "lazy" && opts.dataImpl !== "mmap") {
    const idx = idxPath(prefix);
    throw new Error(
      `${idx}: a legacy lazy/cached indexed dataset (magic TNTIDX, found by --data-impl infer); ` +
        `megatron-deno reads only mmap datasets: re-preprocess the data with --dataset-impl mmap`,
    );
  }
  if (opts.mmapWarmup) {
    opts.log("    warming up index mmap file...");
    warmUp(idxPath(prefix));
    opts.log("    warming up data mmap file...");
    warmUp(binPath(prefix));
  }
  return MMapIndexedDataset.open(prefix);
}

export function buildGptData(opts: GptDataOptions): GptData {
  const opened: MMapIndexedDataset[] = [];
  const open = (prefix: string) => {
    const ds = openIndexedDataset(prefix, opts);
    opened.push(ds);
    return ds;
  };
  opts.log(
    `> building train, validation, and test datasets (samples: ${opts.numSamples.join(", ")}) ...`,
  );
  try {
    const d = buildTrainValidTestDatasets({
      dataPrefix: opts.dataPath,
      splitString: opts.split,
      trainValidTestNumSamples: opts.numSamples,
      seqLength: opts.seqLength,
      seed: opts.seed,
      vocabSize: opts.vocabSize,
      open,
      log: opts.log,
    });
    return { ...d, close: () => opened.forEach((ds) => ds.close()) };
  } catch (e) {
    for (const ds of opened) ds.close();
    throw e;
  }
}
