// The redo journal on real loop devices: what is committed comes back whole, what is torn,
// stale or corrupt never comes back at all, and applying lands exactly the entries.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { openDirect } from '../src/io/direct-io.js';
import {
  applyEntries, applyTransaction, entriesOverlap, invalidate, journalBytesFor, readCommitted, writeTransaction,
  type CommittedTransaction, type JournalEntry, type JournalRegion,
} from '../src/drive/journal.js';
import { native } from '../src/base/native.js';
import { Fixture, ddDirect, freshCliFixture, runDpsr, sha256Of, sh } from './helpers/fixture.js';
import { LocalDevice } from '../src/io/local-device.js';

const dev = (fd: number) => new LocalDevice(fd);

const SECTOR = 512;
const MiB = 1 << 20;
// A 64 MiB drive: image [0, 40 MiB), journal [40 MiB, 64 MiB - 8 KiB), label after.
const DRIVE_MIB = 64;
const IMAGE_BYTES = 40 * MiB;

let fx: Fixture;
test.before.each(() => {
  fx = new Fixture();
});
test.after.each(() => fx.cleanup());

function drive(sizeMiB = DRIVE_MIB): { dev: string; fd: number; region: JournalRegion } {
  const dev = fx.loop(sizeMiB);
  sh('blockdev', ['--setrw', dev]);
  const fd = openDirect(dev, true);
  fx.defer(`close ${dev}`, () => fs.closeSync(fd));
  const size = native().blkGetSize64(fd);
  return { dev, fd, region: { drive: new LocalDevice(fd), startBytes: IMAGE_BYTES, lengthBytes: size - 8192 - IMAGE_BYTES, pairId: 'test-pair' } };
}

function readAt(fd: number, position: number, length: number): Buffer {
  const buf = native().alignedBuffer(length, 4096);
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buf, done, length - done, position + done);
    if (n === 0) throw new Error(`short read at ${position + done}`);
    done += n;
  }
  return Buffer.from(buf);
}

function writeAt(fd: number, position: number, data: Buffer): void {
  const buf = native().alignedBuffer(data.length, 4096);
  data.copy(buf);
  assert.is(fs.writeSync(fd, buf, 0, data.length, position), data.length);
}

function fillRandom(fd: number, bytes: number): void {
  for (let pos = 0; pos < bytes; pos += MiB) writeAt(fd, pos, crypto.randomBytes(Math.min(MiB, bytes - pos)));
}

const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
const data = (targetSector: number, bytes: number): JournalEntry => ({ kind: 'data', targetSector, data: crypto.randomBytes(bytes) });

/** Entries as (sector → content) runs: contiguous data pieces joined, so pieces and wholes compare equal. */
function normalize(entries: JournalEntry[]): Array<{ kind: string; targetSector: number; sectors: number; sha?: string }> {
  const out: Array<{ kind: string; targetSector: number; sectors: number; parts?: Buffer[]; sha?: string }> = [];
  for (const e of entries) {
    const last = out[out.length - 1];
    if (e.kind === 'data') {
      if (last && last.kind === 'data' && last.targetSector + last.sectors === e.targetSector && (e as { piece?: boolean }).piece) {
        last.parts!.push(e.data);
        last.sectors += e.data.length / SECTOR;
      } else {
        out.push({ kind: 'data', targetSector: e.targetSector, sectors: e.data.length / SECTOR, parts: [e.data] });
      }
    } else {
      out.push({ kind: 'discard', targetSector: e.targetSector, sectors: e.sectors });
    }
  }
  return out.map(({ parts, ...rest }) => (parts ? { ...rest, sha: sha256(Buffer.concat(parts)) } : rest));
}

/** Reads every entry back; pieces of one entry are marked so normalize() joins them (and only them). */
async function collect(txn: CommittedTransaction): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  let expectPieceUntil = -1;
  for await (const e of txn.entries(MiB)) {
    if (e.kind === 'data') {
      const piece = e.targetSector === expectPieceUntil;
      out.push(Object.assign(e, { piece }));
      expectPieceUntil = e.data.length === MiB ? e.targetSector + MiB / SECTOR : -1;
    } else {
      out.push(e);
      expectPieceUntil = -1;
    }
  }
  return out;
}

function roundTripEntries(): JournalEntry[] {
  return [
    data(3, 512), // a lone sector, not 4 KiB aligned
    data(17, 3 * 512),
    data(1000, 4096),
    { kind: 'discard', targetSector: 30_000, sectors: 2048 + 8 }, // 1 MiB + 4 KiB
    data(2048, 3 * MiB + 512), // multi-MiB, odd length: the next entries are not 4 KiB aligned in the journal
    data(20_001, 5 * 512),
    data(40_000, 5 * MiB),
    data(9, 512), // overlaps nothing, comes after big ones
  ];
}

test('round trip: committed entries come back and apply in place; the discard reads as zeros', async () => {
  const { fd, region } = drive();
  fillRandom(fd, IMAGE_BYTES);
  const entries = roundTripEntries();
  const dataBytes = entries.reduce((n, e) => n + (e.kind === 'data' ? e.data.length : 0), 0);
  const { bytes } = await writeTransaction(region, 7, entries);
  assert.is(bytes, journalBytesFor(dataBytes, entries.length));
  const before = readAt(fd, 0, IMAGE_BYTES);

  const txn = await readCommitted(region, 7);
  assert.ok(txn, 'committed transaction found');
  assert.is(txn!.seq, 7);
  assert.is(txn!.bytes, bytes);
  assert.is(txn!.entryCount, entries.length);
  // The whole 5 MiB entry is split in 1 MiB pieces; joined, the entries are the same.
  assert.equal(normalize(await collect(txn!)), normalize(entries));
  assert.equal(readAt(fd, 0, IMAGE_BYTES), before, 'reading changes nothing');
  assert.is(await readCommitted(region, 6), null);
  assert.is(await readCommitted(region, 8), null);

  await applyTransaction(dev(fd), txn!);
  const after = readAt(fd, 0, IMAGE_BYTES);
  const expected = Buffer.from(before);
  for (const e of entries) {
    if (e.kind === 'data') e.data.copy(expected, e.targetSector * SECTOR);
    else expected.fill(0, e.targetSector * SECTOR, (e.targetSector + e.sectors) * SECTOR);
  }
  const discard = entries[3] as { targetSector: number; sectors: number };
  assert.ok(after.subarray(discard.targetSector * SECTOR, (discard.targetSector + discard.sectors) * SECTOR).every((b) => b === 0),
    'discarded range reads as zeros');
  assert.is(sha256(after), sha256(expected), 'the image is exactly before + entries');
});

test('later entries win over earlier overlapping ones, with several batches in flight', async () => {
  const { fd, region } = drive();
  fillRandom(fd, IMAGE_BYTES);
  const entries: JournalEntry[] = [];
  for (let i = 0; i < 200; i++) entries.push(data(8 * Math.floor(Math.random() * 64), 4096 * (1 + Math.floor(Math.random() * 4))));
  entries.push({ kind: 'discard', targetSector: 100, sectors: 50 });
  for (let i = 0; i < 20; i++) entries.push(data(Math.floor(Math.random() * 600), 512 * (1 + Math.floor(Math.random() * 700))));
  const before = readAt(fd, 0, IMAGE_BYTES);
  await writeTransaction(region, 1, entries, { chunkBytes: 64 * 1024 });
  const txn = await readCommitted(region, 1, { chunkBytes: 64 * 1024 });
  assert.ok(txn);
  await applyTransaction(dev(fd), txn!, { chunkBytes: 16 * 1024, inFlight: 8 });
  const expected = Buffer.from(before);
  for (const e of entries) {
    if (e.kind === 'data') e.data.copy(expected, e.targetSector * SECTOR);
    else expected.fill(0, e.targetSector * SECTOR, (e.targetSector + e.sectors) * SECTOR);
  }
  assert.is(sha256(readAt(fd, 0, IMAGE_BYTES)), sha256(expected));
});

test('applied from memory (page-aligned data, as a sync keeps it): the image is before + entries; overlapping entries are told apart', async () => {
  const { fd, region } = drive();
  fillRandom(fd, IMAGE_BYTES);
  const aligned = (targetSector: number, bytes: number): JournalEntry => {
    const buf = native().alignedBuffer(bytes, 4096);
    crypto.randomFillSync(buf);
    return { kind: 'data', targetSector, data: buf };
  };
  // Disjoint, in no particular order, as a sync's passes journal them.
  const entries: JournalEntry[] = [];
  for (let i = 0; i < 300; i++) entries.push(aligned(8 * (2 * i + 1), 4096));
  entries.push({ kind: 'discard', targetSector: 8 * 1000, sectors: 56 });
  entries.push(aligned(8 * 1200, 64 * 4096));
  entries.reverse();
  assert.not.ok(entriesOverlap(entries));
  assert.ok(entriesOverlap([...entries, aligned(8 * 3, 4096)]), 'a block written again overlaps');
  const expected = readAt(fd, 0, IMAGE_BYTES);
  for (const e of entries) {
    if (e.kind === 'data') e.data.copy(expected, e.targetSector * SECTOR);
    else expected.fill(0, e.targetSector * SECTOR, (e.targetSector + e.sectors) * SECTOR);
  }
  await applyEntries(dev(fd), entries);
  assert.is(sha256(readAt(fd, 0, IMAGE_BYTES)), sha256(expected), 'every entry landed, the discard reads as zeros');
});

test('an async iterable of entries streams in; many entries need several descriptor blocks', async () => {
  const { fd, region } = drive();
  const entries: JournalEntry[] = [];
  for (let i = 0; i < 1000; i++) entries.push(data(i * 16, 512 * (1 + (i % 8))));
  async function* gen(): AsyncGenerator<JournalEntry> { for (const e of entries) yield e; }
  const { bytes } = await writeTransaction(region, 3, gen());
  const dataBytes = entries.reduce((n, e) => n + (e.kind === 'data' ? e.data.length : 0), 0);
  assert.is(bytes, journalBytesFor(dataBytes, 1000));
  const txn = await readCommitted(region, 3);
  assert.ok(txn);
  assert.equal(normalize(await collect(txn!)), normalize(entries));
  await applyTransaction(dev(fd), txn!);
  for (const e of entries.slice(0, 50)) {
    if (e.kind === 'data') assert.ok(readAt(fd, e.targetSector * SECTOR - ((e.targetSector * SECTOR) % 4096), 8192)
      .subarray((e.targetSector * SECTOR) % 4096, (e.targetSector * SECTOR) % 4096 + e.data.length).equals(e.data));
  }
});

test('torn: entries written without the commit, or a zeroed commit block, never come back', async () => {
  const { fd, region } = drive();
  fillRandom(fd, IMAGE_BYTES);
  const before = sha256(readAt(fd, 0, IMAGE_BYTES));
  await writeTransaction(region, 4, roundTripEntries(), { commit: false });
  assert.is(await readCommitted(region, 4), null);

  await writeTransaction(region, 4, roundTripEntries());
  assert.ok(await readCommitted(region, 4));
  writeAt(fd, region.startBytes, Buffer.alloc(4096)); // the commit never landed
  assert.is(await readCommitted(region, 4), null);

  await writeTransaction(region, 4, roundTripEntries());
  const head = readAt(fd, region.startBytes, 4096);
  head[70] ^= 1; // a torn head: half old, half new
  writeAt(fd, region.startBytes, head);
  assert.is(await readCommitted(region, 4), null);
  assert.is(sha256(readAt(fd, 0, IMAGE_BYTES)), before, 'nothing reached the image');
});

test('stale: an uncommitted seq 6 over a committed seq 5 returns neither, never a mix', async () => {
  const { fd, region } = drive();
  const five = [data(0, MiB), data(4096, 2 * MiB), { kind: 'discard' as const, targetSector: 10_000, sectors: 8 }];
  await writeTransaction(region, 5, five);
  assert.ok(await readCommitted(region, 5));
  assert.is(await readCommitted(region, 6), null, 'seq 5 is not returned for 6');

  // Seq 6 smaller than 5 (its leftovers remain past seq 6's end), not committed.
  await writeTransaction(region, 6, [data(8, 256 * 1024)], { commit: false });
  assert.is(await readCommitted(region, 6), null);
  assert.is(await readCommitted(region, 5), null, 'seq 5 was overwritten: no mix');

  // Seq 5 committed again, then only its data overwritten in place (head intact): the hash catches it.
  await writeTransaction(region, 5, five);
  const six = await writeTransaction(region, 6, [data(8, 256 * 1024)], { commit: false });
  assert.ok(six.bytes > 0);
  // Replay the old head of a committed seq 5 on top of seq 6's blocks: a stale head with new data.
  await writeTransaction(region, 5, five);
  const staleHead = readAt(fd, region.startBytes, 4096);
  await writeTransaction(region, 6, [data(8, 256 * 1024)], { commit: false });
  writeAt(fd, region.startBytes, staleHead);
  assert.is(await readCommitted(region, 5), null, 'a committed head over other data never verifies');
  assert.is(await readCommitted(region, 6), null);

  // Same entries, same seq, written twice: the second's nonce differs, the first's head does not verify it.
  await writeTransaction(region, 5, five);
  const head1 = readAt(fd, region.startBytes, 4096);
  await writeTransaction(region, 5, five);
  assert.ok(await readCommitted(region, 5));
  writeAt(fd, region.startBytes, head1);
  assert.is(await readCommitted(region, 5), null, 'data identical but descriptors carry another nonce');
});

test('corruption: one flipped byte in a data block or a descriptor block → null', async () => {
  const { fd, region } = drive();
  const entries = [data(8, 3 * MiB), data(100_000 / 8, 4096)];
  const { bytes } = await writeTransaction(region, 9, entries);
  for (const at of [4096 + 5, 4096 + 2 * MiB + 123, bytes - 4096 + 70, bytes - 4096 + 20]) {
    await writeTransaction(region, 9, entries);
    assert.ok(await readCommitted(region, 9));
    const pos = region.startBytes + Math.floor(at / 4096) * 4096;
    const block = readAt(fd, pos, 4096);
    block[at % 4096] ^= 0x40;
    writeAt(fd, pos, block);
    assert.is(await readCommitted(region, 9), null, `byte ${at} flipped`);
  }
});

test('too big: a clear error before anything is written; journalBytesFor predicts exactly', async () => {
  const { fd, region } = drive();
  const small = { ...region, lengthBytes: 2 * MiB };
  assert.is(journalBytesFor(0, 0), 4096);
  assert.is(journalBytesFor(512, 1), 3 * 4096);
  assert.is(journalBytesFor(4096, 252), 3 * 4096);
  assert.is(journalBytesFor(4608, 253), 4 * 4096 + 4096);
  await writeTransaction(small, 1, [data(0, 4096)]);
  const headBefore = readAt(fd, region.startBytes, 4096);
  try {
    await writeTransaction(small, 2, [data(0, MiB), data(4096, MiB)]);
    assert.unreachable('should have thrown');
  } catch (err) {
    assert.instance(err, Error);
    assert.is((err as { code?: string }).code, 'EJOURNALFULL');
    assert.match((err as Error).message, /too big.*2 entries.*2\.0 MiB of data need 2\.0 MiB \(2105344 bytes\).*holds 2\.0 MiB/);
  }
  assert.equal(readAt(fd, region.startBytes, 4096), headBefore, 'the array was refused before any write');
  assert.ok(await readCommitted(small, 1));
  // Streaming: refused when the overflow is seen; no transaction is left committed.
  async function* gen(): AsyncGenerator<JournalEntry> { yield data(0, MiB); yield data(4096, MiB); }
  try {
    await writeTransaction(small, 2, gen());
    assert.unreachable('should have thrown');
  } catch (err) {
    assert.is((err as { code?: string }).code, 'EJOURNALFULL');
  }
  assert.is(await readCommitted(small, 1), null);
  assert.is(await readCommitted(small, 2), null);
  // Exactly full fits.
  const exact = { ...region, lengthBytes: journalBytesFor(MiB - 4096 + 512, 2) };
  const r = await writeTransaction(exact, 3, [data(0, MiB - 4096), data(9999, 512)]);
  assert.is(r.bytes, exact.lengthBytes);
  assert.ok(await readCommitted(exact, 3));
});

test('idempotent apply, and invalidate makes the transaction unreplayable', async () => {
  const { fd, region } = drive();
  fillRandom(fd, IMAGE_BYTES);
  const entries = roundTripEntries();
  await writeTransaction(region, 11, entries);
  const txn = await readCommitted(region, 11);
  assert.ok(txn);
  await applyTransaction(dev(fd), txn!);
  const once = sha256(readAt(fd, 0, IMAGE_BYTES));
  await applyTransaction(dev(fd), txn!);
  assert.is(sha256(readAt(fd, 0, IMAGE_BYTES)), once);
  const again = await readCommitted(region, 11); // as after a crash mid-apply: read and apply again
  await applyTransaction(dev(fd), again!);
  assert.is(sha256(readAt(fd, 0, IMAGE_BYTES)), once);
  // The handle writeTransaction returns applies the same, without a verify pass.
  const { committed } = await writeTransaction(region, 12, entries);
  assert.ok(committed);
  assert.is(committed!.seq, 12);
  assert.equal(committed!.descriptors, (await readCommitted(region, 12))!.descriptors);
  await applyTransaction(dev(fd), committed!);
  assert.is(sha256(readAt(fd, 0, IMAGE_BYTES)), once);
  await invalidate(region);
  assert.is(await readCommitted(region, 12), null);
});

test('a transaction of another pair never verifies, even with the sequence number looked for', async () => {
  const { region } = drive();
  await writeTransaction(region, 1, [data(0, 4096)]);
  assert.ok(await readCommitted(region, 1), 'its own pair reads it');
  assert.is(await readCommitted({ ...region, pairId: 'another-pair' }, 1), null);
});

test('a drive paired again after unpair never replays the earlier pairing\'s transaction', () => {
  const { fx: f, env } = freshCliFixture();
  try {
    const { source, drive: dev, bytes } = f.pairDevices(32);
    const other = f.loop(32);
    const run = (...args: string[]) => {
      const r = runDpsr(env, args);
      assert.is(r.status, 0, `dpsr ${args.join(' ')}: ${r.stderr}`);
    };
    run('pair', other, dev, '--name', 'first');
    ddDirect(other, 1024, 64);
    run('sync', 'first', '--quiet-period', '0.2'); // leaves transaction 1 of "first" in the tail, applied
    run('unpair', 'first');
    run('pair', source, dev, '--name', 'second', '--force');
    ddDirect(source, 4096, 8);
    run('sync', 'second', '--quiet-period', '0.2'); // looks for its transaction 1 first
    assert.is(sha256Of(dev, bytes), sha256Of(source, bytes), 'the DPSR drive is the second source, nothing of the first');
  } finally {
    f.cleanup();
  }
});

test('an entry aimed at the journal region itself is refused at apply', async () => {
  const { region } = drive();
  await writeTransaction(region, 1, [data(region.startBytes / SECTOR + 8, 4096)]);
  const txn = await readCommitted(region, 1);
  assert.ok(txn);
  try {
    await applyTransaction(region.drive, txn!);
    assert.unreachable('should have thrown');
  } catch (err) {
    assert.is((err as { code?: string }).code, 'EJOURNAL');
  }
});

test.run();
