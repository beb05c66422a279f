// A fingerprint of what a source's file systems write when they are mounted
// read-write: the first 128 KiB of the device and of each of its partitions,
// where ext2/3/4 (at 1 KiB: mount count, last write time, lifetime bytes
// written), btrfs (64 KiB: generation), xfs (sector 0 and its AG headers) and
// FAT keep their superblocks. Another system that mounted the disk while this
// one was down changed it; a raw write elsewhere does not (README says so).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../base/native.js';
import type { BlockDevice } from './devices.js';

const SUPERBLOCK_BYTES = 128 * 1024;

/** Partitions of a whole disk as [start, size] in sectors (sysfs); none for a partition. */
function partitionsOf(dev: BlockDevice): Array<[number, number]> {
  if (dev.isPartition) return [];
  const dir = `/sys/block/${dev.disk}`;
  const out: Array<[number, number]> = [];
  for (const name of fs.readdirSync(dir)) {
    const start = path.join(dir, name, 'start');
    if (!name.startsWith(dev.disk) || !fs.existsSync(start)) continue;
    out.push([Number(fs.readFileSync(start, 'utf8')), Number(fs.readFileSync(path.join(dir, name, 'size'), 'utf8'))]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

/** sha256 (hex) over the superblock areas of the device and its partitions, read with O_DIRECT (what is on the disk). */
export function superblockFingerprint(dev: BlockDevice): string {
  const h = crypto.createHash('sha256');
  const buf = native().alignedBuffer(SUPERBLOCK_BYTES, 4096);
  const fd = fs.openSync(dev.path, fs.constants.O_RDONLY | fs.constants.O_DIRECT);
  try {
    for (const [startSector, sizeSectors] of [[0, dev.sizeSectors] as [number, number], ...partitionsOf(dev)]) {
      const bytes = Math.min(SUPERBLOCK_BYTES, Math.floor((sizeSectors * 512) / 4096) * 4096);
      const n = bytes > 0 ? fs.readSync(fd, buf, 0, bytes, startSector * 512) : 0;
      h.update(`${startSector}:${sizeSectors}:`).update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}
