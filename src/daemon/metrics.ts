// The daemon's metrics in the Prometheus text exposition format (version
// 0.0.4), written as a file for node_exporter's textfile collector (config
// metrics_file). Every metric is per pair (label pair="NAME"). Timestamps are
// exported beside ages, so an alert on `time() - dpsr_image_timestamp_seconds`
// stays right even if the daemon stops writing the file.
import { writeFileAtomic } from '../base/atomic-write.js';

export interface PairMetrics {
  pair: string;
  /** The image's point in time; null before the first complete image. */
  imageTimeMs: number | null;
  /** Whole and consistent (point-in-time or crash-consistent, not partial or fuzzy). */
  imageConsistent: boolean;
  dirtyBytes: number;
  /** Regions to compare at the next sync (drops, a gap, a shortfall). */
  suspectBytes: number;
  syncedBytesTotal: number;
  syncsTotal: number;
  syncsFailedTotal: number;
  lastSyncDurationMs: number | null;
  lastSyncEndMs: number | null;
  /** Freezes (the final pass of a mounted source), in milliseconds, since the daemon started. */
  freeze: { count: number; sumMs: number; p50Ms: number | null; p99Ms: number | null };
  ringDropsTotal: number;
  /** Ring records that could not be read (their regions are compared). */
  malformedRecordsTotal: number;
  reconcileShortfallSectorsTotal: number;
  /** Gaps since the daemon started, by cause ("drops", "reboot", "unknown-write", ...). */
  gapsTotal: Record<string, number>;
  scrubMismatchesTotal: number;
  /** Since when the DPSR drive's NBD server has been unreachable; null: reached (or a local drive). */
  driveUnreachableSinceMs: number | null;
}

export interface MetricsSnapshot {
  atMs: number;
  pairs: PairMetrics[];
}

type MetricType = 'gauge' | 'counter' | 'summary';
type Sample = { labels: Record<string, string>; value: number; suffix?: string };

interface Family {
  name: string;
  type: MetricType;
  help: string;
  samples: (p: PairMetrics, atMs: number) => Sample[];
}

const one = (value: number | null): Sample[] => (value === null ? [] : [{ labels: {}, value }]);
const seconds = (ms: number | null) => (ms === null ? null : ms / 1000);

const FAMILIES: Family[] = [
  { name: 'dpsr_drive_unreachable_seconds', type: 'gauge', help: 'How long the DPSR drive\'s NBD server has been unreachable (0: reached, or a local drive).',
    samples: (p, at) => one(p.driveUnreachableSinceMs === null ? 0 : Math.max(0, at - p.driveUnreachableSinceMs) / 1000) },
  { name: 'dpsr_rpo_seconds', type: 'gauge', help: 'Age of the DPSR drive\'s image (now minus its point in time) when the file was written.',
    samples: (p, at) => one(p.imageTimeMs === null ? null : Math.max(0, at - p.imageTimeMs) / 1000) },
  { name: 'dpsr_image_timestamp_seconds', type: 'gauge', help: 'Point in time of the DPSR drive\'s image, Unix time.',
    samples: (p) => one(seconds(p.imageTimeMs)) },
  { name: 'dpsr_image_consistent', type: 'gauge', help: '1 if the DPSR drive holds a whole, consistent image; 0 if never synced, partial or fuzzy.',
    samples: (p) => one(p.imageConsistent ? 1 : 0) },
  { name: 'dpsr_dirty_bytes', type: 'gauge', help: 'Bytes written to the source since the image, to be copied by the next sync.',
    samples: (p) => one(p.dirtyBytes) },
  { name: 'dpsr_suspect_bytes', type: 'gauge', help: 'Bytes the next sync compares (ring drops, gaps, reconciliation shortfalls).',
    samples: (p) => one(p.suspectBytes) },
  { name: 'dpsr_synced_bytes_total', type: 'counter', help: 'Bytes written to the DPSR drive by syncs.',
    samples: (p) => one(p.syncedBytesTotal) },
  { name: 'dpsr_syncs_total', type: 'counter', help: 'Syncs attempted.',
    samples: (p) => one(p.syncsTotal) },
  { name: 'dpsr_syncs_failed_total', type: 'counter', help: 'Syncs that failed (the drive kept its previous image).',
    samples: (p) => one(p.syncsFailedTotal) },
  { name: 'dpsr_last_sync_duration_seconds', type: 'gauge', help: 'Duration of the last sync.',
    samples: (p) => one(seconds(p.lastSyncDurationMs)) },
  { name: 'dpsr_last_sync_timestamp_seconds', type: 'gauge', help: 'When the last sync ended, Unix time.',
    samples: (p) => one(seconds(p.lastSyncEndMs)) },
  { name: 'dpsr_freeze_duration_seconds', type: 'summary', help: 'How long the source\'s file systems were frozen for a final pass.',
    samples: (p): Sample[] => [
      ...(p.freeze.p50Ms === null ? [] : [{ labels: { quantile: '0.5' }, value: p.freeze.p50Ms / 1000 }]),
      ...(p.freeze.p99Ms === null ? [] : [{ labels: { quantile: '0.99' }, value: p.freeze.p99Ms / 1000 }]),
      { labels: {}, value: p.freeze.sumMs / 1000, suffix: '_sum' },
      { labels: {}, value: p.freeze.count, suffix: '_count' },
    ] },
  { name: 'dpsr_ring_drops_total', type: 'counter', help: 'Write records lost because the ring buffer was full (their regions are compared).',
    samples: (p) => one(p.ringDropsTotal) },
  { name: 'dpsr_malformed_records_total', type: 'counter', help: 'Write records that could not be read (their regions are compared).',
    samples: (p) => one(p.malformedRecordsTotal) },
  { name: 'dpsr_reconcile_shortfall_sectors_total', type: 'counter', help: 'Sectors the kernel counted as written that the tracker did not see (a gap).',
    samples: (p) => one(p.reconcileShortfallSectorsTotal) },
  { name: 'dpsr_gaps_total', type: 'counter', help: 'Times writes may have gone unseen, by cause.',
    samples: (p) => Object.entries(p.gapsTotal).sort(([a], [b]) => a.localeCompare(b)).map(([cause, n]) => ({ labels: { cause }, value: n })) },
  { name: 'dpsr_scrub_mismatches_total', type: 'counter', help: 'Regions the scrub found different although the tracker held them clean.',
    samples: (p) => one(p.scrubMismatchesTotal) },
];

/** A label value as the text format wants it: backslash, double quote and newline escaped. */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** Pure: the snapshot as text; a family with no sample (no pairs) has only its HELP and TYPE lines. */
export function renderMetrics(snapshot: MetricsSnapshot): string {
  const lines: string[] = [];
  for (const f of FAMILIES) {
    lines.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`);
    for (const p of snapshot.pairs) {
      for (const s of f.samples(p, snapshot.atMs)) {
        const labels = Object.entries({ pair: p.pair, ...s.labels }).map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(',');
        lines.push(`${f.name}${s.suffix ?? ''}{${labels}} ${formatValue(s.value)}`);
      }
    }
  }
  return `${lines.join('\n')}\n`;
}

/**
 * Writes the file atomically (a temporary file in the same directory, then
 * rename), so the collector never reads half of it. The temporary name does
 * not end in .prom, which the collector would read.
 */
export function writeMetricsFile(file: string, snapshot: MetricsSnapshot): void {
  writeFileAtomic(file, renderMetrics(snapshot), 0o644); // 0644: for node_exporter's user, whatever the daemon's umask
}
