// dpsr history NAME [--json] [--drop GEN]: the restore points kept on the
// DPSR drive, or one dropped (the older ones keep what they need of it).
import type { Settings } from '../../base/defaults.js';
import { DpsrError } from '../../base/errors.js';
import { withDriveLock } from '../../base/locks.js';
import { formatBytes, SECTOR } from '../../base/units.js';
import { dropPoint, heldBytes, historyRegionOf } from '../../drive/history-region.js';
import { openCheckedDrive } from '../../drive/paired-drive.js';
import { pointsOf, readHistoryOf } from '../../restore/restore-points.js';
import { Store } from '../../state/store.js';
import type { PairRecord } from '../../state/records.js';
import { localTime } from './diff.js';

export interface HistoryOptions { name: string; json: boolean; drop?: number }

function pairNamed(settings: Settings, name: string): Promise<PairRecord> {
  const store = Store.open(settings.stateDir);
  const pair = store.pair(name);
  return store.close().then(() => {
    if (!pair) throw new DpsrError(`no pair named ${name}`, 'ENOPAIR');
    return pair;
  });
}

export async function historyCommand(opts: HistoryOptions, settings: Settings, log: (s: string) => void): Promise<void> {
  if (opts.drop !== undefined) return dropCommand(opts, settings, log);
  const pair = await pairNamed(settings, opts.name);
  openCheckedDrive(pair, false).io.close(); // proves it is the paired drive (identity, label)
  const index = readHistoryOf(pair);
  const points = pointsOf(pair, index);
  const usedBytes = index.points.reduce((n, p) => n + heldBytes(p), 0);
  const historyBytes = (pair.historySectors ?? 0) * SECTOR;
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({
      name: pair.name, historyBytes, usedBytes,
      points: points.map((p) => ({ generation: p.generation, time: p.timeMs ? new Date(p.timeMs).toISOString() : null, image: p.image, label: p.label, bytes: p.bytes, current: p.current })),
      dropped: index.dropped.map((d) => ({ ...d, time: d.timeMs ? new Date(d.timeMs).toISOString() : null, at: new Date(d.atMs).toISOString() })),
    })}\n`);
    return;
  }
  log(`${pair.name}: ${points.length} restore point${points.length === 1 ? '' : 's'}, ${formatBytes(usedBytes)} of ${formatBytes(historyBytes)} of history used`);
  log(`  ${'GEN'.padStart(5)}  ${'TIME'.padEnd(19)}  ${'IMAGE'.padEnd(16)}  ${'HELD'.padStart(10)}  LABEL`);
  for (const p of points) {
    const held = p.current ? 'current' : formatBytes(p.bytes);
    log(`  ${String(p.generation).padStart(5)}  ${(p.timeMs ? localTime(p.timeMs) : '-').padEnd(19)}  ${p.image.padEnd(16)}  ${held.padStart(10)}  ${p.label ?? ''}`);
  }
  for (const d of index.dropped.slice(-5)) {
    log(`dropped ${localTime(d.atMs)}: generation ${d.generation}${d.label ? ` (${d.label})` : ''}: ${d.reason}`);
  }
}

async function dropCommand(opts: HistoryOptions, settings: Settings, log: (s: string) => void): Promise<void> {
  const gen = opts.drop!;
  await withDriveLock(settings, opts.name, async () => {
    const pair = await pairNamed(settings, opts.name);
    const index = readHistoryOf(pair);
    if (!index.points.some((p) => p.generation === gen)) {
      const current = pair.generation === gen ? ' (that is the current image, which is never dropped)' : '';
      throw new DpsrError(`pair ${pair.name}: no restore point of generation ${gen} to drop${current}; it keeps ${index.points.map((p) => p.generation).join(', ') || 'none'}`, 'ENOPOINT');
    }
    const drive = openCheckedDrive(pair, true);
    try {
      drive.io.setReadOnly(false);
      try {
        const r = (await dropPoint(historyRegionOf(drive.io, pair, pair.id)!, gen, `dropped by dpsr history --drop ${gen}`))!;
        if (opts.json) {
          process.stdout.write(`${JSON.stringify({ name: pair.name, dropped: r.dropped.generation, freedBytes: r.freedBytes, carriedBytes: r.carriedBytes, carriedBy: r.carriedBy,
            shadowedKeptBytes: r.shadowedKeptBytes ?? 0 })}\n`);
        } else {
          // A middle point's blocks that the older point holds already are freed; it keeps the rest.
          const freed = `${formatBytes(r.freedBytes)} of history freed`;
          const kept = r.shadowedKeptBytes ? `; ${formatBytes(r.shadowedKeptBytes)} of it are blocks it holds already, kept for lack of free space to rewrite their records` : '';
          const space = r.carriedBy === null || r.carriedBytes === 0 ? freed
            : r.freedBytes === 0 ? `no space freed: restore point ${r.carriedBy} keeps its records (${formatBytes(r.carriedBytes)}), which its image needs, until it goes${kept}`
              : `${freed} (blocks restore point ${r.carriedBy} holds already); it keeps the other ${formatBytes(r.carriedBytes)}, which its image needs, until it goes${kept}`;
          log(`${pair.name}: dropped restore point ${gen}${r.dropped.label ? ` (${r.dropped.label})` : ''}; ${space}`);
        }
      } finally {
        drive.io.setReadOnly(true);
      }
    } finally {
      drive.io.close();
    }
  });
}
