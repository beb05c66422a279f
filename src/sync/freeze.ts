// Freezing file systems for a point-in-time cut, always thawed: by us, or by
// a watchdog process at a hard deadline or when we die (EOF on its stdin).
// Between freeze and thaw the caller writes nothing to any file system.
import { execFileSync, spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DpsrError } from '../base/errors.js';
import { native } from '../base/native.js';

const watchdogScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'freeze-watchdog.js');

export interface ThawReport {
  durationMs: number;
  /** The watchdog thawed first (deadline): the cut taken during the freeze is not trustworthy. */
  thawedByWatchdog: boolean;
}

export interface FrozenSet {
  readonly mounts: string[];
  thaw(): Promise<ThawReport>;
}

function lines(child: { stdout: Readable }): () => Promise<Record<string, unknown> | null> {
  const queue: string[] = [];
  let waiting: ((l: string | null) => void) | null = null;
  let buf = '';
  let ended = false;
  child.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (waiting) { const w = waiting; waiting = null; w(l); } else queue.push(l);
    }
  });
  child.stdout.on('end', () => { ended = true; if (waiting) { const w = waiting; waiting = null; w(null); } });
  return () => new Promise((resolve) => {
    const take = (l: string | null) => resolve(l === null ? null : JSON.parse(l));
    if (queue.length) take(queue.shift()!);
    else if (ended) take(null);
    else waiting = take;
  });
}

/**
 * syncfs() each file system (so the freeze has little to flush), start the
 * watchdog, then FIFREEZE them in order. On any failure what was frozen is
 * thawed again before the error is thrown.
 */
export async function freeze(mounts: string[], deadlineMs: number, readOnlyMounts: string[] = []): Promise<FrozenSet> {
  if (mounts.length + readOnlyMounts.length === 0) throw new DpsrError('nothing to freeze', 'EFAIL');
  execFileSync('sync', ['-f', ...mounts, ...readOnlyMounts]); // syncfs(2)
  const args = [watchdogScript, String(deadlineMs), ...mounts, ...(readOnlyMounts.length ? ['--ro', ...readOnlyMounts] : [])];
  const child = spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const next = lines(child);
  const ready = await next();
  if (ready?.event !== 'ready') throw new DpsrError('the freeze watchdog did not start', 'EWATCHDOG');
  const fds = mounts.map((m) => fs.openSync(m, 'r'));
  const frozen: number[] = [];
  const started = performance.now();
  const release = async (): Promise<ThawReport> => {
    let thawedByWatchdog = false;
    for (const fd of frozen) {
      try {
        native().fiThaw(fd);
      } catch (err) {
        if ((err as { code?: string }).code === 'EINVAL') thawedByWatchdog = true; // not frozen any more
        else throw err;
      }
    }
    const durationMs = performance.now() - started;
    for (const m of remounted) execFileSync('mount', ['-o', 'remount,rw', m]);
    child.stdin.end('thawed\n');
    const last = await next();
    if (last?.event === 'thawed') thawedByWatchdog = true;
    fds.forEach((fd) => fs.closeSync(fd));
    return { durationMs, thawedByWatchdog };
  };
  const remounted: string[] = [];
  try {
    // Before any freeze: `mount` itself must not meet a frozen file system.
    for (const m of readOnlyMounts) {
      execFileSync('mount', ['-o', 'remount,ro', m], { stdio: ['ignore', 'ignore', 'pipe'] });
      remounted.push(m);
    }
    for (const fd of fds) {
      native().fiFreeze(fd);
      frozen.push(fd);
    }
  } catch (err) {
    await release();
    const code = (err as { code?: string }).code;
    if (code === 'EBUSY' && remounted.length === readOnlyMounts.length) {
      // Each file system is frozen once (mounts.writableFileSystemsOf): EBUSY is someone else's freeze.
      const m = mounts[frozen.length];
      throw new DpsrError(`cannot freeze ${m}: it is frozen already, by another program (fsfreeze -f, a backup agent): ` +
        `no point in time can be taken while it is; thaw it (fsfreeze -u ${m}) when that program is done`, 'EFROZEN');
    }
    const what = remounted.length < readOnlyMounts.length ? `remount ${readOnlyMounts[remounted.length]} read-only` : `freeze ${mounts[frozen.length]}`;
    throw new DpsrError(`cannot ${what}: ${(err as Error).message.split('\n')[0]}`, 'EFREEZE', { errno: code, cause: err });
  }
  return { mounts, thaw: release };
}
