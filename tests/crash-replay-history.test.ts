// Power cuts replayed for syncs with restore points: a pair made with
// --history on recording disks (tests/helpers/write-log.ts), then journaled
// syncs whose undo records fill the small history region, so the later ones
// drop the oldest points for room. A fixed-seed sample of each sync's crash
// states (writes after the last flush lost, reordered, torn) is judged from
// the drive alone: status --drive and recover leave the old or the new image
// (judgeDrive, as tests/crash-replay.test.ts), and then every restore point
// the drive's label and history index list (read as rollback --drive --at
// reads them: the label's pair, its history region, the point's undo records
// checked by their chunk hashes) hashes as the image did when that generation
// was current. A point listed before the sync (or, in a 'new' state, the
// image the sync replaced) may be gone only if the completed sync dropped it
// too, and only the oldest go: a later one kept means every older one missing
// was a drop for room.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { crashStates, replayStates } from './helpers/crash-states.js';
import { type Outcomes, type RecordedOp, SOURCE_MIB, changeSource, emptyOutcomes, judgeDrive, labelOf, withLoop } from './helpers/crash-replay.js';
import { Fixture, freshCliFixture, randomFill, runDpsr, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { mulberry32 } from './helpers/seeded-random.js';
import { recordingDisk } from './helpers/write-log.js';
import { readLabel } from '../src/drive/label.js';
import { openLocalDevice } from '../src/io/local-device.js';
import { openPointImage } from '../src/restore/point-image.js';
import { pointsOf, pointsOwnerOfLabel, readHistoryOf } from '../src/restore/restore-points.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before.each(() => { ({ fx, env } = freshCliFixture()); });
test.after.each(() => fx.cleanup());

const SEED = 20;
const SOURCE_BYTES = SOURCE_MIB << 20;
const HISTORY = '3M'; // about two syncs' undo: the third needs the oldest point's space
const DRIVE_MIB = SOURCE_MIB + 8 + 3 + 5; // the image, the 8 MiB reserve, the history, room to spare

/** A sync recorded: what the drive listed before and after it (generations, oldest first). */
interface HistorySync { op: RecordedOp; oldGeneration: number; pointsBefore: number[]; pointsAfter: number[] }

/** The kept points (not the current image) a drive lists, read from the drive alone, with each one's image hash (or why it cannot be read). */
async function pointsOnDrive(dev: string): Promise<{ generation: number; points: Map<number, string> }> {
  const io = openLocalDevice(dev, false);
  let label;
  try { label = readLabel(io)!; } finally { io.close(); }
  const owner = pointsOwnerOfLabel(label, dev);
  const points = new Map<number, string>();
  for (const p of pointsOf(owner, readHistoryOf(owner)).filter((x) => !x.current).reverse()) {
    try {
      const image = await openPointImage(owner, String(p.generation));
      try { points.set(p.generation, sha256Of(image.device, SOURCE_BYTES)); } finally { image.close(); }
    } catch (err) {
      points.set(p.generation, `unreadable: ${(err as Error).message}`);
    }
  }
  return { generation: owner.generation, points };
}

/** What is wrong with the points of a judged state ('' if nothing). */
function judgePoints(sync: HistorySync, verdict: string, seen: Map<number, string>, on: { generation: number; points: Map<number, string> }): string {
  const listed = [...on.points.keys()];
  const wrong: string[] = [];
  for (const [g, hash] of on.points) if (hash !== seen.get(g)) wrong.push(`point ${g} is not the image it was${hash.startsWith('unreadable') ? ` (${hash})` : ''}`);
  // Expected: the points before the sync, and in a 'new' state the image it replaced.
  const expected = verdict === 'new' ? [...sync.pointsBefore, sync.oldGeneration] : sync.pointsBefore;
  const oldestKept = Math.min(...listed.filter((g) => expected.includes(g)), Infinity);
  for (const g of expected) {
    if (on.points.has(g)) continue;
    if (sync.pointsAfter.includes(g)) wrong.push(`point ${g} is gone, yet the completed sync kept it`);
    else if (g > oldestKept) wrong.push(`point ${g} is gone, yet the older point ${oldestKept} is kept`);
  }
  if (verdict === 'old' && on.points.has(sync.oldGeneration)) wrong.push(`the old state lists its current image ${sync.oldGeneration} as a point`);
  for (const g of listed) if (!expected.includes(g)) wrong.push(`point ${g} is listed, it was no point before the sync`);
  return wrong.join('; ');
}

test('every crash state of journaled syncs with restore points keeps the old or the new image and every point it lists exact; only the oldest, dropped for room, may go', async () => {
  const random = mulberry32(SEED);
  const source = recordingDisk(fx, SOURCE_MIB);
  const drive = recordingDisk(fx, DRIVE_MIB);
  const snapshots = fs.mkdtempSync(path.join(fx.dir, 'snapshots-'));
  const generation = () => JSON.parse(runDpsr(env, ['status', 'p', '--json']).stdout).pairs[0].generation as number;
  const listed = () => (JSON.parse(runDpsrOk(env, ['history', 'p', '--json'])).points as { generation: number; current: boolean }[])
    .filter((p) => !p.current).map((p) => p.generation).sort((a, b) => a - b);
  const seen = new Map<number, string>(); // each generation's image hash, taken while it was current
  randomFill(source.dev, SOURCE_MIB);
  runDpsrOk(env, ['pair', source.dev, drive.dev, '--name', 'p', '--reserve', '8M', '--history', HISTORY]);
  seen.set(generation(), sha256Of(drive.dev, SOURCE_BYTES));
  const syncs: HistorySync[] = [];
  for (let i = 1; i <= 4; i++) {
    changeSource(source.dev, random, 8);
    runDpsr(env, ['status', 'p']); // the ring drained into the state first (as crash-replay.ts does)
    const before = path.join(snapshots, `sync-${i}.img`);
    fs.copyFileSync(drive.image, before);
    const oldLabel = labelOf(env, drive.dev);
    const oldHash = sha256Of(drive.dev, SOURCE_BYTES);
    const oldGeneration = generation();
    const pointsBefore = listed();
    const mark = drive.mark();
    runDpsrOk(env, ['sync', 'p', '--quiet-period', '0.2']);
    const newHash = sha256Of(drive.dev, SOURCE_BYTES);
    assert.is(newHash, sha256Of(source.dev), `sync ${i} made an exact copy`);
    seen.set(generation(), newHash);
    const op: RecordedOp = { name: `sync ${i}`, target: 'drive', before, log: drive.entriesSince(mark), oldLabel, newLabel: labelOf(env, drive.dev), oldHash, newHash };
    syncs.push({ op, oldGeneration, pointsBefore, pointsAfter: listed() });
    console.log(`  sync ${i}: generation ${oldGeneration} -> ${generation()}, points [${pointsBefore}] -> [${listed()}]`);
  }
  source.stop();
  drive.stop();
  // The scenario must test drops: some sync dropped a point that existed before it.
  assert.ok(syncs.some((s) => s.pointsBefore.some((g) => !s.pointsAfter.includes(g))), 'no sync dropped the oldest point for room: the history is too big');

  const cliEnv = fx.cliEnv();
  const replayRandom = mulberry32(SEED ^ 0x5eed);
  const outcomes = new Map<string, Outcomes & { pointsChecked: number; dropsSeen: number }>();
  for (const sync of syncs) {
    const counts = { ...emptyOutcomes(), pointsChecked: 0, dropsSeen: 0 };
    outcomes.set(sync.op.name, counts);
    const file = path.join(fx.dir, 'crash-state.img');
    await replayStates(sync.op.log, sync.op.before, crashStates(sync.op.log, replayRandom, 1), file, async (state) => {
      counts.states++;
      const verdict = await withLoop(file, async (dev) => {
        const v = judgeDrive(cliEnv, sync.op, dev, counts);
        if (v !== 'old' && v !== 'new') return v;
        const on = await pointsOnDrive(dev);
        counts.pointsChecked += on.points.size;
        if (sync.pointsBefore.some((g) => !on.points.has(g))) counts.dropsSeen++;
        const wrong = judgePoints(sync, v, seen, on);
        return wrong ? `${v} image, but ${wrong}` : v;
      });
      if (verdict === 'old' || verdict === 'new') counts[verdict]++;
      else counts.mixes.push(`${sync.op.name}, ${state.how}: ${verdict}`);
    });
  }
  for (const [name, o] of outcomes) {
    console.log(`  ${name}: ${o.states} states: ${o.old} old, ${o.new} new (${o.applied} applied by recover), ${o.pointsChecked} points hashed, ${o.dropsSeen} with the oldest dropped, ${o.mixes.length} wrong`);
    assert.ok(o.states > 0, `${name}: no crash state`);
    assert.equal(o.mixes, [], `${name}: ${o.mixes.length} wrong`);
  }
  const all = [...outcomes.values()];
  assert.ok(all.some((o) => o.old > 0) && all.some((o) => o.new > 0), 'states on both sides of the commit');
  assert.ok(all.some((o) => o.dropsSeen > 0 && o.old > 0), 'no state before a commit saw the oldest points dropped');
});

test.run();
