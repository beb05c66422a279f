// What is mounted from a block device: the device itself, its partitions
// (for a disk) and its disk (for a partition, which the disk overlaps).
import fs from 'node:fs';
import path from 'node:path';
import { type BlockDevice, devNumber, devNumberOfNode, readSysOrNull, splitRdev } from './devices.js';
import { DpsrError } from '../base/errors.js';


/** Kernel names of the disk's partitions (/sys/block/DISK/DISKpN). */
export function partitionsOf(disk: string): string[] {
  const dir = `/sys/block/${disk}`;
  try {
    return fs.readdirSync(dir).filter((e) => fs.existsSync(path.join(dir, e, 'partition'))).sort();
  } catch {
    return [];
  }
}

/**
 * The device numbers of everything the drive is made of, seen from its
 * users: the device itself, its partitions (for a disk) and its disk (for a
 * partition, which the disk overlaps).
 */
export function coveredDevNumbers(dev: BlockDevice): Map<string, string> {
  const nums = new Map<string, string>([[devNumber(dev), dev.name]]);
  if (dev.isPartition) {
    const d = readSysOrNull(`/sys/block/${dev.disk}/dev`);
    if (d) nums.set(d, dev.disk);
  } else {
    for (const p of partitionsOf(dev.disk)) {
      const d = readSysOrNull(`/sys/block/${dev.disk}/${p}/dev`);
      if (d) nums.set(d, p);
    }
  }
  return nums;
}

export interface MountEntry {
  devNum: string;
  mountPoint: string;
  root: string; // the directory of the file system that is mounted (not '/' for a bind of a subdirectory)
  source: string;
  fsType: string;
  readOnly: boolean; // this mount point is read-only (a read-only bind, ProtectSystem=strict's view)
  superReadOnly: boolean; // the file system itself is read-only: nothing can write to it through any mount
  hostOnly?: boolean; // seen only in the host's mount namespace, not in dpsr's
}

export const unescapeMount = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The mounts of this process's mount namespace, or of another process's (`pid`). */
export function readMounts(pid: number | 'self' = 'self'): MountEntry[] {
  const text = fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-');
    if (f.length < 5 || sep < 0) continue;
    out.push({
      devNum: f[2], mountPoint: unescapeMount(f[4]), root: unescapeMount(f[3]), source: unescapeMount(f[sep + 2] ?? ''), fsType: f[sep + 1] ?? '',
      readOnly: f[5].split(',').includes('ro'),
      superReadOnly: (f[sep + 3] ?? '').split(',').includes('ro'),
    });
  }
  return out;
}

/**
 * The host's mounts of these device numbers (the init process's mount
 * namespace), none when they cannot be read. dpsr may run in a namespace of
 * its own (a systemd unit's sandbox, a container) where some are missing.
 */
function hostMountsOf(nums: Map<string, string>): MountEntry[] {
  try {
    return readMounts(1).filter((m) => nums.has(m.devNum));
  } catch {
    return [];
  }
}

/**
 * Mounts whose source overlaps the device: those of this namespace, then
 * those only the host's namespace has (file systems mounted where dpsr
 * cannot see them are still mounted).
 */
export function mountEntriesOf(dev: BlockDevice): MountEntry[] {
  const nums = coveredDevNumbers(dev);
  const here = readMounts().filter((m) => nums.has(m.devNum));
  const seen = new Set(here.map((m) => m.devNum));
  const hostOnly = hostMountsOf(nums).filter((m) => !seen.has(m.devNum));
  return [...here, ...hostOnly.map((m) => ({ ...m, hostOnly: true }))];
}

/** A file system on the device that can be written (its superblock is read-write), and where dpsr reaches it. */
export interface WritableFileSystem {
  devNum: string;
  fsType: string;
  /** A directory of it in dpsr's namespace: FIFREEZE and remount act on the superblock through any of its mounts. */
  path: string;
}

/** The kernel's "major:minor" of the file system a path is on (st_dev). */
function fsDevNumberOf(file: string): string | null {
  try {
    const { major, minor } = splitRdev(fs.statSync(file, { bigint: true }).dev);
    return `${major}:${minor}`;
  } catch {
    return null;
  }
}

/**
 * The writable file systems on the device, once each however often they are
 * mounted (bind mounts, a container's view, a unit's read-only view all
 * share one superblock), judged by the superblock, not by a mount point's
 * own read-only flag. Each comes with a path of it that dpsr can open: a
 * mount point not covered by another mount. A writable file system that
 * dpsr cannot reach from its namespace cannot be frozen: an error, since no
 * point in time could be claimed.
 */
export function writableFileSystemsOf(dev: BlockDevice): WritableFileSystem[] {
  const nums = coveredDevNumbers(dev);
  const entries = readMounts().filter((m) => nums.has(m.devNum) && !m.superReadOnly);
  const out = new Map<string, WritableFileSystem>();
  for (const m of entries) {
    if (out.has(m.devNum) || fsDevNumberOf(m.mountPoint) !== m.devNum) continue;
    out.set(m.devNum, { devNum: m.devNum, fsType: m.fsType, path: m.mountPoint });
  }
  const unreachable = [...entries, ...hostMountsOf(nums).filter((m) => !m.superReadOnly)]
    .filter((m) => !out.has(m.devNum));
  if (unreachable.length > 0) {
    const m = unreachable[0];
    throw new DpsrError(`the file system on ${nums.get(m.devNum)} (mounted on ${m.mountPoint}) is not reachable from dpsr's mount namespace, so it cannot be frozen; ` +
      'run dpsr in the host\'s mount namespace', 'EUNREACHABLE');
  }
  return [...out.values()];
}

/** Mount points whose source overlaps the device. */
export function mountsOf(dev: BlockDevice): string[] {
  return mountEntriesOf(dev).map((m) => m.mountPoint);
}

/** File systems without FIFREEZE: they are remounted read-only around a cut instead. */
export const CANNOT_FREEZE = new Set(['vfat', 'msdos', 'exfat', 'fat']);

/** The files and devices in use as swap (/proc/swaps). */
export function activeSwaps(): string[] {
  return (readSysOrNull('/proc/swaps') ?? '').split('\n').slice(1).filter(Boolean).map((l) => unescapeMount(l.split(/\s+/)[0]));
}

/** The kernel name of the block device the running system's / is on (the mount on top), or null when it is none. */
export function rootDeviceName(): string | null {
  const roots = readMounts().filter((m) => m.mountPoint === '/');
  const root = roots[roots.length - 1];
  if (!root) return null;
  let num = root.devNum;
  // btrfs and others report an anonymous 0:N: take the device the mount names.
  if (num.startsWith('0:') && root.source.startsWith('/dev/')) num = devNumberOfNode(root.source) ?? num;
  try {
    return path.basename(fs.realpathSync(`/sys/dev/block/${num}`));
  } catch {
    return null;
  }
}
