// I/O errors (EIO) injected below a loop device (tests/helpers/fault-disk.ts)
// while dpsr reads the source, writes, flushes or reads the DPSR drive: one
// line naming the device, the operation and the byte offset, exit 1, the
// drive still a whole image (sha256), nothing recorded as copied, and the
// first sync after the fault clears makes an exact copy.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, statusOf, waitFor } from './helpers/daemon-child.js';
import { Fixture, ddDirect, freshCliFixture, runDpsr, runDpsrOk, sh, sha256Of } from './helpers/fixture.js';
import { type FaultDisk, type Faults, faultDisk, faultyPair } from './helpers/fault-disk.js';

const MiB = 1 << 20;
const SOURCE_MIB = 16;
const SOURCE_BYTES = SOURCE_MIB * MiB;
const DRIVE_MIB = SOURCE_MIB + 10; // the image and an 8 MiB tail

let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before.each(() => { ({ fx, env } = freshCliFixture()); });
test.after.each(() => fx.cleanup());

const dpsr = (...args: string[]) => runDpsr(env, args);
const ok = (...args: string[]) => runDpsrOk(env, args);
const sync = () => dpsr('sync', 'p', '--quiet-period', '0.2');

/** A pair, synced, whose source or drive fails on demand; the source then changed. */
function pairWithFaults(faulty: 'source' | 'drive'): { source: string; drive: string; disk: FaultDisk } {
  const p = faultyPair(fx, env, 'p', faulty, SOURCE_MIB);
  for (let i = 0; i < 8; i++) ddDirect(p.source, i * 4096 + 64, 64);
  return p;
}

interface Snapshot { image: string; generation: number; imageTime: string | null; usable: boolean; dirtyBytes: number; exit: number | null }

function snapshot(drive: string): Snapshot {
  const r = dpsr('status', 'p', '--json');
  const st = JSON.parse(r.stdout).pairs[0];
  return { image: sha256Of(drive, SOURCE_BYTES), generation: st.generation, imageTime: st.imageTime, usable: st.usable, dirtyBytes: st.dirtyBytes, exit: r.status };
}

/** The drive still holds the image `before` named, status says so (exit 0, usable), and what changed is still to copy. */
function keptImage(drive: string, before: Snapshot): void {
  const after = snapshot(drive);
  assert.is(after.image, before.image, 'the drive holds the old image');
  assert.is(after.generation, before.generation, 'no generation recorded');
  assert.is(after.imageTime, before.imageTime);
  assert.ok(after.usable && after.exit === 0, `status says the image is usable: ${JSON.stringify(after)}`);
  assert.ok(after.dirtyBytes >= before.dirtyBytes, `what changed is still to copy: ${after.dirtyBytes} bytes, were ${before.dirtyBytes}`);
  assert.is(dpsr('status', '--drive', drive).status, 0, 'the label names a whole image');
}

/** Runs `args` with `faults` on, and checks the failure: one line naming what failed, exit 1, nothing advanced; then heals. */
function failsWith(disk: FaultDisk, faults: Faults, args: string[], names: RegExp): string {
  disk.fail(faults);
  const r = dpsr(...args);
  disk.heal();
  console.log(`  ${JSON.stringify(faults)}: dpsr ${args[0]}: exit ${r.status}: ${r.stderr.trim()}`);
  assert.is(r.status, 1, `exit 1 for an I/O error: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.is(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0], names);
  assert.not.match(r.stderr, /\n\s+at /, 'no stack trace');
  return lines[0];
}

test('EIO writing the journal, or the label: the sync fails naming the drive, the write and its offset; the old image stays; the next sync is exact', () => {
  const { source, drive, disk } = pairWithFaults('drive');
  const labelStart = DRIVE_MIB * MiB - 8192;
  for (const [range, what] of [[[SOURCE_BYTES, labelStart], 'DPSR drive'], [[labelStart, DRIVE_MIB * MiB], 'DPSR drive label']] as const) {
    const before = snapshot(drive);
    failsWith(disk, { write: [[...range]] }, ['sync', 'p', '--quiet-period', '0.2'], new RegExp(`writing the ${what} ${drive} at byte \\d+`));
    keptImage(drive, before);
  }
  assert.is(sync().status, 0);
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source));
});

test('EIO writing the image in place after the commit: the sync fails; the committed transaction is applied by the next command; exact', () => {
  const { source, drive, disk } = pairWithFaults('drive');
  failsWith(disk, { write: [[0, SOURCE_BYTES]] }, ['sync', 'p', '--quiet-period', '0.2'], /writing the DPSR drive \/dev\/loop\d+ at byte \d+/);
  const st = dpsr('status', '--drive', drive);
  assert.is(st.status, 4, 'status --drive: a committed sync is not completely applied');
  assert.match(st.stdout, /run dpsr recover/);
  const after = snapshot(drive); // the owner applies the committed transaction from the drive
  assert.ok(after.usable && after.exit === 0, JSON.stringify(after));
  assert.is(after.image, sha256Of(source), 'the new image, applied');
  assert.is(sync().status, 0);
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source));
});

test('a committed transaction damaged after a failed apply (its data, a descriptor, a descriptor block\'s seq, its head): status --drive and recover say the image is not usable and write nothing; status agrees; the next sync is exact', () => {
  // The journal starts where the image ends: its head, the data area, then the descriptor blocks.
  const spots: Array<[string, (dataBytes: number) => number]> = [
    ['its data', () => 4096 + 100],
    ['a descriptor\'s target sector', (dataBytes) => 4096 + Math.ceil(dataBytes / 4096) * 4096 + 64],
    ['a descriptor block\'s seq', (dataBytes) => 4096 + Math.ceil(dataBytes / 4096) * 4096 + 16],
    // The head itself: then nothing on the drive says whether it was committed, so it may have been.
    ['its head\'s seq', () => 16],
    ['its head\'s magic', () => 0],
  ];
  for (const [what, at] of spots) {
    const { source, drive, disk } = pairWithFaults('drive');
    failsWith(disk, { write: [[0, SOURCE_BYTES]] }, ['sync', 'p', '--quiet-period', '0.2'], /writing the DPSR drive/);
    sh('blockdev', ['--setrw', drive]);
    const fd = fs.openSync(drive, 'r+');
    const head = Buffer.alloc(4096);
    fs.readSync(fd, head, 0, 4096, SOURCE_BYTES);
    fs.writeSync(fd, Buffer.from('rot'), 0, 3, SOURCE_BYTES + at(Number(head.readBigUInt64LE(48))));
    fs.closeSync(fd);
    sh('blockdev', ['--setro', drive]);
    const mixed = sha256Of(drive);
    for (const args of [['status', '--drive', drive], ['recover', drive]]) {
      const r = dpsr(...args);
      assert.is(r.status, 4, `${what}: ${args[0]}: exit 4: ${r.stderr}`);
      assert.match(r.stderr, /journal transaction \d+ of pair p (was committed, but its data|was pending, and its journal head) no longer verifies/);
      assert.is(r.stderr.trim().split('\n').length, 1);
    }
    assert.is(sha256Of(drive), mixed, `${what}: nothing written`);
    const st = dpsr('status', 'p', '--json');
    assert.is(st.status, 4, `${what}: the pair knows its image is a mix`);
    assert.is(JSON.parse(st.stdout).pairs[0].image, 'partial');
    assert.is(sync().status, 0);
    assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source));
    assert.is(dpsr('status', 'p').status, 0);
    ok('unpair', 'p');
  }
});

test('EIO flushing the drive: the sync fails naming the flush; the old image stays; the next sync is exact', () => {
  const { source, drive, disk } = pairWithFaults('drive');
  const before = snapshot(drive);
  failsWith(disk, { flush: true }, ['sync', 'p', '--quiet-period', '0.2'], /flushing the DPSR drive \/dev\/loop\d+ failed/);
  keptImage(drive, before);
  assert.is(sync().status, 0);
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source));
});

test('EIO reading the source: the sync fails naming the source, the read and its offset; nothing copied; the next sync is exact', () => {
  const { source, drive, disk } = pairWithFaults('source');
  const before = snapshot(drive);
  failsWith(disk, { read: [[0, SOURCE_BYTES]] }, ['sync', 'p', '--quiet-period', '0.2'], new RegExp(`reading the source ${source} at byte \\d+`));
  keptImage(drive, before);
  assert.is(sync().status, 0);
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source));
});

test('EIO reading the drive: verify and rollback fail with one line naming the drive, the read and its offset', () => {
  const { source, drive, disk } = pairWithFaults('drive');
  assert.is(sync().status, 0);
  failsWith(disk, { read: [[MiB, 2 * MiB]] }, ['verify', 'p'], new RegExp(`reading the DPSR drive ${drive} at byte \\d+`));
  ddDirect(source, 2048, 8);
  failsWith(disk, { read: [[0, SOURCE_BYTES]] }, ['rollback', 'p', '--yes'], new RegExp(`reading the DPSR drive ${drive} at byte \\d+`));
  assert.is(dpsr('rollback', 'p', '--yes').status, 0);
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source));
});

/** An ext4 source holding f0..f3 (1 MiB each), paired with a drive on a fault disk and synced; `written` sees them mounted, allocated. */
function ext4PairOnFaultyDrive(written: (mnt: string) => void = () => {}): { source: string; drive: string; disk: FaultDisk } {
  const disk = faultDisk(fx, DRIVE_MIB);
  const source = fx.loop(SOURCE_MIB);
  fx.mkfs(source, 'ext4');
  const mnt = fx.mount(source);
  for (let i = 0; i < 4; i++) fs.writeFileSync(path.join(mnt, `f${i}`), crypto.randomBytes(MiB));
  sh('sync', ['-f', mnt]); // allocated: delayed allocation has no place to show yet
  written(mnt);
  sh('umount', [mnt]);
  ok('pair', source, disk.dev, '--name', 'p', '--reserve', '8M');
  ok('sync', 'p', '--quiet-period', '0.2');
  return { source, drive: disk.dev, disk };
}

test('EIO reading the drive under diff and restore: one line naming the drive, the read and its offset, exit 1 (it said "no file system found", exit 3); nothing written', () => {
  const { source, drive, disk } = ext4PairOnFaultyDrive();
  const mnt = fx.mount(source);
  fs.rmSync(path.join(mnt, 'f2'));
  sh('umount', [mnt]);
  const before = [sha256Of(source), sha256Of(drive)];
  const to = path.join(fx.dir, 'restored');
  const names = new RegExp(`reading the DPSR drive ${drive} at byte \\d+ \\(\\d+ bytes\\) failed: EIO`);
  for (const args of [['diff', 'p'], ['restore', 'p', '/f2', '--to', to], ['restore', 'p', '--whole', '--yes']]) {
    failsWith(disk, { read: [[0, SOURCE_BYTES]] }, args, names);
  }
  assert.equal([sha256Of(source), sha256Of(drive)], before, 'nothing written to either device');
  assert.not.ok(fs.existsSync(path.join(to, 'f2')), 'nothing restored');
  ok('restore', 'p', '/f2', '--to', to);
  assert.ok(fs.existsSync(path.join(to, 'f2')), 'restored once the fault cleared');
});

test('EIO reading files\' data on the drive, past the file system\'s start, under diff --content and restore: one line naming the drive and the offset; the file is not restored (not half), nothing written to either device', () => {
  // Where f2's and f3's data lie on the source, hence on the drive's image: filefrag's physical extents (4 KiB blocks).
  // diff --content reads f3 (unchanged: same size and time), restore reads both.
  let extents: Array<[number, number]> = [];
  const { source, drive, disk } = ext4PairOnFaultyDrive((m) => {
    extents = ['f2', 'f3'].flatMap((f) => [...sh('filefrag', ['-e', '-b4096', path.join(m, f)]).matchAll(/^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):/gm)]
      .map((x) => [Number(x[1]) * 4096, (Number(x[2]) + 1) * 4096] as [number, number]));
  });
  const mnt = fx.mount(source);
  fs.writeFileSync(path.join(mnt, 'f2'), Buffer.alloc(MiB, 1));
  const to = path.join(fx.dir, 'restored');
  fs.mkdirSync(to);
  sh('umount', [mnt]);
  assert.ok(extents.length > 0 && extents.every(([start]) => start >= MiB), `the files lie past the first MiB: ${JSON.stringify(extents)}`);
  const before = [sha256Of(source), sha256Of(drive)];
  const names = new RegExp(`reading the DPSR drive ${drive} at byte (\\d+) \\(\\d+ bytes\\) failed: EIO`);
  for (const args of [['diff', 'p', '--content'], ['restore', 'p', '/f2', '/f3', '--to', to]]) {
    const line = failsWith(disk, { read: extents }, args, names);
    const at = Number(names.exec(line)![1]);
    assert.ok(extents.some(([start, end]) => at >= start && at < end), `the offset named lies in the files' data: ${at}`);
  }
  assert.equal([sha256Of(source), sha256Of(drive)], before, 'nothing written to either device');
  for (const f of ['f2', 'f3']) assert.not.ok(fs.existsSync(path.join(to, f)), `${f} not restored, not even in part`);
  ok('restore', 'p', '/f2', '--to', to);
  assert.is(fs.statSync(path.join(to, 'f2')).size, MiB, 'restored once the fault cleared');
});

/** A failure hook appending `EVENT PAIR REASON` lines to a file, and a daemon configuration using it. */
function daemonConfig(extra: string): { hookLog: string; metrics: string } {
  const hookLog = path.join(fx.dir, 'hook.log');
  const metrics = path.join(fx.dir, 'dpsr.prom');
  fs.writeFileSync(path.join(fx.dir, 'hook.sh'), `echo "$DPSR_EVENT $DPSR_PAIR $DPSR_REASON" >> ${hookLog}\n`);
  fs.writeFileSync(env.DPSR_CONFIG!, `tick = "200ms"\non_failure = "sh ${fx.dir}/hook.sh"\nmetrics_file = "${metrics}"\n${extra}`);
  return { hookLog, metrics };
}
const hookLines = (hookLog: string) => (fs.existsSync(hookLog) ? fs.readFileSync(hookLog, 'utf8').trim().split('\n').filter(Boolean) : []);

test('through the daemon, EIO writing the drive: each failed sync counted, retried after a doubling backoff, the hook told; the first sync after the fault clears is exact', async () => {
  const { source, drive, disk } = pairWithFaults('drive');
  const { hookLog, metrics } = daemonConfig('scrub_every = "off"\n[pairs.p]\npolicy = "continuous"\nrpo = "1s"\nmin_interval = "200ms"\n');
  const before = snapshot(drive);
  disk.fail({ write: [[SOURCE_BYTES, DRIVE_MIB * MiB]] }); // the journal and the label
  const daemon = await startDaemon(fx, env);
  // The next sync the daemon plans, as status shows it after each failure. Each retry waits 2 s
  // after the first failure, doubling: the k-th value seen lies at least 2^(k+1) s after the one
  // before (a slower machine only spaces them further). Values already due are not plans.
  const planned: number[] = [];
  await waitFor('three retries planned', async () => {
    const st = await statusOf(env, 'p');
    const next = st.nextSync ? Date.parse(st.nextSync) : null;
    if (st.lastError && next !== null && next - Date.now() > 300 && next !== planned.at(-1)) planned.push(next);
    return planned.length >= 3;
  }, 180_000);
  const gaps = planned.slice(1).map((t, i) => t - planned[i]);
  console.log(`  retries planned ${gaps.map((g) => `${(g / 1000).toFixed(1)} s`).join(', ')} apart`);
  gaps.forEach((g, i) => assert.ok(g >= 2000 * 2 ** (i + 1), `retry ${i + 2} came ${g} ms after the one before: no backoff`));
  const failed = Number(/^dpsr_syncs_failed_total\{pair="p"\} (\d+)$/m.exec(fs.readFileSync(metrics, 'utf8'))?.[1]);
  assert.ok(failed >= 3, `the metrics count the failures: ${failed}`);
  const told = hookLines(hookLog).filter((l) => l.startsWith('sync-failed p '));
  assert.ok(told.length >= 1 && told.length < failed, `the hook heard of it, not of each retry: ${told.join('; ')}`);
  assert.match(told[0], new RegExp(`writing the DPSR drive (label )?${drive} at byte \\d+`));
  assert.is(sha256Of(drive, SOURCE_BYTES), before.image, 'the drive keeps its image');
  disk.heal();
  const st = await waitFor('a sync after the fault cleared', async () => {
    const s = await statusOf(env, 'p');
    return s.lastError === null && s.generation > before.generation && s;
  }, 120_000);
  await daemon.stop();
  assert.is(st.image, 'point-in-time');
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source), 'the first sync after the fault is exact');
});

test('EIO reading the drive during the daemon\'s scrub: said once, naming the drive, the read and its offset; no mismatch, no gap, no hook; the round completes once the fault clears', async () => {
  const { drive, disk } = pairWithFaults('drive');
  const { hookLog } = daemonConfig('scrub_every = "1s"\nscrub_bandwidth = "1G"\ncompare_bandwidth = "1G"\n');
  disk.failReads([[0, SOURCE_BYTES]]);
  const daemon = await startDaemon(fx, env);
  const line = new RegExp(`p: background compare: reading the DPSR drive ${drive} at byte \\d+`);
  await waitFor('the scrub\'s read error in the log', async () => line.test(daemon.output()));
  const st = await statusOf(env, 'p');
  assert.is(st.scrub.mismatchesTotal, 0, 'a read error is no mismatch');
  assert.equal(st.gapsSinceSync, [], 'nor a gap');
  assert.equal(hookLines(hookLog), [], 'nor an alarm');
  disk.heal();
  await waitFor('the scrub round', async () => /p: scrub round complete, 0 mismatches/.test(daemon.output()));
  await daemon.stop();
  const said = daemon.output().split('\n').filter((l) => line.test(l));
  console.log(`  ${said[0]}`);
  assert.is(said.length, 1, `said once: ${daemon.output()}`);
  assert.equal(hookLines(hookLog), []);
});

test.run();
