// dpsr status [NAME] [--json] [--max-age D] [--drive DEV]: what each DPSR
// drive holds, how old it is, what is dirty since, and every gap.
import type { Settings } from '../../base/defaults.js';
import { formatBytes } from '../../base/units.js';
import { DpsrError, ExitStatus, type ExitStatusValue, UsageError } from '../../base/errors.js';
import { openLocalDevice } from '../../io/local-device.js';
import { openNbdDevice } from '../../io/nbd-device.js';
import { isNbdUri } from '../../io/nbd-uri.js';
import { noLabelReason, readLabel } from '../../drive/label.js';
import { committedOnDrive } from '../../drive/recovery.js';
import { closeSession, type Session } from '../../state/session.js';
import { openTrackingSession } from '../../drive/boot-adoption.js';
import { recoverPairedDrive } from '../../drive/paired-drive.js';
import { Store } from '../../state/store.js';
import type { RangeState } from '../../kernel/tracker.js';
import { styleText } from 'node:util';
import { DEFAULT_CONFIG, loadConfig } from '../../daemon/config.js';
import { parseDuration } from '../../base/units.js';
import { ControlClient } from '../../daemon/protocol.js';
import { type PairState, type PairStatus, humanDuration, policyOf, statusOf } from '../../daemon/pair-status.js';
import { historyPath, readHistory } from '../../daemon/history.js';


const shown = (b: number | null) => (b === null ? 'unknown (owned by another dpsr process)' : formatBytes(b));

function printLong(st: PairStatus, log: (s: string) => void): void {
  log(`${st.name}: ${st.source} → ${st.drive}`);
  log(`  state      ${st.state}${st.usable ? '' : ' (not a usable image right now)'}${st.problem ? `: ${st.problem}` : ''}`);
  log(`  image      ${st.image}, generation ${st.generation}${st.imageTime ? `, taken ${st.imageTime} (RPO ${st.rpoSeconds} s)` : ''}`);
  log(`  dirty      ${shown(st.dirtyBytes)} since the image${st.suspectBytes ? `; ${shown(st.suspectBytes)} to compare` : ''}`);
  log(`  policy     ${st.policy}${st.nextSync ? `, next sync ${st.nextSync}` : ''}`);
  if (st.lastSync) log(`  last sync  copied ${shown(st.lastSync.copiedBytes)}, compared ${shown(st.lastSync.comparedBytes)} in ${(st.lastSync.durationMs / 1000).toFixed(2)} s`);
  if (st.freezeP99Ms !== null) log(`  freeze     p99 ${st.freezeP99Ms.toFixed(1)} ms over the recent syncs`);
  log(`  journal    ${st.journal}`);
  log(`  scrub      ${st.scrub.progressPercent !== null ? `round ${st.scrub.progressPercent}% done; ` : ''}last full round ${st.scrub.lastRoundDone ?? 'never'}; ${st.scrub.mismatchesTotal} mismatches found`);
  for (const g of st.gapsSinceSync) log(`  gap        ${new Date(g.atMs).toISOString()} ${g.cause}: ${g.detail}`);
  for (const w of st.warnings) log(`  warning    ${w}`);
}

const STATE_COLOUR: Record<PairState, 'green' | 'yellow' | 'red'> = {
  consistent: 'green', 'crash-consistent': 'yellow', fuzzy: 'yellow', copying: 'yellow', syncing: 'yellow',
  'needs-compare': 'yellow', gap: 'yellow', 'awaiting-drive': 'yellow', inconsistent: 'red', error: 'red',
};

/** One line per pair, aligned; colour on a terminal (not with NO_COLOR or when piped). */
function printTable(statuses: PairStatus[], log: (s: string) => void, colour: boolean): void {
  const paint = (c: 'green' | 'yellow' | 'red' | 'dim', text: string) => (colour ? styleText(c, text) : text);
  const ago = (iso: string | null, now: number) => (iso ? humanDuration(now - Date.parse(iso)) : '-');
  const now = Date.now();
  const header = ['PAIR', 'STATE', 'AGE', 'DIRTY', 'LAST SYNC', 'NEXT SYNC', 'GAPS', 'JOURNAL', 'FREEZE p99', 'POLICY'];
  const rows = statuses.map((st) => [
    st.name, st.state, st.rpoSeconds === null ? '-' : humanDuration(st.rpoSeconds * 1000),
    st.dirtyBytes === null ? '?' : formatBytes(st.dirtyBytes + (st.suspectBytes ?? 0)),
    st.lastSync ? `${ago(new Date(st.lastSync.atMs).toISOString(), now)} ago` : 'never',
    st.nextSync ? (Date.parse(st.nextSync) <= now ? 'now' : `in ${humanDuration(Date.parse(st.nextSync) - now)}`) : '-',
    String(st.gapsSinceSync.length), st.journal.startsWith('redo') ? 'tail' : 'none',
    st.freezeP99Ms === null ? '-' : `${st.freezeP99Ms.toFixed(0)} ms`, st.policy,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  log(paint('dim', line(header)));
  rows.forEach((r, i) => {
    const text = line(r);
    const st = statuses[i];
    // Colour the state cell only: padding is computed on the plain text.
    const at = widths[0] + 2;
    log(colour ? text.slice(0, at) + paint(STATE_COLOUR[st.state], r[1]) + text.slice(at + r[1].length) : text);
  });
  for (const st of statuses) {
    if (st.problem) log(paint('red', `${st.name}: ${st.problem}`));
    for (const w of st.warnings) log(paint('yellow', `${st.name}: ${w}`));
  }
}

/** --json: whether a daemon answered, and with --long each pair's history (the daemon's samples of the last hours). */
function jsonDocument(statuses: PairStatus[], opts: StatusOptions, daemon: boolean, stateDir: string): object {
  if (!opts.long) return { daemon, pairs: statuses };
  const history = readHistory(historyPath(stateDir));
  return { daemon, pairs: statuses.map((st) => ({ ...st, history: history[st.name] ?? [] })) };
}

function report(statuses: PairStatus[], opts: StatusOptions, log: (s: string) => void, maxAgeMs: number | undefined,
  daemon: boolean, stateDir: string): ExitStatusValue {
  if (opts.json) process.stdout.write(`${JSON.stringify(jsonDocument(statuses, opts, daemon, stateDir))}\n`);
  else if (statuses.length === 0) log('no pairs (dpsr pair SOURCE DPSR_DRIVE)');
  else if (opts.long) statuses.forEach((st) => printLong(st, log));
  else printTable(statuses, log, process.stdout.isTTY === true && !process.env.NO_COLOR);
  const stale = maxAgeMs !== undefined && statuses.some((st) => st.rpoSeconds === null || st.rpoSeconds * 1000 > maxAgeMs);
  return statuses.some((st) => !st.usable) || stale ? ExitStatus.notUsable : ExitStatus.ok;
}

interface StatusOptions { name?: string; json: boolean; long?: boolean; maxAge?: string; drive?: string }

export async function statusCommand(opts: StatusOptions, settings: Settings, log: (s: string) => void): Promise<ExitStatusValue> {
  const maxAgeMs = opts.maxAge !== undefined ? parseDuration(opts.maxAge) : undefined;
  if (opts.drive && opts.name) throw new UsageError(`dpsr status: name a pair or give --drive DEV, not both (--drive reads the drive's label alone)`);
  if (opts.drive) {
    const drive = isNbdUri(opts.drive) ? openNbdDevice(opts.drive, { write: false }) : openLocalDevice(opts.drive, false);
    const { label, txn } = await (async () => {
      try {
        const l = readLabel(drive);
        if (!l) throw new DpsrError(noLabelReason(drive, opts.drive!), 'ENOLABEL');
        return { label: l, txn: await committedOnDrive(drive, l) };
      } finally {
        drive.close();
      }
    })();
    // A committed transaction not yet applied: the sync that was landing when the source died.
    const unapplied = txn ? `a committed sync (journal transaction ${txn.seq}) is not completely applied: run dpsr recover ${opts.drive} before booting or restoring from it` : null;
    if (opts.json) process.stdout.write(`${JSON.stringify({ drive: opts.drive, label, unappliedTransaction: txn?.seq ?? null })}\n`);
    else {
      log(`${opts.drive}: DPSR drive of pair ${label.pairName} (source ${label.source.path}), image ${label.image}` +
        `${label.imageTimeMs ? ` taken ${new Date(label.imageTimeMs).toISOString()}` : ''}, last good ${label.lastGoodTimeMs ? new Date(label.lastGoodTimeMs).toISOString() : 'never'}`);
      if (unapplied) log(`  ${unapplied}`);
    }
    const ok = !unapplied && ['point-in-time', 'crash-consistent', 'fuzzy'].includes(label.image);
    return ok ? ExitStatus.ok : ExitStatus.notUsable;
  }

  // A configuration the daemon cannot read (half-written, a typo) is said, though status goes on.
  let config = DEFAULT_CONFIG;
  try {
    config = loadConfig(settings.configPath);
  } catch (err) {
    process.stderr.write(`dpsr: warning: ${(err as Error).message}: a daemon does not start with it and keeps its previous configuration on reload (SIGHUP); ` +
      'without a daemon status shows every pair as manual; fix the file\n');
  }

  // A running daemon owns the live numbers and knows the schedule.
  const daemon = await ControlClient.connect(settings.socketPath);
  if (daemon) {
    try {
      const statuses = await daemon.request({ command: 'status', name: opts.name }) as PairStatus[];
      if (opts.name && statuses.length === 0) throw new DpsrError(`no pair named ${opts.name}`, 'ENOPAIR');
      return report(statuses, opts, log, maxAgeMs, true, settings.stateDir);
    } finally {
      daemon.close();
    }
  }

  // Owner if there is something to track and nobody else owns it (drain,
  // reconcile: live numbers); else read the store only.
  let session: Session | undefined;
  const peek = Store.open(settings.stateDir);
  const anyPairs = peek.pairs().length > 0;
  await peek.close();
  if (anyPairs) {
    try {
      session = await openTrackingSession(settings, { waitMs: 0 });
    } catch (err) {
      if ((err as DpsrError).code !== 'EOWNED') throw err;
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
          await recoverPairedDrive(session, p, range);
        } catch (err) {
          if (!session.problems.has(p.name)) session.problems.set(p.name, (err as Error).message);
        }
      }
    }
    const pairs = store.pairs().filter((p) => !opts.name || p.name === opts.name);
    if (opts.name && pairs.length === 0) throw new DpsrError(`no pair named ${opts.name}`, 'ENOPAIR');
    const statuses = pairs.map((p) => statusOf(p, session?.ranges.get(p.name) ?? store.range(p.name) as RangeState | undefined,
      session?.problems.get(p.name), session !== undefined, policyOf(config, p.name), null));
    return report(statuses, opts, log, maxAgeMs, false, settings.stateDir);
  } finally {
    if (session) await closeSession(session);
    else await store.close();
  }
}
