// Restore points seen from a test: a point's image hashed through the same
// read-only device restore --at and rollback --at read.
import { Store } from '../../src/state/store.js';
import { openPointImage } from '../../src/restore/point-image.js';
import { sha256Of } from './fixture.js';
import { type HistoryIndex, historyRegionOf, readIndex } from '../../src/drive/history-region.js';
import { openLocalDevice } from '../../src/io/local-device.js';
import type { PairRecord } from '../../src/state/records.js';

/** sha256 of restore point `at` of pair `name` (the state directory of `env`). */
export async function pointHash(env: NodeJS.ProcessEnv, name: string, at: string): Promise<string> {
  const pair = await pairRecord(env, name);
  const image = await openPointImage(pair, at);
  try {
    return sha256Of(image.device, pair.dataSectors * 512);
  } finally {
    image.close();
  }
}

/** The record of pair `name` in the state directory of `env`. */
export async function pairRecord(env: NodeJS.ProcessEnv, name: string): Promise<PairRecord> {
  const store = Store.open(env.DPSR_STATE_DIR!);
  const pair = store.pair(name)!;
  await store.close();
  return pair;
}

/** The history index of pair `name` as on its DPSR drive (what `history` lists, with each record's place and format). */
export async function historyIndexOf(env: NodeJS.ProcessEnv, name: string): Promise<HistoryIndex> {
  const pair = await pairRecord(env, name);
  const io = openLocalDevice(pair.drive.path, false);
  try {
    return readIndex(historyRegionOf(io, pair, pair.id)!);
  } finally {
    io.close();
  }
}
