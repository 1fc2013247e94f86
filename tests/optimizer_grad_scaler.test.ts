// Grad-scaler state machine: known transition sequences (Megatron's hysteresis quirk included).

import assert from "node:assert/strict";
import { ConstantGradScaler, createGradScaler, DynamicGradScaler } from "../src/optimizer/grad_scaler.ts";

function state(s: DynamicGradScaler): [number, number, number] {
  return [s.scale, s.growthTracker, s.hysteresisTracker];
}

Deno.test("dynamic scaler: defaults are 2^32, hysteresis 2, window 1000", () => {
  const s = new DynamicGradScaler();
  assert.deepEqual(state(s), [2 ** 32, 0, 2]);
  assert.equal(s.invScale, 2 ** -32);
  assert.equal(s.minScale, 1);
  assert.equal(s.growthInterval, 1000);
});

Deno.test("dynamic scaler: hysteresis absorbs one overflow, then every later overflow halves", () => {
  const s = new DynamicGradScaler();
  s.update(true);
  assert.deepEqual(state(s), [2 ** 32, 0, 1]);
  s.update(true);
  assert.deepEqual(state(s), [2 ** 31, 0, 0]);
  s.update(true);
  assert.deepEqual(state(s), [2 ** 30, 0, -1]);
  // A clean step does not refill the hysteresis tracker ...
  s.update(false);
  assert.deepEqual(state(s), [2 ** 30, 1, -1]);
  // ... so the next overflow halves at once and resets the growth tracker.
  s.update(true);
  assert.deepEqual(state(s), [2 ** 29, 0, -2]);
});

Deno.test("dynamic scaler: grows after exactly `window` clean steps and refills hysteresis", () => {
  const s = new DynamicGradScaler({ initialScale: 1024 });
  s.update(true);
  s.update(true);
  assert.deepEqual(state(s), [512, 0, 0]);
  for (let i = 0; i < 999; i++) s.update(false);
  assert.deepEqual(state(s), [512, 999, 0]);
  s.update(false);
  assert.deepEqual(state(s), [1024, 0, 2]);
  // An overflow in the middle of a window restarts the count.
  for (let i = 0; i < 500; i++) s.update(false);
  s.update(true);
  assert.deepEqual(state(s), [1024, 0, 1]);
  for (let i = 0; i < 999; i++) s.update(false);
  assert.equal(s.scale, 1024);
  s.update(false);
  assert.deepEqual(state(s), [2048, 0, 2]);
});

Deno.test("dynamic scaler: custom window/hysteresis and the min-scale clamp", () => {
  const s = new DynamicGradScaler({ initialScale: 4, minScale: 1, growthInterval: 3, hysteresis: 1 });
  s.update(true);
  assert.deepEqual(state(s), [2, 0, 0]);
  s.update(true);
  assert.deepEqual(state(s), [1, 0, -1]);
  s.update(true);
  assert.deepEqual(state(s), [1, 0, -2]);
  s.update(false);
  s.update(false);
  assert.equal(s.scale, 1);
  s.update(false);
  assert.deepEqual(state(s), [2, 0, 1]);
  const t = new DynamicGradScaler({ initialScale: 3, minScale: 2, hysteresis: 1 });
  t.update(true);
  assert.equal(t.scale, 2);
});

Deno.test("dynamic scaler: state round trip and bad checkpoint state", () => {
  const s = new DynamicGradScaler();
  s.update(true);
  s.update(false);
  const st = s.exportState();
  assert.deepEqual(st, { scale: 2 ** 32, growthTracker: 1, hysteresisTracker: 1 });
  const r = new DynamicGradScaler({ initialScale: 8 });
  r.importState(JSON.parse(JSON.stringify(st)));
  assert.deepEqual(state(r), [2 ** 32, 1, 1]);
  r.update(true);
  assert.deepEqual(state(r), [2 ** 31, 0, 0]);
  assert.throws(
    () => r.importState({ scale: -1, growthTracker: 0, hysteresisTracker: 2 }),
    /checkpoint scale must be a finite number > 0, found -1/,
  );
  assert.throws(() => new DynamicGradScaler({ hysteresis: 0 }), /hysteresis.*found 0/);
});

Deno.test("constant scaler and the Megatron choice of scaler", () => {
  const c = new ConstantGradScaler(3);
  c.update(true);
  c.update(false);
  assert.equal(c.scale, 3);
  assert.equal(c.invScale, Math.fround(1 / 3));
  c.importState({ scale: 128, growthTracker: 5, hysteresisTracker: 1 });
  assert.equal(c.scale, 3);
  assert.equal(createGradScaler({}), null);
  assert.equal(createGradScaler({ bf16: true }), null);
  assert.equal(createGradScaler({ bf16: true, lossScale: 8 })?.kind, "constant");
  assert.equal(createGradScaler({ fp16: true, lossScale: 8 })?.kind, "constant");
  const d = createGradScaler({ fp16: true, initialLossScale: 65536, hysteresis: 3, lossScaleWindow: 10 });
  assert.ok(d instanceof DynamicGradScaler);
  assert.deepEqual(d.exportState(), { scale: 65536, growthTracker: 0, hysteresisTracker: 3 });
  assert.equal(d.growthInterval, 10);
});

Deno.test("createGradScaler: --loss-scale 0 means dynamic, as Megatron's truthiness test", () => {
  assert.equal(createGradScaler({ fp16: true, lossScale: 0 })?.kind, "dynamic");
  assert.equal(createGradScaler({ bf16: true, lossScale: 0 }), null);
});
