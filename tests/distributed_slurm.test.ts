// scripts/pretrain_gpt_distributed.sbatch without SLURM: bash runs it as sbatch would (SLURM_JOB_* set),
// a fake `srun` on PATH records its arguments and starts the task command once per task with SLURM's
// per-task variables (2 nodes x 2 GPUs), and a fake `deno` records what each task would run. Checks the
// exact srun line, every task's command and its GPU, and the one-line refusals of bad settings (no
// srun started). Skips with one line without bash.
import assert from "node:assert/strict";

const SCRIPT = new URL("../scripts/pretrain_gpt_distributed.sbatch", import.meta.url).pathname;

function hasBash(): boolean {
  try {
    return new Deno.Command("bash", { args: ["-c", "true"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

// srun: "$@" recorded; options up to the command; then 4 tasks (2 per node), each with the node's two
// GPUs visible, as a cluster without per-task GPU binding gives them.
const FAKE_SRUN = `#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
while [ "$#" -gt 0 ] && [ "\${1#-}" != "$1" ]; do shift; done
for t in 0 1 2 3; do
  SLURM_PROCID=$t SLURM_LOCALID=$((t % 2)) SLURM_NODEID=$((t / 2)) SLURM_NTASKS=4 \\
    CUDA_VISIBLE_DEVICES=0,1 "$@" || exit $?
done
`;
const FAKE_DENO = `#!/usr/bin/env bash
echo "task $SLURM_PROCID local $SLURM_LOCALID gpu $CUDA_VISIBLE_DEVICES port $MASTER_PORT cwd $(pwd) :: $*" >> "$FAKE_LOG/deno.log"
`;

async function setup(): Promise<{ dir: string; bin: string; log: string; vocab: string; merges: string }> {
  const dir = await Deno.makeTempDir({ prefix: "md-sbatch-" });
  const bin = `${dir}/bin`, log = `${dir}/log`;
  await Deno.mkdir(bin);
  await Deno.mkdir(log);
  await Deno.writeTextFile(`${bin}/srun`, FAKE_SRUN);
  await Deno.writeTextFile(`${bin}/deno`, FAKE_DENO);
  await Deno.chmod(`${bin}/srun`, 0o755);
  await Deno.chmod(`${bin}/deno`, 0o755);
  await Deno.writeTextFile(`${dir}/vocab.json`, "{}");
  await Deno.writeTextFile(`${dir}/merges.txt`, "#version: 0.2\n");
  return { dir, bin, log, vocab: `${dir}/vocab.json`, merges: `${dir}/merges.txt` };
}

async function sbatch(
  s: { dir: string; bin: string; log: string },
  env: Record<string, string>,
  args: string[] = [],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const o = await new Deno.Command("bash", {
    args: [SCRIPT, ...args],
    cwd: s.dir,
    clearEnv: true,
    env: {
      PATH: `${s.bin}:/usr/bin:/bin`,
      FAKE_LOG: s.log,
      SLURM_JOB_ID: "4242",
      SLURM_JOB_NUM_NODES: "2",
      SLURM_JOB_NODELIST: "gpu[07-08]",
      SLURM_SUBMIT_DIR: s.dir,
      ...env,
    },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

async function exists(p: string): Promise<boolean> {
  try {
    await Deno.stat(p);
    return true;
  } catch {
    return false;
  }
}

if (!hasBash()) {
  console.log("sbatch script tests: skipped — no bash");
} else {
  Deno.test("sbatch: bash -n accepts the script; the #SBATCH header comes before any command", async () => {
    const o = await new Deno.Command("bash", { args: ["-n", SCRIPT], stderr: "piped" }).output();
    assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
    const lines = (await Deno.readTextFile(SCRIPT)).split("\n");
    const firstCommand = lines.findIndex((l, i) => i > 0 && l.trim() !== "" && !l.startsWith("#"));
    const sbatchLines = lines.map((l, i) => [l, i] as const).filter(([l]) => l.startsWith("#SBATCH"));
    assert.ok(sbatchLines.length >= 5);
    for (const [l, i] of sbatchLines) assert.ok(i < firstCommand, `${l} is read by sbatch`);
    assert.ok(lines.includes("#SBATCH --ntasks-per-node=8") && lines.includes("#SBATCH --gpus-per-node=8"));
  });

  Deno.test("sbatch: srun starts one task per GPU, each running pretrain:gpt on its own GPU", async () => {
    const s = await setup();
    try {
      const o = await sbatch(s, {
        GPUS_PER_NODE: "2",
        TP: "2",
        PP: "1",
        NUM_LAYERS: "4",
        TRAIN_ITERS: "100",
        DATA_PATH: "0.3 /data/a_text_document 0.7 /data/b_text_document",
        VOCAB_FILE: s.vocab,
        MERGE_FILE: s.merges,
      }, ["--seed", "7"]);
      assert.equal(o.code, 0, o.stderr);
      assert.equal(
        o.stdout,
        "pretrain_gpt_distributed: 2 node(s) x 2 GPU(s), TP 2, PP 1, DP 2, master port 29500\n",
      );
      const srun = (await Deno.readTextFile(`${s.log}/srun.args`)).split("\n");
      assert.deepEqual(srun.slice(0, 6), [
        "-l",
        "--kill-on-bad-exit=1",
        "--nodes=2",
        "--ntasks-per-node=2",
        `--chdir=${s.dir}`,
        "bash",
      ]);
      const ckpt = `${s.dir}/checkpoints/gpt_distributed`;
      const flags = [
        "--tensor-model-parallel-size 2 --pipeline-model-parallel-size 1 --num-layers 4 --hidden-size 2048",
        "--num-attention-heads 16 --seq-length 2048 --max-position-embeddings 2048 --micro-batch-size 4",
        "--global-batch-size 512 --train-iters 100 --lr-decay-iters 100 --lr 2.0e-4 --min-lr 2.0e-5",
        "--lr-decay-style cosine --lr-warmup-fraction 0.01 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95",
        "--clip-grad 1.0 --init-method-std 0.02 --data-path 0.3 /data/a_text_document 0.7 /data/b_text_document",
        `--tokenizer-type GPT2BPETokenizer --vocab-file ${s.vocab} --merge-file ${s.merges} --split 949,50,1 --bf16 --checkpoint-activations`,
        "--log-interval 10 --eval-interval 1000 --eval-iters 10 --save-interval 1000",
        `--save ${ckpt} --tensorboard-dir ${ckpt}/tensorboard --device cuda --distributed-backend nccl`,
        "--distributed-timeout-minutes 10 --no-progress --seed 7",
      ].join(" ");
      const got = (await Deno.readTextFile(`${s.log}/deno.log`)).trimEnd().split("\n");
      assert.deepEqual(
        got,
        [0, 1, 2, 3].map((t) =>
          `task ${t} local ${t % 2} gpu ${t % 2} port 29500 cwd ${s.dir} :: task pretrain:gpt ${flags}`
        ),
      );
      // With a checkpoint tracker the run resumes (--load); a GPU bound by SLURM is kept.
      await Deno.mkdir(ckpt, { recursive: true });
      await Deno.writeTextFile(`${ckpt}/latest_checkpointed_iteration.txt`, "1000");
      await Deno.remove(`${s.log}/deno.log`);
      await Deno.writeTextFile(
        `${s.bin}/srun`,
        FAKE_SRUN.replace("CUDA_VISIBLE_DEVICES=0,1", "CUDA_VISIBLE_DEVICES=$((3 - t))"),
      );
      const o2 = await sbatch(s, {
        GPUS_PER_NODE: "2",
        TP: "1",
        PP: "2",
        MASTER_PORT: "31000",
        DATA_PATH: "/data/a_text_document",
        VOCAB_FILE: s.vocab,
        MERGE_FILE: s.merges,
      });
      assert.equal(o2.code, 0, o2.stderr);
      const got2 = (await Deno.readTextFile(`${s.log}/deno.log`)).trimEnd().split("\n");
      assert.deepEqual(
        got2.map((l) => l.split(" :: ")[0]),
        [0, 1, 2, 3].map((t) => `task ${t} local ${t % 2} gpu ${3 - t} port 31000 cwd ${s.dir}`),
      );
      for (const l of got2) assert.ok(l.endsWith(`--no-progress --load ${ckpt}`), l);
    } finally {
      await Deno.remove(s.dir, { recursive: true });
    }
  });

  Deno.test("sbatch: bad settings are one line each and start nothing", async () => {
    const s = await setup();
    try {
      const base = {
        GPUS_PER_NODE: "2",
        DATA_PATH: "/data/a_text_document",
        VOCAB_FILE: s.vocab,
        MERGE_FILE: s.merges,
      };
      const cases: [Record<string, string>, string][] = [
        [
          { TP: "3", PP: "1" },
          "pretrain_gpt_distributed: TP x PP = 3 x 1 does not divide the 4 GPUs (2 nodes x 2)",
        ],
        [
          { DATA_PATH: "" },
          "pretrain_gpt_distributed: DATA_PATH is not set (a preprocessed dataset prefix such as /data/gpt2_text_document, or weight/prefix pairs)",
        ],
        [
          { VOCAB_FILE: "/nonexistent/vocab.json" },
          "pretrain_gpt_distributed: VOCAB_FILE=/nonexistent/vocab.json is not a file (the GPT-2 vocab.json)",
        ],
      ];
      for (const [env, line] of cases) {
        const o = await sbatch(s, { ...base, ...env });
        assert.equal(o.code, 1);
        assert.equal(o.stderr, line + "\n");
        assert.equal(await exists(`${s.log}/srun.args`), false, "srun not started");
      }
    } finally {
      await Deno.remove(s.dir, { recursive: true });
    }
  });
}
