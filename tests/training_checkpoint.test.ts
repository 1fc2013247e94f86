import assert from "node:assert/strict";
import {
  checkArchitectureArgs,
  type CheckpointMeta,
  chunkPrefix,
  iterDirName,
  loadCheckpoint,
  type NamedTensor,
  optimName,
  rankDirName,
  type RankState,
  readTracker,
  saveCheckpoint,
  TRACKER_FILE,
} from "../src/training/checkpoint.ts";
import { encodeSafetensors } from "../src/training/safetensors.ts";

function meta(iteration: number): CheckpointMeta {
  return {
    args: { numLayers: 2, hiddenSize: 8, paddedVocabSize: 128 },
    iteration,
    consumedTrainSamples: iteration * 4,
    consumedValidSamples: 7,
    gradScaler: { scale: 65536, growthTracker: 3, hysteresisTracker: 2 },
    lrScheduler: { numSteps: iteration * 4, maxLr: 1e-4, decayStyle: "cosine" },
    rng: { seed: 1234, iteration, dataIteratorPosition: iteration * 4 },
    optimizer: { step: iteration },
  };
}

function rank(tp: number, pp: number, iteration: number, fill: number): RankState {
  const w = "language_model.encoder.layers.0.mlp.dense_h_to_4h.weight";
  const model: NamedTensor[] = [
    { name: w, dtype: "bf16", shape: [4, 2], data: new Uint16Array(8).fill(0x3f80 + fill) },
    {
      name: "language_model.embedding.word_embeddings.weight",
      dtype: "f32",
      shape: [3],
      // -0 and a subnormal must survive byte for byte (a NaN would be refused on load: see below).
      data: new Float32Array([fill, -0, 1e-45]),
    },
  ];
  const optim: NamedTensor[] = [
    { name: optimName(w, "exp_avg"), dtype: "f32", shape: [4, 2], data: new Float32Array(8).fill(fill / 3) },
    { name: optimName(w, "main_param"), dtype: "f32", shape: [4, 2], data: new Float32Array(8).fill(1) },
  ];
  return { tp, pp, model, optim, meta: meta(iteration) };
}

function bytes(t: NamedTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

function withDir(f: (dir: string) => void): void {
  const dir = Deno.makeTempDirSync();
  try {
    f(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("checkpoint: names follow Megatron's layout", () => {
  assert.equal(iterDirName(100), "iter_0000100");
  assert.equal(iterDirName(12345678), "iter_12345678");
  assert.equal(iterDirName("release"), "release");
  assert.equal(rankDirName(0, 0, 1), "mp_rank_00");
  assert.equal(rankDirName(3, 2, 4), "mp_rank_03_002");
  assert.equal(chunkPrefix(1, 2), "model1.");
  assert.equal(chunkPrefix(0, 1), "");
  assert.equal(optimName("a.weight", "exp_avg_sq"), "optimizer.state.a.weight.exp_avg_sq");
  assert.equal(optimName("a.weight", "main_param"), "fp32_from_fp16_params.a.weight");
  assert.throws(() => iterDirName(-1), {
    message: "checkpoint: iteration must be a non-negative integer, found -1",
  });
});

Deno.test("checkpoint: round trip is byte-exact, TP=2 x PP=2", () => {
  withDir((dir) => {
    const ranks = [rank(0, 0, 100, 1), rank(1, 0, 100, 2), rank(0, 1, 100, 3), rank(1, 1, 100, 4)];
    const final = saveCheckpoint({ saveDir: dir, iteration: 100, tpSize: 2, ppSize: 2, ranks });
    assert.equal(final, `${dir}/iter_0000100`);
    assert.equal(Deno.readTextFileSync(`${dir}/${TRACKER_FILE}`), "100");
    assert.deepEqual(
      [...Deno.readDirSync(final)].map((e) => e.name).sort(),
      ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"],
    );
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).sort(),
      ["iter_0000100", TRACKER_FILE],
    );
    for (const r of ranks) {
      const got = loadCheckpoint(dir, r, { ppSize: 2 });
      assert.equal(got.iteration, 100);
      assert.equal(got.release, false);
      assert.equal(got.checkpointVersion, 3.0);
      assert.deepEqual(got.sizes, { tpSize: 2, ppSize: 2 });
      assert.deepEqual(got.meta, r.meta);
      for (const [want, have] of [[r.model, got.model], [r.optim!, got.optim!]]) {
        assert.deepEqual(
          have.map((t) => [t.name, t.dtype, t.shape]),
          want.map((t) => [t.name, t.dtype, t.shape]),
        );
        for (let i = 0; i < want.length; i++) assert.deepEqual(bytes(have[i]), bytes(want[i]));
      }
      // the file on disk is exactly the safetensors encoding of the input
      const file = Deno.readFileSync(`${got.dir}/model.safetensors`);
      assert.deepEqual(file, encodeSafetensors(r.model, { format: "megatron-deno", iteration: "100" }));
    }
    // without ppSize the loader finds mp_rank_TT_PPP; --no-load-optim skips the optimizer file
    const noOpt = loadCheckpoint(dir, { tp: 1, pp: 1 }, { loadOptim: false });
    assert.equal(noOpt.optim, undefined);
    const meta = JSON.parse(Deno.readTextFileSync(`${noOpt.dir}/meta.json`));
    assert.equal(meta.checkpoint_version, 3);
    assert.equal(meta.format_version, 1);
    assert.equal(meta.consumed_train_samples, 400);
    assert.deepEqual(meta.grad_scaler, { scale: 65536, growth_tracker: 3, hysteresis_tracker: 2 });
    assert.deepEqual(meta.rng_state, { seed: 1234, iteration: 100, data_iterator_position: 400 });
  });
});

Deno.test("checkpoint: tracker semantics, release, and missing pieces are one line", () => {
  withDir((dir) => {
    assert.equal(readTracker(dir), null);
    assert.throws(() => loadCheckpoint(dir, { tp: 0, pp: 0 }), {
      message: `${dir}/${TRACKER_FILE}: not found; no checkpoint to load in ${dir}`,
    });
    saveCheckpoint({ saveDir: dir, iteration: 5, tpSize: 1, ppSize: 1, ranks: [rank(0, 0, 5, 1)] });
    assert.deepEqual(readTracker(dir), { iteration: 5, release: false });
    assert.ok(Deno.statSync(`${dir}/iter_0000005/mp_rank_00/model.safetensors`).isFile);
    saveCheckpoint({ saveDir: dir, iteration: 10, tpSize: 1, ppSize: 1, ranks: [rank(0, 0, 10, 2)] });
    assert.deepEqual(readTracker(dir), { iteration: 10, release: false });
    assert.equal(loadCheckpoint(dir, { tp: 0, pp: 0 }).meta.iteration, 10);
    assert.equal(loadCheckpoint(dir, { tp: 0, pp: 0 }, { iteration: 5 }).meta.iteration, 5);
    // release: tracker says "release", files under <save>/release/
    saveCheckpoint({ saveDir: dir, iteration: "release", tpSize: 1, ppSize: 1, ranks: [rank(0, 0, 0, 3)] });
    assert.equal(Deno.readTextFileSync(`${dir}/${TRACKER_FILE}`), "release");
    assert.deepEqual(readTracker(dir), { iteration: 0, release: true });
    const rel = loadCheckpoint(dir, { tp: 0, pp: 0 });
    assert.equal(rel.release, true);
    assert.equal(rel.iteration, 0);
    assert.equal(rel.dir, `${dir}/release/mp_rank_00`);
    // Megatron writes no newline; accept one anyway
    Deno.writeTextFileSync(`${dir}/${TRACKER_FILE}`, "10\n");
    assert.deepEqual(readTracker(dir), { iteration: 10, release: false });
    Deno.writeTextFileSync(`${dir}/${TRACKER_FILE}`, "ten");
    assert.throws(() => readTracker(dir), {
      message: `${dir}/${TRACKER_FILE}: expected an iteration number or "release", found "ten"`,
    });
    Deno.writeTextFileSync(`${dir}/${TRACKER_FILE}`, "20");
    assert.throws(() => loadCheckpoint(dir, { tp: 0, pp: 0 }), {
      message: `${dir}/iter_0000020: missing (the tracker names iteration 20)`,
    });
    Deno.writeTextFileSync(`${dir}/${TRACKER_FILE}`, "10");
    assert.throws(() => loadCheckpoint(dir, { tp: 1, pp: 0 }, { ppSize: 1 }), {
      message: `${dir}/iter_0000010/mp_rank_01: missing; no files for tp rank 1, pp rank 0`,
    });
    Deno.removeSync(`${dir}/iter_0000010/mp_rank_00/model.safetensors`);
    assert.throws(() => loadCheckpoint(dir, { tp: 0, pp: 0 }), {
      message: `${dir}/iter_0000010/mp_rank_00/model.safetensors: missing (incomplete checkpoint?)`,
    });
    Deno.removeSync(`${dir}/iter_0000005/mp_rank_00/optim.safetensors`);
    assert.throws(() => loadCheckpoint(dir, { tp: 0, pp: 0 }, { iteration: 5 }), {
      message: `${dir}/iter_0000005/mp_rank_00/optim.safetensors: missing (listed in meta.json)`,
    });
    assert.equal(loadCheckpoint(dir, { tp: 0, pp: 0 }, { iteration: 5, loadOptim: false }).meta.iteration, 5);
  });
});

Deno.test("checkpoint: a crash at any stage of a save leaves the previous checkpoint loadable", () => {
  withDir((dir) => {
    const sizes = { tpSize: 2, ppSize: 1 };
    saveCheckpoint({ saveDir: dir, iteration: 10, ...sizes, ranks: [rank(0, 0, 10, 1), rank(1, 0, 10, 1)] });
    const check = () => {
      assert.equal(Deno.readTextFileSync(`${dir}/${TRACKER_FILE}`), "10");
      for (const tp of [0, 1]) {
        const got = loadCheckpoint(dir, { tp, pp: 0 });
        assert.equal(got.meta.iteration, 10);
        assert.equal((got.model[1].data as Float32Array)[0], 1);
      }
    };
    // a "kill" after the first rank is written: the temp dir stays behind, nothing else changes
    const crash = (at: string) => (stage: string) => {
      if (stage === at) throw new Error(`injected crash at ${stage}`);
    };
    assert.throws(
      () =>
        saveCheckpoint({
          saveDir: dir,
          iteration: 20,
          ...sizes,
          ranks: [rank(0, 0, 20, 2), rank(1, 0, 20, 2)],
          cleanupOnError: false,
          token: "999",
          onStage: crash("rank-written"),
        }),
      /injected crash at rank-written/,
    );
    assert.ok(Deno.statSync(`${dir}/iter_0000020.tmp-999/mp_rank_00/meta.json`).isFile);
    check();
    // a crash after every file is synced but before the rename (cleaned up this time)
    assert.throws(() =>
      saveCheckpoint({
        saveDir: dir,
        iteration: 20,
        ...sizes,
        ranks: [rank(0, 0, 20, 2), rank(1, 0, 20, 2)],
        onStage: crash("synced"),
      })
    );
    assert.equal(
      [...Deno.readDirSync(dir)].filter((e) => e.name.startsWith(`iter_0000020.tmp-${Deno.pid}`)).length,
      0,
    );
    check();
    // a crash after the rename but before the tracker: iteration 20 exists, the tracker still says 10
    assert.throws(() =>
      saveCheckpoint({
        saveDir: dir,
        iteration: 20,
        ...sizes,
        ranks: [rank(0, 0, 20, 2), rank(1, 0, 20, 2)],
        onStage: crash("renamed"),
      })
    );
    assert.ok(Deno.statSync(`${dir}/iter_0000020/mp_rank_01/model.safetensors`).isFile);
    check();
    // a failing writer (bad tensor) mid-save
    const bad = rank(1, 0, 30, 2);
    bad.model[0] = { ...bad.model[0], data: new Float32Array(8) };
    assert.throws(
      () => saveCheckpoint({ saveDir: dir, iteration: 30, ...sizes, ranks: [rank(0, 0, 30, 3), bad] }),
      /expected Uint16Array of 8 elements for bf16/,
    );
    check();
    // re-saving iteration 10 replaces it safely; a later full save moves the tracker
    saveCheckpoint({ saveDir: dir, iteration: 10, ...sizes, ranks: [rank(0, 0, 10, 1), rank(1, 0, 10, 1)] });
    check();
    saveCheckpoint({ saveDir: dir, iteration: 20, ...sizes, ranks: [rank(0, 0, 20, 2), rank(1, 0, 20, 2)] });
    assert.equal(loadCheckpoint(dir, { tp: 1, pp: 0 }).meta.iteration, 20);
    assert.equal([...Deno.readDirSync(dir)].filter((e) => e.name.includes(".old-")).length, 0);
    // an interrupted replace (old dir moved aside, new not yet renamed in) still loads
    Deno.renameSync(`${dir}/iter_0000020`, `${dir}/iter_0000020.old-4242`);
    assert.equal(loadCheckpoint(dir, { tp: 0, pp: 0 }).meta.iteration, 20);
  });
});

Deno.test("checkpoint: architecture mismatch message names every mismatch", () => {
  const ckpt = {
    numLayers: 24,
    hiddenSize: 1024,
    numAttentionHeads: 16,
    maxPositionEmbeddings: 1024,
    makeVocabSizeDivisibleBy: 128,
    paddedVocabSize: 50304,
    tokenizerType: "GPT2BPETokenizer",
    tensorModelParallelSize: 1,
    pipelineModelParallelSize: 1,
  };
  assert.equal(checkArchitectureArgs(ckpt, { ...ckpt, lr: 1 }), null);
  assert.equal(
    checkArchitectureArgs(ckpt, {
      ...ckpt,
      numLayers: 12,
      hiddenSize: 768,
      paddedVocabSize: 50432,
      tokenizerType: undefined,
      tensorModelParallelSize: 2,
    }),
    "checkpoint arguments do not match this run: --num-layers: checkpoint 24, run 12; " +
      "--hidden-size: checkpoint 1024, run 768; padded vocab size: checkpoint 50304, run 50432; " +
      "--tokenizer-type: checkpoint GPT2BPETokenizer, run unset; --tensor-model-parallel-size: checkpoint 1, run 2",
  );
});

Deno.test("checkpoint: SIGKILL of a saving process never breaks the latest checkpoint", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const mod = new URL("../src/training/checkpoint.ts", import.meta.url).href;
    // The child saves iterations 1, 2, 3, ... as fast as it can; every tensor element holds the iteration.
    const code = `
      import { saveCheckpoint } from ${JSON.stringify(mod)};
      const dir = ${JSON.stringify(dir)};
      for (let it = 1; ; it++) {
        const m = (v) => ({ args: {}, iteration: it, consumedTrainSamples: it, consumedValidSamples: 0 });
        const t = (name) => ({ name, dtype: "f32", shape: [1 << 18], data: new Float32Array(1 << 18).fill(it) });
        saveCheckpoint({ saveDir: dir, iteration: it, tpSize: 2, ppSize: 1,
          ranks: [0, 1].map((tp) => ({ tp, pp: 0, model: [t("a"), t("b")], optim: [t("c")], meta: m() })) });
      }`;
    let checked = 0;
    for (const delayMs of [400, 650, 900]) {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["eval", code],
        stdout: "null",
        stderr: "piped",
      })
        .spawn();
      await new Promise((r) => setTimeout(r, delayMs));
      child.kill("SIGKILL");
      const status = await child.status;
      assert.equal(status.signal, "SIGKILL", new TextDecoder().decode((await child.output()).stderr));
      const tr = readTracker(dir);
      if (tr === null) continue; // killed before the first save finished: nothing to check
      checked++;
      for (const tp of [0, 1]) {
        const got = loadCheckpoint(dir, { tp, pp: 0 });
        assert.equal(got.meta.iteration, tr.iteration);
        for (const t of [...got.model, ...got.optim!]) {
          assert.ok(
            (t.data as Float32Array).every((x) => x === tr.iteration),
            `${t.name} not all ${tr.iteration}`,
          );
        }
      }
    }
    assert.ok(checked > 0, "the child never completed a save; nothing was tested");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
