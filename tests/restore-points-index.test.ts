// The history index's one 64 KiB slot, filled on a real drive (a loop
// device, the history region's own functions, generations made as a
// journaled sync makes them: the undo saved, then the blocks written): the
// oldest unlabelled points go for its room, said like the region being full;
// a labelled point is never dropped for it, the sync that would need it is
// refused before its commit; and the records a middle point hands to a
// labelled one that holds their blocks already are freed, so a keep_points
// policy under a labelled point does not fill the index. Every point that is
// kept hashes as the image it was.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import { Fixture } from './helpers/fixture.js';
import { ExtentSet } from '../src/base/extents.js';
import { native } from '../src/base/native.js';
import { openLocalDevice } from '../src/io/local-device.js';
import type { LocalDevice } from '../src/io/local-device.js';
import { DEFAULT_KEEP, type HistoryRegion, type KeepPolicy, checkUndoRoom, readIndex, readUndoExtents, recordsOf, resetHistory, saveUndo } from '../src/drive/history-region.js';
import { overlay } from '../src/restore/point-image.js';

const IMAGE_BYTES = 1 << 20;
const IMAGE_SECTORS = IMAGE_BYTES / 512;
const BLOCK = 4096;

let fx: Fixture;
test.before.each(() => { fx = new Fixture(); });
test.after.each(() => fx.cleanup());

/** A drive: a 1 MiB image, then a 12 MiB history region (room for about a thousand one-block records). */
function historyDrive(): { io: LocalDevice; region: HistoryRegion; images: Map<number, string> } {
  const io = openLocalDevice(fx.loop(16), true);
  fx.defer('close the drive', () => io.close());
  const region: HistoryRegion = { drive: io, startBytes: IMAGE_BYTES, lengthBytes: 12 << 20, pairId: 'index-test' };
  resetHistory(region);
  return { io, region, images: new Map() };
}

/** Reads `length` bytes at `position` of the drive (direct I/O). */
function readAt(io: LocalDevice, position: number, length: number): Buffer {
  const buf = native().alignedBuffer(Math.ceil(length / BLOCK) * BLOCK, BLOCK);
  for (let done = 0; done < length;) done += io.readSync(buf, done, length - done, position + done);
  return Buffer.from(buf.subarray(0, length));
}

const hash = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

/** Point `generation`'s image as the overlay of point-image.ts builds it (the current image, the later records over it, data verified). */
async function pointHash(d: ReturnType<typeof historyDrive>, generation: number): Promise<string> {
  const image = readAt(d.io, 0, IMAGE_BYTES);
  const records = readIndex(d.region).points.filter((p) => p.generation >= generation).flatMap(recordsOf);
  const extents = [];
  for (const r of records) extents.push(await readUndoExtents(d.region, r, true));
  for (const [a, b, at] of overlay(extents, IMAGE_SECTORS)) readAt(d.io, at, b - a).copy(image, a);
  return hash(image);
}

/** One generation after point `g`: the sync's check before its commit, the undo of block `block`, then the block written. */
async function generation(d: ReturnType<typeof historyDrive>, g: number, block: number, label: string | null, keep: KeepPolicy = DEFAULT_KEEP) {
  d.images.set(g, hash(readAt(d.io, 0, IMAGE_BYTES)));
  const targets = ExtentSet.from([[block * 8, block * 8 + 8]]);
  const meta = { generation: g, timeMs: Date.now(), image: 'point-in-time' as const, label };
  checkUndoRoom(d.region, targets, meta, IMAGE_SECTORS, keep, 'p');
  const r = await saveUndo(d.region, d.io, g + 1, targets, meta, IMAGE_SECTORS, keep);
  const data = native().alignedBuffer(BLOCK, BLOCK);
  crypto.randomFillSync(data);
  d.io.writeSync(data, 0, BLOCK, block * BLOCK);
  return r;
}

async function exact(d: ReturnType<typeof historyDrive>, gens: number[]): Promise<void> {
  for (const g of gens) assert.is(await pointHash(d, g), d.images.get(g), `restore point ${g} is not the image it was`);
}

test('the oldest unlabelled points go for the index\'s room, named as such; every kept point exact', async () => {
  const d = historyDrive();
  let most = 0;
  for (let g = 0; g < 320; g++) {
    await generation(d, g, g % 250, null);
    most = Math.max(most, readIndex(d.region).points.length);
  }
  const index = readIndex(d.region);
  console.log(`  the index held at most ${most} points of one 4 KiB block each (the region has room for about 1000)`);
  assert.ok(most > 100 && most < 320, `the index held ${most} points`);
  assert.is(index.points[index.points.length - 1].generation, 319);
  const last = index.dropped[index.dropped.length - 1];
  assert.is(last.reason, 'the history index was full (oldest first)');
  assert.is(last.generation, index.points[0].generation - 1, 'the oldest went, one at a time');
  await exact(d, [index.points[0].generation, index.points[Math.floor(index.points.length / 2)].generation, 319]);
});

test('a labelled point is never dropped for the index\'s room: the sync that would need it is refused before its commit (EHISTORYFULL), the point exact', async () => {
  const d = historyDrive();
  await generation(d, 0, 0, 'first');
  let refused: (Error & { code?: string }) | null = null;
  let g = 1;
  for (; g < 400 && !refused; g++) {
    try {
      await generation(d, g, 1 + (g % 250), null);
    } catch (err) {
      refused = err as Error & { code?: string };
    }
  }
  assert.ok(refused, 'no sync was refused: the labelled point was dropped for the index\'s room');
  assert.is(refused.code, 'EHISTORYFULL');
  assert.match(refused.message, /needs a place in the history index \(64 KiB, full\) held by labelled restore point 0 \("first"\); nothing applied/);
  const index = readIndex(d.region);
  assert.is(index.points[0].generation, 0, 'the labelled point is kept');
  assert.is(index.points[index.points.length - 1].generation, g - 2, 'the refused generation saved no undo');
  assert.equal(index.dropped, [], 'nothing was dropped');
  await exact(d, [0, g - 2]);
});

test('keep_points under a labelled point: the records handed to it that it holds already are freed, so the index never fills; every kept point exact', async () => {
  const d = historyDrive();
  const keep: KeepPolicy = { keepMs: null, keepPoints: 1, dropLabelledWhenFull: false };
  await generation(d, 0, 0, 'first', keep);
  // The same two blocks rewritten by every sync (a file saved over and over): the labelled point's record holds them.
  for (let g = 1; g < 420; g++) await generation(d, g, g % 2, null, keep);
  const index = readIndex(d.region);
  assert.equal(index.points.map((p) => p.generation), [0, 419], 'the labelled point and keep_points = 1');
  const carried = index.points[0].carried ?? [];
  console.log(`  after 420 syncs the labelled point carries ${carried.length} records`);
  assert.ok(carried.length <= 1, `the labelled point carries ${carried.length} records: those it holds were not freed`);
  await exact(d, [0, 419]);
});

test.run();
