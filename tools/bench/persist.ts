/**
 * What a tracker tick costs to persist when a range holds many scattered
 * dirty extents (issue 21): the delta a tick writes now against a whole
 * snapshot (what every tick wrote before), side by side in one run, on a
 * real LMDB state directory.
 *
 *   node dist/tools/bench/persist.js [--extents N] [--writes N] [--ticks N]
 *
 * Builds a range with N scattered 4 KiB dirty extents (default 1,000,000),
 * then alternates ticks: each adds --writes new scattered 4 KiB writes
 * (default 1000) and persists, once as a delta and once as a snapshot.
 * Prints the median and worst milliseconds of each, their ratio, the bytes
 * each wrote, and the process's RSS. See tools/bench/README.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ExtentSet } from '../../src/base/extents.js';
import { Store } from '../../src/state/store.js';
import type { RangeState } from '../../src/kernel/tracker.js';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const n = i < 0 ? fallback : Number(process.argv[i + 1]);
  if (!Number.isSafeInteger(n) || n <= 0) { console.error(`persist bench: --${name} needs a positive integer`); process.exit(2); }
  return n;
}
const extents = option('extents', 1_000_000);
const writes = option('writes', 1000);
const ticks = option('ticks', 10);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mib = (b: number) => (b / 2 ** 20).toFixed(1);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-bench-persist-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
const store = Store.open(dir);
const sectors = 2 ** 41; // 1 PiB of 512-byte sectors: room for scattered extents that never touch
const range: RangeState = {
  id: 'bench', slot: 0, device: '/dev/bench', disk: 'bench', diskDev: 0, startSector: 0, endSector: sectors,
  dirty: new ExtentSet(), suspect: new ExtentSet(), discarded: new ExtentSet(), unreconciled: new ExtentSet(),
  receivedSectors: 0, baseline: { offsetSectors: 0, exact: false }, gaps: [],
};
let seed = 1;
const rand = () => { // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
};
const scatter = (n: number) => { for (let i = 0; i < n; i++) { const s = Math.floor(rand() * (sectors / 8 - 1)) * 8; range.dirty.add(s, s + 8); } };
const dbBytes = () => fs.statSync(path.join(dir, 'state.mdb')).size;

scatter(extents);
console.log(`# ${range.dirty.count} dirty extents; ticks of ${writes} scattered 4 KiB writes; ${ticks} ticks each way, alternated`);
const t0 = performance.now();
await store.putPairAndRange({ name: 'bench' } as never, range);
console.log(`# first snapshot: ${(performance.now() - t0).toFixed(1)} ms`);

const delta: number[] = [];
const whole: number[] = [];
const empty: number[] = [];
for (let i = 0; i < ticks; i++) {
  let t = performance.now();
  await store.persist([range]); // nothing changed: the commit's own cost (LMDB's sync)
  empty.push(performance.now() - t);
  scatter(writes);
  t = performance.now();
  await store.persist([range]);
  delta.push(performance.now() - t);
  scatter(writes);
  t = performance.now();
  await store.putPairAndRange({ name: 'bench' } as never, range); // a whole snapshot, as every tick wrote before
  whole.push(performance.now() - t);
}
const rss = process.memoryUsage().rss;
await store.close();
console.log('\n| tick persist | median ms | worst ms |');
console.log('|---|---|---|');
console.log(`| delta (now) | ${median(delta).toFixed(1)} | ${Math.max(...delta).toFixed(1)} |`);
console.log(`| whole snapshot (before) | ${median(whole).toFixed(1)} | ${Math.max(...whole).toFixed(1)} |`);
console.log(`| nothing changed (the commit alone) | ${median(empty).toFixed(1)} | ${Math.max(...empty).toFixed(1)} |`);
console.log(`\ndelta / snapshot, medians: ${(median(delta) / median(whole)).toFixed(3)}x; goal: a tick's persist < 5 ms: ${median(delta) < 5 ? 'met' : 'MISSED'}; beyond the commit: ${(median(delta) - median(empty)).toFixed(1)} ms`);
console.log(`state.mdb ${mib(dbBytes())} MiB; this process's RSS ${mib(rss)} MiB (node alone is about 40 MiB here)`);
