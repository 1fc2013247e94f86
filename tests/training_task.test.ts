// The generic trainer (pretrain(task, ...)) with a task other than GPT: a GPT variant whose stages
// pass two tensors (the hidden state and a "passenger" that the last stage adds nothing from) and
// whose loss logs two named scalars. Pipelined, it must train exactly as gptTask does (packing is a
// copy), log and evaluate every scalar by name; and task flag sets compose/validate as specified.

import assert from "node:assert/strict";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { MMapIndexedDatasetBuilder } from "../src/data/indexed_dataset.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import {
  type Config,
  GPT_FLAGS,
  parseArgs,
  type TaskFlags,
  validateForTraining,
} from "../src/training/config.ts";
import { type GPTChunk, gptTask } from "../src/training/gpt_task.ts";
import type { ModelChunk, TrainingTask } from "../src/training/task.ts";
import { pretrain } from "../src/training/train.ts";

function writeCorpus(dir: string): string {
  const prefix = `${dir}/synthetic_text_document`;
  const b = new MMapIndexedDatasetBuilder(prefix, "uint16");
  let x = 777;
  for (let d = 0; d < 40; d++) {
    const t: number[] = [];
    for (let i = 0; i < 15 + (d * 5) % 20; i++) {
      x = (x * 1103515245 + 12345) % 2147483648;
      t.push(x % 127);
    }
    b.addItem(t);
    b.endDocument();
  }
  b.finalize();
  return prefix;
}

function args(data: string, pp: number): Config {
  return validateForTraining(parseArgs([
    ...["--num-layers", "4", "--hidden-size", "16", "--num-attention-heads", "2"],
    ...["--seq-length", "8", "--max-position-embeddings", "8", "--micro-batch-size", "2"],
    ...["--global-batch-size", "8", "--train-iters", "4", "--lr", "1e-3", "--seed", "9"],
    ...["--tokenizer-type", "NullTokenizer", "--vocab-size", "127", "--data-path", data],
    ...["--split", "80,20,0", "--eval-iters", "1", "--eval-interval", "2", "--log-interval", "2"],
    ...["--hidden-dropout", "0.1", "--attention-dropout", "0.1"],
    ...["--pipeline-model-parallel-size", String(pp)],
  ]));
}

/** Each non-last stage sends [hidden, a copy of hidden], checked equal on arrival; the copy's
 *  gradient is zero, so training must match gptTask bit for bit. */
class PassengerChunk implements ModelChunk {
  readonly spec;
  readonly batchFields;
  seen = 0;
  constructor(readonly inner: GPTChunk, readonly be: ReturnType<typeof createCpuBackend>) {
    this.spec = inner.spec;
    this.batchFields = inner.batchFields;
  }
  params() {
    return this.inner.params();
  }
  tiedEmbeddingParam() {
    return this.inner.tiedEmbeddingParam();
  }
  async forward(
    batch: Record<string, Tensor>,
    received: Tensor[],
    ctx: Parameters<ModelChunk["forward"]>[2],
  ) {
    if (!this.spec.preProcess) {
      assert.equal(received.length, 2);
      // The previous stage sent [out, copy of out]: after packing and unpacking both must be equal.
      assert.deepEqual(this.be.toF64(received[1]), this.be.toF64(received[0]));
      this.seen++;
    }
    const [out] = await this.inner.forward(batch, received.slice(0, 1), ctx);
    if (this.spec.postProcess) return [out];
    const passenger = this.be.empty(out.dtype, out.shape);
    this.be.copy(out, passenger);
    return [out, passenger];
  }
  async backward(ctx: Parameters<ModelChunk["backward"]>[0], grads: Tensor[]) {
    const dx = await this.inner.backward(ctx, grads.slice(0, 1));
    if (dx.length === 0) return [];
    return [dx[0], this.be.zeros(dx[0].dtype, dx[0].shape)];
  }
  discard(ctx: Parameters<ModelChunk["discard"]>[0]) {
    this.inner.discard(ctx);
  }
}

function passengerTask(
  be: ReturnType<typeof createCpuBackend>,
  chunks: PassengerChunk[],
): TrainingTask<unknown> {
  const base = gptTask as TrainingTask<unknown>;
  return {
    ...base,
    name: "gpt-passenger",
    lossNames: ["lm loss", "half loss"],
    buildChunk(ctx, spec, env) {
      const c = new PassengerChunk(base.buildChunk(ctx, spec, env) as GPTChunk, be);
      chunks.push(c);
      return c;
    },
    stageTensors: (ctx, b) => [...base.stageTensors(ctx, b), ...base.stageTensors(ctx, b)],
    async loss(ctx, chunk, outputs, batch) {
      const l = await base.loss(ctx, (chunk as PassengerChunk).inner, outputs, batch);
      return { ...l, scalars: { ...l.scalars, "half loss": l.loss / 2 } };
    },
  };
}

Deno.test("generic trainer: a task with two stage tensors and two loss scalars trains as gptTask, PP=2", async () => {
  const dir = Deno.makeTempDirSync();
  try {
    const data = writeCorpus(dir);
    const be = createCpuBackend({ log: () => {} });
    const ref = await pretrain(gptTask as TrainingTask<unknown>, args(data, 2), {
      backend: be,
      log: () => {},
    });
    const chunks: PassengerChunk[] = [];
    const lines: string[] = [];
    const got = await pretrain(passengerTask(be, chunks), args(data, 2), {
      backend: be,
      log: (l) => lines.push(l),
    });
    assert.ok(chunks.some((c) => c.seen > 0), "the second stage received packed tensors");
    assert.deepEqual(got.history.map((h) => h.loss), ref.history.map((h) => h.loss));
    for (const h of got.history) assert.deepEqual(h.scalars, { "lm loss": h.loss, "half loss": h.loss / 2 });
    assert.deepEqual(got.validation.map((v) => v.loss), ref.validation.map((v) => v.loss));
    const v = got.validation[0];
    assert.equal(v.scalars["half loss"], v.scalars["lm loss"] / 2);
    const iterLine = lines.find((l) => l.includes(" iteration        2/"))!;
    assert.match(iterLine, / lm loss: \d\.\d{6}e[+-]\d+ \| half loss: \d\.\d{6}e[+-]\d+ \|/);
    const valLine = lines.find((l) => l.includes("validation loss at iteration 2"))!;
    assert.match(
      valLine,
      /\| lm loss value: .* \| lm loss PPL: .* \| half loss value: .* \| half loss PPL: /,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("task flags: a task may read a flag GPT rejects; groups outside the task fail with one line", () => {
  const base = [
    ...["--num-layers", "2", "--hidden-size", "8", "--num-attention-heads", "2", "--seq-length", "4"],
    ...["--max-position-embeddings", "4", "--micro-batch-size", "1", "--lr", "1", "--train-iters", "1"],
    ...["--data-path", "x"],
  ];
  assert.throws(() => validateForTraining(parseArgs([...base, "--bert-no-binary-head"])), {
    message:
      "--bert-no-binary-head: not supported; it applies to BERT (pretrain-bert); GPT has no binary head",
  });
  const bert: TaskFlags = { ...GPT_FLAGS, command: "pretrain-bert", reads: ["bertNoBinaryHead"] };
  assert.equal(
    validateForTraining(parseArgs([...base, "--bert-no-binary-head"]), bert).bertNoBinaryHead,
    true,
  );
  const noLog: TaskFlags = {
    ...GPT_FLAGS,
    command: "pretrain-x",
    groups: GPT_FLAGS.groups.filter((g) => g !== "log"),
  };
  assert.throws(() => validateForTraining(parseArgs([...base, "--log-params-norm"]), noLog), {
    message: '--log-params-norm: not a flag of pretrain-x (group "logging")',
  });
  const needsSplit: TaskFlags = { ...GPT_FLAGS, required: ["vocabFile"] };
  assert.throws(() => validateForTraining(parseArgs(base), needsSplit), {
    message: "--vocab-file is required for training",
  });
  // The typed result: required and derived fields are plain numbers (no `!`).
  const cfg = validateForTraining(parseArgs(base));
  const n: number = cfg.numLayers + cfg.globalBatchSize + cfg.ffnHiddenSize + cfg.kvChannels;
  assert.equal(n, 2 + 1 + 32 + 4);
});
