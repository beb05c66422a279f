// The sync's planning rules that need no device (pure logic).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ExtentSet } from '../src/base/extents.js';
import { copyWhereJournaled } from '../src/sync/sync.js';

test('a region to compare that an earlier pass journaled is copied: the drive does not hold what the transaction will write', () => {
  // Pass 1 journaled sectors [0, 8) and [800, 816); pass 2 must compare [0, 64) and [792, 808).
  const journaled = ExtentSet.from([[0, 8], [800, 816]]);
  const cut = { copy: ExtentSet.from([[100, 108]]), compare: ExtentSet.from([[0, 64], [792, 808]]), discard: new ExtentSet() };
  const planned = copyWhereJournaled(cut, journaled);
  assert.equal(planned.copy.toArray(), [[0, 8], [100, 108], [800, 808]], 'the overlap is copied, whatever it reads now');
  assert.equal(planned.compare.toArray(), [[8, 64], [792, 800]], 'the rest is still only compared');
});

test('nothing journaled yet (the first pass): every region to compare is compared against the drive', () => {
  const cut = { copy: new ExtentSet(), compare: ExtentSet.from([[0, 64]]), discard: ExtentSet.from([[200, 208]]) };
  const planned = copyWhereJournaled(cut, new ExtentSet());
  assert.ok(planned.copy.isEmpty);
  assert.equal(planned.compare.toArray(), [[0, 64]]);
  assert.equal(planned.discard.toArray(), [[200, 208]]);
});

test.run();
