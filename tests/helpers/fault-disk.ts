// A block device whose reads fail on demand, for fault tests: nbdkit serves
// an image through a small Python plugin that fails reads overlapping the
// byte ranges listed in a trigger file, nbdfuse exposes it as a file, and a
// direct-I/O loop device (reads not served from the page cache) makes it a
// disk that dpsr tracks like any other. The fixture owns every piece.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type Fixture, sh } from './fixture.js';

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

function waitForFile(file: string, what: string): void {
  const deadline = Date.now() + 30_000;
  while (!fs.existsSync(file) || fs.statSync(file).size === 0) {
    if (Date.now() > deadline) throw new Error(`${what} did not start`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
  }
}

export function faultDisk(fx: Fixture, sizeMiB: number): FaultDisk {
  const dir = fs.mkdtempSync(path.join(fx.dir, 'fault-'));
  const plugin = path.join(dir, 'plugin.py');
  const trigger = path.join(dir, 'fail-reads.json');
  const pidFile = path.join(dir, 'nbdfuse.pid');
  fs.writeFileSync(plugin, PLUGIN);
  const img = fx.image(`${path.basename(dir)}.img`, sizeMiB);
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const server = spawn('nbdfuse', ['-P', pidFile, path.join(mnt, 'disk'), '--command', 'nbdkit', '-s', 'python', plugin, `file=${img}`, `trigger=${trigger}`],
    { stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'server.log'), 'w')] });
  fx.defer(`stop nbdfuse ${mnt}`, () => {
    try { sh('fusermount3', ['-u', mnt]); } catch { server.kill('SIGKILL'); }
  });
  waitForFile(pidFile, 'nbdfuse');
  const dev = fx.attach(path.join(mnt, 'disk'));
  return {
    dev,
    failReads: (ranges) => fs.writeFileSync(trigger, JSON.stringify(ranges)),
    heal: () => fs.rmSync(trigger, { force: true }),
  };
}
