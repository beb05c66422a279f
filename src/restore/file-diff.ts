// Two trees compared entry by entry (the source's file system now and the
// DPSR drive's image): what changed, what exists only in the image (deleted
// since the sync), what exists only on the source (new since the sync).
// Reads only; the comparison of two entries is pure.
import fs from 'node:fs';
import path from 'node:path';
import { RefusedError } from '../base/errors.js';
import { unreadableExtentOf } from './image-mount.js';

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

export interface FileMeta {
  type: EntryType;
  sizeBytes: number;
  mtimeNs: bigint;
  mode: number; // permission bits with setuid, setgid, sticky (& 0o7777)
  uid: number;
  gid: number;
  target?: string; // a symlink's
  /** A directory on one side only: what it holds, all of it. */
  files?: number;
  bytes?: number;
}

/** changed: on both sides, differing; deleted: only in the image; added: only on the source. */
export type Change = 'changed' | 'deleted' | 'added';
export type Difference = 'type' | 'size' | 'mtime' | 'mode' | 'owner' | 'target' | 'content';

export interface DiffEntry {
  path: string; // inside the file system, no leading '/'
  change: Change;
  why: Difference[]; // for 'changed'
  source: FileMeta | null;
  image: FileMeta | null;
}

export interface DiffOptions {
  /** Also compare the bytes of regular files whose size and mtime are equal. */
  content?: boolean;
}

const typeOf = (st: fs.BigIntStats): EntryType =>
  st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';

function metaOf(file: string, st: fs.BigIntStats): FileMeta {
  const type = typeOf(st);
  const meta: FileMeta = {
    type, sizeBytes: Number(st.size), mtimeNs: st.mtimeNs, mode: Number(st.mode) & 0o7777, uid: Number(st.uid), gid: Number(st.gid),
  };
  if (type === 'symlink') meta.target = fs.readlinkSync(file);
  return meta;
}

/** lstat, or null when the entry is not there (a live tree may lose it between readdir and lstat). */
function lstatOrNull(file: string): fs.BigIntStats | null {
  try {
    return fs.lstatSync(file, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}

/**
 * How two entries of the same path differ. Directories are compared by
 * type, mode and owner only: their size and mtime change whenever an entry
 * in them does, which the entries themselves already show. Xattrs and ACLs
 * are not compared (their change shows in ctime only, which a copy never keeps).
 */
export function compareMeta(source: FileMeta, image: FileMeta): Difference[] {
  if (source.type !== image.type) return ['type'];
  const why: Difference[] = [];
  if (source.type === 'file') {
    if (source.sizeBytes !== image.sizeBytes) why.push('size');
    if (source.mtimeNs !== image.mtimeNs) why.push('mtime');
  }
  if (source.type === 'symlink' && source.target !== image.target) why.push('target');
  if (source.type !== 'symlink' && source.mode !== image.mode) why.push('mode'); // a symlink's mode means nothing on Linux
  if (source.uid !== image.uid || source.gid !== image.gid) why.push('owner');
  return why;
}

function sameBytes(a: string, b: string): boolean {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  const ba = Buffer.alloc(1 << 20);
  const bb = Buffer.alloc(1 << 20);
  try {
    for (let pos = 0; ;) {
      const na = fs.readSync(fa, ba, 0, ba.length, pos);
      const nb = readImage(fb, b, bb, pos);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
      pos += na;
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

/** A read of the image's copy of a file; a failure names the DPSR drive and the offset beneath it. */
function readImage(fd: number, file: string, buf: Buffer, pos: number): number {
  try {
    return fs.readSync(fd, buf, 0, buf.length, pos);
  } catch (err) {
    throw unreadableExtentOf(file, 'DPSR drive') ?? err;
  }
}

/** Files and bytes under a directory (regular files' sizes), for a directory on one side only. */
function totals(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const full = path.join(d, e.name);
      if (e.isDirectory()) walk(full);
      else {
        files++;
        if (e.isFile()) bytes += fs.lstatSync(full).size;
      }
    }
  };
  walk(dir);
  return { files, bytes };
}

function oneSided(file: string, st: fs.BigIntStats): FileMeta {
  const meta = metaOf(file, st);
  if (meta.type === 'dir') Object.assign(meta, totals(file));
  return meta;
}

/**
 * Compares the entry `rel` (and, for two directories, everything under it)
 * of two trees. `sourceRoot` and `imageRoot` are the file systems' roots;
 * entries are reported by their path inside the file system.
 */
export function diffTrees(sourceRoot: string, imageRoot: string, rel: string, opts: DiffOptions = {}): DiffEntry[] {
  const out: DiffEntry[] = [];
  const visit = (r: string) => {
    const s = path.join(sourceRoot, r);
    const i = path.join(imageRoot, r);
    const ss = lstatOrNull(s);
    const is = lstatOrNull(i);
    if (!ss && !is) return;
    if (!ss) {
      out.push({ path: r, change: 'deleted', why: [], source: null, image: oneSided(i, is!) });
      return;
    }
    if (!is) {
      out.push({ path: r, change: 'added', why: [], source: oneSided(s, ss), image: null });
      return;
    }
    const sm = metaOf(s, ss);
    const im = metaOf(i, is);
    const why = compareMeta(sm, im);
    if (opts.content && sm.type === 'file' && im.type === 'file' && !why.includes('size') && !sameBytes(s, i)) why.push('content');
    if (why.length > 0) out.push({ path: r, change: 'changed', why, source: sm, image: im });
    if (sm.type === 'dir' && im.type === 'dir') {
      const names = new Set([...fs.readdirSync(s), ...fs.readdirSync(i)]);
      for (const name of [...names].sort()) visit(r === '' ? name : `${r}/${name}`);
    }
  };
  visit(rel);
  return out;
}

/** An entry directly in a folder, on either side or both: a file manager's listing, unchanged entries too. */
export interface ListedEntry {
  name: string;
  change: Change | null; // null: the same on both sides
  why: Difference[];
  source: FileMeta | null;
  image: FileMeta | null;
}

/**
 * The entries directly in the folder `rel` of either tree, sorted by name, each compared as
 * diffTrees compares it but without descending (the page expands folders one at a time).
 */
export function listBoth(sourceRoot: string, imageRoot: string, rel: string, opts: DiffOptions = {}): ListedEntry[] {
  const names = new Set<string>();
  for (const root of [sourceRoot, imageRoot]) {
    const dir = path.join(root, rel);
    if (lstatOrNull(dir)?.isDirectory()) for (const name of fs.readdirSync(dir)) names.add(name);
  }
  const out: ListedEntry[] = [];
  for (const name of [...names].sort()) {
    const r = rel === '' ? name : `${rel}/${name}`;
    const [s, i] = [path.join(sourceRoot, r), path.join(imageRoot, r)];
    const [ss, is] = [lstatOrNull(s), lstatOrNull(i)];
    const source = ss && metaOf(s, ss);
    const image = is && metaOf(i, is);
    if (!source && !image) continue; // gone between readdir and lstat
    const why = source && image ? compareMeta(source, image) : [];
    if (opts.content && source?.type === 'file' && image?.type === 'file' && why.length === 0 && !sameBytes(s, i)) why.push('content');
    const change: Change | null = !source ? 'deleted' : !image ? 'added' : why.length > 0 ? 'changed' : null;
    out.push({ name, change, why, source, image });
  }
  return out;
}

/**
 * The path of `rel` under `root`, refusing a path that passes through a
 * symlink: in a mounted image an absolute link would lead out of it, into
 * the running system. The last component may be a link (it is the entry).
 */
export function pathInside(root: string, rel: string, what: string): string {
  let here = root;
  const parts = rel === '' ? [] : rel.split('/');
  for (let k = 0; k < parts.length - 1; k++) {
    here = path.join(here, parts[k]);
    const st = lstatOrNull(here);
    if (st?.isSymbolicLink()) {
      throw new RefusedError(`${parts.slice(0, k + 1).join('/')} is a symbolic link (→ ${fs.readlinkSync(here)}) in ${what}: give the path it leads to`, 'ESYMLINKPATH');
    }
    if (!st) break;
  }
  return path.join(root, rel);
}
