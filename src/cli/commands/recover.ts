// dpsr recover DRIVE: finishes, from the DPSR drive alone, a sync that was
// committed but not completely applied because the source (and the state
// directory with it) died meanwhile. Run from a rescue system before
// booting the drive; `dpsr status --drive DRIVE` says when it is needed.
import type { Settings } from '../../base/defaults.js';
import { openLocalDevice } from '../../io/local-device.js';
import { resolveBlockDevice } from '../../devices/devices.js';
import { applyFromDrive, committedOnDrive, imageAfter } from '../../drive/recovery.js';
import { DpsrError, RefusedError } from '../../base/errors.js';
import { noLabelReason, readLabel } from '../../drive/label.js';
import { mountsOf } from '../../devices/mounts.js';
import { withOwnerLock } from '../../restore/rollback.js';

export async function recoverCommand(opts: { drive: string; json: boolean }, settings: Settings, log: (s: string) => void): Promise<void> {
  const dev = resolveBlockDevice(opts.drive);
  const mounts = mountsOf(dev);
  if (mounts.length > 0) throw new RefusedError(`${opts.drive} is mounted on ${mounts.join(', ')}: a journal cannot be applied under a mount; nothing written`, 'EMOUNTED');
  await withOwnerLock(settings.ownerLockPath, async () => {
    const drive = openLocalDevice(dev.path, false);
    let label;
    let txn;
    try {
      label = readLabel(drive);
      if (!label) throw new DpsrError(noLabelReason(drive, opts.drive), 'ENOLABEL');
      txn = await committedOnDrive(drive, label);
      // Applied while `drive` is open: the transaction reads its journal entries through it.
      if (txn) await applyFromDrive(dev.path, label, txn);
    } finally {
      drive.close();
    }
    const after = txn ? imageAfter(label, txn) : label;
    const when = after.imageTimeMs ? new Date(after.imageTimeMs).toISOString() : 'unknown';
    if (opts.json) process.stdout.write(`${JSON.stringify({ drive: opts.drive, pair: label.pairName, applied: txn?.seq ?? null, image: after.image, imageTime: after.imageTimeMs ? when : null })}\n`);
    else log(txn
      ? `${opts.drive}: applied journal transaction ${txn.seq} of pair ${label.pairName}: the drive holds the ${after.image} image of ${when}`
      : `${opts.drive}: nothing to apply: the drive holds the ${after.image} image of ${when} (pair ${label.pairName})`);
  });
}
