// An older image, read-only: the current image with the undo records of
// every later generation laid over it (for each block, the record of the
// oldest generation at or after the point that holds it), served by nbdkit
// (a small Python plugin reading the DPSR drive through a map), exposed as a
// file by nbdfuse, and as a read-only loop device by losetup -r: the device
// diff and restore then mount like the drive itself. The records' data is
// checked as it is read, a 64 KiB chunk at a time against the record's chunk
// hashes, so opening a point reads no record whole. Nothing is written to
// the DPSR drive; everything is undone in close(), on exit and on signals.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DpsrError, RefusedError } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { SECTOR } from '../base/units.js';
import { openDriveIo } from '../drive/remote-drive.js';
import { UNDO_CHUNK_BYTES, historyRegionOf, readUndoExtents, readUndoLayouts, recordsOf } from '../drive/history-region.js';
import type { PairRecord } from '../state/records.js';
import { tracked, withDriveDevice } from './image-mount.js';
import { type PointsOwner, type RestorePoint, choosePoint, pointsOf, readHistoryOf } from './restore-points.js';
import { execFileSync } from 'node:child_process';

const PLUGIN = `import bisect, builtins, errno, hashlib, json, os
import nbdkit
API_VERSION = 2
cfg = {}
verified = set()
def config(key, value): cfg[key] = value
def config_complete():
    global size, segs, starts, chunks, chunk_starts, chunk_bytes
    with builtins.open(cfg['map']) as f:
        m = json.load(f)
    size, segs = m['sizeBytes'], m['segments']
    starts = [s[0] for s in segs]
    chunks, chunk_bytes = m['chunks'], m['chunkBytes']
    chunk_starts = [c[0] for c in chunks]
def check(h, src, n):
    # The record holding drive bytes [src, src + n): each chunk they touch, read and hashed once.
    i = bisect.bisect_right(chunk_starts, src) - 1
    if i < 0 or src >= chunks[i][0] + chunks[i][1]:
        return
    start, length, hashes = chunks[i]
    for c in range((src - start) // chunk_bytes, (src + n - 1 - start) // chunk_bytes + 1):
        if (i, c) in verified:
            continue
        at = start + c * chunk_bytes
        if hashlib.sha256(os.pread(h, min(chunk_bytes, length - c * chunk_bytes), at)).hexdigest() != hashes[c]:
            nbdkit.set_error(errno.EIO)
            raise RuntimeError('undo record damaged: drive bytes %d-%d do not match their checksum' % (at, at + chunk_bytes))
        verified.add((i, c))
def thread_model(): return nbdkit.THREAD_MODEL_PARALLEL
def open(readonly): return os.open(cfg['drive'], os.O_RDONLY)
def close(h): os.close(h)
def get_size(h): return size
def can_write(h): return False
def can_multi_conn(h): return True
def pread(h, buf, offset, flags):
    n, pos = len(buf), 0
    while pos < n:
        at = offset + pos
        i = bisect.bisect_right(starts, at) - 1
        if i >= 0 and at < segs[i][1]:
            take, src = min(n - pos, segs[i][1] - at), segs[i][2] + (at - segs[i][0])
            check(h, src, take)
        else:
            end = starts[i + 1] if i + 1 < len(starts) else size
            take, src = min(n - pos, end - at), at
        buf[pos:pos + take] = os.pread(h, take, src)
        pos += take
`;

/** [startByte, endByte, driveByte]: image bytes read from elsewhere on the drive; the rest from the image itself. */
export type Segment = [number, number, number];

/**
 * Where each byte of point `generation`'s image is: the records of the point
 * and every later one, oldest first, each taking the blocks no older one took.
 */
export function overlay(records: Array<Array<{ startSector: number; endSector: number; driveBytes: number }>>, imageSectors: number): Segment[] {
  const taken = new ExtentSet();
  const out: Segment[] = [];
  for (const extents of records) {
    for (const x of extents) {
      const end = Math.min(x.endSector, imageSectors);
      if (end <= x.startSector) continue;
      const fresh = ExtentSet.from([[x.startSector, end]]);
      fresh.subtractSet(taken);
      fresh.forEach((a, b) => out.push([a * SECTOR, b * SECTOR, x.driveBytes + (a - x.startSector) * SECTOR]));
      taken.add(x.startSector, end);
    }
  }
  return out.sort((p, q) => p[0] - q[0]);
}

/** A record's data whose reader checks it: [driveBytes, lengthBytes, SHA-256 (hex) of each UNDO_CHUNK_BYTES]. */
export type CheckedData = [number, number, string[]];

/** A point's image as a map: where each of its bytes is on the drive, and which sectors differ from the current image. */
export interface PointOverlay {
  point: RestorePoint;
  segments: Segment[];
  /** The sectors the point's image may hold differently from the current one: every later record's extents. */
  changed: ExtentSet;
  /** With verify 'as-read': the records' data the reader must check (by its chunk hashes) as it reads it. */
  checkAsRead: CheckedData[];
}

/**
 * The point `at` names and its overlay, from the records of the point and
 * every later one, verified up to their data; their data too, read whole
 * ('all'), or left to the reader to check chunk by chunk ('as-read': a
 * record without chunk hashes is read whole then). Call it holding the
 * drive lock (no sync may change the drive meanwhile).
 */
export async function pointOverlay(pair: PointsOwner, at: string, verify: 'none' | 'as-read' | 'all'): Promise<PointOverlay> {
  const index = readHistoryOf(pair);
  const point = choosePoint(pair, pointsOf(pair, index), at);
  // Oldest first; each point's own record, then those it carries for dropped newer points.
  const records = index.points.filter((p) => p.generation >= point.generation).flatMap(recordsOf);
  const drive = openDriveIo(pair, false);
  try {
    const region = historyRegionOf(drive, pair, pair.id)!;
    const extents = [];
    const checkAsRead: CheckedData[] = [];
    if (verify === 'as-read') {
      for (const l of await readUndoLayouts(region, records)) {
        extents.push(l.extents);
        if (l.chunkHashes && l.dataBytes > 0) {
          const hashes = Array.from({ length: l.chunkHashes.length / 32 }, (_, i) => l.chunkHashes!.subarray(i * 32, i * 32 + 32).toString('hex'));
          checkAsRead.push([l.dataStartBytes, l.dataBytes, hashes]);
        }
      }
    } else {
      for (const r of records) extents.push(await readUndoExtents(region, r, verify === 'all'));
    }
    const segments = overlay(extents, pair.dataSectors);
    const changed = new ExtentSet();
    for (const [a, b] of segments) changed.add(a / SECTOR, b / SECTOR);
    return { point, segments, changed, checkAsRead: checkAsRead.sort((x, y) => x[0] - y[0]) };
  } finally {
    drive.close();
  }
}

export interface PointImage {
  /** A read-only block device holding the point's image ([0, dataSectors) of the drive as it was). */
  device: string;
  point: RestorePoint;
  /** The sectors where it may differ from the current image. */
  changed: ExtentSet;
  close(): void;
}

/**
 * The image of the point `at` names, as a read-only block device. The
 * current image needs no overlay, but is served the same way. Call it
 * holding the drive lock (no sync may change the drive meanwhile).
 */
export async function openPointImage(pair: PointsOwner, at: string): Promise<PointImage> {
  const { point, segments, changed, checkAsRead } = await pointOverlay(pair, at, 'as-read');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-point-'));
  const mnt = path.join(dir, 'mnt');
  const file = path.join(mnt, 'image');
  const pidFile = path.join(dir, 'nbdfuse.pid');
  fs.mkdirSync(mnt);
  fs.writeFileSync(path.join(dir, 'plugin.py'), PLUGIN);
  fs.writeFileSync(path.join(dir, 'map.json'), JSON.stringify({ sizeBytes: pair.dataSectors * SECTOR, segments, chunks: checkAsRead, chunkBytes: UNDO_CHUNK_BYTES }));
  const log = fs.openSync(path.join(dir, 'server.log'), 'w');
  const server = spawn('nbdfuse', ['-r', '-P', pidFile, file, '--command', 'nbdkit', '-s', '-r', 'python', path.join(dir, 'plugin.py'),
    `map=${path.join(dir, 'map.json')}`, `drive=${pair.drive.path}`], { stdio: ['ignore', 'ignore', log] });
  server.unref();
  fs.closeSync(log);
  let loop: string | null = null;
  const handle = tracked(mnt, 'point', [
    () => { if (loop) execFileSync('losetup', ['-d', loop], { stdio: 'ignore' }); },
    () => {
      try { execFileSync('fusermount3', ['-u', mnt], { stdio: 'ignore' }); } catch { server.kill('SIGKILL'); }
    },
    () => fs.rmSync(dir, { recursive: true, force: true }),
  ]);
  try {
    const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
    for (let waited = 0; !(fs.existsSync(pidFile) && fs.statSync(pidFile).size > 0); waited += 50) {
      if (server.exitCode !== null || waited > 30_000) {
        const why = fs.readFileSync(path.join(dir, 'server.log'), 'utf8').trim().split('\n').pop();
        throw new DpsrError(`pair ${pair.name}: serving restore point ${point.generation} failed (nbdfuse/nbdkit${why ? `: ${why}` : ''})`, 'EMOUNT');
      }
      await Promise.race([sleep(50), exited]);
    }
    loop = execFileSync('losetup', ['-r', '-f', '--show', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (err) {
    handle.unmount();
    if (err instanceof DpsrError) throw err;
    throw new DpsrError(`pair ${pair.name}: a read-only device for restore point ${point.generation}: ${(err as Error).message.split('\n')[0]}`, 'EMOUNT');
  }
  return { device: loop, point, changed, close: handle.unmount };
}

/**
 * Runs `fn` with the pair as it was at point `at` (its drive path the point's
 * read-only device, its image state and time the point's), or as it is when
 * `at` is undefined (its drive path a local device: an export's read-only view). A point that is not one point in time is refused unless `force`.
 */
export async function withImageAt<T>(pair: PairRecord, at: string | undefined, opts: { force: boolean; doing: string; log: (s: string) => void },
  fn: (pair: PairRecord) => Promise<T>): Promise<T> {
  return withDriveDevice(pair, (local) => (at === undefined ? fn(local) : withPointImage(local, at, opts, fn)));
}

async function withPointImage<T>(pair: PairRecord, at: string, opts: { force: boolean; doing: string; log: (s: string) => void },
  fn: (pair: PairRecord) => Promise<T>): Promise<T> {
  const image = await openPointImage(pair, at);
  try {
    const p = image.point;
    if (p.image !== 'point-in-time') {
      const why = `pair ${pair.name}: restore point ${p.generation} is ${p.image}, not one point in time`;
      if (!opts.force) throw new RefusedError(`${why}; --force to ${opts.doing} anyway`, 'ENOTPOINTINTIME');
      opts.log(`warning: ${why} (--force)`);
    }
    return await fn({ ...pair, drive: { ...pair.drive, path: image.device }, generation: p.generation, image: p.image, imageTimeMs: p.timeMs, imageLabel: p.label });
  } finally {
    image.close();
  }
}
