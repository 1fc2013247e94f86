// A rank started by the launcher (or srun/mpiexec): joins the world with --seed as an agreed flag,
// does a barrier and exits. `join_child.ts <seed> [rank-to-use-seed-7]`. Errors: one line, exit 1.

import { joinWorld } from "../../src/distributed/mod.ts";

const [seed, odd] = Deno.args;
try {
  const rank = Deno.env.get("RANK");
  const { info, store } = await joinWorld({
    timeoutMinutes: 0.25,
    agree: { "--seed": rank === odd ? "7" : seed },
  });
  await store?.barrier("done");
  console.log(`rank ${info.rank} of ${info.worldSize} ok`);
  await store?.close();
} catch (e) {
  console.error((e as Error).message);
  Deno.exit(1);
}
