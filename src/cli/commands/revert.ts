// dpsr revert NAME --at POINT [--drop-newer]: the DPSR drive itself back to a
// restore point, through the owner (a running daemon, else a session of our
// own). Says which points it keeps or drops; dropping asks first.
import readline from 'node:readline/promises';
import type { Settings } from '../../base/defaults.js';
import { DpsrError, UsageError } from '../../base/errors.js';
import { formatBytes } from '../../base/units.js';
import { ControlClient } from '../../daemon/protocol.js';
import { type RevertReport, type RevertRequest, revertInSession } from '../../restore/revert.js';
import { closeSession } from '../../state/session.js';
import { openTrackingSession } from '../../drive/boot-adoption.js';
import { localTime } from './diff.js';

export interface RevertOptions { name: string; at: string; keepNewer: boolean; yes: boolean; dryRun: boolean; json: boolean }

function describe(r: RevertReport): string[] {
  const p = r.point;
  const name = `restore point ${p.generation}${p.label ? ` (${p.label})` : ''}${p.timeMs ? ` of ${localTime(p.timeMs)}` : ''}`;
  if (r.writeBytes === 0 && r.fromGeneration === p.generation) return [`${r.name}: the DPSR drive is ${name} already; nothing written`];
  const verb = r.dryRun ? 'would revert' : 'reverted';
  const lines = [`${r.name}: ${verb} the DPSR drive ${r.drive} to ${name}, ${p.image}: ${formatBytes(r.writeBytes)} through the journal; it is generation ${r.generation}`];
  const newer = r.newer.length > 0 ? `points ${r.newer.join(', ')}` : 'no newer point';
  lines.push(r.keepNewer ? `  kept: ${newer} (the image it replaces, ${r.fromGeneration}, among them)` : `  dropped: ${newer} (--drop-newer)`);
  for (const w of r.warnings) lines.push(`  note: ${w}`);
  return lines;
}

async function confirmDrop(plan: RevertReport): Promise<void> {
  if (!process.stdin.isTTY) throw new UsageError(`revert --drop-newer would drop restore points ${plan.newer.join(', ')}: confirm on a terminal, or pass --yes; nothing written`);
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`Drop restore points ${plan.newer.join(', ')}? They cannot be read again. [y/N] `);
    if (!/^(y|yes)$/i.test(answer.trim())) throw new DpsrError('cancelled; nothing written', 'ECANCELED');
  } finally {
    rl.close();
  }
}

export async function revertCommand(opts: RevertOptions, settings: Settings, log: (s: string) => void): Promise<RevertReport> {
  const run = async (dryRun: boolean): Promise<RevertReport> => {
    const req: RevertRequest = { name: opts.name, at: opts.at, keepNewer: opts.keepNewer, dryRun };
    const daemon = await ControlClient.connect(settings.socketPath);
    if (daemon) {
      try {
        return await daemon.request({ command: 'revert', ...req }) as RevertReport;
      } finally {
        daemon.close();
      }
    }
    const s = await openTrackingSession(settings);
    try {
      return await revertInSession(s, req);
    } finally {
      await closeSession(s);
    }
  };
  if (!opts.keepNewer && !opts.dryRun && !opts.yes) {
    const plan = await run(true);
    if (plan.newer.length > 0) {
      describe(plan).forEach((l) => log(l));
      await confirmDrop(plan);
    }
  }
  const r = await run(opts.dryRun);
  if (opts.json) process.stdout.write(`${JSON.stringify({ revert: r })}\n`);
  else describe(r).forEach((l) => log(l));
  return r;
}
