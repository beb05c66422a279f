// The reconciliation verdicts, as pure logic.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { baselineFrom, judge, type Reading } from '../src/kernel/reconcile.js';

const r = (kernelSectors: number, programSectors: number, inFlightWrites = 0): Reading => ({ kernelSectors, programSectors, inFlightWrites });

test('a stable baseline is exact; an unstable one is not', () => {
  assert.equal(baselineFrom(r(100, 0), r(100, 0)), { offsetSectors: 100, exact: true });
  assert.equal(baselineFrom(r(100, 0), r(108, 8, 1)), { offsetSectors: 100, exact: false });
});

test('equal counts while quiet: exact', () => {
  const base = { offsetSectors: 100, exact: true };
  assert.equal(judge(base, r(180, 80), r(180, 80)).verdict, { kind: 'exact' });
});

test('a deficit is a shortfall even under load, and moves the baseline', () => {
  const base = { offsetSectors: 100, exact: true };
  const { verdict, baseline } = judge(base, r(200, 90, 3), r(216, 100, 2));
  assert.equal(verdict, { kind: 'shortfall', sectors: 16 });
  assert.is(baseline.offsetSectors, 116);
  assert.equal(judge(baseline, r(216, 100), r(216, 100)).verdict, { kind: 'exact' });
});

test('program ahead while busy: no verdict; while quiet: rebaselined', () => {
  const base = { offsetSectors: 100, exact: false };
  assert.equal(judge(base, r(150, 58, 1), r(150, 58, 1)).verdict, { kind: 'busy' });
  const quiet = judge(base, r(150, 58), r(150, 58));
  assert.equal(quiet.verdict, { kind: 'rebaselined' });
  assert.equal(quiet.baseline, { offsetSectors: 92, exact: true });
});

test('changing counts between the two readings: busy, not exact', () => {
  const base = { offsetSectors: 0, exact: true };
  assert.equal(judge(base, r(10, 10), r(18, 18)).verdict, { kind: 'busy' });
});

test.run();
