// Everything `dpsr pair` checks before it writes a single byte: that the two
// devices are different, that the DPSR drive is not in use, not the running
// system's disk, big enough, and holds nothing the user may still want
// (DESIGN.md invariant 7: bad input changes nothing). Only reads: sysfs,
// /proc, an exclusive open that is closed at once, blkid -p and wipefs -n.
import { execFileSync } from 'node:child_process';
import { systemDisks, underlyingDisks, whyInUse } from '../devices/in-use.js';
import { checkTrackable, devNumber, devicesOverlap, readSysOrNull, resolveBlockDevice, type BlockDevice } from '../devices/devices.js';
import { UsageError, refuse } from '../base/errors.js';
import { hasHardwareIdentity, identify, type DeviceIdentity } from '../devices/identity.js';
import { labelAt } from './label.js';
import { MIN_HISTORY_BYTES } from './history-region.js';
import { RECORD_AREA_BYTES, recordPlace } from './shutdown-record.js';
import { partitionsOf } from '../devices/mounts.js';
import { SECTOR, formatBytes } from '../base/units.js';

export interface PairRequest {
  source: string;
  drive: string;
  force: boolean; // overwrite a drive that carries a file system, partition table or other signature
  noReserve: boolean; // no tail for dpsr's label and journal: the drive may be exactly the source's size
  reserveBytes: number; // size of that tail (rounded up to 1 MiB)
  /** Room for restore points before the journal (rounded down to 1 MiB), 'all' the spare space beyond the reserve, 0 none. */
  historyBytes?: number | 'all';
}

export interface PairPlan {
  source: BlockDevice;
  drive: Pick<BlockDevice, 'path'>;
  sourceId: DeviceIdentity;
  driveId: DeviceIdentity;
  /** The copy occupies [0, dataSectors) of the drive: the whole source, or a former DPSR drive's image. */
  dataSectors: number;
  /** The tail after the copy for dpsr's label and journal (0 with noReserve), a multiple of 1 MiB. */
  reservedSectors: number;
  /** The history region's size (restore points), a multiple of 1 MiB; 0: none. */
  historySectors: number;
  warnings: string[];
}

const MIB = 1024 * 1024;




/** One blkid/wipefs signature, described for a person. */
interface Signature { type: string; label?: string; usage?: string; isTable: boolean }

function describeSignature(s: Signature): string {
  const label = s.label ? ` (label '${s.label}')` : '';
  if (s.isTable) return `a ${s.type === 'dos' ? 'dos (MBR)' : s.type} partition table`;
  switch (s.type) {
    case 'swap': return `a swap area${label}`;
    case 'LVM2_member': return 'an LVM2 physical volume';
    case 'linux_raid_member': return `an md RAID member${label}`;
    case 'crypto_LUKS': return `a LUKS encrypted volume${label}`;
    case 'bcache': return 'a bcache device';
    case 'zfs_member': return `a ZFS pool member${label}`;
  }
  const article = /^[aeiouAEIOU]/.test(s.type) || /^(ext|xfs|ntfs|exfat|f2fs)/.test(s.type) ? 'an' : 'a';
  if (s.usage === 'filesystem' || s.usage === undefined) return `${article} ${s.type} file system${label}`;
  return `${article} ${s.type} signature${label}`;
}

interface Probe { sigs: Signature[]; ok: boolean }

/** blkid -p (low-level probe, no cache) of a device, or of a byte range of it. */
function blkidProbe(devPath: string, range?: { offset: number; size: number }): Probe {
  const args = ['-p', '-o', 'export'];
  if (range) args.push('-O', String(range.offset), '-S', String(range.size));
  args.push(devPath);
  let out: string;
  try {
    out = execFileSync('blkid', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const status = (err as { status?: number }).status;
    if (status === 2) return { sigs: [], ok: true }; // nothing found
    return { sigs: [], ok: false }; // 8: ambivalent result; or blkid missing
  }
  const kv = new Map<string, string>();
  for (const line of out.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) kv.set(line.slice(0, i), line.slice(i + 1).replace(/\\(.)/g, '$1'));
  }
  const sigs: Signature[] = [];
  if (kv.has('PTTYPE')) sigs.push({ type: kv.get('PTTYPE')!, isTable: true });
  if (kv.has('TYPE')) sigs.push({ type: kv.get('TYPE')!, label: kv.get('LABEL'), usage: kv.get('USAGE'), isTable: false });
  return { sigs, ok: true };
}

/** wipefs -n -J: every signature wipefs would erase (finds what blkid calls ambivalent, and backup GPTs). */
function wipefsProbe(devPath: string): Signature[] | null {
  let out: string;
  try {
    out = execFileSync('wipefs', ['-n', '-J', devPath], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return null;
  }
  if (!out.trim()) return [];
  const doc = JSON.parse(out) as { signatures?: Array<{ type?: string; label?: string | null }> };
  const tables = new Set(['gpt', 'dos', 'PMBR', 'atari', 'bsd', 'mac', 'sgi', 'sun', 'solaris', 'unixware', 'minix']);
  return (doc.signatures ?? []).filter((s) => s.type).map((s) => ({
    type: s.type === 'PMBR' ? 'gpt' : s.type!,
    label: s.label ?? undefined,
    isTable: tables.has(s.type!),
  }));
}

/** What a device carries, described; empty when blank as far as blkid and wipefs can tell. */
export function signaturesOf(dev: BlockDevice): string[] {
  const probe = blkidProbe(dev.path);
  let sigs = probe.sigs;
  const wipe = wipefsProbe(dev.path);
  if (wipe) for (const w of wipe) {
    if (!sigs.some((s) => s.type === w.type && s.isTable === w.isTable)) sigs = [...sigs, w];
  }
  if (!probe.ok && sigs.length === 0) return ['signatures that blkid cannot tell apart (blkid -p reports an ambivalent result)'];
  const described = [...new Set(sigs.map(describeSignature))];
  // For a disk with partitions, say what they hold.
  if (!dev.isPartition && sigs.some((s) => s.isTable)) {
    const parts = partitionsOf(dev.disk).map((p) => {
      const start = Number(readSysOrNull(`/sys/block/${dev.disk}/${p}/start`));
      const size = Number(readSysOrNull(`/sys/block/${dev.disk}/${p}/size`));
      const inner = blkidProbe(dev.path, { offset: start * SECTOR, size: size * SECTOR }).sigs.filter((s) => !s.isTable);
      return inner.length > 0 ? `${p}: ${inner.map(describeSignature).join(', ')}` : p;
    });
    if (parts.length > 0) {
      const i = described.findIndex((d) => d.endsWith('partition table'));
      described[i] += ` with ${parts.length} partition${parts.length > 1 ? 's' : ''} (${parts.join('; ')})`;
    }
  }
  return described;
}

/** Signature types the copy duplicates in a way the kernel or tools may assemble: type → why it matters. */
const DUPLICATED_IDENTITIES: Record<string, string> = {
  LVM2_member: 'an LVM2 physical volume: the copy has the same PV and VG UUIDs, and LVM may activate the copy instead of the source',
  linux_raid_member: 'an md RAID member: the copy has the same array UUID, and md may assemble the copy into the array',
  btrfs: 'a btrfs file system: the copy has the same fsid, and btrfs may mix up the two devices',
  crypto_LUKS: 'a LUKS volume: the copy has the same UUID, and may be unlocked instead of the source',
};

function sourceWarnings(source: BlockDevice): string[] {
  const found: Array<{ where: string; type: string }> = [];
  for (const s of blkidProbe(source.path).sigs) if (!s.isTable) found.push({ where: source.path, type: s.type });
  if (!source.isPartition) {
    for (const p of partitionsOf(source.disk)) {
      const start = Number(readSysOrNull(`/sys/block/${source.disk}/${p}/start`));
      const size = Number(readSysOrNull(`/sys/block/${source.disk}/${p}/size`));
      for (const s of blkidProbe(source.path, { offset: start * SECTOR, size: size * SECTOR }).sigs) {
        if (!s.isTable) found.push({ where: `${source.path} (partition ${p})`, type: s.type });
      }
    }
  }
  return found.filter((f) => f.type in DUPLICATED_IDENTITIES).map((f) =>
    `${f.where} holds ${DUPLICATED_IDENTITIES[f.type]}; dpsr hides the DPSR drive while the source is present, but do not attach the copy to another machine alongside the source`);
}


/** The history region a request asks for, in sectors (whole MiB); refused when there is no room for one. */
function historySectorsFor(req: PairRequest, driveSectors: number, dataSectors: number, reservedSectors: number): number {
  const asked = req.historyBytes ?? 0;
  if (asked === 0) return 0;
  if (req.noReserve) throw new UsageError('--history needs a reserved tail (it lives there beside the journal and the label): drop --no-reserve');
  const mib = MIB / SECTOR;
  const spare = Math.floor((driveSectors - Math.ceil(dataSectors / 8) * 8 - reservedSectors) / mib) * mib;
  const sectors = asked === 'all' ? spare : Math.floor(asked / MIB) * mib;
  if (sectors * SECTOR < MIN_HISTORY_BYTES) {
    refuse(asked === 'all'
      ? `--history all: the DPSR drive ${req.drive} has ${formatBytes(Math.max(0, spare) * SECTOR)} beyond the source and the ${formatBytes(reservedSectors * SECTOR)} reserve; restore points need at least ${formatBytes(MIN_HISTORY_BYTES)}`
      : `--history ${formatBytes(asked)}: restore points need at least ${formatBytes(MIN_HISTORY_BYTES)}`, 'ETOOSMALL');
  }
  return sectors;
}

/** Checks a pairing request; returns the plan, or throws RefusedError on the first problem. Writes nothing. */
export function checkPairable(req: PairRequest): PairPlan {
  if (!req.noReserve && !(Number.isFinite(req.reserveBytes) && req.reserveBytes > 0)) {
    throw new UsageError(`reserve size must be a positive number of bytes (got ${req.reserveBytes}); use --no-reserve for none`);
  }
  const source = resolveBlockDevice(req.source);
  const drive = resolveBlockDevice(req.drive);
  const S = source.path;
  const D = drive.path;

  // 1. Two different devices that do not overlap.
  if (devNumber(source) === devNumber(drive)) {
    refuse(`${S} and ${D} are the same device (${source.name}): the DPSR drive must be another disk`, 'ESAMEDEV');
  }
  if (devicesOverlap(source, drive)) {
    const which = !source.isPartition ? `${D} is a partition of the source disk ${S}`
      : !drive.isPartition ? `the source ${S} is a partition of ${D}` : `${S} and ${D} overlap on ${source.disk}`;
    refuse(`${which}: the DPSR drive must not overlap the source; use another disk`, 'EOVERLAP');
  }
  const driveDisks = underlyingDisks(drive.name);
  if (driveDisks.has(source.disk) && source.disk !== drive.disk) {
    refuse(`${D} is built on the source's disk ${source.disk} (${drive.disk} stacks on it): use another disk`, 'EOVERLAP');
  }

  // 2. A source whose writes can be tracked and counted.
  checkTrackable(source);

  // 3. A DPSR drive nobody uses.
  const sysDisks = systemDisks();
  for (const d of driveDisks) {
    if (sysDisks.has(d)) {
      const where = d === drive.name ? 'is' : d === drive.disk ? `is on ${d},` : `is built on ${d},`;
      refuse(`${D} ${where} the disk the running system's / is mounted from: it cannot be the DPSR drive`, 'ESYSDISK');
    }
  }
  const used = whyInUse(drive);
  if (used) refuse(`the DPSR drive ${D} is in use: ${used.what}; ${used.advice}`, used.code);

  // 4. Same sector size: a copy's file systems and partition table are laid out in the source's sectors.
  if (source.logicalBlockBytes !== drive.logicalBlockBytes) {
    refuse(`the logical sector sizes differ: ${S} has ${source.logicalBlockBytes}-byte sectors, ${D} ${drive.logicalBlockBytes}-byte: the copy would not be readable; use a drive with ${source.logicalBlockBytes}-byte sectors`, 'ESECTORSIZE');
  }

  // 5. Big enough: the copy, then dpsr's tail.
  const sourceId = identify(source);
  const driveId = identify(drive);
  const { dataSectors, reservedSectors, historySectors } = checkSizes(req, source, D, drive.sizeSectors,
    hasHardwareIdentity(driveId) ? null : `has no WWN or serial number${/^loop\d+$/.test(drive.disk) ? ' (loop devices have none)' : ''}`);

  // 6. Nothing on the drive that someone may still want, unless told to overwrite it.
  const warnings: string[] = [];
  const carried = signaturesOf(drive);
  if (carried.length > 0) {
    const what = carried.join(' and ');
    if (!req.force) {
      refuse(`the DPSR drive ${D} carries ${what}: pairing would overwrite it; check it is the right drive, then use --force`, 'ESIGNATURE');
    }
    warnings.push(`the DPSR drive ${D} carries ${what}: it will be overwritten (--force)`);
  }

  // 7. Warnings: nothing unsafe now, but worth knowing.
  const sameDisk = source.diskDev === drive.diskDev ? `${S} and ${D} are on the same disk ${source.disk}: if that disk fails, the copy is lost with it` : null;
  warnings.push(...commonWarnings(req, source, D, drive.sizeSectors, { dataSectors, reservedSectors, historySectors }, sameDisk));
  return { source, drive, sourceId, driveId, dataSectors, reservedSectors, historySectors, warnings };
}

/**
 * The image's size (the whole source, or a former DPSR drive's image), the
 * reserve and the history region on a drive of `driveSectors`; refuses a drive
 * too small. `noIdentity` says why a drive exactly the source's size could not
 * be recognised later without a label (null: it has a hardware identity).
 */
export function checkSizes(req: PairRequest, source: BlockDevice, D: string, driveSectors: number, noIdentity: string | null): { dataSectors: number; reservedSectors: number; historySectors: number } {
  const S = source.path;
  const drive = { sizeSectors: driveSectors };
  // A source that is itself a DPSR drive (a system running from its copy, paired back onto a new disk):
  // its image is what is copied, not its tail of journal and label, so a disk of the original size will do.
  const asDrive = labelAt(S);
  const dataSectors = asDrive && asDrive.dataSectors < source.sizeSectors ? asDrive.dataSectors : source.sizeSectors;
  const reservedSectors = req.noReserve ? 0 : Math.ceil(req.reserveBytes / MIB) * (MIB / SECTOR);
  const historySectors = historySectorsFor(req, drive.sizeSectors, dataSectors, reservedSectors);
  const needed = dataSectors + reservedSectors + historySectors;
  const srcSize = formatBytes(dataSectors * SECTOR);
  const drvSize = formatBytes(drive.sizeSectors * SECTOR);
  if (drive.sizeSectors < dataSectors) {
    refuse(`the DPSR drive ${D} (${drvSize}) is smaller than the source ${S} (${srcSize}): ${formatBytes((needed - drive.sizeSectors) * SECTOR)} short${req.noReserve ? '' : ` with the ${formatBytes(reservedSectors * SECTOR)} reserve`}; use a bigger drive`, 'ETOOSMALL');
  }
  if (drive.sizeSectors === dataSectors) {
    if (!req.noReserve) {
      refuse(`the DPSR drive ${D} is exactly the size of the source ${S} (${srcSize}): it needs ${formatBytes(reservedSectors * SECTOR)} more for dpsr's label and journal; use a bigger drive, or --no-reserve if it has a WWN or serial number`, 'ETOOSMALL');
    }
    if (noIdentity !== null) {
      refuse(`the DPSR drive ${D} is exactly the size of the source ${S} and ${noIdentity}: with --no-reserve there is no room for dpsr's label, so nothing could prove later that it is still the paired drive; use a drive at least 1 MiB bigger without --no-reserve`, 'ENOIDENTITY');
    }
  } else if (drive.sizeSectors < needed) {
    refuse(`the DPSR drive ${D} (${drvSize}) is too small for the source ${S} (${srcSize}) plus the ${formatBytes(reservedSectors * SECTOR)} reserve for dpsr's label and journal${historySectors ? ` and the ${formatBytes(historySectors * SECTOR)} of history` : ''}: ${formatBytes((needed - drive.sizeSectors) * SECTOR)} short; use a bigger drive or a smaller reserve${historySectors ? ' or history' : ''}`, 'ETOOSMALL');
  }
  return { dataSectors, reservedSectors, historySectors };
}

/** What is worth knowing about any pairing of `source`: nothing unsafe now. */
export function commonWarnings(req: PairRequest, source: BlockDevice, D: string, driveSectors: number,
  sizes: { dataSectors: number; reservedSectors: number; historySectors: number }, sameDisk: string | null = null): string[] {
  const S = source.path;
  const { dataSectors } = sizes;
  const warnings: string[] = [];
  if (source.isPartition) {
    warnings.push(`the source ${S} is a partition of ${source.disk}: its copy alone does not boot the machine (the boot loader and partition table stay on ${source.disk}); pair the whole disk for a bootable copy`);
  }
  if (sameDisk) warnings.push(sameDisk);
  if (req.noReserve) {
    warnings.push(`--no-reserve: the DPSR drive ${D} has no journal, so a crash during a sync can leave it a mix of two images, and no room for a shutdown record, so every reboot compares the whole source`);
  } else if (recordPlace(driveSectors * SECTOR, sizes) === null) {
    warnings.push(`the DPSR drive ${D} has no room in its tail for a shutdown record (${formatBytes(RECORD_AREA_BYTES)} beside the label): every reboot compares the whole source`);
  }
  warnings.push(...sourceWarnings(source));

  if (dataSectors < source.sizeSectors) {
    warnings.push(`${S} is the DPSR drive of pair ${labelAt(S)?.pairName}: only its image (the first ${formatBytes(dataSectors * SECTOR)}) is copied, not dpsr's tail after it`);
  }
  return warnings;
}
