// Heavy random writes with fio's own I/O log as the judge: every range fio
// wrote is covered by the dirty set, or the shortfall was reported (and
// then its regions are dirty too). Fails only on silent loss.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { ExtentSet } from '../src/base/extents.js';
import { OWNER_RING } from '../src/kernel/kernel-abi.js';
import { Tracker } from '../src/kernel/tracker.js';
import { Fixture, sh, sweepStaleTestPins } from './helpers/fixture.js';

let fx: Fixture;
test.before(() => {
  sweepStaleTestPins();
  fx = new Fixture();
});
test.after(() => fx.cleanup());

function fio(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('fio', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => { err += d; });
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`fio: ${err}`))));
  });
}

/** fio iolog v3: "<time> <file> write <offset> <length>". */
function writesFromLog(file: string): ExtentSet {
  const set = new ExtentSet();
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    const at = f.indexOf('write');
    if (at < 0 || f.length < at + 3) continue;
    const offset = Number(f[at + 1]), length = Number(f[at + 2]);
    set.add(offset / 512, (offset + length) / 512);
  }
  return set;
}

test('fio 4k random writes at queue depth 32: covered, or the shortfall is reported', async () => {
  // tmpfs backing and buffered loop I/O: the fastest path, where the kernel
  // was seen to skip a program now and then.
  const img = path.join('/dev/shm', `dpsr-fio-${process.pid}.img`);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, 512 << 20);
  fx.defer(`rm ${img}`, () => fs.rmSync(img, { force: true }));
  const dev = sh('losetup', ['-f', '--show', '--direct-io=off', img]).trim();
  fx.defer(`losetup -d ${dev}`, () => sh('losetup', ['-d', dev]));

  const kt = fx.tracking();
  const tracker = Tracker.start(kt, { ownerLockPath: fx.lockPath(), ringBytes: 16 << 20 });
  fx.defer('abandon', () => tracker.abandon());
  const range = await tracker.track(resolveBlockDevice(dev), 'test');
  const log = path.join(fx.dir, 'fio.iolog');
  const cycles = setInterval(() => { void tracker.cycle(); }, 500); // as the daemon would
  try {
    await fio(['--name=load', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio',
      '--iodepth=32', '--time_based', '--runtime=8', '--randrepeat=0', `--write_iolog=${log}`]);
  } finally {
    clearInterval(cycles);
  }
  await tracker.cycle();
  const verdict = (await tracker.reconcile()).get(range)!;
  const written = writesFromLog(log);
  assert.ok(written.totalSectors > 100_000, `fio wrote ${written.totalSectors} sectors`);
  const uncovered = written.clone();
  uncovered.subtractSet(range.dirty);
  uncovered.subtractSet(range.suspect);
  const shortfalls = range.gaps.filter((g) => g.cause === 'shortfall');
  const rs = kt.ringStats(OWNER_RING);
  console.log(`  fio: ${written.totalSectors / 8} blocks, ${rs.records} records, ${rs.drops} drops, verdict ${verdict.kind}, ` +
    `${shortfalls.reduce((n, g) => n + (g.sectors ?? 0), 0)} sectors reported missed, ${uncovered.totalSectors} uncovered`);
  assert.ok(uncovered.isEmpty, `silent loss: ${uncovered.totalSectors} written sectors neither dirty nor suspect`);
  assert.ok(verdict.kind !== 'busy', 'the device was quiet after fio');
});

test.run();
