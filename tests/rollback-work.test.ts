// trackedWork (src/restore/rollback.ts): what a rollback copies back and what it compares, from the
// pair's record and the tracker's sets alone.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ExtentSet } from '../src/base/extents.js';
import { trackedWork } from '../src/restore/rollback.js';
import type { PendingGeneration } from '../src/state/records.js';
import type { Gap } from '../src/kernel/tracker.js';

const DATA_SECTORS = 100_000;
type Extents = Array<[number, number]>;

function pair(pending: PendingGeneration | null = null, lastSyncMs = 1000) {
  const lastSync = { generation: 3, atMs: lastSyncMs, durationMs: 1, copiedBytes: 0, comparedBytes: 0, repairedBytes: 0, image: 'point-in-time' as const };
  return { dataSectors: DATA_SECTORS, pending, lastSync };
}

function range(sets: { dirty?: Extents; discarded?: Extents; suspect?: Extents; unreconciled?: Extents; gaps?: Gap[] }) {
  return {
    dirty: ExtentSet.from(sets.dirty ?? []), discarded: ExtentSet.from(sets.discarded ?? []),
    suspect: ExtentSet.from(sets.suspect ?? []), unreconciled: ExtentSet.from(sets.unreconciled ?? []), gaps: sets.gaps ?? [],
  };
}

test('a rollback copies back what was written or discarded since the image and compares where writes may have gone unseen', () => {
  const w = trackedWork(pair(), range({ dirty: [[0, 8], [500, 600]], discarded: [[2000, 4000]], suspect: [[550, 700]], unreconciled: [[9000, 9100]] }), []);
  assert.is(w.mode, 'tracked');
  assert.is(w.why, null);
  assert.equal(w.copy.toArray(), [[0, 8], [500, 600], [2000, 4000]]);
  assert.equal(w.compare.toArray(), [[600, 700], [9000, 9100]], 'what is copied anyway is not compared too');
});

test('what an uncommitted sync had cut from the tracker is part of the rollback: its copy, its discards, its compare', () => {
  const pending: PendingGeneration = {
    generation: 4, cutMs: 2000, copy: ExtentSet.from([[100, 200]]).toBuffer(),
    compare: ExtentSet.from([[300, 400]]).toBuffer(), discard: ExtentSet.from([[800, 900]]).toBuffer(),
  };
  const w = trackedWork(pair(pending), range({ dirty: [[150, 250]] }), []);
  assert.equal(w.copy.toArray(), [[100, 250], [800, 900]]);
  assert.equal(w.compare.toArray(), [[300, 400]]);
});

test('extents past the image\'s data area are left out', () => {
  const w = trackedWork(pair(), range({ dirty: [[DATA_SECTORS - 8, DATA_SECTORS + 8]], suspect: [[DATA_SECTORS + 100, DATA_SECTORS + 200]] }), []);
  assert.equal(w.copy.toArray(), [[DATA_SECTORS - 8, DATA_SECTORS]]);
  assert.ok(w.compare.isEmpty);
});

test('a changed DPSR drive makes the history unknown: the whole source is compared, and the change is named', () => {
  const w = trackedWork(pair(), range({ dirty: [[0, 8]] }), ['serial AB12 is now CD34']);
  assert.is(w.mode, 'compare');
  assert.ok(w.copy.isEmpty);
  assert.equal(w.compare.toArray(), [[0, DATA_SECTORS]]);
  assert.match(w.why ?? '', /the DPSR drive changed \(serial AB12 is now CD34\)\): comparing the whole source/);
});

test('a whole source to compare is a compare of everything, explained by the gaps since the image only', () => {
  const gaps: Gap[] = [
    { cause: 'identity-changed', atMs: 500, detail: 'before the image' },
    { cause: 'unknown-history', atMs: 5000, detail: 'the machine booted' },
  ];
  const w = trackedWork(pair(), range({ suspect: [[0, DATA_SECTORS]], gaps }), []);
  assert.is(w.mode, 'compare');
  assert.match(w.why ?? '', /\(unknown-history: the machine booted\)/);
  assert.not.match(w.why ?? '', /before the image/);
  const unexplained = trackedWork(pair(), range({ unreconciled: [[0, DATA_SECTORS]] }), []);
  assert.match(unexplained.why ?? '', /the whole source is suspect/);
});

test.run();
