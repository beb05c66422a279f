// When `dpsr status` warns that the journal nears full (pure: src/daemon/pair-status.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { journalWarningBytes } from '../src/daemon/pair-status.js';
import { UPGRADE_BYTES } from '../src/base/defaults.js';

const GiB = 2 ** 30;

test('a big journal warns at half (the default 8 GiB tail too)', () => {
  assert.is(journalWarningBytes(8 * GiB), 4 * GiB);
  assert.is(journalWarningBytes(100 * GiB), 50 * GiB);
  assert.is(journalWarningBytes(2 * UPGRADE_BYTES), UPGRADE_BYTES);
});

test('a journal under twice an upgrade warns when less than one upgrade would be left (a 4 GiB tail)', () => {
  const capacity = 4 * GiB * 0.996; // what a 4 GiB tail journals
  assert.is(journalWarningBytes(capacity), capacity - UPGRADE_BYTES);
  assert.ok(journalWarningBytes(capacity) < capacity / 2);
});

test('a journal smaller than one upgrade (pair warned of it) warns at half, not at every change', () => {
  assert.is(journalWarningBytes(64 * 2 ** 20), 32 * 2 ** 20);
  assert.is(journalWarningBytes(UPGRADE_BYTES), UPGRADE_BYTES / 2);
});

test.run();
