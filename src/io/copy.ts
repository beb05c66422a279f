// Moves sectors between block devices (BlockIo), several I/Os in flight: copy and compare.
import { ExtentSet } from '../base/extents.js';
import type { IoOp } from './batch-io.js';
import type { BlockIo } from './block-io.js';
import { BUFFER_ALIGNMENT, type Counters, giveBuffers, takeBuffers } from './direct-io.js';
import { SECTOR } from '../base/units.js';

// Measured with 1 GiB loop devices against `dd bs=4M iflag=direct oflag=direct` (one I/O at a
// time; medians of 15 interleaved runs): 2 MiB × 4 in flight ran at 1.4× dd over a virtio disk
// (loop --direct-io=on; 4 MiB × 4: 1.25×) and 1.5× over tmpfs (4 MiB × 4: 1.7×); one in
// flight is just dd's speed; 8-16 MiB chunks were slower.
const DEFAULT_CHUNK_BYTES = 2 << 20;
const DEFAULT_IN_FLIGHT = 4;
export const DEFAULT_MERGE_GAP_SECTORS = 128;
export const DEFAULT_ALIGN_SECTORS = 8;

export interface CopyProgress {
  /** Sectors of the given extents (clipped to limitSectors) whose I/O has completed. */
  doneSectors: number;
  totalSectors: number;
}

export interface CopyOptions {
  /** Largest single I/O, default 2 MiB (rounded down to alignSectors). */
  chunkBytes?: number;
  /** Concurrent chunks, default 4; each holds one buffer (two when comparing). Node's libuv pool has 4 threads by default. */
  inFlight?: number;
  /** Coalesce extents separated by fewer sectors than this (default 128 = 64 KiB): fewer, larger I/Os. */
  mergeGapSectors?: number;
  /** Round extents out to this many sectors (default 8 = 4 KiB), clipped to limitSectors. */
  alignSectors?: number;
  /** Never touch sectors at or past this (the source size); extents beyond it are clipped. */
  limitSectors: number;
  onProgress?: (p: CopyProgress) => void;
  /** Checked before every I/O; an abort throws an AbortError once the I/Os in flight have finished. */
  signal?: AbortSignal;
  /** What src and dst are, for error messages: default a sync's ('source', 'DPSR drive'); a rollback copies the other way. */
  sides?: { src: string; dst: string };
}

const SYNC_SIDES = { src: 'source', dst: 'DPSR drive' };

export interface CopyResult {
  /** From both devices when comparing. */
  bytesRead: number;
  bytesWritten: number;
  /** read() and write() calls made. */
  ios: number;
}

export interface CompareResult extends CopyResult {
  /** The alignSectors blocks (clipped to limitSectors) whose contents differed. */
  differing: ExtentSet;
  /** Sectors read from each side and compared (extents rounded out and merged). */
  comparedSectors: number;
}

/** Thrown when the signal aborts a copy or compare; `cause` is the signal's reason. */
export class AbortError extends Error {
  readonly code = 'ABORT_ERR';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AbortError';
  }
}

/** One I/O unit: sectors [startSector, endSector) of both devices, holding `coveredSectors` of the caller's extents. */
export interface Chunk {
  startSector: number;
  endSector: number;
  coveredSectors: number;
}

interface Plan {
  chunkSectors: number;
  inFlight: number;
  chunksPerBatch: number;
  batchesAtOnce: number;
  batchBytes: number; // the buffer of one batch: at least one whole chunk
  totalSectors: number;
  chunks: Iterator<Chunk>;
}

/** Chunks done together: one batch of reads, then one of writes (batch-io), from one buffer. */
export interface ChunkBatch {
  chunks: Chunk[];
  offsets: number[]; // of each chunk in the buffer, 4 KiB aligned
  bytes: number; // the buffer room they take
  coveredSectors: number;
}

// Small chunks (scattered 4 KiB blocks) cost a JS round trip each: then a batch takes inFlight
// of them at once (one call for their reads, one for their writes), and two batches run so one
// reads while the other writes. Large chunks (a full copy or compare) gain nothing from it:
// each is its own batch, inFlight of them at once, each slot reading, then writing or comparing.
const BATCH_BYTES = 8 << 20;
const LARGE_CHUNK_BYTES = 1 << 20;


/** Copies every extent from src to dst (same offsets), both opened by the caller. */
export async function copyExtents(src: BlockIo, dst: BlockIo, extents: ExtentSet, opts: CopyOptions): Promise<CopyResult> {
  const plan = makePlan(extents, opts);
  const sides = opts.sides ?? SYNC_SIDES;
  const counters: Counters = { bytesRead: 0, bytesWritten: 0, ios: 0 };
  const buffers = takeBuffers(plan.batchesAtOnce, plan.batchBytes);
  try {
    await runBatches(plan, opts, async (batch, slot, checkAbort) => {
      const buf = buffers[slot];
      const ops = opsOf(batch);
      await counted(counters, 'read', ops, src.batch('read', sides.src, buf, ops));
      checkAbort();
      await counted(counters, 'write', ops, dst.batch('write', sides.dst, buf, ops));
    });
  } finally {
    giveBuffers(buffers);
  }
  return counters;
}

/**
 * Reads both sides and compares them alignSectors block by block; with `write`, copies the
 * differing blocks from src to dst. Returns the blocks that differed.
 */
export async function compareExtents(src: BlockIo, dst: BlockIo, extents: ExtentSet,
  opts: CopyOptions & { write: boolean }): Promise<CompareResult> {
  const plan = makePlan(extents, opts);
  const alignSectors = opts.alignSectors ?? DEFAULT_ALIGN_SECTORS;
  const sides = opts.sides ?? SYNC_SIDES;
  const blockBytes = alignSectors * SECTOR;
  const counters: Counters = { bytesRead: 0, bytesWritten: 0, ios: 0 };
  const differing = new ExtentSet();
  let comparedSectors = 0;
  const srcBuffers = takeBuffers(plan.batchesAtOnce, plan.batchBytes);
  const dstBuffers = takeBuffers(plan.batchesAtOnce, plan.batchBytes);
  try {
    await runBatches(plan, opts, async (batch, slot, checkAbort) => {
      const a = srcBuffers[slot];
      const b = dstBuffers[slot];
      const ops = opsOf(batch);
      // Both reads at once, but never leave one running on a buffer we are about to give back.
      const reads = await Promise.allSettled([
        counted(counters, 'read', ops, src.batch('read', sides.src, a, ops)),
        counted(counters, 'read', ops, dst.batch('read', sides.dst, b, ops)),
      ]);
      for (const r of reads) if (r.status === 'rejected') throw r.reason;
      const writes: IoOp[] = [];
      for (const op of ops) {
        const sector = op.position / SECTOR;
        comparedSectors += op.length / SECTOR;
        for (const [from, to] of differingRuns(a, b, op.bufferOffset, op.length, blockBytes)) {
          differing.add(sector + from / SECTOR, sector + to / SECTOR);
          writes.push({ bufferOffset: op.bufferOffset + from, length: to - from, position: op.position + from });
        }
      }
      if (opts.write && writes.length > 0) {
        checkAbort();
        await counted(counters, 'write', writes, dst.batch('write', sides.dst, a, writes));
      }
    });
  } finally {
    giveBuffers(srcBuffers);
    giveBuffers(dstBuffers);
  }
  return { ...counters, differing, comparedSectors };
}

/**
 * The runs of blockBytes blocks in which a and b differ over [at, at + length), as byte
 * ranges [from, to) relative to `at`. The range starts on a block boundary (a chunk or piece
 * start); its last block may be short (a clip at the device's end).
 */
export function* differingRuns(a: Buffer, b: Buffer, at: number, length: number, blockBytes: number): Generator<[number, number]> {
  if (a.compare(b, at, at + length, at, at + length) === 0) return;
  let runStart = -1;
  // One step past the last block closes a run that reaches the end.
  for (let off = 0; ; off = Math.min(off + blockBytes, length)) {
    const end = Math.min(off + blockBytes, length);
    const differs = off < length && a.compare(b, at + off, at + end, at + off, at + end) !== 0;
    if (differs && runStart < 0) runStart = off;
    if (!differs && runStart >= 0) {
      yield [runStart, off];
      runStart = -1;
    }
    if (off === length) break;
  }
}

function makePlan(given: ExtentSet, opts: CopyOptions): Plan {
  // The plan is walked lazily while I/Os run: a snapshot keeps it whole if the caller's set changes meanwhile.
  const extents = given.clone();
  const limitSectors = opts.limitSectors;
  const alignSectors = opts.alignSectors ?? DEFAULT_ALIGN_SECTORS;
  const mergeGapSectors = opts.mergeGapSectors ?? DEFAULT_MERGE_GAP_SECTORS;
  const inFlight = opts.inFlight ?? DEFAULT_IN_FLIGHT;
  const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  if (!Number.isSafeInteger(limitSectors) || limitSectors < 0) throw new RangeError(`limitSectors ${limitSectors}: a sector count`);
  if (!Number.isSafeInteger(alignSectors) || alignSectors < 1 || (alignSectors & (alignSectors - 1)) !== 0) {
    throw new RangeError(`alignSectors ${alignSectors}: a power of two number of sectors`);
  }
  if (!Number.isSafeInteger(mergeGapSectors) || mergeGapSectors < 0) throw new RangeError(`mergeGapSectors ${mergeGapSectors}`);
  if (!Number.isSafeInteger(inFlight) || inFlight < 1 || inFlight > 256) throw new RangeError(`inFlight ${inFlight}: 1 to 256`);
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < 1) throw new RangeError(`chunkBytes ${chunkBytes}`);
  const chunkSectors = Math.max(alignSectors, Math.floor(chunkBytes / SECTOR / alignSectors) * alignSectors);
  let totalSectors = 0;
  extents.forEach((start, end) => {
    totalSectors += Math.max(0, Math.min(end, limitSectors) - start);
  });
  const large = chunkSectors * SECTOR >= LARGE_CHUNK_BYTES;
  return {
    chunkSectors, inFlight, totalSectors,
    chunksPerBatch: large ? 1 : inFlight,
    batchesAtOnce: large ? inFlight : 2,
    batchBytes: large ? roundUp(chunkSectors * SECTOR) : Math.max(BATCH_BYTES, roundUp(chunkSectors * SECTOR)),
    chunks: planChunks(extents, limitSectors, alignSectors, mergeGapSectors, chunkSectors),
  };
}

/**
 * Rounds the extents out to alignSectors (clipped to limitSectors), merges those closer than
 * mergeGapSectors into runs and cuts runs into chunks of at most chunkSectors, lazily, so a
 * set of millions of extents never becomes millions of objects at once.
 */
export function* planChunks(extents: ExtentSet, limitSectors: number, alignSectors: number, mergeGapSectors: number,
  chunkSectors: number): Generator<Chunk> {
  let running = false;
  let runEnd = 0; // rounded end of the current run
  let cursor = 0; // start of the next chunk to emit, always on a block boundary
  let covered = 0; // caller's sectors in [cursor, ...) not yet emitted
  for (const [extentStart, extentEnd] of extents) {
    if (extentStart >= limitSectors) break;
    const start = extentStart;
    const end = Math.min(extentEnd, limitSectors);
    const roundedStart = Math.floor(start / alignSectors) * alignSectors;
    const roundedEnd = Math.min(Math.ceil(end / alignSectors) * alignSectors, limitSectors);
    if (running && roundedStart - runEnd >= mergeGapSectors) {
      // The run is over: what is left of it is shorter than a chunk (see below).
      if (cursor < runEnd) yield { startSector: cursor, endSector: runEnd, coveredSectors: covered };
      running = false;
    }
    if (!running) {
      running = true;
      cursor = roundedStart;
      covered = 0;
    }
    runEnd = Math.max(runEnd, roundedEnd);
    // A chunk can go once no later extent can add sectors to it: later extents start at or
    // after `end`. What remains after this loop ends before cursor + chunkSectors, because
    // runEnd <= ceil(end) <= cursor + chunkSectors (cursor and chunkSectors are block multiples).
    let pos = start;
    while (cursor + chunkSectors <= runEnd && cursor + chunkSectors <= end) {
      const chunkEnd = cursor + chunkSectors;
      covered += chunkEnd - Math.max(pos, cursor);
      yield { startSector: cursor, endSector: chunkEnd, coveredSectors: covered };
      covered = 0;
      cursor = chunkEnd;
      pos = chunkEnd;
    }
    covered += end - Math.max(pos, cursor);
  }
  if (running && cursor < runEnd) yield { startSector: cursor, endSector: runEnd, coveredSectors: covered };
}

const roundUp = (bytes: number) => Math.ceil(bytes / BUFFER_ALIGNMENT) * BUFFER_ALIGNMENT;

/** A batch's chunks as I/Os between its buffer and the device. */
export function opsOf(batch: ChunkBatch): IoOp[] {
  return batch.chunks.map((c, i) => ({ bufferOffset: batch.offsets[i], length: (c.endSector - c.startSector) * SECTOR, position: c.startSector * SECTOR }));
}

/** Counts a batch's I/Os and bytes once it has succeeded. */
async function counted(counters: Counters, kind: 'read' | 'write', ops: IoOp[], io: Promise<void>): Promise<void> {
  await io;
  const bytes = ops.reduce((sum, o) => sum + o.length, 0);
  counters.ios += ops.length;
  if (kind === 'read') counters.bytesRead += bytes;
  else counters.bytesWritten += bytes;
}

/**
 * Chunks grouped in order into batches of at most maxChunks whose 4 KiB-aligned room fits
 * maxBytes (a chunk larger than that is a batch alone), lazily.
 */
export function* batchesOf(chunks: Iterator<Chunk>, maxBytes: number, maxChunks: number): Generator<ChunkBatch> {
  let batch: ChunkBatch = { chunks: [], offsets: [], bytes: 0, coveredSectors: 0 };
  for (let r = chunks.next(); !r.done; r = chunks.next()) {
    const chunk = r.value;
    const room = roundUp((chunk.endSector - chunk.startSector) * SECTOR);
    if (batch.chunks.length > 0 && (batch.bytes + room > maxBytes || batch.chunks.length >= maxChunks)) {
      yield batch;
      batch = { chunks: [], offsets: [], bytes: 0, coveredSectors: 0 };
    }
    batch.chunks.push(chunk);
    batch.offsets.push(batch.bytes);
    batch.coveredSectors += chunk.coveredSectors;
    batch.bytes += room;
  }
  if (batch.chunks.length > 0) yield batch;
}

/**
 * Runs `work` over the plan's chunks in batches, batchesAtOnce at a time, each in its own
 * slot (its own buffer). The first failure stops new work; it is thrown only after every slot
 * has finished, so no I/O is left running on a buffer or fd the caller is about to reuse or close.
 */
async function runBatches(plan: Plan, opts: CopyOptions,
  work: (batch: ChunkBatch, slot: number, checkAbort: () => void) => Promise<void>): Promise<void> {
  const { signal, onProgress } = opts;
  const totalSectors = plan.totalSectors;
  const batches = batchesOf(plan.chunks, plan.batchBytes, plan.chunksPerBatch);
  let doneSectors = 0;
  let failure: { error: unknown } | null = null;
  const checkAbort = (): void => {
    if (signal?.aborted) throw new AbortError('copy aborted', { cause: signal.reason });
  };
  const next = (): ChunkBatch | null => {
    if (failure) return null;
    try {
      checkAbort();
      const r = batches.next();
      return r.done ? null : r.value;
    } catch (error) {
      failure ??= { error };
      return null;
    }
  };
  const slot = async (index: number): Promise<void> => {
    for (let batch = next(); batch !== null; batch = next()) {
      try {
        await work(batch, index, checkAbort);
        doneSectors += batch.coveredSectors;
        onProgress?.({ doneSectors, totalSectors }); // a throwing callback also waits for the other slots
      } catch (error) {
        failure ??= { error };
        return;
      }
    }
  };
  onProgress?.({ doneSectors, totalSectors });
  await Promise.all(Array.from({ length: plan.batchesAtOnce }, (_, i) => slot(i)));
  if (failure) throw (failure as { error: unknown }).error;
}

