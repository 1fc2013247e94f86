// Megatron-LM 2021 PyTorch checkpoints (megatron/checkpointing.py): the directory layout, the tracker
// file, the model_optim_rng.pt dict (args Namespace, checkpoint_version, iteration, model or
// model0..modelV-1), the nesting of the model dict, the older names ("transformer" for the encoder,
// ".attention." for ".self_attention.") and the checkpoint_version 0/1 QKV orders, normalized on load
// to the 2021 names and the version-3 layout.

import { PyDict, PyFloat, PyNamespace, type PyValue } from "./pickle.ts";
import { convertQkv, qkvLayoutOfVersion } from "./hf.ts";
import {
  flattenTensors,
  readTorchCheckpoint,
  toPlain,
  TorchTensor,
  writeTorchCheckpoint,
} from "./torch_checkpoint.ts";

export const TRACKER_FILE = "latest_checkpointed_iteration.txt";

/** <root>/iter_0000100/mp_rank_00[_000]/model_optim_rng.pt (PP rank only when PP > 1), or release/. */
export function megatronCheckpointFile(
  root: string,
  iteration: number | "release",
  tpRank: number,
  ppRank = 0,
  pp = 1,
): string {
  const dir = iteration === "release" ? "release" : `iter_${String(iteration).padStart(7, "0")}`;
  const rank = pp === 1
    ? `mp_rank_${String(tpRank).padStart(2, "0")}`
    : `mp_rank_${String(tpRank).padStart(2, "0")}_${String(ppRank).padStart(3, "0")}`;
  return `${root}/${dir}/${rank}/model_optim_rng.pt`;
}

/** Megatron's read_metadata: an iteration > 0, or "release". */
export function readMegatronTracker(root: string): number | "release" {
  const path = `${root}/${TRACKER_FILE}`;
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new Error(
      `${path}: cannot read (${(e as Error).message}); is --load a Megatron checkpoint folder?`,
    );
  }
  const s = text.trim();
  if (s === "release") return "release";
  const it = /^[+-]?\d+$/.test(s) ? Number(s) : null;
  if (it === null || it <= 0) {
    throw new Error(`${path}: expected an iteration > 0 or "release", found ${JSON.stringify(s)}`);
  }
  return it;
}

/** Split a flattened 2021 name into the nesting Megatron saves (embedding sub-dicts per table; the
 *  encoder/decoder/pooler and heads keep dotted module-local names). */
export function megatronNesting(name: string): string[] {
  const p = name.split(".");
  if (p[0] === "language_model") {
    if (p[1] === "embedding") return [p[0], p[1], p[2], p.slice(3).join(".")];
    return [p[0], p[1], p.slice(2).join(".")];
  }
  return [p[0], p.slice(1).join(".")];
}

/** Older names to the 2021 ones: language_model.transformer -> encoder, .attention. -> .self_attention. */
export function normalizeMegatronName(name: string): string {
  let n = name.replace(/^language_model\.transformer\./, "language_model.encoder.");
  if (n.startsWith("language_model.encoder.") || n.startsWith("language_model.decoder.")) {
    n = n.replace(".attention.", ".self_attention.");
  }
  return n;
}

export interface MegatronCheckpoint {
  /** checkpoint_version as saved (0 when absent, as Megatron assumes). */
  version: number;
  iteration: number | null;
  /** args as plain data (torch dtypes as "torch.float16"); null when absent. */
  args: Record<string, unknown> | null;
  /** One flattened name -> tensor map per model chunk ("model", or "model0".. for virtual stages),
   *  with 2021 names and query_key_value / key_value rows in the version-3 [np, 3, hn] order. */
  chunks: Map<string, TorchTensor>[];
  /** The whole unpickled dict (optimizer, RNG states, ...). */
  raw: PyDict;
}

export interface QkvShape {
  /** Attention heads in this file (heads / TP). */
  headsPerPartition: number;
  /** kv_channels (hidden / heads). */
  headDim: number;
}

/** The QKV shape from the checkpoint's own args (num_attention_heads, hidden_size / kv_channels,
 *  tensor_model_parallel_size, or the pre-2020 model_parallel_size). */
export function qkvShapeFromArgs(args: Record<string, unknown> | null, where: string): QkvShape {
  const num = (k: string) => (typeof args?.[k] === "number" ? args[k] as number : undefined);
  const heads = num("num_attention_heads"), hidden = num("hidden_size");
  if (heads === undefined || hidden === undefined) {
    throw new Error(
      `${where}: args lack num_attention_heads / hidden_size, needed to reorder query_key_value`,
    );
  }
  const tp = num("tensor_model_parallel_size") ?? num("model_parallel_size") ?? 1;
  return { headsPerPartition: heads / tp, headDim: num("kv_channels") ?? hidden / heads };
}

/** Decode a model_optim_rng.pt already in memory (see readMegatronCheckpoint). */
export function decodeMegatronCheckpoint(root: PyValue, where: string, qkv?: QkvShape): MegatronCheckpoint {
  if (!(root instanceof PyDict)) throw new Error(`${where}: the checkpoint is not a dict`);
  const v = root.get("checkpoint_version");
  const version = v === undefined ? 0 : typeof v === "number" ? v : NaN;
  if (![0, 1, 2, 3].includes(version)) {
    throw new Error(`${where}: checkpoint_version ${String(v)}: expected 0, 1, 2 or 3`);
  }
  const it = root.get("iteration");
  const argsV = root.get("args");
  const args = argsV instanceof PyNamespace ? toPlain(argsV) as Record<string, unknown> : null;
  const keys = [...root.map.keys()].filter((k) => typeof k === "string" && /^model\d*$/.test(k)) as string[];
  if (keys.length === 0) {
    throw new Error(`${where}: no "model" entry (optimizer-only or not a Megatron checkpoint)`);
  }
  keys.sort((a, b) => (a === "model" ? -1 : b === "model" ? 1 : Number(a.slice(5)) - Number(b.slice(5))));
  const layout = qkvLayoutOfVersion(version);
  const shape = layout === "v3" || layout === "v2" ? null : qkv ?? qkvShapeFromArgs(args, where);
  const chunks = keys.map((k) => {
    const m = new Map<string, TorchTensor>();
    for (const [name, t] of flattenTensors(root.get(k)!)) {
      const n = normalizeMegatronName(name);
      let out = t;
      const splits = /\.query_key_value\.(weight|bias)$/.test(n)
        ? 3
        : /\.key_value\.(weight|bias)$/.test(n)
        ? 2
        : 0;
      if (splits && shape) {
        const cols = t.shape.length === 2 ? t.shape[1] : 1;
        const rows = shape.headsPerPartition * shape.headDim * splits;
        if (t.shape[0] !== rows) {
          throw new Error(
            `${where}: ${name}: ${t.shape[0]} rows, expected ${rows} (${splits} x heads x head dim)`,
          );
        }
        const data = convertQkv(
          t.data as Float32Array,
          layout,
          "v3",
          shape.headsPerPartition,
          shape.headDim,
          cols,
          splits,
        );
        out = new TorchTensor(t.dtype, t.shape, data);
      }
      m.set(n, out);
    }
    return m;
  });
  return {
    version,
    iteration: typeof it === "number" ? it : null,
    args,
    chunks,
    raw: root,
  };
}

/** Read one model_optim_rng.pt. `qkv` overrides the shape taken from the file's args (needed only for
 *  checkpoint_version 0 and 1). */
export function readMegatronCheckpoint(path: string, qkv?: QkvShape): MegatronCheckpoint {
  return decodeMegatronCheckpoint(readTorchCheckpoint(path), path, qkv);
}

export interface MegatronSave {
  /** Written as an argparse.Namespace, in this order. */
  args: Record<string, PyValue>;
  iteration: number;
  /** Flattened 2021 names; one map per chunk ("model" for one, "model0".. for several). */
  chunks: Map<string, TorchTensor>[];
}

/** The dict Megatron 2021's save_checkpoint writes without optimizer and RNG (as merge_mp_partitions
 *  saves): args, checkpoint_version 3.0, iteration, model. */
export function buildMegatronCheckpoint(s: MegatronSave): PyDict {
  const d = new PyDict()
    .set("args", new PyNamespace(new Map(Object.entries(s.args))))
    .set("checkpoint_version", new PyFloat(3))
    .set("iteration", s.iteration);
  const nest = (m: Map<string, TorchTensor>) => {
    const root = new PyDict(true);
    for (const [name, t] of m) {
      const path = megatronNesting(name);
      let cur = root;
      for (const seg of path.slice(0, -1)) {
        let nx = cur.get(seg);
        if (!(nx instanceof PyDict)) cur.set(seg, nx = new PyDict(true));
        cur = nx as PyDict;
      }
      cur.set(path[path.length - 1], t);
    }
    return root;
  };
  if (s.chunks.length === 1) d.set("model", nest(s.chunks[0]));
  else s.chunks.forEach((c, i) => d.set(`model${i}`, nest(c)));
  return d;
}

/** Write model_optim_rng.pt (creating its folder) via a temp name + rename. */
export function writeMegatronCheckpoint(path: string, s: MegatronSave): void {
  const dir = path.slice(0, path.lastIndexOf("/"));
  if (dir) Deno.mkdirSync(dir, { recursive: true });
  writeTorchCheckpoint(path, buildMegatronCheckpoint(s));
}

/** Write the tracker file (after the checkpoint files, as Megatron does). */
export function writeMegatronTracker(root: string, iteration: number | "release"): void {
  const tmp = `${root}/${TRACKER_FILE}.tmp-${Deno.pid}`;
  Deno.writeTextFileSync(tmp, String(iteration));
  Deno.renameSync(tmp, `${root}/${TRACKER_FILE}`);
}
