// The crash-replay campaign (tests/helpers/crash-replay.ts): records the
// scenario with each seed and replays SUBSETS random subsets per epoch of
// every operation's writes (plus a torn one and the flush boundaries), and
// a quarter as many of each journaled sync's judged by the next sync,
// then prints the states per operation and outcome, and every mix.
// Usage (after a build, as root): node dist/tools/faults/crash-campaign.js [--seeds N] [--subsets N] [--seed S]
// Exit 1 on any mix. It waits while /tmp/dpsr-quiet exists (someone benchmarks on this machine).
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { type Outcomes, recordScenario, replayScenario } from '../../tests/helpers/crash-replay.js';
import { freshCliFixture } from '../../tests/helpers/fixture.js';

const { values } = parseArgs({ options: { seeds: { type: 'string', default: '3' }, subsets: { type: 'string', default: '12' }, seed: { type: 'string', default: '1' } } });
const seeds = Number(values.seeds);
const subsets = Number(values.subsets);
const outcomes = new Map<string, Outcomes>();
// A shared machine: while someone benchmarks (the file exists), wait between states. Each
// state also yields to the event loop, where Ctrl-C and SIGTERM are heard (the fixture then
// releases every loop device and mount): the replay's awaits alone never leave the microtasks.
const QUIET_FILE = '/tmp/dpsr-quiet';
const waitWhileQuiet = async () => {
  await new Promise((resolve) => setImmediate(resolve));
  while (fs.existsSync(QUIET_FILE)) await sleep(15_000);
};
const startedMs = Date.now();
for (let seed = Number(values.seed); seed < Number(values.seed) + seeds; seed++) {
  await waitWhileQuiet();
  const { fx, env } = freshCliFixture();
  try {
    const scenario = await recordScenario(fx, env, seed, { subsets: Math.max(1, Math.round(subsets / 4)), outcomes });
    await replayScenario(fx, fx.cliEnv(), scenario, seed, subsets, outcomes, waitWhileQuiet);
  } finally {
    fx.cleanup();
  }
  console.log(`seed ${seed} done, ${((Date.now() - startedMs) / 1000).toFixed(0)} s:`);
  report(); // so far: a long run can be read before it ends
}

/** The states per operation and outcome, every mix, and the totals; returns the mixes. */
function report(): number {
  let states = 0;
  let mixes = 0;
  for (const [op, o] of outcomes) {
    console.log(`${op}: ${o.states} states: ${o.old} old, ${o.new} new, ${o.noImage} no image yet, ${o.noLabel} no label (${o.applied} applied by recover), ${o.mixes.length} mixes`);
    for (const m of o.mixes) console.log(`  MIX ${m}`);
    states += o.states;
    mixes += o.mixes.length;
  }
  console.log(`${states} crash states replayed in ${((Date.now() - startedMs) / 1000).toFixed(0)} s: ${mixes} mixes`);
  return mixes;
}
const mixes = report();
process.exit(mixes > 0 ? 1 : 0);
