// The end of a clean shutdown (`dpsr shutdown`): for every pair, what the
// tracker holds and the kernel has not handed over yet, judged against the
// kernel's counts, written as a shutdown record into the DPSR drive's tail,
// confirmed only once the source's disk is seen unwritten meanwhile (a record
// never confirmed is never trusted: a drive lost between the two, an export
// whose network is already down, cannot leave one that is).
// The state directory is read-only by then (the root file system is), so
// nothing is persisted there and nothing is released from the kernel: if
// the system runs on after all, the next owner reads it all again and voids
// the records (boot-adoption.ts).
import fs from 'node:fs';
import path from 'node:path';
import { OWNER_RING_BYTES, type Settings } from '../base/defaults.js';
import { DpsrError } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { SECTOR } from '../base/units.js';
import { bootId } from '../devices/boot-id.js';
import { type BlockDevice, readDiskCounters, resolveBlockDevice } from '../devices/devices.js';
import { superblockFingerprint } from '../devices/fingerprint.js';
import { writableFileSystemsOf } from '../devices/mounts.js';
import { OWNER_RING } from '../kernel/kernel-abi.js';
import { type RangeState, Tracker } from '../kernel/tracker.js';
import { KernelTracking } from '../kernel/tracking.js';
import type { PairRecord } from '../state/records.js';
import { Store } from '../state/store.js';
import { readVerdict, shutdownMarker } from './boot-adoption.js';
import { openCheckedDrive } from './paired-drive.js';
import { driveNameOf, isRemote } from './remote-drive.js';
import { serverUnreachable } from '../io/nbd-device.js';
import type { BlockIo } from '../io/block-io.js';
import { type ShutdownRecord, confirmShutdownRecord, writeShutdownRecord } from './shutdown-record.js';

export interface ShutdownOutcome {
  name: string;
  recorded: boolean;
  /** What was recorded, or why nothing was (the next boot compares the pair). */
  detail: string;
  dirtyBytes: number;
  suspectBytes: number;
  discardedBytes: number;
}

interface Prepared {
  pair: PairRecord;
  dev: BlockDevice;
  range: RangeState;
  baseBootId: string | null;
  /** Once the record is written: the head that confirms it, and the drive it is confirmed through (the same connection to an export). */
  written?: { head: Buffer; io: BlockIo };
}

/** The tracker state the record extends: saved in this boot, or the sets `dpsr boot` resumed with (no session saved since). */
function baseOf(settings: Settings, store: Store, pair: PairRecord): { saved: Omit<RangeState, 'slot'>; baseBootId: string | null } | string {
  const saved = store.range(pair.name);
  if (!saved) return 'no tracker state was ever saved for it';
  // Its state before this boot waits apart, with the record it was never judged against: neither may be handed on.
  if (pair.awaitingRecord) return `it still waits for its DPSR drive ${pair.drive.path}, missing when this boot began: the record of the boot before was never judged`;
  const savedBootId = store.rangeBootId(pair.name);
  if (savedBootId === bootId()) return { saved, baseBootId: savedBootId };
  const v = readVerdict(settings, pair);
  if (!v?.resumed || !v.sets || !v.baseline) {
    return `its history in this boot is unknown (${v ? `${v.cause ?? 'waiting'}: ${v.detail}` : 'no dpsr adopted it since the boot'})`;
  }
  const set = (s: string) => ExtentSet.fromBuffer(Buffer.from(s, 'base64'));
  return {
    saved: { ...saved, dirty: set(v.sets.dirty), suspect: set(v.sets.suspect), discarded: set(v.sets.discarded), unreconciled: new ExtentSet(), baseline: v.baseline },
    baseBootId: savedBootId,
  };
}

/** Why the pair gets no record, or null when it can have one. */
function refusal(kt: KernelTracking, pair: PairRecord, dev: BlockDevice): string | null {
  if (pair.pendingTxn) return 'a sync was interrupted with its journal transaction pending (the next sync finishes it)';
  const writable = writableFileSystemsOf(dev);
  if (writable.length > 0) return `${dev.path} is still mounted read-write (${writable.map((w) => w.path).join(', ')}): a record is only made when nothing can write any more`;
  const tracked = kt.slotsOf(OWNER_RING).some(({ slot }) => slot.diskDev === dev.diskDev && slot.startSector === dev.startSector && slot.endSector === dev.startSector + dev.sizeSectors);
  return tracked ? null : 'it is not tracked in this boot';
}

/**
 * Makes a shutdown record for every pair. Throws EOWNED while another
 * process (the daemon) owns tracking: it must have stopped first.
 */
export async function writeShutdownRecords(settings: Settings): Promise<ShutdownOutcome[]> {
  const store = Store.openReadOnly(settings.stateDir);
  if (!store) return [];
  const outcomes = new Map<string, ShutdownOutcome>();
  const none = (pair: PairRecord, detail: string) => outcomes.set(pair.name, { name: pair.name, recorded: false, detail, dirtyBytes: 0, suspectBytes: 0, discardedBytes: 0 });
  try {
    const pairs = store.pairs();
    if (pairs.length === 0) return [];
    if (!fs.existsSync(path.join(settings.pinDir, 'link_complete'))) {
      for (const pair of pairs) none(pair, 'nothing is tracked in this boot (no programs pinned)');
      return [...outcomes.values()];
    }
    const kt = KernelTracking.open({ pinDir: settings.pinDir });
    try {
      let tracker: Tracker;
      try {
        tracker = Tracker.start(kt, { ownerLockPath: settings.ownerLockPath, ringBytes: OWNER_RING_BYTES });
      } catch (err) {
        if ((err as DpsrError).code === 'EOWNED') {
          throw new DpsrError('another dpsr process owns tracking (the daemon?): stop it first (systemctl stop dpsr); the shutdown hook runs after every service has stopped', 'EOWNED');
        }
        throw err;
      }
      try {
        await recordAll(settings, store, kt, tracker, pairs, none, outcomes);
      } finally {
        tracker.abandon(); // nothing released: a system that runs on reads it all again
      }
    } finally {
      kt.close();
    }
    return pairs.map((p) => outcomes.get(p.name)!);
  } finally {
    await store.close();
  }
}

/** Why a pair's record was not written (or confirmed), for a person. */
function notWritten(pair: PairRecord, err: unknown): string {
  if ((err as DpsrError).code === 'ENODEV') return `its DPSR drive ${pair.drive.path} is missing (${(err as Error).message})`;
  if (serverUnreachable(err)) return `its DPSR drive ${driveNameOf(pair)} cannot be reached (${(err as Error).message})`;
  return `the record could not be written: ${(err as Error).message}`;
}

async function recordAll(settings: Settings, store: Store, kt: KernelTracking, tracker: Tracker, pairs: PairRecord[],
  none: (pair: PairRecord, detail: string) => void, outcomes: Map<string, ShutdownOutcome>): Promise<void> {
  const prepared: Prepared[] = [];
  for (const pair of pairs) {
    try {
      const base = baseOf(settings, store, pair);
      if (typeof base === 'string') { none(pair, base); continue; }
      const dev = resolveBlockDevice(pair.source.path);
      const why = refusal(kt, pair, dev);
      if (why) { none(pair, why); continue; }
      const range = await tracker.track(dev, pair.name, base.saved);
      prepared.push({ pair, dev, range, baseBootId: base.baseBootId });
    } catch (err) {
      none(pair, (err as Error).message);
    }
  }
  if (prepared.length === 0) return;
  // The counts the records claim: any write from here on voids them.
  const disks = new Set(prepared.map((p) => p.dev.disk));
  const before = new Map([...disks].map((d) => [d, readDiskCounters(d)]));
  tracker.flip(); // drain, and the retired epoch's bits in; memory only
  const { verdicts, distrusted } = await tracker.judge();
  for (const st of distrusted) tracker.distrust(st, verdicts.get(st)!);
  const ownSectors = new Map<string, number>(); // what the records themselves wrote, per disk
  const written: Prepared[] = [];
  for (const p of prepared) {
    const { pair, dev, range } = p;
    if (verdicts.get(range)?.kind !== 'exact') range.suspect.addSet(range.unreconciled); // unconfirmed: compared after the boot
    range.unreconciled.clear();
    const rec: ShutdownRecord = {
      pairId: pair.id, pairName: pair.name, generation: pair.generation, journalSeq: pair.journalSeq ?? 0,
      bootId: bootId() ?? '', baseBootId: p.baseBootId, writtenMs: Date.now(),
      source: { sizeSectors: dev.sizeSectors, startSector: dev.startSector, disk: dev.disk, serial: pair.source.serial, wwid: pair.source.wwid, loopBackingFile: pair.source.loopBackingFile },
      diskWrittenSectors: before.get(dev.disk)!.writtenSectors,
      fingerprint: superblockFingerprint(dev),
      sets: { dirty: range.dirty, suspect: range.suspect, discarded: range.discarded },
      pending: pair.pending && {
        generation: pair.pending.generation, copy: ExtentSet.fromBuffer(pair.pending.copy), compare: ExtentSet.fromBuffer(pair.pending.compare),
        discard: pair.pending.discard ? ExtentSet.fromBuffer(pair.pending.discard) : new ExtentSet(),
      },
    };
    const outcome: ShutdownOutcome = {
      name: pair.name, recorded: false, detail: '',
      dirtyBytes: range.dirty.totalSectors * SECTOR, suspectBytes: range.suspect.totalSectors * SECTOR, discardedBytes: range.discarded.totalSectors * SECTOR,
    };
    outcomes.set(pair.name, outcome);
    try {
      const { io } = openCheckedDrive(pair, true);
      try {
        const driveDisk = isRemote(pair) ? null : resolveBlockDevice(pair.drive.path).disk; // an export's writes are not on a local disk
        io.setReadOnly(false);
        const r = writeShutdownRecord(io, pair, rec);
        io.setReadOnly(true);
        if ('why' in r) { outcome.detail = r.why; continue; }
        if (driveDisk) ownSectors.set(driveDisk, (ownSectors.get(driveDisk) ?? 0) + r.bytes / SECTOR);
        p.written = { head: r.head, io };
      } finally {
        if (!p.written) io.close();
      }
      written.push(p);
    } catch (err) {
      outcome.detail = notWritten(pair, err);
    }
  }
  try {
    // A write between the counts and now (other than the records themselves) voids the records of
    // its disk: they stay unconfirmed. All are judged before any is confirmed (a confirmation is a write too).
    const unvoided = written.filter((p) => {
      const was = before.get(p.dev.disk)!;
      const now = readDiskCounters(p.dev.disk);
      if (was.inFlightWrites === 0 && now.writtenSectors === was.writtenSectors + (ownSectors.get(p.dev.disk) ?? 0)) return true;
      outcomes.get(p.pair.name)!.detail = `${p.dev.disk} was written while the record was made (${now.writtenSectors - was.writtenSectors} sectors): record left unconfirmed`;
      return false;
    });
    for (const p of unvoided) {
      const outcome = outcomes.get(p.pair.name)!;
      const { io, head } = p.written!;
      try {
        io.setReadOnly(false);
        confirmShutdownRecord(io, p.pair, head);
        io.setReadOnly(true);
        outcome.recorded = true;
        outcome.detail = 'recorded';
      } catch (err) {
        outcome.detail = `${notWritten(p.pair, err)}: the record made is left unconfirmed`;
      }
    }
  } finally {
    for (const p of written) p.written!.io.close();
  }
  if (written.some((p) => outcomes.get(p.pair.name)!.recorded)) {
    fs.mkdirSync(path.dirname(shutdownMarker(settings)), { recursive: true, mode: 0o700 });
    fs.writeFileSync(shutdownMarker(settings), `${bootId() ?? ''}\n`);
  }
}
