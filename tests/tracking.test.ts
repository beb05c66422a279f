// The real programs on real loop devices: what is written is what is seen.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { ExtentSet } from '../src/base/extents.js';
import { OWNER_RING } from '../src/kernel/kernel-abi.js';
import { Tracker } from '../src/kernel/tracker.js';
import { Fixture, ddDirect, scatteredDirectWrites, sh, sweepStaleTestPins } from './helpers/fixture.js';

let fx: Fixture;
test.before.each(() => {
  sweepStaleTestPins();
  fx = new Fixture();
});
test.after.each(() => fx.cleanup());

async function startTracker(devPath: string, opts: { skipEveryN?: number; ringBytes?: number } = {}) {
  const kt = fx.tracking({ skipEveryN: opts.skipEveryN });
  const tracker = Tracker.start(kt, { ownerLockPath: fx.lockPath(), ringBytes: opts.ringBytes ?? 1 << 20 });
  fx.defer('abandon tracker', () => tracker.abandon());
  const range = await tracker.track(resolveBlockDevice(devPath), 'test');
  return { kt, tracker, range };
}

const set = (extents: Array<[number, number]>) => ExtentSet.from(extents);

test('dd oflag=direct at known offsets yields exactly those extents', async () => {
  const dev = fx.loop(64);
  const { tracker, range } = await startTracker(dev);
  const written = [ddDirect(dev, 0, 8), ddDirect(dev, 100, 3), ddDirect(dev, 4096, 2048), ddDirect(dev, 131000, 72)];
  await tracker.cycle();
  assert.equal(range.dirty.toArray(), set(written).toArray());
  assert.is(range.receivedSectors, 8 + 3 + 2048 + 72);
  const verdicts = await tracker.reconcile();
  assert.is(verdicts.get(range)?.kind, 'exact');
  assert.is(range.gaps.length, 0);
});

test('a buffered write plus sync is covered', async () => {
  const dev = fx.loop(64, { directIo: false });
  const { tracker, range } = await startTracker(dev);
  sh('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=4096', 'seek=300', 'count=10', 'conv=notrunc', 'status=none']);
  sh('sync', []);
  await tracker.cycle();
  assert.ok(range.dirty.covers(2400, 2480), `dirty ${JSON.stringify(range.dirty.toArray())}`);
});

test('a file written on a mounted ext4 is covered, block for block', async () => {
  const dev = fx.loop(128);
  fx.mkfs(dev, 'ext4');
  const { tracker, range } = await startTracker(dev);
  const mnt = fx.mount(dev);
  const file = `${mnt}/data.bin`;
  fs.writeFileSync(file, Buffer.alloc(3 * 1024 * 1024, 7));
  const fd = fs.openSync(file, 'r+');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  await tracker.cycle();
  // filefrag -e: physical extents in file-system blocks (1 KiB on a small ext4).
  const out = sh('filefrag', ['-e', file]);
  const blockSectors = Number(out.match(/blocks of (\d+) bytes/)![1]) / 512;
  const extents = out.split('\n')
    .map((l) => l.match(/^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):/)).filter((m) => m !== null);
  assert.ok(extents.length > 0);
  for (const m of extents) {
    const start = Number(m![1]) * blockSectors, end = (Number(m![2]) + 1) * blockSectors;
    assert.ok(range.dirty.covers(start, end), `file extent [${start}, ${end}) not covered`);
  }
});

test('a partition is tracked by disk and range; a sibling partition is not reported', async () => {
  const { parts } = fx.partitionedLoop(64, [16, 16]);
  const p1 = resolveBlockDevice(parts[0]);
  assert.ok(p1.isPartition);
  assert.ok(p1.startSector > 0);
  const { tracker, range } = await startTracker(parts[0]);
  assert.is(range.startSector, p1.startSector);
  const written = [ddDirect(parts[0], 10, 8), ddDirect(parts[0], 20000, 16)];
  ddDirect(parts[1], 10, 8);
  ddDirect(parts[1], 500, 64);
  await tracker.cycle();
  assert.equal(range.dirty.toArray(), set(written).toArray(), 'partition-relative extents, sibling excluded');
  assert.is(range.receivedSectors, 24);
  assert.is((await tracker.reconcile()).get(range)?.kind, 'exact', 'whole-disk counts include the sibling');
});

// Loop queues take one discard segment: this is the one-range path; the
// per-bio walk of merged multi-range discards needs NVMe (guest-discard.test).
test('discards are recorded as discarded at their ranges and counted as the kernel counts them', async () => {
  const dev = fx.loop(64);
  const { tracker, range } = await startTracker(dev);
  const discarded: Array<[number, number]> = [[800, 824], [20480, 20480 + 16384]];
  for (const [s, e] of discarded) sh('blkdiscard', ['-o', String(s * 512), '-l', String((e - s) * 512), dev]);
  await tracker.cycle();
  assert.equal(range.discarded.toArray(), set(discarded).toArray());
  assert.ok(range.dirty.isEmpty && range.suspect.isEmpty);
  assert.is((await tracker.reconcile()).get(range)?.kind, 'exact');
});

test('the last write\'s time follows each write and stays when the disk is idle (the clock read once per tick and CPU)', async () => {
  const dev = fx.loop(64);
  const { kt, range } = await startTracker(dev);
  assert.is(kt.lastWriteMs(range.slot), 0, 'no write yet');
  const writeAt = () => {
    const before = Date.now();
    ddDirect(dev, 0, 8);
    const after = Date.now();
    const at = kt.lastWriteMs(range.slot)!;
    assert.ok(at >= before - 2 && at <= after + 12, `a write between ${before} and ${after} said at ${at}`); // clocks apart by a ms at most; a tick of slack
    return at;
  };
  const first = writeAt();
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(Math.abs(kt.lastWriteMs(range.slot)! - first) < 2, 'idle: unchanged (but for the wall clock against the monotonic one)');
  for (let i = 0; i < 5; i++) {
    const next = writeAt();
    assert.ok(next >= first + 300 - 2, 'a write ticks later gets a later time: the stamp is read again');
    await new Promise((r) => setTimeout(r, 30));
  }
});

test('an untracked device yields nothing', async () => {
  const tracked = fx.loop(32);
  const other = fx.loop(32);
  const { tracker, range, kt } = await startTracker(tracked);
  ddDirect(other, 0, 64);
  const report = await tracker.cycle();
  assert.is(report.records, 0);
  assert.ok(range.dirty.isEmpty);
  assert.is(kt.ringStats(OWNER_RING).records, 0);
});

test('a tiny ring under a burst counts drops, and bitmaps plus records cover every write', async () => {
  const dev = fx.loop(256);
  // 4 KiB ring: ~170 records. The burst is 2,000 separate direct writes.
  const { tracker, range, kt } = await startTracker(dev, { ringBytes: 4096 });
  const written = scatteredDirectWrites(dev, 2000);
  const report = await tracker.cycle();
  assert.ok(report.drops > 0, 'the ring overflowed');
  assert.ok(kt.ringStats(OWNER_RING).drops > 0);
  assert.ok(range.gaps.some((g) => g.cause === 'ring-drops'));
  const missing = written.clone();
  missing.subtractSet(range.dirty);
  missing.subtractSet(range.suspect);
  assert.ok(missing.isEmpty, `uncovered: ${JSON.stringify(missing.toArray().slice(0, 5))}`);
});

test('the programs skipping every Nth completion: the shortfall is reported and localized', async () => {
  const dev = fx.loop(64);
  const { tracker, range } = await startTracker(dev, { skipEveryN: 5 });
  const written = new ExtentSet();
  for (let i = 0; i < 20; i++) {
    const [s, e] = ddDirect(dev, i * 2048, 8);
    written.add(s, e);
  }
  await tracker.cycle();
  assert.ok(range.receivedSectors < 160, 'some completions were skipped');
  const missed = written.clone();
  missed.subtractSet(range.dirty);
  assert.ok(!missed.isEmpty, 'records alone miss writes');
  const verdict = (await tracker.reconcile()).get(range);
  assert.equal(verdict, { kind: 'shortfall', sectors: 160 - range.receivedSectors });
  const gap = range.gaps.find((g) => g.cause === 'shortfall');
  assert.ok(gap, 'reported as a gap');
  assert.is(gap!.sectors, 32);
  const uncovered = written.clone();
  uncovered.subtractSet(range.dirty);
  uncovered.subtractSet(range.suspect);
  assert.ok(uncovered.isEmpty, 'the suspect regions cover every skipped write');
  assert.is((await tracker.reconcile()).get(range)?.kind, 'exact', 'the baseline absorbed the reported shortfall');
});

test.run();
