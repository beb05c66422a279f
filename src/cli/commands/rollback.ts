// dpsr rollback NAME | --drive DEV [--source DEV]: return the source to the DPSR drive's image,
// writing back only what changed since it. Shows the plan, asks on a terminal, then runs it
// through the owner: a running daemon, else this command's own session.
import readline from 'node:readline/promises';
import type { Settings } from '../../base/defaults.js';
import { DpsrError, UsageError } from '../../base/errors.js';
import { formatBytes } from '../../base/units.js';
import { ControlClient } from '../../daemon/protocol.js';
import { type RestoreScope, type RollbackReport, rollbackFromDrive, rollbackInSession, withOwnerLock } from '../../restore/rollback.js';
import { closeSession } from '../../state/session.js';
import { isNbdUri, redactUri } from '../../io/nbd-uri.js';
import { openTrackingSession } from '../../drive/boot-adoption.js';
import { jsonProgressLines, withProgressReporter } from '../../base/progress.js';

export interface ConfirmOptions {
  yes: boolean;
  dryRun: boolean;
  json: boolean;
}

/** What the rollback or restore is about to do, for a person. */
function describePlan(p: RollbackReport): string[] {
  const verb = p.scope === 'rollback' ? 'rollback' : p.partition !== null ? `restore of partition ${p.partition}` : p.scope === 'onto' ? 'restore of the whole image onto' : 'restore';
  const when = p.imageTimeMs ? ` of ${new Date(p.imageTimeMs).toISOString()}` : '';
  const which = p.point ? `restore point ${p.point.generation}${p.point.label ? ` (${p.point.label})` : ''}, ` : '';
  const lines = [`${p.name}: ${verb} of ${p.source} from the DPSR drive ${p.drive}: ${which}image ${p.image}${when}`];
  if (p.journalSeq !== null) lines.push(`  ${p.dryRun ? 'will apply' : 'applies'} the committed journal transaction ${p.journalSeq} on the DPSR drive first`);
  if (p.mode === 'full') lines.push(`  writes ${formatBytes(p.copyBytes)} (sectors ${p.startSector} to ${p.endSector})`);
  else if (p.mode === 'compare') lines.push(`  ${p.why}; writes only what differs (at most ${formatBytes(p.compareBytes)})`);
  else {
    const compare = p.compareBytes > 0 ? ` and compares ${formatBytes(p.compareBytes)} where writes may have gone unseen (writing only what differs)` : '';
    const since = p.point ? 'changed since the restore point (by the tracker and the later syncs)' : 'tracked since the image';
    lines.push(`  ${since}: writes back ${formatBytes(p.copyBytes)}${compare}`);
  }
  for (const w of p.warnings) lines.push(`  warning: ${w}`);
  return lines;
}

function describeDone(r: RollbackReport): string[] {
  const verb = r.scope === 'rollback' ? 'rolled back' : 'restored';
  const lines = [`${r.name}: ${verb} ${r.source}: wrote ${formatBytes(r.writtenBytes)}, read ${formatBytes(r.readBytes)}, in ${(r.durationMs / 1000).toFixed(2)} s`];
  if (r.notClean) lines.push(`  note: ${r.notClean}`);
  return lines;
}

async function askOnTerminal(question: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^(y|yes)$/i.test((await rl.question(question)).trim());
  } finally {
    rl.close();
  }
}

/**
 * Plans (a dry run), shows the plan, asks on a terminal unless --yes, then runs.
 * Without a terminal and without --yes nothing is written: a usage error.
 */
async function planConfirmRun(run: (dryRun: boolean) => Promise<RollbackReport>, opts: ConfirmOptions,
  log: (s: string) => void): Promise<RollbackReport> {
  const plan = await run(true);
  const key = plan.scope === 'rollback' ? 'rollback' : 'restore';
  const print = (r: RollbackReport, lines: string[]) => {
    if (opts.json) process.stdout.write(`${JSON.stringify({ [key]: r })}\n`);
    else lines.forEach((l) => log(l));
  };
  const nothing = plan.copyBytes === 0 && plan.compareBytes === 0;
  const nothingLine = `  nothing to write: ${plan.source} is the image already, as far as the tracker knows`;
  if (opts.dryRun) {
    print(plan, nothing ? [...describePlan(plan), nothingLine] : describePlan(plan));
    return plan;
  }
  if (nothing) {
    // Nothing for the source; a pending journal transaction is still applied, as status would.
    const done = plan.journalSeq === null ? plan : await run(false);
    print(done, [...describePlan(plan), nothingLine]);
    return done;
  }
  if (!opts.json) describePlan(plan).forEach((l) => log(l));
  if (!opts.yes) {
    if (!process.stdin.isTTY) {
      throw new UsageError(`${key} would write to ${plan.source}: confirm on a terminal, or pass --yes; nothing written`);
    }
    if (opts.json) describePlan(plan).forEach((l) => process.stderr.write(`${l}\n`));
    const ok = await askOnTerminal(`Write to ${plan.source}? What it holds there now is lost. [y/N] `);
    if (!ok) throw new DpsrError('cancelled; nothing written', 'ECANCELED');
  }
  const done = await run(false);
  print(done, describeDone(done));
  return done;
}

/** A rollback or restore by the owner: the daemon when one answers, else a session of our own. */
export async function throughOwner(settings: Settings, req: { name: string; scope: RestoreScope; at?: string; force?: boolean }, opts: ConfirmOptions,
  log: (s: string) => void): Promise<RollbackReport> {
  // --json: progress as JSON lines on stderr, from the daemon or from this process.
  const progress = opts.json ? jsonProgressLines() : null;
  const daemon = await ControlClient.connect(settings.socketPath);
  if (daemon) {
    try {
      return await planConfirmRun((dryRun) => daemon.request({ command: 'rollback', ...req, dryRun, progress: progress !== null },
        progress ?? undefined) as Promise<RollbackReport>, opts, log);
    } finally {
      daemon.close();
    }
  }
  const s = await openTrackingSession(settings);
  try {
    return await planConfirmRun((dryRun) => withProgressReporter(progress, () => rollbackInSession(s, { ...req, dryRun })), opts, log);
  } finally {
    await closeSession(s);
  }
}

export async function rollbackCommand(opts: ConfirmOptions & { name?: string; drive?: string; source?: string; at?: string },
  settings: Settings, log: (s: string) => void): Promise<RollbackReport> {
  if (opts.source && !opts.drive) throw new UsageError('dpsr rollback: --source goes with --drive (the pair record names the source)');
  if (opts.drive) {
    const drive = opts.drive;
    if (isNbdUri(drive)) {
      throw new UsageError(`dpsr rollback --drive ${redactUri(drive)}: without the state directory a rollback reads a local DPSR drive; ` +
        'copy the export onto a disk first (nbdcopy URI /dev/sdX), or with the state: dpsr rollback NAME or dpsr restore NAME --whole --onto DEV');
    }
    return withOwnerLock(settings.ownerLockPath,
      () => planConfirmRun((dryRun) => withProgressReporter(opts.json ? jsonProgressLines() : null,
        () => rollbackFromDrive({ drive, source: opts.source, name: opts.name, dryRun, at: opts.at })), opts, log));
  }
  if (!opts.name) throw new UsageError('dpsr rollback: name a pair, or give --drive DEV (without the state directory)');
  return throughOwner(settings, { name: opts.name, scope: { kind: 'rollback' }, at: opts.at }, opts, log);
}
