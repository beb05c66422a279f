// dpsr unpair NAME: stop tracking, make the drive writable again, remove its label.
import type { Settings } from '../../base/defaults.js';
import { DpsrError } from '../../base/errors.js';
import { driveNameOf, openDriveIo } from '../../drive/remote-drive.js';
import { eraseLabel, readLabel } from '../../drive/label.js';
import { closeSession } from '../../state/session.js';
import { openTrackingSession } from '../../drive/boot-adoption.js';

export async function unpairCommand(opts: { name: string }, settings: Settings, log: (s: string) => void): Promise<void> {
  const s = await openTrackingSession(settings);
  try {
    const pair = s.store.pair(opts.name);
    if (!pair) throw new DpsrError(`no pair named ${opts.name}`, 'ENOPAIR');
    const range = s.ranges.get(opts.name);
    if (range) s.tracker.untrack(range);
    s.ranges.delete(opts.name);
    s.problems.delete(opts.name);
    try {
      const drive = openDriveIo(pair, true);
      try {
        // Only the drive that carries this pair's label is touched.
        const label = pair.reservedSectors > 0 ? readLabel(drive) : null;
        if (pair.reservedSectors > 0 && label?.pairId !== pair.id) {
          log(`warning: ${driveNameOf(pair)} does not carry this pair's label; left as it is`);
        } else {
          drive.setReadOnly(false);
          if (label) eraseLabel(drive);
        }
      } finally {
        drive.close();
      }
    } catch (err) {
      log(`warning: could not clear ${driveNameOf(pair)} (${(err as Error).message}); its label may remain`);
    }
    await s.store.deletePair(opts.name);
    log(`unpaired ${opts.name}: tracking of ${pair.source.path} stopped; ${driveNameOf(pair)} is writable and unlabelled`);
  } finally {
    await closeSession(s);
  }
}
