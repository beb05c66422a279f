// A block device served by nbdkit, for fault tests: the kernel here has no
// nbd client, device mapper or ublk, so nbdkit (with a plugin or filters)
// serves an image, nbdfuse (libnbd-bin) exposes the export as a file over
// FUSE, and a direct-I/O loop device over that file makes it a disk that
// dpsr pairs and tracks like any other (direct I/O: reads reach nbdkit,
// not the page cache; a flush of the loop reaches nbdkit as a flush).
// The fixture owns every piece and stops them in reverse order.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { type Fixture, sh } from './fixture.js';

export interface NbdDisk {
  /** The loop device. */
  dev: string;
  /** The image nbdkit serves (read it between commands: nothing is cached above it). */
  image: string;
  /** The FUSE file the loop device is attached to: a pair records it as the loop's backing file. */
  fuseFile: string;
  /** Detaches the loop device and stops nbdfuse and nbdkit (the image stays). */
  stop(): void;
}

const napMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * Serves a new image of `sizeMiB` through `nbdkit -s ARGS...`; `nbdkitArgs` gets the image's
 * path and returns the plugin, its parameters and filters (e.g. `['file', img]`).
 */
export function nbdDisk(fx: Fixture, sizeMiB: number, nbdkitArgs: (image: string) => string[]): NbdDisk {
  const dir = fs.mkdtempSync(path.join(fx.dir, 'nbd-'));
  const image = fx.image(`${path.basename(dir)}.img`, sizeMiB);
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  const fuseFile = path.join(mnt, 'disk');
  const pidFile = path.join(dir, 'nbdfuse.pid');
  const server = spawn('nbdfuse', ['-P', pidFile, fuseFile, '--command', 'nbdkit', '-s', ...nbdkitArgs(image)],
    { stdio: ['ignore', 'ignore', fs.openSync(path.join(dir, 'server.log'), 'w')] });
  let stopped = false;
  const stopServer = () => {
    try { sh('fusermount3', ['-u', mnt]); } catch { server.kill('SIGKILL'); }
  };
  fx.defer(`stop nbdfuse ${mnt}`, () => { if (!stopped) stopServer(); });
  for (const deadline = Date.now() + 30_000; !fs.existsSync(pidFile) || fs.statSync(pidFile).size === 0; napMs(50)) {
    if (Date.now() > deadline || server.exitCode !== null) {
      throw new Error(`nbdfuse over nbdkit ${nbdkitArgs(image).join(' ')} did not start: ${fs.readFileSync(path.join(dir, 'server.log'), 'utf8')}`);
    }
  }
  const dev = fx.attach(fuseFile);
  return {
    dev,
    image,
    fuseFile,
    stop: () => {
      if (stopped) return;
      sh('blockdev', ['--setrw', dev]);
      sh('losetup', ['-d', dev]);
      for (let i = 0; i < 100 && fs.existsSync(`/sys/block/${path.basename(dev)}/loop`); i++) napMs(20);
      stopServer();
      stopped = true;
    },
  };
}

/** Writes an nbdkit Python plugin into the fixture's directory; returns its path. */
export function pythonPlugin(fx: Fixture, name: string, source: string): string {
  const file = path.join(fx.dir, `${name}.py`);
  fs.writeFileSync(file, source);
  return file;
}
