// The file systems diff and restore read: the DPSR drive's image (a
// read-only loop device over the drive at the file system's offset, so
// nothing can write to the drive; ext4 without its journal, xfs without log
// recovery) and the source's (a read-only bind mount of where it is
// mounted, or the same read-only loop mount when it is not). Every mount is
// private (a 0700 temporary directory) and undone in `unmount`, on exit and
// on SIGINT/SIGTERM/SIGHUP.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { openLocalDevice } from '../io/local-device.js';
import { giveBuffers, takeBuffers } from '../io/direct-io.js';
import { devNumber, resolveBlockDevice, type BlockDevice } from '../devices/devices.js';
import { DpsrError, RefusedError, UsageError } from '../base/errors.js';
import { identify, identityChanges, isReplaced } from '../devices/identity.js';
import { type DriveLabel, readLabel } from '../drive/label.js';
import { type ImageState } from '../state/records.js';
import { mountEntriesOf, readMounts } from '../devices/mounts.js';
import type { Settings } from '../base/defaults.js';
import { closeSession } from '../state/session.js';
import { openTrackingSession } from '../drive/boot-adoption.js';
import { Store } from '../state/store.js';
import { type PairRecord } from '../state/records.js';
import { openCheckedDrive, pendingTxnOf, recoverPairedDrive } from '../drive/paired-drive.js';
import { isRemote } from '../drive/remote-drive.js';
import { openNbdView } from '../io/nbd-view.js';
import { SECTOR } from '../base/units.js';


function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new DpsrError(`${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim().split('\n')[0]}`, 'EMOUNT');
  }
}

// Undo actions of everything mounted and not yet unmounted, run on exit and on signals.
const live = new Set<() => void>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const undoAll = () => { for (const undo of [...live].reverse()) undo(); };
  process.on('exit', undoAll);
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
    process.once(sig, () => { undoAll(); process.exit(code); });
  }
}

/** A file system mounted privately; unmount() is idempotent. */
export interface PrivateMount {
  mountPoint: string;
  fsType: string;
  unmount(): void;
}

function tryRun(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function privateDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix)); // mkdtemp makes it 0700
}

/** Registers the undo steps of a mount, run once, in order: unmount, detach, remove the directory (also on exit and signals). */
export function tracked(mountPoint: string, fsType: string, steps: Array<() => void>): PrivateMount {
  let done = false;
  const undo = () => {
    if (done) return;
    done = true;
    live.delete(undo);
    for (const step of steps) {
      try { step(); } catch { /* best effort: the next step still runs */ }
    }
  };
  live.add(undo);
  hookExit();
  return { mountPoint, fsType, unmount: undo };
}

function unmountStep(dir: string): () => void {
  // A child killed mid-read can hold the mount a moment: retry, then detach it lazily.
  return () => {
    for (let i = 0; i < 5; i++) {
      if (tryRun('umount', [dir])) return;
      execFileSync('sleep', ['0.2']);
    }
    tryRun('umount', ['-l', dir]);
  };
}

/** The file system type blkid finds on a device (low-level probe), or null. */
function probeFsType(device: string): string | null {
  try {
    const out = execFileSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    return out || null;
  } catch {
    return null; // exit 2: nothing found
  }
}

/** Mount options that read a file system without writing to it, nor replaying its journal or log. */
function readOnlyOptions(fsType: string): string {
  switch (fsType) {
    case 'ext3': case 'ext4': return 'ro,noload'; // noload: do not replay the journal (it would write)
    case 'xfs': return 'ro,norecovery,nouuid'; // nouuid: the image has the source's UUID, and the source may be mounted
    default: return 'ro';
  }
}

/** Where blkid looks for superblocks (ext4 at 1 KiB, xfs at 0, btrfs at 64 KiB, ...). */
const PROBED_BYTES = 1 << 20;

/**
 * Reads the start of the region where blkid found no file system: a read error there, not a
 * missing file system, is then the reason, said as one line naming the device and the offset.
 */
function assertReadable(device: string, range: { offsetBytes: number; sizeBytes: number }, side: string): void {
  const length = Math.min(range.sizeBytes, PROBED_BYTES) & ~4095;
  if (length === 0) return;
  const dev = openLocalDevice(device, false);
  const [buf] = takeBuffers(1, length);
  try {
    dev.readSync(buf, 0, length, range.offsetBytes);
  } catch (err) {
    throw dev.ioError('read', side, range.offsetBytes, length, err as NodeJS.ErrnoException);
  } finally {
    giveBuffers([buf]);
    dev.close();
  }
}

/**
 * After a read of `file` failed, where `file` lies in a file system mountReadOnly made: the
 * device read beneath it that fails, as the one-line I/O error naming the device (`side`) and
 * the byte offset; null when every extent of it reads back (the error was not the device's).
 */
export function unreadableExtentOf(file: string, side: string): DpsrError | null {
  let loop: string;
  let extents: Array<[number, number]>;
  try {
    loop = path.basename(run('findmnt', ['-n', '-o', 'SOURCE', '-T', file]).trim());
    // filefrag -e: "File size of F is N (B blocks of S bytes)", then "0: 0.. 255: 34816.. 35071: 256: ..." per extent.
    const out = run('filefrag', ['-e', file]);
    const blockBytes = Number(/blocks of (\d+) bytes/.exec(out)?.[1] ?? 4096);
    extents = [...out.matchAll(/^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):/gm)]
      .map((m) => [Number(m[1]) * blockBytes, (Number(m[2]) + 1) * blockBytes]);
  } catch {
    return null;
  }
  const sys = `/sys/block/${loop}/loop`;
  if (!fs.existsSync(sys)) return null;
  const device = fs.readFileSync(path.join(sys, 'backing_file'), 'utf8').trim();
  const offset = Number(fs.readFileSync(path.join(sys, 'offset'), 'utf8').trim());
  const dev = openLocalDevice(device, false);
  const [buf] = takeBuffers(1, 1 << 20);
  try {
    for (const [start, end] of extents) {
      for (let pos = start; pos < end; pos += buf.length) {
        const length = Math.min(buf.length, end - pos);
        try {
          dev.readSync(buf, 0, length, offset + pos);
        } catch (err) {
          return dev.ioError('read', side, offset + pos, length, err as NodeJS.ErrnoException);
        }
      }
    }
    return null;
  } finally {
    giveBuffers([buf]);
    dev.close();
  }
}

/**
 * Mounts the file system at [offsetBytes, offsetBytes + sizeBytes) of a
 * device through a read-only loop device: the kernel refuses any write to
 * it, whatever the file system does. `side` names the device in I/O errors.
 */
export function mountReadOnly(device: string, range: { offsetBytes: number; sizeBytes: number }, what: string, side = 'DPSR drive'): PrivateMount {
  const loop = run('losetup', ['-r', '-f', '--show', '--direct-io=on', '-o', String(range.offsetBytes),
    '--sizelimit', String(range.sizeBytes), device]).trim();
  const detach = () => { tryRun('losetup', ['-d', loop]); };
  let dir: string | undefined;
  try {
    const fsType = probeFsType(loop);
    if (!fsType) assertReadable(device, range, side);
    if (!fsType) throw new RefusedError(`${what}: no file system found (blkid) at byte ${range.offsetBytes} of ${device}`, 'ENOFS');
    if (fsType === 'btrfs') {
      throw new RefusedError(`${what}: a btrfs copy carries the source's fsid, and btrfs would confuse it with the source; not mounted`, 'EBTRFS');
    }
    dir = privateDir('dpsr-mnt-');
    run('mount', ['-t', fsType, '-o', readOnlyOptions(fsType), loop, dir]);
    const d = dir;
    return tracked(d, fsType, [unmountStep(d), detach, () => fs.rmdirSync(d)]);
  } catch (err) {
    detach();
    if (dir) fs.rmdirSync(dir);
    throw err;
  }
}

/** A read-only view of a mounted file system's root, without what is mounted beneath it (a non-recursive bind). */
export function bindReadOnly(mountPoint: string, fsType: string): PrivateMount {
  const dir = privateDir('dpsr-src-');
  try {
    run('mount', ['--bind', mountPoint, dir]);
  } catch (err) {
    fs.rmdirSync(dir);
    throw err;
  }
  const m = tracked(dir, fsType, [unmountStep(dir), () => fs.rmdirSync(dir)]);
  try {
    run('mount', ['-o', 'remount,bind,ro', dir]); // read-only for this view only
  } catch (err) {
    m.unmount();
    throw err;
  }
  return m;
}

/**
 * Runs fn with the pair's DPSR drive at a local block device's path, which
 * mount, blkid, sfdisk and a restore point's server read: the drive itself,
 * or for an NBD export a read-only view of it (io/nbd-view.ts), closed
 * whatever happens (on exit and signals too).
 */
export async function withDriveDevice<T>(pair: PairRecord, fn: (pair: PairRecord) => Promise<T>): Promise<T> {
  if (!isRemote(pair)) return fn(pair);
  const view = await openNbdView(pair.drive.path);
  const handle = tracked(view.device, 'nbd-view', [view.close]);
  try {
    return await fn({ ...pair, drive: { ...pair.drive, path: view.device } });
  } finally {
    handle.unmount();
  }
}

/** Runs fn with mounts made by `make`, unmounting them whatever happens. */
export async function withMounts<T>(make: Array<() => PrivateMount>, fn: (mounts: PrivateMount[]) => Promise<T>): Promise<T> {
  const mounts: PrivateMount[] = [];
  try {
    for (const m of make) mounts.push(m());
    return await fn(mounts);
  } finally {
    for (const m of mounts.reverse()) m.unmount();
  }
}

// ---------------------------------------------------------------------------
// Where the file system is: the pair's drive proved, its partitions, PATH.

/** Checks, reading only, that the pair's drive is still the paired one; returns its label. */
function checkPairedDrive(pair: PairRecord): DriveLabel | null {
  if (isRemote(pair)) {
    const remote = openCheckedDrive(pair, false); // its size and label prove it
    remote.io.close();
    return remote.label;
  }
  const dev = resolveBlockDevice(pair.drive.path);
  const now = identify(dev, pair.drive);
  if (isReplaced(pair.drive, now)) {
    throw new RefusedError(`pair ${pair.name}: ${pair.drive.path} is not the paired DPSR drive any more (${identityChanges(pair.drive, now).join('; ')})`, 'EDRIVECHANGED');
  }
  const drive = openLocalDevice(dev.path, false);
  let label: DriveLabel | null;
  try {
    label = readLabel(drive);
  } finally {
    drive.close();
  }
  if (pair.reservedSectors > 0 && label?.pairId !== pair.id) {
    throw new RefusedError(`pair ${pair.name}: ${dev.path} does not carry this pair's label${label ? ` (it belongs to pair ${label.pairName})` : ''}`, 'ELABEL');
  }
  return label;
}

export interface Partition {
  number: number;
  startBytes: number;
  sizeBytes: number;
}

/** The partitions of a partition table, as sfdisk reads it (only reads); empty without a table. */
export function partitionTable(device: string): Partition[] {
  let out: string;
  try {
    out = execFileSync('sfdisk', ['--json', device], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch {
    return []; // no partition table
  }
  const t = (JSON.parse(out) as { partitiontable?: { device: string; sectorsize?: number; partitions?: Array<{ node: string; start: number; size: number }> } }).partitiontable;
  if (!t) return [];
  const sectorBytes = t.sectorsize ?? SECTOR;
  return (t.partitions ?? []).map((p) => ({
    number: Number(p.node.slice(t.device.length).replace(/^p/, '')),
    startBytes: p.start * sectorBytes,
    sizeBytes: p.size * sectorBytes,
  }));
}

export interface ImagePartition extends Partition { fsType: string | null }

/** The partitions of a whole-disk pair's image, with the file system each holds (through a read-only loop over [0, dataSectors)). */
function imagePartitions(pair: PairRecord): ImagePartition[] {
  const loop = run('losetup', ['-r', '-f', '--show', '--sizelimit', String(pair.dataSectors * SECTOR), pair.drive.path]).trim();
  try {
    return partitionTable(loop).map((p) => {
      let fsType: string | null = null;
      try {
        fsType = execFileSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', '-O', String(p.startBytes), '-S', String(p.sizeBytes), loop],
          { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim() || null;
      } catch { /* nothing found */ }
      return { ...p, fsType };
    });
  } finally {
    tryRun('losetup', ['-d', loop]);
  }
}

/** Where the file system PATH is in lives, on both sides. */
export interface FsLocation {
  /** The partition of a whole-disk pair; null when the image is the file system itself. */
  partition: number | null;
  /** The image's file system: [offset, offset + size) of the DPSR drive. */
  image: { offsetBytes: number; sizeBytes: number };
  /** PATH inside the file system: '' for its root, never with a leading '/' or a '..'. */
  relPath: string;
  /** The source's file system: its mount (of its root) now, or its range on the source to mount it ourselves; null if the source is gone. */
  source: { device: string; offsetBytes: number; sizeBytes: number; mount: { mountPoint: string; fsType: string; readOnly: boolean } | null;
    otherMounts: string[] } | null;
}

export interface SourceMount { mountPoint: string; root: string; fsType: string; readOnly: boolean; partition: number | null }

/** The paired source, if it is still there and still the same device (else its mounts say nothing about the pair). */
function pairedSource(pair: PairRecord): BlockDevice | null {
  let dev: BlockDevice;
  try {
    dev = resolveBlockDevice(pair.source.path);
  } catch {
    return null;
  }
  return isReplaced(pair.source, identify(dev, pair.source)) ? null : dev;
}

function sourceMounts(pair: PairRecord, dev: BlockDevice): SourceMount[] {
  const own = devNumber(dev);
  return mountEntriesOf(dev)
    // A partition pair's file system is the partition: a mount of its whole disk is something else.
    .filter((m) => !pair.source.isPartition || m.devNum === own)
    .filter((m) => !m.hostOnly) // not reachable from here to read through
    .map((m) => {
      const part = m.devNum === own ? null : Number(fs.readFileSync(`/sys/dev/block/${m.devNum}/partition`, 'utf8').trim());
      return { mountPoint: m.mountPoint, root: m.root, fsType: m.fsType, readOnly: m.readOnly, partition: part };
    });
}

const inside = (p: string, dir: string) => dir === '/' || p === dir || p.startsWith(`${dir}/`);

function cleanRel(rel: string, what: string): string {
  const n = path.posix.normalize(`/${rel}`).replace(/^\/+/, '').replace(/\/+$/, '');
  if (n.split('/').includes('..')) throw new UsageError(`${what}: leaves the file system ('..')`);
  return n === '.' ? '' : n;
}

/** What locating a PATH looks at, read once per command however many PATHs it names. */
export interface Surroundings {
  dev: BlockDevice | null; // the source, if it is there
  mounts: SourceMount[];
  allMounts: ReturnType<typeof readMounts>;
  imageParts(): ImagePartition[];
  sourceParts(): Partition[];
}

export function surroundingsOf(pair: PairRecord): Surroundings {
  const dev = pairedSource(pair);
  let imageParts: ImagePartition[] | undefined;
  let sourceParts: Partition[] | undefined;
  return {
    dev,
    mounts: dev ? sourceMounts(pair, dev) : [],
    allMounts: readMounts(),
    imageParts: () => (imageParts ??= imagePartitions(pair)),
    sourceParts: () => (sourceParts ??= dev ? partitionTable(dev.path) : []),
  };
}

/** What locate reads of the pair's record. */
export type LocatedPair = Pick<PairRecord, 'name' | 'dataSectors'> & { source: Pick<PairRecord['source'], 'isPartition' | 'sizeSectors'> };

/**
 * Finds the file system PATH is in and where PATH is inside it. An absolute
 * PATH under a mount of the source names its file system (and, for a
 * whole-disk pair, its partition); otherwise PATH is relative to the root of
 * the file system chosen by `inPartition`, or the only one the image holds.
 * Reads nothing but `around` (surroundingsOf(pair)).
 */
export function locate(pair: LocatedPair, pathArg: string | undefined, inPartition: number | undefined, around: Surroundings): FsLocation {
  const { dev, mounts } = around;
  const wholeDisk = !pair.source.isPartition;
  const given = pathArg ?? '';
  let partition: number | null | undefined;
  let relPath: string | undefined;

  if (path.isAbsolute(given)) {
    const abs = path.resolve(given);
    const longest = <M extends { mountPoint: string }>(ms: M[]) => ms.filter((x) => inside(abs, x.mountPoint)).sort((a, b) => b.mountPoint.length - a.mountPoint.length)[0];
    const m = longest(mounts);
    // Another file system mounted deeper (/home on another disk under the source's /): not the pair's.
    const top = longest(around.allMounts);
    if (m && top && top.mountPoint.length > m.mountPoint.length) {
      throw new UsageError(`${given} is on ${top.source} (mounted on ${top.mountPoint}), not on pair ${pair.name}'s source`);
    }
    if (m) {
      if (inPartition !== undefined && m.partition !== inPartition) {
        throw new UsageError(`${given} is on ${m.partition === null ? 'the whole disk' : `partition ${m.partition}`} (mounted on ${m.mountPoint}), not partition ${inPartition}`);
      }
      partition = m.partition;
      relPath = cleanRel(path.posix.join(m.root, path.relative(m.mountPoint, abs)), given);
    }
  }

  let parts: ImagePartition[] = [];
  if (wholeDisk) {
    parts = around.imageParts();
    if (partition === undefined) {
      if (inPartition !== undefined) partition = inPartition;
      else if (parts.length === 0) partition = null;
      else {
        const withFs = parts.filter((p) => p.fsType);
        if (withFs.length !== 1) {
          const list = parts.map((p) => `${p.number} (${p.fsType ?? 'no file system'})`).join(', ');
          throw new UsageError(`pair ${pair.name} is a whole disk with partitions ${list}: name one with --in-partition N, or give PATH under a mount point of the source`);
        }
        partition = withFs[0].number;
      }
    }
  } else {
    if (inPartition !== undefined) throw new UsageError(`--in-partition: pair ${pair.name}'s source is a partition, its image is one file system`);
    partition = null;
  }

  if (relPath === undefined) {
    // Not under a mount of the source: relative to the file system's root, unless that file system is mounted.
    const mountedAt = mounts.filter((m) => m.partition === partition).map((m) => m.mountPoint);
    if (path.isAbsolute(given) && given !== '/' && mountedAt.length > 0) {
      throw new UsageError(`${given} is not in pair ${pair.name}'s file system, which is mounted on ${mountedAt.join(', ')}: give PATH under it, or relative to its root`);
    }
    relPath = cleanRel(given, given);
  }

  let image: FsLocation['image'];
  let onSource: { offsetBytes: number; sizeBytes: number } | null = null;
  if (partition === null) {
    image = { offsetBytes: 0, sizeBytes: pair.dataSectors * SECTOR };
    onSource = { offsetBytes: 0, sizeBytes: pair.source.sizeSectors * SECTOR };
  } else {
    const p = parts.find((x) => x.number === partition);
    if (!p) throw new UsageError(`pair ${pair.name}'s image has no partition ${partition} (it has ${parts.map((x) => x.number).join(', ') || 'none'})`);
    image = { offsetBytes: p.startBytes, sizeBytes: p.sizeBytes };
    const q = around.sourceParts().find((x) => x.number === partition);
    onSource = q ? { offsetBytes: q.startBytes, sizeBytes: q.sizeBytes } : null;
  }

  const ofFs = mounts.filter((m) => m.partition === partition);
  const rootMount = ofFs.find((m) => m.root === '/');
  const source = dev && onSource ? {
    device: dev.path, ...onSource,
    mount: rootMount ? { mountPoint: rootMount.mountPoint, fsType: rootMount.fsType, readOnly: rootMount.readOnly } : null,
    otherMounts: ofFs.filter((m) => m !== rootMount).map((m) => m.mountPoint),
  } : null;
  return { partition, image, relPath, source };
}

/** A readable description of a location, for messages: "partition 2 of the image", "the image". */
export function describeFs(loc: FsLocation): string {
  return loc.partition === null ? 'the file system' : `partition ${loc.partition}'s file system`;
}


// ---------------------------------------------------------------------------
// Which image: only a committed point in time, unless --force.

const NOT_POINT_IN_TIME: Record<Exclude<ImageState, 'point-in-time'>, string> = {
  'none': 'the DPSR drive holds no complete image yet (the full copy has not finished)',
  'partial': 'the image is only partly applied (a sync writing in place was interrupted): a mix of two points in time',
  'fuzzy': 'the image is fuzzy (the source was written while it was copied): its file system may be torn',
  'crash-consistent': 'the image is only crash-consistent (copied from a mounted file system without a freeze): ' +
    'mounted without replaying its journal (noload/norecovery) it can show stale metadata',
};

/**
 * The pair's record once its image is a committed point in time; call it
 * holding the drive lock. A sync that died after committing its journal
 * transaction is finished first (as mounting replays a journal), which
 * needs the owner lock: with a daemon owning tracking, refused. An image
 * that is not a point in time is refused unless `force`.
 */
export async function committedImage(settings: Settings, name: string,
  opts: { force: boolean; doing: string; log: (s: string) => void; anyState?: boolean }): Promise<PairRecord> {
  const store = Store.open(settings.stateDir);
  let pair: PairRecord | undefined;
  try {
    pair = store.pair(name);
  } finally {
    await store.close();
  }
  if (!pair) throw new DpsrError(`no pair named ${name}`, 'ENOPAIR');
  const label = checkPairedDrive(pair);
  const pendingTxn = pendingTxnOf(pair, label ?? null);
  if (pendingTxn) {
    let s;
    try {
      s = await openTrackingSession(settings, { waitMs: 0 });
    } catch (err) {
      if ((err as DpsrError).code !== 'EOWNED') throw err;
      throw new RefusedError(`pair ${name}: a sync was interrupted (journal transaction ${pendingTxn.seq} may be committed but not applied) and the daemon owns the pair; run dpsr sync ${name} first`, 'EPENDING');
    }
    try {
      const p = s.store.pair(name)!;
      const applied = await recoverPairedDrive(s, p, s.ranges.get(name));
      opts.log(applied ? `pair ${name}: applied the committed journal transaction ${pendingTxn.seq} of an interrupted sync first`
        : `pair ${name}: an interrupted sync never committed its transaction; the image is the previous one`);
      pair = p;
    } finally {
      await closeSession(s);
    }
  }
  const state: ImageState = pair.fullCopy.complete ? pair.image : 'none';
  if (state !== 'point-in-time' && !opts.anyState) { // anyState: a restore point is read, not this image
    const why = `pair ${name}: ${NOT_POINT_IN_TIME[state]}`;
    if (!opts.force) throw new RefusedError(`${why}; --force to ${opts.doing} anyway`, 'ENOTPOINTINTIME');
    opts.log(`warning: ${why} (--force)`);
  }
  return pair;
}
