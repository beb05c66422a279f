// dpsr pair SOURCE DPSR_DRIVE: check, label, start tracking, full copy.
import crypto from 'node:crypto';
import { type Settings, DEFAULT_RESERVE, UPGRADE_BYTES } from '../../base/defaults.js';
import { RefusedError } from '../../base/errors.js';
import { openLocalDevice } from '../../io/local-device.js';
import { checkPairable } from '../../drive/pair-checks.js';
import { checkRemotePairable, isNbdUri } from '../../drive/remote-drive.js';
import { formatBytes } from '../../base/units.js';
import { closeSession } from '../../state/session.js';
import { openTrackingSession } from '../../drive/boot-adoption.js';
import type { PairRecord } from '../../state/records.js';
import { fullCopy } from '../../sync/sync.js';
import { journalRegionOf, openPairedDrive, updateLabel } from '../../drive/paired-drive.js';
import { invalidate, journalCapacityOf } from '../../drive/journal.js';
import { historyRegionOf, resetHistory } from '../../drive/history-region.js';

export interface PairOptions {
  source: string;
  drive: string;
  name?: string;
  force: boolean;
  noReserve: boolean;
  reserveBytes: number;
  /** Room for restore points: bytes, 'all' the spare space, 0 or absent none. */
  historyBytes?: number | 'all';
  /** Plain NBD to a host that is not loopback. */
  insecure?: boolean;
}

export async function pairCommand(opts: PairOptions, settings: Settings, log: (s: string) => void): Promise<PairRecord> {
  const req = { source: opts.source, drive: opts.drive, force: opts.force, noReserve: opts.noReserve, reserveBytes: opts.reserveBytes, historyBytes: opts.historyBytes };
  const remote = isNbdUri(opts.drive);
  const plan = remote ? checkRemotePairable({ ...req, insecure: opts.insecure }) : checkPairable(req);
  const name = opts.name ?? plan.source.name;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) throw new RefusedError(`pair name "${name}": use letters, digits, '.', '_' or '-'`, 'ENAME');
  for (const w of plan.warnings) log(`warning: ${w}`);
  const s = await openTrackingSession(settings);
  try {
    let pair = s.store.pair(name);
    const same = (p: PairRecord) => p.source.path === opts.source && p.drive.path === opts.drive;
    for (const other of s.store.pairs()) {
      if (other.name === name && same(other) && !other.fullCopy.complete) continue; // resume
      if (other.name === name) throw new RefusedError(`a pair named ${name} exists already (dpsr unpair ${name} first, or --name)`, 'EEXIST');
      if (other.source.diskDev === plan.sourceId.diskDev && other.source.startSector === plan.sourceId.startSector) {
        throw new RefusedError(`${opts.source} is already the source of pair ${other.name}`, 'EEXIST');
      }
      if (other.drive.path === opts.drive || other.source.path === opts.drive) {
        throw new RefusedError(`${opts.drive} already belongs to pair ${other.name}`, 'EEXIST');
      }
    }
    if (pair) {
      log(`resuming the full copy of ${name} at ${((100 * pair.fullCopy.doneSectors) / pair.dataSectors).toFixed(1)}%`);
    } else {
      pair = {
        name, id: crypto.randomUUID(), createdMs: Date.now(),
        source: plan.sourceId, drive: plan.driveId, ...(remote && opts.insecure ? { driveInsecure: true } : {}),
        dataSectors: plan.dataSectors, reservedSectors: plan.reservedSectors, labelSeq: 0,
        fullCopy: { doneSectors: 0, complete: false }, generation: 0, pending: null,
        image: 'none', imageTimeMs: null, lastGoodTimeMs: null, lastSync: null,
        ...(plan.historySectors ? { historySectors: plan.historySectors } : {}),
      };
    }
    // Tracking starts before the copy: whatever is written meanwhile is caught.
    const range = s.ranges.get(name) ?? await s.tracker.track(plan.source, name);
    s.ranges.set(name, range);
    await s.store.putPairAndRange(pair, range);
    const drive = openPairedDrive(s, pair, range);
    const source = openLocalDevice(opts.source, false);
    try {
      updateLabel(drive.io, pair);
      // A transaction an earlier pairing left in the tail must never be taken for one of this pair.
      const region = journalRegionOf(drive.io, pair, pair.id);
      if (region && pair.fullCopy.doneSectors === 0) await invalidate(region);
      const history = historyRegionOf(drive.io, pair, pair.id);
      if (history && pair.fullCopy.doneSectors === 0) resetHistory(history); // likewise the restore points
      const bytes = await fullCopy(s, pair, range, source, drive.io);
      pair.image = 'fuzzy'; // whole, but copied live: consistent after the first sync
      updateLabel(drive.io, pair);
      await s.store.putPairAndRange(pair, range);
      const capacity = journalCapacityOf(pair);
      log(`paired ${name}: ${opts.source} → ${opts.drive}, ${formatBytes(bytes)} copied; ` +
        `the DPSR drive is read-only and inconsistent until the first sync (dpsr sync ${name})` +
        (pair.reservedSectors === 0 ? '; no reserved tail: no label on the drive, no journal (not crash-safe during a sync)'
          : capacity === null ? '; the reserved tail is too small for a journal: syncs write in place (not crash-safe during a sync)'
            : `; a sync may carry up to ${formatBytes(capacity)} of changes (the journal in the reserved tail)`) +
        (pair.historySectors ? `; ${formatBytes(pair.historySectors * 512)} keep restore points (dpsr history ${name})` : ''));
      // Smaller than one apt upgrade: the sync after the next upgrade may be refused.
      if (capacity !== null && capacity < UPGRADE_BYTES) {
        log(`warning: a sync with more than ${formatBytes(capacity)} of changes is refused, and an apt upgrade with a new kernel ` +
          `changes 1-2 GiB of a Debian system disk: sync often, or give the drive a bigger reserved tail (--reserve ${DEFAULT_RESERVE}, or a bigger drive)`);
      }
    } finally {
      source.close();
      drive.release();
    }
    return pair;
  } finally {
    await closeSession(s);
  }
}
