// A journaled sync with history saves its undo during its passes (format 3:
// the data first, the table, chunk hashes and header after it, written
// before the commit; only the index entry after it). Killed by strace's
// syscall injection at each of its writes to the DPSR drive, in turn, the
// drive is the old or the new image after the next command, the newest
// point hashes as that generation's image did, and at the end every point
// does; with a small history the stream drops the oldest points for its
// space first, and only those.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { DPSR_BIN, Fixture, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, scatteredChanges, sha256Of, withTestReserve } from './helpers/fixture.js';
import { recordsOf } from '../src/drive/history-region.js';
import { historyIndexOf, pairRecord, pointHash as pointHashOf } from './helpers/points.js';
import { pointOverlay } from '../src/restore/point-image.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const ok = (...args: string[]) => runDpsrOk(env, args);
const historyOf = (name: string) => JSON.parse(ok('history', name, '--json'));
const MIB = 64;
const BYTES = MIB << 20;

/**
 * Runs dpsr killed at the Nth pwrite64 to `file` of one thread; true if it ran to its end first.
 * strace counts each thread's calls apart: 'main' traces the main thread alone (the label and
 * the index, written synchronously); 'pool' follows every thread, with libuv's pool one thread
 * that does every asynchronous write (the journal, the undo's data and trailer), which reaches
 * its Nth write before the main thread does. libuv writes through io_uring unless told not to.
 */
function killedAtWrite(file: string, n: number, thread: 'main' | 'pool', args: string[]): boolean {
  const r = spawnSync('strace', [...(thread === 'pool' ? ['-f'] : []), '-qq', '-o', '/dev/null', '-P', file, '-e', 'trace=pwrite64',
    '-e', `inject=pwrite64:signal=SIGKILL:when=${n}`, process.execPath, DPSR_BIN, ...withTestReserve(args)],
  { env: { ...env, UV_USE_IO_URING: '0', UV_THREADPOOL_SIZE: '1' }, encoding: 'utf8', timeout: 120_000 });
  if (r.status === 0) return true;
  assert.ok(r.signal === 'SIGKILL' || r.status === 137, `killed at write ${n}: status ${r.status} ${r.signal} ${r.stderr}`);
  return false;
}

interface Point { generation: number; current: boolean; format?: number }

/**
 * Syncs killed at drive write 1, 2, … of the pool, then of the main thread, until one runs to its
 * end; after each, the next command's replay, the image old or new, the newest points exact, and
 * a sync. Returns the generations' hashes.
 */
async function killEachWrite(historyMiB: number): Promise<{ seen: Map<number, string>; kills: { pool: number; main: number }; drive: string }> {
  const source = fx.loop(MIB);
  const drive = fx.loop(MIB + 64 + historyMiB);
  randomFill(source, MIB);
  const generation = () => JSON.parse(runDpsr(env, ['status', 'p', '--json']).stdout).pairs[0].generation as number;
  ok('pair', source, drive, '--name', 'p', '--history', `${historyMiB}M`);
  const seen = new Map<number, string>([[generation(), sha256Of(drive, BYTES)]]); // the full copy's
  ok('sync', 'p', '--quiet-period', '0.2');
  seen.set(generation(), sha256Of(drive, BYTES));
  const checkNewest = async (what: string) => {
    const points: Point[] = historyOf('p').points;
    const gens = points.map((p) => p.generation);
    // Oldest dropped first: what is kept is every generation from the oldest kept one on.
    for (let g = Math.min(...gens); g <= generation(); g++) assert.ok(gens.includes(g), `${what}: generation ${g} is no point, yet an older one is`);
    // Every record every point needs is whole (its data read and checked against its chunk hashes).
    await pointOverlay(await pairRecord(env, 'p'), String(Math.min(...gens)), 'all');
    for (const p of points.filter((x) => !x.current).slice(0, 2)) { // newest first: the points a kill can touch
      assert.is(await pointHashOf(env, 'p', String(p.generation)), seen.get(p.generation), `${what}: restore point ${p.generation} is not the image it was`);
    }
  };
  const kills = { pool: 0, main: 0 };
  for (const thread of ['pool', 'main'] as const) {
    for (let n = 1; n <= 40; n++) {
      const what = `killed at the ${thread} thread's drive write ${n}`;
      const oldHash = sha256Of(drive, BYTES);
      scatteredChanges(source, (kills.pool + kills.main + 1) * 37);
      const newHash = sha256Of(source);
      if (killedAtWrite(drive, n, thread, ['sync', 'p', '--quiet-period', '0.2'])) {
        assert.is(sha256Of(drive, BYTES), newHash);
        seen.set(generation(), newHash);
        break;
      }
      kills[thread]++;
      runDpsr(env, ['status', 'p']); // replays a committed transaction, saving its undo first unless that is done
      const h = sha256Of(drive, BYTES);
      assert.ok(h === oldHash || h === newHash, `${what}: the drive is a mix`);
      const gen = generation();
      if (seen.has(gen)) assert.is(h, seen.get(gen), `${what}: generation ${gen} is another image than before`);
      seen.set(gen, h);
      await checkNewest(what);
      ok('sync', 'p', '--quiet-period', '0.2');
      assert.is(sha256Of(drive, BYTES), newHash);
      seen.set(generation(), newHash);
    }
  }
  const points: Point[] = historyOf('p').points;
  for (const p of points) assert.is(await pointHashOf(env, 'p', String(p.generation)), seen.get(p.generation), `restore point ${p.generation} is not the image it was`);
  return { seen, kills, drive };
}

/** How many of the pair's records were written during the passes (format 3) and after the commit (a replay's). */
async function recordFormats(): Promise<{ streamed: number; after: number }> {
  const records = (await historyIndexOf(env, 'p')).points.flatMap(recordsOf);
  return { streamed: records.filter((r) => r.format === 3).length, after: records.filter((r) => r.format === undefined).length };
}

test('killed at each write to the DPSR drive of a sync saving its undo during its passes: the old or the new image, no point lost, each exact', async () => {
  const { seen, kills } = await killEachWrite(128); // room for every point: none is dropped for space
  assert.ok(kills.pool >= 6 && kills.main >= 2, `killed at ${kills.pool} + ${kills.main} drive writes`);
  const points: Point[] = historyOf('p').points;
  for (const gen of seen.keys()) assert.ok(points.some((p) => p.generation === gen), `generation ${gen} was an image and is no point: lost`);
  const formats = await recordFormats();
  console.log(`  killed at ${kills.pool} writes of the pool and ${kills.main} of the main thread; records written during the passes ${formats.streamed}, after the commit (replays) ${formats.after}`);
  assert.ok(formats.streamed > (kills.pool + kills.main) / 2, 'the syncs saved their undo during their passes');
  assert.ok(formats.after >= 1, 'some kill came between the commit and the index entry (the replay saved the undo anew)');
});

test('a small history: the stream drops the oldest points for its space before writing it, and only those; killed at each write, every kept point exact', async () => {
  const { kills } = await killEachWrite(40); // about three records of 12 MiB
  console.log(`  killed at ${kills.pool} writes of the pool and ${kills.main} of the main thread`);
  assert.ok(kills.pool >= 6 && kills.main >= 3, `killed at ${kills.pool} + ${kills.main} drive writes`);
  const h = historyOf('p');
  assert.ok(h.dropped.length > 0 && h.dropped.every((d: { reason: string }) => /history region was full/.test(d.reason)), JSON.stringify(h.dropped));
});

test.run();
