// The checks before a pair's whole image is written onto another disk than its source
// (dpsr restore NAME --whole --onto DEV: a new disk after the old one died, or the box with it):
// a block device nobody uses, that is no pair's source or DPSR drive, big enough for the image,
// with the source's sector size, and blank unless --force. Reads only.
import { type BlockDevice, devicesOverlap, resolveBlockDevice } from '../devices/devices.js';
import { systemDisks, whyInUse } from '../devices/in-use.js';
import { refuse } from '../base/errors.js';
import { formatBytes, SECTOR } from '../base/units.js';
import { signaturesOf } from '../drive/pair-checks.js';
import { isRemote } from '../drive/remote-drive.js';
import type { PairRecord } from '../state/records.js';

export interface OntoDisk {
  device: BlockDevice;
  warnings: string[];
}

const NOTHING = 'nothing written';

/** The device at `path` now, or null when it is not there (a source or drive away). */
function presentDevice(path: string): BlockDevice | null {
  try {
    return resolveBlockDevice(path);
  } catch {
    return null;
  }
}

/** Refuses a disk the image must not go onto; else the disk and what is worth saying about it. */
export function checkOntoDisk(pair: PairRecord, pairs: PairRecord[], devPath: string, force: boolean): OntoDisk {
  const dev = resolveBlockDevice(devPath);
  const D = dev.path;
  for (const p of pairs) {
    const source = presentDevice(p.source.path);
    if (source && devicesOverlap(dev, source)) {
      refuse(p.name === pair.name
        ? `the target disk ${D} is pair ${p.name}'s source: to write the image back onto it, leave out --onto (dpsr restore ${p.name} --whole); ${NOTHING}`
        : `the target disk ${D} is pair ${p.name}'s source: unpair it first, or choose another disk; ${NOTHING}`, 'EOVERLAP');
    }
    const drive = isRemote(p) ? null : presentDevice(p.drive.path);
    if (drive && devicesOverlap(dev, drive)) {
      refuse(p.name === pair.name
        ? `the target disk ${D} is pair ${p.name}'s DPSR drive, the image to restore: choose another disk; ${NOTHING}`
        : `the target disk ${D} is pair ${p.name}'s DPSR drive: unpair it first, or choose another disk; ${NOTHING}`, 'EOVERLAP');
    }
  }
  const used = whyInUse(dev);
  if (used) refuse(`the target disk ${D} is in use: ${used.what}; ${used.advice}; ${NOTHING}`, used.code);
  if (!dev.isPartition && systemDisks().has(dev.disk)) refuse(`the target disk ${D} is the disk the running system's / is on; ${NOTHING}`, 'ESYSDISK');
  const imageBytes = pair.dataSectors * SECTOR;
  if (dev.sizeSectors < pair.dataSectors) {
    refuse(`the target disk ${D} holds ${formatBytes(dev.sizeSectors * SECTOR)}, the image ${formatBytes(imageBytes)}: it is too small; ${NOTHING}`, 'ETOOSMALL');
  }
  if (dev.logicalBlockBytes !== pair.source.logicalBlockBytes) {
    refuse(`the target disk ${D} has ${dev.logicalBlockBytes}-byte sectors, the image ${pair.source.logicalBlockBytes}-byte: its file systems would not be readable there; ${NOTHING}`, 'ESECTORSIZE');
  }
  const warnings: string[] = [];
  const carried = signaturesOf(dev);
  if (carried.length > 0) {
    const what = carried.join(' and ');
    if (!force) refuse(`the target disk ${D} carries ${what}: the restore would overwrite it; check it is the right disk, then use --force; ${NOTHING}`, 'ESIGNATURE');
    warnings.push(`the target disk ${D} carries ${what}: it will be overwritten (--force)`);
  }
  if (dev.sizeSectors > pair.dataSectors) {
    warnings.push(`the target disk ${D} is ${formatBytes((dev.sizeSectors - pair.dataSectors) * SECTOR)} larger than the image: the rest is left as it is (a GPT's backup header is not moved to the end)`);
  }
  if (presentDevice(pair.source.path)) {
    warnings.push(`the target disk ${D} gets the partition and file-system UUIDs of the source ${pair.source.path}, which is here: do not mount the two side by side`);
  }
  return { device: dev, warnings };
}
