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
import { freeze, type ThawReport } from './freeze.js';
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
const MAX_PASSES = 5;
const FREEZE_READ_LIMIT_BYTES = 256 << 20; // what the final pass may hold in memory
const FREEZE_DEADLINE_MS = 5000; // the watchdog thaws after this

export interface SyncReport {
  name: string;
  passBytes: number[]; // written by each pass, the frozen final pass last
  freezeMs: number | null; // how long the file systems were frozen
  notConsistent?: string; // why a mounted source's image is not one point in time
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

/** Data read from the source, held in memory across a thaw. */
interface HeldBlock { position: number; length: number; buf: Buffer }

/** Reads extents (rounded out to 4 KiB, clipped to the image) into memory, synchronously: used under a freeze. */
function readIntoMemory(fd: number, extents: ExtentSet, limitSectors: number): HeldBlock[] {
  const held: HeldBlock[] = [];
  extents.forEach((start, end) => {
    const a = Math.floor(start / 8) * 8;
    const b = Math.min(Math.ceil(end / 8) * 8, limitSectors);
    if (b <= a) return;
    const length = (b - a) * SECTOR;
    const buf = native().alignedBuffer(Math.ceil(length / 4096) * 4096, 4096);
    for (let done = 0; done < length;) {
      const n = fs.readSync(fd, buf, done, length - done, a * SECTOR + done);
      if (n <= 0) throw new DpsrError(`reading the source at byte ${a * SECTOR + done}: unexpected end`, 'ESHORT');
      done += n;
    }
    held.push({ position: a * SECTOR, length, buf });
  });
  return held;
}

/** The cut: what the tracker recorded until now, taken out of it. */
function takeCut(range: RangeState): { copy: ExtentSet; compare: ExtentSet } {
  const copy = range.dirty;
  const compare = range.suspect;
  range.dirty = new ExtentSet();
  range.suspect = new ExtentSet();
  compare.subtractSet(copy);
  return { copy, compare };
}

/** Remembers what this generation has cut so far, so a crash makes the next sync redo all of it. */
async function savePending(s: Session, pair: PairRecord, range: RangeState, generation: number, cutMs: number,
  cut: { copy: ExtentSet; compare: ExtentSet }): Promise<void> {
  const copy = pair.pending ? ExtentSet.fromBuffer(pair.pending.copy) : new ExtentSet();
  const compare = pair.pending ? ExtentSet.fromBuffer(pair.pending.compare) : new ExtentSet();
  copy.addSet(cut.copy);
  compare.addSet(cut.compare);
  pair.pending = { generation, cutMs, copy: copy.toBuffer(), compare: compare.toBuffer() };
  await s.store.putPairAndRange(pair, range);
}

/**
 * The final pass of a mounted source: freeze its file systems, flip and
 * drain, judge the counts, read what remains into memory, thaw; only then
 * write it. Nothing is written to any file system and nothing is logged
 * while frozen. A pass during which the watchdog thawed is rejected.
 */
async function frozenFinalPass(s: Session, pair: PairRecord, range: RangeState, srcFd: number, driveFd: number,
  mounts: string[], generation: number): Promise<{ ok: boolean; cutMs: number; bytes: number; freezeMs: number; why?: string }> {
  const frozen = await freeze(mounts, FREEZE_DEADLINE_MS);
  let held: HeldBlock[] = [];
  let epoch = -1;
  let cutMs = 0;
  let cut: ExtentSet | null = null;
  let why: string | undefined;
  let report: ThawReport;
  try {
    epoch = s.tracker.flip().epoch;
    const { verdicts, distrusted } = await s.tracker.judge();
    const verdict = verdicts.get(range);
    // Frozen, nothing can be written: a missed write lies in the unreconciled regions.
    if (distrusted.includes(range) || verdict?.kind !== 'exact') {
      range.suspect.addSet(range.unreconciled);
      range.unreconciled.clear();
    }
    cutMs = Date.now();
    const { copy, compare } = takeCut(range);
    copy.addSet(compare); // no time to compare under a freeze: read it all
    cut = copy;
    if (copy.totalSectors * SECTOR > FREEZE_READ_LIMIT_BYTES) why = `${(copy.totalSectors * SECTOR / 2 ** 20).toFixed(0)} MiB left to read: too much to hold under a freeze`;
    else held = readIntoMemory(srcFd, copy, pair.dataSectors);
  } finally {
    report = await frozen.thaw();
  }
  if (report.thawedByWatchdog) why = `the freeze outlived its ${FREEZE_DEADLINE_MS} ms deadline and the watchdog thawed`;
  if (why) {
    if (cut) range.dirty.addSet(cut); // nothing of it was written: the next sync takes it
    await s.tracker.settle(epoch);
    return { ok: false, cutMs, bytes: 0, freezeMs: report.durationMs, why };
  }
  await savePending(s, pair, range, generation, cutMs, { copy: cut!, compare: new ExtentSet() });
  let bytes = 0;
  for (const h of held) bytes += fs.writeSync(driveFd, h.buf, 0, h.length, h.position);
  flush(driveFd);
  await s.tracker.settle(epoch);
  return { ok: true, cutMs, bytes, freezeMs: report.durationMs };
}

/**
 * One incremental sync of a pair: converging passes (copy what was cut,
 * then what became dirty meanwhile) until the remainder is small; then,
 * for a mounted source, a final pass under a freeze that makes the image
 * one point in time. Without a freeze the image is point-in-time only if
 * nothing was written during the sync and the counts reconcile exactly.
 */
export async function syncPair(s: Session, name: string, opts: { freeze?: boolean } = {}): Promise<SyncReport> {
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
    const generation = pair.generation + 1;
    const mounts = mountsOf(resolveBlockDevice(pair.source.path));
    const useFreeze = mounts.length > 0 && opts.freeze !== false;
    const limitSectors = pair.dataSectors;
    const totals = { copied: 0, compared: 0, repaired: 0 };
    const passBytes: number[] = [];
    let cutMs = Date.now();

    // A generation an interrupted sync left is redone with the first pass.
    const carried = pair.pending
      ? { copy: ExtentSet.fromBuffer(pair.pending.copy), compare: ExtentSet.fromBuffer(pair.pending.compare) }
      : null;
    for (let pass = 1; ; pass++) {
      cutMs = Date.now();
      const cut = takeCut(range);
      if (carried && pass === 1) {
        cut.copy.addSet(carried.copy);
        cut.compare.addSet(carried.compare);
        cut.compare.subtractSet(cut.copy);
      }
      const changes = !cut.copy.isEmpty || !cut.compare.isEmpty;
      if (changes && pair.image !== 'partial') {
        pair.image = 'partial';
        await savePending(s, pair, range, generation, cutMs, cut);
        updateLabel(drive.fd, pair);
      } else {
        await savePending(s, pair, range, generation, cutMs, cut);
      }
      const bar = progressBar(`${name}: sync pass ${pass}`, (cut.copy.totalSectors + cut.compare.totalSectors) * SECTOR);
      const copied = await copyExtents(srcFd, drive.fd, cut.copy, {
        ...SCATTERED_IO, limitSectors, onProgress: (p) => bar.update(p.doneSectors * SECTOR),
      });
      const compared = await compareExtents(srcFd, drive.fd, cut.compare, {
        ...SCATTERED_IO, limitSectors, write: true, onProgress: (p) => bar.update((cut.copy.totalSectors + p.doneSectors) * SECTOR),
      });
      bar.done();
      totals.copied += copied.bytesWritten;
      totals.compared += compared.comparedSectors * SECTOR;
      totals.repaired += compared.bytesWritten;
      passBytes.push(copied.bytesWritten + compared.bytesWritten);
      await s.tracker.cycle();
      const remainder = (range.dirty.totalSectors + range.suspect.totalSectors) * SECTOR;
      if (!useFreeze || remainder <= FREEZE_READ_LIMIT_BYTES / 4 || pass >= MAX_PASSES) break;
    }
    flush(drive.fd);

    let image: ImageState;
    let freezeMs: number | null = null;
    let notConsistent: string | undefined;
    if (useFreeze) {
      const final = await frozenFinalPass(s, pair, range, srcFd, drive.fd, mounts, generation);
      freezeMs = final.freezeMs;
      if (final.ok) {
        cutMs = final.cutMs;
        totals.copied += final.bytes;
        passBytes.push(final.bytes);
        image = 'point-in-time';
      } else {
        image = 'fuzzy';
        notConsistent = final.why;
      }
    } else {
      // Did anything land while we copied? Then this image is not one point in time.
      await s.tracker.cycle();
      const verdict = (await s.tracker.reconcile()).get(range);
      const quiet = range.dirty.isEmpty && range.suspect.isEmpty && verdict?.kind === 'exact';
      image = !quiet ? 'fuzzy' : mounts.length > 0 ? 'crash-consistent' : 'point-in-time';
    }
    const durationMs = Date.now() - startedMs;
    Object.assign(pair, {
      generation, pending: null, image, imageTimeMs: cutMs,
      lastGoodTimeMs: image === 'point-in-time' ? cutMs : pair.lastGoodTimeMs,
      lastSync: {
        generation, atMs: cutMs, durationMs, image, passBytes, freezeMs,
        copiedBytes: totals.copied, comparedBytes: totals.compared, repairedBytes: totals.repaired,
      },
    });
    updateLabel(drive.fd, pair);
    await s.store.putPairAndRange(pair, range);
    return {
      name, generation, image, imageTimeMs: cutMs, fullCopyBytes, durationMs, sourceMounted: mounts, passBytes, freezeMs,
      ...(notConsistent ? { notConsistent } : {}),
      copiedBytes: totals.copied, comparedBytes: totals.compared, repairedBytes: totals.repaired,
      gaps: range.gaps.slice(gapsBefore),
    };
  } finally {
    fs.closeSync(srcFd);
    drive.release();
  }
}
