// rollback and device restore: the real CLI on real loop devices, judged by
// sha256 of the source against the DPSR drive's image, the bytes written
// against the bytes changed, and, for every refusal, both devices hashed
// before and after.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DPSR_BIN, Fixture, ddDirect, eachTestFreshCli, journaledKillPoint, runDpsr, runDpsrOk, scatteredChanges, sh, sha256Of, randomFill, writtenSectors } from './helpers/fixture.js';
import { faultDisk } from './helpers/fault-disk.js';
import { type JournalEntry, writeTransaction } from '../src/drive/journal.js';
import { readLabel, writeLabel } from '../src/drive/label.js';
import { native } from '../src/base/native.js';
import { resolveBlockDevice } from '../src/devices/devices.js';
import type { PairRecord } from '../src/state/records.js';
import { journalRegionOf } from '../src/drive/paired-drive.js';
import { runningFromDrive } from '../src/state/session.js';
import { systemDisks } from '../src/devices/in-use.js';
import { LocalDevice } from '../src/io/local-device.js';

const dev = (fd: number) => new LocalDevice(fd);

const MiB = 1 << 20;
let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args);
const hash = sha256Of;
const mib = (b: number) => `${(b / MiB).toFixed(2)} MiB`;

const ok = (...args: string[]) => runDpsrOk(env, args);



const devices = (sourceMiB: number) => fx.pairDevices(sourceMiB);

/** Random source data, paired and synced once as pair 'p'. */
function syncedPair(sourceMiB: number) {
  const d = devices(sourceMiB);
  randomFill(d.source, sourceMiB);
  ok('pair', d.source, d.drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  return d;
}

const rollbackJson = (...args: string[]) => JSON.parse(ok('rollback', ...args, '--yes', '--json')).rollback;
const restoreJson = (...args: string[]) => JSON.parse(ok('restore', ...args, '--yes', '--json')).restore;

/** Writes, alters and deletes files on the (unmounted) source; returns the bytes the kernel wrote for it. */
function changeFiles(source: string, fsType: 'ext4' | 'xfs'): number {
  const before = writtenSectors(source);
  const mnt = fx.mount(source);
  for (let i = 0; i < 12; i++) fs.writeFileSync(path.join(mnt, `new-${i}`), crypto.randomBytes(200_000));
  for (let i = 0; i < 6; i++) {
    const fd = fs.openSync(path.join(mnt, `old-${i}`), 'r+');
    fs.writeSync(fd, crypto.randomBytes(50_000), 0, 50_000, 100_000);
    fs.closeSync(fd);
  }
  for (let i = 6; i < 10; i++) fs.rmSync(path.join(mnt, `old-${i}`));
  sh('umount', [mnt]);
  return (writtenSectors(source) - before) * 512;
}

/** A file system with files on the source, paired and synced: the image is one point in time. */
function syncedFs(fsType: 'ext4' | 'xfs', sourceMiB: number) {
  const d = devices(sourceMiB);
  fx.mkfs(d.source, fsType);
  const mnt = fx.mount(d.source);
  for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(mnt, `old-${i}`), crypto.randomBytes(300_000));
  sh('umount', [mnt]);
  ok('pair', d.source, d.drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  return d;
}

for (const fsType of ['ext4', 'xfs'] as const) {
  test(`${fsType}: files changed after a sync; rollback writes back about what changed and the source is the image again`, () => {
    const { source, drive, bytes } = syncedFs(fsType, fsType === 'xfs' ? 320 : 128);
    const image = hash(drive, bytes);
    const changedBytes = changeFiles(source, fsType);
    assert.is.not(hash(source), image, 'the change changed the source');
    const plan = JSON.parse(ok('rollback', 'p', '--dry-run', '--json')).rollback;
    assert.is(plan.mode, 'tracked');
    assert.is(plan.writtenBytes, 0);
    assert.is.not(hash(source), image, 'a dry run writes nothing');
    const r = rollbackJson('p');
    console.log(`  ${fsType}: changed ${mib(changedBytes)} (kernel count), rollback wrote ${mib(r.writtenBytes)} (planned ${mib(r.copyBytes)}) of ${mib(bytes)} in ${r.durationMs} ms`);
    assert.is(r.mode, 'tracked');
    assert.is(hash(source), image, 'the source is the image');
    assert.ok(r.writtenBytes > 0 && r.writtenBytes <= 1.5 * changedBytes + 512 * 1024,
      `wrote ${r.writtenBytes} for ${changedBytes} changed`);
    assert.ok(r.clean, `the tracker holds it clean: ${r.notClean}`);
    const again = JSON.parse(ok('rollback', 'p', '--dry-run', '--json')).rollback;
    assert.is(again.copyBytes + again.compareBytes, 0, 'nothing left to roll back');
    if (fsType === 'ext4') sh('fsck.ext4', ['-n', '-f', source]);
    else sh('xfs_repair', ['-n', source]);
  });
}

/**
 * A synced 64 MiB pair whose source (a fault disk: tests/helpers/fault-disk.ts) then had 32 MiB
 * rewritten: its writes can be stalled at an exact point of a rollback, however fast the machine.
 */
function bigChangeAfterSync() {
  const disk = faultDisk(fx, 64);
  const source = disk.dev;
  const drive = fx.loop(2 * 64 + 64);
  const bytes = 64 * MiB;
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  const image = hash(drive, bytes);
  sh('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=32', 'seek=16', 'oflag=direct', 'conv=notrunc', 'status=none']);
  return { disk, source, drive, bytes, image };
}

test('kill -9 mid-rollback: the source is a mix; the same command run again completes it', async () => {
  const { disk, source, image } = bigChangeAfterSync();
  const changed = hash(source);
  const k = await disk.killAtStall(process.execPath, [DPSR_BIN, 'rollback', 'p', '--yes'], env, 8 * MiB);
  assert.ok(k.killed, `killed while writing, not after it finished: ${k.stderr}`);
  const mid = hash(source);
  assert.ok(mid !== image && mid !== changed, 'killed part way: the source is neither the image nor what it was');
  const r = rollbackJson('p');
  console.log(`  after kill -9: the re-run wrote ${mib(r.writtenBytes)} for 32 MiB changed`);
  assert.is(hash(source), image, 'the re-run completed the rollback');
  assert.ok(r.writtenBytes >= 32 * MiB && r.writtenBytes <= 36 * MiB, `re-run wrote ${r.writtenBytes}`);
});

/** Whether process `pid` waits inside a write(2) in uninterruptible sleep: its request is queued to the device. */
function blockedInWrite(pid: number): boolean {
  try {
    const state = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '')[0];
    return state === 'D' && fs.readFileSync(`/proc/${pid}/syscall`, 'utf8').split(' ')[0] === '1';
  } catch {
    return false;
  }
}

test('another writer during the rollback: the regions are not held clean, and the next rollback restores its write too', async () => {
  // The rollback's writes stall after 4 MiB. The other write (sector 8, outside what it restores)
  // is queued behind them meanwhile, ahead of the rollback's later writes and its final flush:
  // the loop device serves its queue in order, so it lands during the rollback on any machine.
  const { disk, source, image } = bigChangeAfterSync();
  disk.stallWrites(4 * MiB);
  const child = spawn(process.execPath, [DPSR_BIN, 'rollback', 'p', '--yes', '--json'], { env });
  fx.defer('stop rollback', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.ok(await disk.untilStalled(child), `the rollback stalled mid-write: ${out}`);
  const other = spawn('dd', ['if=/dev/urandom', `of=${source}`, 'bs=4096', 'seek=1', 'count=1', 'oflag=direct', 'conv=notrunc', 'status=none']);
  fx.defer('stop dd', () => { if (other.exitCode === null) other.kill('SIGKILL'); });
  const written = new Promise<number | null>((resolve) => other.on('exit', resolve));
  while (!blockedInWrite(other.pid!) && other.exitCode === null) await new Promise((r) => setTimeout(r, 5));
  assert.is(other.exitCode, null, 'the other write waits behind the stalled rollback');
  disk.heal();
  assert.is(await written, 0);
  assert.is(await exited, 0, out);
  const r = JSON.parse(out).rollback;
  assert.not.ok(r.clean, 'not held clean');
  assert.match(r.notClean, /something else wrote|gap/);
  assert.is.not(hash(source), image, 'the other write is there');
  const again = rollbackJson('p');
  assert.is(again.writtenBytes, 4096, 'only the other write differs: the restored regions were compared');
  assert.ok(again.compareBytes >= 32 * MiB, `compared ${again.compareBytes}`);
  assert.is(hash(source), image);
});

test('a whole-disk pair: restore of one partition while another is mounted; then --whole', () => {
  const { disk, parts } = fx.partitionedLoop(160, [64, 64]);
  const drive = fx.loop(160 + 64);
  const bytes = 160 * MiB;
  fx.mkfs(parts[0], 'ext4');
  fx.mkfs(parts[1], 'ext4');
  ok('pair', disk, drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  const image = hash(drive, bytes);
  const p2 = fx.mount(parts[1]);
  for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(p2, `f${i}`), crypto.randomBytes(500_000));
  sh('umount', [p2]);
  ddDirect(parts[0], 4096, 64); // partition 1 changed too: the partition restore must leave it alone
  const p1Changed = hash(parts[0]);
  const p1 = fx.mount(parts[0], ['-o', 'ro']);
  const { startSector: start2, sizeSectors: size2 } = resolveBlockDevice(parts[1]);

  // Partition 1 is mounted: restoring it or the whole disk is refused and writes nothing.
  const before = [hash(disk), hash(drive)];
  for (const args of [['--partition', '1'], ['--whole']]) {
    const r = dpsr('restore', 'p', ...args, '--yes');
    assert.is(r.status, 3, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /mounted/);
  }
  assert.equal([hash(disk), hash(drive)], before, 'refusals wrote nothing');

  const r = restoreJson('p', '--partition', '2');
  assert.is(r.mode, 'full');
  assert.is([r.startSector, r.endSector].join(), [start2, start2 + size2].join());
  assert.is(r.writtenBytes, size2 * 512);
  assert.ok(r.clean, r.notClean);
  const extentHash = (dev: string) => {
    const fd = fs.openSync(dev, 'r');
    const buf = Buffer.alloc(size2 * 512);
    fs.readSync(fd, buf, 0, buf.length, start2 * 512);
    fs.closeSync(fd);
    return crypto.createHash('sha256').update(buf).digest('hex');
  };
  assert.is(extentHash(disk), extentHash(drive), 'partition 2 is the image\'s');
  sh('fsck.ext4', ['-n', '-f', parts[1]]);
  sh('umount', [p1]);
  // Read once unmounted: a mounted file system's cached buffers are not what the device holds.
  assert.is(hash(parts[0]), p1Changed, 'partition 1 untouched');
  const whole = restoreJson('p', '--whole');
  assert.is(whole.writtenBytes, bytes);
  assert.is(hash(disk), image, 'the whole disk is the image');
});

test('refusals: mounted, in use, no terminal without --yes, a partial image; both devices unchanged', async () => {
  const { source, drive } = devices(96);
  fx.mkfs(source, 'ext4');
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  ddDirect(source, 20_000, 64);
  const check = (args: string[], status: number, why: RegExp) => {
    const before = [hash(source), hash(drive)];
    const r = dpsr(...args);
    assert.is(r.status, status, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, why);
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.equal([hash(source), hash(drive)], before, `${args.join(' ')}: nothing written`);
  };
  check(['rollback', 'p'], 2, /terminal|--yes/);
  const mnt = fx.mount(source, ['-o', 'ro']);
  check(['rollback', 'p', '--yes'], 3, /mounted/);
  sh('umount', [mnt]);
  const holder = fs.openSync(source, fs.constants.O_RDONLY | fs.constants.O_EXCL);
  try {
    check(['rollback', 'p', '--yes'], 3, /in use/);
  } finally {
    fs.closeSync(holder);
  }
  check(['rollback', '--drive', drive, '--source', fx.loop(96), '--yes'], 3, /not the source/);
  check(['rollback', 'nope', '--yes'], 1, /no pair named nope/);

  // A partial image: a sync written in place (--in-place), killed part way (its drive stalled
  // after 2 MiB: past the label writes, into the data).
  const otherDisk = faultDisk(fx, 64 + 8);
  const other = { source: fx.loop(64), drive: otherDisk.dev };
  randomFill(other.source, 64);
  ok('pair', other.source, other.drive, '--name', 'q', '--reserve', '2M');
  ok('sync', 'q', '--quiet-period', '0.2');
  randomFill(other.source, 64);
  const k = await otherDisk.killAtStall(process.execPath, [DPSR_BIN, 'sync', 'q', '--quiet-period', '0.2', '--in-place'], env, 2 * MiB);
  assert.ok(k.killed, `killed while writing, not after it finished: ${k.stderr}`);
  const before = [hash(other.source), hash(other.drive)];
  const r = dpsr('rollback', 'q', '--yes');
  assert.is(r.status, 4, r.stderr);
  assert.match(r.stderr, /partial/);
  assert.equal([hash(other.source), hash(other.drive)], before, 'a partial image: nothing written');
});

test('without the state directory: rollback --drive compares the whole source and restores it exactly', () => {
  const { source, drive, bytes } = syncedFs('ext4', 128);
  const image = hash(drive, bytes);
  const changedBytes = changeFiles(source, 'ext4');
  const rescue = { ...env, DPSR_STATE_DIR: path.join(fx.dir, 'empty-state') };
  const plan = runDpsr(rescue, ['rollback', '--drive', drive, '--dry-run']);
  assert.is(plan.status, 0, plan.stderr);
  assert.match(plan.stdout, /no tracker history: comparing the whole source, 128\.0 MiB/);
  const r = runDpsr(rescue, ['rollback', '--drive', drive, '--yes', '--json']);
  assert.is(r.status, 0, r.stderr);
  const rep = JSON.parse(r.stdout).rollback;
  console.log(`  --drive: compared ${mib(rep.compareBytes)}, wrote ${mib(rep.writtenBytes)} for ${mib(changedBytes)} changed`);
  assert.is(rep.mode, 'compare');
  assert.is(hash(source), image);
  assert.ok(rep.writtenBytes > 0 && rep.writtenBytes <= changedBytes + 512 * 1024, `wrote ${rep.writtenBytes} for ${changedBytes}`);
  assert.not.ok(fs.existsSync(path.join(fx.dir, 'empty-state', 'state.mdb')), 'no state created');
});

test('running from the DPSR drive: no sync or rollback of that pair, and the way back is named', () => {
  const { source, drive, bytes } = syncedFs('ext4', 64);
  const image = hash(drive, bytes);
  changeFiles(source, 'ext4');
  const before = hash(source);
  // The booted copy is mounted (here read-only, as its root would be in use): rollback --drive refuses.
  const mnt = fx.mount(drive, ['-o', 'ro,noload']);
  const rescue = { ...env, DPSR_STATE_DIR: path.join(fx.dir, 'empty-state') };
  const r = runDpsr(rescue, ['rollback', '--drive', drive, '--yes']);
  assert.is(r.status, 3, r.stderr);
  assert.match(r.stderr, new RegExp(`pair in reverse \\(dpsr pair ${drive} ${source} --force\\)`));
  sh('umount', [mnt]);
  assert.is(hash(source), before, 'nothing written to the source');
  assert.is(hash(drive, bytes), image, 'nor to the drive');
  // The session's judgement, with the drive standing in for the disk `/` is on (pure: the root disk cannot be a loop here).
  const pair = JSON.parse(ok('status', 'p', '--json')).pairs[0];
  const record = { name: 'p', drive: { path: pair.drive } } as unknown as PairRecord;
  assert.is(runningFromDrive(record, systemDisks()), null, 'this machine does not run from it');
  const why = runningFromDrive(record, new Set([path.basename(drive)]));
  assert.match(why ?? '', /this system runs from the pair's DPSR drive/);
  assert.match(why ?? '', new RegExp(`dpsr pair ${drive} NEW_DISK`));
});

test('after a gap that leaves history unknown, rollback compares the whole source and says so', () => {
  const { source, drive, bytes } = syncedPair(64);
  const image = hash(drive, bytes);
  native().detach(env.DPSR_BPF_DIR!); // as a reboot does: the programs and their records are gone
  for (let i = 0; i < 10; i++) ddDirect(source, 1000 + i * 9000, 64); // unseen
  const r = rollbackJson('p');
  assert.is(r.mode, 'compare');
  assert.match(r.why, /history unknown.*unknown-history/);
  assert.is(r.compareBytes, bytes);
  assert.is(r.writtenBytes, 10 * 64 * 512, 'only the differences were written');
  assert.is(hash(source), image);
  assert.ok(r.clean, r.notClean);
  const again = JSON.parse(ok('rollback', 'p', '--dry-run', '--json')).rollback;
  assert.is(again.mode, 'tracked', 'the compare settled the gap');
  assert.is(again.copyBytes + again.compareBytes, 0);
});

test('a sync killed at any point: rollback applies a committed transaction first, or writes back what the sync had cut', async () => {
  // The drive stalls its writes at the kill point until the kill: exact on any machine.
  const disk = faultDisk(fx, 2 * 64 + 64);
  const { source, drive, bytes } = { source: fx.loop(64), drive: disk.dev, bytes: 64 * MiB };
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  const outcomes: string[] = [];
  for (const [round, fraction] of [0.3, 0.9, 1.2, 1.5, 1.8].entries()) {
    const data = scatteredChanges(source, round * 131);
    // Killed once the drive got `fraction` times the changed data: the journal's copy, then the apply.
    const start = writtenSectors(drive);
    const run = await disk.killAtStall(process.execPath, [DPSR_BIN, 'sync', 'p', '--quiet-period', '0.2'], env, Math.floor(fraction * data) * 512);
    const k = { killed: run.killed, writtenSectors: writtenSectors(drive) - start }; // its writes have all ended: it exited
    assert.ok(k.killed, `killed at ${fraction} of the changed data written, before the sync ended: ${run.stderr}`);
    const at = `killed at ${k.writtenSectors} sectors written for ${data} changed`;
    const synced = hash(source);
    const r = rollbackJson('p');
    assert.is(hash(source), hash(drive, bytes), `${at}: the source is the drive's image`);
    const point = journaledKillPoint(k.writtenSectors, data);
    // Before the commit nothing of this sync is in the image. After it the image is the synced
    // source: applied by rollback, or by the sync itself when the kill came after its apply.
    if (point === 'before commit') assert.is(r.journalSeq, null, `${at}: ${point}: ${JSON.stringify(r)}`);
    if (point === 'after commit') assert.is(hash(source), synced, `${at}: ${point}: the image is the synced source: ${JSON.stringify(r)}`);
    outcomes.push(`${fraction}: ${r.journalSeq !== null ? `journal ${r.journalSeq} applied, wrote ${mib(r.writtenBytes)}` : `wrote ${mib(r.writtenBytes)}`}`);
    const after = ok('rollback', 'p', '--dry-run');
    if (r.journalSeq !== null) assert.match(after, /nothing to write/, `${JSON.stringify(r)}\n${after}`);
  }
  console.log(`  sync killed, then rollback: ${outcomes.join('; ')}`);
});

/**
 * Commits a journal transaction on the drive and does not apply it, as a sync killed between
 * its commit and its apply leaves the drive: the source's data over `extents`, the label naming
 * the image it makes. Returns its sequence number.
 */
async function commitUnapplied(source: string, drive: string, dataSectors: number, extents: Array<[number, number]>): Promise<number> {
  sh('blockdev', ['--setrw', drive]);
  const fd = fs.openSync(drive, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  const src = fs.openSync(source, 'r');
  try {
    const label = readLabel(dev(fd))!;
    const region = journalRegionOf(dev(fd), { dataSectors, reservedSectors: label.reservedSectors } as PairRecord, label.pairId)!;
    const seq = label.journalSeq + 1;
    const entries = extents.map(([start, end]): JournalEntry => {
      const data = Buffer.alloc((end - start) * 512);
      fs.readSync(src, data, 0, data.length, start * 512);
      return { kind: 'data', targetSector: start, data };
    });
    const { seq: labelSeq, updatedMs: _, ...rest } = label;
    writeLabel(dev(fd), { ...rest, pendingTxn: { seq, image: 'point-in-time', imageTimeMs: Date.now() } }, labelSeq);
    await writeTransaction(region, seq, entries);
    return seq;
  } finally {
    fs.closeSync(src);
    fs.closeSync(fd);
    sh('blockdev', ['--setro', drive]);
  }
}

test('a committed journal transaction is applied to the drive first, with the pair record and from the drive alone', async () => {
  const { source, drive, bytes } = syncedPair(64);
  const changes = [ddDirect(source, 2048, 256), ddDirect(source, 50_000, 64)];
  const now = hash(source);
  const seq = await commitUnapplied(source, drive, bytes / 512, changes);
  assert.is.not(hash(drive, bytes), now, 'committed, not applied');
  const r = rollbackJson('p');
  assert.is(r.journalSeq, seq);
  assert.is(hash(drive, bytes), now, 'the transaction was applied: the image is the new one');
  assert.is(hash(source), now, 'and the source is that image');

  // Again, from the drive alone (no state directory): the label is brought up to date too.
  const more = [ddDirect(source, 90_000, 128)];
  const later = hash(source);
  const seq2 = await commitUnapplied(source, drive, bytes / 512, more);
  const rescue = { ...env, DPSR_STATE_DIR: path.join(fx.dir, 'empty-state') };
  const plan = runDpsr(rescue, ['rollback', '--drive', drive, '--dry-run']);
  assert.match(plan.stdout, new RegExp(`will apply the committed journal transaction ${seq2}`));
  assert.is.not(hash(drive, bytes), later, 'a dry run applies nothing');
  const d = runDpsr(rescue, ['rollback', '--drive', drive, '--yes', '--json']);
  assert.is(d.status, 0, d.stderr);
  const rep = JSON.parse(d.stdout).rollback;
  assert.is(rep.journalSeq, seq2);
  assert.is(rep.writtenBytes, 0, 'the source already is the new image');
  assert.is(hash(drive, bytes), later);
  assert.is(hash(source), later);
  assert.is(JSON.parse(runDpsr(rescue, ['rollback', '--drive', drive, '--dry-run', '--json']).stdout).rollback.journalSeq, null, 'the label records it applied');
  assert.is(sh('blockdev', ['--getro', drive]).trim(), '1', 'the drive is read-only again');
});

test('the source died while a committed sync was applied: status --drive says so, recover finishes it from the drive alone', async () => {
  const { source, drive, bytes } = syncedPair(64);
  const changes = [ddDirect(source, 4096, 512), ddDirect(source, 70_000, 8)];
  const now = hash(source);
  const seq = await commitUnapplied(source, drive, bytes / 512, changes);
  const rescue = { ...env, DPSR_STATE_DIR: path.join(fx.dir, 'rescue-state') };
  const st = runDpsr(rescue, ['status', '--drive', drive]);
  assert.is(st.status, 4, 'not bootable as it is');
  assert.match(st.stdout, new RegExp(`journal transaction ${seq}\\) is not completely applied: run dpsr recover ${drive}`));
  const r = runDpsr(rescue, ['recover', drive, '--json']);
  assert.is(r.status, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).applied, seq);
  assert.is(JSON.parse(r.stdout).image, 'point-in-time');
  assert.is(hash(drive, bytes), now, 'the drive holds the image that sync made');
  assert.is(runDpsr(rescue, ['status', '--drive', drive]).status, 0);
  const again = runDpsr(rescue, ['recover', drive]);
  assert.match(again.stdout, /nothing to apply/);
  assert.is(sh('blockdev', ['--getro', drive]).trim(), '1', 'read-only again');
  // Back with its state: the pair record catches up with what the label says.
  const back = runDpsr(env, ['status', 'p', '--json']);
  assert.is(JSON.parse(back.stdout).pairs[0].image, 'point-in-time');
});

test('through a running daemon: the rollback is planned and run by the owner', async () => {
  const { source, drive, bytes } = syncedPair(64);
  const image = hash(drive, bytes);
  const daemon = spawn(process.execPath, [DPSR_BIN, 'daemon', '--tick', '0.2'], { env });
  fx.defer('stop daemon', () => { if (daemon.exitCode === null) daemon.kill('SIGKILL'); });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    daemon.stdout!.on('data', (d) => { out += d; if (out.includes('listening')) resolve(); });
    daemon.on('exit', () => reject(new Error(`daemon exited: ${out}`)));
  });
  for (let i = 0; i < 40; i++) ddDirect(source, i * 2048, 16);
  const r = rollbackJson('p');
  assert.is(r.mode, 'tracked');
  assert.is(r.writtenBytes, 40 * 16 * 512);
  assert.is(hash(source), image);
  daemon.kill('SIGTERM');
  await new Promise((resolve) => daemon.on('exit', resolve));
});

test.run();
