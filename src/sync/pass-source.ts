// The data of a sync pass as journal entries: what the cut says to copy,
// read from the source; and what a compare finds different from the DPSR
// drive's current image. Reads are rounded out to 4 KiB (clipped to the
// image) and done in batches (batch-io: thousands of scattered blocks in
// flight at once), the next batch read while the current one is journaled.
// The batches' buffers come from a pool and go back to it once the sync is
// applied: fresh memory costs its first touch, on a VM more than the read.
import { type Chunk, type ChunkBatch, batchesOf, differingRuns, opsOf, planChunks } from '../io/copy.js';
import type { BlockIo } from '../io/block-io.js';
import { giveBuffers, takeBuffers } from '../io/direct-io.js';
import type { ExtentSet } from '../base/extents.js';
import type { JournalEntry } from '../drive/journal.js';
import { native } from '../base/native.js';
import { SECTOR } from '../base/units.js';

const BLOCK_BYTES = 4096;
const PIECE_SECTORS = (1 << 20) / SECTOR; // largest single read
const MERGE_GAP_SECTORS = 0; // only touching blocks join: batch-io keeps thousands of scattered reads in flight, and every merged byte is journaled and written twice
const BATCH_BYTES = 8 << 20;
const BATCH_PIECES = 4096;

const lengthOf = (p: Chunk) => (p.endSector - p.startSector) * SECTOR;

/** The cut rounded out to 4 KiB blocks, clipped, merged across small gaps, in batches (copy.ts's planning). */
function batches(extents: ExtentSet, limitSectors: number): Iterator<ChunkBatch> {
  return batchesOf(planChunks(extents, limitSectors, BLOCK_BYTES / SECTOR, MERGE_GAP_SECTORS, PIECE_SECTORS), BATCH_BYTES, BATCH_PIECES);
}

/** The buffers a sync's passes read into, until they go back to the pool. */
export class PassBuffers {
  private readonly taken: Buffer[] = [];

  take(): Buffer {
    const [buf] = takeBuffers(1, BATCH_BYTES); // a batch never holds more
    this.taken.push(buf);
    return buf;
  }

  /** Only once no read runs into them and no entry of them is still to be written (the sync is applied). */
  giveBack(): void {
    giveBuffers(this.taken.splice(0));
  }
}

async function readBatch(from: BlockIo, side: 'source' | 'DPSR drive', b: ChunkBatch, buffers: PassBuffers): Promise<Buffer> {
  const buf = buffers.take();
  await from.batch('read', side, buf, opsOf(b));
  return buf;
}

/** Reads batch after batch, each while the caller works on the one before. */
async function* readBatches<T>(all: Iterator<ChunkBatch>, read: (b: ChunkBatch) => Promise<T>): AsyncGenerator<[ChunkBatch, T]> {
  const start = (): [ChunkBatch, Promise<T>] | null => {
    const r = all.next();
    if (r.done) return null;
    const promise = read(r.value);
    promise.catch(() => {}); // surfaced when awaited below
    return [r.value, promise];
  };
  for (let pending = start(); pending !== null;) {
    const [b, promise] = pending;
    const value = await promise;
    pending = start();
    yield [b, value];
  }
}

export interface PassCounters { bytesRead: number; entryBytes: number }

/** Entries copying every extent of the cut from the source. */
export async function* copyEntries(source: BlockIo, extents: ExtentSet, limitSectors: number,
  counters: PassCounters, buffers: PassBuffers): AsyncGenerator<JournalEntry> {
  for await (const [b, buf] of readBatches(batches(extents, limitSectors), (x) => readBatch(source, 'source', x, buffers))) {
    for (let i = 0; i < b.chunks.length; i++) {
      const data = buf.subarray(b.offsets[i], b.offsets[i] + lengthOf(b.chunks[i]));
      counters.bytesRead += data.length;
      counters.entryBytes += data.length;
      yield { kind: 'data', targetSector: b.chunks[i].startSector, data };
    }
  }
}

/** Entries for the 4 KiB blocks where the source differs from the drive's current image. */
export async function* differingEntries(source: BlockIo, drive: BlockIo, extents: ExtentSet, limitSectors: number,
  counters: PassCounters & { comparedBytes: number }, buffers: PassBuffers): AsyncGenerator<JournalEntry> {
  const both = (b: ChunkBatch) => Promise.all([readBatch(source, 'source', b, buffers), readBatch(drive, 'DPSR drive', b, buffers)]);
  for await (const [b, [src, drv]] of readBatches(batches(extents, limitSectors), both)) {
    for (let i = 0; i < b.chunks.length; i++) {
      const p = b.chunks[i];
      const length = lengthOf(p);
      counters.bytesRead += 2 * length;
      counters.comparedBytes += length;
      for (const [from, to] of differingRuns(src, drv, b.offsets[i], length, BLOCK_BYTES)) {
        const data = native().alignedBuffer(to - from, BLOCK_BYTES); // aligned: the apply may write it from memory with O_DIRECT
        src.copy(data, 0, b.offsets[i] + from, b.offsets[i] + to);
        counters.entryBytes += data.length;
        yield { kind: 'data', targetSector: p.startSector + from / SECTOR, data };
      }
    }
  }
}
