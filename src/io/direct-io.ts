// Direct I/O on block devices: opening with O_DIRECT, positioned reads and
// writes of exactly the asked length, errors said as one line with a hint,
// and the pool of page-aligned buffers that O_DIRECT needs.
import fs from 'node:fs';
import { DpsrError, type ErrorCode, RefusedError, errnoOf } from '../base/errors.js';
import { native } from '../base/native.js';

export const BUFFER_ALIGNMENT = 4096; // page: satisfies every logical block size up to 4 KiB

/** What a run of I/Os did. */
export interface Counters {
  bytesRead: number;
  bytesWritten: number;
  ios: number;
}

/** Opens a block device for O_DIRECT I/O (read-only or read-write), with a clear error. */
export function openDirect(path: string, write: boolean): number {
  const flags = (write ? fs.constants.O_RDWR : fs.constants.O_RDONLY) | fs.constants.O_DIRECT;
  try {
    return fs.openSync(path, flags);
  } catch (err) {
    const errno = errnoOf(err) ?? '';
    const mode = write ? 'for writing' : 'for reading';
    const why: Record<string, [string, ErrorCode]> = {
      ENOENT: ['no such device', 'ENODEV'],
      ENXIO: ['no such device (no medium, or the device went away)', 'ENODEV'],
      ENOMEDIUM: ['no medium', 'ENODEV'],
      EACCES: ['permission denied (dpsr needs root)', 'EPERM'],
      EPERM: ['permission denied (dpsr needs root)', 'EPERM'],
      EROFS: ['the device is read-only', 'EREADONLY'],
      EBUSY: ['the device is in use exclusively (mounted, or held by md/dm)', 'EINUSE'],
      EINVAL: ['it does not support direct I/O (O_DIRECT)', 'EOPEN'],
    };
    const [text, code] = why[errno] ?? [(err as Error).message, 'EOPEN'];
    throw new RefusedError(`cannot open ${path} ${mode} with direct I/O: ${text}`, code, { errno, cause: err });
  }
}

function readAt(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function writeAt(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

/** One positioned read or write of exactly `length` bytes (continuing after a short transfer). */
export async function fullIo(kind: 'read' | 'write', side: string, fd: number, buf: Buffer,
  offset: number, length: number, position: number, counters?: Counters): Promise<void> {
  let done = 0;
  while (done < length) {
    let n: number;
    try {
      n = await (kind === 'read' ? readAt : writeAt)(fd, buf, offset + done, length - done, position + done);
    } catch (err) {
      throw ioError(kind, side, fd, position + done, length - done, err as NodeJS.ErrnoException);
    }
    if (counters) counters.ios++;
    if (n === 0) throw shortError(kind, side, fd, position + done);
    done += n;
    if (!counters) continue;
    if (kind === 'read') counters.bytesRead += n;
    else counters.bytesWritten += n;
  }
}

/** The device node an fd is open on ("" if it cannot be told), for error messages: a role alone does not say which disk failed. */
export function deviceOf(fd: number): string {
  try {
    return ` ${fs.readlinkSync(`/proc/self/fd/${fd}`)}`;
  } catch {
    return '';
  }
}

/** An I/O that met the device's end. */
export function shortError(kind: 'read' | 'write', side: string, fd: number, position: number): DpsrError {
  return new DpsrError(`${kind === 'read' ? 'reading' : 'writing'} the ${side}${deviceOf(fd)} at byte ${position}: ` +
    'the device ends there (it is smaller than the copy expects)', 'ESHORT');
}

/** A failed I/O as one readable line, with a hint for the usual causes. */
export function ioError(kind: 'read' | 'write', side: string, fd: number, position: number, length: number,
  err: NodeJS.ErrnoException): DpsrError {
  const errno = err.code ?? 'EIO';
  let hint = '';
  if (errno === 'EINVAL') {
    let logical = 0;
    try { logical = native().blkSszGet(fd); } catch { /* not a block device */ }
    // Aligned, yet refused: what lies beneath went away (a loop over a file whose server is gone does this).
    const aligned = logical > 0 && position % logical === 0 && length % logical === 0;
    hint = aligned ? ': the device refuses an aligned read or write: it may have gone away (detached, unplugged, its server gone)'
      : `: direct I/O needs offset and length aligned to the logical block size${logical ? ` (${logical} bytes)` : ''}`;
  } else if (errno === 'EPERM' && kind === 'write') {
    hint = ': the device is read-only (BLKROSET)';
  }
  return new DpsrError(`${kind === 'read' ? 'reading' : 'writing'} the ${side}${deviceOf(fd)} at byte ${position} (${length} bytes) failed: ` +
    `${err.message}${hint}`, 'EIO', { errno, cause: err });
}

// Aligned buffers are malloc'ed outside V8's heap, which does not count them, so a GC may
// come late: buffers are pooled per size across calls rather than left to the collector.
const pool = new Map<number, Buffer[]>();
const POOL_MAX_BYTES = 64 << 20;
let pooledBytes = 0;

export function takeBuffers(count: number, bytes: number): Buffer[] {
  const free = pool.get(bytes) ?? [];
  const out: Buffer[] = [];
  while (out.length < count && free.length > 0) {
    out.push(free.pop()!);
    pooledBytes -= bytes;
  }
  while (out.length < count) out.push(native().alignedBuffer(bytes, BUFFER_ALIGNMENT));
  return out;
}

export function giveBuffers(buffers: Buffer[]): void {
  for (const buf of buffers) {
    if (pooledBytes + buf.length > POOL_MAX_BYTES) return;
    let free = pool.get(buf.length);
    if (!free) pool.set(buf.length, (free = []));
    free.push(buf);
    pooledBytes += buf.length;
  }
}
