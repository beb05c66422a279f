// dpsr revert on real pairs: the DPSR drive turned back to a restore point
// boots under qemu with that point's state; kill -9 at exact points of a
// revert (in the journal, in the undo, in the apply) leaves the old image or
// the reverted one, never a mix, the next command finishes it, no point is
// lost, and the next sync brings the drive back to the source (the tracker
// held the reverted blocks dirty); --drop-newer drops exactly the newer
// points and the older ones still read right.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DPSR_BIN, type Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsr, runDpsrKilledAfter, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { BOOTED_MARKER, SYSTEM_DISK_MiB, bootPieces, makeSystemDisk, withMounted } from './helpers/boot-image.js';
import { bootGuest, serialTail } from './helpers/qemu.js';
import { pointHash as pointHashOf } from './helpers/points.js';
import { faultDisk } from './helpers/fault-disk.js';
import { startDaemon, statusOf, waitFor } from './helpers/daemon-child.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args);
const ok = (...args: string[]) => runDpsrOk(env, args);
const pointHash = (name: string, at: string) => pointHashOf(env, name, at);
const points = (name: string): number[] => JSON.parse(ok('history', name, '--json')).points.map((p: { generation: number }) => p.generation);
/** 16 writes of 128 KiB at offsets set by `seed` within the first 60 MiB (2 MiB a round: the history holds every round's points). */
const changeSome = (dev: string, seed: number) => {
  for (let i = 0; i < 16; i++) ddDirect(dev, ((i * 7919 + seed * 131) % 480) * 256, 256);
};
const syncGen = (name: string, ...more: string[]): number => JSON.parse(ok('sync', name, '--quiet-period', '0.2', '--json', ...more)).syncs[0].generation;

test('kill -9 in the journal, the undo and the apply of a revert: old or reverted image, never a mix; the next command finishes it; no point lost; the next sync copies the source back', async () => {
  const source = fx.loop(64);
  const drive = fx.loop(64 + 64 + 192);
  const bytes = 64 << 20;
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p', '--history', '192M');
  const seen = new Map<number, string>(); // generation → its image's hash
  for (let round = 0; round < 3; round++) {
    if (round > 0) changeSome(source, round);
    seen.set(syncGen('p'), sha256Of(drive, bytes));
  }
  const target = [...seen.keys()][0];
  const outcomes: string[] = [];
  for (const [round, fraction] of [0.4, 1.4, 2.4, 2.9].entries()) {
    changeSome(source, 10 + round);
    seen.set(syncGen('p'), sha256Of(drive, bytes));
    const before = sha256Of(drive, bytes);
    const plan = JSON.parse(ok('revert', 'p', '--at', String(target), '--dry-run', '--json')).revert;
    assert.ok(plan.writeBytes > 0 && plan.writeBytes < bytes / 2, `a revert writes what changed since the point: ${plan.writeBytes}`);
    assert.is(sha256Of(drive, bytes), before, 'a dry run wrote to the drive');
    // About one plan's worth each: the journal, then the undo of the image it replaces, then the apply.
    const k = await runDpsrKilledAfter(env, ['revert', 'p', '--at', String(target)], drive, Math.floor(fraction * plan.writeBytes / 512));
    dpsr('status', 'p'); // the owner replays a committed transaction
    let h = sha256Of(drive, bytes);
    assert.ok(h === before || h === seen.get(target), `killed at ${k.writtenSectors} sectors written for ${plan.writeBytes / 512}: the drive is a mix`);
    outcomes.push(`${h === before ? 'old' : 'reverted'}@${k.killed ? fraction : 'done'}`);
    if (h === before) {
      const r = JSON.parse(ok('revert', 'p', '--at', String(target), '--json')).revert;
      assert.is(r.keepNewer, true);
      h = sha256Of(drive, bytes);
    }
    assert.is(h, seen.get(target), 'the drive is the point it was reverted to');
    const gen = JSON.parse(dpsr('status', 'p', '--json').stdout).pairs[0].generation;
    seen.set(gen, h);
    const listed = points('p');
    assert.is(new Set(listed).size, listed.length, `a generation named twice in the history after a kill at ${k.writtenSectors} sectors: ${listed}`);
    for (const g of seen.keys()) assert.ok(listed.includes(g), `generation ${g} was an image and is no point after the revert`);
    assert.ok(JSON.parse(dpsr('status', 'p', '--json').stdout).pairs[0].dirtyBytes > 0, 'the source differs from the reverted drive: not in sync');
    const sourceHash = sha256Of(source);
    seen.set(syncGen('p'), sha256Of(drive, bytes));
    assert.is(sha256Of(drive, bytes), sourceHash, 'the sync after a revert brings the drive back to the source');
  }
  console.log(`  kill -9 outcomes (image@fraction of the revert's data written): ${outcomes.join(' ')}`);
  assert.ok(outcomes.some((o) => o.startsWith('old@') && !o.endsWith('done')), 'some kill came before the commit');
  assert.ok(outcomes.some((o) => o.startsWith('reverted@') && !o.endsWith('done')), 'some kill came after the commit');
  for (const [gen, h] of seen) assert.is(await pointHash('p', String(gen)), h, `restore point ${gen} is not the image it was`);

  // --drop-newer: the points after the target go (with the image replaced); the older ones still read as they were.
  const r = dpsr('revert', 'p', '--at', String(target), '--drop-newer');
  assert.is(r.status, 2, r.stderr); // no terminal, no --yes: nothing done
  const left = JSON.parse(ok('revert', 'p', '--at', String(target), '--drop-newer', '--yes', '--json')).revert;
  assert.is(left.keepNewer, false);
  const kept = points('p');
  assert.ok(kept.every((g) => g < target || g === kept[0]), `only older points and the current image: ${kept}`);
  assert.is(sha256Of(drive, bytes), seen.get(target));
  for (const g of kept.slice(1).filter((x) => seen.has(x))) assert.is(await pointHash('p', String(g)), seen.get(g), `older point ${g} after --drop-newer`);
});

test('a revert applied and labelled but killed before its record was saved: the next command gives it its own generation and the hold; no generation named twice, every point as it was', async () => {
  // The crash state made exactly, whatever the machine's speed: the state directory copied while
  // the revert's writes to the drive are stalled in its apply (its record then names the pending
  // transaction), the revert let finish, then that copy put back. The drive's label is then ahead
  // of the record, as after a kill between the label's last write and the record's.
  const source = fx.loop(16);
  const disk = faultDisk(fx, 16 + 64 + 32);
  const bytes = 16 << 20;
  randomFill(source, 16);
  ok('pair', source, disk.dev, '--name', 'p', '--history', '32M');
  const seen = new Map<number, string>();
  for (let round = 0; round < 3; round++) {
    if (round > 0) for (let i = 0; i < 8; i++) ddDirect(source, ((i * 7919 + round * 131) % 120) * 256, 256);
    seen.set(syncGen('p'), sha256Of(disk.dev, bytes));
  }
  const target = [...seen.keys()][0];
  const plan = JSON.parse(ok('revert', 'p', '--at', String(target), '--dry-run', '--json')).revert;
  disk.stallWrites(Math.floor(2.5 * plan.writeBytes)); // the journal, the undo, then half the apply
  const child = spawn(process.execPath, [DPSR_BIN, 'revert', 'p', '--at', String(target), '--json'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  fx.defer('stop revert', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '';
  child.stdout!.on('data', (d) => { out += d; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.ok(await disk.untilStalled(child), 'the revert stalled in its apply');
  const stateDir = env.DPSR_STATE_DIR!;
  const copy = path.join(fx.dir, 'state-mid-revert');
  fs.mkdirSync(copy);
  for (const f of fs.readdirSync(stateDir)) if (!f.endsWith('-lock')) fs.copyFileSync(path.join(stateDir, f), path.join(copy, f));
  disk.heal();
  assert.is(await exited, 0, out);
  const done = JSON.parse(out).revert;
  for (const f of fs.readdirSync(copy)) fs.copyFileSync(path.join(copy, f), path.join(stateDir, f));
  const st = JSON.parse(dpsr('status', 'p', '--json').stdout).pairs[0];
  assert.is(st.generation, done.generation, 'the reverted image has the revert\'s own generation');
  assert.ok(st.warnings.some((w: string) => /reverted to restore point/.test(w)), `held after the revert: ${st.warnings}`);
  const listed = points('p');
  assert.is(new Set(listed).size, listed.length, `no generation named twice: ${listed}`);
  assert.is(sha256Of(disk.dev, bytes), seen.get(target));
  for (const [gen, h] of seen) assert.is(await pointHash('p', String(gen)), h, `restore point ${gen} is not the image it was`);
});

test('revert, then boot the reverted DPSR drive in qemu: it comes up with the older state', async () => {
  const pieces = bootPieces();
  const sys = makeSystemDisk(fx, pieces, 'v1');
  const drive = fx.loop(SYSTEM_DISK_MiB + 64 + 64);
  ok('pair', sys.dev, drive, '--name', 'system', '--history', 'all');
  const v1 = syncGen('system', '--point', 'installed');
  for (const state of ['v2', 'v3']) {
    withMounted(fx, sys.rootPart, (mnt) => fs.writeFileSync(path.join(mnt, 'var/lib/state'), state));
    syncGen('system');
  }
  const point = await pointHash('system', 'installed');
  const r = JSON.parse(ok('revert', 'system', '--at', 'installed', '--json')).revert;
  assert.is(r.point.generation, v1);
  assert.is(sha256Of(drive, sys.bytes), point, 'the drive holds the point\'s image');
  const b = await bootGuest(fx, { disks: [{ path: drive, snapshot: true }], timeoutMs: 120_000, watchFor: new RegExp(BOOTED_MARKER) });
  const state = b.serial.match(new RegExp(`${BOOTED_MARKER} state=([^\\r\\n]*)`))?.[1] ?? null;
  assert.is(state, 'v1', `the reverted drive boots with the state of point ${v1}:\n${serialTail(b.serial)}`);
});

test('a daemon with a continuous policy holds a reverted pair (status says so, no sync copies the source back) until a manual sync', async () => {
  const source = fx.loop(64);
  const drive = fx.loop(64 + 64 + 64);
  const bytes = 64 << 20;
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p', '--history', '64M');
  fs.writeFileSync(env.DPSR_CONFIG!, 'tick = "200ms"\n[pairs.p]\npolicy = "continuous"\nrpo = "1s"\nmin_interval = "200ms"\n');
  await startDaemon(fx, env);
  changeSome(source, 1);
  await waitFor('the daemon synced by policy', async () => sha256Of(drive, bytes) === sha256Of(source, bytes), 30_000);
  const target = 0;
  const point0 = await pointHash('p', String(target));
  const r = JSON.parse(ok('revert', 'p', '--at', String(target), '--json')).revert; // through the daemon
  assert.ok(r.warnings.some((w: string) => /the daemon's policy holds p .* until a manual dpsr sync p/.test(w)), r.warnings.join('\n'));
  assert.is(sha256Of(drive, bytes), point0);
  const gen = r.generation;
  changeSome(source, 2); // more to sync: a continuous policy would within its rpo
  const held = await waitFor('the daemon saw the new writes', async () => { const st = await statusOf(env, 'p'); return (st.dirtyBytes ?? 0) > 0 && st; });
  assert.ok(held.warnings.some((w) => /reverted to restore point 0 .* the daemon's policy does not sync it until a manual dpsr sync p/.test(w)), held.warnings.join('\n'));
  assert.is(held.nextSync, null, 'no sync planned while held');
  // Five times its rpo, by its own clock: a policy that went on would have synced.
  const since = Date.now();
  await waitFor('five rpo periods', async () => Date.now() - since > 5000, 20_000);
  const st = await statusOf(env, 'p');
  assert.is(st.generation, gen, 'the daemon synced the reverted drive back');
  assert.is(sha256Of(drive, bytes), point0, 'the reverted image was overwritten');
  assert.is(syncGen('p'), gen + 1, 'a manual sync goes on');
  const after = await statusOf(env, 'p');
  assert.not.ok(after.warnings.some((w) => /reverted to restore point/.test(w)), 'the hold ends with a manual sync');
  assert.is(await pointHash('p', String(gen)), point0, 'the reverted image is kept as a restore point');
  changeSome(source, 3);
  await waitFor('the policy syncs again', async () => sha256Of(drive, bytes) === sha256Of(source, bytes), 30_000);
});

test('a revert that keeps the newer points, whose undo would need a labelled point\'s history space: refused before its commit (EHISTORYFULL), nothing written, every point kept', () => {
  const source = fx.loop(32);
  const drive = fx.loop(32 + 64 + 8);
  randomFill(source, 32);
  ok('pair', source, drive, '--name', 'p', '--history', '8M');
  const first = syncGen('p');
  ddDirect(source, 0, 3 * 2048); // 3 MiB: the labelled sync's undo
  const labelled = syncGen('p', '--point', 'before-upgrade');
  ddDirect(source, 8 * 2048, 3 * 2048); // 3 MiB more: the labelled point's own record
  syncGen('p');
  const before = [sha256Of(drive), points('p').join(',')];
  // Back to the first point, keeping the newer: the replaced image's undo (6 MiB) needs the space of both older records.
  const r = dpsr('revert', 'p', '--at', String(first));
  assert.is(r.status, 3, `exit 3: ${r.stderr}`);
  assert.match(r.stderr, new RegExp(`labelled restore point ${labelled} \\("before-upgrade"\\); nothing applied`));
  assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.equal([sha256Of(drive), points('p').join(',')], before, 'nothing written, no point dropped');
  const dropped = JSON.parse(ok('revert', 'p', '--at', String(first), '--drop-newer', '--yes', '--json')).revert;
  assert.is(dropped.point.generation, first, 'dropping the newer points instead needs no room');
});

test('bad input: no history, an unknown point, --at missing: one line, exit status, nothing written', () => {
  const plain = { source: fx.loop(32), drive: fx.loop(32 + 64) };
  randomFill(plain.source, 32);
  ok('pair', plain.source, plain.drive, '--name', 'q');
  const source = fx.loop(32);
  const drive = fx.loop(32 + 64 + 8);
  randomFill(source, 32);
  ok('pair', source, drive, '--name', 'p', '--history', '8M');
  const hashes = () => [sha256Of(source), sha256Of(drive), sha256Of(plain.source), sha256Of(plain.drive)];
  const before = hashes();
  const cases: Array<[string[], number, RegExp]> = [
    [['revert', 'q', '--at', '0'], 3, /keeps no restore points/],
    [['revert', 'p', '--at', '99'], 1, /no restore point of generation 99/],
    [['revert', 'p'], 2, /--at/],
    [['revert', 'nope', '--at', '1'], 1, /no pair named nope/],
  ];
  for (const [args, status, message] of cases) {
    const r = dpsr(...args);
    assert.is(r.status, status, `dpsr ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.is(r.stderr.trim().split('\n').length, 1, `dpsr ${args.join(' ')}: one line: ${r.stderr}`);
  }
  assert.equal(hashes(), before, 'bad input wrote to a device');
});

test.run();
