/**
 * Benchmarks the whole tracking chain (BPF programs -> ring -> addon ->
 * Tracker -> ExtentSet) against no tracking at all, on a loop device over
 * an image in /dev/shm, with fio as the writer:
 *
 *   node dist/tools/bench/tracking.js [--rounds N] [--seconds S] [--rate IOPS]
 *     [--size-mib M] [--ring-mib M] [--timer-ms T] [--retries N] [--noise-cpus C] [--nice N]
 *     [--without-issue-log]   (diagnostic: what the issue log costs; shortfalls become whole-range gaps)
 *     [--hash-log]            (diagnostic: the issue log in the hash alone, as v4 kept it, not by tag)
 *     [--perf]                (diagnostic: a saturated B+perf run under `perf record`: where the programs' ns go)
 *
 * A = nothing attached (no pin dir loaded). B = a private pin dir loaded,
 * a Tracker (this process) tracking the device. Runs alternate A B A B ...;
 * each A or B turn does (a) a saturated run and (b) a run at a fixed rate;
 * each B turn also does a third run at that rate with kernel.bpf_stats_enabled=1
 * (kept apart so the instrumentation does not inflate (a) and (b)).
 * After every B run: cycle, reconcile, and a check that no loss is silent.
 * A run disturbed by other load on the machine (CPU outside the I/O path,
 * someone else's fio or writes) is repeated up to --retries times.
 * Needs root, fio, bpftool, losetup. See tools/bench/README.md.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { resolveBlockDevice } from '../../src/devices/devices.js';
import { native } from '../../src/base/native.js';
import { OWNER_RING_BYTES } from '../../src/base/defaults.js';
import { type RangeState, Tracker } from '../../src/kernel/tracker.js';
import { KernelTracking } from '../../src/kernel/tracking.js';

// --- options -------------------------------------------------------------

interface Options {
  rounds: number;
  seconds: number;
  rateCap: number;
  sizeMiB: number;
  ringMiB: number | undefined;
  timerMs: number | undefined;
  retries: number; // repeats of a run disturbed by other load
  noiseCpus: number; // CPUs busy outside the I/O path that make a run disturbed
  nice: number; // niceness of the bench process (the tracker); fio always runs at 0
  cycleMs: number; // how often the tracker cycles (persists and releases ring space) during a run: the daemon's tick
  withoutIssueLog: boolean; // diagnostic: B loads the programs without the issue log, to see what the log costs
  hashLog: boolean; // diagnostic: B logs every request in the hash (v4's issue log), not by tag
  perf: boolean; // diagnostic: each B turn adds a saturated run under perf record, for the programs' cost by function
}

function usage(msg: string): never {
  console.error(`bench: ${msg}`);
  console.error('usage: node dist/tools/bench/tracking.js [--rounds N] [--seconds S] [--rate IOPS] [--size-mib M] [--ring-mib M] [--timer-ms T] [--retries N] [--noise-cpus C] [--nice N] [--without-issue-log] [--hash-log] [--perf]');
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  const o: Options = { rounds: 3, seconds: 10, rateCap: 50_000, sizeMiB: 1024, ringMiB: undefined, timerMs: undefined, retries: 2, noiseCpus: 0.25, nice: 0, cycleMs: 1000, withoutIssueLog: false, hashLog: false, perf: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2);
    const value = (): number => {
      const raw = inline ?? argv[++i];
      const n = Number(raw);
      if (raw === undefined || !Number.isFinite(n) || n <= 0) usage(`${flag} needs a positive number`);
      return n;
    };
    switch (flag) {
      case '--rounds': o.rounds = Math.floor(value()); break;
      case '--seconds': o.seconds = Math.floor(value()); break;
      case '--rate': o.rateCap = Math.floor(value()); break;
      case '--size-mib': o.sizeMiB = Math.floor(value()); break;
      case '--ring-mib': o.ringMiB = value(); break;
      case '--timer-ms': o.timerMs = Math.floor(value()); break;
      case '--cycle-ms': o.cycleMs = Math.floor(value()); break;
      case '--retries': o.retries = Number(inline ?? argv[++i]); if (!(o.retries >= 0)) usage('--retries needs a number'); break;
      case '--noise-cpus': o.noiseCpus = value(); break;
      case '--nice': o.nice = Number(inline ?? argv[++i]); if (!Number.isInteger(o.nice) || o.nice < -20 || o.nice > 19) usage('--nice needs -20..19'); break;
      case '--without-issue-log': o.withoutIssueLog = true; break;
      case '--hash-log': o.hashLog = true; break;
      case '--perf': o.perf = true; break;
      case '-h': case '--help': usage('help');
      default: usage(`unknown argument ${argv[i]}`);
    }
  }
  return o;
}

// --- small helpers -------------------------------------------------------

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr || e.message).trim()}`);
  }
}

const mean = (xs: number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const fmtK = (n: number): string => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${(n / 1e3).toFixed(1)}k`);
const fmtUs = (ns: number): string => `${(ns / 1000).toFixed(1)} µs`;
const fmt3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : 'n/a');
const pass = (ok: boolean): string => (ok ? 'ok' : 'MISSED');

const CLK_TCK = Number(sh('getconf', ['CLK_TCK']).trim()) || 100;

interface SystemCpu {
  ticksBusySec: number; // user+nice+system+irq+softirq: sampled at the tick
  idleSec: number; // idle+iowait+steal: idle is measured, not sampled, with NO_HZ
  cpus: number;
  atSec: number;
}

/** Whole-system CPU from /proc/stat. */
function systemCpu(): SystemCpu {
  const lines = fs.readFileSync('/proc/stat', 'utf8').split('\n');
  const atSec = Number(process.hrtime.bigint()) / 1e9;
  const [user, nice, system, idle, iowait, irq, softirq, steal] = lines[0].trim().split(/\s+/).slice(1).map(Number);
  return {
    ticksBusySec: (user + nice + system + irq + softirq) / CLK_TCK,
    idleSec: (idle + iowait + (steal ?? 0)) / CLK_TCK,
    cpus: lines.filter((l) => /^cpu[0-9]+ /.test(l)).length,
    atSec,
  };
}

/** Busy CPU seconds between two readings: by the tick's samples, and as CPUs x wall time - idle. */
function systemCpuDelta(a: SystemCpu, b: SystemCpu): { ticks: number; busy: number } {
  return { ticks: b.ticksBusySec - a.ticksBusySec, busy: b.cpus * (b.atSec - a.atSec) - (b.idleSec - a.idleSec) };
}

function processCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

/** /sys/block/DISK/stat: write I/Os and write sectors. */
function diskWrites(disk: string): { ios: number; sectors: number } {
  const f = fs.readFileSync(`/sys/block/${disk}/stat`, 'utf8').trim().split(/\s+/).map(Number);
  return { ios: f[4], sectors: f[6] };
}

// --- BPF program statistics ----------------------------------------------

interface ProgStat { id: number; name: string; runTimeNs: number; runCnt: number; recursionMisses: number }

function progIdsOf(pinDir: string): number[] {
  const ids: number[] = [];
  for (const link of ['link_complete', 'link_issue']) {
    const info = JSON.parse(sh('bpftool', ['link', 'show', 'pinned', path.join(pinDir, link), '--json'])) as { prog_id: number };
    ids.push(info.prog_id);
  }
  return ids;
}

function progStats(ids: number[]): ProgStat[] {
  return ids.map((id) => {
    const p = JSON.parse(sh('bpftool', ['prog', 'show', 'id', String(id), '--json'])) as
      { id: number; name: string; run_time_ns?: number; run_cnt?: number; recursion_misses?: number };
    return { id: p.id, name: p.name, runTimeNs: p.run_time_ns ?? 0, runCnt: p.run_cnt ?? 0, recursionMisses: p.recursion_misses ?? 0 };
  });
}

/** The highest BPF program id: ids are allocated cyclically, so its growth counts loads meanwhile. */
function maxProgId(): number {
  try {
    const all = JSON.parse(sh('bpftool', ['prog', 'show', '--json'])) as Array<{ id: number }>;
    return all.reduce((m, p) => Math.max(m, p.id), 0);
  } catch {
    return 0;
  }
}

/** dpsr programs loaded by anyone (other pin dirs, tests running meanwhile). */
function dpsrProgramsLoaded(): Array<{ id: number; name: string }> {
  try {
    const all = JSON.parse(sh('bpftool', ['prog', 'show', '--json'])) as Array<{ id: number; name?: string }>;
    return all.filter((p) => p.name === 'dpsr_complete' || p.name === 'dpsr_issue').map((p) => ({ id: p.id, name: p.name! }));
  } catch {
    return [];
  }
}

// --- CPU outside /proc/stat: the I/O path's own threads ------------------

/**
 * CPU time (s) of the kernel threads the I/O path runs in: kworkers (the loop
 * device's work, completions) and ksoftirqd. From schedstat (ns, exact), so
 * other processes on the machine do not enter it. A kworker that exits
 * between two readings takes its time along.
 */
function kernelThreadCpu(): Map<number, number> {
  const out = new Map<number, number>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    try {
      const comm = fs.readFileSync(`/proc/${name}/comm`, 'utf8');
      if (!comm.startsWith('kworker/') && !comm.startsWith('ksoftirqd/')) continue;
      out.set(Number(name), Number(fs.readFileSync(`/proc/${name}/schedstat`, 'utf8').split(' ')[0]) / 1e9);
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function kernelThreadCpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let sum = 0;
  for (const [pid, t] of after) sum += t - (before.get(pid) ?? 0);
  return sum;
}

/** Write I/Os on every whole disk but ours (other people's benchmarks or tests). */
function otherWrites(disk: string): number {
  const disks = new Set(fs.readdirSync('/sys/block'));
  let sum = 0;
  for (const line of fs.readFileSync('/proc/diskstats', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f[2] !== disk && disks.has(f[2])) sum += Number(f[7]);
  }
  return sum;
}

/** fio processes running now that are not ours (call when none of ours runs). */
function foreignFio(): number {
  let n = 0;
  for (const name of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/comm`, 'utf8').trim() === 'fio') n++;
    } catch {
      // gone meanwhile
    }
  }
  return n;
}

// --- fio -----------------------------------------------------------------

interface FioResult {
  iops: number;
  totalIos: number;
  ioBytes: number;
  clatP99Ns: number;
  clatMeanNs: number;
  runtimeMs: number;
  cpuSec: number; // fio's processes, user + system (from the shell's `times`)
}

let fioChild: ChildProcess | undefined;
/** The bench's niceness: fio is started at niceness 0 whatever it is. */
let benchNice = 0;

function fioArgs(dev: string, seconds: number, rateIops?: number): string[] {
  const args = [
    '--name=w', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio',
    '--iodepth=32', '--numjobs=1', '--time_based', `--runtime=${seconds}`, '--output-format=json',
  ];
  if (rateIops) args.push(`--rate_iops=${rateIops}`);
  return args;
}

/**
 * Runs fio as a child (async: the event loop keeps draining the ring
 * meanwhile), under a shell whose `times` gives fio's CPU time on fd 3.
 */
function runFio(args: string[]): Promise<FioResult> {
  return new Promise((resolve, reject) => {
    const shell = ['bash', '-c', 'fio "$@"; rc=$?; times >&3; exit $rc', 'bash', ...args];
    const [cmd, ...cmdArgs] = benchNice ? ['nice', '-n', String(-benchNice), ...shell] : shell;
    const child = spawn(cmd, cmdArgs, {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      detached: true, // its own process group, so cleanup can end fio too
    });
    fioChild = child;
    let out = '';
    let err = '';
    let times = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
    (child.stdio[3] as NodeJS.ReadableStream).setEncoding('utf8').on('data', (d: string) => { times += d; });
    child.on('error', (e) => { fioChild = undefined; reject(e); });
    child.on('close', (code, signal) => {
      fioChild = undefined;
      if (code !== 0) return reject(new Error(`fio exited with ${code ?? signal}: ${err.trim() || out.trim()}`));
      try {
        const json = JSON.parse(out.slice(out.indexOf('{'))) as {
          jobs: Array<{ write: { iops: number; total_ios: number; io_bytes: number; runtime: number;
            clat_ns: { mean: number; percentile?: Record<string, number> } } }>;
        };
        const w = json.jobs[0].write;
        // `times`: the shell's user and system time, then its children's.
        const children = [...(times.trim().split('\n')[1] ?? '').matchAll(/(\d+)m([\d.]+)s/g)]
          .reduce((a, m) => a + Number(m[1]) * 60 + Number(m[2]), 0);
        resolve({
          iops: w.iops,
          totalIos: w.total_ios,
          ioBytes: w.io_bytes,
          clatP99Ns: w.clat_ns.percentile?.['99.000000'] ?? NaN,
          clatMeanNs: w.clat_ns.mean,
          runtimeMs: w.runtime,
          cpuSec: children,
        });
      } catch (e) {
        reject(new Error(`cannot parse fio's output: ${(e as Error).message}\n${out.slice(0, 500)}`));
      }
    });
  });
}

// --- state and cleanup ---------------------------------------------------

const pid = process.pid;
const image = `/dev/shm/dpsr-bench-${pid}.img`;
const pinDir = `/sys/fs/bpf/dpsr-bench-${pid}`;
const tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-bench-'));
let loopDev: string | undefined;
let statsSysctlOriginal: string | undefined;
let kt: KernelTracking | undefined;
let tracker: Tracker | undefined;
let cleanedUp = false;

function setBpfStats(on: boolean): void {
  if (statsSysctlOriginal === undefined) statsSysctlOriginal = fs.readFileSync('/proc/sys/kernel/bpf_stats_enabled', 'utf8').trim();
  fs.writeFileSync('/proc/sys/kernel/bpf_stats_enabled', on ? '1' : '0');
}

function cleanup(): void {
  if (cleanedUp) return;
  cleanedUp = true;
  const step = (what: string, fn: () => void): void => {
    try { fn(); } catch (err) { console.error(`cleanup: ${what}: ${(err as Error).message}`); }
  };
  if (fioChild?.pid) step('kill fio', () => process.kill(-fioChild!.pid!, 'SIGKILL'));
  if (tracker) step('abandon tracker', () => tracker!.abandon());
  step('detach pin dir', () => { if (fs.existsSync(pinDir)) native().detach(pinDir); });
  if (kt) step('close tracking', () => kt!.close());
  if (statsSysctlOriginal !== undefined) {
    step('restore kernel.bpf_stats_enabled', () => fs.writeFileSync('/proc/sys/kernel/bpf_stats_enabled', statsSysctlOriginal!));
  }
  if (loopDev) step(`losetup -d ${loopDev}`, () => sh('losetup', ['-d', loopDev!]));
  step(`rm ${image}`, () => fs.rmSync(image, { force: true }));
  step(`rm ${tmpDir}`, () => fs.rmSync(tmpDir, { recursive: true, force: true }));
}

process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => { console.error(`bench: ${sig}, cleaning up`); cleanup(); process.exit(130); });
}

// --- perf: the programs' cost by function --------------------------------

/** What a leaf function under the programs is, for the breakdown. */
function perfCategory(sym: string): string {
  if (sym.startsWith('bpf_prog_')) return 'own instructions';
  if (/read_tsc|ktime_get|kvm_clock|^bpf_ktime/.test(sym)) return 'clock';
  if (/htab|lookup_nulls_elem|^memcmp$|jhash/.test(sym)) return 'hash lookups';
  if (/ringbuf|irq_work/.test(sym)) return 'ring';
  if (/^bpf_trace_run|rcu_read|^__bpf_trace_/.test(sym)) return 'entry';
  return 'other';
}

interface PerfCost { nsPerWrite: number; byProgram: Record<string, number>; byCategory: Record<string, number>; samples: number; otherDpsrPrograms: number }

/**
 * perf record -a -g over a run, then the samples whose stack passes through
 * bpf_trace_run* (the kernel's entry into a tp_btf program) and a dpsr
 * program (anyone's: another pin dir's programs run for every write too, so
 * the figure holds only when none is loaded), by program
 * (bpf_trace_run1: issue, 3: completion) and by leaf function, in ns per
 * write: the programs' cost without bpf_stats's own clock reads.
 */
function perfCost(file: string, writes: number): PerfCost {
  const out = path.join(tmpDir, 'perf.txt');
  execFileSync('sh', ['-c', `perf script -i '${file}' -F period,ip,sym > '${out}' 2>/dev/null`]);
  const byProgram: Record<string, number> = {};
  const byCategory: Record<string, number> = {};
  let total = 0;
  let samples = 0;
  let period = -1;
  let frames: string[] = [];
  const flush = () => {
    const entry = frames.find((f) => f.startsWith('bpf_trace_run'));
    const dpsr = entry && (frames.some((f) => /^bpf_prog_\w+_dpsr_/.test(f)) || perfCategory(frames[0]) === 'entry'); // the entry's own samples name no program
    if (period > 0 && dpsr) {
      const prog = entry === 'bpf_trace_run1' ? 'dpsr_issue' : entry === 'bpf_trace_run3' ? 'dpsr_complete' : 'other';
      byProgram[prog] = (byProgram[prog] ?? 0) + period;
      const cat = perfCategory(frames[0]);
      byCategory[cat] = (byCategory[cat] ?? 0) + period;
      total += period;
      samples++;
    }
    period = -1;
    frames = [];
  };
  for (const line of fs.readFileSync(out, 'utf8').split('\n')) {
    if (!line.trim()) { flush(); continue; }
    if (period < 0) { period = Number(line.trim().split(/\s+/)[0]); continue; }
    frames.push(line.trim().split(/\s+/)[1] ?? '?');
  }
  flush();
  fs.rmSync(out, { force: true });
  const perWrite = (o: Record<string, number>) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, v / writes]));
  const otherDpsrPrograms = dpsrProgramsLoaded().length - 2; // ours: issue and complete
  return { nsPerWrite: total / writes, byProgram: perWrite(byProgram), byCategory: perWrite(byCategory), samples, otherDpsrPrograms };
}

const fmtCost = (o: Record<string, number>) => Object.entries(o).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', ');

// --- the runs ------------------------------------------------------------

type Mode = 'A' | 'B' | 'B+stats' | 'B+perf';
type Kind = 'saturated' | 'rate';

interface LossCheck {
  verdict: string;
  receivedSectors: number;
  fioSectors: number;
  kernelSectors: number;
  drops: number;
  newGaps: string[];
  /** exact: all seen; gap-reported: something missed, and said so; SILENT-LOSS: missed, not said. */
  outcome: 'exact' | 'gap-reported' | 'SILENT-LOSS';
}

interface Run {
  round: number;
  mode: Mode;
  kind: Kind;
  rateIops?: number;
  fio: FioResult;
  wallSec: number;
  /** Whole system: CPUs x wall - idle (/proc/stat; idle is measured with NO_HZ). */
  systemCpuSec: number;
  /** Whole system: /proc/stat user+nice+system+irq+softirq (sampled at the tick: biased for periodic loads). */
  systemTicksCpuSec: number;
  /** fio + kworkers + ksoftirqd + this process: the I/O path, without other people's processes. */
  ioPathCpuSec: number;
  processCpuSec: number;
  kthreadCpuSec: number;
  otherWriteIos: number; // on other disks meanwhile
  progsLoaded: number; // BPF programs loaded (by anyone) meanwhile
  foreignFio: number; // fio processes of others when ours started
  records?: number;
  loss?: LossCheck;
  progs?: Array<{ name: string; runCnt: number; runTimeNs: number; nsPerRun: number; recursionMisses: number }>;
  perf?: PerfCost;
  kernelWriteIos: number;
  disturbed?: string;
}

interface BState { kt: KernelTracking; tracker: Tracker; range: RangeState; progIds: number[]; records: number }

async function reconcileUntilJudged(t: Tracker, range: RangeState): Promise<string> {
  for (let attempt = 0; ; attempt++) {
    const verdict = (await t.reconcile()).get(range);
    if (!verdict) return 'none';
    if (verdict.kind !== 'busy' || attempt >= 20) {
      return verdict.kind === 'shortfall' ? `shortfall ${verdict.sectors} sectors` : verdict.kind;
    }
    await sleep(20);
  }
}

async function measureOnce(round: number, mode: Mode, kind: Kind, dev: string, disk: string, seconds: number,
  rateIops: number | undefined, b: BState | undefined, cycleMs: number): Promise<Run> {
  if (mode === 'A') {
    const others = dpsrProgramsLoaded();
    if (others.length) console.log(`  warning: A run with ${others.length} dpsr programs loaded by someone else (ids ${others.map((p) => p.id).join(' ')})`);
  }
  if (b) b.range.dirty.clear(); // as if a copy had consumed it: each run builds its set afresh
  const gapsBefore = b ? b.range.gaps.length : 0;
  const received0 = b ? b.range.receivedSectors : 0;
  const records0 = b ? b.records : 0;
  const drops0 = b ? b.kt.ringStats(0).drops : 0;
  const progs0 = b ? progStats(b.progIds) : undefined; // recursion misses count with bpf_stats off too
  const foreign = foreignFio();
  const progId0 = maxProgId();
  const disk0 = diskWrites(disk);
  const other0 = otherWrites(disk);
  if (mode === 'B+stats') setBpfStats(true);
  const kth0 = kernelThreadCpu();
  const sys0 = systemCpu();
  const proc0 = processCpuSeconds();
  const t0 = process.hrtime.bigint();

  // The owner releases ring space only once what it read is persisted: cycle every second, as the daemon's tick does.
  const ticking = b ? setInterval(() => { void b.tracker.cycle(); }, cycleMs) : undefined;
  const perfFile = path.join(tmpDir, 'perf.data');
  const perf = mode === 'B+perf'
    ? spawn('perf', ['record', '-q', '-a', '-g', '-F', '4999', '-o', perfFile, '--', 'sleep', String(seconds)], { stdio: 'ignore' })
    : undefined;
  const fio = await runFio(fioArgs(dev, seconds, rateIops));
  if (perf) await new Promise((resolve) => (perf.exitCode !== null ? resolve(null) : perf.on('close', resolve)));
  clearInterval(ticking);
  // The ring's tail (under one timer period) is drained by the cycle: count it in the window.
  if (b) await b.tracker.cycle();

  const wallSec = Number(process.hrtime.bigint() - t0) / 1e9;
  const sys = systemCpuDelta(sys0, systemCpu());
  const processCpuSec = processCpuSeconds() - proc0;
  const kthreadCpuSec = kernelThreadCpuDelta(kth0, kernelThreadCpu());
  if (mode === 'B+stats') setBpfStats(false);
  const disk1 = diskWrites(disk);
  const run: Run = {
    round, mode, kind, rateIops, fio, wallSec, systemCpuSec: sys.busy, systemTicksCpuSec: sys.ticks, processCpuSec, kthreadCpuSec,
    ioPathCpuSec: fio.cpuSec + kthreadCpuSec + processCpuSec,
    otherWriteIos: otherWrites(disk) - other0,
    progsLoaded: Math.max(0, maxProgId() - progId0),
    foreignFio: foreign,
    kernelWriteIos: disk1.ios - disk0.ios,
  };
  if (perf) {
    run.perf = perfCost(perfFile, run.kernelWriteIos);
    fs.rmSync(perfFile, { force: true });
  }
  if (b) {
    run.records = b.records - records0;
    const verdict = await reconcileUntilJudged(b.tracker, b.range);
    const drops = b.kt.ringStats(0).drops - drops0;
    const receivedSectors = b.range.receivedSectors - received0;
    const fioSectors = fio.ioBytes / 512;
    const kernelSectors = disk1.sectors - disk0.sectors;
    const newGaps = b.range.gaps.slice(gapsBefore).map((g) => `${g.cause}: ${g.detail}`);
    const allSeen = verdict === 'exact' && drops === 0 && receivedSectors === kernelSectors && receivedSectors === fioSectors;
    const outcome = allSeen ? 'exact' : newGaps.length > 0 ? 'gap-reported' : 'SILENT-LOSS';
    run.loss = { verdict, receivedSectors, fioSectors, kernelSectors, drops, newGaps, outcome };
    if (progs0) {
      const progs1 = progStats(b.progIds);
      run.progs = progs1.map((p, i) => {
        const runCnt = p.runCnt - progs0[i].runCnt;
        const runTimeNs = p.runTimeNs - progs0[i].runTimeNs;
        return { name: p.name, runCnt, runTimeNs, nsPerRun: runCnt ? runTimeNs / runCnt : NaN, recursionMisses: p.recursionMisses - progs0[i].recursionMisses };
      });
    }
  }
  report(run);
  return run;
}

/** Why a run was disturbed by other load, if it was. */
function disturbance(r: Run, opts: Options): string | undefined {
  const outside = (r.systemCpuSec - r.ioPathCpuSec) / r.wallSec;
  if (outside > opts.noiseCpus) return `${outside.toFixed(2)} CPUs busy outside the I/O path (limit ${opts.noiseCpus})`;
  if (r.foreignFio > 0) return `${r.foreignFio} fio processes of someone else`;
  if (r.otherWriteIos > 1000) return `${r.otherWriteIos} write I/Os on other disks`;
  return undefined;
}

/** Runs kept for the comparisons, and every run made (the loss check counts them all). */
const kept: Run[] = [];
const made: Run[] = [];

/** A run, repeated (up to --retries times) while other load disturbs it; keeps the last. */
async function measure(opts: Options, round: number, mode: Mode, kind: Kind, dev: string, disk: string,
  rateIops: number | undefined, b: BState | undefined): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const run = await measureOnce(round, mode, kind, dev, disk, opts.seconds, rateIops, b, opts.cycleMs);
    made.push(run);
    const why = mode === 'B+perf' ? undefined : disturbance(run, opts); // perf's own CPU is outside the I/O path
    run.disturbed = why;
    if (!why || attempt >= opts.retries) {
      if (why) console.log(`    disturbed (${why}), kept after ${attempt + 1} attempts`);
      kept.push(run);
      return;
    }
    console.log(`    disturbed (${why}): repeating`);
  }
}

const perWriteUs = (cpuSec: number, writes: number): string => `${((cpuSec / writes) * 1e6).toFixed(2)}`;

function report(r: Run): void {
  const rate = r.kind === 'rate' ? ` @${fmtK(r.rateIops!)}` : '';
  const parts = [
    `round ${r.round} ${r.mode.padEnd(7)} ${(r.kind + rate).padEnd(14)}`,
    `${fmtK(r.fio.iops)} IOPS`,
    `p99 ${fmtUs(r.fio.clatP99Ns)}`,
    `CPU whole system ${r.systemCpuSec.toFixed(2)} s (${perWriteUs(r.systemCpuSec, r.fio.totalIos)} µs/write; ticks ${r.systemTicksCpuSec.toFixed(2)} s)`,
    `I/O path ${r.ioPathCpuSec.toFixed(2)} s (${perWriteUs(r.ioPathCpuSec, r.fio.totalIos)} µs/write: fio ${r.fio.cpuSec.toFixed(2)}, kthreads ${r.kthreadCpuSec.toFixed(2)}, bench ${r.processCpuSec.toFixed(2)})`,
  ];
  if (r.records !== undefined) parts.push(`${r.records} records`);
  console.log(`  ${parts.join(', ')}`);
  const others = r.systemCpuSec - r.ioPathCpuSec;
  console.log(`    outside the I/O path: ${(others / r.wallSec).toFixed(2)} CPUs busy, ${r.otherWriteIos} write I/Os on other disks, ${r.progsLoaded} BPF programs loaded by others${r.foreignFio ? `, ${r.foreignFio} fio processes of someone else` : ''}`);
  if (r.perf) {
    console.log(`    programs by perf (bpf_stats off): ${r.perf.nsPerWrite.toFixed(0)} ns per write (${fmtCost(r.perf.byProgram)}): ${fmtCost(r.perf.byCategory)}; ${r.perf.samples} samples${r.perf.otherDpsrPrograms > 0 ? `; UNRELIABLE: ${r.perf.otherDpsrPrograms} other dpsr programs loaded, their runs count in` : ''}`);
  }
  if (r.progs && r.mode === 'B+stats') {
    console.log(`    programs (bpf_stats): ${r.progs.map((p) => `${p.name} ${p.nsPerRun.toFixed(0)} ns/run x ${p.runCnt} (recursion misses ${p.recursionMisses})`).join(', ')}; kernel write I/Os ${r.kernelWriteIos}`);
  } else if (r.progs) {
    console.log(`    recursion misses: ${r.progs.map((p) => `${p.name} ${p.recursionMisses}`).join(', ')}; kernel write I/Os ${r.kernelWriteIos}`);
  }
  if (r.loss) {
    const l = r.loss;
    const sectors = l.receivedSectors === l.fioSectors && l.receivedSectors === l.kernelSectors
      ? `sectors received ${l.receivedSectors} = fio ${l.fioSectors} = kernel ${l.kernelSectors}`
      : `MISMATCH: sectors received ${l.receivedSectors}, fio wrote ${l.fioSectors}, kernel counted ${l.kernelSectors}` +
        ` (missing vs fio ${l.fioSectors - l.receivedSectors}, vs kernel ${l.kernelSectors - l.receivedSectors})`;
    console.log(`    reconcile: ${l.verdict}; ring drops ${l.drops}; ${sectors} -> ${l.outcome}`);
    for (const g of l.newGaps) console.log(`    gap: ${g}`);
  }
}

async function startB(dev: string, opts: Options): Promise<BState> {
  const k = KernelTracking.open({ pinDir, ...(opts.withoutIssueLog ? { withoutIssueLog: true } : {}), ...(opts.hashLog ? { withoutTagLog: true } : {}) });
  kt = k;
  const state: Partial<BState> = { kt: k, records: 0 };
  const t = Tracker.start(k, {
    ownerLockPath: path.join(tmpDir, 'owner.lock'),
    ringBytes: opts.ringMiB ? Math.round(opts.ringMiB * 1024 * 1024) : OWNER_RING_BYTES, // as the daemon's
    ...(opts.timerMs ? { timerMs: opts.timerMs } : {}),
    onRecords: (n) => { state.records! += n; },
  });
  tracker = t;
  state.tracker = t;
  state.range = await t.track(resolveBlockDevice(dev), 'bench');
  state.progIds = progIdsOf(pinDir);
  return state as BState;
}

async function stopB(b: BState): Promise<void> {
  await b.tracker.stop();
  tracker = undefined;
  b.kt.detach();
  b.kt.close();
  kt = undefined;
  // The kernel frees programs after their last link goes, not at once.
  let left: Array<{ id: number }> = [];
  for (let i = 0; i < 50; i++) {
    left = dpsrProgramsLoaded().filter((p) => b.progIds.includes(p.id));
    if (!left.length) break;
    await sleep(100);
  }
  if (left.length) console.log(`  warning: programs ${left.map((p) => p.id).join(' ')} still loaded 5 s after detach`);
}

// --- main ----------------------------------------------------------------

function summarize(opts: Options, runs: Run[], allRuns: Run[], rate: number, backgroundCpu: number): { ok: boolean; json: object } {
  const pick = (mode: Mode, kind: Kind) => runs.filter((r) => r.mode === mode && r.kind === kind);
  const aSat = pick('A', 'saturated');
  const bSat = pick('B', 'saturated');
  const aRate = pick('A', 'rate');
  const bRate = pick('B', 'rate');
  const bStats = pick('B+stats', 'rate');
  const rounds = Array.from({ length: opts.rounds }, (_, i) => i + 1);
  const inRound = (rs: Run[], i: number) => rs.find((r) => r.round === i)!;
  /**
   * A and B runs of the same round, paired. The headline figures use the
   * rounds where neither run was disturbed by other load, if any.
   */
  const pairs = (as: Run[], bs: Run[]) => {
    const all = rounds.map((i) => ({ round: i, a: inRound(as, i), b: inRound(bs, i) }))
      .map((p) => ({ ...p, clean: !p.a.disturbed && !p.b.disturbed }));
    const clean = all.filter((p) => p.clean);
    return { all, used: clean.length ? clean : all };
  };
  type Pairs = ReturnType<typeof pairs>;
  /** Per-round values, a '*' marking the disturbed rounds. */
  const perRound = (ps: Pairs, f: (a: Run, b: Run) => number, digits = 3) =>
    ps.all.map((p) => `${f(p.a, p.b).toFixed(digits)}${p.clean ? '' : '*'}`).join(' ');
  const usedNote = (ps: Pairs) => (ps.used.length === ps.all.length ? 'all rounds' : `rounds ${ps.used.map((p) => p.round).join(',')} (undisturbed)`);
  /** Ratio shown with enough digits that it does not round onto its target. */
  const fmtRatio = (x: number, target: number) => (x.toFixed(3) === target.toFixed(3) ? x.toFixed(4) : fmt3(x));

  const sat = pairs(aSat, bSat);
  const iopsA = mean(sat.used.map((p) => p.a.fio.iops));
  const iopsB = mean(sat.used.map((p) => p.b.fio.iops));
  const iopsRatio = iopsB / iopsA;
  const iopsPerRound = sat.all.map((p) => p.b.fio.iops / p.a.fio.iops);

  const fixed = pairs(aRate, bRate);
  const p99A = mean(fixed.used.map((p) => p.a.fio.clatP99Ns));
  const p99B = mean(fixed.used.map((p) => p.b.fio.clatP99Ns));
  const p99Ratio = p99B / p99A;
  const p99PerRound = fixed.all.map((p) => p.b.fio.clatP99Ns / p.a.fio.clatP99Ns);
  const p99Stats = mean(bStats.filter((r) => fixed.used.some((p) => p.round === r.round)).map((r) => r.fio.clatP99Ns));
  const achievedA = mean(fixed.used.map((p) => p.a.fio.iops));
  const achievedB = mean(fixed.used.map((p) => p.b.fio.iops));

  // CPU added per tracked write: (B's CPU - A's) / B's writes, per round (A and B did the same writes at the fixed rate).
  const added = (cpu: (r: Run) => number) => (a: Run, b: Run) => ((cpu(b) - cpu(a)) / b.fio.totalIos) * 1e6;
  const addedSys = added((r) => r.systemCpuSec);
  const addedIo = added((r) => r.ioPathCpuSec);
  const sysPerRound = fixed.all.map((p) => addedSys(p.a, p.b));
  const ioPerRound = fixed.all.map((p) => addedIo(p.a, p.b));
  const sysAdded = mean(fixed.used.map((p) => addedSys(p.a, p.b)));
  const ioAdded = mean(fixed.used.map((p) => addedIo(p.a, p.b)));
  const withStats = pairs(aRate, bStats);
  const ioStatsAdded = mean(withStats.used.map((p) => addedIo(p.a, p.b)));
  // Saturated: per-write CPU difference (the write counts differ).
  const addedSat = (a: Run, b: Run) => (b.ioPathCpuSec / b.fio.totalIos - a.ioPathCpuSec / a.fio.totalIos) * 1e6;
  const ioSatAdded = mean(sat.used.map((p) => addedSat(p.a, p.b)));
  const outsideCpu = mean(fixed.used.flatMap((p) => [p.a, p.b]).map((r) => (r.systemCpuSec - r.ioPathCpuSec) / r.wallSec));
  const noisy = fixed.used.some((p) => !p.clean);
  const disturbedKept = runs.filter((r) => r.disturbed).length;

  const progNames = ['dpsr_complete', 'dpsr_issue'];
  const progCost = Object.fromEntries(progNames.map((name) => {
    const ps = bStats.flatMap((r) => r.progs ?? []).filter((p) => p.name === name);
    const runCnt = ps.reduce((acc, p) => acc + p.runCnt, 0);
    const runTimeNs = ps.reduce((acc, p) => acc + p.runTimeNs, 0);
    return [name, { nsPerRun: runCnt ? runTimeNs / runCnt : NaN, runCnt, runTimeNs }];
  })) as Record<string, { nsPerRun: number; runCnt: number; runTimeNs: number }>;
  const statsWrites = bStats.reduce((acc, r) => acc + r.fio.totalIos, 0);
  const progNsPerWrite = (progCost.dpsr_complete.runTimeNs + progCost.dpsr_issue.runTimeNs) / statsWrites;

  const satRecords = bSat.reduce((acc, r) => acc + (r.records ?? 0), 0);
  const satProcCpu = bSat.reduce((acc, r) => acc + r.processCpuSec, 0);
  const recordsPerCpuSec = satRecords / satProcCpu;
  const jsCpuShare = mean(bSat.map((r) => r.processCpuSec / r.wallSec));
  const recordsPerSec = mean(bSat.map((r) => (r.records ?? 0) / r.wallSec));
  const jsUsPerRecordRate = mean([...bRate, ...bStats].map((r) => (r.processCpuSec / (r.records ?? 1)) * 1e6));
  const dropsSat = bSat.reduce((acc, r) => acc + (r.loss?.drops ?? 0), 0);
  const dropsRate = [...bRate, ...bStats].reduce((acc, r) => acc + (r.loss?.drops ?? 0), 0);

  const bRuns = allRuns.filter((r) => r.loss);
  const exact = bRuns.filter((r) => r.loss!.outcome === 'exact').length;
  const gapped = bRuns.filter((r) => r.loss!.outcome === 'gap-reported').length;
  const silent = bRuns.filter((r) => r.loss!.outcome === 'SILENT-LOSS').length;
  const verdicts = bRuns.map((r) => r.loss!.verdict);
  const short = bRuns.filter((r) => r.loss!.verdict.startsWith('shortfall'));
  const shortWithLoads = short.filter((r) => r.progsLoaded > 0).length;
  const cleanWithLoads = bRuns.filter((r) => !r.loss!.verdict.startsWith('shortfall') && r.progsLoaded > 0).length;
  const missedWrites = short.reduce((acc, r) => acc + (r.loss!.kernelSectors - r.loss!.receivedSectors) / 8, 0);
  const perfRuns = runs.filter((r) => r.perf);
  const perfMean = (f: (c: PerfCost) => Record<string, number>) => {
    const sum: Record<string, number> = {};
    for (const r of perfRuns) for (const [k, v] of Object.entries(f(r.perf!))) sum[k] = (sum[k] ?? 0) + v / perfRuns.length;
    return sum;
  };
  const perfSummary = perfRuns.length ? {
    nsPerWrite: mean(perfRuns.map((r) => r.perf!.nsPerWrite)), byProgram: perfMean((c) => c.byProgram), byCategory: perfMean((c) => c.byCategory),
  } : undefined;
  const recursionMisses = (name: string) => bRuns.flatMap((r) => r.progs ?? []).filter((p) => p.name === name).reduce((acc, p) => acc + p.recursionMisses, 0);
  const completeMisses = recursionMisses('dpsr_complete');
  const issueMisses = recursionMisses('dpsr_issue');
  const mismatches = bRuns.filter((r) => r.loss!.receivedSectors !== r.loss!.fioSectors || r.loss!.receivedSectors !== r.loss!.kernelSectors).length;

  const okIops = iopsRatio >= 0.98;
  const okJs = 1e6 / recordsPerCpuSec < 0.15 && jsUsPerRecordRate < 0.15;
  const okP99 = p99Ratio <= 1.05;
  const okSys = sysAdded < 1;
  const okIo = ioAdded < 1;
  const okDrops = dropsRate === 0;
  const okLoss = silent === 0;

  console.log('');
  console.log(`summary (${opts.rounds} rounds of A and B, ${opts.seconds} s per run; per-round values in brackets, * = a run of the pair was disturbed by other load)`);
  console.log(`  saturated IOPS: A ${fmtK(iopsA)}  B ${fmtK(iopsB)}  ratio ${fmtRatio(iopsRatio, 0.98)} (target >= 0.98) ${pass(okIops)}  [${usedNote(sat)}; per round ${perRound(sat, (a, b) => b.fio.iops / a.fio.iops)}]`);
  console.log(`  p99 clat @${fmtK(rate)} IOPS: A ${fmtUs(p99A)}  B ${fmtUs(p99B)}  ratio ${fmtRatio(p99Ratio, 1.05)} (target <= 1.05) ${pass(okP99)}  [${usedNote(fixed)}; per round ${perRound(fixed, (a, b) => b.fio.clatP99Ns / a.fio.clatP99Ns)}; B+stats ${fmtUs(p99Stats)}; achieved A ${fmtK(achievedA)} B ${fmtK(achievedB)} IOPS]`);
  console.log(`  CPU added per tracked write @${fmtK(rate)}, whole system (/proc/stat): ${sysAdded.toFixed(3)} µs (target < 1 µs) ${noisy ? 'UNRELIABLE (other load, see noise below)' : pass(okSys)}  [${usedNote(fixed)}; per round ${perRound(fixed, addedSys)}]`);
  console.log(`  CPU added per tracked write @${fmtK(rate)}, I/O path (fio+kthreads+bench): ${ioAdded.toFixed(3)} µs (target < 1 µs) ${pass(okIo)}  [${usedNote(fixed)}; per round ${perRound(fixed, addedIo)}]`);
  console.log(`  CPU added per tracked write, I/O path, saturated: ${ioSatAdded.toFixed(3)} µs [per round ${perRound(sat, addedSat)}]; @${fmtK(rate)} with bpf_stats on: ${ioStatsAdded.toFixed(3)} µs [per round ${perRound(withStats, addedIo)}]`);
  console.log(`  program cost (bpf_stats on): dpsr_complete ${progCost.dpsr_complete.nsPerRun.toFixed(0)} ns/run, dpsr_issue ${progCost.dpsr_issue.nsPerRun.toFixed(0)} ns/run, ${progNsPerWrite.toFixed(0)} ns per write (both programs)`);
  console.log(`  JS side (B saturated): ${fmtK(recordsPerCpuSec)} records per CPU-second (${(1e6 / recordsPerCpuSec).toFixed(3)} µs/record); bench process at ${(jsCpuShare * 100).toFixed(1)}% of a CPU for ${fmtK(recordsPerSec)} records/s; @${fmtK(rate)}: ${jsUsPerRecordRate.toFixed(3)} µs/record (target < 0.15 µs) ${pass(okJs)}`);
  console.log(`  ring drops: saturated ${dropsSat}, @${fmtK(rate)} ${dropsRate} (must be 0 at the fixed rate) ${pass(okDrops)}`);
  console.log(`  loss check: ${bRuns.length} B runs: ${exact} exact, ${gapped} with a reported gap, ${silent} silent; verdicts ${verdicts.join(', ')}; sector mismatches ${mismatches} ${pass(okLoss)}`);
  if (short.length) {
    console.log(`  shortfalls: ${short.length} of ${bRuns.length} B runs, ${missedWrites} 4 KiB writes in all never reached the complete program (no ring drops);` +
      ` ${shortWithLoads} of those runs saw other BPF programs loaded meanwhile (runs without a shortfall: ${cleanWithLoads} did)`);
  }
  if (perfSummary) {
    console.log(`  programs by perf (saturated, bpf_stats off, mean of ${perfRuns.length} runs): ${perfSummary.nsPerWrite.toFixed(0)} ns per write (${fmtCost(perfSummary.byProgram)}): ${fmtCost(perfSummary.byCategory)}`);
  }
  console.log(`  recursion misses (the kernel skipped a program nested on its own CPU): dpsr_complete ${completeMisses}, dpsr_issue ${issueMisses}, in ${bRuns.length} B runs`);
  console.log(`  noise: background ${backgroundCpu.toFixed(3)} busy CPUs before the runs; during the kept fixed-rate runs ${outsideCpu.toFixed(3)} CPUs busy outside the I/O path; ${allRuns.length - runs.length} disturbed runs repeated, ${disturbedKept} disturbed runs kept${noisy ? ' (the whole-system CPU figure is not reliable)' : ''}`);

  const json = {
    command: [process.argv0, ...process.argv.slice(1)].join(' '),
    options: opts,
    cpus: os.cpus().length,
    kernel: os.release(),
    rateIops: rate,
    roundsUsed: { saturated: sat.used.map((p) => p.round), fixedRate: fixed.used.map((p) => p.round) },
    saturatedIops: { A: iopsA, B: iopsB, ratio: iopsRatio, perRound: iopsPerRound, target: 0.98, ok: okIops },
    p99ClatNs: { A: p99A, B: p99B, ratio: p99Ratio, perRound: p99PerRound, bWithStats: p99Stats, target: 1.05, ok: okP99, achievedIops: { A: achievedA, B: achievedB } },
    cpuAddedPerWriteUs: {
      wholeSystem: sysAdded, wholeSystemPerRound: sysPerRound, ioPath: ioAdded, ioPathPerRound: ioPerRound,
      ioPathSaturated: ioSatAdded, ioPathWithBpfStats: ioStatsAdded, target: 1, ok: okSys, okIoPath: okIo,
    },
    programCost: { ...progCost, nsPerWrite: progNsPerWrite, ...(perfSummary ? { byPerf: perfSummary } : {}) },
    js: { recordsPerCpuSecond: recordsPerCpuSec, cpuShare: jsCpuShare, recordsPerSecond: recordsPerSec, usPerRecordAtRate: jsUsPerRecordRate, targetUs: 0.15, ok: okJs },
    ringDrops: { saturated: dropsSat, rate: dropsRate, ok: okDrops },
    recursionMisses: { dpsr_complete: completeMisses, dpsr_issue: issueMisses },
    loss: { runs: bRuns.length, shortfallRuns: short.length, missedWrites, shortfallRunsWithOtherLoads: shortWithLoads, cleanRunsWithOtherLoads: cleanWithLoads, exact, gapReported: gapped, silent, verdicts, sectorMismatches: mismatches, ok: okLoss },
    noise: { backgroundCpus: backgroundCpu, outsideIoPathCpus: outsideCpu, noisy, repeated: allRuns.length - runs.length, disturbedKept },
    runs: allRuns.map((r) => ({ kept: runs.includes(r), disturbed: r.disturbed,
      round: r.round, mode: r.mode, kind: r.kind, iops: r.fio.iops, totalIos: r.fio.totalIos, p99Ns: r.fio.clatP99Ns,
      systemCpuSec: r.systemCpuSec, systemTicksCpuSec: r.systemTicksCpuSec, ioPathCpuSec: r.ioPathCpuSec, fioCpuSec: r.fio.cpuSec, kthreadCpuSec: r.kthreadCpuSec,
      processCpuSec: r.processCpuSec, wallSec: r.wallSec, records: r.records, otherWriteIos: r.otherWriteIos,
      foreignFio: r.foreignFio, progsLoaded: r.progsLoaded, loss: r.loss, progs: r.progs,
    })),
  };
  return { ok: okIops && okP99 && (okSys || (noisy && okIo)) && okJs && okDrops && okLoss, json };
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) usage('needs root (loop devices, BPF)');
  for (const tool of ['fio', 'bpftool', 'losetup', ...(opts.perf ? ['perf'] : [])]) {
    try { sh('sh', ['-c', `command -v ${tool}`]); } catch { usage(`${tool} not found (apt-get install -y ${tool === 'losetup' ? 'mount' : tool === 'perf' ? 'linux-perf' : tool})`); }
  }
  if (opts.nice) {
    os.setPriority(opts.nice);
    benchNice = opts.nice;
  }
  console.log(`command: ${[process.argv0, ...process.argv.slice(1).map((a) => path.relative(process.cwd(), a) || a)].join(' ')}`);
  console.log(`machine: ${os.cpus().length} CPUs, kernel ${os.release()}, node ${process.version}, CLK_TCK ${CLK_TCK}, load ${fs.readFileSync('/proc/loadavg', 'utf8').trim()}`);

  // The image, filled so tmpfs pages exist before the first measured write.
  const fd = fs.openSync(image, 'w');
  try {
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < opts.sizeMiB; i++) fs.writeSync(fd, chunk);
  } finally {
    fs.closeSync(fd);
  }
  loopDev = sh('losetup', ['-f', '--show', '--direct-io=off', image]).trim();
  const disk = resolveBlockDevice(loopDev).disk;
  console.log(`device: ${loopDev} over ${image} (${opts.sizeMiB} MiB, tmpfs, --direct-io=off); pin dir ${pinDir}`);
  const others = dpsrProgramsLoaded();
  if (others.length) console.log(`warning: ${others.length} dpsr programs are loaded by someone else: A is not "nothing attached"`);

  // Background CPU, to judge the whole-system CPU figures.
  const bg0 = systemCpu();
  await sleep(2000);
  const bg1 = systemCpu();
  const backgroundCpu = systemCpuDelta(bg0, bg1).busy / (bg1.atSec - bg0.atSec);
  console.log(`background: ${backgroundCpu.toFixed(3)} busy CPU-seconds per second with nothing running`);

  // Warm-up (untracked, saturated): fixes the rate for (b).
  const warmSeconds = Math.min(3, opts.seconds);
  const warm = await runFio(fioArgs(loopDev, warmSeconds));
  const rate = Math.min(opts.rateCap, Math.round((warm.iops * 0.5) / 1000) * 1000);
  console.log(`warm-up: ${fmtK(warm.iops)} IOPS saturated (untracked, ${warmSeconds} s); fixed rate for (b): ${fmtK(rate)} IOPS`);
  console.log(`fio (a): fio ${fioArgs(loopDev, opts.seconds).join(' ')}`);
  console.log(`fio (b): fio ${fioArgs(loopDev, opts.seconds, rate).join(' ')}`);
  console.log(`B: tracker in this process (ring ${opts.ringMiB ?? OWNER_RING_BYTES / 2 ** 20} MiB, timer ${opts.timerMs ?? 50} ms, nice ${opts.nice}; fio at nice 0); B+stats = B at the fixed rate with kernel.bpf_stats_enabled=1`);
  console.log('');

  for (let round = 1; round <= opts.rounds; round++) {
    await measure(opts, round, 'A', 'saturated', loopDev, disk, undefined, undefined);
    await measure(opts, round, 'A', 'rate', loopDev, disk, rate, undefined);
    const b = await startB(loopDev, opts);
    try {
      await measure(opts, round, 'B', 'saturated', loopDev, disk, undefined, b);
      await measure(opts, round, 'B', 'rate', loopDev, disk, rate, b);
      await measure(opts, round, 'B+stats', 'rate', loopDev, disk, rate, b);
      if (opts.perf) await measure(opts, round, 'B+perf', 'saturated', loopDev, disk, undefined, b);
    } finally {
      await stopB(b);
    }
  }

  const { ok, json } = summarize(opts, kept, made, rate, backgroundCpu);
  console.log(`  overall: ${ok ? 'all targets met' : 'some targets MISSED'}`);
  console.log(`BENCH_JSON ${JSON.stringify(json)}`);
  return ok ? 0 : 1;
}

main().then(
  (code) => { cleanup(); process.exit(code); },
  (err) => { console.error(`bench: ${(err as Error).stack ?? err}`); cleanup(); process.exit(1); },
);
