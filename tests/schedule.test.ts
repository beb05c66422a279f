// The daemon's decisions (src/daemon/schedule.ts), as pure logic: a policy, a pair's facts and a clock.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseCalendar } from '../src/daemon/calendar.js';
import { type PairFacts, type Policy, backoffMs, decide, journalPressure } from '../src/daemon/schedule.js';

const MIB = 1 << 20;
const continuous: Policy = { policy: 'continuous', rpoMs: 30_000, minIntervalMs: 10_000 };
const hourly: Policy = { policy: 'scheduled', everyMs: 3_600_000 };

/** A pair with changes, a journal of 64 MiB, little dirty data and no failures, last synced at `lastMs`. */
function facts(lastMs: number, more: Partial<PairFacts> = {}): PairFacts {
  return { changed: true, pendingBytes: MIB, journalBytes: 64 * MIB, lastSyncStartMs: lastMs, imageTimeMs: lastMs, failuresInARow: 0, ...more };
}

test('a manual pair is never due, not with changes, journal pressure or failures', () => {
  const manual: Policy = { policy: 'manual' };
  for (const f of [facts(0), facts(0, { pendingBytes: 64 * MIB }), facts(0, { failuresInARow: 3 })]) {
    assert.equal(decide(manual, f, 1e12), { syncNow: false, nextMs: null });
  }
});

test('a pair with nothing changed is not synced, whatever its policy says', () => {
  for (const p of [continuous, hourly]) assert.not.ok(decide(p, facts(0, { changed: false }), 1e12).syncNow);
});

test('a continuous pair syncs when its image reaches half the RPO, never sooner than min_interval after the last sync', () => {
  const image = 100_000;
  // Half the RPO is 15 s after the image: not before it.
  assert.equal(decide(continuous, facts(image), image + 14_999), { syncNow: false, nextMs: image + 15_000 });
  assert.equal(decide(continuous, facts(image), image + 15_000), { syncNow: true, nextMs: image + 15_000 });
  // An old image, but the last attempt 5 s ago: min_interval (10 s) first.
  const f = facts(image + 20_000, { imageTimeMs: image });
  assert.equal(decide(continuous, f, image + 25_000), { syncNow: false, nextMs: image + 30_000 });
  assert.ok(decide(continuous, f, image + 30_000).syncNow);
});

test('a scheduled pair with every syncs once per period, at the period boundary after its last sync', () => {
  assert.equal(decide(hourly, facts(3_500_000), 3_599_999), { syncNow: false, nextMs: 3_600_000 });
  assert.ok(decide(hourly, facts(3_500_000), 3_600_000).syncNow);
  assert.equal(decide(hourly, facts(3_600_000), 3_700_000), { syncNow: false, nextMs: 7_200_000 });
});

test('a scheduled pair with a calendar syncs at the first event after its last sync', () => {
  const at = (h: number, m: number) => new Date(2026, 10, 24, h, m).getTime(); // local time, as calendars are
  const every10: Policy = { policy: 'scheduled', calendar: parseCalendar('*:0/10') };
  assert.equal(decide(every10, facts(at(10, 3)), at(10, 9)), { syncNow: false, nextMs: at(10, 10) });
  assert.ok(decide(every10, facts(at(10, 3)), at(10, 10)).syncNow);
  const nightly: Policy = { policy: 'scheduled', calendar: parseCalendar('Mon..Sat 03:00') }; // the 24th is a Tuesday
  assert.is(decide(nightly, facts(at(3, 0)), at(12, 0)).nextMs, new Date(2026, 10, 25, 3, 0).getTime());
});

test('journal pressure: a quarter of the journal dirty makes a continuous or scheduled pair sync at once', () => {
  assert.not.ok(journalPressure(64 * MIB, 16 * MIB - 1));
  assert.ok(journalPressure(64 * MIB, 16 * MIB));
  assert.not.ok(journalPressure(0, 1 << 40), 'no journal: no pressure');
  const last = 3_600_000;
  for (const p of [continuous, hourly]) {
    assert.not.ok(decide(p, facts(last, { pendingBytes: 15 * MIB }), last + 1000).syncNow, `${p.policy}: below a quarter`);
    assert.equal(decide(p, facts(last, { pendingBytes: 16 * MIB }), last + 1000), { syncNow: true, nextMs: last + 1000 }, p.policy);
  }
  assert.not.ok(decide(hourly, facts(last, { pendingBytes: 16 * MIB, changed: false }), last + 1000).syncNow, 'nothing changed');
});

test('the backoff after failed syncs starts at 2 s, doubles with each failure in a row and stops growing at 5 min', () => {
  assert.equal([0, 1, 2, 3, 4].map(backoffMs), [0, 2000, 4000, 8000, 16_000]);
  assert.is(backoffMs(8), 256_000);
  assert.is(backoffMs(9), 300_000);
  assert.is(backoffMs(1000), 300_000);
});

test('a pair whose syncs keep failing is retried after its backoff, not at every due tick, journal pressure or not', () => {
  const last = 3_500_000; // the failed attempt; the hourly period ends at 3_600_000
  const failing = facts(last, { failuresInARow: 7 }); // 128 s
  assert.equal(decide(hourly, failing, 3_600_000), { syncNow: false, nextMs: last + 128_000 });
  assert.ok(decide(hourly, failing, last + 128_000).syncNow);
  const pressed = facts(last, { failuresInARow: 2, pendingBytes: 64 * MIB });
  assert.equal(decide(continuous, pressed, last + 3999), { syncNow: false, nextMs: last + 4000 });
  assert.ok(decide(continuous, pressed, last + 4000).syncNow);
});

test.run();
