// A DPSR drive on an NBD export (nbd://, nbds://, nbd+unix://): the pair
// checks that apply to it (writable, big enough, blank unless --force), its
// identity in the pair record (the URI and the export's size: there is no
// device number, serial or diskseq to prove more; the label does), and the
// one way every command opens a pair's drive, local or remote.
import { refuse } from '../base/errors.js';
import { SECTOR } from '../base/units.js';
import { checkTrackable, resolveBlockDevice } from '../devices/devices.js';
import { type DeviceIdentity, identify } from '../devices/identity.js';
import type { BlockIo } from '../io/block-io.js';
import { openLocalDevice } from '../io/local-device.js';
import { type NbdDevice, openNbdDevice } from '../io/nbd-device.js';
import { isNbdUri, redactUri } from '../io/nbd-uri.js';
import type { PairRecord } from '../state/records.js';
import { readLabel } from './label.js';
import { type PairPlan, type PairRequest, checkSizes, commonWarnings } from './pair-checks.js';

export { isNbdUri };

const PROBE_BYTES = 1 << 20;

/** Whether the pair's DPSR drive is an NBD export. */
export const isRemote = (pair: Pick<PairRecord, 'drive'>): boolean => isNbdUri(pair.drive.path);

/**
 * The DPSR drive as messages name it: an export by its URI (without the query's key files),
 * also while it is read through a local view (withDriveDevice keeps the record's name); a local
 * drive by its path.
 */
export const driveNameOf = (pair: { drive: Pick<PairRecord['drive'], 'path' | 'name' | 'disk'> }): string =>
  (pair.drive.disk === 'nbd' ? pair.drive.name : pair.drive.path);

/** Opens the pair's DPSR drive as it is recorded: a local device (O_DIRECT) or the NBD export. */
export function openDriveIo(pair: { drive: { path: string }; driveInsecure?: boolean }, write: boolean): BlockIo {
  return isNbdUri(pair.drive.path) ? openNbdDevice(pair.drive.path, { write, insecure: pair.driveInsecure }) : openLocalDevice(pair.drive.path, write);
}

/** What the pair record keeps of an export: its URI and size; none of a local device's identifiers. */
export function remoteIdentity(uri: string, sizeBytes: number): DeviceIdentity {
  return {
    path: uri, name: redactUri(uri), disk: 'nbd', major: 0, minor: 0, diskDev: -1, isPartition: false, startSector: 0,
    sizeSectors: Math.floor(sizeBytes / SECTOR), logicalBlockBytes: SECTOR, diskseq: null, wwid: null, serial: null,
    loopBackingFile: null, loopBackingInode: null, loopOffset: null, partUuid: null,
  };
}

/** dpsr pair's checks for a drive on an NBD export; connects, reads, writes nothing. */
export function checkRemotePairable(req: PairRequest & { insecure?: boolean }): PairPlan {
  const source = resolveBlockDevice(req.source);
  checkTrackable(source);
  const sourceId = identify(source);
  const D = redactUri(req.drive);
  const drive = openNbdDevice(req.drive, { write: true, insecure: req.insecure });
  try {
    const sizeBytes = drive.sizeBytes();
    const sizes = checkSizes(req, source, D, Math.floor(sizeBytes / SECTOR), 'an NBD export has no WWN or serial number');
    const warnings: string[] = [];
    const carried = whatItCarries(drive, sizeBytes);
    if (carried) {
      if (!req.force) refuse(`the DPSR drive ${D} carries ${carried}: pairing would overwrite it; check it is the right export, then use --force`, 'ESIGNATURE');
      warnings.push(`the DPSR drive ${D} carries ${carried}: it will be overwritten (--force)`);
    }
    warnings.push(...commonWarnings(req, source, D, Math.floor(sizeBytes / SECTOR), sizes));
    return { source, drive: { path: req.drive }, sourceId, driveId: remoteIdentity(req.drive, sizeBytes), ...sizes, warnings };
  } finally {
    drive.close();
  }
}

/** A dpsr label, or data in the first MiB (where partition tables and file-system headers live); null: blank. */
function whatItCarries(drive: NbdDevice, sizeBytes: number): string | null {
  const label = readLabel(drive);
  if (label) return `the label of dpsr pair ${label.pairName}`;
  const buf = Buffer.alloc(Math.min(PROBE_BYTES, sizeBytes));
  drive.readSync(buf, 0, buf.length, 0);
  return buf.some((b) => b !== 0) ? 'data in its first MiB (a partition table or file system, maybe)' : null;
}
