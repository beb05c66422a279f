// Who a block device is, beyond its name: what later commands compare to be
// sure the device they open is still the one that was paired (DESIGN.md
// invariants 1 and 7). Device names and numbers are not identities: sdb can
// become sdc, and a loop number is reused by the next attach. Within one boot
// the disk sequence number tells a re-attach; across a reboot it always
// changes, so there the evidence is what survives one: size, path and device
// number, a WWID or serial, and for disks without one (virtio, many cloud
// disks) the UUIDs of the partition table and of what the device holds.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { bootId as currentBootId } from './boot-id.js';
import { formatDev, type BlockDevice } from './devices.js';

export interface DeviceIdentity {
  path: string;
  name: string;
  disk: string;
  major: number;
  minor: number;
  diskDev: number;
  isPartition: boolean;
  startSector: number;
  sizeSectors: number;
  logicalBlockBytes: number;
  /** /sys/block/DISK/diskseq: changes on every loop attach, media change and boot. */
  diskseq: number | null;
  /** /sys/block/DISK/wwid or device/wwid (WWN, EUI-64, NGUID...). */
  wwid: string | null;
  /** device/serial (NVMe controller, some SCSI), /sys/block/DISK/serial (virtio), or SCSI VPD page 0x80. */
  serial: string | null;
  /** /sys/block/loopN/loop/backing_file (may end in " (deleted)"). */
  loopBackingFile: string | null;
  /** "MAJ:MIN:INO" of the backing file, as the loop driver holds it: a re-created file of the same name differs. */
  loopBackingInode: string | null;
  /** /sys/block/loopN/loop/offset, bytes. */
  loopOffset: number | null;
  /** GPT/MBR partition entry UUID (blkid PART_ENTRY_UUID); null for a disk or without one. */
  partUuid: string | null;
  /** The boot this was read in (/proc/sys/kernel/random/boot_id): diskseq means something only within one. Absent in older records. */
  bootId?: string | null;
  /** A whole disk's partition table UUID (blkid PTUUID: GPT GUID or MBR disk id); null for a partition or without one. */
  ptUuid?: string | null;
  /** The UUID of the file system (or LVM, md, LUKS signature) on the device itself (blkid UUID), or null. */
  contentUuid?: string | null;
}

function readText(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
}

/** A non-empty, printable identifier, or null (absent, blank, or all zeros as some firmware reports). */
function cleanId(raw: string | null): string | null {
  if (raw === null) return null;
  const s = raw.replace(/[\x00-\x1f\x7f]/g, '').trim();
  if (s === '' || /^[0\s.:-]*$/.test(s)) return null;
  return s;
}

/** SCSI VPD page 0x80 (unit serial number): 4-byte header, then ASCII. */
function vpdSerial(file: string): string | null {
  try {
    const buf = fs.readFileSync(file);
    if (buf.length < 4 || buf[1] !== 0x80) return null;
    const len = buf.readUInt16BE(2);
    return cleanId(buf.subarray(4, 4 + len).toString('latin1'));
  } catch {
    return null;
  }
}

interface LoopInfo { backingFile: string | null; backingInode: string | null; offset: number | null }

/** The backing file's device and inode as the loop driver reports them (LOOP_GET_STATUS64, via losetup). */
function loopBackingInode(disk: string, backingFile: string | null): string | null {
  try {
    const out = execFileSync('losetup', ['--list', '--json', '-O', 'NAME,BACK-INO,BACK-MAJ:MIN', `/dev/${disk}`],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const dev = (JSON.parse(out) as { loopdevices?: Array<Record<string, unknown>> }).loopdevices?.[0];
    const ino = dev?.['back-ino'];
    const majMin = String(dev?.['back-maj:min'] ?? '').replace(/\s+/g, '');
    if (ino !== undefined && ino !== null && /^\d+:\d+$/.test(majMin)) return `${majMin}:${ino}`;
  } catch {
    // fall through: no /dev node, or an old losetup
  }
  // Without the driver's own answer, the file by name (not when the name no longer refers to it).
  if (backingFile === null || backingFile.endsWith(' (deleted)')) return null;
  try {
    const st = fs.statSync(backingFile, { bigint: true });
    const major = Number(((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn));
    const minor = Number((st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn));
    return `${major}:${minor}:${st.ino}`;
  } catch {
    return null;
  }
}

function loopInfo(disk: string, knownInode?: string | null): LoopInfo | null {
  const dir = `/sys/block/${disk}/loop`;
  if (!/^loop\d+$/.test(disk) || !fs.existsSync(dir)) return null;
  const backingFile = readText(path.join(dir, 'backing_file'));
  const offset = readText(path.join(dir, 'offset'));
  return {
    backingFile: backingFile === '' ? null : backingFile,
    backingInode: knownInode !== undefined ? knownInode : loopBackingInode(disk, backingFile),
    offset: offset === null ? null : Number(offset),
  };
}

/** blkid's low-level probe of the device (superblocks and partition table): KEY=value pairs, empty when nothing is found. */
function probeSignatures(dev: BlockDevice): Record<string, string> {
  try {
    const out = execFileSync('blkid', ['-p', '-o', 'export', dev.path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return Object.fromEntries(out.split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  } catch {
    return {}; // exit 2: nothing found (8: ambivalent signatures)
  }
}

/** Reads everything that tells this device apart from another (only reads: sysfs, losetup, blkid -p). */
/**
 * Who `dev` is now. `known` is the identity recorded for it: read in this
 * boot with the same disk sequence number (the same media, the same loop
 * attach), the fields only a probe tells (the UUIDs, compared across reboots;
 * the loop's backing inode, fixed for an attach) are taken from it instead
 * of running blkid and losetup, which cost about half a second per command.
 */
export function identify(dev: BlockDevice, known?: DeviceIdentity): DeviceIdentity {
  const sys = `/sys/block/${dev.disk}`;
  const seq = readText(path.join(sys, 'diskseq'));
  const diskseq = seq !== null && /^\d+$/.test(seq) ? Number(seq) : null;
  const bootId = currentBootId();
  const same = known !== undefined && diskseq !== null && known.diskseq === diskseq && bootId !== null && known.bootId === bootId &&
    known.disk === dev.disk && known.isPartition === dev.isPartition;
  const signatures = same ? {} : probeSignatures(dev);
  const wwid = cleanId(readText(path.join(sys, 'wwid'))) ?? cleanId(readText(path.join(sys, 'device/wwid')));
  const serial = cleanId(readText(path.join(sys, 'device/serial'))) ?? cleanId(readText(path.join(sys, 'serial'))) ??
    vpdSerial(path.join(sys, 'device/vpd_pg80'));
  const loop = loopInfo(dev.disk, same ? known.loopBackingInode : undefined);
  return {
    path: dev.path,
    name: dev.name,
    disk: dev.disk,
    major: dev.major,
    minor: dev.minor,
    diskDev: dev.diskDev,
    isPartition: dev.isPartition,
    startSector: dev.startSector,
    sizeSectors: dev.sizeSectors,
    logicalBlockBytes: dev.logicalBlockBytes,
    diskseq,
    wwid,
    serial,
    loopBackingFile: loop?.backingFile ?? null,
    loopBackingInode: loop?.backingInode ?? null,
    loopOffset: loop?.offset ?? null,
    partUuid: same ? known.partUuid : dev.isPartition ? cleanId(signatures.PART_ENTRY_UUID ?? null) : null,
    bootId,
    ptUuid: same ? known.ptUuid ?? null : dev.isPartition ? null : cleanId(signatures.PTUUID ?? null),
    contentUuid: same ? known.contentUuid ?? null : cleanId(signatures.UUID ?? null),
  };
}

/** Across a reboot: the content evidence of a disk that has no hardware or loop identity. */
function rebootChanges(recorded: DeviceIdentity, now: DeviceIdentity): string[] {
  if (hasHardwareIdentity(recorded) || recorded.loopBackingFile !== null) return [];
  const changes: string[] = [];
  const was = { ptUuid: recorded.ptUuid ?? null, contentUuid: recorded.contentUuid ?? null };
  if (was.ptUuid !== null && was.ptUuid !== (now.ptUuid ?? null)) {
    changes.push(`partition table UUID changed from ${show(was.ptUuid)} to ${show(now.ptUuid ?? null)} (since the last boot)`);
  }
  if (was.contentUuid !== null && was.contentUuid !== (now.contentUuid ?? null)) {
    changes.push(`file system UUID changed from ${show(was.contentUuid)} to ${show(now.contentUuid ?? null)} (since the last boot)`);
  }
  return changes;
}

/** What a DPSR drive's label records of its source: all there is when the state directory is gone. */
export type RecordedSource = Pick<DeviceIdentity, 'sizeSectors' | 'serial' | 'wwid' | 'loopBackingFile'>;

/**
 * Whether `now` is the source a label records: the same size and every
 * identity recorded (WWID, serial, loop file) the same; 'unproven' when none
 * was recorded (the kernel name is no identity). Each difference is listed.
 * The udev probe (probe/udev-probe.c, is_recorded_source) applies this rule
 * in C, falling back to the kernel name where it has nobody to ask;
 * tests/integration.test.ts pins the two to the same answers.
 */
export function matchRecordedSource(rec: RecordedSource, now: RecordedSource): { verdict: 'same' | 'differs' | 'unproven'; differences: string[] } {
  const differences: string[] = [];
  if (now.sizeSectors !== rec.sizeSectors) differences.push(`${now.sizeSectors} sectors, recorded ${rec.sizeSectors}`);
  if (rec.serial !== null && rec.serial !== now.serial) differences.push(`serial number ${show(now.serial)}, recorded ${show(rec.serial)}`);
  if (rec.wwid !== null && rec.wwid !== now.wwid) differences.push(`WWID ${show(now.wwid)}, recorded ${show(rec.wwid)}`);
  if (rec.loopBackingFile !== null && rec.loopBackingFile !== now.loopBackingFile) {
    differences.push(`loop file ${show(now.loopBackingFile)}, recorded ${show(rec.loopBackingFile)}`);
  }
  const verdict = differences.length > 0 ? 'differs' : rec.serial === null && rec.wwid === null && rec.loopBackingFile === null ? 'unproven' : 'same';
  return { verdict, differences };
}

/** Something recorded that tells the disk apart across a reboot: a WWID, a serial, a loop file, a partition or content UUID. */
function survivingIdentity(id: DeviceIdentity): boolean {
  return hasHardwareIdentity(id) || id.loopBackingFile !== null || id.partUuid !== null || (id.ptUuid ?? null) !== null || (id.contentUuid ?? null) !== null;
}

/** A WWN or serial number: an identity that survives a reboot and re-enumeration. */
export function hasHardwareIdentity(id: DeviceIdentity): boolean {
  return id.wwid !== null || id.serial !== null;
}

const show = (v: string | number | null) => (v === null ? 'none' : typeof v === 'string' ? `'${v}'` : String(v));

/**
 * Another device than the one recorded (not the same one re-attached or re-read):
 * its size, partition start, loop file or inode, WWID or serial number differ.
 */
export function isReplaced(recorded: DeviceIdentity, now: DeviceIdentity): boolean {
  return now.sizeSectors !== recorded.sizeSectors || now.startSector !== recorded.startSector ||
    now.loopBackingFile !== recorded.loopBackingFile || now.loopBackingInode !== recorded.loopBackingInode ||
    now.wwid !== recorded.wwid || now.serial !== recorded.serial;
}

/**
 * isReplaced, but for the loop file's inode: the same file seen through a file system mounted
 * again (FUSE, NFS) has another device number. For a DPSR drive, whose label proves it.
 */
export function isReplacedButForInode(recorded: DeviceIdentity, now: DeviceIdentity): boolean {
  return isReplaced(recorded, { ...now, loopBackingInode: recorded.loopBackingInode });
}

/** Both read in the same boot (older records, without a boot id, count as the same boot: the stricter check). */
function sameBoot(recorded: DeviceIdentity, now: DeviceIdentity): boolean {
  const a = recorded.bootId ?? null;
  const b = now.bootId ?? null;
  return a === null || b === null || a === b;
}

/**
 * What makes `now` not the device that was `recorded`, one human-readable item
 * each; empty when it is the same. A new path or kernel name alone is not a
 * change (nodes are renamed), but within a boot a new device number is:
 * tracking is by dev_t. Within a boot a new disk sequence number is a change
 * (re-attached, new media); across a reboot neither is, and a disk without a WWID, serial or
 * loop file must show the partition table or content UUID it had (when one
 * was recorded: a mkfs within the boot was tracked, but a device that came
 * back with other UUIDs may be another disk).
 */
export function identityChanges(recorded: DeviceIdentity, now: DeviceIdentity): string[] {
  const changes: string[] = [];
  const differ = <T>(a: T, b: T) => a !== b;
  const rebooted = !sameBoot(recorded, now);

  if (differ(recorded.sizeSectors, now.sizeSectors)) {
    changes.push(`size changed from ${recorded.sizeSectors} to ${now.sizeSectors} sectors`);
  }
  if (differ(recorded.isPartition, now.isPartition)) {
    changes.push(recorded.isPartition ? 'was a partition, is now a whole disk' : 'was a whole disk, is now a partition');
  } else if (differ(recorded.startSector, now.startSector)) {
    changes.push(`partition start moved from sector ${recorded.startSector} to ${now.startSector}`);
  }
  if (differ(recorded.logicalBlockBytes, now.logicalBlockBytes)) {
    changes.push(`logical sector size changed from ${recorded.logicalBlockBytes} to ${now.logicalBlockBytes} bytes`);
  }
  if (!rebooted && recorded.diskseq !== null && differ(recorded.diskseq, now.diskseq)) {
    changes.push(`disk sequence number changed from ${recorded.diskseq} to ${show(now.diskseq)} (re-attached, new media or reboot)`);
  }
  if (differ(recorded.wwid, now.wwid)) changes.push(`WWID changed from ${show(recorded.wwid)} to ${show(now.wwid)}`);
  if (differ(recorded.serial, now.serial)) changes.push(`serial number changed from ${show(recorded.serial)} to ${show(now.serial)}`);
  if (differ(recorded.loopBackingFile, now.loopBackingFile)) {
    changes.push(`loop backing file changed from ${show(recorded.loopBackingFile)} to ${show(now.loopBackingFile)}`);
  }
  if (recorded.loopBackingInode !== null && differ(recorded.loopBackingInode, now.loopBackingInode)) {
    changes.push(`loop backing file is another file (device:inode ${show(recorded.loopBackingInode)} now ${show(now.loopBackingInode)})`);
  }
  if (differ(recorded.loopOffset, now.loopOffset)) {
    changes.push(`loop offset changed from ${show(recorded.loopOffset)} to ${show(now.loopOffset)} bytes`);
  }
  if (recorded.partUuid !== null && differ(recorded.partUuid, now.partUuid)) {
    changes.push(`partition UUID changed from ${show(recorded.partUuid)} to ${show(now.partUuid)}`);
  }
  if (rebooted) changes.push(...rebootChanges(recorded, now));
  // Across a reboot device numbers are handed out afresh (probe order, a loop number) and tracking is
  // attached anew anyway: a new one is no change for a disk with an identity that survives a reboot.
  // A disk with none (no WWID, serial, loop file or UUID) has only its size, path and number to go by.
  if (rebooted && survivingIdentity(recorded)) return changes;
  if (differ(recorded.major, now.major) || differ(recorded.minor, now.minor)) {
    changes.push(`device number changed from ${recorded.major}:${recorded.minor} to ${now.major}:${now.minor}`);
  } else if (differ(recorded.diskDev, now.diskDev)) {
    changes.push(`disk device number changed from ${formatDev(recorded.diskDev)} to ${formatDev(now.diskDev)}`);
  }
  return changes;
}
