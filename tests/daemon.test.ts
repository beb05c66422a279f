// The daemon: owner while it runs, a flush through its socket returns when
// the image is committed, a kill -9 loses nothing, the socket is root only.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { DPSR_BIN, Fixture, ddDirect, runDpsr, sh, sha256Of, freshCliFixture } from './helpers/fixture.js';

const MiB = 1 << 20;
let fx: Fixture;
let env: NodeJS.ProcessEnv;
test.before.each(() => {
  ({ fx, env } = freshCliFixture());
});
test.after.each(() => fx.cleanup());

const dpsr = (...args: string[]) => runDpsr(env, args, 60_000);
const hash = sha256Of;

async function startDaemon(...args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [DPSR_BIN, 'daemon', ...args], { env });
  fx.defer('stop daemon', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => { out += d; if (out.includes('listening')) resolve(); });
    child.stderr!.on('data', (d) => { out += d; });
    child.on('exit', () => reject(new Error(`daemon exited: ${out}`)));
  });
  return child;
}

function pairOf(mib: number) {
  const source = fx.loop(mib);
  const drive = fx.loop(mib + 64);
  sh('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', `count=${mib}`, 'oflag=direct', 'status=none']);
  const r = dpsr('pair', source, drive, '--name', 'p');
  assert.is(r.status, 0, r.stderr);
  return { source, drive, bytes: mib * MiB };
}

test('a flush through the daemon returns when committed: the copy is exact', async () => {
  const { source, drive, bytes } = pairOf(32);
  const daemon = await startDaemon();
  for (let i = 0; i < 20; i++) ddDirect(source, i * 1000, 8);
  const r = dpsr('sync', 'p', '--json', '--quiet-period', '0.2');
  assert.is(r.status, 0, r.stderr);
  assert.is(JSON.parse(r.stdout).syncs[0].image, 'point-in-time');
  assert.is(hash(drive, bytes), hash(source, bytes));
  const st = dpsr('status', 'p', '--json');
  assert.is(st.status, 0, 'status reads while the daemon owns tracking');
  daemon.kill('SIGTERM');
  await new Promise((resolve) => daemon.on('exit', resolve));
  assert.not.ok(fs.existsSync(env.DPSR_SOCKET!), 'the socket is removed');
});

test('kill -9 of the daemon under writes, restart: nothing lost, exact after a sync', async () => {
  const { source, drive, bytes } = pairOf(32);
  const first = await startDaemon('--tick', '0.2');
  const writer = spawn('sh', ['-c', `i=0; while :; do dd if=/dev/urandom of=${source} bs=4k count=1 seek=$((i * 37 % 8000)) oflag=direct conv=notrunc status=none; i=$((i+1)); done`]);
  fx.defer('stop writer', () => writer.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 800));
  first.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 300));
  await new Promise((resolve) => { writer.on('exit', resolve); writer.kill('SIGKILL'); });
  await startDaemon();
  const r = dpsr('sync', 'p', '--json', '--quiet-period', '0.2');
  assert.is(r.status, 0, r.stderr);
  assert.is(hash(drive, bytes), hash(source, bytes));
});

test('with an interval the daemon keeps the copy current by itself', async () => {
  const { source, drive, bytes } = pairOf(32);
  await startDaemon('--interval', '0.5', '--tick', '0.2');
  for (let i = 0; i < 10; i++) ddDirect(source, 5000 + i * 64, 8);
  let equal = false;
  for (let i = 0; i < 40 && !equal; i++) {
    await new Promise((r) => setTimeout(r, 250));
    equal = hash(drive, bytes) === hash(source, bytes);
  }
  assert.ok(equal, 'the daemon synced the change within 10 s');
});

test('the socket refuses a client that is not root', async () => {
  pairOf(16);
  await startDaemon();
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all',
    process.execPath, DPSR_BIN, 'sync', 'p'], { env, encoding: 'utf8', timeout: 20_000 });
  assert.is(r.status, 3, r.stderr);
  assert.match(r.stderr, /permission denied|needs root/);
});

test('a bad configuration: exit 2 with the key at fault, nothing loaded', () => {
  fs.writeFileSync(env.DPSR_CONFIG!, '[pairs.p]\npolicy = "sometimes"\n');
  const r = dpsr('daemon');
  assert.is(r.status, 2, r.stderr);
  assert.match(r.stderr, /pairs\.p\.policy/);
  assert.is(r.stderr.trim().split('\n').length, 1);
  assert.not.ok(fs.existsSync(env.DPSR_BPF_DIR!), 'nothing loaded');
});

test('a continuous policy from the configuration keeps the copy current', async () => {
  const { source, drive, bytes } = pairOf(32);
  fs.writeFileSync(env.DPSR_CONFIG!, 'tick = "200ms"\n[pairs.p]\npolicy = "continuous"\nrpo = "2s"\nmin_interval = "500ms"\n');
  await startDaemon();
  for (let i = 0; i < 10; i++) ddDirect(source, 7000 + i * 64, 8);
  let equal = false;
  for (let i = 0; i < 40 && !equal; i++) {
    await new Promise((r) => setTimeout(r, 250));
    equal = hash(drive, bytes) === hash(source, bytes);
  }
  assert.ok(equal, 'synced by policy within 10 s');
});

test.run();
