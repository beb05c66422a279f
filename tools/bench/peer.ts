/**
 * dpsr against blocksync-fast, the fastest peer that does not track writes
 * (issue 25 point 3), side by side on the same devices and the same changes:
 *
 *   node dist/tools/bench/peer.js [--gib N] [--rounds N] [--levels 1,10] [--throttle MBPS]
 *                                 [--seed N] [--peer-src GITDIR_OR_URL] [--cache-dir DIR]
 *
 * A source, a DPSR drive (2 x source + 64 MiB, as the tests' pairDevices) and the peer's
 * own target, loops over files in /dev/shm written whole first. Each round rewrites a share
 * of the source's 4 KiB blocks (fio, seeded), then `dpsr sync` (defaults) and the peer sync
 * that same change; a second change is synced by `dpsr sync --quiet-period 0` and the peer.
 * Every result is checked by sha256. Then the same under cgroup v1 blkio throttling.
 * Uses the CLI only, in a private state dir, lock, socket and pin dir, without a daemon.
 * See tools/bench/README.md.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { scratchSpace } from './scratch.js';

const MiB = 1 << 20, GiB = 1 << 30, BLOCK = 4096;
const PEER_URL = 'https://github.com/nethappen/blocksync-fast';
const PEER_COMMIT = 'a5c1a958c4240f7e29d57a8c2bd8bf373605f4d2'; // tag v1.0.7 (release 1.07, 2025-05-03)
const DPSR_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dpsr.js');
const CGROUP_V1_BLKIO = '/sys/fs/cgroup/blkio';

function option(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
function numberOption(name: string, fallback: number): number {
  const n = Number(option(name, String(fallback)));
  if (!Number.isFinite(n) || n < 0) { console.error(`peer bench: --${name} needs a number`); process.exit(2); }
  return n;
}
const sizeBytes = Math.round(numberOption('gib', 4) * GiB / (4 * MiB)) * 4 * MiB; // whole 4 MiB fill writes
const rounds = numberOption('rounds', 3);
const levels = option('levels', '1,10').split(',').map(Number); // percent of the source's blocks
if (!levels.every((l) => l > 0 && l <= 100)) { console.error('peer bench: --levels takes percentages, e.g. 1,10'); process.exit(2); }
const throttleMBps = numberOption('throttle', 500); // 0: no throttled table
const seed = numberOption('seed', 2500);
const peerSrc = option('peer-src', PEER_URL);
const cacheDir = option('cache-dir', '/var/cache/dpsr-bench');

const space = scratchSpace('dpsr-bench-peer-');
process.on('SIGTERM', () => { space.cleanup(); process.exit(143); });
const later = (fn: () => void) => space.cleanups.push(fn);
const now = () => performance.now();
// Every step is synchronous: a Ctrl-C's handler (the cleanup) runs only when the event loop turns, so turn it between steps.
const signalsIn = () => new Promise((resolve) => setImmediate(resolve));
const mib = (bytes: number) => bytes / MiB;

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status ?? r.signal}: ${(r.stderr || r.stdout || '').trim().slice(-2000)}`);
  return r.stdout;
}

// ---- the peer, built from its public source at the pinned commit ----

/** The peer's binary: from the cache when this commit was built before, else cloned and built. */
function peerBinary(): string {
  const cached = path.join(cacheDir, `blocksync-fast-${PEER_COMMIT}`, 'blocksync-fast');
  if (fs.existsSync(cached)) return cached;
  const src = path.join(space.dir, 'blocksync-fast');
  console.log(`# building blocksync-fast ${PEER_COMMIT} from ${peerSrc}`);
  sh('git', ['clone', '--quiet', '--no-checkout', peerSrc, src]);
  try {
    sh('git', ['-C', src, 'checkout', '--quiet', '--detach', PEER_COMMIT]);
  } catch {
    throw new Error(`${peerSrc} does not hold the pinned commit ${PEER_COMMIT}: refusing to build another one`);
  }
  const head = sh('git', ['-C', src, 'rev-parse', 'HEAD']).trim();
  if (head !== PEER_COMMIT) throw new Error(`checked out ${head}, not the pinned ${PEER_COMMIT}: refusing`);
  // A checkout stamps files in checkout order; make's autotools rules would then want
  // aclocal-1.17. Give the generated files their intended order instead.
  const t = Date.now() / 1000 - 3600;
  for (const f of sh('git', ['-C', src, 'ls-files']).split('\n').filter(Boolean)) fs.utimesSync(path.join(src, f), t, t);
  ['aclocal.m4', 'configure', 'config.h.in', 'Makefile.in', 'src/Makefile.in'].forEach((f, i) => fs.utimesSync(path.join(src, f), t + i + 1, t + i + 1));
  // Without xxHash the peer falls back to CRC32, not its fastest build: require it.
  sh('./configure', ['--with-xxhash=yes'], { cwd: src });
  sh('make', [`-j${os.cpus().length}`], { cwd: src });
  fs.mkdirSync(path.dirname(cached), { recursive: true });
  fs.copyFileSync(path.join(src, 'src/blocksync-fast'), `${cached}.tmp`);
  fs.chmodSync(`${cached}.tmp`, 0o755);
  fs.renameSync(`${cached}.tmp`, cached); // whole or absent: a killed build leaves no half binary
  return cached;
}

// ---- devices ----

const shmDir = fs.mkdtempSync('/dev/shm/dpsr-bench-peer-');
later(() => fs.rmSync(shmDir, { recursive: true, force: true }));

/** A loop device (direct I/O) over a file in /dev/shm of `bytes`, written whole (a sparse image is the trap). */
function shmLoop(name: string, bytes: number): { dev: string; img: string } {
  const img = path.join(shmDir, name);
  sh('dd', ['if=/dev/zero', `of=${img}`, 'bs=1M', `count=${bytes / MiB}`, 'status=none']);
  const dev = sh('losetup', ['-f', '--show', '--direct-io=on', img]).trim();
  later(() => {
    // Detach only while it is still ours: a number freed meanwhile may be someone else's.
    let backing: string;
    try { backing = fs.readFileSync(`/sys/block/${path.basename(dev)}/loop/backing_file`, 'utf8').trim(); } catch { return; }
    if (backing !== img && backing !== `${img} (deleted)`) return;
    sh('blockdev', ['--setrw', dev]); // BLKROSET outlives a detach
    sh('losetup', ['-d', dev]);
  });
  return { dev, img };
}

/** Bytes the kernel counted as read and as written (discards too) on a device. */
function ioBytes(dev: string): { read: number; written: number } {
  const f = fs.readFileSync(`/sys/block/${path.basename(dev)}/stat`, 'utf8').trim().split(/\s+/).map(Number);
  return { read: f[2] * 512, written: (f[6] + (f[13] ?? 0)) * 512 };
}

/** sha256 of a loop's backing file (or its first `bytes`): what reached the device, not a page cache's view of it. */
function sha256(file: string, bytes: number): string {
  const fd = fs.openSync(file, 'r');
  const h = crypto.createHash('sha256');
  const buf = Buffer.alloc(4 * MiB);
  try {
    for (let pos = 0; pos < bytes;) {
      const n = fs.readSync(fd, buf, 0, Math.min(buf.length, bytes - pos), pos);
      if (n <= 0) throw new Error(`${file}: short read at ${pos}`);
      h.update(buf.subarray(0, n));
      pos += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Rewrites `blocks` distinct 4 KiB blocks of the source at seeded random offsets with new random data. */
function change(dev: string, blocks: number, randSeed: number): void {
  sh('fio', ['--name=change', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=16',
    `--size=${sizeBytes}`, `--io_size=${blocks * BLOCK}`, `--randseed=${randSeed}`, '--refill_buffers', '--output=/dev/null']);
}

// ---- throttling: cgroup v1 blkio ----

/** A blkio cgroup limiting reads and writes on `devs` to `bps` each, or why there is none. */
function throttleGroup(devs: string[], bps: number): { dir: string } | { why: string } {
  if (!fs.existsSync(path.join(CGROUP_V1_BLKIO, 'blkio.throttle.read_bps_device'))) return { why: `cgroup v1 blkio is not mounted at ${CGROUP_V1_BLKIO}` };
  const dir = path.join(CGROUP_V1_BLKIO, `dpsr-bench-peer-${process.pid}`);
  fs.mkdirSync(dir);
  later(() => fs.rmdirSync(dir));
  for (const dev of devs) {
    const majMin = fs.readFileSync(`/sys/block/${path.basename(dev)}/dev`, 'utf8').trim();
    fs.writeFileSync(path.join(dir, 'blkio.throttle.read_bps_device'), `${majMin} ${bps}`);
    fs.writeFileSync(path.join(dir, 'blkio.throttle.write_bps_device'), `${majMin} ${bps}`);
  }
  return { dir };
}

/** Runs a command (in `cgroup` when given: the shell joins it, then execs) and times it, process start to exit. */
function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv, cgroup?: string): { seconds: number; stdout: string } {
  const [c, a] = cgroup ? ['sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, cmd, ...args]] : [cmd, args];
  const t = now();
  const r = spawnSync(c, a, { env, encoding: 'utf8', maxBuffer: 64 * MiB });
  const seconds = (now() - t) / 1000;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status ?? r.signal}: ${(r.stderr || r.stdout).trim()}`);
  return { seconds, stdout: r.stdout };
}

// ---- the bench ----

type Tool = 'dpsr-d' | 'dpsr' | 'dpsr-q0' | 'peer';
const TOOL_NAMES: Record<Tool, string> = {
  'dpsr-d': 'dpsr sync, daemon running (defaults)', dpsr: 'dpsr sync, no daemon (defaults)', 'dpsr-q0': 'dpsr sync, no daemon, --quiet-period 0', peer: 'blocksync-fast -f DIGEST',
};
const DPSR_TOOLS = ['dpsr-d', 'dpsr', 'dpsr-q0'] as const;

/** `dpsr daemon` (in `cgroup` when given, so that its I/O is throttled like the others'), once it listens. */
async function startDaemon(env: NodeJS.ProcessEnv, cgroup?: string): Promise<() => Promise<void>> {
  const args = [DPSR_BIN, 'daemon', '--tick', '0.2'];
  const child: ChildProcess = cgroup
    ? spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, process.execPath, ...args], { env })
    : spawn(process.execPath, args, { env });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => { out += d; if (out.includes('listening')) resolve(); });
    child.stderr!.on('data', (d) => { out += d; });
    child.on('exit', (code) => reject(new Error(`dpsr daemon exited (${code}): ${out.trim()}`)));
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await gone;
  };
  later(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  return stop;
}
interface Run {
  speed: string; level: number; round: number; tool: Tool; seconds: number; changed: number; load: number;
  source: { read: number; written: number }; target: { read: number; written: number };
  sync?: { durationMs: number; copiedBytes: number; comparedBytes: number; journaled: boolean; gaps: number };
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const best = (xs: number[]) => Math.min(...xs);

async function main(): Promise<void> {
  const peer = peerBinary();
  const need = 4 * sizeBytes + 64 * MiB + GiB; // the three images, and a margin
  const avail = Number(/MemAvailable:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;
  if (avail < need) throw new Error(`needs ${(need / GiB).toFixed(1)} GiB of free memory for images in /dev/shm, has ${(avail / GiB).toFixed(1)}: try --gib ${Math.floor(numberOption('gib', 4) / 2) || 1}`);

  await signalsIn();
  const src = shmLoop('source.img', sizeBytes);
  const drive = shmLoop('drive.img', 2 * sizeBytes + 64 * MiB);
  const target = shmLoop('target.img', sizeBytes);
  const digest = path.join(shmDir, 'target.digest');
  const pinDir = `/sys/fs/bpf/dpsr-bench-peer-${process.pid}`;
  // Unpinning the links stops the programs (what the addon's detach does), and needs no addon a rebuild may have removed.
  later(() => fs.rmSync(pinDir, { recursive: true, force: true }));
  const env: NodeJS.ProcessEnv = {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DPSR_'))),
    DPSR_STATE_DIR: path.join(space.dir, 'state'), DPSR_SOCKET: path.join(space.dir, 'dpsr.sock'),
    DPSR_LOCK: path.join(space.dir, 'owner.lock'), DPSR_CONFIG: path.join(space.dir, 'dpsr.toml'), DPSR_BPF_DIR: pinDir,
  };
  const blocks = sizeBytes / BLOCK;
  console.log(`# dpsr vs blocksync-fast 1.07 (${PEER_COMMIT.slice(0, 12)}): ${mib(sizeBytes)} MiB source ${src.dev}, DPSR drive ${drive.dev} ` +
    `(${mib(2 * sizeBytes + 64 * MiB)} MiB), peer target ${target.dev}, loops (direct I/O) over files in /dev/shm; ${rounds} rounds; ` +
    `changes ${levels.map((l) => `${l}%`).join(', ')} of ${blocks} 4 KiB blocks`);
  console.log(`# peer: ${sh(peer, ['-V']).split('\n')[0]}, built from ${PEER_URL} at ${PEER_COMMIT} (cached: ${peer})`);
  console.log(`# command: node ${path.relative(process.cwd(), process.argv[1])} ${process.argv.slice(2).join(' ')}`);
  console.log(`# load at start: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} (other sessions' work makes these numbers noisy)`);

  sh('fio', ['--name=fill', `--filename=${src.dev}`, '--rw=write', '--bs=4M', '--direct=1', '--ioengine=libaio', '--iodepth=4',
    `--size=${sizeBytes}`, '--refill_buffers', '--output=/dev/null']);
  const paired = timed(process.execPath, [DPSR_BIN, 'pair', src.dev, drive.dev, '--name', 'bench', '--reserve', '64M'], env);
  console.log(`# dpsr pair (full copy): ${paired.seconds.toFixed(2)} s; ${paired.stdout.trim().split('\n').filter((l) => /journal|sync/i.test(l)).join(' / ')}`);
  const first = timed(peer, ['-s', src.dev, '-d', target.dev, '-f', digest], env);
  console.log(`# blocksync-fast first sync (makes the digest): ${first.seconds.toFixed(2)} s`);
  const flush = () => { for (const d of [src.dev, target.dev]) sh('blockdev', ['--flushbufs', d]); };
  flush();
  let srcHash = sha256(src.img, sizeBytes);
  const check = (tool: string, img: string) => {
    const h = sha256(img, sizeBytes);
    if (h !== srcHash) throw new Error(`MISMATCH: after ${tool}, ${img} (sha256 ${h}) differs from the source (${srcHash})`);
  };
  check('pair', drive.img);
  check('the first peer sync', target.img);
  await signalsIn();

  const runs: Run[] = [];
  const floors: Record<string, number> = {};
  const speeds: Array<{ speed: string; cgroup?: string }> = [{ speed: 'RAM' }];
  if (throttleMBps > 0) {
    const g = throttleGroup([src.dev, drive.dev, target.dev], throttleMBps * 1e6);
    if ('why' in g) console.log(`# no throttled table: ${g.why}`);
    else speeds.push({ speed: `${throttleMBps} MB/s`, cgroup: g.dir });
  }

  for (const { speed, cgroup } of speeds) {
    const measure = (tool: Tool, level: number, round: number, changed: number): Run => {
      flush(); // a source the peer read last time must not answer from the page cache
      const dev = tool === 'peer' ? target.dev : drive.dev;
      const load = os.loadavg()[0]; // others' work on a shared machine: the main source of noise
      const before = { s: ioBytes(src.dev), t: ioBytes(dev) };
      const r = tool === 'peer'
        ? timed(peer, ['-s', src.dev, '-d', target.dev, '-f', digest], env, cgroup)
        : timed(process.execPath, [DPSR_BIN, 'sync', 'bench', '--json', ...(tool === 'dpsr-q0' ? ['--quiet-period', '0'] : [])], env, cgroup);
      const after = { s: ioBytes(src.dev), t: ioBytes(dev) };
      if (tool === 'peer') {
        sh('blockdev', ['--flushbufs', target.dev]);
        const late = ioBytes(target.dev).written - after.t.written;
        if (late > 0) console.log(`  ! the peer left ${mib(late).toFixed(1)} MiB unwritten at exit (flushed after the timing)`);
      }
      check(TOOL_NAMES[tool], tool === 'peer' ? target.img : drive.img);
      const sync = tool === 'peer' ? undefined : (() => {
        const s = JSON.parse(r.stdout).syncs[0];
        return { durationMs: s.durationMs, copiedBytes: s.copiedBytes, comparedBytes: s.comparedBytes, journaled: s.journaled, gaps: s.gaps.length };
      })();
      const one: Run = {
        speed, level, round, tool, seconds: r.seconds, changed, load,
        source: { read: after.s.read - before.s.read, written: after.s.written - before.s.written },
        target: { read: after.t.read - before.t.read, written: after.t.written - before.t.written }, sync,
      };
      runs.push(one);
      console.log(`${speed.padEnd(10)} ${level}% round ${round} ${TOOL_NAMES[tool].padEnd(27)} ${r.seconds.toFixed(2).padStart(6)} s  load ${load.toFixed(1)}  ` +
        `source read ${mib(one.source.read).toFixed(1)} MiB, target read ${mib(one.target.read).toFixed(1)} written ${mib(one.target.written).toFixed(1)} MiB` +
        (sync ? `; in-sync ${(sync.durationMs / 1000).toFixed(2)} s, copied ${mib(sync.copiedBytes).toFixed(1)} MiB${sync.comparedBytes ? `, COMPARED ${mib(sync.comparedBytes).toFixed(0)} MiB` : ''}` +
          `${sync.gaps ? `, ${sync.gaps} gap(s)` : ''}${sync.journaled ? '' : ', IN PLACE'}` : ''));
      return one;
    };

    for (let round = 1; round <= rounds; round++) {
      for (const [li, level] of levels.entries()) {
        const n = Math.round(blocks * level / 100);
        for (const [k, tool] of DPSR_TOOLS.entries()) {
          // With the daemon running while the source is written, as a daemon would be: it sees the writes as they complete.
          const stopDaemon = tool === 'dpsr-d' ? await startDaemon(env, cgroup) : null;
          change(src.dev, n, seed + round * 100 + li * 10 + k + (cgroup ? 50_000 : 0));
          srcHash = sha256(src.img, sizeBytes); // also leaves the source idle for a few seconds, as "idle beforehand" asks
          await signalsIn();
          measure(tool, level, round, n * BLOCK);
          await stopDaemon?.();
          await signalsIn();
          measure('peer', level, round, n * BLOCK);
          await signalsIn();
        }
      }
    }
    // A sync with nothing to copy: what every dpsr sync pays before its first byte.
    for (const tool of ['dpsr', 'dpsr-q0'] as const) {
      await signalsIn();
      const r = timed(process.execPath, [DPSR_BIN, 'sync', 'bench', '--json', ...(tool === 'dpsr-q0' ? ['--quiet-period', '0'] : [])], env, cgroup);
      floors[`${speed} ${tool}`] = r.seconds;
    }
  }
  floors.version = timed(process.execPath, [DPSR_BIN, '--version'], env).seconds;
  report(runs, speeds.map((s) => s.speed), floors);
}

function report(runs: Run[], speeds: string[], floors: Record<string, number>): void {
  const f2 = (x: number) => x.toFixed(2);
  const targets: string[] = [];
  for (const speed of speeds) {
    console.log(`\n## ${speed === 'RAM' ? 'RAM-backed loops' : `throttled to ${speed} per device (cgroup v1 blkio)`}: ${mib(sizeBytes)} MiB source, ${rounds} rounds\n`);
    console.log('| change | tool | runs | median s | best s | dpsr/peer median | dpsr/peer best | source read MiB | target read MiB | target written MiB | target written / changed | copied / changed | sync outside its own timer s |');
    console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const level of levels) {
      const of = (tool: Tool) => runs.filter((r) => r.speed === speed && r.level === level && r.tool === tool);
      const peer = of('peer');
      if (peer.length === 0) continue;
      const changed = peer[0].changed;
      for (const tool of [...DPSR_TOOLS, 'peer'] as const) {
        const rs = of(tool);
        const secs = rs.map((r) => r.seconds);
        const ratio = (g: (xs: number[]) => number) => tool === 'peer' ? '' : `${f2(g(secs) / g(peer.map((r) => r.seconds)))}x`;
        const copied = rs[0].sync ? f2(median(rs.map((r) => r.sync!.copiedBytes)) / changed) : '';
        const outside = rs[0].sync ? f2(median(rs.map((r) => r.seconds - r.sync!.durationMs / 1000))) : '';
        console.log(`| ${level}% (${mib(changed).toFixed(1)} MiB) | ${TOOL_NAMES[tool]} | ${rs.length} | ${f2(median(secs))} | ${f2(best(secs))} | ${ratio(median)} | ${ratio(best)} | ` +
          `${mib(median(rs.map((r) => r.source.read))).toFixed(1)} | ${mib(median(rs.map((r) => r.target.read))).toFixed(1)} | ${mib(median(rs.map((r) => r.target.written))).toFixed(1)} | ` +
          `${f2(median(rs.map((r) => r.target.written)) / changed)} | ${copied} | ${outside} |`);
      }
      const [d, p] = [median(of('dpsr-d').map((r) => r.seconds)), median(peer.map((r) => r.seconds))];
      if (speed === 'RAM') targets.push(`${speed} ${level}%: dpsr (defaults) ${f2(d)} s <= peer ${f2(p)} s: ${d <= p ? 'met' : 'MISSED'}`);
      else if (level === levels[0]) targets.push(`${speed} ${level}%: peer/dpsr (defaults) ${f2(p / d)}x >= 10x: ${p / d >= 10 ? 'met' : 'MISSED'}`);
      const dpsrRuns = DPSR_TOOLS.flatMap((t) => of(t));
      const journaled = dpsrRuns.filter((r) => r.sync!.journaled);
      const wr = Math.max(...journaled.map((r) => r.target.written / r.changed));
      const cp = Math.max(...dpsrRuns.map((r) => r.sync!.copiedBytes / r.changed));
      targets.push(`${speed} ${level}%: DPSR drive written / changed, worst journaled run ${f2(wr)}x <= 2.05x: ${wr <= 2.05 ? 'met' : 'MISSED'}` +
        `${journaled.length < dpsrRuns.length ? ` (${dpsrRuns.length - journaled.length} run(s) in place)` : ''}`);
      targets.push(`${speed} ${level}%: copied / changed, worst run ${f2(cp)}x <= 1.1x: ${cp <= 1.1 ? 'met' : 'MISSED'}`);
    }
    console.log(`\nA sync with nothing changed: defaults ${f2(floors[`${speed} dpsr`])} s, --quiet-period 0 ${f2(floors[`${speed} dpsr-q0`])} s.`);
  }
  console.log(`\`dpsr --version\` (node start and CLI load): ${f2(floors.version)} s.`);
  console.log(`\nTargets (issue 25):\n${targets.map((x) => `- ${x}`).join('\n')}`);
  console.log(`BENCH_JSON ${JSON.stringify({ sizeBytes, rounds, levels, peerCommit: PEER_COMMIT, floors, targets, runs })}`);
  if (targets.some((x) => x.endsWith('MISSED'))) process.exitCode = 2;
}

process.env.LC_ALL = 'C';
main().then(() => space.cleanup(), (err) => { console.error(`peer bench: ${(err as Error).message}`); space.cleanup(); process.exit(1); });
