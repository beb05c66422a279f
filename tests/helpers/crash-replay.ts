// Power cuts replayed: a pair on recording disks (write-log.ts) goes through
// a full copy, journaled syncs (one with discards), a rollback and an unpair,
// each operation's writes and flushes recorded; then every crash state of
// each (crash-states.ts) is built as an image file and judged by the next
// dpsr command that opens it. The drive after `status --drive` and
// `recover` must hold exactly the old or the new image, with a label that
// names it and no transaction left to apply; a source cut mid-rollback must
// be exactly the image after `rollback --drive` runs again. A journaled
// sync's states are also judged by the next `dpsr sync` on the pair's own
// record (judgeBySync): it must make the drive exactly the source.
// Shared by tests/crash-replay.test.ts (a fixed-seed subset) and
// tools/faults/crash-campaign.ts (the campaign).
import fs from 'node:fs';
import path from 'node:path';
import { type CrashState, crashStates, replayStates } from './crash-states.js';
import { type Fixture, ddDirect, randomFill, runDpsr, runDpsrOk, sh, sha256Of } from './fixture.js';
import { mulberry32 } from './seeded-random.js';
import { type LogEntry, type RecordingDisk, recordingDisk } from './write-log.js';

const MiB = 1 << 20;
export const SOURCE_MIB = 16;
const RESERVE = '8M';
const DRIVE_MIB = SOURCE_MIB + 10; // the image, the 8 MiB tail, room to spare
const SOURCE_BYTES = SOURCE_MIB * MiB;

/** What the label of a drive says, as `dpsr status --drive --json` prints it. */
interface Label { image: string; imageTimeMs: number | null; journalSeq: number; seq: number; dataSectors: number }

/** One recorded operation: the image of the disk it wrote before and after, and what it wrote. */
export interface RecordedOp {
  name: string;
  target: 'drive' | 'source';
  before: string; // a copy of the disk's image before the operation
  log: LogEntry[];
  oldLabel: Label | null; // the drive's label before and after (for a drive operation)
  newLabel: Label | null;
  oldHash: string; // sha256 of the image region before and after (the drive's; a rollback's: the source's)
  newHash: string;
}

export interface Scenario {
  ops: RecordedOp[];
  /** For the rollback's states: the drive image (a copy) it rolls back to, and its hash. */
  rollbackDrive: string;
  rollbackImageHash: string;
  /** The path a pair recorded as the source's loop file: the source's states are replayed there. */
  sourceLoopFile: string;
}

export interface Outcomes {
  states: number;
  old: number;
  new: number;
  noImage: number; // a full copy cut short: the label says there is no image yet
  noLabel: number; // before the first label write, or after unpair erased it
  applied: number; // of them, states where recover applied a committed transaction (a cut between commit and the end of the apply)
  mixes: string[]; // what went wrong, per state
}

export const emptyOutcomes = (): Outcomes => ({ states: 0, old: 0, new: 0, noImage: 0, noLabel: 0, applied: 0, mixes: [] });


export function labelOf(env: NodeJS.ProcessEnv, dev: string): Label | null {
  const r = runDpsr(env, ['status', '--drive', dev, '--json']);
  return r.stdout.trim() ? JSON.parse(r.stdout).label as Label : null;
}

/** Random writes of 4 KiB to 256 KiB over the source, 4 KiB aligned. */
export function changeSource(dev: string, random: () => number, count: number): void {
  for (let i = 0; i < count; i++) {
    const sectors = 8 * (1 + Math.floor(random() * 64));
    const start = 8 * Math.floor(random() * ((SOURCE_BYTES / 512 - sectors) / 8));
    ddDirect(dev, start, sectors);
  }
}

/**
 * Records the scenario: a pair made on recording disks, two journaled syncs (the second
 * with discards), a rollback of changes and an unpair, each operation's log cut out of its
 * disk's log. `env` is the CLI environment of the pair.
 */
export async function recordScenario(fx: Fixture, env: NodeJS.ProcessEnv, seed: number, syncJudge?: SyncJudge): Promise<Scenario> {
  const random = mulberry32(seed);
  const source = recordingDisk(fx, SOURCE_MIB);
  const drive = recordingDisk(fx, DRIVE_MIB);
  const snapshots = fs.mkdtempSync(path.join(fx.dir, 'snapshots-'));
  const ops: RecordedOp[] = [];
  const record = (name: string, disk: RecordingDisk, target: 'drive' | 'source', run: () => void) => {
    const before = path.join(snapshots, `${ops.length}-${name.replace(/\W+/g, '-')}.img`);
    fs.copyFileSync(disk.image, before);
    const oldLabel = labelOf(env, drive.dev);
    const oldHash = sha256Of(disk.dev, SOURCE_BYTES);
    const mark = disk.mark();
    run();
    ops.push({ name, target, before, log: disk.entriesSince(mark), oldLabel, newLabel: labelOf(env, drive.dev), oldHash, newHash: sha256Of(disk.dev, SOURCE_BYTES) });
    return ops.at(-1)!;
  };
  /** A journaled sync, recorded; with a sync judge, its crash states judged by the next sync on the pair's own record. */
  const judgedSync = async (name: string) => {
    // The ring drained into the state first: the sync releases what it reads from the ring, so a state
    // directory copied before that would miss writes that no ring holds any more (never so after a crash:
    // records are released only once saved).
    runDpsr(env, ['status', 'p']);
    const stateBefore = copyDir(env.DPSR_STATE_DIR!, path.join(snapshots, `state-${ops.length}`));
    const op = record(name, drive, 'drive', sync);
    if (syncJudge) await judgeBySync(fx, env, op, { drive, source: source.dev, stateBefore, snapshots }, mulberry32(seed ^ 0x5c), syncJudge);
  };
  const sync = () => {
    runDpsrOk(env, ['sync', 'p', '--quiet-period', '0.2']);
    if (sha256Of(source.dev) !== sha256Of(drive.dev, SOURCE_BYTES)) throw new Error('a sync did not make an exact copy');
  };

  randomFill(source.dev, SOURCE_MIB);
  record('pair (full copy)', drive, 'drive', () => runDpsrOk(env, ['pair', source.dev, drive.dev, '--name', 'p', '--reserve', RESERVE]));
  changeSource(source.dev, random, 8);
  await judgedSync('journaled sync');
  changeSource(source.dev, random, 4);
  const discardAt = 4096 * Math.floor(random() * (SOURCE_BYTES / 4096 - 256));
  sh('blkdiscard', ['-o', String(discardAt), '-l', String(256 * 4096), source.dev]);
  await judgedSync('journaled sync with discards');
  const rollbackDrive = path.join(snapshots, 'rollback-drive.img');
  fs.copyFileSync(drive.image, rollbackDrive);
  const rollbackImageHash = sha256Of(drive.dev, SOURCE_BYTES);
  changeSource(source.dev, random, 8);
  record('rollback', source, 'source', () => runDpsrOk(env, ['rollback', 'p', '--yes']));
  if (sha256Of(source.dev) !== rollbackImageHash) throw new Error('the rollback did not return the source to the image');
  record('unpair', drive, 'drive', () => runDpsrOk(env, ['unpair', 'p']));
  source.stop();
  drive.stop();
  return { ops, rollbackDrive, rollbackImageHash, sourceLoopFile: source.fuseFile };
}

/** Crash states judged by `dpsr sync` on the pair's own record: how many per epoch, and where the outcomes go. */
export interface SyncJudge { subsets: number; outcomes: Map<string, Outcomes> }

/** Copies a directory's files (the state directory, between commands: no process has it open). */
function copyDir(from: string, to: string): string {
  fs.rmSync(to, { recursive: true, force: true });
  fs.mkdirSync(to, { recursive: true });
  for (const f of fs.readdirSync(from)) if (fs.statSync(path.join(from, f)).isFile()) fs.copyFileSync(path.join(from, f), path.join(to, f));
  return to;
}

/**
 * The next sync as the judge of a journaled sync's crash states: each state is laid on the
 * drive itself (the same device, its image file rewritten) and the state directory put back as
 * it was before the sync (what the system disk held when the power went); `dpsr sync` must then
 * make the drive exactly the source, with a usable image. The drive and the state directory are
 * put back as after the sync for the scenario to go on.
 */
async function judgeBySync(fx: Fixture, env: NodeJS.ProcessEnv, op: RecordedOp,
  at: { drive: RecordingDisk; source: string; stateBefore: string; snapshots: string }, random: () => number, judge: SyncJudge): Promise<void> {
  const name = `${op.name}, judged by sync`;
  const counts = judge.outcomes.get(name) ?? emptyOutcomes();
  judge.outcomes.set(name, counts);
  const stateDir = env.DPSR_STATE_DIR!;
  const stateAfter = copyDir(stateDir, path.join(at.snapshots, 'state-after'));
  const imageAfter = path.join(at.snapshots, 'image-after.img');
  fs.copyFileSync(at.drive.image, imageAfter);
  const wanted = sha256Of(at.source);
  const lay = (image: string, state: string) => {
    fs.copyFileSync(image, at.drive.image); // the same file nbdkit serves: the device holds it at once (direct I/O, nothing cached)
    sh('blockdev', ['--flushbufs', at.drive.dev]);
    copyDir(state, stateDir);
  };
  await replayStates(op.log, op.before, crashStates(op.log, random, judge.subsets), path.join(fx.dir, 'sync-judge.img'), async (state) => {
    lay(path.join(fx.dir, 'sync-judge.img'), at.stateBefore);
    counts.states++;
    const r = runDpsr(env, ['sync', 'p', '--quiet-period', '0.2']);
    const verdict = r.status !== 0 ? `sync: exit ${r.status}: ${r.stderr.trim()}`
      : sha256Of(at.drive.dev, SOURCE_BYTES) !== wanted ? 'after the sync the drive is not the source'
        : runDpsr(env, ['status', 'p']).status !== 0 ? 'after the sync status calls the image unusable' : 'new';
    if (verdict === 'new') counts.new++;
    else counts.mixes.push(`${name}, ${state.how}: ${verdict}`);
  });
  lay(imageAfter, stateAfter);
}

/** Attaches a file to a free loop device (direct I/O) for `fn`, and detaches it after. */
export async function withLoop<T>(file: string, fn: (dev: string) => Promise<T> | T): Promise<T> {
  const dev = sh('losetup', ['-f', '--show', '--direct-io=on', file]).trim();
  try {
    sh('blockdev', ['--setrw', dev]); // a read-only flag left on the number by its last user
    return await fn(dev);
  } finally {
    sh('blockdev', ['--setrw', dev]); // BLKROSET outlives a detach
    sh('losetup', ['-d', dev]);
  }
}

/** Judges a drive crash state at `dev`: the next commands leave the old or the new image; returns the outcome or why it is a mix. */
export function judgeDrive(env: NodeJS.ProcessEnv, op: RecordedOp, dev: string, counts: Outcomes): string {
  const first = runDpsr(env, ['status', '--drive', dev, '--json']);
  if (!first.stdout.trim()) {
    if (!/carries no dpsr label|fails its checksum/.test(first.stderr) || first.status !== 4) return `status --drive: exit ${first.status}: ${first.stderr.trim()}`;
    if (op.oldLabel && op.newLabel) return 'the label was lost';
    const rec = runDpsr(env, ['recover', dev]);
    if (rec.status !== 4) return `recover without a label: exit ${rec.status}: ${rec.stderr.trim()}`;
    if (op.oldLabel && sha256Of(dev, SOURCE_BYTES) !== op.oldHash) return 'no label, and the image changed';
    return 'noLabel';
  }
  const rec = runDpsr(env, ['recover', dev, '--json']);
  if (rec.status !== 0) return `recover: exit ${rec.status}: ${rec.stderr.trim()}`;
  const applied = JSON.parse(rec.stdout).applied !== null;
  if (first.status === 0 && applied) return 'status --drive said usable, but a transaction was left to apply';
  if (applied) counts.applied++;
  const after = runDpsr(env, ['status', '--drive', dev, '--json']);
  const { label, unappliedTransaction } = JSON.parse(after.stdout) as { label: Label; unappliedTransaction: number | null };
  if (unappliedTransaction !== null) return `after recover, transaction ${unappliedTransaction} is still to apply`;
  const hash = sha256Of(dev, SOURCE_BYTES);
  if (after.status !== 0) {
    if (op.oldLabel && ['point-in-time', 'crash-consistent', 'fuzzy'].includes(op.oldLabel.image)) return `the drive holds no usable image (${label.image}) where it held one`;
    return 'noImage';
  }
  if (op.newLabel && label.imageTimeMs === op.newLabel.imageTimeMs) return hash === op.newHash ? 'new' : `the label names the new image, the drive holds ${hash === op.oldHash ? 'the old one' : 'a mix'}`;
  if (op.oldLabel && label.imageTimeMs === op.oldLabel.imageTimeMs) return hash === op.oldHash ? 'old' : `the label names the old image, the drive holds ${hash === op.newHash ? 'the new one' : 'a mix'}`;
  return `the label names an image of ${label.imageTimeMs}, neither the old nor the new one`;
}

/** Judges a source state cut mid-rollback: `rollback --drive` run again must make it the image. */
function judgeSource(env: NodeJS.ProcessEnv, sc: Scenario, drive: string, dev: string): 'new' | string {
  const r = runDpsr(env, ['rollback', '--drive', drive, '--source', dev, '--yes']);
  if (r.status !== 0) return `rollback --drive again: exit ${r.status}: ${r.stderr.trim()}`;
  return sha256Of(dev, SOURCE_BYTES) === sc.rollbackImageHash ? 'new' : 'the source is not the image after rollback --drive';
}

/**
 * Replays `subsets` random subsets per epoch (and one torn) of each recorded operation,
 * adding to `outcomes` per operation name. `env` is a CLI environment of its own.
 */
export async function replayScenario(fx: Fixture, env: NodeJS.ProcessEnv, sc: Scenario, seed: number, subsets: number,
  outcomes: Map<string, Outcomes>, beforeEach: () => Promise<void> = async () => {}): Promise<void> {
  const random = mulberry32(seed ^ 0x5eed);
  for (const op of sc.ops) {
    const counts = outcomes.get(op.name) ?? emptyOutcomes();
    outcomes.set(op.name, counts);
    const states = crashStates(op.log, random, subsets);
    const tally = (state: CrashState, verdict: string) => {
      counts.states++;
      if (['old', 'new', 'noImage', 'noLabel'].includes(verdict)) counts[verdict as 'old']++;
      else counts.mixes.push(`${op.name}, ${state.how}: ${verdict}`);
    };
    if (op.target === 'drive') {
      const file = path.join(fx.dir, 'crash-state.img');
      await replayStates(op.log, op.before, states, file, async (state) => {
        await beforeEach();
        tally(state, await withLoop(file, (dev) => judgeDrive(env, op, dev, counts)));
      });
    } else {
      // The source's states sit where its pair recorded the loop file, as after a reboot.
      await withLoop(sc.rollbackDrive, (drive) => replayStates(op.log, op.before, states, sc.sourceLoopFile,
        async (state) => {
          await beforeEach();
          tally(state, await withLoop(sc.sourceLoopFile, (dev) => judgeSource(env, sc, drive, dev)));
        }));
    }
  }
}
