// Vanishing devices: the DPSR drive or the source goes away mid-sync (the
// nbdkit server under its loop device killed at an exact point, where the
// fault disk stalled the sync's writes or reads), through the CLI and through
// the daemon. The sync fails in one line naming the device, the daemon lives
// and says so in status; plugged back in (the same image, the same loop node
// and file), the pair resumes: the drive proven by its label needs no compare
// and only what changed is copied; a source that was away may have been
// written unseen, so it is compared, and still only what differs is copied.
// sha256 equal after.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import { startDaemon, statusOf, waitFor } from './helpers/daemon-child.js';
import { Fixture, eachTestFreshCli, runDpsr, runDpsrOk, sha256Of, spawnDpsr } from './helpers/fixture.js';
import { type FaultDisk, faultyPair, rewrite } from './helpers/fault-disk.js';
import type { SyncRecord } from '../src/state/records.js';

const MiB = 1 << 20;
const SOURCE_MIB = 16;
const SOURCE_BYTES = SOURCE_MIB * MiB;
const CHANGED = 2 * MiB;

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args);
const oneLine = (stderr: string) => stderr.trim().split('\n').length === 1;

/** A pair synced once, with `faulty` on a fault disk; then CHANGED bytes of the source rewritten. */
function changedPair(name: string, faulty: 'source' | 'drive'): { source: string; drive: string; disk: FaultDisk } {
  const p = faultyPair(fx, env, name, faulty, SOURCE_MIB);
  rewrite(p.source, 4, CHANGED / MiB);
  return p;
}

/** Runs a sync until the disk stalls it (its `kind` past `afterBytes`), kills the disk's server there, and returns how the sync ended. */
async function syncWhileTheDiskGoes(disk: FaultDisk, name: string, kind: 'writes' | 'reads', afterBytes: number) {
  if (kind === 'writes') disk.stallWrites(afterBytes);
  else disk.stallReads(afterBytes);
  const { child, done } = spawnDpsr(env, ['sync', name, '--quiet-period', '0.2']);
  assert.ok(await disk.untilStalled(child), `the sync reached byte ${afterBytes} of its ${kind}: ${(await Promise.race([done, Promise.resolve(null)]))?.stderr ?? ''}`);
  disk.killServer();
  disk.heal(); // for the server that comes back
  return done;
}

/** The sync's report, as the pair's status keeps it. */
function lastSync(name: string): SyncRecord {
  return JSON.parse(runDpsrOk(env, ['status', name, '--json'])).pairs[0].lastSync;
}

test('the DPSR drive vanishes mid-sync, in the journal and after the commit: one line naming it, exit 1; plugged back in, the next sync compares nothing, copies what changed, exact', async () => {
  for (const [name, where, share] of [['j', 'in the journal', 0.5], ['a', 'applying, after the commit', 1.5]] as const) {
    const { source, drive, disk } = changedPair(name, 'drive');
    const image = sha256Of(drive, SOURCE_BYTES);
    const r = await syncWhileTheDiskGoes(disk, name, 'writes', share * CHANGED);
    console.log(`  ${where}: exit ${r.status}: ${r.stderr.trim()}`);
    assert.is(r.status, 1, `${where}: ${r.stderr}`);
    assert.ok(oneLine(r.stderr), `one line: ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`(writing|flushing|reading) the DPSR drive (label )?${drive}`));
    assert.not.match(r.stderr, /\n\s+at /, 'no stack trace');
    const gone = dpsr('status', name, '--json');
    const problem = JSON.parse(gone.stdout).pairs[0].problem as string;
    console.log(`  while it is away: status exit ${gone.status}: ${problem}`);
    assert.is(gone.status, 4, 'status: not usable right now');
    assert.match(problem, new RegExp(`reading the DPSR drive (label )?${drive} at byte \\d+`), 'status names the drive and the read that failed');
    disk.replug();
    if (where.startsWith('in the journal')) assert.is(sha256Of(drive, SOURCE_BYTES), image, 'the drive came back holding its old image');
    const again = dpsr('sync', name, '--quiet-period', '0.2');
    assert.is(again.status, 0, again.stderr);
    const s = lastSync(name);
    console.log(`  ${where}: the next sync copied ${s.copiedBytes} bytes, compared ${s.comparedBytes}`);
    assert.is(s.comparedBytes, 0, 'no compare: the label proves the drive');
    // After the commit, the journal held the whole sync: replaying it made the image, nothing was left to copy.
    const copied = where.startsWith('in the journal') ? CHANGED : 0;
    assert.is(s.copiedBytes, copied, `copied what changed and no more: ${s.copiedBytes}`);
    assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source), 'exact');
    assert.is(dpsr('status', name).status, 0);
  }
});

test('the source vanishes mid-sync: one line naming it, exit 1, the drive keeps its image; plugged back in, it is compared (writes while away are unseen) and only what differs is copied; exact', async () => {
  const { source, drive, disk } = changedPair('p', 'source');
  const image = sha256Of(drive, SOURCE_BYTES);
  const r = await syncWhileTheDiskGoes(disk, 'p', 'reads', CHANGED / 2);
  console.log(`  exit ${r.status}: ${r.stderr.trim()}`);
  assert.is(r.status, 1, r.stderr);
  assert.ok(oneLine(r.stderr), r.stderr);
  assert.match(r.stderr, new RegExp(`reading the source ${source}`));
  assert.is(sha256Of(drive, SOURCE_BYTES), image, 'the drive keeps its image');
  disk.replug();
  const again = dpsr('sync', 'p', '--quiet-period', '0.2');
  assert.is(again.status, 0, again.stderr);
  const s = lastSync('p');
  console.log(`  the next sync copied ${s.copiedBytes} bytes, compared ${s.comparedBytes}, repaired ${s.repairedBytes}`);
  assert.ok(s.comparedBytes + s.copiedBytes >= SOURCE_BYTES, `the whole source read: ${JSON.stringify(s)}`);
  assert.ok(s.copiedBytes + s.repairedBytes <= CHANGED + MiB, `only what differs written: ${JSON.stringify(s)}`);
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source), 'exact');
});

test('through the daemon, the DPSR drive vanishes mid-sync: the daemon lives and status names the drive; plugged back in, its retry compares nothing and is exact', async () => {
  const { source, drive, disk } = changedPair('p', 'drive');
  fxConfig('[pairs.p]\npolicy = "continuous"\nrpo = "1s"\nmin_interval = "200ms"\n');
  disk.stallWrites(CHANGED / 2);
  const daemon = await startDaemon(fx, env);
  await disk.untilStalled(daemon);
  disk.killServer();
  disk.heal();
  const failed = await waitFor('the failed sync in status', async () => {
    const st = await statusOf(env, 'p');
    return st.lastError !== null && st;
  });
  console.log(`  status: ${failed.lastError}`);
  assert.match(failed.lastError!, new RegExp(`DPSR drive (label )?${drive}`));
  assert.is(daemon.exitCode, null, 'the daemon lives');
  disk.replug();
  const st = await waitFor('a sync once it is back', async () => {
    const s = await statusOf(env, 'p');
    return s.lastError === null && s.lastSync!.generation > failed.generation && s;
  }, 120_000);
  await daemon.stop();
  console.log(`  after the replug: copied ${st.lastSync!.copiedBytes}, compared ${st.lastSync!.comparedBytes}`);
  assert.is(st.lastSync!.comparedBytes, 0, 'no compare: the label proves the drive');
  assert.is(sha256Of(drive, SOURCE_BYTES), sha256Of(source), 'exact');
});

function fxConfig(pairs: string): void {
  fs.writeFileSync(env.DPSR_CONFIG!, `tick = "200ms"\nscrub_every = "off"\n${pairs}`);
}

test.run();
