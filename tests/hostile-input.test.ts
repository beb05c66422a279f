// Damaged state and hostile command lines: a state database overwritten
// with garbage or cut short makes every command say so in one line and
// write nothing (it crashed node with a segmentation fault); fuzzed
// command lines end with one line and an exit status from the table,
// never a stack trace or a signal.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { open } from 'lmdb';
import path from 'node:path';
import { Fixture, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, sh as execSh, sha256Of } from './helpers/fixture.js';
import { mulberry32 } from './helpers/seeded-random.js';
import { describeTally, fuzzCommandLines, newTally, runFuzzCase } from './helpers/fuzz-args.js';
import { startDaemon } from './helpers/daemon-child.js';
import { ControlClient, frameReader, writeFrame } from '../src/daemon/protocol.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const oneLine = (stderr: string) => stderr.trim().split('\n').length === 1;

/** A pair p of a 16 MiB source of random data, synced once. */
function syncedPair(): { source: string; drive: string } {
  const { source, drive } = fx.pairDevices(16);
  randomFill(source, 16);
  runDpsrOk(env, ['pair', source, drive, '--name', 'p']);
  runDpsrOk(env, ['sync', 'p', '--quiet-period', '0.2']);
  return { source, drive };
}

test('a state database overwritten with garbage or cut short: every command says what and how out in one line, exit 1, nothing written', () => {
  const { source, drive } = syncedPair();
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

test('damaged records in a sound state database (a pair or tracker record of the wrong shape, or cut short): every command names the record and the way out in one line, exit 1 or 3, nothing written', async () => {
  const { source, drive } = syncedPair();
  randomFill(source, 1);
  const file = path.join(env.DPSR_STATE_DIR!, 'state.mdb');
  const good = fs.readFileSync(file);
  const before = [sha256Of(source), sha256Of(drive)];
  const db = () => open({ path: file, compression: false });
  let d = db();
  const pair = d.get(['pair', 'p']) as Record<string, unknown>;
  const range = d.get(['range', 'p']) as Record<string, unknown>;
  await d.close();
  const damages: Array<[string, string, unknown]> = [
    ['a pair record of garbage', 'pair', 'garbage'],
    ['a pair record without its devices', 'pair', { ...pair, source: null, drive: 7 }],
    ['a pair record cut short', 'pair', { name: 'p', id: pair.id }],
    ['a tracker record whose dirty set is cut short', 'range', { ...range, dirty: (range.dirty as Buffer).subarray(0, 6) }],
    ['a tracker record of garbage', 'range', [1, 2, 3]],
  ];
  for (const [what, kind, value] of damages) {
    fs.writeFileSync(file, good);
    d = db();
    await d.put([kind, 'p'], value);
    await d.close();
    // The tracker's record is read by the commands that track: status, sync, rollback.
    const commands = [['status'], ['status', 'p', '--json'], ['sync', 'p'], ['rollback', 'p', '--yes'], ...(kind === 'pair' ? [['verify', 'p'], ['diff', 'p'], ['unpair', 'p']] : [])];
    for (const args of commands) {
      const r = runDpsr(env, args);
      // A command that tracks takes a pair it cannot adopt as a problem of that pair: refused, exit 3.
      assert.ok(r.status === 1 || r.status === 3, `${what}: dpsr ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
      assert.ok(oneLine(r.stderr), `${what}: one line: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`the state database ${file} holds a damaged (tracker )?record of pair p .*Move it aside`), `${what}: dpsr ${args.join(' ')}: ${r.stderr}`);
    }
    assert.equal([sha256Of(source), sha256Of(drive)], before, `${what}: nothing written to either device`);
  }
  console.log(`  e.g. ${runDpsr(env, ['status']).stderr.trim()}`);
  fs.writeFileSync(file, good);
  assert.is(runDpsr(env, ['status', 'p']).status, 0, 'the database back: all is well');
  // Unpairing is the way out of a damaged tracker record: it needs none of it.
  d = db();
  await d.put(['range', 'p'], [1, 2, 3]);
  await d.close();
  const unpaired = runDpsr(env, ['unpair', 'p']);
  assert.is(unpaired.status, 0, `unpair with a damaged tracker record: ${unpaired.stderr}`);
  assert.is(sha256Of(source), before[0], 'unpair wrote nothing to the source');
  const label = runDpsr(env, ['status', '--drive', drive]);
  assert.match(label.stdout + label.stderr, /carries no dpsr label/, 'unpair erased the label');
  const st = runDpsr(env, ['status', '--json']);
  assert.is(st.status, 0, st.stderr);
  assert.equal(JSON.parse(st.stdout).pairs, [], 'no pair left, and no damaged record');
});

test('a half-written configuration: status says what is wrong with it and how out (it said nothing), and goes on; the daemon refuses it in one line; nothing written', async () => {
  const { source, drive } = syncedPair();
  const whole = 'tick = "1s"\n[pairs.p]\npolicy = "continuous"\nrpo = "30s"\nmin_interval = "10s"\n';
  const before = [sha256Of(source), sha256Of(drive)];
  for (const cut of [whole.indexOf('continuous') + 4, whole.indexOf('[pairs.p]') + 3, whole.indexOf('30s') + 1]) {
    fs.writeFileSync(env.DPSR_CONFIG!, whole.slice(0, cut));
    const st = runDpsr(env, ['status', 'p']);
    assert.is(st.status, 0, st.stderr);
    assert.ok(oneLine(st.stderr), st.stderr);
    assert.match(st.stderr, new RegExp(`dpsr: warning: ${env.DPSR_CONFIG}: .*fix the file`));
    const daemon = runDpsr(env, ['daemon'], 30_000);
    assert.is(daemon.status, 2, `the daemon refuses it: ${daemon.stderr}`);
    assert.ok(oneLine(daemon.stderr), daemon.stderr);
  }
  console.log(`  ${runDpsr(env, ['status', 'p']).stderr.trim()}`);
  assert.equal([sha256Of(source), sha256Of(drive)], before, 'nothing written');
  fs.writeFileSync(env.DPSR_CONFIG!, whole);
  assert.is(runDpsr(env, ['status', 'p']).stderr, '', 'a whole file: nothing said');
});

test('contradictory or empty choices are usage errors: exit 2, one line, before any device is opened', () => {
  const { source, drive } = fx.pairDevices(16);
  const before = [sha256Of(source), sha256Of(drive)];
  // `sync --all p` exited 1 ("no pair named p"), `status p --drive` and `--timeout 0` went on to open devices,
  // `pair --reserve 8M --no-reserve` paired without a tail (the last of the two won).
  for (const args of [['sync', '--all', 'p'], ['sync'], ['sync', 'p', '--timeout', '0'], ['status', 'p', '--drive', drive],
    ['rollback'], ['rollback', 'p', '--source', source], ['restore', 'p'], ['restore', 'p', 'x', '--whole'],
    ['restore', 'p', '--partition', '1', '--whole'], ['restore', 'p', '--partition', '0'], ['pair', source], ['verify', 'p', 'q'],
    ['pair', source, drive, '--reserve', '8M', '--no-reserve'], ['pair', source, drive, '--no-reserve', '--reserve', '8M']]) {
    const r = runDpsr(env, args);
    assert.is(r.status, 2, `dpsr ${args.join(' ')}: ${r.stderr}`);
    assert.ok(oneLine(r.stderr), `one line: ${r.stderr}`);
  }
  assert.equal([sha256Of(source), sha256Of(drive)], before, 'nothing written');
});

test('fuzzed command lines for every command, naming a real pair and its devices: an exit status from the table, one line, never a stack trace; refused ones write nothing', () => {
  const { source, drive } = syncedPair();
  const target = { pair: 'p', source, drive, dir: fx.dir };
  const tally = newTally();
  const hashes = [sha256Of(source), sha256Of(drive)];
  for (const args of fuzzCommandLines(17, 6, target)) runFuzzCase(env, args, target, tally);
  console.log(`  ${tally.cases} command lines: ${describeTally(tally)}`);
  assert.equal(tally.problems, [], tally.problems.join('\n'));
  if (!tally.byStatus.has(0) && !tally.byStatus.has(1) && !tally.byStatus.has(4)) assert.equal([sha256Of(source), sha256Of(drive)], hashes, 'nothing written');
});

test('a damaged label or journal head: one bad slot is read past, both bad say so with the way out, a torn journal head is no transaction; nothing written', () => {
  const { source, drive } = syncedPair();
  const size = Number(execSh('blockdev', ['--getsize64', drive]));
  const poke = (pos: number, bytes: Buffer) => {
    execSh('blockdev', ['--setrw', drive]);
    const fd = fs.openSync(drive, 'r+');
    fs.writeSync(fd, bytes, 0, bytes.length, pos);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    execSh('blockdev', ['--setro', drive]);
  };
  const rescue = { ...env, DPSR_STATE_DIR: path.join(fx.dir, 'rescue-state') };
  const readOnly = (what: string, args: string[], status: number, says: RegExp) => {
    const before = [sha256Of(source), sha256Of(drive)];
    const r = runDpsr(rescue, args);
    assert.is(r.status, status, `${what}: dpsr ${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr + r.stdout, says, `${what}: dpsr ${args.join(' ')}`);
    if (r.status !== 0) assert.ok(oneLine(r.stderr), `${what}: one line: ${r.stderr}`);
    assert.equal([sha256Of(source), sha256Of(drive)], before, `${what}: dpsr ${args.join(' ')} wrote nothing`);
    return r.stderr.trim();
  };
  // The slot holding the older label: which one that is depends on how many label writes came before.
  const seqAt = (pos: number) => {
    const b = Buffer.alloc(4096);
    const fd = fs.openSync(drive, 'r');
    fs.readSync(fd, b, 0, 4096, pos);
    fs.closeSync(fd);
    return (JSON.parse(b.subarray(48, 48 + b.readUInt32LE(12)).toString('utf8')) as { seq: number }).seq;
  };
  const [older, newer] = seqAt(size - 8192) < seqAt(size - 4096) ? [size - 8192, size - 4096] : [size - 4096, size - 8192];
  poke(older + 100, Buffer.from('rot')); // the payload of the older slot
  readOnly('one slot damaged', ['status', '--drive', drive], 0, /DPSR drive of pair p/);
  readOnly('one slot damaged', ['recover', drive], 0, /nothing to apply/);
  poke(newer + 100, Buffer.from('rot'));
  let said = '';
  for (const [args, status] of [[['status', '--drive', drive], 4], [['recover', drive], 4], [['rollback', '--drive', drive, '--yes'], 4]] as const) {
    said = readOnly('both slots damaged', [...args], status, /fails its checksum \(both slots damaged\).*dpsr pair SOURCE .* --force/);
  }
  console.log(`  ${said}`);
  const other = fx.pairDevices(16);
  readOnly('no label at all', ['status', '--drive', other.drive], 4, /carries no dpsr label: not a DPSR drive/);
  // A torn journal head (the journal starts where the image ends): no transaction to apply.
  const { source: s2, drive: d2 } = other;
  randomFill(s2, 16);
  runDpsrOk(env, ['pair', s2, d2, '--name', 'q']);
  runDpsrOk(env, ['sync', 'q', '--quiet-period', '0.2']);
  randomFill(s2, 1);
  runDpsrOk(env, ['sync', 'q', '--quiet-period', '0.2']); // a transaction committed and applied
  execSh('blockdev', ['--setrw', d2]);
  const fd = fs.openSync(d2, 'r+');
  fs.writeSync(fd, Buffer.from('torn'), 0, 4, 16 * 2 ** 20 + 40);
  fs.closeSync(fd);
  execSh('blockdev', ['--setro', d2]);
  const image = sha256Of(d2, 16 * 2 ** 20);
  for (const args of [['status', '--drive', d2], ['recover', d2]]) {
    const r = runDpsr(rescue, args);
    assert.is(r.status, 0, `torn journal head: dpsr ${args.join(' ')}: ${r.stderr}`);
  }
  assert.is(sha256Of(d2, 16 * 2 ** 20), image, 'the image untouched');
  randomFill(s2, 1);
  runDpsrOk(env, ['sync', 'q', '--quiet-period', '0.2']);
  assert.is(sha256Of(d2, 16 * 2 ** 20), sha256Of(s2), 'the next sync writes a new transaction over it: exact');
});

/** Waits for `cond` (an event), failing with `what` rather than hanging if it never comes. */
async function until(cond: () => boolean, what: () => string): Promise<void> {
  for (const deadline = Date.now() + 60_000; !cond();) {
    if (Date.now() > deadline) assert.unreachable(`never happened: ${what()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A raw connection to the control socket: what it was sent back, and whether the daemon hung up. */
async function rawClient(socketPath: string) {
  const sock = net.createConnection(socketPath);
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject); });
  const replies: Array<{ id: number; ok: boolean; error?: { message: string; code: string } }> = [];
  let closed = false;
  sock.on('data', frameReader((m) => replies.push(m as (typeof replies)[number]), () => {}));
  sock.on('close', () => { closed = true; });
  sock.on('error', () => {});
  return { sock, replies, closed: () => closed };
}

test('the control socket fed garbage: the daemon answers an error to each malformed frame, hangs up on an unreadable stream, never crashes or stalls other clients', async () => {
  const daemon = await startDaemon(fx, env, '--tick', '0.2');
  const socketPath = env.DPSR_SOCKET!;
  const answers = async () => {
    const c = await ControlClient.connect(socketPath); // a hello with the version check
    try {
      return await c!.request({ command: 'status' });
    } finally {
      c!.close();
    }
  };
  // Clients that stall: one connected and silent, one mid-header, one announcing a 60 MiB frame and sending nothing.
  const stalled = [await rawClient(socketPath), await rawClient(socketPath), await rawClient(socketPath)];
  stalled[1].sock.write(Buffer.from([7, 0]));
  stalled[2].sock.write(Buffer.from([0, 0, 0xc0, 3]));
  // Whole frames that are not requests: each is answered with EPROTO, and the connection goes on.
  const malformed: unknown[] = [null, 42, 'status', [1, 2], {}, { id: 'x', command: 'status' }, { id: 3, command: 'frob' },
    { id: 4, command: 'sync', names: 5, all: false }, { id: 5, command: 'sync', names: [1], all: false }, { id: 6, command: 'sync', names: [] },
    { id: 7, command: 'rollback', name: 'p', scope: 'x', dryRun: false }, { id: 8, command: 'rollback', name: 'p', scope: { kind: 'partition', number: -1 }, dryRun: true },
    { id: 9, command: 'status', name: { toString: 1 } }, { id: 10, command: '__proto__' }, { id: 11, command: 'hello' }];
  const c = await rawClient(socketPath);
  for (const m of malformed) writeFrame(c.sock, m);
  writeFrame(c.sock, { id: 99, command: 'hello', version: 999 }); // an unknown version: the daemon says its own
  writeFrame(c.sock, { id: 100, command: 'status' });
  await until(() => c.replies.length >= malformed.length + 2 || c.closed(), () => `replies to every frame: ${JSON.stringify(c.replies)}`);
  assert.is(c.replies.length, malformed.length + 2, `every frame answered: ${JSON.stringify(c.replies)}`);
  const errors = c.replies.filter((r) => !r.ok);
  assert.is(errors.length, malformed.length, JSON.stringify(c.replies));
  for (const e of errors) assert.is(e.error!.code, 'EPROTO', JSON.stringify(e));
  console.log(`  e.g. ${errors.slice(0, 3).map((e) => e.error!.message).join('; ')}`);
  assert.ok(c.replies.some((r) => r.id === 99 && r.ok), 'hello answered with the daemon\'s version');
  assert.ok(c.replies.some((r) => r.id === 100 && r.ok), 'a good request after bad ones on the same connection');
  // Streams that cannot be followed: an error, then the daemon hangs up.
  const random = mulberry32(23);
  for (let i = 0; i < 20; i++) {
    const bytes = Buffer.from(Array.from({ length: 4 + Math.floor(random() * 200) }, () => Math.floor(random() * 256)));
    if (i % 2 === 0) bytes.writeUInt32LE(bytes.length - 4, 0); // whole frames of random bytes, undecodable or not
    if (i === 1) bytes.writeUInt32LE(0xffffffff, 0); // an absurd length
    const r = await rawClient(socketPath);
    r.sock.write(bytes);
    if (i % 2 === 1) r.sock.end();
    await until(() => r.closed() || r.replies.length > 0, () => `an answer or a hang-up after ${bytes.toString('hex').slice(0, 80)}`);
    r.sock.destroy();
    assert.is(daemon.exitCode, null, `the daemon lives after ${bytes.toString('hex').slice(0, 80)}`);
  }
  assert.equal(await answers(), [], 'another client is answered while the stalled ones hold their connections');
  for (const s of stalled) assert.not.ok(s.closed(), 'a stalled client is left alone (it costs a socket, not a turn)');
  // SIGTERM with the stalled clients and the malformed one still connected: it exited only once they left.
  await daemon.stop();
  assert.is(daemon.exitCode, 0, daemon.output());
  await until(() => [...stalled, c].every((s) => s.closed()), () => 'their connections closed');
});

test.run();
