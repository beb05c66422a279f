// Restore points: earlier images kept in the DPSR drive's history region as
// undo records. Before a journal transaction is applied, the old content of
// every block it will write is appended here and made durable, and the
// index then marks that transaction's undo as done: a replay after a crash
// saves it again only while that mark is missing, which is exactly while no
// block of the transaction has been applied (the image is still the
// previous one). An older image is the current one with the undo records of
// every later generation laid over it (point-image.ts).
//
// On-disk format (all blocks 4 KiB; offsets from the region start; integers little-endian):
//
//   [0, 128 KiB)     the index: two 64 KiB slots written alternately (slot seq % 2, then fdatasync);
//                    each: magic "DPSRHIX1", format u32 = 1, payload length u32, SHA-256 of the payload,
//                    then the payload, UTF-8 JSON of HistoryIndex. A reader takes the valid slot of this
//                    pair with the highest seq, so a torn write leaves the other. A sync makes room in the index
//                    for its point as in the ring for its record: the oldest points go, and a sync that would
//                    drop a labelled one is refused before its commit (unless when_full allows it).
//   [128 KiB, end)   undo records, a ring: each starts where the last one written ends (the index's cursor),
//                    or at 128 KiB when it would not fit before the end; the points whose records it overlaps
//                    are dropped (from the index, durably) before it is written, and with them every older
//                    point (each point needs all later records). Dropping a point that has older ones moves
//                    its records to the next older point (`carried`): that point's image needs them, so they
//                    stay where they are until it goes too; those whose every block it holds already are
//                    freed. A record: a header block (magic "DPSRUND1", version u32 = 2, extent count u32,
//                    transaction seq u64, generation u64, data bytes u64, SHA-256 of the extent table,
//                    SHA-256 of the chunk hash table, then headHash = SHA-256 of pair id ‖ the 104 bytes
//                    before it), the extent table (16 bytes each: start sector u64, sectors u64; padded to
//                    4 KiB), the chunk hash table (SHA-256 of each 64 KiB of the data, the last one shorter;
//                    padded to 4 KiB), and the data of the extents in table order (whole 4 KiB blocks).
//                    Version 1 (still read) has no chunk hash table, and the SHA-256 of the whole data.
//                    Version 3 (the index entry's format: 3), written during a sync's passes (UndoStream):
//                    the data first, then the extent table (in the data's order), the chunk hash table and
//                    the header, the record's last block.
import crypto from 'node:crypto';
import { DpsrError, RefusedError } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { native } from '../base/native.js';
import { SECTOR, formatBytes } from '../base/units.js';
import type { BlockIo } from '../io/block-io.js';
import type { DroppedPoint, ImageState, RevertOf } from '../state/records.js';
import type { CommittedTransaction } from './journal.js';

const BLOCK = 4096;
const INDEX_SLOT_BYTES = 64 << 10;
const INDEX_AREA_BYTES = 2 * INDEX_SLOT_BYTES;
/** The smallest history region dpsr makes: the index and a little room for records. */
export const MIN_HISTORY_BYTES = 1 << 20;
const INDEX_MAGIC = Buffer.from('DPSRHIX1');
const RECORD_MAGIC = Buffer.from('DPSRUND1');
const FORMAT = 1; // the index's
const RECORD_FORMAT = 2; // 1: one SHA-256 of the data, no chunk hashes (still read)
const STREAMED_FORMAT = 3; // the data first, the header last: written during a sync's passes (UndoStream)
const CHUNK_BYTES = 64 << 10; // a record's data is verified in chunks this big: a reader checks only what it reads
const CHUNK_HASH_BYTES = 32;
const INDEX_HEADER = 8 + 4 + 4 + 32;
const HEAD_HASHED = 104;
const EXTENT_BYTES = 16;
const COPY_CHUNK_BYTES = 4 << 20;
const DROPPED_KEPT = 20;
const INDEX_SLACK_BYTES = 256;
const REGION_FULL = 'the history region was full (oldest first)';
const INDEX_FULL = 'the history index was full (oldest first)';

export interface HistoryRegion {
  drive: BlockIo;
  startBytes: number;
  lengthBytes: number;
  pairId: string;
}

/** An undo record in the region: the old content of what transaction `txnSeq` wrote over the image of `generation`. */
export interface UndoRecord {
  generation: number;
  /** The journal transaction whose apply this record undoes. */
  txnSeq: number;
  offsetBytes: number; // from the region start
  bytes: number; // the record's size in the region
  dataBytes: number;
  headHash: string; // hex: binds the record to this index entry
  /** 3: the data first, the header in the record's last block (written during the passes); absent: the header first (formats 1 and 2). */
  format?: 3;
}

/** One restore point: the image of `generation`, held as the undo of the transaction that replaced it. */
export interface UndoPoint extends UndoRecord {
  timeMs: number | null;
  image: ImageState;
  label: string | null;
  savedMs: number;
  /** Records of dropped newer points that this image (and every older one) still needs, oldest first. */
  carried?: UndoRecord[];
}

/** What a pair keeps (dpsr.toml's keep, keep_points, when_full); labelled points are kept until removed. */
export interface KeepPolicy {
  /** Unlabelled points whose image is older than this are dropped at the next sync (null: no limit). */
  keepMs: number | null;
  /** At most this many unlabelled points (null: as many as the region holds). */
  keepPoints: number | null;
  /** When the region is full and the next space to reuse holds a labelled point: drop it (with a warning) instead of refusing the sync. */
  dropLabelledWhenFull: boolean;
}

export const DEFAULT_KEEP: KeepPolicy = { keepMs: null, keepPoints: null, dropLabelledWhenFull: false };


export interface HistoryIndex {
  pairId: string;
  seq: number;
  /** The last journal transaction whose undo is durable (or was knowingly not kept): a replay never saves it again. */
  undoneTxnSeq: number;
  points: UndoPoint[]; // oldest first
  dropped: DroppedPoint[]; // the latest drops, newest last
  /** Where the last record written ends (absent in older indexes: the newest point's end). */
  cursorBytes?: number;
}

/** The image a point holds, as the pair record or the drive label says before the transaction is applied. */
export interface PointMeta { generation: number; timeMs: number | null; image: ImageState; label: string | null }

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** Where the history region lives: right after the image, before the journal; null when the pair has none. */
export function historyPlace(pair: { dataSectors: number; historySectors?: number }): { startBytes: number; lengthBytes: number } | null {
  const lengthBytes = (pair.historySectors ?? 0) * SECTOR;
  if (lengthBytes < MIN_HISTORY_BYTES) return null;
  return { startBytes: roundUp(pair.dataSectors * SECTOR, BLOCK), lengthBytes };
}

/** The pair's history region on the open drive, or null. */
export function historyRegionOf(drive: BlockIo, pair: { dataSectors: number; historySectors?: number }, pairId: string): HistoryRegion | null {
  const place = historyPlace(pair);
  return place ? { drive, ...place, pairId } : null;
}

// ---------------------------------------------------------------------------------------------
// The index

function emptyIndex(pairId: string): HistoryIndex {
  return { pairId, seq: 0, undoneTxnSeq: 0, points: [], dropped: [] };
}

/** The newest valid index of this pair, or an empty one (a new region, or one left by another pairing). */
export function readIndex(region: HistoryRegion): HistoryIndex {
  const buf = native().alignedBuffer(INDEX_SLOT_BYTES, BLOCK);
  let best: HistoryIndex | null = null;
  for (let slot = 0; slot < 2; slot++) {
    readSync(region, buf, INDEX_SLOT_BYTES, slot * INDEX_SLOT_BYTES);
    const index = decodeIndex(buf);
    if (index && index.pairId === region.pairId && (!best || index.seq > best.seq)) best = index;
  }
  return best ?? emptyIndex(region.pairId);
}

function decodeIndex(b: Buffer): HistoryIndex | null {
  if (!b.subarray(0, 8).equals(INDEX_MAGIC) || b.readUInt32LE(8) !== FORMAT) return null;
  const length = b.readUInt32LE(12);
  if (INDEX_HEADER + length > b.length) return null;
  const payload = b.subarray(INDEX_HEADER, INDEX_HEADER + length);
  if (!sha256(payload).equals(b.subarray(16, 48))) return null;
  try {
    return JSON.parse(payload.toString('utf8')) as HistoryIndex;
  } catch {
    return null;
  }
}

/** Whether the index fits its slot, with room for what a write adds (its seq, the cursor and the mark growing by a digit). */
const fitsSlot = (index: HistoryIndex): boolean => INDEX_HEADER + Buffer.byteLength(JSON.stringify(index)) + INDEX_SLACK_BYTES <= INDEX_SLOT_BYTES;

/**
 * Writes the index with the next seq into the older slot, durably. Whoever
 * adds a point makes room first (planUndo); should it still not fit, the
 * oldest points go rather than the index.
 */
export function writeIndex(region: HistoryRegion, index: HistoryIndex): void {
  index.seq += 1;
  let payload = Buffer.from(JSON.stringify(index));
  while (INDEX_HEADER + payload.length > INDEX_SLOT_BYTES && index.points.length > 0) {
    dropOldest(index, 1, INDEX_FULL);
    payload = Buffer.from(JSON.stringify(index));
  }
  const buf = native().alignedBuffer(INDEX_SLOT_BYTES, BLOCK);
  buf.fill(0);
  INDEX_MAGIC.copy(buf, 0);
  buf.writeUInt32LE(FORMAT, 8);
  buf.writeUInt32LE(payload.length, 12);
  sha256(payload).copy(buf, 16);
  payload.copy(buf, INDEX_HEADER);
  const used = roundUp(INDEX_HEADER + payload.length, BLOCK);
  const at = region.startBytes + (index.seq % 2) * INDEX_SLOT_BYTES;
  try {
    region.drive.writeSync(buf, 0, used, at);
  } catch (err) {
    throw region.drive.ioError('write', 'DPSR drive history index', at, used, err as NodeJS.ErrnoException);
  }
  region.drive.flushSync('the DPSR drive', 'its restore points may not be durable');
}

/** A new, empty history for a pairing (both slots, so nothing of an earlier pairing is read). */
export function resetHistory(region: HistoryRegion): void {
  const index = emptyIndex(region.pairId);
  writeIndex(region, index);
  writeIndex(region, index);
}

/** The records a point's image needs of its own: its record, then those it carries for dropped newer points. */
export function recordsOf(p: UndoPoint): UndoRecord[] {
  return [p, ...(p.carried ?? [])];
}

/** The bytes a point's records take in the region. */
export function heldBytes(p: UndoPoint): number {
  return recordsOf(p).reduce((n, r) => n + r.bytes, 0);
}

const recordOnly = (r: UndoRecord): UndoRecord =>
  ({ generation: r.generation, txnSeq: r.txnSeq, offsetBytes: r.offsetBytes, bytes: r.bytes, dataBytes: r.dataBytes, headHash: r.headHash, ...(r.format ? { format: r.format } : {}) });

function remember(index: HistoryIndex, gone: DroppedPoint[]): DroppedPoint[] {
  index.dropped = [...index.dropped, ...gone].slice(-DROPPED_KEPT);
  return gone;
}

const droppedOf = (p: PointMeta, reason: string): DroppedPoint => ({ generation: p.generation, timeMs: p.timeMs, label: p.label, reason, atMs: Date.now() });

/** Drops the `count` oldest points with their records (nothing older needs them), remembering why. */
function dropOldest(index: HistoryIndex, count: number, reason: string): DroppedPoint[] {
  return remember(index, index.points.splice(0, count).map((p) => droppedOf(p, reason)));
}

/** What dropping one point did to the history space. */
export interface DropSpace {
  /** Bytes no point holds any more (reusable by the next records). */
  freedBytes: number;
  /** Bytes of its records the next older point holds now: its image needs them (freed when it goes). */
  carriedBytes: number;
  /** That older point, or null (the oldest was dropped). */
  carriedBy: number | null;
  /** Of what that point holds, bytes of blocks no image reads, kept because there was no free space to rewrite their records without them. */
  shadowedKeptBytes?: number;
}

/**
 * Drops point `i` alone. The oldest goes with its records. A newer one
 * hands its records to the next older point, whose image needs them (laid
 * over oldest first, that point's own content wins where both hold a
 * block); those of them whose every block an earlier record of that point
 * holds are read by no image, and are freed. Every other image stays exact
 * and nothing is rewritten, so one index write drops it.
 */
function dropAt(region: HistoryRegion, index: HistoryIndex, i: number, reason: string): DropSpace {
  cursorOf(index); // fixed before the newest record may change hands
  const [p] = index.points.splice(i, 1);
  remember(index, [droppedOf(p, reason)]);
  if (i === 0) return { freedBytes: heldBytes(p), carriedBytes: 0, carriedBy: null };
  const older = index.points[i - 1];
  const handed = recordsOf(p).map(recordOnly);
  older.carried = [...(older.carried ?? []), ...handed];
  const freed = new Set(shadowedRecords(region, older));
  older.carried = older.carried.filter((r) => !freed.has(r));
  if (older.carried.length === 0) delete older.carried;
  const bytesOf = (rs: UndoRecord[]) => rs.reduce((n, r) => n + r.bytes, 0);
  return { freedBytes: bytesOf([...freed]), carriedBytes: bytesOf(handed.filter((r) => !freed.has(r))), carriedBy: older.generation };
}

/**
 * The records `p` carries that no image reads: every block of each is held
 * by an earlier record of `p` (an image takes a block from the first record
 * holding it). A record whose table cannot be read is kept, and shadows nothing.
 */
function shadowedRecords(region: HistoryRegion, p: UndoPoint): UndoRecord[] {
  const held = new ExtentSet();
  const shadowed: UndoRecord[] = [];
  for (const r of recordsOf(p)) {
    let sectors: ExtentSet;
    try {
      sectors = ExtentSet.from(readUndoLayout(region, r).extents.map((x) => [x.startSector, x.endSector] as const));
    } catch {
      continue;
    }
    const fresh = sectors.clone();
    fresh.subtractSet(held);
    if (r !== p && fresh.isEmpty) shadowed.push(r);
    held.addSet(sectors);
  }
  return shadowed;
}

/** Where the next record goes: after the last one written (older indexes kept none: after the newest point). */
function cursorOf(index: HistoryIndex): number {
  if (index.cursorBytes === undefined) {
    const newest = index.points[index.points.length - 1];
    index.cursorBytes = newest ? newest.offsetBytes + newest.bytes : INDEX_AREA_BYTES;
  }
  return index.cursorBytes;
}

/**
 * Drops point `generation` alone (an older point keeps what it needs of its
 * records, those it holds in part rewritten with only the blocks it lacks:
 * mergeCarried), durably. Null: no such point.
 */
export async function dropPoint(region: HistoryRegion, generation: number, reason: string): Promise<({ dropped: DroppedPoint } & DropSpace) | null> {
  const index = readIndex(region);
  const i = index.points.findIndex((p) => p.generation === generation);
  if (i < 0) return null;
  const handed = new Set(recordsOf(index.points[i]).map((r) => r.txnSeq));
  const space = dropAt(region, index, i, reason);
  if (space.carriedBy !== null) {
    const older = index.points[i - 1];
    const merged = await mergeCarried(region, index, older);
    space.freedBytes += merged.freedBytes;
    space.carriedBytes = (older.carried ?? []).filter((r) => handed.has(r.txnSeq)).reduce((n, r) => n + r.bytes, 0);
    space.shadowedKeptBytes = merged.keptBytes;
  }
  writeIndex(region, index); // the drop and the rewritten records' swap, at once
  return { dropped: index.dropped[index.dropped.length - 1], ...space };
}

/**
 * Rewrites each record point `q` carries that it holds in part (some of its
 * blocks an earlier record of q's list holds, so no image reads them there)
 * with only the blocks it lacks: a new record (format 3) in space no record
 * holds from the cursor on, its data checked against its chunk hashes first
 * and never copied damaged, made durable here. The caller's one index write
 * then swaps them in (same place in q's list, so every image reads the same
 * bytes) and frees the old ones; a crash before it leaves the new records in
 * space no index names. Returns the bytes freed, and the bytes of shadowed
 * blocks kept because no free space was left to rewrite their records.
 */
async function mergeCarried(region: HistoryRegion, index: HistoryIndex, q: UndoPoint): Promise<{ freedBytes: number; keptBytes: number }> {
  const held = new ExtentSet();
  let at = Math.max(cursorOf(index), INDEX_AREA_BYTES);
  // Free in the index on the drive too: until the drop's index write lands, that one is read after a crash.
  const limit = freeUntil(readIndex(region), at, region.lengthBytes);
  let freedBytes = 0;
  let keptBytes = 0;
  for (const [k, r] of recordsOf(q).entries()) {
    let layout: UndoLayout;
    try {
      layout = readUndoLayout(region, r);
    } catch {
      continue; // kept whole; shadows nothing (as shadowedRecords)
    }
    const sectors = ExtentSet.from(layout.extents.map((x) => [x.startSector, x.endSector] as const));
    const fresh = sectors.clone();
    fresh.subtractSet(held);
    held.addSet(sectors);
    if (k === 0 || fresh.isEmpty || fresh.totalSectors === sectors.totalSectors) continue; // its own, freed already, or all needed
    const merged = await rewriteRecord(region, r, layout, fresh, at, limit);
    if (!merged) {
      keptBytes += (sectors.totalSectors - fresh.totalSectors) * SECTOR;
      continue;
    }
    q.carried![k - 1] = merged;
    freedBytes += r.bytes - merged.bytes;
    at += merged.bytes;
  }
  if (freedBytes > 0) {
    region.drive.flushSync('the DPSR drive', 'nothing dropped');
    index.cursorBytes = at;
  }
  return { freedBytes, keptBytes };
}

/** Record `r` written anew at `at` with only its blocks in `keep` (format 3), or null: no room before `limit`, or its data is damaged. */
async function rewriteRecord(region: HistoryRegion, r: UndoRecord, layout: UndoLayout, keep: ExtentSet, at: number, limit: number): Promise<UndoRecord | null> {
  const pieces: Array<[number, number, number]> = [];
  for (const x of layout.extents) { // in the record's data order
    for (const [a, b] of keep.intersect(x.startSector, x.endSector)) pieces.push([a, b, x.driveBytes + (a - x.startSector) * SECTOR]);
  }
  const dataBytes = keep.totalSectors * SECTOR;
  if (at + dataBytes + roundUp(pieces.length * EXTENT_BYTES, BLOCK) + chunkHashBytes(dataBytes) + BLOCK > limit) return null;
  try {
    await verifyUndoData(region, r, layout);
  } catch {
    return null;
  }
  const room = (end: number) => end <= limit;
  const data = new UndoDataWriter(region, region.drive, at, room);
  if (!(await data.appendPieces(pieces))) return null;
  const written = await writeTrailer(region, at, data, r.txnSeq, r.generation, room);
  return written ? { generation: r.generation, txnSeq: r.txnSeq, offsetBytes: at, ...written, format: STREAMED_FORMAT } : null;
}

/** Drops every point (their images can no longer be rebuilt: a sync wrote the image in place), durably. */
export function dropAllPoints(region: HistoryRegion, reason: string): DroppedPoint[] {
  const index = readIndex(region);
  if (index.points.length === 0) return [];
  const gone = dropOldest(index, index.points.length, reason);
  writeIndex(region, index);
  return gone;
}

// ---------------------------------------------------------------------------------------------
// Keeping: the policy, and room for the next record

const pointTimeMs = (p: { timeMs: number | null; savedMs?: number }): number => p.timeMs ?? p.savedMs ?? Date.now();

/** Unlabelled points the policy no longer keeps: older than keep, then the oldest beyond keep_points (`room`: points about to be added). */
function applyKeep(region: HistoryRegion, index: HistoryIndex, keep: KeepPolicy, nowMs: number, room: number): DroppedPoint[] {
  const gone: DroppedPoint[] = [];
  const dropWhere = (pick: () => number, reason: string) => {
    for (let i = pick(); i >= 0; i = pick()) {
      dropAt(region, index, i, reason);
      gone.push(index.dropped[index.dropped.length - 1]);
    }
  };
  if (keep.keepMs !== null) {
    const oldest = nowMs - keep.keepMs;
    dropWhere(() => index.points.findIndex((p) => p.label === null && pointTimeMs(p) < oldest), `older than keep = ${humanKeep(keep.keepMs)}`);
  }
  if (keep.keepPoints !== null) {
    const limit = Math.max(0, keep.keepPoints - room);
    const unlabelled = () => index.points.filter((p) => p.label === null).length;
    dropWhere(() => (unlabelled() > limit ? index.points.findIndex((p) => p.label === null) : -1), `more than keep_points = ${keep.keepPoints}`);
  }
  return gone;
}

function humanKeep(ms: number): string {
  for (const [unit, n] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000]] as const) if (ms % n === 0) return `${ms / n}${unit}`;
  return `${ms / 1000}s`;
}

/** Where a record of `bytes` goes next: at the cursor, or at the ring's start when it would not fit before the end. */
function nextRecordAt(index: HistoryIndex, bytes: number, lengthBytes: number): number {
  const at = Math.max(cursorOf(index), INDEX_AREA_BYTES);
  return at + bytes > lengthBytes ? INDEX_AREA_BYTES : at;
}

/** How many of the oldest points must go for [at, end) to be written: up to the newest whose records lie there. */
function pointsInTheWay(index: HistoryIndex, at: number, end: number): number {
  const overlaps = (r: UndoRecord) => r.offsetBytes < end && at < r.offsetBytes + r.bytes;
  return index.points.reduce((last, p, i) => (recordsOf(p).some(overlaps) ? i : last), -1) + 1;
}

/** Where a new record goes, and how many of the oldest points must go first: for its space, then for the index's room. */
interface Place { at: number; drop: number; indexDrop: number }

/**
 * Where the record of point `entry` goes (its size in `entry.bytes`; `fixedAt`: written there already) and what
 * must go for it; null: it is larger than the region.
 */
function placeRecord(index: HistoryIndex, entry: UndoPoint, lengthBytes: number, fixedAt?: number): Place | null {
  const { bytes } = entry;
  if (bytes > lengthBytes - INDEX_AREA_BYTES) return null;
  const at = fixedAt ?? nextRecordAt(index, bytes, lengthBytes);
  const drop = pointsInTheWay(index, at, at + bytes);
  // The index must hold the new point as well (with the drops remembered): the oldest go for its room too.
  const trial = JSON.parse(JSON.stringify(index)) as HistoryIndex;
  dropOldest(trial, drop, REGION_FULL);
  trial.points.push({ ...entry, offsetBytes: at });
  let indexDrop = 0;
  for (; !fitsSlot(trial) && trial.points.length > 1; indexDrop++) dropOldest(trial, 1, INDEX_FULL);
  return { at, drop, indexDrop };
}

/** The size of the undo record of `targets`: its extents (whole blocks within the image), table and total bytes. */
function recordShape(targets: ExtentSet, imageSectors: number) {
  const extents = blocksWithin(targets, roundUp(imageSectors, BLOCK / SECTOR));
  const dataBytes = extents.totalSectors * SECTOR;
  const tableBytes = roundUp(extents.count * EXTENT_BYTES, BLOCK);
  const hashBytes = chunkHashBytes(dataBytes);
  return { extents, dataBytes, tableBytes, hashBytes, bytes: BLOCK + tableBytes + hashBytes + dataBytes };
}

/** The size of a record's chunk hash table (whole blocks). */
const chunkHashBytes = (dataBytes: number) => roundUp(Math.ceil(dataBytes / CHUNK_BYTES) * CHUNK_HASH_BYTES, BLOCK);

/**
 * What keeping point `meta`'s undo of `targets` takes, worked out on `index`
 * (changed: the points the policy no longer keeps are dropped from it):
 * where the record goes and how many of the oldest points must go for it
 * (place null: larger than the region), or tooOld: the policy keeps no such point.
 */
function planUndo(region: HistoryRegion, index: HistoryIndex, targets: ExtentSet, meta: PointMeta, imageSectors: number, keep: KeepPolicy, nowMs: number,
  streamed: StreamedRecord | null) {
  const keptOut = applyKeep(region, index, keep, nowMs, meta.label === null ? 1 : 0);
  const tooOld = meta.label === null && keep.keepMs !== null && pointTimeMs(meta) < nowMs - keep.keepMs;
  const classic = recordShape(targets, imageSectors);
  // The entry as saveUndo makes it, its numbers at their widest: what it takes in the index.
  const entryOf = (shape: { bytes: number; dataBytes: number }): UndoPoint =>
    ({ ...meta, txnSeq: Number.MAX_SAFE_INTEGER, offsetBytes: 0, bytes: shape.bytes, dataBytes: shape.dataBytes, headHash: '0'.repeat(64), savedMs: nowMs, format: 3 });
  if (streamed) {
    const place = placeRecord(index, entryOf(streamed), region.lengthBytes, streamed.at);
    // Its space was made free before it was written (UndoStream.room), so nothing is in its way; else saved anew.
    if (place && place.drop === 0) return { keptOut, shape: { ...classic, bytes: streamed.bytes, dataBytes: streamed.dataBytes }, tooOld, place, streamed };
  }
  return { keptOut, shape: classic, tooOld, place: placeRecord(index, entryOf(classic), region.lengthBytes), streamed: null };
}

/**
 * Before a sync commits: refused (nothing applied, the cut kept for the next
 * sync) when keeping its undo would drop a labelled point and the policy
 * does not allow it. saveUndo then drops exactly what this foresaw.
 */
export function checkUndoRoom(region: HistoryRegion, targets: ExtentSet, meta: PointMeta, imageSectors: number, keep: KeepPolicy, pairName: string,
  streamed: StreamedRecord | null = null): void {
  if (keep.dropLabelledWhenFull) return;
  const index = readIndex(region);
  const { shape, tooOld, place } = planUndo(region, index, targets, meta, imageSectors, keep, Date.now(), streamed);
  if (tooOld && index.points.length === 0) return; // nothing saved
  const lost = (place ? index.points.slice(0, place.drop + place.indexDrop) : index.points).filter((p) => p.label !== null);
  if (lost.length === 0) return;
  const names = lost.map((p) => `${p.generation} ("${p.label}")`).join(', ');
  const needs = place && place.indexDrop > 0 && !index.points.slice(0, place.drop).some((p) => p.label !== null)
    ? `a place in the history index (${INDEX_SLOT_BYTES >> 10} KiB, full) held by` : 'the history space of';
  throw new RefusedError(`pair ${pairName}: keeping this sync's undo (${formatBytes(shape.bytes)}) needs ${needs} labelled restore point${lost.length > 1 ? 's' : ''} ${names}; ` +
    `nothing applied, the DPSR drive keeps its image (dpsr history ${pairName} --drop ${lost[0].generation} frees it, or when_full = "drop-labelled" in the configuration allows it)`, 'EHISTORYFULL');
}

// ---------------------------------------------------------------------------------------------
// Saving undo

/** What saveUndo did. */
export interface UndoResult { saved: UndoPoint | null; dropped: DroppedPoint[]; already: boolean }

/**
 * Saves the image's current content of `targets` (the sectors transaction
 * `txnSeq` will write) as the undo record of point `meta`, and marks the
 * transaction's undo as done, durably: call it after the commit and before
 * the first write of the apply. Idempotent per transaction: once the mark is
 * durable it does nothing, since the image may be half-applied by then.
 * The keep policy drops what it no longer keeps in the same index write.
 * With the `stream` that wrote the record before the commit, only the index
 * entry is written (unless the stream stopped: then the record is saved here).
 */
export async function saveUndo(region: HistoryRegion, image: BlockIo, txnSeq: number, targets: ExtentSet, meta: PointMeta,
  imageSectors: number, keep: KeepPolicy = DEFAULT_KEEP, stream?: UndoStream): Promise<UndoResult> {
  const index = readIndex(region);
  if (index.undoneTxnSeq >= txnSeq) return { saved: null, dropped: [], already: true };
  const { keptOut, shape: { extents, dataBytes, tableBytes, hashBytes, bytes }, tooOld, place, streamed } =
    planUndo(region, index, targets, meta, imageSectors, keep, Date.now(), stream?.recordFor(txnSeq, targets) ?? null);
  const dropped = [...(stream?.dropped ?? []), ...keptOut];
  const tooOldWhy = `older than keep = ${humanKeep(keep.keepMs ?? 0)}`;
  // Not kept: larger than the region (every older point goes too: each needs this record),
  // or older than keep with no older point that would need its record.
  if (!place || (tooOld && index.points.length === 0)) {
    if (!place) dropped.push(...dropOldest(index, index.points.length, `generation ${meta.generation + 1} changed more than the history region holds`));
    const why = place ? tooOldWhy : `its undo (${dataBytes} bytes) is larger than the history region`;
    dropped.push(...remember(index, [droppedOf(meta, why)]));
    index.undoneTxnSeq = txnSeq;
    writeIndex(region, index);
    return { saved: null, dropped, already: false };
  }
  const { at } = place;
  if (place.drop > 0) dropped.push(...dropOldest(index, place.drop, REGION_FULL));
  if (place.indexDrop > 0) dropped.push(...dropOldest(index, place.indexDrop, INDEX_FULL));
  if (!streamed && dropped.length > 0) writeIndex(region, index); // before their space is overwritten
  const headHash = streamed ? streamed.headHash : await writeRecord(region, image, at, txnSeq, meta.generation, extents, tableBytes, hashBytes);
  let saved: UndoPoint | null = { ...meta, txnSeq, offsetBytes: at, bytes, dataBytes, headHash, savedMs: Date.now(), ...(streamed ? { format: 3 as const } : {}) };
  index.points.push(saved);
  index.cursorBytes = at + bytes;
  index.undoneTxnSeq = txnSeq;
  if (tooOld) {
    // Older than keep, yet an older (labelled) point needs its record: carried by that one.
    dropAt(region, index, index.points.length - 1, tooOldWhy);
    dropped.push(index.dropped[index.dropped.length - 1]);
    saved = null;
  }
  writeIndex(region, index); // the mark: from here on the apply may write
  return { saved, dropped, already: false };
}

/**
 * For a revert that drops the newer points: instead of an undo, the points
 * from `toGeneration` on are dropped (the image becomes that point; the older
 * ones need only their own records then) and the transaction marked, durably.
 */
function dropNewerBefore(region: HistoryRegion, txnSeq: number, toGeneration: number): UndoResult {
  const index = readIndex(region);
  if (index.undoneTxnSeq >= txnSeq) return { saved: null, dropped: [], already: true };
  const first = index.points.findIndex((p) => p.generation >= toGeneration);
  const gone = first < 0 ? [] : index.points.splice(first).map((p) => ({
    generation: p.generation, timeMs: p.timeMs, label: p.label, atMs: Date.now(),
    reason: p.generation === toGeneration ? 'the DPSR drive was reverted to it: it is the current image' : `the DPSR drive was reverted to point ${toGeneration}, dropping the newer points (by choice)`,
  }));
  index.dropped = [...index.dropped, ...gone].slice(-DROPPED_KEPT);
  index.undoneTxnSeq = txnSeq;
  writeIndex(region, index);
  return { saved: null, dropped: gone, already: false };
}

/**
 * Before transaction `txn` is applied to a drive whose image is still point
 * `meta`: its undo, saved unless already done (see saveUndo); for a revert
 * that drops the newer points, those dropped instead. Null without a history region.
 */
export async function undoBeforeApply(drive: BlockIo, pair: { dataSectors: number; historySectors?: number }, pairId: string,
  txn: CommittedTransaction, meta: PointMeta, revert?: RevertOf, keep: KeepPolicy = DEFAULT_KEEP, stream?: UndoStream): Promise<UndoResult | null> {
  const region = historyRegionOf(drive, pair, pairId);
  if (!region) return null;
  if (revert && !revert.keepNewer) return dropNewerBefore(region, txn.seq, revert.toGeneration);
  return saveUndo(region, drive, txn.seq, txn.targetExtents(), meta, pair.dataSectors, keep, stream);
}

/** Extents rounded out to whole 4 KiB blocks, within the image's blocks. */
function blocksWithin(targets: ExtentSet, limitSectors: number): ExtentSet {
  const out = new ExtentSet();
  targets.forEach((s, e) => {
    const a = Math.floor(s / 8) * 8;
    const b = Math.min(roundUp(e, 8), limitSectors);
    if (b > a) out.add(a, b);
  });
  return out;
}

/**
 * The old content of image blocks appended to a record's data on the drive:
 * read in batches of scattered reads into one buffer while the other's batch
 * is written and hashed (the reads and the sequential writes overlap). It
 * keeps the record's extent table in data order and the chunk hashes.
 */
class UndoDataWriter {
  private readonly bufs = [native().alignedBuffer(COPY_CHUNK_BYTES, BLOCK), native().alignedBuffer(COPY_CHUNK_BYTES, BLOCK)];
  private readonly writes: Array<Promise<void> | null> = [null, null];
  private cur = 0;
  private fill = 0;
  private ops: Array<{ bufferOffset: number; length: number; position: number }> = [];
  private readonly digests: Buffer[] = [];
  /** [startSector, endSector) of the image, in data order (adjacent ones merged). */
  readonly extents: Array<[number, number]> = [];
  /** Data bytes appended (written or still in the buffer). */
  dataBytes = 0;
  private writtenBytes = 0;

  /** `startBytes`: where the data goes, from the region start; `room(endBytes)`: whether a write may reach that far. */
  constructor(private readonly region: HistoryRegion, private readonly image: BlockIo, private readonly startBytes: number,
    private readonly room: (endBytes: number) => boolean = () => true) {}

  /** Appends the old content of `blocks` (whole 4 KiB blocks of the image); false when `room` said no (nothing more is written). */
  append(blocks: ExtentSet): Promise<boolean> {
    return this.appendPieces(blocks.toArray().map(([s, e]) => [s, e, s * SECTOR]));
  }

  /** Appends image sectors [start, end) read from the device at `fromBytes` (whole 4 KiB blocks), in order. */
  async appendPieces(pieces: Array<[number, number, number]>): Promise<boolean> {
    for (const [s, e, fromBytes] of pieces) {
      const last = this.extents[this.extents.length - 1];
      if (last && last[1] === s) last[1] = e;
      else this.extents.push([s, e]);
      for (let done = s * SECTOR; done < e * SECTOR;) {
        const n = Math.min(e * SECTOR - done, COPY_CHUNK_BYTES - this.fill);
        this.ops.push({ bufferOffset: this.fill, length: n, position: fromBytes + done - s * SECTOR });
        this.fill += n;
        this.dataBytes += n;
        done += n;
        if (this.fill === COPY_CHUNK_BYTES && !(await this.writeBuffer())) return false;
      }
    }
    return true;
  }

  private async writeBuffer(): Promise<boolean> {
    if (this.fill === 0) return true;
    if (!this.room(this.startBytes + this.writtenBytes + this.fill)) return false;
    const buf = this.bufs[this.cur];
    await this.writes[this.cur]; // this buffer's last batch is on the drive, and hashed
    await this.image.batch('read', 'DPSR drive', buf, this.ops);
    // Hashed off the main thread while it is written. Every buffer but the last is full, and a whole number of chunks.
    const first = this.writtenBytes / CHUNK_BYTES;
    const hashed = hashChunks(buf.subarray(0, this.fill)).then((ds) => ds.forEach((d, i) => { this.digests[first + i] = d; }));
    const written = Promise.all([fullIo('write', this.region.drive, buf, 0, this.fill, this.region.startBytes + this.startBytes + this.writtenBytes), hashed]).then(() => {});
    written.catch(() => {}); // awaited before the buffer is used again and at the end
    this.writes[this.cur] = written;
    this.cur ^= 1;
    this.writtenBytes += this.fill;
    this.ops = [];
    this.fill = 0;
    return true;
  }

  /** Waits for every write in flight, whatever their outcome. */
  async settle(): Promise<void> {
    await Promise.allSettled(this.writes);
  }

  /** Writes what is left and waits for every write: the chunk hashes, or null when `room` said no. */
  async finish(): Promise<Buffer | null> {
    const ok = await this.writeBuffer();
    await Promise.all(this.writes);
    return ok ? Buffer.concat(this.digests) : null;
  }

  /** The extent table (16 bytes an extent, padded to 4 KiB) into `table`. */
  encodeTable(table: Buffer): void {
    this.extents.forEach(([s, e], i) => {
      table.writeBigUInt64LE(BigInt(s), i * EXTENT_BYTES);
      table.writeBigUInt64LE(BigInt(e - s), i * EXTENT_BYTES + 8);
    });
  }
}

/** A record's header block: its counts, the table's and the chunk hashes' SHA-256, and headHash (returned) binding it to the pair and the index entry. */
function encodeHead(region: HistoryRegion, head: Buffer, format: number, txnSeq: number, generation: number, data: UndoDataWriter,
  table: Buffer, hashes: Buffer): Buffer {
  RECORD_MAGIC.copy(head, 0);
  head.writeUInt32LE(format, 8);
  head.writeUInt32LE(data.extents.length, 12);
  head.writeBigUInt64LE(BigInt(txnSeq), 16);
  head.writeBigUInt64LE(BigInt(generation), 24);
  head.writeBigUInt64LE(BigInt(data.dataBytes), 32);
  sha256(table.subarray(0, data.extents.length * EXTENT_BYTES)).copy(head, 40);
  sha256(hashes).copy(head, 72);
  const headHash = headHashOf(region.pairId, head);
  headHash.copy(head, HEAD_HASHED);
  return headHash;
}

/**
 * Writes a format 3 record's trailer after its data (at `at`, written by `data`): the extent
 * table, the chunk hashes and the header. Not flushed. Null when `room` refuses its end.
 */
async function writeTrailer(region: HistoryRegion, at: number, data: UndoDataWriter, txnSeq: number, generation: number,
  room: (endBytes: number) => boolean): Promise<{ bytes: number; dataBytes: number; headHash: string } | null> {
  const chunkHashes = await data.finish();
  if (!chunkHashes) return null;
  const tableBytes = roundUp(data.extents.length * EXTENT_BYTES, BLOCK);
  const hashBytes = chunkHashBytes(data.dataBytes);
  const bytes = data.dataBytes + tableBytes + hashBytes + BLOCK;
  if (!room(at + bytes)) return null;
  const trailer = native().alignedBuffer(tableBytes + hashBytes + BLOCK, BLOCK);
  trailer.fill(0);
  const table = trailer.subarray(0, tableBytes);
  data.encodeTable(table);
  chunkHashes.copy(trailer, tableBytes);
  const headHash = encodeHead(region, trailer.subarray(tableBytes + hashBytes), STREAMED_FORMAT, txnSeq, generation, data, table, chunkHashes);
  await fullIo('write', region.drive, trailer, 0, trailer.length, region.startBytes + at + data.dataBytes);
  return { bytes, dataBytes: data.dataBytes, headHash: headHash.toString('hex') };
}

/** The end of the space no record holds from `at` on (from the region start): the start of the first record at or after it, or the region's end. */
function freeUntil(index: HistoryIndex, at: number, lengthBytes: number): number {
  let end = lengthBytes;
  for (const r of index.points.flatMap(recordsOf)) if (r.offsetBytes + r.bytes > at) end = Math.min(end, Math.max(r.offsetBytes, at));
  return end;
}

/** Writes a record of format 2 at `at` (header, table and chunk hashes before the data), durably: after the commit. */
async function writeRecord(region: HistoryRegion, image: BlockIo, at: number, txnSeq: number, generation: number,
  extents: ExtentSet, tableBytes: number, hashBytes: number): Promise<string> {
  const data = new UndoDataWriter(region, image, at + BLOCK + tableBytes + hashBytes);
  await data.append(extents);
  const chunkHashes = (await data.finish())!;
  // The header, the table and the chunk hashes lie side by side: one write after the data.
  const front = native().alignedBuffer(BLOCK + tableBytes + hashBytes, BLOCK);
  front.fill(0);
  const table = front.subarray(BLOCK, BLOCK + tableBytes);
  data.encodeTable(table);
  chunkHashes.copy(front, BLOCK + tableBytes);
  const headHash = encodeHead(region, front.subarray(0, BLOCK), RECORD_FORMAT, txnSeq, generation, data, table, chunkHashes);
  await fullIo('write', region.drive, front, 0, front.length, region.startBytes + at);
  region.drive.flushSync('the DPSR drive', 'its restore points may not be durable');
  return headHash.toString('hex');
}

/** An undo record written whole before its transaction's commit (UndoStream): only its index entry is left to write. */
export interface StreamedRecord { at: number; bytes: number; dataBytes: number; headHash: string; covers: ExtentSet; txnSeq: number }

/**
 * The undo of a journaled sync written during its passes, in format 3 (the
 * data first, its extent table, chunk hashes and header after it): the
 * image does not change before the apply, so the old content of the blocks
 * each pass cuts is read and written into the region while the pass writes
 * the journal. It goes where the next record would (the index's cursor), into
 * space no point holds: the oldest points, never a labelled one unless the
 * policy allows it, are dropped (durably, in the index) before their space is
 * written. complete(), before the commit, writes the blocks no pass cut (a
 * compare's repairs) and the trailer; the journal's flush before its commit
 * makes the record durable, so after the commit saveUndo writes only the
 * index entry. Until then the record is in space no index names: a crash
 * leaves it unreferenced, and a replay saves the undo the classic way. When
 * the space runs out (a labelled point, the region's end) the stream stops and
 * saveUndo does the classic save after the commit.
 */
export class UndoStream {
  private readonly held = new ExtentSet();
  private readonly index: HistoryIndex;
  private data: UndoDataWriter | null = null;
  private at = -1;
  private limit = 0; // where the space no point holds ends (from the region start)
  private work: Promise<void> = Promise.resolve();
  private stopped: string | null = null;
  private record: StreamedRecord | null = null;
  /** Points dropped for the stream's space. */
  readonly dropped: DroppedPoint[] = [];

  constructor(private readonly region: HistoryRegion, private readonly image: BlockIo, private readonly imageSectors: number,
    private readonly keep: KeepPolicy) {
    this.index = readIndex(region);
  }

  /** Why the stream stopped (saveUndo saves the undo after the commit then), or null. */
  get stoppedBecause(): string | null {
    return this.stopped;
  }

  /** Starts saving the blocks of `targets` not saved yet (the image's old content: call it before anything of them is applied). */
  add(targets: ExtentSet): void {
    if (this.stopped || this.record) return;
    const fresh = blocksWithin(targets, roundUp(this.imageSectors, BLOCK / SECTOR));
    fresh.subtractSet(this.held);
    if (fresh.isEmpty) return;
    this.held.addSet(fresh);
    this.work = this.work.then(() => this.append(fresh)).catch((err) => this.stop(`writing it failed: ${(err as Error).message}`));
  }

  private stop(why: string): void {
    this.stopped ??= why;
  }

  private async append(fresh: ExtentSet): Promise<void> {
    if (this.stopped) return;
    if (!this.data) {
      const bytes = recordShape(fresh, this.imageSectors).bytes;
      this.at = nextRecordAt(this.index, bytes, this.region.lengthBytes);
      this.limit = freeUntil(this.index, this.at, this.region.lengthBytes);
      this.data = new UndoDataWriter(this.region, this.image, this.at, (end) => this.room(end + this.trailerBytes()));
    }
    if (!(await this.data.append(fresh))) this.stop('no room');
  }

  /** What the table, the chunk hashes and the header take after the data, with room for a few more extents. */
  private trailerBytes(): number {
    const d = this.data!;
    return roundUp((d.extents.length + 256) * EXTENT_BYTES, BLOCK) + chunkHashBytes(d.dataBytes + COPY_CHUNK_BYTES) + BLOCK;
  }

  /**
   * Whether the record may reach `endBytes` (from the region start): the
   * oldest points whose records lie in the way are dropped first, durably,
   * unless one is labelled and the policy keeps it, or the region ends first.
   */
  private room(endBytes: number): boolean {
    if (endBytes <= this.limit) return true;
    if (endBytes > this.region.lengthBytes) return false;
    const drop = pointsInTheWay(this.index, this.at, endBytes);
    if (!this.keep.dropLabelledWhenFull && this.index.points.slice(0, drop).some((p) => p.label !== null)) return false;
    this.dropped.push(...dropOldest(this.index, drop, REGION_FULL));
    writeIndex(this.region, this.index); // before their space is written
    this.limit = freeUntil(this.index, this.at, this.region.lengthBytes);
    return endBytes <= this.limit;
  }

  /**
   * Before the commit: saves the blocks of `targets` no pass cut, then writes
   * the record's table, chunk hashes and header after its data. Not flushed
   * here: the journal's flush before its commit makes it durable.
   */
  async complete(targets: ExtentSet, txnSeq: number, generation: number): Promise<void> {
    this.add(targets);
    await this.work;
    if (this.stopped) await this.data?.settle(); // no write of it may land after the save that takes its place
    if (this.stopped || this.record || !this.data) return;
    const written = await writeTrailer(this.region, this.at, this.data, txnSeq, generation, (end) => this.room(end));
    if (!written) return this.stop('no room');
    this.record = { at: this.at, ...written, covers: this.held, txnSeq };
  }

  /** Waits until nothing of the stream is running or in flight (a sync that fails must leave none behind). */
  async settle(): Promise<void> {
    await this.work;
    await this.data?.settle();
  }

  /** The record written, if it is transaction `txnSeq`'s and holds every block of its `targets`. */
  recordFor(txnSeq: number, targets: ExtentSet): StreamedRecord | null {
    if (!this.record || this.record.txnSeq !== txnSeq) return null;
    const missing = blocksWithin(targets, roundUp(this.imageSectors, BLOCK / SECTOR));
    missing.subtractSet(this.record.covers);
    return missing.isEmpty ? this.record : null;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading records

/** An extent of a record: the image sectors [startSector, endSector) and where their old content is on the drive. */
export interface UndoExtent { startSector: number; endSector: number; driveBytes: number }

/** A record as read and verified, but for its data: its extents, where its data is on the drive, the data's chunk hashes. */
export interface UndoLayout {
  extents: UndoExtent[];
  /** Drive bytes where the data starts, and its length. */
  dataStartBytes: number;
  dataBytes: number;
  /** SHA-256 of each CHUNK_BYTES of data (the last one shorter); null for a record of format 1 (one hash of the whole data). */
  chunkHashes: Buffer | null;
  /** Format 1: the SHA-256 of the whole data. */
  dataHash: Buffer;
}

export const UNDO_CHUNK_BYTES = CHUNK_BYTES;

/**
 * The extents of a point's record, verified (header bound to the index
 * entry, the table to the header) and, with `verifyData`, its data too (read whole).
 */
export async function readUndoExtents(region: HistoryRegion, point: UndoRecord, verifyData: boolean): Promise<UndoExtent[]> {
  const layout = readUndoLayout(region, point);
  if (verifyData) await verifyUndoData(region, point, layout);
  return layout.extents;
}

/** Reads a record's data whole and checks it against its chunk hashes (format 1: its one hash). */
async function verifyUndoData(region: HistoryRegion, point: UndoRecord, layout: UndoLayout): Promise<void> {
  const whole = crypto.createHash('sha256');
  const buf = native().alignedBuffer(COPY_CHUNK_BYTES, BLOCK);
  for (let done = 0; done < layout.dataBytes;) {
    const n = Math.min(COPY_CHUNK_BYTES, layout.dataBytes - done);
    await fullIo('read', region.drive, buf, 0, n, layout.dataStartBytes + done);
    if (!layout.chunkHashes) whole.update(buf.subarray(0, n));
    for (let c = 0; layout.chunkHashes && c < n; c += CHUNK_BYTES) {
      const i = (done + c) / CHUNK_BYTES;
      if (!sha256(buf.subarray(c, Math.min(n, c + CHUNK_BYTES))).equals(layout.chunkHashes.subarray(i * CHUNK_HASH_BYTES, (i + 1) * CHUNK_HASH_BYTES))) {
        throw damagedRecord(point, `data checksum of chunk ${i}`);
      }
    }
    done += n;
  }
  if (!layout.chunkHashes && !whole.digest().equals(layout.dataHash)) throw damagedRecord(point, 'data checksum');
}

const damagedRecord = (point: UndoRecord, why: string) =>
  new DpsrError(`history: the undo record of generation ${point.generation} is damaged (${why}); drop it with dpsr history NAME --drop ${point.generation}`, 'EHISTORY');

/**
 * A record's header, extent table and chunk hashes, read and verified (the
 * header bound to the index entry, the table and the hashes to the header);
 * its data is not read.
 */
export function readUndoLayout(region: HistoryRegion, point: UndoRecord): UndoLayout {
  const streamed = point.format === STREAMED_FORMAT; // the header last, the data first
  const head = native().alignedBuffer(BLOCK, BLOCK);
  readSync(region, head, BLOCK, streamed ? point.offsetBytes + point.bytes - BLOCK : point.offsetBytes);
  const bad = (why: string) => damagedRecord(point, why);
  const format = head.readUInt32LE(8);
  if (!head.subarray(0, 8).equals(RECORD_MAGIC) || (streamed ? format !== STREAMED_FORMAT : format !== 1 && format !== RECORD_FORMAT)) throw bad('no record header');
  if (headHashOf(region.pairId, head).toString('hex') !== point.headHash || head.subarray(HEAD_HASHED, HEAD_HASHED + 32).toString('hex') !== point.headHash) {
    throw bad('header checksum');
  }
  const count = head.readUInt32LE(12);
  const dataBytes = Number(head.readBigUInt64LE(32));
  const tableBytes = roundUp(count * EXTENT_BYTES, BLOCK);
  const hashBytes = format === 1 ? 0 : chunkHashBytes(dataBytes);
  if (streamed && dataBytes + tableBytes + hashBytes + BLOCK !== point.bytes) throw bad('record length');
  const tableAt = streamed ? point.offsetBytes + dataBytes : point.offsetBytes + BLOCK;
  const table = native().alignedBuffer(Math.max(tableBytes, BLOCK), BLOCK);
  if (tableBytes > 0) readSync(region, table, tableBytes, tableAt);
  if (!sha256(table.subarray(0, count * EXTENT_BYTES)).equals(head.subarray(40, 72))) throw bad('extent table checksum');
  let chunkHashes: Buffer | null = null;
  if (format !== 1) {
    const hashes = native().alignedBuffer(Math.max(hashBytes, BLOCK), BLOCK);
    if (hashBytes > 0) readSync(region, hashes, hashBytes, tableAt + tableBytes);
    chunkHashes = Buffer.from(hashes.subarray(0, Math.ceil(dataBytes / CHUNK_BYTES) * CHUNK_HASH_BYTES));
    if (!sha256(chunkHashes).equals(head.subarray(72, 104))) throw bad('chunk hash table checksum');
  }
  const dataStartBytes = region.startBytes + (streamed ? point.offsetBytes : point.offsetBytes + BLOCK + tableBytes + hashBytes);
  const extents: UndoExtent[] = [];
  let off = 0;
  for (let i = 0; i < count; i++) {
    const s = Number(table.readBigUInt64LE(i * EXTENT_BYTES));
    const n = Number(table.readBigUInt64LE(i * EXTENT_BYTES + 8));
    extents.push({ startSector: s, endSector: s + n, driveBytes: dataStartBytes + off });
    off += n * SECTOR;
  }
  if (off !== dataBytes) throw bad('data length');
  return { extents, dataStartBytes, dataBytes, chunkHashes, dataHash: Buffer.from(head.subarray(72, 104)) };
}

/**
 * The layouts of `records`, verified up to their data; a record without
 * chunk hashes (format 1) has its data read and checked whole, since a
 * reader could not check the part it reads.
 */
export async function readUndoLayouts(region: HistoryRegion, records: UndoRecord[]): Promise<UndoLayout[]> {
  const out: UndoLayout[] = [];
  for (const r of records) {
    const layout = readUndoLayout(region, r);
    if (!layout.chunkHashes) await verifyUndoData(region, r, layout);
    out.push(layout);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Helpers

/** SHA-256 of each CHUNK_BYTES of `data`; in libuv's pool (webcrypto), not on the main thread. */
async function hashChunks(data: Buffer): Promise<Buffer[]> {
  const digests = [];
  for (let c = 0; c < data.length; c += CHUNK_BYTES) digests.push(crypto.webcrypto.subtle.digest('SHA-256', data.subarray(c, Math.min(data.length, c + CHUNK_BYTES))));
  return (await Promise.all(digests)).map((d) => Buffer.from(d));
}

function sha256(b: Buffer): Buffer {
  return crypto.createHash('sha256').update(b).digest();
}

function headHashOf(pairId: string, head: Buffer): Buffer {
  return crypto.createHash('sha256').update(pairId, 'utf8').update(head.subarray(0, HEAD_HASHED)).digest();
}

function readSync(region: HistoryRegion, buf: Buffer, length: number, offset: number): void {
  for (let done = 0; done < length;) {
    let n: number;
    try {
      n = region.drive.readSync(buf, done, length - done, region.startBytes + offset + done);
    } catch (err) {
      throw region.drive.ioError('read', 'DPSR drive history', region.startBytes + offset + done, length - done, err as NodeJS.ErrnoException);
    }
    if (n <= 0) throw new DpsrError(`history: the DPSR drive ended at byte ${region.startBytes + offset + done}`, 'ESHORT');
    done += n;
  }
}

function fullIo(kind: 'read' | 'write', drive: BlockIo, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  return drive.io(kind, 'DPSR drive', buf, offset, length, position);
}
