// Owns every image, loop device, mount and pinned BPF object a test makes,
// and releases them in reverse order: in `after`, and on exit or signal even
// when a test failed.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'uvu';
import { ExtentSet } from '../../src/base/extents.js';
import { KernelTracking, processStartTime } from '../../src/kernel/tracking.js';
import { type LoadKnobs, native } from '../../src/base/native.js';

// Tests set every DPSR_* variable they depend on: none comes from the caller's
// shell (an admin's DPSR_STATE_DIR would leak into the CLI and failure hooks).
// DPSR_TEST_* are the suite's own knobs. LC_ALL=C: tools' messages are matched.
for (const name of Object.keys(process.env)) {
  if (name.startsWith('DPSR_') && !name.startsWith('DPSR_TEST_')) delete process.env[name];
}
process.env.LC_ALL = 'C';

export const TEST_PIN_PREFIX = '/sys/fs/bpf/dpsr-test-';
/** The built CLI (tests run from dist/tests). */
export const DPSR_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dpsr.js');

export function sh(cmd: string, args: string[], opts: { input?: string } = {}): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], input: opts.input });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

let live: Fixture[] = [];
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => { for (const f of live) f.cleanup(); });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => { for (const f of live) f.cleanup(); process.exit(130); });
  }
}

/** Sectors the kernel counted as written or discarded on a block device (a disk or a partition). */
export function writtenSectors(dev: string): number {
  const f = fs.readFileSync(`/sys/class/block/${path.basename(dev)}/stat`, 'utf8').trim().split(/\s+/).map(Number);
  return f[6] + (f[13] ?? 0); // Documentation/block/stat.rst: write sectors, discard sectors
}

/** Writes to a device the kernel has started and not yet completed. */
function inFlightWrites(dev: string): number {
  return Number(fs.readFileSync(`/sys/class/block/${path.basename(dev)}/inflight`, 'utf8').trim().split(/\s+/)[1]);
}

const napMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

/**
 * The reserved tail of a test pair made without --reserve: the test drives are sized for it
 * (pairDevices, `source + 64`), not for the default, which is sized for a system disk's upgrade.
 */
export const TEST_RESERVE = '64M';

/** A `pair` command line without --reserve or --no-reserve gets TEST_RESERVE (runDpsr and runDpsrKilledAfter do this). */
export function withTestReserve(args: string[]): string[] {
  if (args[0] !== 'pair' || args.some((a) => a === '--no-reserve' || a === '--reserve' || a.startsWith('--reserve='))) return args;
  return [...args, '--reserve', TEST_RESERVE];
}

/**
 * Runs the CLI and kills it (SIGKILL) once more than `afterSectors` were written to `dev`
 * since it started: a kill point set by its progress (the kernel's count, polled), not by
 * time. Returns whether it was killed before it finished by itself, and the sectors written
 * to `dev` in all, counted once its last write has completed.
 */
export async function runDpsrKilledAfter(env: NodeJS.ProcessEnv, args: string[], dev: string,
  afterSectors: number): Promise<{ killed: boolean; writtenSectors: number; stderr: string }> {
  const start = writtenSectors(dev);
  const child = spawn(process.execPath, [DPSR_BIN, ...withTestReserve(args)], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_, signal) => resolve(signal)));
  while (child.exitCode === null && child.signalCode === null && writtenSectors(dev) - start <= afterSectors) {
    await new Promise((r) => setTimeout(r, 1));
  }
  child.kill('SIGKILL'); // a child that already exited keeps its own status: `killed` below tells
  const killed = (await exited) === 'SIGKILL';
  for (const deadline = Date.now() + 10_000; inFlightWrites(dev) > 0 && Date.now() < deadline;) napMs(5);
  return { killed, writtenSectors: writtenSectors(dev) - start, stderr };
}

/** Detaches pinned test objects left by test processes that died. */
export function sweepStaleTestPins(): void {
  const root = '/sys/fs/bpf';
  if (!fs.existsSync(root)) return;
  for (const name of fs.readdirSync(root)) {
    const full = path.join(root, name);
    if (!full.startsWith(TEST_PIN_PREFIX)) continue;
    const pid = Number(name.slice(TEST_PIN_PREFIX.length - root.length - 1).split('-')[0]);
    if (pid && processStartTime(pid) !== null) continue;
    try { native().detach(full); } catch { /* best effort */ }
  }
}

/** A loop device's backing file, or null when it is not attached. */
export function loopBackingFile(dev: string): string | null {
  try {
    return fs.readFileSync(`/sys/block/${path.basename(dev)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Whether a process group still has a live (not zombie) member. */
function groupAlive(pgid: number): boolean {
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let stat: string;
    try { stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { continue; }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // state ppid pgrp ...
    if (Number(fields[2]) === pgid && fields[0] !== 'Z') return true;
  }
  return false;
}

/**
 * A loop number keeps a read-only flag (BLKROSET, which dpsr sets on a DPSR drive) after a
 * detach, so whatever used it last, a test or an admin, could leave the next test a read-only disk.
 */
function writable(dev: string): void {
  sh('blockdev', ['--setrw', dev]);
}

export class Fixture {
  readonly dir: string;
  private cleanups: Array<{ what: string; fn: () => void }> = [];
  private pins = 0;

  constructor() {
    hookExit();
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-test-'));
    this.defer(`rm ${this.dir}`, () => fs.rmSync(this.dir, { recursive: true, force: true }));
    live.push(this);
  }

  defer(what: string, fn: () => void): void {
    this.cleanups.push({ what, fn });
  }

  cleanup(): void {
    while (this.cleanups.length > 0) {
      const { what, fn } = this.cleanups.pop()!;
      try {
        fn();
      } catch (err) {
        console.error(`cleanup: ${what}: ${(err as Error).message}`);
      }
    }
    live = live.filter((f) => f !== this);
  }

  image(name: string, sizeMiB: number): string {
    const file = path.join(this.dir, name);
    fs.closeSync(fs.openSync(file, 'w'));
    fs.truncateSync(file, sizeMiB * 1024 * 1024);
    return file;
  }

  /** A loop device over a new image (direct I/O by default, as a disk would behave). */
  loop(sizeMiB: number, opts: { directIo?: boolean; sectorSize?: number } = {}): string {
    const img = this.image(`disk${this.cleanups.length}.img`, sizeMiB);
    const args = ['-f', '--show', `--direct-io=${opts.directIo === false ? 'off' : 'on'}`];
    if (opts.sectorSize) args.push('-b', String(opts.sectorSize));
    const dev = sh('losetup', [...args, img]).trim();
    this.deferDetach(dev, img);
    writable(dev);
    return dev;
  }

  /**
   * Attaches an image to a given loop node (a disk re-plugged after the test
   * detached it) or to the first free one. Cleanup detaches it only while it
   * is still this image's: a number freed meanwhile may be someone else's.
   */
  attach(img: string, dev?: string): string {
    // A just-detached loop stays bound until its last user lets go: after a kill -9 that
    // is the dead process's io_uring teardown, which a loaded machine runs late. An upper
    // bound only, not a timing: the attach goes on as soon as the number is free.
    const deadline = Date.now() + 120_000;
    for (;;) {
      try {
        const node = dev ? (sh('losetup', ['--direct-io=on', dev, img]), dev) : sh('losetup', ['-f', '--show', '--direct-io=on', img]).trim();
        this.deferDetach(node, img);
        writable(node);
        return node;
      } catch (err) {
        if (!dev || Date.now() > deadline) throw err;
        napMs(100);
      }
    }
  }

  private deferDetach(dev: string, img: string): void {
    this.defer(`losetup -d ${dev}`, () => {
      const b = loopBackingFile(dev);
      if (b !== img && b !== `${img} (deleted)`) return;
      sh('blockdev', ['--setrw', dev]); // BLKROSET outlives a detach: leave the number writable for the next user
      sh('losetup', ['-d', dev]);
    });
  }

  /** A source and a DPSR drive whose reserved tail journals a sync that rewrites the whole source. */
  pairDevices(sourceMiB: number): { source: string; drive: string; bytes: number } {
    return { source: this.loop(sourceMiB), drive: this.loop(2 * sourceMiB + 64), bytes: sourceMiB * 2 ** 20 };
  }

  /**
   * Runs a shell loop in its own process group until stopped. Stopping kills
   * the whole group and waits until every member has gone: killing only the
   * shell would leave its running dd writing on (a busy mount, a late write).
   */
  background(script: string): () => Promise<void> {
    const child = spawn('sh', ['-c', script], { detached: true, stdio: 'ignore' });
    const pgid = child.pid!;
    const stop = () => {
      try { process.kill(-pgid, 'SIGKILL'); } catch { /* already gone */ }
      const deadline = Date.now() + 10_000;
      while (groupAlive(pgid) && Date.now() < deadline) napMs(20);
    };
    this.defer('stop background writer', stop);
    return async () => stop();
  }

  /**
   * A writer that keeps rewriting `files` files of `blocks` x 64 KiB (with fsync) under
   * mnt/busy until stopped, returned once its first file is written (so it is running,
   * however slow the machine); the returned function stops it and waits for it.
   */
  startWriter(mnt: string, files: number, blocks: number, pause = ''): () => Promise<void> {
    const dir = path.join(mnt, 'busy');
    fs.mkdirSync(dir, { recursive: true });
    const rest = pause ? `sleep ${pause}; ` : '';
    const started = path.join(this.dir, `writer-${this.cleanups.length}.started`); // made after its first file
    const stop = this.background(`i=0; while :; do dd if=/dev/urandom of=${dir}/f$((i % ${files})) bs=64k count=${blocks} conv=fsync status=none; i=$((i+1)); [ $i = 1 ] && : > ${started}; ${rest}done`);
    for (const deadline = Date.now() + 60_000; !fs.existsSync(started); napMs(10)) {
      if (Date.now() > deadline) throw new Error(`the writer under ${mnt} wrote nothing in 60 s`);
    }
    return stop;
  }

  /** A loop disk with a GPT and partitions of the given sizes (MiB); returns disk and partition nodes. */
  partitionedLoop(sizeMiB: number, partsMiB: number[]): { disk: string; parts: string[] } {
    const disk = this.loop(sizeMiB);
    const script = ['label: gpt', ...partsMiB.map((mib) => `size=${mib}MiB`)].join('\n');
    sh('sfdisk', ['--quiet', disk], { input: `${script}\n` });
    sh('partx', ['-a', disk]);
    this.defer(`partx -d ${disk}`, () => sh('partx', ['-d', disk]));
    return { disk, parts: partsMiB.map((_, i) => `${disk}p${i + 1}`) };
  }

  /**
   * umount, again while it says busy (for up to 5 s): a daemon's sync holds
   * the mount point open for the moment of its freeze (FIFREEZE needs a file
   * on it), and a failed test may leave a writer or a freeze watchdog dying.
   */
  unmount(mnt: string): void {
    for (let attempt = 0; ; attempt++) {
      try {
        sh('umount', [mnt]);
        return;
      } catch (err) {
        if (attempt >= 50 || !/busy/.test((err as Error).message)) throw err;
        napMs(100);
      }
    }
  }

  mkfs(dev: string, type: 'ext4' | 'xfs'): void {
    if (type === 'ext4') sh('mkfs.ext4', ['-q', '-F', dev]);
    else sh('mkfs.xfs', ['-q', '-f', dev]);
  }

  mount(dev: string, opts: string[] = []): string {
    const mnt = fs.mkdtempSync(path.join(this.dir, 'mnt-'));
    sh('mount', [...opts, dev, mnt]);
    this.defer(`umount ${mnt}`, () => {
      if (fs.readFileSync('/proc/mounts', 'utf8').includes(` ${mnt} `)) this.unmount(mnt);
    });
    return mnt;
  }

  /** A private pin directory, so tests never touch a user's real tracking. */
  pinDir(): string {
    const dir = `${TEST_PIN_PREFIX}${process.pid}-${this.pins++}`;
    this.defer(`detach ${dir}`, () => { if (fs.existsSync(dir)) native().detach(dir); });
    return dir;
  }

  /** Opens (loading, with the test knobs given) the programs in a private pin directory. */
  tracking(opts: LoadKnobs & { pinDir?: string } = {}): KernelTracking {
    const { pinDir, ...knobs } = opts;
    const kt = KernelTracking.open({ pinDir: pinDir ?? this.pinDir(), ...knobs });
    this.defer('close tracking', () => kt.close());
    return kt;
  }

  /** An environment for the CLI that keeps every piece of its state inside this fixture. */
  cliEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      DPSR_STATE_DIR: path.join(this.dir, 'state'),
      DPSR_BPF_DIR: this.pinDir(),
      DPSR_LOCK: path.join(this.dir, 'owner.lock'),
      DPSR_SOCKET: path.join(this.dir, 'dpsr.sock'),
      DPSR_CONFIG: path.join(this.dir, 'dpsr.toml'),
    };
  }

  lockPath(): string {
    return path.join(this.dir, `owner-${this.pins}.lock`);
  }
}

/** The first `mib` MiB of a device filled with random data (O_DIRECT). */
export function randomFill(dev: string, mib: number): void {
  sh('dd', ['if=/dev/urandom', `of=${dev}`, 'bs=1M', `count=${mib}`, 'oflag=direct', 'status=none']);
}

/** One dd write with O_DIRECT at a 512-byte sector offset: returns the half-open extent written. */
export function ddDirect(dev: string, startSector: number, sectors: number): [number, number] {
  sh('dd', ['if=/dev/urandom', `of=${dev}`, `bs=${sectors * 512}`, `seek=${startSector * 512}`, 'count=1',
    'oflag=direct,seek_bytes', 'conv=notrunc', 'status=none']);
  return [startSector, startSector + sectors];
}

/** A burst of `count` separate 4 KiB direct writes scattered over the first 240 MiB (more records than a small ring holds); returns them. */
export function scatteredDirectWrites(dev: string, count: number): ExtentSet {
  const written = new ExtentSet();
  const fd = fs.openSync(dev, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
  const buf = native().alignedBuffer(4096, 4096);
  try {
    for (let i = 0; i < count; i++) {
      const sector = ((i * 7919) % 60000) * 8;
      fs.writeSync(fd, buf, 0, 4096, sector * 512);
      written.add(sector, sector + 8);
    }
  } finally {
    fs.closeSync(fd);
  }
  return written;
}

/** 12 random 1 MiB writes at offsets set by `seed` within the first 61 MiB; returns the sectors changed. */
export function scatteredChanges(dev: string, seed: number): number {
  const changed = new ExtentSet();
  for (let i = 0; i < 12; i++) changed.add(...ddDirect(dev, ((i * 7919 + seed) % 120) * 1024, 2048));
  return changed.totalSectors;
}

/**
 * Where a journaled sync killed -9 stood, from the sectors it wrote to the DPSR drive and the
 * sectors its transaction carried: the journal gets all the data before the commit, and
 * nothing is applied in place before it. Heads, descriptors and the label are far below the margin.
 */
export function journaledKillPoint(writtenSectors: number, dataSectors: number): 'before commit' | 'after commit' | 'either' {
  if (writtenSectors < dataSectors) return 'before commit';
  return writtenSectors > dataSectors + 512 ? 'after commit' : 'either';
}

/** sha256 of a device, or of its first `bytes`. */
export function sha256Of(dev: string, bytes?: number): string {
  const fd = fs.openSync(dev, 'r');
  const h = crypto.createHash('sha256');
  const buf = Buffer.alloc(4 << 20);
  const end = bytes ?? Infinity;
  try {
    for (let pos = 0; pos < end;) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, end - pos), pos);
      if (n <= 0) break;
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Runs the built CLI with an environment (usually Fixture.cliEnv()); `pair` without --reserve or --no-reserve gets TEST_RESERVE. */
export function runDpsr(env: NodeJS.ProcessEnv, args: string[], timeoutMs = 120_000) {
  const r = spawnSync(process.execPath, [DPSR_BIN, ...withTestReserve(args)], { env, encoding: 'utf8', timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs the CLI in a child process while the test goes on: the child, what it wrote to stderr so far, and its exit status and output once it ends. */
export function spawnDpsr(env: NodeJS.ProcessEnv, args: string[]) {
  const child = spawn(process.execPath, [DPSR_BIN, ...withTestReserve(args)], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => { stdout += d; });
  child.stderr.on('data', (d) => { stderr += d; });
  const done = new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => child.on('exit', (status) => resolve({ status, stdout, stderr })));
  return { child, done, stderr: () => stderr };
}

/** Runs the CLI and fails the test unless it exits 0; returns its stdout. */
export function runDpsrOk(env: NodeJS.ProcessEnv, args: string[], timeoutMs?: number): string {
  const r = runDpsr(env, args, timeoutMs);
  if (r.status !== 0) throw new Error(`dpsr ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return r.stdout;
}

/** setpriv's prefix that runs a command as nobody (uid and gid 65534): no groups, no capabilities. */
export const AS_NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all'];

let publicRoot: { dir: string } | { why: string } | undefined;

/**
 * A directory made once per process (removed at exit) that nobody can reach (mode 0755 up
 * to /): the checkout and the temporary directory may be root's alone (root's home, a
 * `mktemp -d`). Or why there is none here.
 */
function publicBase(): { dir: string } | { why: string } {
  if (publicRoot) return publicRoot;
  const tried: string[] = [];
  for (const parent of new Set([os.tmpdir(), '/tmp', '/var/tmp', '/dev/shm'])) {
    let dir: string;
    try {
      dir = fs.mkdtempSync(path.join(parent, 'dpsr-public-'));
    } catch (err) {
      tried.push(`${parent}: ${(err as Error).message}`);
      continue;
    }
    fs.chmodSync(dir, 0o755);
    const r = spawnSync(AS_NOBODY[0], [...AS_NOBODY.slice(1), 'test', '-x', dir], { encoding: 'utf8' });
    if (r.status === 0) {
      process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
      return (publicRoot = { dir });
    }
    fs.rmSync(dir, { recursive: true, force: true });
    tried.push(`${parent}: ${r.error?.message ?? (r.stderr.trim() || 'not reachable by uid 65534')}`);
  }
  return (publicRoot = { why: `no unprivileged user can be set up here (${AS_NOBODY.join(' ')}): ${tried.join('; ')}` });
}

/** A new directory nobody can reach (for a socket the test means to be refused by its own mode). */
export function publicDir(fx: Fixture): string {
  const base = publicBase();
  if ('why' in base) throw new Error(base.why);
  const dir = fs.mkdtempSync(path.join(base.dir, 'dir-'));
  fs.chmodSync(dir, 0o755);
  fx.defer(`rm ${dir}`, () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * A copy of the built CLI that nobody can read and run (bin, dist/src, the addon, the
 * runtime packages of package-lock.json), made once per process; its bin/dpsr.js.
 */
export function publicCli(): string {
  const base = publicBase();
  if ('why' in base) throw new Error(base.why);
  const root = path.resolve(path.dirname(DPSR_BIN), '..');
  const to = path.join(base.dir, 'dpsr');
  if (!fs.existsSync(to)) {
    const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    const runtime = Object.keys(lock.packages).filter((p) => /^node_modules\/(@[^/]+\/)?[^/]+$/.test(p) && !lock.packages[p].dev);
    for (const rel of ['package.json', 'bin', 'dist/src', 'addon/build/Release/dpsr.node', ...runtime]) {
      if (fs.existsSync(path.join(root, rel))) fs.cpSync(path.join(root, rel), path.join(to, rel), { recursive: true });
    }
    sh('chmod', ['-R', 'a+rX', to]);
  }
  return path.join(to, 'bin/dpsr.js');
}

/**
 * A test that runs commands as a user who is not root; where none can be set up it is
 * skipped, and the reason printed: never passed silently.
 */
export function testAsNobody(suite: Test, name: string, fn: () => unknown): void {
  const base = publicBase();
  if ('why' in base) {
    console.log(`skipped: ${name}: ${base.why}`);
    suite.skip(name, fn as () => void);
  } else {
    suite(name, fn as () => void);
  }
}

/** A fresh CLI fixture before each test of a suite, cleaned up after it (even when the test failed). */
export function eachTestFreshCli(suite: { before: { each(fn: () => void): void }; after: { each(fn: () => void): void } },
  set: (f: { fx: Fixture; env: NodeJS.ProcessEnv }) => void): void {
  let current: Fixture | undefined;
  suite.before.each(() => {
    const f = freshCliFixture();
    current = f.fx;
    set(f);
  });
  suite.after.each(() => current?.cleanup());
}

/** A fresh fixture and a CLI environment inside it, after sweeping what dead test processes left. */
export function freshCliFixture(): { fx: Fixture; env: NodeJS.ProcessEnv } {
  sweepStaleTestPins();
  const fx = new Fixture();
  return { fx, env: fx.cliEnv() };
}
