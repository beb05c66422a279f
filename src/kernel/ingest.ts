// How a batch of the owner ring's records changes the tracked ranges' sets:
// a write is dirty (and no longer discarded), a discard is discarded (and no
// longer dirty), each clipped to the range. The common batch (writes of one
// disk under one slot mask, nothing to clip) is read whole by the addon; any
// other is read record by record, where the order of writes and discards
// matters. Both come to the same sets.
import { ExtentSet } from '../base/extents.js';
import { native } from '../base/native.js';
import { Layout, REC_UNKNOWN, REQ_OP_DISCARD, REQ_OP_SECURE_ERASE, forEachRecord } from './kernel-abi.js';

/** What ingesting needs of a tracked range (the tracker's RangeState). */
export interface IngestTarget {
  diskDev: number;
  startSector: number; // absolute on the disk
  endSector: number;
  dirty: ExtentSet; // relative to startSector
  discarded: ExtentSet;
  receivedSectors: number;
}

export interface Ingested {
  records: number;
  /** Records (once per range of their mask) that could not have been made for their range. */
  malformed: number;
}

/** A range's slot, or undefined when the slot is not one of ours. */
export type RangeOfSlot<T extends IngestTarget> = (slot: number) => T | undefined;
/** A write without a range (REC_UNKNOWN) on a range's disk: the caller makes the range suspect. */
export type OnUnknownWrite<T extends IngestTarget> = (range: T, op: number) => void;

// A batch of a few records is read record by record: the addon's call costs more than it saves.
const PLAIN_MIN_RECORDS = 16;
const PLAIN_MAX_RECORDS = 65536; // the ring reader's batch
// Where the addon puts a plain batch's extents: shared, as each batch is folded before the next.
const plain = { starts: new Float64Array(PLAIN_MAX_RECORDS), ends: new Float64Array(PLAIN_MAX_RECORDS), summary: new Float64Array(5) };

export function ingestBatch<T extends IngestTarget>(batch: Uint8Array, rangeOfSlot: RangeOfSlot<T>, onUnknown: OnUnknownWrite<T>): Ingested {
  return ingestPlain(batch, rangeOfSlot) ?? ingestByRecord(batch, rangeOfSlot, onUnknown);
}

/**
 * The common batch in one piece: as the order of writes among themselves
 * changes nothing, it comes to what reading it record by record does. Null
 * for any other batch.
 */
function ingestPlain<T extends IngestTarget>(batch: Uint8Array, rangeOfSlot: RangeOfSlot<T>): Ingested | null {
  const records = Math.floor(batch.length / Layout.record.size);
  if (records < PLAIN_MIN_RECORDS || records > PLAIN_MAX_RECORDS) return null;
  const count = native().plainWrites(batch, plain.starts, plain.ends, plain.summary);
  if (count < 0) return null;
  const [dev, slotMask, sectors, lowest, highest] = plain.summary;
  const ranges: T[] = [];
  let malformed = 0;
  for (let mask = slotMask, i = 0; mask !== 0; i++, mask >>>= 1) {
    const st = mask & 1 ? rangeOfSlot(i) : undefined;
    if (!st) continue;
    if (st.diskDev !== dev) malformed += records; // not records the programs could have made
    else if (count > 0 && (lowest < st.startSector || highest > st.endSector)) return null; // to be clipped
    else ranges.push(st);
  }
  for (const st of ranges) {
    st.dirty.addExtents(plain.starts, plain.ends, count, st.startSector);
    if (!st.discarded.isEmpty) {
      const written = new ExtentSet();
      written.addExtents(plain.starts, plain.ends, count, st.startSector);
      st.discarded.subtractSet(written);
    }
    st.receivedSectors += sectors;
  }
  return { records, malformed };
}

/** Any batch, one record at a time, in completion order. */
export function ingestByRecord<T extends IngestTarget>(batch: Uint8Array, rangeOfSlot: RangeOfSlot<T>, onUnknown: OnUnknownWrite<T>): Ingested {
  let records = 0;
  let malformed = 0;
  forEachRecord(batch, (r) => {
    records++;
    for (let mask = r.slotMask, i = 0; mask !== 0; i++, mask >>>= 1) {
      const st = mask & 1 ? rangeOfSlot(i) : undefined;
      if (!st) continue;
      if (st.diskDev !== r.dev) { // not a record the programs could have made
        malformed++;
        continue;
      }
      if (r.flags & REC_UNKNOWN) {
        onUnknown(st, r.op);
        continue;
      }
      const s = Math.max(r.startSector, st.startSector) - st.startSector;
      const e = Math.min(r.endSector, st.endSector) - st.startSector;
      if (s >= e) continue;
      // Records come in completion order: the later of a write and a discard wins.
      if (r.op === REQ_OP_DISCARD || r.op === REQ_OP_SECURE_ERASE) {
        st.discarded.add(s, e);
        if (st.dirty.overlaps(s, e)) st.dirty.subtract(s, e);
      } else {
        st.dirty.add(s, e);
        if (!st.discarded.isEmpty) st.discarded.subtract(s, e);
      }
      st.receivedSectors += e - s;
    }
  });
  return { records, malformed };
}
