// pair, sync, status, verify, unpair: the real CLI on real loop devices,
// judged by sha256 of the devices and fsck -n on the DPSR drive.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DPSR_BIN, Fixture, ddDirect, journaledKillPoint, runDpsr, runDpsrOk, scatteredChanges, sh, sha256Of, eachTestFreshCli, randomFill, loopBackingFile, withTestReserve, writtenSectors } from './helpers/fixture.js';
import { faultDisk } from './helpers/fault-disk.js';

const bin = DPSR_BIN;
const MiB = 1 << 20;

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args);

const ok = (...args: string[]) => runDpsrOk(env, args);

const hash = sha256Of;


const devices = (sourceMiB: number) => fx.pairDevices(sourceMiB);

const syncJson = (name: string) => JSON.parse(ok('sync', name, '--json', '--quiet-period', '0.2')).syncs[0];

test('pair, then sync: an exact copy; verify agrees; the drive is read-only', () => {
  const { source, drive, bytes } = devices(64);
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p');
  const r = syncJson('p');
  assert.is(r.image, 'point-in-time');
  assert.is(hash(source), hash(drive, bytes));
  ok('verify', 'p');
  assert.is(sh('blockdev', ['--getro', drive]).trim(), '1');
  const whole = hash(drive); // image, journal and label: status only reads
  const st = JSON.parse(ok('status', 'p', '--json')).pairs[0];
  assert.is(st.state, 'consistent');
  assert.ok(st.usable);
  ok('status', 'p');
  assert.is(dpsr('status', '--drive', drive).status, 0, 'the label is readable from the drive alone');
  assert.is(hash(drive), whole, 'status wrote nothing to the DPSR drive (its label was rewritten at every status)');
});

test('an incremental sync copies about what was written', () => {
  const { source, drive, bytes } = devices(128);
  randomFill(source, 128);
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  let written = 0;
  for (let i = 0; i < 64; i++) {
    ddDirect(source, ((i * 104729) % 32000) * 8, 8);
    written += 4096;
  }
  const r = syncJson('p');
  // The whole report on failure: a completion the kernel skipped shows as a shortfall gap.
  assert.ok(r.copiedBytes >= written && r.copiedBytes <= 4 * written, `copied ${r.copiedBytes} for ${written} written: ${JSON.stringify(r)}`);
  assert.is(r.comparedBytes, 0);
  assert.is(hash(source), hash(drive, bytes));
});

test('io_uring refused (kernel.io_uring_disabled=2, as under a container\'s seccomp): the plain I/O path makes the same exact copies', () => {
  const knob = '/proc/sys/kernel/io_uring_disabled';
  const was = fs.readFileSync(knob, 'utf8').trim();
  fs.writeFileSync(knob, '2');
  fx.defer(`io_uring_disabled=${was}`, () => fs.writeFileSync(knob, was));
  const { source, drive, bytes } = devices(128);
  randomFill(source, 128);
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  for (let i = 0; i < 64; i++) ddDirect(source, ((i * 104729) % 32000) * 8, 8);
  const small = syncJson('p');
  assert.ok(small.journaled, 'a small generation goes through the journal');
  randomFill(source, 100); // more than the journal holds: written in place, as asked
  const big = JSON.parse(ok('sync', 'p', '--json', '--quiet-period', '0.2', '--in-place')).syncs[0];
  assert.not.ok(big.journaled);
  assert.is(hash(source), hash(drive, bytes));
  assert.is(dpsr('verify', 'p').status, 0);
});

test('a sync with more changes than the journal holds is refused, the drive untouched; status warns before; --in-place writes it as asked', () => {
  const [source, drive, bytes] = [fx.loop(128), fx.loop(128 + 64), 128 * MiB]; // a 64 MiB tail (the tests' reserve)
  randomFill(source, 128);
  const paired = ok('pair', source, drive, '--name', 'p');
  assert.match(paired, /a sync may carry up to [\d.]+ MiB of changes/);
  assert.match(paired, /warning: a sync with more than [\d.]+ MiB of changes is refused/);
  syncJson('p');
  randomFill(source, 40);
  const st = JSON.parse(ok('status', 'p', '--json')).pairs[0];
  assert.ok(st.journalCapacityBytes > 40 * MiB && st.journalCapacityBytes < 64 * MiB, `capacity ${st.journalCapacityBytes}`);
  assert.ok(st.warnings.some((w: string) => /nearing what one sync can journal/.test(w)), JSON.stringify(st.warnings));
  randomFill(source, 100);
  const image = hash(drive, bytes);
  const label = JSON.parse(ok('status', '--drive', drive, '--json')).label;
  const r = dpsr('sync', 'p', '--quiet-period', '0.2');
  assert.is(r.status, 3, r.stderr);
  assert.match(r.stderr, /^dpsr: pair p: 100\.0 MiB changed since the image, more than its journal holds \([\d.]+ MiB\): nothing written, .*dpsr sync --in-place p/);
  assert.is(r.stderr.trim().split('\n').length, 1, 'one line');
  assert.is(hash(drive, bytes), image, 'the image is untouched');
  const after = JSON.parse(ok('status', '--drive', drive, '--json')).label;
  assert.equal([after.image, after.imageTimeMs], [label.image, label.imageTimeMs], 'the label still names the same whole image');
  const big = JSON.parse(ok('sync', 'p', '--json', '--quiet-period', '0.2', '--in-place')).syncs[0];
  assert.not.ok(big.journaled);
  assert.is(hash(drive, bytes), hash(source));
});

test('pair without --reserve leaves the default 8 GiB tail: a drive 64 MiB bigger is refused, nothing written', () => {
  const [source, drive] = [fx.loop(64), fx.loop(128)];
  randomFill(source, 64);
  const before = hash(drive);
  const r = spawnSync(process.execPath, [bin, 'pair', source, drive, '--name', 'p'], { env, encoding: 'utf8' }); // not runDpsr: it adds the tests' reserve
  assert.is(r.status, 3, r.stderr);
  assert.match(r.stderr, /too small for the source .* plus the 8\.0 GiB reserve for dpsr's label and journal: [\d.]+ GiB short; use a bigger drive or a smaller reserve/);
  assert.is(hash(drive), before);
});

test('discards take no room in the journal: a trimmed source past the journal\'s size is no warning, and its sync is journaled', () => {
  const [source, drive, bytes] = [fx.loop(128), fx.loop(128 + 64), 128 * MiB]; // a 64 MiB tail (the tests' reserve)
  randomFill(source, 128);
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  sh('blkdiscard', [source]); // as fstrim does to a file system's free space: here 128 MiB, twice the journal
  const st = JSON.parse(ok('status', 'p', '--json')).pairs[0];
  assert.ok(st.dirtyBytes >= 128 * MiB, `dirtyBytes ${st.dirtyBytes} counts the discards`);
  assert.not.ok(st.warnings.some((w: string) => /nearing what one sync can journal/.test(w)), JSON.stringify(st.warnings));
  const r = syncJson('p');
  assert.ok(r.journaled, 'journaled');
  assert.is(hash(drive, bytes), hash(source));
});

test('an ext4 source: fsck -n on the DPSR drive is clean after syncs', () => {
  const { source, drive } = devices(96);
  fx.mkfs(source, 'ext4');
  ok('pair', source, drive, '--name', 'p');
  for (let round = 0; round < 2; round++) {
    const mnt = fx.mount(source);
    for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(mnt, `f${round}-${i}`), crypto.randomBytes(100_000));
    sh('umount', [mnt]);
    syncJson('p');
  }
  sh('fsck.ext4', ['-n', '-f', drive]);
  assert.is(dpsr('verify', 'p').status, 0);
});

test('writes during a sync land in the next generation; the next sync makes the copy exact', async () => {
  const { source, drive, bytes } = devices(256);
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  // Dirty much of the disk so the sync takes a while, then write during it.
  randomFill(source, 192);
  const child = spawn(process.execPath, [bin, 'sync', 'p', '--json', '--quiet-period', '0.2'], { env });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const done = new Promise<number | null>((resolve) => child.on('exit', resolve));
  for (let i = 0; i < 50; i++) ddDirect(source, 300_000 + i * 64, 8);
  assert.is(await done, 0);
  const during = JSON.parse(out).syncs[0];
  const after = syncJson('p');
  assert.ok(after.copiedBytes > 0 || during.image === 'point-in-time', 'writes during the sync were carried to the next one');
  assert.is(hash(source), hash(drive, bytes));
  assert.is(after.image, 'point-in-time');
});

test('kill -9 of a pair mid-copy and of a sync mid-copy: the next sync resumes and ends exact', async () => {
  // The drive stalls its writes after 2 MiB (past the label, into the copy) until the kill: an
  // exact kill point on any machine (tests/helpers/fault-disk.ts).
  const source = fx.loop(64);
  const disk = faultDisk(fx, 2 * 64 + 64);
  const drive = disk.dev;
  const bytes = 64 * MiB;
  randomFill(source, 64);
  const pair = await disk.killAtStall(process.execPath, [bin, ...withTestReserve(['pair', source, drive, '--name', 'p'])], env, 2 * MiB);
  assert.ok(pair.killed, `the pair was killed mid-copy, not after it: ${pair.stderr}`);
  ddDirect(source, 8, 8); // written while nobody runs
  const status = dpsr('status', 'p', '--json');
  assert.is(status.status, 4, 'an interrupted full copy is not usable: exit 4');
  assert.not.ok(JSON.parse(status.stdout).pairs[0].usable);
  syncJson('p');
  assert.is(hash(source), hash(drive, bytes));
  randomFill(source, 48); // written in place, as asked
  const sync = await disk.killAtStall(process.execPath, [bin, 'sync', 'p', '--quiet-period', '0.2', '--in-place'], env, 2 * MiB);
  assert.ok(sync.killed, `the sync was killed mid-copy, not after it: ${sync.stderr}`);
  ddDirect(source, 16, 8);
  assert.is(dpsr('status', 'p').status, 4, 'an interrupted sync leaves a partial image: exit 4');
  syncJson('p');
  assert.is(hash(source), hash(drive, bytes));
});

test('a shortfall forced with the skip knob ends in an exact copy through a compare pass', () => {
  const { source, drive, bytes } = devices(64);
  // Load the programs with the test-only knob into this test's pin directory first.
  fx.tracking({ pinDir: env.DPSR_BPF_DIR, skipEveryN: 3 });
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  for (let i = 0; i < 30; i++) ddDirect(source, i * 4096, 8);
  const r = syncJson('p');
  assert.ok(r.gaps.some((g: { cause: string }) => g.cause === 'shortfall'), JSON.stringify(r.gaps));
  assert.ok(r.comparedBytes > 0 && r.repairedBytes > 0, 'the compare pass repaired what records missed');
  assert.is(hash(source), hash(drive, bytes));
});

/**
 * Changes the source, kills a sync once the drive has been written `fraction` times the
 * changed data (the journal gets it all, then it is applied in place), lets `dpsr status`
 * replay a committed transaction (with the source detached first if `sourceDies`), and
 * checks the drive is exactly the old or the new image: the old one if the kill came before
 * the journal held all the data (no commit yet), the new one once more than that was written
 * (the commit is written before anything is applied). Then a sync makes it the new one.
 * Returns which it was, per kill point.
 */
async function killSyncsAt(fractions: number[], sourceDies: boolean): Promise<string[]> {
  // The drive stalls its writes at the kill point until the kill: exact on any machine.
  const source = fx.loop(64);
  const disk = faultDisk(fx, 2 * 64 + 64);
  const drive = disk.dev;
  const bytes = 64 * MiB;
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p');
  assert.ok(syncJson('p').journaled, 'the generation went through the journal');
  const img = loopBackingFile(source)!;
  const outcomes: string[] = [];
  for (const [round, fraction] of fractions.entries()) {
    const oldHash = hash(drive, bytes);
    const data = scatteredChanges(source, round * 131);
    const newHash = hash(source);
    const start = writtenSectors(drive);
    const run = await disk.killAtStall(process.execPath, [bin, 'sync', 'p', '--quiet-period', '0.2'], env, Math.floor(fraction * data) * 512);
    const k = { killed: run.killed, writtenSectors: writtenSectors(drive) - start }; // its writes have all ended: it exited
    const at = `killed at ${k.writtenSectors} sectors written for ${data} changed`;
    if (sourceDies) sh('losetup', ['-d', source]);
    dpsr('status', 'p'); // the owner replays a committed transaction, as mounting replays a log
    if (sourceDies) fx.attach(img, source); // back at once: a detached loop number is anyone's to take
    const h = hash(drive, bytes);
    assert.ok(h === oldHash || h === newHash, `${at}${sourceDies ? ', source gone' : ''}: the drive is a mix`);
    const outcome = h === oldHash ? 'old' : 'new';
    const point = journaledKillPoint(k.writtenSectors, data);
    if (point !== 'either') assert.is(outcome, point === 'before commit' ? 'old' : 'new', `${at}: ${point}`);
    outcomes.push(k.killed ? `${outcome}@${fraction}` : `${outcome}@done`);
    syncJson('p');
    assert.is(hash(drive, bytes), newHash);
  }
  return outcomes;
}

test('kill -9 at many points of a journaled sync: the drive is the old or the new image, then the next sync makes it the new one', async () => {
  const outcomes = await killSyncsAt([0, 0.3, 0.7, 0.97, 1.03, 1.2, 1.45, 1.7], false);
  console.log(`  kill -9 outcomes (image@written/changed): ${outcomes.join(' ')}`);
  assert.ok(outcomes.some((o) => o.startsWith('old@')), 'some kill came before the commit');
});

test('the source gone after a kill -9: a committed transaction is applied from the DPSR drive alone', async () => {
  const outcomes = await killSyncsAt([1.2, 1.4, 1.6], true);
  console.log(`  source-gone outcomes (image@written/changed): ${outcomes.join(' ')}`);
  assert.ok(outcomes.some((o) => o.startsWith('new@') && !o.endsWith('@done')), 'some kill came after the commit, before the sync ended');
});

test('a raw source that never goes quiet: "not quiescent", and the DPSR drive keeps its previous image', async () => {
  const { source, drive, bytes } = devices(64);
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  const before = hash(drive, bytes);
  // fio writes without pauses (a shell loop of dd can stall long enough to look quiet).
  const writer = spawn('fio', ['--name=busy', `--filename=${source}`, '--rw=randwrite', '--bs=64k', '--direct=1',
    '--ioengine=psync', '--thread', '--rate=20m', '--time_based', '--runtime=120', '--output=/dev/null']);
  fx.defer('stop writer', () => writer.kill('SIGKILL'));
  const quiet = writtenSectors(source);
  while (writtenSectors(source) === quiet && writer.exitCode === null) await new Promise((r) => setTimeout(r, 5)); // fio is writing
  const r = dpsr('sync', 'p', '--quiet-period', '0.3');
  await new Promise((resolve) => { writer.on('exit', resolve); writer.kill('SIGKILL'); });
  assert.is(r.status, 1, r.stderr);
  assert.match(r.stderr, /not quiescent/);
  assert.is(hash(drive, bytes), before, 'the previous image, untouched');
  syncJson('p');
  assert.is(hash(source), hash(drive, bytes));
});

test('the quiet period counts from the last write the kernel saw, not from the start of the sync', async () => {
  const { source, drive, bytes } = devices(32);
  randomFill(source, 32);
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  // Nothing written since the range was tracked: idle since then, nothing to wait for.
  const beforeIdle = Date.now();
  const idle = JSON.parse(ok('sync', 'p', '--json', '--quiet-period', '600')).syncs[0];
  assert.ok(idle.quietSinceMs < beforeIdle, `counted from before this command (${idle.quietSinceMs} vs ${beforeIdle})`);
  // A write before the command, no daemon: the period counts from the write's completion, not from the command.
  const beforeWrite = Date.now();
  ddDirect(source, 2048, 8);
  const afterWrite = Date.now();
  await new Promise((r) => setTimeout(r, 1100)); // a whole period passes before the command starts
  const earlier = JSON.parse(ok('sync', 'p', '--json', '--quiet-period', '1')).syncs[0];
  // The programs stamp a write with the time of their first run in its clock tick, so the tracker adds
  // a tick (10 ms, the longest) to never start the period early: the period may count from up to that later.
  assert.ok(earlier.quietSinceMs >= beforeWrite - 5 && earlier.quietSinceMs <= afterWrite + 10 + 5,
    `counted from the write (${earlier.quietSinceMs} in ${beforeWrite}..${afterWrite} + a tick)`);
  // A write just before the command: the period is waited in full from it.
  ddDirect(source, 4096, 8);
  const written = JSON.parse(ok('sync', 'p', '--json', '--quiet-period', '1')).syncs[0];
  assert.ok(written.imageTimeMs - written.quietSinceMs >= 1000, 'cut after a whole quiet period');
  assert.is(hash(source), hash(drive, bytes));
});

test('refusals leave both devices byte-for-byte unchanged', () => {
  const { source, drive } = devices(32);
  const small = fx.loop(32);
  randomFill(source, 32);
  fx.mkfs(drive, 'ext4');
  const before = [hash(source), hash(drive), hash(small)];
  const cases: Array<[string[], RegExp]> = [
    [['pair', source, drive], /ext4/],
    [['pair', source, small], /short|smaller|MiB/],
    [['pair', source, source], /same/],
    [['pair', fx.image('plain', 1), drive], /not a block device/],
  ];
  for (const [args, why] of cases) {
    const r = dpsr(...args);
    assert.is(r.status, 3, `${args.join(' ')}: ${r.stderr}`);
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, why);
  }
  assert.equal([hash(source), hash(drive), hash(small)], before);
});

test('a re-attached loop device with another backing file is caught, and nothing is written', () => {
  const { source, drive } = devices(32);
  ok('pair', source, drive, '--name', 'p');
  syncJson('p');
  const other = fx.image('other.img', 32);
  sh('losetup', ['-d', source]);
  fx.attach(other, source);
  const before = hash(drive);
  const r = dpsr('sync', 'p', '--quiet-period', '0.2');
  assert.is(r.status, 3, r.stderr);
  assert.match(r.stderr, /not the paired source/);
  assert.is(hash(drive), before);
});

test('unpair removes the label and the read-only flag, and detaches tracking', () => {
  const { source, drive } = devices(32);
  ok('pair', source, drive, '--name', 'p');
  ok('unpair', 'p');
  assert.is(sh('blockdev', ['--getro', drive]).trim(), '0');
  assert.is(dpsr('status', '--drive', drive).status, 4);
  assert.not.ok(fs.existsSync(env.DPSR_BPF_DIR!), 'no pair left: programs detached');
});

test('the source died: status names the problem, unpair still ends the pair and frees the drive', () => {
  const { source, drive } = devices(32);
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  sh('losetup', ['-d', source]);
  const st = dpsr('status', 'p', '--json');
  assert.is(st.status, 4, st.stderr);
  assert.is(JSON.parse(st.stdout).pairs[0].state, 'error');
  assert.is(dpsr('status', '--drive', drive).status, 0, 'the drive itself holds a whole image');
  ok('unpair', 'p');
  assert.is(sh('blockdev', ['--getro', drive]).trim(), '0');
  assert.is(dpsr('status', '--drive', drive).status, 4, 'label removed');
  assert.match(ok('status'), /no pairs/);
});

test('output piped into a reader that stops early: no stack trace, exit 0', () => {
  const r = spawnSync('sh', ['-c', `"${process.execPath}" "${bin}" --help | head -1; "${process.execPath}" "${bin}" daemon --help | head -1`], { encoding: 'utf8' });
  assert.is(r.status, 0);
  assert.not.match(r.stderr, /EPIPE|Unhandled/);
});

test.run();
