// When the daemon syncs a pair: the sync policies and the daemon's
// decisions over them (what is due, the backoff after failures, journal
// pressure), as pure logic. The daemon supplies the facts and the clock.
import type { Calendar } from './calendar.js';

export type Policy =
  | { policy: 'manual' }
  | { policy: 'continuous'; rpoMs: number; minIntervalMs: number }
  | { policy: 'scheduled'; everyMs: number }
  | { policy: 'scheduled'; calendar: Calendar };

/** The first retry after a failed sync; each further failure doubles it. */
const FIRST_BACKOFF_MS = 2000;
/** Between retries of a pair whose syncs keep failing. */
const MAX_BACKOFF_MS = 300_000;

export interface PairTiming {
  changed: boolean;
  lastSyncStartMs: number;
  imageTimeMs: number | null;
  /** The dirty data is near what the journal holds: sync before it outgrows it. */
  journalPressure?: boolean;
}

/** When the pair's next sync is due (null: never by itself; manual). */
export function nextSyncMs(policy: Policy, state: PairTiming, nowMs: number): number | null {
  switch (policy.policy) {
    case 'manual':
      return null;
    case 'continuous': {
      // Early enough that the image stays younger than the target, never back to back.
      const at = Math.max(state.lastSyncStartMs + policy.minIntervalMs, (state.imageTimeMs ?? 0) + policy.rpoMs / 2);
      return state.changed ? at : Math.max(at, nowMs);
    }
    case 'scheduled':
      if ('calendar' in policy) return policy.calendar.next(state.lastSyncStartMs);
      return (Math.floor(state.lastSyncStartMs / policy.everyMs) + 1) * policy.everyMs;
  }
}

/** Whether a pair is due for a sync now. A manual pair never is: the admin decides when its drive is written. */
export function due(policy: Policy, state: PairTiming, nowMs: number): boolean {
  if (!state.changed || policy.policy === 'manual') return false;
  if (state.journalPressure) return true;
  const at = nextSyncMs(policy, state, nowMs);
  return at !== null && at <= nowMs;
}

/** Whether the data to copy nears what one transaction may take (journalBytes: the journal's capacity; 0: no journal). */
export function journalPressure(journalBytes: number, pendingBytes: number): boolean {
  // A generation that outgrows the journal is refused: start a sync well before, with room for writes during it.
  return journalBytes > 0 && pendingBytes >= journalBytes / 4;
}

/** How long to wait after the last attempt, given the failed syncs in a row: 0, then 2 s, 4 s, ... at most 5 min. */
export function backoffMs(failuresInARow: number): number {
  if (failuresInARow <= 0) return 0;
  return Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (failuresInARow - 1));
}

/** What the daemon knows of a pair when it decides. */
export interface PairFacts {
  changed: boolean; // anything to copy or compare since the image
  pendingBytes: number; // dirty and suspect data
  journalBytes: number; // the journal's room (0: no journal)
  lastSyncStartMs: number; // the last attempt, failed or not (the pair's creation if none)
  imageTimeMs: number | null;
  failuresInARow: number;
}

export interface Decision {
  syncNow: boolean;
  /** The earliest time the pair may sync, backoff included (null: not by itself). */
  nextMs: number | null;
}

/** Whether the daemon syncs the pair now, and when it may next. */
export function decide(policy: Policy, facts: PairFacts, nowMs: number): Decision {
  const timing: PairTiming = {
    changed: facts.changed, lastSyncStartMs: facts.lastSyncStartMs, imageTimeMs: facts.imageTimeMs,
    journalPressure: journalPressure(facts.journalBytes, facts.pendingBytes),
  };
  // After failures, back off rather than retry every min_interval, journal pressure or not.
  const retryMs = facts.failuresInARow > 0 ? facts.lastSyncStartMs + backoffMs(facts.failuresInARow) : -Infinity;
  const syncNow = due(policy, timing, nowMs) && retryMs <= nowMs;
  const at = policy.policy !== 'manual' && facts.changed && timing.journalPressure ? nowMs : nextSyncMs(policy, timing, nowMs);
  return { syncNow, nextMs: at === null ? null : Math.max(at, retryMs) };
}
