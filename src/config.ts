// The daemon's configuration (/etc/dpsr/dpsr.toml), validated with errors
// that name the file and the key. The only module that imports smol-toml.
//
//   tick = "1s"                      # how often records are drained and persisted
//   [pairs.system]
//   policy = "scheduled"             # sync every `every` if anything changed
//   every = "1h"
//   [pairs.data]
//   policy = "continuous"            # keep the image younger than `rpo`,
//   rpo = "30s"                      # but never sync more often than
//   min_interval = "10s"             # `min_interval`
//   [pairs.archive]
//   policy = "manual"                # never written behind the admin's back
import fs from 'node:fs';
import { parse } from 'smol-toml';
import { DpsrError, ExitStatus } from './errors.js';

export type Policy =
  | { policy: 'manual' }
  | { policy: 'continuous'; rpoMs: number; minIntervalMs: number }
  | { policy: 'scheduled'; everyMs: number };

export interface DaemonConfig {
  tickMs: number;
  pairs: Record<string, Policy>;
  /** Pairs the file does not name. */
  defaultPolicy: Policy;
}

export class ConfigError extends DpsrError {
  constructor(message: string) {
    super(message, 'ECONFIG', ExitStatus.usage);
    this.name = 'ConfigError';
  }
}

export const DEFAULT_CONFIG: DaemonConfig = { tickMs: 1000, pairs: {}, defaultPolicy: { policy: 'manual' } };

/** "30s", "5m", "1h", "1d", "500ms" or a number of seconds. */
export function durationMs(value: unknown, where: string): number {
  if (typeof value === 'number' && value > 0) return value * 1000;
  const m = typeof value === 'string' ? value.trim().match(/^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/) : null;
  if (!m) throw new ConfigError(`${where}: ${JSON.stringify(value)} is not a duration (use e.g. "30s", "5m", "1h")`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms'];
}

function policyOf(table: unknown, where: string): Policy {
  if (typeof table !== 'object' || table === null || Array.isArray(table)) throw new ConfigError(`${where}: expected a table`);
  const t = table as Record<string, unknown>;
  const known = new Set(['policy', 'rpo', 'min_interval', 'every']);
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
      return { policy: 'scheduled', everyMs: durationMs(t.every ?? '1h', `${where}.every`) };
    default:
      throw new ConfigError(`${where}.policy: ${JSON.stringify(t.policy)} (use "manual", "continuous" or "scheduled")`);
  }
}

export function parseConfig(text: string, file: string): DaemonConfig {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`${file}: ${(err as Error).message.split('\n')[0]}`);
  }
  for (const k of Object.keys(doc)) {
    if (!['tick', 'pairs', 'default'].includes(k)) throw new ConfigError(`${file}: ${k}: unknown key (known: tick, default, pairs)`);
  }
  const pairs: Record<string, Policy> = {};
  const table = (doc.pairs ?? {}) as Record<string, unknown>;
  for (const [name, p] of Object.entries(table)) pairs[name] = policyOf(p, `${file}: pairs.${name}`);
  return {
    tickMs: doc.tick === undefined ? DEFAULT_CONFIG.tickMs : durationMs(doc.tick, `${file}: tick`),
    pairs,
    defaultPolicy: doc.default === undefined ? DEFAULT_CONFIG.defaultPolicy : policyOf(doc.default, `${file}: default`),
  };
}

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

/** Whether a pair is due for a sync now. */
export function due(policy: Policy, state: { changed: boolean; lastSyncStartMs: number; imageTimeMs: number | null }, nowMs: number): boolean {
  if (!state.changed) return false;
  switch (policy.policy) {
    case 'manual':
      return false;
    case 'continuous':
      // Sync early enough that the image stays younger than the target, never back to back.
      return nowMs - state.lastSyncStartMs >= policy.minIntervalMs &&
        (state.imageTimeMs === null || nowMs - state.imageTimeMs >= policy.rpoMs / 2);
    case 'scheduled':
      return Math.floor(nowMs / policy.everyMs) > Math.floor(state.lastSyncStartMs / policy.everyMs);
  }
}
