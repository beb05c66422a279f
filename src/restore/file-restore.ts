// Files and folders copied back out of a mounted image: first a plan (what
// would be created or replaced, and which files on the source are newer
// than the image's copy), then the copy itself by rsync -aHAX, which keeps
// owner, mode, times, xattrs, ACLs, symlinks and hard links. Newer files are
// never replaced without `overwrite`; files only on the source are kept.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DpsrError, RefusedError } from '../base/errors.js';
import { type DiffEntry, type FileMeta, diffTrees, pathInside } from './file-diff.js';
import { unreadableExtentOf } from './image-mount.js';

/** One PATH to restore: `name` under `imageBase` in the image goes to `name` under `destBase`. */
export interface RestoreItem {
  imageBase: string;
  destBase: string;
  name: string; // relative, '' for the base itself
}

export type RestoreAction = 'create' | 'replace' | 'attributes' | 'keep';

export interface PlannedEntry {
  dest: string; // absolute path of the entry at its destination
  action: RestoreAction; // keep: only at the destination, left alone
  why: DiffEntry['why'];
  /** The destination's entry is newer than the image's (or a directory the image has as a file): replaced only with `overwrite`. */
  newer: boolean;
  image: FileMeta | null;
  existing: FileMeta | null;
}

export interface RestorePlan {
  items: RestoreItem[];
  /** Files of equal size and mtime were compared byte for byte (and are copied by content, not by rsync's quick check). */
  content: boolean;
  entries: PlannedEntry[];
  conflicts: PlannedEntry[];
}

function actionOf(e: DiffEntry): RestoreAction {
  if (e.change === 'deleted') return 'create';
  if (e.change === 'added') return 'keep';
  return e.why.some((w) => w !== 'mode' && w !== 'owner') ? 'replace' : 'attributes';
}

/** Replacing it would lose something newer: a later version of the file, or a whole directory tree. */
function isNewer(e: DiffEntry): boolean {
  if (e.change !== 'changed' || !e.source || !e.image) return false;
  if (e.why.includes('type')) return e.source.type === 'dir' || e.source.mtimeNs > e.image.mtimeNs;
  return e.source.type !== 'dir' && e.source.mtimeNs > e.image.mtimeNs;
}

/**
 * Compares each item's image entry with what is at its destination now;
 * changes nothing. With `content`, files whose size and mtime match are
 * compared byte for byte too: damage that kept both is found and replaced.
 */
export function planRestore(items: RestoreItem[], opts: { content: boolean }): RestorePlan {
  const entries: PlannedEntry[] = [];
  for (const item of items) {
    pathInside(item.imageBase, item.name, 'the image');
    pathInside(item.destBase, item.name, 'the destination');
    for (const e of diffTrees(item.destBase, item.imageBase, item.name, { content: opts.content })) {
      entries.push({
        dest: path.join(item.destBase, e.path), action: actionOf(e), why: e.why, newer: isNewer(e), image: e.image, existing: e.source,
      });
    }
  }
  return { items, entries, conflicts: entries.filter((e) => e.newer), content: opts.content };
}

/** The deepest directory of `dir` (relative) that exists under base: rsync creates the rest with the image's attributes. */
function existingAncestor(base: string, dir: string): string {
  let rel = dir === '.' ? '' : dir;
  while (rel !== '' && !fs.existsSync(path.join(base, rel))) {
    const up = path.dirname(rel);
    rel = up === '.' ? '' : up;
  }
  return rel;
}

function rsync(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('rsync', args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('error', (err) => reject(new DpsrError(`rsync: ${err.message} (install the Debian package rsync)`, 'ERSYNC')));
    child.on('exit', (code, signal) => {
      if (code === 0) return resolve();
      // A file it could not read from the image: the DPSR drive's failing read, by device and offset
      // (rsync keeps no partial file: what it could not read is not restored).
      const unreadable = /"([^"]+)": Input\/output error/.exec(stderr)?.[1];
      const cause = unreadable ? unreadableExtentOf(unreadable, 'DPSR drive') : null;
      if (cause) return reject(new DpsrError(`${cause.message}, under ${unreadable} in the image: the restore stopped, that file was not restored`, cause.code));
      reject(new DpsrError(`rsync ${signal ? `killed by ${signal}` : `failed (exit ${code})`}: ${stderr.trim().split('\n')[0] ?? ''}`, 'ERSYNC'));
    });
  });
}

/**
 * Copies every item as planned: one rsync per destination directory, so
 * hard links between the items it holds are kept. Missing parent
 * directories are created with the image's attributes; existing ones keep
 * theirs. Refuses (nothing copied) when the plan has conflicts and
 * `overwrite` is not given.
 */
export async function runRestore(plan: RestorePlan, opts: { overwrite: boolean }): Promise<void> {
  if (plan.conflicts.length > 0 && !opts.overwrite) {
    const shown = plan.conflicts.slice(0, 10).map((c) => c.existing?.type === 'dir' && c.image?.type !== 'dir'
      ? `${c.dest} (a directory on the source, a ${c.image?.type} in the image)` : c.dest);
    const more = plan.conflicts.length > shown.length ? ` and ${plan.conflicts.length - shown.length} more` : '';
    throw new RefusedError(`${plan.conflicts.length} entr${plan.conflicts.length === 1 ? 'y is' : 'ies are'} newer on the destination than in the image: ` +
      `${shown.join(', ')}${more}; nothing restored; --overwrite to replace them, or --to DIR to restore beside them`, 'ENEWER');
  }
  const groups = new Map<string, { dest: string; sources: string[] }>();
  for (const item of plan.items) {
    const anchor = existingAncestor(item.destBase, path.dirname(item.name));
    const rest = path.relative(anchor, item.name);
    const source = `${path.join(item.imageBase, anchor)}/./${rest}`;
    const dest = `${path.join(item.destBase, anchor)}/`;
    const g = groups.get(dest) ?? { dest, sources: [] };
    g.sources.push(source);
    groups.set(dest, g);
  }
  for (const g of groups.values()) {
    // -R: the path after '/./' is recreated under dest (implied directories with the image's attributes).
    // --numeric-ids: owners as the image holds them, not mapped through this system's user names.
    // --checksum: a file the plan found different by content alone would pass rsync's size-and-mtime check.
    await rsync(['-aHAX', '--numeric-ids', '-R', ...(plan.content ? ['--checksum'] : []), ...(opts.overwrite ? ['--force'] : []), ...g.sources, g.dest]);
  }
}
