// The one owner for the length of a command (DESIGN.md invariant 4): the
// store, the kernel's tracking and the tracker, with every pair's range
// adopted and its devices checked against what was recorded.
import { setTimeout as sleep } from 'node:timers/promises';
import { type Settings, OWNER_RING_BYTES } from '../base/defaults.js';
import { type BlockDevice, readSysOrNull, resolveBlockDevice } from '../devices/devices.js';
import { bootId } from '../devices/boot-id.js';
import { ExtentSet } from '../base/extents.js';
import type { Baseline } from '../kernel/reconcile.js';
import { systemDisks } from '../devices/in-use.js';
import { DpsrError, RefusedError } from '../base/errors.js';
import { type DeviceIdentity, identify, identityChanges, isReplaced } from '../devices/identity.js';
import { OWNER_RING } from '../kernel/kernel-abi.js';
import { checkTrackingSupport } from '../kernel/preflight.js';
import { Store } from './store.js';
import { type PairRecord } from './records.js';
import { type RangeState, Tracker } from '../kernel/tracker.js';
import { KernelTracking } from '../kernel/tracking.js';
import { inheritFromOtherVersions, otherPinVersions } from '../kernel/pin-upgrade.js';

export interface Session {
  settings: Settings;
  store: Store;
  kt: KernelTracking;
  tracker: Tracker;
  ranges: Map<string, RangeState>;
  /** Pairs that could not be adopted, and why (device missing or replaced). */
  problems: Map<string, string>;
}

/**
 * Adoption across a reboot (drive/boot-adoption.ts: it reads the DPSR drive's
 * shutdown record, which this layer cannot).
 */
export interface RebootAdopter {
  /** Runs before any pair is adopted. */
  beforeAdoption(pairs: PairRecord[]): void;
  /** The counts' starting point `dpsr boot` measured for the pair in this boot, when it did. */
  baselineOf(pair: PairRecord): Baseline | null;
  /**
   * Judges a range first adopted in this boot (its sets hold only what was
   * written since tracking began; `trackedSinceBoot`: since `dpsr boot`
   * measured `baselineOf`) and gives it its history: resumed, or a gap.
   */
  adopt(s: Session, pair: PairRecord, range: RangeState, saved: Omit<RangeState, 'slot'>, dev: BlockDevice,
    savedBootId: string | null, trackedSinceBoot: boolean): Promise<void>;
  /** A range saved in this boot whose pair still waits for its DPSR drive to be judged: judged if the drive is back. */
  settle(s: Session, pair: PairRecord, range: RangeState, dev: BlockDevice): Promise<void>;
}

async function startTracker(kt: KernelTracking, settings: Settings, store: Store, waitMs: number): Promise<Tracker> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      return Tracker.start(kt, { ownerLockPath: settings.ownerLockPath, ringBytes: OWNER_RING_BYTES, store });
    } catch (err) {
      if ((err as DpsrError).code !== 'EOWNED' || Date.now() > deadline) throw err;
      await sleep(200);
    }
  }
}

/** Refuses another device found under the pair's source path (invariant 1). */
function refuseReplaced(pair: PairRecord, now: DeviceIdentity): void {
  if (isReplaced(pair.source, now)) {
    throw new RefusedError(`pair ${pair.name}: ${pair.source.path} is not the paired source any more (${identityChanges(pair.source, now).join('; ')}); unpair and pair again`, 'ESOURCECHANGED');
  }
}

/** The same device changed (re-attached, new media): it may have been written unseen, so its whole range is suspect. */
async function noteSourceChanges(s: Session, pair: PairRecord, range: RangeState, now: DeviceIdentity): Promise<void> {
  const changes = identityChanges(pair.source, now);
  if (changes.length === 0) {
    // The same disk in another boot: record this boot's sequence number, or the daemon's check of it
    // (recheckSources) would take every tick for a re-attach and probe the disk again, each time.
    if (pair.source.diskseq !== now.diskseq || (pair.source.bootId ?? null) !== (now.bootId ?? null)) {
      pair.source = { ...now, path: pair.source.path };
      await s.store.putPair(pair);
    }
    return;
  }
  s.tracker.suspectAll(range, 'identity-changed', `${pair.source.path} changed (${changes.join('; ')}): writes may have gone unseen`);
  pair.source = { ...now, path: pair.source.path };
  await s.store.putPairAndRange(pair, range);
}

/** Tracks a pair's source again, after checking it is still the same device. */
async function adoptPair(s: Session, pair: PairRecord, opts: { inheritable?: boolean; rebooted?: RebootAdopter } = {}): Promise<RangeState> {
  const dev = resolveBlockDevice(pair.source.path);
  const now = identify(dev, pair.source);
  refuseReplaced(pair, now);
  const saved = s.store.range(pair.name);
  const savedBootId = s.store.rangeBootId(pair.name);
  let range: RangeState;
  if (saved && opts.rebooted && savedBootId !== null && savedBootId !== bootId()) {
    // Saved in another boot: the range starts from what was written since tracking began, the adopter gives it its past.
    const baseline = opts.rebooted.baselineOf(pair);
    const fresh = baseline ? {
      ...saved, device: dev.path, disk: dev.disk, diskDev: dev.diskDev, startSector: dev.startSector, endSector: dev.startSector + dev.sizeSectors,
      dirty: new ExtentSet(), suspect: new ExtentSet(), discarded: new ExtentSet(), unreconciled: new ExtentSet(), gaps: [], baseline,
    } : undefined;
    range = await s.tracker.track(dev, pair.name, fresh);
    await opts.rebooted.adopt(s, pair, range, saved, dev, savedBootId, baseline !== null && range.baseline === baseline);
  } else {
    range = await s.tracker.track(dev, pair.name, saved, opts);
    if (pair.awaitingRecord && opts.rebooted) await opts.rebooted.settle(s, pair, range, dev);
    else if (pair.awaitingRecord) s.problems.set(pair.name, `pair ${pair.name}: waiting for its DPSR drive to judge the shutdown record on it: not synced until then`);
  }
  await noteSourceChanges(s, pair, range, now);
  s.ranges.set(pair.name, range);
  return range;
}

/**
 * For a session that lives long (the daemon): a source re-attached or given
 * new media keeps its device number, so tracking goes on unaware; its disk
 * sequence number changes. Checked each tick (a sysfs read), identified in
 * full only when it moved.
 */
export async function recheckSources(s: Session): Promise<void> {
  for (const [name, range] of s.ranges) {
    const pair = s.store.pair(name);
    if (!pair || s.problems.has(name)) continue;
    let dev: BlockDevice;
    try {
      dev = resolveBlockDevice(pair.source.path);
    } catch {
      continue; // gone: its next sync says so
    }
    const seq = readSysOrNull(`/sys/block/${dev.disk}/diskseq`);
    if (seq === null || Number(seq) === pair.source.diskseq) continue;
    const now = identify(dev);
    try {
      refuseReplaced(pair, now);
    } catch (err) {
      s.problems.set(name, (err as Error).message); // no sync writes to its drive until it is sorted out
      continue;
    }
    await noteSourceChanges(s, pair, range, now);
  }
}

/**
 * A machine booted from its DPSR drive runs on the copy: no sync may write
 * to it, and its image is the running system, not a point in time to roll
 * back to. The way back is a new pair in reverse.
 */
export function runningFromDrive(pair: PairRecord, system: Set<string>): string | null {
  let disk: string;
  try {
    disk = resolveBlockDevice(pair.drive.path).disk;
  } catch {
    return null; // the drive is not here: syncs fail on their own, clearly
  }
  if (!system.has(disk)) return null;
  return `pair ${pair.name}: this system runs from the pair's DPSR drive ${pair.drive.path}: nothing is written to it, and it is no image to roll back to; ` +
    `to go back, pair it in reverse onto a new or repaired disk (dpsr unpair ${pair.name}; dpsr pair ${pair.drive.path} NEW_DISK), sync, and boot that disk`;
}

export async function openSession(settings: Settings, opts: { waitMs?: number; rebooted?: RebootAdopter } = {}): Promise<Session> {
  checkTrackingSupport(settings.kernelBtfPath);
  const store = Store.open(settings.stateDir);
  let kt: KernelTracking | undefined;
  let tracker: Tracker | undefined;
  try {
    kt = KernelTracking.open({ pinDir: settings.pinDir });
    tracker = await startTracker(kt, settings, store, opts.waitMs ?? 10_000);
    const s: Session = { settings, store, kt, tracker, ranges: new Map(), problems: new Map() };
    // Another version's programs still attached (an upgrade): ours are attached now, theirs hold the history since.
    const others = otherPinVersions(settings.pinDir);
    const pairs = store.pairs();
    opts.rebooted?.beforeAdoption(pairs);
    for (const pair of pairs) {
      try {
        await adoptPair(s, pair, { inheritable: others.length > 0, rebooted: opts.rebooted });
      } catch (err) {
        s.problems.set(pair.name, (err as Error).message);
      }
    }
    if (others.length > 0) await inheritFromOtherVersions(tracker, others, tracker.takeAwaitingHistory());
    const system = systemDisks();
    for (const pair of pairs) {
      const why = runningFromDrive(pair, system);
      if (why) s.problems.set(pair.name, why);
    }
    await tracker.cycle();
    return s;
  } catch (err) {
    // What it read stays in the ring for the next owner; its timer would keep the process alive.
    tracker?.abandon();
    kt?.close();
    await store.close();
    throw err;
  }
}

/** Hands tracking over cleanly and closes everything. */
export async function closeSession(s: Session): Promise<void> {
  try {
    await s.tracker.stop();
    if (s.tracker.ranges.length === 0 && s.problems.size === 0) {
      // No pair left: release the owner's ring; the programs go if nobody else needs them.
      s.kt.unregisterConsumer(OWNER_RING);
      s.kt.detachIfUnused();
    }
  } finally {
    s.kt.close();
    await s.store.close();
  }
}
