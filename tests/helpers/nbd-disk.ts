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
  /**
   * The server dies (SIGKILL to nbdkit; nbdfuse goes with it): from now on every request
   * through the loop device fails, as for a disk pulled out mid-write.
   */
  killServer(): void;
  /**
   * After killServer: the loop device is detached (once nobody holds it open) and the same image
   * is served again and attached to the same loop node, its backing file the same FUSE file
   * (same path, device and inode): the same disk plugged back in.
   */
  replug(): void;
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
  let server = serve(fx, dir, fuseFile, nbdkitArgs(image));
  const dev = fx.attach(fuseFile);
  const fileId = () => { const st = fs.statSync(fuseFile); return `${st.dev}:${st.ino}`; };
  const servedFile = fileId();
  const detach = () => {
    sh('blockdev', ['--setrw', dev]);
    sh('losetup', ['-d', dev]); // with an opener left, the loop goes when it closes
    for (let i = 0; i < 500 && fs.existsSync(`/sys/block/${path.basename(dev)}/loop`); i++) napMs(20);
  };
  return {
    dev,
    image,
    fuseFile,
    stop: () => {
      if (server.stopped) return;
      detach();
      server.stop();
    },
    killServer: () => {
      const children = fs.readdirSync(`/proc/${server.pid}/task`)
        .flatMap((t) => fs.readFileSync(`/proc/${server.pid}/task/${t}/children`, 'utf8').trim().split(/\s+/)).filter(Boolean);
      for (const pid of children) process.kill(Number(pid), 'SIGKILL');
    },
    replug: () => {
      detach();
      // A FUSE mount takes the lowest free device number, which may be below the one the file
      // had (and then it would be another file to dpsr): each such number is held by a small
      // placeholder mount until the server gets the file's own number back.
      const placeholders: Array<{ stop(): void }> = [];
      try {
        server.stop();
        for (server = serve(fx, dir, fuseFile, nbdkitArgs(image)); fileId() !== servedFile; server = serve(fx, dir, fuseFile, nbdkitArgs(image))) {
          const [got, wanted] = [fileId(), servedFile].map((id) => Number(id.split(':')[0]));
          if (got > wanted || placeholders.length >= 50) throw new Error(`${fuseFile} came back as ${fileId()}, not ${servedFile} (taken by another mount)`);
          server.stop();
          const held = fs.mkdtempSync(path.join(dir, 'held-'));
          fs.mkdirSync(path.join(held, 'mnt'));
          placeholders.push(serve(fx, held, path.join(held, 'mnt', 'disk'), ['null', 'size=1M']));
        }
      } finally {
        for (const p of placeholders) p.stop();
      }
      fx.attach(fuseFile, dev);
    },
  };
}

/** `nbdfuse FILE --command nbdkit -s ARGS`, once the file is there; stop() unmounts it (or kills nbdfuse). */
function serve(fx: Fixture, dir: string, fuseFile: string, args: string[]): { pid: number; stopped: boolean; stop(): void } {
  const mnt = path.dirname(fuseFile);
  const pidFile = path.join(dir, 'nbdfuse.pid');
  const log = path.join(dir, 'server.log');
  fs.rmSync(pidFile, { force: true });
  const child = spawn('nbdfuse', ['-P', pidFile, fuseFile, '--command', 'nbdkit', '-s', ...args],
    { stdio: ['ignore', 'ignore', fs.openSync(log, 'a')] });
  const server = {
    pid: child.pid!,
    stopped: false,
    stop: () => {
      if (server.stopped) return;
      server.stopped = true;
      try {
        sh('fusermount3', ['-u', mnt]);
      } catch {
        child.kill('SIGKILL');
        try { sh('fusermount3', ['-u', '-z', mnt]); } catch { /* not mounted any more */ }
      }
    },
  };
  fx.defer(`stop nbdfuse ${mnt}`, () => server.stop());
  for (const deadline = Date.now() + 30_000; !fs.existsSync(pidFile) || fs.statSync(pidFile).size === 0; napMs(50)) {
    if (Date.now() > deadline || child.exitCode !== null) {
      throw new Error(`nbdfuse over nbdkit ${args.join(' ')} did not start: ${fs.readFileSync(log, 'utf8')}`);
    }
  }
  return server;
}

/** Writes an nbdkit Python plugin into the fixture's directory; returns its path. */
export function pythonPlugin(fx: Fixture, name: string, source: string): string {
  const file = path.join(fx.dir, `${name}.py`);
  fs.writeFileSync(file, source);
  return file;
}
