// The NCCL communicator through Deno FFI without a GPU: a mock libnccl (tests/distributed/nccl_mock.c)
// linked in front of the CUDA emulator (the real kernels compiled for the CPU), so device memory is
// host memory, collectives are copies, and NCCL work runs in stream order only when the peers' work
// is at the heads of their streams (a missing peer never completes). Checked: library discovery and
// the missing-library line, unique ids through the TcpStore, one communicator per group, a world of 1
// (collectives are the identity, batched send/recv inside one group), an asynchronous error and a
// timeout each abort every communicator and give one line, and 4 ranks in one process (each with
// its own backend and stream) whose every collective and p2p result equals LocalWorld's bytes over 5
// layouts. Skips with one line without a C/C++ compiler.

import assert from "node:assert/strict";
import { buildEmulator } from "./gpu/emulator/build.ts";
import { createCpuBackend } from "../src/backend/cpu/cpu_backend.ts";
import { CudaBackend } from "../src/backend/cuda/cuda_backend.ts";
import type { DiscoverEnv } from "../ffi/discover.ts";
import { Nccl, ncclVersionString } from "../ffi/nccl.ts";
import { createNcclCommunicator, type NcclCommunicator } from "../src/distributed/nccl_comm.ts";
import { TcpStore } from "../src/distributed/store.ts";
import { batchIsendIrecv } from "../src/distributed/p2p.ts";
import { makeParallelState } from "../src/parallel/types.ts";
import { LocalWorld } from "../src/parallel/local_comm.ts";
import type { DType } from "../src/tensor/dtype.ts";
import type { Tensor } from "../src/tensor/tensor.ts";
import { commScript, LAYOUTS, values } from "./distributed/comm_script.ts";
import { ncclInfo } from "../scripts/nccl_info.ts";

const opts = { sanitizeResources: false, sanitizeOps: false };

async function buildMock(): Promise<{ lib: string; emu: string } | { skip: string }> {
  const emu = await buildEmulator();
  if ("skip" in emu) return emu;
  const dir = emu.path.slice(0, emu.path.lastIndexOf("/"));
  const src = new URL("./distributed/nccl_mock.c", import.meta.url).pathname;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("cc", {
      args: [
        "-shared",
        "-fPIC",
        "-O1",
        "-o",
        `${dir}/libnccl_mock.so`,
        src,
        `-L${dir}`,
        "-Wl,--no-as-needed", // the mock calls nothing of the emulator, but must pull it in
        "-lcudaemu",
        `-Wl,-rpath,${dir}`,
      ],
      stderr: "piped",
    }).output();
  } catch (e) {
    return { skip: `no C compiler (${(e as Error).message.split("\n")[0]})` };
  }
  if (!out.success) {
    throw new Error(`mock NCCL build failed:\n${new TextDecoder().decode(out.stderr).slice(0, 3000)}`);
  }
  return { lib: `${dir}/libnccl_mock.so`, emu: emu.path };
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const p = (l.addr as Deno.NetAddr).port;
  l.close();
  return p;
}

function bytes(be: { toHost(t: Tensor): ArrayBufferView }, t: Tensor): Uint8Array {
  const h = be.toHost(t);
  return new Uint8Array(h.buffer, h.byteOffset, h.byteLength).slice();
}

async function rejectsWith(p: Promise<unknown>, line: string): Promise<void> {
  let msg = "(resolved)";
  try {
    await p;
  } catch (e) {
    msg = (e as Error).message;
  }
  assert.equal(msg, line);
}

const built = await buildMock();

Deno.test("nccl: library discovery names MEGATRON_DENO_NCCL in one line; version strings", async () => {
  const env: DiscoverEnv = {
    get: (n) => ({ MEGATRON_DENO_NCCL: "/nonexistent/libnccl.so.2", LD_LIBRARY_PATH: "/nonexistent-dir" })[n],
    sitePackages: [],
    pythonSitePackages: () => [],
  };
  let msg = "";
  try {
    Nccl.open(env);
  } catch (e) {
    msg = (e as Error).message;
  }
  assert.ok(!msg.includes("\n"));
  assert.match(
    msg,
    /^nccl: library not found or not loadable \(set MEGATRON_DENO_NCCL\); tried: \/nonexistent\/libnccl\.so\.2, \/nonexistent-dir\/libnccl\.so, /,
  );
  // The factory refuses a CPU backend before it looks for the library.
  await rejectsWith(
    createNcclCommunicator({
      backend: createCpuBackend({ log: () => {} }),
      ps: makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0),
      store: null,
      env,
    }),
    "nccl: --distributed-backend nccl needs --device cuda (the backend is cpu)",
  );
  assert.equal(ncclVersionString(22105), "2.21.5");
  assert.equal(ncclVersionString(2708), "2.7.8");
  // scripts/nccl_info.ts (gpu_check's probe) gives the same line.
  assert.deepEqual(ncclInfo(() => Nccl.open(env)), { ok: false, line: msg });
});

if ("skip" in built) {
  console.log(`nccl mock tests: skipped — ${built.skip}`);
} else {
  const vars: Record<string, string> = {
    MEGATRON_DENO_CUDART: built.lib,
    MEGATRON_DENO_CUDA: built.emu,
    MEGATRON_DENO_CUBLAS: built.emu,
    MEGATRON_DENO_NCCL: built.lib,
  };
  const env: DiscoverEnv = { get: (n) => vars[n], sitePackages: [], pythonSitePackages: () => [] };
  const hooks = Deno.dlopen(built.lib, {
    mock_nccl_counts: { parameters: ["buffer"], result: "void" },
    mock_nccl_set_async_error: { parameters: ["i32"], result: "void" },
    mock_nccl_stall: { parameters: ["i32"], result: "void" },
  }).symbols;
  const counts = () => {
    const c = new Int32Array(9);
    hooks.mock_nccl_counts(c);
    const [init, destroy, abort, groupStart, groupEnd, p2pInGroup, p2pAlone, collectives, uniqueIds] = c;
    return { init, destroy, abort, groupStart, groupEnd, p2pInGroup, p2pAlone, collectives, uniqueIds };
  };
  const be = await CudaBackend.create({ env });
  const one = makeParallelState({ tp: 1, pp: 1, dp: 1 }, 0);

  Deno.test(
    { name: "nccl mock: the library loads; ncclCommSplit is optional (absent here)", ...opts },
    () => {
      const lib = Nccl.open(env);
      assert.equal(lib.path, built.lib);
      assert.equal(ncclVersionString(lib.version()), "2.21.5");
      assert.equal(lib.hasSplit, false);
      assert.deepEqual(ncclInfo(() => Nccl.open(env)), {
        ok: true,
        line: `nccl: 2.21.5 (${built.lib}), without ncclCommSplit`,
      });
      assert.throws(
        () => lib.commSplit(null, 0, 0),
        (e: Error) => e.message === `ncclCommSplit: not in ${built.lib} (NCCL 2.21.5; needs 2.18)`,
      );
    },
  );

  Deno.test(
    { name: "nccl mock: world of 1 — ids through the store, 9 communicators, identity", ...opts },
    async () => {
      const port = freePort();
      const store = await TcpStore.connect({
        host: "127.0.0.1",
        port,
        rank: 0,
        worldSize: 1,
        timeoutMs: 30_000,
      });
      try {
        const c0 = counts();
        const comm = await createNcclCommunicator({ backend: be, ps: one, store, env, timeoutMs: 30_000 });
        const c1 = counts();
        assert.equal(c1.init - c0.init, 9, "6 groups and 3 p2p channels");
        assert.equal(c1.uniqueIds - c0.uniqueIds, 9);
        for (
          const g of ["tensor", "pipeline", "data", "model", "embedding", "world", "p2p0", "p2p1", "p2p2"]
        ) {
          assert.match(await store.get(`nccl/${g}/0/0/id`), /^4c43434e4b434f4d[0-9a-f]{240}$/, g);
        }
        assert.match(
          comm.description,
          /^nccl 2\.21\.5 \(.*libnccl_mock\.so\), world size 1, ordered reductions$/,
        );
        // A second communicator in the same job gets fresh ids (generation 1).
        const nat = await createNcclCommunicator({ backend: be, ps: one, store, env, reductions: "nccl" });
        assert.match(await store.get("nccl/world/0/1/id"), /^4c43434e4b434f4d/);
        assert.notEqual(await store.get("nccl/world/0/1/id"), await store.get("nccl/world/0/0/id"));
        for (const c of [comm, nat]) {
          for (
            const [dt, n] of [["f32", 1000], ["f32", 40_000], ["bf16", 33], ["bf16", 50_000], ["f64", 9000], [
              "i32",
              9,
            ]] as [
              DType,
              number,
            ][]
          ) {
            const v = values(0, n, n).map((x) => (dt === "i32" ? Math.round(x * 1000) : x));
            const t = be.fromHost(dt, [n], v);
            const want = bytes(be, t);
            const before = counts().collectives;
            await c.allReduce(t, "sum", "data");
            assert.ok(counts().collectives > before, "went through NCCL");
            assert.deepEqual(bytes(be, t), want, `${c.reductions} allReduce ${dt} ${n}`);
            await c.allReduce(t, "max", "world");
            assert.deepEqual(bytes(be, t), want, `${c.reductions} max ${dt} ${n}`);
            await c.broadcast(t, 0, "tensor");
            assert.deepEqual(bytes(be, t), want);
            const g = be.zeros(dt, [n]);
            await c.allGather(t, g, "model");
            assert.deepEqual(bytes(be, g), want);
            const r = be.zeros(dt, [n]);
            await c.reduceScatter(t, r, "pipeline");
            assert.deepEqual(bytes(be, r), want);
          }
          await c.barrier("embedding");
        }
        const c2 = counts();
        await comm.close();
        await nat.close();
        assert.equal(counts().destroy - c2.destroy, 18);
        await rejectsWith(comm.barrier("world"), "nccl: barrier after close()");
      } finally {
        await store.close();
      }
    },
  );

  Deno.test({ name: "nccl mock: send/recv are batched inside one ncclGroupStart/End", ...opts }, async () => {
    const comm = await createNcclCommunicator({ backend: be, ps: one, store: null, env });
    const a = be.fromHost("f32", [2, 3], [1, 2, 3, 4, 5, 6]);
    const b = be.fromHost("bf16", [4], [0.5, -1, 2, 3]);
    const ra = be.zeros("f32", [2, 3]), rb = be.zeros("bf16", [4]);
    const c0 = counts();
    await batchIsendIrecv(comm, [
      { op: "send", tensor: a, peer: 0, tag: "fwd" },
      { op: "send", tensor: b, peer: 0, tag: "bwd" },
      { op: "recv", tensor: ra, peer: 0, tag: "fwd" },
      { op: "recv", tensor: rb, peer: 0, tag: "bwd" },
    ]);
    const c1 = counts();
    assert.equal(c1.groupStart - c0.groupStart, 1);
    assert.equal(c1.groupEnd - c0.groupEnd, 1);
    assert.equal(c1.p2pInGroup - c0.p2pInGroup, 8, "a header and a payload per message");
    assert.equal(c1.p2pAlone - c0.p2pAlone, 0);
    assert.deepEqual(bytes(be, ra), bytes(be, a));
    assert.deepEqual(bytes(be, rb), bytes(be, b));
    // A plain send is buffered and goes out in the group of the next receive.
    await comm.send(a, 0, "x");
    be.fill(a, 0); // the message was staged: later writes do not change it
    assert.equal(counts().p2pInGroup, c1.p2pInGroup, "nothing issued yet");
    const rx = be.zeros("f32", [2, 3]);
    await comm.recv(rx, 0, "x");
    assert.deepEqual(Array.from(be.toF64(rx)), [1, 2, 3, 4, 5, 6]);
    assert.equal(counts().groupStart - c1.groupStart, 1);
    assert.equal(counts().p2pInGroup - c1.p2pInGroup, 4);
    await comm.send(b, 0, "y");
    await rejectsWith(comm.recv(rb, 0, "z"), "recv on rank 0 from rank 0: expected message z, got y");
    await comm.send(b, 0);
    await rejectsWith(
      comm.recv(be.zeros("bf16", [2, 2]), 0),
      "recv on rank 0 from rank 0: sent [4], receiving into [2, 2]",
    );
    await comm.close();
  });

  Deno.test({
    name: "nccl mock: close() sends what is buffered; a send nobody receives is the timeout line",
    ...opts,
  }, async () => {
    const comm = await createNcclCommunicator({ backend: be, ps: one, store: null, env, timeoutMs: 200 });
    const c0 = counts();
    await comm.send(be.fromHost("f32", [2], [1, 2]), 0, "orphan");
    await rejectsWith(
      comm.close(),
      "nccl: flushing sends of rank 0 to rank(s) 0 timed out after 0.003 min: a peer failed or did not arrive",
    );
    assert.equal(counts().p2pInGroup - c0.p2pInGroup, 2, "header and payload went out in one group");
    assert.equal(counts().abort - c0.abort, 9);
  });

  Deno.test(
    { name: "nccl mock: an asynchronous error aborts every communicator, one line", ...opts },
    async () => {
      const comm = await createNcclCommunicator({ backend: be, ps: one, store: null, env });
      const c0 = counts();
      hooks.mock_nccl_stall(1);
      hooks.mock_nccl_set_async_error(6);
      try {
        const t = be.fromHost("f32", [4], [1, 2, 3, 4]);
        const line =
          "nccl: allReduce:sum on the tensor group (ranks 0) at rank 0 failed: remote process exited or there was a network error (6)";
        await rejectsWith(comm.allReduce(t, "sum", "tensor"), line);
        assert.equal(counts().abort - c0.abort, 9, "every communicator aborted");
        await rejectsWith(comm.broadcast(t, 0, "data"), line);
        await comm.close();
        assert.equal(counts().destroy, c0.destroy, "aborted communicators are not destroyed again");
      } finally {
        hooks.mock_nccl_stall(0);
        hooks.mock_nccl_set_async_error(0);
      }
    },
  );

  Deno.test(
    { name: "nccl mock: a peer that never arrives is a timeout line, not a hang", ...opts },
    async () => {
      // Two ranks in one process; rank 1 never calls the collective.
      const port = freePort();
      const bes = [be, await CudaBackend.create({ env })];
      const ps = [0, 1].map((r) => makeParallelState({ tp: 1, pp: 1, dp: 2 }, r));
      const stores = await Promise.all(
        [0, 1].map((r) =>
          TcpStore.connect({ host: "127.0.0.1", port, rank: r, worldSize: 2, timeoutMs: 30_000 })
        ),
      );
      try {
        const comms = await Promise.all(
          [0, 1].map((r) =>
            createNcclCommunicator({ backend: bes[r], ps: ps[r], store: stores[r], env, timeoutMs: 300 })
          ),
        );
        const c0 = counts();
        const t0 = performance.now();
        await rejectsWith(
          comms[0].allReduce(bes[0].fromHost("f32", [8], [1, 2, 3, 4, 5, 6, 7, 8]), "sum", "data"),
          "nccl: allReduce:sum on the data group (ranks 0,1) at rank 0 timed out after 0.005 min: a peer failed or did not arrive",
        );
        assert.ok(performance.now() - t0 < 10_000);
        assert.equal(counts().abort - c0.abort, 9, "all nine of rank 0's communicators");
        await comms[1].close();
      } finally {
        await Promise.all(stores.map((s) => s.close()));
        bes[1].dispose();
      }
    },
  );

  Deno.test(
    { name: "nccl mock: p2p channels — both directions in flight, posted in another order", ...opts },
    async () => {
      // Two pipeline stages that are each other's previous and next (2 stages, interleaved): rank 0 posts
      // its activation before its gradient, rank 1 expects them the other way round. One NCCL communicator
      // per channel keeps the streams apart, as MPI tags do; on one communicator they would cross.
      const port = freePort();
      const bes = [be, await CudaBackend.create({ env })];
      const ps = [0, 1].map((r) => makeParallelState({ tp: 1, pp: 2, dp: 1 }, r));
      const stores = await Promise.all(
        [0, 1].map((r) =>
          TcpStore.connect({ host: "127.0.0.1", port, rank: r, worldSize: 2, timeoutMs: 30_000 })
        ),
      );
      try {
        const comms = await Promise.all(
          [0, 1].map((r) =>
            createNcclCommunicator({ backend: bes[r], ps: ps[r], store: stores[r], env, timeoutMs: 10_000 })
          ),
        );
        const act = bes[0].fromHost("f32", [3], [1, 2, 3]), grad = bes[0].fromHost("f32", [2], [-4, -5]);
        const gotAct = bes[1].zeros("f32", [3]), gotGrad = bes[1].zeros("f32", [2]);
        const back = bes[1].fromHost("bf16", [2], [6, 7]), gotBack = bes[0].zeros("bf16", [2]);
        await Promise.all([
          comms[0].batchIsendIrecv([
            { op: "send", tensor: act, peer: 1, tag: "fwd:c1:m0" },
            { op: "send", tensor: grad, peer: 1, tag: "bwd:c0:m0" },
            { op: "recv", tensor: gotBack, peer: 1, tag: "fwd:c0:m1" },
          ]),
          comms[1].batchIsendIrecv([
            { op: "recv", tensor: gotGrad, peer: 0, tag: "bwd:c0:m0" },
            { op: "send", tensor: back, peer: 0, tag: "fwd:c0:m1" },
            { op: "recv", tensor: gotAct, peer: 0, tag: "fwd:c1:m0" },
          ]),
        ]);
        assert.deepEqual(Array.from(bes[1].toF64(gotAct)), [1, 2, 3]);
        assert.deepEqual(Array.from(bes[1].toF64(gotGrad)), [-4, -5]);
        assert.deepEqual(Array.from(bes[0].toF64(gotBack)), [6, 7]);
        await Promise.all(comms.map((c) => c.close()));
      } finally {
        await Promise.all(stores.map((s) => s.close()));
        bes[1].dispose();
      }
    },
  );

  Deno.test({
    name: "nccl mock: 4 ranks in one process — every collective and p2p result equals LocalWorld's bytes",
    ...opts,
  }, async () => {
    const cpu = createCpuBackend({ log: () => {} });
    const bes = [be, ...(await Promise.all([1, 2, 3].map(() => CudaBackend.create({ env }))))];
    const port = freePort();
    const stores = await Promise.all(
      [0, 1, 2, 3].map((r) =>
        TcpStore.connect({ host: "127.0.0.1", port, rank: r, worldSize: 4, timeoutMs: 60_000 })
      ),
    );
    try {
      for (const sizes of LAYOUTS) {
        const key = `${sizes.tp},${sizes.pp},${sizes.dp}`;
        const local = new LocalWorld(cpu, sizes, { timeoutMs: 30_000 });
        const want = await local.run((r) => commScript(local.communicator(r), local.states[r], cpu));
        const ps = [0, 1, 2, 3].map((r) => makeParallelState(sizes, r));
        const comms: NcclCommunicator[] = await Promise.all(
          [0, 1, 2, 3].map((r) =>
            createNcclCommunicator({ backend: bes[r], ps: ps[r], store: stores[r], env, timeoutMs: 60_000 })
          ),
        );
        const got = await Promise.all(
          [0, 1, 2, 3].map((r) => commScript(comms[r], ps[r], bes[r], { sendsFirst: false })),
        );
        for (let r = 0; r < 4; r++) {
          assert.deepEqual(Object.keys(got[r]).sort(), Object.keys(want[r]).sort());
          for (const k of Object.keys(want[r])) {
            assert.equal(got[r][k], want[r][k], `layout ${key} rank ${r} ${k}`);
          }
        }
        await Promise.all(comms.map((c) => c.close()));
      }
      // NCCL's own sums (the mock adds in reverse rank order) are close to, not equal to, the ordered ones.
      const sizes = { tp: 1, pp: 1, dp: 4 };
      const ps = [0, 1, 2, 3].map((r) => makeParallelState(sizes, r));
      const nat = await Promise.all(
        [0, 1, 2, 3].map((r) =>
          createNcclCommunicator({ backend: bes[r], ps: ps[r], store: stores[r], env, reductions: "nccl" })
        ),
      );
      const n = 5000;
      const ts = [0, 1, 2, 3].map((r) => bes[r].fromHost("f32", [n], values(r, 7, n)));
      await Promise.all(nat.map((c, r) => c.allReduce(ts[r], "sum", "data")));
      const local = new LocalWorld(cpu, sizes);
      const lts = [0, 1, 2, 3].map((r) => cpu.fromHost("f32", [n], values(r, 7, n)));
      await local.run((r) => local.communicator(r).allReduce(lts[r], "sum", "data"));
      const a = bes[0].toF64(ts[0]), b = cpu.toF64(lts[0]);
      const mag = new Float64Array(n);
      for (let r = 0; r < 4; r++) values(r, 7, n).forEach((x, i) => (mag[i] += Math.abs(x)));
      let differ = 0;
      for (let i = 0; i < n; i++) {
        if (a[i] !== b[i]) differ++;
        // Rounding bound of a 4-term f32 sum: a few ulps of the sum of magnitudes.
        assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 * mag[i], `element ${i}`);
      }
      assert.ok(differ > 0, "another summation order changes some low bits");
      await Promise.all(nat.map((c) => c.close()));
    } finally {
      await Promise.all(stores.map((s) => s.close()));
      for (const b of bes.slice(1)) b.dispose();
    }
  });
}
