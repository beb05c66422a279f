// The tracker's state saved tick by tick as deltas over a snapshot: whatever
// the sets went through, the state read back (by a new Store, as after a
// crash) is exactly the state last persisted; deltas are written where they
// can be, snapshots where they must be.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ExtentSet } from '../src/base/extents.js';
import { Store } from '../src/state/store.js';
import type { RangeState } from '../src/kernel/tracker.js';
import { mulberry32 } from './helpers/seeded-random.js';

const SEED = process.env.STORE_SEED ? Number(process.env.STORE_SEED) : (Math.random() * 2 ** 32) >>> 0;
const SETS = ['dirty', 'suspect', 'discarded', 'unreconciled'] as const;
const SPACE = 1 << 16;

let dir: string;
test.before.each(() => { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-store-')); });
test.after.each(() => fs.rmSync(dir, { recursive: true, force: true }));

function freshRange(): RangeState {
  return {
    id: 'p', slot: 0, device: '/dev/loop9', disk: 'loop9', diskDev: 7 << 20 | 9, startSector: 0, endSector: SPACE,
    dirty: new ExtentSet(), suspect: new ExtentSet(), discarded: new ExtentSet(), unreconciled: new ExtentSet(),
    receivedSectors: 0, baseline: { offsetSectors: 0, exact: false }, gaps: [],
  };
}

/** What a new process would start from: range() reads the database alone. */
const readBack = (store: Store) => store.range('p')!;

function assertSame(saved: Omit<RangeState, 'slot'>, r: RangeState, what: string): void {
  for (const k of SETS) assert.equal(saved[k].toArray(), r[k].toArray(), `${what}: ${k}`);
  assert.is(saved.receivedSectors, r.receivedSectors, `${what}: receivedSectors`);
}

/** Every way the tracker and the sync engine change a range's sets, at random. */
function mutate(r: RangeState, rand: () => number): string {
  const k = SETS[Math.floor(rand() * SETS.length)];
  const at = () => Math.floor(rand() * SPACE);
  const span = (): [number, number] => { const s = at(); return [s, Math.min(SPACE, s + 1 + Math.floor(rand() * (rand() < 0.1 ? 8192 : 64)))]; };
  const other = () => { const o = new ExtentSet(); for (let i = 0; i < 5; i++) o.add(...span()); return o; };
  const op = rand();
  if (op < 0.5) { const n = 1 + Math.floor(rand() * 50); for (let i = 0; i < n; i++) r[k].add(...span()); return `add ${k}`; }
  if (op < 0.7) { r[k].subtract(...span()); return `subtract ${k}`; }
  if (op < 0.8) { r[k].addSet(other()); return `addSet ${k}`; }
  if (op < 0.9) { r[k].subtractSet(other()); return `subtractSet ${k}`; }
  if (op < 0.95) { r[k].clear(); return `clear ${k}`; }
  r[k] = other(); // the sync engine replaces sets when it takes a cut
  return `replace ${k}`;
}

test(`ticks persisted as deltas read back exactly, through replaced sets and reopened stores (seed ${SEED}, STORE_SEED to replay)`, async () => {
  const rand = mulberry32(SEED);
  const r = freshRange();
  let store = Store.open(dir);
  let deltasSeen = 0;
  try {
    for (let tick = 1; tick <= 300; tick++) {
      const ops = Array.from({ length: 1 + Math.floor(rand() * 4) }, () => mutate(r, rand));
      r.receivedSectors += 8;
      if (rand() < 0.1) await store.putPairAndRange({ name: 'p' } as never, r); // a cut: snapshot with its pair
      else await store.persist([r]);
      deltasSeen = Math.max(deltasSeen, countDeltas(store));
      assertSame(readBack(store), r, `tick ${tick} after ${ops.join(', ')}`);
      if (rand() < 0.05) { // a new process: it starts from what was saved
        await store.close();
        store = Store.open(dir);
      }
    }
  } finally {
    await store.close();
  }
  assert.ok(deltasSeen > 3, `ticks were saved as deltas (${deltasSeen} at most at once)`);
  // Closed, the state is folded into one snapshot: what versions before deltas read.
  const reopened = Store.open(dir);
  try {
    assert.is(countDeltas(reopened), 0, 'no delta left at rest');
    assertSame(readBack(reopened), r, 'after close');
  } finally {
    await reopened.close();
  }
});

function countDeltas(store: Store): number {
  return (store as unknown as { deltas(name: string): unknown[] }).deltas('p').length;
}

test('a tick after a million scattered extents writes a delta the size of its change, not of the set', async () => {
  const r = freshRange();
  r.endSector = 2 ** 40;
  const rand = mulberry32(7);
  for (let i = 0; i < 1_000_000; i++) { const s = Math.floor(rand() * 2 ** 31) * 8; r.dirty.add(s, s + 8); }
  const store = Store.open(dir);
  try {
    await store.persist([r]); // the snapshot
    const snapshotBytes = fs.statSync(path.join(dir, 'state.mdb')).size;
    for (let i = 0; i < 1000; i++) { const s = Math.floor(rand() * 2 ** 31) * 8; r.dirty.add(s, s + 8); }
    await store.persist([r]);
    const delta = (store as unknown as { deltas(name: string): Array<{ value: { sets: { dirty: { windows: Buffer; inside?: Buffer } } } }> }).deltas('p');
    assert.is(delta.length, 1);
    assert.is(delta[0].value.sets.dirty.inside, undefined, 'a set that only grew holds its windows: they are saved once');
    const bytes = delta[0].value.sets.dirty.windows.length;
    assert.ok(bytes < 64 * 1024, `a delta of ${bytes} bytes for 1000 writes (the snapshot: ${snapshotBytes} bytes)`);
    assert.equal(readBack(store).dirty.count, r.dirty.count);
  } finally {
    await store.close();
  }
});

test.run();
