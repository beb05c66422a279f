// The state directory's database (LMDB through lmdb-js, values packed with
// msgpackr): pairs, and each pair's tracker state with its extent sets
// stored compactly as one value each. The only module that imports lmdb.
import fs from 'node:fs';
import path from 'node:path';
import { open, type RootDatabase } from 'lmdb';
import { ExtentSet } from '../base/extents.js';
import type { Baseline } from '../kernel/reconcile.js';
import type { PairRecord } from './records.js';
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
}

const MAX_GAPS_KEPT = 200;

function toStored(r: RangeState): StoredRange {
  return {
    id: r.id, device: r.device, disk: r.disk, diskDev: r.diskDev, startSector: r.startSector, endSector: r.endSector,
    dirty: r.dirty.toBuffer(), suspect: r.suspect.toBuffer(), discarded: r.discarded.toBuffer(), unreconciled: r.unreconciled.toBuffer(),
    receivedSectors: r.receivedSectors, baseline: r.baseline, gaps: r.gaps.slice(-MAX_GAPS_KEPT),
  };
}

export class Store implements TrackerStore {
  private constructor(private readonly db: RootDatabase) {}

  static open(stateDir: string): Store {
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    return new Store(open({ path: path.join(stateDir, 'state.mdb'), compression: false }));
  }

  async close(): Promise<void> {
    await this.db.close();
  }

  pair(name: string): PairRecord | undefined {
    return this.db.get(['pair', name]) as PairRecord | undefined;
  }

  pairs(): PairRecord[] {
    return [...this.db.getRange({ start: ['pair'], end: ['pair\uffff'] })]
      .filter(({ key }) => Array.isArray(key) && key[0] === 'pair')
      .map(({ value }) => value as PairRecord);
  }

  /** The tracker state saved for a pair, ready to hand to Tracker.track. */
  range(name: string): Omit<RangeState, 'slot'> | undefined {
    const s = this.db.get(['range', name]) as StoredRange | undefined;
    if (!s) return undefined;
    return {
      ...s,
      dirty: ExtentSet.fromBuffer(s.dirty),
      suspect: ExtentSet.fromBuffer(s.suspect),
      discarded: s.discarded ? ExtentSet.fromBuffer(s.discarded) : new ExtentSet(),
      unreconciled: ExtentSet.fromBuffer(s.unreconciled),
      gaps: s.gaps ?? [],
    };
  }

  /** Tracker persistence: every range in one transaction. */
  async persist(ranges: readonly RangeState[]): Promise<void> {
    await this.db.transaction(() => {
      for (const r of ranges) this.db.put(['range', r.id], toStored(r));
    });
  }

  /** A pair record together with its range, atomically (a cut must not be half-saved). */
  async putPairAndRange(pair: PairRecord, range: RangeState | undefined): Promise<void> {
    await this.db.transaction(() => {
      this.db.put(['pair', pair.name], pair);
      if (range) this.db.put(['range', range.id], toStored(range));
    });
  }

  async putPair(pair: PairRecord): Promise<void> {
    await this.db.put(['pair', pair.name], pair);
  }

  async deletePair(name: string): Promise<void> {
    await this.db.transaction(() => {
      this.db.remove(['pair', name]);
      this.db.remove(['range', name]);
    });
  }
}
