// Tracking outlives every process: pinned programs keep recording with no
// dpsr process running, and the next owner receives what happened meanwhile.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { ExtentSet } from '../src/base/extents.js';
import { Tracker } from '../src/kernel/tracker.js';
import { KernelTracking } from '../src/kernel/tracking.js';
import { Fixture, ddDirect, sweepStaleTestPins } from './helpers/fixture.js';

const child = path.resolve(path.dirname(fileURLToPath(import.meta.url)), 'helpers/owner-child.js');

let fx: Fixture;
test.before.each(() => {
  sweepStaleTestPins();
  fx = new Fixture();
});
test.after.each(() => fx.cleanup());

function runOwner(pinDir: string, lockPath: string, dev: string, how: 'stop' | 'crash') {
  const res = spawnSync(process.execPath, [child, pinDir, lockPath, dev, how], { encoding: 'utf8' });
  assert.is(res.status, 0, res.stderr);
  return JSON.parse(res.stdout) as { created: boolean; dirty: Array<[number, number]> };
}

async function successor(pinDir: string, lockPath: string, dev: string) {
  const kt = KernelTracking.open({ pinDir });
  fx.defer('close kt', () => kt.close());
  assert.not.ok(kt.created, 'reopened the pinned objects');
  const tracker = Tracker.start(kt, { ownerLockPath: lockPath, ringBytes: 1 << 20 });
  fx.defer('abandon', () => tracker.abandon());
  const range = await tracker.track(resolveBlockDevice(dev), 'test');
  await tracker.cycle();
  return { tracker, range };
}

test('after a clean exit, the next process receives the writes made in between, exactly', async () => {
  const dev = fx.loop(32);
  const pinDir = fx.pinDir();
  const lock = fx.lockPath();
  const first = runOwner(pinDir, lock, dev, 'stop');
  assert.ok(first.created);
  assert.equal(first.dirty, [[64, 72]]);
  const between = [ddDirect(dev, 1000, 8), ddDirect(dev, 50000, 16)];
  const { range } = await successor(pinDir, lock, dev);
  assert.equal(range.dirty.toArray(), between, 'records kept in the ring, nothing coarse');
  assert.is(range.gaps.length, 0);
});

test('after the owner dies (kill -9) what it read but had not persisted is read again: exact, no gap', async () => {
  const dev = fx.loop(32);
  const pinDir = fx.pinDir();
  const lock = fx.lockPath();
  runOwner(pinDir, lock, dev, 'crash');
  const between = [ddDirect(dev, 1000, 8), ddDirect(dev, 50000, 16)];
  const { range } = await successor(pinDir, lock, dev);
  // The dead owner had read [64, 72) after its last persist: it comes again, with what was written meanwhile.
  assert.equal(range.dirty.toArray(), ExtentSet.from([[64, 72], ...between]).toArray());
  assert.ok(range.suspect.isEmpty, 'no coarse regions');
  assert.is(range.gaps.length, 0);
});

test('a second owner is refused while the first holds the lock', async () => {
  const dev = fx.loop(32);
  const kt = fx.tracking();
  const lock = fx.lockPath();
  const t1 = Tracker.start(kt, { ownerLockPath: lock, ringBytes: 1 << 20 });
  fx.defer('abandon', () => t1.abandon());
  await t1.track(resolveBlockDevice(dev), 'test');
  try {
    Tracker.start(kt, { ownerLockPath: lock });
    assert.unreachable('the second owner must be refused');
  } catch (err) {
    assert.is((err as { code?: string }).code, 'EOWNED');
  }
});

test.run();
