// Python string semantics the Megatron task readers rely on: str.strip()/split() whitespace, re's \s,
// text-mode line iteration, int(), and the number formats of the printed results.

/** The characters Python's str.isspace() accepts (str.strip(), str.split() and re's \s for str). */
export const PY_WS =
  "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

const STRIP = new RegExp(`^[${PY_WS}]+|[${PY_WS}]+$`, "g");
const WS_RUN = new RegExp(`[${PY_WS}]+`, "g");

/** Python's str.strip() with no argument. */
export function pyStrip(s: string): string {
  return s.replace(STRIP, "");
}

/** Python's str.split() with no argument: runs of whitespace, no empty strings. */
export function pySplitWhitespace(s: string): string[] {
  const t = pyStrip(s);
  return t === "" ? [] : t.split(WS_RUN);
}

/** Python's text-mode `for line in f` (universal newlines): lines with their terminator stripped,
 *  and the 1-based line number. A final line without terminator is included; no empty last line. */
export function pyLines(text: string): string[] {
  const lines = text.split(/\r\n|\r|\n/);
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

/** Python's int(s) for base-10 text (surrounding whitespace allowed); null when Python would raise. */
export function pyInt(s: string): number | null {
  const t = pyStrip(s);
  if (!/^[+-]?\d+(_\d+)*$/.test(t)) return null;
  const v = Number(t.replace(/_/g, ""));
  return Number.isSafeInteger(v) ? v : null;
}

/** Python's '{:.4E}'.format(x). */
export function formatE4(x: number): string {
  if (!Number.isFinite(x)) return x > 0 ? "INF" : x < 0 ? "-INF" : "NAN";
  const [m, e] = x.toExponential(4).toUpperCase().split("E");
  const exp = Number(e);
  return `${m}E${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
}

/** Python's str(float) (repr: shortest round trip, ".0" for integral values, 2-digit exponents). */
export function pyFloatStr(x: number): string {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return `${x}.0`;
  // Python switches to exponent form below 1e-4 and from 1e16; JS at 1e-7 and 1e21.
  const s = x !== 0 && (Math.abs(x) < 1e-4 || Math.abs(x) >= 1e16) ? x.toExponential() : String(x);
  const m = /^(-?[\d.]+)e([+-])(\d+)$/.exec(s);
  if (m) return `${m[1]}e${m[2]}${m[3].padStart(2, "0")}`;
  return s;
}
