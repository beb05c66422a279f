// The tracker's owner dies between two steps of a cycle: what the kernel
// still holds must tell the next owner everything the dead one had not saved.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { type RangeState, Tracker } from '../src/kernel/tracker.js';
import { Fixture, ddDirect, scatteredDirectWrites, sweepStaleTestPins } from './helpers/fixture.js';

let fx: Fixture;
test.before.each(() => {
  sweepStaleTestPins();
  fx = new Fixture();
});
test.after.each(() => fx.cleanup());

type Saved = Omit<RangeState, 'slot'>;

/** A store that keeps a copy of the last saved state, as the state database would. */
function memoryStore() {
  const saved = new Map<string, Saved>();
  return {
    saved,
    persist: async (ranges: readonly RangeState[]) => {
      for (const { slot: _slot, ...r } of ranges) {
        saved.set(r.id, { ...r, dirty: r.dirty.clone(), suspect: r.suspect.clone(), discarded: r.discarded.clone(),
          unreconciled: r.unreconciled.clone(), baseline: { ...r.baseline }, gaps: [...r.gaps] });
      }
    },
  };
}

test('an owner killed after the flip, before the save, leaves the drop count: the next owner finds the dropped writes suspect', async () => {
  const dev = fx.loop(256);
  const kt = fx.tracking();
  const lock = fx.lockPath();
  const store = memoryStore();
  const first = Tracker.start(kt, { ownerLockPath: lock, ringBytes: 4096, store });
  fx.defer('abandon first', () => first.abandon());
  await first.track(resolveBlockDevice(dev), 'p');
  await first.cycle();
  const written = scatteredDirectWrites(dev, 2000);
  assert.ok(first.flip().drops > 0, 'the ring overflowed');
  first.abandon(); // killed: nothing of the flip was saved

  const next = Tracker.start(kt, { ownerLockPath: lock, ringBytes: 4096, store });
  fx.defer('abandon next', () => next.abandon());
  const range = await next.track(resolveBlockDevice(dev), 'p', store.saved.get('p'));
  await next.cycle();
  await next.cycle(); // the dead owner's epoch comes round again
  await next.reconcile();
  const missing = written.clone();
  missing.subtractSet(range.dirty);
  missing.subtractSet(range.suspect);
  assert.ok(missing.isEmpty, `dropped writes neither dirty nor suspect: ${JSON.stringify(missing.toArray().slice(0, 5))}`);
  assert.ok(range.gaps.some((g) => g.cause === 'ring-drops'), 'reported as a gap');
});

test('a shortfall that no record, bitmap or issue log left can place makes the whole range suspect, never an empty set', async () => {
  const dev = fx.loop(64);
  const kt = fx.tracking({ skipEveryN: 5, withoutIssueLog: true }); // the programs skip every 5th completion; no log places it
  const tracker = Tracker.start(kt, { ownerLockPath: fx.lockPath(), ringBytes: 1 << 20 });
  fx.defer('abandon', () => tracker.abandon());
  const range = await tracker.track(resolveBlockDevice(dev), 'p');
  await tracker.cycle();
  for (let i = 0; i < 20; i++) ddDirect(dev, i * 2048, 8);
  await tracker.cycle();
  range.unreconciled.clear(); // the bits that would place the missed writes are gone (a detached version's, say)
  const verdict = (await tracker.reconcile()).get(range);
  assert.is(verdict?.kind, 'shortfall');
  assert.equal(range.suspect.toArray(), [[0, range.endSector - range.startSector]], 'the whole range is suspect');
});

test.run();
