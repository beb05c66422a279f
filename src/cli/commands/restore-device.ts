// dpsr restore NAME --whole | --partition N: write the DPSR drive's image (all of it, or one
// partition's extent of a whole-disk image) back onto the unmounted source; the rollback
// engine with a whole extent, so the same refusals, confirmation and tracker bookkeeping.
import type { Settings } from '../../base/defaults.js';
import { UsageError } from '../../base/errors.js';
import type { RestoreScope, RollbackReport } from '../../restore/rollback.js';
import { throughOwner } from './rollback.js';

export async function restoreDeviceCommand(opts: { name: string; partition?: number; whole?: boolean; yes: boolean; json: boolean; dryRun?: boolean; at?: string },
  settings: Settings, log: (s: string) => void): Promise<RollbackReport> {
  const whole = opts.whole === true;
  if (whole === (opts.partition !== undefined)) throw new UsageError('dpsr restore: give either --whole or --partition N');
  if (opts.partition !== undefined && !(Number.isSafeInteger(opts.partition) && opts.partition >= 1)) {
    throw new UsageError(`--partition ${opts.partition}: a partition number, 1 or more`);
  }
  const scope: RestoreScope = whole ? { kind: 'whole' } : { kind: 'partition', number: opts.partition! };
  return throughOwner(settings, { name: opts.name, scope, at: opts.at }, { yes: opts.yes, json: opts.json, dryRun: opts.dryRun === true }, log);
}
