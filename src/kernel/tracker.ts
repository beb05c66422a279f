// The one owner's tracker: turns the owner ring's records into per-range
// dirty sets, runs the epoch protocol of invariant 3 (flip, wait, drain,
// persist, then clear) and the reconciliation of invariant 2, and records
// every gap with its cause.
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { type BlockDevice, readDiskCounters } from '../devices/devices.js';
import { DpsrError } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { MAX_SLOTS, OWNER_RING } from './kernel-abi.js';
import { type Ingested, ingestBatch } from './ingest.js';
import { tryLockFile } from '../base/locks.js';
import type { RingReader } from '../base/native.js';
import { type Baseline, type Reading, type Verdict, baselineFrom, isStable, judge } from './reconcile.js';
import { type IssueLog, type KernelTracking, bitsToExtents } from './tracking.js';
import { accountable, issuesSkippedSince, placeShortfall, stillLogged } from './missed-writes.js';

export type GapCause =
  | 'ring-drops' // the ring was full: records lost, their epoch's bits taken instead
  | 'shortfall' // the kernel counted writes the programs never saw
  | 'uncertain-baseline' // the counts' starting point was taken under load
  | 'unknown-write' // a write without a range (SG_IO, NVMe passthrough)
  | 'unknown-history' // a range tracked before this tracker knew it
  | 'identity-changed' // the device was re-attached or changed media meanwhile
  | 'scrub-mismatch' // the scrub found a difference where the tracker saw no write
  | 'malformed-records' // ring records that could not be read: their epochs' regions are suspect
  | 'unclean-shutdown' // a reboot without a shutdown record for the pair (or one that cannot be trusted)
  | 'written-before-attach' // a reboot: the kernel counted writes to the source before tracking began
  | 'changed-offline'; // a reboot: the source's file systems changed while this system was down

export interface Gap {
  cause: GapCause;
  atMs: number; // epoch milliseconds
  sectors?: number; // how much went unseen, when known
  records?: number; // ring drops: how many records were lost
  detail: string;
}

/** One tracked range (a disk, or a partition of one), as the owner keeps it. */
export interface RangeState {
  id: string; // the caller's name for it (a pair's name)
  slot: number; // kernel slot index
  device: string; // the node it was tracked as, for messages
  disk: string; // kernel name of the whole disk
  diskDev: number;
  startSector: number; // absolute on the disk
  endSector: number;
  /** Sectors (relative to startSector) written since the last cut, from records. */
  dirty: ExtentSet;
  /** Regions where writes may have gone unseen (gaps): to be compared, not blindly copied. */
  suspect: ExtentSet;
  /** Sectors discarded since the last cut (and not written after): journaled without data. */
  discarded: ExtentSet;
  /** Sectors from retired epochs not yet confirmed by an exact reconciliation. */
  unreconciled: ExtentSet;
  receivedSectors: number;
  baseline: Baseline;
  gaps: Gap[];
}

/** Makes the tracker's state durable; awaited before the kernel's copy is cleared. */
export interface TrackerStore {
  persist(ranges: readonly RangeState[]): Promise<void>;
}

export interface TrackerOptions {
  ownerLockPath: string;
  ringBytes?: number;
  timerMs?: number;
  store?: TrackerStore;
  /** Called after each batch of records is ingested (for watch-like displays). */
  onRecords?: (count: number) => void;
}

export interface CycleReport {
  epoch: number; // the epoch retired
  records: number; // drained in this cycle
  drops: number; // ring drops in the retired epoch
}

/** The counts of a slot's disk: the kernel's first, so that a positive deficit is certain. */
export function readingOf(kt: KernelTracking, slot: number, disk: string): Reading {
  const k = readDiskCounters(disk);
  return { kernelSectors: k.writtenSectors, programSectors: kt.slotStats(slot).diskSectors, inFlightWrites: k.inFlightWrites };
}

/** A range adopted while another version's programs may hold its recent history. */
export interface AwaitingHistory {
  range: RangeState;
  /** The baseline saved with the range, against the programs that counted it then. */
  savedBaseline: Baseline;
  /** Our programs did not count the range since it was saved: without the other history it is lost. */
  needed: boolean;
}

const DEFAULT_RING_BYTES = 8 << 20;
const noStore: TrackerStore = { persist: async () => {} };
const FORGET_EVERY = 16;

export class Tracker {
  private readonly bySlot: Array<RangeState | undefined> = new Array(MAX_SLOTS);
  private readonly reader: RingReader;
  private stopped = false;
  private drained = 0;
  private awaitingHistory: AwaitingHistory[] = [];
  private retiredDrops = new Map<number, number>(); // epoch -> drops read at flip, cleared at settle
  private persistedDrained = 0; // `drained` when the store last persisted
  private forgotWith: unknown[] = []; // the ranges and their taken lists when the issue log was last cleaned
  private persistsSinceForget = 0;
  private malformedRead = 0; // records the ring gave that were not ours to read (reader and ingest)
  private malformedJudged = 0; // of those, how many a flip has made suspect
  /** Where a shortfall verdict of judge() lies, when the issue log could tell: distrust() compares only that. */
  private readonly placements = new WeakMap<Verdict, ExtentSet>();
  /** Records read before the first flip, replayed by track() for a slot adopted later (tracked since `dpsr boot`). */
  private orphans: Buffer[] | null = [];

  private constructor(
    private readonly kt: KernelTracking,
    private readonly lockFd: number,
    private readonly store: TrackerStore,
    private readonly onRecords: ((count: number) => void) | undefined,
    timerMs: number,
  ) {
    this.reader = kt.reader(OWNER_RING, (batch) => this.ingest(batch), timerMs, true);
  }

  /** Becomes the one owner (a lock) and takes over the owner's ring. */
  static start(kt: KernelTracking, opts: TrackerOptions): Tracker {
    const fd = tryLockFile(opts.ownerLockPath);
    if (fd === null) throw new DpsrError(`another dpsr process owns tracking (lock ${opts.ownerLockPath} is held)`, 'EOWNED');
    try {
      kt.registerConsumer({ ringBytes: opts.ringBytes ?? DEFAULT_RING_BYTES, ownerIndex: OWNER_RING });
      return new Tracker(kt, fd, opts.store ?? noStore, opts.onRecords, opts.timerMs ?? 50);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  get ranges(): RangeState[] {
    return this.bySlot.filter((s): s is RangeState => s !== undefined);
  }

  /**
   * Starts tracking a device afresh, or adopts a range whose state was
   * persisted earlier. If the kernel no longer had that range (reboot,
   * detach), what happened meanwhile is unknown: the whole range is suspect.
   * If other programs than ours counted it since (an upgrade from another
   * version, maybe interrupted), the caller inherits their history
   * (`inheritable`) or it is lost.
   */
  async track(dev: BlockDevice, id: string, restored?: Omit<RangeState, 'slot'>, opts: { inheritable?: boolean } = {}): Promise<RangeState> {
    const range = { diskDev: dev.diskDev, startSector: dev.startSector, endSector: dev.startSector + dev.sizeSectors };
    const { index: slot, created } = this.kt.addSlot(range, OWNER_RING);
    const state: RangeState = restored ? { ...restored, slot } : {
      id,
      slot,
      device: dev.path,
      disk: dev.disk,
      ...range,
      dirty: new ExtentSet(),
      suspect: new ExtentSet(),
      discarded: new ExtentSet(),
      unreconciled: new ExtentSet(),
      receivedSectors: 0,
      baseline: { offsetSectors: 0, exact: false },
      gaps: [],
    };
    this.bySlot[slot] = state;
    for (const batch of this.orphans ?? []) this.ingestInto(batch, (i) => (i === slot ? state : undefined));
    // A saved baseline counts against the programs that measured it; states saved before that was kept are ours.
    const ours = restored !== undefined && (restored.baseline.countedBy ?? this.kt.pinDir) === this.kt.pinDir;
    if (created || !ours) state.baseline = await this.measureBaseline(state);
    if (restored && opts.inheritable) this.awaitingHistory.push({ range: state, savedBaseline: restored.baseline, needed: created || !ours });
    else if (restored && (created || !ours)) this.lostHistory(state);
    return state;
  }

  /**
   * Ranges with a saved past while other versions' programs are attached
   * (see pin-upgrade.ts): their history since the last save may be there
   * (`needed`: ours does not cover it), judged by the saved baseline.
   */
  takeAwaitingHistory(): AwaitingHistory[] {
    return this.awaitingHistory.splice(0);
  }

  /** Nothing tracked the range for a while (reboot, detach): what happened meanwhile is unknown. */
  lostHistory(state: RangeState, why = `${state.device} was not being tracked for a while (reboot or detach)`): void {
    this.suspectAll(state, 'unknown-history', `${why}: the whole range is suspect`);
  }

  untrack(state: RangeState): void {
    this.kt.removeSlot(state.slot, OWNER_RING);
    this.bySlot[state.slot] = undefined;
  }

  private ingest(batch: Uint8Array): void {
    this.orphans?.push(Buffer.from(batch)); // a slot may be adopted later
    const { records, malformed } = this.ingestInto(batch, (slot) => this.bySlot[slot]);
    this.drained += records;
    this.malformedRead += malformed;
  }

  /**
   * Records read from another version's ring (an upgrade), whose slot numbers
   * are its own; returns how many were malformed (that version's epochs are suspect then).
   */
  ingestForeign(batch: Uint8Array, rangeOfSlot: (slot: number) => RangeState | undefined): number {
    return this.ingestInto(batch, rangeOfSlot).malformed;
  }

  private ingestInto(batch: Uint8Array, rangeOfSlot: (slot: number) => RangeState | undefined): Ingested {
    const ingested = ingestBatch(batch, rangeOfSlot, (st, op) => this.suspectAll(st, 'unknown-write', `a write without a range (op ${op}) on ${st.disk}`));
    this.onRecords?.(ingested.records);
    return ingested;
  }

  /** Consumes what the ring holds now. */
  drain(): number {
    return this.reader.consume();
  }

  /** Everything in the range may have changed unseen: compare it all at the next sync. */
  suspectAll(st: RangeState, cause: GapCause, detail: string): void {
    st.suspect.add(0, st.endSector - st.startSector);
    this.recordGap(st, cause, detail);
  }

  recordGap(st: RangeState, cause: GapCause, detail: string, sectors?: number, records?: number): void {
    st.gaps.push({ cause, atMs: Date.now(), detail, ...(sectors !== undefined ? { sectors } : {}), ...(records !== undefined ? { records } : {}) });
  }

  /**
   * Invariant 3: flip the epoch, wait until no program counts into the old
   * one, drain the ring, fold the old epoch's bits in (suspect if records were
   * dropped, else unreconciled), persist, and only then clear the kernel's
   * copy and the epoch's drop count.
   */
  async cycle(): Promise<CycleReport> {
    const report = this.flip();
    await this.settle(report.epoch);
    return report;
  }

  /**
   * The first half of a cycle, in memory only (safe while file systems are
   * frozen): flip, wait out the programs, drain, fold the old epoch's bits
   * in. The kernel's copy is cleared by settle(), after the state is persisted.
   */
  flip(): CycleReport {
    const before = this.drained;
    const old = this.kt.flipEpoch();
    this.drain();
    this.orphans = null; // adoption is over: a session adopts every pair before its first cycle
    // Read, not cleared: the count is cleared in settle(), after the state that records it is saved.
    const drops = this.kt.epochDrops(OWNER_RING, old);
    this.retiredDrops.set(old, drops);
    const malformed = this.reader.malformed() + this.malformedRead - this.malformedJudged;
    this.malformedJudged += malformed;
    for (const st of this.ranges) {
      const slot = this.kt.slot(st.slot)!;
      const into = drops > 0 || malformed > 0 ? st.suspect : st.unreconciled;
      for (const [s, e] of bitsToExtents(this.kt.epochBits(st.slot, old, false), slot)) into.add(s, e);
      if (drops > 0) this.recordGap(st, 'ring-drops', `${drops} records dropped (ring full): their epoch's regions are suspect`, undefined, drops);
      if (malformed > 0) {
        // Read since the last flip's drain, so made in the epoch just retired or the current one;
        // a record is made after its bits are set, so the current epoch's bits hold its write already.
        for (const [s, e] of bitsToExtents(this.kt.epochBits(st.slot, old ^ 1, false), slot)) st.suspect.add(s, e);
        this.recordGap(st, 'malformed-records', `${malformed} ring records could not be read: the regions of the epochs they came from are suspect`, undefined, malformed);
      }
    }
    return { epoch: old, records: this.drained - before, drops };
  }

  /** The second half of a cycle: persist, then clear the retired epoch's bits and drop count. */
  async settle(epoch: number): Promise<void> {
    await this.persist();
    for (const st of this.ranges) this.kt.epochBits(st.slot, epoch, true);
    if (this.retiredDrops.get(epoch)) this.kt.clearEpochDrops(OWNER_RING, epoch);
    this.retiredDrops.delete(epoch);
  }

  /**
   * Saves the state, then lets the ring reuse the space of the records it
   * holds, and the issue log forget the lost writes whose place it saved.
   */
  private async persist(): Promise<void> {
    const drained = this.drained;
    const position = this.reader.position();
    // What the ranges took from the issue log (judge() replaces the lists, never changes one).
    const takenLists = this.ranges.flatMap((st) => [st, st.baseline.logTaken]);
    const taken = this.ranges.map((st) => ({ diskDev: st.diskDev, ids: new Set(st.baseline.logTaken ?? []) }));
    await this.store.persist(this.ranges);
    this.persistedDrained = drained;
    this.reader.release(position);
    this.forgetTaken(taken, takenLists);
  }

  /**
   * Lost writes every range of their disk has counted and saved (or of a disk
   * no range tracks). Reading them costs a syscall pair each, up to 1,024 a
   * persist: only when the ranges took some since the last look (or a range
   * came or went), and every FORGET_EVERY persists for the disks no range tracks.
   */
  private forgetTaken(taken: Array<{ diskDev: number; ids: Set<string> }>, takenLists: unknown[]): void {
    const same = takenLists.length === this.forgotWith.length && takenLists.every((x, i) => x === this.forgotWith[i]);
    if (same && ++this.persistsSinceForget < FORGET_EVERY) return;
    const saved = this.kt.missedWrites().filter((w) => taken.filter((t) => t.diskDev === w.dev).every((t) => t.ids.has(w.id)));
    this.kt.forgetMissed(saved.map((w) => w.key));
    this.forgotWith = takenLists;
    this.persistsSinceForget = 0;
  }

  /**
   * When the kernel last saw a write to the range complete (wall-clock ms;
   * 0: none since it was tracked), whoever read the record. Now, when the
   * programs do not keep it: the caller then waits a whole quiet period.
   */
  lastWriteMs(st: RangeState): number {
    return this.kt.lastWriteMs(st.slot) ?? Date.now();
  }

  private read(st: RangeState): Reading {
    return readingOf(this.kt, st.slot, st.disk);
  }

  private async measureBaseline(st: RangeState): Promise<Baseline> {
    const full = this.kt.issueLogFull(); // the issue log holds every write from here, unless this moves
    const issueSkipped = full === null ? 0 : this.kt.recursionMisses().issue; // nor this
    let base: Baseline = { offsetSectors: 0, exact: false };
    for (let attempt = 0; attempt < 5 && !base.exact; attempt++) {
      const first = this.read(st);
      await sleep(5);
      base = baselineFrom(first, this.read(st), this.kt.pinDir);
    }
    return full === null ? base : { ...base, logFull: full, issueSkipped };
  }

  /**
   * Invariant 2: compares each range's counts with the kernel's. A shortfall
   * turns suspect the writes the issue log places it at, or else (as does a
   * baseline that proved uncertain) the unreconciled regions, including those
   * of the current epoch; an exact match confirms them.
   */
  async reconcile(): Promise<Map<RangeState, Verdict>> {
    const { verdicts, distrusted } = await this.judge();
    if (distrusted.length > 0) {
      const { epoch } = this.flip(); // the missed writes may be in the current epoch
      for (const st of distrusted) this.distrust(st, verdicts.get(st)!);
      await this.settle(epoch); // the verdicts' baselines are saved with what they made suspect, never before
    }
    return verdicts;
  }

  /**
   * A missed write lies where the issue log placed it (judge()); else in a
   * region written since the last exact count: the unreconciled regions
   * become suspect. A shortfall larger than they are cannot be placed (their
   * bits were lost): the whole range is suspect.
   */
  distrust(st: RangeState, verdict: Verdict): void {
    const placed = this.placements.get(verdict);
    if (placed) {
      st.suspect.addSet(placed); // the unreconciled regions were confirmed by judge(), or wait for the next count
      return;
    }
    if (verdict.kind === 'shortfall' && st.unreconciled.totalSectors < verdict.sectors) {
      this.suspectAll(st, 'shortfall', `${verdict.sectors} sectors written on ${st.disk} are in no record and no bitmap that is left: the whole range is suspect`);
    } else {
      st.suspect.addSet(st.unreconciled);
    }
    st.unreconciled.clear();
  }

  /**
   * Judges the counts (memory only, so also under a freeze). With nothing in
   * flight and no writer able to run (frozen), the current epoch holds no
   * missed write: the caller may move the unreconciled regions of the
   * distrusted ranges to suspect at once.
   */
  async judge(): Promise<{ verdicts: Map<RangeState, Verdict>; distrusted: RangeState[] }> {
    const verdicts = new Map<RangeState, Verdict>();
    const readAtNs = process.hrtime.bigint(); // CLOCK_MONOTONIC, as the issue log's times
    const firsts = new Map(this.ranges.map((st) => [st, this.read(st)]));
    await sleep(5);
    const seconds = new Map(this.ranges.map((st) => [st, this.read(st)]));
    const log = this.kt.issueLog(); // after the readings: every write they count was logged by then
    const distrusted: RangeState[] = [];
    for (const [st, first] of firsts) {
      const second = seconds.get(st)!;
      const { verdict, baseline } = judge(st.baseline, first, second);
      st.baseline = baseline;
      verdicts.set(st, verdict);
      const stable = isStable(first, second);
      if (verdict.kind === 'exact') st.unreconciled.clear();
      if (verdict.kind === 'shortfall') {
        const where = this.placeShortfall(st, verdict, log, readAtNs, stable);
        this.recordGap(st, 'shortfall', `the kernel counted ${verdict.sectors} written sectors on ${st.disk} that tracking never saw: ${where}`, verdict.sectors);
        distrusted.push(st);
      } else if (log && stable) {
        // Counted in full: what the log holds from before the reading is no lost write (a requeue) or known already.
        this.take(st, accountable(log, st.diskDev, new Set(st.baseline.logTaken), readAtNs).map((w) => w.id));
      }
      if (verdict.kind === 'rebaselined') {
        this.recordGap(st, 'uncertain-baseline', `counts on ${st.disk} could not be confirmed from the start: unconfirmed regions are suspect`);
        distrusted.push(st);
      }
      if (log) {
        if (stable) Object.assign(st.baseline, { logFull: log.full, issueSkipped: log.issueSkipped });
        st.baseline.logTaken = stillLogged(st.baseline.logTaken ?? [], log);
      }
    }
    return { verdicts, distrusted };
  }

  /**
   * Places a shortfall at the writes the issue log saw issued and not
   * completed, when they account for it (distrust() then compares only them);
   * with nothing in flight that count confirms the unreconciled regions, as an
   * exact one does. Returns where the shortfall was placed, for the gap.
   */
  private placeShortfall(st: RangeState, verdict: Verdict & { kind: 'shortfall' }, log: IssueLog | null, readAtNs: bigint, stable: boolean): string {
    if (!log) return 'its regions since the last exact count are suspect (programs without an issue log)';
    const writes = accountable(log, st.diskDev, new Set(st.baseline.logTaken), readAtNs);
    this.take(st, writes.map((w) => w.id)); // counted now, whatever the outcome: the next shortfall is another one
    if (issuesSkippedSince(log, st.baseline.issueSkipped)) {
      this.placements.set(verdict, ExtentSet.from([[0, st.endSector - st.startSector]]));
      return 'the whole range is suspect (the kernel skipped the issue program since the last count: a write may be in no log, bit or record)';
    }
    const placed = placeShortfall(st, verdict.sectors, writes, log.full !== st.baseline.logFull);
    if ('why' in placed) return `its regions since the last exact count are suspect (${placed.why})`;
    this.placements.set(verdict, placed.extents);
    if (stable) st.unreconciled.clear();
    return `placed at ${placed.writes} writes issued and never seen completed (${placed.sectors} sectors): those in this range are suspect`;
  }

  private take(st: RangeState, ids: string[]): void {
    if (ids.length > 0) st.baseline.logTaken = [...st.baseline.logTaken ?? [], ...ids];
  }

  /**
   * Hands over: a last cycle persists what was read and releases it; what
   * arrives later stays in the ring for the next owner.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.cycle();
    this.reader.close();
    // The timer may have delivered records while the cycle awaited the store.
    if (this.drained !== this.persistedDrained) await this.persist();
    fs.closeSync(this.lockFd);
  }

  /** Stops without a last cycle, as a crash would (tests; a session that could not open): unreleased records stay in the ring. */
  abandon(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.reader.close();
    fs.closeSync(this.lockFd);
  }
}
