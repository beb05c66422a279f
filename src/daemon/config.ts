// The daemon's configuration (/etc/dpsr/dpsr.toml), validated with errors
// that name the file and the key. The only module that imports smol-toml.
//
//   tick = "1s"                      # how often records are drained and persisted
//   compare_bandwidth = "64M"        # regions to compare (after a reboot, a gap) are read in the background at most this fast (per second)
//   scrub_every = "7d"               # a full scrub round this often ("off": none)
//   scrub_bandwidth = "16M"          # the scrub reads at most this much per second
//   on_failure = "/usr/local/bin/dpsr-alert"   # run (sh -c) on a failed sync, a scrub mismatch, a gap
//   metrics_file = "/var/lib/prometheus/node-exporter/dpsr.prom"
//   [pairs.system]
//   policy = "scheduled"             # sync at each calendar event (systemd OnCalendar= syntax) if anything changed
//   on_calendar = "Mon..Sat 03:00"   # or: every = "1h"
//   [pairs.data]
//   policy = "continuous"            # keep the image younger than `rpo`,
//   rpo = "30s"                      # but never sync more often than
//   min_interval = "10s"             # `min_interval`
//   [pairs.archive]
//   policy = "manual"                # never written behind the admin's back
//   keep = "7d"                      # restore points (pair --history): unlabelled ones older than this are dropped,
//   keep_points = 50                 # and beyond this many; labelled ones (sync --point) stay until removed, and
//   when_full = "refuse"             # a sync that would drop one for space is refused ("drop-labelled": dropped, said in status)
import fs from 'node:fs';
import { parse } from 'smol-toml';
import { CalendarError, parseCalendar } from './calendar.js';
import { DpsrError } from '../base/errors.js';
import type { Policy } from './schedule.js';
import { DEFAULT_KEEP, type KeepPolicy } from '../drive/history-region.js';
import { durationOf, sizeOf } from '../base/units.js';

// The policies and the decisions over them live in schedule.ts; pair-status.ts still imports them from here.
export type { Policy } from './schedule.js';
export { due, nextSyncMs } from './schedule.js';

export interface DaemonConfig {
  tickMs: number;
  compareBytesPerSec: number;
  scrubEveryMs: number; // 0: no scrub
  scrubBytesPerSec: number;
  onFailure: string | null;
  metricsFile: string | null;
  pairs: Record<string, Policy>;
  /** Pairs the file does not name. */
  defaultPolicy: Policy;
  /** Which restore points each pair keeps (keep, keep_points, when_full in its table). */
  keep: Record<string, KeepPolicy>;
  defaultKeep: KeepPolicy;
}

export class ConfigError extends DpsrError {
  constructor(message: string) {
    super(message, 'ECONFIG');
    this.name = 'ConfigError';
  }
}

export const DEFAULT_CONFIG: DaemonConfig = {
  tickMs: 1000, compareBytesPerSec: 64 << 20, scrubEveryMs: 7 * 86_400_000, scrubBytesPerSec: 16 << 20,
  onFailure: null, metricsFile: null, pairs: {}, defaultPolicy: { policy: 'manual' }, keep: {}, defaultKeep: DEFAULT_KEEP,
};
const TOP_KEYS = ['tick', 'compare_bandwidth', 'scrub_every', 'scrub_bandwidth', 'on_failure', 'metrics_file', 'default', 'pairs'];

/** "30s", "5m", "1h", "1d", "500ms" or a number of seconds. */
export function durationMs(value: unknown, where: string): number {
  if (typeof value === 'number' && value > 0) return value * 1000;
  const ms = typeof value === 'string' ? durationOf(value.trim(), false) : null;
  if (ms === null) throw new ConfigError(`${where}: ${JSON.stringify(value)} is not a duration (use e.g. "30s", "5m", "1h")`);
  return ms;
}

/** "16M", "1G", "512K" (bytes per second for bandwidths). */
export function sizeBytes(value: unknown, where: string): number {
  const bytes = typeof value === 'string' ? sizeOf(value.trim(), { bareIsBytes: false, perSecond: true }) : null;
  if (bytes === null) throw new ConfigError(`${where}: ${JSON.stringify(value)} is not a size (use e.g. "16M", "1G")`);
  return bytes;
}

function stringOrNull(value: unknown, where: string): string | null {
  if (value === undefined) return null;
  if (typeof value !== 'string' || value.trim() === '') throw new ConfigError(`${where}: expected a non-empty string`);
  return value;
}

function policyOf(table: unknown, where: string): Policy {
  if (typeof table !== 'object' || table === null || Array.isArray(table)) throw new ConfigError(`${where}: expected a table`);
  const t = table as Record<string, unknown>;
  const known = new Set(['policy', 'rpo', 'min_interval', 'every', 'on_calendar', ...KEEP_KEYS]);
  for (const k of Object.keys(t)) if (!known.has(k)) throw new ConfigError(`${where}.${k}: unknown key (known: ${[...known].join(', ')})`);
  switch (t.policy) {
    case 'manual':
      return { policy: 'manual' };
    case 'continuous': {
      const rpoMs = durationMs(t.rpo ?? '30s', `${where}.rpo`);
      const minIntervalMs = durationMs(t.min_interval ?? '10s', `${where}.min_interval`);
      if (minIntervalMs > rpoMs) throw new ConfigError(`${where}: min_interval is longer than rpo: the target cannot be kept`);
      return { policy: 'continuous', rpoMs, minIntervalMs };
    }
    case 'scheduled':
      if (t.every !== undefined && t.on_calendar !== undefined) throw new ConfigError(`${where}: give either every or on_calendar, not both`);
      if (t.on_calendar !== undefined) {
        try {
          return { policy: 'scheduled', calendar: parseCalendar(String(t.on_calendar)) };
        } catch (err) {
          if (err instanceof CalendarError) throw new ConfigError(`${where}.on_calendar: ${err.message}`);
          throw err;
        }
      }
      return { policy: 'scheduled', everyMs: durationMs(t.every ?? '1h', `${where}.every`) };
    default:
      throw new ConfigError(`${where}.policy: ${JSON.stringify(t.policy)} (use "manual", "continuous" or "scheduled")`);
  }
}

const KEEP_KEYS = ['keep', 'keep_points', 'when_full'];

/** The restore points a pair's table keeps (its policy keys checked by policyOf). */
function keepOf(table: Record<string, unknown>, where: string): KeepPolicy {
  const { keep, keep_points: points, when_full: whenFull } = table;
  if (points !== undefined && !(typeof points === 'number' && Number.isInteger(points) && points >= 0)) {
    throw new ConfigError(`${where}.keep_points: ${JSON.stringify(points)} is not a count of restore points (use e.g. 50)`);
  }
  if (whenFull !== undefined && whenFull !== 'refuse' && whenFull !== 'drop-labelled') {
    throw new ConfigError(`${where}.when_full: ${JSON.stringify(whenFull)} (use "refuse" or "drop-labelled")`);
  }
  return {
    keepMs: keep === undefined || keep === 'all' ? null : durationMs(keep, `${where}.keep`),
    keepPoints: points === undefined ? null : points as number,
    dropLabelledWhenFull: whenFull === 'drop-labelled',
  };
}

export function parseConfig(text: string, file: string): DaemonConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`${file}: ${(err as Error).message.split('\n')[0]}`);
  }
  for (const k of Object.keys(doc)) {
    if (!TOP_KEYS.includes(k)) throw new ConfigError(`${file}: ${k}: unknown key (known: ${TOP_KEYS.join(', ')})`);
  }
  const pairs: Record<string, Policy> = {};
  const table = (doc.pairs ?? {}) as Record<string, unknown>;
  const keep: Record<string, KeepPolicy> = {};
  for (const [name, p] of Object.entries(table)) {
    pairs[name] = policyOf(p, `${file}: pairs.${name}`);
    keep[name] = keepOf(p as Record<string, unknown>, `${file}: pairs.${name}`);
  }
  return {
    tickMs: doc.tick === undefined ? DEFAULT_CONFIG.tickMs : durationMs(doc.tick, `${file}: tick`),
    compareBytesPerSec: doc.compare_bandwidth === undefined ? DEFAULT_CONFIG.compareBytesPerSec : sizeBytes(doc.compare_bandwidth, `${file}: compare_bandwidth`),
    scrubEveryMs: doc.scrub_every === undefined ? DEFAULT_CONFIG.scrubEveryMs
      : doc.scrub_every === 'off' ? 0 : durationMs(doc.scrub_every, `${file}: scrub_every`),
    scrubBytesPerSec: doc.scrub_bandwidth === undefined ? DEFAULT_CONFIG.scrubBytesPerSec : sizeBytes(doc.scrub_bandwidth, `${file}: scrub_bandwidth`),
    onFailure: stringOrNull(doc.on_failure, `${file}: on_failure`),
    metricsFile: stringOrNull(doc.metrics_file, `${file}: metrics_file`),
    pairs,
    defaultPolicy: doc.default === undefined ? DEFAULT_CONFIG.defaultPolicy : policyOf(doc.default, `${file}: default`),
    keep,
    defaultKeep: doc.default === undefined ? DEFAULT_KEEP : keepOf(doc.default as Record<string, unknown>, `${file}: default`),
  };
}

/** The restore points pair `name` keeps: its table's keys, or the default table's. */
export const keepPolicyOf = (config: DaemonConfig, name: string): KeepPolicy => config.keep[name] ?? config.defaultKeep;

/** The file's configuration; the defaults (every pair manual) when there is no file. */
export function loadConfig(file: string): DaemonConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return DEFAULT_CONFIG;
    throw new ConfigError(`${file}: ${(err as Error).message}`);
  }
  return parseConfig(text, file);
}
