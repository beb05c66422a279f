// A ring record the reader cannot read (made on purpose by the test-only knob
// malformed_every_n) is never a silent loss: it is counted, reported as a gap,
// shown in status, and the regions of the epochs it can have come from are
// compared.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { ExtentSet } from '../src/base/extents.js';
import { Tracker } from '../src/kernel/tracker.js';
import { Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, sha256Of } from './helpers/fixture.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

test('malformed records: a gap, the lost writes suspect within their epochs\' regions, the count exact', async () => {
  const dev = fx.loop(256);
  const kt = fx.tracking({ malformedEveryN: 4 }); // every 4th record is too short to read
  const tracker = Tracker.start(kt, { ownerLockPath: fx.lockPath(), ringBytes: 1 << 20 });
  fx.defer('abandon tracker', () => tracker.abandon());
  const range = await tracker.track(resolveBlockDevice(dev), 'p');
  await tracker.cycle();
  const written = new ExtentSet();
  for (let i = 0; i < 8; i++) written.add(...ddDirect(dev, i * 16384, 8));
  await tracker.cycle();
  const lost = written.clone();
  lost.subtractSet(range.dirty);
  assert.is(lost.totalSectors, 16, 'two writes have no readable record');
  const gap = range.gaps.find((g) => g.cause === 'malformed-records');
  assert.ok(gap, 'reported as a gap');
  assert.is(gap!.records, 2);
  const uncovered = lost.clone();
  uncovered.subtractSet(range.suspect);
  assert.ok(uncovered.isEmpty, 'the lost writes are suspect');
  assert.ok(range.suspect.totalSectors <= 8 * 128, `bounded by the epochs' regions: ${range.suspect.totalSectors} sectors`);
  assert.is((await tracker.reconcile()).get(range)?.kind, 'exact', 'the programs counted every write: no shortfall hides it');
});

test('malformed records in status (gap, count, needs-compare), then a sync compares and the DPSR drive equals the source', () => {
  const { source, drive, bytes } = fx.pairDevices(64);
  randomFill(source, 64);
  fx.tracking({ pinDir: env.DPSR_BPF_DIR, malformedEveryN: 10 });
  runDpsrOk(env, ['pair', source, drive, '--name', 'p']);
  runDpsrOk(env, ['sync', 'p', '--quiet-period', '0.2']);
  for (let i = 0; i < 30; i++) ddDirect(source, i * 4096 + 8, 8); // 3 records malformed
  const st = runDpsr(env, ['status', 'p', '--json']);
  assert.is(st.status, 4, 'not usable until compared');
  const status = JSON.parse(st.stdout).pairs[0];
  assert.is(status.state, 'needs-compare');
  assert.is(status.malformedRecords, 3);
  assert.ok(status.gapsSinceSync.some((g: { cause: string }) => g.cause === 'malformed-records'), JSON.stringify(status.gapsSinceSync));
  const r = JSON.parse(runDpsrOk(env, ['sync', 'p', '--json', '--quiet-period', '0.2'])).syncs[0];
  assert.ok(r.comparedBytes > 0, 'compared');
  assert.ok(r.repairedBytes >= 3 * 4096, `the 3 writes without a readable record repaired: ${r.repairedBytes}`);
  assert.is(sha256Of(drive, bytes), sha256Of(source));
  const after = JSON.parse(runDpsrOk(env, ['status', 'p', '--json'])).pairs[0];
  assert.is(after.malformedRecords, 0, 'counted since the last sync');
});

test.run();
