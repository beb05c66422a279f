// The reconciliation verdicts, as pure logic.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { baselineFrom, judge, type Reading } from '../src/kernel/reconcile.js';
import { ISSUED_UNPLACED, type LoggedWrite } from '../src/kernel/kernel-abi.js';
import { accountable, issuesSkippedSince, placeShortfall, stillLogged } from '../src/kernel/missed-writes.js';

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

// ---- the issue log's placement of a shortfall ----

const disk = (7 << 20) | 1;
const w = (id: string, startSector: number, sectors: number, issuedNs: bigint, o: Partial<LoggedWrite> = {}): LoggedWrite =>
  ({ id, key: Buffer.from(id), issuedNs, dev: disk, startSector, endSector: startSector + sectors, op: 1, flags: 0, ...o });

test('accountable: the disk\'s lost and logged writes issued before the reading, each once, none already counted', () => {
  const log = {
    missed: [w('a', 100, 8, 10n), w('b', 200, 8, 10n, { dev: disk + 1 }), w('c', 300, 8, 10n)],
    issued: [w('a', 100, 8, 10n), w('d', 400, 8, 20n), w('e', 500, 8, 99n)],
    full: 0,
    issueSkipped: 0,
  };
  assert.equal(accountable(log, disk, new Set(['c']), 50n).map((x) => x.id), ['a', 'd']);
  assert.equal(stillLogged(['a', 'c', 'gone'], log), ['a', 'c']);
});

test('issuesSkippedSince: a skipped issue since the last judgement, never when the kernel skipped none', () => {
  const log = (issueSkipped: number) => ({ missed: [], issued: [], full: 0, issueSkipped });
  assert.is(issuesSkippedSince(log(0), undefined), false, 'none ever: nothing to fear, even against a baseline saved before the count was kept');
  assert.is(issuesSkippedSince(log(0), 3), false, 'programs reloaded, none since');
  assert.is(issuesSkippedSince(log(2), 2), false, 'none since the last judgement');
  assert.is(issuesSkippedSince(log(3), 2), true);
  assert.is(issuesSkippedSince(log(1), undefined), true, 'a baseline without the count: assume the worst');
});

test('placeShortfall: placed, clipped to the range, only when the writes account for it and the log is whole', () => {
  const range = { startSector: 1000, endSector: 2000 };
  const writes = [w('a', 1100, 8, 1n), w('b', 1996, 8, 1n), w('c', 5000, 8, 1n)];
  const placed = placeShortfall(range, 24, writes, false);
  assert.ok('extents' in placed);
  if ('extents' in placed) {
    assert.equal(placed.extents.toArray(), [[100, 108], [996, 1000]], 'the range\'s part, relative to it');
    assert.is(placed.sectors, 24);
  }
  assert.match((placeShortfall(range, 32, writes, false) as { why: string }).why, /holds 24 of them/);
  assert.match((placeShortfall(range, 8, writes, true) as { why: string }).why, /full/);
  assert.match((placeShortfall(range, 8, [w('d', 1100, 8, 1n, { flags: ISSUED_UNPLACED })], false) as { why: string }).why, /multi-range discard/);
});

test.run();
