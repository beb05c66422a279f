// An upgrade whose BPF maps changed shape pins its programs under a new
// version directory (/sys/fs/bpf/dpsr/v5 beside v4). The new programs are
// attached first, so from then on both see every write; then what the old
// ones hold is taken over: the owner ring's records the old owner had not
// persisted (exact) and both epochs' bits (coarse: unreconciled, or suspect
// if the old ring dropped records). Only after that is persisted are the
// old programs detached. A version this dpsr cannot read, or a range the old
// programs were not tracking, is a gap: compared, never assumed clean.
import fs from 'node:fs';
import path from 'node:path';
import { OWNER_RING } from './kernel-abi.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Verdict, judge } from './reconcile.js';
import { type AwaitingHistory, type Tracker, readingOf } from './tracker.js';
import { native } from '../base/native.js';
import { KernelTracking, bitsToExtents } from './tracking.js';

/**
 * Pin directory names whose maps this dpsr reads: its own layout, under every
 * name it was released with. A new name comes with new maps or new program
 * code (v2: multi-range discards placed per bio; v3: the issue log, its maps
 * beside the others, absent from v1's and v2's pins; v4: the time of each
 * range's last write; v5: the issue log's entries indexed by request tag), so that an upgrade
 * attaches the new programs and retires the old ones instead of leaving them
 * pinned.
 */
const READABLE_VERSIONS = new Set(['v1', 'v2', 'v3', 'v4', 'v5']);

/** Other versions' pin directories beside ours that hold attached programs. */
export function otherPinVersions(pinDir: string): string[] {
  const parent = path.dirname(pinDir);
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return [];
  }
  return names.filter((n) => /^v\d+$/.test(n) && n !== path.basename(pinDir))
    .map((n) => path.join(parent, n))
    .filter((dir) => fs.existsSync(path.join(dir, 'link_complete')));
}

const sameRange = (a: { diskDev: number; startSector: number; endSector: number }, b: typeof a) =>
  a.diskDev === b.diskDev && a.startSector === b.startSector && a.endSector === b.endSector;

/**
 * Judges the old programs' count of a range against the baseline saved with
 * it (invariant 2 for the old slot): only if they saw every write the kernel
 * counted may their coarse bits wait for our own exact count. Null when the
 * saved baseline is not theirs (nothing to judge by).
 */
async function judgeOld(old: KernelTracking, index: number, a: AwaitingHistory, dir: string): Promise<Verdict | null> {
  if ((a.savedBaseline.countedBy ?? dir) !== dir) return null;
  let verdict: Verdict = { kind: 'busy' };
  for (let attempt = 0; attempt < 5 && verdict.kind === 'busy'; attempt++) {
    const first = readingOf(old, index, a.range.disk);
    await sleep(5);
    verdict = judge(a.savedBaseline, first, readingOf(old, index, a.range.disk)).verdict;
  }
  return verdict;
}

/** Reads what a readable old version holds for the awaiting ranges into the tracker; returns those it was tracking. */
async function inherit(tracker: Tracker, dir: string, awaiting: AwaitingHistory[]): Promise<AwaitingHistory[]> {
  let old: KernelTracking;
  try {
    if (!READABLE_VERSIONS.has(path.basename(dir))) return [];
    old = KernelTracking.open({ pinDir: dir });
  } catch {
    return []; // not the layout this version knows
  }
  try {
    const bySlot = new Map<number, AwaitingHistory>();
    for (const { index, slot } of old.slotsOf(OWNER_RING)) {
      const a = awaiting.find((x) => sameRange(x.range, slot));
      if (a) bySlot.set(index, a);
    }
    let malformed = 0;
    if (old.hasRing(OWNER_RING)) {
      const reader = old.reader(OWNER_RING, (batch) => { malformed += tracker.ingestForeign(batch, (i) => bySlot.get(i)?.range); }, 50, true);
      reader.consume();
      malformed += reader.malformed();
      reader.close(); // nothing released: until the old programs are detached, a crash redoes all of this
    }
    // Read, never cleared: the old programs go only after what they imply is saved.
    const drops = old.epochDrops(OWNER_RING, 0) + old.epochDrops(OWNER_RING, 1);
    for (const [index, a] of bySlot) {
      const { range } = a;
      const verdict = await judgeOld(old, index, a, dir);
      const exact = drops === 0 && malformed === 0 && verdict?.kind === 'exact';
      const slot = old.slot(index)!;
      const into = exact ? range.unreconciled : range.suspect;
      for (const epoch of [0, 1]) for (const [x, y] of bitsToExtents(old.epochBits(index, epoch, false), slot)) into.add(x, y);
      if (malformed > 0) tracker.recordGap(range, 'malformed-records', `${malformed} records in the previous version's ring could not be read: its regions are suspect`, undefined, malformed);
      if (drops > 0) tracker.recordGap(range, 'ring-drops', `${drops} records dropped by the previous version's ring: its regions are suspect`, undefined, drops);
      else if (malformed > 0) continue;
      else if (verdict?.kind === 'shortfall') {
        tracker.recordGap(range, 'shortfall', `the previous version's programs missed ${verdict.sectors} written sectors on ${range.disk}: its regions are suspect`, verdict.sectors);
      } else if (!exact) tracker.recordGap(range, 'uncertain-baseline', `the previous version's count on ${range.disk} could not be confirmed: its regions are suspect`);
    }
    return [...bySlot.values()];
  } finally {
    old.close();
  }
}

/**
 * Takes over the history other versions' programs hold for the awaiting
 * ranges, persists it, then detaches them. Safe to interrupt anywhere: until
 * the detach, the next command inherits all of it again. A range whose
 * history none of them holds, and ours does not cover, lost it: a gap.
 */
export async function inheritFromOtherVersions(tracker: Tracker, dirs: string[], awaiting: AwaitingHistory[]): Promise<void> {
  const proven = new Set<AwaitingHistory>();
  for (const dir of dirs) for (const a of await inherit(tracker, dir, awaiting)) proven.add(a);
  for (const a of awaiting) {
    if (a.needed && !proven.has(a)) {
      tracker.lostHistory(a.range, `${a.range.device} was not tracked by a version of dpsr this one can read (${dirs.map((d) => path.basename(d)).join(', ')})`);
    }
  }
  await tracker.cycle(); // persisted before the old history is destroyed
  for (const dir of dirs) native().detach(dir);
}
