// What is mounted from a block device: the device itself, its partitions
// (for a disk) and its disk (for a partition, which the disk overlaps).
import fs from 'node:fs';
import path from 'node:path';
import { type BlockDevice, devNumber, devNumberOfNode, readSysOrNull } from './devices.js';


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
  readOnly: boolean;
}

export const unescapeMount = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

export function readMounts(): MountEntry[] {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const sep = f.indexOf('-');
    if (f.length < 5 || sep < 0) continue;
    out.push({
      devNum: f[2], mountPoint: unescapeMount(f[4]), root: unescapeMount(f[3]), source: unescapeMount(f[sep + 2] ?? ''), fsType: f[sep + 1] ?? '',
      readOnly: f[5].split(',').includes('ro'),
    });
  }
  return out;
}

/** Mounts whose source overlaps the device. */
export function mountEntriesOf(dev: BlockDevice): MountEntry[] {
  const nums = coveredDevNumbers(dev);
  return readMounts().filter((m) => nums.has(m.devNum));
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
