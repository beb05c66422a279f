// The daemon's configuration and its policies, as pure logic.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ConfigError, due, parseConfig } from '../src/config.js';

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

test.run();
