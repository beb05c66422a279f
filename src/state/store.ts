// The state directory's database (LMDB through lmdb-js, values packed with
// msgpackr): pairs, and each pair's tracker state with its extent sets
// stored compactly as one value each. The only module that imports lmdb.
//
// The tracker persists every tick. Rewriting a range's sets each time costs
// what they hold (a million scattered extents: most of a second), so a tick
// writes a delta instead: for each set, the windows where it changed and
// what it holds inside them. A range's snapshot is rewritten, and its deltas
// removed in the same transaction, when its sets were replaced, when the
// deltas outgrow the snapshot, or after a failed write.
import fs from 'node:fs';
import path from 'node:path';
import { type Key, open, type RootDatabase, type Transaction } from 'lmdb';
import { checkStateFile, stateDamaged } from './state-file.js';
import { ExtentSet } from '../base/extents.js';
import { bootId } from '../devices/boot-id.js';
import type { Baseline } from '../kernel/reconcile.js';
import { type PairRecord, pairRecordProblem } from './records.js';
import type { Gap, RangeState, TrackerStore } from '../kernel/tracker.js';

interface StoredRange {
  id: string;
  device: string;
  disk: string;
  diskDev: number;
  startSector: number;
  endSector: number;
  dirty: Buffer;
  suspect: Buffer;
  discarded?: Buffer;
  unreconciled: Buffer;
  receivedSectors: number;
  baseline: Baseline;
  gaps: Gap[];
  /** The boot it was saved in: a range saved in another boot is adopted across a reboot (absent in older states). */
  bootId?: string | null;
}

const MAX_GAPS_KEPT = 200;
const SET_NAMES = ['dirty', 'suspect', 'discarded', 'unreconciled'] as const;
type SetName = typeof SET_NAMES[number];
const MIN_DELTA_ROOM = 1 << 20; // deltas may add up to the snapshot's size, or this

/**
 * What a tick changed in a range: per set, the windows and the set inside
 * them (absent: all of the windows, as when a set only grew); and the rest of
 * the range whole.
 */
interface StoredDelta {
  sets: Partial<Record<SetName, { windows: Buffer; inside?: Buffer }>>;
  rest: Omit<StoredRange, SetName>;
}

/** The sets a range's snapshot was taken of, which remember their changes since. */
interface Snapshotted {
  sets: Record<SetName, ExtentSet>;
  bytes: number; // the snapshot's sets
  deltaBytes: number; // its deltas since
  nextSeq: number;
}

const deltaKey = (id: string, seq: number) => ['range-delta', id, seq];

function setsToStored(r: Pick<RangeState, SetName>): Pick<StoredRange, SetName> {
  return { dirty: r.dirty.toBuffer(), suspect: r.suspect.toBuffer(), discarded: r.discarded.toBuffer(), unreconciled: r.unreconciled.toBuffer() };
}

function restOf(r: Omit<RangeState, 'slot'>): Omit<StoredRange, SetName> {
  return {
    id: r.id, device: r.device, disk: r.disk, diskDev: r.diskDev, startSector: r.startSector, endSector: r.endSector,
    receivedSectors: r.receivedSectors, baseline: r.baseline, gaps: r.gaps.slice(-MAX_GAPS_KEPT), bootId: bootId(),
  };
}

export class Store implements TrackerStore {
  private readonly snapshotted = new Map<string, Snapshotted>();

  private constructor(private readonly db: RootDatabase, private readonly file: string) {}

  static open(stateDir: string): Store {
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const file = path.join(stateDir, 'state.mdb');
    checkStateFile(file);
    return new Store(open({ path: file, compression: false }), file);
  }

  /** Opens for reading only, also on a read-only file system (early boot, the end of shutdown); null when there is none. */
  static openReadOnly(stateDir: string): Store | null {
    const file = path.join(stateDir, 'state.mdb');
    if (!fs.existsSync(file)) return null;
    checkStateFile(file);
    return new Store(open({ path: file, compression: false, readOnly: true }), file);
  }

  /**
   * Folds what was saved as deltas into snapshots first (what is saved, not
   * what is in memory: that is saved only where the tracker chooses), so at
   * rest the state is what versions before deltas read.
   */
  async close(): Promise<void> {
    const ids = [...this.snapshotted.entries()].filter(([, snap]) => snap.nextSeq > 0).map(([id]) => id);
    const folded = ids.map((id) => ({ id, saved: this.range(id), deltas: this.deltas(id).map((d) => d.key) }));
    this.snapshotted.clear();
    if (folded.length > 0) await this.write(() => {
      for (const { id, saved, deltas } of folded) {
        if (!saved) continue;
        this.db.put(['range', id], { ...restOf(saved), ...setsToStored(saved) });
        for (const key of deltas) this.db.remove(key);
      }
    });
    await this.db.close();
  }

  pair(name: string): PairRecord | undefined {
    const v = this.db.get(['pair', name]);
    return v === undefined ? undefined : this.checkedPair(name, v);
  }

  pairs(): PairRecord[] {
    return [...this.db.getRange({ start: ['pair'], end: ['pair\uffff'] })]
      .filter(({ key }) => Array.isArray(key) && key[0] === 'pair')
      .map(({ key, value }) => this.checkedPair(String((key as unknown[])[1]), value));
  }

  /** A record is trusted as far as its shape: a damaged one is said, not a TypeError somewhere later. */
  private checkedPair(name: string, v: unknown): PairRecord {
    const problem = pairRecordProblem(v);
    if (problem) throw stateDamaged(this.file, `holds a damaged record of pair ${name} (${problem})`);
    return v as PairRecord;
  }

  /** The boot a pair's tracker state was last saved in (null: never saved, or saved before it was kept). */
  rangeBootId(name: string): string | null {
    const transaction = this.db.useReadTransaction();
    try {
      let rest = this.db.get(['range', name], { transaction }) as Omit<StoredRange, SetName> | undefined;
      for (const { value } of this.deltas(name, transaction)) rest = value.rest;
      return rest?.bootId ?? null;
    } finally {
      transaction.done();
    }
  }

  /** The tracker state saved for a pair (its snapshot with its deltas laid over it), ready to hand to Tracker.track. */
  range(name: string): Omit<RangeState, 'slot'> | undefined {
    const txn = this.db.useReadTransaction(); // the snapshot and its deltas as of one moment
    try {
      return this.rangeIn(name, txn);
    } finally {
      txn.done();
    }
  }

  private rangeIn(name: string, transaction: Transaction): Omit<RangeState, 'slot'> | undefined {
    try {
      return this.decodedRange(name, transaction);
    } catch (err) {
      throw stateDamaged(this.file, `holds a damaged tracker record of pair ${name} (${(err as Error).message})`);
    }
  }

  private decodedRange(name: string, transaction: Transaction): Omit<RangeState, 'slot'> | undefined {
    const s = this.db.get(['range', name], { transaction }) as StoredRange | undefined;
    if (s === undefined) return undefined;
    if (typeof s !== 'object' || s === null || !(s.dirty instanceof Uint8Array)) throw new Error('not a tracker record');
    const sets: Record<SetName, ExtentSet> = {
      dirty: ExtentSet.fromBuffer(s.dirty),
      suspect: ExtentSet.fromBuffer(s.suspect),
      discarded: s.discarded ? ExtentSet.fromBuffer(s.discarded) : new ExtentSet(),
      unreconciled: ExtentSet.fromBuffer(s.unreconciled),
    };
    let rest: Omit<StoredRange, SetName> = s;
    for (const { value } of this.deltas(name, transaction)) {
      for (const k of SET_NAMES) {
        const d = value.sets[k];
        if (!d) continue;
        const windows = ExtentSet.fromBuffer(d.windows);
        sets[k].subtractSet(windows);
        sets[k].addSet(d.inside === undefined ? windows : ExtentSet.fromBuffer(d.inside));
      }
      rest = value.rest;
    }
    const { id, device, disk, diskDev, startSector, endSector, receivedSectors, baseline, gaps } = rest;
    return { id, device, disk, diskDev, startSector, endSector, receivedSectors, baseline, gaps: gaps ?? [], ...sets };
  }

  private deltas(name: string, transaction?: Transaction): Array<{ key: Key; value: StoredDelta }> {
    return [...this.db.getRange({ start: deltaKey(name, 0), end: deltaKey(name, Number.MAX_SAFE_INTEGER), transaction })] as Array<{ key: Key; value: StoredDelta }>;
  }

  /** Tracker persistence: every range in one transaction, as a delta where one can be. */
  async persist(ranges: readonly RangeState[]): Promise<void> {
    await this.write(() => {
      for (const r of ranges) this.putRange(r, false);
    });
  }

  /** A pair record together with its range, atomically (a cut must not be half-saved). */
  async putPairAndRange(pair: PairRecord, range: RangeState | undefined): Promise<void> {
    await this.write(() => {
      this.db.put(['pair', pair.name], pair);
      if (range) this.putRange(range, true);
    });
  }

  /** A transaction that writes ranges: after a failure, what their sets remember is not saved, so snapshots start over. */
  private async write(body: () => void): Promise<void> {
    try {
      await this.db.transaction(body);
    } catch (err) {
      this.snapshotted.clear();
      throw err;
    }
  }

  /** Inside a transaction: the range's delta since its snapshot, or a new snapshot (`whole`, or when a delta cannot be). */
  private putRange(r: RangeState, whole: boolean): void {
    const snap = this.snapshotted.get(r.id);
    if (!whole && snap && SET_NAMES.every((k) => snap.sets[k] === r[k]) && snap.deltaBytes < Math.max(snap.bytes, MIN_DELTA_ROOM)) {
      const delta: StoredDelta = { sets: {}, rest: restOf(r) };
      for (const k of SET_NAMES) {
        const windows = r[k].takeChanges()!;
        if (windows.isEmpty) continue;
        const inside = r[k].within(windows);
        // A set that only grew (the dirty set, most ticks) holds all of its windows: saved once.
        const entry = inside.totalSectors === windows.totalSectors ? { windows: windows.toBuffer() } : { windows: windows.toBuffer(), inside: inside.toBuffer() };
        delta.sets[k] = entry;
        snap.deltaBytes += entry.windows.length + (entry.inside?.length ?? 0);
      }
      this.db.put(deltaKey(r.id, snap.nextSeq++), delta);
      return;
    }
    for (const { key } of this.deltas(r.id)) this.db.remove(key);
    const sets = { dirty: r.dirty, suspect: r.suspect, discarded: r.discarded, unreconciled: r.unreconciled };
    const stored: StoredRange = { ...restOf(r), ...setsToStored(r) };
    for (const k of SET_NAMES) sets[k].takeChanges(); // from here on they remember their changes
    this.db.put(['range', r.id], stored);
    this.snapshotted.set(r.id, { sets, bytes: stored.dirty.length + stored.suspect.length + stored.discarded!.length + stored.unreconciled.length, deltaBytes: 0, nextSeq: 0 });
  }

  async putPair(pair: PairRecord): Promise<void> {
    await this.db.put(['pair', pair.name], pair);
  }

  async deletePair(name: string): Promise<void> {
    await this.write(() => {
      this.db.remove(['pair', name]);
      this.db.remove(['range', name]);
      for (const { key } of this.deltas(name)) this.db.remove(key);
      this.snapshotted.delete(name);
    });
  }
}
