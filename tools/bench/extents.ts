/** Benchmarks ExtentSet ingest rate and memory footprint: node dist/tools/bench/extents.js */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ExtentSet, coalesceBySort } from '../../src/base/extents.js';
import { native } from '../../src/base/native.js';
import { FlatExtentSet } from './flat-extent-set.js';
import { mulberry32 } from '../../tests/helpers/seeded-random.js';

const DEVICE_SECTORS = 2 ** 31; // 1 TiB of 512-byte sectors
const RECORD_SECTORS = 8; // 4 KiB writes
const MiB = 2 ** 20;

/** A gc() even without --expose-gc: the flag can be turned on at runtime and gc fetched from a fresh context. */
function findGc(): (() => void) | undefined {
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) return exposed;
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as () => void;
  } catch {
    return undefined;
  }
}

function memoryUsed(gc: (() => void) | undefined): number {
  if (gc) {
    gc();
    gc();
  }
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

function randomAlignedStarts(count: number, seed: number): Float64Array {
  const rng = mulberry32(seed);
  const slots = DEVICE_SECTORS / RECORD_SECTORS;
  const starts = new Float64Array(count);
  for (let i = 0; i < count; i++) starts[i] = Math.floor(rng() * slots) * RECORD_SECTORS;
  return starts;
}

function benchIngest(records: number, batch: number): void {
  const starts = randomAlignedStarts(records, 1);
  const set = new ExtentSet();
  const t0 = process.hrtime.bigint();
  for (let base = 0; base < records; base += batch) {
    const stop = Math.min(records, base + batch);
    for (let i = base; i < stop; i++) set.add(starts[i], starts[i] + RECORD_SECTORS);
  }
  const extents = set.count; // forces the last merge so it is timed too
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const rate = records / seconds / 1e6;
  console.log(
    `extents: ingest ${rate.toFixed(1)}M records/s (target >= 2M)` +
      ` [${records} records in batches of ${batch}, ${seconds.toFixed(2)} s, ${extents} extents]`,
  );
}

function benchMemory(extentsWanted: number, gc: (() => void) | undefined): void {
  const rng = mulberry32(2);
  const slots = DEVICE_SECTORS / RECORD_SECTORS;
  const before = memoryUsed(gc);
  const set = new ExtentSet();
  for (let i = 0; i < extentsWanted; i++) {
    const start = Math.floor(rng() * slots) * RECORD_SECTORS;
    set.add(start, start + RECORD_SECTORS);
  }
  const extents = set.count;
  const used = (memoryUsed(gc) - before) / MiB;
  const note = gc ? '' : ' (no gc available, figure includes garbage)';
  console.log(
    `extents: ${extentsWanted} extents use ${used.toFixed(1)} MiB (target < 64 MiB)` +
      ` [${extents} after coalescing, arrays ${(set.allocatedBytes / MiB).toFixed(1)} MiB]${note}`,
  );
}

/**
 * A tracker's fold of one batch (what ExtentSet's flush does before merging): the
 * comparison sorts of starts and ends it used before, against the addon's radix sort,
 * alternated over the same batches of random 4 KiB records.
 */
function benchFold(batch: number, rounds: number): void {
  const ms: Record<'sorts' | 'addon', number[]> = { sorts: [], addon: [] };
  for (let r = 0; r < rounds; r++) {
    const starts = randomAlignedStarts(batch, 100 + r);
    for (const way of r % 2 ? (['addon', 'sorts'] as const) : (['sorts', 'addon'] as const)) {
      const s = Float64Array.from(starts);
      const e = s.map((v) => v + RECORD_SECTORS);
      const t0 = process.hrtime.bigint();
      if (way === 'sorts') coalesceBySort(s, e, batch);
      else native().coalesceExtents(s, e, batch);
      ms[way].push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
  }
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
  const [a, b] = [median(ms.sorts), median(ms.addon)];
  console.log(
    `extents: fold a batch of ${batch} records: comparison sorts ${a.toFixed(2)} ms, addon radix ${b.toFixed(2)} ms, ` +
      `ratio ${(a / b).toFixed(1)}x [median of ${rounds}, alternated; ${((b * 1e6) / batch).toFixed(0)} ns per record]`,
  );
}

/**
 * A tracker's ticks with incremental persistence on (the daemon's case): each
 * tick adds its records to a set that remembers its changes, then takes them
 * and the set inside them, as the store's delta does. The set as it was before
 * (every add also added to the changed windows, sorted again) against
 * ExtentSet (the windows take each folded batch), alternated, CPU per record.
 */
function benchTicks(records: number, perTick: number, rounds: number): void {
  const ns: Record<'old' | 'new', number[]> = { old: [], new: [] };
  for (let r = 0; r < rounds; r++) {
    const starts = randomAlignedStarts(records, 200 + r);
    for (const way of r % 2 ? (['new', 'old'] as const) : (['old', 'new'] as const)) {
      const set = (way === 'old' ? new FlatExtentSet() : new ExtentSet()) as ExtentSet;
      set.takeChanges();
      const t0 = process.cpuUsage();
      for (let base = 0; base < records; base += perTick) {
        const stop = Math.min(records, base + perTick);
        for (let i = base; i < stop; i++) set.add(starts[i], starts[i] + RECORD_SECTORS);
        set.within(set.takeChanges()!);
      }
      const t = process.cpuUsage(t0);
      ns[way].push(((t.user + t.system) * 1000) / records);
    }
  }
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1];
  const [a, b] = [median(ns.old), median(ns.new)];
  console.log(
    `extents: a tracker's ticks with incremental persistence, ${perTick} records a tick: before ${a.toFixed(0)} ns per record, ` +
      `now ${b.toFixed(0)} ns, ratio ${(b / a).toFixed(2)} [${records} records, median of ${rounds}, alternated, CPU time]`,
  );
}

const gc = findGc();
benchTicks(2_000_000, 100_000, 7);
benchFold(65_536, 21);
benchMemory(1_000_000, gc);
benchIngest(10_000_000, 4096);
