/** A set of 512-byte sectors, kept as sorted, coalesced half-open extents [start, end) in flat Float64Arrays. */
import { native } from './native.js';

// Sector numbers go up to 2^48, so they live in float64 (exact to 2^53); never one object per extent.
const INITIAL_PENDING = 256;
const MIN_BATCH = 65536;
// Each merge rewrites the whole set, so batches grow with it (up to 1/8 of its size) to keep the
// merge cost per added record constant instead of proportional to the set size.
const BATCH_FRACTION = 1 / 8;
const MAGIC = Buffer.from('DPX1', 'latin1');
const HEADER_BYTES = 8; // magic + u32 count
const TRAILER_BYTES = 4; // CRC-32, so a corrupt row is an error rather than a wrong copy plan

export class ExtentSet {
  // Sorted, non-overlapping, non-adjacent extents; only indices [0, size) are meaningful.
  private starts: Float64Array;
  private ends: Float64Array;
  private size = 0;
  // Unsorted appends: add() stays O(1) and the sorting/merging is paid once per batch.
  private pendingStarts: Float64Array | null = null;
  private pendingEnds: Float64Array | null = null;
  private pendingCount = 0;
  // Where the set changed since takeChanges(), once asked (incremental persistence).
  private changed: ExtentSet | null = null;

  constructor() {
    this.starts = new Float64Array(16);
    this.ends = new Float64Array(16);
  }

  static from(extents: Iterable<readonly [number, number]>): ExtentSet {
    const set = new ExtentSet();
    for (const [startSector, endSector] of extents) set.add(startSector, endSector);
    return set;
  }

  add(startSector: number, endSector: number): void {
    checkSectors(startSector, endSector);
    if (endSector <= startSector) return;
    let n = this.pendingCount;
    if (n > 0) {
      // Sequential and repeated writes are common: absorb them into the previous entry.
      const lastStart = this.pendingStarts![n - 1];
      const lastEnd = this.pendingEnds![n - 1];
      if (startSector >= lastStart && startSector <= lastEnd) {
        if (endSector > lastEnd) this.pendingEnds![n - 1] = endSector;
        return;
      }
    }
    if (this.pendingStarts === null || n === this.pendingStarts.length) {
      this.makePendingRoom();
      n = this.pendingCount;
    }
    this.pendingStarts![n] = startSector;
    this.pendingEnds![n] = endSector;
    this.pendingCount = n + 1;
  }

  /** Adds [starts[i] - base, ends[i] - base) for i < count: a batch at once, as add() would one by one. */
  addExtents(starts: Float64Array, ends: Float64Array, count: number, base: number): void {
    for (let i = 0; i < count; ) {
      if (this.pendingStarts === null || this.pendingCount === this.pendingStarts.length) this.makePendingRoom();
      const ps = this.pendingStarts!;
      const pe = this.pendingEnds!;
      const stop = Math.min(count, i + ps.length - this.pendingCount);
      let n = this.pendingCount;
      for (; i < stop; i++) {
        const startSector = starts[i] - base;
        const endSector = ends[i] - base;
        checkSectors(startSector, endSector);
        if (endSector <= startSector) continue;
        ps[n] = startSector;
        pe[n] = endSector;
        n++;
      }
      this.pendingCount = n;
    }
  }

  addSet(other: ExtentSet): void {
    if (other === this) return;
    this.changed?.addSet(other);
    this.flush();
    other.flush();
    this.mergeSorted(other.starts, other.ends, other.size);
  }

  subtract(startSector: number, endSector: number): void {
    checkSectors(startSector, endSector);
    this.flush();
    if (endSector <= startSector) return;
    this.changed?.add(startSector, endSector);
    const first = this.firstEndAbove(startSector);
    const last = this.firstStartAtOrAbove(endSector); // exclusive
    if (first >= last) return;
    const keepLeft = this.starts[first] < startSector;
    const keepRight = this.ends[last - 1] > endSector;
    const leftStart = this.starts[first];
    const rightEnd = this.ends[last - 1];
    const pieces = (keepLeft ? 1 : 0) + (keepRight ? 1 : 0);
    const newSize = this.size - (last - first) + pieces;
    this.ensureCapacity(newSize);
    this.starts.copyWithin(first + pieces, last, this.size);
    this.ends.copyWithin(first + pieces, last, this.size);
    let i = first;
    if (keepLeft) {
      this.starts[i] = leftStart;
      this.ends[i] = startSector;
      i++;
    }
    if (keepRight) {
      this.starts[i] = endSector;
      this.ends[i] = rightEnd;
    }
    this.size = newSize;
  }

  subtractSet(other: ExtentSet): void {
    if (other === this) {
      this.clear();
      return;
    }
    this.changed?.addSet(other);
    this.flush();
    other.flush();
    const n = this.size;
    const m = other.size;
    if (n === 0 || m === 0) return;
    const outStarts = new Float64Array(n + m);
    const outEnds = new Float64Array(n + m);
    this.size = subtractSorted(this.starts, this.ends, n, other.starts, other.ends, m, outStarts, outEnds);
    this.starts = outStarts;
    this.ends = outEnds;
  }

  intersect(startSector: number, endSector: number): ExtentSet {
    checkSectors(startSector, endSector);
    this.flush();
    const result = new ExtentSet();
    if (endSector <= startSector) return result;
    const first = this.firstEndAbove(startSector);
    const last = this.firstStartAtOrAbove(endSector);
    const n = last - first;
    if (n <= 0) return result;
    result.ensureCapacity(n);
    result.starts.set(this.starts.subarray(first, last));
    result.ends.set(this.ends.subarray(first, last));
    result.starts[0] = Math.max(result.starts[0], startSector);
    result.ends[n - 1] = Math.min(result.ends[n - 1], endSector);
    result.size = n;
    return result;
  }

  overlaps(startSector: number, endSector: number): boolean {
    checkSectors(startSector, endSector);
    this.flush();
    if (endSector <= startSector) return false;
    const i = this.firstEndAbove(startSector);
    return i < this.size && this.starts[i] < endSector;
  }

  /** True if every sector of the range is in the set (vacuously true for an empty range). */
  covers(startSector: number, endSector: number): boolean {
    checkSectors(startSector, endSector);
    this.flush();
    if (endSector <= startSector) return true;
    const i = this.firstEndAbove(startSector);
    return i < this.size && this.starts[i] <= startSector && this.ends[i] >= endSector;
  }

  get count(): number {
    this.flush();
    return this.size;
  }

  get totalSectors(): number {
    this.flush();
    let total = 0;
    for (let i = 0; i < this.size; i++) total += this.ends[i] - this.starts[i];
    return total;
  }

  get isEmpty(): boolean {
    return this.size === 0 && this.pendingCount === 0;
  }

  /** Bytes held by the backing typed arrays (capacity, not just what is in use). */
  get allocatedBytes(): number {
    const pending = this.pendingStarts === null ? 0 : this.pendingStarts.byteLength + this.pendingEnds!.byteLength;
    return this.starts.byteLength + this.ends.byteLength + pending;
  }

  *[Symbol.iterator](): IterableIterator<[number, number]> {
    this.flush();
    for (let i = 0; i < this.size; i++) yield [this.starts[i], this.ends[i]];
  }

  forEach(callback: (startSector: number, endSector: number) => void): void {
    this.flush();
    const s = this.starts;
    const e = this.ends;
    for (let i = 0; i < this.size; i++) callback(s[i], e[i]);
  }

  toArray(): Array<[number, number]> {
    return [...this];
  }

  clear(): void {
    if (this.changed && !this.isEmpty) {
      this.flush();
      this.changed.add(this.starts[0], this.ends[this.size - 1]);
    }
    this.size = 0;
    this.pendingCount = 0;
  }

  /**
   * From now on the set remembers where it changes: returns where it changed
   * since the last call (null at the first). Every change lies inside: the set
   * outside those windows is as it was.
   */
  takeChanges(): ExtentSet | null {
    this.flush(); // pending adds reach the windows when they are folded
    const was = this.changed;
    this.changed = new ExtentSet();
    return was;
  }

  /** The parts of the set inside `windows`. */
  within(windows: ExtentSet): ExtentSet {
    this.flush();
    windows.flush();
    const out = new ExtentSet();
    out.ensureCapacity(windows.size); // most windows hold one piece (a tick's writes): grown once, not doubling
    // Windows are sorted and never touch, so the clipped pieces come out sorted and
    // apart: appended as they are, with no set made per window (a tick has thousands).
    // Each window is found by galloping on from the last one, not by a search of the
    // whole set: a tick's windows lie close together, and what is near stays in cache.
    let i = 0;
    for (let w = 0; w < windows.size; w++) {
      const a = windows.starts[w];
      const b = windows.ends[w];
      for (i = gallopEndAbove(this.ends, this.size, a, i); i < this.size && this.starts[i] < b; i++) {
        out.ensureCapacity(out.size + 1);
        out.starts[out.size] = Math.max(this.starts[i], a);
        out.ends[out.size] = Math.min(this.ends[i], b);
        out.size++;
      }
      if (i > 0) i--; // the last extent clipped may reach into the next window
    }
    return out;
  }

  clone(): ExtentSet {
    this.flush();
    const copy = new ExtentSet();
    copy.ensureCapacity(this.size);
    copy.starts.set(this.starts.subarray(0, this.size));
    copy.ends.set(this.ends.subarray(0, this.size));
    copy.size = this.size;
    return copy;
  }

  /**
   * "DPX1", u32 count, then per extent two unsigned LEB128 varints (gap since the previous end,
   * length), then a CRC-32 of everything before it. All little-endian.
   */
  toBuffer(): Buffer {
    this.flush();
    const n = this.size;
    // Values are < 2^53, so a varint never exceeds 8 bytes.
    const buf = Buffer.allocUnsafe(HEADER_BYTES + 16 * n + TRAILER_BYTES);
    MAGIC.copy(buf, 0);
    buf.writeUInt32LE(n, 4);
    let pos = HEADER_BYTES;
    let prevEnd = 0;
    for (let i = 0; i < n; i++) {
      pos = writeVarint(buf, pos, this.starts[i] - prevEnd);
      pos = writeVarint(buf, pos, this.ends[i] - this.starts[i]);
      prevEnd = this.ends[i];
    }
    buf.writeUInt32LE(crc32(buf, pos), pos);
    pos += TRAILER_BYTES;
    return Buffer.from(buf.subarray(0, pos)); // copy so the caller does not pin the worst-case allocation
  }

  static fromBuffer(buf: Uint8Array): ExtentSet {
    if (buf.length < HEADER_BYTES + TRAILER_BYTES) throw new Error('extent buffer truncated');
    for (let i = 0; i < MAGIC.length; i++) {
      if (buf[i] !== MAGIC[i]) throw new Error('extent buffer has bad magic');
    }
    const payloadEnd = buf.length - TRAILER_BYTES;
    if (crc32(buf, payloadEnd) !== readUInt32LE(buf, payloadEnd)) throw new Error('extent buffer checksum mismatch');
    const n = readUInt32LE(buf, 4);
    if (n * 2 > payloadEnd - HEADER_BYTES) throw new Error('extent buffer count does not match its length');
    const set = new ExtentSet();
    set.ensureCapacity(n);
    const cursor = { pos: HEADER_BYTES };
    let prevEnd = 0;
    for (let i = 0; i < n; i++) {
      const gap = readVarint(buf, cursor, payloadEnd);
      const length = readVarint(buf, cursor, payloadEnd);
      // Stored sets are coalesced, so only the first extent may start right at the previous end (0).
      if ((i > 0 && gap === 0) || length === 0) throw new Error('extent buffer is not a coalesced set');
      const start = prevEnd + gap;
      const end = start + length;
      if (end > Number.MAX_SAFE_INTEGER) throw new Error('extent buffer sector out of range');
      set.starts[i] = start;
      set.ends[i] = end;
      prevEnd = end;
    }
    if (cursor.pos !== payloadEnd) throw new Error('extent buffer has trailing bytes');
    set.size = n;
    return set;
  }

  private makePendingRoom(): void {
    const current = this.pendingStarts;
    if (current !== null && current.length >= Math.max(MIN_BATCH, this.size * BATCH_FRACTION)) {
      this.flush();
      return;
    }
    // Start small so that the many short-lived sets stay cheap; grow to a batch size that amortizes the merge.
    const capacity = current === null ? INITIAL_PENDING : current.length * 2;
    const starts = new Float64Array(capacity);
    const ends = new Float64Array(capacity);
    if (current !== null) {
      starts.set(current.subarray(0, this.pendingCount));
      ends.set(this.pendingEnds!.subarray(0, this.pendingCount));
    }
    this.pendingStarts = starts;
    this.pendingEnds = ends;
  }

  /** Folds pending appends into the sorted arrays; every read goes through here first. */
  private flush(): void {
    const n = this.pendingCount;
    if (n === 0) return;
    this.pendingCount = 0;
    const s = this.pendingStarts!.subarray(0, n);
    const e = this.pendingEnds!.subarray(0, n);
    const out = n >= NATIVE_MIN ? native().coalesceExtents(s, e, n) : coalesceBySort(s, e, n);
    if (this.size === 0) {
      this.changed?.mergeSorted(s, e, out);
      this.mergeSorted(s, e, out);
      return;
    }
    // Most writes land where the set holds them already (blocks written again, and a dirty set
    // that covers the hot ones): only what is new is merged, and only that is a change. The
    // windows take the batch once it is folded, not each add (a tracker's every record).
    const fresh = this.keepOutside(s, e, out);
    this.changed?.mergeSorted(outsideStarts, outsideEnds, fresh);
    this.mergeSorted(outsideStarts, outsideEnds, fresh);
  }

  /**
   * The parts of a sorted, coalesced list that the set does not hold, into
   * the module's scratch arrays (reused: a tick's batches would otherwise
   * leave garbage); returns how many. The set is searched by galloping on
   * from the last extent met, as the list is sorted.
   */
  private keepOutside(srcStarts: Float64Array, srcEnds: Float64Array, m: number): number {
    if (outsideStarts.length < m + this.size) {
      const capacity = Math.max(m + this.size, outsideStarts.length * 2);
      outsideStarts = new Float64Array(capacity);
      outsideEnds = new Float64Array(capacity);
    }
    return subtractSorted(srcStarts, srcEnds, m, this.starts, this.ends, this.size, outsideStarts, outsideEnds);
  }

  /** Unions a sorted, coalesced list into ours in place, walking from the back so no second array is needed. */
  private mergeSorted(srcStarts: Float64Array, srcEnds: Float64Array, m: number): void {
    if (m === 0) return;
    const n = this.size;
    this.ensureCapacity(n + m);
    const s = this.starts;
    const e = this.ends;
    // Extents ending before the first incoming one cannot change; leave them where they are.
    const keep = this.firstEndAbove(srcStarts[0] - 1);
    let i = n - 1;
    let j = m - 1;
    let write = n + m; // writes land strictly above i, so unread entries survive
    let runStart = -1;
    let runEnd = -1;
    while (i >= keep || j >= 0) {
      // Ours never touch each other: those starting past every incoming extent left, and not
      // reaching the run being built, move as one block (a memmove, not a loop over each).
      if (i >= keep && (j < 0 || s[i] > srcEnds[j]) && !(runStart >= 0 && e[i] >= runStart)) {
        if (runStart >= 0) {
          write--;
          s[write] = runStart;
          e[write] = runEnd;
          runStart = -1;
        }
        const lo = j < 0 ? keep : this.firstStartAbove(srcEnds[j], keep, i);
        const count = i - lo + 1;
        s.copyWithin(write - count, lo, i + 1);
        e.copyWithin(write - count, lo, i + 1);
        write -= count;
        i = lo - 1;
        continue;
      }
      let start: number;
      let end: number;
      // Descending by end: then nothing seen later can reach past a run already written.
      if (j < 0 || (i >= keep && e[i] > srcEnds[j])) {
        start = s[i];
        end = e[i];
        i--;
      } else {
        start = srcStarts[j];
        end = srcEnds[j];
        j--;
      }
      if (runStart >= 0 && end >= runStart) {
        if (start < runStart) runStart = start;
      } else {
        if (runStart >= 0) {
          write--;
          s[write] = runStart;
          e[write] = runEnd;
        }
        runStart = start;
        runEnd = end;
      }
    }
    if (runStart >= 0) {
      write--;
      s[write] = runStart;
      e[write] = runEnd;
    }
    s.copyWithin(keep, write, n + m);
    e.copyWithin(keep, write, n + m);
    this.size = keep + n + m - write;
  }

  /**
   * The first index in [lo, hi] whose extent starts past `sector`, for a
   * sector below hi's start: gallops back from hi, as a merge walking from the
   * back meets the next incoming extent close by (and in cache) far more often
   * than a search of the whole range would.
   */
  private firstStartAbove(sector: number, lo: number, hi: number): number {
    let step = 1;
    let top = hi; // starts[top] > sector
    while (top - step >= lo && this.starts[top - step] > sector) {
      top -= step;
      step *= 2;
    }
    let a = Math.max(lo, top - step + 1);
    let b = top;
    while (a < b) {
      const mid = (a + b) >>> 1;
      if (this.starts[mid] > sector) b = mid;
      else a = mid + 1;
    }
    return a;
  }

  private ensureCapacity(needed: number): void {
    if (needed <= this.starts.length) return;
    const capacity = Math.max(needed, this.starts.length * 2);
    const starts = new Float64Array(capacity);
    const ends = new Float64Array(capacity);
    starts.set(this.starts.subarray(0, this.size));
    ends.set(this.ends.subarray(0, this.size));
    this.starts = starts;
    this.ends = ends;
  }

  /** Index of the first extent ending after the sector, i.e. the first that could contain it or lie beyond. */
  private firstEndAbove(sector: number): number {
    let lo = 0;
    let hi = this.size;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid] <= sector) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private firstStartAtOrAbove(sector: number): number {
    let lo = 0;
    let hi = this.size;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.starts[mid] < sector) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}


/**
 * The parts of sorted, coalesced extents `a` (n of them) that `b` (m of them)
 * does not cover, into outStarts/outEnds (room for n + m: each of b's splits
 * at most one of a's); returns how many. b is searched by galloping on from
 * the last extent met, as a is sorted.
 */
function subtractSorted(aStarts: Float64Array, aEnds: Float64Array, n: number, bStarts: Float64Array, bEnds: Float64Array, m: number,
  outStarts: Float64Array, outEnds: Float64Array): number {
  let out = 0;
  let j = 0;
  for (let i = 0; i < n; i++) {
    let start = aStarts[i];
    const end = aEnds[i];
    for (j = gallopEndAbove(bEnds, m, start, j); j < m && bStarts[j] < end; j++) {
      if (bStarts[j] > start) {
        outStarts[out] = start;
        outEnds[out] = bStarts[j];
        out++;
      }
      start = bEnds[j];
      if (start >= end) break; // b's extent reaches past ours: it may cover the next one too
    }
    if (start < end) {
      outStarts[out] = start;
      outEnds[out] = end;
      out++;
    }
  }
  return out;
}

/**
 * Index of the first of `size` sorted extents ending after `sector`, for a
 * sector known to lie at or past extent `from`'s start: searches forward
 * from there, in steps that double.
 */
function gallopEndAbove(ends: Float64Array, size: number, sector: number, from: number): number {
  if (from >= size || ends[from] > sector) return from;
  let lo = from; // ends[lo] <= sector
  let step = 1;
  while (lo + step < size && ends[lo + step] <= sector) {
    lo += step;
    step *= 2;
  }
  let hi = Math.min(size, lo + step);
  lo++;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ends[mid] <= sector) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Where keepOutside() puts the new parts of a batch: shared by every set (nothing keeps them
// past a flush), so a tick's folds allocate nothing.
let outsideStarts = new Float64Array(INITIAL_PENDING);
let outsideEnds = new Float64Array(INITIAL_PENDING);

// A batch this large is sorted and coalesced by the addon (a radix sort): a
// tracker folds tens of thousands of records per tick, and two comparison
// sorts (starts, ends) cost ~0.1 µs per record each, the daemon's largest
// cost per tracked write. In JS the radix sort runs cold (a few batches a
// tick never get optimized) and is slower still.
const NATIVE_MIN = 4096;

/**
 * Sorts starts and ends independently (native numeric sort, no comparator, no index) and
 * coalesces in place; returns the extents kept. This still yields the exact union: after the
 * i-th smallest end there is a gap iff the (i+1)-th smallest start lies beyond it, since no
 * more extents can be open there.
 */
export function coalesceBySort(s: Float64Array, e: Float64Array, n: number): number {
  s.sort();
  e.sort();
  let out = 0;
  let runStart = s[0];
  for (let i = 0; i < n; i++) {
    if (i === n - 1 || s[i + 1] > e[i]) {
      s[out] = runStart; // out <= i, so nothing unread is overwritten
      e[out] = e[i];
      out++;
      if (i < n - 1) runStart = s[i + 1];
    }
  }
  return out;
}

function checkSectors(startSector: number, endSector: number): void {
  if (!isSector(startSector) || !isSector(endSector)) {
    throw new RangeError(`invalid sector range [${startSector}, ${endSector})`);
  }
}

function isSector(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

function writeVarint(buf: Buffer, pos: number, value: number): number {
  // Arithmetic rather than bit ops: values exceed 32 bits.
  while (value >= 128) {
    buf[pos++] = (value % 128) | 128;
    value = Math.floor(value / 128);
  }
  buf[pos++] = value;
  return pos;
}

function readVarint(buf: Uint8Array, cursor: { pos: number }, limit: number): number {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 8; i++) {
    if (cursor.pos >= limit) throw new Error('extent buffer truncated');
    const byte = buf[cursor.pos++];
    value += (byte & 127) * scale;
    if (byte < 128) {
      if (value > Number.MAX_SAFE_INTEGER) break;
      return value;
    }
    scale *= 128;
  }
  throw new Error('extent buffer varint out of range');
}

function readUInt32LE(buf: Uint8Array, pos: number): number {
  return (buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)) >>> 0;
}

let crcTable: Int32Array | null = null;

function crc32(bytes: Uint8Array, length: number): number {
  if (crcTable === null) {
    crcTable = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c;
    }
  }
  let crc = -1;
  for (let i = 0; i < length; i++) crc = crcTable[(crc ^ bytes[i]) & 255] ^ (crc >>> 8);
  return (crc ^ -1) >>> 0;
}
