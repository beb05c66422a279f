// A sync written in place (no journal: a tail too small for one) marks the
// DPSR drive's label "partial" before its first in-place write, whatever
// its passes held: the label never names a whole image the drive no longer
// holds. Killed (strace's syscall injection) at each of its writes to the
// drive, the label is checked against the drive's content.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DPSR_BIN, Fixture, freshCliFixture, runDpsr, sha256Of } from './helpers/fixture.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before.each(() => { ({ fx, env } = freshCliFixture()); });
test.after.each(() => fx.cleanup());

/** Runs dpsr killed at its Nth pwrite64 to `file`; true if it ran to its end first. */
function killedAtWrite(file: string, n: number, args: string[]): boolean {
  const r = spawnSync('strace', ['-f', '-qq', '-o', '/dev/null', '-P', file, '-e', 'trace=pwrite64',
    '-e', `inject=pwrite64:signal=SIGKILL:when=${n}`, process.execPath, DPSR_BIN, ...args], { env, encoding: 'utf8', timeout: 120_000 });
  if (r.status === 0) return true;
  assert.ok(r.signal === 'SIGKILL' || r.status === 137, `killed at write ${n}: status ${r.status} ${r.signal} ${r.stderr}`);
  return false;
}

function driveLabel(drive: string): { image: string; imageTimeMs: number | null } {
  const r = runDpsr(env, ['status', '--drive', drive, '--json']);
  assert.ok(r.stdout, r.stderr);
  return JSON.parse(r.stdout).label;
}

test('a sync in place whose passes were empty but whose frozen pass is not: killed at each drive write, the label never calls a mix whole', () => {
  const source = fx.loop(320);
  const drive = fx.loop(321); // a 512 KiB tail: a label, no journal
  const bytes = 320 << 20;
  fx.mkfs(source, 'xfs');
  let r = runDpsr(env, ['pair', source, drive, '--name', 'p', '--reserve', '512K']);
  assert.is(r.status, 0, r.stderr);
  const mnt = fx.mount(source);
  r = runDpsr(env, ['sync', 'p']);
  assert.is(r.status, 0, r.stderr);
  let kills = 0;
  for (let n = 1; n < 100; n++) {
    // Buffered: the file's blocks reach the disk when the freeze flushes them, so only the final pass holds them.
    fs.writeFileSync(path.join(mnt, `file-${n}`), Buffer.alloc(300_000, n));
    const before = driveLabel(drive);
    const imageBefore = sha256Of(drive, bytes);
    if (killedAtWrite(drive, n, ['sync', 'p'])) break;
    kills++;
    const after = driveLabel(drive);
    if (after.image === before.image && after.imageTimeMs === before.imageTimeMs) {
      assert.is(sha256Of(drive, bytes), imageBefore, `killed at drive write ${n}: the label still names the previous image, so the drive must hold it`);
    } else {
      assert.is.not(after.image, 'point-in-time', `killed at drive write ${n}: a new point in time before the sync ended`);
    }
    r = runDpsr(env, ['sync', 'p']);
    assert.is(r.status, 0, r.stderr);
  }
  assert.ok(kills >= 2, `killed at ${kills} drive writes`);
});

test.run();
