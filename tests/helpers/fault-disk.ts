// A block device that fails on demand, for fault tests: nbdkit serves an
// image through a small Python plugin that fails the reads and writes
// overlapping byte ranges listed in a trigger file, and its flushes if asked,
// with EIO, on the nbd stack of nbd-disk.ts. (nbdkit's error filter fails
// requests at a rate, not at chosen places, and has no flush errors.)
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type Fixture, randomFill, runDpsrOk, sh } from './fixture.js';
import { type NbdDisk, nbdDisk, pythonPlugin } from './nbd-disk.js';

// The trigger file (replaced atomically): {"read": [[start, end], ...], "write": [...],
// "flush": true, "stallWritesAfter": N, "id": K}, byte ranges half-open; a request overlapping
// a listed range fails with EIO, every flush when "flush". With stallWritesAfter, the writes
// after the first N bytes written since the trigger with this id appeared wait (and
// TRIGGER.stalled is made) until the trigger changes: a process writing through it stops at an
// exact point (stallReadsAfter: the same for reads). With "slow": {"latencyMs": L, "bytesPerSec": R},
// every read and write takes L ms plus its length at R bytes a second (requests are served one
// at a time: nbdkit's python plugins serialize them), a dying disk that answers slowly.
// Every other write queued to the disk meanwhile, from any process, waits behind a stalled one
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
def slow(length):
    s = faults().get('slow')
    if s: time.sleep(s['latencyMs'] / 1000 + length / s['bytesPerSec'])
def pread(h, buf, offset, flags):
    wait_if_stalled('stallReadsAfter', len(buf))
    slow(len(buf))
    if failing('read', offset, len(buf)): fail('read')
    buf[:] = os.pread(h, len(buf), offset)
stall = {'id': None, 'written': 0}
def wait_if_stalled(key, length):
    f = faults()
    if f.get(key) is None: return
    if f.get('id') != stall['id']: stall.update(id=f.get('id'), written=0)
    if stall['written'] >= f[key]:
        builtins.open(cfg['trigger'] + '.stalled', 'w').close()
        while faults().get('id') == stall['id'] and faults().get(key) is not None: time.sleep(0.005)
    stall['written'] += length
def pwrite(h, buf, offset, flags):
    wait_if_stalled('stallWritesAfter', len(buf))
    slow(len(buf))
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
  /** Every read and write takes latencyMs plus its length at bytesPerSec. */
  slow?: { latencyMs: number; bytesPerSec: number };
  /** Once this many bytes were written (from the moment these faults are set), every further write waits. */
  stallWritesAfter?: number;
}

/** A child process spawned by the test. */
interface Child { exitCode: number | null; signalCode: NodeJS.Signals | null }

/** A child process run until a disk stalled its writes, then killed: see FaultDisk.killAtStall. */
export interface KilledRun { killed: boolean; stderr: string }

export interface FaultDisk extends Pick<NbdDisk, 'dev' | 'image' | 'killServer' | 'replug'> {
  /** From now on, reads overlapping these byte ranges ([start, end)) fail with EIO. */
  failReads(ranges: Array<[number, number]>): void;
  /** From now on, these reads, writes and flushes fail with EIO, are slow or stall (and no others). */
  fail(faults: Faults): void;
  /** Every request succeeds again (and stalled writes go on). */
  heal(): void;
  /** From now on, once `afterBytes` more were written, every further write waits until heal(). */
  stallWrites(afterBytes: number): void;
  /** The same for reads: once `afterBytes` more were read, every further read waits until heal(). */
  stallReads(afterBytes: number): void;
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
  const disk = nbdDisk(fx, sizeMiB, (img) => ['python', plugin, `file=${img}`, `trigger=${trigger}`]);
  const set = (faults: object) => {
    fs.writeFileSync(`${trigger}.new`, JSON.stringify(faults));
    fs.renameSync(`${trigger}.new`, trigger); // never read half-written
  };
  const heal = () => fs.rmSync(trigger, { force: true });
  const stalled = `${trigger}.stalled`;
  let stalls = 0;
  const stall = (key: string, afterBytes: number, also: Faults = {}) => {
    fs.rmSync(stalled, { force: true });
    set({ ...also, [key]: afterBytes, id: ++stalls });
  };
  const stallWrites = (afterBytes: number) => stall('stallWritesAfter', afterBytes);
  const untilStalled = async (child: Child) => {
    // No race: while it waits on the stalled write, the child cannot finish.
    while (!fs.existsSync(stalled) && child.exitCode === null && child.signalCode === null) await new Promise((r) => setTimeout(r, 5));
    return fs.existsSync(stalled);
  };
  return {
    dev: disk.dev,
    image: disk.image,
    killServer: disk.killServer,
    replug: disk.replug,
    stallReads: (afterBytes) => stall('stallReadsAfter', afterBytes),
    failReads: (ranges) => set({ read: ranges }),
    fail: (faults) => (faults.stallWritesAfter === undefined ? set(faults) : stall('stallWritesAfter', faults.stallWritesAfter, faults)),
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

/**
 * A pair named `name` of a source of `sourceMiB` (random data) and a drive with an 8 MiB tail,
 * synced once, the `faulty` one on a fault disk (healthy until told otherwise).
 */
export function faultyPair(fx: Fixture, env: NodeJS.ProcessEnv, name: string, faulty: 'source' | 'drive', sourceMiB = 16): { source: string; drive: string; disk: FaultDisk } {
  const driveMiB = sourceMiB + 10;
  const disk = faultDisk(fx, faulty === 'source' ? sourceMiB : driveMiB);
  const source = faulty === 'source' ? disk.dev : fx.loop(sourceMiB);
  const drive = faulty === 'drive' ? disk.dev : fx.loop(driveMiB);
  randomFill(source, sourceMiB);
  runDpsrOk(env, ['pair', source, drive, '--name', name, '--reserve', '8M']);
  runDpsrOk(env, ['sync', name, '--quiet-period', '0.2']);
  return { source, drive, disk };
}

/** Rewrites `mib` MiB of `dev` from `atMiB` with random data (direct I/O, 1 MiB writes). */
export function rewrite(dev: string, atMiB: number, mib: number): void {
  sh('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', `seek=${atMiB}`, `count=${mib}`, 'oflag=direct', 'status=none']);
}
