// Opening an older point on a real pair (loop devices, the CLI): the
// records of the later points are read up to their data (headers, extent
// tables, chunk hashes), not whole, so opening ten points back costs about
// what opening one does; the data is checked as it is read, 64 KiB at a
// time, so a damaged chunk fails the reads that touch it (EIO) and nothing
// unchecked is ever served, while a point that does not need it reads exactly.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { ddDirect, eachTestFreshCli, Fixture, randomFill, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { openPointImage } from '../src/restore/point-image.js';
import { historyRegionOf, readIndex, readUndoLayout } from '../src/drive/history-region.js';
import { native } from '../src/base/native.js';
import { openLocalDevice } from '../src/io/local-device.js';
import { Store } from '../src/state/store.js';
import type { PairRecord } from '../src/state/records.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const MiB = 1 << 20;
const ok = (...args: string[]) => runDpsrOk(env, args);

/** Bytes the kernel counted read from a device. */
const readBytes = (dev: string) => Number(fs.readFileSync(`/sys/class/block/${path.basename(dev)}/stat`, 'utf8').trim().split(/\s+/)[2]) * 512;

async function pairRecord(): Promise<PairRecord> {
  const store = Store.open(env.DPSR_STATE_DIR!);
  const pair = store.pair('p')!;
  await store.close();
  return pair;
}

test('opening a point four syncs back reads the later records\' headers, tables and chunk hashes, not their 32 MiB of data; a damaged chunk fails the reads that touch it, other points read exactly', async () => {
  const source = fx.loop(48);
  const drive = fx.loop(48 + 64 + 64);
  randomFill(source, 48);
  ok('pair', source, drive, '--name', 'p', '--history', '64M');
  const images = [sha256Of(drive, 48 * MiB)];
  for (let i = 0; i < 4; i++) {
    ddDirect(source, i * 16384, 16384); // 8 MiB each: point i's record holds them
    ok('sync', 'p', '--quiet-period', '0.2');
    images.push(sha256Of(drive, 48 * MiB));
  }
  const pair = await pairRecord();
  const before = readBytes(drive);
  const image = await openPointImage(pair, '0');
  const opening = readBytes(drive) - before;
  try {
    console.log(`  opening point 0 (4 records, 32 MiB of data) read ${(opening / 1024).toFixed(0)} KiB of the DPSR drive`);
    assert.ok(opening < 2 * MiB, `opening read ${opening} bytes: the records' data was read whole`);
    assert.is(sha256Of(image.device, 48 * MiB), images[0], 'point 0 is not the image it was');
  } finally {
    image.close();
  }
  // One 4 KiB block of chunk 3 of point 1's record changed behind dpsr's back.
  const io = openLocalDevice(drive, true);
  try {
    const region = historyRegionOf(io, pair, pair.id)!;
    const record = readIndex(region).points.find((p) => p.generation === 1)!;
    const { dataStartBytes } = readUndoLayout(region, record);
    const block = native().alignedBuffer(4096, 4096).fill(0x5a);
    io.setReadOnly(false); // dpsr leaves its drive read-only
    io.writeSync(block, 0, 4096, dataStartBytes + 3 * 65536);
  } finally {
    io.setReadOnly(true);
    io.close();
  }
  const damaged = await openPointImage(pair, '1'); // opens: the data is not read yet
  try {
    assert.throws(() => sha256Of(damaged.device, 48 * MiB), /EIO|i\/o error/i, 'a damaged chunk was served');
  } finally {
    damaged.close();
  }
  const sound = await openPointImage(pair, '2'); // needs points 2 and 3's records only
  try {
    assert.is(sha256Of(sound.device, 48 * MiB), images[2], 'point 2 is not the image it was');
  } finally {
    sound.close();
  }
});

test.run();
