// The redo journal read from the DPSR drive alone, for when the state
// directory died with the source (a rescue system, the booted copy): a
// transaction committed but not recorded as applied in the drive's label is
// the sync that was landing when the source died. Applying it needs only
// the drive (invariant 5); until then the image on the drive is a mix.
import type { BlockIo } from '../io/block-io.js';
import { openLocalDevice } from '../io/local-device.js';
import { type CommittedTransaction, applyTransaction, damagedTransaction, readCommitted, unverifiedCommit } from './journal.js';
import { type DriveLabel, writeLabel } from './label.js';
import { finishedImage, journalRegionOf } from './paired-drive.js';
import { undoBeforeApply } from './history-region.js';

/**
 * The committed transaction after the one the label records as applied, if any. One that may
 * have been committed but no longer verifies (damaged after its commit) throws ENOTUSABLE: it
 * may have been partly applied, so the image may be a mix that nothing on the drive can finish.
 */
export async function committedOnDrive(drive: BlockIo, label: DriveLabel): Promise<CommittedTransaction | null> {
  if (label.journal !== 'tail') return null;
  const region = journalRegionOf(drive, label, label.pairId);
  if (!region) return null;
  const seq = label.journalSeq + 1;
  const txn = await readCommitted(region, seq);
  const damaged = txn ? null : await unverifiedCommit(region, seq, label.pendingTxn?.seq ?? null);
  if (damaged) throw damagedTransaction(label.pairName, seq, damaged);
  return txn;
}

/** What the drive's image is once `txn` is applied (the label named it before the commit). */
export function imageAfter(label: DriveLabel, txn: CommittedTransaction): Pick<DriveLabel, 'image' | 'imageTimeMs' | 'lastGoodTimeMs'> {
  const made = label.pendingTxn?.seq === txn.seq ? label.pendingTxn : null;
  if (!made) return { image: label.image, imageTimeMs: label.imageTimeMs, lastGoodTimeMs: label.lastGoodTimeMs };
  return finishedImage(label, made.image, made.imageTimeMs);
}

/** Applies a committed transaction from the drive alone and records it in the label (as recoverJournal does with a pair record). */
export async function applyFromDrive(drivePath: string, label: DriveLabel, txn: CommittedTransaction): Promise<void> {
  const drive = openLocalDevice(drivePath, true);
  try {
    drive.setReadOnly(false);
    try {
      const made = label.pendingTxn?.seq === txn.seq ? label.pendingTxn : null;
      await undoBeforeApply(drive, label, label.pairId, txn,
        { generation: label.generation ?? 0, timeMs: label.imageTimeMs, image: label.image, label: label.imageLabel ?? null }, made?.revert);
      await applyTransaction(drive, txn);
      const { seq, updatedMs: _updated, ...rest } = label;
      const next = made && label.generation !== undefined ? { generation: made.revert?.generation ?? label.generation + 1, imageLabel: made.label ?? null } : {};
      writeLabel(drive, { ...rest, ...imageAfter(label, txn), ...next, journalSeq: txn.seq, pendingTxn: null }, seq);
    } finally {
      drive.setReadOnly(true);
    }
  } finally {
    drive.close();
  }
}
