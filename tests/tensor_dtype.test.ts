// f16/bf16 round-to-nearest-even edge cases: ties, overflow, subnormals, NaN, signed zero.
import assert from "node:assert/strict";
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, roundTo } from "../src/tensor/dtype.ts";

Deno.test("bf16: exact values, ties to even, overflow, NaN", () => {
  assert.equal(f32ToBf16Bits(1), 0x3f80);
  assert.equal(f32ToBf16Bits(-2), 0xc000);
  assert.equal(f32ToBf16Bits(0), 0x0000);
  assert.equal(f32ToBf16Bits(-0), 0x8000);
  // 1 + 2^-8 is halfway between 1 (even mantissa) and 1 + 2^-7: rounds to 1.
  assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd) and 1+2^-6 (even): rounds up.
  assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82);
  // Just above the tie rounds up.
  assert.equal(f32ToBf16Bits(1 + 2 ** -8 + 2 ** -20), 0x3f81);
  // Largest finite f32 rounds to +inf in bf16.
  assert.equal(f32ToBf16Bits(3.4028234663852886e38), 0x7f80);
  assert.equal(f32ToBf16Bits(Infinity), 0x7f80);
  assert.equal(f32ToBf16Bits(-Infinity), 0xff80);
  const nan = f32ToBf16Bits(NaN);
  assert.equal(nan & 0x7f80, 0x7f80);
  assert.notEqual(nan & 0x7f, 0);
  assert.ok(Number.isNaN(bf16BitsToF32(nan)));
  // Subnormal f32 survives truncation to a bf16 subnormal.
  // bf16 subnormal = mantissa * 2^-133.
  assert.equal(f32ToBf16Bits(2 ** -130), 0x0008);
  assert.equal(bf16BitsToF32(0x0001), 2 ** -133);
  // 3 * 2^-134 is the tie between mantissas 1 and 2: goes to 2 (even).
  assert.equal(f32ToBf16Bits(3 * 2 ** -134), 0x0002);
  for (let b = 0; b < 0x7f80; b += 97) assert.equal(f32ToBf16Bits(bf16BitsToF32(b)), b);
});

Deno.test("f16: exact values, ties to even, overflow, subnormals, NaN", () => {
  assert.equal(f32ToF16Bits(1), 0x3c00);
  assert.equal(f32ToF16Bits(-2), 0xc000);
  assert.equal(f32ToF16Bits(-0), 0x8000);
  assert.equal(f32ToF16Bits(65504), 0x7bff);
  // 65520 is the tie between 65504 (odd mantissa 0x3ff) and 65536 (inf): rounds to inf.
  assert.equal(f32ToF16Bits(65520), 0x7c00);
  assert.equal(f32ToF16Bits(65519), 0x7bff);
  assert.equal(f32ToF16Bits(1e6), 0x7c00);
  assert.equal(f32ToF16Bits(-1e6), 0xfc00);
  // Ties: 1 + 2^-11 -> 1 (even); 1 + 3*2^-11 -> 1 + 2^-9 (even mantissa 2).
  assert.equal(f32ToF16Bits(1 + 2 ** -11), 0x3c00);
  assert.equal(f32ToF16Bits(1 + 3 * 2 ** -11), 0x3c02);
  // Subnormals: smallest 2^-24, half of it ties to 0, 1.5x ties to 2 (even).
  assert.equal(f32ToF16Bits(2 ** -24), 0x0001);
  assert.equal(f32ToF16Bits(2 ** -25), 0x0000);
  assert.equal(f32ToF16Bits(3 * 2 ** -25), 0x0002);
  assert.equal(f32ToF16Bits(2 ** -14), 0x0400); // smallest normal
  assert.equal(f32ToF16Bits(2 ** -14 - 2 ** -24), 0x03ff); // largest subnormal
  assert.equal(f16BitsToF32(0x03ff), 2 ** -14 - 2 ** -24);
  assert.equal(f16BitsToF32(0x7c00), Infinity);
  assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN))));
  // Round trip over all finite halves.
  for (let b = 0; b < 0x7c00; b++) {
    assert.equal(f32ToF16Bits(f16BitsToF32(b)), b);
    assert.equal(f32ToF16Bits(-f16BitsToF32(b)), b | 0x8000);
  }
});

Deno.test("f16 rounds the f32 value, not the double (double rounding as __float2half(float))", () => {
  // x rounds (as f32) up to exactly a half tie, which then goes to even.
  const x = 1 + 2 ** -11 + 2 ** -40;
  assert.equal(Math.fround(x), 1 + 2 ** -11);
  assert.equal(f32ToF16Bits(x), 0x3c00);
  assert.equal(roundTo("f16", x), 1);
  assert.equal(roundTo("bf16", 1 + 3 * 2 ** -8), 1 + 2 ** -6);
});
