// dpsr daemon: the one owner while it runs. Every tick it drains the ring
// (flip, persist, clear), syncs the pairs their policy says are due (a
// manual pair never), compares suspect regions and scrubs in the
// background within a bandwidth budget, runs the failure hook on failures,
// mismatches and gaps, and writes the metrics file. It answers the control
// socket: a flush (`dpsr sync`) returns when the image is committed.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Settings } from '../base/defaults.js';
import { DpsrError, ExitStatus } from '../base/errors.js';
import { ControlClient, PROTOCOL_VERSION, type ProgressFrame, type Received, type Reply, type Request, frameReader, parseRequest, writeFrame } from './protocol.js';
import { type ProgressReporter, withProgressReporter } from '../base/progress.js';
import { type DaemonConfig, keepPolicyOf, loadConfig } from './config.js';
import { type Policy, decide } from './schedule.js';
import { type Schedule, changedBytes, hasChanges, percentile, policyOf, statusOf } from './pair-status.js';
import { type HookEventKind, runFailureHook } from './failure-hook.js';
import { type MetricsSnapshot, writeMetricsFile } from './metrics.js';
import { serverUnreachable } from '../io/nbd-device.js';
import { History, historyPath, sampleOf } from './history.js';
import { withSyncProgress } from './sync-progress.js';
import { describeExtents, scrubStep, scrubWanted } from '../sync/scrub.js';
import { closeSession, recheckSources, type Session } from '../state/session.js';
import { openTrackingSession, settleAllWaiting } from '../drive/boot-adoption.js';
import { type SyncReport, syncPair } from '../sync/sync.js';
import { journalCapacityOf } from '../drive/journal.js';
import { rollbackInSession } from '../restore/rollback.js';
import { revertInSession } from '../restore/revert.js';
import type { Gap } from '../kernel/tracker.js';
import { SECTOR } from '../base/units.js';

const REPEAT_ALARM_MS = 3_600_000; // the same failure again: the hook hears of it at most hourly
const HOOK_TIMEOUT_MS = 60_000;
// A command may own tracking for a moment (a status, a rollback's plan, as the Cockpit page
// runs them every few seconds): a starting daemon waits that out rather than failing.
const OWNER_WAIT_MS = 10_000;

export interface DaemonOptions {
  tickMs: number | null; // how often the ring is drained and persisted (null: the config's)
  intervalMs: number | null; // every pair continuous, synced at most this often (overrides the config)
  quietMs?: number;
}

/** Runs one piece of work on the session at a time: ticks, syncs and requests never overlap. */
function serializer() {
  let chain: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const next = chain.then(fn, fn);
    chain = next.catch(() => {});
    return next;
  };
}

/** Told of each sync as it starts and as it ends. */
interface SyncWatch {
  started(name: string): void;
  finished(name: string, startedMs: number, result: SyncReport | Error): void;
}

async function syncNames(s: Session, names: string[], opts: { freeze?: boolean; quietMs?: number; inPlace?: boolean; point?: string; config: DaemonConfig }, watch: SyncWatch): Promise<SyncReport[]> {
  const { config, ...syncOpts } = opts;
  const reports: SyncReport[] = [];
  for (const name of names) {
    const started = Date.now();
    watch.started(name);
    try {
      const r = await withSyncProgress(name, s.ranges.get(name), () => syncPair(s, name, { ...syncOpts, lockWaitMs: 0, keep: keepPolicyOf(config, name) }));
      watch.finished(name, started, r);
      reports.push(r);
    } catch (err) {
      // A diff or restore holds the drive: not a failure, the next tick tries again.
      if ((err as DpsrError).code !== 'EDRIVELOCKED') watch.finished(name, started, err as Error);
      throw err;
    }
  }
  return reports;
}

/** What the daemon knows of each pair beyond the store: for status, metrics and the hook. */
export interface PairRuntime {
  lastSyncStartMs: number;
  lastError: string | null;
  syncsTotal: number;
  syncsFailed: number;
  bytesSyncedTotal: number;
  gapsNotified: number; // gaps already passed to the failure hook
  lastSyncEndMs: number | null;
  freezeCount: number; // since the daemon started (the percentiles come from the pair's own history)
  freezeSumMs: number;
  gapsTotal: Record<string, number>; // since the daemon started, by cause
  ringDrops: number; // records
  malformedRecords: number; // ring records that could not be read
  failuresInARow: number;
  lastFailureAlarmMs: number;
  lastCompareError: string | null;
  shortfallSectors: number;
  /** Since when the DPSR drive's NBD server has been unreachable (the first failed sync that said so); null: reached. */
  unreachableSinceMs: number | null;
}

async function listen(socketPath: string): Promise<net.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  if (fs.existsSync(socketPath)) {
    const other = await ControlClient.connect(socketPath).catch(() => null);
    if (other) {
      other.close();
      throw new DpsrError(`a dpsr daemon already listens on ${socketPath}`, 'EDAEMONRUNNING');
    }
    fs.unlinkSync(socketPath); // left by a daemon that died
  }
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Root only: the socket is created inside a 0700 directory and then made 0600.
    server.listen(socketPath, () => resolve());
  });
  fs.chmodSync(socketPath, 0o600);
  return server;
}

function withOverrides(config: DaemonConfig, opts: DaemonOptions): DaemonConfig {
  const c = { ...config, tickMs: opts.tickMs ?? config.tickMs };
  if (opts.intervalMs) {
    const every: Policy = { policy: 'continuous', rpoMs: 2 * opts.intervalMs, minIntervalMs: opts.intervalMs };
    return { ...c, pairs: {}, defaultPolicy: every };
  }
  return c;
}

export async function runDaemon(settings: Settings, opts: DaemonOptions, log: (line: string) => void): Promise<void> {
  let config = withOverrides(loadConfig(settings.configPath), opts); // bad config: exit 2 before anything
  const startedMs = Date.now();
  const s = await openTrackingSession(settings, { waitMs: OWNER_WAIT_MS });
  const serial = serializer();
  let server: net.Server;
  try {
    server = await listen(settings.socketPath);
  } catch (err) {
    await closeSession(s);
    throw err;
  }
  const history = History.load(historyPath(settings.stateDir));
  const describe = (c: DaemonConfig) => s.store.pairs().map((p) => `${p.name} ${policyOf(c, p.name).policy}`).join(', ');
  log(`dpsr daemon: listening on ${settings.socketPath}; pairs: ${describe(config) || 'none'}`);

  /** `progress`: where this request's progress frames go, when it asked for them. */
  const handle = async (req: Request, progress: ProgressReporter): Promise<unknown> => {
    const reportTo = 'progress' in req && req.progress ? progress : null;
    switch (req.command) {
      case 'hello':
        return { version: PROTOCOL_VERSION };
      case 'sync': {
        const names = req.all ? s.store.pairs().map((p) => p.name) : req.names;
        for (const n of names) if (!s.store.pair(n)) throw new DpsrError(`no pair named ${n}`, 'ENOPAIR');
        return serial(() => withProgressReporter(reportTo,
          () => syncNames(s, names, { freeze: req.freeze, quietMs: req.quietMs ?? opts.quietMs, inPlace: req.inPlace, point: req.point, config }, syncWatch)));
      }
      case 'rollback':
        return serial(() => withProgressReporter(reportTo, () => rollbackInSession(s, req)));
      case 'revert':
        return serial(() => revertInSession(s, req));
      case 'status':
        // Not queued behind a sync (a full copy can take an hour): it only reads what is in memory.
        return s.store.pairs().filter((p) => !req.name || p.name === req.name).map((p) =>
          statusOf(p, s.ranges.get(p.name), s.problems.get(p.name), true, policyOf(config, p.name), scheduleOf(p.name)));
      default:
        throw new DpsrError(`unknown request ${(req as { command: string }).command}`, 'EPROTO');
    }
  };

  const clients = new Set<net.Socket>();
  server.on('connection', (sock) => {
    clients.add(sock);
    sock.on('close', () => clients.delete(sock));
    const answerError = (id: number, err: DpsrError) => writeFrame(sock, {
      id, ok: false,
      error: { message: err.message, code: err.code ?? 'EFAIL', exitStatus: err.exitStatus ?? ExitStatus.failure },
    } satisfies Reply);
    sock.on('data', frameReader((msg) => {
      let received: Received;
      try {
        received = parseRequest(msg);
      } catch (err) {
        answerError((err as { id?: number }).id ?? 0, err as DpsrError); // and the connection goes on: the frame was whole
        return;
      }
      const { id, req } = received;
      handle(req, (progress) => writeFrame(sock, { id, progress } satisfies ProgressFrame)).then(
        (result) => writeFrame(sock, { id, ok: true, result } satisfies Reply),
        (err: DpsrError) => answerError(id, err),
      );
    }, (err) => {
      // The stream cannot be followed past a frame it cannot read: say why, then hang up.
      answerError(0, err as DpsrError);
      sock.end();
      sock.removeAllListeners('data');
    }));
    sock.on('error', () => {});
  });

  const runtime = new Map<string, PairRuntime>();
  const runtimeOf = (name: string): PairRuntime => {
    let r = runtime.get(name);
    if (!r) {
      const pair = s.store.pair(name);
      // Never synced: schedules count from the pair's creation (a calendar searches forward from it).
      r = { lastSyncStartMs: pair?.lastSync?.atMs ?? pair?.createdMs ?? 0, lastError: null, syncsTotal: 0, syncsFailed: 0, bytesSyncedTotal: 0, gapsNotified: s.ranges.get(name)?.gaps.filter((g) => g.atMs < startedMs).length ?? 0,
        lastSyncEndMs: null, freezeCount: 0, freezeSumMs: 0, gapsTotal: {}, ringDrops: 0, malformedRecords: 0, shortfallSectors: 0,
        failuresInARow: 0, lastFailureAlarmMs: 0, lastCompareError: null, unreachableSinceMs: null };
      runtime.set(name, r);
    }
    return r;
  };
  function scheduleOf(name: string): Schedule {
    const r = runtimeOf(name);
    return { lastSyncStartMs: r.lastSyncStartMs, lastError: r.lastError, failuresInARow: r.failuresInARow, unreachableSinceMs: r.unreachableSinceMs };
  }
  const alarm = (kind: HookEventKind, pair: string, reason: string) => {
    log(`dpsr daemon: ${pair}: ${kind}: ${reason}`);
    if (!config.onFailure) return;
    // runFailureHook never rejects: a broken hook is logged, never breaks the daemon.
    void runFailureHook(config.onFailure, { kind, pair, reason, atMs: Date.now() }, HOOK_TIMEOUT_MS)
      .then((r) => { if (r.error) log(`dpsr daemon: failure hook: ${r.error}`); });
  };
  function afterSync(name: string, startedMs: number, result: SyncReport | Error): void {
    const r = runtimeOf(name);
    r.lastSyncStartMs = startedMs;
    r.syncsTotal++;
    // The server away: retried with the failures' backoff (a reconnect each time); the tracker keeps tracking meanwhile.
    r.unreachableSinceMs = result instanceof Error && serverUnreachable(result) ? r.unreachableSinceMs ?? startedMs : null;
    if (result instanceof Error) {
      r.syncsFailed++;
      r.failuresInARow++;
      // The hook hears of a new failure at once, of the same one again at most hourly.
      if (result.message !== r.lastError || Date.now() - r.lastFailureAlarmMs >= REPEAT_ALARM_MS) {
        alarm('sync-failed', name, result.message);
        r.lastFailureAlarmMs = Date.now();
      }
      r.lastError = result.message;
      return;
    }
    r.failuresInARow = 0;
    r.lastError = null;
    r.bytesSyncedTotal += result.copiedBytes + result.repairedBytes + result.fullCopyBytes;
    r.lastSyncEndMs = Date.now();
    if (result.freezeMs !== null) {
      r.freezeCount++;
      r.freezeSumMs += result.freezeMs;
    }
    log(`dpsr daemon: ${name}: generation ${result.generation}, ${result.copiedBytes + result.repairedBytes} bytes, image ${result.image}`);
  }
  // The chart's history: a sample a minute, and one before and after each sync (its sawtooth).
  let historyError: string | null = null;
  const sample = (name: string, always: boolean) => {
    const pair = s.store.pair(name);
    if (!pair || !history.add(name, sampleOf(pair, s.ranges.get(name), Date.now()), always)) return;
    history.keep(s.store.pairs().map((p) => p.name));
    try {
      history.save();
      historyError = null;
    } catch (err) {
      // Said once: a chart is not worth failing for.
      if ((err as Error).message !== historyError) log(`dpsr daemon: history: ${(err as Error).message}`);
      historyError = (err as Error).message;
    }
  };
  const syncWatch: SyncWatch = {
    started: (name) => sample(name, true),
    finished: (name, startedMs, result) => {
      afterSync(name, startedMs, result);
      sample(name, true);
    },
  };
  const syncDue = async () => {
    for (const [name, range] of s.ranges) {
      const pair = s.store.pair(name);
      if (!pair || s.problems.has(name) || pair.heldAfterRevert) continue; // a reverted drive waits for a manual sync
      const r = runtimeOf(name);
      const { syncNow } = decide(policyOf(config, name), {
        changed: hasChanges(range, pair),
        pendingBytes: (range.dirty.totalSectors + range.suspect.totalSectors) * SECTOR,
        journalBytes: journalCapacityOf(pair) ?? 0,
        lastSyncStartMs: r.lastSyncStartMs, imageTimeMs: pair.imageTimeMs, failuresInARow: r.failuresInARow,
      }, Date.now());
      if (!syncNow) continue;
      await syncNames(s, [name], { quietMs: opts.quietMs, config }, syncWatch).catch(() => {}); // reported by afterSync
    }
  };
  // Background comparison: suspect regions at the compare bandwidth, then the scrub at its own.
  const background = async () => {
    for (const [name, range] of s.ranges) {
      const pair = s.store.pair(name);
      if (!pair || s.problems.has(name)) continue;
      const policy = { roundEveryMs: config.scrubEveryMs };
      if (!scrubWanted(pair, range, policy, Date.now())) continue;
      const rate = range.suspect.isEmpty ? config.scrubBytesPerSec : config.compareBytesPerSec;
      const r = runtimeOf(name);
      let step;
      try {
        step = await scrubStep(s, pair, range, (rate * config.tickMs) / 1000, policy);
      } catch (err) {
        // A device gone or failing: said once (the next sync reports it too), retried next tick.
        const message = (err as Error).message;
        if (message !== r.lastCompareError) log(`dpsr daemon: ${name}: background compare: ${message}`);
        r.lastCompareError = message;
        continue;
      }
      r.lastCompareError = null;
      if (!step.mismatches.isEmpty) alarm('scrub-mismatch', name, `the DPSR drive differs from the source where no write was seen: ${describeExtents(step.mismatches)}`);
      if (step.roundDone) log(`dpsr daemon: ${name}: scrub round complete, ${pair.scrub?.mismatchesTotal ?? 0} mismatches in total`);
    }
  };
  // Gaps the tracker recorded since the last look (drops, shortfalls, unknown writes): the hook hears of each.
  const newGaps = () => {
    for (const [name, range] of s.ranges) {
      const r = runtimeOf(name);
      const fresh: Gap[] = range.gaps.slice(r.gapsNotified);
      r.gapsNotified = range.gaps.length;
      for (const g of fresh) {
        r.gapsTotal[g.cause] = (r.gapsTotal[g.cause] ?? 0) + 1;
        if (g.cause === 'ring-drops') r.ringDrops += g.records ?? 0;
        if (g.cause === 'malformed-records') r.malformedRecords += g.records ?? 0;
        if (g.cause === 'shortfall') r.shortfallSectors += g.sectors ?? 0;
        if (g.cause !== 'scrub-mismatch') alarm('gap', name, `${g.cause}: ${g.detail}`);
      }
    }
  };
  // One tick at a time: behind a long sync, missed ticks are skipped, not queued (the
  // background compare's budget is per tick, and requests would wait behind the backlog).
  let ticking = false;
  const tick = setInterval(() => {
    if (ticking) return;
    ticking = true;
    void serial(async () => {
      await recheckSources(s);
      await settleAllWaiting(s); // a pair whose DPSR drive was missing at boot: judged once it is back
      await s.tracker.cycle();
      newGaps();
      await syncDue();
      await background();
      newGaps();
      for (const p of s.store.pairs()) sample(p.name, false);
      try {
        // For node_exporter's textfile collector, rewritten every tick.
        if (config.metricsFile) writeMetricsFile(config.metricsFile, metricsSnapshot(s, runtimeOf));
      } catch (err) {
        log(`dpsr daemon: metrics file ${config.metricsFile}: ${(err as Error).message}`);
      }
    }).catch((e) => log(`dpsr daemon: ${e.message}`)).finally(() => { ticking = false; });
  }, config.tickMs);
  process.on('SIGHUP', () => {
    try {
      config = withOverrides(loadConfig(settings.configPath), opts);
      log(`dpsr daemon: reloaded ${settings.configPath}; pairs: ${describe(config) || 'none'}`);
    } catch (err) {
      log(`dpsr daemon: ${(err as Error).message}; keeping the previous configuration`);
    }
  });

  await new Promise<void>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
  });
  log('dpsr daemon: stopping');
  clearInterval(tick);
  server.close();
  await serial(() => closeSession(s));
  fs.rmSync(settings.socketPath, { force: true });
  // A client that holds its connection (or stalls mid-frame) must not keep the daemon from exiting.
  for (const c of clients) c.destroy();
}


function metricsSnapshot(s: Session, runtimeOf: (name: string) => PairRuntime): MetricsSnapshot {
  return {
    atMs: Date.now(),
    pairs: s.store.pairs().map((p) => {
      const r = runtimeOf(p.name);
      const range = s.ranges.get(p.name);
      return {
        pair: p.name,
        imageTimeMs: p.imageTimeMs,
        imageConsistent: p.generation > 0 && !p.pending && (p.image === 'point-in-time' || p.image === 'crash-consistent'),
        dirtyBytes: range ? changedBytes(range) : 0,
        suspectBytes: range ? range.suspect.totalSectors * SECTOR : 0,
        syncedBytesTotal: r.bytesSyncedTotal,
        syncsTotal: r.syncsTotal,
        syncsFailedTotal: r.syncsFailed,
        lastSyncDurationMs: p.lastSync?.durationMs ?? null,
        lastSyncEndMs: r.lastSyncEndMs,
        freeze: { count: r.freezeCount, sumMs: r.freezeSumMs, p50Ms: percentile(p.freezeHistoryMs ?? [], 50), p99Ms: percentile(p.freezeHistoryMs ?? [], 99) },
        ringDropsTotal: r.ringDrops,
        malformedRecordsTotal: r.malformedRecords,
        reconcileShortfallSectorsTotal: r.shortfallSectors,
        gapsTotal: r.gapsTotal,
        scrubMismatchesTotal: p.scrub?.mismatchesTotal ?? 0,
        driveUnreachableSinceMs: r.unreachableSinceMs,
      };
    }),
  };
}
