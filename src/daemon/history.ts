// The recent past of each pair, for the Cockpit page's chart: the image's
// age and the data changed since it, sampled by the daemon once a minute and
// at every sync, kept for the last hours in a small file beside the state
// (history.json, replaced atomically), so a restart of the daemon keeps it.
// Bounded: samples older than the span, or beyond the count, are dropped.
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../base/atomic-write.js';
import type { RangeState } from '../kernel/tracker.js';
import type { PairRecord } from '../state/records.js';
import { behindBytes } from './pair-status.js';

export interface HistorySample {
  atMs: number;
  ageSeconds: number | null; // the image's age then (null: no image yet)
  dirtyBytes: number; // changed and to compare since the image
}

export type PairHistory = Record<string, HistorySample[]>;

export const HISTORY_FILE = 'history.json';
export const HISTORY_SPAN_MS = 6 * 3_600_000; // what the chart shows
const SAMPLE_EVERY_MS = 60_000;
// One a minute over the span, and two per sync (before and after) on top: a pair syncing
// every few seconds still keeps its recent sawtooth rather than the whole span.
const MAX_SAMPLES = 720;

export const historyPath = (stateDir: string) => path.join(stateDir, HISTORY_FILE);

/** A pair as the chart sees it now. */
export const sampleOf = (pair: Pick<PairRecord, 'imageTimeMs'>, range: RangeState | undefined, nowMs: number): HistorySample => ({
  atMs: nowMs,
  ageSeconds: pair.imageTimeMs ? Math.round((nowMs - pair.imageTimeMs) / 1000) : null,
  dirtyBytes: range ? behindBytes(range) : 0,
});

const isSample = (s: unknown): s is HistorySample => {
  const x = s as HistorySample;
  return typeof x?.atMs === 'number' && (x.ageSeconds === null || typeof x.ageSeconds === 'number') && typeof x.dirtyBytes === 'number';
};

/** What the file holds; an empty history when it is missing or unreadable (a chart, never a reason to fail). */
export function readHistory(file: string): PairHistory {
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return {};
  }
  const out: PairHistory = {};
  for (const [name, samples] of Object.entries((parsed as { pairs?: unknown })?.pairs ?? {})) {
    if (Array.isArray(samples)) out[name] = samples.filter(isSample);
  }
  return out;
}

export class History {
  private constructor(private readonly file: string, private readonly pairs: PairHistory) {}

  static load(file: string): History {
    return new History(file, readHistory(file));
  }

  /**
   * Adds a sample unless the last one is under a minute old (`always`: a sync's before and
   * after, which make the chart's sawtooth); drops what is past the span or the count.
   * Returns whether it was kept.
   */
  add(name: string, sample: HistorySample, always = false): boolean {
    const samples = (this.pairs[name] ??= []);
    const last = samples.at(-1);
    if (!always && last && sample.atMs - last.atMs < SAMPLE_EVERY_MS) return false;
    samples.push(sample);
    const from = samples.findIndex((s) => s.atMs >= sample.atMs - HISTORY_SPAN_MS);
    samples.splice(0, Math.max(from === -1 ? samples.length : from, samples.length - MAX_SAMPLES));
    return true;
  }

  /** Keeps only the pairs named (an unpaired pair's history goes with it). */
  keep(names: string[]): void {
    for (const name of Object.keys(this.pairs)) if (!names.includes(name)) delete this.pairs[name];
  }

  samples(name: string): HistorySample[] {
    return this.pairs[name] ?? [];
  }

  save(): void {
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    writeFileAtomic(this.file, `${JSON.stringify({ format: 1, pairs: this.pairs })}\n`, 0o644);
  }
}
