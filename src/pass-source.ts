// The data of a sync pass as journal entries: what the cut says to copy,
// read from the source; and what a compare finds different from the DPSR
// drive's current image. Reads are rounded out to 4 KiB (clipped to the
// image) with several in flight; memory stays bounded by the read-ahead.
import fs from 'node:fs';
import type { ExtentSet } from './extents.js';
import type { JournalEntry } from './journal.js';
import { native } from './native.js';

const SECTOR = 512;
const BLOCK_SECTORS = 8;
const PIECE_SECTORS = (1 << 20) / SECTOR; // largest single read
const MERGE_GAP_SECTORS = 32; // as for direct copies: a 16 KiB gap costs less than another I/O
const READ_AHEAD = 16;

interface Piece { startSector: number; endSector: number }

/** The cut rounded out to 4 KiB blocks, clipped, merged across small gaps, cut into pieces. */
function* pieces(extents: ExtentSet, limitSectors: number): Generator<Piece> {
  let runStart = -1;
  let runEnd = -1;
  const emit = function* (): Generator<Piece> {
    for (let s = runStart; s < runEnd; s += PIECE_SECTORS) yield { startSector: s, endSector: Math.min(runEnd, s + PIECE_SECTORS) };
  };
  for (const [start, end] of extents) {
    if (start >= limitSectors) break;
    const a = Math.floor(start / BLOCK_SECTORS) * BLOCK_SECTORS;
    const b = Math.min(Math.ceil(end / BLOCK_SECTORS) * BLOCK_SECTORS, limitSectors);
    if (runEnd >= 0 && a - runEnd < MERGE_GAP_SECTORS) {
      runEnd = Math.max(runEnd, b);
      continue;
    }
    if (runEnd >= 0) yield* emit();
    runStart = a;
    runEnd = b;
  }
  if (runEnd >= 0) yield* emit();
}

function readPiece(fd: number, p: Piece): Promise<Buffer> {
  const length = (p.endSector - p.startSector) * SECTOR;
  const buf = native().alignedBuffer(Math.ceil(length / 4096) * 4096, 4096);
  return new Promise((resolve, reject) => {
    const step = (done: number) => {
      if (done >= length) return resolve(buf.subarray(0, length));
      fs.read(fd, buf, done, length - done, p.startSector * SECTOR + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return reject(new Error(`unexpected end of device at byte ${p.startSector * SECTOR + done}`));
        step(done + n);
      });
    };
    step(0);
  });
}

/** Reads pieces in order with up to READ_AHEAD reads in flight. */
async function* readAhead<T>(items: Iterator<Piece>, read: (p: Piece) => Promise<T>): AsyncGenerator<[Piece, T]> {
  const queue: Array<[Piece, Promise<T>]> = [];
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
  for await (const [p, data] of readAhead(pieces(extents, limitSectors), (q) => readPiece(srcFd, q))) {
    counters.bytesRead += data.length;
    counters.entryBytes += data.length;
    yield { kind: 'data', targetSector: p.startSector, data };
  }
}

/** Entries for the 4 KiB blocks where the source differs from the drive's current image. */
export async function* differingEntries(srcFd: number, driveFd: number, extents: ExtentSet, limitSectors: number,
  counters: PassCounters & { comparedBytes: number }): AsyncGenerator<JournalEntry> {
  const both = (p: Piece) => Promise.all([readPiece(srcFd, p), readPiece(driveFd, p)]);
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
