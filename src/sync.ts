// Bringing a DPSR drive up to date: the full copy (resumable), and the
// incremental sync: drain, cut a generation, copy what was written,
// compare what may have been written unseen, record the new image.
import fs from 'node:fs';
import { compareExtents, copyExtents, flush, openDirect } from './copy.js';
import { resolveBlockDevice } from './devices.js';
import { DpsrError, RefusedError } from './errors.js';
import { ExtentSet } from './extents.js';
import { identify, identityChanges } from './identity.js';
import { type ImageState, readLabel, writeLabel } from './label.js';
import { mountsOf } from './mounts.js';
import { native } from './native.js';
import { progressBar } from './progress.js';
import type { Session } from './session.js';
import type { PairRecord } from './store.js';
import type { Gap, RangeState } from './tracker.js';

const SECTOR = 512;
// Progress of a full copy is saved this often (without a flush: a crash of
// dpsr loses nothing written with O_DIRECT, and after a power loss the
// reboot is a gap that compares everything anyway).
const FULL_COPY_SEGMENT_SECTORS = (1 << 30) / SECTOR;
// An incremental sync moves many small scattered extents: more, smaller I/Os
// in flight (the CLI sizes libuv's pool to match), and gaps merged only when
// reading them costs less than another I/O (about bandwidth / IOPS).
const SCATTERED_IO = { chunkBytes: 512 << 10, inFlight: 32, mergeGapSectors: 32 };

export interface SyncReport {
  name: string;
  generation: number;
  image: ImageState;
  imageTimeMs: number;
  fullCopyBytes: number;
  copiedBytes: number;
  comparedBytes: number;
  repairedBytes: number;
  durationMs: number;
  gaps: Gap[]; // recorded since the previous sync
  sourceMounted: string[];
}

/** An open DPSR drive, writable until released (then read-only again). */
interface OpenDrive {
  fd: number;
  release(): void;
}

/**
 * Opens the paired drive for writing after proving it is the paired one:
 * its label (once written) and its identity. A drive that changed under us
 * (re-attached, new media) may hold anything: its whole image becomes suspect.
 */
export function openPairedDrive(s: Session, pair: PairRecord, range: RangeState): OpenDrive {
  const dev = resolveBlockDevice(pair.drive.path);
  const now = identify(dev);
  const changes = identityChanges(pair.drive, now);
  if (now.sizeSectors !== pair.drive.sizeSectors || now.loopBackingFile !== pair.drive.loopBackingFile ||
    now.loopBackingInode !== pair.drive.loopBackingInode || now.wwid !== pair.drive.wwid || now.serial !== pair.drive.serial) {
    throw new RefusedError(`pair ${pair.name}: ${pair.drive.path} is not the paired DPSR drive any more (${changes.join('; ')}); nothing written`, 'EDRIVECHANGED');
  }
  const mounts = mountsOf(dev);
  if (mounts.length > 0) throw new RefusedError(`pair ${pair.name}: the DPSR drive ${dev.path} is mounted on ${mounts.join(', ')}; unmount it first`, 'EMOUNTED');
  const fd = openDirect(dev.path, true);
  try {
    const label = readLabel(fd);
    if (pair.labelSeq > 0 && pair.reservedSectors > 0 && label?.pairId !== pair.id) {
      throw new RefusedError(`pair ${pair.name}: ${dev.path} does not carry this pair's label${label ? ` (it belongs to pair ${label.pairName})` : ''}; nothing written`, 'ELABEL');
    }
    if (changes.length > 0) {
      s.tracker.suspectAll(range, 'identity-changed', `the DPSR drive ${dev.path} changed (${changes.join('; ')}): its image is compared in full`);
      pair.drive = { ...now, path: pair.drive.path };
    }
    native().blkRoSet(fd, false);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return {
    fd,
    release: () => {
      try { native().blkRoSet(fd, true); } finally { fs.closeSync(fd); }
    },
  };
}

function labelFor(pair: PairRecord): Parameters<typeof writeLabel>[1] {
  const src = pair.source;
  return {
    pairName: pair.name,
    pairId: pair.id,
    source: { path: src.path, name: src.name, sizeSectors: src.sizeSectors, serial: src.serial, wwid: src.wwid, loopBackingFile: src.loopBackingFile },
    dataSectors: pair.dataSectors,
    reservedSectors: pair.reservedSectors,
    image: pair.image,
    imageTimeMs: pair.imageTimeMs,
    lastGoodTimeMs: pair.lastGoodTimeMs,
    journal: 'none',
    journalSeq: 0,
  };
}

/** Writes the pair's state into the drive's label (when it has a tail for one). */
export function updateLabel(fd: number, pair: PairRecord): void {
  if (pair.reservedSectors === 0) return;
  pair.labelSeq = writeLabel(fd, labelFor(pair), pair.labelSeq).seq;
}

/** Copies the whole source, from where an interrupted copy stopped. */
export async function fullCopy(s: Session, pair: PairRecord, range: RangeState, srcFd: number, dstFd: number): Promise<number> {
  const total = pair.dataSectors;
  const bar = progressBar(`${pair.name}: full copy`, total * SECTOR);
  let copied = 0;
  while (pair.fullCopy.doneSectors < total) {
    const start = pair.fullCopy.doneSectors;
    const end = Math.min(total, start + FULL_COPY_SEGMENT_SECTORS);
    const r = await copyExtents(srcFd, dstFd, ExtentSet.from([[start, end]]), {
      limitSectors: total,
      onProgress: (p) => bar.update((start + p.doneSectors) * SECTOR),
    });
    copied += r.bytesWritten;
    pair.fullCopy.doneSectors = end;
    await s.store.putPairAndRange(pair, range);
  }
  flush(dstFd);
  pair.fullCopy.complete = true;
  await s.store.putPairAndRange(pair, range);
  bar.done();
  return copied;
}

/**
 * One incremental sync of a pair. Writes completing during it stay in the
 * tracker for the next generation; the image is point-in-time only if
 * nothing was written meanwhile and the counts reconcile exactly.
 */
export async function syncPair(s: Session, name: string): Promise<SyncReport> {
  const pair = s.store.pair(name);
  if (!pair) throw new DpsrError(`no pair named ${name}`, 'ENOPAIR');
  const problem = s.problems.get(name);
  if (problem) throw new RefusedError(problem, 'EPAIR');
  const range = s.ranges.get(name)!;
  const startedMs = Date.now();
  const gapsBefore = range.gaps.length;
  const drive = openPairedDrive(s, pair, range);
  const srcFd = openDirect(pair.source.path, false);
  try {
    const fullCopyBytes = pair.fullCopy.complete ? 0 : await fullCopy(s, pair, range, srcFd, drive.fd);
    await s.tracker.cycle();
    await s.tracker.reconcile();

    // The cut: what was recorded until now is this generation (with any
    // generation an interrupted sync left), saved before the drive is touched.
    const copy = range.dirty;
    const compare = range.suspect;
    range.dirty = new ExtentSet();
    range.suspect = new ExtentSet();
    if (pair.pending) {
      copy.addSet(ExtentSet.fromBuffer(pair.pending.copy));
      compare.addSet(ExtentSet.fromBuffer(pair.pending.compare));
    }
    compare.subtractSet(copy);
    const generation = pair.generation + 1;
    const cutMs = Date.now();
    pair.pending = { generation, cutMs, copy: copy.toBuffer(), compare: compare.toBuffer() };
    const changes = !copy.isEmpty || !compare.isEmpty;
    if (changes) pair.image = 'partial';
    await s.store.putPairAndRange(pair, range);
    if (changes) updateLabel(drive.fd, pair);

    const limitSectors = pair.dataSectors;
    const bar = progressBar(`${name}: sync`, (copy.totalSectors + compare.totalSectors) * SECTOR);
    const copied = await copyExtents(srcFd, drive.fd, copy, {
      ...SCATTERED_IO, limitSectors, onProgress: (p) => bar.update(p.doneSectors * SECTOR),
    });
    const compared = await compareExtents(srcFd, drive.fd, compare, {
      ...SCATTERED_IO, limitSectors, write: true, onProgress: (p) => bar.update((copy.totalSectors + p.doneSectors) * SECTOR),
    });
    bar.done();
    flush(drive.fd);

    // Did anything land while we copied? Then this image is not one point in time.
    await s.tracker.cycle();
    const verdict = (await s.tracker.reconcile()).get(range);
    const quiet = range.dirty.isEmpty && range.suspect.isEmpty && verdict?.kind === 'exact';
    const sourceMounted = mountsOf(resolveBlockDevice(pair.source.path));
    const image: ImageState = !quiet ? 'fuzzy' : sourceMounted.length > 0 ? 'crash-consistent' : 'point-in-time';
    const durationMs = Date.now() - startedMs;
    Object.assign(pair, {
      generation, pending: null, image, imageTimeMs: cutMs,
      lastGoodTimeMs: image === 'point-in-time' ? cutMs : pair.lastGoodTimeMs,
      lastSync: {
        generation, atMs: cutMs, durationMs, image,
        copiedBytes: copied.bytesWritten, comparedBytes: compared.comparedSectors * SECTOR, repairedBytes: compared.bytesWritten,
      },
    });
    updateLabel(drive.fd, pair);
    await s.store.putPairAndRange(pair, range);
    return {
      name, generation, image, imageTimeMs: cutMs, fullCopyBytes, durationMs, sourceMounted,
      copiedBytes: copied.bytesWritten, comparedBytes: compared.comparedSectors * SECTOR, repairedBytes: compared.bytesWritten,
      gaps: range.gaps.slice(gapsBefore),
    };
  } finally {
    fs.closeSync(srcFd);
    drive.release();
  }
}
