// Pins src/kernel/kernel-abi.ts to bpf/dpsr.h: a C program compiled from the header
// prints every size, offset and constant, and they must match.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  BITMAP_WORDS, CONSUMER_OWNER, ISSUED_ENTRIES, ISSUED_REQUEUED, ISSUED_UNPLACED, Layout, MAX_RINGS, MAX_SLOTS, MISSED_ENTRIES,
  REC_ERROR, REC_UNKNOWN, TAGS_PER_DISK, chunkShiftFor, decodeBitmap, decodeIssued, decodeMissed, decodeTagEntries, forEachRecord,
} from '../src/kernel/kernel-abi.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function headerFacts(): Record<string, number> {
  const fields: Record<string, string[]> = {
    dpsr_record: ['sector', 'sectors', 'dev', 'op', 'flags', 'slot_mask'],
    dpsr_slot: ['start_sector', 'end_sector', 'disk_dev', 'ring_mask', 'chunk_shift'],
    dpsr_disk: ['slot_mask'],
    dpsr_slot_stats: ['records', 'sectors', 'disk_sectors', 'unknown'],
    dpsr_ring_stats: ['records', 'drops'],
    dpsr_bitmap: ['whole', 'words'],
    dpsr_consumer: ['pid', 'flags', 'start_time'],
    dpsr_control: ['epoch', 'owner_clean'],
    dpsr_issued: ['sector', 'issued_ns', 'dev', 'sectors', 'op', 'flags'],
    dpsr_missed_key: ['rq', 'issued_ns', 'sector'],
    dpsr_log_stats: ['full'],
    dpsr_tag_entry: ['seq', 'rq', 'e'],
  };
  const lines = Object.entries(fields).flatMap(([s, fs_]) => [
    `printf("${s}=%zu\\n", sizeof(struct ${s}));`,
    ...fs_.map((f) => `printf("${s}.${f}=%zu\\n", offsetof(struct ${s}, ${f}));`),
  ]);
  const consts = ['DPSR_MAX_SLOTS', 'DPSR_MAX_RINGS', 'DPSR_BITMAP_WORDS', 'DPSR_REC_UNKNOWN', 'DPSR_REC_ERROR', 'DPSR_CONSUMER_OWNER',
    'DPSR_ISSUED_ENTRIES', 'DPSR_MISSED_ENTRIES', 'DPSR_ISSUED_UNPLACED', 'DPSR_ISSUED_REQUEUED', 'DPSR_TAGS_PER_DISK'];
  const src = `#include <stddef.h>\n#include <stdio.h>\n#include <linux/types.h>\n#include "dpsr.h"\nint main(void) {\n${lines.join('\n')}\n${consts.map((c) => `printf("${c}=%d\\n", ${c});`).join('\n')}\nreturn 0; }\n`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-abi-'));
  try {
    fs.writeFileSync(path.join(dir, 'abi.c'), src);
    execFileSync('cc', ['-I', path.join(root, 'bpf'), '-o', path.join(dir, 'abi'), path.join(dir, 'abi.c')]);
    const out = execFileSync(path.join(dir, 'abi'), { encoding: 'utf8' });
    return Object.fromEntries(out.trim().split('\n').map((l) => { const [k, v] = l.split('='); return [k, Number(v)]; }));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('every layout and constant matches bpf/dpsr.h', () => {
  const h = headerFacts();
  const check = (struct: string, layout: Record<string, number>, names: Record<string, string>) => {
    assert.is(layout.size, h[struct], `sizeof ${struct}`);
    for (const [ts, c] of Object.entries(names)) assert.is(layout[ts], h[`${struct}.${c}`], `${struct}.${c}`);
  };
  check('dpsr_record', Layout.record, { sector: 'sector', sectors: 'sectors', dev: 'dev', op: 'op', flags: 'flags', slotMask: 'slot_mask' });
  check('dpsr_slot', Layout.slot, { startSector: 'start_sector', endSector: 'end_sector', diskDev: 'disk_dev', ringMask: 'ring_mask', chunkShift: 'chunk_shift' });
  check('dpsr_disk', Layout.disk, { slotMask: 'slot_mask' });
  check('dpsr_slot_stats', Layout.slotStats, { records: 'records', sectors: 'sectors', diskSectors: 'disk_sectors', unknown: 'unknown' });
  check('dpsr_ring_stats', Layout.ringStats, { records: 'records', drops: 'drops' });
  check('dpsr_bitmap', Layout.bitmap, { whole: 'whole', words: 'words' });
  check('dpsr_consumer', Layout.consumer, { pid: 'pid', flags: 'flags', startTime: 'start_time' });
  check('dpsr_control', Layout.control, { epoch: 'epoch', ownerClean: 'owner_clean' });
  check('dpsr_issued', Layout.issued, { sector: 'sector', issuedNs: 'issued_ns', dev: 'dev', sectors: 'sectors', op: 'op', flags: 'flags' });
  check('dpsr_missed_key', Layout.missedKey, { rq: 'rq', issuedNs: 'issued_ns', sector: 'sector' });
  check('dpsr_log_stats', Layout.logStats, { full: 'full' });
  check('dpsr_tag_entry', Layout.tagEntry, { seq: 'seq', rq: 'rq', issued: 'e' });
  assert.is(TAGS_PER_DISK, h.DPSR_TAGS_PER_DISK);
  assert.is(ISSUED_ENTRIES, h.DPSR_ISSUED_ENTRIES);
  assert.is(MISSED_ENTRIES, h.DPSR_MISSED_ENTRIES);
  assert.is(ISSUED_UNPLACED, h.DPSR_ISSUED_UNPLACED);
  assert.is(ISSUED_REQUEUED, h.DPSR_ISSUED_REQUEUED);
  assert.is(MAX_SLOTS, h.DPSR_MAX_SLOTS);
  assert.is(MAX_RINGS, h.DPSR_MAX_RINGS);
  assert.is(BITMAP_WORDS, h.DPSR_BITMAP_WORDS);
  assert.is(REC_UNKNOWN, h.DPSR_REC_UNKNOWN);
  assert.is(REC_ERROR, h.DPSR_REC_ERROR);
  assert.is(CONSUMER_OWNER, h.DPSR_CONSUMER_OWNER);
});

test('records decode, including sectors above 2^32', () => {
  const b = Buffer.alloc(48);
  b.writeBigUInt64LE(0x1_2345_6789n, 0); b.writeUInt32LE(8, 8); b.writeUInt32LE((7 << 20) | 3, 12);
  b.writeUInt16LE(1, 16); b.writeUInt16LE(REC_ERROR, 18); b.writeUInt32LE(5, 20);
  b.writeBigUInt64LE(0n, 24); b.writeUInt32LE(0, 32); b.writeUInt16LE(35, 40); b.writeUInt16LE(REC_UNKNOWN, 42);
  const seen: Array<[number, number, number, number]> = [];
  forEachRecord(b, (r) => seen.push([r.startSector, r.endSector, r.op, r.flags]));
  assert.equal(seen, [[0x1_2345_6789, 0x1_2345_6789 + 8, 1, REC_ERROR], [0, 0, 35, REC_UNKNOWN]]);
});

test('an issued entry and the same write as a lost one decode to one id', () => {
  const v = Buffer.alloc(Layout.issued.size);
  v.writeBigUInt64LE(0x1_0000_0008n, Layout.issued.sector); v.writeBigUInt64LE(123_456_789_012n, Layout.issued.issuedNs);
  v.writeUInt32LE((7 << 20) | 3, Layout.issued.dev); v.writeUInt32LE(16, Layout.issued.sectors); v.writeUInt16LE(1, Layout.issued.op);
  const rq = Buffer.alloc(8);
  rq.writeBigUInt64LE(0xffff_8880_1234_5678n);
  const key = Buffer.alloc(Layout.missedKey.size);
  rq.copy(key, Layout.missedKey.rq); key.writeBigUInt64LE(123_456_789_012n, Layout.missedKey.issuedNs); key.writeBigUInt64LE(0x1_0000_0008n, Layout.missedKey.sector);
  const a = decodeIssued(rq, v), b = decodeMissed(key, v);
  assert.is(a.id, b.id);
  assert.equal([a.startSector, a.endSector, a.dev, a.op, a.issuedNs], [0x1_0000_0008, 0x1_0000_0018, (7 << 20) | 3, 1, 123_456_789_012n]);
});

test('tag entries: one two copies agree on decodes under its request\'s id; an empty, a torn or a moving one is left out', () => {
  const T = Layout.tagEntry;
  const entry = (seq: bigint, rq: bigint, sector: bigint, sectors: number) => {
    const b = Buffer.alloc(T.size);
    b.writeBigUInt64LE(seq, T.seq); b.writeBigUInt64LE(rq, T.rq);
    b.writeBigUInt64LE(sector, T.issued + Layout.issued.sector); b.writeBigUInt64LE(99n, T.issued + Layout.issued.issuedNs);
    b.writeUInt32LE(sectors, T.issued + Layout.issued.sectors);
    return b;
  };
  const first = Buffer.concat([entry(4n, 0xffff_8880_1234_5678n, 8n, 16), entry(2n, 0n, 0n, 0), entry(7n, 0xabcdn, 64n, 8), entry(2n, 0xbeefn, 128n, 8)]);
  const second = Buffer.concat([entry(4n, 0xffff_8880_1234_5678n, 8n, 16), entry(2n, 0n, 0n, 0), entry(7n, 0xabcdn, 64n, 8), entry(4n, 0xbeefn, 136n, 8)]);
  const got = decodeTagEntries(first, second);
  assert.is(got.length, 1, 'the settled entry alone');
  const rq = Buffer.alloc(8); rq.writeBigUInt64LE(0xffff_8880_1234_5678n);
  assert.is(got[0].id, decodeIssued(rq, first.subarray(T.issued, T.issued + Layout.issued.size)).id, 'named as in the hash and in missed');
  assert.equal([got[0].startSector, got[0].endSector], [8, 24]);
});

test('bitmaps decode to chunk numbers; chunk size fits the range', () => {
  const b = Buffer.alloc(Layout.bitmap.size);
  b.writeUInt32LE(0b101, 8);
  b.writeUInt32LE(0x8000_0000, 8 + 4);
  b.writeUInt32LE(1, 8 + 8 * 1023 + 4);
  assert.equal(decodeBitmap(b), { whole: false, chunks: [0, 2, 63, 1023 * 64 + 32] });
  b.writeUInt32LE(1, 0);
  assert.equal(decodeBitmap(b), { whole: true, chunks: [] });
  assert.is(chunkShiftFor(2048), 7, 'at least 64 KiB');
  assert.is(chunkShiftFor(2 ** 31), 15, '1 TiB: 16 MiB chunks');
  assert.ok(Math.ceil(2 ** 31 / 2 ** chunkShiftFor(2 ** 31)) <= BITMAP_WORDS * 64);
});

test.run();
