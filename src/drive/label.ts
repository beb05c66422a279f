// The DPSR drive's own label, in the last 8 KiB of its reserved tail: who
// it belongs to and what its image is, readable without the state
// directory (which may have died with the source). Two slots written
// alternately, each with a checksum, so a torn write leaves the other.
import fs from 'node:fs';
import { DpsrError } from '../base/errors.js';
import { CHECKED_HEADER_BYTES, checkedLength, checkedPayload, putChecked } from './checked-block.js';
import { native } from '../base/native.js';
import type { BlockIo } from '../io/block-io.js';
import { LocalDevice } from '../io/local-device.js';
import type { ImageState, PendingTxn } from '../state/records.js';

const LABEL_BYTES = 4096;
export const LABEL_AREA_BYTES = 2 * LABEL_BYTES;
const MAGIC = Buffer.from('DPSRLBL1');
const FORMAT = 1;
const HEADER = CHECKED_HEADER_BYTES;

export interface DriveLabel {
  pairName: string;
  pairId: string;
  seq: number; // increases with every label write
  source: { path: string; name: string; sizeSectors: number; serial: string | null; wwid: string | null; loopBackingFile: string | null };
  dataSectors: number; // the image occupies [0, dataSectors)
  reservedSectors: number; // the tail after it
  image: ImageState;
  imageTimeMs: number | null; // the point in time of the image, when it has one
  lastGoodTimeMs: number | null; // the last time the image was whole and consistent
  journal: 'none' | 'tail';
  journalSeq: number; // the last transaction applied
  /** A transaction being written: once committed, it makes the image this one (replayed from the drive alone). */
  pendingTxn?: PendingTxn | null;
  /** The history region's size (restore points); absent in labels written before it existed: none. */
  historySectors?: number;
  /** The generation of the image, and the name `sync --point` gave it: what its restore point is called. */
  generation?: number;
  imageLabel?: string | null;
  updatedMs: number;
}

function encodeLabel(label: DriveLabel): Buffer {
  const payload = Buffer.from(JSON.stringify(label));
  if (HEADER + payload.length > LABEL_BYTES) throw new DpsrError('label too large', 'ELABELSIZE');
  const b = Buffer.alloc(LABEL_BYTES);
  putChecked(b, MAGIC, FORMAT, payload);
  return b;
}

/** The label in one slot, or null if the slot holds none (or a torn one). */
function decodeLabel(b: Buffer): DriveLabel | null {
  if (b.length < HEADER || !b.subarray(0, 8).equals(MAGIC) || b.readUInt32LE(8) !== FORMAT) return null;
  if (HEADER + checkedLength(b) > b.length) return null;
  const payload = checkedPayload(b);
  if (!payload) return null;
  try {
    return JSON.parse(payload.toString('utf8')) as DriveLabel;
  } catch {
    return null;
  }
}

function slotOffsets(driveBytes: number): [number, number] {
  return [driveBytes - LABEL_AREA_BYTES, driveBytes - LABEL_BYTES];
}

/** Reads one slot whole into `buf` (false when the drive ends first); a failed read names the drive and the offset. */
function readSlot(drive: BlockIo, buf: Buffer, offset: number): boolean {
  try {
    return drive.readSync(buf, 0, LABEL_BYTES, offset) === LABEL_BYTES;
  } catch (err) {
    throw drive.ioError('read', 'DPSR drive label', offset, LABEL_BYTES, err as NodeJS.ErrnoException);
  }
}

/** Reads both slots of a drive; returns the newest valid label. */
export function readLabel(drive: BlockIo): DriveLabel | null {
  const driveBytes = drive.sizeBytes();
  if (driveBytes < LABEL_AREA_BYTES) return null;
  const buf = native().alignedBuffer(LABEL_BYTES, 4096);
  let best: DriveLabel | null = null;
  for (const offset of slotOffsets(driveBytes)) {
    if (!readSlot(drive, buf, offset)) continue;
    const label = decodeLabel(buf);
    if (label && (!best || label.seq > best.seq)) best = label;
  }
  return best;
}

/**
 * Why readLabel found no label on `path`: none at all (not a DPSR drive), or slots that carry
 * the label's magic but fail their checksum (damaged: say so, and the way out).
 */
export function noLabelReason(drive: BlockIo, path: string): string {
  const driveBytes = drive.sizeBytes();
  const buf = native().alignedBuffer(LABEL_BYTES, 4096);
  const damaged = driveBytes < LABEL_AREA_BYTES ? 0 : slotOffsets(driveBytes).filter((offset) =>
    readSlot(drive, buf, offset) && buf.subarray(0, 8).equals(MAGIC)).length;
  if (damaged === 0) return `${path} carries no dpsr label: not a DPSR drive`;
  return `${path} carries a dpsr label that fails its checksum (${damaged === 2 ? 'both slots' : 'its one slot'} damaged): ` +
    `which image the drive holds cannot be told; pair it again (dpsr unpair NAME, then dpsr pair SOURCE ${path} --force: a full copy)`;
}

/** The label of the device at `devPath`; null when it has none or cannot be read. Only reads. */
export function labelAt(devPath: string): DriveLabel | null {
  let fd: number;
  try {
    fd = fs.openSync(devPath, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  } catch {
    return null;
  }
  try {
    return readLabel(new LocalDevice(fd));
  } catch {
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Writes the label with the next sequence number into the older slot and
 * makes it durable. The drive must be open for writing.
 */
export function writeLabel(drive: BlockIo, label: Omit<DriveLabel, 'seq' | 'updatedMs'>, previousSeq: number): DriveLabel {
  const driveBytes = drive.sizeBytes();
  const full: DriveLabel = { ...label, seq: previousSeq + 1, updatedMs: Date.now() };
  const buf = native().alignedBuffer(LABEL_BYTES, 4096);
  encodeLabel(full).copy(buf);
  writeSlot(drive, buf, slotOffsets(driveBytes)[full.seq % 2]);
  drive.flushSync('the DPSR drive', 'its label may not be durable');
  return full;
}

/** Erases both slots (unpair). */
export function eraseLabel(drive: BlockIo): void {
  const driveBytes = drive.sizeBytes();
  const buf = native().alignedBuffer(LABEL_BYTES, 4096);
  buf.fill(0);
  for (const offset of slotOffsets(driveBytes)) writeSlot(drive, buf, offset);
  drive.flushSync('the DPSR drive', 'its label may not be durable');
}

/** One slot written, a failure as one line naming the drive and the offset. */
function writeSlot(drive: BlockIo, buf: Buffer, offset: number): void {
  try {
    drive.writeSync(buf, 0, LABEL_BYTES, offset);
  } catch (err) {
    throw drive.ioError('write', 'DPSR drive label', offset, LABEL_BYTES, err as NodeJS.ErrnoException);
  }
}
