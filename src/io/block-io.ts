// The seam between dpsr and the disk a DPSR drive lives on: byte-addressed
// reads and writes (exact ones, and batches with several in flight), flush,
// discard, size and the read-only switch. The drive's users (label, journal,
// history, shutdown record, copy, sync, restore) speak only this; a local
// block device is one implementation (local-device.ts).
import type { DpsrError } from '../base/errors.js';
import type { IoOp } from './batch-io.js';
import type { Counters } from './direct-io.js';

export type IoKind = 'read' | 'write';

export interface BlockIo {
  /** Where it is, for messages: " /dev/loop3" (with its leading space), or "" when that cannot be told. */
  where(): string;
  sizeBytes(): number;
  /** One read of up to `length` bytes, as fs.readSync: short at the device's end, errors thrown as they come. */
  readSync(buf: Buffer, bufferOffset: number, length: number, position: number): number;
  /** One write, as fs.writeSync. */
  writeSync(buf: Buffer, bufferOffset: number, length: number, position: number): number;
  /** Exactly `length` bytes; a failure as one line naming `side` and the position. */
  io(kind: IoKind, side: string, buf: Buffer, bufferOffset: number, length: number, position: number, counters?: Counters): Promise<void>;
  /** Every op (exactly its length) between `buf` and the device, several in flight; the first failure rejects once all have ended. */
  batch(kind: IoKind, side: string, buf: Buffer, ops: readonly IoOp[]): Promise<void>;
  /** A failed I/O (from readSync or writeSync) as one readable line naming `side`, the device and the position. */
  ioError(kind: IoKind, side: string, position: number, length: number, err: NodeJS.ErrnoException): DpsrError;
  /** Makes what was written durable (the device's write cache too); a failure says `flushing WHAT… failed: …; THEN`. */
  flushSync(what: string, then: string): void;
  flush(what: string, then: string): Promise<void>;
  /** Discards a byte range; throws an errno error (EOPNOTSUPP and the like where the device cannot). */
  discard(position: number, length: number): void;
  /** Read-only between dpsr's own writes (BLKROSET on a local device). */
  setReadOnly(readOnly: boolean): void;
  close(): void;
}
