// Scattered I/O in batches: the addon's io_uring job (one call and one
// promise for thousands of blocks, up to DEPTH in flight), or, where
// io_uring is not allowed (kernel.io_uring_disabled, a seccomp filter), one
// fs call per I/O with a few at once. A sync's cost follows its random
// IOPS; through libuv every 4 KiB block is a JS round trip.
import { fullIo, ioError, shortError } from './direct-io.js';
import { native, type ErrnoError } from '../base/native.js';

export interface IoOp { bufferOffset: number; length: number; position: number }

const DEPTH = 64;
const FALLBACK_LANES = 16;
let uringRefused = false;

/** Reads or writes every op (exactly its length) between `buffer` and fd; the first failure rejects, after all I/O has ended. */
export async function batchIo(kind: 'read' | 'write', side: string, fd: number, buffer: Buffer,
  ops: readonly IoOp[]): Promise<void> {
  if (ops.length === 0) return;
  if (!uringRefused && ops.length > 1) { // one I/O gains nothing from a ring
    const flat = new Float64Array(ops.length * 3);
    ops.forEach((o, i) => { flat[i * 3] = o.bufferOffset; flat[i * 3 + 1] = o.length; flat[i * 3 + 2] = o.position; });
    try {
      await native().batchIo(fd, kind === 'write', buffer, flat, DEPTH);
      return;
    } catch (err) {
      const e = err as ErrnoError & { position?: number };
      if (e.syscall !== 'io_uring_queue_init') {
        const at = e.position ?? 0;
        const op = ops.find((o) => at >= o.position && at < o.position + o.length);
        const left = op ? op.position + op.length - at : 0;
        throw e.code === 'ESHORT' ? shortError(kind, side, fd, at) : ioError(kind, side, fd, at, left, e);
      }
      // Not allowed here (disabled, seccomp, no kernel support): the plain path from now on;
      // anything else (a ring's memory) only for this batch.
      if (e.code === 'EPERM' || e.code === 'EACCES' || e.code === 'ENOSYS') uringRefused = true;
    }
  }
  let next = 0;
  let failure: { error: unknown } | null = null;
  const lane = async (): Promise<void> => {
    while (!failure && next < ops.length) {
      const o = ops[next++];
      try {
        await fullIo(kind, side, fd, buffer, o.bufferOffset, o.length, o.position);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(FALLBACK_LANES, ops.length) }, lane));
  if (failure) throw (failure as { error: unknown }).error;
}
