// Durations and sizes as admins write them ("30s", "15m", "64M", "1G"): one
// unit table each, for the command line (a bare number has a default unit)
// and the configuration file (a unit is required).
import { UsageError } from './errors.js';

/** The unit of every sector count in dpsr: the block layer counts 512-byte sectors whatever a device's logical block size. */
export const SECTOR = 512;

/** 12.0 MiB, 1.5 GiB: binary units, one decimal. */
export function formatBytes(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} bytes` : `${v.toFixed(1)} ${units[u]}`;
}

const DURATION_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Milliseconds, or null if `text` is not "<number><unit>" (a bare number is seconds when `bareIsSeconds`). */
export function durationOf(text: string, bareIsSeconds: boolean): number | null {
  const m = text.match(bareIsSeconds ? /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$/ : /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$/);
  return m ? Number(m[1]) * DURATION_MS[(m[2] ?? 's') as keyof typeof DURATION_MS] : null;
}

/** Bytes (K, M, G, T are powers of 1024), or null if `text` is not a size; a bare number is bytes when `bareIsBytes`; `perSecond` allows a "/s" suffix. */
export function sizeOf(text: string, opts: { bareIsBytes: boolean; perSecond?: boolean }): number | null {
  const unit = opts.bareIsBytes ? '([KMGT]?)' : '([KMGT])';
  const m = text.match(new RegExp(`^(\\d+(?:\\.\\d+)?)\\s*${unit}(i?B)?${opts.perSecond ? '(\\/s)?' : ''}$`, 'i'));
  return m ? Math.round(Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase())) : null;
}

/** A command line duration (--max-age 15m, --timeout 90, in seconds when bare). */
export function parseDuration(text: string, what = '--max-age'): number {
  const ms = durationOf(text, true);
  if (ms === null) throw new UsageError(`${what} ${text}: use a number with s, m, h, d or w (e.g. 15m)`);
  return ms;
}

/** A command line size (--reserve 64M, in bytes when bare). */
export function parseSize(text: string): number {
  const bytes = sizeOf(text.trim(), { bareIsBytes: true });
  if (bytes === null) throw new UsageError(`size "${text}": use a number with K, M, G or T (e.g. 64M)`);
  return bytes;
}
