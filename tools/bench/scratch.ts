// A benchmark's scratch space: a temp dir, loop devices over image files in
// it (direct I/O), and cleanups run on exit or Ctrl-C, whatever happened.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Settings } from '../../src/base/defaults.js';
import { native } from '../../src/base/native.js';

export const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** `parent`: where the temp dir goes (default the system's; /dev/shm keeps images in memory). */
export function scratchSpace(prefix: string, parent = os.tmpdir()) {
  const dir = fs.mkdtempSync(path.join(parent, prefix));
  const cleanups: Array<() => void> = [() => fs.rmSync(dir, { recursive: true, force: true })];
  const cleanup = () => {
    for (const fn of cleanups.splice(0).reverse()) {
      try { fn(); } catch (e) { console.error(`cleanup: ${(e as Error).message}`); }
    }
  };
  process.on('exit', cleanup);
  process.on('SIGINT', () => { cleanup(); process.exit(130); });
  const attach = (name: string, bytes: number): string => {
    const img = path.join(dir, name);
    fs.closeSync(fs.openSync(img, 'w'));
    fs.truncateSync(img, bytes);
    const dev = run('losetup', ['-f', '--show', '--direct-io=on', img]).trim();
    cleanups.push(() => { run('blockdev', ['--setrw', dev]); run('losetup', ['-d', dev]); });
    return dev;
  };
  return { dir, cleanups, cleanup, attach };
}

/** A bench's own dpsr state, socket, lock and pin dir (inside `dir`), detached by the cleanups. */
export function benchSettings(dir: string, tag: string, cleanups: Array<() => void>): Settings {
  const settings: Settings = {
    stateDir: path.join(dir, 'state'), socketPath: path.join(dir, 'dpsr.sock'), ownerLockPath: path.join(dir, 'owner.lock'),
    pinDir: `/sys/fs/bpf/dpsr-bench-${tag}-${process.pid}`, kernelBtfPath: '/sys/kernel/btf/vmlinux', configPath: '/nonexistent',
  };
  cleanups.push(() => { if (fs.existsSync(settings.pinDir)) native().detach(settings.pinDir); });
  return settings;
}
