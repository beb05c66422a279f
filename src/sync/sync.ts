// Bringing a DPSR drive up to date: the full copy (resumable), and the
// incremental sync: drain, cut a generation, copy what was written,
// compare what may have been written unseen, record the new image.
import fs from 'node:fs';
import { compareExtents, copyExtents } from '../io/copy.js';
import type { BlockIo } from '../io/block-io.js';
import { deviceOf, openDirect } from '../io/direct-io.js';
import { LocalDevice } from '../io/local-device.js';
import { type DiskCounters, readDiskCounters, resolveBlockDevice } from '../devices/devices.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { DpsrError, RefusedError, errnoOf } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { finishedImage, forgetPoints, journalRegionOf, openRecoveredDrive, pointOf, saveUndoOf, updateLabel } from '../drive/paired-drive.js';
import { DEFAULT_KEEP, type KeepPolicy, UndoStream, checkUndoRoom, historyRegionOf } from '../drive/history-region.js';
import { type ImageState } from '../state/records.js';
import { type JournalEntry, type JournalRegion, applyEntries, applyTransaction, entriesOverlap, journalBytesFor, journalDataCapacity, writeTransaction } from '../drive/journal.js';
import { PassBuffers, copyEntries, differingEntries } from './pass-source.js';
import { withDriveLock } from '../base/locks.js';
import { recordFreeze } from '../state/records.js';
import { freeze, type ThawReport } from './freeze.js';
import { CANNOT_FREEZE, type WritableFileSystem, writableFileSystemsOf } from '../devices/mounts.js';
import { native } from '../base/native.js';
import { formatBytes, SECTOR } from '../base/units.js';
import { progressBar } from '../base/progress.js';
import type { Session } from '../state/session.js';
import type { PairRecord } from '../state/records.js';
import type { Gap, RangeState } from '../kernel/tracker.js';
import { resolveSuspect } from './scrub.js';

// Progress of a full copy is saved this often (without a flush: a crash of
// dpsr loses nothing written with O_DIRECT, and after a power loss the
// reboot is a gap that compares everything anyway). A copy cut short (a
// remote drive's connection lost) resumes at the last save: at most this
// much is sent again (tools/bench/nbd.ts measures it).
const FULL_COPY_SEGMENT_SECTORS = (256 << 20) / SECTOR;
// An incremental sync moves many small scattered extents: more, smaller I/Os
// in flight (the CLI sizes libuv's pool to match), and gaps merged only when
// reading them costs less than another I/O (about bandwidth / IOPS).
const COPIED_NOT_DURABLE = 'what was copied may not be durable';
const SCATTERED_IO = { chunkBytes: 512 << 10, inFlight: 32, mergeGapSectors: 32 };
const MAX_PASSES = 5;
const CONVERGED_BYTES = 4 << 20; // passes stop when this little is left: the final pass (frozen) reads it
const FREEZE_READ_LIMIT_BYTES = 256 << 20; // what the final pass may hold in memory
const APPLY_FROM_MEMORY_BYTES = 256 << 20; // what a journaled sync keeps to apply without reading the journal back
const FREEZE_DEADLINE_MS = 5000; // the watchdog thaws after this
const DEFAULT_QUIET_MS = 2000; // a raw source must be idle this long for its final pass
const QUIET_ATTEMPTS = 3;

export interface SyncReport {
  name: string;
  dataBytes: number; // the size of the image
  passBytes: number[]; // written by each pass, the frozen final pass last
  freezeMs: number | null; // how long the file systems were frozen
  quietSinceMs: number | null; // a raw source: the last write seen before the cut (0: none since the range was tracked)
  notConsistent?: string; // why a mounted source's image is not one point in time
  journaled: boolean; // through the redo journal (else written in place)
  generation: number;
  image: ImageState;
  imageTimeMs: number;
  fullCopyBytes: number;
  copiedBytes: number;
  comparedBytes: number;
  repairedBytes: number;
  durationMs: number;
  /** Of durationMs, saving the undo of the image it replaced (restore points; 0 without a history region). */
  undoMs: number;
  gaps: Gap[]; // recorded since the previous sync
  sourceMounted: string[];
}

/** Copies the whole source, from where an interrupted copy stopped. */
export async function fullCopy(s: Session, pair: PairRecord, range: RangeState, source: BlockIo, drive: BlockIo): Promise<number> {
  const total = pair.dataSectors;
  const bar = progressBar(`${pair.name}: full copy`, total * SECTOR);
  let copied = 0;
  while (pair.fullCopy.doneSectors < total) {
    const start = pair.fullCopy.doneSectors;
    const end = Math.min(total, start + FULL_COPY_SEGMENT_SECTORS);
    const r = await copyExtents(source, drive, ExtentSet.from([[start, end]]), {
      limitSectors: total,
      onProgress: (p) => bar.update((start + p.doneSectors) * SECTOR),
    });
    copied += r.bytesWritten;
    pair.fullCopy.doneSectors = end;
    await s.store.putPairAndRange(pair, range);
  }
  drive.flushSync('the DPSR drive', COPIED_NOT_DURABLE);
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
      let n: number;
      try {
        n = fs.readSync(fd, buf, done, length - done, a * SECTOR + done);
      } catch (err) {
        const errno = errnoOf(err) ?? 'EIO';
        throw new DpsrError(`final pass: reading the source${deviceOf(fd)} at byte ${a * SECTOR + done}: ${errno}`, 'EIO', { errno, cause: err });
      }
      if (n <= 0) throw new DpsrError(`final pass: reading the source at byte ${a * SECTOR + done}: unexpected end`, 'ESHORT');
      done += n;
    }
    held.push({ position: a * SECTOR, length, buf });
  });
  return held;
}

/** What one pass takes: data to copy, regions to compare, ranges discarded (data-less). */
export interface Cut { copy: ExtentSet; compare: ExtentSet; discard: ExtentSet }

/** The cut: what the tracker recorded until now, taken out of it. */
function takeCut(range: RangeState): Cut {
  const cut = { copy: range.dirty, compare: range.suspect, discard: range.discarded };
  range.dirty = new ExtentSet();
  range.suspect = new ExtentSet();
  range.discarded = new ExtentSet();
  cut.compare.subtractSet(cut.copy);
  return cut;
}

/** Remembers what this generation has cut so far, so a crash makes the next sync redo all of it. */
async function savePending(s: Session, pair: PairRecord, range: RangeState, generation: number, cutMs: number,
  cut: Cut): Promise<void> {
  const was = pendingCut(pair) ?? { copy: new ExtentSet(), compare: new ExtentSet(), discard: new ExtentSet() };
  was.copy.addSet(cut.copy);
  was.compare.addSet(cut.compare);
  was.discard.addSet(cut.discard);
  pair.pending = { generation, cutMs, copy: was.copy.toBuffer(), compare: was.compare.toBuffer(), discard: was.discard.toBuffer() };
  await s.store.putPairAndRange(pair, range);
}

/** What an interrupted sync had cut (redone, all of it, by the next one). */
function pendingCut(pair: PairRecord): Cut | null {
  if (!pair.pending) return null;
  return {
    copy: ExtentSet.fromBuffer(pair.pending.copy),
    compare: ExtentSet.fromBuffer(pair.pending.compare),
    discard: pair.pending.discard ? ExtentSet.fromBuffer(pair.pending.discard) : new ExtentSet(),
  };
}

/**
 * The cut of a final pass, with the source frozen or quiet: flip, judge the counts (a missed
 * write can only lie in the unreconciled regions then, which become suspect), take everything
 * recorded. No time to compare: what is suspect is read whole with the rest.
 */
async function finalTake(s: Session, range: RangeState): Promise<{ epoch: number; cutMs: number; cut: ExtentSet }> {
  const epoch = s.tracker.flip().epoch;
  const verdict = (await s.tracker.judge()).verdicts.get(range) ?? { kind: 'busy' };
  if (verdict.kind !== 'exact') s.tracker.distrust(range, verdict); // a distrusted range's verdict is never exact
  const cutMs = Date.now();
  const taken = takeCut(range);
  const cut = taken.copy;
  cut.addSet(taken.compare);
  cut.addSet(taken.discard);
  return { epoch, cutMs, cut };
}

interface FrozenCut {
  ok: boolean;
  held: HeldBlock[];
  cut: ExtentSet;
  cutMs: number;
  freezeMs: number;
  /** Raw sources: when the quiet period before the cut began (0: no write seen since this process began tracking). */
  quietSinceMs?: number;
  epoch: number;
  why?: string;
}

/**
 * The final pass of a mounted source: freeze its file systems, flip and
 * drain, judge the counts, read what remains into memory, thaw. Nothing is
 * written to any file system and nothing is logged while frozen. A pass
 * during which the watchdog thawed is rejected (its cut goes back to the
 * tracker). The caller writes the held data, then settles the epoch.
 */
async function frozenCut(s: Session, range: RangeState, srcFd: number, fileSystems: WritableFileSystem[], limitSectors: number): Promise<FrozenCut> {
  // Each writable file system once: frozen, or (vfat, an EFI system partition) remounted read-only.
  const frozen = await freeze(
    fileSystems.filter((f) => !CANNOT_FREEZE.has(f.fsType)).map((f) => f.path),
    FREEZE_DEADLINE_MS,
    fileSystems.filter((f) => CANNOT_FREEZE.has(f.fsType)).map((f) => f.path),
  );
  let held: HeldBlock[] = [];
  let epoch = -1;
  let cutMs = 0;
  let cut = new ExtentSet();
  let why: string | undefined;
  let report: ThawReport;
  try {
    try {
      ({ epoch, cutMs, cut } = await finalTake(s, range));
      if (cut.totalSectors * SECTOR > FREEZE_READ_LIMIT_BYTES) why = `${formatBytes(cut.totalSectors * SECTOR)} left to read: too much to hold under a freeze`;
      else held = readIntoMemory(srcFd, cut, limitSectors);
    } finally {
      report = await frozen.thaw();
    }
  } catch (err) {
    range.dirty.addSet(cut); // taken from the tracker, never written: the next sync takes it
    throw err;
  }
  if (report.thawedByWatchdog) why = `the freeze outlived its ${FREEZE_DEADLINE_MS} ms deadline and the watchdog thawed`;
  if (why) {
    range.dirty.addSet(cut); // nothing of it was written: the next sync takes it
    held = [];
  }
  return { ok: !why, held, cut, cutMs, freezeMs: report.durationMs, epoch, ...(why ? { why } : {}) };
}

/**
 * Waits until the disk has been idle for quietMs, counted from the last write
 * seen: the programs' time of the range's last completed write (`idleSinceMs`),
 * or a change of the kernel's count while we watch.
 */
async function waitQuiet(disk: string, quietMs: number, timeoutMs: number,
  idleSinceMs: number): Promise<{ counters: DiskCounters; sinceMs: number } | null> {
  const deadline = Date.now() + timeoutMs;
  let last = readDiskCounters(disk);
  let since = Math.min(idleSinceMs, Date.now());
  if (last.inFlightWrites === 0 && Date.now() - since >= quietMs) return { counters: last, sinceMs: since };
  while (Date.now() < deadline) {
    await sleep(Math.min(100, quietMs));
    const now = readDiskCounters(disk);
    if (now.writtenSectors !== last.writtenSectors || now.inFlightWrites !== 0) since = Date.now();
    last = now;
    if (Date.now() - since >= quietMs) return { counters: now, sinceMs: since };
  }
  return null;
}

/**
 * The final pass of a source without a file system to freeze: wait for a
 * quiet period, cut, read the remainder into memory, and accept it only if
 * the kernel counted no write meanwhile and nothing is in flight. Retried a
 * few times; then "not quiescent".
 */
async function quietCut(s: Session, pair: PairRecord, range: RangeState, srcFd: number, quietMs: number): Promise<FrozenCut> {
  let why = 'not quiescent';
  for (let attempt = 1; attempt <= QUIET_ATTEMPTS; attempt++) {
    await s.tracker.cycle();
    const quiet = await waitQuiet(range.disk, quietMs, quietMs * 4 + 2000, attempt === 1 ? s.tracker.lastWriteMs(range) : Date.now());
    if (!quiet) {
      why = `not quiescent: ${pair.source.path} was never idle for ${quietMs} ms`;
      continue;
    }
    const { epoch, cutMs, cut } = await finalTake(s, range);
    if (cut.totalSectors * SECTOR > FREEZE_READ_LIMIT_BYTES) {
      range.dirty.addSet(cut);
      await s.tracker.settle(epoch);
      return { ok: false, held: [], cut: new ExtentSet(), cutMs, freezeMs: 0, epoch: -1, why: 'too much left for a final pass' };
    }
    let held: HeldBlock[];
    try {
      held = readIntoMemory(srcFd, cut, pair.dataSectors);
    } catch (err) {
      range.dirty.addSet(cut); // taken from the tracker, never written: the next sync takes it
      throw err;
    }
    const after = readDiskCounters(range.disk);
    if (after.writtenSectors === quiet.counters.writtenSectors && after.inFlightWrites === 0) {
      return { ok: true, held, cut, cutMs, freezeMs: 0, quietSinceMs: quiet.sinceMs, epoch };
    }
    range.dirty.addSet(cut); // written while we read: try again
    await s.tracker.settle(epoch);
    why = `not quiescent: ${pair.source.path} was written during the final pass ${attempt} times`;
  }
  return { ok: false, held: [], cut: new ExtentSet(), cutMs: Date.now(), freezeMs: 0, epoch: -1, why };
}

/** The final pass that makes the image one point in time, or why it could not. */
function finalCut(c: SyncContext): Promise<FrozenCut> | null {
  if (c.finalMode === 'freeze') return frozenCut(c.s, c.range, c.srcFd, c.fileSystems, c.pair.dataSectors);
  if (c.finalMode === 'quiet') return quietCut(c.s, c.pair, c.range, c.srcFd, c.quietMs);
  return null;
}

/** A generation the journal cannot hold: refused, so that the DPSR drive is never a mix the user did not choose. */
function tooBigForJournal(pair: PairRecord, what: string, region: JournalRegion): RefusedError {
  const image = pair.imageTimeMs ? ` of ${new Date(pair.imageTimeMs).toISOString()}` : '';
  return new RefusedError(`pair ${pair.name}: ${what} (${formatBytes(journalDataCapacity(region.lengthBytes))}): ` +
    `nothing written, the DPSR drive keeps its image${image}; sync more often, give the drive a bigger reserved tail (pair again with --reserve), ` +
    `or write this sync in place: dpsr sync --in-place ${pair.name} (the DPSR drive is no whole image until it ends)`, 'EJOURNALFULL');
}

interface GenerationResult {
  image: ImageState;
  cutMs: number;
  freezeMs: number | null;
  quietSinceMs: number | null;
  notConsistent?: string;
  copied: number;
  compared: number;
  repaired: number;
  passBytes: number[];
  undoMs: number;
}

/** Everything one sync needs, shared by the journaled and the direct way of writing. */
interface SyncContext {
  s: Session;
  pair: PairRecord;
  range: RangeState;
  srcFd: number; // the final pass reads it synchronously under a freeze
  source: BlockIo;
  drive: BlockIo;
  /** The source's writable file systems, one each (frozen for the final pass). */
  fileSystems: WritableFileSystem[];
  /** How the last pass is made one point in time: a freeze (mounted), a quiet period (raw), or not at all (--no-freeze). */
  finalMode: 'freeze' | 'quiet' | 'none';
  quietMs: number;
  generation: number;
  point?: string; // the name `--point` gives the image
  keep: KeepPolicy; // which restore points the pair keeps
}

/** After the last pass without a freeze: was it one point in time? */
async function imageWithoutFreeze(c: SyncContext): Promise<ImageState> {
  await c.s.tracker.cycle();
  const verdict = (await c.s.tracker.reconcile()).get(c.range);
  const quiet = c.range.dirty.isEmpty && c.range.suspect.isEmpty && verdict?.kind === 'exact';
  return !quiet ? 'fuzzy' : c.fileSystems.length > 0 ? 'crash-consistent' : 'point-in-time';
}

/** Whether the converging passes are done. */
function remainderSmall(c: SyncContext, pass: number): boolean {
  const remainder = (c.range.dirty.totalSectors + c.range.suspect.totalSectors) * SECTOR;
  return c.finalMode === 'none' || remainder <= CONVERGED_BYTES || pass >= MAX_PASSES;
}

/** The cut of one pass, with what an interrupted sync left on the first. */
function passCut(c: SyncContext, pass: number, carried: Cut | null): Cut {
  const cut = takeCut(c.range);
  if (carried && pass === 1) {
    // The carried data is older than what was recorded since: it goes first, and the newer cut wins.
    carried.copy.subtractSet(cut.discard);
    carried.discard.subtractSet(cut.copy);
    cut.copy.addSet(carried.copy);
    cut.compare.addSet(carried.compare);
    cut.discard.addSet(carried.discard);
    cut.compare.subtractSet(cut.copy);
  }
  return cut;
}

/** Extents rounded out to whole 4 KiB blocks (what a pass reads and journals). */
function blocksOf(extents: ExtentSet): ExtentSet {
  const out = new ExtentSet();
  extents.forEach((start, end) => out.add(Math.floor(start / 8) * 8, Math.ceil(end / 8) * 8));
  return out;
}

/**
 * Until the transaction is applied the drive holds the previous image, not
 * what earlier passes journaled: a region to compare that an earlier pass
 * wrote into the transaction is copied instead, or a block that went back
 * to its old content would compare equal and the earlier entry would win.
 */
export function copyWhereJournaled(cut: Cut, journaled: ExtentSet): Cut {
  const elsewhere = cut.compare.clone();
  elsewhere.subtractSet(journaled);
  const overlap = cut.compare.clone();
  overlap.subtractSet(elsewhere);
  cut.copy.addSet(overlap);
  return { ...cut, compare: elsewhere };
}

/**
 * The journaled way (invariant 5): every pass, the compare repairs and the
 * frozen final pass go into one transaction in the drive's tail; the label
 * names the image it will make; it is committed, then applied. Until the
 * commit the drive holds the previous image; after it, the new one
 * (replayed from the drive alone if we die while applying).
 */
async function journaledGeneration(c: SyncContext, region: JournalRegion,
  carried: Cut | null): Promise<GenerationResult> {
  const { s, pair, range } = c;
  const limit = pair.dataSectors;
  const seq = (pair.journalSeq ?? 0) + 1;
  const counters = { bytesRead: 0, entryBytes: 0, comparedBytes: 0 };
  const result: GenerationResult = { image: 'fuzzy', cutMs: Date.now(), freezeMs: null, quietSinceMs: null, copied: 0, compared: 0, repaired: 0, passBytes: [], undoMs: 0 };
  let settleEpoch = -1;
  const buffers = new PassBuffers();
  const journaled = new ExtentSet(); // what earlier passes of this transaction wrote into it
  // The undo's old blocks are saved while the passes write the journal (the image is unchanged until the apply).
  const history = historyRegionOf(c.drive, pair, pair.id);
  const undo = history ? new UndoStream(history, c.drive, limit, c.keep) : null;
  async function* entries(): AsyncGenerator<JournalEntry> {
    for (let pass = 1; ; pass++) {
      result.cutMs = Date.now();
      const cut = copyWhereJournaled(passCut(c, pass, carried), journaled);
      undo?.add(cut.copy);
      undo?.add(cut.discard);
      journaled.addSet(blocksOf(cut.copy));
      journaled.addSet(blocksOf(cut.discard));
      await savePending(s, pair, range, c.generation, result.cutMs, cut);
      const before = counters.entryBytes;
      for (const [start, end] of cut.discard) {
        if (start < limit) yield { kind: 'discard', targetSector: start, sectors: Math.min(end, limit) - start };
      }
      yield* copyEntries(c.source, cut.copy, limit, counters, buffers);
      result.copied = counters.entryBytes;
      yield* differingEntries(c.source, c.drive, cut.compare, limit, counters, buffers);
      result.repaired += counters.entryBytes - result.copied;
      result.copied = counters.entryBytes - result.repaired;
      result.passBytes.push(counters.entryBytes - before);
      await s.tracker.cycle();
      if (remainderSmall(c, pass)) break;
    }
    const final = finalCut(c);
    if (final) {
      const f = await final;
      if (c.finalMode === 'freeze') result.freezeMs = f.freezeMs;
      result.quietSinceMs = f.quietSinceMs ?? null;
      settleEpoch = f.epoch;
      if (f.ok) {
        undo?.add(f.cut);
        await savePending(s, pair, range, c.generation, f.cutMs, { copy: f.cut, compare: new ExtentSet(), discard: new ExtentSet() });
        for (const h of f.held) yield { kind: 'data', targetSector: h.position / SECTOR, data: h.buf.subarray(0, h.length) };
        const bytes = f.held.reduce((n, h) => n + h.length, 0);
        result.copied += bytes;
        result.passBytes.push(bytes);
        result.cutMs = f.cutMs;
        result.image = 'point-in-time';
      } else if (c.finalMode === 'quiet') {
        // Keep the previous image as the consistent one: no commit.
        throw new DpsrError(`pair ${pair.name}: ${f.why}; the DPSR drive keeps its previous image`, 'ENOTQUIESCENT');
      } else {
        result.notConsistent = f.why;
      }
    } else {
      result.image = await imageWithoutFreeze(c);
    }
    // Before the commit: the label names the image this transaction makes.
    pair.pendingTxn = { seq, image: result.image, imageTimeMs: result.cutMs, label: c.point ?? null };
    updateLabel(c.drive, pair);
  }
  // The entries stay in memory up to a bound, so the apply need not read the journal back.
  let kept: JournalEntry[] | null = [];
  let keptBytes = 0;
  const targets = new ExtentSet();
  async function* keeping(all: AsyncIterable<JournalEntry>): AsyncGenerator<JournalEntry> {
    for await (const e of all) {
      keptBytes += e.kind === 'data' ? e.data.length : 0;
      if (keptBytes > APPLY_FROM_MEMORY_BYTES) kept = null;
      kept?.push(e);
      targets.add(e.targetSector, e.targetSector + (e.kind === 'data' ? e.data.length / SECTOR : e.sectors));
      yield e;
    }
    if (history && undo) {
      // Before the commit (whose flush makes it durable): the undo record whole, but for its index entry.
      await undo.complete(targets, seq, pair.generation);
      // A sync whose undo would cost a labelled point the policy keeps is refused here, uncommitted.
      checkUndoRoom(history, targets, pointOf(pair), pair.dataSectors, c.keep, pair.name, undo.recordFor(seq, targets));
    }
  }
  let committed;
  try {
    ({ committed } = await writeTransaction(region, seq, keeping(entries())));
  } finally {
    await undo?.settle();
    if (settleEpoch >= 0) await s.tracker.settle(settleEpoch);
  }
  if (!committed) throw new DpsrError(`pair ${pair.name}: journal transaction ${seq} was not committed`, 'EJOURNAL');
  const undoStartMs = performance.now();
  await saveUndoOf(pair, c.drive, committed, pair.pendingTxn, c.keep, undo ?? undefined); // the previous image's blocks, durable before the first write in place
  result.undoMs = performance.now() - undoStartMs;
  // From memory when nothing overlaps (a block written again between passes does): the order cannot matter then.
  if (kept && !entriesOverlap(kept)) await applyEntries(c.drive, kept);
  else await applyTransaction(c.drive, committed);
  kept = null;
  buffers.giveBack(); // not on failure: a read may still be running into one
  pair.journalSeq = seq;
  pair.pendingTxn = null;
  result.compared = counters.comparedBytes;
  return result;
}

/** Before the first write in place: until the sync ends the drive is no whole image; the label says so, and the record once saved. */
function markPartial(c: SyncContext): void {
  if (c.pair.image === 'partial') return;
  c.pair.image = 'partial';
  updateLabel(c.drive, c.pair);
}

/**
 * The direct way, when there is no journal (no reserved tail) or the
 * generation is too big for it: writes in place, the label says "partial"
 * (naming the last good point in time) until the last pass lands.
 */
async function directGeneration(c: SyncContext, carried: Cut | null): Promise<GenerationResult> {
  const { s, pair, range } = c;
  const limitSectors = pair.dataSectors;
  const result: GenerationResult = { image: 'fuzzy', cutMs: Date.now(), freezeMs: null, quietSinceMs: null, copied: 0, compared: 0, repaired: 0, passBytes: [], undoMs: 0 };
  for (let pass = 1; ; pass++) {
    result.cutMs = Date.now();
    const cut = passCut(c, pass, carried);
    cut.copy.addSet(cut.discard); // without a journal a discard is copied like data (what the source reads back)
    if (!cut.copy.isEmpty || !cut.compare.isEmpty) markPartial(c);
    await savePending(s, pair, range, c.generation, result.cutMs, cut); // saves the record's "partial" too
    const bar = progressBar(`${pair.name}: sync pass ${pass}`, (cut.copy.totalSectors + cut.compare.totalSectors) * SECTOR);
    const copied = await copyExtents(c.source, c.drive, cut.copy, {
      ...SCATTERED_IO, limitSectors, onProgress: (p) => bar.update(p.doneSectors * SECTOR),
    });
    const compared = await compareExtents(c.source, c.drive, cut.compare, {
      ...SCATTERED_IO, limitSectors, write: true, onProgress: (p) => bar.update((cut.copy.totalSectors + p.doneSectors) * SECTOR),
    });
    bar.done();
    result.copied += copied.bytesWritten;
    result.compared += compared.comparedSectors * SECTOR;
    result.repaired += compared.bytesWritten;
    result.passBytes.push(copied.bytesWritten + compared.bytesWritten);
    await s.tracker.cycle();
    if (remainderSmall(c, pass)) break;
  }
  c.drive.flushSync('the DPSR drive', COPIED_NOT_DURABLE);
  const final = finalCut(c);
  if (final) {
    const f = await final;
    if (c.finalMode === 'freeze') result.freezeMs = f.freezeMs;
    result.quietSinceMs = f.quietSinceMs ?? null;
    if (f.ok) {
      if (f.held.length > 0) markPartial(c);
      await savePending(s, pair, range, c.generation, f.cutMs, { copy: f.cut, compare: new ExtentSet(), discard: new ExtentSet() });
      let bytes = 0;
      for (const h of f.held) bytes += c.drive.writeSync(h.buf, 0, h.length, h.position);
      c.drive.flushSync('the DPSR drive', COPIED_NOT_DURABLE);
      result.copied += bytes;
      result.passBytes.push(bytes);
      result.cutMs = f.cutMs;
      result.image = 'point-in-time';
    } else {
      result.notConsistent = f.why;
    }
    if (f.epoch >= 0) await s.tracker.settle(f.epoch);
  } else {
    result.image = await imageWithoutFreeze(c);
  }
  return result;
}

/**
 * One incremental sync of a pair: converging passes (copy what was cut,
 * then what became dirty meanwhile) until the remainder is small; then,
 * for a mounted source, a final pass under a freeze that makes the image
 * one point in time. Without a freeze the image is point-in-time only if
 * nothing was written during the sync and the counts reconcile exactly.
 * Through the journal when the generation fits, else directly.
 */
export async function syncPair(s: Session, name: string, opts: SyncOptions = {}): Promise<SyncReport> {
  // A diff or restore may have the drive's image mounted: wait for it, the image must not change under it.
  return withDriveLock(s.settings, name, () => syncPairLocked(s, name, opts), {
    waitMs: opts.lockWaitMs,
    onWait: () => process.stderr.write(`dpsr: pair ${name}: waiting for another dpsr command using its DPSR drive\n`),
  });
}

export interface SyncOptions {
  freeze?: boolean;
  /** Write the generation in place, not through the journal: the DPSR drive is no whole image until it ends. */
  inPlace?: boolean;
  quietMs?: number;
  /** How long to wait for a diff or restore holding the drive (the daemon: 0, its ticks must go on). */
  lockWaitMs?: number;
  /** A name for the image this sync makes, kept as a restore point (dpsr history). */
  point?: string;
  /** Which restore points the pair keeps (the configuration's keep, keep_points, when_full); default: all the region holds, labelled ones refused to drop. */
  keep?: KeepPolicy;
}

async function syncPairLocked(s: Session, name: string, opts: SyncOptions): Promise<SyncReport> {
  const pair = s.store.pair(name);
  if (!pair) throw new DpsrError(`no pair named ${name}`, 'ENOPAIR');
  const problem = s.problems.get(name);
  if (problem) throw new RefusedError(problem, 'EPAIR');
  const range = s.ranges.get(name)!;
  const startedMs = Date.now();
  const gapsBefore = range.gaps.length;
  const drive = await openRecoveredDrive(s, pair, range);
  let srcFd: number;
  try {
    srcFd = openDirect(pair.source.path, false);
  } catch (err) {
    drive.release();
    throw err;
  }
  try {
    const fullCopyBytes = pair.fullCopy.complete ? 0 : await fullCopy(s, pair, range, new LocalDevice(srcFd), drive.io);
    await s.tracker.cycle();
    await s.tracker.reconcile();
    const fileSystems = writableFileSystemsOf(resolveBlockDevice(pair.source.path));
    const mounts = fileSystems.map((f) => f.path);
    const c: SyncContext = {
      s, pair, range, srcFd, source: new LocalDevice(srcFd), drive: drive.io, fileSystems,
      finalMode: fileSystems.length === 0 ? 'quiet' : opts.freeze === false ? 'none' : 'freeze',
      quietMs: opts.quietMs ?? DEFAULT_QUIET_MS, generation: pair.generation + 1, point: opts.point, keep: opts.keep ?? DEFAULT_KEEP,
    };
    const carried = pendingCut(pair);
    // The journal must hold this generation: what is known now, with room for what comes during the passes.
    const knownBytes = () => {
      const known = range.dirty.clone(); // discards take no data
      known.addSet(range.suspect);
      if (carried) { known.addSet(carried.copy); known.addSet(carried.compare); }
      return Math.min(known.totalSectors, pair.dataSectors) * SECTOR; // a region both carried and written since counts once
    };
    const region = journalRegionOf(drive.io, pair, pair.id);
    const fitsJournal = () => region !== null && journalBytesFor(knownBytes(), Math.ceil(knownBytes() / 4096) + 1) <= region.lengthBytes;
    // Suspect regions (after an unclean reboot: the whole source) counted whole may outgrow the journal, yet
    // only the blocks that differ need room in it: compared first, read-only, as the daemon does in the background.
    let comparedFirst = 0;
    if (opts.inPlace !== true && region !== null && !fitsJournal() && !range.suspect.isEmpty) {
      comparedFirst = await resolveSuspect(s, range, c.source, drive.io, range.suspect.clone(), pair.dataSectors, {});
    }
    // In place only when chosen: --in-place, or a pair without a journal (--no-reserve, a tail too small for one);
    // or to finish a sync that was written in place and cut short (the drive is a mix already).
    const fits = fitsJournal();
    const journaled = opts.inPlace !== true && region !== null && (fits || pair.image !== 'partial');
    if (journaled && !fits) throw tooBigForJournal(pair, `${formatBytes(knownBytes())} changed since the image, more than its journal holds`, region);
    if (!journaled) forgetPoints(pair, drive.io, `generation ${c.generation} was written in place`);
    let r: GenerationResult;
    try {
      r = journaled ? await journaledGeneration(c, region, carried) : await directGeneration(c, carried);
    } catch (err) {
      // More was written during the passes than the journal holds: no transaction was committed,
      // the drive is still the previous image, and what was cut is saved for the next sync.
      if ((err as DpsrError).code === 'EJOURNALFULL' && region) throw tooBigForJournal(pair, 'what was written during the sync outgrew its journal', region);
      throw err;
    }
    const durationMs = Date.now() - startedMs;
    recordFreeze(pair, r.freezeMs);
    Object.assign(pair, {
      generation: c.generation, pending: null, ...finishedImage(pair, r.image, r.cutMs), imageLabel: opts.point ?? null, heldAfterRevert: null,
      lastSync: {
        generation: c.generation, atMs: r.cutMs, durationMs, image: r.image, passBytes: r.passBytes, freezeMs: r.freezeMs,
        copiedBytes: r.copied, comparedBytes: r.compared + comparedFirst, repairedBytes: r.repaired, journaled,
      },
    });
    updateLabel(drive.io, pair);
    await s.store.putPairAndRange(pair, range);
    return {
      name, dataBytes: pair.dataSectors * SECTOR, generation: c.generation, image: r.image, imageTimeMs: r.cutMs, fullCopyBytes, durationMs, sourceMounted: mounts,
      passBytes: r.passBytes, freezeMs: r.freezeMs, quietSinceMs: r.quietSinceMs, journaled, undoMs: Math.round(r.undoMs),
      ...(r.notConsistent ? { notConsistent: r.notConsistent } : {}),
      copiedBytes: r.copied, comparedBytes: r.compared + comparedFirst, repairedBytes: r.repaired,
      gaps: range.gaps.slice(gapsBefore),
    };
  } finally {
    fs.closeSync(srcFd);
    drive.release();
  }
}
