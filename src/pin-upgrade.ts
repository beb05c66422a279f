// An upgrade whose BPF maps changed shape pins its programs under a new
// version directory (/sys/fs/bpf/dpsr/v2 beside v1). The new programs are
// attached first, so from then on both see every write; then what the old
// ones hold is taken over: the owner ring's records the old owner had not
// persisted (exact) and both epochs' bits (coarse: unreconciled, or suspect
// if the old ring dropped records). Only after that is persisted are the
// old programs detached. A version this dpsr cannot read, or a range the old
// programs were not tracking, is a gap: compared, never assumed clean.
import fs from 'node:fs';
import path from 'node:path';
import { OWNER_RING } from './kernel-abi.js';
import type { Session } from './session.js';
import type { RangeState } from './tracker.js';
import { native } from './native.js';
import { KernelTracking, bitsToExtents } from './tracking.js';

/** Pin directory names whose maps this dpsr reads: its own layout, under every name it was released with. */
const READABLE_VERSIONS = new Set(['v1']);

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

/** Reads what a readable old version holds for `ranges` into the tracker; returns the ranges it was tracking. */
function inherit(s: Session, dir: string, ranges: RangeState[]): RangeState[] {
  let old: KernelTracking;
  try {
    if (!READABLE_VERSIONS.has(path.basename(dir))) return [];
    old = KernelTracking.open({ pinDir: dir });
  } catch {
    return []; // not the layout this version knows
  }
  try {
    const bySlot = new Map<number, RangeState>();
    for (const { index, slot } of old.slotsOf(OWNER_RING)) {
      const range = ranges.find((r) => sameRange(r, slot));
      if (range) bySlot.set(index, range);
    }
    if (old.hasRing(OWNER_RING)) {
      const reader = old.reader(OWNER_RING, (batch) => s.tracker.ingestForeign(batch, (i) => bySlot.get(i)), 50, true);
      reader.consume();
      reader.close(); // nothing released: until the old programs are detached, a crash redoes all of this
    }
    const drops = old.takeEpochDrops(OWNER_RING, 0) + old.takeEpochDrops(OWNER_RING, 1);
    for (const [index, range] of bySlot) {
      const slot = old.slot(index)!;
      const into = drops > 0 ? range.suspect : range.unreconciled;
      for (const epoch of [0, 1]) for (const [a, b] of bitsToExtents(old.epochBits(index, epoch, false), slot)) into.add(a, b);
      if (drops > 0) s.tracker.recordGap(range, 'ring-drops', `${drops} records dropped by the previous version's ring: its regions are suspect`, undefined, drops);
    }
    return [...bySlot.values()];
  } finally {
    old.close();
  }
}

/**
 * Takes over the history other versions' programs hold for `ranges` (newly
 * tracked here, with a persisted past), persists it, then detaches them.
 * A range none of them was tracking lost its history: a gap.
 */
export async function inheritFromOtherVersions(s: Session, dirs: string[], ranges: RangeState[]): Promise<void> {
  const proven = new Set(dirs.flatMap((dir) => inherit(s, dir, ranges)));
  for (const r of ranges) {
    if (!proven.has(r)) s.tracker.lostHistory(r, `${r.device} was not tracked by a version of dpsr this one can read (${dirs.map((d) => path.basename(d)).join(', ')})`);
  }
  await s.tracker.cycle(); // persisted before the old history is destroyed
  for (const dir of dirs) native().detach(dir);
}
