// dpsr restore NAME --whole [--onto DEV] | --partition N: write the DPSR drive's image (all of
// it, or one partition's extent of a whole-disk image) back onto the unmounted source, or the
// whole image onto another disk (a new one); the rollback engine with a whole extent, so the
// same refusals, confirmation and tracker bookkeeping.
import type { Settings } from '../../base/defaults.js';
import { UsageError } from '../../base/errors.js';
import type { RestoreScope, RollbackReport } from '../../restore/rollback.js';
import { throughOwner } from './rollback.js';

export async function restoreDeviceCommand(opts: {
  name: string; partition?: number; whole?: boolean; onto?: string; force?: boolean; yes: boolean; json: boolean; dryRun?: boolean; at?: string;
}, settings: Settings, log: (s: string) => void): Promise<RollbackReport> {
  const whole = opts.whole === true;
  if (whole === (opts.partition !== undefined)) throw new UsageError('dpsr restore: give either --whole or --partition N');
  if (opts.partition !== undefined && !(Number.isSafeInteger(opts.partition) && opts.partition >= 1)) {
    throw new UsageError(`--partition ${opts.partition}: a partition number, 1 or more`);
  }
  if (opts.onto !== undefined && !whole) throw new UsageError('dpsr restore: --onto DEV goes with --whole (the whole image onto another disk)');
  if (opts.onto === '') throw new UsageError('dpsr restore: --onto needs a block device');
  if (opts.force && opts.onto === undefined) throw new UsageError('dpsr restore: with --whole or --partition, --force goes with --onto DEV (overwrite a disk that carries data)');
  const scope: RestoreScope = opts.onto !== undefined ? { kind: 'onto', device: opts.onto }
    : whole ? { kind: 'whole' } : { kind: 'partition', number: opts.partition! };
  return throughOwner(settings, { name: opts.name, scope, at: opts.at, force: opts.force === true }, { yes: opts.yes, json: opts.json, dryRun: opts.dryRun === true }, log);
}
