// Recovery off-box, proven by booting: the test system disk paired with a
// DPSR drive on an NBD export (nbdkit over an image, as a backup host would
// serve it), a change synced, and the export booted under qemu straight
// from nbd:// with snapshot=on, as the README's "Recovery off-box" says.
// The guest comes up with the synced state; the export is left unchanged.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { type Fixture, eachTestFreshCli, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { BOOTED_MARKER, SYSTEM_DISK_MiB, type BootPieces, bootPieces, makeSystemDisk, withMounted } from './helpers/boot-image.js';
import { bootGuest, serialTail } from './helpers/qemu.js';
import { serveNbd } from './helpers/nbd-server.js';

const BOOT_TIMEOUT_MS = 180_000; // about 5-20 s under software emulation on a shared machine: an upper bound only

let pieces: BootPieces;
let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before(() => {
  pieces = bootPieces();
});
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const ok = (...args: string[]): string => runDpsrOk(env, args);

test('the remote copy of the system disk boots in qemu from the NBD export (snapshot=on) with the synced state; the export is unchanged', async () => {
  const sys = makeSystemDisk(fx, pieces, 'installed');
  const server = serveNbd(fx, { sizeMiB: SYSTEM_DISK_MiB + 64 });
  ok('pair', sys.dev, server.uri, '--name', 'offbox');
  withMounted(fx, sys.rootPart, (mnt) => fs.writeFileSync(path.join(mnt, 'var/lib/state'), 'synced-offsite'));
  ok('sync', 'offbox', '--quiet-period', '0.5');
  assert.is(sha256Of(server.image, sys.bytes), sha256Of(sys.dev), 'the export holds the system disk');
  const before = sha256Of(server.image);

  const r = await bootGuest(fx, { disks: [{ path: server.uri, snapshot: true }], timeoutMs: BOOT_TIMEOUT_MS, watchFor: new RegExp(BOOTED_MARKER) });
  const state = r.serial.match(new RegExp(`${BOOTED_MARKER} state=([^\\r\\n]*)`))?.[1] ?? null;
  assert.is(state, 'synced-offsite', `booted from ${server.uri}: exit ${r.exitCode}, timed out ${r.timedOut}:\n${serialTail(r.serial)}`);
  assert.is(sha256Of(server.image), before, 'snapshot=on: the boot wrote nothing to the export');
  console.log(`  booted from the export in ${((r.watchedAt! - r.startedAt) / 1000).toFixed(1)} s`);
});

test.run();
