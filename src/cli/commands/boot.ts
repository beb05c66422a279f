// dpsr boot: early in a boot, tracking attached before anything can write,
// and each pair resumed from its shutdown record (no gap) or given its gap.
import type { Settings } from '../../base/defaults.js';
import { ExitStatus, type ExitStatusValue } from '../../base/errors.js';
import { formatBytes } from '../../base/units.js';
import { adoptAtBoot } from '../../drive/boot-adoption.js';

export async function bootCommand(opts: { json: boolean; waitMs: number }, settings: Settings, log: (s: string) => void): Promise<ExitStatusValue> {
  const started = process.hrtime.bigint();
  const outcomes = await adoptAtBoot(settings, { waitMs: opts.waitMs });
  const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ boot: outcomes, durationMs: Math.round(durationMs) })}\n`);
  } else if (outcomes.length === 0) {
    log('no pairs: nothing to adopt');
  } else {
    for (const o of outcomes) {
      log(o.resumed
        ? `${o.name}: resumed, no gap (${formatBytes(o.dirtyBytes)} changed since the last sync)`
        : o.awaiting ? `${o.name}: ${o.detail}`
          : `${o.name}: gap${o.cause ? ` (${o.cause})` : ''}: ${o.detail}`);
    }
  }
  return ExitStatus.ok;
}
