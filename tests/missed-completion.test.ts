// A completion the programs never saw (made on purpose by the test-only knob
// skip_every_n) costs about what it missed: the issue log places the count's
// shortfall at the writes issued and never seen completed, and only they are
// compared. When the log cannot tell (full), the fallback is today's. The log
// keeps a request's entry by its tag (issued_by_tag) or, for a tag beyond the
// disk's share, by its address (issued): both are tried here.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { ExtentSet } from '../src/base/extents.js';
import { native } from '../src/base/native.js';
import { type RangeState, Tracker } from '../src/kernel/tracker.js';
import type { KernelTracking } from '../src/kernel/tracking.js';
import { Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsrOk, sha256Of } from './helpers/fixture.js';

const MiB = 1 << 20;
let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

/** `count` separate 4 KiB direct writes of random data, scattered over a device of `sizeMiB`, from one process. */
function scatteredWrites(dev: string, sizeMiB: number, count: number): ExtentSet {
  const blocks = sizeMiB * 256;
  const written = new ExtentSet();
  const fd = fs.openSync(dev, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  const buf = native().alignedBuffer(4096, 4096);
  try {
    for (let i = 0; i < count; i++) {
      crypto.randomFillSync(buf);
      const block = (i * 7919) % blocks; // 7919 is prime: all distinct
      fs.writeSync(fd, buf, 0, 4096, block * 4096);
      written.add(block * 8, block * 8 + 8);
    }
  } finally {
    fs.closeSync(fd);
  }
  return written;
}

async function tracked(dev: string, knobs: Parameters<Fixture['tracking']>[0]) {
  const kt = fx.tracking(knobs);
  const tracker = Tracker.start(kt, { ownerLockPath: fx.lockPath(), ringBytes: 1 << 20 });
  fx.defer('abandon tracker', () => tracker.abandon());
  const range = await tracker.track(resolveBlockDevice(dev), 'p');
  await tracker.cycle();
  return { kt, tracker, range };
}

/** The written extents no record saw. */
function unseen(written: ExtentSet, range: RangeState): ExtentSet {
  const missed = written.clone();
  missed.subtractSet(range.dirty);
  return missed;
}

test('a sync after lost completions compares only the writes they lost, and the DPSR drive equals the source', () => {
  const sizeMiB = 128;
  const { source, drive, bytes } = fx.pairDevices(sizeMiB);
  randomFill(source, sizeMiB);
  fx.tracking({ pinDir: env.DPSR_BPF_DIR, skipEveryN: 50 }); // the programs skip every 50th completion
  runDpsrOk(env, ['pair', source, drive, '--name', 'p']);
  runDpsrOk(env, ['sync', 'p', '--quiet-period', '0.2']);
  scatteredWrites(source, sizeMiB, 200); // 4 of them lose their completion
  const r = JSON.parse(runDpsrOk(env, ['sync', 'p', '--json', '--quiet-period', '0.2'])).syncs[0];
  console.log(`  200 scattered 4 KiB writes, 4 completions skipped: compared ${r.comparedBytes} bytes, repaired ${r.repairedBytes}`);
  const gap = r.gaps.find((g: { cause: string }) => g.cause === 'shortfall');
  assert.ok(gap, `a shortfall gap: ${JSON.stringify(r.gaps)}`);
  assert.match(gap.detail, /placed at 4 writes/);
  assert.is(r.repairedBytes, 4 * 4096, 'the 4 lost writes repaired');
  assert.ok(r.comparedBytes < MiB, `compared ${r.comparedBytes} bytes: about what was lost, not regions`);
  assert.is(sha256Of(drive, bytes), sha256Of(source));
});

/** How many entries a pinned hash map of the log holds now (bpftool, from outside). */
function entriesIn(kt: KernelTracking, map: 'issued' | 'issued_by_tag'): number {
  const dump = JSON.parse(execFileSync('bpftool', ['map', 'dump', 'pinned', path.join(kt.pinDir, map), '--json'], { encoding: 'utf8', maxBuffer: 64 << 20 })) as Array<{ value: number[] | string[] }>;
  if (map === 'issued') return dump.length;
  return dump.filter((e) => e.value.slice(16, 48).some((b) => Number(b) !== 0)).length; // a logged write: its dpsr_issued part
}

/** Sets the loop device's I/O scheduler (under one, a request's tag is its internal_tag), back to none at cleanup. */
function useScheduler(dev: string, scheduler: string): void {
  const file = `/sys/block/${path.basename(dev)}/queue/scheduler`;
  fs.writeFileSync(file, scheduler);
  fx.defer('scheduler back to none', () => fs.writeFileSync(file, 'none'));
}

const LOGS = [
  ['by tag', {}, 'none'],
  ['by tag, under mq-deadline (the scheduler\'s tags)', {}, 'mq-deadline'],
  ['by tag for the first 64 tags, by address beyond', { tagsPerDisk: 64 }, 'none'],
] as const;
for (const [how, knobs, scheduler] of LOGS) {
  test(`the shortfall is placed exactly at the lost writes, confirms the rest, and the next count is exact (log ${how})`, async () => {
    const dev = fx.loop(64);
    useScheduler(dev, scheduler);
    const { kt, tracker, range } = await tracked(dev, { skipEveryN: 5, ...knobs });
    const written = new ExtentSet();
    for (let i = 0; i < 20; i++) written.add(...ddDirect(dev, i * 2048, 8));
    const [byTag, byAddress] = [entriesIn(kt, 'issued_by_tag'), entriesIn(kt, 'issued')];
    console.log(`  log ${how}: 4 lost completions, ${byTag} logged by tag, ${byAddress} by address`);
    assert.is(byTag + byAddress, 4, 'the 4 lost writes logged');
    if (!('tagsPerDisk' in knobs)) assert.is(byAddress, 0, 'all by tag');
    await placedExactly(tracker, range, written);
  });
}

async function placedExactly(tracker: Tracker, range: RangeState, written: ExtentSet) {
  await tracker.cycle();
  const missed = unseen(written, range);
  assert.is(missed.totalSectors, 32, 'records alone miss 4 writes');
  const verdict = (await tracker.reconcile()).get(range);
  assert.equal(verdict, { kind: 'shortfall', sectors: 32 });
  assert.equal(range.suspect.toArray(), missed.toArray(), 'suspect: exactly the lost writes');
  assert.ok(range.unreconciled.isEmpty, 'the placed count confirms the other regions');
  assert.match(range.gaps.find((g) => g.cause === 'shortfall')!.detail, /placed at 4 writes issued and never seen completed \(32 sectors\)/);
  assert.is((await tracker.reconcile()).get(range)?.kind, 'exact');
}

test('a lost completion whose request is never issued again is placed from the log of writes in flight', async () => {
  const dev = fx.loop(64);
  const { kt, tracker, range } = await tracked(dev, { skipEveryN: 1 }); // every completion skipped
  const [s, e] = ddDirect(dev, 40_000, 16); // the last write: its request stays logged as issued
  const log = kt.issueLog()!;
  assert.ok(log.issued.some((w) => w.startSector === s && w.endSector === e), 'logged at issue, never completed');
  const verdict = (await tracker.reconcile()).get(range);
  assert.equal(verdict, { kind: 'shortfall', sectors: 16 });
  assert.equal(range.suspect.toArray(), [[s, e]]);
});

test('a full issue log falls back to the regions written since the last exact count', async () => {
  const dev = fx.loop(64);
  const { kt, tracker, range } = await tracked(dev, { skipEveryN: 1, issuedEntries: 2, missedEntries: 2, tagsPerDisk: 0 }); // the hash alone
  const written = new ExtentSet();
  for (let i = 0; i < 8; i++) written.add(...ddDirect(dev, i * 4096, 8));
  assert.ok(kt.issueLog()!.full > 0, 'the log overflowed');
  await tracker.reconcile();
  const gap = range.gaps.find((g) => g.cause === 'shortfall')!;
  assert.match(gap.detail, /the issue log was full/);
  const uncovered = written.clone();
  uncovered.subtractSet(range.suspect);
  assert.ok(uncovered.isEmpty, 'every lost write suspect');
  assert.ok(range.suspect.totalSectors >= 8 * 128, 'whole regions: the log could not place them');
});

test('an issue the kernel skipped (its recursion guard) since the last count makes a shortfall\'s whole range suspect', async () => {
  const dev = fx.loop(64);
  const { kt, tracker, range } = await tracked(dev, { skipEveryN: 5 });
  const linkIssue = path.join(kt.pinDir, 'link_issue');
  const bpftool = JSON.parse(execFileSync('bpftool', ['link', 'show', 'pinned', linkIssue, '--json'], { encoding: 'utf8' })) as { prog_id: number };
  const prog = JSON.parse(execFileSync('bpftool', ['prog', 'show', 'id', String(bpftool.prog_id), '--json'], { encoding: 'utf8' })) as { recursion_misses?: number };
  const misses = kt.recursionMisses();
  assert.is(misses.issue, prog.recursion_misses ?? 0, 'read from bpf_prog_info, as bpftool does');
  assert.is(range.baseline.issueSkipped, misses.issue, 'the baseline keeps the count');
  // A recursion miss cannot be made on demand: the count the kernel would give is stood in for.
  kt.recursionMisses = () => ({ ...misses, issue: misses.issue + 1 });
  for (let i = 0; i < 10; i++) ddDirect(dev, i * 2048, 8); // 2 completions lost, both logged
  await tracker.cycle();
  const verdict = (await tracker.reconcile()).get(range);
  assert.equal(verdict, { kind: 'shortfall', sectors: 16 });
  assert.equal(range.suspect.toArray(), [[0, 64 * 2048]], 'the whole range: the skipped issue\'s write may be in no log, bit or record');
  assert.match(range.gaps.find((g) => g.cause === 'shortfall')!.detail, /the kernel skipped the issue program/);
  assert.is(range.baseline.issueSkipped, misses.issue + 1, 'judged: the next shortfall is placed again');
});

/** A store that keeps a copy of the last saved state, as the state database would. */
function memoryStore() {
  const saved = new Map<string, Omit<RangeState, 'slot'>>();
  return {
    saved,
    persist: async (ranges: readonly RangeState[]) => {
      for (const { slot: _slot, ...r } of ranges) {
        saved.set(r.id, { ...r, dirty: r.dirty.clone(), suspect: r.suspect.clone(), discarded: r.discarded.clone(),
          unreconciled: r.unreconciled.clone(), baseline: structuredClone(r.baseline), gaps: [...r.gaps] });
      }
    },
  };
}

test('an owner killed after placing a shortfall, before saving it, leaves the log to the next owner: no placement lost', async () => {
  const dev = fx.loop(64);
  const kt = fx.tracking({ skipEveryN: 5 });
  const lock = fx.lockPath();
  const store = memoryStore();
  const first = Tracker.start(kt, { ownerLockPath: lock, ringBytes: 1 << 20, store });
  fx.defer('abandon first', () => first.abandon());
  await first.track(resolveBlockDevice(dev), 'p');
  await first.cycle();
  const written = new ExtentSet();
  for (let i = 0; i < 20; i++) written.add(...ddDirect(dev, i * 2048, 8));
  const { distrusted } = await first.judge(); // placed in memory only
  assert.is(distrusted.length, 1);
  first.abandon(); // killed: nothing saved, nothing released

  const next = Tracker.start(kt, { ownerLockPath: lock, ringBytes: 1 << 20, store });
  fx.defer('abandon next', () => next.abandon());
  const range = await next.track(resolveBlockDevice(dev), 'p', store.saved.get('p'));
  await next.cycle();
  const missed = unseen(written, range);
  assert.is((await next.reconcile()).get(range)?.kind, 'shortfall');
  assert.equal(range.suspect.toArray(), missed.toArray(), 'placed again from the log');
  await next.stop();
  assert.equal(store.saved.get('p')!.suspect.toArray(), missed.toArray(), 'saved');
  assert.is(kt.issueLog()!.missed.filter((w) => w.dev === range.diskDev).length, 0, 'the log forgot them only once saved');
});

test.run();
