// Loads the native addon (addon/) and types its surface; the only door to it.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface OpenedTracking {
  created: boolean;
  /** The issue log's maps only where they are pinned (versions before v3 have none). */
  maps: Record<MapName, number> & Partial<Record<LogMapName, number>>;
}

export type MapName =
  | 'disks' | 'slots' | 'slot_stats' | 'bitmaps' | 'control'
  | 'ring_stats' | 'epoch_drops' | 'rings' | 'consumers';
export type LogMapName = 'issued' | 'missed' | 'log_stats' | 'last_write' | 'issued_by_tag'; // absent from some versions' pins

/** Settings applied when the programs are loaded; all but the defaults are for tests. */
export interface LoadKnobs {
  skipEveryN?: number; // skip every Nth completion
  malformedEveryN?: number; // emit every Nth record malformed
  withoutIssueLog?: boolean; // pin as a version without the issue log (v2) would
  withoutLastWrite?: boolean; // pin as a version without the last write's time (v3) would
  withoutTagLog?: boolean; // log every request in the hash, pinned as v4 was (without `issued_by_tag`)
  tagsPerDisk?: number; // the tag-indexed log's entries per disk (default: bpf/dpsr.h); the tags beyond go to the hash
  issuedEntries?: number; // the issue log's sizes (default: bpf/dpsr.h)
  missedEntries?: number;
}

export interface RingReader {
  /** Drains the ring now, delivering batches to the callback; returns records. */
  consume(): number;
  /** How far records have been read (a ring offset). */
  position(): number;
  /** With a deferred release: the records before `position` are persisted; their space may be reused. */
  release(position: number): void;
  /** Records read that were not a record (not delivered): their writes went unseen. */
  malformed(): number;
  close(): void;
}

export interface Native {
  ensureBpffs(mountPoint: string): boolean;
  open(pinDir: string, knobs: LoadKnobs): OpenedTracking;
  detach(pinDir: string): void;
  closeFd(fd: number): void;
  mapInfo(fd: number): { type: number; id: number; keySize: number; valueSize: number; maxEntries: number; name: string };
  /** A pinned link's program: recursionMisses always, runCnt and runTimeNs while kernel.bpf_stats_enabled is on. */
  programInfo(linkPath: string): { id: number; name: string; runCnt: number; runTimeNs: number; recursionMisses: number };
  mapLookup(fd: number, key: Buffer, valueSize: number): Buffer | null;
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags?: number): void;
  mapDelete(fd: number, key: Buffer): boolean;
  mapKeys(fd: number, keySize: number): Buffer[];
  /** A hash map's entries, read in batches (robust to entries added and removed meanwhile). */
  mapDump(fd: number, keySize: number, valueSize: number): { keys: Buffer; values: Buffer; count: number };
  possibleCpus(): number;
  ringCreate(outerFd: number, index: number, bytes: number): void;
  membarrier(): void;
  flock(fd: number, mode: 'ex' | 'sh' | 'un', wait: boolean): boolean;
  RingReader: new (outerFd: number, index: number, onBatch: (records: Uint8Array) => void,
    timerMs: number, maxBatchRecords: number, deferRelease?: boolean) => RingReader;
  blkGetSize64(fd: number): number;
  blkSszGet(fd: number): number;
  blkPbszGet(fd: number): number;
  blkRoGet(fd: number): boolean;
  blkRoSet(fd: number, readOnly: boolean): void;
  fiFreeze(fd: number): void;
  fiThaw(fd: number): void;
  blkFlsBuf(fd: number): void;
  blkDiscard(fd: number, offsetBytes: number, lengthBytes: number): void;
  alignedBuffer(bytes: number, alignment: number): Buffer;
  isAligned(buffer: Buffer, alignment: number): boolean;
  /** Positioned reads or writes of fd through io_uring, up to depth in flight; ops are [bufferOffset, length, position] triples. */
  batchIo(fd: number, write: boolean, buffer: Buffer, ops: Float64Array, depth: number): Promise<void>;
  /** Sorts the first n extents [starts[i], ends[i]) by start and unites those that overlap or touch, in place; returns how many remain. */
  coalesceExtents(starts: Float64Array, ends: Float64Array, n: number): number;
  /**
   * A batch of ring records that are all writes (no discard, no unknown range) of one disk under
   * one slot mask, as extents in starts and ends (a record starting inside the one before folded
   * into it); summary = [dev, slotMask, sectors of all records, lowest start, highest end].
   * Returns how many extents, or -1 for any other batch (read it record by record).
   */
  plainWrites(batch: Uint8Array, starts: Float64Array, ends: Float64Array, summary: Float64Array): number;
  /** Connects to an NBD export by URI (libnbd), giving up after connectTimeoutMs (0: never); throws an ErrnoError (ETIMEDOUT when it gave up). */
  NbdClient: new (uri: string, connectTimeoutMs?: number) => NbdClient;
}

/** One connection to an NBD export; single calls block, batch() runs on a worker with up to depth requests in flight. */
export interface NbdClient {
  size(): number;
  readOnly(): boolean;
  canFlush(): boolean;
  canTrim(): boolean;
  canZero(): boolean;
  tlsNegotiated(): boolean;
  /** Exactly length bytes; returns length. */
  pread(buffer: Buffer, bufferOffset: number, length: number, position: number): number;
  pwrite(buffer: Buffer, bufferOffset: number, length: number, position: number): number;
  flush(): void;
  trim(position: number, length: number): void;
  /** Reads as zeros afterwards (the server may deallocate). */
  zero(position: number, length: number): void;
  /** ops are [bufferOffset, length, position] triples; rejects with an ErrnoError carrying `position`. */
  batch(write: boolean, buffer: Buffer, ops: Float64Array, depth: number): Promise<void>;
  flushAsync(): Promise<void>;
  close(): void;
}

/** Errors from the addon carry errno's name. */
export interface ErrnoError extends Error {
  code?: string;
  errno?: number;
  syscall?: string;
}

const here = path.dirname(fileURLToPath(import.meta.url));
// From src/base/ (tsx) or dist/src/base/ (built).
const candidates = [
  path.resolve(here, '../../addon/build/Release/dpsr.node'),
  path.resolve(here, '../../../addon/build/Release/dpsr.node'),
];

let loaded: Native | undefined;

export function native(): Native {
  if (loaded) return loaded;
  const require = createRequire(import.meta.url);
  const failures: string[] = [];
  for (const file of candidates) {
    try {
      loaded = require(file) as Native;
      return loaded;
    } catch (err) {
      failures.push(`${file}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  throw new Error(`cannot load the dpsr addon (run npm run build); tried:\n  ${failures.join('\n  ')}`);
}
