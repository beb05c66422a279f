// Power cuts replayed (tests/helpers/crash-replay.ts): a full copy, two
// journaled syncs, a rollback and an unpair recorded write by write, and a
// fixed-seed sample of their crash states judged by the next dpsr command
// (status --drive and recover from the drive alone; for the syncs also the
// next sync on the pair's own record).
// The campaign, with more states: node dist/tools/faults/crash-campaign.js.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type Outcomes, recordScenario, replayScenario } from './helpers/crash-replay.js';
import { Fixture, freshCliFixture } from './helpers/fixture.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before.each(() => { ({ fx, env } = freshCliFixture()); });
test.after.each(() => fx.cleanup());

test('every crash state of a full copy, journaled syncs, a rollback and an unpair is the old or the new image after the next command (status --drive, recover, sync)', async () => {
  const outcomes = new Map<string, Outcomes>();
  const scenario = await recordScenario(fx, env, 17, { subsets: 1, outcomes });
  await replayScenario(fx, fx.cliEnv(), scenario, 17, 1, outcomes);
  for (const [op, o] of outcomes) {
    console.log(`  ${op}: ${o.states} states: ${o.old} old, ${o.new} new, ${o.noImage} no image yet, ${o.noLabel} no label (${o.applied} applied by recover), ${o.mixes.length} mixes`);
    assert.ok(o.states > 0, `${op}: no crash state`);
    assert.equal(o.mixes, [], `${op}: ${o.mixes.length} mixes`);
  }
  const syncs = outcomes.get('journaled sync')!;
  assert.ok(syncs.old > 0 && syncs.new > 0, 'states on both sides of the commit');
});

test.run();
