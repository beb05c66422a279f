// A DPSR drive on an NBD export, served by the test's own nbdkit (file
// plugin over an image, on a unix socket or on 127.0.0.1 with TLS-PSK):
// pair, syncs exact by the sha256 of the server's image, a server killed
// mid-sync and restarted (the next sync exact, no full copy again), and
// every refusal one line with its exit status and nothing written.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { type Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { type NbdServer, type ServeOptions, freePort, pskFile as pskFileOf, serveNbd } from './helpers/nbd-server.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const SOURCE_MIB = 32;
const EXPORT_MIB = 2 * SOURCE_MIB + 64; // the test reserve journals a sync that rewrites the whole source

type Server = NbdServer;
const serve = (opts: ServeOptions = {}) => serveNbd(fx, { sizeMiB: EXPORT_MIB, ...opts });
const pskFile = (name: string, mode?: number) => pskFileOf(fx, name, mode);

/** Fails unless `args` exit with `status` and one line of stderr that matches. */
function refused(args: string[], status: number, says: RegExp): void {
  const r = runDpsr(env, args);
  const lines = r.stderr.trim().split('\n');
  assert.is(r.status, status, `dpsr ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  assert.is(lines.length, 1, `one line: ${r.stderr}`);
  assert.match(lines[0], says);
}

const pairsNamed = (): string[] => (JSON.parse(runDpsrOk(env, ['status', '--json'])) as { pairs?: Array<{ name: string }> }).pairs?.map((p) => p.name) ?? [];

function pairedSource(): { source: string; bytes: number } {
  const source = fx.loop(SOURCE_MIB);
  randomFill(source, SOURCE_MIB);
  return { source, bytes: SOURCE_MIB << 20 };
}

test('pair and syncs onto an export over a unix socket: the server\'s image is the source, by sha256; status --drive and verify read it', () => {
  const { source, bytes } = pairedSource();
  const server = serve();
  runDpsrOk(env, ['pair', source, server.uri, '--name', 'remote']);
  assert.is(sha256Of(server.image, bytes), sha256Of(source, bytes), 'the full copy');
  for (let round = 0; round < 3; round++) {
    ddDirect(source, 2048 + round * 4096, 64);
    ddDirect(source, 40000 + round * 16, 8);
    const [r] = JSON.parse(runDpsrOk(env, ['sync', 'remote', '--json', '--quiet-period', '0.2'])).syncs;
    assert.is(r.fullCopyBytes, 0);
    assert.ok(r.copiedBytes < 1 << 20, `copied only what changed: ${r.copiedBytes}`);
    assert.is(sha256Of(server.image, bytes), sha256Of(source, bytes), `sync ${round + 1}`);
  }
  const st = JSON.parse(runDpsrOk(env, ['status', '--drive', server.uri, '--json']));
  assert.is(st.label.pairName, 'remote');
  assert.is(st.unappliedTransaction, null);
  runDpsrOk(env, ['verify', 'remote']);
  ddDirect(source, 100, 8);
  assert.is(runDpsr(env, ['verify', 'remote']).status, 1, 'verify sees a change not synced yet');
});

test('the server killed mid-sync, before and after the commit: one clear line; restarted, the next sync is exact without a full copy', () => {
  const { source, bytes } = pairedSource();
  const image = fx.image('export.img', EXPORT_MIB);
  let server = serve({ image });
  runDpsrOk(env, ['pair', source, server.uri, '--name', 'remote']);
  // A sync's writes to the export: the label, the journal's head (open), the label naming the
  // transaction, the journal's data, its descriptors, the head (commit), the writes in place, the
  // label. Killed at the 3rd (nothing committed) and at the 7th (committed, not applied).
  for (const when of [3, 7]) {
    server.stop();
    for (let i = 0; i < 4; i++) ddDirect(source, 1024 + i * 8192 + when, 256);
    // One worker thread: strace counts the calls of each thread.
    server = serve({ image, sock: server.sock, args: ['--threads=1'],
      prefix: ['strace', '-f', '-qq', '-o', '/dev/null', '-e', 'trace=pwrite64', '-e', `inject=pwrite64:signal=SIGKILL:when=${when}`] });
    const r = runDpsr(env, ['sync', 'remote', '--quiet-period', '0.2']);
    assert.is(r.status, 1, r.stderr);
    assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /the NBD server went away/);
    server.stop();
    server = serve({ image, sock: server.sock });
    const [rep] = JSON.parse(runDpsrOk(env, ['sync', 'remote', '--json', '--quiet-period', '0.2'])).syncs;
    assert.is(rep.fullCopyBytes, 0, 'no full copy again');
    assert.ok(rep.copiedBytes + rep.comparedBytes < bytes / 2, `only what changed: copied ${rep.copiedBytes}, compared ${rep.comparedBytes}`);
    assert.is(sha256Of(image, bytes), sha256Of(source, bytes), `killed at write ${when}, then synced`);
  }
});

test('the server killed mid-full-copy: pair fails in one line; restarted, the next sync finishes the copy, exact', () => {
  const { source, bytes } = pairedSource();
  const image = fx.image('export.img', EXPORT_MIB);
  // pair's writes: the label, the journal's head voided, then the copy in 2 MiB writes: killed at the 6th.
  let server = serve({ image, args: ['--threads=1'],
    prefix: ['strace', '-f', '-qq', '-o', '/dev/null', '-e', 'trace=pwrite64', '-e', 'inject=pwrite64:signal=SIGKILL:when=6'] });
  const r = runDpsr(env, ['pair', source, server.uri, '--name', 'remote']);
  assert.is(r.status, 1, r.stderr);
  assert.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, /the NBD server went away/);
  assert.is.not(sha256Of(image, bytes), sha256Of(source, bytes), 'the copy was cut short');
  server.stop();
  server = serve({ image, sock: server.sock });
  ddDirect(source, 8192, 64);
  const [rep] = JSON.parse(runDpsrOk(env, ['sync', 'remote', '--json', '--quiet-period', '0.2'])).syncs;
  assert.ok(rep.fullCopyBytes > 0, 'the copy was finished');
  assert.is(sha256Of(image, bytes), sha256Of(source, bytes));
});

test('pair over TLS-PSK on 127.0.0.1: exact; a wrong key and a plain server are refused in one line', async () => {
  const { source, bytes } = pairedSource();
  const psk = pskFile('keys.psk');
  const port = String(await freePort());
  const uri = `nbds://dpsr@127.0.0.1:${port}/?tls-psk-file=${psk}`;
  const server = serve({ listen: ['-i', '127.0.0.1', '-p', port], args: ['--tls=require', `--tls-psk=${psk}`], uri });
  const wrong = pskFile('wrong.psk');
  const before = sha256Of(server.image);
  refused(['pair', source, `nbds://dpsr@127.0.0.1:${port}/?tls-psk-file=${wrong}`, '--name', 'tls'], 3, /TLS/);
  refused(['pair', source, `nbd://127.0.0.1:${port}/`, '--name', 'tls'], 3, /TLS/);
  assert.is(sha256Of(server.image), before, 'nothing written');
  assert.equal(pairsNamed(), []);
  runDpsrOk(env, ['pair', source, uri, '--name', 'tls']);
  ddDirect(source, 4096, 64);
  runDpsrOk(env, ['sync', 'tls', '--quiet-period', '0.2']);
  assert.is(sha256Of(server.image, bytes), sha256Of(source, bytes));
});

test('refused in one line, nothing written: wrong export, too small, read-only, carries data, unreachable, plain TCP off the host, a key others can read', () => {
  const { source } = pairedSource();
  const strict = serve({ args: ['--filter=exportname'], exportArgs: ['exportname=good', 'exportname-strict=true'] });
  const cases: Array<{ server?: Server; uri: string; status: number; says: RegExp }> = [];
  cases.push({ server: strict, uri: strict.uri.replace('nbd+unix:///', 'nbd+unix:///bad'), status: 3, says: /no such export/ });
  const small = serve({ sizeMiB: SOURCE_MIB + 1 });
  cases.push({ server: small, uri: small.uri, status: 3, says: /too small|smaller/ });
  const ro = serve({ args: ['-r'] });
  cases.push({ server: ro, uri: ro.uri, status: 3, says: /read-only/ });
  const used = serve();
  fs.writeFileSync(used.image, crypto.randomBytes(4096), { flag: 'r+' }); // a header of something
  cases.push({ server: used, uri: used.uri, status: 3, says: /carries data/ });
  cases.push({ uri: `nbd+unix:///?socket=${path.join(fx.dir, 'nobody.sock')}`, status: 1, says: /cannot connect/ });
  cases.push({ uri: 'nbd://127.0.0.1:1/', status: 1, says: /cannot connect.*refused/i });
  cases.push({ uri: 'nbd://192.0.2.1/disk', status: 3, says: /unencrypted.*--insecure/ });
  cases.push({ uri: `nbds://192.0.2.1/disk?tls-psk-file=${pskFile('open.psk', 0o644)}`, status: 3, says: /readable by root alone/ });
  for (const c of cases) {
    const before = c.server ? sha256Of(c.server.image) : null;
    refused(['pair', source, c.uri, '--name', 'bad'], c.status, c.says);
    if (c.server) assert.is(sha256Of(c.server.image), before, `${c.uri}: nothing written`);
  }
  assert.equal(pairsNamed(), []);
  runDpsrOk(env, ['pair', source, strict.uri.replace('nbd+unix:///', 'nbd+unix:///good'), '--name', 'good']);
});

test.run();
