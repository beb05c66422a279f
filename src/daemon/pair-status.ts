// What `dpsr status` reports for one pair (the JSON schema is this
// interface, documented in the README), built from the pair's record, its
// tracker state and, when a daemon runs, the daemon's schedule.
import { type DaemonConfig, type Policy, nextSyncMs } from './config.js';
import { backoffMs } from './schedule.js';
import { journalCapacityOf } from '../drive/journal.js';
import { formatBytes, SECTOR } from '../base/units.js';
import { UPGRADE_BYTES } from '../base/defaults.js';
import type { DroppedPoint, PairRecord } from '../state/records.js';
import type { Gap, RangeState } from '../kernel/tracker.js';
import { ExtentSet } from '../base/extents.js';

export type PairState = 'copying' | 'inconsistent' | 'syncing' | 'needs-compare' | 'gap' | 'consistent' | 'crash-consistent' | 'fuzzy' | 'awaiting-drive' | 'error';

export interface PairStatus {
  name: string;
  source: string;
  drive: string;
  state: PairState;
  usable: boolean; // the drive holds a whole image that can be booted or restored from
  image: string;
  imageTime: string | null;
  rpoSeconds: number | null; // the image's age
  generation: number;
  dirtyBytes: number | null; // null when another process owns the live numbers
  suspectBytes: number | null;
  gapsSinceSync: Gap[];
  /** Ring records since the last sync that could not be read (a gap: their regions are compared). */
  malformedRecords: number;
  lastSync: PairRecord['lastSync'];
  journal: string;
  /** The most changed data one sync may carry through the journal (null: no journal, syncs write in place). */
  journalCapacityBytes: number | null;
  policy: string; // "manual", "continuous (rpo 30s)", "scheduled (hourly)"
  nextSync: string | null; // ISO time; null: none planned (manual, or no daemon running)
  freezeP99Ms: number | null; // over the last syncs that froze
  scrub: { lastRoundDone: string | null; progressPercent: number | null; mismatchesTotal: number };
  lastError: string | null; // the daemon's last failed sync of this pair
  /** Since when the daemon has not reached the DPSR drive's NBD server (ISO time); null: reached, a local drive, or no daemon. */
  driveUnreachableSince: string | null;
  /** Restore points (dpsr history): the region's size, and the points dropped lately, newest last. Absent without history. */
  restorePoints?: { historyBytes: number; dropped: DroppedPoint[] };
  warnings: string[];
  problem?: string;
  /** The DPSR drive was missing when this boot judged the pair: since when it waits (the shutdown record is judged when the drive returns). */
  awaitingDriveSince?: string;
}

/** What the daemon adds: it knows the schedule and the last failures. */
export interface Schedule {
  lastSyncStartMs: number;
  lastError: string | null;
  failuresInARow: number;
  unreachableSinceMs: number | null;
}


/** How long status warns about a dropped restore point. */
const DROPPED_WARNING_MS = 24 * 3600 * 1000;

export function humanDuration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172_800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86_400)}d`;
}

function describePolicy(p: Policy): string {
  switch (p.policy) {
    case 'manual': return 'manual';
    case 'continuous': return `continuous (rpo ${humanDuration(p.rpoMs)})`;
    case 'scheduled': return 'calendar' in p ? `scheduled (${p.calendar.text})` : `scheduled (every ${humanDuration(p.everyMs)})`;
  }
}

export const policyOf = (config: DaemonConfig, name: string): Policy => config.pairs[name] ?? config.defaultPolicy;

export function percentile(values: number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/**
 * Above how much changed data `status` warns that the journal nears full: past half of it, or
 * sooner when less than an apt upgrade would be left (a journal under twice UPGRADE_BYTES); a
 * journal smaller than one upgrade, which `pair` warned of, at half.
 */
export function journalWarningBytes(capacity: number): number {
  return capacity > UPGRADE_BYTES ? Math.min(capacity / 2, capacity - UPGRADE_BYTES) : capacity / 2;
}

/** Data written (or discarded) since the image: what the next sync copies. */
export const changedBytes = (range: RangeState) => (range.dirty.totalSectors + range.discarded.totalSectors) * SECTOR;

/** Changed since the image and to compare: what the next sync copies or compares. */
export const behindBytes = (range: RangeState) => changedBytes(range) + range.suspect.totalSectors * SECTOR;

/** Whether the DPSR drive is behind: writes since the last cut, or a cut that a failed or interrupted sync has not landed. */
export const hasChanges = (range: RangeState, pair: PairRecord) => !range.dirty.isEmpty || !range.suspect.isEmpty || !range.discarded.isEmpty || pair.pending !== null;

/** What a pending cut holds to copy or discard. */
const pendingBytes = (pair: PairRecord) => !pair.pending ? 0
  : (ExtentSet.fromBuffer(pair.pending.copy).totalSectors + (pair.pending.discard ? ExtentSet.fromBuffer(pair.pending.discard).totalSectors : 0)) * SECTOR;

export function statusOf(pair: PairRecord, range: RangeState | undefined, problem: string | undefined, live: boolean,
  policy: Policy, schedule: Schedule | null, nowMs = Date.now()): PairStatus {
  const sinceMs = pair.lastSync?.atMs ?? 0;
  const gaps = range ? range.gaps.filter((g) => g.atMs > sinceMs) : [];
  const suspect = range ? range.suspect.totalSectors * SECTOR : 0;
  // A cut that a failed or interrupted sync took and did not land is still to be copied.
  const dirty = range ? changedBytes(range) + pendingBytes(pair) : 0;
  const state: PairState = pair.awaitingRecord ? 'awaiting-drive' : problem ? 'error'
    : !pair.fullCopy.complete ? 'copying'
      : pair.pending ? 'syncing'
        : pair.generation === 0 ? 'inconsistent'
          : suspect > 0 ? 'needs-compare'
            : gaps.length > 0 ? 'gap'
              : pair.image === 'point-in-time' ? 'consistent' : (pair.image as PairState);
  // A cut left pending never touched the image when it went to the journal (invariant 5): only a
  // generation written in place ('partial') or a committed transaction not yet applied do.
  const usable = !problem && pair.generation > 0 && pair.image !== 'partial' && !pair.pendingTxn && suspect === 0 && pair.fullCopy.complete;
  const warnings: string[] = [];
  const changed = range ? hasChanges(range, pair) : pair.pending !== null;
  if (policy.policy === 'manual' && changed && (live || range)) {
    warnings.push(`${formatBytes(dirty + suspect)} changed since the image; the pair is manual: dpsr sync ${pair.name} when the source is in a good state`);
  }
  if (suspect > 0) warnings.push(`${formatBytes(suspect)} may differ unseen (${[...new Set(gaps.map((g) => g.cause))].join(', ') || 'gap'}): compared in the background by the daemon, or at the next sync`);
  if (schedule?.unreachableSinceMs != null) {
    warnings.push(`the DPSR drive's NBD server has been unreachable since ${new Date(schedule.unreachableSinceMs).toISOString()} ` +
      `(${humanDuration(nowMs - schedule.unreachableSinceMs)}): writes are tracked meanwhile; the daemon reconnects with backoff and then copies only what changed`);
  }
  if (schedule?.lastError) warnings.push(`the last sync failed: ${schedule.lastError}`);
  if (pair.reservedSectors === 0) warnings.push('no journal: not crash-safe during a sync');
  const capacity = journalCapacityOf(pair);
  const data = range ? range.dirty.totalSectors * SECTOR + suspect : 0; // what the journal must hold: discards take no room
  if (capacity !== null && range && data > journalWarningBytes(capacity)) {
    warnings.push(`${formatBytes(data)} changed: nearing what one sync can journal (${formatBytes(capacity)}, ${formatBytes(Math.max(0, capacity - data))} left; ` +
      `an apt upgrade changes 1-2 GiB); sync soon, or a sync with more is refused`);
  }
  if (pair.heldAfterRevert) {
    warnings.push(`the DPSR drive was reverted to restore point ${pair.heldAfterRevert.toGeneration} ${humanDuration(nowMs - pair.heldAfterRevert.atMs)} ago: ` +
      `the daemon's policy does not sync it until a manual dpsr sync ${pair.name}`);
  }
  for (const d of (pair.historyDropped ?? []).filter((x) => nowMs - x.atMs < DROPPED_WARNING_MS)) {
    warnings.push(`restore point ${d.generation}${d.label ? ` labelled "${d.label}"` : ''} was dropped ${humanDuration(nowMs - d.atMs)} ago: ${d.reason}`);
  }
  const planned = schedule && !pair.heldAfterRevert ? nextSyncMs(policy, { changed, lastSyncStartMs: schedule.lastSyncStartMs, imageTimeMs: pair.imageTimeMs }, nowMs) : null;
  // After failed syncs the daemon waits out its backoff first (as schedule.ts decides).
  const next = planned === null ? null : Math.max(planned, schedule!.lastSyncStartMs + backoffMs(schedule!.failuresInARow));
  const scrub = pair.scrub;
  return {
    name: pair.name,
    source: pair.source.path,
    drive: pair.drive.path,
    state,
    usable,
    image: pair.image,
    imageTime: pair.imageTimeMs ? new Date(pair.imageTimeMs).toISOString() : null,
    rpoSeconds: pair.imageTimeMs ? Math.round((nowMs - pair.imageTimeMs) / 1000) : null,
    generation: pair.generation,
    dirtyBytes: live && range ? dirty : null,
    suspectBytes: live && range ? suspect : null,
    gapsSinceSync: gaps,
    malformedRecords: gaps.filter((g) => g.cause === 'malformed-records').reduce((n, g) => n + (g.records ?? 0), 0),
    lastSync: pair.lastSync,
    journal: pair.reservedSectors > 0
      ? `redo journal in the reserved tail (last transaction ${pair.journalSeq ?? 0}${pair.lastSync && pair.lastSync.journaled === false ? '; the last sync wrote in place' : ''})`
      : 'none: no reserved tail (not crash-safe during a sync)',
    journalCapacityBytes: capacity,
    policy: describePolicy(policy),
    nextSync: next !== null && changed ? new Date(Math.max(next, nowMs)).toISOString() : null,
    freezeP99Ms: percentile(pair.freezeHistoryMs ?? [], 99),
    scrub: {
      lastRoundDone: scrub?.lastRoundDoneMs ? new Date(scrub.lastRoundDoneMs).toISOString() : null,
      progressPercent: scrub?.roundStartedMs ? Math.floor((100 * scrub.cursorSector) / pair.dataSectors) : null,
      mismatchesTotal: scrub?.mismatchesTotal ?? 0,
    },
    lastError: schedule?.lastError ?? null,
    driveUnreachableSince: schedule?.unreachableSinceMs != null ? new Date(schedule.unreachableSinceMs).toISOString() : null,
    ...(pair.historySectors ? { restorePoints: { historyBytes: pair.historySectors * SECTOR, dropped: pair.historyDropped ?? [] } } : {}),
    warnings,
    ...(problem ? { problem } : {}),
    ...(pair.awaitingRecord ? { awaitingDriveSince: new Date(pair.awaitingRecord.atMs).toISOString() } : {}),
  };
}
