// Slow devices: a DPSR drive that answers at 2 MB/s and 20 ms a request
// (the fault disk's "slow", a dying disk), and stalled besides once the sync
// has written 1 MiB, so that no machine is fast enough to finish before the
// deadline. `sync --timeout` is honoured alone and through the daemon (one
// line, exit 1, the drive keeps its image); while the sync crawls, the daemon
// keeps draining the ring (every write made meanwhile is tracked, no drop, no
// gap) and answers status at once: each answer is measured against a
// generous 1 s, since the point is that status does not wait on the sync.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { startDaemon, statusOf, waitFor } from './helpers/daemon-child.js';
import { Fixture, eachTestFreshCli, runDpsr, sh, sha256Of, spawnDpsr } from './helpers/fixture.js';
import { type Faults, faultyPair, rewrite } from './helpers/fault-disk.js';
import { ControlClient } from '../src/daemon/protocol.js';
import type { PairStatus } from '../src/daemon/pair-status.js';

const MiB = 1 << 20;
const SLOW: Faults['slow'] = { latencyMs: 20, bytesPerSec: 2e6 };
const CRAWLING: Faults = { slow: SLOW, stallWritesAfter: MiB };
const STATUS_BOUND_MS = 1000;

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const oneLine = (stderr: string) => stderr.trim().split('\n').length === 1;

/** The daemon's answer to a status request, and how long it took (the socket alone, not a CLI's start). */
async function timedStatus(): Promise<{ st: PairStatus; ms: number }> {
  const c = (await ControlClient.connect(env.DPSR_SOCKET!))!;
  try {
    const t0 = process.hrtime.bigint();
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error('status: no answer in 30 s')), 30_000); });
    const [st] = await Promise.race([c.request({ command: 'status', name: 'p' }), bound]).finally(() => clearTimeout(timer)) as PairStatus[];
    return { st, ms: Number(process.hrtime.bigint() - t0) / 1e6 };
  } finally {
    c.close();
  }
}

test('sync --timeout on a slow DPSR drive that cannot finish in time: honoured alone and through the daemon, one line, exit 1; the drive keeps its image; the next sync is exact', async () => {
  const { source, drive, disk } = faultyPair(fx, env, 'p', 'drive', 16);
  rewrite(source, 2, 8);
  const image = sha256Of(drive, 16 * MiB);
  for (const through of ['alone', 'the daemon'] as const) {
    const daemon = through === 'the daemon' ? await startDaemon(fx, env, '--tick', '0.2') : null;
    disk.fail(CRAWLING);
    const t0 = Date.now();
    const run = spawnDpsr(env, ['sync', 'p', '--quiet-period', '0.2', '--timeout', '3s']);
    // Alone, the process that gave up exits only once its write in flight ends: the word comes first.
    await waitFor('the sync to give up', async () => run.stderr() !== '' || run.child.exitCode !== null, 120_000);
    const tookMs = Date.now() - t0;
    if (!daemon) disk.heal();
    const r = await run.done;
    console.log(`  ${through}: exit ${r.status} after ${(tookMs / 1000).toFixed(1)} s: ${r.stderr.trim()}`);
    assert.is(r.status, 1, `${through}: ${r.stderr}`);
    assert.ok(oneLine(r.stderr), r.stderr);
    assert.match(r.stderr, /not done after 3 s \(--timeout\)/);
    assert.ok(tookMs >= 3000 && tookMs < 60_000, `${through}: it gave up after ${tookMs} ms`);
    if (daemon) {
      const { st, ms } = await timedStatus();
      console.log(`  the daemon answers status in ${ms.toFixed(1)} ms while its sync crawls`);
      assert.ok(ms < STATUS_BOUND_MS, `status took ${ms} ms`);
      assert.is(st.image, 'point-in-time');
    }
    disk.heal();
    if (daemon) {
      // It goes on with the sync: done once the drive answers again.
      await waitFor('the daemon\'s sync', async () => (await statusOf(env, 'p')).dirtyBytes === 0);
      await daemon.stop();
    } else {
      const st = JSON.parse(runDpsr(env, ['status', 'p', '--json']).stdout).pairs[0];
      assert.ok(st.usable, JSON.stringify(st));
      assert.is(sha256Of(drive, 16 * MiB), image, 'the drive keeps its image');
    }
  }
  assert.is(runDpsr(env, ['sync', 'p', '--quiet-period', '0.2']).status, 0);
  assert.is(sha256Of(drive, 16 * MiB), sha256Of(source), 'exact');
});

test('while a sync crawls on a slow DPSR drive, the daemon drains the ring (every write made meanwhile tracked: no drop, no gap) and answers status in well under a second', async () => {
  const { source, drive, disk } = faultyPair(fx, env, 'p', 'drive', 32);
  rewrite(source, 0, 4);
  const daemon = await startDaemon(fx, env, '--tick', '0.2');
  disk.fail(CRAWLING);
  const sync = spawnDpsr(env, ['sync', 'p', '--quiet-period', '0.2']);
  assert.ok(await disk.untilStalled(sync.child), `the sync reached its stall: ${daemon.output()}`);
  // 3 x 2048 separate 4 KiB writes to 8 MiB of the source the sync did not take.
  const blocks = 2048;
  for (let pass = 0; pass < 3; pass++) {
    sh('dd', ['if=/dev/urandom', `of=${source}`, 'bs=4k', `seek=${(16 * MiB) / 4096}`, `count=${blocks}`, 'oflag=direct', 'status=none']);
  }
  const times: number[] = [];
  // Dirty: the cut the sync took (4 MiB, until it lands) and what was written since.
  const expected = 4 * MiB + blocks * 4096;
  const seen = await waitFor('the writes made during the sync tracked', async () => {
    const { st, ms } = await timedStatus();
    times.push(ms);
    return st.dirtyBytes! >= expected && st;
  });
  for (let i = 0; i < 10; i++) times.push((await timedStatus()).ms);
  const worst = Math.max(...times);
  console.log(`  during the sync: ${seen.dirtyBytes} bytes dirty, gaps ${JSON.stringify(seen.gapsSinceSync)}; status answered in ${Math.min(...times).toFixed(1)}-${worst.toFixed(1)} ms (${times.length} requests)`);
  assert.is(seen.dirtyBytes, expected, 'every block written meanwhile is dirty, and only those');
  assert.equal(seen.gapsSinceSync, [], 'no drop, no gap');
  assert.ok(worst < STATUS_BOUND_MS, `status took up to ${worst} ms`);
  assert.is(sync.child.exitCode, null, 'the sync still crawls');
  disk.heal();
  const r = await sync.done;
  assert.is(r.status, 0, r.stderr);
  const after = await statusOf(env, 'p');
  assert.equal(after.gapsSinceSync, [], 'no gap after the sync either');
  assert.is(runDpsr(env, ['sync', 'p', '--quiet-period', '0.2']).status, 0);
  await daemon.stop();
  assert.is(sha256Of(drive, 32 * MiB), sha256Of(source), 'exact');
});

test.run();
