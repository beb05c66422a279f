// Recovery proven by booting: a real system disk built from Debian packages
// (kernel, busybox initramfs, extlinux), paired with a DPSR drive through the
// real CLI on loop devices, and booted under qemu. The guest's init prints a
// marker and its state file on the serial console; what it prints is what a
// machine would come up with.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { type Fixture, runDpsr, sha256Of, freshCliFixture } from './helpers/fixture.js';
import {
  BOOTED_MARKER, NEW_STATE_FW_CFG, SYSTEM_DISK_MiB, type BootPieces, bootPieces, makeSystemDisk, withMounted,
} from './helpers/boot-image.js';
import { type BootResult, type GuestDisk, bootGuest, serialTail } from './helpers/qemu.js';

const MiB = 1 << 20;
// A boot takes about 5 s alone under software emulation; the machine's 2 CPUs are shared.
const BOOT_TIMEOUT_MS = 120_000;
// A damaged system is given this long to show a marker it should never print.
const BROKEN_BOOT_TIMEOUT_MS = 60_000;
// What the boot loader, the kernel or the test system print when they give up: no need to wait out the timeout.
const BOOT_FAILED = /(Booting kernel failed|Kernel panic|DPSR-TEST-FAILED)[^\r\n]*(?=[\r\n])/;

let pieces: BootPieces;
let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before(() => {
  pieces = bootPieces();
  console.log(`  boot pieces (${pieces.recipe}): ${pieces.builtMs > 0 ? `built in ${(pieces.builtMs / 1000).toFixed(1)} s` : 'from the cache'}`);
});
test.before.each(() => {
  ({ fx, env } = freshCliFixture());
});
test.after.each(() => fx.cleanup());

function ok(...args: string[]): string {
  const r = runDpsr(env, args);
  assert.is(r.status, 0, `dpsr ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const syncJson = (name: string) => JSON.parse(ok('sync', name, '--json', '--quiet-period', '0.5')).syncs[0];

interface Booted extends BootResult {
  /** The state file the system printed, null when it did not come up. */
  state: string | null;
  /** What the guest wrote when handed a new state. */
  wrote: string | null;
  /** The initramfs's account of where it found the root. */
  root: Record<string, string> | null;
}

async function boot(disks: GuestDisk[], opts: { newState?: string; timeoutMs?: number; stopOn?: RegExp } = {}): Promise<Booted> {
  const r = await bootGuest(fx, {
    disks, timeoutMs: opts.timeoutMs ?? BOOT_TIMEOUT_MS, stopOn: opts.stopOn,
    fwCfg: opts.newState !== undefined ? { [NEW_STATE_FW_CFG]: opts.newState } : undefined,
    watchFor: new RegExp(BOOTED_MARKER),
  });
  const field = (re: RegExp) => r.serial.match(re)?.[1] ?? null;
  const rootLine = field(/DPSR-TEST-ROOT ([^\r\n]*)/);
  return {
    ...r,
    state: field(new RegExp(`${BOOTED_MARKER} state=([^\\r\\n]*)`)),
    wrote: field(/DPSR-TEST-WROTE state=([^\r\n]*)/),
    root: rootLine === null ? null : Object.fromEntries(rootLine.split(' ').map((kv) => kv.split('=') as [string, string])),
  };
}

function assertBooted(b: Booted, state: string, what: string): void {
  assert.ok(b.state !== null, `${what}: no ${BOOTED_MARKER} on the console (exit ${b.exitCode}, timed out ${b.timedOut}):\n${serialTail(b.serial)}`);
  assert.is(b.state, state, `${what}: the state it booted with`);
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

test('the DPSR drive boots alone, with the state the system wrote before the last sync', async () => {
  const sys = makeSystemDisk(fx, pieces, 'installed');
  const drive = fx.loop(SYSTEM_DISK_MiB + 64);
  ok('pair', sys.dev, drive, '--name', 'system');

  // The running system changes its state: the guest's write goes through the loop device's block layer.
  const run = await boot([{ path: sys.dev }], { newState: 'configured' });
  assertBooted(run, 'installed', 'the system disk');
  assert.is(run.wrote, 'configured');
  const sync = syncJson('system');
  assert.ok(sync.copiedBytes > 0 && sync.copiedBytes < 8 * MiB, `the sync copied ${sync.copiedBytes} bytes: about what the guest wrote`);
  assert.is(sha256Of(drive, sys.bytes), sha256Of(sys.dev));
  console.log(`  the guest's boot and write: ${seconds(run.endedAt - run.startedAt)}; the sync copied ${sync.copiedBytes} bytes of ${sys.bytes}`);

  // The system disk dies: from now on only the DPSR drive is there. Booted in
  // snapshot mode, so this check writes nothing to it.
  const driveBefore = sha256Of(drive);
  assert.match(ok('status', '--drive', drive), /image point-in-time/, 'the drive\'s own label names a whole image');
  const failedAt = Date.now();
  const rescue = await boot([{ path: drive, snapshot: true }]);
  assertBooted(rescue, 'configured', 'the DPSR drive alone');
  assert.is(rescue.root?.candidates, '1');
  assert.is(sha256Of(drive), driveBefore, 'booting the drive in snapshot mode wrote nothing to it');
  console.log(`  recovery time (system disk dropped -> marker from the DPSR drive): ${seconds(rescue.watchedAt! - failedAt)}`);
});

test('a broken upgrade no longer boots; dpsr rollback copies back about the damaged bytes and it boots again', async () => {
  const sys = makeSystemDisk(fx, pieces, 'before-upgrade');
  const drive = fx.loop(SYSTEM_DISK_MiB + 64);
  ok('pair', sys.dev, drive, '--name', 'system');
  syncJson('system');
  const synced = sha256Of(sys.dev);

  // A failed upgrade: a garbage kernel, a garbage init, /etc gone (the file system itself stays sound).
  const damagedBytes = withMounted(fx, sys.rootPart, (mnt) => {
    let bytes = 0;
    for (const file of ['boot/vmlinuz', 'sbin/init']) {
      const size = fs.statSync(path.join(mnt, file)).size;
      fs.writeFileSync(path.join(mnt, file), crypto.randomBytes(size));
      bytes += size;
    }
    fs.rmSync(path.join(mnt, 'etc'), { recursive: true });
    return bytes;
  });
  // Checked in snapshot mode: the failed attempt adds no writes of its own.
  const broken = await boot([{ path: sys.dev, snapshot: true }], {
    timeoutMs: BROKEN_BOOT_TIMEOUT_MS, stopOn: BOOT_FAILED,
  });
  assert.is(broken.state, null, `the damaged system must not come up:\n${serialTail(broken.serial)}`);
  assert.ok(broken.stoppedOn || broken.timedOut, 'the attempt ended in a boot failure or the timeout, not a clean power-off');
  const failure = broken.serial.match(BOOT_FAILED)?.[0].trim() ?? 'no marker';
  console.log(`  the damaged system: "${failure}" after ${seconds(broken.endedAt - broken.startedAt)}`);

  const rollback = JSON.parse(ok('rollback', 'system', '--yes', '--json'));
  const writtenBytes: number = rollback.rollback?.writtenBytes;
  assert.type(writtenBytes, 'number', `rollback --json: ${JSON.stringify(rollback)}`);
  assert.is(sha256Of(sys.dev), synced, 'the source is the synced image again, sector for sector');
  assert.ok(writtenBytes >= damagedBytes && writtenBytes <= 2 * damagedBytes + 8 * MiB,
    `the rollback wrote ${writtenBytes} bytes for ${damagedBytes} damaged (disk ${sys.bytes})`);
  console.log(`  rollback wrote ${writtenBytes} bytes for ${damagedBytes} bytes of damaged files (disk ${sys.bytes} bytes)`);

  const again = await boot([{ path: sys.dev }]);
  assertBooted(again, 'before-upgrade', 'the rolled-back system');
});

test('both disks attached (same UUIDs): the guest mounts its root from the disk it booted, whichever it is', async () => {
  const sys = makeSystemDisk(fx, pieces, 'synced');
  const drive = fx.loop(SYSTEM_DISK_MiB + 64);
  ok('pair', sys.dev, drive, '--name', 'system');
  syncJson('system');
  // After the sync the source moves on: the two copies of one UUID now say different things.
  withMounted(fx, sys.rootPart, (mnt) => fs.writeFileSync(path.join(mnt, 'var/lib/state'), 'newer-than-the-copy'));

  // Same order on qemu's command line both times (source vda, drive vdb): only the firmware's boot order changes.
  for (const [bootFrom, state, dev] of [['source', 'newer-than-the-copy', '/dev/vda1'], ['drive', 'synced', '/dev/vdb1']] as const) {
    const b = await boot([
      { path: sys.dev, snapshot: true, bootIndex: bootFrom === 'source' ? 1 : 2 },
      { path: drive, snapshot: true, bootIndex: bootFrom === 'drive' ? 1 : 2 },
    ]);
    assertBooted(b, state, `booted from the ${bootFrom}`);
    assert.equal(b.root, { dev, bootdisk: dev.slice(5, -1), candidates: '2', via: 'edd' },
      `two partitions carry the root UUID; the one on the boot disk is mounted`);
  }
});

test('failback: the former DPSR drive, running as the system, paired in reverse onto a fresh disk, makes a copy that boots', async () => {
  const sys = makeSystemDisk(fx, pieces, 'original');
  const drive = fx.loop(SYSTEM_DISK_MiB + 64);
  ok('pair', sys.dev, drive, '--name', 'system');
  syncJson('system');
  // The system disk died; the machine runs from its DPSR drive. Paired back onto a new disk the size
  // of the dead one (plus dpsr's reserve): only the drive's image is copied, not its old tail.
  const fresh = fx.loop(SYSTEM_DISK_MiB + 64);
  const paired = ok('pair', drive, fresh, '--name', 'failback');
  assert.match(paired, /is the DPSR drive of pair system: only its image \(the first 160\.0 MiB\) is copied/);
  ok('unpair', 'system'); // the old pair ends: the copy stops being a DPSR drive
  const run = await boot([{ path: drive }], { newState: 'written-while-running-from-the-copy' });
  assertBooted(run, 'original', 'the former DPSR drive');
  assert.is(run.wrote, 'written-while-running-from-the-copy');
  const sync = syncJson('failback');
  assert.ok(sync.copiedBytes < 8 * MiB, `the failback sync copied ${sync.copiedBytes} bytes`);

  const back = await boot([{ path: fresh, snapshot: true }]);
  assertBooted(back, 'written-while-running-from-the-copy', 'the fresh disk');
});

test.run();
