/**
 * Benchmarks the whole tracking chain (BPF programs -> ring -> addon ->
 * Tracker -> ExtentSet) against no tracking at all, on a loop device over
 * an image in /dev/shm, with fio as the writer:
 *
 *   node dist/tools/bench/tracking.js [--rounds N] [--seconds S] [--rate IOPS]
 *                                     [--size-mib M] [--ring-mib M] [--timer-ms T]
 *
 * A = nothing attached (no pin dir loaded). B = a private pin dir loaded,
 * a Tracker (this process) tracking the device. Runs alternate A B A B ...;
 * each A or B turn does (a) a saturated run and (b) a run at a fixed rate;
 * each B turn also does a third run at that rate with kernel.bpf_stats_enabled=1
 * (kept apart so the instrumentation does not inflate (a) and (b)).
 * After every B run: cycle, reconcile, and a check that no loss is silent.
 * Needs root, fio, bpftool, losetup.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { resolveBlockDevice } from '../../src/devices.js';
import { native } from '../../src/native.js';
import { type RangeState, Tracker } from '../../src/tracker.js';
import { KernelTracking } from '../../src/tracking.js';

// --- options -------------------------------------------------------------

interface Options {
  rounds: number;
  seconds: number;
  rateCap: number;
  sizeMiB: number;
  ringMiB: number | undefined;
  timerMs: number | undefined;
}

function usage(msg: string): never {
  console.error(`bench: ${msg}`);
  console.error('usage: node dist/tools/bench/tracking.js [--rounds N] [--seconds S] [--rate IOPS] [--size-mib M] [--ring-mib M] [--timer-ms T]');
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  const o: Options = { rounds: 3, seconds: 10, rateCap: 50_000, sizeMiB: 1024, ringMiB: undefined, timerMs: undefined };
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

/** Whole-system busy CPU seconds: user+nice+system+irq+softirq from /proc/stat. */
function systemCpuSeconds(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq] = f;
  return (user + nice + system + irq + softirq) / CLK_TCK;
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

interface ProgStat { id: number; name: string; runTimeNs: number; runCnt: number }

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
      { id: number; name: string; run_time_ns?: number; run_cnt?: number };
    return { id: p.id, name: p.name, runTimeNs: p.run_time_ns ?? 0, runCnt: p.run_cnt ?? 0 };
  });
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

// --- fio -----------------------------------------------------------------

interface FioResult {
  iops: number;
  totalIos: number;
  ioBytes: number;
  clatP99Ns: number;
  clatMeanNs: number;
  runtimeMs: number;
}

let fioChild: ChildProcess | undefined;

function fioArgs(dev: string, seconds: number, rateIops?: number): string[] {
  const args = [
    '--name=w', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio',
    '--iodepth=32', '--numjobs=1', '--time_based', `--runtime=${seconds}`, '--output-format=json',
  ];
  if (rateIops) args.push(`--rate_iops=${rateIops}`);
  return args;
}

/** Runs fio as a child (async: the event loop keeps draining the ring meanwhile). */
function runFio(args: string[]): Promise<FioResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('fio', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    fioChild = child;
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
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
        resolve({
          iops: w.iops,
          totalIos: w.total_ios,
          ioBytes: w.io_bytes,
          clatP99Ns: w.clat_ns.percentile?.['99.000000'] ?? NaN,
          clatMeanNs: w.clat_ns.mean,
          runtimeMs: w.runtime,
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
  if (fioChild?.pid) step('kill fio', () => fioChild!.kill('SIGKILL'));
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

// --- the runs ------------------------------------------------------------

type Mode = 'A' | 'B' | 'B+stats';
type Kind = 'saturated' | 'rate';

interface LossCheck {
  verdict: string;
  verdictDetail: string;
  receivedSectors: number;
  fioSectors: number;
  kernelSectors: number;
  drops: number;
  newGaps: string[];
  outcome: 'exact' | 'gap-reported' | 'SILENT-LOSS';
}

interface Run {
  round: number;
  mode: Mode;
  kind: Kind;
  rateIops?: number;
  fio: FioResult;
  wallSec: number;
  systemCpuSec: number;
  processCpuSec: number;
  records?: number;
  loss?: LossCheck;
  progs?: Array<{ name: string; runCnt: number; runTimeNs: number; nsPerRun: number }>;
  kernelWriteIos: number;
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

async function measure(round: number, mode: Mode, kind: Kind, dev: string, disk: string, seconds: number,
  rateIops: number | undefined, b: BState | undefined): Promise<Run> {
  if (mode === 'A') {
    const others = dpsrProgramsLoaded();
    if (others.length) console.log(`  warning: A run with ${others.length} dpsr programs loaded by someone else (ids ${others.map((p) => p.id).join(' ')})`);
  }
  if (b) b.range.dirty.clear(); // as if a copy had consumed it: each run builds its set afresh
  const gapsBefore = b ? b.range.gaps.length : 0;
  const received0 = b ? b.range.receivedSectors : 0;
  const records0 = b ? b.records : 0;
  const drops0 = b ? b.kt.ringStats(0).drops : 0;
  const progs0 = mode === 'B+stats' && b ? progStats(b.progIds) : undefined;
  const disk0 = diskWrites(disk);
  if (mode === 'B+stats') setBpfStats(true);
  const sys0 = systemCpuSeconds();
  const proc0 = processCpuSeconds();
  const t0 = process.hrtime.bigint();

  const fio = await runFio(fioArgs(dev, seconds, rateIops));
  // The ring's tail (under one timer period) is drained by the cycle: count it in the window.
  if (b) await b.tracker.cycle();

  const wallSec = Number(process.hrtime.bigint() - t0) / 1e9;
  const systemCpuSec = systemCpuSeconds() - sys0;
  const processCpuSec = processCpuSeconds() - proc0;
  if (mode === 'B+stats') setBpfStats(false);
  const disk1 = diskWrites(disk);
  const run: Run = {
    round, mode, kind, rateIops, fio, wallSec, systemCpuSec, processCpuSec,
    kernelWriteIos: disk1.ios - disk0.ios,
  };
  if (b) {
    run.records = b.records - records0;
    const verdict = await reconcileUntilJudged(b.tracker, b.range);
    const drops = b.kt.ringStats(0).drops - drops0;
    const receivedSectors = b.range.receivedSectors - received0;
    const fioSectors = fio.ioBytes / 512;
    const kernelSectors = disk1.sectors - disk0.sectors;
    const newGaps = b.range.gaps.slice(gapsBefore).map((g) => `${g.cause}: ${g.detail}`);
    const matches = receivedSectors === fioSectors && receivedSectors === kernelSectors;
    const outcome = verdict === 'exact' && matches && drops === 0 ? 'exact' : newGaps.length > 0 ? 'gap-reported' : 'SILENT-LOSS';
    run.loss = { verdict, verdictDetail: verdict, receivedSectors, fioSectors, kernelSectors, drops, newGaps, outcome };
    if (progs0) {
      const progs1 = progStats(b.progIds);
      run.progs = progs1.map((p, i) => {
        const runCnt = p.runCnt - progs0[i].runCnt;
        const runTimeNs = p.runTimeNs - progs0[i].runTimeNs;
        return { name: p.name, runCnt, runTimeNs, nsPerRun: runCnt ? runTimeNs / runCnt : NaN };
      });
    }
  }
  report(run);
  return run;
}

function report(r: Run): void {
  const rate = r.kind === 'rate' ? ` @${fmtK(r.rateIops!)}` : '';
  const parts = [
    `round ${r.round} ${r.mode.padEnd(7)} ${(r.kind + rate).padEnd(14)}`,
    `${fmtK(r.fio.iops)} IOPS`,
    `p99 ${fmtUs(r.fio.clatP99Ns)}`,
    `sys CPU ${r.systemCpuSec.toFixed(2)} s (${((r.systemCpuSec / r.fio.totalIos) * 1e6).toFixed(2)} µs/write)`,
    `bench proc CPU ${r.processCpuSec.toFixed(2)} s`,
  ];
  if (r.records !== undefined) parts.push(`${r.records} records`);
  console.log(`  ${parts.join(', ')}`);
  if (r.progs) {
    console.log(`    programs (bpf_stats): ${r.progs.map((p) => `${p.name} ${p.nsPerRun.toFixed(0)} ns/run x ${p.runCnt}`).join(', ')}; kernel write I/Os ${r.kernelWriteIos}`);
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
  const k = KernelTracking.open({ pinDir });
  kt = k;
  const state: Partial<BState> = { kt: k, records: 0 };
  const t = Tracker.start(k, {
    ownerLockPath: path.join(tmpDir, 'owner.lock'),
    ...(opts.ringMiB ? { ringBytes: Math.round(opts.ringMiB * 1024 * 1024) } : {}),
    ...(opts.timerMs ? { timerMs: opts.timerMs } : {}),
    onRecords: (n) => { state.records! += n; },
  });
  tracker = t;
  state.tracker = t;
  state.range = await t.track(resolveBlockDevice(dev));
  state.progIds = progIdsOf(pinDir);
  return state as BState;
}

async function stopB(b: BState): Promise<void> {
  await b.tracker.stop();
  tracker = undefined;
  b.kt.detach();
  b.kt.close();
  kt = undefined;
  const left = dpsrProgramsLoaded().filter((p) => b.progIds.includes(p.id));
  if (left.length) console.log(`  warning: programs ${left.map((p) => p.id).join(' ')} still loaded after detach`);
}

// --- main ----------------------------------------------------------------

function summarize(opts: Options, runs: Run[], rate: number, backgroundCpu: number): { ok: boolean; json: object } {
  const pick = (mode: Mode, kind: Kind) => runs.filter((r) => r.mode === mode && r.kind === kind);
  const aSat = pick('A', 'saturated');
  const bSat = pick('B', 'saturated');
  const aRate = pick('A', 'rate');
  const bRate = pick('B', 'rate');
  const bStats = pick('B+stats', 'rate');
  const byRound = (rs: Run[], round: number) => rs.find((r) => r.round === round);
  const rounds = Array.from({ length: opts.rounds }, (_, i) => i + 1);

  const iopsA = mean(aSat.map((r) => r.fio.iops));
  const iopsB = mean(bSat.map((r) => r.fio.iops));
  const iopsRatio = iopsB / iopsA;
  const iopsPerRound = rounds.map((i) => byRound(bSat, i)!.fio.iops / byRound(aSat, i)!.fio.iops);

  const p99A = mean(aRate.map((r) => r.fio.clatP99Ns));
  const p99B = mean(bRate.map((r) => r.fio.clatP99Ns));
  const p99Ratio = p99B / p99A;
  const p99PerRound = rounds.map((i) => byRound(bRate, i)!.fio.clatP99Ns / byRound(aRate, i)!.fio.clatP99Ns);
  const achievedA = mean(aRate.map((r) => r.fio.iops));
  const achievedB = mean(bRate.map((r) => r.fio.iops));

  // CPU added per tracked write: (B's system CPU - A's) / B's writes, pairwise per round.
  const cpuPerRound = rounds.map((i) => {
    const a = byRound(aRate, i)!;
    const b = byRound(bRate, i)!;
    return ((b.systemCpuSec - a.systemCpuSec) / b.fio.totalIos) * 1e6;
  });
  const cpuAdded = mean(cpuPerRound);
  const cpuStatsPerRound = rounds.map((i) => {
    const a = byRound(aRate, i)!;
    const b = byRound(bStats, i)!;
    return ((b.systemCpuSec - a.systemCpuSec) / b.fio.totalIos) * 1e6;
  });
  const cpuAddedStats = mean(cpuStatsPerRound);
  const cpuAddedSat = mean(rounds.map((i) => {
    const a = byRound(aSat, i)!;
    const b = byRound(bSat, i)!;
    return (b.systemCpuSec / b.fio.totalIos - a.systemCpuSec / a.fio.totalIos) * 1e6;
  }));

  const progNames = ['dpsr_complete', 'dpsr_issue'];
  const progCost = Object.fromEntries(progNames.map((name) => {
    const ps = bStats.flatMap((r) => r.progs ?? []).filter((p) => p.name === name);
    const runCnt = ps.reduce((a, p) => a + p.runCnt, 0);
    const runTimeNs = ps.reduce((a, p) => a + p.runTimeNs, 0);
    return [name, { nsPerRun: runCnt ? runTimeNs / runCnt : NaN, runCnt, runTimeNs }];
  })) as Record<string, { nsPerRun: number; runCnt: number; runTimeNs: number }>;
  const statsWrites = bStats.reduce((a, r) => a + r.fio.totalIos, 0);
  const progNsPerWrite = (progCost.dpsr_complete.runTimeNs + progCost.dpsr_issue.runTimeNs) / statsWrites;

  const satRecords = bSat.reduce((a, r) => a + (r.records ?? 0), 0);
  const satProcCpu = bSat.reduce((a, r) => a + r.processCpuSec, 0);
  const recordsPerCpuSec = satRecords / satProcCpu;
  const jsCpuShare = mean(bSat.map((r) => r.processCpuSec / r.wallSec));
  const recordsPerSec = mean(bSat.map((r) => (r.records ?? 0) / r.wallSec));
  const dropsSat = bSat.reduce((a, r) => a + (r.loss?.drops ?? 0), 0);
  const dropsRate = [...bRate, ...bStats].reduce((a, r) => a + (r.loss?.drops ?? 0), 0);

  const bRuns = runs.filter((r) => r.loss);
  const exact = bRuns.filter((r) => r.loss!.outcome === 'exact').length;
  const gapped = bRuns.filter((r) => r.loss!.outcome === 'gap-reported').length;
  const silent = bRuns.filter((r) => r.loss!.outcome === 'SILENT-LOSS').length;
  const verdicts = bRuns.map((r) => r.loss!.verdict);
  const mismatches = bRuns.filter((r) => r.loss!.receivedSectors !== r.loss!.fioSectors || r.loss!.receivedSectors !== r.loss!.kernelSectors).length;

  const okIops = iopsRatio >= 0.95;
  const okP99 = p99Ratio <= 1.05;
  const okCpu = cpuAdded < 1;
  const okDrops = dropsRate === 0;
  const okLoss = silent === 0;

  const ratios = (xs: number[]) => xs.map(fmt3).join(' ');
  console.log('');
  console.log('summary');
  console.log(`  saturated IOPS: A ${fmtK(iopsA)}  B ${fmtK(iopsB)}  ratio ${fmt3(iopsRatio)} (target >= 0.95) ${pass(okIops)}  [per round ${ratios(iopsPerRound)}]`);
  console.log(`  p99 clat @${fmtK(rate)} IOPS: A ${fmtUs(p99A)}  B ${fmtUs(p99B)}  ratio ${fmt3(p99Ratio)} (target <= 1.05) ${pass(okP99)}  [per round ${ratios(p99PerRound)}; achieved A ${fmtK(achievedA)} B ${fmtK(achievedB)} IOPS]`);
  console.log(`  CPU added per tracked write @${fmtK(rate)}: ${cpuAdded.toFixed(3)} µs (target < 1 µs) ${pass(okCpu)}  [per round ${cpuPerRound.map((x) => x.toFixed(3)).join(' ')}; whole system, background ${backgroundCpu.toFixed(3)} CPU-s/s]`);
  console.log(`  CPU added per tracked write saturated: ${cpuAddedSat.toFixed(3)} µs (per-write CPU B - A; not a target)`);
  console.log(`  program cost (bpf_stats on): dpsr_complete ${progCost.dpsr_complete.nsPerRun.toFixed(0)} ns/run, dpsr_issue ${progCost.dpsr_issue.nsPerRun.toFixed(0)} ns/run, ${progNsPerWrite.toFixed(0)} ns per write; CPU added per write with bpf_stats on ${cpuAddedStats.toFixed(3)} µs`);
  console.log(`  JS side (B saturated): ${fmtK(recordsPerCpuSec)} records per CPU-second; bench process at ${(jsCpuShare * 100).toFixed(1)}% of a CPU for ${fmtK(recordsPerSec)} records/s`);
  console.log(`  ring drops: saturated ${dropsSat}, @${fmtK(rate)} ${dropsRate} (must be 0 at the fixed rate) ${pass(okDrops)}`);
  console.log(`  loss check: ${bRuns.length} B runs: ${exact} exact, ${gapped} with a reported gap, ${silent} silent; verdicts ${verdicts.join(' ')}; sector mismatches ${mismatches} ${pass(okLoss)}`);

  const json = {
    command: process.argv.slice(1).join(' '),
    options: opts,
    cpus: os.cpus().length,
    kernel: os.release(),
    rateIops: rate,
    backgroundCpuPerSec: backgroundCpu,
    saturatedIops: { A: iopsA, B: iopsB, ratio: iopsRatio, perRound: iopsPerRound, target: 0.95, ok: okIops },
    p99ClatNs: { A: p99A, B: p99B, ratio: p99Ratio, perRound: p99PerRound, target: 1.05, ok: okP99, achievedIops: { A: achievedA, B: achievedB } },
    cpuAddedPerWriteUs: { value: cpuAdded, perRound: cpuPerRound, target: 1, ok: okCpu, saturated: cpuAddedSat, withBpfStats: cpuAddedStats },
    programCost: { ...progCost, nsPerWrite: progNsPerWrite },
    js: { recordsPerCpuSecond: recordsPerCpuSec, cpuShare: jsCpuShare, recordsPerSecond: recordsPerSec },
    ringDrops: { saturated: dropsSat, rate: dropsRate, ok: okDrops },
    loss: { runs: bRuns.length, exact, gapReported: gapped, silent, verdicts, sectorMismatches: mismatches, ok: okLoss },
    runs: runs.map((r) => ({
      round: r.round, mode: r.mode, kind: r.kind, iops: r.fio.iops, totalIos: r.fio.totalIos, p99Ns: r.fio.clatP99Ns,
      systemCpuSec: r.systemCpuSec, processCpuSec: r.processCpuSec, wallSec: r.wallSec, records: r.records,
      loss: r.loss, progs: r.progs,
    })),
  };
  return { ok: okIops && okP99 && okCpu && okDrops && okLoss, json };
}

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  if (process.getuid?.() !== 0) usage('needs root (loop devices, BPF)');
  for (const tool of ['fio', 'bpftool', 'losetup']) {
    try { sh('sh', ['-c', `command -v ${tool}`]); } catch { usage(`${tool} not found (apt-get install -y ${tool === 'losetup' ? 'mount' : tool})`); }
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
  const bg0 = systemCpuSeconds();
  await sleep(2000);
  const backgroundCpu = (systemCpuSeconds() - bg0) / 2;
  console.log(`background: ${backgroundCpu.toFixed(3)} busy CPU-seconds per second with nothing running`);

  // Warm-up (untracked, saturated): fixes the rate for (b).
  const warmSeconds = Math.min(3, opts.seconds);
  const warm = await runFio(fioArgs(loopDev, warmSeconds));
  const rate = Math.min(opts.rateCap, Math.round((warm.iops * 0.5) / 1000) * 1000);
  console.log(`warm-up: ${fmtK(warm.iops)} IOPS saturated (untracked, ${warmSeconds} s); fixed rate for (b): ${fmtK(rate)} IOPS`);
  console.log(`fio (a): fio ${fioArgs(loopDev, opts.seconds).join(' ')}`);
  console.log(`fio (b): fio ${fioArgs(loopDev, opts.seconds, rate).join(' ')}`);
  console.log(`B: tracker in this process (ring ${opts.ringMiB ?? 8} MiB, timer ${opts.timerMs ?? 50} ms); B+stats = B at the fixed rate with kernel.bpf_stats_enabled=1`);
  console.log('');

  const runs: Run[] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    runs.push(await measure(round, 'A', 'saturated', loopDev, disk, opts.seconds, undefined, undefined));
    runs.push(await measure(round, 'A', 'rate', loopDev, disk, opts.seconds, rate, undefined));
    const b = await startB(loopDev, opts);
    try {
      runs.push(await measure(round, 'B', 'saturated', loopDev, disk, opts.seconds, undefined, b));
      runs.push(await measure(round, 'B', 'rate', loopDev, disk, opts.seconds, rate, b));
      runs.push(await measure(round, 'B+stats', 'rate', loopDev, disk, opts.seconds, rate, b));
    } finally {
      await stopB(b);
    }
  }

  const { ok, json } = summarize(opts, runs, rate, backgroundCpu);
  console.log(`  overall: ${ok ? 'all targets met' : 'some targets MISSED'}`);
  console.log(`BENCH_JSON ${JSON.stringify(json)}`);
  return ok ? 0 : 1;
}

main().then(
  (code) => { cleanup(); process.exit(code); },
  (err) => { console.error(`bench: ${(err as Error).stack ?? err}`); cleanup(); process.exit(1); },
);
