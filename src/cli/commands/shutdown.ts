// dpsr shutdown: at the very end of a clean shutdown, a shutdown record for
// every pair in its DPSR drive, so that the next boot resumes with no compare.
import type { Settings } from '../../base/defaults.js';
import { ExitStatus, type ExitStatusValue } from '../../base/errors.js';
import { formatBytes } from '../../base/units.js';
import { writeShutdownRecords } from '../../drive/clean-shutdown.js';

export async function shutdownCommand(opts: { json: boolean }, settings: Settings, log: (s: string) => void): Promise<ExitStatusValue> {
  const started = process.hrtime.bigint();
  const outcomes = await writeShutdownRecords(settings);
  const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ shutdown: outcomes, durationMs: Math.round(durationMs) })}\n`);
  } else if (outcomes.length === 0) {
    log('no pairs: nothing to record');
  } else {
    for (const o of outcomes) {
      log(o.recorded
        ? `${o.name}: shutdown record written (${formatBytes(o.dirtyBytes)} changed, ${formatBytes(o.suspectBytes)} to compare since the last sync)`
        : `${o.name}: no shutdown record: ${o.detail}; the next boot compares the whole source`);
    }
  }
  return outcomes.every((o) => o.recorded) ? ExitStatus.ok : ExitStatus.failure;
}
