// Returning a source to its DPSR drive's image, one of the explicit requests
// that write to a source (DESIGN invariant 7): a rollback copies back only what the
// tracker says may differ since the image (or, when that history is
// unknown, compares all of it and writes the differences); a device restore
// copies a whole extent (the source, or one partition of it). A plan comes
// first and writes nothing. Crash-safe without a record of its own: the
// tracked state is cleared only after the copy is flushed, and rollback's
// own writes are recorded as dirty like any other, so a re-run copies them
// again and completes.
import fs from 'node:fs';
import path from 'node:path';
import { type CopyOptions, DEFAULT_ALIGN_SECTORS as ALIGN_SECTORS, DEFAULT_MERGE_GAP_SECTORS, compareExtents, copyExtents } from '../io/copy.js';
import type { BlockIo } from '../io/block-io.js';
import { openDirect } from '../io/direct-io.js';
import { LocalDevice, openLocalDevice } from '../io/local-device.js';
import { systemDisks, whyInUse } from '../devices/in-use.js';
import { type BlockDevice, devicesOverlap, readSysOrNull, resolveBlockDevice } from '../devices/devices.js';
import { tryLockFile, withDriveLock } from '../base/locks.js';
import { DpsrError, RefusedError, errnoOf, refuse } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { identify, matchRecordedSource } from '../devices/identity.js';
import { readCommitted } from '../drive/journal.js';
import { type DriveLabel, noLabelReason, readLabel } from '../drive/label.js';
import { type ImageState } from '../state/records.js';
import { coveredDevNumbers, mountsOf, partitionsOf } from '../devices/mounts.js';
import { native } from '../base/native.js';
import { formatBytes, SECTOR } from '../base/units.js';
import { partitionTable, withDriveDevice } from './image-mount.js';
import { progressBar } from '../base/progress.js';
import type { Session } from '../state/session.js';
import type { PairRecord } from '../state/records.js';
import { journalRegionOf, lastAppliedSeq, openCheckedDrive, pendingTxnOf, recoverPairedDrive } from '../drive/paired-drive.js';
import { applyFromDrive, committedOnDrive, imageAfter } from '../drive/recovery.js';
import { driveNameOf, isRemote } from '../drive/remote-drive.js';
import type { RangeState } from '../kernel/tracker.js';
import { checkOntoDisk } from './onto-disk.js';
import { type PointImage, openPointImage, pointOverlay } from './point-image.js';
import { type RestorePoint, pointsOwnerOfLabel } from './restore-points.js';

// Tracked extents are small and scattered: many small I/Os in flight, as an incremental sync does.
const SCATTERED_IO = { chunkBytes: 512 << 10, inFlight: 32, mergeGapSectors: 32 };
const DRIVE_LOCK_WAIT_MS = 10_000; // a diff or restore using the drive: wait a little, then say so

/**
 * What goes back to the image: what changed since it (rollback), or a whole extent (device
 * restore); onto: the whole image onto another disk than the source (a new one), the tracker untouched.
 */
export type RestoreScope = { kind: 'rollback' } | { kind: 'whole' } | { kind: 'partition'; number: number } | { kind: 'onto'; device: string };

/**
 * tracked: the tracker's regions since the image; compare: history unknown, read both sides in
 * full and write what differs; full: copy the whole extent (device restore).
 */
export type RestoreMode = 'tracked' | 'compare' | 'full';

export interface RollbackRequest {
  name: string;
  scope: RestoreScope;
  dryRun: boolean;
  /** A restore point to return to instead of the current image (--at: a generation, a time or a label). */
  at?: string;
  /** Scope onto: write over a disk that carries a file system or partition table. */
  force?: boolean;
}

export interface RollbackReport {
  name: string;
  scope: RestoreScope['kind'];
  partition: number | null;
  source: string; // the device written (with scope onto: the new disk, not the pair's source)
  drive: string;
  dryRun: boolean;
  mode: RestoreMode;
  why: string | null; // why it compares, when it does
  startSector: number; // the extent returned to the image, [start, end)
  endSector: number;
  copyBytes: number; // copied from the image as they are
  compareBytes: number; // read on both sides; only the differences are written
  image: ImageState;
  imageTimeMs: number | null;
  /** The restore point returned to (--at), or null: the current image. */
  point: { generation: number; label: string | null } | null;
  journalSeq: number | null; // a committed journal transaction applied first (or, dry run, to apply)
  warnings: string[];
  writtenBytes: number;
  readBytes: number;
  durationMs: number;
  /** The tracker now holds the restored regions clean (the source equals the image there). */
  clean: boolean;
  notClean: string | null; // why they stay dirty
}

// ---------------------------------------------------------------------------------------------
// Refusals: only reads; the exclusive open is closed at once.



/**
 * Refuses a target something uses (devices/in-use.ts), and a whole disk the running system's /
 * lives on (for a partition of it, the in-use rule stands guard).
 */
function checkTargetFree(dev: BlockDevice, role: string): void {
  const what = `${role} ${dev.path}`;
  const used = whyInUse(dev);
  const advice = used?.code === 'EMOUNTED' ? `${used.advice} (for the running system, boot the DPSR drive or a rescue system)` : used?.advice;
  if (used) refuse(`${what} is in use: ${used.what}; ${advice}; nothing written`, used.code);
  if (!dev.isPartition && systemDisks().has(dev.disk)) {
    refuse(`${what} is the disk the running system's / is on: boot the DPSR drive or a rescue system and run it there; nothing written`, 'ESYSDISK');
  }
}

/** An exclusive open (no mount, no other exclusive user while we hold it); EBUSY refused. */
function openExclusive(devPath: string, flags: number, what: string): number {
  try {
    return fs.openSync(devPath, flags | fs.constants.O_EXCL);
  } catch (err) {
    const errno = errnoOf(err);
    if (errno === 'EBUSY') refuse(`${what} is in use (an exclusive open failed: a mount, an md/dm member, or a program holding it); nothing written`, 'EINUSE');
    throw new RefusedError(`cannot open ${what}: ${(err as Error).message}`, 'EOPEN', { errno, cause: err });
  }
}

/** Refuses an image that is no point in time to return to. */
function checkWhole(name: string, image: ImageState): void {
  if (image === 'none') throw new DpsrError(`pair ${name}: the DPSR drive was never completely copied: there is no image to return to; nothing written`, 'ENOTUSABLE');
  if (image === 'partial') {
    throw new DpsrError(`pair ${name}: the DPSR drive holds a partial image (a sync written in place was interrupted): a mix of two points in time, not one to return to; nothing written`, 'ENOTUSABLE');
  }
}

function imageWarnings(image: ImageState): string[] {
  if (image === 'fuzzy') return ['the image is fuzzy (the source was written while it was copied): its file systems may need a check after the rollback'];
  if (image === 'crash-consistent') return ['the image is crash-consistent (taken without a freeze): its file systems replay their journals at the next mount'];
  return [];
}

// ---------------------------------------------------------------------------------------------
// What to write

/** Where the writes go and what they cover. */
interface Target {
  write: BlockDevice; // the node written (a partition restore of a disk pair writes through the disk)
  exclusive: BlockDevice; // the node held exclusively during the run (the source, or the partition)
  startSector: number; // in image (= write node) sectors
  endSector: number;
  partition: number | null;
  warnings?: string[]; // about the target (onto a new disk)
}

interface Work {
  report: RollbackReport;
  target: Target;
  copy: ExtentSet;
  compare: ExtentSet;
  io: Partial<CopyOptions>;
  /** Where what is written is not the drive's current image (a restore point's blocks): dirty afterwards, never clean. */
  notImage: ExtentSet;
}

/** Partition N of the image, from the partition table in it (sfdisk reads it from the drive or a point's image), in the image's sectors. */
function imagePartition(imagePath: string, n: number, dataSectors: number): [number, number] {
  const table = partitionTable(imagePath);
  if (table.length === 0) refuse(`the image on ${imagePath} has no partition table sfdisk can read: restore --whole instead; nothing written`, 'ENOPART');
  const p = table.find((q) => q.number === n);
  if (!p) refuse(`the image has no partition ${n} (it has ${table.length}); nothing written`, 'ENOPART');
  const extent: [number, number] = [p!.startBytes / SECTOR, (p!.startBytes + p!.sizeBytes) / SECTOR];
  if (extent[1] > dataSectors) refuse(`partition ${n} of the image ends past the image; nothing written`, 'ENOPART');
  return extent;
}

/** The source's own partition N, which must sit exactly where the image's does. */
function sourcePartition(disk: BlockDevice, n: number, extent: [number, number]): BlockDevice {
  for (const name of partitionsOf(disk.disk)) {
    if (readSysOrNull(`/sys/block/${disk.disk}/${name}/partition`) !== String(n)) continue;
    const part = resolveBlockDevice(`/dev/${name}`);
    if (part.startSector !== extent[0] || part.startSector + part.sizeSectors !== extent[1]) {
      refuse(`partition ${n} of ${disk.path} is at sectors [${part.startSector}, ${part.startSector + part.sizeSectors}), the image's at [${extent[0]}, ${extent[1]}): ` +
        `the partition tables differ; use rollback or restore --whole; nothing written`, 'EPARTGEOMETRY');
    }
    return part;
  }
  return refuse(`${disk.path} has no partition ${n} (the kernel lists none: its partition table differs from the image's); use rollback or restore --whole; nothing written`, 'ENOPART');
}

/** What a restore writes, for a person: the pair's source, or (onto) the disk named. */
const roleOf = (scope: RestoreScope['kind']) => (scope === 'onto' ? 'the target disk' : 'the source');

/** `imagePath`: where the image returned to is (the drive, or a restore point's read-only device). */
function targetOf(s: Session, pair: PairRecord, scope: RestoreScope, imagePath: string, force: boolean): Target {
  if (scope.kind === 'onto') {
    const onto = checkOntoDisk(pair, s.store.pairs(), scope.device, force);
    return { write: onto.device, exclusive: onto.device, startSector: 0, endSector: pair.dataSectors, partition: null, warnings: onto.warnings };
  }
  const source = resolveBlockDevice(pair.source.path);
  if (scope.kind !== 'partition') return { write: source, exclusive: source, startSector: 0, endSector: pair.dataSectors, partition: null };
  if (pair.source.isPartition) refuse(`pair ${pair.name}: the source ${pair.source.path} is a partition: restore --whole restores it`, 'EPARTITIONPAIR');
  const extent = imagePartition(imagePath, scope.number, pair.dataSectors);
  const part = sourcePartition(source, scope.number, extent);
  return { write: source, exclusive: part, startSector: extent[0], endSector: extent[1], partition: scope.number };
}

/** The gaps since the image, said once each. */
function gapsSince(range: Pick<RangeState, 'gaps'>, sinceMs: number): string {
  const details = [...new Set(range.gaps.filter((g) => g.atMs > sinceMs).map((g) => `${g.cause}: ${g.detail}`))];
  return details.length > 0 ? details.slice(0, 3).join('; ') + (details.length > 3 ? `; and ${details.length - 3} more` : '') : '';
}

/**
 * What may differ between the source and the image: the tracker's sets since the image, plus
 * what an uncommitted sync had cut from them. Where writes may have gone unseen (suspect,
 * unreconciled) it compares; when that is the whole source, history is unknown: compare all.
 */
export function trackedWork(pair: Pick<PairRecord, 'dataSectors' | 'pending' | 'lastSync'>,
  range: Pick<RangeState, 'dirty' | 'discarded' | 'suspect' | 'unreconciled' | 'gaps'>, driveChanges: string[]): { copy: ExtentSet; compare: ExtentSet; mode: RestoreMode; why: string | null } {
  const limit = pair.dataSectors;
  const copy = range.dirty.clone();
  copy.addSet(range.discarded);
  const compare = range.suspect.clone();
  compare.addSet(range.unreconciled);
  if (pair.pending) {
    copy.addSet(ExtentSet.fromBuffer(pair.pending.copy));
    if (pair.pending.discard) copy.addSet(ExtentSet.fromBuffer(pair.pending.discard));
    compare.addSet(ExtentSet.fromBuffer(pair.pending.compare));
  }
  compare.subtractSet(copy);
  const everything = compare.covers(0, limit);
  if (driveChanges.length === 0 && !everything) return { copy: copy.intersect(0, limit), compare: compare.intersect(0, limit), mode: 'tracked', why: null };
  const cause = driveChanges.length > 0 ? `the DPSR drive changed (${driveChanges.join('; ')})`
    : gapsSince(range, pair.lastSync?.atMs ?? 0) || 'the whole source is suspect';
  return {
    copy: new ExtentSet(), compare: ExtentSet.from([[0, limit]]), mode: 'compare',
    why: `history unknown since the image (${cause}): comparing the whole source, ${formatBytes(limit * SECTOR)}`,
  };
}

function bytesOf(set: ExtentSet): number {
  return set.totalSectors * SECTOR;
}

/** What the copy really writes: extents rounded out to 4 KiB and merged across small gaps, as copy.ts plans its I/O. */
function touchedBy(set: ExtentSet, mergeGapSectors: number, limitSectors: number): ExtentSet {
  const out = new ExtentSet();
  let runStart = -1;
  let runEnd = -1;
  for (const [start, end] of set) {
    if (start >= limitSectors) break;
    const a = Math.floor(start / ALIGN_SECTORS) * ALIGN_SECTORS;
    const b = Math.min(Math.ceil(Math.min(end, limitSectors) / ALIGN_SECTORS) * ALIGN_SECTORS, limitSectors);
    if (runEnd >= 0 && a - runEnd < mergeGapSectors) {
      runEnd = Math.max(runEnd, b);
      continue;
    }
    if (runEnd >= 0) out.add(runStart, runEnd);
    runStart = a;
    runEnd = b;
  }
  if (runEnd >= 0) out.add(runStart, runEnd);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Running

/** Drops cached pages of every node over the source (its partitions, or its disk): a later mount must read what we wrote. */
function dropCaches(dev: BlockDevice): void {
  for (const name of coveredDevNumbers(dev).values()) {
    try {
      const fd = fs.openSync(path.join('/dev', name), fs.constants.O_RDONLY);
      try { native().blkFlsBuf(fd); } finally { fs.closeSync(fd); }
    } catch { /* best effort: a node without /dev entry is not cached by anyone */ }
  }
}

interface Written { writtenBytes: number; readBytes: number }

/**
 * Copies from the drive onto the target under an exclusive open (nothing can mount it
 * meanwhile), flushed. `before` runs after the source is flushed and before the first write,
 * `after` once the writes are durable, still holding it: the tracker's bookkeeping.
 */
async function writeBack(w: Work, drive: BlockIo, hooks: { before?: () => Promise<void>; after?: (r: Written) => Promise<void> } = {}): Promise<Written> {
  const { target } = w;
  const through = target.write.path !== target.exclusive.path; // a partition, written through its disk
  const exclusiveFd = openExclusive(target.exclusive.path, through ? fs.constants.O_RDONLY : fs.constants.O_RDWR | fs.constants.O_DIRECT,
    `${roleOf(w.report.scope)} ${target.exclusive.path}`);
  let writeFd = exclusiveFd;
  try {
    if (through) writeFd = openDirect(target.write.path, true);
    const dst = new LocalDevice(writeFd);
    // Whatever another node of the disk holds dirty lands now, not in the middle of our count.
    dst.flushSync(target.write.path, 'run the same command again');
    dropCaches(target.exclusive);
    await hooks.before?.();
    const limitSectors = target.endSector;
    const total = bytesOf(w.copy) + bytesOf(w.compare);
    const verb = w.report.scope === 'rollback' ? 'rollback' : 'restore';
    const bar = progressBar(`${w.report.name}: ${verb}`, total);
    const sides = { src: 'DPSR drive', dst: w.report.scope === 'onto' ? 'target disk' : 'source' }; // the other way round from a sync
    const copied = await copyExtents(drive, dst, w.copy, { ...w.io, sides, limitSectors, onProgress: (p) => bar.update(p.doneSectors * SECTOR) });
    const compared = await compareExtents(drive, dst, w.compare, {
      ...w.io, sides, limitSectors, write: true, onProgress: (p) => bar.update(bytesOf(w.copy) + p.doneSectors * SECTOR),
    });
    bar.done();
    dst.flushSync(target.write.path, 'run the same command again');
    dropCaches(target.exclusive);
    const r = { writtenBytes: copied.bytesWritten + compared.bytesWritten, readBytes: copied.bytesRead + compared.bytesRead };
    await hooks.after?.(r);
    return r;
  } finally {
    if (writeFd !== exclusiveFd) fs.closeSync(writeFd);
    fs.closeSync(exclusiveFd);
  }
}

/**
 * After the copy: the source equals the image in what was written, so those regions are clean,
 * but only if nothing but our writes arrived meanwhile: the sectors the tracker received equal
 * ours, no new gap, nothing outside what we wrote. Anything else stays dirty for the next sync.
 */
async function settleTracker(s: Session, pair: PairRecord, range: RangeState, w: Work,
  before: { receivedSectors: number; gaps: number; seen: ExtentSet }, written: Written): Promise<string | null> {
  await s.tracker.cycle();
  await s.tracker.reconcile();
  const touched = touchedBy(w.copy, w.io.mergeGapSectors ?? DEFAULT_MERGE_GAP_SECTORS, w.target.endSector);
  touched.addSet(touchedBy(w.compare, w.io.mergeGapSectors ?? DEFAULT_MERGE_GAP_SECTORS, w.target.endSector));
  const arrived = range.receivedSectors - before.receivedSectors;
  const ours = written.writtenBytes / SECTOR;
  const seen = range.dirty.clone();
  seen.addSet(range.discarded);
  seen.addSet(range.suspect);
  seen.subtractSet(before.seen);
  seen.subtractSet(touched);
  let why: string | null = null;
  if (range.gaps.length > before.gaps) why = `a gap during the ${w.report.scope} (${range.gaps.slice(before.gaps).map((g) => g.detail).join('; ')})`;
  else if (arrived !== ours) {
    why = `the tracker saw ${arrived} sectors written to the source during the ${w.report.scope}, it wrote ${ours}: ${arrived > ours ? 'something else wrote too' : 'writes went unseen'}`;
  } else if (!seen.isEmpty) why = `writes outside the restored regions during the ${w.report.scope}`;
  if (!why) {
    range.dirty.subtractSet(touched);
    range.discarded.subtractSet(touched);
    range.suspect.subtractSet(touched);
    // What an uncommitted sync had cut is now the image on both sides (or, where a restore point differs from it, dirty below).
    if (pair.pending && w.report.scope !== 'partition') pair.pending = null;
  } else {
    // Not provably clean, but what we wrote is the image's data unless something else wrote too:
    // the next sync compares it (writing only differences) rather than copying it all to the drive.
    range.suspect.addSet(inside(range.dirty, touched));
    range.suspect.addSet(inside(range.discarded, touched));
    range.dirty.subtractSet(touched);
    range.discarded.subtractSet(touched);
  }
  // A restore point's blocks differ from the current image: the next sync copies them (and the image it replaces stays a point).
  if (!w.notImage.isEmpty) {
    const differs = inside(w.notImage, touched);
    range.dirty.addSet(differs);
    range.suspect.subtractSet(differs);
  }
  await s.store.putPairAndRange(pair, range);
  return why && `${why}: the next sync compares the restored regions with the image instead of holding them clean`;
}

/** The part of `set` inside `within`. */
function inside(set: ExtentSet, within: ExtentSet): ExtentSet {
  const outside = set.clone();
  outside.subtractSet(within);
  const result = set.clone();
  result.subtractSet(outside);
  return result;
}

function emptyReport(fields: Omit<RollbackReport, 'writtenBytes' | 'readBytes' | 'durationMs' | 'clean' | 'notClean'>): RollbackReport {
  return { ...fields, writtenBytes: 0, readBytes: 0, durationMs: 0, clean: false, notClean: null };
}

/**
 * Rollback or device restore of a pair, by the one owner (the CLI's session or the daemon's).
 * A dry run plans and writes nothing (a committed journal transaction is only named). Otherwise:
 * refusals, the committed journal transaction applied first, the copy, the tracker settled.
 */
export async function rollbackInSession(s: Session, req: RollbackRequest): Promise<RollbackReport> {
  if (!s.store.pair(req.name)) throw new DpsrError(`no pair named ${req.name} (without its state: dpsr rollback --drive DEV)`, 'ENOPAIR');
  if (req.dryRun && req.at === undefined) return rollbackLocked(s, req); // a restore point is read under the lock, dry run or not
  return underDriveLock(s, req.name, () => rollbackLocked(s, req));
}

/** Runs fn holding the pair's drive lock: a diff or file restore may have the image mounted, and no journal transaction may land under it. */
export function underDriveLock<T>(s: Session, name: string, fn: () => Promise<T>): Promise<T> {
  return withDriveLock(s.settings, name, fn, {
    waitMs: DRIVE_LOCK_WAIT_MS,
    onWait: () => process.stderr.write(`dpsr: pair ${name}: waiting for another dpsr command using its DPSR drive\n`),
  });
}

/** The pair and its tracked range, refused (nothing written) when the session found a problem with it. */
export function ownedPair(s: Session, name: string): { pair: PairRecord; range: RangeState } {
  const problem = s.problems.get(name);
  if (problem) throw new RefusedError(`${problem}; nothing written`, 'EPAIR');
  return { pair: s.store.pair(name)!, range: s.ranges.get(name)! };
}

async function rollbackLocked(s: Session, req: RollbackRequest): Promise<RollbackReport> {
  const { pair, range } = ownedPair(s, req.name);
  if (!isRemote(pair) || (req.scope.kind !== 'partition' && req.at === undefined)) return rollbackFrom(s, req, pair, range, pair.drive.path);
  // An export's partition table and restore points are read through its read-only view (a local device).
  return withDriveDevice(pair, (local) => rollbackFrom(s, req, pair, range, local.drive.path));
}

/** `localDrive`: the drive's path as a local device, for sfdisk and a restore point's server (an export's read-only view). */
async function rollbackFrom(s: Session, req: RollbackRequest, pair: PairRecord, range: RangeState, localDrive: string): Promise<RollbackReport> {
  const startedMs = Date.now();
  let target = targetOf(s, pair, req.scope, localDrive, req.force === true);
  checkTargetFree(target.exclusive, roleOf(req.scope.kind));
  if (!pair.fullCopy.complete) checkWhole(pair.name, 'none');
  const drive = openCheckedDrive(pair, false);
  let pointImage: PointImage | null = null;
  let imageIo: BlockIo = drive.io; // where the image returned to is read: the drive, or a restore point's device
  try {
    // As mounting replays a log: a committed transaction is part of the image.
    const region = journalRegionOf(drive.io, pair, pair.id);
    const txn = region ? await readCommitted(region, lastAppliedSeq(pair, drive.label) + 1) : null;
    const pendingTxn = pendingTxnOf(pair, drive.label);
    let image = txn && pendingTxn?.seq === txn.seq ? pendingTxn.image : pair.image;
    let imageTimeMs = txn && pendingTxn?.seq === txn.seq ? pendingTxn.imageTimeMs : pair.imageTimeMs;
    if (!req.dryRun && (txn || pair.pendingTxn)) {
      await recoverPairedDrive(s, pair, range);
      image = pair.image;
      imageTimeMs = pair.imageTimeMs;
    }
    checkWhole(pair.name, image);
    // --at: the point's image, read-only, in place of the drive's; it differs from the current image where later records hold blocks.
    let point: RollbackReport['point'] = null;
    const notImage = new ExtentSet();
    if (req.at !== undefined) {
      let changed: ExtentSet;
      let p: RestorePoint;
      if (req.dryRun && txn) {
        // A committed transaction not yet applied: plan from the records' extents and its own (applied, its undo is one more record).
        ({ point: p, changed } = await pointOverlay(pair, req.at, 'none'));
        changed.addSet(txn.targetExtents());
      } else {
        pointImage = await openPointImage({ ...pair, drive: { ...pair.drive, path: localDrive } }, req.at);
        ({ point: p, changed } = pointImage);
        imageIo = openLocalDevice(pointImage.device, false);
        target = targetOf(s, pair, req.scope, pointImage.device, req.force === true);
        checkTargetFree(target.exclusive, roleOf(req.scope.kind));
      }
      checkWhole(pair.name, p.image);
      ({ image, timeMs: imageTimeMs } = p);
      point = { generation: p.generation, label: p.label };
      notImage.addSet(changed.intersect(target.startSector, target.endSector));
    }
    await s.tracker.cycle();
    await s.tracker.reconcile();
    const whole = req.scope.kind !== 'rollback';
    const what = whole ? { copy: ExtentSet.from([[target.startSector, target.endSector]]), compare: new ExtentSet(), mode: 'full' as const, why: null }
      : trackedWork(pair, range, drive.changes);
    if (what.mode === 'tracked') {
      what.copy.addSet(notImage);
      what.compare.subtractSet(what.copy);
    }
    const work: Work = {
      target, copy: what.copy, compare: what.compare, io: what.mode === 'tracked' ? SCATTERED_IO : {}, notImage,
      report: emptyReport({
        name: pair.name, scope: req.scope.kind, partition: target.partition, source: target.write.path, drive: driveNameOf(pair),
        dryRun: req.dryRun, mode: what.mode, why: what.why, startSector: target.startSector, endSector: target.endSector,
        copyBytes: bytesOf(what.copy), compareBytes: bytesOf(what.compare), image, imageTimeMs, point,
        journalSeq: txn?.seq ?? null, warnings: [...imageWarnings(image), ...target.warnings ?? []],
      }),
    };
    if (req.dryRun) return { ...work.report, durationMs: Date.now() - startedMs };
    if (what.copy.isEmpty && what.compare.isEmpty) return { ...work.report, durationMs: Date.now() - startedMs, clean: true };
    if (req.scope.kind === 'onto') {
      // Not the source: the tracker has nothing to settle, and the disk written is not tracked.
      const ontoWritten = await writeBack(work, imageIo);
      return { ...work.report, ...ontoWritten, durationMs: Date.now() - startedMs };
    }
    let before = { receivedSectors: 0, gaps: 0, seen: new ExtentSet() };
    let notClean: string | null = null;
    const written = await writeBack(work, imageIo, {
      before: async () => {
        await s.tracker.cycle(); // what arrived before our first write is not ours
        const seen = range.dirty.clone();
        seen.addSet(range.discarded);
        seen.addSet(range.suspect);
        before = { receivedSectors: range.receivedSectors, gaps: range.gaps.length, seen };
      },
      after: async (r) => { notClean = await settleTracker(s, pair, range, work, before, r); },
    });
    return { ...work.report, ...written, durationMs: Date.now() - startedMs, clean: notClean === null, notClean };
  } finally {
    if (imageIo !== drive.io) imageIo.close();
    pointImage?.close();
    drive.io.close();
  }
}

// ---------------------------------------------------------------------------------------------
// From the drive alone (a rescue system: no state, or a stale one)

export interface DriveRollbackRequest {
  drive: string;
  source?: string; // else the path the label records
  name?: string; // if given, must be the label's pair
  /** A restore point on the drive to return to (its label names the pair's points), instead of the current image. */
  at?: string;
  dryRun: boolean;
}

/** The source the label names, proven by its identity (size and serial/WWID/loop file as recorded). */
function labelSource(label: DriveLabel, drivePath: string, given: string | undefined): BlockDevice {
  let dev: BlockDevice;
  try {
    dev = resolveBlockDevice(given ?? label.source.path);
  } catch (err) {
    if (given) throw err;
    return refuse(`the source recorded on ${drivePath}, ${label.source.path}, is not there (${(err as Error).message}): name it with --source DEV; nothing written`, 'ENODEV');
  }
  const { verdict, differences } = matchRecordedSource(label.source, identify(dev));
  if (verdict === 'differs') {
    refuse(`${dev.path} is not the source recorded on ${drivePath} for pair ${label.pairName} (${differences.join('; ')})${given ? '' : '; name it with --source DEV'}; nothing written`, 'ESOURCECHANGED');
  }
  if (!given && verdict === 'unproven') {
    refuse(`the label on ${drivePath} records no serial number, WWID or loop file for the source: nothing proves ${dev.path} is it; name it with --source DEV; nothing written`, 'ENOIDENTITY');
  }
  return dev;
}

/**
 * Runs fn holding the one-owner lock (DESIGN invariant 4) without tracking anything: no daemon
 * or sync may write the drive while a rollback reads it. Refused when another process holds it.
 */
export async function withOwnerLock<T>(lockPath: string, fn: () => Promise<T>): Promise<T> {
  const fd = tryLockFile(lockPath);
  if (fd === null) refuse(`another dpsr process owns tracking (a daemon or a sync holds ${lockPath}): stop it, or use dpsr rollback NAME; nothing written`, 'EOWNED');
  try {
    return await fn();
  } finally {
    fs.closeSync(fd!);
  }
}

/**
 * Rollback without a pair record: the pair from the drive's label, a committed journal
 * transaction applied from the drive, then a compare of the whole source (no tracker history).
 * Tracking is not touched: if the kernel still tracks the source, our writes show as dirty.
 */
export async function rollbackFromDrive(req: DriveRollbackRequest): Promise<RollbackReport> {
  const startedMs = Date.now();
  const driveDev = resolveBlockDevice(req.drive);
  let drive = openLocalDevice(driveDev.path, false);
  let pointImage: PointImage | null = null;
  let imageIo: BlockIo | null = null; // a restore point's read-only device (--at)
  try {
    const label = readLabel(drive);
    if (!label) refuse(`${noLabelReason(drive, req.drive)}; nothing written`, 'ENOLABEL');
    const l = label!;
    if (req.name && req.name !== l.pairName) refuse(`${req.drive} is the DPSR drive of pair ${l.pairName}, not ${req.name}; nothing written`, 'ELABEL');
    const source = labelSource(l, req.drive, req.source);
    if (devicesOverlap(source, driveDev)) {
      refuse(`${source.path} overlaps the DPSR drive ${req.drive}; nothing written`, 'EOVERLAP');
    }
    checkTargetFree(source, 'the source');
    const txn = await committedOnDrive(drive, l);
    const { image, imageTimeMs } = txn ? imageAfter(l, txn) : l;
    const driveMounts = mountsOf(driveDev);
    const warnings = imageWarnings(image);
    if (driveMounts.length > 0) {
      // Booted from it, or simply mounted: its image changes while read, there is no point in time to return to.
      refuse(`the DPSR drive ${req.drive} is mounted on ${driveMounts.join(', ')}: its image would change while it is copied; ` +
        `nothing written. To move a system running from it back onto ${source.path}, pair in reverse (dpsr pair ${req.drive} ${source.path} --force), sync, and boot that disk`, 'EMOUNTED');
    }
    if (txn && !req.dryRun) {
      await applyFromDrive(driveDev.path, l, txn);
      drive.close();
      drive = openLocalDevice(driveDev.path, false);
    }
    checkWhole(l.pairName, image);
    // --at: the point's image, read-only, as the one compared against and copied from (the label names the pair's points).
    let point: RollbackReport['point'] = null;
    let pointAt = { image, imageTimeMs };
    if (req.at !== undefined) {
      const owner = pointsOwnerOfLabel(txn && !req.dryRun ? readLabel(drive)! : l, driveDev.path);
      const p = req.dryRun ? (await pointOverlay(owner, req.at, 'none')).point : (pointImage = await openPointImage(owner, req.at)).point;
      checkWhole(l.pairName, p.image);
      point = { generation: p.generation, label: p.label };
      pointAt = { image: p.image, imageTimeMs: p.timeMs };
      if (pointImage) imageIo = openLocalDevice(pointImage.device, false);
    }
    const limit = l.dataSectors;
    const work: Work = {
      target: { write: source, exclusive: source, startSector: 0, endSector: limit, partition: null },
      copy: new ExtentSet(), compare: ExtentSet.from([[0, limit]]), io: {}, notImage: new ExtentSet(),
      report: emptyReport({
        name: l.pairName, scope: 'rollback', partition: null, source: source.path, drive: driveDev.path, dryRun: req.dryRun,
        mode: 'compare', why: `no tracker history: comparing the whole source, ${formatBytes(limit * SECTOR)}`,
        startSector: 0, endSector: limit, copyBytes: 0, compareBytes: limit * SECTOR,
        ...pointAt, point, journalSeq: txn?.seq ?? null, warnings: point ? imageWarnings(pointAt.image) : warnings,
      }),
    };
    if (req.dryRun) return { ...work.report, durationMs: Date.now() - startedMs };
    const written = await writeBack(work, imageIo ?? drive);
    return { ...work.report, ...written, durationMs: Date.now() - startedMs, notClean: 'no tracker state was used (--drive): where tracking still runs, the next sync takes these writes for changes' };
  } finally {
    imageIo?.close();
    pointImage?.close();
    drive.close();
  }
}

