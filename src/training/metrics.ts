// JSON-lines metrics: one object per log interval or evaluation, appended, so a resumed run continues
// the same file and `tail -f` / a notebook can follow it. Non-finite numbers (a NaN loss, an inf
// grad norm) are written as the strings "NaN", "Infinity", "-Infinity", since JSON has no literal.

export type MetricsRecord = Record<string, unknown>;

function replacer(_key: string, v: unknown): unknown {
  if (typeof v === "number" && !Number.isFinite(v)) return String(v);
  if (typeof v === "bigint") return v.toString();
  return v;
}

/** Serialize one record as a single JSON line (with the trailing newline). */
export function metricsLine(rec: MetricsRecord): string {
  return JSON.stringify(rec, replacer) + "\n";
}

export class MetricsWriter {
  constructor(readonly path: string) {
    const slash = path.lastIndexOf("/");
    if (slash > 0) Deno.mkdirSync(path.slice(0, slash), { recursive: true });
  }

  /** Append one record; each call is one write of one whole line. */
  write(rec: MetricsRecord): void {
    Deno.writeTextFileSync(this.path, metricsLine(rec), { append: true, create: true });
  }
}

/** Read a metrics file back; numbers written as "NaN"/"Infinity" strings come back as numbers. */
export function readMetrics(path: string): MetricsRecord[] {
  const out: MetricsRecord[] = [];
  const lines = Deno.readTextFileSync(path).split("\n");
  lines.forEach((line, i) => {
    if (line.trim() === "") return;
    try {
      out.push(
        JSON.parse(line, (_k, v) => (v === "NaN" || v === "Infinity" || v === "-Infinity" ? Number(v) : v)),
      );
    } catch (e) {
      throw new Error(`${path}:${i + 1}: expected a JSON object, found ${(e as Error).message}`);
    }
  });
  return out;
}
