// Whether something on this machine uses a block device, so that writing it
// whole would pull the ground from under that user: one rule for the DPSR
// drive at pairing and for the target of a restore or rollback. Also which
// disks the running system lives on (through dm/md stacking).
import fs from 'node:fs';
import path from 'node:path';
import { type BlockDevice, devNumberOfNode } from './devices.js';
import { activeSwaps, coveredDevNumbers, mountEntriesOf, rootDeviceName } from './mounts.js';

/** Who uses a device, said for a person: "it is mounted on /mnt" and what to do about it. */
export interface InUse {
  code: 'EMOUNTED' | 'ESWAP' | 'EHELD' | 'EINUSE';
  what: string;
  advice: string;
}

/** sysfs directory of a kernel block device name (disk or partition). */
function sysDirOf(name: string): string | null {
  try {
    return fs.realpathSync(`/sys/class/block/${name}`);
  } catch {
    return null;
  }
}

function holdersOf(name: string): string[] {
  const dir = sysDirOf(name);
  try {
    return dir ? fs.readdirSync(path.join(dir, 'holders')) : [];
  } catch {
    return [];
  }
}

/**
 * The first user found of `dev`, its partitions or (for a partition) its
 * disk, in any mount namespace dpsr can see: a mount, active swap, a dm/md
 * holder, or anyone holding it open exclusively (a btrfs member, an md array
 * being assembled). Null: nobody. Opens the device for a moment; writes nothing.
 */
export function whyInUse(dev: BlockDevice): InUse | null {
  const covered = coveredDevNumbers(dev);
  const who = (name: string) => (name === dev.name ? 'it' : `its ${name === dev.disk ? 'disk' : 'partition'} ${name}`);
  const mount = mountEntriesOf(dev)[0];
  if (mount) return { code: 'EMOUNTED', what: `${who(covered.get(mount.devNum) ?? dev.name)} is mounted on ${mount.mountPoint}`, advice: 'unmount it first' };
  for (const file of activeSwaps()) {
    const num = devNumberOfNode(file);
    const name = num !== null ? covered.get(num) : undefined;
    if (name !== undefined) return { code: 'ESWAP', what: `${who(name)} is active swap (${file})`, advice: `swapoff ${file} first` };
  }
  for (const name of covered.values()) {
    const holders = holdersOf(name);
    if (holders.length > 0) {
      return { code: 'EHELD', what: `${who(name)} is held by ${holders.join(', ')} (device mapper, md, ...)`, advice: `stop ${holders.join(', ')} first` };
    }
  }
  try {
    fs.closeSync(fs.openSync(dev.path, fs.constants.O_RDONLY | fs.constants.O_EXCL));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EBUSY') throw err;
    return { code: 'EINUSE', what: 'an exclusive open failed (a mount, an md/dm member, or a program holding it)', advice: 'stop what uses it first' };
  }
  return null;
}

/** Whole disks under a kernel block device, through dm/md stacking (slaves/), itself included when it is a disk. */
export function underlyingDisks(name: string, seen = new Set<string>()): Set<string> {
  const dir = sysDirOf(name);
  if (!dir || seen.has(name)) return seen;
  const disk = fs.existsSync(path.join(dir, 'partition')) ? path.basename(path.dirname(dir)) : name;
  let slaves: string[] = [];
  try {
    slaves = fs.readdirSync(path.join(`/sys/block/${disk}`, 'slaves'));
  } catch { /* not stacked */ }
  seen.add(disk); // a dm/md device is a disk of its own too
  for (const s of slaves) underlyingDisks(s, seen);
  return seen;
}

/** Kernel names of the disks the running system's `/` lives on (through dm/md). */
export function systemDisks(): Set<string> {
  const name = rootDeviceName();
  return name === null ? new Set() : underlyingDisks(name);
}
