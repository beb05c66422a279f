// The paired DPSR drive: opened only once proven to be the paired one,
// writable only while dpsr writes it, its label kept in step with the pair
// record, and a transaction an interrupted sync committed applied before
// anyone reads or writes the image (invariant 5).
import { RefusedError } from '../base/errors.js';
import { identify, identityChanges, isReplaced, isReplacedButForInode, type DeviceIdentity } from '../devices/identity.js';
import { resolveBlockDevice } from '../devices/devices.js';
import { mountsOf } from '../devices/mounts.js';
import type { BlockIo } from '../io/block-io.js';
import { openLocalDevice } from '../io/local-device.js';
import { openNbdDevice } from '../io/nbd-device.js';
import { SECTOR } from '../base/units.js';
import { isRemote } from './remote-drive.js';
import type { RangeState } from '../kernel/tracker.js';
import type { ImageState, PairRecord } from '../state/records.js';
import type { Session } from '../state/session.js';
import { type CommittedTransaction, type JournalRegion, applyTransaction, damagedTransaction, journalPlace, readCommitted, unverifiedCommit } from './journal.js';
import { type KeepPolicy, type PointMeta, type UndoStream, dropAllPoints, historyRegionOf, undoBeforeApply } from './history-region.js';
import { type DriveLabel, readLabel, writeLabel } from './label.js';

/** The paired DPSR drive, opened once proven to be it. */
export interface CheckedDrive {
  io: BlockIo;
  label: DriveLabel | null;
  changes: string[]; // how it differs from what was recorded (re-attached)
  now: DeviceIdentity;
  /** Its label is this pair's and names the image the pair record does, or a later one: a re-attach needs no compare. */
  labelProves: boolean;
}

/**
 * Opens the pair's DPSR drive after proving it is the paired one: the same
 * device (identity), carrying this pair's label (once written), and not
 * mounted (its image could be changing). Writes nothing. A loop file whose
 * inode alone changed (its file system mounted again) is the drive when its
 * label proves it.
 */
export function openCheckedDrive(pair: PairRecord, write: boolean): CheckedDrive {
  if (isRemote(pair)) return openCheckedExport(pair, write);
  const dev = resolveBlockDevice(pair.drive.path);
  const now = identify(dev, pair.drive);
  const changes = identityChanges(pair.drive, now);
  const replaced = () => new RefusedError(`pair ${pair.name}: ${pair.drive.path} is not the paired DPSR drive any more (${changes.join('; ')}); nothing written`, 'EDRIVECHANGED');
  if (isReplacedButForInode(pair.drive, now)) throw replaced();
  const mounts = mountsOf(dev);
  if (mounts.length > 0) {
    throw new RefusedError(`pair ${pair.name}: the DPSR drive ${dev.path} is mounted on ${mounts.join(', ')}: its image may be changing; unmount it first; nothing written`, 'EMOUNTED');
  }
  const io = openLocalDevice(dev.path, write);
  try {
    const label = checkedLabel(pair, io, dev.path);
    const labelProves = labelNamesImageOf(label, pair);
    if (isReplaced(pair.drive, now) && !labelProves) throw replaced();
    return { io, label, changes, now, labelProves };
  } catch (err) {
    io.close();
    throw err;
  }
}

/**
 * The label is this pair's (its random id) and no older than the pair record: the drive holds the
 * image dpsr last wrote (or a committed transaction after it), not an older copy of itself.
 */
function labelNamesImageOf(label: DriveLabel | null, pair: PairRecord): boolean {
  return label !== null && pair.reservedSectors > 0 && label.pairId === pair.id && label.seq >= pair.labelSeq &&
    label.journalSeq >= (pair.journalSeq ?? 0);
}

/** The drive's label, which must be this pair's once one was written. */
function checkedLabel(pair: PairRecord, io: BlockIo, where: string): DriveLabel | null {
  const label = readLabel(io);
  if (pair.labelSeq > 0 && pair.reservedSectors > 0 && label?.pairId !== pair.id) {
    throw new RefusedError(`pair ${pair.name}: ${where} does not carry this pair's label${label ? ` (it belongs to pair ${label.pairName})` : ''}; nothing written`, 'ELABEL');
  }
  return label;
}

/** An export proves itself by its size and the pair's label (it has no device identity). */
function openCheckedExport(pair: PairRecord, write: boolean): CheckedDrive {
  const io = openNbdDevice(pair.drive.path, { write, insecure: pair.driveInsecure });
  try {
    const sectors = Math.floor(io.sizeBytes() / SECTOR);
    if (sectors !== pair.drive.sizeSectors) {
      throw new RefusedError(`pair ${pair.name}: the export ${pair.drive.name} is ${sectors} sectors, not the ${pair.drive.sizeSectors} paired: not the paired DPSR drive any more; nothing written`, 'EDRIVECHANGED');
    }
    return { io, label: checkedLabel(pair, io, pair.drive.name), changes: [], now: pair.drive, labelProves: true };
  } catch (err) {
    io.close();
    throw err;
  }
}

/** An open DPSR drive, writable until released (then read-only again). */
export interface OpenDrive {
  io: BlockIo;
  label: DriveLabel | null; // as read when opened
  release(): void;
}

/**
 * Opens the paired drive for writing (see openCheckedDrive). A drive that
 * changed under us (re-attached, new media) may hold anything, unless its
 * label proves it holds the pair's image (a drive unplugged and plugged back
 * in: what dpsr wrote is there, and the scrub checks the rest, as for any
 * drive): otherwise its whole image becomes suspect.
 */
export function openPairedDrive(s: Session, pair: PairRecord, range: RangeState | undefined): OpenDrive {
  const { io, label, changes, now, labelProves } = openCheckedDrive(pair, true);
  try {
    if (changes.length > 0 && range) {
      if (!labelProves) s.tracker.suspectAll(range, 'identity-changed', `the DPSR drive ${pair.drive.path} changed (${changes.join('; ')}): its image is compared in full`);
      pair.drive = { ...now, path: pair.drive.path };
    }
    io.setReadOnly(false);
  } catch (err) {
    io.close();
    throw err;
  }
  return {
    io,
    label,
    release: () => {
      try { io.setReadOnly(true); } finally { io.close(); }
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
    journal: pair.reservedSectors > 0 ? 'tail' : 'none',
    journalSeq: pair.journalSeq ?? 0,
    pendingTxn: pair.pendingTxn ?? null,
    ...(pair.historySectors ? { historySectors: pair.historySectors, generation: pair.generation, imageLabel: pair.imageLabel ?? null } : {}),
  };
}

/** Whether the drive's label holds the pair's state already (its own sequence number and time aside). */
function labelSays(label: DriveLabel | null, pair: PairRecord): boolean {
  if (!label || label.seq !== pair.labelSeq) return false;
  const wanted: Record<string, unknown> = labelFor(pair);
  const held: Record<string, unknown> = { ...label };
  delete held.seq;
  delete held.updatedMs;
  const keys = new Set([...Object.keys(wanted), ...Object.keys(held)]);
  return [...keys].every((k) => JSON.stringify(wanted[k] ?? null) === JSON.stringify(held[k] ?? null));
}

/** Writes the pair's state into the drive's label (when it has a tail for one). */
export function updateLabel(drive: BlockIo, pair: PairRecord): void {
  if (pair.reservedSectors === 0) return;
  pair.labelSeq = writeLabel(drive, labelFor(pair), pair.labelSeq).seq;
}

/** The redo journal of pair `pairId` on the open drive. */
export function journalRegionOf(drive: BlockIo, pair: Pick<PairRecord, 'dataSectors' | 'reservedSectors' | 'historySectors'>, pairId: string): JournalRegion | null {
  const place = journalPlace(drive.sizeBytes(), pair);
  return place ? { drive, ...place, pairId } : null;
}

/** The last journal transaction applied to the drive, by the pair's record or the drive's own label. */
export function lastAppliedSeq(pair: PairRecord, label: DriveLabel | null): number {
  return Math.max(pair.journalSeq ?? 0, label?.pairId === pair.id ? label.journalSeq : 0);
}

/** The transaction a sync was writing when it stopped (and the image it makes), by the record or the label. */
export function pendingTxnOf(pair: PairRecord, label: DriveLabel | null): PairRecord['pendingTxn'] {
  return pair.pendingTxn ?? (label?.pairId === pair.id ? label.pendingTxn : null) ?? null;
}

/**
 * Finishes what a crash interrupted: a transaction committed in the journal
 * but maybe not applied is applied again (it needs only the drive); one
 * never committed is forgotten (the image is still the previous one).
 */
export async function recoverJournal(s: Session, pair: PairRecord, drive: OpenDrive): Promise<boolean> {
  const { io, label } = drive;
  const region = journalRegionOf(io, pair, pair.id);
  if (!region) return false;
  if (label?.pairId === pair.id && label.journalSeq > (pair.journalSeq ?? 0)) {
    // Applied from the drive alone (a rescue system's rollback --drive or recover): the label knows the image.
    Object.assign(pair, { image: label.image, imageTimeMs: label.imageTimeMs, lastGoodTimeMs: label.lastGoodTimeMs, journalSeq: label.journalSeq,
      ...(label.imageLabel !== undefined ? { imageLabel: label.imageLabel } : {}) });
    if (pair.pending) pair.generation = Math.max(pair.generation, pair.pending.generation);
    // A revert applied whose record was not saved after (killed between the label and the store),
    // as the replay below would finish it. The label's generation (kept with history) names the
    // image too: never reuse a generation a point already has.
    const made = pendingTxnOf(pair, label);
    if (made && made.seq <= label.journalSeq) revertFinished(pair, made);
    if (label.generation !== undefined) pair.generation = Math.max(pair.generation, label.generation);
    pair.pending = null;
  }
  const applied = lastAppliedSeq(pair, label);
  const txn = await readCommitted(region, applied + 1);
  const pendingTxn = pendingTxnOf(pair, label);
  if (txn) {
    await saveUndoOf(pair, io, txn, pendingTxn);
    await applyTransaction(io, txn);
    pair.journalSeq = txn.seq;
    if (pendingTxn?.seq === txn.seq) Object.assign(pair, finishedImage(pair, pendingTxn.image, pendingTxn.imageTimeMs), { imageLabel: pendingTxn.label ?? null });
    if (pendingTxn?.seq === txn.seq) revertFinished(pair, pendingTxn);
    if (pair.pending) pair.generation = Math.max(pair.generation, pair.pending.generation);
    pair.pending = null;
  } else {
    pair.journalSeq = applied;
    const damaged = await unverifiedCommit(region, applied + 1, pendingTxn?.seq ?? null);
    if (damaged) {
      // Maybe committed, so maybe partly applied, and damaged since: the image is a mix until the cut
      // it carried is written again, which only the pending cut can tell (else the drive alone can't).
      if (!pair.pending) throw damagedTransaction(pair.name, applied + 1, damaged);
      pair.image = 'partial';
    }
  }
  pair.pendingTxn = null;
  // A reader (status, diff) that finds nothing to finish writes nothing: the label already says it.
  if (!labelSays(label, pair)) updateLabel(io, pair);
  await s.store.putPair(pair);
  return txn !== null;
}

/** A revert makes a generation without a cut (its transaction names it), and holds the pair. */
function revertFinished(pair: PairRecord, made: NonNullable<PairRecord['pendingTxn']>): void {
  if (!made.revert) return;
  pair.generation = Math.max(pair.generation, made.revert.generation);
  pair.heldAfterRevert = { toGeneration: made.revert.toGeneration, atMs: Date.now() };
}

/** The restore point the pair's image is, before a transaction replaces it. */
export function pointOf(pair: PairRecord): PointMeta {
  return { generation: pair.generation, timeMs: pair.imageTimeMs, image: pair.image, label: pair.imageLabel ?? null };
}

/**
 * The undo of `txn` saved in the pair's history region (when it has one) before it is applied
 * (`made`: the pending transaction it is, which says whether it is a revert; `keep`: the pair's policy, a replay
 * keeps the defaults); drops remembered for status.
 */
export async function saveUndoOf(pair: PairRecord, drive: BlockIo, txn: CommittedTransaction, made = pair.pendingTxn, keep?: KeepPolicy,
  stream?: UndoStream): Promise<void> {
  const r = await undoBeforeApply(drive, pair, pair.id, txn, pointOf(pair), made?.seq === txn.seq ? made.revert : undefined, keep, stream);
  if (r && r.dropped.length > 0) pair.historyDropped = [...(pair.historyDropped ?? []), ...r.dropped].slice(-20);
}

/** Drops every restore point, durably, before the image is written in place (no undo is kept then). */
export function forgetPoints(pair: PairRecord, drive: BlockIo, reason: string): void {
  const region = historyRegionOf(drive, pair, pair.id);
  const gone = region ? dropAllPoints(region, reason) : [];
  if (gone.length > 0) pair.historyDropped = [...(pair.historyDropped ?? []), ...gone].slice(-20);
}

/** The image a generation made, for a pair record or a label: a point in time is also the last good one. */
export function finishedImage(was: { lastGoodTimeMs: number | null }, image: ImageState, imageTimeMs: number) {
  return { image, imageTimeMs, lastGoodTimeMs: image === 'point-in-time' ? imageTimeMs : was.lastGoodTimeMs };
}

/**
 * Opens the paired drive for writing and finishes what an interrupted sync
 * committed: what every writer does first.
 */
export async function openRecoveredDrive(s: Session, pair: PairRecord, range: RangeState | undefined): Promise<OpenDrive> {
  const drive = openPairedDrive(s, pair, range);
  try {
    await recoverJournal(s, pair, drive);
    return drive;
  } catch (err) {
    drive.release();
    throw err;
  }
}

/** Opens, recovers, releases: for readers of the image (status, diff, rollback). Whether a transaction was applied. */
export async function recoverPairedDrive(s: Session, pair: PairRecord, range: RangeState | undefined): Promise<boolean> {
  const drive = openPairedDrive(s, pair, range);
  try {
    return await recoverJournal(s, pair, drive);
  } finally {
    drive.release();
  }
}
