// One pair's DPSR drive, held by one dpsr command at a time: a sync writing
// it, or a diff or restore reading its mounted image (which must not change
// under the mount). A flock on <stateDir>/drive-<name>.lock, released when
// the holder ends or dies. Also the lock files themselves (the owner lock).
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Settings } from './defaults.js';
import { DpsrError } from './errors.js';
import { native } from './native.js';

const POLL_MS = 100;
// A sync usually ends within seconds, a restore within minutes; past this, say who waits for what.
const DEFAULT_WAIT_MS = 10 * 60_000;

/** Opens a lock file (making its directory), root's alone. */
function openLockFile(file: string): number {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  return fs.openSync(file, 'a+', 0o600);
}

/** The lock file's fd, held exclusively until closed; null when another process holds it. */
export function tryLockFile(file: string): number | null {
  const fd = openLockFile(file);
  if (native().flock(fd, 'ex', false)) return fd;
  fs.closeSync(fd);
  return null;
}

function driveLockPath(settings: Settings, pairName: string): string {
  return path.join(settings.stateDir, `drive-${pairName}.lock`);
}

export interface DriveLockOptions {
  /** How long to wait for the holder (polling: the addon's blocking flock would stall the event loop). */
  waitMs?: number;
  /** Called once when the lock is held by someone else and we start waiting. */
  onWait?: () => void;
}

// Locks this process holds: a flock taken again through another fd of the same process would wait for itself.
const held = new Set<string>();

/**
 * Runs fn holding the pair's drive lock (exclusive); waits for another
 * holder up to waitMs, then fails EBUSY. Re-entrant within a process (a
 * diff that finishes an interrupted sync's journal calls code that may take it too).
 */
export async function withDriveLock<T>(settings: Settings, pairName: string, fn: () => Promise<T>,
  opts: DriveLockOptions = {}): Promise<T> {
  const file = driveLockPath(settings, pairName);
  if (held.has(file)) return fn();
  const fd = openLockFile(file);
  try {
    const deadline = Date.now() + (opts.waitMs ?? DEFAULT_WAIT_MS);
    let told = false;
    while (!native().flock(fd, 'ex', false)) {
      if (Date.now() >= deadline) {
        throw new DpsrError(`pair ${pairName}: its DPSR drive is in use by another dpsr command (lock ${file} is held); try again when it ends`, 'EDRIVELOCKED');
      }
      if (!told) opts.onWait?.();
      told = true;
      await sleep(POLL_MS);
    }
    held.add(file);
    return await fn();
  } finally {
    held.delete(file);
    fs.closeSync(fd); // releases the lock
  }
}
