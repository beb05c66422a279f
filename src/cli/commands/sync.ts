// dpsr sync [NAME|--all]: an incremental sync of each pair, returning when it is done.
import type { Settings } from '../../base/defaults.js';
import { DpsrError, UsageError } from '../../base/errors.js';
import { ControlClient } from '../../daemon/protocol.js';
import { keepPolicyOf, loadConfig } from '../../daemon/config.js';
import type { SyncReport } from '../../sync/sync.js';
import { formatBytes } from '../../base/units.js';
import { jsonProgressLines, withProgressReporter } from '../../base/progress.js';


export function describeSync(r: SyncReport): string {
  const parts = [`${r.name}: generation ${r.generation}`, `copied ${formatBytes(r.copiedBytes)} of ${formatBytes(r.dataBytes)}`];
  if (r.fullCopyBytes) parts.push(`full copy ${formatBytes(r.fullCopyBytes)}`);
  if (r.comparedBytes) parts.push(`compared ${formatBytes(r.comparedBytes)}, repaired ${formatBytes(r.repairedBytes)}`);
  if (r.passBytes.length > 1) parts.push(`${r.passBytes.length} passes (${r.passBytes.map(formatBytes).join(', ')})`);
  if (r.freezeMs !== null) parts.push(`${r.sourceMounted.join(', ')} frozen ${r.freezeMs.toFixed(0)} ms`);
  parts.push(`in ${(r.durationMs / 1000).toFixed(2)} s`);
  const image = r.image === 'crash-consistent'
    ? `image crash-consistent only (${r.sourceMounted.join(', ')} mounted, --no-freeze)`
    : r.image === 'fuzzy' ? `image fuzzy: ${r.notConsistent ?? 'the source was written during the sync'}; the next sync catches up` : `image ${r.image}`;
  const gaps = r.gaps.length ? `; gaps: ${[...new Set(r.gaps.map((g) => g.cause))].join(', ')}` : '';
  return `${parts.join(', ')}; ${image}${gaps}`;
}

const timedOut = (ms: number, rest: string) =>
  new DpsrError(`dpsr sync: not done after ${(ms / 1000).toFixed(0)} s (--timeout); ${rest}; the DPSR drive holds a whole image either way (dpsr status tells which)`, 'ETIMEDOUT');

/** Rejects after ms (unless settled first); the timer never keeps the process alive. */
function deadline<T>(work: Promise<T>, ms: number | undefined, onTimeout: () => Error): Promise<T> {
  if (ms === undefined) return work;
  let timer: NodeJS.Timeout;
  const expiry = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(onTimeout()), ms); timer.unref(); });
  return Promise.race([work, expiry]).finally(() => clearTimeout(timer));
}

export async function syncCommand(opts: { name?: string; all: boolean; json: boolean; freeze?: boolean; quietMs?: number; timeoutMs?: number; inPlace?: boolean; point?: string }, settings: Settings,
  log: (s: string) => void): Promise<SyncReport[]> {
  if (!opts.name && !opts.all) throw new UsageError('dpsr sync: name a pair or give --all');
  if (opts.name && opts.all) throw new UsageError(`dpsr sync: name a pair or give --all, not both (${opts.name} and --all)`);
  // --json: progress as JSON lines on stderr, from the daemon or from this process.
  const progress = opts.json ? jsonProgressLines() : null;
  // A running daemon owns tracking: the flush goes through it and returns when committed.
  const daemon = await ControlClient.connect(settings.socketPath);
  if (daemon) {
    try {
      const reports = await deadline(daemon.request({
        command: 'sync', names: opts.name ? [opts.name] : [], all: opts.all, freeze: opts.freeze, quietMs: opts.quietMs, inPlace: opts.inPlace, point: opts.point,
        progress: progress !== null,
      }, progress ?? undefined), opts.timeoutMs, () => timedOut(opts.timeoutMs!, 'the daemon goes on with it')) as SyncReport[];
      if (opts.json) process.stdout.write(`${JSON.stringify({ syncs: reports })}\n`);
      else for (const r of reports) log(describeSync(r));
      return reports;
    } finally {
      daemon.close();
    }
  }
  if (opts.timeoutMs !== undefined) {
    // Alone, a sync cut short is the crash the journal is made for: the watchdog thaws,
    // an uncommitted transaction is ignored and the next sync redoes the generation.
    const t = setTimeout(() => {
      process.stderr.write(`dpsr: ${timedOut(opts.timeoutMs!, 'stopped; the next sync redoes it').message}\n`);
      process.exit(1);
    }, opts.timeoutMs);
    t.unref();
  }
  // Loaded only without a daemon: the store, the kernel tracking and the engine take a while to load.
  const [{ closeSession }, { openTrackingSession }, { syncPair }, { withSyncProgress }] = await Promise.all([
    import('../../state/session.js'), import('../../drive/boot-adoption.js'), import('../../sync/sync.js'), import('../../daemon/sync-progress.js')]);
  const config = loadConfig(settings.configPath); // the restore points each pair keeps: a bad file is refused before anything
  const s = await openTrackingSession(settings);
  try {
    const names = opts.all ? s.store.pairs().map((p) => p.name) : [opts.name!];
    if (opts.name && !s.store.pair(opts.name)) throw new DpsrError(`no pair named ${opts.name}`, 'ENOPAIR');
    const reports: SyncReport[] = [];
    for (const name of names) {
      const r = await withProgressReporter(progress,
        () => withSyncProgress(name, s.ranges.get(name), () => syncPair(s, name, { freeze: opts.freeze, quietMs: opts.quietMs, inPlace: opts.inPlace, point: opts.point, keep: keepPolicyOf(config, name) })));
      reports.push(r);
      if (!opts.json) log(describeSync(r));
    }
    if (opts.json) process.stdout.write(`${JSON.stringify({ syncs: reports })}\n`);
    return reports;
  } finally {
    await closeSession(s);
  }
}
