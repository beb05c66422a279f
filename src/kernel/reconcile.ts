// Invariant 2, "count, don't trust": compares the sectors the programs
// counted on a disk with the kernel's own accounting, cumulatively from a
// baseline. Pure logic; the tracker feeds it readings.

/** One reading, taken kernel first, then program: so a positive deficit is certain. */
export interface Reading {
  kernelSectors: number; // /sys/block/DISK/stat: written + discarded
  programSectors: number; // the slot's disk_sectors, all CPUs
  inFlightWrites: number;
}

export type Verdict =
  | { kind: 'exact' } // everything the kernel completed was seen
  | { kind: 'shortfall'; sectors: number } // the programs missed this many sectors
  | { kind: 'rebaselined' } // the baseline was uncertain; now it is exact, history is not
  | { kind: 'busy' }; // writes in flight: no judgement possible, no loss proven

/**
 * The expected difference kernel − program. Set from a reading taken after
 * the slot was published; `exact` only if that reading was stable.
 */
export interface Baseline {
  offsetSectors: number;
  exact: boolean;
  /** Whose counter the offset is against: the pin directory of the programs (absent in states saved before it was kept). */
  countedBy?: string;
  /**
   * The issue log's `full` counter when last judged with nothing in flight:
   * if it moved since, a lost write may be missing from the log.
   */
  logFull?: number;
  /** Issue log entries (ids) already counted against a judgement, kept until the log forgets them. */
  logTaken?: string[];
  /** The issue program's skipped runs (IssueLog.issueSkipped) when last judged with nothing in flight. */
  issueSkipped?: number;
}

export function baselineFrom(first: Reading, second: Reading, countedBy?: string): Baseline {
  return { offsetSectors: second.kernelSectors - second.programSectors, exact: isStable(first, second), ...(countedBy ? { countedBy } : {}) };
}

/** Two readings a moment apart with nothing in flight and nothing changed. */
export function isStable(first: Reading, second: Reading): boolean {
  return first.inFlightWrites === 0 && second.inFlightWrites === 0 &&
    first.kernelSectors === second.kernelSectors && first.programSectors === second.programSectors;
}

/**
 * Judges two readings against the baseline and returns the verdict with
 * the baseline to keep. A shortfall moves the baseline by its size: the
 * caller has turned the unreconciled regions dirty, so it is accounted for.
 */
export function judge(base: Baseline, first: Reading, second: Reading): { verdict: Verdict; baseline: Baseline } {
  const deficit = second.kernelSectors - second.programSectors - base.offsetSectors;
  const stable = isStable(first, second);
  if (deficit > 0) {
    return { verdict: { kind: 'shortfall', sectors: deficit }, baseline: { ...base, offsetSectors: base.offsetSectors + deficit } };
  }
  if (!stable) return { verdict: { kind: 'busy' }, baseline: base };
  if (deficit === 0) return { verdict: { kind: 'exact' }, baseline: { ...base, exact: true } };
  // Program ahead of kernel while quiet: only an uncertain baseline explains
  // it (or accounting switched off meanwhile). Rebase, but distrust the past.
  return { verdict: { kind: 'rebaselined' }, baseline: { ...base, offsetSectors: base.offsetSectors + deficit, exact: true } };
}
