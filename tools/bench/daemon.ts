/**
 * The daemon under load, as an admin runs it (the real CLI, its own state
 * dir, socket and pin dir):
 *
 *   node dist/tools/bench/daemon.js [--seconds S] [--rate IOPS] [--rpo SECONDS] [--cost-only] [--nice N] [--profile DIR] [--perf FILE]
 *
 * (1) RPO over time: an ext4 source (loop over /dev/shm) with a continuous
 *     policy, fio writing files steadily (--rate IOPS of 4 KiB, direct, with
 *     an fsync every 64 writes); the image's age is sampled every 250 ms over
 *     the control socket: percentiles against the target.
 * (2) Cost of tracking: a raw source written by fio at 100k 4 KiB writes/s
 *     for S seconds, without (A) and with (B) the daemon tracking it (manual
 *     policy: it only drains and persists). The daemon's CPU (utime+stime
 *     from /proc) per second and per write, its peak RSS, and fio's IOPS
 *     B/A side by side.
 * Needs root, fio. See tools/bench/README.md.
 */
import { type ChildProcess, execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/base/native.js';
import { run, scratchSpace } from './scratch.js';

const MiB = 1 << 20;
const DPSR_BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dpsr.js');
const CLK_TCK = 100;

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  if (i < 0) return fallback;
  const n = Number(process.argv[i + 1]);
  if (!Number.isFinite(n) || n <= 0) { console.error(`bench: ${name} needs a positive number`); process.exit(2); }
  return n;
}

const seconds = option('--seconds', 20);
const rate = option('--rate', 2000);
const rpoS = option('--rpo', 10);

const space = scratchSpace('dpsr-bench-daemon-');
const shmDir = fs.mkdtempSync('/dev/shm/dpsr-bench-daemon-');
space.cleanups.push(() => fs.rmSync(shmDir, { recursive: true, force: true }));
const pinRoot = `/sys/fs/bpf/dpsr-bench-${process.pid}`;
space.cleanups.push(() => { try { native().detach(path.join(pinRoot, 'v1')); } catch { /* not loaded */ } fs.rmSync(pinRoot, { recursive: true, force: true }); });

function shmLoop(name: string, bytes: number): string {
  const img = path.join(shmDir, name);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, bytes);
  const dev = run('losetup', ['-f', '--show', img]).trim();
  space.cleanups.push(() => { run('blockdev', ['--setrw', dev]); run('losetup', ['-d', dev]); });
  return dev;
}

function envFor(tag: string): NodeJS.ProcessEnv {
  const dir = path.join(space.dir, tag);
  fs.mkdirSync(dir, { recursive: true });
  return {
    ...process.env, DPSR_STATE_DIR: path.join(dir, 'state'), DPSR_SOCKET: path.join(dir, 'run', 'dpsr.sock'),
    DPSR_CONFIG: path.join(dir, 'dpsr.toml'), DPSR_BPF_DIR: path.join(pinRoot, 'v1'),
  };
}

/** Runs the CLI; exit 4 (status: an image not usable yet) is an answer, not a failure. */
function dpsr(env: NodeJS.ProcessEnv, ...args: string[]): string {
  const r = spawnSync(process.execPath, [DPSR_BIN, ...args], { env, encoding: 'utf8' });
  if (r.status !== 0 && r.status !== 4) throw new Error(`dpsr ${args.join(' ')}: ${r.stderr.trim()}`);
  return r.stdout;
}

// --perf FILE: `perf record` samples the daemon (every thread, kernel time too) over B's run alone.
const perfAt = process.argv.indexOf('--perf');

/** Samples a process's CPU (perf record -g) until the returned function is called. */
function perfRecord(pid: number): () => Promise<void> {
  if (perfAt < 0) return async () => {};
  const perf = spawn('perf', ['record', '-q', '-g', '-F', '4999', '-p', String(pid), '-o', path.resolve(process.argv[perfAt + 1])], { stdio: 'inherit' });
  space.cleanups.push(() => { if (perf.exitCode === null) perf.kill('SIGKILL'); });
  return async () => {
    const done = new Promise((r) => perf.once('exit', r));
    perf.kill('SIGINT');
    await done;
  };
}

/** --nice N: the daemon's niceness in the cost run (the systemd unit's Nice=). */
const niceArg = () => (process.argv.includes('--nice') ? option('--nice', 10) : 0);

async function startDaemon(env: NodeJS.ProcessEnv, nice = 0): Promise<ChildProcess> {
  // --profile DIR: the daemon writes a V8 CPU profile there when it stops (where its CPU per write goes).
  const profileAt = process.argv.indexOf('--profile');
  const profile = profileAt > 0 ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(process.argv[profileAt + 1])] : [];
  if (perfAt > 0) profile.push('--perf-basic-prof'); // JS frames by name in perf's samples
  const argv = [process.execPath, ...profile, DPSR_BIN, 'daemon'];
  // In the scratch dir: what profilers leave (perf's maps, V8's logs) goes with it.
  const child = spawn(nice ? 'nice' : argv[0], nice ? ['-n', String(nice), ...argv] : argv.slice(1), { env, cwd: space.dir, stdio: ['ignore', 'pipe', 'inherit'] });
  space.cleanups.push(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => { out += d; if (out.includes('listening')) resolve(); });
    child.on('exit', () => reject(new Error(`daemon exited: ${out}`)));
  });
  return child;
}

async function stopDaemon(child: ChildProcess): Promise<void> {
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await gone;
}

function cpuTicks(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime, stime
}

/** Times the daemon's main thread slept and was woken (ring poll, timers, socket): its voluntary context switches. */
const wakeups = (pid: number) => Number(fs.readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8').match(/voluntary_ctxt_switches:\s+(\d+)/)![1]);

const memKiB = (pid: number, key: string) => Number(fs.readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`${key}:\\s+(\\d+)`))![1]);

function pct(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

function fio(args: string[]): Promise<{ iops: number; p99us: number }> {
  const run = promisify(execFile)('fio', ['--output-format=json', '--thread', ...args], { maxBuffer: 64 * MiB });
  space.cleanups.push(() => { if (run.child.exitCode === null) run.child.kill('SIGKILL'); }); // before the umount, on an error
  return run.then(({ stdout }) => {
    const job = JSON.parse(stdout).jobs[0];
    return { iops: job.write.iops, p99us: job.write.clat_ns.percentile['99.000000'] / 1000 };
  });
}

async function rpoOverTime(): Promise<void> {
  const env = envFor('rpo');
  const source = shmLoop('rpo-source.img', 256 * MiB);
  const drive = shmLoop('rpo-drive.img', 320 * MiB);
  run('mkfs.ext4', ['-q', '-F', source]);
  dpsr(env, 'pair', source, drive, '--name', 'data', '--reserve', '64M');
  const mnt = path.join(space.dir, 'mnt');
  fs.mkdirSync(mnt);
  run('mount', [source, mnt]);
  space.cleanups.push(() => run('umount', [mnt]));
  fs.writeFileSync(env.DPSR_CONFIG!, `tick = "1s"\n[pairs.data]\npolicy = "continuous"\nrpo = "${rpoS}s"\nmin_interval = "${Math.max(1, rpoS / 5)}s"\n`);
  dpsr(env, 'sync', 'data');
  const daemon = await startDaemon(env);
  const load = fio(['--name=steady', `--directory=${mnt}`, '--rw=randwrite', '--bs=4k', '--size=64M', '--direct=1', '--ioengine=psync',
    `--rate_iops=${rate}`, '--fsync=64', '--time_based', `--runtime=${seconds * 2}`]);
  const ages: number[] = [];
  const t0 = Date.now();
  const syncsBefore = JSON.parse(dpsr(env, 'status', 'data', '--json')).pairs[0].generation;
  while (Date.now() - t0 < seconds * 2000) {
    // Exit 4 while a sync too big for the journal writes in place ("partial"): imageTime is still the last whole image.
    const { stdout } = await promisify(execFile)(process.execPath, [DPSR_BIN, 'status', 'data', '--json'], { env }).catch((e) => e);
    const st = JSON.parse(stdout).pairs[0];
    ages.push((Date.now() - Date.parse(st.imageTime)) / 1000);
    await sleep(250);
  }
  await load;
  const st = JSON.parse(dpsr(env, 'status', 'data', '--json')).pairs[0];
  await stopDaemon(daemon);
  console.log(`(1) RPO over ${seconds * 2} s of ${rate} writes/s on a mounted ext4 (continuous, target ${rpoS} s), ${ages.length} samples:`);
  console.log(`    image age p50 ${pct(ages, 50).toFixed(2)} s, p90 ${pct(ages, 90).toFixed(2)} s, p99 ${pct(ages, 99).toFixed(2)} s, max ${Math.max(...ages).toFixed(2)} s: ${Math.max(...ages) <= rpoS ? 'within' : 'OVER'} the target; ${st.generation - syncsBefore} syncs, freeze p99 ${st.freezeP99Ms} ms`);
}

async function trackingCost(): Promise<void> {
  const env = envFor('cost');
  const source = shmLoop('cost-source.img', 1024 * MiB);
  const drive = shmLoop('cost-drive.img', 1100 * MiB);
  const job = ['--name=cost', `--filename=${source}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio', '--iodepth=32',
    '--rate_iops=100000', '--time_based', `--runtime=${seconds}`];
  const a0 = await fio(job); // A: nothing attached
  dpsr(env, 'pair', source, drive, '--name', 'raw', '--reserve', '64M');
  const c = await fio(job); // C: the programs attached, no consumer running (records wait in the ring, then drops)
  fs.writeFileSync(env.DPSR_CONFIG!, 'tick = "1s"\nscrub_every = "off"\n[pairs.raw]\npolicy = "manual"\n');
  const daemon = await startDaemon(env, niceArg());
  await sleep(1000);
  const pid = daemon.pid!;
  const ticks0 = cpuTicks(pid);
  const switches0 = wakeups(pid);
  const stopPerf = perfRecord(pid);
  const b = await fio(job);
  await stopPerf();
  const cpuS = (cpuTicks(pid) - ticks0) / CLK_TCK;
  const wakeupsPerS = (wakeups(pid) - switches0) / seconds;
  const rss = memKiB(pid, 'VmRSS');
  const hwm = memKiB(pid, 'VmHWM');
  // RSS counts the rings the daemon maps (kernel memory shared with the programs) as well as its own heap.
  const anon = memKiB(pid, 'RssAnon');
  const shared = memKiB(pid, 'RssFile') + memKiB(pid, 'RssShmem');
  const st = JSON.parse(dpsr(env, 'status', 'raw', '--json')).pairs[0];
  await stopDaemon(daemon);
  native().detach(env.DPSR_BPF_DIR!);
  const a1 = await fio(job); // A again, last: order effects (page allocation, caches) show as A0 vs A1
  const writes = b.iops * seconds;
  console.log(`(2) ${seconds} s of fio 4k randwrite at a 100k IOPS cap, raw loop over /dev/shm:`);
  console.log(`    IOPS: nothing attached (A) ${a0.iops.toFixed(0)}, daemon tracking (B) ${b.iops.toFixed(0)}: ratio B/A ${(b.iops / a0.iops).toFixed(3)}`);
  console.log(`    p99 completion latency: A ${a0.p99us.toFixed(0)} µs (again at the end: ${a1.p99us.toFixed(0)} µs), programs without a consumer (C) ${c.p99us.toFixed(0)} µs, B ${b.p99us.toFixed(0)} µs: ratio B/A ${(b.p99us / a0.p99us).toFixed(2)}, C/A ${(c.p99us / a0.p99us).toFixed(2)}`);
  console.log(`    daemon CPU ${(100 * cpuS / seconds).toFixed(1)}% of one CPU (${((cpuS * 1e6) / writes).toFixed(2)} µs per write, goal < 0.15; ${wakeupsPerS.toFixed(0)} wakeups/s), RSS ${(rss / 1024).toFixed(0)} MiB (peak ${(hwm / 1024).toFixed(0)} MiB; its own memory ${(anon / 1024).toFixed(0)} MiB, goal < 64, mapped files and rings ${(shared / 1024).toFixed(0)} MiB); dirty ${(st.dirtyBytes / MiB).toFixed(0)} MiB tracked`);
}

try {
  if (!process.argv.includes('--cost-only')) await rpoOverTime();
  await trackingCost();
} finally {
  space.cleanup();
}
