// Restore points on real pairs (loop devices, made with the CLI): a file at
// v1…v5 across five syncs of an ext4 source comes back at each version with
// restore --at (generation, label, time) and diff --at sees it, without a
// byte of the DPSR drive changing; a small history drops its oldest points
// first and status says so; kill -9 at many points of syncs with history on
// loses no point and mixes no image (each point's image hashed against the
// source at that generation); bad input is one line and writes nothing.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsr, runDpsrKilledAfter, runDpsrOk, scatteredChanges, sh, sha256Of } from './helpers/fixture.js';
import { pointHash as pointHashOf } from './helpers/points.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args);
const ok = (...args: string[]) => runDpsrOk(env, args);
const statusOf = (name: string) => JSON.parse(dpsr('status', name, '--json').stdout).pairs[0]; // exit 4 while not usable
const historyOf = (name: string) => JSON.parse(ok('history', name, '--json'));

/** sha256 of a restore point's image, read through the same read-only device restore --at mounts. */
const pointHash = (name: string, at: string) => pointHashOf(env, name, at);

/** A file at v1…vN across N syncs, each version restored by --at (generation, label for v3, time for v2) and compared; diff --at; the drive unchanged. */
function versionsComeBack(type: 'ext4' | 'xfs', versions: number): void {
  const mib = type === 'xfs' ? 320 : 96; // mkfs.xfs wants over ~300 MB
  const source = fx.loop(mib);
  const drive = fx.loop(mib + 64 + 64);
  if (type === 'ext4') sh('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', source]);
  else fx.mkfs(source, 'xfs');
  const mnt = fx.mount(source, ['-o', 'noatime']);
  ok('pair', source, drive, '--name', 'p', '--history', 'all');
  const gens: Array<{ gen: number; text: string; timeMs: number }> = [];
  for (let v = 1; v <= versions; v++) {
    const text = `version ${v}\n`.repeat(2000 * v);
    fs.writeFileSync(path.join(mnt, 'f.txt'), text);
    const r = JSON.parse(ok('sync', 'p', '--json', ...(v === 3 ? ['--point', 'before-upgrade'] : []))).syncs[0];
    gens.push({ gen: r.generation, text, timeMs: r.imageTimeMs });
  }
  const h = historyOf('p');
  assert.equal(h.points.map((p: { generation: number }) => p.generation), [...Array(versions + 1).keys()].reverse(), 'newest first: the current image, then every earlier one (0: the full copy)');
  for (const g of gens) assert.ok(h.points.some((p: { generation: number }) => p.generation === g.gen), `generation ${g.gen} is a point`);
  assert.is(h.points[0].current, true);
  assert.is(h.points.find((p: { label: string | null }) => p.label === 'before-upgrade').generation, gens[2].gen);

  const driveBefore = sha256Of(drive);
  const out = path.join(fx.dir, 'out');
  for (const [i, g] of gens.entries()) {
    const at = i === 2 ? 'before-upgrade' : i === 1 ? new Date(g.timeMs + 1).toISOString() : String(g.gen);
    const r = dpsr('restore', 'p', 'f.txt', '--at', at, '--to', path.join(out, String(i)));
    assert.is(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`restore point ${g.gen}`), r.stdout);
    assert.is(fs.readFileSync(path.join(out, String(i), 'f.txt'), 'utf8'), g.text, `v${i + 1} restored by --at ${at}`);
  }
  const d = JSON.parse(ok('diff', 'p', 'f.txt', '--at', String(gens[0].gen), '--json'));
  assert.is(d.summary.changed, 1, 'the source has v5, point 1 had v1');
  assert.is(sha256Of(drive), driveBefore, 'reading restore points wrote to the DPSR drive');
}

test('ext4: a file at v1…v5 across five syncs comes back at each version by generation, label and time; diff --at sees it; the drive never changes', () => {
  versionsComeBack('ext4', 5);
});

test('xfs: a file at v1…v3 across three syncs comes back at each version; diff --at sees it; the drive never changes', () => {
  versionsComeBack('xfs', 3);
});

test('rollback --at returns an ext4 source to point 2 (fsck clean, the file at v2, the source hashes as the point), writing only what changed; the next sync makes it current and keeps the image it replaces', async () => {
  const source = fx.loop(96);
  const drive = fx.loop(96 + 64 + 64);
  const bytes = 96 << 20;
  sh('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', source]);
  let mnt = fx.mount(source, ['-o', 'noatime']);
  ok('pair', source, drive, '--name', 'p', '--history', 'all');
  fs.writeFileSync(path.join(mnt, 'other.bin'), Buffer.alloc(4 << 20, 7)); // never changes
  const texts: string[] = [];
  const gens: number[] = [];
  for (let v = 1; v <= 4; v++) {
    texts.push(`version ${v}\n`.repeat(3000 * v));
    fs.writeFileSync(path.join(mnt, 'f.txt'), texts[v - 1]);
    gens.push(JSON.parse(ok('sync', 'p', '--json')).syncs[0].generation);
  }
  fs.writeFileSync(path.join(mnt, 'f.txt'), 'version 5, never synced\n'); // tracked, not in any image
  fx.unmount(mnt);
  const point2 = await pointHash('p', String(gens[1]));
  const current = sha256Of(drive, bytes);
  const driveBefore = sha256Of(drive);

  const plan = JSON.parse(ok('rollback', 'p', '--at', String(gens[1]), '--dry-run', '--json')).rollback;
  assert.equal(plan.point, { generation: gens[1], label: null });
  assert.is(plan.mode, 'tracked');
  assert.ok(plan.copyBytes > 0 && plan.copyBytes < bytes / 8, `writes what changed since the point, not the disk: ${plan.copyBytes}`);
  assert.is(sha256Of(drive), driveBefore, 'a dry run wrote to the drive');

  const r = JSON.parse(ok('rollback', 'p', '--at', String(gens[1]), '--yes', '--json')).rollback;
  assert.is(r.point.generation, gens[1]);
  assert.ok(r.writtenBytes < bytes / 8, `wrote ${r.writtenBytes} (planned ${plan.copyBytes}, rounded out to 4 KiB and merged across small gaps)`);
  assert.is(sha256Of(source), point2, 'the source is point 2\'s image');
  assert.is(sha256Of(drive), driveBefore, 'rollback --at wrote to the DPSR drive');
  sh('fsck.ext4', ['-n', '-f', source]);
  mnt = fx.mount(source, ['-o', 'ro']);
  assert.is(fs.readFileSync(path.join(mnt, 'f.txt'), 'utf8'), texts[1], 'f.txt is at v2');
  fx.unmount(mnt);

  const st = statusOf('p');
  assert.ok(st.dirtyBytes > 0, 'the source differs from the current image: it must not be called in sync');
  const s = JSON.parse(ok('sync', 'p', '--quiet-period', '0.2', '--json')).syncs[0];
  assert.is(sha256Of(drive, bytes), point2, 'the next sync makes point 2\'s image the current one');
  assert.is(await pointHash('p', String(s.generation - 1)), current, 'the image it replaced is kept as a point');
});

test('rollback --drive DEV --at, without the state directory: the source back to a point the drive\'s label names, writing what differs, the drive unchanged', async () => {
  const source = fx.loop(32);
  const drive = fx.loop(32 + 64 + 32);
  randomFill(source, 32);
  ok('pair', source, drive, '--name', 'p', '--history', '32M');
  const gens: number[] = [];
  for (let i = 0; i < 3; i++) {
    ddDirect(source, i * 4096, 2048);
    gens.push(JSON.parse(ok('sync', 'p', '--quiet-period', '0.2', '--json')).syncs[0].generation);
  }
  ddDirect(source, 40000, 2048); // never synced
  const point = await pointHash('p', String(gens[0]));
  const driveBefore = sha256Of(drive);
  const rescue = { ...env, DPSR_STATE_DIR: path.join(fx.dir, 'empty-state') };
  const plan = runDpsr(rescue, ['rollback', '--drive', drive, '--at', String(gens[0]), '--dry-run', '--json']);
  assert.is(plan.status, 0, plan.stderr);
  const p = JSON.parse(plan.stdout).rollback;
  assert.equal([p.point, p.mode], [{ generation: gens[0], label: null }, 'compare']);
  const r = runDpsr(rescue, ['rollback', '--drive', drive, '--at', String(gens[0]), '--yes', '--json']);
  assert.is(r.status, 0, r.stderr);
  const w = JSON.parse(r.stdout).rollback;
  assert.is(sha256Of(source), point, 'the source is the point\'s image');
  assert.ok(w.writtenBytes > 0 && w.writtenBytes <= 4 * (1 << 20) + (512 << 10), `wrote what differs (3 MiB changed since the point, 1 MiB never synced): ${w.writtenBytes}`);
  assert.is(sha256Of(drive), driveBefore, 'rollback --drive --at wrote to the DPSR drive');
  assert.not.ok(fs.existsSync(path.join(fx.dir, 'empty-state', 'state.mdb')), 'no state created');
  const bad = runDpsr(rescue, ['rollback', '--drive', drive, '--at', 'nope', '--yes']);
  assert.is(bad.status, 1, bad.stderr);
  assert.match(bad.stderr, /no restore point labelled "nope"/);
  assert.is(sha256Of(source), point, 'a refused rollback wrote');
});

test('restore --partition N --at and --whole --at write a restore point\'s partition and disk back', async () => {
  const { disk, parts } = fx.partitionedLoop(96, [40, 40]);
  const drive = fx.loop(96 + 64 + 32);
  const bytes = 96 << 20;
  fx.mkfs(parts[0], 'ext4');
  fx.mkfs(parts[1], 'ext4');
  ok('pair', disk, drive, '--name', 'p', '--history', 'all');
  const gens: number[] = [];
  for (let v = 1; v <= 2; v++) {
    const m = fx.mount(parts[1]);
    fs.writeFileSync(path.join(m, 'f.txt'), `partition 2 at v${v}\n`.repeat(5000));
    fx.unmount(m);
    gens.push(JSON.parse(ok('sync', 'p', '--quiet-period', '0.2', '--json')).syncs[0].generation);
  }
  ddDirect(parts[0], 4096, 64); // partition 1 changed after the last sync: the partition restore leaves it alone
  const p1 = sha256Of(parts[0]);
  const point1 = await pointHash('p', String(gens[0]));
  const r = JSON.parse(ok('restore', 'p', '--partition', '2', '--at', String(gens[0]), '--yes', '--json')).restore;
  assert.is(r.point.generation, gens[0]);
  const m = fx.mount(parts[1], ['-o', 'ro']);
  assert.is(fs.readFileSync(path.join(m, 'f.txt'), 'utf8'), 'partition 2 at v1\n'.repeat(5000));
  fx.unmount(m);
  sh('fsck.ext4', ['-n', '-f', parts[1]]);
  assert.is(sha256Of(parts[0]), p1, 'partition 1 untouched');
  const w = JSON.parse(ok('restore', 'p', '--whole', '--at', String(gens[0]), '--yes', '--json')).restore;
  assert.is(w.writtenBytes, bytes);
  assert.is(sha256Of(disk), point1, 'the whole disk is point 1\'s image');
});

test('a full history drops the oldest points first (a labelled one with a warning, when_full = "drop-labelled"), and status says so', () => {
  const source = fx.loop(32);
  const drive = fx.loop(32 + 64 + 1);
  randomFill(source, 32);
  fs.writeFileSync(env.DPSR_CONFIG!, '[pairs.p]\npolicy = "manual"\nwhen_full = "drop-labelled"\n'); // refused without it (restore-points-keep)
  ok('pair', source, drive, '--name', 'p', '--history', '1M');
  ok('sync', 'p', '--quiet-period', '0.2', '--point', 'first');
  const gens: number[] = [];
  for (let i = 0; i < 5; i++) {
    sh('dd', ['if=/dev/urandom', `of=${source}`, 'bs=256K', 'count=1', `seek=${i * 3}`, 'oflag=direct', 'status=none']);
    gens.push(JSON.parse(ok('sync', 'p', '--quiet-period', '0.2', '--json')).syncs[0].generation);
  }
  const h = historyOf('p');
  const kept = h.points.filter((p: { current: boolean }) => !p.current).map((p: { generation: number }) => p.generation);
  assert.ok(kept.length >= 1 && kept.length < 5, `some points kept, some dropped: ${kept}`);
  const oldestKept = Math.min(...kept);
  assert.ok(h.dropped.every((d: { generation: number }) => d.generation < oldestKept), 'only older points than every kept one were dropped');
  assert.ok(h.dropped.some((d: { label: string | null }) => d.label === 'first'), 'the labelled point was dropped');
  assert.ok(h.usedBytes <= h.historyBytes);
  const st = statusOf('p');
  assert.ok(st.warnings.some((w: string) => /restore point \d+ labelled "first" was dropped .*history region was full/.test(w)), st.warnings.join('\n'));
  assert.ok(st.restorePoints.dropped.length >= 1);
  // Each kept point is still whole: its image hashes as the source did (checked in the kill test); here, it opens.
  const r = dpsr('history', 'p', '--drop', String(oldestKept));
  assert.is(r.status, 0, r.stderr);
  assert.ok(!historyOf('p').points.some((p: { generation: number }) => p.generation === oldestKept));
});

test('kill -9 at many points of syncs with history on: no point lost, none mixed (each point hashes as the source did at its generation)', async () => {
  const source = fx.loop(64);
  const drive = fx.loop(64 + 64 + 128);
  randomFill(source, 64);
  ok('pair', source, drive, '--name', 'p', '--history', '128M'); // room for every round's point: none is dropped for space
  ok('sync', 'p', '--quiet-period', '0.2');
  const bytes = 64 << 20;
  const seen = new Map<number, string>(); // generation → the image's hash
  const observe = (what: string) => {
    const gen = statusOf('p').generation;
    const h = sha256Of(drive, bytes);
    if (seen.has(gen)) assert.is(h, seen.get(gen), `${what}: generation ${gen} is another image than before`);
    seen.set(gen, h);
  };
  observe('after the first sync');
  const outcomes: string[] = [];
  for (const [round, fraction] of [0.5, 1.2, 1.9, 2.6, 3.3].entries()) {
    const oldHash = sha256Of(drive, bytes);
    const data = scatteredChanges(source, round * 131);
    const newHash = sha256Of(source);
    const k = await runDpsrKilledAfter(env, ['sync', 'p', '--quiet-period', '0.2'], drive, Math.floor(fraction * data));
    dpsr('status', 'p'); // the owner replays a committed transaction (saving its undo first, unless that is done)
    const h = sha256Of(drive, bytes);
    assert.ok(h === oldHash || h === newHash, `killed at ${k.writtenSectors} sectors written for ${data} changed: the drive is a mix`);
    outcomes.push(`${h === oldHash ? 'old' : 'new'}@${k.killed ? fraction : 'done'}`);
    observe(`round ${round} after the kill`);
    ok('sync', 'p', '--quiet-period', '0.2');
    assert.is(sha256Of(drive, bytes), newHash);
    observe(`round ${round} after the sync`);
  }
  console.log(`  kill -9 outcomes (image@written/changed): ${outcomes.join(' ')}`);
  assert.ok(outcomes.some((o) => o.startsWith('new@') && !o.endsWith('done')), 'some kill came after the commit');
  const points = historyOf('p').points.map((p: { generation: number }) => p.generation);
  for (const gen of seen.keys()) assert.ok(points.includes(gen), `generation ${gen} was an image and is no point: lost`);
  for (const [gen, h] of seen) assert.is(await pointHash('p', String(gen)), h, `restore point ${gen} is not the image it was`);
});

test('bad input: an unknown point, --at on a pair without history, a history too small: one line, exit status, nothing written', () => {
  const source = fx.loop(32);
  const drive = fx.loop(32 + 64 + 8);
  const plain = { source: fx.loop(32), drive: fx.loop(32 + 64) };
  const mkfs = (dev: string) => sh('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', dev]); // nothing writes it later
  mkfs(source);
  mkfs(plain.source);
  const drive0 = sha256Of(drive);
  const small = dpsr('pair', source, drive, '--name', 'p', '--history', '512K');
  assert.is(small.status, 3, small.stderr);
  assert.match(small.stderr, /restore points need at least 1\.0 MiB/);
  assert.is(sha256Of(drive), drive0, 'a refused pair wrote to the drive');
  ok('pair', source, drive, '--name', 'p', '--history', '8M');
  ok('pair', plain.source, plain.drive, '--name', 'q');
  const mounts = [fx.mount(source), fx.mount(plain.source)];
  ok('sync', 'p');
  ok('sync', 'q');
  for (const m of mounts) fx.unmount(m); // a mounted ext4 writes its own metadata later: the hashes must only see dpsr
  const hashes = () => [sha256Of(source), sha256Of(drive), sha256Of(plain.source), sha256Of(plain.drive)];
  const before = hashes();
  const cases: Array<[string[], number, RegExp]> = [
    [['restore', 'p', 'lost+found', '--at', '99', '--to', path.join(fx.dir, 'o')], 1, /no restore point of generation 99; it has/],
    [['restore', 'p', 'lost+found', '--at', 'no-such-label', '--to', path.join(fx.dir, 'o')], 1, /no restore point labelled "no-such-label"/],
    [['diff', 'p', '--at', '1999-01-01T00:00:00Z'], 1, /no restore point at or before 1999-01-01/],
    [['restore', 'q', 'lost+found', '--at', '1', '--to', path.join(fx.dir, 'o')], 3, /keeps no restore points: it was paired without --history/],
    [['history', 'q'], 3, /keeps no restore points/],
    [['history', 'p', '--drop', '99'], 1, /no restore point of generation 99 to drop/],
    [['history', 'p', '--drop', 'x'], 2, /--drop x: a generation number/],
    [['sync', 'p', '--point', 'two words'], 2, /--point two words: a name starting with a letter/],
    [['rollback', '--drive', drive, '--at', '99', '--yes'], 1, /no restore point of generation 99/],
    [['rollback', 'p', '--at', '99', '--yes'], 1, /no restore point of generation 99/],
    [['restore', 'p', '--whole', '--at', 'nope', '--yes'], 1, /no restore point labelled "nope"/],
  ];
  for (const [args, status, message] of cases) {
    const r = dpsr(...args);
    assert.is(r.status, status, `dpsr ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.is(r.stderr.trim().split('\n').length, 1, `dpsr ${args.join(' ')}: one line: ${r.stderr}`);
  }
  assert.not.ok(fs.existsSync(path.join(fx.dir, 'o')));
  assert.equal(hashes(), before, 'bad input wrote to a device');
});

test.run();
