// Where a count shortfall lies (invariant 2): the issue log (bpf/dpsr.h)
// names the writes issued whose completion the programs did not see. When
// they account for the whole shortfall, only they are compared; otherwise the
// caller falls back to the regions written since the last exact count. Pure:
// the tracker feeds it a snapshot of the log.
import { ExtentSet } from '../base/extents.js';
import { ISSUED_UNPLACED, type LoggedWrite } from './kernel-abi.js';
import type { IssueLog } from './tracking.js';

/**
 * The log's writes of a disk that a count read at `readAtNs` may be short
 * of, and that no earlier judgement counted (`taken`): lost completions, and
 * entries not completed yet. A write issued later completed later, so is not
 * in that count. With nothing in flight at the reading, an entry issued
 * before it lost its completion; with writes in flight, it may still be one
 * of them, and is placed too (it completes later, recorded).
 */
export function accountable(log: IssueLog, diskDev: number, taken: ReadonlySet<string>, readAtNs: bigint): LoggedWrite[] {
  const byId = new Map<string, LoggedWrite>();
  for (const w of [...log.missed, ...log.issued]) { // one write moving between the maps is read under one id
    if (w.dev === diskDev && w.issuedNs < readAtNs && !taken.has(w.id)) byId.set(w.id, w);
  }
  return [...byId.values()];
}

export type Placement =
  | { extents: ExtentSet; writes: number; sectors: number } // relative to the range
  | { why: string }; // the log cannot tell: fall back

/**
 * Places a shortfall of `shortfallSectors` on a range's disk at `writes`
 * (from accountable()), or says why it cannot: the log was full meanwhile (a
 * write may be missing from it), a lost write is not one extent, or the
 * writes do not add up to the shortfall (a write lost at issue too).
 */
export function placeShortfall(range: { startSector: number; endSector: number }, shortfallSectors: number,
  writes: readonly LoggedWrite[], logWasFull: boolean): Placement {
  if (logWasFull) return { why: 'the issue log was full meanwhile' };
  if (writes.some((w) => w.flags & ISSUED_UNPLACED)) return { why: 'a lost multi-range discard is not one extent' };
  const sectors = writes.reduce((n, w) => n + (w.endSector - w.startSector), 0);
  if (sectors < shortfallSectors) return { why: `the issue log holds ${sectors} of them` };
  const extents = new ExtentSet();
  for (const w of writes) {
    const s = Math.max(w.startSector, range.startSector), e = Math.min(w.endSector, range.endSector);
    if (s < e) extents.add(s - range.startSector, e - range.startSector);
  }
  return { extents, writes: writes.length, sectors };
}

/**
 * Whether the kernel skipped the issue program since `judgedSkipped` was
 * read: a write then may be in no log entry, bit or record, so a shortfall
 * can be placed nowhere but the whole range. Zero means never, whatever
 * was judged (the counter starts at zero with the programs).
 */
export function issuesSkippedSince(log: IssueLog, judgedSkipped: number | undefined): boolean {
  return log.issueSkipped !== 0 && log.issueSkipped !== judgedSkipped;
}

/** The ids of `taken` the log still holds: the rest are gone for good and need no remembering. */
export function stillLogged(taken: Iterable<string>, log: IssueLog): string[] {
  const present = new Set([...log.missed, ...log.issued].map((w) => w.id));
  return [...taken].filter((id) => present.has(id));
}
