// The shutdown record: what a clean shutdown leaves in the DPSR drive's
// reserved tail so that the next boot can resume tracking with no compare
// pass (`dpsr shutdown`, `dpsr boot`). Never half-trusted: a checksum over
// the whole payload, the pair's id, the generation and journal sequence it
// was written at, and the boot it was written in.
//
// On-disk format: one area of RECORD_AREA_BYTES (1 MiB) just below the label,
// at floor((size − 8 KiB − 1 MiB) / 4 KiB) · 4 KiB; the journal ends where it
// begins. Its first 48 bytes: magic "DPSRSHT1", format u32 LE = 1, payload
// length u32, SHA-256 of the payload; the payload (UTF-8 JSON of
// ShutdownRecord, extent sets as base64 of ExtentSet.toBuffer()) from byte 48.
// Written in two steps, each with fdatasync: the whole record under the magic
// "DPSRSHTP" (made, not confirmed), then, once `dpsr shutdown` has checked that
// nothing wrote the source meanwhile, its first 4 KiB again under "DPSRSHT1".
// A record never confirmed (the drive gone between, an export's connection
// lost, a write to the source) is never trusted, and nothing has to be erased
// to void it. Erased (consumed) by zeroing its first 4 KiB and fdatasync. A
// torn write fails the checksum: no record, a gap.
import { ExtentSet } from '../base/extents.js';
import { native } from '../base/native.js';
import type { BlockIo } from '../io/block-io.js';
import { SECTOR } from '../base/units.js';
import { CHECKED_HEADER_BYTES, checkedLength, checkedPayload, putChecked } from './checked-block.js';
import { LABEL_AREA_BYTES } from './label.js';

export const RECORD_AREA_BYTES = 1 << 20;
const BLOCK = 4096;
const MAGIC = Buffer.from('DPSRSHT1');
const UNCONFIRMED = Buffer.from('DPSRSHTP');
const FORMAT = 1;
const HEADER = CHECKED_HEADER_BYTES;

/** The tracker's sets of one pair at shutdown, relative to the source. */
export interface RecordSets {
  dirty: ExtentSet;
  suspect: ExtentSet;
  discarded: ExtentSet;
}

export interface ShutdownRecord {
  pairId: string;
  pairName: string;
  /** The pair's last applied generation and journal transaction: a sync after the record voids it. */
  generation: number;
  journalSeq: number;
  /** The boot it was written in (/proc/sys/kernel/random/boot_id). */
  bootId: string;
  /** The boot the state directory's tracker state it extends was saved in: a save after it voids the record. */
  baseBootId: string | null;
  writtenMs: number;
  /** The source: what the next boot checks before it trusts the sets. */
  source: { sizeSectors: number; startSector: number; disk: string; serial: string | null; wwid: string | null; loopBackingFile: string | null };
  /** The source disk's write counter (sectors written + discarded, /sys/block/DISK/stat) when the record was made. */
  diskWrittenSectors: number;
  /** sha256 of the source's file-system superblocks (devices/fingerprint.ts). */
  fingerprint: string;
  sets: RecordSets;
  /** A generation cut but not committed: its sets, taken again by the next sync. */
  pending: { generation: number; copy: ExtentSet; compare: ExtentSet; discard: ExtentSet } | null;
}

/** What the tail holds before the record: the image's end, rounded up to 4 KiB, and the history region after it. */
type TailOwner = { dataSectors: number; reservedSectors: number; historySectors?: number };

/** Where the record lives on a drive, or null when the tail has no room for it (no label, or the image and its history region reach it). */
export function recordPlace(driveBytes: number, pair: TailOwner): number | null {
  if (pair.reservedSectors === 0) return null;
  const start = Math.floor((driveBytes - LABEL_AREA_BYTES - RECORD_AREA_BYTES) / BLOCK) * BLOCK;
  const before = Math.ceil((pair.dataSectors * SECTOR) / BLOCK) * BLOCK + (pair.historySectors ?? 0) * SECTOR;
  return start >= before ? start : null;
}

/** Where the tail's other tenant, the journal, must end: the record's start, or the label's when there is no record. */
export function tailEndBytes(driveBytes: number, pair: TailOwner): number {
  return recordPlace(driveBytes, pair) ?? Math.floor((driveBytes - LABEL_AREA_BYTES) / BLOCK) * BLOCK;
}

const setToJson = (s: ExtentSet) => s.toBuffer().toString('base64');
const setFromJson = (s: string) => ExtentSet.fromBuffer(Buffer.from(s, 'base64'));

function encode(rec: ShutdownRecord): Buffer | null {
  const payload = Buffer.from(JSON.stringify({
    ...rec,
    sets: { dirty: setToJson(rec.sets.dirty), suspect: setToJson(rec.sets.suspect), discarded: setToJson(rec.sets.discarded) },
    pending: rec.pending && { generation: rec.pending.generation, copy: setToJson(rec.pending.copy), compare: setToJson(rec.pending.compare), discard: setToJson(rec.pending.discard) },
  }));
  if (HEADER + payload.length > RECORD_AREA_BYTES) return null;
  const bytes = Math.ceil((HEADER + payload.length) / BLOCK) * BLOCK;
  const b = native().alignedBuffer(bytes, BLOCK);
  b.fill(0);
  putChecked(b, MAGIC, FORMAT, payload);
  return b;
}

/** What the area holds: a record, nothing, or something that is no valid record (and why). */
export type ReadRecord = { record: ShutdownRecord } | { none: true } | { invalid: string };

function decode(head: Buffer, readMore: (length: number) => Buffer): ReadRecord {
  if (head.subarray(0, 8).equals(UNCONFIRMED)) {
    return { invalid: 'it was made but never confirmed: the shutdown that wrote it lost its DPSR drive, or saw the source written, before it could' };
  }
  if (!head.subarray(0, 8).equals(MAGIC)) return { none: true };
  if (head.readUInt32LE(8) !== FORMAT) return { invalid: `format ${head.readUInt32LE(8)}, this dpsr reads ${FORMAT}` };
  const length = checkedLength(head);
  if (HEADER + length > RECORD_AREA_BYTES) return { invalid: 'its length runs past the area' };
  const payload = checkedPayload(readMore(HEADER + length));
  if (!payload) return { invalid: 'its checksum does not match (torn or damaged)' };
  try {
    const raw = JSON.parse(payload.toString('utf8'));
    const p = raw.pending;
    return {
      record: {
        ...raw,
        sets: { dirty: setFromJson(raw.sets.dirty), suspect: setFromJson(raw.sets.suspect), discarded: setFromJson(raw.sets.discarded) },
        pending: p ? { generation: p.generation, copy: setFromJson(p.copy), compare: setFromJson(p.compare), discard: setFromJson(p.discard) } : null,
      },
    };
  } catch (err) {
    return { invalid: `its payload cannot be read (${(err as Error).message})` };
  }
}

/** Reads the record area of a drive. */
export function readShutdownRecord(drive: BlockIo, pair: TailOwner): ReadRecord {
  const start = recordPlace(drive.sizeBytes(), pair);
  if (start === null) return { none: true };
  const head = native().alignedBuffer(BLOCK, BLOCK);
  if (drive.readSync(head, 0, BLOCK, start) !== BLOCK) return { invalid: 'its area cannot be read whole' };
  return decode(head, (length) => {
    const bytes = Math.ceil(length / BLOCK) * BLOCK;
    const b = native().alignedBuffer(bytes, BLOCK);
    if (drive.readSync(b, 0, bytes, start) !== bytes) throw new Error('short read of the shutdown record');
    return b;
  });
}

/**
 * Writes the record durably into a writable drive, not yet confirmed (no boot trusts it). Returns
 * the bytes written and the head that confirmShutdownRecord writes, or why it was not written (no
 * room on the drive, or too many extents for the area).
 */
export function writeShutdownRecord(drive: BlockIo, pair: TailOwner, rec: ShutdownRecord): { bytes: number; head: Buffer } | { why: string } {
  const start = recordPlace(drive.sizeBytes(), pair);
  if (start === null) return { why: 'the DPSR drive has no room for a shutdown record in its reserved tail' };
  const b = encode(rec);
  if (b === null) return { why: `the changed regions are too many for the ${RECORD_AREA_BYTES >> 20} MiB record area` };
  const head = native().alignedBuffer(BLOCK, BLOCK);
  b.copy(head, 0, 0, BLOCK);
  UNCONFIRMED.copy(b, 0);
  drive.writeSync(b, 0, b.length, start);
  drive.flushSync('the DPSR drive', 'the shutdown record may not be durable');
  return { bytes: b.length, head };
}

/** Confirms a record writeShutdownRecord made: its head (`head`, under the confirmed magic) written durably. Returns the bytes written. */
export function confirmShutdownRecord(drive: BlockIo, pair: TailOwner, head: Buffer): number {
  const start = recordPlace(drive.sizeBytes(), pair);
  if (start === null) throw new Error('the DPSR drive has no room for a shutdown record');
  drive.writeSync(head, 0, BLOCK, start);
  drive.flushSync('the DPSR drive', 'the shutdown record may not be confirmed');
  return BLOCK;
}

/** Consumes the record: zeroes its head durably, so it can never be taken again. Returns the bytes written (0: no area). */
export function eraseShutdownRecord(drive: BlockIo, pair: TailOwner): number {
  const start = recordPlace(drive.sizeBytes(), pair);
  if (start === null) return 0;
  const b = native().alignedBuffer(BLOCK, BLOCK);
  b.fill(0);
  drive.writeSync(b, 0, BLOCK, start);
  drive.flushSync('the DPSR drive', 'the shutdown record may still be taken');
  return BLOCK;
}
