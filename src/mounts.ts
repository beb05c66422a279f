// What is mounted or swapping from a block device (a disk counts with its partitions).
import fs from 'node:fs';
import type { BlockDevice } from './devices.js';

/** major:minor of the device and, for a whole disk, of every partition on it. */
export function devNumbersOf(dev: BlockDevice): Set<string> {
  const nums = new Set([`${dev.major}:${dev.minor}`]);
  if (!dev.isPartition) {
    const dir = `/sys/block/${dev.disk}`;
    for (const entry of fs.readdirSync(dir)) {
      const devFile = `${dir}/${entry}/dev`;
      if (entry.startsWith(dev.disk) && fs.existsSync(`${dir}/${entry}/partition`)) nums.add(fs.readFileSync(devFile, 'utf8').trim());
    }
  }
  return nums;
}

/** Mount points whose source is the device (or one of its partitions). */
export function mountsOf(dev: BlockDevice): string[] {
  const nums = devNumbersOf(dev);
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f.length > 4 && nums.has(f[2]))
    .map((f) => f[4].replace(/\\040/g, ' '));
}
