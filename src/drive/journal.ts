// The redo journal in the DPSR drive's reserved tail (DESIGN invariant 5): every write to the
// image goes first into one transaction here, is committed, and only then applied in place, so
// the image is always the previous or the new point in time.
//
// On-disk format (all blocks 4 KiB; offsets relative to the region start; integers little-endian):
//
//   [0, 4096)            head block: magic "DPSRJNL1", version (2; 1 is read), type (1 open, 2 commit), seq (u64),
//                        nonce (16 random bytes, new for every transaction), entryCount, dataBytes,
//                        totalBytes (u64 each), txnHash (sha256), and headHash = sha256 of the
//                        96 bytes before it (a torn head write is never taken for a commit).
//   [4096, D)            data area: the data of every data entry, concatenated in entry order
//                        (each a multiple of 512 bytes), zero-padded to 4 KiB: D = 4096 + roundUp(dataBytes).
//   [D, D + 4096·n)      descriptor blocks, n = ceil(entryCount / 252): magic "DPSRJDS1", version,
//                        block index, seq, nonce, count, then 16-byte descriptors from byte 64:
//                        targetSector (u64), sectors (u48), kind (u16: 1 data, 2 discard).
//
// txnHash = sha256("DPSR journal v2\0" ‖ pair id (UTF-8) ‖ 0 ‖ seq ‖ nonce ‖ data bytes ‖ every descriptor, in order):
// a transaction left in the region by an earlier pairing of the drive never verifies for another pair
// (version 1, still read, had no pair id: sha256("DPSR journal v1\0" ‖ seq ‖ …)). `pair` also zeroes the head.
// Data blocks are raw (no header), so they are written and applied straight from aligned buffers;
// they are bound to the transaction by txnHash, which covers seq and nonce: leftovers of an older
// transaction, or a mix of two, never verify. Every other block carries seq and nonce.
//
// Writing: head (type open, which also voids whatever committed transaction it overwrites), data and
// descriptors in large writes with several in flight, fdatasync, head (type commit), fdatasync.
// One transaction at a time, always at the region start: the caller applies a committed transaction
// before writing the next one (the drive's label records the last applied seq).
//
// Reading: readCommitted(seq) verifies everything (one streaming pass over the region; only the
// descriptors, 16 bytes per entry, stay in memory) and returns a CommittedTransaction whose data is
// read again lazily: entries() yields entries (data entries in pieces of at most 4 MiB), and
// applyTransaction() copies the data area onto the image in large reads and writes.
import crypto from 'node:crypto';
import type { IoOp } from '../io/batch-io.js';
import type { BlockIo } from '../io/block-io.js';
import { DpsrError } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { tailEndBytes } from './shutdown-record.js';
import { native } from '../base/native.js';
import { SECTOR, formatBytes } from '../base/units.js';

const JOURNAL_BLOCK = 4096;
const HEAD_MAGIC = Buffer.from('DPSRJNL1');
const DESC_MAGIC = Buffer.from('DPSRJDS1');
const VERSION = 2;
const READABLE_VERSIONS = new Set([1, 2]);
const TYPE_OPEN = 1;
const TYPE_COMMIT = 2;
const HEAD_HASHED = 96;
const DESC_HEADER = 64;
const DESC_BYTES = 16;
/** Descriptors in one descriptor block. */
const DESCRIPTORS_PER_BLOCK = (JOURNAL_BLOCK - DESC_HEADER) / DESC_BYTES; // 252
const KIND_DATA = 1;
const KIND_DISCARD = 2;
const MAX_SECTORS = 2 ** 48 - 1;
/** The start of txnHash: the version's domain and, from version 2, the pair the transaction belongs to. */
function txnHashStart(version: number, pairId: string, seq: number, nonce: Buffer): crypto.Hash {
  const hash = crypto.createHash('sha256');
  if (version === 1) hash.update('DPSR journal v1\0');
  else hash.update('DPSR journal v2\0').update(pairId, 'utf8').update(Buffer.alloc(1));
  return hash.update(u64(seq)).update(nonce);
}
const DEFAULT_CHUNK_BYTES = 4 << 20;
const DEFAULT_IN_FLIGHT = 4;
/** Most descriptors one apply batch holds (a batch is one read of the data area, then its writes). */
const MAX_BATCH_PIECES = 1024;

export interface JournalRegion {
  drive: BlockIo;
  startBytes: number;
  lengthBytes: number;
  /** The pair whose transactions it holds: bound into every transaction's hash. */
  pairId: string;
}

/** An entry's data must not change until its transaction is written (it may be written later, from the same memory). */
export type JournalEntry =
  | { kind: 'data'; targetSector: number; data: Buffer }
  | { kind: 'discard'; targetSector: number; sectors: number };

export interface JournalIoOptions {
  /** Size of each large I/O (a multiple of 4 KiB), default 4 MiB. */
  chunkBytes?: number;
  /** I/Os in flight, default 4. */
  inFlight?: number;
}

export interface WriteOptions extends JournalIoOptions {
  /** For tests (a crash before the commit): write everything but the commit. Default true. */
  commit?: boolean;
}

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

/** Bytes a transaction with these data bytes and entries takes in the journal: head + data padded to 4 KiB + descriptor blocks. */
export function journalBytesFor(dataBytes: number, entries: number): number {
  return JOURNAL_BLOCK + roundUp(dataBytes, JOURNAL_BLOCK) + JOURNAL_BLOCK * Math.ceil(entries / DESCRIPTORS_PER_BLOCK);
}

const MIN_JOURNAL_BYTES = 1 << 20;

/** Where the journal lives on a drive of `driveBytes`: the reserved tail between the image (and its history region) and the shutdown record (below the label), or null (none, or too small for one). */
export function journalPlace(driveBytes: number, pair: { dataSectors: number; reservedSectors: number; historySectors?: number }): { startBytes: number; lengthBytes: number } | null {
  if (pair.reservedSectors === 0) return null;
  const startBytes = roundUp(pair.dataSectors * SECTOR, JOURNAL_BLOCK) + (pair.historySectors ?? 0) * SECTOR; // after the history region
  const endBytes = tailEndBytes(driveBytes, pair);
  return endBytes - startBytes >= MIN_JOURNAL_BYTES ? { startBytes, lengthBytes: endBytes - startBytes } : null;
}

/** The most changed data one journaled sync of a pair may carry, from its record (null: no journal, its syncs write in place). */
export function journalCapacityOf(pair: { dataSectors: number; reservedSectors: number; historySectors?: number; drive: { sizeSectors: number } }): number | null {
  const place = journalPlace(pair.drive.sizeSectors * SECTOR, pair);
  return place ? journalDataCapacity(place.lengthBytes) : null;
}

/** The most changed data a region of `lengthBytes` surely holds in one transaction (the worst case: every entry one 4 KiB block). */
export function journalDataCapacity(lengthBytes: number): number {
  const perBlock = JOURNAL_BLOCK + JOURNAL_BLOCK / DESCRIPTORS_PER_BLOCK; // a block of data and its share of a descriptor block
  return Math.max(0, Math.floor((lengthBytes - 2 * JOURNAL_BLOCK) / perBlock) * JOURNAL_BLOCK);
}

/** A transaction found committed and verified; its data is read again from the region on use. */
export class CommittedTransaction {
  /** @internal descriptors (16 bytes each), verified. */
  readonly descriptors: Buffer;

  constructor(
    readonly region: JournalRegion,
    readonly seq: number,
    readonly entryCount: number,
    readonly dataBytes: number,
    /** Bytes the transaction takes in the journal. */
    readonly bytes: number,
    descriptors: Buffer,
  ) {
    this.descriptors = descriptors;
  }

  /** Every sector the transaction writes (data and discards): what its undo must hold. */
  targetExtents(): ExtentSet {
    const out = new ExtentSet();
    for (let i = 0; i < this.entryCount; i++) {
      const d = decodeDescriptor(this.descriptors, i);
      out.add(d.targetSector, d.targetSector + d.sectors);
    }
    return out;
  }

  /**
   * The entries, in order, read lazily from the region. A data entry larger than `pieceBytes`
   * (default 4 MiB) comes as consecutive pieces with contiguous targets; each piece's data is
   * a fresh Buffer, so memory stays bounded by what the caller keeps.
   */
  async *entries(pieceBytes = DEFAULT_CHUNK_BYTES): AsyncGenerator<JournalEntry> {
    pieceBytes = Math.max(JOURNAL_BLOCK, Math.floor(pieceBytes / JOURNAL_BLOCK) * JOURNAL_BLOCK);
    const buf = native().alignedBuffer(pieceBytes + 2 * JOURNAL_BLOCK, JOURNAL_BLOCK);
    const dataStart = this.region.startBytes + JOURNAL_BLOCK;
    let dataOffset = 0;
    for (let i = 0; i < this.entryCount; i++) {
      const d = decodeDescriptor(this.descriptors, i);
      if (d.kind === KIND_DISCARD) {
        yield { kind: 'discard', targetSector: d.targetSector, sectors: d.sectors };
        continue;
      }
      let done = 0;
      const length = d.sectors * SECTOR;
      while (done < length) {
        const n = Math.min(pieceBytes, length - done);
        const from = dataOffset + done;
        const alignedFrom = Math.floor(from / JOURNAL_BLOCK) * JOURNAL_BLOCK;
        const alignedTo = roundUp(from + n, JOURNAL_BLOCK);
        await fullIo('read', this.region.drive, buf, 0, alignedTo - alignedFrom, dataStart + alignedFrom);
        const skip = from - alignedFrom;
        yield { kind: 'data', targetSector: d.targetSector + done / SECTOR, data: Buffer.from(buf.subarray(skip, skip + n)) };
        done += n;
      }
      dataOffset += length;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Writes a whole transaction at the region start: head (open), entries, fdatasync, head (commit),
 * fdatasync. Returns its size and, once committed, a handle to apply it at once without reading it
 * back to verify (what was just written; after a crash, use readCommitted). Throws (EJOURNALFULL) if it does not fit: before writing anything when given an
 * array, else as soon as the entries seen so far overflow (leaving no committed transaction).
 */
export async function writeTransaction(region: JournalRegion, seq: number,
  entries: JournalEntry[] | Iterable<JournalEntry> | AsyncIterable<JournalEntry>,
  opts: WriteOptions = {}): Promise<{ bytes: number; committed: CommittedTransaction | null }> {
  checkRegion(region);
  checkSeq(seq);
  const { chunkBytes, inFlight } = ioOptions(opts);
  if (Array.isArray(entries)) {
    let dataBytes = 0;
    for (const e of entries) dataBytes += checkEntry(e);
    const need = journalBytesFor(dataBytes, entries.length);
    if (need > region.lengthBytes) throw tooBig(need, dataBytes, entries.length, region);
  }
  const nonce = crypto.randomBytes(16);
  const hash = txnHashStart(VERSION, region.pairId, seq, nonce);
  const head = native().alignedBuffer(JOURNAL_BLOCK, JOURNAL_BLOCK);
  encodeHead(head, { version: VERSION, type: TYPE_OPEN, seq, nonce, entryCount: 0, dataBytes: 0, totalBytes: 0, txnHash: Buffer.alloc(32) });
  await fullIo('write', region.drive, head, 0, JOURNAL_BLOCK, region.startBytes);

  const writer = new StreamWriter(region.drive, region.startBytes + JOURNAL_BLOCK, chunkBytes, inFlight);
  const table = new DescriptorTable(seq, nonce);
  let dataBytes = 0;
  // Entries read together lie side by side in one buffer: hashed and copied as one run,
  // since per 4 KiB call both cost more than the bytes do.
  let run: Buffer | null = null;
  const flushRun = async () => {
    if (!run) return;
    hash.update(run);
    await writer.append(run, true);
    run = null;
  };
  try {
    for await (const e of entries as AsyncIterable<JournalEntry>) {
      const bytes = checkEntry(e);
      const need = journalBytesFor(dataBytes + bytes, table.count + 1);
      if (need > region.lengthBytes) throw tooBig(need, dataBytes + bytes, table.count + 1, region);
      if (e.kind === 'data') {
        if (run && run.buffer === e.data.buffer && run.byteOffset + run.length === e.data.byteOffset) {
          run = Buffer.from(run.buffer, run.byteOffset, run.length + e.data.length);
        } else {
          await flushRun();
          run = e.data;
        }
        dataBytes += bytes;
        table.add(e.targetSector, bytes / SECTOR, KIND_DATA);
      } else {
        table.add(e.targetSector, e.sectors, KIND_DISCARD);
      }
    }
    await flushRun();
    await writer.padToBlock();
    for (const block of table.blocks) {
      hash.update(block.subarray(DESC_HEADER, DESC_HEADER + block.readUInt32LE(40) * DESC_BYTES));
      await writer.append(block);
    }
    await writer.finish();
  } finally {
    await writer.settle();
  }
  const totalBytes = journalBytesFor(dataBytes, table.count);
  if (writer.position - region.startBytes !== totalBytes) {
    throw new Error(`journal: wrote ${writer.position - region.startBytes} bytes, expected ${totalBytes}`); // a bug
  }
  await fdatasync(region.drive);
  if (opts.commit === false) return { bytes: totalBytes, committed: null };
  encodeHead(head, { version: VERSION, type: TYPE_COMMIT, seq, nonce, entryCount: table.count, dataBytes, totalBytes, txnHash: hash.digest() });
  await fullIo('write', region.drive, head, 0, JOURNAL_BLOCK, region.startBytes);
  await fdatasync(region.drive);
  const descriptors = Buffer.concat(table.blocks.map((b) => b.subarray(DESC_HEADER, DESC_HEADER + b.readUInt32LE(40) * DESC_BYTES)));
  return { bytes: totalBytes, committed: new CommittedTransaction(region, seq, table.count, dataBytes, totalBytes, descriptors) };
}

/** Makes any transaction in the region unreplayable (zeroes its head block), durably. */
export async function invalidate(region: JournalRegion): Promise<void> {
  checkRegion(region);
  const head = native().alignedBuffer(JOURNAL_BLOCK, JOURNAL_BLOCK);
  head.fill(0);
  await fullIo('write', region.drive, head, 0, JOURNAL_BLOCK, region.startBytes);
  await fdatasync(region.drive);
}

/** Sequential writes from a byte stream, gathered into chunkBytes buffers, several in flight. */
class StreamWriter {
  private readonly buffers: Buffer[];
  private readonly pending: Array<Promise<void> | null>;
  private slot = 0;
  private fill = 0;
  private error: { error: unknown } | null = null;
  /** Device offset of the next byte to be appended. */
  position: number;

  constructor(private readonly drive: BlockIo, start: number, private readonly chunkBytes: number, inFlight: number) {
    this.position = start;
    this.buffers = Array.from({ length: inFlight }, () => native().alignedBuffer(chunkBytes, JOURNAL_BLOCK));
    this.pending = this.buffers.map(() => null);
  }

  /**
   * Appends `data`, copied into the writer's buffers; or with `steady` (its
   * memory does not change until settle()), written from where it is when
   * O_DIRECT can take it so: whole blocks, aligned, at a buffer boundary.
   */
  async append(data: Buffer, steady = false): Promise<void> {
    if (steady && this.fill === 0 && data.length % JOURNAL_BLOCK === 0 && native().isAligned(data, JOURNAL_BLOCK)) {
      this.position += data.length;
      await this.submit(data);
      return;
    }
    let off = 0;
    while (off < data.length) {
      if (this.error) throw this.error.error;
      const buf = this.buffers[this.slot];
      const n = Math.min(data.length - off, this.chunkBytes - this.fill);
      data.copy(buf, this.fill, off, off + n);
      this.fill += n;
      off += n;
      this.position += n;
      if (this.fill === this.chunkBytes) await this.submit();
    }
  }

  /** Zero-pads to the next 4 KiB boundary. */
  async padToBlock(): Promise<void> {
    const pad = roundUp(this.fill, JOURNAL_BLOCK) - this.fill;
    if (pad === 0) return;
    this.buffers[this.slot].fill(0, this.fill, this.fill + pad);
    this.fill += pad;
    this.position += pad;
    if (this.fill === this.chunkBytes) await this.submit();
  }

  async finish(): Promise<void> {
    if (this.fill > 0) await this.submit();
    await this.settle();
    if (this.error) throw this.error.error;
  }

  /** Waits for every write in flight (never leaves one running on a buffer). */
  async settle(): Promise<void> {
    await Promise.all(this.pending);
  }

  /** Writes the current buffer (or `from`, the bytes just before `position`), then waits for the next slot. */
  private async submit(from?: Buffer): Promise<void> {
    const buf = from ?? this.buffers[this.slot];
    const length = from ? from.length : this.fill;
    const at = this.position - length;
    this.pending[this.slot] = fullIo('write', this.drive, buf, 0, length, at).then(() => undefined, (error) => {
      this.error ??= { error };
    });
    this.slot = (this.slot + 1) % this.buffers.length;
    this.fill = 0;
    await this.pending[this.slot]; // the next buffer must be free before it is filled
    this.pending[this.slot] = null;
    if (this.error) throw this.error.error;
  }
}

class DescriptorTable {
  readonly blocks: Buffer[] = [];
  count = 0;

  constructor(private readonly seq: number, private readonly nonce: Buffer) {}

  add(targetSector: number, sectors: number, kind: number): void {
    const index = this.count % DESCRIPTORS_PER_BLOCK;
    if (index === 0) {
      const b = Buffer.alloc(JOURNAL_BLOCK);
      DESC_MAGIC.copy(b, 0);
      b.writeUInt32LE(VERSION, 8);
      b.writeUInt32LE(this.blocks.length, 12);
      b.writeBigUInt64LE(BigInt(this.seq), 16);
      this.nonce.copy(b, 24);
      this.blocks.push(b);
    }
    const b = this.blocks[this.blocks.length - 1];
    encodeDescriptor(b, DESC_HEADER + index * DESC_BYTES, targetSector, sectors, kind);
    b.writeUInt32LE(index + 1, 40);
    this.count++;
  }
}

function encodeDescriptor(b: Buffer, at: number, targetSector: number, sectors: number, kind: number): void {
  b.writeBigUInt64LE(BigInt(targetSector), at);
  b.writeUIntLE(sectors, at + 8, 6);
  b.writeUInt16LE(kind, at + 14);
}

function decodeDescriptor(table: Buffer, i: number): { targetSector: number; sectors: number; kind: number } {
  const at = i * DESC_BYTES;
  const big = table.readBigUInt64LE(at);
  return { targetSector: big > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(big), sectors: table.readUIntLE(at + 8, 6), kind: table.readUInt16LE(at + 14) };
}

interface Head {
  version: number;
  type: number;
  seq: number;
  nonce: Buffer;
  entryCount: number;
  dataBytes: number;
  totalBytes: number;
  txnHash: Buffer;
}

function encodeHead(b: Buffer, h: Head): void {
  b.fill(0, 0, JOURNAL_BLOCK);
  HEAD_MAGIC.copy(b, 0);
  b.writeUInt32LE(h.version, 8);
  b.writeUInt32LE(h.type, 12);
  b.writeBigUInt64LE(BigInt(h.seq), 16);
  h.nonce.copy(b, 24);
  b.writeBigUInt64LE(BigInt(h.entryCount), 40);
  b.writeBigUInt64LE(BigInt(h.dataBytes), 48);
  b.writeBigUInt64LE(BigInt(h.totalBytes), 56);
  h.txnHash.copy(b, 64);
  crypto.createHash('sha256').update(b.subarray(0, HEAD_HASHED)).digest().copy(b, HEAD_HASHED);
}

function decodeHead(b: Buffer): Head | null {
  if (!b.subarray(0, 8).equals(HEAD_MAGIC) || !READABLE_VERSIONS.has(b.readUInt32LE(8))) return null;
  const sum = crypto.createHash('sha256').update(b.subarray(0, HEAD_HASHED)).digest();
  if (!sum.equals(b.subarray(HEAD_HASHED, HEAD_HASHED + 32))) return null;
  const num = (at: number): number => {
    const v = b.readBigUInt64LE(at);
    return v > BigInt(Number.MAX_SAFE_INTEGER) ? -1 : Number(v);
  };
  const h: Head = {
    version: b.readUInt32LE(8), type: b.readUInt32LE(12), seq: num(16), nonce: Buffer.from(b.subarray(24, 40)), entryCount: num(40),
    dataBytes: num(48), totalBytes: num(56), txnHash: Buffer.from(b.subarray(64, 96)),
  };
  if (h.seq < 0 || h.entryCount < 0 || h.dataBytes < 0 || h.totalBytes < 0) return null;
  return h;
}

// ---------------------------------------------------------------------------------------------
// Reading

/**
 * Why transaction `seq`, which did not verify, may still have been committed, and so maybe
 * partly applied: 'data' when its head says committed (the commit is written only once the
 * data is durable, so the data was damaged after), 'head' when the head itself no longer
 * verifies while the label or record names `seq` as pending (a head write is one sector, never
 * torn: a head that is neither zeros nor valid was damaged, perhaps after its commit); null
 * when the head proves it never committed.
 */
export async function unverifiedCommit(region: JournalRegion, seq: number, pendingSeq: number | null): Promise<'data' | 'head' | null> {
  checkRegion(region);
  if (region.lengthBytes < JOURNAL_BLOCK) return null;
  const block = native().alignedBuffer(JOURNAL_BLOCK, JOURNAL_BLOCK);
  await fullIo('read', region.drive, block, 0, JOURNAL_BLOCK, region.startBytes);
  const head = decodeHead(block);
  if (head) return head.type === TYPE_COMMIT && head.seq === seq ? 'data' : null;
  const written = block.subarray(0, HEAD_HASHED + 32).some((b) => b !== 0);
  return written && pendingSeq === seq ? 'head' : null;
}

/** A transaction that may have been committed and no longer verifies, as one line with the way out. */
export function damagedTransaction(pairName: string, seq: number, damaged: 'data' | 'head' = 'data'): DpsrError {
  const what = damaged === 'data' ? 'was committed, but its data no longer verifies'
    : 'was pending, and its journal head no longer verifies: it may have been committed';
  return new DpsrError(`journal transaction ${seq} of pair ${pairName} ${what} (damaged on the drive): ` +
    `the image may be partly applied and is not usable; nothing written. dpsr sync ${pairName} writes again what it held ` +
    `(or pair again with --force: a full copy)`, 'ENOTUSABLE');
}

/**
 * The committed transaction with exactly sequence `seq`, verified end to end (every descriptor
 * block's seq and nonce, and txnHash over all data and descriptors), or null if the region holds
 * none, a torn or corrupt one, or one with another seq. I/O errors are thrown.
 */
export async function readCommitted(region: JournalRegion, seq: number, opts: JournalIoOptions = {}): Promise<CommittedTransaction | null> {
  checkRegion(region);
  checkSeq(seq);
  const { chunkBytes, inFlight } = ioOptions(opts);
  if (region.lengthBytes < JOURNAL_BLOCK) return null;
  const block = native().alignedBuffer(JOURNAL_BLOCK, JOURNAL_BLOCK);
  await fullIo('read', region.drive, block, 0, JOURNAL_BLOCK, region.startBytes);
  const head = decodeHead(block);
  if (!head || head.type !== TYPE_COMMIT || head.seq !== seq) return null;
  if (head.dataBytes % SECTOR !== 0 || head.totalBytes !== journalBytesFor(head.dataBytes, head.entryCount)
    || head.totalBytes > region.lengthBytes) return null;

  const hash = txnHashStart(head.version, region.pairId, seq, head.nonce);
  const paddedData = roundUp(head.dataBytes, JOURNAL_BLOCK);
  const descriptors = Buffer.alloc(head.entryCount * DESC_BYTES);
  let dataSectors = 0;
  let pos = 0; // relative to the data area
  let descIndex = 0;
  for await (const chunk of readAhead(region.drive, region.startBytes + JOURNAL_BLOCK, head.totalBytes - JOURNAL_BLOCK, chunkBytes, inFlight)) {
    // Chunks are 4 KiB multiples and the data area is padded to 4 KiB: no descriptor block straddles two chunks.
    if (pos < head.dataBytes) hash.update(chunk.subarray(0, Math.min(chunk.length, head.dataBytes - pos)));
    let off = pos + chunk.length > paddedData ? Math.max(0, paddedData - pos) : chunk.length;
    for (; off < chunk.length; off += JOURNAL_BLOCK) {
      const b = chunk.subarray(off, off + JOURNAL_BLOCK);
      const expected = Math.min(DESCRIPTORS_PER_BLOCK, head.entryCount - descIndex * DESCRIPTORS_PER_BLOCK);
      if (!b.subarray(0, 8).equals(DESC_MAGIC) || b.readUInt32LE(8) !== head.version || b.readUInt32LE(12) !== descIndex
        || b.readBigUInt64LE(16) !== BigInt(seq) || !b.subarray(24, 40).equals(head.nonce) || b.readUInt32LE(40) !== expected) {
        return null;
      }
      const entries = b.subarray(DESC_HEADER, DESC_HEADER + expected * DESC_BYTES);
      hash.update(entries);
      entries.copy(descriptors, descIndex * DESCRIPTORS_PER_BLOCK * DESC_BYTES);
      descIndex++;
    }
    pos += chunk.length;
  }
  if (!hash.digest().equals(head.txnHash)) return null;
  for (let i = 0; i < head.entryCount; i++) {
    const d = decodeDescriptor(descriptors, i);
    if (d.targetSector < 0 || d.sectors === 0 || (d.kind !== KIND_DATA && d.kind !== KIND_DISCARD)) return null;
    if (d.kind === KIND_DATA) dataSectors += d.sectors;
  }
  if (dataSectors * SECTOR !== head.dataBytes) return null;
  return new CommittedTransaction(region, seq, head.entryCount, head.dataBytes, head.totalBytes, descriptors);
}

/** Reads [start, start + length) in order in chunkBytes pieces, up to inFlight reads ahead. A yielded chunk is valid until the next step. */
async function* readAhead(drive: BlockIo, start: number, length: number, chunkBytes: number, inFlight: number): AsyncGenerator<Buffer> {
  const count = Math.ceil(length / chunkBytes);
  const slots = Math.min(inFlight, Math.max(1, count));
  const buffers = Array.from({ length: slots }, () => native().alignedBuffer(chunkBytes, JOURNAL_BLOCK));
  const reads: Array<Promise<unknown> | null> = buffers.map(() => null);
  const issue = (k: number): void => {
    const n = Math.min(chunkBytes, length - k * chunkBytes);
    const p = fullIo('read', drive, buffers[k % slots], 0, n, start + k * chunkBytes);
    p.catch(() => { /* awaited below */ });
    reads[k % slots] = p;
  };
  try {
    for (let k = 0; k < Math.min(slots, count); k++) issue(k);
    for (let k = 0; k < count; k++) {
      await reads[k % slots];
      yield buffers[k % slots].subarray(0, Math.min(chunkBytes, length - k * chunkBytes));
      if (k + slots < count) issue(k + slots);
      else reads[k % slots] = null;
    }
  } finally {
    await Promise.allSettled(reads.filter((r) => r !== null));
  }
}

// ---------------------------------------------------------------------------------------------
// Applying

interface Piece {
  kind: number;
  targetSector: number;
  sectors: number;
  /** Data: offset in the data area. */
  dataOffset: number;
}

interface Batch {
  index: number;
  pieces: Piece[];
  /** Data area range read for the batch (4 KiB aligned), empty for discard-only batches. */
  readFrom: number;
  readTo: number;
  /** Target ranges [start, end) sorted by start. */
  ranges: Array<[number, number]>;
  done: Promise<void>;
  resolve: () => void;
}

/**
 * Applies a committed transaction in place on `drive` (the DPSR drive, writable): data at
 * targetSector × 512, discards with BLKDISCARD (zeros written where the device refuses), then
 * fdatasync. Several batches in flight; a write never overtakes an earlier overlapping one, so
 * later entries win as in the transaction. Idempotent.
 */
export async function applyTransaction(drive: BlockIo, txn: CommittedTransaction, opts: JournalIoOptions = {}): Promise<void> {
  const { chunkBytes, inFlight } = ioOptions(opts);
  const region = txn.region;
  const dataStart = region.startBytes + JOURNAL_BLOCK;
  if (drive === region.drive) {
    // Sanity: nothing may land on the journal itself.
    for (let i = 0; i < txn.entryCount; i++) {
      const d = decodeDescriptor(txn.descriptors, i);
      const s = d.targetSector * SECTOR;
      const e = (d.targetSector + d.sectors) * SECTOR;
      if (s < region.startBytes + region.lengthBytes && e > region.startBytes) {
        throw new DpsrError(`journal seq ${txn.seq}: an entry (sectors ${d.targetSector}+${d.sectors}) overlaps the journal region`, 'EJOURNAL');
      }
    }
  }
  const batches = planBatches(txn, chunkBytes);
  const active = new Map<number, Batch>();
  const buffers = Array.from({ length: inFlight }, () => native().alignedBuffer(chunkBytes + 2 * JOURNAL_BLOCK, JOURNAL_BLOCK));
  let zeros: Buffer | null = null;
  let failure: { error: unknown } | null = null;
  const next = (): Batch | null => {
    if (failure) return null;
    const r = batches.next();
    if (r.done) return null;
    active.set(r.value.index, r.value);
    return r.value;
  };
  const worker = async (slot: number): Promise<void> => {
    const buf = buffers[slot];
    for (let batch = next(); batch !== null; batch = next()) {
      try {
        if (batch.readTo > batch.readFrom) {
          await fullIo('read', region.drive, buf, 0, batch.readTo - batch.readFrom, dataStart + batch.readFrom);
        }
        for (const [i, earlier] of active) {
          if (i < batch.index && overlaps(earlier.ranges, batch.ranges)) await earlier.done;
        }
        if (failure) return;
        const one = async (p: Piece): Promise<void> => {
          const at = p.targetSector * SECTOR;
          const length = p.sectors * SECTOR;
          if (p.kind === KIND_DATA) await fullIo('write', drive, buf, p.dataOffset - batch!.readFrom, length, at);
          else zeros = await discard(drive, at, length, zeros, chunkBytes);
        };
        if (batch.pieces.length === 1 || selfOverlaps(batch.ranges)) {
          for (const p of batch.pieces) await one(p); // in order: later pieces win
        } else {
          // Disjoint pieces (small scattered extents): all the data in one batch of writes.
          const data = batch.pieces.filter((p) => p.kind === KIND_DATA);
          await drive.batch('write', 'DPSR drive', buf, data.map((p) => ({
            bufferOffset: p.dataOffset - batch!.readFrom, length: p.sectors * SECTOR, position: p.targetSector * SECTOR,
          })));
          for (const p of batch.pieces) if (p.kind !== KIND_DATA) await one(p);
        }
      } catch (error) {
        failure ??= { error };
        return;
      } finally {
        active.delete(batch.index);
        batch.resolve();
      }
    }
  };
  await Promise.all(buffers.map((_, slot) => worker(slot)));
  if (failure) throw (failure as { error: unknown }).error;
  await fdatasync(drive);
}

const entryEnd = (e: JournalEntry) => e.targetSector + (e.kind === 'data' ? e.data.length / SECTOR : e.sectors);

/** Whether two entries touch the same sector: then only the journal's own apply keeps their order. */
export function entriesOverlap(entries: JournalEntry[]): boolean {
  const spans = entries.map((e): [number, number] => [e.targetSector, entryEnd(e)]).sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) if (spans[i][0] < spans[i - 1][1]) return true;
  return false;
}

/**
 * Applies a committed transaction from the entries it was written from,
 * still in memory (each data buffer page-aligned, as O_DIRECT needs), when
 * no two of them overlap (entriesOverlap): the same writes as
 * applyTransaction without reading the journal back, in any order.
 */
export async function applyEntries(drive: BlockIo, entries: JournalEntry[], opts: JournalIoOptions = {}): Promise<void> {
  if (entriesOverlap(entries)) throw new DpsrError('applyEntries: overlapping entries need the journal\'s ordered apply', 'EFAIL'); // a bug
  const { chunkBytes } = ioOptions(opts);
  const writes = new Map<ArrayBufferLike, IoOp[]>();
  let zeros: Buffer | null = null;
  for (const e of entries) {
    if (e.kind === 'discard') continue;
    const ops = writes.get(e.data.buffer) ?? [];
    writes.set(e.data.buffer, ops);
    ops.push({ bufferOffset: e.data.byteOffset, length: e.data.length, position: e.targetSector * SECTOR });
  }
  for (const [buffer, ops] of writes) await drive.batch('write', 'DPSR drive', Buffer.from(buffer), ops);
  for (const e of entries) if (e.kind === 'discard') zeros = await discard(drive, e.targetSector * SECTOR, e.sectors * SECTOR, zeros, chunkBytes);
  await fdatasync(drive);
}

function* planBatches(txn: CommittedTransaction, chunkBytes: number): Generator<Batch> {
  let index = 0;
  let pieces: Piece[] = [];
  let batchData = 0; // data bytes in the batch
  let batchFrom = 0; // data offset of its first data byte
  let dataOffset = 0;
  const make = (): Batch => {
    let resolve!: () => void;
    const done = new Promise<void>((r) => { resolve = r; });
    const ranges = pieces.map((p): [number, number] => [p.targetSector, p.targetSector + p.sectors]).sort((a, b) => a[0] - b[0]);
    const readFrom = Math.floor(batchFrom / JOURNAL_BLOCK) * JOURNAL_BLOCK;
    const readTo = batchData > 0 ? roundUp(batchFrom + batchData, JOURNAL_BLOCK) : readFrom;
    const b: Batch = { index: index++, pieces, readFrom, readTo, ranges, done, resolve };
    pieces = [];
    batchData = 0;
    return b;
  };
  for (let i = 0; i < txn.entryCount; i++) {
    const d = decodeDescriptor(txn.descriptors, i);
    if (d.kind === KIND_DISCARD) {
      if (pieces.length >= MAX_BATCH_PIECES) yield make();
      pieces.push({ kind: KIND_DISCARD, targetSector: d.targetSector, sectors: d.sectors, dataOffset: 0 });
      continue;
    }
    let done = 0;
    const length = d.sectors * SECTOR;
    while (done < length) {
      if (batchData >= chunkBytes || pieces.length >= MAX_BATCH_PIECES) yield make();
      if (batchData === 0) batchFrom = dataOffset + done;
      const n = Math.min(length - done, chunkBytes - batchData);
      const last = pieces[pieces.length - 1];
      if (last && last.kind === KIND_DATA && last.targetSector + last.sectors === d.targetSector + done / SECTOR
        && last.dataOffset + last.sectors * SECTOR === dataOffset + done) {
        last.sectors += n / SECTOR; // contiguous on both sides: one write
        batchData += n;
        done += n;
        continue;
      }
      pieces.push({ kind: KIND_DATA, targetSector: d.targetSector + done / SECTOR, sectors: n / SECTOR, dataOffset: dataOffset + done });
      batchData += n;
      done += n;
    }
    dataOffset += length;
  }
  if (pieces.length > 0) yield make();
}

/** Whether any two ranges of a sorted list share a sector. */
function selfOverlaps(ranges: Array<[number, number]>): boolean {
  for (let i = 1; i < ranges.length; i++) if (ranges[i][0] < ranges[i - 1][1]) return true;
  return false;
}

/** Whether two sorted range lists share a sector. */
function overlaps(a: Array<[number, number]>, b: Array<[number, number]>): boolean {
  if (a.length === 0 || b.length === 0) return false;
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i][1] <= b[j][0]) i++;
    else if (b[j][1] <= a[i][0]) j++;
    else return true;
  }
  return false;
}

const REFUSED_DISCARD = new Set(['EOPNOTSUPP', 'ENOTSUP', 'ENOTTY', 'EINVAL', 'ENOSYS']);

/** BLKDISCARD, or zeros written where the device does not discard. Returns the zero buffer it used. */
async function discard(drive: BlockIo, at: number, length: number, zeros: Buffer | null, chunkBytes: number): Promise<Buffer | null> {
  try {
    drive.discard(at, length);
    return zeros;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    if (!REFUSED_DISCARD.has(code)) {
      throw new DpsrError(`discarding ${length} bytes at byte ${at} of the DPSR drive failed: ${(err as Error).message}`, 'EIO', { errno: code || undefined, cause: err });
    }
  }
  if (!zeros) {
    zeros = native().alignedBuffer(chunkBytes, JOURNAL_BLOCK);
    zeros.fill(0);
  }
  for (let done = 0; done < length;) {
    const n = Math.min(zeros.length, length - done);
    await fullIo('write', drive, zeros, 0, n, at + done);
    done += n;
  }
  return zeros;
}

// ---------------------------------------------------------------------------------------------
// Helpers

function ioOptions(opts: JournalIoOptions): { chunkBytes: number; inFlight: number } {
  const chunkBytes = opts.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const inFlight = opts.inFlight ?? DEFAULT_IN_FLIGHT;
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes < JOURNAL_BLOCK || chunkBytes % JOURNAL_BLOCK !== 0) {
    throw new RangeError(`chunkBytes ${chunkBytes}: a multiple of ${JOURNAL_BLOCK}`);
  }
  if (!Number.isSafeInteger(inFlight) || inFlight < 1 || inFlight > 64) throw new RangeError(`inFlight ${inFlight}: 1 to 64`);
  return { chunkBytes, inFlight };
}

function checkRegion(r: JournalRegion): void {
  for (const [name, v] of [['startBytes', r.startBytes], ['lengthBytes', r.lengthBytes]] as const) {
    if (!Number.isSafeInteger(v) || v < 0 || v % JOURNAL_BLOCK !== 0) throw new RangeError(`journal region ${name} ${v}: a multiple of ${JOURNAL_BLOCK}`);
  }
}

function checkSeq(seq: number): void {
  if (!Number.isSafeInteger(seq) || seq < 0) throw new RangeError(`journal seq ${seq}: a non-negative integer`);
}

/** Validates an entry; returns its data bytes (0 for a discard). */
function checkEntry(e: JournalEntry): number {
  if (!Number.isSafeInteger(e.targetSector) || e.targetSector < 0) throw new RangeError(`journal entry targetSector ${e.targetSector}`);
  if (e.kind === 'data') {
    if (!Buffer.isBuffer(e.data) || e.data.length === 0 || e.data.length % SECTOR !== 0) {
      throw new RangeError(`journal data entry at sector ${e.targetSector}: ${e.data?.length} bytes, not a positive multiple of ${SECTOR}`);
    }
    return e.data.length;
  }
  if (e.kind === 'discard') {
    if (!Number.isSafeInteger(e.sectors) || e.sectors < 1 || e.sectors > MAX_SECTORS) throw new RangeError(`journal discard entry: ${e.sectors} sectors`);
    return 0;
  }
  throw new RangeError(`journal entry kind ${(e as { kind: unknown }).kind}`);
}

function tooBig(need: number, dataBytes: number, entries: number, region: JournalRegion): DpsrError {
  return new DpsrError(`journal transaction too big: ${entries} entries with ${formatBytes(dataBytes)} of data need ${formatBytes(need)} ` +
    `(${need} bytes), the journal region holds ${formatBytes(region.lengthBytes)} (${region.lengthBytes} bytes)`, 'EJOURNALFULL');
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
}

function fdatasync(drive: BlockIo): Promise<void> {
  return drive.flush('the DPSR drive', 'the journal may not be durable');
}

/** One positioned read or write of exactly `length` bytes of the DPSR drive (copy.ts's, with its error messages). */
function fullIo(kind: 'read' | 'write', drive: BlockIo, buf: Buffer, offset: number, length: number, position: number): Promise<void> {
  return drive.io(kind, 'DPSR drive', buf, offset, length, position);
}
