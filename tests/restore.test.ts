// dpsr restore on real pairs (loop devices, ext4 and xfs, made with the CLI):
// deleted and altered files and folders come back with their content,
// mode, owner, times, xattrs, ACLs, symlinks and hard links; refusals
// (newer files, unmounted source, unknown pair) and --dry-run write nothing;
// --content finds damage that kept a file's size and mtime.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Fixture, runDpsr, runDpsrOk, sh, sha256Of, eachTestFreshCli } from './helpers/fixture.js';

let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args);

const ok = (...args: string[]) => runDpsrOk(env, args);

function devices(type: 'ext4' | 'xfs') {
  const mib = type === 'xfs' ? 320 : 96; // mkfs.xfs wants over ~300 MB
  const source = fx.loop(mib);
  const drive = fx.loop(mib + 64);
  // ext4 without lazy init, so nothing but us writes to it once mounted (the source's hash is stable).
  if (type === 'ext4') sh('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', source]);
  else fx.mkfs(source, 'xfs');
  return { source, drive, mnt: fx.mount(source, ['-o', 'noatime']) };
}

/** The source device's hash once everything the file system holds is written out. */
function settledHash(dev: string): string {
  sh('sync', []);
  return sha256Of(dev);
}

/** docs/: a file with owner, mode, xattr and ACL; a tree with hard links (also across folders), symlinks, a default ACL. */
function richTree(mnt: string): void {
  const d = path.join(mnt, 'docs');
  fs.mkdirSync(path.join(d, 'tree/sub'), { recursive: true });
  fs.writeFileSync(path.join(d, 'a.bin'), crypto.randomBytes(200_000));
  fs.chownSync(path.join(d, 'a.bin'), 1234, 5678);
  fs.chmodSync(path.join(d, 'a.bin'), 0o640);
  sh('setfattr', ['-n', 'user.note', '-v', 'hello', path.join(d, 'a.bin')]);
  sh('setfacl', ['-m', 'u:4321:r', path.join(d, 'a.bin')]);
  fs.writeFileSync(path.join(d, 'tree/x.bin'), crypto.randomBytes(70_000));
  fs.linkSync(path.join(d, 'tree/x.bin'), path.join(d, 'tree/h.bin'));
  fs.symlinkSync('x.bin', path.join(d, 'tree/rel-link'));
  fs.symlinkSync('/etc/hostname', path.join(d, 'tree/abs-link')); // restored as a link, never followed
  fs.writeFileSync(path.join(d, 'tree/sub/y.txt'), 'why\n');
  sh('setfattr', ['-n', 'user.k', '-v', 'v', path.join(d, 'tree/sub/y.txt')]);
  fs.linkSync(path.join(d, 'tree/x.bin'), path.join(d, 'tree/sub/h2.bin'));
  fs.chownSync(path.join(d, 'tree/sub'), 1111, 2222);
  fs.chmodSync(path.join(d, 'tree/sub'), 0o750);
  sh('setfacl', ['-d', '-m', 'u:4321:rx', path.join(d, 'tree/sub')]);
  sh('touch', ['-h', '-d', '2020-02-02 02:02:02.123456789', path.join(d, 'tree/rel-link')]);
}

interface Snap { type: string; mode: number; uid: number; gid: number; mtimeNs: string; sha?: string; target?: string; xattrs: string; links?: string[] }

/** Everything restore must keep, of `rel` under `base` and below it (hard links as the other paths of the same inode). */
function snapshot(base: string, rel: string): Record<string, Snap> {
  const out: Record<string, Snap> = {};
  const inodes = new Map<bigint, string[]>();
  const visit = (r: string) => {
    const full = path.join(base, r);
    const st = fs.lstatSync(full, { bigint: true });
    const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
    const xattrs = type === 'symlink' ? '' : sh('getfattr', ['-h', '-d', '-m', '-', '--absolute-names', full]).split('\n').slice(1).join('\n');
    out[r] = {
      type, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid), mtimeNs: st.mtimeNs.toString(), xattrs,
      ...(type === 'file' ? { sha: crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex') } : {}),
      ...(type === 'symlink' ? { target: fs.readlinkSync(full) } : {}),
    };
    if (type === 'file') inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), r]);
    if (type === 'dir') for (const name of fs.readdirSync(full).sort()) visit(path.join(r, name));
  };
  visit(rel);
  for (const group of inodes.values()) if (group.length > 1) for (const r of group) out[r].links = group.filter((g) => g !== r);
  return out;
}

test('ext4: deleted and altered files come back in place; a newer file needs --overwrite; refusals and --dry-run write nothing', () => {
  const { source, drive, mnt } = devices('ext4');
  richTree(mnt);
  const expected = snapshot(mnt, 'docs');
  assert.ok(expected['docs/tree/h.bin'].links?.includes('docs/tree/sub/h2.bin'), 'the fixture has hard links');
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p');

  fs.rmSync(path.join(mnt, 'docs/tree'), { recursive: true });
  fs.writeFileSync(path.join(mnt, 'docs/a.bin'), 'damaged'); // newer than the image's copy
  fs.writeFileSync(path.join(mnt, 'docs/new.txt'), 'made after the sync');
  const drive0 = sha256Of(drive);
  const source0 = settledHash(source);

  const refused = dpsr('restore', 'p', 'docs');
  assert.is(refused.status, 3, refused.stderr);
  assert.match(refused.stderr, new RegExp(`${path.join(mnt, 'docs/a.bin')}.*nothing restored.*--overwrite`));
  assert.is(settledHash(source), source0, 'a refused restore wrote to the source');
  assert.not.ok(fs.existsSync(path.join(mnt, 'docs/tree')));

  const dry = dpsr('restore', 'p', path.join(mnt, 'docs'), '--dry-run');
  assert.is(dry.status, 0, dry.stderr);
  assert.match(dry.stdout, new RegExp(`create +${path.join(mnt, 'docs/tree')}/ \\(6 files`));
  assert.match(dry.stdout, /replace +.*docs\/a\.bin .*NEWER at the destination/);
  assert.match(dry.stdout, /keep +.*docs\/new\.txt/);
  assert.match(dry.stdout, /dry run, nothing written/);
  assert.is(settledHash(source), source0, '--dry-run wrote to the source');

  const unknown = dpsr('restore', 'nope', 'docs');
  assert.is(unknown.status, 1);
  assert.match(unknown.stderr, /no pair named nope/);
  const missing = dpsr('restore', 'p', 'docs/never-was');
  assert.is(missing.status, 1);
  assert.match(missing.stderr, /not in the image/);
  assert.is(settledHash(source), source0);

  const r = JSON.parse(ok('restore', 'p', 'docs', '--overwrite', '--json'));
  assert.equal(r.summary, { create: 1, replace: 1, attributes: 0, keep: 1, newer: 1 });
  const now = snapshot(mnt, 'docs');
  assert.ok(now['docs/new.txt'], 'a file made after the sync is kept');
  delete now['docs/new.txt'];
  delete (now.docs as Partial<Snap>).mtimeNs; // the folder's mtime: new.txt is in it, whose creation set it
  delete (expected.docs as Partial<Snap>).mtimeNs;
  assert.equal(now, expected);
  assert.match(sh('getfacl', ['-p', path.join(mnt, 'docs/a.bin')]), /user:4321:r--/);
  assert.match(sh('getfacl', ['-p', path.join(mnt, 'docs/tree/sub')]), /default:user:4321:r-x/);
  assert.is(sha256Of(drive), drive0, 'restore changed the DPSR drive');
  assert.match(ok('diff', 'p', 'docs'), /1 difference: 0 changed, 0 deleted since the sync, 1 new since the sync/);
});

test('xfs: a folder and a file restored under --to keep links, owners, xattrs and ACLs; an unmounted source is refused', () => {
  const { source, drive, mnt } = devices('xfs');
  richTree(mnt);
  const expectedTree = snapshot(path.join(mnt, 'docs'), 'tree');
  const expectedFile = snapshot(path.join(mnt, 'docs'), 'a.bin');
  ok('pair', source, drive, '--name', 'p');
  ok('sync', 'p');
  fs.rmSync(path.join(mnt, 'docs'), { recursive: true });
  const drive0 = sha256Of(drive);

  const to = path.join(fx.dir, 'restored');
  const r = JSON.parse(ok('restore', 'p', path.join(mnt, 'docs/tree'), 'docs/a.bin', '--to', to, '--json'));
  assert.is(r.to, to);
  assert.equal(r.entries.map((e: { path: string; action: string }) => [e.path, e.action]),
    [[path.join(to, 'tree'), 'create'], [path.join(to, 'a.bin'), 'create']]);
  assert.equal(snapshot(to, 'tree'), expectedTree);
  assert.equal(snapshot(to, 'a.bin'), expectedFile);
  assert.is(fs.readlinkSync(path.join(to, 'tree/abs-link')), '/etc/hostname');
  assert.is(fs.statSync(path.join(to, 'tree/x.bin')).nlink, 3);

  // Again: everything matches, nothing to do.
  const again = JSON.parse(ok('restore', 'p', 'docs/tree', '--to', to, '--json'));
  assert.equal(again.entries, []);

  // Damage that keeps size and mtime: invisible to the quick check, found and repaired with --content.
  const damaged = path.join(to, 'tree/sub/y.txt');
  const stamp = path.join(fx.dir, 'stamp');
  sh('touch', ['-r', damaged, stamp]); // keeps the nanoseconds
  fs.writeFileSync(damaged, 'WHY\n');
  sh('touch', ['-r', stamp, damaged]);
  assert.equal(JSON.parse(ok('restore', 'p', 'docs/tree', '--to', to, '--json')).entries, [], 'size and mtime alone see no change');
  const byContent = JSON.parse(ok('restore', 'p', 'docs/tree', '--to', to, '--content', '--json'));
  assert.equal(byContent.entries.map((e: { path: string; action: string; why: string[] }) => [e.path, e.action, e.why]), [[damaged, 'replace', ['content']]]);
  assert.equal(snapshot(to, 'tree'), expectedTree);

  // The source unmounted: restoring in place is refused, and nothing is written anywhere.
  sh('umount', [mnt]);
  const source0 = sha256Of(source);
  const refused = dpsr('restore', 'p', 'docs/a.bin');
  assert.is(refused.status, 3, refused.stderr);
  assert.match(refused.stderr, /not mounted.*--to DIR/);
  assert.is(sha256Of(source), source0);
  assert.is(sha256Of(drive), drive0, 'restore changed the DPSR drive');
});

test.run();
