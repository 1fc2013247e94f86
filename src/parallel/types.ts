// Parallel layout and the communicator interface. Passed explicitly to every layer that needs it;
// there are no process-wide globals. Rank order is Megatron's: tensor-parallel fastest, then data,
// then pipeline (global = pp * (dp_size * tp_size) + dp * tp_size + tp).

import type { Tensor } from "../tensor/tensor.ts";

export type GroupName = "tensor" | "pipeline" | "data" | "model" | "embedding" | "world";

export interface GroupInfo {
  /** Global ranks of the group members, in group order. */
  readonly ranks: readonly number[];
  /** This rank's index within the group (-1 when this rank is not a member, e.g. embedding). */
  readonly rank: number;
  readonly size: number;
}

export interface ParallelState {
  readonly worldSize: number;
  readonly globalRank: number;
  readonly tpSize: number;
  readonly ppSize: number;
  readonly dpSize: number;
  readonly tpRank: number;
  readonly ppRank: number;
  readonly dpRank: number;
  /** Virtual pipeline size (interleaved chunks per stage); 1 when not interleaved. */
  readonly vpSize: number;
  group(name: GroupName): GroupInfo;
  readonly isFirstStage: boolean;
  readonly isLastStage: boolean;
}

export type ReduceOp = "sum" | "max";

/** Collectives over the groups of a ParallelState. All calls of one collective must be made by
 *  every member of the group, in the same order. Tensors are reduced in place. */
export interface Communicator {
  allReduce(t: Tensor, op: ReduceOp, group: GroupName): Promise<void>;
  /** dst = concat over group members' src along the leading dimension (group order). */
  allGather(src: Tensor, dst: Tensor, group: GroupName): Promise<void>;
  /** dst = this member's slice (leading dim) of the sum over members' src. */
  reduceScatter(src: Tensor, dst: Tensor, group: GroupName): Promise<void>;
  broadcast(t: Tensor, rootInGroup: number, group: GroupName): Promise<void>;
  /** Point-to-point by global rank. `send` does not wait for the receiver. Messages between a pair
   *  are matched in order within a channel (`p2pChannel` of the tag: activations "fwd:...",
   *  gradients "bwd:...", everything else); the optional tag (e.g. "fwd:c1:m3") is checked on
   *  receipt when given. */
  send(t: Tensor, toGlobalRank: number, tag?: string): Promise<void>;
  recv(t: Tensor, fromGlobalRank: number, tag?: string): Promise<void>;
  barrier(group: GroupName): Promise<void>;
}

/** The matching channel of a p2p tag: 1 for activations ("fwd" or "fwd:..."), 2 for gradients ("bwd"...),
 *  0 otherwise. Two pipeline stages that are each other's previous and next stage (2 stages, interleaved)
 *  send both ways at once; one channel per direction keeps each stream in order whatever the interleaving
 *  of the two (one ordered stream per pair mismatches them, Megatron 2021's reason to reject p = 2). */
export function p2pChannel(tag: string | undefined): number {
  if (tag === undefined) return 0;
  const head = tag.split(":", 1)[0];
  return head === "fwd" ? 1 : head === "bwd" ? 2 : 0;
}

/** Megatron's global rank for (tp, dp, pp) coordinates. */
export function globalRankOf(tp: number, dp: number, pp: number, tpSize: number, dpSize: number): number {
  return pp * dpSize * tpSize + dp * tpSize + tp;
}

/** The group layout for one rank, with Megatron's orders. */
export function makeParallelState(
  sizes: { tp: number; pp: number; dp: number; vp?: number },
  globalRank: number,
): ParallelState {
  const { tp: tpSize, pp: ppSize, dp: dpSize } = sizes;
  const worldSize = tpSize * ppSize * dpSize;
  if (globalRank < 0 || globalRank >= worldSize) {
    throw new Error(`parallel: rank ${globalRank} outside world of ${worldSize}`);
  }
  const tpRank = globalRank % tpSize;
  const dpRank = Math.floor(globalRank / tpSize) % dpSize;
  const ppRank = Math.floor(globalRank / (tpSize * dpSize));
  const range = (n: number, f: (i: number) => number) => Array.from({ length: n }, (_, i) => f(i));
  const mk = (ranks: number[]): GroupInfo => ({ ranks, rank: ranks.indexOf(globalRank), size: ranks.length });
  const groups: Record<GroupName, GroupInfo> = {
    tensor: mk(range(tpSize, (t) => globalRankOf(t, dpRank, ppRank, tpSize, dpSize))),
    data: mk(range(dpSize, (d) => globalRankOf(tpRank, d, ppRank, tpSize, dpSize))),
    pipeline: mk(range(ppSize, (p) => globalRankOf(tpRank, dpRank, p, tpSize, dpSize))),
    // Model-parallel group: all TP x PP ranks sharing this DP index.
    model: mk(
      range(ppSize * tpSize, (i) => globalRankOf(i % tpSize, dpRank, Math.floor(i / tpSize), tpSize, dpSize)),
    ),
    // First and last pipeline stage (one member when PP = 1).
    embedding: mk(
      [...new Set([0, ppSize - 1])].map((p) => globalRankOf(tpRank, dpRank, p, tpSize, dpSize)),
    ),
    world: mk(range(worldSize, (i) => i)),
  };
  return {
    worldSize,
    globalRank,
    tpSize,
    ppSize,
    dpSize,
    tpRank,
    ppRank,
    dpRank,
    vpSize: sizes.vp ?? 1,
    group: (name) => groups[name],
    isFirstStage: ppRank === 0,
    isLastStage: ppRank === ppSize - 1,
  };
}

/** Communicator for a world of one rank: every collective is the identity. */
export class SingleRankCommunicator implements Communicator {
  allReduce(): Promise<void> {
    return Promise.resolve();
  }
  allGather(src: Tensor, dst: Tensor): Promise<void> {
    if (src.size !== dst.size) throw new Error("allGather: sizes differ on a single rank");
    throw new Error("allGather on a single rank: copy through the backend instead");
  }
  reduceScatter(): Promise<void> {
    throw new Error("reduceScatter on a single rank: copy through the backend instead");
  }
  broadcast(): Promise<void> {
    return Promise.resolve();
  }
  send(): Promise<void> {
    throw new Error("send: no peer in a world of one rank");
  }
  recv(): Promise<void> {
    throw new Error("recv: no peer in a world of one rank");
  }
  barrier(): Promise<void> {
    return Promise.resolve();
  }
}
