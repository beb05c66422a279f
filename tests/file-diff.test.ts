// diffTrees (src/restore/file-diff.ts) and planRestore (src/restore/file-restore.ts) on two small trees in a
// temporary directory: one plays the source (or the destination), the other the image.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RefusedError } from '../src/base/errors.js';
import { diffTrees } from '../src/restore/file-diff.js';
import { planRestore } from '../src/restore/file-restore.js';

const T0 = new Date('2026-01-01T00:00:00Z');
const T1 = new Date('2026-01-02T00:00:00Z');

/** Two fresh roots, source and image, under one temporary directory removed after fn. */
function withTrees(fn: (source: string, image: string) => void): void {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-diff-'));
  try {
    const source = path.join(dir, 'source');
    const image = path.join(dir, 'image');
    fs.mkdirSync(source);
    fs.mkdirSync(image);
    fn(source, image);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Writes a file with a given content and mtime, making its parents. */
function put(root: string, rel: string, content: string, mtime = T0): void {
  const file = path.join(root, rel);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, content);
  fs.utimesSync(file, mtime, mtime);
}

/** The same file on both sides. */
function both(source: string, image: string, rel: string, content: string): void {
  put(source, rel, content);
  put(image, rel, content);
}

const summary = (entries: ReturnType<typeof diffTrees>) => entries.map((e) => `${e.change} ${e.path} ${e.why.join(',')}`.trim());

test('equal trees differ in nothing, whatever the directories\' own mtimes', () => withTrees((source, image) => {
  both(source, image, 'etc/hosts', 'localhost\n');
  fs.utimesSync(path.join(source, 'etc'), T1, T1);
  assert.equal(diffTrees(source, image, ''), []);
}));

test('changed, deleted and added entries are reported by their path in the file system, in name order', () => withTrees((source, image) => {
  both(source, image, 'a/same', 'x');
  put(source, 'a/grown', 'longer');
  put(image, 'a/grown', 'short');
  put(source, 'a/touched', 'same', T1);
  put(image, 'a/touched', 'same');
  put(image, 'a/gone', 'old');
  put(source, 'a/new', 'fresh');
  assert.equal(summary(diffTrees(source, image, '')), ['deleted a/gone', 'changed a/grown size', 'added a/new', 'changed a/touched mtime']);
  assert.equal(summary(diffTrees(source, image, 'a/grown')), ['changed a/grown size'], 'one entry');
  assert.equal(diffTrees(source, image, 'nowhere'), [], 'on neither side');
}));

test('mode, symlink target and type changes are named; a symlink\'s own mode is not compared', () => withTrees((source, image) => {
  both(source, image, 'run.sh', '#!/bin/sh\n');
  fs.chmodSync(path.join(source, 'run.sh'), 0o755);
  fs.chmodSync(path.join(image, 'run.sh'), 0o644);
  fs.symlinkSync('/etc/new', path.join(source, 'link'));
  fs.symlinkSync('/etc/old', path.join(image, 'link'));
  fs.mkdirSync(path.join(source, 'was-file'));
  put(image, 'was-file', 'x');
  const entries = diffTrees(source, image, '');
  assert.equal(summary(entries), ['changed link target', 'changed run.sh mode', 'changed was-file type']);
  assert.equal([entries[1].source?.mode, entries[1].image?.mode], [0o755, 0o644]);
  assert.equal([entries[0].source?.target, entries[0].image?.target], ['/etc/new', '/etc/old']);
}));

test('a directory on one side only is one entry, with the files and bytes it holds', () => withTrees((source, image) => {
  put(image, 'old/a', '12345');
  put(image, 'old/sub/b', '123');
  const [e] = diffTrees(source, image, '');
  assert.equal([e.change, e.path, e.image?.type, e.image?.files, e.image?.bytes, e.source], ['deleted', 'old', 'dir', 2, 8, null]);
}));

test('files of equal size and mtime differ only by content, and only when content is asked for', () => withTrees((source, image) => {
  put(source, 'data.bin', 'abcd');
  put(image, 'data.bin', 'abce');
  assert.equal(diffTrees(source, image, ''), []);
  assert.equal(summary(diffTrees(source, image, '', { content: true })), ['changed data.bin content']);
}));

test('a restore plan creates what is missing, replaces what is older, fixes attributes, and keeps what only the destination has', () => withTrees((dest, image) => {
  put(image, 'home/me/missing', 'from the image', T1);
  put(image, 'home/me/older', 'the image\'s copy', T1);
  put(dest, 'home/me/older', 'earlier', T0);
  both(dest, image, 'home/me/mode', 'x');
  fs.chmodSync(path.join(dest, 'home/me/mode'), 0o600);
  put(dest, 'home/me/extra', 'mine');
  const plan = planRestore([{ imageBase: image, destBase: dest, name: 'home/me' }], { content: false });
  const actions = plan.entries.map((e) => `${e.action} ${path.relative(dest, e.dest)}`);
  assert.equal(actions, ['keep home/me/extra', 'create home/me/missing', 'attributes home/me/mode', 'replace home/me/older']);
  assert.equal(plan.conflicts, []);
}));

test('a restore plan names as conflicts a file newer at the destination and a directory the image has as a file', () => withTrees((dest, image) => {
  put(image, 'notes', 'old', T0);
  put(dest, 'notes', 'edited since', T1);
  put(image, 'cache', 'a file in the image', T1);
  put(dest, 'cache/x', 'a tree on the destination', T0);
  const plan = planRestore([{ imageBase: image, destBase: dest, name: '' }], { content: false });
  assert.equal(plan.conflicts.map((c) => path.relative(dest, c.dest)).sort(), ['cache', 'notes']);
}));

test('a restore plan refuses a path that passes through a symlink in the image', () => withTrees((dest, image) => {
  fs.symlinkSync('/etc', path.join(image, 'etc-link'));
  try {
    planRestore([{ imageBase: image, destBase: dest, name: 'etc-link/passwd' }], { content: false });
    assert.unreachable('planned');
  } catch (err) {
    assert.instance(err, RefusedError);
    assert.is((err as RefusedError).code, 'ESYMLINKPATH');
  }
}));

test.run();
