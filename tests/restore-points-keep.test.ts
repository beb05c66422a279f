// What a pair keeps of its restore points, on real pairs (loop devices, a
// fault disk, the CLI): the configuration's keep_points and keep drop the
// unlabelled points at the next sync while a point labelled by sync --point
// stays; a sync that would need a labelled point's space is refused, with
// the image and every point unchanged; dropping a middle point (by policy or
// by dpsr history --drop, killed -9 at its first write and at its index
// write) leaves every other point's image exactly what it was (each hashed
// before and after), frees its record when the older point holds its blocks
// already, and (history --drop) rewrites one it holds in part without them.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DPSR_BIN, Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { faultDisk } from './helpers/fault-disk.js';
import { pointHash as pointHashOf } from './helpers/points.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const MiB = 1 << 20;
const dpsr = (...args: string[]) => runDpsr(env, args);
const ok = (...args: string[]) => runDpsrOk(env, args);
const historyOf = (name: string) => JSON.parse(ok('history', name, '--json'));
const pointHash = (at: number) => pointHashOf(env, 'p', String(at));
const generations = () => historyOf('p').points.map((p: { generation: number }) => p.generation);
const config = (text: string) => fs.writeFileSync(env.DPSR_CONFIG!, text);

/** A source of `mib` MiB paired with a history of `historyMiB`; sync() records each image's hash by generation. */
function pairWithHistory(mib: number, historyMiB: number, drive = fx.loop(mib + 64 + historyMiB)) {
  const source = fx.loop(mib);
  randomFill(source, mib);
  ok('pair', source, drive, '--name', 'p', '--history', `${historyMiB}M`);
  const bytes = mib * MiB;
  const images = new Map<number, string>([[0, sha256Of(drive, bytes)]]);
  let round = 0;
  /** 256 KiB changed, half of it over the last round's change (so records overlap), then synced. */
  const change = () => ddDirect(source, (round++ % 60) * 256, 512);
  const sync = (...extra: string[]): number => {
    const g = JSON.parse(ok('sync', 'p', '--quiet-period', '0.2', '--json', ...extra)).syncs[0].generation;
    images.set(g, sha256Of(drive, bytes));
    return g;
  };
  return { source, drive, bytes, images, change, sync };
}

/** Every point `gens` names still hashes as the image it was. */
async function exact(images: Map<number, string>, gens: number[], what: string): Promise<void> {
  for (const g of gens) assert.is(await pointHash(g), images.get(g), `${what}: restore point ${g} is not the image it was`);
}

/**
 * history --drop `gen` killed -9 at the write after `afterBytes` written (0: its first; the bytes of the records it
 * rewrites: its index write): the point dropped or not, every other one exact; the generations after.
 */
async function dropKilled(disk: ReturnType<typeof faultDisk>, images: Map<number, string>, gen: number, afterBytes = 0): Promise<number[]> {
  const was = generations();
  const k = await disk.killAtStall(process.execPath, [DPSR_BIN, 'history', 'p', '--drop', String(gen)], env, afterBytes);
  assert.ok(k.killed, `killed at its write after ${afterBytes} bytes, not after it finished: ${k.stderr}`);
  const after = generations();
  assert.ok(after.join() === was.join() || after.join() === was.filter((g: number) => g !== gen).join(), `after kill -9 mid-drop: ${after}`);
  console.log(`  kill -9 at the drop's write after ${afterBytes} bytes: point ${gen} ${after.includes(gen) ? 'kept' : 'dropped'}`);
  await exact(images, after.slice(1), 'after kill -9 mid-drop');
  return after;
}

test('keep_points bounds the unlabelled points at each sync, the labelled one stays; the points dropped in the middle leave every kept image exact', async () => {
  config('[pairs.p]\npolicy = "manual"\nkeep_points = 2\n');
  const { images, change, sync } = pairWithHistory(32, 32);
  change();
  const first = sync('--point', 'first');
  for (let i = 0; i < 5; i++) {
    change();
    sync();
  }
  // 0 went as the oldest; 2 and 3 in the middle (the labelled 1 is older): 1 carries their records.
  assert.equal(generations(), [6, 5, 4, first], 'the current image, the two newest unlabelled points, the labelled one');
  const h = historyOf('p');
  assert.equal(h.dropped.map((d: { generation: number }) => d.generation), [0, 2, 3]);
  assert.ok(h.dropped.every((d: { reason: string }) => d.reason === 'more than keep_points = 2'), JSON.stringify(h.dropped));
  await exact(images, [5, 4, first], 'after keep_points dropped 0, 2 and 3');
});

test('keep drops the unlabelled points older than it at the next sync, the labelled one stays and its image is exact', async () => {
  config('[pairs.p]\npolicy = "manual"\nkeep = "20s"\n');
  const { images, change, sync } = pairWithHistory(32, 32);
  change();
  const first = sync('--point', 'first');
  change();
  sync();
  change();
  const third = sync();
  assert.equal(generations(), [third, 2, first, 0]);
  // Every point, the image the next sync replaces among them, older than keep: waited for by their recorded times.
  const newestMs = Date.parse(historyOf('p').points[0].time);
  await sleep(Math.max(0, newestMs + 21_000 - Date.now()));
  change();
  const fourth = sync();
  const h = historyOf('p');
  assert.equal(generations(), [fourth, first], 'only the labelled point is kept: 0, 2 and the replaced 3 are older than 20 s');
  for (const g of [0, 2, third]) {
    const d = h.dropped.find((x: { generation: number }) => x.generation === g);
    assert.ok(d && d.reason === 'older than keep = 20s', `point ${g}: ${JSON.stringify(h.dropped)}`);
  }
  change();
  const fifth = sync(); // the image it replaces is seconds old: kept
  assert.equal(generations(), [fifth, fourth, first]);
  await exact(images, [fourth, first], 'after keep dropped 0, 2 and 3');
});

test('a sync that needs a labelled point\'s space is refused (exit 3, one line), the image and every point unchanged; dropped by hand, the next sync goes on', async () => {
  const { drive, bytes, images, change, sync } = pairWithHistory(32, 1); // the ring holds three 256 KiB records
  change();
  const first = sync('--point', 'first');
  let refused: ReturnType<typeof dpsr> | null = null;
  for (let i = 0; i < 8 && !refused; i++) {
    change();
    const before = sha256Of(drive, bytes);
    const kept = generations().slice(1);
    const r = dpsr('sync', 'p', '--quiet-period', '0.2'); // without --json: stderr holds only the refusal
    if (r.status === 0) {
      images.set(generations()[0], sha256Of(drive, bytes));
      continue;
    }
    refused = r;
    assert.is(r.status, 3, r.stderr);
    assert.match(r.stderr, new RegExp(`labelled restore point ${first} \\("first"\\); nothing applied`));
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.is(sha256Of(drive, bytes), before, 'a refused sync changed the image');
    assert.equal(generations().slice(1), kept, 'a refused sync dropped a point');
    await exact(images, kept, 'after the refused sync');
  }
  assert.ok(refused, 'no sync was refused: the labelled point was dropped for space');
  assert.ok(JSON.parse(dpsr('status', 'p', '--json').stdout).pairs[0].dirtyBytes > 0, 'the refused change is still to be synced');
  assert.match(ok('history', 'p', '--drop', String(first)), /of history freed/);
  const g = sync();
  assert.ok(generations().includes(g - 1), 'the next sync keeps its point');
});

test('history --drop of a middle point, killed -9 at its first and its index write: every other point exact, the older one carries what it needs, its records rewritten without the blocks it holds already; the oldest frees its space', async () => {
  const disk = faultDisk(fx, 32 + 64 + 32);
  const { images, change, sync } = pairWithHistory(32, 32, disk.dev);
  for (let i = 0; i < 4; i++) {
    change();
    sync();
  }
  assert.equal(generations(), [4, 3, 2, 1, 0]);
  await exact(images, [3, 2, 1, 0], 'before the drops');
  // Point g's record holds what sync g + 1 changed, 256 KiB, half of it what sync g changed: point 2's record
  // (268 KiB with its table, hashes and header) handed to point 1 is rewritten with the half point 1 lacks.
  assert.ok((await dropKilled(disk, images, 2)).includes(2), 'killed at its first write (the new record\'s): nothing dropped');
  const after = await dropKilled(disk, images, 2, 140 * 1024); // the new record written: at the index write
  if (after.includes(2)) {
    assert.match(ok('history', 'p', '--drop', '2'), /dropped restore point 2; 128\.0 KiB of history freed \(blocks restore point 1 holds already\); it keeps the other 140\.0 KiB, which its image needs, until it goes$/m);
  }
  assert.equal(generations(), [4, 3, 1, 0]);
  await exact(images, [3, 1, 0], 'after point 2 was dropped');
  const r = JSON.parse(ok('history', 'p', '--drop', '3', '--json'));
  assert.equal(r, { name: 'p', dropped: 3, freedBytes: 128 * 1024, carriedBytes: 140 * 1024, carriedBy: 1, shadowedKeptBytes: 0 }, 'the newest point: carried by point 1, rewritten');
  await exact(images, [1, 0], 'after point 3 was dropped');
  const used = historyOf('p').usedBytes;
  const oldest = JSON.parse(ok('history', 'p', '--drop', '0', '--json'));
  assert.ok(oldest.freedBytes > 256 * 1024, `the oldest frees its record: ${oldest.freedBytes}`);
  assert.is(historyOf('p').usedBytes, used - oldest.freedBytes);
  await exact(images, [1], 'after the oldest was dropped');
  change();
  sync();
  await exact(images, [4, 1], 'after the next sync');
});

test('history --drop of a middle point frees its record when the older point holds its blocks already, killed -9 at its one write; of one it does not, it says what the older point keeps', async () => {
  const disk = faultDisk(fx, 32 + 64 + 32);
  const { source, images, sync } = pairWithHistory(32, 32, disk.dev);
  // Point g's record holds what sync g + 1 changed: point 2's ([128, 384)) lies inside point 1's ([0, 512)); point 3's does not.
  for (const [start, sectors] of [[0, 1024], [0, 512], [128, 256], [4096, 512]]) {
    ddDirect(source, start, sectors);
    sync();
  }
  assert.equal(generations(), [4, 3, 2, 1, 0]);
  const before = historyOf('p');
  const bytesOf = (g: number) => before.points.find((p: { generation: number }) => p.generation === g).bytes;
  const after = await dropKilled(disk, images, 2);
  if (after.includes(2)) assert.equal(JSON.parse(ok('history', 'p', '--drop', '2', '--json')), { name: 'p', dropped: 2, freedBytes: bytesOf(2), carriedBytes: 0, carriedBy: 1, shadowedKeptBytes: 0 });
  assert.is(historyOf('p').usedBytes, before.usedBytes - bytesOf(2), 'point 2\'s record was freed');
  await exact(images, [3, 1, 0], 'after point 2 was dropped');
  assert.match(ok('history', 'p', '--drop', '3'), /dropped restore point 3; no space freed: restore point 1 keeps its records \(268\.0 KiB\), which its image needs, until it goes/);
  assert.is(historyOf('p').usedBytes, before.usedBytes - bytesOf(2), 'point 3\'s record is kept by point 1');
  await exact(images, [1, 0], 'after point 3 was dropped');
});

test('configuration errors for the keep keys: one line naming the file and key, exit 2, nothing synced', () => {
  const { drive, bytes, change } = pairWithHistory(32, 8);
  change();
  const before = sha256Of(drive, bytes);
  const cases: Array<[string, RegExp]> = [
    ['[pairs.p]\npolicy = "manual"\nkeep = "a week"\n', /pairs\.p\.keep: "a week" is not a duration/],
    ['[pairs.p]\npolicy = "manual"\nkeep_points = -1\n', /pairs\.p\.keep_points: -1 is not a count of restore points/],
    ['[pairs.p]\npolicy = "manual"\nwhen_full = "panic"\n', /pairs\.p\.when_full: "panic" \(use "refuse" or "drop-labelled"\)/],
  ];
  for (const [text, message] of cases) {
    config(text);
    const r = dpsr('sync', 'p', '--quiet-period', '0.2');
    assert.is(r.status, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
  assert.is(sha256Of(drive, bytes), before, 'a bad configuration synced');
});

test.run();
