// Helpers of tools/bench/apt-week.sh (see tools/bench/README.md):
//   browser DIR --day N [--session-writes N] [--cache-mib N] [--cache-cap-mib N]
//       a day of a browser profile's writes under DIR (seeded by the day);
//   distinct LOG... [--region START:END]
//       what `dpsr watch --json` logs say: bytes written, distinct bytes, and
//       both inside a region (half-open, 512-byte sectors), per op.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ExtentSet } from '../../src/base/extents.js';

const MiB = 1 << 20;
const SECTOR = 512;

function opt(args: string[], name: string, dflt: number): number {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
}

/** A deterministic stream of numbers in [0, 1) from a seed (the files' sizes and order). */
function seeded(seed: number): () => number {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 2 ** 32;
  };
}

function writeSynced(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  try {
    for (let done = 0; done < bytes; done += MiB) fs.writeSync(fd, crypto.randomBytes(Math.min(MiB, bytes - done)));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Firefox's write pattern, by the mechanisms that reach the disk:
 * - session store: recovery.jsonlz4 written whole to a new file, fsynced and renamed over the old one
 *   (every 15 s while a window is open: 8 h is 1920 writes), here 1 MiB each;
 * - HTTP cache (cache2/entries): new files of 8 KiB-1 MiB, the oldest evicted above the cap (Firefox's
 *   smart size caps it at 1 GiB);
 * - SQLite databases (places, cookies, favicons) with a WAL: are left to fio, run by the script.
 */
function browserDay(dir: string, day: number, sessionWrites: number, cacheMiB: number, capMiB: number): string {
  const rnd = seeded(day);
  const session = path.join(dir, 'sessionstore-backups');
  const cache = path.join(dir, 'cache2', 'entries');
  fs.mkdirSync(session, { recursive: true });
  fs.mkdirSync(cache, { recursive: true });
  const recovery = path.join(session, 'recovery.jsonlz4');
  for (let i = 0; i < sessionWrites; i++) {
    writeSynced(`${recovery}.tmp`, MiB);
    fs.renameSync(`${recovery}.tmp`, recovery);
  }
  let written = 0;
  let n = 0;
  while (written < cacheMiB * MiB) {
    const bytes = Math.round((8 * 1024 + rnd() * (MiB - 8 * 1024)) / 4096) * 4096;
    fs.writeFileSync(path.join(cache, `d${String(day).padStart(3, '0')}-${String(n++).padStart(6, '0')}`), crypto.randomBytes(bytes));
    written += bytes;
  }
  // Eviction: oldest first (the names sort by day and order), down to the cap.
  const entries = fs.readdirSync(cache).sort().map((f) => ({ f, bytes: fs.statSync(path.join(cache, f)).size }));
  let total = entries.reduce((a, e) => a + e.bytes, 0);
  let evicted = 0;
  for (const e of entries) {
    if (total <= capMiB * MiB) break;
    fs.unlinkSync(path.join(cache, e.f));
    total -= e.bytes;
    evicted += e.bytes;
  }
  return `browser day ${day}: ${sessionWrites} session-store writes of 1 MiB, ${(written / MiB).toFixed(0)} MiB of cache in ${n} files, ` +
    `${(evicted / MiB).toFixed(0)} MiB evicted, cache now ${(total / MiB).toFixed(0)} MiB`;
}

interface Tally { written: number; distinct: ExtentSet; inRegion: number; distinctInRegion: ExtentSet }

function distinct(logs: string[], region: [number, number] | null): Record<string, unknown> {
  const byOp = new Map<string, Tally>();
  let drops = 0;
  let unknown = 0;
  for (const log of logs) {
    for (const line of fs.readFileSync(log, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      let r: { event?: string; op?: string; start?: number; end?: number };
      try { r = JSON.parse(line); } catch { continue; }
      if (r.event === 'drops') { drops++; continue; }
      if (r.event === 'unknown-write') { unknown++; continue; }
      if (typeof r.start !== 'number' || typeof r.end !== 'number' || r.end <= r.start) continue;
      const op = r.op ?? '?';
      let t = byOp.get(op);
      if (!t) byOp.set(op, t = { written: 0, distinct: new ExtentSet(), inRegion: 0, distinctInRegion: new ExtentSet() });
      t.written += (r.end - r.start) * SECTOR;
      t.distinct.add(r.start, r.end);
      if (region) {
        const a = Math.max(r.start, region[0]);
        const b = Math.min(r.end, region[1]);
        if (b > a) { t.inRegion += (b - a) * SECTOR; t.distinctInRegion.add(a, b); }
      }
    }
  }
  const out: Record<string, unknown> = { drops, unknownWrites: unknown };
  for (const [op, t] of byOp) {
    out[op] = {
      writtenBytes: t.written, distinctBytes: t.distinct.totalSectors * SECTOR,
      ...(region ? { regionWrittenBytes: t.inRegion, regionDistinctBytes: t.distinctInRegion.totalSectors * SECTOR } : {}),
    };
  }
  return out;
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'browser') {
  console.log(browserDay(args[0], opt(args, 'day', 1), opt(args, 'session-writes', 1920), opt(args, 'cache-mib', 200), opt(args, 'cache-cap-mib', 1024)));
} else if (cmd === 'distinct') {
  const i = args.indexOf('--region');
  const region = i >= 0 ? args[i + 1].split(':').map(Number) as [number, number] : null;
  const logs = args.filter((a, j) => !a.startsWith('--') && (i < 0 || j !== i + 1));
  console.log(JSON.stringify(distinct(logs, region)));
} else {
  console.error('usage: apt-week-io.js browser DIR --day N [--session-writes N] [--cache-mib N] [--cache-cap-mib N] | distinct LOG... [--region START:END]');
  process.exit(2);
}
