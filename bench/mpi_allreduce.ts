// All-reduce bus bandwidth and latency of the MPI communicator through FFI against the same library's
// own figure: a small C program (bench/mpi/allreduce.c, built here with mpicc) timing MPI_Allreduce.
//
//   deno run -A bench/mpi_allreduce.ts [--np 4] [--max-mb 64] [--flavor mpich|openmpi]
//
// Prints, per size from 4 KB to --max-mb: seconds per call and bus bandwidth (nccl-tests' convention:
// bytes / time * 2 (n-1) / n) of C MPI_Allreduce, of MPI_Iallreduce called through Deno FFI, and of
// MpiCommunicator.allReduce (group-order reduction: alltoallv + local sum + allgatherv), with the ratio
// communicator / C. Needs mpich (libmpich-dev for mpicc) or Open MPI with its compiler wrapper.

const args = Deno.args;
const flag = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : dflt;
};
const np = Number(flag("--np", "4"));
const maxMb = Number(flag("--max-mb", "64"));
const flavor = flag("--flavor", "mpich");
const mpicc = flavor === "mpich" ? "mpicc.mpich" : "mpicc.openmpi";
const mpiexec = flavor === "mpich" ? "mpiexec.mpich" : "mpiexec.openmpi";
const extra = flavor === "openmpi"
  ? ["--oversubscribe", ...(Deno.uid() === 0 ? ["--allow-run-as-root"] : [])]
  : [];

const here = new URL(".", import.meta.url).pathname;
const dir = await Deno.makeTempDir({ prefix: "mpi-bench-" });
try {
  const exe = `${dir}/allreduce`;
  const cc = await new Deno.Command(mpicc, { args: ["-O2", "-o", exe, `${here}mpi/allreduce.c`] }).output()
    .catch((e) => {
      console.error(
        `bench: cannot run ${mpicc}: ${(e as Error).message} (apt-get install -y mpich libmpich-dev)`,
      );
      Deno.exit(1);
    });
  if (!cc.success) {
    console.error(`bench: ${mpicc} failed: ${new TextDecoder().decode(cc.stderr)}`);
    Deno.exit(1);
  }
  // Sizes 4 KB .. max, x4; fewer iterations for big buffers so the whole run stays short.
  const sizes: [number, number][] = [];
  for (let b = 4096; b <= maxMb * 2 ** 20; b *= 4) {
    sizes.push([b, Math.max(3, Math.min(200, Math.round(2 ** 24 / b)))]);
  }
  const sizeArgs = sizes.flatMap(([b, it]) => [String(b), String(it)]);
  const runIt = async (cmd: string[]) => {
    const o = await new Deno.Command(mpiexec, {
      args: [...extra, "-n", String(np), ...cmd, ...sizeArgs],
      stdout: "piped",
      stderr: "piped",
      env: flavor === "openmpi" ? { MEGATRON_DENO_MPI: "libmpi.so.40" } : {},
    }).output();
    if (!o.success) {
      console.error(new TextDecoder().decode(o.stderr));
      Deno.exit(1);
    }
    return new TextDecoder().decode(o.stdout).trim().split("\n").map((l) => l.split(" "));
  };
  const c = await runIt([exe]);
  const d = await runIt([Deno.execPath(), "run", "-A", "--no-check", `${here}mpi/allreduce_child.ts`]);
  const bus = (bytes: number, s: number) => (bytes / s) * (2 * (np - 1)) / np / 1e9;
  const fmtSize = (b: number) => (b >= 2 ** 20 ? `${b / 2 ** 20} MB` : `${b / 1024} KB`);
  console.log(`MPI all-reduce, ${np} processes, ${flavor}; time per call (us) and bus bandwidth (GB/s)`);
  console.log(
    ["size", "C us", "C GB/s", "FFI us", "FFI GB/s", "comm us", "comm GB/s", "comm/C time"].map((s) =>
      s.padStart(12)
    )
      .join(""),
  );
  for (let i = 0; i < sizes.length; i++) {
    const b = sizes[i][0];
    const tc = Number(c[i][1]);
    const tm = Number(d[i][1]);
    const tf = Number(d[i][2]);
    console.log(
      [
        fmtSize(b),
        (tc * 1e6).toFixed(1),
        bus(b, tc).toFixed(3),
        (tf * 1e6).toFixed(1),
        bus(b, tf).toFixed(3),
        (tm * 1e6).toFixed(1),
        bus(b, tm).toFixed(3),
        (tm / tc).toFixed(2),
      ].map((s) => s.padStart(12)).join(""),
    );
  }
} finally {
  await Deno.remove(dir, { recursive: true });
}
