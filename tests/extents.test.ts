import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ExtentSet } from '../src/base/extents.js';
import { mulberry32 } from './helpers/seeded-random.js';

// Randomized runs use a fresh base seed each time; a failure names the seed to replay with
// EXTENTS_SEED=<seed> EXTENTS_RUNS=1.
const BASE_SEED = process.env.EXTENTS_SEED ? Number(process.env.EXTENTS_SEED) : (Math.random() * 2 ** 32) >>> 0;
const RUNS = process.env.EXTENTS_RUNS ? Number(process.env.EXTENTS_RUNS) : 2000;
const SPACE = 2000; // sectors in the model device

/** The obviously-correct model: one byte per sector. */
class Bitmap {
  bits: Uint8Array;
  constructor(size = SPACE) {
    this.bits = new Uint8Array(size);
  }
  fill(start: number, end: number, value: number): void {
    if (end > start) this.bits.fill(value, start, end);
  }
  runs(): Array<[number, number]> {
    const runs: Array<[number, number]> = [];
    let i = 0;
    while (i < this.bits.length) {
      if (!this.bits[i]) {
        i++;
        continue;
      }
      const start = i;
      while (i < this.bits.length && this.bits[i]) i++;
      runs.push([start, i]);
    }
    return runs;
  }
  total(): number {
    let n = 0;
    for (const b of this.bits) n += b;
    return n;
  }
  overlaps(start: number, end: number): boolean {
    for (let i = start; i < end; i++) if (this.bits[i]) return true;
    return false;
  }
  covers(start: number, end: number): boolean {
    for (let i = start; i < end; i++) if (!this.bits[i]) return false;
    return true;
  }
}

type Rng = () => number;

function randInt(rng: Rng, below: number): number {
  return Math.floor(rng() * below);
}

/** Mostly short ranges (where the merge edge cases live), sometimes long, sometimes empty or inverted. */
function randRange(rng: Rng): [number, number] {
  const start = randInt(rng, SPACE);
  const r = rng();
  const len = r < 0.05 ? -randInt(rng, 5) : r < 0.8 ? randInt(rng, 16) : randInt(rng, SPACE / 2);
  return [start, Math.min(SPACE, Math.max(0, start + len))];
}

function randomPair(rng: Rng, ops: number): { set: ExtentSet; model: Bitmap } {
  const set = new ExtentSet();
  const model = new Bitmap();
  for (let k = 0; k < ops; k++) {
    const [s, e] = randRange(rng);
    set.add(s, e);
    model.fill(s, e, 1);
  }
  return { set, model };
}

function checkAgainstModel(set: ExtentSet, model: Bitmap, rng: Rng): void {
  const arr = set.toArray();
  for (let i = 0; i < arr.length; i++) {
    const [s, e] = arr[i];
    assert.ok(Number.isInteger(s) && Number.isInteger(e) && s < e, `extent ${i} [${s}, ${e}) is not a proper range`);
    if (i > 0) assert.ok(arr[i - 1][1] < s, `extents ${i - 1} and ${i} overlap or touch`);
  }
  assert.equal(arr, model.runs());
  assert.is(set.count, arr.length);
  assert.is(set.totalSectors, model.total());
  assert.is(set.isEmpty, arr.length === 0);
  const viaForEach: Array<[number, number]> = [];
  set.forEach((s, e) => viaForEach.push([s, e]));
  assert.equal(viaForEach, arr);
  for (let k = 0; k < 8; k++) {
    const start = randInt(rng, SPACE + 2);
    const end = Math.min(SPACE, start + randInt(rng, 40));
    assert.is(set.overlaps(start, end), model.overlaps(start, end), `overlaps(${start}, ${end})`);
    assert.is(set.covers(start, end), model.covers(start, end), `covers(${start}, ${end})`);
  }
  assert.equal(ExtentSet.fromBuffer(set.toBuffer()).toArray(), arr);
}

/** Like assert.equal, but names the first difference instead of diffing huge arrays (which takes minutes). */
function assertSameRuns(actual: Array<[number, number]>, expected: Array<[number, number]>): void {
  const n = Math.max(actual.length, expected.length);
  for (let i = 0; i < n; i++) {
    const a = actual[i];
    const b = expected[i];
    if (!a || !b || a[0] !== b[0] || a[1] !== b[1]) {
      assert.unreachable(`extent ${i}: got ${JSON.stringify(a)}, expected ${JSON.stringify(b)} (lengths ${actual.length} vs ${expected.length})`);
    }
  }
}

function withSeed(seed: number, body: (rng: Rng) => void): void {
  try {
    body(mulberry32(seed));
  } catch (err) {
    if (err instanceof Error) err.message = `[replay with EXTENTS_SEED=${seed} EXTENTS_RUNS=1] ${err.message}`;
    throw err;
  }
}

test('random operation sequences match a bitmap model', () => {
  for (let run = 0; run < RUNS; run++) {
    withSeed((BASE_SEED + run) >>> 0, (rng) => {
      let set = new ExtentSet();
      let model = new Bitmap();
      const steps = 5 + randInt(rng, 30);
      for (let step = 0; step < steps; step++) {
        const op = rng();
        if (op < 0.4) {
          // A burst of adds before the next read exercises the pending buffer and its flush.
          const burst = rng() < 0.2 ? 1 + randInt(rng, 600) : 1;
          for (let k = 0; k < burst; k++) {
            const [s, e] = randRange(rng);
            set.add(s, e);
            model.fill(s, e, 1);
          }
        } else if (op < 0.65) {
          const [s, e] = randRange(rng);
          set.subtract(s, e);
          model.fill(s, e, 0);
        } else if (op < 0.78) {
          const other = randomPair(rng, randInt(rng, 12));
          set.addSet(other.set);
          for (let i = 0; i < SPACE; i++) model.bits[i] |= other.model.bits[i];
          checkAgainstModel(other.set, other.model, rng); // the argument must be left alone
        } else if (op < 0.9) {
          const other = randomPair(rng, randInt(rng, 12));
          set.subtractSet(other.set);
          for (let i = 0; i < SPACE; i++) model.bits[i] &= other.model.bits[i] ^ 1;
          checkAgainstModel(other.set, other.model, rng);
        } else if (op < 0.93) {
          const windows = randomPair(rng, randInt(rng, 12));
          const before = set.toArray();
          const inside = new Bitmap();
          for (let i = 0; i < SPACE; i++) inside.bits[i] = model.bits[i] & windows.model.bits[i];
          checkAgainstModel(set.within(windows.set), inside, rng);
          assert.equal(set.toArray(), before, 'within must not modify the set');
        } else if (op < 0.97) {
          const [s, e] = randRange(rng);
          const before = set.toArray();
          const clipped = new Bitmap();
          for (let i = s; i < e; i++) clipped.bits[i] = model.bits[i];
          const result = set.intersect(s, e);
          checkAgainstModel(result, clipped, rng);
          assert.equal(set.toArray(), before, 'intersect must not modify the set');
          set = result;
          model = clipped;
        } else {
          const copy = set.clone();
          copy.add(0, SPACE); // must not leak into the original
          if (rng() < 0.5) {
            set.addSet(set);
          } else {
            set = ExtentSet.fromBuffer(set.toBuffer());
          }
        }
        checkAgainstModel(set, model, rng);
      }
    });
  }
});

test('many unread adds (several full pending buffers) match a bitmap model', () => {
  withSeed(BASE_SEED, (rng) => {
    const space = 1_000_000;
    const set = new ExtentSet();
    const model = new Bitmap(space);
    for (let k = 0; k < 300_000; k++) {
      const start = randInt(rng, space - 64);
      const end = start + 1 + randInt(rng, rng() < 0.9 ? 8 : 64);
      set.add(start, end);
      model.fill(start, end, 1);
      if (k % 100_000 === 99_999) assertSameRuns(set.toArray(), model.runs());
    }
    // subtracting a set that splits a lot
    const holes = new ExtentSet();
    for (let k = 0; k < 50_000; k++) {
      const start = randInt(rng, space - 4);
      const end = start + 1 + randInt(rng, 3);
      holes.add(start, end);
      model.fill(start, end, 0);
    }
    set.subtractSet(holes);
    assertSameRuns(set.toArray(), model.runs());
    assertSameRuns(ExtentSet.fromBuffer(set.toBuffer()).toArray(), model.runs());
  });
});

test('large batches of sector numbers up to 2^48 (the radix path) match a sorted union', () => {
  withSeed(BASE_SEED, (rng) => {
    for (const span of [2 ** 20, 2 ** 33, 2 ** 48 - 2 ** 12]) {
      const set = new ExtentSet();
      const pairs: Array<[number, number]> = [];
      // Clustered starts, so extents overlap, nest and touch across batch boundaries.
      const centres = Array.from({ length: 64 }, () => Math.floor(rng() * (span - 2 ** 12)));
      for (let k = 0; k < 150_000; k++) {
        const start = centres[randInt(rng, centres.length)] + randInt(rng, 4096);
        const end = Math.min(start + 1 + randInt(rng, rng() < 0.9 ? 8 : 300), span);
        set.add(start, end);
        pairs.push([start, end]);
        if (k === 70_000) set.count; // fold one batch mid-way, so later ones merge into a set
      }
      pairs.sort((a, b) => a[0] - b[0]);
      const union: Array<[number, number]> = [];
      for (const [s, e] of pairs) {
        const last = union[union.length - 1];
        if (last && s <= last[1]) last[1] = Math.max(last[1], e);
        else union.push([s, e]);
      }
      assertSameRuns(set.toArray(), union);
    }
  });
});

test('the changed windows hold every change, and only where the set changed', () => {
  for (let run = 0; run < RUNS / 4; run++) {
    withSeed((BASE_SEED + run) >>> 0, (rng) => {
      const set = new ExtentSet();
      const model = new Bitmap();
      set.takeChanges();
      for (let tick = 0; tick < 6; tick++) {
        const before = Uint8Array.from(model.bits);
        const ops = 1 + randInt(rng, 40);
        for (let k = 0; k < ops; k++) {
          const [s, e] = randRange(rng);
          const op = rng();
          if (op < 0.5) {
            set.add(s, e);
            model.fill(s, e, 1);
          } else if (op < 0.8) {
            // A batch as the tracker adds one (addExtents, offset by its range's start), often inside the set already.
            const n = 1 + randInt(rng, 30);
            const base = randInt(rng, 100);
            const starts = new Float64Array(n);
            const ends = new Float64Array(n);
            for (let i = 0; i < n; i++) {
              const [a, b] = rng() < 0.5 && !set.isEmpty ? [s, Math.min(SPACE, s + 1 + randInt(rng, 4))] : randRange(rng);
              [starts[i], ends[i]] = [a + base, Math.max(a, b) + base];
              model.fill(a, Math.max(a, b), 1);
            }
            set.addExtents(starts, ends, n, base);
          } else if (op < 0.95) {
            set.subtract(s, e);
            model.fill(s, e, 0);
          } else {
            set.clear();
            model.bits.fill(0);
          }
        }
        const windows = set.takeChanges()!;
        const inWindow = new Bitmap();
        windows.forEach((s, e) => inWindow.fill(s, e, 1));
        for (let i = 0; i < SPACE; i++) {
          if (!inWindow.bits[i]) assert.is(model.bits[i], before[i], `sector ${i} changed outside the windows`);
        }
        checkAgainstModel(set, model, rng);
        // Adding what the set holds changes nothing, so leaves no window.
        const held = set.toArray();
        for (const [s, e] of held) set.add(s, e);
        if (held.length > 0) set.addExtents(Float64Array.of(held[0][0] + 7), Float64Array.of(held[0][1] + 7), 1, 7);
        assert.is(set.takeChanges()!.count, 0, 'adding what the set holds leaves no window');
      }
    });
  }
});

test('adjacent ranges merge', () => {
  const set = new ExtentSet();
  set.add(0, 8);
  set.add(8, 16);
  assert.equal(set.toArray(), [[0, 16]]);
  set.add(24, 32);
  assert.equal(set.toArray(), [[0, 16], [24, 32]]);
  set.add(16, 24);
  assert.equal(set.toArray(), [[0, 32]]);
  // adjacency across separate flushes, from both sides
  set.add(32, 40);
  assert.equal(set.toArray(), [[0, 40]]);
  const other = ExtentSet.from([[40, 48]]);
  set.addSet(other);
  assert.equal(set.toArray(), [[0, 48]]);
});

test('contained and duplicate ranges change nothing', () => {
  const set = ExtentSet.from([[10, 100]]);
  set.add(20, 30);
  set.add(10, 100);
  set.add(99, 100);
  assert.equal(set.toArray(), [[10, 100]]);
  assert.is(set.totalSectors, 90);
});

test('a range bridging many extents swallows them', () => {
  const set = new ExtentSet();
  for (let i = 0; i < 100; i++) set.add(i * 10, i * 10 + 5);
  assert.is(set.count, 100);
  set.add(3, 993);
  assert.equal(set.toArray(), [[0, 995]]);
});

test('subtract splits one extent into two', () => {
  const set = ExtentSet.from([[0, 100]]);
  set.subtract(40, 60);
  assert.equal(set.toArray(), [[0, 40], [60, 100]]);
  set.subtract(0, 1);
  set.subtract(99, 200);
  assert.equal(set.toArray(), [[1, 40], [60, 99]]);
  set.subtract(30, 70);
  assert.equal(set.toArray(), [[1, 30], [70, 99]]);
  set.subtract(0, 1000);
  assert.ok(set.isEmpty);
});

test('subtractSet splits and removes', () => {
  const set = ExtentSet.from([[0, 100], [200, 300]]);
  set.subtractSet(ExtentSet.from([[10, 20], [30, 40], [90, 210], [250, 260]]));
  assert.equal(set.toArray(), [[0, 10], [20, 30], [40, 90], [210, 250], [260, 300]]);
  set.subtractSet(set);
  assert.ok(set.isEmpty);
});

test('intersect clips to the range', () => {
  const set = ExtentSet.from([[0, 10], [20, 30], [40, 50]]);
  assert.equal(set.intersect(5, 45).toArray(), [[5, 10], [20, 30], [40, 45]]);
  assert.equal(set.intersect(10, 20).toArray(), []);
  assert.equal(set.intersect(25, 26).toArray(), [[25, 26]]);
  assert.equal(set.intersect(30, 10).toArray(), []);
});

test('empty set', () => {
  const set = new ExtentSet();
  assert.ok(set.isEmpty);
  assert.is(set.count, 0);
  assert.is(set.totalSectors, 0);
  assert.equal(set.toArray(), []);
  assert.not.ok(set.overlaps(0, 10));
  assert.not.ok(set.covers(0, 10));
  assert.ok(set.covers(5, 5), 'an empty range is trivially covered');
  set.subtract(0, 10);
  set.subtractSet(ExtentSet.from([[0, 5]]));
  set.add(5, 5);
  set.add(9, 3);
  assert.ok(set.isEmpty);
  const restored = ExtentSet.fromBuffer(set.toBuffer());
  assert.ok(restored.isEmpty);
  assert.is(set.toBuffer().length, 12);
});

test('clear and clone', () => {
  const set = ExtentSet.from([[0, 8], [16, 24]]);
  const copy = set.clone();
  set.add(8, 16);
  assert.equal(copy.toArray(), [[0, 8], [16, 24]]);
  assert.equal(set.toArray(), [[0, 24]]);
  set.add(100, 200); // pending at the time of clear
  set.clear();
  assert.ok(set.isEmpty);
  assert.equal(set.toArray(), []);
});

test('invalid sectors throw RangeError', () => {
  const set = new ExtentSet();
  for (const [s, e] of [[-1, 5], [0, 1.5], [NaN, 3], [0, Infinity], [2 ** 53, 2 ** 53 + 2]]) {
    assert.throws(() => set.add(s, e), (err: unknown) => err instanceof RangeError, `add(${s}, ${e})`);
    assert.throws(() => set.subtract(s, e), (err: unknown) => err instanceof RangeError);
  }
  assert.throws(() => ExtentSet.from([[0, -8]]), (err: unknown) => err instanceof RangeError);
});

test('values near 2^48 survive merging and serialization', () => {
  const top = 2 ** 48;
  const set = new ExtentSet();
  set.add(top - 16, top - 8);
  set.add(top - 8, top);
  set.add(0, 1);
  set.add(top + 5, top + 7);
  assert.equal(set.toArray(), [[0, 1], [top - 16, top], [top + 5, top + 7]]);
  assert.is(set.totalSectors, 1 + 16 + 2);
  assert.ok(set.covers(top - 10, top));
  assert.not.ok(set.overlaps(top, top + 5));
  set.subtract(top - 9, top - 8);
  assert.equal(set.toArray(), [[0, 1], [top - 16, top - 9], [top - 8, top], [top + 5, top + 7]]);
  assert.equal(ExtentSet.fromBuffer(set.toBuffer()).toArray(), set.toArray());
  const huge = ExtentSet.from([[Number.MAX_SAFE_INTEGER - 3, Number.MAX_SAFE_INTEGER]]);
  assert.equal(ExtentSet.fromBuffer(huge.toBuffer()).toArray(), huge.toArray());
});

test('serialization layout and corrupt buffers', () => {
  const set = ExtentSet.from([[0, 8], [100, 108], [2 ** 40, 2 ** 40 + 4096]]);
  const buf = set.toBuffer();
  assert.is(buf.subarray(0, 4).toString('latin1'), 'DPX1');
  assert.is(buf.readUInt32LE(4), 3);
  assert.equal(ExtentSet.fromBuffer(buf).toArray(), set.toArray());
  assert.equal(ExtentSet.fromBuffer(new Uint8Array(buf)).toArray(), set.toArray());

  const rejects = (bad: Uint8Array, why: string) =>
    assert.throws(() => ExtentSet.fromBuffer(bad as Buffer), (err: unknown) => err instanceof Error, why);
  for (let len = 0; len < buf.length; len++) rejects(buf.subarray(0, len), `truncated to ${len}`);
  for (let i = 0; i < buf.length; i++) {
    for (const bit of [1, 0x80]) {
      const bad = Buffer.from(buf);
      bad[i] ^= bit;
      rejects(bad, `byte ${i} flipped by ${bit}`);
    }
  }
  rejects(Buffer.concat([buf, Buffer.from([0])]), 'trailing byte');
  rejects(Buffer.from('DPX2\0\0\0\0\0\0\0\0'), 'bad magic');
});

test('a million scattered 4 KiB writes on a 1 TiB device stay compact', () => {
  const rng = mulberry32(BASE_SEED);
  const slots = 2 ** 31 / 8;
  const used = new Uint8Array(slots);
  const set = new ExtentSet();
  for (let k = 0; k < 1_000_000; k++) {
    const slot = randInt(rng, slots);
    used[slot] = 1;
    set.add(slot * 8, slot * 8 + 8);
  }
  let runs = 0;
  let total = 0;
  for (let i = 0; i < slots; i++) {
    if (used[i]) {
      total += 8;
      if (i === 0 || !used[i - 1]) runs++;
    }
  }
  assert.is(set.count, runs);
  assert.is(set.totalSectors, total);
  assert.ok(set.allocatedBytes < 64 * 2 ** 20, `${set.allocatedBytes} bytes`);
});

test.run();
