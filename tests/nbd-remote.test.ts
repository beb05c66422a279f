// What a DPSR drive on an NBD export gives back, and how it lives with a
// server that goes away: diff, file restore (also --at a restore point),
// partition and whole-disk restore and rollback read the remote image
// through a read-only view that never writes the export (sha256 before and
// after); a daemon whose server is killed keeps tracking, says since when
// the server is unreachable (status, --json, metrics), and once the server
// is back copies only what was written, without a compare; a host that
// never answers fails after the connect timeout in one line.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { type Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, sh, sha256Of } from './helpers/fixture.js';
import { serveNbd } from './helpers/nbd-server.js';
import { startDaemon, statusOf, waitFor } from './helpers/daemon-child.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const MiB = 1 << 20;
const ok = (...args: string[]) => runDpsrOk(env, args);
const json = (...args: string[]) => JSON.parse(ok(...args, '--json'));
/** No FUSE view of an export left mounted by a command. */
const viewsLeft = () => fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes('dpsr-export-'));

test('a whole-disk pair on an export: diff, file restore (--at too), restore --partition, restore --whole (--at too) and rollback read the remote image; the export is never written', () => {
  const { disk, parts } = fx.partitionedLoop(160, [64, 64]);
  const bytes = 160 * MiB;
  fx.mkfs(parts[0], 'ext4');
  fx.mkfs(parts[1], 'ext4');
  const server = serveNbd(fx, { sizeMiB: 160 + 64 + 64 });
  ok('pair', disk, server.uri, '--name', 'r', '--history', 'all');
  let mnt = fx.mount(parts[1], ['-o', 'noatime']);
  const file = path.join(mnt, 'f.txt');
  fs.writeFileSync(file, 'version 1\n');
  const g1 = json('sync', 'r', '--quiet-period', '0.2').syncs[0].generation;
  fs.writeFileSync(file, 'version 2\n');
  json('sync', 'r', '--quiet-period', '0.2');
  const synced = sha256Of(server.image, bytes);
  fs.writeFileSync(file, 'version 3, not synced\n');
  const exportBefore = sha256Of(server.image);

  const d = json('diff', 'r', file);
  assert.is(d.summary.changed, 1, 'the source has version 3, the remote image version 2');
  // Named by its URI, not by the read-only view's loop device.
  assert.is(d.image.drive, server.uri);
  assert.match(ok('diff', 'r', file), new RegExp(`against the DPSR drive ${server.uri.replace(/[?+.]/g, '\\$&')},`));
  const out = path.join(fx.dir, 'out');
  assert.is(json('restore', 'r', file, '--to', path.join(out, 'now')).image.drive, server.uri);
  assert.is(fs.readFileSync(path.join(out, 'now', 'f.txt'), 'utf8'), 'version 2\n');
  ok('restore', 'r', file, '--at', String(g1), '--to', path.join(out, 'g1'));
  assert.is(fs.readFileSync(path.join(out, 'g1', 'f.txt'), 'utf8'), 'version 1\n');
  assert.is(json('diff', 'r', file, '--at', String(g1)).summary.changed, 1);
  assert.is(sha256Of(server.image), exportBefore, 'reading the remote image wrote nothing to the export');
  assert.equal(viewsLeft(), [], 'every read-only view closed');

  fx.unmount(mnt);
  const p = json('restore', 'r', '--partition', '2', '--yes').restore;
  assert.is(p.mode, 'full');
  sh('fsck.ext4', ['-n', '-f', parts[1]]);
  mnt = fx.mount(parts[1], ['-o', 'ro']);
  assert.is(fs.readFileSync(path.join(mnt, 'f.txt'), 'utf8'), 'version 2\n', 'partition 2 is the remote image\'s');
  fx.unmount(mnt);

  json('restore', 'r', '--whole', '--at', String(g1), '--yes');
  mnt = fx.mount(parts[1], ['-o', 'ro']);
  assert.is(fs.readFileSync(path.join(mnt, 'f.txt'), 'utf8'), 'version 1\n', 'the whole disk at restore point g1');
  fx.unmount(mnt);

  const whole = json('restore', 'r', '--whole', '--yes').restore;
  assert.is(whole.writtenBytes, bytes);
  assert.is(whole.drive, server.uri);
  assert.is(sha256Of(disk), synced, 'the whole disk is the remote image');
  ddDirect(parts[0], 4096, 64);
  json('rollback', 'r', '--yes');
  assert.is(sha256Of(disk), synced, 'rolled back from the remote image');
  assert.is(sha256Of(server.image), exportBefore, 'restores and rollbacks wrote nothing to the export');
  assert.equal(viewsLeft(), []);
});

test('the server killed under a running daemon: tracking goes on, status and metrics say since when it is unreachable; restarted, the next sync copies what was written, no compare, exact', async () => {
  const source = fx.loop(32);
  const bytes = 32 * MiB;
  randomFill(source, 32);
  const image = fx.image('export.img', 32 + 64);
  let server = serveNbd(fx, { image });
  ok('pair', source, server.uri, '--name', 'r');
  const metrics = path.join(fx.dir, 'dpsr.prom');
  fs.writeFileSync(env.DPSR_CONFIG!, `tick = "200ms"\nscrub_every = "off"\nmetrics_file = "${metrics}"\n` +
    '[pairs.r]\npolicy = "continuous"\nrpo = "1s"\nmin_interval = "300ms"\n');
  const daemon = await startDaemon(fx, env);
  server.stop();
  const killedMs = Date.now();
  const sectors = (x: [number, number]) => x[1] - x[0];
  let written = 0;
  for (let i = 0; i < 8; i++) written += sectors(ddDirect(source, 2048 + i * 4096, 128)) * 512;
  const away = await waitFor('the server unreachable in status', async () => {
    const st = await statusOf(env, 'r');
    return st.driveUnreachableSince !== null && st;
  });
  assert.ok(Date.parse(away.driveUnreachableSince!) >= killedMs - 1000, away.driveUnreachableSince!);
  assert.ok(away.warnings.some((w) => /NBD server has been unreachable since/.test(w)), away.warnings.join('; '));
  assert.match(runDpsr(env, ['status', 'r']).stdout, /unreachable since/); // exit 4 while the image is behind
  await waitFor('the outage in the metrics', async () => fs.existsSync(metrics) && /^dpsr_drive_unreachable_seconds\{pair="r"\} [1-9]/m.test(fs.readFileSync(metrics, 'utf8')));
  // Writes while it is away are tracked, not lost.
  for (let i = 0; i < 4; i++) written += sectors(ddDirect(source, 40_000 + i * 4096, 64)) * 512;
  await waitFor('every write tracked', async () => ((await statusOf(env, 'r')).dirtyBytes ?? 0) >= written);

  server = serveNbd(fx, { image, sock: server.sock });
  const back = await waitFor('a sync after the server returned', async () => {
    const st = await statusOf(env, 'r');
    return st.driveUnreachableSince === null && st.dirtyBytes === 0 && st.lastSync && st.lastSync.atMs > killedMs && st;
  }, 120_000);
  await daemon.stop();
  assert.ok(back.lastSync!.copiedBytes >= written && back.lastSync!.copiedBytes <= written + 2 * MiB,
    `copied ${back.lastSync!.copiedBytes} bytes for ${written} written`);
  assert.is(back.lastSync!.comparedBytes ?? 0, 0, 'nothing compared: the tracker knew what changed');
  assert.is(sha256Of(image, bytes), sha256Of(source, bytes), 'the export is the source');
  assert.match(fs.readFileSync(metrics, 'utf8'), /^dpsr_drive_unreachable_seconds\{pair="r"\} 0$/m);
});

test('a host that never answers: every command gives up after the connect timeout, in one line, exit 1', async () => {
  // Listening but never answering: the kernel completes TCP's handshake, NBD's never starts.
  const silent = net.createServer(() => {});
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', () => resolve()));
  fx.defer('close the silent server', () => silent.close());
  const uri = `nbd://127.0.0.1:${(silent.address() as net.AddressInfo).port}/disk`;
  const source = fx.loop(16);
  const quick = { ...env, DPSR_NBD_CONNECT_TIMEOUT: '1.5' };
  for (const args of [['status', '--drive', uri], ['pair', source, uri, '--name', 'never']]) {
    const started = Date.now();
    const r = runDpsr(quick, args); // synchronous: the kernel's backlog takes the connection, nothing answers it
    const tookMs = Date.now() - started;
    assert.is(r.status, 1, `${args[0]}: ${r.stderr}`);
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /no answer within 1\.5 s/);
    assert.ok(tookMs < 30_000, `${args[0]} gave up after ${tookMs} ms`);
  }
  assert.equal((JSON.parse(runDpsrOk(env, ['status', '--json'])).pairs ?? []).map((p: { name: string }) => p.name), []);
});

test.run();
