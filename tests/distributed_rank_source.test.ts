// Rank sources from environment fixtures: torchrun, SLURM (with bracketed node lists), MPICH, Open
// MPI, --local_rank, the precedence between them, and one clear line for each malformed value.

import assert from "node:assert/strict";
import {
  describeRank,
  detectRank,
  firstSlurmHost,
  localRankFlag,
  RankSourceError,
} from "../src/distributed/rank_source.ts";

const env = (o: Record<string, string>) => (k: string) => o[k];

Deno.test("torchrun variables", () => {
  const r = detectRank(env({
    RANK: "5",
    WORLD_SIZE: "8",
    LOCAL_RANK: "1",
    LOCAL_WORLD_SIZE: "4",
    MASTER_ADDR: "10.1.2.3",
    MASTER_PORT: "6000",
  }));
  assert.deepEqual(r, {
    source: "torchrun",
    rank: 5,
    worldSize: 8,
    localRank: 1,
    localWorldSize: 4,
    masterAddr: "10.1.2.3",
    masterPort: 6000,
  });
  assert.equal(describeRank(r), "distributed: rank source torchrun: world size 8, master 10.1.2.3:6000");
});

Deno.test("SLURM: first host of the node list is the master, default port", () => {
  const r = detectRank(env({
    SLURM_PROCID: "3",
    SLURM_NTASKS: "16",
    SLURM_LOCALID: "3",
    SLURM_NTASKS_PER_NODE: "4",
    SLURM_JOB_NODELIST: "node[01-04,07],gpu5",
  }));
  assert.deepEqual(r, {
    source: "slurm",
    rank: 3,
    worldSize: 16,
    localRank: 3,
    localWorldSize: 4,
    masterAddr: "node01",
    masterPort: 29500,
  });
  // MASTER_ADDR set by the sbatch script wins over the node list.
  const m = detectRank(
    env({ SLURM_PROCID: "0", SLURM_NTASKS: "2", SLURM_JOB_NODELIST: "a[1-2]", MASTER_ADDR: "h" }),
  );
  assert.equal(m.masterAddr, "h");
});

Deno.test("SLURM node lists", () => {
  assert.equal(firstSlurmHost("node[01-04,07]"), "node01");
  assert.equal(firstSlurmHost("node[07,01-04]"), "node07");
  assert.equal(firstSlurmHost("gpu5,node[1-2]"), "gpu5");
  assert.equal(firstSlurmHost("rack[2-3]-n[009-010]"), "rack2-n009");
  assert.equal(firstSlurmHost("single-host.example.org"), "single-host.example.org");
  assert.throws(() => firstSlurmHost("node[01-04"), {
    message: "rank source slurm: SLURM_JOB_NODELIST=\"node[01-04\": unbalanced '['",
  });
  assert.throws(() => firstSlurmHost("node[a-b]"), {
    message: 'rank source slurm: SLURM_JOB_NODELIST="node[a-b]": bracket range [a-b] is not like [01-04,07]',
  });
  assert.throws(() => firstSlurmHost("n[4-2]"), {
    message: 'rank source slurm: SLURM_JOB_NODELIST="n[4-2]": range 4-2 runs backwards',
  });
  assert.throws(() => firstSlurmHost(""), RankSourceError);
});

Deno.test("MPICH and Open MPI variables", () => {
  const a = detectRank(env({ PMI_RANK: "2", PMI_SIZE: "4", MPI_LOCALRANKID: "2", MPI_LOCALNRANKS: "4" }));
  assert.deepEqual(
    [a.source, a.rank, a.worldSize, a.localRank, a.localWorldSize, a.masterAddr, a.masterPort],
    [
      "mpich",
      2,
      4,
      2,
      4,
      "127.0.0.1",
      29500,
    ],
  );
  const o = detectRank(env({
    OMPI_COMM_WORLD_RANK: "1",
    OMPI_COMM_WORLD_SIZE: "2",
    OMPI_COMM_WORLD_LOCAL_RANK: "1",
    OMPI_COMM_WORLD_LOCAL_SIZE: "2",
  }));
  assert.deepEqual([o.source, o.rank, o.worldSize, o.localRank, o.localWorldSize], ["openmpi", 1, 2, 1, 2]);
});

Deno.test("precedence: torchrun > Open MPI > MPICH > SLURM > --local_rank > single", () => {
  const all = {
    RANK: "1",
    WORLD_SIZE: "2",
    MASTER_ADDR: "m",
    OMPI_COMM_WORLD_RANK: "0",
    OMPI_COMM_WORLD_SIZE: "1",
    PMI_RANK: "0",
    PMI_SIZE: "1",
    SLURM_PROCID: "0",
    SLURM_NTASKS: "1",
    SLURM_JOB_NODELIST: "x",
  };
  const order = ["torchrun", "openmpi", "mpich", "slurm"];
  const drop = [["RANK", "WORLD_SIZE"], ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"], [
    "PMI_RANK",
    "PMI_SIZE",
  ], [
    "SLURM_PROCID",
    "SLURM_NTASKS",
  ]];
  const e: Record<string, string> = { ...all };
  for (let i = 0; i < order.length; i++) {
    assert.equal(detectRank(env(e), ["--local_rank=3"]).source, order[i]);
    for (const k of drop[i]) delete e[k];
  }
  const lr = detectRank(env(e), ["--foo", "--local_rank", "3"]);
  assert.deepEqual([lr.source, lr.rank, lr.worldSize, lr.localRank], ["local_rank", 0, 1, 3]);
  const one = detectRank(env({}), []);
  assert.deepEqual([one.source, one.rank, one.worldSize], ["single", 0, 1]);
  // torch.distributed.launch: --local_rank plus RANK/WORLD_SIZE without LOCAL_RANK.
  const tl = detectRank(env({ RANK: "1", WORLD_SIZE: "2", MASTER_ADDR: "m" }), ["--local_rank=1"]);
  assert.equal(tl.localRank, 1);
});

Deno.test("malformed values: one line naming the variable", () => {
  const cases: [Record<string, string>, string[], string][] = [
    [{ RANK: "x", WORLD_SIZE: "2" }, [], 'rank source torchrun: RANK="x" is not a non-negative integer'],
    [
      { RANK: "2", WORLD_SIZE: "2", MASTER_ADDR: "m" },
      [],
      "rank source torchrun: RANK=2 is not below WORLD_SIZE=2",
    ],
    [{ RANK: "0" }, [], "rank source torchrun: WORLD_SIZE is not set (RANK is)"],
    [
      { RANK: "0", WORLD_SIZE: "2" },
      [],
      "rank source torchrun: MASTER_ADDR is not set (needed with WORLD_SIZE > 1)",
    ],
    [
      { RANK: "0", WORLD_SIZE: "2", MASTER_ADDR: "m", MASTER_PORT: "70000" },
      [],
      "rank source torchrun: MASTER_PORT=70000 is not a TCP port (1..65535)",
    ],
    [{ RANK: "0", WORLD_SIZE: "0" }, [], "rank source torchrun: WORLD_SIZE=0 must be at least 1"],
    [{ PMI_RANK: "-1", PMI_SIZE: "4" }, [], 'rank source mpich: PMI_RANK="-1" is not a non-negative integer'],
    [{ PMI_RANK: "1" }, [], "rank source mpich: PMI_SIZE is not set (PMI_RANK is set)"],
    [
      { OMPI_COMM_WORLD_RANK: "4", OMPI_COMM_WORLD_SIZE: "4" },
      [],
      "rank source openmpi: OMPI_COMM_WORLD_RANK=4 is not below OMPI_COMM_WORLD_SIZE=4",
    ],
    [
      { SLURM_PROCID: "0", SLURM_NTASKS: "1.5" },
      [],
      'rank source slurm: SLURM_NTASKS="1.5" is not a non-negative integer',
    ],
    [
      { SLURM_PROCID: "0", SLURM_NTASKS: "2" },
      [],
      "rank source slurm: SLURM_JOB_NODELIST is not set (names the master)",
    ],
    [{}, ["--local_rank"], "rank source local_rank: --local_rank expects an integer"],
    [{}, ["--local_rank=a"], 'rank source local_rank: --local_rank="a" is not a non-negative integer'],
  ];
  for (const [e, argv, msg] of cases) {
    assert.throws(() => detectRank(env(e), argv), (err: Error) => {
      assert.ok(err instanceof RankSourceError);
      assert.equal(err.message, msg);
      assert.ok(!err.message.includes("\n"));
      return true;
    });
  }
  assert.equal(localRankFlag(["--local-rank=2"]), 2);
});
