// nbdkit serving an image for a test (file plugin, in the foreground, on a
// unix socket or a TCP port), stopped by the fixture even when the test
// fails; and what TLS tests need: free ports and PSK files.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Fixture } from './fixture.js';

const napMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

export interface NbdServer { uri: string; image: string; sock: string; child: ChildProcess; stop(): void }

export interface ServeOptions {
  /** The image to serve (made of `sizeMiB` unless given). */
  image?: string;
  sizeMiB?: number;
  sock?: string;
  /** nbdkit options before the plugin. */
  args?: string[];
  /** Where it listens instead of a unix socket (e.g. ['-i', '127.0.0.1', '-p', PORT]); `uri` then says how to reach it. */
  listen?: string[];
  uri?: string;
  /** Runs nbdkit under another command (strace, to kill it at an exact write). */
  prefix?: string[];
  /** The file plugin's parameters after the image. */
  exportArgs?: string[];
}

/** nbdkit in the foreground over an image, until the fixture (or stop()) kills it. */
export function serveNbd(fx: Fixture, opts: ServeOptions = {}): NbdServer {
  const image = opts.image ?? fx.image(`export-${crypto.randomBytes(3).toString('hex')}.img`, opts.sizeMiB ?? 64);
  const sock = opts.sock ?? path.join(fx.dir, `nbd-${crypto.randomBytes(3).toString('hex')}.sock`);
  fs.rmSync(sock, { force: true }); // left by a server killed before
  const listen = opts.listen ?? ['--unix', sock];
  const argv = [...(opts.prefix ?? []), 'nbdkit', '-f', ...listen, ...(opts.args ?? []), 'file', image, ...(opts.exportArgs ?? [])];
  const log = path.join(fx.dir, 'nbdkit.log');
  // Its own process group: stopping it kills strace and nbdkit together (a tracee outlives its tracer).
  const child = spawn(argv[0], argv.slice(1), { detached: true, stdio: ['ignore', 'ignore', fs.openSync(log, 'a')] });
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ }
    for (const deadline = Date.now() + 10_000; child.exitCode === null && child.signalCode === null && groupAlive(child.pid!) && Date.now() < deadline;) napMs(20);
  };
  fx.defer(`stop nbdkit on ${image}`, stop);
  const ready = opts.listen ? () => portOpen(listen[listen.indexOf('-p') + 1]) : () => fs.existsSync(sock);
  for (const deadline = Date.now() + 20_000; !ready(); napMs(20)) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`nbdkit did not start: ${fs.readFileSync(log, 'utf8')}`);
  }
  return { uri: opts.uri ?? `nbd+unix:///?socket=${sock}`, image, sock, child, stop };
}

function portOpen(port: string): boolean {
  return spawnSync('bash', ['-c', `exec 3<>/dev/tcp/127.0.0.1/${port}`], { stdio: 'ignore' }).status === 0;
}

/** Whether any process of group `pgid` is still alive (not a zombie). */
function groupAlive(pgid: number): boolean {
  return spawnSync('pgrep', ['-g', String(pgid)], { stdio: 'ignore' }).status === 0;
}

/** A TCP port nobody listens on now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

/** A TLS-PSK key file for user "dpsr" in the fixture's directory. */
export function pskFile(fx: Fixture, name: string, mode = 0o600): string {
  const file = path.join(fx.dir, name);
  fs.writeFileSync(file, `dpsr:${crypto.randomBytes(32).toString('hex')}\n`, { mode });
  fs.chmodSync(file, mode);
  return file;
}
