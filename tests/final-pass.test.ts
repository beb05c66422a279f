// The final pass of a sync takes its cut out of the tracker while the
// source is frozen: if reading it fails, the cut goes back, and the next
// sync copies it. The source is a disk that fails reads of chosen byte
// ranges (tests/helpers/fault-disk.ts): those of a file's blocks, which
// reach the disk only when the freeze flushes them.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { Fixture, freshCliFixture, runDpsr, sha256Of, sh } from './helpers/fixture.js';
import { faultDisk } from './helpers/fault-disk.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before.each(() => { ({ fx, env } = freshCliFixture()); });
test.after.each(() => fx.cleanup());

/** The byte ranges on the device of a file's blocks (filefrag -v counts in file-system blocks). */
function fileExtentsBytes(file: string): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const text = sh('filefrag', ['-v', file]);
  const blockBytes = Number(text.match(/blocks of (\d+) bytes/)![1]);
  for (const line of text.split('\n')) {
    const m = line.match(/^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):/);
    if (m) out.push([Number(m[1]) * blockBytes, (Number(m[2]) + 1) * blockBytes]);
  }
  return out;
}

test('a final pass whose source read fails puts its cut back: the next sync copies it, the drive ends exact', () => {
  const source = faultDisk(fx, 64);
  const drive = fx.loop(128);
  const bytes = 64 << 20;
  fx.mkfs(source.dev, 'ext4');
  let r = runDpsr(env, ['pair', source.dev, drive, '--name', 'p']);
  assert.is(r.status, 0, r.stderr);
  // A long commit interval: nothing of the file reaches the disk before the freeze flushes it.
  const mnt = fx.mount(source.dev, ['-o', 'commit=300']);
  r = runDpsr(env, ['sync', 'p']);
  assert.is(r.status, 0, r.stderr);
  const file = path.join(mnt, 'late');
  sh('fallocate', ['-l', '1M', file]);
  const extents = fileExtentsBytes(file);
  assert.ok(extents.length > 0, 'the file has blocks');
  source.failReads(extents);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, Buffer.alloc(1 << 20, 0x5a), 0, 1 << 20, 0);
  fs.closeSync(fd);
  r = runDpsr(env, ['sync', 'p']);
  assert.is.not(r.status, 0, 'the sync fails');
  assert.match(r.stderr, /final pass: reading the source \/dev\/loop\d+ at byte \d+: EIO/);
  source.heal();
  r = runDpsr(env, ['sync', 'p']);
  assert.is(r.status, 0, r.stderr);
  fx.unmount(mnt);
  r = runDpsr(env, ['sync', 'p', '--quiet-period', '0.2']);
  assert.is(r.status, 0, r.stderr);
  assert.is(sha256Of(drive, bytes), sha256Of(source.dev, bytes), 'nothing the failed pass had cut was lost');
});

test.run();
