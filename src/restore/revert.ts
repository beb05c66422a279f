// dpsr revert: the DPSR drive itself turned back to a restore point, so the
// machine can boot that image. One journal transaction holds the point's
// content of every block a later sync changed (read from the undo records,
// verified first); the label names the image it makes, and the tracker holds
// those blocks dirty (the source differs from the drive there) before the
// commit. Applying it keeps the replaced image as a point (its undo, as a sync
// does) or drops the newer points, as the user chose; the pending transaction
// says which, so a replay after kill -9 (recoverJournal, recover) finishes it
// the same way: the drive is the old image or the reverted one, never a mix.
import { DpsrError, RefusedError } from '../base/errors.js';
import { ExtentSet } from '../base/extents.js';
import { native } from '../base/native.js';
import { SECTOR, formatBytes } from '../base/units.js';
import type { BlockIo } from '../io/block-io.js';
import { type JournalEntry, applyTransaction, journalBytesFor, journalDataCapacity, writeTransaction } from '../drive/journal.js';
import { DEFAULT_KEEP, checkUndoRoom, historyRegionOf } from '../drive/history-region.js';
import { finishedImage, journalRegionOf, openCheckedDrive, openRecoveredDrive, pendingTxnOf, pointOf, saveUndoOf, updateLabel } from '../drive/paired-drive.js';
import type { ImageState, PairRecord } from '../state/records.js';
import type { RangeState } from '../kernel/tracker.js';
import type { Session } from '../state/session.js';
import { type PointOverlay, type Segment, pointOverlay } from './point-image.js';
import { pointsOf, readHistoryOf } from './restore-points.js';
import { ownedPair, underDriveLock } from './rollback.js';

const ENTRY_BYTES = 4 << 20; // one journal entry per piece of a segment

export interface RevertRequest { name: string; at: string; keepNewer: boolean; dryRun: boolean }

export interface RevertReport {
  name: string;
  drive: string;
  dryRun: boolean;
  /** The point returned to. */
  point: { generation: number; timeMs: number | null; image: ImageState; label: string | null };
  /** The image replaced, and the generation the reverted image becomes. */
  fromGeneration: number;
  generation: number;
  /** What the transaction holds: the point's content of every block changed since it. */
  writeBytes: number;
  keepNewer: boolean;
  /** The points newer than the one returned to, the replaced image among them: kept, or dropped (keepNewer false). */
  newer: number[];
  journalSeq: number | null;
  warnings: string[];
  durationMs: number;
}

/** The revert of a pair's DPSR drive, by the one owner (a session or the daemon), under the drive lock. */
export async function revertInSession(s: Session, req: RevertRequest): Promise<RevertReport> {
  if (!s.store.pair(req.name)) throw new DpsrError(`no pair named ${req.name}`, 'ENOPAIR');
  return underDriveLock(s, req.name, () => revertLocked(s, req));
}

async function revertLocked(s: Session, req: RevertRequest): Promise<RevertReport> {
  const startedMs = Date.now();
  const { pair, range } = ownedPair(s, req.name);
  // Refusals (the drive, no history, no such point) before the drive is opened for writing: bad input writes nothing.
  openCheckedDrive(pair, false).io.close();
  const first = pendingTxnOf(pair, null) ? null : await pointOverlay(pair, req.at, 'none'); // a pending transaction's image may be the one named
  if (req.dryRun) return plan(pair, first ?? await pointOverlay(pair, req.at, 'none'), req, startedMs);
  const drive = await openRecoveredDrive(s, pair, range); // an interrupted sync's transaction first: its image is the one replaced
  try {
    const region = journalRegionOf(drive.io, pair, pair.id);
    if (!region) throw new RefusedError(`pair ${pair.name} has no journal (paired with --no-reserve): a revert goes through it to be crash-safe; nothing written`, 'ENOJOURNAL');
    const overlay = await pointOverlay(pair, req.at, 'all');
    const report = plan(pair, overlay, req, startedMs);
    if (overlay.point.current) return report;
    const entries = pieces(overlay.segments);
    const need = journalBytesFor(report.writeBytes, entries);
    if (need > region.lengthBytes) {
      throw new RefusedError(`pair ${pair.name}: reverting to point ${overlay.point.generation} rewrites ${formatBytes(report.writeBytes)}, more than its journal holds ` +
        `(${formatBytes(journalDataCapacity(region.lengthBytes))}); nothing written (dpsr rollback ${pair.name} --at ${overlay.point.generation} returns the source instead)`, 'EJOURNALFULL');
    }
    // Keeping the newer points keeps the replaced image as one: refused here, uncommitted, if its undo would cost a labelled point.
    const history = req.keepNewer ? historyRegionOf(drive.io, pair, pair.id) : null;
    if (history) checkUndoRoom(history, overlay.changed, pointOf(pair), pair.dataSectors, DEFAULT_KEEP, pair.name);
    const seq = (pair.journalSeq ?? 0) + 1;
    // Durable before the commit: the source differs from the reverted image where the point does (and a cut an interrupted sync left goes back).
    holdDirty(pair, range, overlay.changed);
    const p = overlay.point;
    pair.pendingTxn = {
      seq, image: p.image, imageTimeMs: p.timeMs ?? 0, label: null,
      revert: { generation: report.generation, toGeneration: p.generation, keepNewer: req.keepNewer },
    };
    await s.store.putPairAndRange(pair, range);
    updateLabel(drive.io, pair);
    const { committed } = await writeTransaction(region, seq, readSegments(drive.io, overlay.segments));
    if (!committed) throw new DpsrError(`pair ${pair.name}: journal transaction ${seq} was not committed`, 'EJOURNAL');
    await saveUndoOf(pair, drive.io, committed); // the replaced image as a point, or the newer points dropped
    await applyTransaction(drive.io, committed);
    Object.assign(pair, {
      journalSeq: seq, generation: report.generation, ...finishedImage(pair, p.image, p.timeMs ?? 0), imageLabel: null, pendingTxn: null,
      heldAfterRevert: { toGeneration: p.generation, atMs: Date.now() },
    });
    updateLabel(drive.io, pair);
    await s.store.putPairAndRange(pair, range);
    return { ...report, journalSeq: seq, durationMs: Date.now() - startedMs };
  } finally {
    drive.release();
  }
}

function plan(pair: PairRecord, overlay: PointOverlay, req: RevertRequest, startedMs: number): RevertReport {
  const p = overlay.point;
  const warnings: string[] = [];
  if (p.image === 'fuzzy') warnings.push(`point ${p.generation} is fuzzy (the source was written while it was copied): its file systems may need a check`);
  if (p.image === 'crash-consistent') warnings.push(`point ${p.generation} is crash-consistent (taken without a freeze): its file systems replay their journals at the next mount`);
  if (!p.current) warnings.push(`the daemon's policy holds ${pair.name} (no sync copies the source back) until a manual dpsr sync ${pair.name}, which keeps the reverted image as a restore point: boot the DPSR drive before`);
  const newer = p.current ? [] : [...pointsOf(pair, readHistoryOf(pair)).filter((x) => x.generation > p.generation).map((x) => x.generation)];
  return {
    name: pair.name, drive: pair.drive.path, dryRun: req.dryRun,
    point: { generation: p.generation, timeMs: p.timeMs, image: p.image, label: p.label },
    fromGeneration: pair.generation, generation: p.current ? pair.generation : pair.generation + 1,
    writeBytes: overlay.changed.totalSectors * SECTOR, keepNewer: req.keepNewer, newer, journalSeq: null, warnings,
    durationMs: Date.now() - startedMs,
  };
}

/** The tracker holds `changed` dirty, and takes back a cut an interrupted sync had made (a replay of this transaction forgets it). */
function holdDirty(pair: PairRecord, range: RangeState, changed: ExtentSet): void {
  if (pair.pending) {
    range.dirty.addSet(ExtentSet.fromBuffer(pair.pending.copy));
    range.suspect.addSet(ExtentSet.fromBuffer(pair.pending.compare));
    if (pair.pending.discard) range.discarded.addSet(ExtentSet.fromBuffer(pair.pending.discard));
    pair.pending = null;
  }
  range.dirty.addSet(changed);
  range.discarded.subtractSet(changed);
}

function pieces(segments: Segment[]): number {
  return segments.reduce((n, [a, b]) => n + Math.ceil((b - a) / ENTRY_BYTES), 0);
}

/** The point's content of each segment, read from the undo records on the drive, as journal entries (fresh buffers: the journal may keep them). */
async function* readSegments(drive: BlockIo, segments: Segment[]): AsyncGenerator<JournalEntry> {
  for (const [start, end, driveBytes] of segments) {
    for (let off = 0; off < end - start; off += ENTRY_BYTES) {
      const n = Math.min(ENTRY_BYTES, end - start - off);
      const data = native().alignedBuffer(n, 4096);
      await drive.io('read', 'DPSR drive', data, 0, n, driveBytes + off);
      yield { kind: 'data', targetSector: (start + off) / SECTOR, data };
    }
  }
}
