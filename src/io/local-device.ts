// A local block device behind the BlockIo seam: an fd opened with O_DIRECT,
// io_uring batches, fdatasync, BLKDISCARD and BLKROSET.
import fs from 'node:fs';
import { DpsrError, errnoOf } from '../base/errors.js';
import { native } from '../base/native.js';
import { type IoOp, batchIo } from './batch-io.js';
import type { BlockIo, IoKind } from './block-io.js';
import { type Counters, deviceOf, fullIo, ioError, openDirect } from './direct-io.js';

export class LocalDevice implements BlockIo {
  constructor(readonly fd: number) {}

  where(): string { return deviceOf(this.fd); }
  sizeBytes(): number { return native().blkGetSize64(this.fd); }
  readSync(buf: Buffer, bufferOffset: number, length: number, position: number): number {
    return fs.readSync(this.fd, buf, bufferOffset, length, position);
  }
  writeSync(buf: Buffer, bufferOffset: number, length: number, position: number): number {
    return fs.writeSync(this.fd, buf, bufferOffset, length, position);
  }
  io(kind: IoKind, side: string, buf: Buffer, bufferOffset: number, length: number, position: number, counters?: Counters): Promise<void> {
    return fullIo(kind, side, this.fd, buf, bufferOffset, length, position, counters);
  }
  batch(kind: IoKind, side: string, buf: Buffer, ops: readonly IoOp[]): Promise<void> {
    return batchIo(kind, side, this.fd, buf, ops);
  }
  ioError(kind: IoKind, side: string, position: number, length: number, err: NodeJS.ErrnoException): DpsrError {
    return ioError(kind, side, this.fd, position, length, err);
  }
  flushSync(what: string, then: string): void {
    try {
      fs.fdatasyncSync(this.fd);
    } catch (err) {
      throw this.flushError(what, then, err as NodeJS.ErrnoException);
    }
  }
  flush(what: string, then: string): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.fdatasync(this.fd, (err) => (err ? reject(this.flushError(what, then, err)) : resolve()));
    });
  }
  discard(position: number, length: number): void { native().blkDiscard(this.fd, position, length); }
  setReadOnly(readOnly: boolean): void { native().blkRoSet(this.fd, readOnly); }
  close(): void { fs.closeSync(this.fd); }

  private flushError(what: string, then: string, err: NodeJS.ErrnoException): DpsrError {
    return new DpsrError(`flushing ${what}${what.startsWith('/') ? '' : this.where()} failed: ${err.message}; ${then}`, 'EIO', { errno: errnoOf(err), cause: err });
  }
}

/** Opens a local block device with O_DIRECT (see openDirect for the errors). */
export function openLocalDevice(path: string, write: boolean): LocalDevice {
  return new LocalDevice(openDirect(path, write));
}
