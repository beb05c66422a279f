// A clean reboot keeps the tracking: `dpsr shutdown` leaves a record in the
// DPSR drive, a "reboot" removes the pinned programs and gives the loop
// devices fresh counters over the same image files (and another boot id),
// and `dpsr boot` resumes with no gap, so the next sync copies exactly what
// was written after the last one and compares nothing. Each way the record
// must not be trusted is a gap with its cause, and the copy is exact after.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../src/base/native.js';
import { startDaemon, statusOf, waitFor } from './helpers/daemon-child.js';
import { serveNbd } from './helpers/nbd-server.js';
import { Fixture, ddDirect, eachTestFreshCli, loopBackingFile, randomFill, runDpsr, runDpsrOk, sh, sha256Of } from './helpers/fixture.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => {
  ({ fx, env } = f);
  env.DPSR_BOOT_ID_FILE = path.join(fx.dir, 'boot_id');
  fs.writeFileSync(env.DPSR_BOOT_ID_FILE, 'boot-1\n');
});

const ok = (...args: string[]) => runDpsrOk(env, args);
const json = (...args: string[]) => JSON.parse(ok(...args, '--json'));
const syncJson = () => json('sync', 'p', '--quiet-period', '0.2').syncs[0];
const SOURCE_MiB = 32;
const FRESH_LOOP = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../tools/fresh-loop.py');

/**
 * The loop device made again over the same file (tools/fresh-loop.py): its counters start at zero, as
 * a disk's do at boot. Cleanup detaches it while it is still this file's.
 */
function freshLoop(dev: string): void {
  const img = loopBackingFile(dev)!;
  sh('blockdev', ['--setrw', dev]);
  sh('python3', [FRESH_LOOP, dev]);
  fx.defer(`losetup -d ${dev}`, () => {
    const b = loopBackingFile(dev);
    if (b !== img && b !== `${img} (deleted)`) return;
    sh('blockdev', ['--setrw', dev]);
    sh('losetup', ['-d', dev]);
  });
}

/** The machine goes down and comes back: programs gone, devices re-probed with fresh counters, a new boot id. */
function reboot(source: string, drive: string, between?: () => void): void {
  native().detach(env.DPSR_BPF_DIR!);
  freshLoop(drive);
  between?.();
  freshLoop(source);
  fs.writeFileSync(env.DPSR_BOOT_ID_FILE!, `boot-${Date.now()}\n`);
}

function pairWritten(): { source: string; drive: string; bytes: number; afterSync: number } {
  const { source, drive, bytes } = fx.pairDevices(SOURCE_MiB);
  randomFill(source, 4);
  ok('pair', source, drive, '--name', 'p');
  ddDirect(source, 2048, 16);
  syncJson();
  // Written after the last sync: what the sync after the reboot must copy, and nothing else.
  const after = [ddDirect(source, 1000, 8), ddDirect(source, 30000, 64)];
  return { source, drive, bytes, afterSync: after.reduce((n, [s, e]) => n + (e - s) * 512, 0) };
}

/** The gaps `dpsr status` shows (it exits 4 while the pair needs a compare). */
function gapCauses(): string[] {
  return JSON.parse(runDpsr(env, ['status', 'p', '--json']).stdout).pairs[0].gapsSinceSync.map((g: { cause: string }) => g.cause);
}

test('a clean reboot resumes with no gap: the sync copies exactly what was written after the last one, compares nothing', () => {
  const { source, drive, bytes, afterSync } = pairWritten();
  const down = json('shutdown');
  assert.is(down.shutdown.length, 1);
  assert.ok(down.shutdown[0].recorded, JSON.stringify(down));
  assert.is(json('shutdown').shutdown[0].recorded, true, 'run again, the same record');
  reboot(source, drive);
  const up = json('boot');
  assert.ok(up.boot[0].resumed, JSON.stringify(up));
  assert.match(ok('boot'), /p: (resumed, no gap|gap)/, 'run again in the same boot, it reports');
  const r = syncJson();
  assert.is(r.comparedBytes, 0, JSON.stringify(r));
  assert.is(r.copiedBytes, afterSync, JSON.stringify(r));
  assert.equal(r.gaps, [], 'no gap');
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('the daemon\'s or a command\'s session runs the same adoption when dpsr boot did not', () => {
  const { source, drive, bytes, afterSync } = pairWritten();
  assert.ok(json('shutdown').shutdown[0].recorded);
  reboot(source, drive);
  const r = syncJson();
  assert.is(r.comparedBytes, 0, JSON.stringify(r));
  assert.is(r.copiedBytes, afterSync);
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('without a shutdown record the reboot is a gap (unclean-shutdown): the sync compares, exact afterwards', () => {
  const { source, drive, bytes } = pairWritten();
  reboot(source, drive);
  const up = json('boot').boot[0];
  assert.not.ok(up.resumed);
  assert.is(up.cause, 'unclean-shutdown');
  assert.ok(gapCauses().includes('unclean-shutdown'));
  const r = syncJson();
  assert.ok(r.comparedBytes >= SOURCE_MiB * 2 ** 20, 'the whole source compared');
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('an unclean reboot with a journal smaller than the source: the sync without a daemon compares first and journals only the differences', () => {
  const source = fx.loop(SOURCE_MiB);
  const drive = fx.loop(SOURCE_MiB + 10); // the tail: a journal of about 8 MiB for a 32 MiB source
  const bytes = SOURCE_MiB * 2 ** 20;
  randomFill(source, 4);
  ok('pair', source, drive, '--name', 'p', '--reserve', '8M');
  syncJson();
  const written = ddDirect(source, 30000, 64);
  reboot(source, drive);
  assert.ok(gapCauses().includes('unclean-shutdown'));
  const r = syncJson();
  assert.ok(r.journaled, JSON.stringify(r));
  assert.ok(r.comparedBytes >= SOURCE_MiB * 2 ** 20, `the whole source compared: ${JSON.stringify(r)}`);
  assert.is(r.copiedBytes, (written[1] - written[0]) * 512, 'only what differs is copied');
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('a write before tracking began is a gap (written-before-attach), and the record is consumed all the same', () => {
  const { source, drive, bytes } = pairWritten();
  assert.ok(json('shutdown').shutdown[0].recorded);
  reboot(source, drive);
  ddDirect(source, 5000, 8); // before dpsr boot: unseen
  const up = json('boot').boot[0];
  assert.is(up.cause, 'written-before-attach', JSON.stringify(up));
  const r = syncJson();
  assert.ok(r.comparedBytes >= SOURCE_MiB * 2 ** 20);
  assert.is(sha256Of(source), sha256Of(drive, bytes));
  // The record is gone: a second "reboot" without a shutdown finds none.
  reboot(source, drive);
  assert.is(json('boot').boot[0].cause, 'unclean-shutdown');
});

test('the source mounted read-write elsewhere while down is a gap (changed-offline), exact afterwards', () => {
  const { source, drive, bytes } = fx.pairDevices(SOURCE_MiB);
  fx.mkfs(source, 'ext4');
  ok('pair', source, drive, '--name', 'p');
  syncJson();
  const mnt = fx.mount(source);
  fs.writeFileSync(path.join(mnt, 'a'), 'after the sync');
  fx.unmount(mnt);
  assert.ok(json('shutdown').shutdown[0].recorded);
  reboot(source, drive, () => {
    // "Another system": the image file mounted through another loop device, read-write, while the source is away.
    const other = fx.attach(loopBackingFile(source)!);
    const m = fx.mount(other);
    fx.unmount(m);
    sh('losetup', ['-d', other]);
  });
  const up = json('boot').boot[0];
  assert.is(up.cause, 'changed-offline', JSON.stringify(up));
  const r = syncJson();
  assert.ok(r.comparedBytes >= SOURCE_MiB * 2 ** 20);
  assert.is(sha256Of(source), sha256Of(drive, bytes));
  sh('fsck.ext4', ['-n', '-f', source]);
});

test('a damaged record is never trusted: a gap (unclean-shutdown), exact afterwards', () => {
  const { source, drive, bytes } = pairWritten();
  assert.ok(json('shutdown').shutdown[0].recorded);
  // Flip one byte inside the record's payload (the area below the label, 1 MiB, at a 4 KiB boundary).
  const size = Number(sh('blockdev', ['--getsize64', drive]).trim());
  const at = Math.floor((size - 8192 - (1 << 20)) / 4096) * 4096 + 100;
  sh('blockdev', ['--setrw', drive]);
  const fd = fs.openSync(drive, 'r+');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] ^= 0xff;
  fs.writeSync(fd, b, 0, 1, at);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  reboot(source, drive);
  const before = [sha256Of(source), sha256Of(drive, bytes)];
  const up = json('boot').boot[0];
  assert.is(up.cause, 'unclean-shutdown');
  assert.match(up.detail, /checksum/);
  assert.equal([sha256Of(source), sha256Of(drive, bytes)], before, 'nothing written to the source or into the image');
  const s = syncJson();
  assert.ok(s.comparedBytes >= bytes, 'not trusted: the whole source compared');
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('shutdown with the source mounted read-write: no record for it, exit 1, the line says why', () => {
  const { source, drive } = fx.pairDevices(SOURCE_MiB);
  fx.mkfs(source, 'ext4');
  ok('pair', source, drive, '--name', 'p');
  fx.mount(source);
  const r = runDpsr(env, ['shutdown']);
  assert.is(r.status, 1, r.stderr);
  assert.match(r.stdout, /p: no shutdown record: .*mounted read-write/);
});

/** Two pairs whose sources are two partitions of one disk, synced, then written (returns what each sync must copy). */
function twoPairsOnOneDisk(): { disk: string; parts: string[]; drives: string[]; after: Array<[number, number]> } {
  const disk = fx.loop(80);
  sh('sfdisk', ['--quiet', disk], { input: 'label: gpt\nsize=32MiB\nsize=32MiB\n' });
  sh('partx', ['-a', disk]);
  const parts = [`${disk}p1`, `${disk}p2`];
  fx.defer(`partx -d ${disk}`, () => { if (fs.existsSync(parts[0])) sh('partx', ['-d', disk]); });
  const drives = [fx.loop(SOURCE_MiB + 16), fx.loop(SOURCE_MiB + 16)];
  parts.forEach((part, i) => ok('pair', part, drives[i], '--name', `p${i}`, '--reserve', '8M'));
  ok('sync', '--all', '--quiet-period', '0.2');
  return { disk, parts, drives, after: [ddDirect(parts[0], 96, 8), ddDirect(parts[1], 200, 16)] };
}

/** The "reboot" of a partitioned source disk: its partitions probed again over fresh counters. */
function rebootDisk(disk: string, drives: string[], bootName: string): void {
  native().detach(env.DPSR_BPF_DIR!);
  drives.forEach(freshLoop);
  sh('partx', ['-d', disk]);
  freshLoop(disk);
  sh('partx', ['-a', disk]);
  fx.defer(`partx -d ${disk}`, () => sh('partx', ['-d', disk])); // before the detach freshLoop deferred
  fs.writeFileSync(env.DPSR_BOOT_ID_FILE!, `${bootName}\n`);
}

test('two pairs on one disk (two partitions) each resume, their records proven by the disk\'s one counter', () => {
  const { disk, parts, drives, after } = twoPairsOnOneDisk();
  const down = json('shutdown').shutdown;
  assert.equal(down.map((o: { recorded: boolean }) => o.recorded), [true, true], JSON.stringify(down));
  rebootDisk(disk, drives, 'boot-2');
  const up = json('boot').boot;
  assert.equal(up.map((o: { resumed: boolean }) => o.resumed), [true, true], JSON.stringify(up));
  const syncs = json('sync', '--all', '--quiet-period', '0.2').syncs;
  syncs.forEach((r: { comparedBytes: number; copiedBytes: number }, i: number) => {
    assert.is(r.comparedBytes, 0, JSON.stringify(r));
    assert.is(r.copiedBytes, (after[i][1] - after[i][0]) * 512);
  });
  parts.forEach((part, i) => assert.is(sha256Of(part), sha256Of(drives[i], 32 << 20)));
});

test('two pairs on one disk: a write before tracking began to one partition is a gap for both (one counter cannot say where), exact afterwards', () => {
  const { disk, parts, drives } = twoPairsOnOneDisk();
  assert.equal(json('shutdown').shutdown.map((o: { recorded: boolean }) => o.recorded), [true, true]);
  rebootDisk(disk, drives, 'boot-2');
  ddDirect(parts[1], 3000, 8); // unseen: before dpsr boot
  const images = drives.map((d) => sha256Of(d, 32 << 20));
  const up = json('boot').boot;
  assert.equal(up.map((o: { cause: string }) => o.cause), ['written-before-attach', 'written-before-attach'], JSON.stringify(up));
  assert.equal(drives.map((d) => sha256Of(d, 32 << 20)), images, 'judging wrote nothing into the images');
  const syncs = json('sync', '--all', '--quiet-period', '0.2').syncs;
  syncs.forEach((r: { comparedBytes: number }) => assert.ok(r.comparedBytes >= 32 << 20, JSON.stringify(r)));
  parts.forEach((part, i) => assert.is(sha256Of(part), sha256Of(drives[i], 32 << 20)));
});

test('a DPSR drive whose tail has no room for a shutdown record: said at pair time; shutdown says so, exit 1, nothing written; the reboot is a gap, exact afterwards', () => {
  const source = fx.loop(SOURCE_MiB);
  const drive = fx.loop(SOURCE_MiB + 1); // a 1 MiB tail: the label, and no room for the 1 MiB record area beside it
  const bytes = SOURCE_MiB * 2 ** 20;
  randomFill(source, 4);
  const paired = runDpsr(env, ['pair', source, drive, '--name', 'p', '--reserve', '1M']);
  assert.is(paired.status, 0, paired.stderr);
  assert.match(paired.stdout + paired.stderr, /no room in its tail for a shutdown record .*every reboot compares the whole source/);
  syncJson();
  ddDirect(source, 1000, 8);
  const driveHash = sha256Of(drive);
  const down = runDpsr(env, ['shutdown']);
  assert.is(down.status, 1, down.stderr);
  assert.match(down.stdout, /^p: no shutdown record: the DPSR drive has no room for a shutdown record in its reserved tail; the next boot compares the whole source$/m);
  assert.is(sha256Of(drive), driveHash, 'nothing written to the drive');
  reboot(source, drive);
  const sourceHash = sha256Of(source);
  const up = json('boot').boot[0];
  assert.is(up.cause, 'unclean-shutdown', JSON.stringify(up));
  assert.is(sha256Of(drive), driveHash, 'dpsr boot wrote nothing to the drive');
  assert.is(sha256Of(source), sourceHash, 'nor to the source');
  const s = syncJson();
  assert.ok(s.comparedBytes >= bytes, JSON.stringify(s));
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('the source back under another device number after the reboot (the same file, found by a link): no identity-changed, resumed', () => {
  const { source, drive, bytes } = fx.pairDevices(SOURCE_MiB);
  randomFill(source, 4);
  const link = path.join(fx.dir, 'source-link');
  fs.symlinkSync(source, link);
  ok('pair', link, drive, '--name', 'p');
  syncJson();
  const written = ddDirect(source, 3000, 24);
  assert.ok(json('shutdown').shutdown[0].recorded);
  native().detach(env.DPSR_BPF_DIR!);
  freshLoop(drive);
  // The image comes back on another loop (attached before the old one goes, so the number differs), counters at zero.
  const img = loopBackingFile(source)!;
  const moved = fx.attach(img);
  assert.is.not(moved, source);
  sh('losetup', ['-d', source]);
  freshLoop(moved); // a loop number used before keeps its counters over a plain attach
  fs.rmSync(link);
  fs.symlinkSync(moved, link);
  fs.writeFileSync(env.DPSR_BOOT_ID_FILE!, 'boot-2\n');
  const up = json('boot').boot[0];
  assert.ok(up.resumed, JSON.stringify(up));
  const r = syncJson();
  assert.equal(r.gaps, [], JSON.stringify(r));
  assert.is(r.comparedBytes, 0, JSON.stringify(r));
  assert.is(r.copiedBytes, (written[1] - written[0]) * 512);
  assert.not.ok(gapCauses().includes('identity-changed'));
  assert.is(sha256Of(moved), sha256Of(drive, bytes));
});

/** The device node moved away (the drive unplugged, as dpsr sees it), so that no one else's losetup can take the loop meanwhile; returns the way back. */
function unplug(dev: string): () => void {
  const away = `${dev}.unplugged`;
  fs.renameSync(dev, away);
  const back = () => { if (fs.existsSync(away)) fs.renameSync(away, dev); };
  fx.defer(`mv ${away} ${dev}`, back);
  return back;
}

/** A "reboot" with the DPSR drive left unplugged (its loop made fresh first, so its counters are those of a new boot too); returns the way to plug it back. */
function rebootWithoutDrive(source: string, drive: string, bootName: string): () => void {
  native().detach(env.DPSR_BPF_DIR!);
  freshLoop(drive);
  const replug = unplug(drive);
  freshLoop(source);
  fs.writeFileSync(env.DPSR_BOOT_ID_FILE!, `${bootName}\n`);
  return replug;
}

test('a drive missing at shutdown: no record, one line says so, exit 1; the next boot is a gap that says why', () => {
  const { source, drive, bytes } = pairWritten();
  const replug = unplug(drive);
  const r = runDpsr(env, ['shutdown']);
  assert.is(r.status, 1, r.stderr);
  assert.match(r.stdout, new RegExp(`^p: no shutdown record: its DPSR drive ${drive} is missing \\(.*no such device\\); the next boot compares the whole source$`, 'm'));
  assert.is(r.stdout.trim().split('\n').length, 1, r.stdout);
  replug();
  reboot(source, drive);
  const up = json('boot').boot[0];
  assert.is(up.cause, 'unclean-shutdown', JSON.stringify(up));
  assert.match(up.detail, /no shutdown record: .*its DPSR drive missing or unreachable at shutdown/);
  const s = syncJson();
  assert.ok(s.comparedBytes >= SOURCE_MiB * 2 ** 20);
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('a drive missing at boot: the pair waits (tracked, not synced, status says so), then resumes when the drive is back: compared 0, exact', () => {
  const { source, drive, bytes, afterSync } = pairWritten();
  assert.ok(json('shutdown').shutdown[0].recorded);
  const replug = rebootWithoutDrive(source, drive, 'boot-2');
  const up = json('boot').boot[0];
  assert.ok(up.awaiting && !up.resumed && up.cause === null, JSON.stringify(up));
  assert.match(ok('boot'), /^p: waiting for its DPSR drive .*judged when it returns/m);
  // Written while the drive is away: tracked from the boot on, copied when it is back.
  const later = ddDirect(source, 12000, 8);
  const st = runDpsr(env, ['status', 'p', '--json']); // a session: it keeps the wait in the state directory
  assert.is(st.status, 4, st.stderr);
  const p = JSON.parse(st.stdout).pairs[0];
  assert.is(p.state, 'awaiting-drive', JSON.stringify(p));
  assert.ok(p.awaitingDriveSince, JSON.stringify(p));
  assert.match(p.problem, /waiting for its DPSR drive/);
  const sourceHash = sha256Of(source);
  const r = runDpsr(env, ['sync', 'p']);
  assert.is(r.status, 3, r.stderr);
  assert.match(r.stderr, /waiting for its DPSR drive/);
  assert.is(sha256Of(source), sourceHash, 'nothing written to the source');
  replug();
  const imageBefore = sha256Of(drive, bytes);
  const back = JSON.parse(runDpsr(env, ['status', 'p', '--json']).stdout).pairs[0]; // judged by this session
  assert.ok(back.state !== 'awaiting-drive' && !back.problem && back.suspectBytes === 0 && back.gapsSinceSync.length === 0, JSON.stringify(back));
  assert.is(sha256Of(drive, bytes), imageBefore, 'judging writes nothing into the image');
  const s = syncJson();
  assert.is(s.comparedBytes, 0, JSON.stringify(s));
  assert.is(s.copiedBytes, afterSync + (later[1] - later[0]) * 512, JSON.stringify(s));
  assert.equal(s.gaps, [], 'no gap');
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('the daemon keeps a pair whose drive was missing at boot waiting, and judges it on the tick after the drive is back: resumed, exact', async () => {
  const { source, drive, bytes } = pairWritten();
  assert.ok(json('shutdown').shutdown[0].recorded);
  const replug = rebootWithoutDrive(source, drive, 'boot-2');
  assert.ok(json('boot').boot[0].awaiting);
  const daemon = await startDaemon(fx, env);
  try {
    assert.is((await statusOf(env, 'p')).state, 'awaiting-drive', daemon.output());
    replug();
    const judged = await waitFor('the daemon to judge the record', async () => {
      const st = await statusOf(env, 'p');
      return st.state !== 'awaiting-drive' && st;
    });
    assert.not.ok(judged.problem, JSON.stringify(judged));
    assert.equal(judged.gapsSinceSync, [], JSON.stringify(judged));
  } finally {
    await daemon.stop();
  }
  const s = syncJson();
  assert.is(s.comparedBytes, 0, JSON.stringify(s));
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

/** A pair p whose DPSR drive is an export, synced once; the server stopped again (the test serves it when it needs it, on SOCK()). */
function remotePair(): { source: string; bytes: number; image: string } {
  const source = fx.loop(SOURCE_MiB);
  randomFill(source, 4);
  const image = fx.image('export.img', 2 * SOURCE_MiB + 64);
  const server = serveNbd(fx, { image, sock: SOCK() });
  ok('pair', source, server.uri, '--name', 'p');
  syncJson();
  server.stop();
  return { source, bytes: SOURCE_MiB * 2 ** 20, image };
}
const SOCK = () => path.join(fx.dir, 'export.sock');

test('a DPSR drive on an NBD export whose server is down at boot: the pair waits; the server back, it resumes with no gap, exact', () => {
  const { source, bytes, image } = remotePair();
  let server = serveNbd(fx, { image, sock: SOCK() });
  const after = ddDirect(source, 3000, 16);
  assert.ok(json('shutdown').shutdown[0].recorded);
  server.stop();
  native().detach(env.DPSR_BPF_DIR!);
  freshLoop(source);
  fs.writeFileSync(env.DPSR_BOOT_ID_FILE!, 'boot-2\n');
  const up = json('boot').boot[0];
  assert.ok(up.awaiting, JSON.stringify(up));
  assert.is(JSON.parse(runDpsr(env, ['status', 'p', '--json']).stdout).pairs[0].state, 'awaiting-drive');
  server = serveNbd(fx, { image, sock: server.sock });
  const s = syncJson();
  assert.is(s.comparedBytes, 0, JSON.stringify(s));
  assert.is(s.copiedBytes, (after[1] - after[0]) * 512, JSON.stringify(s));
  assert.is(sha256Of(image, bytes), sha256Of(source, bytes));
});

test('a DPSR drive on an NBD export at shutdown: unreachable, or lost between its record and the confirmation: one line, exit 1; the next boot is a gap with that cause, exact after', () => {
  const { source, bytes, image } = remotePair();
  let server = serveNbd(fx, { image, sock: SOCK() });
  const shutdownFails = (says: RegExp) => {
    const r = runDpsr(env, ['shutdown']);
    assert.is(r.status, 1, `${r.stdout}${r.stderr}`);
    assert.is(r.stdout.trim().split('\n').length, 1, r.stdout);
    assert.match(r.stdout.trim(), says, r.stdout);
  };
  const rebootJudged = (boot: string, says: RegExp) => {
    native().detach(env.DPSR_BPF_DIR!);
    freshLoop(source);
    fs.writeFileSync(env.DPSR_BOOT_ID_FILE!, `${boot}\n`);
    server = serveNbd(fx, { image, sock: server.sock });
    const up = json('boot').boot[0];
    assert.not.ok(up.resumed, JSON.stringify(up));
    assert.is(up.cause, 'unclean-shutdown');
    assert.match(up.detail, says);
    const s = syncJson();
    assert.ok(s.comparedBytes >= bytes, JSON.stringify(s));
    assert.is(sha256Of(image, bytes), sha256Of(source, bytes));
  };
  // The network is down when the shutdown hook runs.
  ddDirect(source, 3000, 16);
  server.stop();
  shutdownFails(/^p: no shutdown record: its DPSR drive nbd\+unix:\/\/\/\?socket=\S+ cannot be reached .*; the next boot compares the whole source$/);
  rebootJudged('boot-2', /no shutdown record/);
  // The record reaches the export; the connection is lost before its confirmation (the server killed at its 2nd write).
  ddDirect(source, 5000, 16);
  server.stop();
  server = serveNbd(fx, { image, sock: server.sock, args: ['--threads=1'],
    prefix: ['strace', '-f', '-qq', '-o', '/dev/null', '-e', 'trace=pwrite64', '-e', 'inject=pwrite64:signal=SIGKILL:when=2'] });
  shutdownFails(/^p: no shutdown record: its DPSR drive \S+ cannot be reached .*: the record made is left unconfirmed; the next boot compares the whole source$/);
  server.stop();
  rebootJudged('boot-3', /the shutdown record cannot be trusted: it was made but never confirmed/);
});

test('a boot without the drive, a crash, then a boot with it: the record is from the boot before that, refused (a gap), exact afterwards', () => {
  const { source, drive, bytes } = pairWritten();
  assert.ok(json('shutdown').shutdown[0].recorded);
  const replug = rebootWithoutDrive(source, drive, 'boot-2');
  assert.ok(json('boot').boot[0].awaiting);
  runDpsr(env, ['status', 'p']); // the system runs on: its first session saves the pair's state in this boot
  ddDirect(source, 20000, 16); // tracked in this boot only, then lost with it
  replug();
  reboot(source, drive); // a crash: no dpsr shutdown
  const up = json('boot').boot[0];
  assert.not.ok(up.resumed, JSON.stringify(up));
  assert.is(up.cause, 'unclean-shutdown');
  assert.match(up.detail, /DPSR drive was missing through the last boot.*from the boot before/);
  const s = syncJson();
  assert.ok(s.comparedBytes >= SOURCE_MiB * 2 ** 20, JSON.stringify(s));
  assert.is(sha256Of(source), sha256Of(drive, bytes));
});

test('a write before tracking began while the drive is missing: judged a gap (written-before-attach) when it is back, the record consumed', () => {
  const { source, drive, bytes } = pairWritten();
  assert.ok(json('shutdown').shutdown[0].recorded);
  const replug = rebootWithoutDrive(source, drive, 'boot-2');
  ddDirect(source, 5000, 8); // before dpsr boot: unseen
  assert.ok(json('boot').boot[0].awaiting);
  replug();
  assert.ok(gapCauses().includes('written-before-attach'), 'the first session with the drive back judges, with what dpsr boot counted');
  const s = syncJson();
  assert.ok(s.comparedBytes >= SOURCE_MiB * 2 ** 20, JSON.stringify(s));
  assert.is(sha256Of(source), sha256Of(drive, bytes));
  reboot(source, drive);
  const up = json('boot').boot[0];
  assert.match(up.detail, /no shutdown record/, 'consumed when judged');
});

test.run();
