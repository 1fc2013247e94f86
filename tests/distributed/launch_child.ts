// A tiny child for the launcher tests: `launch_child.ts <mode>`. Modes: env (prints its torchrun
// variables on stdout and one line on stderr), fail (rank 1 exits 3 after a moment; the others wait),
// signal (prints "ready" and waits; on SIGTERM/SIGINT prints the signal and exits 7), crash (rank 2 kills
// itself with SIGKILL; the others wait).

const [mode] = Deno.args;
const rank = Deno.env.get("RANK");
const keys = [
  "RANK",
  "LOCAL_RANK",
  "WORLD_SIZE",
  "LOCAL_WORLD_SIZE",
  "MASTER_ADDR",
  "MASTER_PORT",
  "GROUP_RANK",
];
const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

if (mode === "env") {
  console.log(keys.map((k) => `${k}=${Deno.env.get(k)}`).join(" "));
  console.error(`stderr of ${rank}`);
} else if (mode === "fail") {
  if (rank === "1") {
    await wait(300);
    console.error("rank 1 fails");
    Deno.exit(3);
  }
  await wait(60_000);
} else if (mode === "signal") {
  for (const s of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(s, () => {
      console.log(`got ${s}`);
      Deno.exit(7);
    });
  }
  console.log("ready");
  await wait(60_000);
} else if (mode === "crash") {
  if (rank === "2") {
    await wait(300);
    Deno.kill(Deno.pid, "SIGKILL");
  }
  await wait(60_000);
}
