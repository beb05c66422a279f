// A read-only local block device showing an NBD export, for the tools that
// read a DPSR drive by path (mount, blkid, sfdisk, a restore point's
// server): nbdfuse -r exposes the export as a read-only file, and a
// read-only direct-I/O loop device over that file is the device (direct
// I/O: every read reaches the server, nothing stale from a page cache).
// Nothing can write the export through it. The caller closes it (and
// registers close for exit and signals).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DpsrError } from '../base/errors.js';
import { redactUri } from './nbd-uri.js';

export interface NbdView {
  /** The read-only loop device over the export. */
  device: string;
  close(): void;
}

const napMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const START_MS = 60_000; // an upper bound: the export was just reached by dpsr's own connection

/** Serves `uri` (already checked by checkNbdSecurity and reached once) as a read-only loop device. */
export async function openNbdView(uri: string): Promise<NbdView> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-export-'));
  const mnt = path.join(dir, 'mnt');
  const file = path.join(mnt, 'export');
  const pidFile = path.join(dir, 'nbdfuse.pid');
  const logFile = path.join(dir, 'nbdfuse.log');
  fs.mkdirSync(mnt);
  const log = fs.openSync(logFile, 'w');
  const fuse = spawn('nbdfuse', ['-r', '-P', pidFile, file, uri], { stdio: ['ignore', 'ignore', log] });
  fuse.unref();
  fs.closeSync(log);
  let loop: string | null = null;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    if (loop) {
      try { execFileSync('losetup', ['-d', loop], { stdio: 'ignore' }); } catch { /* gone */ }
      // The detach completes after losetup returns; the FUSE file is busy until then.
      for (let i = 0; i < 250 && fs.existsSync(`/sys/block/${path.basename(loop)}/loop`); i++) napMs(20);
    }
    try {
      execFileSync('fusermount3', ['-u', mnt], { stdio: 'ignore' });
    } catch {
      try { execFileSync('fusermount3', ['-u', '-z', mnt], { stdio: 'ignore' }); } catch { /* not mounted */ }
      fuse.kill('SIGKILL');
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const fail = (why: string): never => {
    close();
    throw new DpsrError(`a read-only view of the DPSR drive ${redactUri(uri)} (nbdfuse) failed: ${why}`, 'EMOUNT');
  };
  const exited = new Promise<void>((resolve) => fuse.once('exit', () => resolve()));
  for (const deadline = Date.now() + START_MS; !(fs.existsSync(pidFile) && fs.statSync(pidFile).size > 0);) {
    if (fuse.exitCode !== null || Date.now() > deadline) {
      fail(fs.readFileSync(logFile, 'utf8').trim().split('\n').pop() || `exit status ${fuse.exitCode ?? 'none yet'}`);
    }
    await Promise.race([sleep(50), exited]);
  }
  try {
    loop = execFileSync('losetup', ['-r', '-f', '--show', '--direct-io=on', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (err) {
    fail(((err as { stderr?: string }).stderr || (err as Error).message).trim().split('\n')[0]);
  }
  return { device: loop!, close };
}
