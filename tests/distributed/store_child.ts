// One rank of a store test: `deno run -A store_child.ts <port> <rank> <world> <timeout-minutes> <mode>`.
// Modes: ok (set/get/add/barrier/agreement), seed=N (agreement with another seed), die (SIGKILL itself
// after all joined), survive (its peers), barrier (one barrier only). Prints one JSON line of results, or the error's one line
// on stderr with exit code 1.

import { checkAgreement, TcpStore } from "../../src/distributed/store.ts";

const [port, rank, world, minutes, mode] = Deno.args;
const r = Number(rank);
try {
  const store = await TcpStore.connect({
    host: "127.0.0.1",
    port: Number(port),
    rank: r,
    worldSize: Number(world),
    timeoutMs: Number(minutes) * 60_000,
  });
  // A rank that dies mid-run: after everyone joined (the "joined" barrier), before the next barrier.
  if (mode === "die" || mode === "survive") await store.barrier("joined");
  if (mode === "die") Deno.kill(Deno.pid, "SIGKILL");
  if (mode === "survive") await store.barrier("b");
  if (mode === "barrier") {
    await store.barrier("b");
    await store.close();
    Deno.exit(0);
  }
  const seed = mode.startsWith("seed=") ? mode.slice(5) : "1234";
  await checkAgreement(store, { "--world-size": world, "--seed": seed, "--num-layers": "2" });
  await store.set(`k/${r}`, String(r * 10));
  const total = await store.add("ctr", r + 1);
  await store.barrier();
  const after = await store.add("ctr", 0);
  const vals: string[] = [];
  for (let i = 0; i < Number(world); i++) vals.push(await store.get(`k/${i}`));
  await store.wait(["k/0", `k/${Number(world) - 1}`]);
  await store.barrier();
  await store.barrier("again");
  console.log(JSON.stringify({ rank: r, totalSeen: total, after, vals }));
  await store.close();
} catch (e) {
  console.error((e as Error).message);
  Deno.exit(1);
}
