// A block device that fails on demand, for fault tests: nbdkit serves an
// image through a small Python plugin that fails the reads and writes
// overlapping byte ranges listed in a trigger file, and its flushes if asked,
// with EIO, on the nbd stack of nbd-disk.ts. (nbdkit's error filter fails
// requests at a rate, not at chosen places, and has no flush errors.)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Fixture } from './fixture.js';
import { nbdDisk, pythonPlugin } from './nbd-disk.js';

// The trigger file (replaced atomically): {"read": [[start, end], ...], "write": [...],
// "flush": true, "stallWritesAfter": N, "id": K}, byte ranges half-open; a request overlapping
// a listed range fails with EIO, every flush when "flush". With stallWritesAfter, the writes
// after the first N bytes written since the trigger with this id appeared wait (and
// TRIGGER.stalled is made) until the trigger changes: a process writing through it stops at an
// exact point. Every other write queued to the disk meanwhile, from any process, waits behind it
// (the loop device serves its queue in order; nbdkit in parallel and another blkio cgroup did
// not change that here).
const PLUGIN = `import builtins, errno, json, os, time
import nbdkit
API_VERSION = 2
cfg = {}
def config(key, value): cfg[key] = value
def open(readonly): return os.open(cfg['file'], os.O_RDONLY if readonly else os.O_RDWR)
def get_size(h): return os.fstat(h).st_size
def can_write(h): return True
def can_flush(h): return True
def faults():
    try:
        with builtins.open(cfg['trigger']) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
def fail(what):
    nbdkit.set_error(errno.EIO)
    raise OSError(errno.EIO, 'injected ' + what + ' error')
def failing(op, offset, count):
    return any(offset < end and start < offset + count for start, end in faults().get(op, []))
def pread(h, buf, offset, flags):
    if failing('read', offset, len(buf)): fail('read')
    buf[:] = os.pread(h, len(buf), offset)
stall = {'id': None, 'written': 0}
def wait_if_stalled(length):
    f = faults()
    if f.get('stallWritesAfter') is None: return
    if f.get('id') != stall['id']: stall.update(id=f.get('id'), written=0)
    if stall['written'] >= f['stallWritesAfter']:
        builtins.open(cfg['trigger'] + '.stalled', 'w').close()
        while faults().get('id') == stall['id'] and faults().get('stallWritesAfter') is not None: time.sleep(0.005)
    stall['written'] += length
def pwrite(h, buf, offset, flags):
    wait_if_stalled(len(buf))
    if failing('write', offset, len(buf)): fail('write')
    os.pwrite(h, buf, offset)
def flush(h, flags):
    if faults().get('flush'): fail('flush')
    os.fdatasync(h)
`;

export interface Faults {
  read?: Array<[number, number]>;
  write?: Array<[number, number]>;
  flush?: boolean;
}

/** A child process spawned by the test. */
interface Child { exitCode: number | null; signalCode: NodeJS.Signals | null }

/** A child process run until a disk stalled its writes, then killed: see FaultDisk.killAtStall. */
export interface KilledRun { killed: boolean; stderr: string }

export interface FaultDisk {
  dev: string;
  /** The image nbdkit serves. */
  image: string;
  /** From now on, reads overlapping these byte ranges ([start, end)) fail with EIO. */
  failReads(ranges: Array<[number, number]>): void;
  /** From now on, these reads, writes and flushes fail with EIO (and no others). */
  fail(faults: Faults): void;
  /** Every request succeeds again (and stalled writes go on). */
  heal(): void;
  /** From now on, once `afterBytes` more were written, every further write waits until heal(). */
  stallWrites(afterBytes: number): void;
  /** Resolves true once a write waits at the stall, false if `child` exited first. */
  untilStalled(child: Child): Promise<boolean>;
  /**
   * Runs `cmd args` and kills it (SIGKILL) at an exact point: once `afterBytes` were written
   * to this disk, its next write waits, so the process cannot get further, however fast or
   * slow the machine. Then the stalled write goes on (as a disk completes what was in flight
   * when its writer died). `killed` is false when it exited before writing that much.
   */
  killAtStall(cmd: string, args: string[], env: NodeJS.ProcessEnv, afterBytes: number): Promise<KilledRun>;
}

let disks = 0;

export function faultDisk(fx: Fixture, sizeMiB: number): FaultDisk {
  const name = `faults-${++disks}`;
  const plugin = pythonPlugin(fx, name, PLUGIN);
  const trigger = path.join(fx.dir, `${name}.json`);
  const { dev, image } = nbdDisk(fx, sizeMiB, (img) => ['python', plugin, `file=${img}`, `trigger=${trigger}`]);
  const set = (faults: object) => {
    fs.writeFileSync(`${trigger}.new`, JSON.stringify(faults));
    fs.renameSync(`${trigger}.new`, trigger); // never read half-written
  };
  const heal = () => fs.rmSync(trigger, { force: true });
  const stalled = `${trigger}.stalled`;
  let stalls = 0;
  const stallWrites = (afterBytes: number) => {
    fs.rmSync(stalled, { force: true });
    set({ stallWritesAfter: afterBytes, id: ++stalls });
  };
  const untilStalled = async (child: Child) => {
    // No race: while it waits on the stalled write, the child cannot finish.
    while (!fs.existsSync(stalled) && child.exitCode === null && child.signalCode === null) await new Promise((r) => setTimeout(r, 5));
    return fs.existsSync(stalled);
  };
  return {
    dev,
    image,
    failReads: (ranges) => set({ read: ranges }),
    fail: set,
    heal,
    stallWrites,
    untilStalled,
    killAtStall: async (cmd, args, env, afterBytes) => {
      stallWrites(afterBytes);
      const child = spawn(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d) => { stderr += d; });
      const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
      const killed = await untilStalled(child);
      child.kill('SIGKILL');
      heal(); // its exit waits for the write it had in flight
      await exited;
      return { killed, stderr };
    },
  };
}
