/** Generated test data: a seeded random source, so a failing run can be repeated exactly. */

/** mulberry32: a small, fast, seeded PRNG returning floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Picker {
  /** An integer in [min, max]. */
  int(min: number, max: number): number;
  /** One element of `values`. */
  pick<T>(values: readonly T[]): T;
  /** True with probability `p`. */
  chance(p: number): boolean;
}

export function picker(seed: number): Picker {
  const next = seededRandom(seed);
  return {
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    pick: (values) => values[Math.floor(next() * values.length)] as (typeof values)[number],
    chance: (p) => next() < p,
  };
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
