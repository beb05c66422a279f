// Block devices as the kernel sees them: identity from sysfs (disk or
// partition, range on the disk, kernel dev_t), the checks tracking needs,
// and the kernel's own write accounting.
import fs from 'node:fs';
import path from 'node:path';
import { RefusedError } from '../base/errors.js';

export interface BlockDevice {
  path: string; // as given
  name: string; // kernel name: loop0, loop0p1, sda2
  major: number;
  minor: number;
  disk: string; // the whole disk's kernel name (itself for a disk)
  diskDev: number; // the disk's dev_t, kernel encoding (major << 20 | minor)
  isPartition: boolean;
  startSector: number; // on the disk; 0 for a disk
  sizeSectors: number; // 512-byte sectors
  logicalBlockBytes: number;
}

/** The kernel's dev_t encoding (include/linux/kdev_t.h), not glibc's st_rdev. */
export function kernelDev(major: number, minor: number): number {
  return ((major << 20) | minor) >>> 0;
}

export function formatDev(dev: number): string {
  return `${dev >>> 20}:${dev & 0xfffff}`;
}

const readSys = (file: string) => fs.readFileSync(file, 'utf8').trim();

/** A sysfs attribute, or null where the file does not exist. */
export function readSysOrNull(file: string): string | null {
  try {
    return readSys(file);
  } catch {
    return null;
  }
}

/** "major:minor", as sysfs and /proc/self/mountinfo write it. */
export const devNumber = (dev: BlockDevice) => `${dev.major}:${dev.minor}`;

/** Whether two devices share a sector of one disk (a disk and its partition, or two partitions that overlap). */
export function devicesOverlap(a: BlockDevice, b: BlockDevice): boolean {
  return a.diskDev === b.diskDev && a.startSector < b.startSector + b.sizeSectors && b.startSector < a.startSector + a.sizeSectors;
}

/** st_rdev (or st_dev) in glibc's encoding (sys/sysmacros.h gnu_dev_major/minor). */
export function splitRdev(rdev: bigint): { major: number; minor: number } {
  return { major: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)), minor: Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)) };
}

/** "major:minor" of a block device node, or null when it is none (or missing). */
export function devNumberOfNode(file: string): string | null {
  try {
    const st = fs.statSync(file, { bigint: true });
    if (!st.isBlockDevice()) return null;
    const { major, minor } = splitRdev(st.rdev);
    return `${major}:${minor}`;
  } catch {
    return null;
  }
}

/** Resolves a device node to its identity; refuses what is not a block device. */
export function resolveBlockDevice(devPath: string): BlockDevice {
  let st: fs.BigIntStats;
  try {
    st = fs.statSync(devPath, { bigint: true });
  } catch (err) {
    throw new RefusedError(`${devPath}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such device' : (err as Error).message}`, 'ENODEV');
  }
  if (!st.isBlockDevice()) throw new RefusedError(`${devPath}: not a block device`, 'ENOTBLK');
  const { major, minor } = splitRdev(st.rdev);
  const sysDir = fs.realpathSync(`/sys/dev/block/${major}:${minor}`);
  const name = path.basename(sysDir);
  const isPartition = fs.existsSync(path.join(sysDir, 'partition'));
  const diskDir = isPartition ? path.dirname(sysDir) : sysDir;
  const disk = path.basename(diskDir);
  const [dMajor, dMinor] = readSys(path.join(diskDir, 'dev')).split(':').map(Number);
  const sizeSectors = Number(readSys(path.join(sysDir, 'size')));
  // A detached loop device or an emptied drive keeps its node: say it went, not that it shrank.
  if (sizeSectors === 0) throw new RefusedError(`${devPath}: no medium (the device went away: detached, unplugged or its server gone)`, 'ENODEV');
  return {
    path: devPath,
    name,
    major,
    minor,
    disk,
    diskDev: kernelDev(dMajor, dMinor),
    isPartition,
    startSector: isPartition ? Number(readSys(path.join(sysDir, 'start'))) : 0,
    sizeSectors,
    logicalBlockBytes: Number(readSys(path.join(diskDir, 'queue/logical_block_size'))),
  };
}

/**
 * Refuses a device whose writes the programs cannot see or count: bio-based
 * devices (dm, md, zram) never pass through blk-mq requests, and without
 * iostats the kernel keeps no counts to reconcile against.
 */
export function checkTrackable(dev: BlockDevice): void {
  const q = `/sys/block/${dev.disk}`;
  if (!fs.existsSync(path.join(q, 'mq'))) {
    throw new RefusedError(`${dev.path}: ${dev.disk} is a bio-based device (dm, md, zram, ...): its writes bypass the block layer's requests that dpsr tracks; use the underlying disk`, 'EBIOBASED');
  }
  const iostats = path.join(q, 'queue/iostats');
  if (fs.existsSync(iostats) && readSys(iostats) !== '1') {
    throw new RefusedError(`${dev.path}: I/O accounting is off, so writes cannot be reconciled: echo 1 > ${iostats}`, 'EIOSTATS');
  }
}

/** The kernel's cumulative write accounting of a whole disk (sectors written + discarded). */
export interface DiskCounters {
  writtenSectors: number;
  inFlightWrites: number;
}

export function readDiskCounters(disk: string): DiskCounters {
  const f = readSys(`/sys/block/${disk}/stat`).split(/\s+/).map(Number);
  // Documentation/block/stat.rst: 6 write sectors, 13 discard sectors (4.18+).
  const writtenSectors = f[6] + (f.length > 13 ? f[13] : 0);
  const [, writes] = readSys(`/sys/block/${disk}/inflight`).split(/\s+/).map(Number);
  return { writtenSectors, inFlightWrites: writes };
}
