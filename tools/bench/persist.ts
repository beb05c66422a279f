/**
 * What a tracker tick costs to persist when a range holds many scattered
 * dirty extents (issue 21), on real LMDB state directories:
 *
 *   node dist/tools/bench/persist.js [--extents N] [--writes N] [--ticks N] [--only old|new]
 *
 * Two ranges of N scattered 4 KiB dirty extents (default 1,000,000), one in
 * the extent set as it was before (tools/bench/flat-extent-set.ts: every
 * add also added to the set of changed windows) and one in ExtentSet, each
 * in its own state directory. Ticks alternate between them: each adds
 * --writes new scattered writes (default 1000) and persists as the tracker
 * does (a delta), and a tick with nothing changed gives the commit's own
 * cost. Per tick: the wall time (what the tracker waits for: the durable
 * commit included) and the process's CPU time (the main thread and LMDB's
 * write thread; the commit's fsync waits are not CPU). Then whole snapshots,
 * what every tick wrote before deltas. With --only, one range alone, so that
 * the RSS is the one range's. See tools/bench/README.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ExtentSet } from '../../src/base/extents.js';
import { Store } from '../../src/state/store.js';
import type { RangeState } from '../../src/kernel/tracker.js';
import { FlatExtentSet } from './flat-extent-set.js';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const n = i < 0 ? fallback : Number(process.argv[i + 1]);
  if (!Number.isSafeInteger(n) || n <= 0) { console.error(`persist bench: --${name} needs a positive integer`); process.exit(2); }
  return n;
}
const extents = option('extents', 1_000_000);
const writes = option('writes', 1000);
const ticks = option('ticks', 10);
const onlyAt = process.argv.indexOf('--only');
const only = onlyAt < 0 ? null : process.argv[onlyAt + 1];
if (only !== null && only !== 'old' && only !== 'new') { console.error('persist bench: --only needs old or new'); process.exit(2); }
const GOAL_MS = 5;

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const mib = (b: number) => (b / 2 ** 20).toFixed(1);
const statusMiB = (key: string) => (Number(fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp(`${key}:\\s+(\\d+)`))![1]) / 1024).toFixed(1);
const cpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };

const sectors = 2 ** 41; // 1 PiB of 512-byte sectors: room for scattered extents that never touch
type Way = 'old' | 'new';
const ways: Way[] = only ? [only as Way] : ['old', 'new'];

function newRange(way: Way): RangeState {
  const make = () => (way === 'old' ? new FlatExtentSet() : new ExtentSet()) as ExtentSet; // the same interface the store uses
  return {
    id: 'bench', slot: 0, device: '/dev/bench', disk: 'bench', diskDev: 0, startSector: 0, endSector: sectors,
    dirty: make(), suspect: make(), discarded: make(), unreconciled: make(),
    receivedSectors: 0, baseline: { offsetSectors: 0, exact: false }, gaps: [],
  };
}

let seed = 1;
const rand = () => { // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
};
const scatter = (range: RangeState, n: number) => {
  for (let i = 0; i < n; i++) { const s = Math.floor(rand() * (sectors / 8 - 1)) * 8; range.dirty.add(s, s + 8); }
};

const dirs: string[] = [];
process.on('exit', () => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });
const runs = new Map<Way, { store: Store; range: RangeState }>();
for (const way of ways) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `dpsr-bench-persist-${way}-`));
  dirs.push(dir);
  const range = newRange(way);
  scatter(range, extents);
  const store = Store.open(dir);
  await store.putPairAndRange({ name: 'bench' } as never, range); // the snapshot deltas go over
  runs.set(way, { store, range });
}
console.log(`# ${runs.get(ways[0])!.range.dirty.count} dirty extents per range; ticks of ${writes} scattered 4 KiB writes; ${ticks} ticks each, ${ways.join(' and ')} alternated`);

interface Tick { wallMs: number; cpuMs: number }
const timed = async (body: () => Promise<void>): Promise<Tick> => {
  const c = cpuMs();
  const t = performance.now();
  await body();
  return { wallMs: performance.now() - t, cpuMs: cpuMs() - c };
};
const delta = new Map<Way, Tick[]>(ways.map((w) => [w, []]));
const empty = new Map<Way, Tick[]>(ways.map((w) => [w, []]));
for (let i = 0; i < ticks; i++) {
  for (const way of i % 2 ? [...ways].reverse() : ways) {
    const { store, range } = runs.get(way)!;
    empty.get(way)!.push(await timed(() => store.persist([range]))); // nothing changed: the commit's own cost
    scatter(range, writes);
    delta.get(way)!.push(await timed(() => store.persist([range])));
  }
}
const rssAnon = statusMiB('RssAnon');
const rssFile = statusMiB('RssFile');
const rss = statusMiB('VmRSS');
const whole = new Map<Way, Tick[]>(ways.map((w) => [w, []]));
for (let i = 0; i < Math.min(ticks, 5); i++) {
  for (const way of ways) {
    const { store, range } = runs.get(way)!;
    scatter(range, writes);
    whole.get(way)!.push(await timed(() => store.putPairAndRange({ name: 'bench' } as never, range)));
  }
}
for (const { store } of runs.values()) await store.close();

const cell = (xs: Tick[], k: keyof Tick) => `${median(xs.map((x) => x[k])).toFixed(1)} (worst ${Math.max(...xs.map((x) => x[k])).toFixed(1)})`;
console.log('\n| tick persist, median ms | wall | CPU |');
console.log('|---|---|---|');
for (const way of ways) {
  console.log(`| ${way}: a delta (what a tick writes) | ${cell(delta.get(way)!, 'wallMs')} | ${cell(delta.get(way)!, 'cpuMs')} |`);
  console.log(`| ${way}: nothing changed (the commit alone) | ${cell(empty.get(way)!, 'wallMs')} | ${cell(empty.get(way)!, 'cpuMs')} |`);
  console.log(`| ${way}: a whole snapshot (before deltas) | ${cell(whole.get(way)!, 'wallMs')} | ${cell(whole.get(way)!, 'cpuMs')} |`);
}
console.log('');
for (const way of ways) {
  const d = delta.get(way)!;
  const wall = median(d.map((x) => x.wallMs));
  const cpu = median(d.map((x) => x.cpuMs));
  const beyond = wall - median(empty.get(way)!.map((x) => x.wallMs));
  console.log(`${way}: goal, a tick's persist < ${GOAL_MS} ms: wall ${wall.toFixed(1)} ms ${wall < GOAL_MS ? 'met' : 'MISSED'}, CPU ${cpu.toFixed(1)} ms ${cpu < GOAL_MS ? 'met' : 'MISSED'}; wall beyond the commit alone ${beyond.toFixed(1)} ms`);
}
if (ways.length === 2) {
  const ratio = (k: keyof Tick) => (median(delta.get('new')!.map((x) => x[k])) / median(delta.get('old')!.map((x) => x[k]))).toFixed(2);
  console.log(`new / old, a delta tick's medians: wall ${ratio('wallMs')}x, CPU ${ratio('cpuMs')}x`);
}
console.log(`after the delta ticks: RSS ${rss} MiB (own memory ${rssAnon} MiB, goal < 64 with one range: --only new; mapped files ${rssFile} MiB: node's binary and state.mdb)`);
for (const way of ways) console.log(`${way}: state.mdb ${mib(fs.statSync(path.join(dirs[ways.indexOf(way)], 'state.mdb')).size)} MiB at the end; the dirty set's arrays ${mib(runs.get(way)!.range.dirty.allocatedBytes)} MiB`);
