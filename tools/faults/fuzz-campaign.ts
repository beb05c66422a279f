// The command-line fuzz campaign (tests/helpers/fuzz-args.ts): PER command
// lines for every command from each of SEEDS seeds, run against a real pair
// (its name and devices among the values), each judged: an exit status from
// the table, one line, no stack trace, and nothing written when refused.
// Usage (after a build, as root): node dist/tools/faults/fuzz-campaign.js [--seeds N] [--per N] [--seed S]
// Exit 1 on any problem. It waits while /tmp/dpsr-quiet exists (someone benchmarks on this machine).
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { describeTally, fuzzCommandLines, newTally, runFuzzCase } from '../../tests/helpers/fuzz-args.js';
import { freshCliFixture, randomFill, runDpsrOk } from '../../tests/helpers/fixture.js';

const { values } = parseArgs({ options: { seeds: { type: 'string', default: '5' }, per: { type: 'string', default: '20' }, seed: { type: 'string', default: '1' } } });
const QUIET_FILE = '/tmp/dpsr-quiet';
const tally = newTally();
const startedMs = Date.now();
for (let seed = Number(values.seed); seed < Number(values.seed) + Number(values.seeds); seed++) {
  const { fx, env } = freshCliFixture();
  try {
    const { source, drive } = fx.pairDevices(16);
    randomFill(source, 16);
    runDpsrOk(env, ['pair', source, drive, '--name', 'p']);
    runDpsrOk(env, ['sync', 'p', '--quiet-period', '0.2']);
    const target = { pair: 'p', source, drive, dir: fx.dir };
    for (const args of fuzzCommandLines(seed, Number(values.per), target)) {
      while (fs.existsSync(QUIET_FILE)) await sleep(15_000);
      runFuzzCase(env, args, target, tally);
    }
  } finally {
    fx.cleanup();
  }
  console.log(`seed ${seed} done, ${((Date.now() - startedMs) / 1000).toFixed(0)} s: ${tally.cases} command lines: ${describeTally(tally)}; ${tally.problems.length} problems`);
}
for (const p of tally.problems) console.log(`PROBLEM ${p}`);
console.log(`${tally.cases} fuzzed command lines in ${((Date.now() - startedMs) / 1000).toFixed(0)} s: ${describeTally(tally)}; ${tally.problems.length} problems`);
process.exit(tally.problems.length > 0 ? 1 : 0);
