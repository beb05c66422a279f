// Damaged state and hostile command lines: a state database overwritten
// with garbage or cut short makes every command say so in one line and
// write nothing (it crashed node with a segmentation fault); fuzzed
// command lines end with one line and an exit status from the table,
// never a stack trace or a signal.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Fixture, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { mulberry32 } from './helpers/seeded-random.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const oneLine = (stderr: string) => stderr.trim().split('\n').length === 1;

test('a state database overwritten with garbage or cut short: every command says what and how out in one line, exit 1, nothing written', () => {
  const { source, drive } = fx.pairDevices(16);
  randomFill(source, 16);
  runDpsrOk(env, ['pair', source, drive, '--name', 'p']);
  runDpsrOk(env, ['sync', 'p', '--quiet-period', '0.2']);
  randomFill(source, 1); // something for a sync or rollback to write
  const file = path.join(env.DPSR_STATE_DIR!, 'state.mdb');
  const good = fs.readFileSync(file);
  const before = [sha256Of(source), sha256Of(drive)];
  for (const [what, damaged] of [['garbage', crypto.randomBytes(good.length)], ['cut short', good.subarray(0, 5000)]] as const) {
    fs.writeFileSync(file, damaged);
    for (const args of [['status'], ['status', 'p', '--json'], ['sync', 'p'], ['verify', 'p'], ['rollback', 'p', '--yes'], ['unpair', 'p'], ['diff', 'p']]) {
      const r = runDpsr(env, args);
      assert.is(r.status, 1, `${what}: dpsr ${args.join(' ')}: exit ${r.status} signal: ${r.stderr}`);
      assert.ok(oneLine(r.stderr), `${what}: one line: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`the state database ${file} .*Move it aside`));
    }
    assert.equal([sha256Of(source), sha256Of(drive)], before, `${what}: nothing written to either device`);
  }
  fs.writeFileSync(file, good);
  assert.is(runDpsr(env, ['status', 'p']).status, 0, 'the database back: all is well');
});

test('contradictory or empty choices are usage errors: exit 2, one line, before any device is opened', () => {
  const { source, drive } = fx.pairDevices(16);
  const before = [sha256Of(source), sha256Of(drive)];
  // `sync --all p` exited 1 ("no pair named p"), `status p --drive` and `--timeout 0` went on to open devices.
  for (const args of [['sync', '--all', 'p'], ['sync'], ['sync', 'p', '--timeout', '0'], ['status', 'p', '--drive', drive],
    ['rollback'], ['rollback', 'p', '--source', source], ['restore', 'p'], ['restore', 'p', 'x', '--whole'],
    ['restore', 'p', '--partition', '1', '--whole'], ['restore', 'p', '--partition', '0'], ['pair', source], ['verify', 'p', 'q']]) {
    const r = runDpsr(env, args);
    assert.is(r.status, 2, `dpsr ${args.join(' ')}: ${r.stderr}`);
    assert.ok(oneLine(r.stderr), `one line: ${r.stderr}`);
  }
  assert.equal([sha256Of(source), sha256Of(drive)], before, 'nothing written');
});

test('fuzzed command lines: one line, an exit status from the table, never a stack trace', () => {
  const random = mulberry32(17);
  const pick = <T>(a: readonly T[]) => a[Math.floor(random() * a.length)];
  // Never a real block device: nothing a case runs can write one. No daemon, watch or demo: they run on.
  const commands = ['pair', 'sync', 'status', 'verify', 'unpair', 'diff', 'restore', 'rollback', 'recover', 'udev-probe', 'install', 'uninstall', 'man', 'frob'];
  const options = ['--name', '--force', '--reserve', '--no-reserve', '--all', '--json', '--no-freeze', '--quiet-period', '--timeout', '--in-place',
    '-l', '--max-age', '--drive', '--source', '--yes', '--dry-run', '--to', '--overwrite', '--content', '--partition', '--whole', '--in-partition',
    '--exit-code', '--root', '--help', '--', '-', '--bogus'];
  const values = ['', '0', '-1', '1e309', 'NaN', '99999999999999999999', '1Q', '0x10', '3.5', '-5s', '10m', 'p', 'no-such-pair', '../../etc',
    'ünïcödé', 'x'.repeat(5000), '/nonexistent', '/dev/null', '/dev/zero', fx.dir, `${fx.dir}/missing`, '%s%n', '$(id)', '\n'];
  const seen = new Map<number, number>();
  const cases = 40;
  for (let i = 0; i < cases; i++) {
    const args = [pick(commands)];
    for (let n = Math.floor(random() * 5); n > 0; n--) args.push(random() < 0.5 ? pick(options) : pick(values));
    if (args[0] === 'install' || args[0] === 'uninstall') args.push('--root', path.join(fx.dir, `root-${i}`)); // never the real system
    const r = runDpsr(env, args, 30_000);
    const shown = JSON.stringify(args).slice(0, 300);
    assert.ok(r.status !== null && r.status >= 0 && r.status <= 4, `${shown}: exit ${r.status} (a signal or timeout?): ${r.stderr}`);
    assert.not.match(r.stderr, /\n\s+at .*:\d+:\d+/, `${shown}: a stack trace: ${r.stderr}`);
    if (r.status !== 0) assert.ok(oneLine(r.stderr), `${shown}: one line: ${r.stderr}`);
    seen.set(r.status!, (seen.get(r.status!) ?? 0) + 1);
  }
  console.log(`  ${cases} command lines: ${[...seen].sort().map(([s, n]) => `exit ${s}: ${n}`).join(', ')}`);
});

test.run();
