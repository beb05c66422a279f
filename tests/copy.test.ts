// Copy and compare on real loop devices: what is read back is what was meant to move, nothing else.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { AbortError, compareExtents, copyExtents, type CopyProgress } from '../src/io/copy.js';
import { openDirect } from '../src/io/direct-io.js';
import { batchIo } from '../src/io/batch-io.js';
import { DpsrError, RefusedError } from '../src/base/errors.js';
import { ExtentSet } from '../src/base/extents.js';
import { native } from '../src/base/native.js';
import { progressBar } from '../src/base/progress.js';
import { Fixture, ddDirect, sh } from './helpers/fixture.js';
import { LocalDevice } from '../src/io/local-device.js';

const dev = (fd: number) => new LocalDevice(fd);

const SECTOR = 512;

let fx: Fixture;
test.before.each(() => {
  fx = new Fixture();
});
test.after.each(() => fx.cleanup());

/**
 * A loop device made writable: BLKROSET outlives losetup -d, so a loop device another test
 * (or dpsr itself, which leaves its drive read-only) set read-only comes back read-only.
 */
function loop(sizeMiB: number): string {
  const dev = fx.loop(sizeMiB);
  sh('blockdev', ['--setrw', dev]);
  return dev;
}

/** Opens a device O_DIRECT for the test and closes it in cleanup. */
function open(dev: string, write: boolean): number {
  const fd = openDirect(dev, write);
  fx.defer(`close ${dev}`, () => fs.closeSync(fd));
  return fd;
}

function sizeSectors(fd: number): number {
  return native().blkGetSize64(fd) / SECTOR;
}

/** The whole device, read with O_DIRECT so no page cache stands between us and the disk. */
function readAll(dev: string): Buffer {
  const fd = openDirect(dev, false);
  try {
    const bytes = native().blkGetSize64(fd);
    const buf = native().alignedBuffer(bytes, 4096);
    let done = 0;
    while (done < bytes) {
      const n = fs.readSync(fd, buf, done, bytes - done, done);
      if (n === 0) throw new Error(`${dev}: short read at ${done}`);
      done += n;
    }
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

function fillRandom(dev: string): void {
  const fd = openDirect(dev, true);
  try {
    const bytes = native().blkGetSize64(fd);
    const buf = native().alignedBuffer(1 << 20, 4096);
    for (let pos = 0; pos < bytes; pos += buf.length) {
      const n = Math.min(buf.length, bytes - pos);
      crypto.randomFillSync(buf, 0, n);
      assert.is(fs.writeSync(fd, buf, 0, n, pos), n);
    }
  } finally {
    fs.closeSync(fd);
  }
}

const sha256 = (buf: Buffer) => crypto.createHash('sha256').update(buf).digest('hex');

/** A loop device over an image of exactly `bytes` bytes (the loop rounds it down to 512). */
function loopOfBytes(bytes: number): string {
  const img = path.join(fx.dir, `odd${Math.random().toString(16).slice(2)}.img`);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, bytes);
  const dev = sh('losetup', ['-f', '--show', '--direct-io=on', img]).trim();
  fx.defer(`losetup -d ${dev}`, () => sh('losetup', ['-d', dev]));
  sh('blockdev', ['--setrw', dev]);
  return dev;
}

/** The extents rounded out to 4 KiB blocks and clipped to the limit, as the copy must touch them. */
function roundedOut(extents: Array<[number, number]>, limit: number, align = 8): ExtentSet {
  const set = new ExtentSet();
  for (const [s, e] of extents) set.add(Math.floor(s / align) * align, Math.min(Math.ceil(e / align) * align, limit));
  return set;
}

/** Sectors of `buf` that are not all zeros, as extents. */
function nonZeroSectors(buf: Buffer): ExtentSet {
  const set = new ExtentSet();
  const zero = Buffer.alloc(SECTOR);
  for (let s = 0; s < buf.length / SECTOR; s++) {
    if (!buf.subarray(s * SECTOR, (s + 1) * SECTOR).equals(zero)) set.add(s, s + 1);
  }
  return set;
}

function sameSectors(a: Buffer, b: Buffer, extents: ExtentSet): boolean {
  let same = true;
  extents.forEach((s, e) => {
    if (!a.subarray(s * SECTOR, e * SECTOR).equals(b.subarray(s * SECTOR, e * SECTOR))) same = false;
  });
  return same;
}

function scatteredExtents(limit: number): Array<[number, number]> {
  const extents: Array<[number, number]> = [[3, 5], [1001, 1013], [4096, 4104], [20000, 20001], [30007, 30100]];
  // Random 4 KiB blocks kept clear of the fixed extents: one that touched a fixed,
  // unaligned extent only after rounding would be a separate I/O, not counted as such below.
  for (let i = 0; i < 40; i++) {
    const block = 4096 + Math.floor(Math.random() * (limit / 8 - 4096 - 200));
    extents.push([block * 8, block * 8 + 8]);
  }
  extents.push([limit - 3, limit - 1], [limit - 1, limit], [limit - 600, limit - 590]);
  return extents;
}


/** A random-filled source and an empty destination of the same size, opened for O_DIRECT. */
function filledPair(mib: number) {
  const src = loop(mib);
  const dst = loop(mib);
  fillRandom(src);
  const srcFd = open(src, false);
  const dstFd = open(dst, true);
  return { src, dst, srcFd, dstFd, limit: sizeSectors(srcFd) };
}

test('a full copy makes the destination identical', async () => {
  const { src, dst, srcFd, dstFd, limit } = filledPair(64);
  const seen: CopyProgress[] = [];
  const r = await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[0, limit]]), { limitSectors: limit, onProgress: (p) => seen.push(p) });
  dev(dstFd).flushSync('the copy', 'not durable');
  assert.is(r.bytesRead, limit * SECTOR);
  assert.is(r.bytesWritten, limit * SECTOR);
  assert.is(r.ios, 2 * (64 / 2)); // 2 MiB chunks by default
  assert.is(sha256(readAll(dst)), sha256(readAll(src)));
  sh('cmp', [src, dst]);
  // Progress climbs to exactly the total.
  assert.equal(seen[0], { doneSectors: 0, totalSectors: limit });
  assert.equal(seen[seen.length - 1], { doneSectors: limit, totalSectors: limit });
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i].doneSectors >= seen[i - 1].doneSectors);
});

test('scattered, unaligned extents: exactly their 4 KiB blocks change', async () => {
  const { src, dst, srcFd, dstFd, limit } = filledPair(32);
  const extents = scatteredExtents(limit);
  const set = ExtentSet.from(extents);
  const seen: CopyProgress[] = [];
  const r = await copyExtents(dev(srcFd), dev(dstFd), set, {
    limitSectors: limit, mergeGapSectors: 0, onProgress: (p) => seen.push(p),
  });
  const expected = roundedOut(extents, limit);
  assert.is(r.bytesWritten, expected.totalSectors * SECTOR);
  assert.is(r.ios, 2 * expected.count);
  const after = readAll(dst);
  assert.equal(nonZeroSectors(after).toArray(), expected.toArray());
  assert.ok(sameSectors(after, readAll(src), expected));
  assert.equal(seen[seen.length - 1], { doneSectors: set.totalSectors, totalSectors: set.totalSectors });
});

test('merging nearby extents copies the gaps too, never past the merged runs', async () => {
  const { src, dst, srcFd, dstFd, limit } = filledPair(32);
  const extents = scatteredExtents(limit);
  // Small chunks and odd parallelism so runs are cut into several chunks.
  const r = await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from(extents), {
    limitSectors: limit, mergeGapSectors: 128, chunkBytes: 12 * 1024, inFlight: 3,
  });
  // The runs, computed independently: rounded blocks joined when the gap between them is < 128.
  const runs: Array<[number, number]> = [];
  for (const [s, e] of roundedOut(extents, limit)) {
    const last = runs[runs.length - 1];
    if (last && s - last[1] < 128) last[1] = e;
    else runs.push([s, e]);
  }
  const expected = ExtentSet.from(runs);
  assert.is(r.bytesWritten, expected.totalSectors * SECTOR);
  assert.ok(r.ios > 2 * expected.count, 'runs longer than a chunk are cut');
  const after = readAll(dst);
  assert.equal(nonZeroSectors(after).toArray(), expected.toArray());
  assert.ok(sameSectors(after, readAll(src), expected));
});

test('compareExtents finds and repairs exactly the differing 4 KiB blocks', async () => {
  const { src, dst, srcFd, dstFd, limit } = filledPair(32);
  await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[0, limit]]), { limitSectors: limit });
  // Damage: whole blocks, one sector inside a block, two adjacent blocks, and the last block.
  const damaged: Array<[number, number]> = [ddDirect(dst, 800, 8), ddDirect(dst, 7000 * 8 + 5, 1), ddDirect(dst, 20000, 16),
    ddDirect(dst, limit - 8, 8)];
  const blocks = roundedOut(damaged, limit);
  const all = ExtentSet.from([[0, limit]]);
  const before = sha256(readAll(dst));

  const look = await compareExtents(dev(srcFd), dev(dstFd), all, { limitSectors: limit, write: false });
  assert.equal(look.differing.toArray(), blocks.toArray());
  assert.is(look.bytesWritten, 0);
  assert.is(look.comparedSectors, limit);
  assert.is(look.bytesRead, 2 * limit * SECTOR);
  assert.is(sha256(readAll(dst)), before, 'write:false wrote nothing');

  const fix = await compareExtents(dev(srcFd), dev(dstFd), all, { limitSectors: limit, write: true });
  dev(dstFd).flushSync('the copy', 'not durable');
  assert.equal(fix.differing.toArray(), blocks.toArray());
  assert.is(fix.bytesWritten, blocks.totalSectors * SECTOR);
  assert.is(sha256(readAll(dst)), sha256(readAll(src)));

  const again = await compareExtents(dev(srcFd), dev(dstFd), all, { limitSectors: limit, write: true });
  assert.ok(again.differing.isEmpty);
  assert.is(again.bytesWritten, 0);
});

test('compareExtents over a few unaligned extents compares only their blocks', async () => {
  const { src, dst, srcFd, dstFd, limit } = filledPair(32);
  // dst is zeros: every compared block differs.
  const extents: Array<[number, number]> = [[3, 5], [5000, 5001], [limit - 2, limit]];
  const r = await compareExtents(dev(srcFd), dev(dstFd), ExtentSet.from(extents), { limitSectors: limit, write: true, mergeGapSectors: 0 });
  const blocks = roundedOut(extents, limit);
  assert.equal(r.differing.toArray(), blocks.toArray());
  assert.is(r.comparedSectors, blocks.totalSectors);
  assert.equal(nonZeroSectors(readAll(dst)).toArray(), blocks.toArray());
});

test('a device whose size is not a multiple of 4 KiB copies its last sectors', async () => {
  const bytes = 16 * 1024 * 1024 + 1536;
  const src = loopOfBytes(bytes);
  const dst = loopOfBytes(bytes);
  fillRandom(src);
  const srcFd = open(src, false);
  const dstFd = open(dst, true);
  const limit = sizeSectors(srcFd);
  assert.is(limit * SECTOR, bytes);
  assert.is(native().blkSszGet(srcFd), 512);
  // Only the tail: the last 3 sectors form a partial 4 KiB block.
  const tail = await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[limit - 1, limit]]), { limitSectors: limit });
  assert.is(tail.bytesWritten, 3 * SECTOR);
  const afterTail = readAll(dst);
  assert.equal(nonZeroSectors(afterTail).toArray(), [[limit - 3, limit]]);
  // Then everything, and a compare that agrees.
  const r = await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[0, limit]]), { limitSectors: limit });
  assert.is(r.bytesWritten, bytes);
  assert.is(sha256(readAll(dst)), sha256(readAll(src)));
  ddDirect(dst, limit - 2, 1);
  const c = await compareExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[0, limit]]), { limitSectors: limit, write: true });
  assert.equal(c.differing.toArray(), [[limit - 3, limit]]);
  assert.is(c.bytesWritten, 3 * SECTOR);
  assert.is(sha256(readAll(dst)), sha256(readAll(src)));
});

test('limitSectors is never crossed, even by rounding', async () => {
  const src = loop(32);
  const dst = loop(32);
  fillRandom(src);
  const srcFd = open(src, false);
  const dstFd = open(dst, true);
  const limit = sizeSectors(srcFd) - 8 * 100 - 5; // as if the drive had a reserved tail
  const r = await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[limit - 1, limit + 50], [limit + 100, limit + 200]]), { limitSectors: limit });
  assert.equal(nonZeroSectors(readAll(dst)).toArray(), [[Math.floor((limit - 1) / 8) * 8, limit]]);
  assert.is(r.bytesWritten, (limit - Math.floor((limit - 1) / 8) * 8) * SECTOR);
});

test('batched I/O: 3000 scattered 4 KiB writes and reads land where fs reads them; reading past the end is an ESHORT naming the byte', async () => {
  const dev = loop(64);
  const fd = open(dev, true);
  const n = 3000;
  const blocks = (64 << 20) / 4096;
  const out = native().alignedBuffer(n * 4096, 4096);
  crypto.randomFillSync(out);
  const ops = Array.from({ length: n }, (_, i) => ({ bufferOffset: i * 4096, length: 4096, position: ((i * 7919) % blocks) * 4096 }));
  await batchIo('write', 'destination', fd, out, ops);
  const back = native().alignedBuffer(n * 4096, 4096);
  await batchIo('read', 'destination', fd, back, ops);
  assert.ok(back.equals(out), 'read back what was written');
  const one = native().alignedBuffer(4096, 4096);
  for (const i of [0, 1234, n - 1]) {
    fs.readSync(fd, one, 0, 4096, ops[i].position);
    assert.ok(one.equals(out.subarray(i * 4096, (i + 1) * 4096)), `block ${i} through fs`);
  }
  const end = 64 << 20;
  try {
    await batchIo('read', 'source', fd, back, [{ bufferOffset: 0, length: 4096, position: 0 }, { bufferOffset: 4096, length: 8192, position: end - 4096 }]);
    assert.unreachable('read past the end');
  } catch (err) {
    assert.instance(err, DpsrError);
    assert.is((err as DpsrError).code, 'ESHORT');
    assert.match((err as Error).message, new RegExp(`reading the source /dev/loop\\d+ at byte ${end}: the device ends there`));
  }
});

test('an abort stops the copy early with an AbortError', async () => {
  const src = loop(64);
  const dst = loop(64);
  const srcFd = open(src, false);
  const dstFd = open(dst, true);
  const limit = sizeSectors(srcFd);
  const ac = new AbortController();
  let last = 0;
  try {
    await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[0, limit]]), {
      limitSectors: limit, chunkBytes: 256 * 1024, signal: ac.signal,
      onProgress: (p) => { last = p.doneSectors; if (p.doneSectors > 0) ac.abort(); },
    });
    assert.unreachable('the copy should have been aborted');
  } catch (err) {
    assert.instance(err, AbortError);
    assert.is((err as Error).name, 'AbortError');
    assert.is((err as AbortError).code, 'ABORT_ERR');
  }
  assert.ok(last > 0 && last <= 2 * 4 * 512, `stopped after the I/Os in flight: two batches of 4 chunks (${last} sectors)`);

  // Already aborted: nothing is touched.
  let ios = -1;
  try {
    const r = await compareExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[0, limit]]), { limitSectors: limit, write: true, signal: AbortSignal.abort() });
    ios = r.ios;
    assert.unreachable('the compare should have been aborted');
  } catch (err) {
    assert.instance(err, AbortError);
  }
  assert.is(ios, -1);
});

test('errors: missing device, reading past the end, a read-only destination', async () => {
  try {
    openDirect('/dev/dpsr-no-such-device', false);
    assert.unreachable();
  } catch (err) {
    assert.instance(err, RefusedError);
    assert.is((err as RefusedError).code, 'ENODEV');
    assert.is((err as RefusedError).errno, 'ENOENT');
    assert.match((err as Error).message, /no such device/);
  }
  const src = loop(32);
  const dst = loop(32);
  const srcFd = open(src, false);
  const dstFd = open(dst, true);
  const size = sizeSectors(srcFd);
  try {
    await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[size - 8, size + 8]]), { limitSectors: size + 8 });
    assert.unreachable();
  } catch (err) {
    assert.instance(err, DpsrError);
    assert.is((err as DpsrError).code, 'ESHORT');
  }
  native().blkRoSet(dstFd, true);
  try {
    await copyExtents(dev(srcFd), dev(dstFd), ExtentSet.from([[0, 8]]), { limitSectors: size });
    assert.unreachable();
  } catch (err) {
    assert.instance(err, DpsrError);
    assert.is((err as DpsrError).code, 'EIO');
    assert.is((err as DpsrError).errno, 'EPERM');
    assert.match((err as Error).message, /writing the DPSR drive \/dev\/loop\d+ at byte 0/);
  } finally {
    native().blkRoSet(dstFd, false);
  }
});

test('randomized plans (files, no O_DIRECT): every chunk lands exactly where the model says', async () => {
  const limit = 8192 - 3; // 4 MiB less 3 sectors: the last block is partial
  const srcFile = path.join(fx.dir, 'model-src');
  fs.writeFileSync(srcFile, crypto.randomBytes(limit * SECTOR));
  const srcFd = fs.openSync(srcFile, 'r');
  fx.defer('close model-src', () => fs.closeSync(srcFd));
  const src = fs.readFileSync(srcFile);
  for (let round = 0; round < 60; round++) {
    const align = [1, 2, 8, 16][round % 4];
    const gap = [0, 1, 7, 128][Math.floor(round / 4) % 4];
    const chunkBytes = [512, 4096, 12 * 1024, 1 << 20][Math.floor(round / 16) % 4];
    const extents: Array<[number, number]> = [];
    for (let i = 0, n = 1 + Math.floor(Math.random() * 60); i < n; i++) {
      const start = Math.floor(Math.random() * (limit + 50)); // some past the limit
      extents.push([start, start + 1 + Math.floor(Math.random() * (Math.random() < 0.2 ? 3000 : 20))]);
    }
    const set = ExtentSet.from(extents);
    // The model: blocks rounded out and clipped, joined across gaps shorter than `gap`.
    const runs: Array<[number, number]> = [];
    for (const [s0, e0] of set) {
      if (s0 >= limit) break;
      const s1 = Math.floor(s0 / align) * align, e1 = Math.min(Math.ceil(Math.min(e0, limit) / align) * align, limit);
      const last = runs[runs.length - 1];
      if (last && s1 - last[1] < gap) last[1] = Math.max(last[1], e1);
      else runs.push([s1, e1]);
    }
    const expected = ExtentSet.from(runs);
    const dstFile = path.join(fx.dir, 'model-dst');
    fs.writeFileSync(dstFile, Buffer.alloc(limit * SECTOR));
    const dstFd = fs.openSync(dstFile, 'r+');
    let last: CopyProgress | undefined;
    const opts = { limitSectors: limit, alignSectors: align, mergeGapSectors: gap, chunkBytes, inFlight: 1 + (round % 5), onProgress: (p: CopyProgress) => { last = p; } };
    try {
      const r = await copyExtents(dev(srcFd), dev(dstFd), set, opts);
      const what = JSON.stringify({ align, gap, chunkBytes, extents: set.toArray() });
      assert.is(r.bytesWritten, expected.totalSectors * SECTOR, what);
      const dst = fs.readFileSync(dstFile);
      assert.equal(nonZeroSectors(dst).toArray(), expected.toArray(), what);
      assert.ok(sameSectors(dst, src, expected), what);
      const clipped = set.intersect(0, limit).totalSectors;
      assert.equal(last, { doneSectors: clipped, totalSectors: clipped }, what);
      // Compare agrees; then one damaged sector inside the copied runs is found as its block, and repaired.
      const c = await compareExtents(dev(srcFd), dev(dstFd), set, { ...opts, write: false });
      assert.ok(c.differing.isEmpty, what);
      assert.is(c.comparedSectors, expected.totalSectors, what);
      const [rs, re] = runs[Math.floor(Math.random() * runs.length)] ?? [0, 0];
      if (re > rs) {
        const bad = rs + Math.floor(Math.random() * (re - rs));
        fs.writeSync(dstFd, Buffer.alloc(SECTOR, 0xa5), 0, SECTOR, bad * SECTOR);
        const block: [number, number] = [Math.floor(bad / align) * align, Math.min(Math.floor(bad / align) * align + align, limit)];
        const fix = await compareExtents(dev(srcFd), dev(dstFd), set, { ...opts, write: true });
        assert.equal(fix.differing.toArray(), [block], what);
        assert.is(fix.bytesWritten, (block[1] - block[0]) * SECTOR, what);
        assert.ok(fs.readFileSync(dstFile).subarray(0, limit * SECTOR).equals(Buffer.concat([dst.subarray(0, bad * SECTOR), src.subarray(bad * SECTOR, (bad + 1) * SECTOR), dst.subarray((bad + 1) * SECTOR)])), what);
      }
    } finally {
      fs.closeSync(dstFd);
    }
  }
});

test('the progress bar draws only on a terminal, at most 10 times a second', () => {
  const fake = (isTTY: boolean) => {
    const out: string[] = [];
    return { out, stream: { isTTY, columns: 100, write: (s: string) => { out.push(s); return true; } } as unknown as NodeJS.WriteStream };
  };
  let t = 0;
  const nowMs = () => t;
  const pipe = fake(false);
  const quiet = progressBar('copy', 100 << 20, { stream: pipe.stream, nowMs });
  for (let i = 0; i <= 100; i++) { t += 50; quiet.update(i << 20); }
  quiet.done();
  assert.equal(pipe.out, []);
  const piped = progressBar('copy', 100 << 20, { stream: pipe.stream, nowMs });
  piped.done('copied 100 MiB');
  assert.equal(pipe.out, ['copied 100 MiB\n']);

  t = 0;
  const term = fake(true);
  const bar = progressBar('sda: sync', 100 << 20, { stream: term.stream, nowMs });
  for (let i = 1; i <= 100; i++) { t += 20; bar.update(i << 20); } // 2 s at 50 MiB/s, 50 updates a second
  assert.ok(term.out.length >= 19 && term.out.length <= 21, `${term.out.length} redraws in 2 s`);
  const last = term.out[term.out.length - 1];
  assert.ok(last.startsWith('\r') && last.length <= 100, JSON.stringify(last));
  assert.match(last, /sda: sync \[#+-*\]\s+\d+\.\d%\s+50\.0 MiB\/s\s+ETA 00:00/);
  bar.done('done');
  assert.is(term.out[term.out.length - 1], 'done\n');
});

test.run();
