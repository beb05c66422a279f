// Freezes are always thawed: by dpsr, at the watchdog's deadline, or when
// dpsr is killed with -9 in the middle of one.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freeze } from '../src/sync/freeze.js';
import { DPSR_BIN, Fixture, freshCliFixture, runDpsr, sha256Of, sh } from './helpers/fixture.js';

const here = path.dirname(fileURLToPath(import.meta.url));
let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before.each(() => { ({ fx, env } = freshCliFixture()); });
test.after.each(() => fx.cleanup());

/** Whether a write to the mount completes within `ms` (a frozen file system blocks writers). */
function writable(mnt: string, ms = 1500): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn('sh', ['-c', `echo x > ${mnt}/probe && sync -f ${mnt}`]);
    const timer = setTimeout(() => resolve(false), ms);
    child.on('exit', () => { clearTimeout(timer); resolve(true); });
    fx.defer('probe', () => child.kill('SIGKILL'));
  });
}

function mounted(type: 'ext4' | 'xfs', mib: number): string {
  const dev = fx.loop(mib);
  fx.mkfs(dev, type);
  const mnt = fx.mount(dev);
  fx.defer(`thaw ${mnt}`, () => { try { sh('fsfreeze', ['-u', mnt]); } catch { /* not frozen */ } });
  return mnt;
}

test('freeze blocks writers, thaw releases them (ext4 and xfs)', async () => {
  const a = mounted('ext4', 64);
  const b = mounted('xfs', 320);
  const f = await freeze([a, b], 10_000);
  assert.not.ok(await writable(a, 500), 'ext4 frozen');
  const r = await f.thaw();
  assert.not.ok(r.thawedByWatchdog);
  assert.ok(r.durationMs < 5000);
  assert.ok(await writable(a));
  assert.ok(await writable(b));
});

test('the watchdog thaws at its deadline, and the thaw reports it', async () => {
  const a = mounted('ext4', 64);
  const f = await freeze([a], 300);
  await new Promise((r) => setTimeout(r, 800));
  assert.ok(await writable(a), 'thawed by the watchdog');
  const r = await f.thaw();
  assert.ok(r.thawedByWatchdog, 'a pass during which the watchdog thawed is rejected');
});

/** Another process that freezes `mounts` (and remounts `readOnly` read-only) and then lives on until killed. */
async function freezingChild(mounts: string[], readOnly: string[]): Promise<ChildProcess> {
  const script = path.join(fx.dir, 'freezer.mjs');
  fs.writeFileSync(script, `import { freeze } from ${JSON.stringify(path.resolve(here, '../src/sync/freeze.js'))};
await freeze(${JSON.stringify(mounts)}, 60000, ${JSON.stringify(readOnly)});
process.stdout.write('frozen\\n');
setInterval(() => {}, 1000);
`);
  const child = spawn(process.execPath, [script]);
  fx.defer('kill freezer', () => child.kill('SIGKILL'));
  await new Promise<void>((resolve) => child.stdout.on('data', (d) => { if (String(d).includes('frozen')) resolve(); }));
  return child;
}

test('kill -9 of the freezing process: the watchdog thaws at once', async () => {
  const a = mounted('ext4', 64);
  const child = await freezingChild([a], []);
  assert.not.ok(await writable(a, 500), 'frozen');
  child.kill('SIGKILL');
  assert.ok(await writable(a, 3000), 'thawed after the freezer died');
});

// vfat (an EFI system partition) cannot freeze and is remounted read-only
// around the cut; this kernel has no vfat, so the mechanism is shown on ext4.
const isReadOnly = (mnt: string) => fs.readFileSync('/proc/mounts', 'utf8').split('\n')
  .find((l) => l.split(' ')[1] === mnt)!.split(' ')[3].split(',').includes('ro');

test('a file system that cannot freeze is remounted read-only, then writable again', async () => {
  const a = mounted('ext4', 64);
  const b = mounted('ext4', 64);
  const f = await freeze([a], 10_000, [b]);
  assert.ok(isReadOnly(b), 'read-only during the cut');
  assert.not.ok(await writable(a, 300));
  await f.thaw();
  assert.not.ok(isReadOnly(b), 'writable again');
  assert.ok(await writable(b));
});

test('kill -9 while a file system is remounted read-only: the watchdog makes it writable again', async () => {
  const a = mounted('ext4', 64);
  const child = await freezingChild([], [a]);
  assert.ok(isReadOnly(a));
  child.kill('SIGKILL');
  for (let i = 0; i < 30 && isReadOnly(a); i++) await new Promise((r) => setTimeout(r, 100));
  assert.not.ok(isReadOnly(a), 'writable again after the process died');
});

/** A paired, mounted source with bind mounts of its directories: several, one nested in another, one read-only. */
function boundSource(type: 'ext4' | 'xfs', mib: number) {
  const { source, drive, bytes } = fx.pairDevices(mib);
  fx.mkfs(source, type);
  const pair = runDpsr(env, ['pair', source, drive, '--name', 'p']);
  assert.is(pair.status, 0, pair.stderr);
  const mnt = fx.mount(source);
  for (const d of ['var', 'var/lib', 'home']) fs.mkdirSync(path.join(mnt, d));
  const binds = [fx.mount(path.join(mnt, 'var'), ['--bind'])];
  binds.push(fx.mount(path.join(binds[0], 'lib'), ['--bind']));
  binds.push(fx.mount(path.join(mnt, 'home'), ['--bind', '-o', 'ro']));
  sh('mount', ['-o', 'remount,bind,ro', binds[2]]);
  return { source, drive, bytes, mnt, binds };
}

/** After the source is unmounted (which writes to it), one more sync makes the DPSR drive equal to it. */
function assertWhole(source: string, drive: string, bytes: number) {
  const r = runDpsr(env, ['sync', 'p', '--quiet-period', '0.2']);
  assert.is(r.status, 0, r.stderr);
  assert.is(sha256Of(drive, bytes), sha256Of(source, bytes), 'the DPSR drive equals the source');
}

function assertFrozenOnce(r: { status: number | null; stdout: string; stderr: string }) {
  assert.is(r.status, 0, r.stderr);
  const report = JSON.parse(r.stdout).syncs[0];
  assert.type(report.freezeMs, 'number', 'frozen');
  assert.is(report.sourceMounted.length, 1, `one file system, frozen once: ${JSON.stringify(report.sourceMounted)}`);
  assert.is(report.image, 'point-in-time');
}

for (const [type, mib] of [['ext4', 64], ['xfs', 320]] as const) {
  test(`a ${type} source mounted several times (bind mounts, nested, read-only) is frozen once; the image is whole and clean`, () => {
    const { source, drive, bytes, mnt, binds } = boundSource(type, mib);
    for (const [i, dir] of [mnt, binds[0], binds[1]].entries()) fs.writeFileSync(path.join(dir, `file-${i}`), Buffer.alloc(300_000, i + 1));
    assertFrozenOnce(runDpsr(env, ['sync', 'p', '--json']));
    // A frozen ext4 leaves a clean journal (xfs keeps a log that xfs_repair -n calls dirty: checked after).
    if (type === 'ext4') sh('fsck.ext4', ['-n', '-f', drive]);
    for (const m of [...binds].reverse()) fx.unmount(m);
    fx.unmount(mnt);
    assertWhole(source, drive, bytes);
    if (type === 'xfs') sh('xfs_repair', ['-n', '-f', drive]);
  });
}

test('in a mount namespace where the source is only a read-only view (a unit\'s ProtectSystem=strict), the sync still freezes it', () => {
  const { source, drive, bytes, mnt, binds } = boundSource('ext4', 64);
  fs.writeFileSync(path.join(mnt, 'data'), Buffer.alloc(500_000, 7));
  const r = spawnSync('unshare', ['--mount', '--propagation', 'slave', 'sh', '-c',
    `mount -o remount,bind,ro "$1" && shift && exec "$@"`, 'sh', mnt, process.execPath, DPSR_BIN, 'sync', 'p', '--json'], { env, encoding: 'utf8' });
  assertFrozenOnce(r);
  sh('fsck.ext4', ['-n', '-f', drive]);
  for (const m of [...binds].reverse()) fx.unmount(m);
  fx.unmount(mnt);
  assertWhole(source, drive, bytes);
});

test.run();
