// The weight-name table: every parameter GPT builds has a rule whose TP split matches the module's,
// shardOf/mergeShards are inverse and reproduce what a TP=2 model really holds (initialization is
// layout-independent), stage-local names map to global ones, and mismatches fail with one line.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { type GPTConfig, GPTModel } from "../src/models/mod.ts";
import { mergeShards, shardOf, WEIGHT_RULES, weightRule, WeightTable } from "../src/models/weight_names.ts";
import { BertLMHead, BinaryHead, Pooler } from "../src/models/bert_heads.ts";
import { T5LMHead } from "../src/models/t5_head.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import { COLUMN_SPLIT, ROW_SPLIT, type TPEnv } from "../src/parallel/tensor_parallel.ts";
import { makeParallelState, SingleRankCommunicator } from "../src/parallel/types.ts";
import type { Param } from "../src/tensor/param.ts";
import { headInit, HeadInitKind, TokentypeEmbedding } from "../src/transformer/tokentype_embedding.ts";

const backend = createCpuBackend({ log: () => {} });
const cfg: GPTConfig = {
  numLayers: 4,
  hiddenSize: 8,
  numAttentionHeads: 2,
  seqLength: 4,
  maxPositionEmbeddings: 4,
  vocabSize: 16,
  hiddenDropout: 0,
  attentionDropout: 0,
  initMethodStd: 0.02,
  paramsDtype: "f32",
  activationsCheckpointMethod: null,
  seed: 5,
};

Deno.test("weight names: shardOf and mergeShards are inverse (rows, columns, 1-D) and known-answer", () => {
  const full = Float64Array.from({ length: 12 }, (_, i) => i); // [3, 4]
  assert.deepEqual(shardOf(full, [3, 4], ROW_SPLIT, 1, 2), {
    shape: [3, 2],
    data: Float64Array.from([2, 3, 6, 7, 10, 11]),
  });
  const rows = Float64Array.from({ length: 8 }, (_, i) => i); // [4, 2]
  assert.deepEqual(shardOf(rows, [4, 2], COLUMN_SPLIT, 1, 2), {
    shape: [2, 2],
    data: Float64Array.from([4, 5, 6, 7]),
  });
  for (const [shape, split] of [[[3, 4], ROW_SPLIT], [[4, 3], COLUMN_SPLIT], [[12], COLUMN_SPLIT]] as const) {
    const x = Float64Array.from({ length: 12 }, (_, i) => i * 1.5 - 3);
    const shards = [0, 1].map((r) => shardOf(x, shape, split, r, 2));
    assert.deepEqual(mergeShards(shards.map((s) => s.data), shards[0].shape, split), {
      shape: [...shape],
      data: x,
    });
  }
  assert.throws(
    () => shardOf(full, [3, 4], COLUMN_SPLIT, 0, 2),
    /^Error: weight names: dimension 0 of \[3,4\] is not divisible by TP 2$/,
  );
});

Deno.test("weight names: a TP=2 model holds exactly shardOf(the TP=1 model's tensor) under every rule", async () => {
  const one = new GPTModel(
    cfg,
    backend,
    makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    new SingleRankCommunicator(),
  );
  const full = new Map(one.params().map((p) => [p.name, p]));
  const world = new LocalWorld(backend, { tp: 2, pp: 1, dp: 1 }, { timeoutMs: 10_000 });
  await world.run((r) => {
    const m = new GPTModel(cfg, backend, world.states[r], world.communicator(r));
    const table = new WeightTable([{ params: () => m.params(), layers: [0, 1, 2, 3] }]);
    assert.equal(table.entries.length, one.params().length);
    for (const e of table.entries) {
      const f = full.get(e.globalName!)!;
      const want = shardOf(backend.toF64(f.value), f.value.shape, e.rule.split, r, 2);
      assert.deepEqual([...e.param.value.shape], want.shape, e.name);
      assert.deepEqual(backend.toF64(e.param.value), want.data, e.name);
    }
    return Promise.resolve();
  });
});

Deno.test("weight names: pipeline stages and virtual chunks map stage-local names to global ones", () => {
  const ps = makeParallelState({ tp: 1, pp: 2, dp: 1, vp: 2 }, 1);
  const comm = new SingleRankCommunicator();
  const chunks = [[1], [3]].map((layers, v) =>
    new GPTModel(cfg, backend, ps, comm, { preProcess: false, postProcess: v === 1, layers })
  );
  const table = new WeightTable(chunks.map((c) => ({ params: () => c.params(), layers: c.stage.layers })));
  const e = table.get("model1.language_model.encoder.layers.0.mlp.dense_4h_to_h.weight")!;
  assert.equal(e.globalName, "language_model.encoder.layers.3.mlp.dense_4h_to_h.weight");
  assert.equal(
    table.get("model0.language_model.encoder.layers.0.input_layernorm.bias")!.globalName,
    "language_model.encoder.layers.1.input_layernorm.bias",
  );
  assert.equal(table.get("model1.word_embeddings_for_head.weight")!.globalName, null);
  assert.equal(table.get("language_model.encoder.layers.0.mlp.dense_4h_to_h.weight"), undefined);
});

Deno.test("weight names: BERT/T5 names have rules; unknown names and wrong splits fail with one line", () => {
  for (
    const [n, split] of [
      ["language_model.decoder.layers.0.inter_attention.key_value.weight", COLUMN_SPLIT],
      ["language_model.decoder.layers.2.inter_attention.dense.weight", ROW_SPLIT],
      ["language_model.decoder.layers.2.post_inter_attention_layernorm.bias", null],
      ["lm_head.bias", COLUMN_SPLIT],
      ["binary_head.weight", null],
      ["language_model.pooler.dense.weight", null],
      ["language_model.embedding.tokentype_embeddings.weight", null],
    ] as const
  ) assert.deepEqual(weightRule(n).split, split, n);
  assert.ok(WEIGHT_RULES.length >= 15);
  assert.throws(() => weightRule("model0.language_model.encoder.layers.0.mlp.gate.weight"), {
    message:
      "weight names: no rule for parameter model0.language_model.encoder.layers.0.mlp.gate.weight (src/models/weight_names.ts)",
  });
  const bad = {
    name: "language_model.encoder.layers.0.mlp.dense_4h_to_h.weight",
    tensorParallel: COLUMN_SPLIT,
  } as Param;
  assert.throws(() => new WeightTable([{ params: () => [bad], layers: [0] }]), {
    message:
      "weight names: language_model.encoder.layers.0.mlp.dense_4h_to_h.weight is built split along dimension 0 " +
      "but the table says split along dimension 1 (ParallelMLP.dense4hH)",
  });
});

Deno.test("weight names: the BERT/T5 heads and tokentype embedding are built as the table says", () => {
  const tp: TPEnv = {
    backend,
    comm: new SingleRankCommunicator(),
    ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
    dtype: "f32",
  };
  const init = headInit(5, 0.02, HeadInitKind.pooler);
  const params = [
    ...new TokentypeEmbedding(tp, { numTokentypes: 2, hiddenSize: 8, init }).params(),
    ...new Pooler(tp, { hiddenSize: 8, init }).params(),
    ...new BertLMHead(tp, { hiddenSize: 8, vocabSize: 16, init, layernormEpsilon: 1e-5 }).params(),
    ...new BinaryHead(tp, { hiddenSize: 8, init }).params(),
  ];
  const table = new WeightTable([{ params: () => params, layers: [] }]);
  assert.deepEqual(table.entries.map((e) => e.name), [
    "language_model.embedding.tokentype_embeddings.weight",
    "language_model.pooler.dense.weight",
    "language_model.pooler.dense.bias",
    "lm_head.bias",
    "lm_head.dense.weight",
    "lm_head.dense.bias",
    "lm_head.layernorm.weight",
    "lm_head.layernorm.bias",
    "binary_head.weight",
    "binary_head.bias",
  ]);
  const t5 = new T5LMHead(tp, { hiddenSize: 8, vocabSize: 16 }).params();
  assert.deepEqual(new WeightTable([{ params: () => t5, layers: [] }]).entries.map((e) => e.rule.split), [
    COLUMN_SPLIT,
  ]);
});
