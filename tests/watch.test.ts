// dpsr watch, as a user runs it: the real CLI, the real programs, loop devices.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { OWNER_RING } from '../src/kernel/kernel-abi.js';
import { Tracker } from '../src/kernel/tracker.js';
import { KernelTracking } from '../src/kernel/tracking.js';
import { AS_NOBODY, DPSR_BIN, Fixture, ddDirect, publicCli, sweepStaleTestPins, testAsNobody } from './helpers/fixture.js';

const bin = DPSR_BIN;

let fx: Fixture;
let pinDir: string;
test.before.each(() => {
  sweepStaleTestPins();
  fx = new Fixture();
  pinDir = fx.pinDir();
});
test.after.each(() => fx.cleanup());

const env = () => ({ ...process.env, DPSR_BPF_DIR: pinDir });

interface Watcher {
  child: ChildProcessWithoutNullStreams;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** Starts `dpsr watch`, resolved once it says it is watching. */
async function startWatch(args: string[]): Promise<Watcher> {
  const child = spawn(process.execPath, [bin, 'watch', ...args], { env: env() });
  fx.defer('kill watch', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '', err = '';
  child.stdout.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d) => {
      err += d;
      if (err.includes('watching')) resolve();
    });
    exited.then(() => reject(new Error(`watch exited early: ${err}`)));
  });
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Stops a watcher once it has printed `lines` lines while running (its reader's timer delivered them). */
async function stopWatch(w: Watcher, lines: number): Promise<Array<Record<string, unknown>>> {
  for (const deadline = Date.now() + 20_000; w.stdout().split('\n').length <= lines; await new Promise((r) => setTimeout(r, 10))) {
    if (Date.now() > deadline) assert.unreachable(`watch printed ${w.stdout().split('\n').length - 1} of ${lines} lines in 20 s`);
  }
  w.child.kill('SIGINT');
  assert.is(await w.exited, 0, w.stderr());
  return w.stdout().trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

const extentsOf = (lines: Array<Record<string, unknown>>) =>
  lines.filter((l) => l.op === 'write').map((l) => [l.start, l.end]);

test('watch --json prints each write with half-open sectors, then detaches when it was the last user', async () => {
  const dev = fx.loop(32);
  const w = await startWatch([dev, '--json']);
  const written = [ddDirect(dev, 0, 8), ddDirect(dev, 777, 1), ddDirect(dev, 60000, 128)];
  const lines = await stopWatch(w, written.length);
  assert.equal(extentsOf(lines), written);
  assert.ok(lines.every((l) => l.device === path.basename(dev) && typeof l.time === 'number'));
  assert.not.ok(fs.existsSync(pinDir), 'programs detached: nobody else used them');
});

test('watch on a partition prints partition-relative sectors and nothing from its sibling', async () => {
  const { parts } = fx.partitionedLoop(64, [16, 16]);
  const w = await startWatch([parts[1], '--json']);
  ddDirect(parts[0], 0, 8);
  const written = [ddDirect(parts[1], 8, 8), ddDirect(parts[1], 1000, 16)];
  const lines = await stopWatch(w, written.length);
  assert.equal(extentsOf(lines), written);
});

test('watch shares tracking: the owner keeps its slot and its records, and the programs stay attached', async () => {
  const dev = fx.loop(32);
  const kt = KernelTracking.open({ pinDir });
  fx.defer('close kt', () => kt.close());
  const tracker = Tracker.start(kt, { ownerLockPath: fx.lockPath(), ringBytes: 1 << 20 });
  fx.defer('abandon tracker', () => tracker.abandon());
  const range = await tracker.track(resolveBlockDevice(dev), 'test');
  const w1 = await startWatch([dev, '--json']);
  const w2 = await startWatch([dev, '--json']);
  const written = [ddDirect(dev, 16, 8)];
  const [l1, l2] = await Promise.all([stopWatch(w1, written.length), stopWatch(w2, written.length)]);
  assert.equal(extentsOf(l1), written);
  assert.equal(extentsOf(l2), written);
  assert.ok(fs.existsSync(path.join(pinDir, 'link_complete')), 'still attached');
  assert.is(kt.slotsOf(OWNER_RING).length, 1, "the owner's slot is kept");
  ddDirect(dev, 4000, 8);
  await tracker.cycle();
  assert.equal(range.dirty.toArray(), [[16, 24], [4000, 4008]]);
});

test('a watcher killed with -9 is reclaimed by the next one, which then detaches', async () => {
  const dev = fx.loop(32);
  const w = await startWatch([dev, '--json']);
  w.child.kill('SIGKILL');
  await w.exited;
  assert.ok(fs.existsSync(path.join(pinDir, 'link_complete')), 'pins outlive the killed process');
  const w2 = await startWatch([dev, '--json']);
  const written = [ddDirect(dev, 32, 8)];
  assert.equal(extentsOf(await stopWatch(w2, written.length)), written);
  assert.not.ok(fs.existsSync(pinDir), 'the dead consumer was reclaimed, so the last user detached');
});

function runWatch(args: string[], extraEnv: Record<string, string> = {}) {
  return spawnSync(process.execPath, [bin, 'watch', ...args], { env: { ...env(), ...extraEnv }, encoding: 'utf8', timeout: 20_000 });
}

function assertRefused(res: ReturnType<typeof runWatch>, pattern: RegExp): void {
  assert.is(res.status, 3, `exit status; stderr: ${res.stderr}`);
  const lines = res.stderr.trim().split('\n');
  assert.is(lines.length, 1, `one line: ${res.stderr}`);
  assert.match(lines[0], pattern);
  assert.not.ok(fs.existsSync(pinDir), 'nothing was loaded');
}

test('bad input: not a block device, missing device', () => {
  assertRefused(runWatch([fx.image('plain', 1)]), /not a block device/);
  assertRefused(runWatch(['/dev/nonexistent-dpsr']), /no such device/);
});

test('bad input: a bio-based device (zram) is refused', () => {
  if (!fs.existsSync('/sys/class/zram-control')) spawnSync('modprobe', ['zram']);
  if (!fs.existsSync('/sys/class/zram-control/hot_add')) {
    assert.unreachable('zram is available on this machine (modprobe zram)');
  }
  const id = fs.readFileSync('/sys/class/zram-control/hot_add', 'utf8').trim();
  fx.defer(`remove zram${id}`, () => {
    fs.writeFileSync(`/sys/block/zram${id}/reset`, '1');
    fs.writeFileSync('/sys/class/zram-control/hot_remove', id);
  });
  // A zram in use has a size: one without is a device with no medium, and refused as that first.
  fs.writeFileSync(`/sys/block/zram${id}/disksize`, String(16 << 20));
  assertRefused(runWatch([`/dev/zram${id}`]), /bio-based/);
});

test('bad input: iostats off is refused with the command that fixes it', () => {
  const dev = fx.loop(32);
  const knob = `/sys/block/${path.basename(dev)}/queue/iostats`;
  fs.writeFileSync(knob, '0');
  fx.defer('iostats on', () => fs.writeFileSync(knob, '1'));
  assertRefused(runWatch([dev]), new RegExp(`echo 1 > ${knob}`));
});

testAsNobody(test, 'bad input: not root', () => {
  const dev = fx.loop(32);
  assertRefused(spawnSync(AS_NOBODY[0], [...AS_NOBODY.slice(1), process.execPath, publicCli(), 'watch', dev], { env: env(), encoding: 'utf8', timeout: 20_000 }), /needs root/);
});

test('bad input: no kernel BTF', () => {
  assertRefused(runWatch([fx.loop(32)], { DPSR_KERNEL_BTF: '/nonexistent/vmlinux' }), /BTF/);
});

test('usage errors exit 2', () => {
  const res = spawnSync(process.execPath, [bin, 'watch'], { encoding: 'utf8' });
  assert.is(res.status, 2);
  const res2 = spawnSync(process.execPath, [bin, 'frobnicate'], { encoding: 'utf8' });
  assert.is(res2.status, 2);
});

test.run();
