// Profiling mode of the CUDA backend: a pair of CUDA events around each outermost Backend op (device
// time, read only when the report is built, so the stream is not synchronized per op), host time per
// op, and the number of stream submissions (kernel launches, cuBLAS calls, memcpy/memset) per op and
// per step. The backend owns one profiler while profiling is on; nothing here is global.

/** The event calls the profiler needs (Cudart's, or a fake in tests). */
export interface EventApi {
  create(): Deno.PointerValue;
  record(e: Deno.PointerValue): void;
  synchronize(e: Deno.PointerValue): void;
  elapsedMs(a: Deno.PointerValue, b: Deno.PointerValue): number;
  destroy(e: Deno.PointerValue): void;
}

/** One row of the report: every call of one op (or one GEMM shape). */
export interface OpProfile {
  op: string;
  calls: number;
  /** Stream submissions made inside the op's calls. */
  launches: number;
  /** Sum of the device time between each call's start and end events. */
  deviceMs: number;
  /** Sum of the host (JavaScript + FFI) time of each call. */
  hostMs: number;
}

export interface ProfileReport {
  /** Rows sorted by device time, largest first. */
  ops: OpProfile[];
  /** Submissions in each step closed by markStep (submissions after the last mark are not a step). */
  launchesPerStep: number[];
  /** Device time of the profiled ops in each step. */
  deviceMsPerStep: number[];
  /** Host wall time of each step (markStep to markStep; the first from startProfiling). */
  hostMsPerStep: number[];
  totalLaunches: number;
  /** Host time spent inside the submitting FFI calls alone, over all submissions. */
  submitHostMs: number;
}

interface Pending {
  op: string;
  start: Deno.PointerValue;
  end: Deno.PointerValue;
  hostMs: number;
  launches: number;
  step: number;
}

export class CudaProfiler {
  private depth = 0;
  private curOp = "";
  private curStart: Deno.PointerValue = null;
  private curT0 = 0;
  private curLaunches0 = 0;
  private launches = 0;
  private submitMs = 0;
  private readonly pending: Pending[] = [];
  private readonly pool: Deno.PointerValue[] = [];
  private readonly stepLaunches: number[] = [];
  private readonly stepHostMs: number[] = [];
  private stepLaunches0 = 0;
  private stepT0: number;

  constructor(private readonly ev: EventApi, private readonly now: () => number = () => performance.now()) {
    this.stepT0 = now();
  }

  private event(): Deno.PointerValue {
    return this.pool.pop() ?? this.ev.create();
  }

  /** Entering a Backend op; nested ops (an op calling another) count toward the outermost one. */
  enter(op: string): void {
    if (this.depth++ > 0) return;
    this.curOp = op;
    this.curStart = this.event();
    this.ev.record(this.curStart);
    this.curLaunches0 = this.launches;
    this.curT0 = this.now();
  }

  exit(): void {
    if (--this.depth > 0) return;
    const hostMs = this.now() - this.curT0;
    const end = this.event();
    this.ev.record(end);
    this.pending.push({
      op: this.curOp,
      start: this.curStart,
      end,
      hostMs,
      launches: this.launches - this.curLaunches0,
      step: this.stepLaunches.length,
    });
  }

  /** One stream submission that took `hostMs` of host time in its FFI call. */
  submitted(hostMs: number): void {
    this.launches++;
    this.submitMs += hostMs;
  }

  /** Closes a training step. */
  markStep(): void {
    const t = this.now();
    this.stepLaunches.push(this.launches - this.stepLaunches0);
    this.stepHostMs.push(t - this.stepT0);
    this.stepLaunches0 = this.launches;
    this.stepT0 = t;
  }

  /** Waits for the recorded events, aggregates, and returns the events to the pool. */
  report(): ProfileReport {
    if (this.depth !== 0) throw new Error("cuda profiler: report() inside an op");
    const rows = new Map<string, OpProfile>();
    const stepDev = this.stepLaunches.map(() => 0);
    if (this.pending.length) this.ev.synchronize(this.pending[this.pending.length - 1].end);
    for (const p of this.pending) {
      const ms = this.ev.elapsedMs(p.start, p.end);
      let r = rows.get(p.op);
      if (!r) rows.set(p.op, r = { op: p.op, calls: 0, launches: 0, deviceMs: 0, hostMs: 0 });
      r.calls++;
      r.launches += p.launches;
      r.deviceMs += ms;
      r.hostMs += p.hostMs;
      if (p.step < stepDev.length) stepDev[p.step] += ms;
      this.pool.push(p.start, p.end);
    }
    this.pending.length = 0;
    return {
      ops: [...rows.values()].sort((a, b) => b.deviceMs - a.deviceMs || (a.op < b.op ? -1 : 1)),
      launchesPerStep: [...this.stepLaunches],
      deviceMsPerStep: stepDev,
      hostMsPerStep: [...this.stepHostMs],
      totalLaunches: this.launches,
      submitHostMs: this.submitMs,
    };
  }

  /** Destroys every event (after report(); pending events are dropped). */
  dispose(): void {
    for (const p of this.pending) this.pool.push(p.start, p.end);
    this.pending.length = 0;
    for (const e of this.pool) this.ev.destroy(e);
    this.pool.length = 0;
  }
}

/** The report as a fixed-width table (op, calls, launches, device ms, % of device time, host ms,
 *  host µs per launch), then per-step totals. `steps` divides the per-op columns (0: raw sums). */
export function formatProfile(r: ProfileReport, steps = r.launchesPerStep.length): string {
  const per = steps > 0 ? steps : 1;
  const dev = r.ops.reduce((s, o) => s + o.deviceMs, 0);
  const lines: string[] = [];
  const unit = steps > 0 ? " per step" : "";
  lines.push(
    `${"op".padEnd(40)} ${"calls".padStart(7)} ${"launches".padStart(9)} ${"device ms".padStart(10)} ${
      "dev %".padStart(6)
    } ${"host ms".padStart(9)} ${"host us/launch".padStart(15)}${unit ? `   (columns${unit})` : ""}`,
  );
  for (const o of r.ops) {
    lines.push(
      `${o.op.padEnd(40)} ${fmt(o.calls / per, 1).padStart(7)} ${fmt(o.launches / per, 1).padStart(9)} ${
        (o.deviceMs / per).toFixed(3).padStart(10)
      } ${(dev > 0 ? 100 * o.deviceMs / dev : 0).toFixed(1).padStart(6)} ${
        (o.hostMs / per).toFixed(3).padStart(9)
      } ${(o.launches ? 1000 * o.hostMs / o.launches : 0).toFixed(1).padStart(15)}`,
    );
  }
  const sum = (a: number[]) => a.reduce((s, x) => s + x, 0);
  const n = r.launchesPerStep.length;
  if (n > 0) {
    lines.push(
      `steps ${n}: launches/step ${fmt(sum(r.launchesPerStep) / n, 1)}, device ms/step ${
        (sum(r.deviceMsPerStep) / n).toFixed(3)
      } (sum of op events), host ms/step ${(sum(r.hostMsPerStep) / n).toFixed(3)}, host us per submit call ${
        (r.totalLaunches ? 1000 * r.submitHostMs / r.totalLaunches : 0).toFixed(2)
      }`,
    );
  }
  return lines.join("\n");
}

function fmt(x: number, digits: number): string {
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}
