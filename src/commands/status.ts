// dpsr status [NAME] [--json] [--max-age D] [--drive DEV]: what each DPSR
// drive holds, how old it is, what is dirty since, and every gap.
import fs from 'node:fs';
import type { Settings } from '../defaults.js';
import { DpsrError, ExitStatus, type ExitStatusValue } from '../errors.js';
import { openDirect } from '../copy.js';
import { readLabel } from '../label.js';
import { closeSession, openSession, type Session } from '../session.js';
import { openPairedDrive, recoverJournal } from '../sync.js';
import { type PairRecord, Store } from '../store.js';
import type { Gap, RangeState } from '../tracker.js';

export type PairState = 'copying' | 'inconsistent' | 'syncing' | 'needs-compare' | 'gap' | 'consistent' | 'crash-consistent' | 'fuzzy' | 'error';

export interface PairStatus {
  name: string;
  source: string;
  drive: string;
  state: PairState;
  usable: boolean; // the drive holds a whole image that can be booted or restored from
  image: string;
  imageTime: string | null;
  rpoSeconds: number | null;
  generation: number;
  dirtyBytes: number | null; // null when another process owns the live numbers
  suspectBytes: number | null;
  gapsSinceSync: Gap[];
  lastSync: PairRecord['lastSync'];
  journal: string;
  problem?: string;
}

export function parseDuration(text: string): number {
  const m = text.match(/^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?$/);
  if (!m) throw new DpsrError(`--max-age ${text}: use a number with s, m, h, d or w (e.g. 15m)`, 'EUSAGE', ExitStatus.usage);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 }[(m[2] ?? 's') as 'ms'];
  return Number(m[1]) * unit;
}

function statusOf(pair: PairRecord, range: RangeState | undefined, problem: string | undefined, live: boolean): PairStatus {
  const sinceMs = pair.lastSync?.atMs ?? 0;
  const gaps = range ? range.gaps.filter((g) => g.atMs > sinceMs) : [];
  const suspect = range ? range.suspect.totalSectors * 512 : 0;
  const state: PairState = problem ? 'error'
    : !pair.fullCopy.complete ? 'copying'
      : pair.pending ? 'syncing'
        : pair.generation === 0 ? 'inconsistent'
          : suspect > 0 ? 'needs-compare'
            : gaps.length > 0 ? 'gap'
              : pair.image === 'point-in-time' ? 'consistent' : (pair.image as PairState);
  const usable = !problem && pair.generation > 0 && !pair.pending && suspect === 0 && pair.fullCopy.complete;
  return {
    name: pair.name,
    source: pair.source.path,
    drive: pair.drive.path,
    state,
    usable,
    image: pair.image,
    imageTime: pair.imageTimeMs ? new Date(pair.imageTimeMs).toISOString() : null,
    rpoSeconds: pair.imageTimeMs ? Math.round((Date.now() - pair.imageTimeMs) / 1000) : null,
    generation: pair.generation,
    dirtyBytes: live && range ? range.dirty.totalSectors * 512 : null,
    suspectBytes: live && range ? suspect : null,
    gapsSinceSync: gaps,
    lastSync: pair.lastSync,
    journal: pair.reservedSectors > 0
      ? `redo journal in the reserved tail (last transaction ${pair.journalSeq ?? 0}${pair.lastSync && pair.lastSync.journaled === false ? '; the last sync was too big for it and wrote in place' : ''})`
      : 'none: no reserved tail (not crash-safe during a sync)',
    ...(problem ? { problem } : {}),
  };
}

const human = (b: number | null) => (b === null ? 'unknown (owned by another dpsr process)' : b < 2 ** 20 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);

function printStatus(st: PairStatus, log: (s: string) => void): void {
  log(`${st.name}: ${st.source} → ${st.drive}`);
  log(`  state      ${st.state}${st.usable ? '' : ' (not a usable image right now)'}${st.problem ? `: ${st.problem}` : ''}`);
  log(`  image      ${st.image}, generation ${st.generation}${st.imageTime ? `, taken ${st.imageTime} (RPO ${st.rpoSeconds} s)` : ''}`);
  log(`  dirty      ${human(st.dirtyBytes)} since the image${st.suspectBytes ? `; ${human(st.suspectBytes)} to compare` : ''}`);
  if (st.lastSync) log(`  last sync  copied ${human(st.lastSync.copiedBytes)}, compared ${human(st.lastSync.comparedBytes)} in ${(st.lastSync.durationMs / 1000).toFixed(2)} s`);
  log(`  journal    ${st.journal}`);
  for (const g of st.gapsSinceSync) log(`  gap        ${new Date(g.atMs).toISOString()} ${g.cause}: ${g.detail}`);
}

export async function statusCommand(opts: { name?: string; json: boolean; maxAge?: string; drive?: string },
  settings: Settings, log: (s: string) => void): Promise<ExitStatusValue> {
  const maxAgeMs = opts.maxAge !== undefined ? parseDuration(opts.maxAge) : undefined;
  if (opts.drive) {
    const fd = openDirect(opts.drive, false);
    const label = (() => { try { return readLabel(fd); } finally { fs.closeSync(fd); } })();
    if (!label) throw new DpsrError(`${opts.drive} carries no dpsr label`, 'ENOLABEL', ExitStatus.notUsable);
    if (opts.json) process.stdout.write(`${JSON.stringify({ drive: opts.drive, label })}\n`);
    else log(`${opts.drive}: DPSR drive of pair ${label.pairName} (source ${label.source.path}), image ${label.image}` +
      `${label.imageTimeMs ? ` taken ${new Date(label.imageTimeMs).toISOString()}` : ''}, last good ${label.lastGoodTimeMs ? new Date(label.lastGoodTimeMs).toISOString() : 'never'}`);
    const ok = ['point-in-time', 'crash-consistent', 'fuzzy'].includes(label.image);
    return ok ? ExitStatus.ok : ExitStatus.notUsable;
  }

  // Owner if there is something to track and nobody else owns it (drain,
  // reconcile: live numbers); else read the store only.
  let session: Session | undefined;
  const peek = Store.open(settings.stateDir);
  const anyPairs = peek.pairs().length > 0;
  await peek.close();
  if (anyPairs) {
    try {
      session = await openSession(settings, { waitMs: 0 });
    } catch (err) {
      if ((err as DpsrError).code !== 'EBUSY') throw err;
    }
  }
  const store = session?.store ?? Store.open(settings.stateDir);
  try {
    if (session) {
      await session.tracker.reconcile();
      // As mounting replays a file system's log: finish a committed journal transaction first.
      for (const p of session.store.pairs()) {
        if (opts.name && p.name !== opts.name) continue;
        const range = session.ranges.get(p.name); // none if the source is gone: the journal needs only the drive
        try {
          const drive = openPairedDrive(session, p, range);
          try {
            await recoverJournal(session, p, drive.fd);
          } finally {
            drive.release();
          }
        } catch (err) {
          if (!session.problems.has(p.name)) session.problems.set(p.name, (err as Error).message);
        }
      }
    }
    const pairs = store.pairs().filter((p) => !opts.name || p.name === opts.name);
    if (opts.name && pairs.length === 0) throw new DpsrError(`no pair named ${opts.name}`, 'ENOPAIR');
    const statuses = pairs.map((p) => statusOf(p, session?.ranges.get(p.name) ?? store.range(p.name) as RangeState | undefined,
      session?.problems.get(p.name), session !== undefined));
    if (opts.json) process.stdout.write(`${JSON.stringify({ pairs: statuses })}\n`);
    else if (statuses.length === 0) log('no pairs (dpsr pair SOURCE DPSR_DRIVE)');
    else statuses.forEach((st) => printStatus(st, log));
    const stale = maxAgeMs !== undefined && statuses.some((st) => st.rpoSeconds === null || st.rpoSeconds * 1000 > maxAgeMs);
    return statuses.some((st) => !st.usable) || stale ? ExitStatus.notUsable : ExitStatus.ok;
  } finally {
    if (session) await closeSession(session);
    else await store.close();
  }
}
