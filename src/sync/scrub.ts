// Background comparison of source and DPSR drive, read-only and throttled,
// one budget of bytes per call (the daemon calls it every tick):
// - suspect regions first (after a reboot, a gap, a ring overflow): equal
//   blocks become clean, differing ones dirty, so the next sync writes only
//   the differences and never reads the whole disk in one go;
// - then the scrub of invariant 8: a round over the regions the tracker
//   holds clean; a block that differs and was not written meanwhile is a
//   mismatch: a gap, an alarm, and dirty, so the next sync repairs it.
// Only the owner calls this, between its cycles and syncs (never during one),
// so nothing writes the DPSR drive while it is read here.
import { setTimeout as sleep } from 'node:timers/promises';
import { type CopyOptions, compareExtents } from '../io/copy.js';
import type { BlockIo } from '../io/block-io.js';
import { openLocalDevice } from '../io/local-device.js';
import { openDriveIo } from '../drive/remote-drive.js';
import { ExtentSet } from '../base/extents.js';
import type { Session } from '../state/session.js';
import type { PairRecord, ScrubProgress } from '../state/records.js';
import type { RangeState } from '../kernel/tracker.js';
import { SECTOR } from '../base/units.js';

// One 1 MiB read at a time on each side: the point is to stay out of the way.
const GENTLE_IO = { chunkBytes: 1 << 20, inFlight: 1, mergeGapSectors: 64 };
const RECHECK_DELAY_MS = 50;

export interface ScrubPolicy {
  /** A full round over the clean regions this often; 0: no scrub (suspect regions are still resolved). */
  roundEveryMs: number;
}

export interface ScrubStep {
  /** Scrub findings: clean by the tracker, yet different on the two disks. */
  mismatches: ExtentSet;
  roundDone: boolean;
}

const newScrubProgress = (): ScrubProgress => ({ cursorSector: 0, roundStartedMs: null, lastRoundDoneMs: null, mismatchesTotal: 0 });

/** The first `maxSectors` sectors of a set, below `limit`. */
function firstSectors(set: ExtentSet, limit: number, maxSectors: number): ExtentSet {
  const out = new ExtentSet();
  let left = maxSectors;
  for (const [s, e] of set) {
    if (left <= 0 || s >= limit) break;
    const end = Math.min(e, limit, s + left);
    out.add(s, end);
    left -= end - s;
  }
  return out;
}

/** Regions that may differ from the image by the tracker's own account. */
function notClean(range: RangeState): ExtentSet {
  const set = range.dirty.clone();
  set.addSet(range.suspect);
  set.addSet(range.unreconciled);
  set.addSet(range.discarded);
  return set;
}

/** The pair holds a whole committed image that a comparison means something against. */
function scrubbable(pair: PairRecord): boolean {
  return pair.fullCopy.complete && pair.generation > 0 && !pair.pending && !pair.pendingTxn;
}

/** Whether a step would do anything now (cheap; lets the daemon skip opening devices). */
export function scrubWanted(pair: PairRecord, range: RangeState, policy: ScrubPolicy, nowMs: number): boolean {
  if (!scrubbable(pair)) return false;
  if (!range.suspect.isEmpty) return true;
  const p = pair.scrub ?? newScrubProgress();
  return policy.roundEveryMs > 0 && (p.roundStartedMs !== null || roundDue(pair, p, policy, nowMs));
}

/** A new round is due; the first comes one period after the pair was made (its full copy was just read and written). */
function roundDue(pair: PairRecord, p: ScrubProgress, policy: ScrubPolicy, nowMs: number): boolean {
  return policy.roundEveryMs > 0 && nowMs - (p.lastRoundDoneMs ?? pair.createdMs) >= policy.roundEveryMs;
}

async function differingBlocks(source: BlockIo, drive: BlockIo, extents: ExtentSet, limitSectors: number): Promise<ExtentSet> {
  return (await compareExtents(source, drive, extents, { ...GENTLE_IO, limitSectors, write: false })).differing;
}

/**
 * Reads `extents` of the range's suspect regions on both disks: equal blocks become clean,
 * differing ones dirty. Read-only. Returns the bytes compared. `io` defaults to the background's gentle pace.
 */
export async function resolveSuspect(s: Session, range: RangeState, source: BlockIo, drive: BlockIo, extents: ExtentSet,
  limitSectors: number, io: Omit<CopyOptions, 'limitSectors'> = GENTLE_IO): Promise<number> {
  // Taken out before reading: a gap found meanwhile makes its regions suspect again.
  range.suspect.subtractSet(extents);
  let r;
  try {
    r = await compareExtents(source, drive, extents, { ...io, limitSectors, write: false });
  } catch (err) {
    range.suspect.addSet(extents); // not compared: still suspect
    throw err;
  }
  range.dirty.addSet(r.differing); // the equal ones are clean now; a write during the read is recorded dirty by the tracker
  await s.tracker.cycle();
  return r.comparedSectors * SECTOR;
}

/** Compares up to budgetBytes of the pair, suspect regions first; updates the range and the pair's progress (persisted by the caller's next cycle). */
export async function scrubStep(s: Session, pair: PairRecord, range: RangeState, budgetBytes: number,
  policy: ScrubPolicy, nowMs = Date.now()): Promise<ScrubStep> {
  const step: ScrubStep = { mismatches: new ExtentSet(), roundDone: false };
  if (!scrubbable(pair)) return step;
  const limit = pair.dataSectors;
  const budget = Math.max(8, Math.floor(budgetBytes / SECTOR));
  const source = openLocalDevice(pair.source.path, false);
  const drive = openDriveIo(pair, false);
  try {
    const suspect = firstSectors(range.suspect, limit, budget);
    if (!suspect.isEmpty) {
      await resolveSuspect(s, range, source, drive, suspect, limit);
      return step;
    }
    const p = pair.scrub ?? newScrubProgress();
    if (p.roundStartedMs === null) {
      if (!roundDue(pair, p, policy, nowMs)) return step;
      Object.assign(p, { roundStartedMs: nowMs, cursorSector: 0 });
    }
    const end = Math.min(limit, p.cursorSector + budget);
    const window = ExtentSet.from([[p.cursorSector, end]]);
    window.subtractSet(notClean(range));
    if (!window.isEmpty) {
      const differing = await differingBlocks(source, drive, window, limit);
      if (!differing.isEmpty) {
        // A write in flight while we read is not recorded yet: drain, wait, and read the blocks again.
        await s.tracker.cycle();
        differing.subtractSet(notClean(range));
        await sleep(RECHECK_DELAY_MS);
        await s.tracker.cycle();
        if (!differing.isEmpty) {
          step.mismatches = await differingBlocks(source, drive, differing, limit);
          step.mismatches.subtractSet(notClean(range));
        }
      }
    }
    p.cursorSector = end;
    if (end >= limit) Object.assign(p, { roundStartedMs: null, lastRoundDoneMs: nowMs, cursorSector: 0 });
    step.roundDone = end >= limit;
    if (!step.mismatches.isEmpty) {
      p.mismatchesTotal += step.mismatches.count;
      range.dirty.addSet(step.mismatches);
      s.tracker.recordGap(range, 'scrub-mismatch', `the scrub found ${step.mismatches.totalSectors * SECTOR} bytes that differ from the source in regions tracked as clean (${describeExtents(step.mismatches)}): writes went unseen; the next sync repairs them`, step.mismatches.totalSectors);
    }
    pair.scrub = p;
    await s.store.putPair(pair);
    await s.tracker.cycle();
    return step;
  } finally {
    source.close();
    drive.close();
  }
}

/** "bytes 4096-8191, 1048576-1052671" (at most a few). */
export function describeExtents(set: ExtentSet, most = 4): string {
  const parts = set.toArray().slice(0, most).map(([a, b]) => `bytes ${a * SECTOR}-${b * SECTOR - 1}`);
  return parts.join(', ') + (set.count > most ? `, and ${set.count - most} more` : '');
}
