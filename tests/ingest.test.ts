// A batch of ring records folded whole by the addon (plain writes of one disk
// under one slot mask) changes the ranges exactly as reading it record by
// record does: random batches, plain and not, into ranges that overlap, start
// off the disk's start, and hold dirty and discarded sectors already.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ExtentSet } from '../src/base/extents.js';
import { native } from '../src/base/native.js';
import { type IngestTarget, ingestBatch, ingestByRecord } from '../src/kernel/ingest.js';
import { Layout, REC_ERROR, REC_UNKNOWN, REQ_OP_DISCARD, REQ_OP_SECURE_ERASE } from '../src/kernel/kernel-abi.js';
import { mulberry32 } from './helpers/seeded-random.js';

const SEED = process.env.INGEST_SEED ? Number(process.env.INGEST_SEED) : (Math.random() * 2 ** 32) >>> 0;
const DISK_A = (7 << 20) | 1;
const DISK_B = (259 << 20) | 3;

interface Rec { sector: number; sectors: number; dev: number; op: number; flags: number; slotMask: number }

function encode(records: Rec[]): Uint8Array {
  const L = Layout.record;
  const b = Buffer.alloc(records.length * L.size);
  records.forEach((r, i) => {
    const o = i * L.size;
    b.writeUInt32LE(r.sector % 2 ** 32, o + L.sector);
    b.writeUInt32LE(Math.floor(r.sector / 2 ** 32), o + L.sector + 4);
    b.writeUInt32LE(r.sectors, o + L.sectors);
    b.writeUInt32LE(r.dev, o + L.dev);
    b.writeUInt16LE(r.op, o + L.op);
    b.writeUInt16LE(r.flags, o + L.flags);
    b.writeUInt32LE(r.slotMask >>> 0, o + L.slotMask);
  });
  return b;
}

type Range = IngestTarget & { name: string; unknown: number };

/** Slot 0: disk A [1000, 9000); slot 1: disk A [5000, 20000), overlapping it; slot 2: disk B [0, 4096). */
function ranges(rng: () => number): Range[] {
  const make = (name: string, diskDev: number, startSector: number, endSector: number): Range => {
    const r: Range = { name, diskDev, startSector, endSector, dirty: new ExtentSet(), discarded: new ExtentSet(), receivedSectors: 0, unknown: 0 };
    // Some of the range dirty or discarded already, so a batch meets both.
    for (let k = 0; k < 20; k++) {
      const s = Math.floor(rng() * (endSector - startSector));
      (rng() < 0.5 ? r.dirty : r.discarded).add(s, Math.min(endSector - startSector, s + 1 + Math.floor(rng() * 64)));
    }
    return r;
  };
  return [make('a0', DISK_A, 1000, 9000), make('a1', DISK_A, 5000, 20000), make('b2', DISK_B, 0, 4096)];
}

const copyOf = (rs: Range[]): Range[] => rs.map((r) => ({ ...r, dirty: r.dirty.clone(), discarded: r.discarded.clone() }));

/** Writes inside every range of the mask: a batch the addon takes whole. */
function plainBatch(rng: () => number): Rec[] {
  const [mask, dev, lo, hi] = [[1, DISK_A, 1000, 9000], [2, DISK_A, 5000, 20000], [3, DISK_A, 5000, 9000], [4, DISK_B, 0, 4096]][Math.floor(rng() * 4)];
  const n = 16 + Math.floor(rng() * 300);
  const out: Rec[] = [];
  let sector = lo + Math.floor(rng() * (hi - lo - 64));
  for (let i = 0; i < n; i++) {
    const kind = rng();
    // Sequential, overlapping the one before, empty, or anywhere: the addon folds the first two.
    if (kind < 0.2) sector += out.length ? out[out.length - 1].sectors : 0;
    else if (kind < 0.3) sector += Math.floor(rng() * 8);
    else sector = lo + Math.floor(rng() * (hi - lo - 64));
    const sectors = kind < 0.35 && kind >= 0.3 ? 0 : 1 + Math.floor(rng() * (rng() < 0.9 ? 8 : 64));
    out.push({ sector: Math.min(sector, hi - sectors), sectors, dev, op: rng() < 0.1 ? 9 : 1, flags: rng() < 0.05 ? REC_ERROR : 0, slotMask: mask });
  }
  return out;
}

/** One record that makes a batch not plain: a discard, an unknown write, another disk or mask, a write to be clipped, a sector past 2^52. */
function spoil(batch: Rec[], rng: () => number): string {
  const r = batch[Math.floor(rng() * batch.length)];
  const how = Math.floor(rng() * 7);
  if (how === 0) r.op = REQ_OP_DISCARD;
  if (how === 1) r.op = REQ_OP_SECURE_ERASE;
  if (how === 2) r.flags |= REC_UNKNOWN;
  if (how === 3) r.dev = r.dev === DISK_A ? DISK_B : DISK_A; // malformed for its ranges
  if (how === 4) r.slotMask = r.slotMask === 1 ? 2 : 1;
  if (how === 5) [r.sector, r.sectors, r.slotMask, r.dev] = [8990, 40, 1, DISK_A]; // reaches past slot 0's end
  if (how === 6) [r.sector, r.slotMask, r.dev] = [2 ** 52 + 8, 1, DISK_A];
  return ['discard', 'secure-erase', 'unknown', 'other disk', 'other mask', 'to clip', 'past 2^52'][how];
}

function assertSame(a: Range[], b: Range[], what: string): void {
  for (let i = 0; i < a.length; i++) {
    assert.equal(a[i].dirty.toArray(), b[i].dirty.toArray(), `${what}: ${a[i].name} dirty`);
    assert.equal(a[i].discarded.toArray(), b[i].discarded.toArray(), `${what}: ${a[i].name} discarded`);
    assert.is(a[i].receivedSectors, b[i].receivedSectors, `${what}: ${a[i].name} received`);
    assert.is(a[i].unknown, b[i].unknown, `${what}: ${a[i].name} unknown writes`);
  }
}

test(`a batch read whole changes the ranges as reading it record by record does (seed ${SEED}, INGEST_SEED to replay)`, () => {
  const rng = mulberry32(SEED);
  let wholes = 0;
  for (let run = 0; run < 300; run++) {
    const whole = ranges(rng);
    const byRecord = copyOf(whole);
    const batches = 1 + Math.floor(rng() * 4);
    for (let k = 0; k < batches; k++) {
      const recs = plainBatch(rng);
      const spoilt = rng() < 0.4 ? spoil(recs, rng) : rng() < 0.1 ? 'few records' : 'plain';
      const batch = encode(spoilt === 'few records' ? recs.slice(0, 5) : recs);
      const what = `run ${run} batch ${k} (${spoilt})`;
      if (spoilt === 'plain') {
        const scratch = new Float64Array(recs.length);
        assert.ok(native().plainWrites(batch, scratch, scratch.slice(), new Float64Array(5)) >= 0, `${what}: the addon takes a plain batch`);
        wholes++;
      }
      const a = ingestBatch(batch, (i) => whole[i], (st) => { st.unknown++; });
      const b = ingestByRecord(batch, (i) => byRecord[i], (st) => { st.unknown++; });
      assert.equal(a, b, `${what}: records and malformed`);
      assertSame(whole, byRecord, what);
    }
  }
  assert.ok(wholes > 200, `plain batches: ${wholes}`);
});

test('the addon refuses what it cannot read whole, and says what it read', () => {
  const rec: Rec = { sector: 4096, sectors: 8, dev: DISK_A, op: 1, flags: 0, slotMask: 1 };
  const starts = new Float64Array(4);
  const ends = new Float64Array(4);
  const summary = new Float64Array(5);
  const batch = encode([rec, { ...rec, sector: 4100 }, { ...rec, sector: 4108, sectors: 0 }, { ...rec, sector: 100, sectors: 16 }]);
  assert.is(native().plainWrites(batch, starts, ends, summary), 2);
  assert.equal([...starts.slice(0, 2)], [4096, 100]);
  assert.equal([...ends.slice(0, 2)], [4108, 116]);
  assert.equal([...summary], [DISK_A, 1, 8 + 8 + 0 + 16, 100, 4108]);
  assert.is(native().plainWrites(encode([rec, { ...rec, op: REQ_OP_DISCARD }]), starts, ends, summary), -1);
  assert.is(native().plainWrites(encode([rec, { ...rec, flags: REC_UNKNOWN }]), starts, ends, summary), -1);
  assert.is(native().plainWrites(encode([rec, { ...rec, slotMask: 3 }]), starts, ends, summary), -1);
  assert.is(native().plainWrites(encode([rec, { ...rec, dev: DISK_B }]), starts, ends, summary), -1);
  assert.throws(() => native().plainWrites(batch, new Float64Array(3), ends, summary), /usage/);
});

test.run();
