// A block device whose reads fail on demand, for fault tests: nbdkit serves
// an image through a small Python plugin that fails reads overlapping the
// byte ranges listed in a trigger file, on the nbd stack of nbd-disk.ts.
import fs from 'node:fs';
import path from 'node:path';
import type { Fixture } from './fixture.js';
import { nbdDisk, pythonPlugin } from './nbd-disk.js';

const PLUGIN = `import builtins, errno, json, os
import nbdkit
API_VERSION = 2
cfg = {}
def config(key, value): cfg[key] = value
def open(readonly): return os.open(cfg['file'], os.O_RDONLY if readonly else os.O_RDWR)
def get_size(h): return os.fstat(h).st_size
def can_write(h): return True
def can_flush(h): return True
def failing(offset, count):
    try:
        with builtins.open(cfg['trigger']) as f:
            ranges = json.load(f)
    except FileNotFoundError:
        return False
    return any(offset < end and start < offset + count for start, end in ranges)
def pread(h, buf, offset, flags):
    if failing(offset, len(buf)):
        nbdkit.set_error(errno.EIO)
        raise OSError(errno.EIO, 'injected read error')
    buf[:] = os.pread(h, len(buf), offset)
def pwrite(h, buf, offset, flags): os.pwrite(h, buf, offset)
def flush(h, flags): os.fdatasync(h)
`;

export interface FaultDisk {
  dev: string;
  /** From now on, reads overlapping these byte ranges ([start, end)) fail with EIO. */
  failReads(ranges: Array<[number, number]>): void;
  /** Reads succeed again. */
  heal(): void;
}

let disks = 0;

export function faultDisk(fx: Fixture, sizeMiB: number): FaultDisk {
  const name = `fail-reads-${++disks}`;
  const plugin = pythonPlugin(fx, name, PLUGIN);
  const trigger = path.join(fx.dir, `${name}.json`);
  const { dev } = nbdDisk(fx, sizeMiB, (image) => ['python', plugin, `file=${image}`, `trigger=${trigger}`]);
  return {
    dev,
    failReads: (ranges) => fs.writeFileSync(trigger, JSON.stringify(ranges)),
    heal: () => fs.rmSync(trigger, { force: true }),
  };
}
