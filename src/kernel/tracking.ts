// The pinned tracking objects in the kernel, shared by every dpsr process:
// consumers (one ring each), slots (tracked ranges, reference-counted by
// their consumers' ring bits), epoch control, counters and bitmaps.
// Changes to them are made under a flock on the pin directory.
import fs from 'node:fs';
import path from 'node:path';
import { DpsrError } from '../base/errors.js';
import {
  BITMAP_BITS, Layout, MAX_RINGS, MAX_SLOTS, CONSUMER_OWNER, type Consumer, type Control, type Slot,
  type SlotStats, chunkShiftFor, decodeBitmap, decodeConsumer, decodeControl, decodeDisk, decodeSlot,
  decodeSlotStats, encodeConsumer, encodeControl, encodeDisk, encodeSlot, sumPerCpu, perCpuStride, u32Key,
  type LoggedWrite, decodeIssued, decodeMissed, decodeTagEntries,
} from './kernel-abi.js';
import { type LoadKnobs, type LogMapName, type MapName, type RingReader, native } from '../base/native.js';

export interface TrackingOptions extends LoadKnobs {
  pinDir: string;
}

/** What the issue log holds now (see bpf/dpsr.h). */
export interface IssueLog {
  missed: LoggedWrite[];
  issued: LoggedWrite[];
  /** Issues or lost completions the log could not hold, ever (monotonic). */
  full: number;
  /**
   * Runs of the issue program the kernel skipped (its recursion guard: the
   * program was already running on that CPU), monotonic while the programs
   * stay loaded. Such a write is in no log entry and no issue-time bit: if
   * its completion is lost too, nothing places it.
   */
  issueSkipped: number;
}

/** Per program, the runs the kernel skipped because it was already running on that CPU. */
export interface RecursionMisses {
  complete: number;
  issue: number;
  requeue: number;
}

export interface RangeOnDisk {
  diskDev: number;
  startSector: number; // absolute on the disk
  endSector: number;
}

export interface EpochBits {
  whole: boolean;
  chunks: number[];
}

const EXPECTED_VALUE_SIZES: Partial<Record<MapName | LogMapName, number>> = {
  slots: Layout.slot.size,
  disks: Layout.disk.size,
  slot_stats: Layout.slotStats.size,
  ring_stats: Layout.ringStats.size,
  bitmaps: Layout.bitmap.size,
  consumers: Layout.consumer.size,
  control: Layout.control.size,
  issued: Layout.issued.size,
  missed: Layout.issued.size,
  log_stats: Layout.logStats.size,
  last_write: 8,
  issued_by_tag: Layout.tagEntry.size,
};

/** The kernel's longest tick (CONFIG_HZ=100): how much later a write may be than the programs' time of it. */
const LONGEST_TICK_MS = 10;

/** /proc/PID/stat field 22, to tell a live consumer from a reused pid. */
export function processStartTime(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return null;
  }
}

export class KernelTracking {
  private readonly cpus: number;
  private closed = false;

  private constructor(
    readonly pinDir: string,
    readonly created: boolean,
    private readonly maps: Record<MapName, number> & Partial<Record<LogMapName, number>>,
  ) {
    this.cpus = native().possibleCpus();
  }

  /** Loads and attaches the programs, or reopens the pinned ones. */
  static open(opts: TrackingOptions): KernelTracking {
    const n = native();
    const bpffsRoot = '/sys/fs/bpf';
    if (opts.pinDir.startsWith(`${bpffsRoot}/`)) n.ensureBpffs(bpffsRoot);
    fs.mkdirSync(opts.pinDir, { recursive: true, mode: 0o700 });
    return lockDir(opts.pinDir, () => {
      const { pinDir, ...knobs } = opts;
      const opened = n.open(pinDir, knobs);
      const kt = new KernelTracking(opts.pinDir, opened.created, opened.maps);
      kt.checkLayouts();
      return kt;
    });
  }

  private checkLayouts(): void {
    for (const [name, size] of Object.entries(EXPECTED_VALUE_SIZES) as [MapName | LogMapName, number][]) {
      const fd = this.maps[name];
      if (fd === undefined) continue; // the issue log, pinned by v3 on
      const info = native().mapInfo(fd);
      if (info.valueSize !== size) {
        this.close();
        throw new DpsrError(`pinned map ${name} in ${this.pinDir} has a ${info.valueSize}-byte value, this dpsr expects ${size}: pinned by another version`, 'EVERSION');
      }
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of Object.values(this.maps)) native().closeFd(fd);
  }

  /** Runs fn holding the pin directory's lock; fails if the objects were detached meanwhile. */
  withLock<T>(fn: () => T): T {
    return lockDir(this.pinDir, () => {
      if (!fs.existsSync(path.join(this.pinDir, 'link_complete'))) {
        throw new DpsrError(`tracking in ${this.pinDir} was detached meanwhile; run the command again`, 'ESTALE');
      }
      return fn();
    });
  }

  private lookup(map: MapName | 'log_stats', key: number, valueSize: number): Buffer | null {
    return native().mapLookup(this.maps[map]!, u32Key(key), valueSize);
  }

  private update(map: MapName, key: number, value: Buffer): void {
    native().mapUpdate(this.maps[map], u32Key(key), value);
  }

  private lookupPerCpu(map: MapName, key: number, valueSize: number): Buffer {
    return this.lookup(map, key, perCpuStride(valueSize) * this.cpus)!;
  }

  private zeroPerCpu(map: MapName | 'last_write', key: number, valueSize: number): void {
    native().mapUpdate(this.maps[map]!, u32Key(key), Buffer.alloc(perCpuStride(valueSize) * this.cpus));
  }

  // --- consumers -------------------------------------------------------

  consumer(index: number): Consumer {
    return decodeConsumer(this.lookup('consumers', index, Layout.consumer.size)!);
  }

  /** Whether a consumer's ring exists in the rings map. */
  hasRing(index: number): boolean {
    return this.lookup('rings', index, 4) !== null;
  }

  /**
   * Registers the calling process as a consumer with its own ring. The
   * owner's ring has a fixed index and outlives processes; other consumers
   * take a free index, reclaiming those whose process died.
   */
  registerConsumer(opts: { ringBytes: number; ownerIndex?: number }): number {
    return this.withLock(() => {
      this.reclaimDeadConsumers();
      let index = opts.ownerIndex;
      if (index === undefined) {
        for (let i = 0; i < MAX_RINGS && index === undefined; i++) {
          if (this.consumer(i).pid === 0 && !this.hasRing(i)) index = i;
        }
        if (index === undefined) throw new DpsrError(`all ${MAX_RINGS} tracking consumers are in use`, 'ECONSUMERSFULL');
      }
      const pid = process.pid;
      const owner = opts.ownerIndex !== undefined;
      if (!this.hasRing(index)) {
        this.zeroPerCpu('ring_stats', index, Layout.ringStats.size);
        this.zeroPerCpu('epoch_drops', index * 2, 8);
        this.zeroPerCpu('epoch_drops', index * 2 + 1, 8);
        native().ringCreate(this.maps.rings, index, opts.ringBytes);
      }
      this.update('consumers', index, encodeConsumer({
        pid, flags: owner ? CONSUMER_OWNER : 0, startTime: processStartTime(pid) ?? 0,
      }));
      return index;
    });
  }

  /** Removes a consumer: its bits from every slot (freeing unused slots), its ring, its entry. */
  unregisterConsumer(index: number): void {
    this.withLock(() => this.dropConsumer(index));
  }

  private dropConsumer(index: number): void {
    for (let i = 0; i < MAX_SLOTS; i++) {
      const slot = this.slot(i);
      if (slot && slot.ringMask & (1 << index)) this.releaseSlot(i, index);
    }
    native().mapDelete(this.maps.rings, u32Key(index));
    this.update('consumers', index, Buffer.alloc(Layout.consumer.size));
  }

  private reclaimDeadConsumers(): void {
    for (let i = 0; i < MAX_RINGS; i++) {
      const c = this.consumer(i);
      if (c.pid === 0 || c.flags & CONSUMER_OWNER) continue;
      const start = processStartTime(c.pid);
      if (start === null || start !== c.startTime) this.dropConsumer(i);
    }
  }

  /** Whether any consumer remains: if none, the programs may be detached. */
  hasConsumers(): boolean {
    for (let i = 0; i < MAX_RINGS; i++) {
      if (this.consumer(i).pid !== 0 || this.hasRing(i)) return true;
    }
    return false;
  }

  /** Detaches the programs and unpins everything if no consumer is left. */
  detachIfUnused(): boolean {
    let detached = false;
    try {
      this.withLock(() => {
        this.reclaimDeadConsumers();
        if (this.hasConsumers()) return;
        native().detach(this.pinDir);
        detached = true;
      });
    } catch (err) {
      if ((err as DpsrError).code !== 'ESTALE') throw err;
    }
    if (detached) removeEmptyParent(this.pinDir);
    return detached;
  }

  /** Detaches whatever uses remain (tests, uninstall). */
  detach(): void {
    lockDir(this.pinDir, () => native().detach(this.pinDir));
    removeEmptyParent(this.pinDir);
  }

  // --- slots -----------------------------------------------------------

  slot(index: number): Slot | null {
    const s = decodeSlot(this.lookup('slots', index, Layout.slot.size)!);
    return s.ringMask === 0 ? null : s;
  }

  private diskMask(diskDev: number): number {
    const v = this.lookup('disks', diskDev, Layout.disk.size);
    return v ? decodeDisk(v) : 0;
  }

  /**
   * Adds `ring` as a user of the range, sharing an existing slot for the
   * same range. A new slot starts with zeroed counters and bitmaps and is
   * published in its disk's mask last, so the programs never see it half-made.
   */
  addSlot(range: RangeOnDisk, ring: number): { index: number; created: boolean } {
    return this.withLock(() => {
      let free = -1;
      for (let i = 0; i < MAX_SLOTS; i++) {
        const s = this.slot(i);
        if (!s) {
          if (free < 0 && !(this.diskMaskHas(i))) free = i;
          continue;
        }
        if (s.diskDev === range.diskDev && s.startSector === range.startSector && s.endSector === range.endSector) {
          this.update('slots', i, encodeSlot({ ...s, ringMask: s.ringMask | (1 << ring) }));
          return { index: i, created: false };
        }
      }
      if (free < 0) throw new DpsrError(`all ${MAX_SLOTS} tracking slots are in use`, 'ESLOTSFULL');
      this.zeroPerCpu('slot_stats', free, Layout.slotStats.size);
      if (this.maps.last_write !== undefined) this.zeroPerCpu('last_write', free, 8);
      this.update('bitmaps', free * 2, Buffer.alloc(Layout.bitmap.size));
      this.update('bitmaps', free * 2 + 1, Buffer.alloc(Layout.bitmap.size));
      this.update('slots', free, encodeSlot({
        ...range, ringMask: 1 << ring, chunkShift: chunkShiftFor(range.endSector - range.startSector),
      }));
      native().mapUpdate(this.maps.disks, u32Key(range.diskDev), encodeDisk(this.diskMask(range.diskDev) | (1 << free)));
      return { index: free, created: true };
    });
  }

  private diskMaskHas(slotIndex: number): boolean {
    for (const key of native().mapKeys(this.maps.disks, 4)) {
      const v = native().mapLookup(this.maps.disks, key, Layout.disk.size);
      if (v && decodeDisk(v) & (1 << slotIndex)) return true;
    }
    return false;
  }

  removeSlot(index: number, ring: number): void {
    this.withLock(() => this.releaseSlot(index, ring));
  }

  /** Drops one user; the last one unpublishes the slot, waits out running programs, then frees it. */
  private releaseSlot(index: number, ring: number): void {
    const s = this.slot(index);
    if (!s || !(s.ringMask & (1 << ring))) return;
    const ringMask = s.ringMask & ~(1 << ring);
    if (ringMask !== 0) {
      this.update('slots', index, encodeSlot({ ...s, ringMask }));
      return;
    }
    const mask = this.diskMask(s.diskDev) & ~(1 << index);
    if (mask) native().mapUpdate(this.maps.disks, u32Key(s.diskDev), encodeDisk(mask));
    else native().mapDelete(this.maps.disks, u32Key(s.diskDev));
    native().membarrier();
    this.update('slots', index, Buffer.alloc(Layout.slot.size));
  }

  /** Slots whose ring mask includes `ring`. */
  slotsOf(ring: number): Array<{ index: number; slot: Slot }> {
    const out: Array<{ index: number; slot: Slot }> = [];
    for (let i = 0; i < MAX_SLOTS; i++) {
      const slot = this.slot(i);
      if (slot && slot.ringMask & (1 << ring)) out.push({ index: i, slot });
    }
    return out;
  }

  // --- counters --------------------------------------------------------

  slotStats(index: number): SlotStats {
    return decodeSlotStats(this.lookupPerCpu('slot_stats', index, Layout.slotStats.size), this.cpus);
  }

  ringStats(ring: number): { records: number; drops: number } {
    const L = Layout.ringStats;
    const [records, drops] = sumPerCpu(this.lookupPerCpu('ring_stats', ring, L.size), L.size, this.cpus, [L.records, L.drops]);
    return { records, drops };
  }

  /**
   * When a completed write last touched the slot, in wall-clock ms (the
   * programs keep CLOCK_MONOTONIC, as process.hrtime does): 0 when none has
   * since the slot was made; null for programs without the map (before v4).
   * The programs read the clock once per tick and CPU, so the write may be
   * up to a tick later than they say: a tick (10 ms at the lowest HZ) is added.
   */
  lastWriteMs(index: number): number | null {
    const fd = this.maps.last_write;
    if (fd === undefined) return null;
    const perCpu = native().mapLookup(fd, u32Key(index), 8 * this.cpus)!;
    const nowNs = process.hrtime.bigint();
    const nowMs = Date.now();
    let latest = 0n;
    for (let c = 0; c < this.cpus; c++) {
      const t = perCpu.readBigUInt64LE(c * 8);
      if (t > latest) latest = t;
    }
    return latest === 0n ? 0 : nowMs - Number(nowNs - latest) / 1e6 + LONGEST_TICK_MS;
  }

  // --- epochs (owner only) ---------------------------------------------

  control(): Control {
    return decodeControl(this.lookup('control', 0, Layout.control.size)!);
  }

  setControl(c: Control): void {
    this.update('control', 0, encodeControl(c));
  }

  /**
   * Makes the other epoch current and returns the old one once no program
   * can still be counting into it (an RCU grace period).
   */
  flipEpoch(): number {
    const c = this.control();
    this.setControl({ ...c, epoch: c.epoch ^ 1 });
    native().membarrier();
    return c.epoch;
  }

  /** Reads a slot's bitmap of an epoch; clears it if `clear` (only safe for a retired epoch). */
  epochBits(slot: number, epoch: number, clear: boolean): EpochBits {
    const key = slot * 2 + epoch;
    const bits = decodeBitmap(this.lookup('bitmaps', key, Layout.bitmap.size)!);
    if (clear) this.update('bitmaps', key, Buffer.alloc(Layout.bitmap.size));
    return bits;
  }

  /** A ring's drops in an epoch (stable once the epoch is retired). */
  epochDrops(ring: number, epoch: number): number {
    const [drops] = sumPerCpu(this.lookupPerCpu('epoch_drops', ring * 2 + epoch, 8), 8, this.cpus, [0]);
    return drops;
  }

  /** Clears a retired epoch's drops: only once what they imply is saved. */
  clearEpochDrops(ring: number, epoch: number): void {
    this.zeroPerCpu('epoch_drops', ring * 2 + epoch, 8);
  }

  // --- the issue log (owner only) ----------------------------------------

  /** Whether these programs keep the issue log (v3 on). */
  get hasIssueLog(): boolean {
    return this.maps.issued !== undefined && this.maps.missed !== undefined && this.maps.log_stats !== undefined;
  }

  /** A snapshot of the issue log, or null for programs without one. */
  issueLog(): IssueLog | null {
    const issueSkipped = this.recursionMisses().issue; // first: a skip before the log's copy is counted in it
    const full = this.issueLogFull();
    if (full === null) return null;
    // `issued` first: an entry moving to `missed` meanwhile is then seen in one of them (or both, under one id).
    const issued = [...this.loggedByTag(), ...this.logged('issued', 8, decodeIssued)];
    return { missed: this.missedWrites(), issued, full, issueSkipped };
  }

  /**
   * bpf_prog_info.recursion_misses of each program (0 for a link not
   * pinned). Measured under fio at 220k writes/s: 0 for all three, while
   * the completion program ran for ~1 write in 40,000 fewer than the
   * tracepoint fired (docs/DESIGN.md, "Lost completions").
   */
  recursionMisses(): RecursionMisses {
    const of = (link: string): number => {
      try {
        return native().programInfo(path.join(this.pinDir, link)).recursionMisses;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
        throw err;
      }
    };
    return { complete: of('link_complete'), issue: of('link_issue'), requeue: of('link_requeue') };
  }

  /** The issue log's `full` counter, or null for programs without a log. */
  issueLogFull(): number | null {
    if (!this.hasIssueLog) return null;
    return Number(this.lookup('log_stats', 0, Layout.logStats.size)!.readBigUInt64LE(Layout.logStats.full));
  }

  /** The lost completions the log holds. */
  missedWrites(): LoggedWrite[] {
    return this.hasIssueLog ? this.logged('missed', Layout.missedKey.size, decodeMissed) : [];
  }

  /** The tag-indexed entries (v5 on), read twice so that none is torn. */
  private loggedByTag(): LoggedWrite[] {
    const fd = this.maps.issued_by_tag;
    if (fd === undefined) return [];
    const copy = () => native().mapDump(fd, 4, Layout.tagEntry.size).values;
    return decodeTagEntries(copy(), copy());
  }

  private logged(map: 'issued' | 'missed', keySize: number, decode: (k: Buffer, v: Buffer) => LoggedWrite): LoggedWrite[] {
    const V = Layout.issued.size;
    const { keys, values, count } = native().mapDump(this.maps[map]!, keySize, V);
    const out: LoggedWrite[] = [];
    for (let i = 0; i < count; i++) out.push(decode(keys.subarray(i * keySize, (i + 1) * keySize), values.subarray(i * V, (i + 1) * V)));
    return out;
  }

  /** Removes lost completions from the log: only once where they are is saved. */
  forgetMissed(keys: readonly Buffer[]): void {
    const fd = this.maps.missed;
    if (fd === undefined) return;
    for (const key of keys) native().mapDelete(fd, key);
  }

  /**
   * Delivers the ring's records in batches on the event loop. A batch is
   * lent: its memory is reused by the next one, so keep a copy, never the
   * batch. With `deferRelease` the records stay in the ring until release():
   * a process that dies before persisting them leaves them to the next one.
   */
  reader(ring: number, onBatch: (records: Uint8Array) => void, timerMs = 50, deferRelease = false): RingReader {
    return new (native().RingReader)(this.maps.rings, ring, onBatch, timerMs, 65536, deferRelease);
  }
}

/** Extents (relative to the slot's start) covered by an epoch's bits. */
export function bitsToExtents(bits: EpochBits, slot: Slot): Array<[number, number]> {
  const length = slot.endSector - slot.startSector;
  if (bits.whole) return [[0, length]];
  const size = 2 ** slot.chunkShift;
  const extents: Array<[number, number]> = [];
  for (const c of bits.chunks) {
    if (c >= BITMAP_BITS) continue;
    const [start, end] = [c * size, Math.min((c + 1) * size, length)];
    const last = extents[extents.length - 1];
    if (last && last[1] === start) last[1] = end; // a busy epoch sets thousands of chunks in a row: one extent
    else extents.push([start, end]);
  }
  return extents;
}

/** The versioned pin dir's parent (/sys/fs/bpf/dpsr) goes when its last version does. */
function removeEmptyParent(pinDir: string): void {
  const parent = path.dirname(pinDir);
  if (path.basename(parent) !== 'dpsr') return;
  try {
    fs.rmdirSync(parent);
  } catch {
    // not empty (another version pinned), or not ours to remove
  }
}

function lockDir<T>(dir: string, fn: () => T): T {
  let fd: number;
  try {
    fd = fs.openSync(dir, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new DpsrError(`tracking in ${dir} was detached meanwhile; run the command again`, 'ESTALE');
    }
    throw err;
  }
  try {
    native().flock(fd, 'ex', true);
    return fn();
  } finally {
    fs.closeSync(fd); // releases the lock
  }
}
