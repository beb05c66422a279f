// dpsr diff on real pairs (loop devices, ext4 and xfs, made with the CLI):
// it lists exactly what was changed, deleted and added since the sync, and
// never changes a byte of the DPSR drive (sha256 of the whole drive), also
// for an image whose journal was not clean at its point in time.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { openDirect } from '../src/io/direct-io.js';
import { compareMeta, type FileMeta } from '../src/restore/file-diff.js';
import { readLabel, writeLabel } from '../src/drive/label.js';
import { DPSR_BIN, Fixture, runDpsr, runDpsrOk, sh, sha256Of, eachTestFreshCli } from './helpers/fixture.js';
import { LocalDevice } from '../src/io/local-device.js';

const dev = (fd: number) => new LocalDevice(fd);

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args);

const ok = (...args: string[]) => runDpsrOk(env, args);

/** ext4 without lazy init, so nothing but us writes to it once mounted. */
function mkfs(dev: string, type: 'ext4' | 'xfs'): void {
  if (type === 'ext4') sh('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', dev]);
  else fx.mkfs(dev, 'xfs');
}

/** A source with a file system holding populate()'s docs/, mounted (noatime: reads change nothing), and a drive for it. */
function populatedSource(type: 'ext4' | 'xfs') {
  const mib = type === 'xfs' ? 320 : 96; // mkfs.xfs wants over ~300 MB
  const source = fx.loop(mib);
  const drive = fx.loop(mib + 64);
  mkfs(source, type);
  const mnt = fx.mount(source, ['-o', 'noatime']);
  populate(mnt);
  return { source, drive, mnt };
}

const write = (file: string, data: string | Buffer) => {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, data);
};

function populate(mnt: string): void {
  for (const name of ['keep.txt', 'change.txt', 'mode.txt', 'gone.txt']) write(path.join(mnt, 'docs', name), `${name}\n`);
  for (let i = 0; i < 3; i++) write(path.join(mnt, 'docs/old', `f${i}.bin`), crypto.randomBytes(10_000 + i));
  write(path.join(mnt, 'docs/same/s.bin'), crypto.randomBytes(5000));
}

/** Changes after the sync, and what diff must list for them (in its order: sorted by path). */
function alter(mnt: string): Array<{ path: string; change: string; why: string[] }> {
  fs.rmSync(path.join(mnt, 'docs/gone.txt'));
  fs.appendFileSync(path.join(mnt, 'docs/change.txt'), 'more\n');
  fs.chmodSync(path.join(mnt, 'docs/mode.txt'), 0o600);
  fs.rmSync(path.join(mnt, 'docs/old'), { recursive: true });
  write(path.join(mnt, 'docs/new.txt'), 'new\n');
  return [
    { path: 'docs/change.txt', change: 'changed', why: ['size', 'mtime'] },
    { path: 'docs/gone.txt', change: 'deleted', why: [] },
    { path: 'docs/mode.txt', change: 'changed', why: ['mode'] },
    { path: 'docs/new.txt', change: 'added', why: [] },
    { path: 'docs/old', change: 'deleted', why: [] },
  ];
}

interface Entry { path: string; change: string; why: string[]; source: { type: string; files?: number } | null; image: { type: string; files?: number } | null }

function diffJson(...args: string[]): { entries: Entry[]; partition: number | null; path: string } {
  return JSON.parse(ok('diff', ...args, '--json'));
}

const brief = (entries: Entry[]) => entries.map(({ path: p, change, why }) => ({ path: p, change, why }));

/** None of diff's private mounts or loop devices outlive it. */
function assertNothingLeft(drive: string): void {
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  assert.not.match(mounts, /dpsr-mnt-|dpsr-src-/, 'a private mount was left behind');
  const loops = sh('losetup', ['--list', '--noheadings', '-O', 'NAME,BACK-FILE']);
  assert.not.ok(loops.split('\n').some((l) => l.trim().endsWith(` ${drive}`)), `a loop device over ${drive} was left: ${loops}`);
}

/** Polls (flock -n) until another process holds the lock file, or until nobody does. */
function waitUntilHeld(file: string, held = true): void {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const free = sh('sh', ['-c', `flock -n ${file} true && echo free || echo held`]).trim() === 'free';
    if (free !== held) return;
    if (Date.now() > deadline) throw new Error(`${file} is still ${held ? 'free' : 'held'}`);
    sh('sleep', ['0.05']);
  }
}


test('compareMeta: directories by type, mode and owner only; symlinks by target; a type change alone', () => {
  const base: FileMeta = { type: 'file', sizeBytes: 10, mtimeNs: 1n, mode: 0o644, uid: 0, gid: 0 };
  assert.equal(compareMeta(base, { ...base }), []);
  assert.equal(compareMeta(base, { ...base, sizeBytes: 11, mtimeNs: 2n, mode: 0o600, gid: 5 }), ['size', 'mtime', 'mode', 'owner']);
  const dir: FileMeta = { ...base, type: 'dir' };
  assert.equal(compareMeta(dir, { ...dir, sizeBytes: 4096, mtimeNs: 9n }), []);
  assert.equal(compareMeta(dir, { ...dir, uid: 7 }), ['owner']);
  const link: FileMeta = { ...base, type: 'symlink', target: 'a', mode: 0o777 };
  assert.equal(compareMeta(link, { ...link, mode: 0o755, mtimeNs: 5n }), []);
  assert.equal(compareMeta(link, { ...link, target: 'b' }), ['target']);
  assert.equal(compareMeta(base, { ...dir, uid: 3 }), ['type']);
});

test('ext4 mounted and frozen for the sync: diff lists exactly what changed; the drive is unchanged', async () => {
  const { source, drive, mnt } = populatedSource('ext4');
  fs.mkdirSync(path.join(mnt, 'docs/elsewhere')); // a mount point for another file system, later
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p');
  const expected = alter(mnt);
  const before = sha256Of(drive);

  const all = diffJson('p');
  assert.equal(brief(all.entries), expected);
  assert.is(all.path, '/');
  const old = all.entries.find((e) => e.path === 'docs/old')!;
  assert.is(old.image?.type, 'dir');
  assert.is(old.image?.files, 3);

  const text = ok('diff', 'p');
  assert.match(text, /≠ docs\/change\.txt/);
  assert.match(text, /docs\/gone\.txt .* deleted since the sync/);
  assert.match(text, /docs\/new\.txt .* new since the sync/);
  assert.match(text, /5 differences: 2 changed, 2 deleted since the sync, 1 new since the sync/);

  // PATH: relative to the file system's root, or absolute under the source's mount point.
  assert.equal(brief(diffJson('p', 'docs/old').entries), [expected[4]]);
  assert.equal(brief(diffJson('p', path.join(mnt, 'docs/mode.txt')).entries), [expected[2]]);
  assert.equal(diffJson('p', 'docs/same').entries, []);
  assert.match(ok('diff', 'p', 'docs/same'), /no differences/);
  assert.is(dpsr('diff', 'p', '--exit-code').status, 1);
  assert.is(dpsr('diff', 'p', 'docs/same', '--exit-code').status, 0);
  const outside = dpsr('diff', 'p', '/definitely/not/there');
  assert.is(outside.status, 2, outside.stderr);

  // --content sees a change that keeps size and mtime.
  const same = path.join(mnt, 'docs/same/s.bin');
  const ref = path.join(fx.dir, 'mtime-ref');
  fs.writeFileSync(ref, '');
  sh('touch', ['-m', '-r', same, ref]); // nanoseconds kept (fs.utimes would round them)
  const fd = fs.openSync(same, 'r+');
  const first = Buffer.alloc(1);
  fs.readSync(fd, first, 0, 1, 0);
  fs.writeSync(fd, Buffer.from([first[0] ^ 0xff]), 0, 1, 0);
  fs.closeSync(fd);
  sh('touch', ['-m', '-r', ref, same]);
  assert.equal(diffJson('p', 'docs/same').entries, []);
  assert.equal(brief(diffJson('p', 'docs/same', '--content').entries), [{ path: 'docs/same/s.bin', change: 'changed', why: ['content'] }]);

  // Another file system mounted inside the source's is not the pair's.
  const other = fx.loop(16);
  mkfs(other, 'ext4');
  sh('mount', [other, path.join(mnt, 'docs/elsewhere')]);
  fx.defer('umount elsewhere', () => sh('umount', [path.join(mnt, 'docs/elsewhere')]));
  const elsewhere = dpsr('diff', 'p', path.join(mnt, 'docs/elsewhere/lost+found'));
  assert.is(elsewhere.status, 2, elsewhere.stderr);
  assert.match(elsewhere.stderr, /not on pair p's source/);
  assert.equal(brief(diffJson('p', 'docs').entries), expected, 'the bind mount shows the source without what is mounted in it');

  // While another command holds the drive lock, diff waits for it: released once diff says it waits.
  const driveLock = path.join(env.DPSR_STATE_DIR!, 'drive-p.lock');
  const release = fx.background(`flock -x ${driveLock} sleep 600`);
  waitUntilHeld(driveLock);
  let released = false;
  const waited = await new Promise<{ code: number | null; output: string; releasedFirst: boolean }>((resolve) => {
    const child = spawn(process.execPath, [DPSR_BIN, 'diff', 'p', 'docs/same'], { env });
    let output = '';
    const take = (d: Buffer) => {
      output += d;
      if (!released && /waiting: pair p's DPSR drive is in use/.test(output)) { released = true; void release(); }
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('exit', (code) => resolve({ code, output, releasedFirst: released }));
  });
  assert.is(waited.code, 0, waited.output);
  assert.ok(waited.releasedFirst, `diff did not wait for the lock: ${waited.output}`);

  assert.is(sha256Of(drive), before, 'diff changed the DPSR drive');
  assertNothingLeft(drive);
});

test('xfs synced under a running writer, and unmounted afterwards: diff lists exactly what changed; the drive is unchanged', async () => {
  const { source, drive, mnt } = populatedSource('xfs');
  ok('pair', source, drive, '--name', 'p');
  const stop = fx.startWriter(mnt, 8, 4);
  const r = JSON.parse(ok('sync', 'p', '--json')).syncs[0];
  await stop();
  assert.is(r.image, 'point-in-time');
  const expected = alter(mnt);
  let before = sha256Of(drive);
  assert.equal(brief(diffJson('p', 'docs').entries), expected);
  assert.is(sha256Of(drive), before, 'diff changed the DPSR drive');

  // Synced again without a freeze under the writer: the image's log is dirty (a plain
  // read-only mount would have to replay it; norecovery must not).
  const stop2 = fx.startWriter(mnt, 8, 4);
  const fuzzy = JSON.parse(ok('sync', 'p', '--json', '--no-freeze')).syncs[0];
  await stop2();
  assert.ok(['crash-consistent', 'fuzzy'].includes(fuzzy.image), fuzzy.image);
  before = sha256Of(drive);
  assert.is(dpsr('diff', 'p', 'docs').status, 3);
  const forced = dpsr('diff', 'p', 'docs', '--force', '--json');
  // What it shows may be stale (the log holds the changes, and it is not replayed): only that it ran.
  assert.is(forced.status, 0, forced.stderr);
  assert.is(sha256Of(drive), before, 'diff --force changed the DPSR drive');

  // The source unmounted: diff mounts it read-only itself.
  sh('umount', [mnt]);
  const sourceBefore = sha256Of(source);
  diffJson('p', 'docs', '--force');
  assert.is(sha256Of(source), sourceBefore, 'diff wrote to the unmounted source');
  assert.is(sha256Of(drive), before, 'diff changed the DPSR drive');
  assertNothingLeft(drive);
});

test('an image that is not one point in time (ext4, --no-freeze): refused without --force, shown with it; nothing written', async () => {
  const { source, drive, mnt } = populatedSource('ext4');
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p');
  const stop = fx.startWriter(mnt, 8, 4);
  await stop(); // its last writes are in the journal, maybe not yet in place
  const r = JSON.parse(ok('sync', 'p', '--json', '--no-freeze')).syncs[0];
  assert.ok(['crash-consistent', 'fuzzy'].includes(r.image), r.image);
  // The image of a mounted ext4 not frozen: its journal needs recovery, which noload must not do.
  assert.match(sh('dumpe2fs', ['-h', drive]), /needs_recovery/);
  alter(mnt);
  const before = sha256Of(drive);
  const to = path.join(fx.dir, 'restored');

  const refused = dpsr('diff', 'p');
  assert.is(refused.status, 3, refused.stderr);
  assert.match(refused.stderr, new RegExp(`${r.image}.*--force`));
  const refusedRestore = dpsr('restore', 'p', 'docs', '--to', to);
  assert.is(refusedRestore.status, 3, refusedRestore.stderr);
  assert.not.ok(fs.existsSync(to), 'a refused restore created --to');
  assert.is(sha256Of(drive), before);

  const forced = dpsr('diff', 'p', 'docs', '--force', '--json');
  assert.is(forced.status, 0, forced.stderr);
  assert.match(forced.stderr, /warning: .*--force/);
  assert.ok(JSON.parse(forced.stdout).entries.some((e: Entry) => e.path === 'docs/gone.txt' && e.change === 'deleted'));
  assert.is(sha256Of(drive), before, 'diff --force changed the DPSR drive');

  const unknown = dpsr('diff', 'nope');
  assert.is(unknown.status, 1);
  assert.match(unknown.stderr, /no pair named nope/);
  assert.is(sha256Of(drive), before);
  assertNothingLeft(drive);
});

test('an interrupted sync named in the label: refused while another process owns tracking, else finished first', async () => {
  const { source, drive, mnt } = populatedSource('ext4');
  sh('umount', [mnt]);
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p', '--quiet-period', '0.2');
  // What a sync killed after writing its label and before committing leaves: a pending transaction.
  sh('blockdev', ['--setrw', drive]);
  const fd = openDirect(drive, true);
  try {
    const label = readLabel(dev(fd))!;
    writeLabel(dev(fd), { ...label, pendingTxn: { seq: label.journalSeq + 1, image: 'point-in-time', imageTimeMs: Date.now() } }, label.seq);
  } finally {
    fs.closeSync(fd);
    sh('blockdev', ['--setro', drive]);
  }
  const before = sha256Of(drive);
  const stopOwner = fx.background(`flock -x ${env.DPSR_LOCK} sleep 600`); // held until stopped
  waitUntilHeld(env.DPSR_LOCK!);
  const refused = dpsr('diff', 'p');
  assert.is(refused.status, 3, refused.stderr);
  assert.match(refused.stderr, /a sync was interrupted .*run dpsr sync p first/);
  assert.is(sha256Of(drive), before, 'a refused diff wrote to the drive');
  await stopOwner();
  waitUntilHeld(env.DPSR_LOCK!, false);
  const out = ok('diff', 'p');
  assert.match(out, /never committed its transaction; the image is the previous one/);
  assert.match(out, /no differences/);
  const status = JSON.parse(ok('status', '--drive', drive, '--json'));
  assert.is(status.label.pendingTxn, null, 'the label no longer names a pending transaction');
});

test('a whole-disk pair: the partition comes from the mount point or --in-partition, mounted at its offset in the image', () => {
  const { disk, parts } = fx.partitionedLoop(160, [32, 100]);
  mkfs(parts[0], 'ext4'); // (this kernel has no vfat)
  mkfs(parts[1], 'ext4');
  const drive = fx.loop(160 + 64);
  const mnt = fx.mount(parts[1], ['-o', 'noatime']);
  populate(mnt);
  ok('pair', disk, drive, '--name', 'disk');
  ok('sync', 'disk');
  const expected = alter(mnt);
  const before = sha256Of(drive);

  const byMount = diffJson('disk', path.join(mnt, 'docs'));
  assert.is(byMount.partition, 2);
  assert.equal(brief(byMount.entries), expected);
  assert.equal(brief(diffJson('disk', 'docs', '--in-partition', '2').entries), expected);
  const ambiguous = dpsr('diff', 'disk');
  assert.is(ambiguous.status, 2, ambiguous.stderr);
  assert.match(ambiguous.stderr, /1 \(ext4\), 2 \(ext4\).*--in-partition/);
  assert.equal(diffJson('disk', '--in-partition', '1').entries, [], 'the unmounted partition 1 is unchanged');

  // And back: the deleted file from partition 2's image.
  ok('restore', 'disk', path.join(mnt, 'docs/gone.txt'));
  assert.is(fs.readFileSync(path.join(mnt, 'docs/gone.txt'), 'utf8'), 'gone.txt\n');
  assert.is(sha256Of(drive), before, 'diff or restore changed the DPSR drive');
  assertNothingLeft(drive);
});

test.run();
