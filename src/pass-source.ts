// The data of a sync pass as journal entries: what the cut says to copy,
// read from the source; and what a compare finds different from the DPSR
// drive's current image. Reads are rounded out to 4 KiB (clipped to the
// image) with several in flight; memory stays bounded by the read-ahead.
import { type Chunk, fullIo, planChunks } from './copy.js';
import type { ExtentSet } from './extents.js';
import type { JournalEntry } from './journal.js';
import { native } from './native.js';

const SECTOR = 512;
const BLOCK_SECTORS = 8;
const PIECE_SECTORS = (1 << 20) / SECTOR; // largest single read
const MERGE_GAP_SECTORS = 32; // a 16 KiB gap costs less than another I/O (and journal bytes are dearer than a direct copy's)
const READ_AHEAD = 16;

/** The cut rounded out to 4 KiB blocks, clipped, merged across small gaps, cut into pieces (copy.ts's planning). */
function pieces(extents: ExtentSet, limitSectors: number): Iterator<Chunk> {
  return planChunks(extents, limitSectors, BLOCK_SECTORS, MERGE_GAP_SECTORS, PIECE_SECTORS);
}

async function readPiece(fd: number, side: 'source' | 'destination', p: Chunk): Promise<Buffer> {
  const length = (p.endSector - p.startSector) * SECTOR;
  const buf = native().alignedBuffer(Math.ceil(length / 4096) * 4096, 4096);
  await fullIo('read', side, fd, buf, 0, length, p.startSector * SECTOR);
  return buf.subarray(0, length);
}

/** Reads pieces in order with up to READ_AHEAD reads in flight. */
async function* readAhead<T>(items: Iterator<Chunk>, read: (p: Chunk) => Promise<T>): AsyncGenerator<[Chunk, T]> {
  const queue: Array<[Chunk, Promise<T>]> = [];
  const fill = () => {
    while (queue.length < READ_AHEAD) {
      const r = items.next();
      if (r.done) return;
      const p = r.value;
      const promise = read(p);
      promise.catch(() => {}); // surfaced when awaited below
      queue.push([p, promise]);
    }
  };
  fill();
  while (queue.length > 0) {
    const [p, promise] = queue.shift()!;
    const value = await promise;
    fill();
    yield [p, value];
  }
}

export interface PassCounters { bytesRead: number; entryBytes: number }

/** Entries copying every extent of the cut from the source. */
export async function* copyEntries(srcFd: number, extents: ExtentSet, limitSectors: number,
  counters: PassCounters): AsyncGenerator<JournalEntry> {
  for await (const [p, data] of readAhead(pieces(extents, limitSectors), (q) => readPiece(srcFd, 'source', q))) {
    counters.bytesRead += data.length;
    counters.entryBytes += data.length;
    yield { kind: 'data', targetSector: p.startSector, data };
  }
}

/** Entries for the 4 KiB blocks where the source differs from the drive's current image. */
export async function* differingEntries(srcFd: number, driveFd: number, extents: ExtentSet, limitSectors: number,
  counters: PassCounters & { comparedBytes: number }): AsyncGenerator<JournalEntry> {
  const both = (p: Chunk) => Promise.all([readPiece(srcFd, 'source', p), readPiece(driveFd, 'destination', p)]);
  for await (const [p, [a, b]] of readAhead(pieces(extents, limitSectors), both)) {
    counters.bytesRead += a.length + b.length;
    counters.comparedBytes += a.length;
    if (a.equals(b)) continue;
    const blockBytes = BLOCK_SECTORS * SECTOR;
    let runStart = -1;
    for (let off = 0; ; off = Math.min(off + blockBytes, a.length)) {
      const end = Math.min(off + blockBytes, a.length);
      const differs = off < a.length && a.compare(b, off, end, off, end) !== 0;
      if (differs && runStart < 0) runStart = off;
      if (!differs && runStart >= 0) {
        const data = Buffer.from(a.subarray(runStart, off));
        counters.entryBytes += data.length;
        yield { kind: 'data', targetSector: p.startSector + runStart / SECTOR, data };
        runStart = -1;
      }
      if (off === a.length) break;
    }
  }
}
