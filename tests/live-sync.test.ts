// Syncs of mounted, busy file systems: converging passes, then a final pass
// under a freeze. Judged by fsck -n / xfs_repair -n on the DPSR drive and by
// files fsynced before the sync, read back from the drive.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Fixture, runDpsrOk, sh, eachTestFreshCli } from './helpers/fixture.js';


let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsrOk(env, args);


function fsyncedFiles(mnt: string, n: number): Map<string, string> {
  const hashes = new Map<string, string>();
  for (let i = 0; i < n; i++) {
    const name = `keep${i}.bin`;
    const data = crypto.randomBytes(50_000 + i * 1000);
    const fd = fs.openSync(path.join(mnt, name), 'w');
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    hashes.set(name, crypto.createHash('sha256').update(data).digest('hex'));
  }
  const dfd = fs.openSync(mnt, 'r');
  fs.fsyncSync(dfd);
  fs.closeSync(dfd);
  return hashes;
}

async function liveSync(type: 'ext4' | 'xfs', stateOnSource: boolean): Promise<void> {
  const mib = type === 'xfs' ? 320 : 128;
  const source = fx.loop(mib);
  // A journal for every pass under the writer however slow the machine: each of the 5 passes and
  // the final one may journal up to the whole source.
  const drive = fx.loop(7 * mib + 64);
  fx.mkfs(source, type);
  const mnt = fx.mount(source);
  if (stateOnSource) env.DPSR_STATE_DIR = path.join(mnt, 'var-lib-dpsr'); // frozen with the source
  dpsr('pair', source, drive, '--name', 'live');
  const stop = fx.startWriter(mnt, 20, 8);
  const kept = fsyncedFiles(mnt, 8);
  const report = JSON.parse(dpsr('sync', 'live', '--json')).syncs[0];
  await stop();
  assert.is(report.image, 'point-in-time', JSON.stringify(report));
  assert.ok(report.freezeMs !== null && report.freezeMs < 5000, `froze ${report.freezeMs} ms`);
  assert.ok(report.passBytes.length >= 2, 'passes, then the frozen final pass');
  // The drive is checked while the source stays mounted: nothing on it may depend on the source.
  let view: string;
  if (type === 'ext4') {
    sh('fsck.ext4', ['-n', '-f', drive]);
    view = fx.mount(drive, ['-o', 'ro,noload']);
  } else {
    // A frozen xfs keeps its log: booting the copy replays it. Do that on a
    // scratch copy (the DPSR drive stays untouched), then judge.
    const scratch = fx.loop(mib);
    sh('dd', [`if=${drive}`, `of=${scratch}`, 'bs=4M', `count=${mib / 4}`, 'iflag=direct', 'oflag=direct', 'status=none']);
    const replay = fx.mount(scratch, ['-o', 'nouuid']);
    fx.unmount(replay);
    sh('xfs_repair', ['-n', scratch]);
    view = fx.mount(scratch, ['-o', 'ro,nouuid']);
  }
  for (const [name, hash] of kept) {
    const got = crypto.createHash('sha256').update(fs.readFileSync(path.join(view, name))).digest('hex');
    assert.is(got, hash, `${name} fsynced before the sync is exact on the DPSR drive`);
  }
  fx.unmount(view);
  const probe = spawnSync('sh', ['-c', `echo ok > ${mnt}/after && sync -f ${mnt}`], { timeout: 5000 });
  assert.is(probe.status, 0, 'the source is writable again: nothing left frozen');
}

test('ext4 under a running writer: a point-in-time image, fsck -n clean, fsynced files exact', async () => {
  await liveSync('ext4', false);
});

test('xfs under a running writer: a point-in-time image, xfs_repair -n clean, fsynced files exact', async () => {
  await liveSync('xfs', false);
});

test('the state directory on the frozen source: nothing is written to it while frozen', async () => {
  await liveSync('ext4', true);
});

test('an fstrim is journaled as data-less discards, not copied', () => {
  const source = fx.loop(256);
  const drive = fx.loop(256 + 192); // a journal for the 100 MiB file's sync
  fx.mkfs(source, 'ext4');
  dpsr('pair', source, drive, '--name', 't');
  const mnt = fx.mount(source);
  sh('dd', ['if=/dev/urandom', `of=${mnt}/big`, 'bs=1M', 'count=100', 'conv=fsync', 'status=none']);
  JSON.parse(dpsr('sync', 't', '--json'));
  fs.rmSync(path.join(mnt, 'big'));
  sh('fstrim', [mnt]);
  const r = JSON.parse(dpsr('sync', 't', '--json')).syncs[0];
  assert.ok(r.journaled, 'through the journal');
  // ext4 writes its metadata and its own journal after the rm: those are copied, the 100 MiB are not.
  assert.ok(r.copiedBytes < 32 * 2 ** 20, `copied ${r.copiedBytes} bytes after trimming a 100 MiB file`);
  sh('umount', [mnt]);
  JSON.parse(dpsr('sync', 't', '--json'));
  sh('cmp', ['-n', String(256 * 2 ** 20), source, drive]);
});

test.run();
