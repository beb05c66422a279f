// Tracking across a reboot: the first owner of a boot (`dpsr boot`, else the
// daemon's or a command's session) judges each pair's shutdown record against
// what the kernel counted since the boot began, consumes it, and either
// resumes the pair with the record's sets and no gap, or records the gap with
// its cause. The verdict is kept in /run for the rest of the boot, so that
// `dpsr boot`'s judgement (made before the file systems were mounted) is
// the one later sessions apply. A DPSR drive missing then leaves the pair
// waiting: what was proved when tracking began is kept (the pair's
// awaitingRecord), the pair is tracked but not synced, and the record is
// judged with those values when any session finds the drive back.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { OWNER_RING_BYTES, type Settings } from '../base/defaults.js';
import type { DpsrError } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { writeFileAtomic } from '../base/atomic-write.js';
import { bootId } from '../devices/boot-id.js';
import { type BlockDevice, formatDev, resolveBlockDevice } from '../devices/devices.js';
import { superblockFingerprint } from '../devices/fingerprint.js';
import type { BlockIo } from '../io/block-io.js';
import type { Baseline } from '../kernel/reconcile.js';
import { checkTrackingSupport } from '../kernel/preflight.js';
import { type GapCause, type RangeState, Tracker } from '../kernel/tracker.js';
import { KernelTracking } from '../kernel/tracking.js';
import { SECTOR } from '../base/units.js';
import type { AwaitingRecord, PairRecord } from '../state/records.js';
import { type RebootAdopter, type Session, openSession } from '../state/session.js';
import { Store } from '../state/store.js';
import { openCheckedDrive } from './paired-drive.js';
import { type ShutdownRecord, eraseShutdownRecord, readShutdownRecord } from './shutdown-record.js';

/** What the first owner of a boot decided for a pair. */
export interface BootVerdict {
  pairId: string;
  bootId: string | null;
  atMs: number;
  resumed: boolean;
  /** Why not (a gap), with the words said to the admin. */
  cause: GapCause | null;
  detail: string;
  /** The counts' starting point when tracking began in this boot (null: not tracked when judged). */
  baseline: Baseline | null;
  /** The record's sets when resumed (base64 of ExtentSet.toBuffer()). */
  sets: { dirty: string; suspect: string; discarded: string } | null;
  pending: { generation: number; copy: string; compare: string; discard: string } | null;
  /** The DPSR drive was missing: nothing judged yet, and what was proved when tracking began, kept for when it returns. */
  awaiting?: Proof | null;
}

/** What is proved when tracking begins in a boot: the values a shutdown record is judged against, then or later. */
export interface Proof {
  /** The boot the pair was last tracked in: the record must extend the state saved in it. */
  savedBootId: string | null;
  /** The kernel's count of the source's disk before tracking began. */
  baseline: Baseline | null;
  /** The source's file-system superblocks then. */
  fingerprint: string;
}

/** The tracker's state a verdict gives back its past to (saved in an earlier boot). */
type Past = Pick<RangeState, 'dirty' | 'suspect' | 'discarded' | 'unreconciled' | 'receivedSectors' | 'gaps'>;

/** Where this boot's verdicts live: beside the control socket, in /run (gone at the next boot). */
export const bootDir = (settings: Settings) => path.join(path.dirname(settings.socketPath), 'boot');
const verdictFile = (settings: Settings, name: string) => path.join(bootDir(settings), `${name}.json`);
/** Made by `dpsr shutdown`: a later owner in the same boot voids the records (the system did not go down). */
export const shutdownMarker = (settings: Settings) => path.join(bootDir(settings), 'shutdown-records-written');

/** This boot's verdict for the pair, if one was made. */
export function readVerdict(settings: Settings, pair: PairRecord): BootVerdict | null {
  try {
    const v = JSON.parse(fs.readFileSync(verdictFile(settings, pair.name), 'utf8')) as BootVerdict;
    return v.pairId === pair.id && v.bootId === bootId() ? v : null;
  } catch {
    return null;
  }
}

function writeVerdict(settings: Settings, name: string, v: BootVerdict): void {
  fs.mkdirSync(bootDir(settings), { recursive: true, mode: 0o700 });
  writeFileAtomic(verdictFile(settings, name), `${JSON.stringify(v)}\n`, 0o600);
}

const b64 = (s: ExtentSet) => s.toBuffer().toString('base64');
const setOf = (s: string) => ExtentSet.fromBuffer(Buffer.from(s, 'base64'));

/** Why a record cannot be trusted for this pair now, or null when it can. */
function distrust(rec: ShutdownRecord, pair: PairRecord, dev: BlockDevice, savedBootId: string | null): string | null {
  if (rec.pairId !== pair.id) return `the shutdown record belongs to another pairing (${rec.pairName})`;
  if (rec.bootId === bootId()) return 'the shutdown record was written in this boot, which ran on after it';
  const waited = pair.awaitingRecord;
  if (waited && waited.bootId !== bootId()) {
    return `the DPSR drive was missing through the last boot (from ${new Date(waited.atMs).toISOString()}): the shutdown record on it is from the boot before`;
  }
  // A boot since the record saved the pair's state (a boot that went on without its drive, then crashed): the record is older than that.
  if (rec.baseBootId !== savedBootId) return 'the shutdown record is older than the state saved since (a boot in between did not end with dpsr shutdown)';
  if (rec.generation !== pair.generation || rec.journalSeq !== (pair.journalSeq ?? 0)) {
    return `the shutdown record was written at generation ${rec.generation}, the pair is at ${pair.generation}`;
  }
  if (rec.source.sizeSectors !== dev.sizeSectors || rec.source.startSector !== dev.startSector) return 'the source is not where the shutdown record says';
  return null;
}

/** The proof taken as tracking begins: the counts' starting point, and the superblocks before anything mounts them. */
export const proofAt = (dev: BlockDevice, baseline: Baseline | null, savedBootId: string | null): Proof =>
  ({ savedBootId, baseline, fingerprint: superblockFingerprint(dev) });

/** A drive that is not there (unplugged, its export not reachable yet), as opposed to one that is there and wrong. */
const isMissing = (err: unknown) => ['ENODEV', 'ENBDCONNECT'].includes((err as DpsrError).code);

/**
 * Judges a pair across the reboot and consumes its shutdown record, with
 * what was proved when tracking began (`proof`: no write counted before it,
 * offset 0 and exact; the superblocks; the boot the state was saved in). The
 * record is erased durably before the verdict is kept or applied, so no later
 * crash can take it again. A missing drive judges nothing: the verdict waits
 * (`awaiting`), keeping the proof.
 */
export function judgeAcrossReboot(settings: Settings, pair: PairRecord, dev: BlockDevice, proof: Proof): BootVerdict {
  const { baseline, savedBootId } = proof;
  const gap = (cause: GapCause, detail: string): BootVerdict =>
    ({ pairId: pair.id, bootId: bootId(), atMs: Date.now(), resumed: false, cause, detail, baseline, sets: null, pending: null });
  let verdict: BootVerdict;
  let checked;
  try {
    checked = openCheckedDrive(pair, true);
  } catch (err) {
    verdict = isMissing(err)
      ? { ...gap('unclean-shutdown', ''), cause: null, awaiting: { savedBootId, baseline, fingerprint: proof.fingerprint }, detail: `waiting for its DPSR drive (${(err as Error).message}): its shutdown record is judged when it returns; the source is tracked meanwhile, and nothing is synced` }
      : gap('unclean-shutdown', `the DPSR drive could not be read for a shutdown record (${(err as Error).message}): the whole source is compared`);
    writeVerdict(settings, pair.name, verdict);
    return verdict;
  }
  const { io } = checked;
  try {
    const read = readShutdownRecord(io, pair);
    if ('none' in read) {
      verdict = gap('unclean-shutdown', 'no shutdown record: the last boot did not end with dpsr shutdown for this pair (a crash, a power cut, its DPSR drive missing or unreachable at shutdown, or the hook not installed)');
    } else if ('invalid' in read) {
      verdict = gap('unclean-shutdown', `the shutdown record cannot be trusted: ${read.invalid}`);
    } else {
      const rec = read.record;
      const why = distrust(rec, pair, dev, savedBootId);
      if (why) verdict = gap('unclean-shutdown', why);
      else if (!baseline || !baseline.exact) verdict = gap('written-before-attach', `writes were in flight on ${dev.disk} when tracking began: what came before cannot be confirmed`);
      else if (baseline.offsetSectors !== 0) verdict = gap('written-before-attach', `the kernel counted ${baseline.offsetSectors} sectors written to ${dev.disk} (${formatDev(dev.diskDev)}) before tracking began in this boot`);
      else if (proof.fingerprint !== rec.fingerprint) verdict = gap('changed-offline', `the file-system superblocks of ${pair.source.path} changed while this system was down (mounted read-write elsewhere?)`);
      else {
        verdict = {
          ...gap('unclean-shutdown', ''), resumed: true, cause: null,
          detail: `resumed from the shutdown record of ${new Date(rec.writtenMs).toISOString()}: no gap`,
          sets: { dirty: b64(rec.sets.dirty), suspect: b64(rec.sets.suspect), discarded: b64(rec.sets.discarded) },
          pending: rec.pending && { generation: rec.pending.generation, copy: b64(rec.pending.copy), compare: b64(rec.pending.compare), discard: b64(rec.pending.discard) },
        };
      }
      consume(io, pair);
    }
    if ('invalid' in read) consume(io, pair);
  } catch (err) {
    verdict = gap('unclean-shutdown', `the shutdown record could not be read and consumed (${(err as Error).message}): not trusted`);
  } finally {
    io.close();
  }
  writeVerdict(settings, pair.name, verdict);
  return verdict;
}

/** Erases the record with the drive writable for that moment (it is kept read-only otherwise). */
function consume(io: BlockIo, pair: PairRecord): number {
  io.setReadOnly(false);
  try {
    return eraseShutdownRecord(io, pair);
  } finally {
    io.setReadOnly(true);
  }
}

type Changes = { dirty: ExtentSet; discarded: ExtentSet };

/** Lays `older` under `newer` (into newer): the later of a write and a discard wins, as the tracker has it. */
function layUnder(newer: Changes, older: Changes): void {
  older.dirty.subtractSet(newer.discarded);
  older.discarded.subtractSet(newer.dirty);
  newer.dirty.addSet(older.dirty);
  newer.discarded.addSet(older.discarded);
}

/**
 * Applies a verdict to a range adopted afresh in this boot (its sets hold
 * only what was written since tracking began): resumed, the record's sets
 * come first and the writes since on top; otherwise the saved sets and the
 * whole range suspect, with the gap's cause.
 */
export function applyVerdict(s: Session, pair: PairRecord, range: RangeState, saved: Past, v: BootVerdict): void {
  const base = v.resumed && v.sets
    ? { dirty: setOf(v.sets.dirty), suspect: setOf(v.sets.suspect), discarded: setOf(v.sets.discarded) }
    : { dirty: saved.dirty, suspect: saved.suspect, discarded: saved.discarded };
  layUnder(range, base);
  range.suspect.addSet(base.suspect);
  if (!v.resumed) range.suspect.addSet(saved.unreconciled);
  range.receivedSectors = saved.receivedSectors;
  range.gaps = [...saved.gaps, ...range.gaps];
  if (v.resumed && v.pending && pair.pending?.generation !== v.pending.generation) {
    // A cut the store does not hold any more (it should): taken again as changes, never lost.
    range.dirty.addSet(setOf(v.pending.copy));
    range.suspect.addSet(setOf(v.pending.compare));
    range.discarded.addSet(setOf(v.pending.discard));
  }
  if (!v.resumed) s.tracker.suspectAll(range, v.cause ?? 'unclean-shutdown', `${pair.name}: ${v.detail}`);
}

/** Voids the records `dpsr shutdown` wrote earlier in this boot: the system went on running, so they are stale. */
export function voidShutdownRecords(settings: Settings, pairs: PairRecord[]): void {
  const marker = shutdownMarker(settings);
  if (!fs.existsSync(marker) || fs.readFileSync(marker, 'utf8').trim() !== bootId()) return;
  for (const pair of pairs) {
    try {
      const { io } = openCheckedDrive(pair, true);
      try { consume(io, pair); } finally { io.close(); }
    } catch {
      // the drive is not here: its record says this boot, which the next boot refuses anyway
    }
  }
  fs.rmSync(marker, { force: true });
}

const encodePast = (p: Past): AwaitingRecord['past'] => ({
  dirty: p.dirty.toBuffer(), suspect: p.suspect.toBuffer(), discarded: p.discarded.toBuffer(), unreconciled: p.unreconciled.toBuffer(),
  receivedSectors: p.receivedSectors, gaps: p.gaps,
});
const decodePast = (p: AwaitingRecord['past']): Past => ({
  dirty: ExtentSet.fromBuffer(p.dirty), suspect: ExtentSet.fromBuffer(p.suspect), discarded: ExtentSet.fromBuffer(p.discarded),
  unreconciled: ExtentSet.fromBuffer(p.unreconciled), receivedSectors: p.receivedSectors, gaps: p.gaps,
});

/** Why a waiting pair is not synced, rolled back or compared (the session's problem for it). */
export const waitingProblem = (pair: PairRecord) =>
  `pair ${pair.name}: waiting for its DPSR drive ${pair.drive.path}: the shutdown record on it is judged when it is back (any dpsr command or the daemon); nothing is synced until then`;

/**
 * A pair left waiting in an earlier boot (its drive never came back there): that boot's writes, tracked
 * and saved, lie on top of the state it kept waiting. The record it waited for is from before that boot.
 */
function pastOfEarlierWait(pair: PairRecord, saved: Past): Past {
  const w = pair.awaitingRecord;
  if (!w || w.bootId === bootId()) return saved;
  const past = decodePast(w.past);
  const changes = { dirty: saved.dirty.clone(), discarded: saved.discarded.clone() };
  layUnder(changes, past);
  past.suspect.addSet(saved.suspect);
  past.unreconciled.addSet(saved.unreconciled);
  return { ...past, ...changes, receivedSectors: saved.receivedSectors, gaps: [...past.gaps, ...saved.gaps] };
}

/**
 * Gives a pair its verdict, or keeps it waiting: the range holds what was written since tracking began, and
 * `past` (the state saved before) waits in the pair record with the proof, durably (a state saved in this
 * boot, so the record on the drive can never be taken by a later boot: distrust()).
 */
async function applyOrWait(s: Session, pair: PairRecord, range: RangeState, past: Past, v: BootVerdict): Promise<void> {
  if (v.awaiting) {
    const { savedBootId, baseline, fingerprint } = v.awaiting;
    pair.awaitingRecord = { bootId: bootId(), atMs: Date.now(), savedBootId, baseline, fingerprint, past: encodePast(past) };
    s.problems.set(pair.name, waitingProblem(pair));
  } else {
    applyVerdict(s, pair, range, past, v);
    if (s.problems.get(pair.name)?.startsWith(waitingProblem(pair))) s.problems.delete(pair.name);
    pair.awaitingRecord = null;
  }
  await s.store.putPairAndRange(pair, range);
}

/**
 * A pair waiting in this boot: judged now if its DPSR drive is back, with the
 * values proved when tracking began (a verdict already made and kept in /run
 * is applied as it is). The daemon calls it each tick.
 */
export async function settleWaiting(s: Session, pair: PairRecord, range: RangeState, dev: BlockDevice): Promise<void> {
  const w = pair.awaitingRecord;
  if (!w || w.bootId !== bootId()) return; // from an earlier boot: its adoption across the reboot judges it
  const earlier = readVerdict(s.settings, pair);
  const v = earlier && !earlier.awaiting ? earlier : judgeAcrossReboot(s.settings, pair, dev, proofOf(w));
  if (v.awaiting) s.problems.set(pair.name, waitingProblem(pair)); // still away: the wait saved stays as it is
  else await applyOrWait(s, pair, range, decodePast(w.past), v);
}

const proofOf = (w: AwaitingRecord): Proof => ({ savedBootId: w.savedBootId, baseline: w.baseline, fingerprint: w.fingerprint });

/** Every waiting pair of a session (the daemon's tick): judged once its drive is back. */
export async function settleAllWaiting(s: Session): Promise<void> {
  for (const [name, range] of s.ranges) {
    const pair = s.store.pair(name);
    if (!pair?.awaitingRecord) continue;
    try {
      await settleWaiting(s, pair, range, resolveBlockDevice(pair.source.path));
    } catch (err) {
      s.problems.set(name, `${waitingProblem(pair)} (${(err as Error).message})`);
    }
  }
}

/** The adoption every session of this dpsr runs for a range last saved in another boot. */
export function rebootAdopter(settings: Settings): RebootAdopter {
  return {
    beforeAdoption: (pairs) => voidShutdownRecords(settings, pairs),
    baselineOf: (pair) => readVerdict(settings, pair)?.baseline ?? null,
    adopt: async (s, pair, range, saved, dev, savedBootId, trackedSinceBoot) => {
      const earlier = trackedSinceBoot ? readVerdict(settings, pair) : null;
      const v = earlier && !earlier.awaiting ? earlier
        : judgeAcrossReboot(settings, pair, dev, earlier?.awaiting ?? proofAt(dev, range.baseline, savedBootId));
      await applyOrWait(s, pair, range, pastOfEarlierWait(pair, saved), v);
    },
    settle: settleWaiting,
  };
}

/** A session that adopts pairs across a reboot: what every command and the daemon open. */
export function openTrackingSession(settings: Settings, opts: { waitMs?: number } = {}): Promise<Session> {
  return openSession(settings, { ...opts, rebooted: rebootAdopter(settings) });
}

export interface BootOutcome {
  name: string;
  resumed: boolean;
  /** The DPSR drive was missing: judged when it returns. */
  awaiting: boolean;
  cause: GapCause | null;
  detail: string;
  dirtyBytes: number;
  suspectBytes: number;
}

/** What `dpsr boot` says of a pair: its verdict, why there is none, and what the next sync has to do. */
function outcomeOf(pair: PairRecord, v: BootVerdict | null, dev: BlockDevice | null | undefined, range: RangeState | undefined): BootOutcome {
  const sets = v?.sets ? { dirty: setOf(v.sets.dirty), suspect: setOf(v.sets.suspect) } : null;
  return {
    name: pair.name,
    resumed: v?.resumed ?? false,
    awaiting: Boolean(v?.awaiting),
    cause: v?.cause ?? null,
    detail: v ? v.detail : dev === null ? `the source ${pair.source.path} is not here: the first session that finds it compares it` : 'adopted in this boot already',
    dirtyBytes: ((sets?.dirty.totalSectors ?? 0) + (range?.dirty.totalSectors ?? 0)) * SECTOR,
    suspectBytes: (v && !v.resumed && !v.awaiting ? pair.dataSectors : sets?.suspect.totalSectors ?? 0) * SECTOR,
  };
}

/** This boot's verdict for a pair; one that waited for its DPSR drive is judged now, with the proof kept, if the drive is back. */
function judgeIfBack(settings: Settings, pair: PairRecord): BootVerdict | null {
  const v = readVerdict(settings, pair);
  const proof = v?.awaiting ?? (pair.awaitingRecord?.bootId === bootId() ? proofOf(pair.awaitingRecord) : null);
  if (!proof) return v;
  let dev;
  try {
    dev = resolveBlockDevice(pair.source.path);
  } catch {
    return v; // the source gone meanwhile: the session that finds it judges
  }
  return judgeAcrossReboot(settings, pair, dev, proof);
}

/** Waits up to `waitMs` for a device node (early in a boot udev may still be making it); null when it never came. */
async function waitForDevice(devPath: string, waitMs: number): Promise<BlockDevice | null> {
  for (const deadline = Date.now() + waitMs; ;) {
    try {
      return resolveBlockDevice(devPath);
    } catch {
      if (Date.now() >= deadline) return null;
      await sleep(100);
    }
  }
}

/**
 * `dpsr boot`: early in a boot, before the file systems are mounted
 * read-write, attaches the programs, tracks every pair's source, and judges
 * each across the reboot. The state directory is read-only then: the verdicts
 * go to /run, and the first session of the boot applies them; the records
 * read since stay in the kernel's ring for it. Run again in the same boot,
 * it reports the verdicts made.
 */
export async function adoptAtBoot(settings: Settings, opts: { waitMs: number }): Promise<BootOutcome[]> {
  const store = Store.openReadOnly(settings.stateDir);
  if (!store) return [];
  try {
    const pairs = store.pairs();
    // Judged already in this boot (dpsr boot ran, or a session saved since): only reported, or judged now if it waited for its drive.
    const todo = pairs.filter((pair) => !readVerdict(settings, pair) && store.rangeBootId(pair.name) !== bootId());
    if (todo.length === 0) return pairs.map((pair) => outcomeOf(pair, judgeIfBack(settings, pair), undefined, undefined));
    checkTrackingSupport(settings.kernelBtfPath);
    const kt = KernelTracking.open({ pinDir: settings.pinDir });
    try {
      const tracker = Tracker.start(kt, { ownerLockPath: settings.ownerLockPath, ringBytes: OWNER_RING_BYTES });
      try {
        const devs = new Map<string, BlockDevice | null>();
        // Every source tracked first, so that no record written meanwhile moves a count the verdicts read.
        for (const pair of todo) devs.set(pair.name, await waitForDevice(pair.source.path, opts.waitMs));
        const ranges = new Map<string, RangeState>();
        for (const [name, dev] of devs) if (dev) ranges.set(name, await tracker.track(dev, name));
        return pairs.map((pair) => {
          const dev = devs.get(pair.name);
          const range = ranges.get(pair.name);
          const v = dev && range ? judgeAcrossReboot(settings, pair, dev, proofAt(dev, range.baseline, store.rangeBootId(pair.name))) : judgeIfBack(settings, pair);
          return outcomeOf(pair, v, dev, range);
        });
      } finally {
        tracker.abandon(); // the records read stay in the ring for the first session
      }
    } finally {
      kt.close();
    }
  } finally {
    await store.close();
  }
}
