// The daemon's configuration and its policies, as pure logic.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseCalendar } from '../src/daemon/calendar.js';
import { ConfigError, parseConfig } from '../src/daemon/config.js';
import { due, nextSyncMs } from '../src/daemon/schedule.js';
import { parseDuration, parseSize } from '../src/base/units.js';

test('policies parse with defaults, durations in units', () => {
  const c = parseConfig('tick = "250ms"\n[pairs.sys]\npolicy = "scheduled"\nevery = "1h"\n[pairs.data]\npolicy = "continuous"\nrpo = "30s"\n', 'x.toml');
  assert.is(c.tickMs, 250);
  assert.equal(c.pairs.sys, { policy: 'scheduled', everyMs: 3_600_000 });
  assert.equal(c.pairs.data, { policy: 'continuous', rpoMs: 30_000, minIntervalMs: 10_000 });
  assert.equal(c.defaultPolicy, { policy: 'manual' });
});

test('errors name the file and the key', () => {
  const cases: Array<[string, RegExp]> = [
    ['[pairs.a]\npolicy = "often"\n', /x\.toml: pairs\.a\.policy/],
    ['[pairs.a]\npolicy = "continuous"\nrpo = "soon"\n', /pairs\.a\.rpo: "soon" is not a duration/],
    ['[pairs.a]\npolicy = "continuous"\nrpo = "5s"\nmin_interval = "10s"\n', /min_interval is longer than rpo/],
    ['[pairs.a]\npolicy = "manual"\nrpoo = "5s"\n', /pairs\.a\.rpoo: unknown key/],
    ['tick = [\n', /x\.toml/],
    ['speed = 3\n', /speed: unknown key/],
  ];
  for (const [text, why] of cases) {
    try {
      parseConfig(text, 'x.toml');
      assert.unreachable(`accepted: ${text}`);
    } catch (err) {
      assert.instance(err, ConfigError);
      assert.is((err as ConfigError).exitStatus, 2);
      assert.match((err as Error).message, why);
    }
  }
});

test('due: manual never, continuous keeps the RPO without syncing back to back, scheduled once per period', () => {
  const cont = { policy: 'continuous' as const, rpoMs: 30_000, minIntervalMs: 10_000 };
  assert.not.ok(due({ policy: 'manual' }, { changed: true, lastSyncStartMs: 0, imageTimeMs: 0 }, 1e9));
  assert.not.ok(due(cont, { changed: false, lastSyncStartMs: 0, imageTimeMs: 0 }, 1e9), 'nothing changed');
  assert.not.ok(due(cont, { changed: true, lastSyncStartMs: 95_000, imageTimeMs: 90_000 }, 100_000), 'min interval');
  assert.not.ok(due(cont, { changed: true, lastSyncStartMs: 80_000, imageTimeMs: 90_000 }, 100_000), 'image still young');
  assert.ok(due(cont, { changed: true, lastSyncStartMs: 80_000, imageTimeMs: 80_000 }, 100_000));
  const hourly = { policy: 'scheduled' as const, everyMs: 3_600_000 };
  assert.not.ok(due(hourly, { changed: true, lastSyncStartMs: 3_600_000, imageTimeMs: 0 }, 3_700_000));
  assert.ok(due(hourly, { changed: true, lastSyncStartMs: 3_500_000, imageTimeMs: 0 }, 3_700_000));
});

test('calendars: systemd OnCalendar forms, local time', () => {
  const at = (y: number, mo: number, d: number, h = 0, mi = 0, s = 0) => new Date(y, mo - 1, d, h, mi, s).getTime();
  const t0 = at(2026, 11, 24, 22, 7, 30); // a Tuesday
  const cases: Array<[string, number]> = [
    ['hourly', at(2026, 11, 24, 23)],
    ['daily', at(2026, 11, 25)],
    ['weekly', at(2026, 11, 30)],
    ['monthly', at(2026, 12, 1)],
    ['minutely', at(2026, 11, 24, 22, 8)],
    ['*:0/15', at(2026, 11, 24, 22, 15)],
    ['*-*-* *:00/20:00', at(2026, 11, 24, 22, 20)],
    ['Mon..Fri 02:00', at(2026, 11, 25, 2)],
    ['Sat,Sun 04:30:15', at(2026, 11, 28, 4, 30, 15)],
    ['Fri..Mon 01:00', at(2026, 11, 27, 1)],
    ['*-01-01 00:00', at(2027, 1, 1)],
    ['2030-03-01 12:00:05', at(2030, 3, 1, 12, 0, 5)],
    ['12-25 06:00', at(2026, 12, 25, 6)],
  ];
  for (const [text, want] of cases) assert.is(new Date(parseCalendar(text).next(t0)!).toString(), new Date(want).toString(), text);
  for (const bad of ['sometimes', 'Mon..Fry 02:00', '25:00', '*-13-01', '2001-01-01 00:00', '*:0/0']) {
    assert.throws(() => parseCalendar(bad), undefined, bad);
  }
});

test('a scheduled pair with on_calendar: due at the first event after its last sync; journal pressure syncs early', () => {
  const c = parseConfig('[pairs.sys]\npolicy = "scheduled"\non_calendar = "*:0/10"\n', 'x.toml');
  const sys = c.pairs.sys;
  const t = new Date(2026, 10, 24, 10, 3).getTime();
  assert.is(nextSyncMs(sys, { changed: true, lastSyncStartMs: t, imageTimeMs: t }, t), new Date(2026, 10, 24, 10, 10).getTime());
  assert.not.ok(due(sys, { changed: true, lastSyncStartMs: t, imageTimeMs: t }, t + 6 * 60_000));
  assert.ok(due(sys, { changed: true, lastSyncStartMs: t, imageTimeMs: t }, t + 7 * 60_000));
  assert.ok(due(sys, { changed: true, lastSyncStartMs: t, imageTimeMs: t, journalPressure: true }, t + 1000), 'early');
  assert.not.ok(due({ policy: 'manual' }, { changed: true, lastSyncStartMs: 0, imageTimeMs: 0, journalPressure: true }, t), 'manual: never');
  assert.throws(() => parseConfig('[pairs.a]\npolicy = "scheduled"\non_calendar = "Mon 25:00"\n', 'x.toml'), /pairs\.a\.on_calendar/);
  assert.throws(() => parseConfig('[pairs.a]\npolicy = "scheduled"\non_calendar = "daily"\nevery = "1h"\n', 'x.toml'), /either every or on_calendar/);
});

test('daemon-wide keys: bandwidths, scrub, hook, metrics file', () => {
  const c = parseConfig('scrub_every = "1w"\nscrub_bandwidth = "8M"\ncompare_bandwidth = "1G"\non_failure = "/bin/true"\n', 'x.toml');
  assert.is(c.scrubEveryMs, 604_800_000);
  assert.is(c.scrubBytesPerSec, 8 << 20);
  assert.is(c.compareBytesPerSec, 1 << 30);
  assert.is(c.onFailure, '/bin/true');
  assert.is(parseConfig('scrub_every = "off"\n', 'x.toml').scrubEveryMs, 0);
  assert.throws(() => parseConfig('scrub_bandwidth = "fast"\n', 'x.toml'), /scrub_bandwidth: "fast" is not a size/);
});

test('command line units: a bare size is bytes, a bare duration seconds; errors are usage errors', () => {
  assert.equal([parseSize('64M'), parseSize(' 1G '), parseSize('512'), parseSize('1.5KiB')], [64 << 20, 1 << 30, 512, 1536]);
  assert.equal([parseDuration('15m'), parseDuration('90'), parseDuration('500ms'), parseDuration('2w')], [900_000, 90_000, 500, 1_209_600_000]);
  for (const bad of [() => parseSize('abc'), () => parseSize('5X'), () => parseDuration('15 minutes'), () => parseDuration('-1s')]) {
    assert.throws(bad, (e: { exitStatus: number }) => e.exitStatus === 2);
  }
});

test.run();
