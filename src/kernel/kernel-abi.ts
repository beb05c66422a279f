// The layouts of bpf/dpsr.h, mirrored for user space; tests/kernel-abi.test.ts
// compiles the header and pins every size and offset against these.

export const MAX_SLOTS = 32;
export const MAX_RINGS = 8;
export const BITMAP_WORDS = 1024;
export const BITMAP_BITS = BITMAP_WORDS * 64;
export const OWNER_RING = 0; // the tracker's ring; others are ephemeral consumers
export const CONSUMER_OWNER = 1;

export const REC_UNKNOWN = 1;
export const REC_ERROR = 2;

export const ISSUED_ENTRIES = 8192;
export const MISSED_ENTRIES = 1024;
export const ISSUED_UNPLACED = 1;
export const ISSUED_REQUEUED = 2;
export const TAGS_PER_DISK = 1024;

export const Layout = {
  record: { size: 24, sector: 0, sectors: 8, dev: 12, op: 16, flags: 18, slotMask: 20 },
  slot: { size: 32, startSector: 0, endSector: 8, diskDev: 16, ringMask: 20, chunkShift: 24 },
  disk: { size: 8, slotMask: 0 },
  slotStats: { size: 32, records: 0, sectors: 8, diskSectors: 16, unknown: 24 },
  ringStats: { size: 16, records: 0, drops: 8 },
  bitmap: { size: 8 + BITMAP_WORDS * 8, whole: 0, words: 8 },
  consumer: { size: 16, pid: 0, flags: 4, startTime: 8 },
  control: { size: 8, epoch: 0, ownerClean: 4 },
  issued: { size: 32, sector: 0, issuedNs: 8, dev: 16, sectors: 20, op: 24, flags: 26 },
  missedKey: { size: 24, rq: 0, issuedNs: 8, sector: 16 },
  tagEntry: { size: 48, seq: 0, rq: 8, issued: 16 },
  logStats: { size: 8, full: 0 },
} as const;

export const REQ_OP_DISCARD = 3;
export const REQ_OP_SECURE_ERASE = 5;

/** REQ_OP_* values (include/linux/blk_types.h), for display. */
export const OpNames: Record<number, string> = {
  1: 'write', 3: 'discard', 5: 'secure-erase', 7: 'zone-append', 9: 'write-zeroes', 35: 'drv-out',
};

export interface WriteRecord {
  startSector: number; // absolute on the disk
  endSector: number;
  dev: number; // kernel dev_t of the disk
  op: number;
  flags: number;
  slotMask: number;
}

export interface Slot {
  startSector: number;
  endSector: number;
  diskDev: number;
  ringMask: number;
  chunkShift: number;
}

export interface SlotStats {
  records: number;
  sectors: number;
  diskSectors: number;
  unknown: number;
}

export interface Consumer {
  pid: number;
  flags: number;
  startTime: number;
}

const u64 = (b: Buffer, off: number) => b.readUInt32LE(off) + b.readUInt32LE(off + 4) * 0x1_0000_0000;

function putU64(b: Buffer, off: number, v: number): void {
  b.writeUInt32LE(v % 0x1_0000_0000, off);
  b.writeUInt32LE(Math.floor(v / 0x1_0000_0000), off + 4);
}

export function u32Key(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

/** Calls `each` for every record of a batch, without allocating per record. */
export function forEachRecord(batch: Uint8Array, each: (r: WriteRecord) => void): void {
  const L = Layout.record;
  const r: WriteRecord = { startSector: 0, endSector: 0, dev: 0, op: 0, flags: 0, slotMask: 0 };
  // A DataView reads each field inline; Buffer's readers are calls with bounds checks of their own.
  const v = new DataView(batch.buffer, batch.byteOffset, batch.length);
  for (let off = 0; off + L.size <= batch.length; off += L.size) {
    r.startSector = v.getUint32(off + L.sector, true) + v.getUint32(off + L.sector + 4, true) * 0x1_0000_0000;
    r.endSector = r.startSector + v.getUint32(off + L.sectors, true);
    r.dev = v.getUint32(off + L.dev, true);
    r.op = v.getUint16(off + L.op, true);
    r.flags = v.getUint16(off + L.flags, true);
    r.slotMask = v.getUint32(off + L.slotMask, true);
    each(r);
  }
}

export function encodeSlot(s: Slot): Buffer {
  const L = Layout.slot;
  const b = Buffer.alloc(L.size);
  putU64(b, L.startSector, s.startSector);
  putU64(b, L.endSector, s.endSector);
  b.writeUInt32LE(s.diskDev, L.diskDev);
  b.writeUInt32LE(s.ringMask >>> 0, L.ringMask);
  b.writeUInt32LE(s.chunkShift, L.chunkShift);
  return b;
}

export function decodeSlot(b: Buffer): Slot {
  const L = Layout.slot;
  return {
    startSector: u64(b, L.startSector),
    endSector: u64(b, L.endSector),
    diskDev: b.readUInt32LE(L.diskDev),
    ringMask: b.readUInt32LE(L.ringMask),
    chunkShift: b.readUInt32LE(L.chunkShift),
  };
}

export function encodeDisk(slotMask: number): Buffer {
  const b = Buffer.alloc(Layout.disk.size);
  b.writeUInt32LE(slotMask >>> 0, Layout.disk.slotMask);
  return b;
}

export function decodeDisk(b: Buffer): number {
  return b.readUInt32LE(Layout.disk.slotMask);
}

/** Per-CPU map values are each padded to 8 bytes. */
export function perCpuStride(valueSize: number): number {
  return Math.ceil(valueSize / 8) * 8;
}

/** Sums the u64 fields of a per-CPU value. */
export function sumPerCpu(b: Buffer, valueSize: number, cpus: number, fieldOffsets: readonly number[]): number[] {
  const stride = perCpuStride(valueSize);
  const sums = fieldOffsets.map(() => 0);
  for (let c = 0; c < cpus; c++) {
    fieldOffsets.forEach((off, i) => { sums[i] += u64(b, c * stride + off); });
  }
  return sums;
}

export function decodeSlotStats(b: Buffer, cpus: number): SlotStats {
  const L = Layout.slotStats;
  const [records, sectors, diskSectors, unknown] = sumPerCpu(b, L.size, cpus,
    [L.records, L.sectors, L.diskSectors, L.unknown]);
  return { records, sectors, diskSectors, unknown };
}

export function encodeConsumer(c: Consumer): Buffer {
  const L = Layout.consumer;
  const b = Buffer.alloc(L.size);
  b.writeUInt32LE(c.pid, L.pid);
  b.writeUInt32LE(c.flags, L.flags);
  putU64(b, L.startTime, c.startTime);
  return b;
}

export function decodeConsumer(b: Buffer): Consumer {
  const L = Layout.consumer;
  return { pid: b.readUInt32LE(L.pid), flags: b.readUInt32LE(L.flags), startTime: u64(b, L.startTime) };
}

export interface Control {
  epoch: number;
  ownerClean: boolean;
}

export function encodeControl(c: Control): Buffer {
  const b = Buffer.alloc(Layout.control.size);
  b.writeUInt32LE(c.epoch & 1, Layout.control.epoch);
  b.writeUInt32LE(c.ownerClean ? 1 : 0, Layout.control.ownerClean);
  return b;
}

export function decodeControl(b: Buffer): Control {
  return { epoch: b.readUInt32LE(Layout.control.epoch) & 1, ownerClean: b.readUInt32LE(Layout.control.ownerClean) !== 0 };
}

/** The chunks set in one epoch bitmap, or 'whole' if the whole slot is touched. */
export function decodeBitmap(b: Buffer): { whole: boolean; chunks: number[] } {
  const L = Layout.bitmap;
  if (u64(b, L.whole) !== 0) return { whole: true, chunks: [] };
  const chunks: number[] = [];
  for (let w = 0; w < BITMAP_WORDS; w++) {
    const lo = b.readUInt32LE(L.words + w * 8);
    const hi = b.readUInt32LE(L.words + w * 8 + 4);
    if (lo === 0 && hi === 0) continue;
    for (let bit = 0; bit < 32; bit++) {
      if (lo & (1 << bit)) chunks.push(w * 64 + bit);
    }
    for (let bit = 0; bit < 32; bit++) {
      if (hi & (1 << bit)) chunks.push(w * 64 + 32 + bit);
    }
  }
  return { whole: false, chunks };
}

/** Smallest chunk (in sectors, a power of two, at least 64 KiB) that fits the range in the bitmap. */
export function chunkShiftFor(lengthSectors: number): number {
  let shift = 7;
  while (Math.ceil(lengthSectors / 2 ** shift) > BITMAP_BITS) shift++;
  return shift;
}

/**
 * A write the issue log holds: one whose completion was lost (`missed`), or
 * one logged at issue whose last completion was not seen yet (`issued`: in
 * flight, or lost and not re-issued yet).
 */
export interface LoggedWrite {
  /** The missed map's key (request, issue time, first unseen sector), hex: the same in both maps. */
  id: string;
  key: Buffer;
  issuedNs: bigint; // CLOCK_MONOTONIC
  dev: number;
  startSector: number; // absolute on the disk
  endSector: number;
  op: number;
  flags: number; // ISSUED_*
}

function decodeLogged(key: Buffer, v: Buffer): LoggedWrite {
  const L = Layout.issued;
  const startSector = u64(v, L.sector);
  return {
    id: key.toString('hex'), key, issuedNs: v.readBigUInt64LE(L.issuedNs), dev: v.readUInt32LE(L.dev),
    startSector, endSector: startSector + v.readUInt32LE(L.sectors), op: v.readUInt16LE(L.op), flags: v.readUInt16LE(L.flags),
  };
}

/** An `issued` entry (keyed by its request's address), named as it would be in `missed`. */
export function decodeIssued(rq: Buffer, v: Buffer): LoggedWrite {
  const K = Layout.missedKey;
  const key = Buffer.alloc(K.size);
  rq.copy(key, K.rq, 0, 8);
  v.copy(key, K.issuedNs, Layout.issued.issuedNs, Layout.issued.issuedNs + 8);
  v.copy(key, K.sector, Layout.issued.sector, Layout.issued.sector + 8);
  return decodeLogged(key, v);
}

export function decodeMissed(key: Buffer, v: Buffer): LoggedWrite {
  return decodeLogged(key, v);
}

/**
 * The writes two copies of `issued_by_tag` agree on: an entry the programs
 * were rewriting while either copy was taken (its sequence word odd, or
 * moved) is left out. That is no write lost: a rewrite either completes the
 * write or first moves it to `missed`, read after these copies.
 */
export function decodeTagEntries(first: Buffer, second: Buffer): LoggedWrite[] {
  const T = Layout.tagEntry;
  const out: LoggedWrite[] = [];
  const n = Math.min(first.length, second.length) / T.size;
  for (let i = 0; i < n; i++) {
    const at = i * T.size;
    const entry = first.subarray(at, at + T.size);
    const seq = entry.readBigUInt64LE(T.seq);
    if (seq & 1n || !entry.equals(second.subarray(at, at + T.size))) continue;
    const rq = entry.subarray(T.rq, T.rq + 8);
    const v = entry.subarray(T.issued, T.issued + Layout.issued.size);
    if (rq.readBigUInt64LE(0) === 0n || v.readUInt32LE(Layout.issued.sectors) === 0) continue;
    out.push(decodeIssued(rq, v));
  }
  return out;
}
