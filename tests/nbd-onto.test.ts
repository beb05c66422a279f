// dpsr restore NAME --whole --onto DEV: the DPSR drive's image (or a restore
// point's) written onto a new disk, as after the source died. From a drive on
// an NBD export and from a local one: the new disk equals the image by sha256,
// the export is never written. Every refusal (the pair's source or DPSR drive,
// too small, mounted, carrying a file system, not a block device, misused
// options) is one line with its exit status, and the disk's sha256 is unchanged.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import { type Fixture, ddDirect, eachTestFreshCli, randomFill, runDpsr, runDpsrOk, sha256Of } from './helpers/fixture.js';
import { serveNbd } from './helpers/nbd-server.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const MiB = 1 << 20;
const SOURCE_MIB = 32;
const bytes = SOURCE_MIB * MiB;
const ok = (...args: string[]) => runDpsrOk(env, args);
const json = (...args: string[]) => JSON.parse(ok(...args, '--json'));
const viewsLeft = () => fs.readFileSync('/proc/mounts', 'utf8').split('\n').filter((l) => l.includes('dpsr-export-'));

/** Fails unless `args` exit with `status` and one line of stderr that matches, with `dev` unchanged by sha256. */
function refused(args: string[], status: number, says: RegExp, dev: string): void {
  const before = sha256Of(dev);
  const r = runDpsr(env, args);
  assert.is(r.status, status, `dpsr ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  assert.is(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr, says);
  assert.is(sha256Of(dev), before, `dpsr ${args.join(' ')} wrote nothing to ${dev}`);
}

/** A source of random data, synced twice: the hashes of the image at the first sync's generation and at the second. */
function twoSyncs(name: string, source: string): { g1: number; first: string; second: string } {
  ddDirect(source, 2048, 256);
  const g1 = json('sync', name).syncs[0].generation as number;
  const first = sha256Of(source, bytes);
  ddDirect(source, 30_000, 512);
  json('sync', name);
  const second = sha256Of(source, bytes);
  ddDirect(source, 9000, 64); // not synced: the new disk must get the image, not the source
  return { g1, first, second };
}

test('from a drive on an NBD export: the whole image, and a restore point with --at, onto a blank disk, exact by sha256; each refusal one line, nothing written; the export never written', () => {
  const source = fx.loop(SOURCE_MIB);
  randomFill(source, SOURCE_MIB);
  const server = serveNbd(fx, { sizeMiB: 2 * SOURCE_MIB + 64 + 32 });
  ok('pair', source, server.uri, '--name', 'r', '--history', 'all');
  const { g1, first, second } = twoSyncs('r', source);
  const exportBefore = sha256Of(server.image);

  const blank = fx.loop(SOURCE_MIB + 8);
  const small = fx.loop(SOURCE_MIB - 1);
  refused(['restore', 'r', '--whole', '--onto', small, '--yes'], 3, /too small; nothing written/, small);
  refused(['restore', 'r', '--whole', '--onto', source, '--yes'], 3, /is pair r's source: .*leave out --onto/, source);
  const used = fx.loop(SOURCE_MIB + 8);
  fx.mkfs(used, 'ext4');
  refused(['restore', 'r', '--whole', '--onto', used, '--yes'], 3, /carries an ext4 file system.*use --force; nothing written/, used);
  const mnt = fx.mount(used, ['-o', 'ro']);
  refused(['restore', 'r', '--whole', '--onto', used, '--yes', '--force'], 3, /is in use: it is mounted on .*; nothing written/, used);
  fx.unmount(mnt);
  const file = path.join(fx.dir, 'plain-file');
  fs.writeFileSync(file, 'not a disk');
  refused(['restore', 'r', '--whole', '--onto', file, '--yes'], 3, /not a block device/, file);
  refused(['restore', 'r', '--partition', '1', '--onto', blank, '--yes'], 2, /--onto DEV goes with --whole/, blank);
  refused(['restore', 'r', '--whole', '--force', '--yes'], 2, /--force goes with --onto/, source);
  refused(['restore', 'r', '--whole', '--onto', blank], 2, /confirm on a terminal, or pass --yes; nothing written/, blank); // no terminal here
  refused(['rollback', '--drive', server.uri, '--source', blank, '--yes'], 2, /without the state directory a rollback reads a local DPSR drive/, blank);
  assert.is(sha256Of(server.image), exportBefore, 'the refusals wrote nothing to the export');

  const blankBefore = sha256Of(blank);
  const plan = json('restore', 'r', '--whole', '--onto', blank, '--dry-run').restore;
  assert.is(plan.scope, 'onto');
  assert.is(plan.source, blank);
  assert.ok(plan.warnings.some((w: string) => /8\.0 MiB larger than the image/.test(w)), plan.warnings.join('; '));
  assert.is(sha256Of(blank), blankBefore, 'a dry run writes nothing');

  const done = json('restore', 'r', '--whole', '--onto', blank, '--yes').restore;
  assert.is(done.writtenBytes, bytes);
  assert.is(sha256Of(blank, bytes), second, 'the new disk is the remote image');
  assert.is.not(sha256Of(source, bytes), second, 'and not the source, written since');

  // The disk now carries the image's data but no signature blkid knows (random data): no --force needed.
  json('restore', 'r', '--whole', '--at', String(g1), '--onto', blank, '--yes');
  assert.is(sha256Of(blank, bytes), first, 'the new disk is restore point g1');
  assert.is(sha256Of(server.image), exportBefore, 'restoring wrote nothing to the export');
  assert.equal(viewsLeft(), [], 'every read-only view closed');
  const st = json('status', 'r').pairs[0];
  assert.ok(st.dirtyBytes > 0, 'the unsynced write is still dirty: the tracker was not touched');
});

test('from a local DPSR drive: onto a blank disk, exact by sha256; the pair\'s own DPSR drive and another pair\'s source are refused', () => {
  const { source, drive } = fx.pairDevices(SOURCE_MIB);
  randomFill(source, SOURCE_MIB);
  ok('pair', source, drive, '--name', 'l');
  const { second } = twoSyncs('l', source);
  const other = fx.pairDevices(SOURCE_MIB);
  ok('pair', other.source, other.drive, '--name', 'other');
  const blank = fx.loop(SOURCE_MIB);
  refused(['restore', 'l', '--whole', '--onto', drive, '--yes', '--force'], 3, /is pair l's DPSR drive, the image to restore/, drive);
  refused(['restore', 'l', '--whole', '--onto', other.source, '--yes', '--force'], 3, /is pair other's source: unpair it first/, other.source);
  const done = json('restore', 'l', '--whole', '--onto', blank, '--yes').restore;
  assert.is(done.writtenBytes, bytes);
  assert.is(sha256Of(blank), second, 'the new disk is the local image');
});

test.run();
