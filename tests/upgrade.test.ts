// An upgrade to a dpsr whose maps changed shape (a new pin version beside
// the old one): the history the old programs hold is taken over, nothing is
// compared, the old programs are detached; a version this dpsr cannot read
// is a gap, compared in full.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { Fixture, ddDirect, runDpsr, sha256Of, freshCliFixture, randomFill } from './helpers/fixture.js';
import { native } from '../src/native.js';

const MiB = 1 << 20;
let fx: Fixture;
let env: NodeJS.ProcessEnv;
let root: string;
test.before.each(() => {
  ({ fx, env } = freshCliFixture());
  root = env.DPSR_BPF_DIR!;
  fx.defer('detach versions', () => {
    for (const v of fs.existsSync(root) ? fs.readdirSync(root) : []) native().detach(path.join(root, v));
  });
});
test.after.each(() => fx.cleanup());

const as = (version: string, ...args: string[]) => runDpsr({ ...env, DPSR_BPF_DIR: path.join(root, version) }, args, 60_000);

function syncedPairUnder(version: string) {
  const { source, drive } = fx.pairDevices(32);
  randomFill(source, 32);
  for (const args of [['pair', source, drive, '--name', 'p'], ['sync', 'p', '--quiet-period', '0.2']]) {
    const r = as(version, ...args);
    assert.is(r.status, 0, r.stderr);
  }
  return { source, drive };
}

test('v1 -> v2: the old programs\' history is inherited, nothing compared, the old programs detached', () => {
  const { source, drive } = syncedPairUnder('v1');
  for (let i = 0; i < 5; i++) ddDirect(source, 2048 + i * 1024, 8); // seen only by v1's programs
  const r = as('v2', 'sync', 'p', '--json', '--quiet-period', '0.2');
  assert.is(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout).syncs[0];
  assert.is(report.comparedBytes, 0, 'no compare pass');
  assert.is(report.copiedBytes, 5 * 4096, 'exactly the writes the old programs saw');
  assert.not.ok(report.gaps.some((g: { cause: string }) => g.cause === 'unknown-history'), 'no gap');
  assert.not.ok(fs.existsSync(path.join(root, 'v1')), 'v1 detached');
  assert.ok(fs.existsSync(path.join(root, 'v2', 'link_complete')), 'v2 attached');
  assert.is(sha256Of(drive, 32 * MiB), sha256Of(source, 32 * MiB));
});

test('a version this dpsr cannot read (a downgrade): a gap, compared in full, then exact', () => {
  const { source, drive } = syncedPairUnder('v9');
  for (let i = 0; i < 3; i++) ddDirect(source, 4096 + i * 1024, 8);
  const st = as('v1', 'status', 'p', '--json');
  assert.is(st.status, 4, 'not usable until compared');
  const status = JSON.parse(st.stdout).pairs[0];
  assert.ok(status.gapsSinceSync.some((g: { cause: string }) => g.cause === 'unknown-history'), 'status shows the gap');
  assert.is(status.state, 'needs-compare');
  const r = as('v1', 'sync', 'p', '--json', '--quiet-period', '0.2');
  assert.is(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout).syncs[0];
  assert.is(report.comparedBytes, 32 * MiB, 'the whole source compared');
  assert.is(report.repairedBytes, 3 * 4096, 'only the differences written');
  assert.not.ok(fs.existsSync(path.join(root, 'v9')), 'v9 detached');
  assert.is(sha256Of(drive, 32 * MiB), sha256Of(source, 32 * MiB));
});

test.run();
