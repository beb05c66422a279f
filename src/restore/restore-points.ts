// The restore points of a pair: the current image and the earlier ones kept
// as undo records in the DPSR drive's history region, listed, and chosen by
// `--at` (a generation, a time, or a label given by sync --point).
import { DpsrError, RefusedError } from '../base/errors.js';
import { durationOf } from '../base/units.js';
import { openDriveIo } from '../drive/remote-drive.js';
import { type HistoryIndex, type UndoPoint, heldBytes, historyRegionOf, readIndex } from '../drive/history-region.js';
import type { DriveLabel } from '../drive/label.js';
import type { ImageState, PairRecord } from '../state/records.js';

export interface RestorePoint {
  generation: number;
  timeMs: number | null;
  image: ImageState;
  label: string | null;
  /** Bytes its undo records hold in the history region, with those it carries for dropped newer points (0 for the current image). */
  bytes: number;
  current: boolean;
  /** The undo record (absent for the current image). */
  undo?: UndoPoint;
}

/**
 * What reading restore points needs of a pair: its record, or what a DPSR
 * drive's own label says (rollback --drive DEV --at, without the state).
 */
export type PointsOwner = Pick<PairRecord, 'id' | 'name' | 'driveInsecure' | 'dataSectors' | 'historySectors' | 'generation' | 'image' | 'imageTimeMs' | 'imageLabel'>
  & { drive: { path: string } };

/** A pair as the label on its DPSR drive at `drive` describes it. */
export function pointsOwnerOfLabel(label: DriveLabel, drivePath: string): PointsOwner {
  return {
    id: label.pairId, name: label.pairName, drive: { path: drivePath }, dataSectors: label.dataSectors, historySectors: label.historySectors,
    generation: label.generation ?? 0, image: label.image, imageTimeMs: label.imageTimeMs, imageLabel: label.imageLabel ?? null,
  };
}

/** Newest first: the current image, then the kept points. */
export function pointsOf(pair: PointsOwner, index: HistoryIndex): RestorePoint[] {
  const current: RestorePoint = { generation: pair.generation, timeMs: pair.imageTimeMs, image: pair.image, label: pair.imageLabel ?? null, bytes: 0, current: true };
  const kept = index.points.map((p): RestorePoint => ({ generation: p.generation, timeMs: p.timeMs, image: p.image, label: p.label, bytes: heldBytes(p), current: false, undo: p }));
  return [current, ...kept.reverse()];
}

/** The pair's history index, read from its drive (which must be the paired one: the caller checked). */
export function readHistoryOf(pair: PointsOwner): HistoryIndex {
  if (!pair.historySectors) {
    throw new RefusedError(`pair ${pair.name} keeps no restore points: it was paired without --history (pair again with --history SIZE to keep them)`, 'ENOHISTORY');
  }
  const drive = openDriveIo(pair, false);
  try {
    return readIndex(historyRegionOf(drive, pair, pair.id)!);
  } finally {
    drive.close();
  }
}

/** A time as `--at` takes it: "2h ago", "90m ago", or ISO 8601; null if it is not one. */
export function parseAtTime(text: string, nowMs: number): number | null {
  const ago = text.trim().match(/^(\S+)\s+ago$/);
  if (ago) {
    const ms = durationOf(ago[1], false);
    return ms === null ? null : nowMs - ms;
  }
  if (/^\d{4}-\d{2}-\d{2}/.test(text)) {
    const t = Date.parse(text);
    return Number.isNaN(t) ? null : t;
  }
  return null;
}

/**
 * The point `at` names: a generation number, a time (the newest point at or
 * before it), or a label. Unknown: ENOPOINT, naming what there is.
 */
export function choosePoint(pair: Pick<PairRecord, 'name'>, points: RestorePoint[], at: string, nowMs = Date.now()): RestorePoint {
  const list = () => points.map((p) => `${p.generation}${p.label ? ` (${p.label})` : ''}`).join(', ');
  const none = (what: string) => new DpsrError(`pair ${pair.name}: no restore point ${what}; it has ${list()} (dpsr history ${pair.name})`, 'ENOPOINT');
  if (/^\d+$/.test(at)) {
    const p = points.find((x) => x.generation === Number(at));
    if (!p) throw none(`of generation ${at}`);
    return p;
  }
  const t = parseAtTime(at, nowMs);
  if (t !== null) {
    // The image taken last at or before t (a reverted image is newer than the time it holds: not simply the first in the list).
    const p = points.filter((x) => x.timeMs !== null && x.timeMs <= t).reduce<RestorePoint | null>((best, x) => (!best || x.timeMs! > best.timeMs! ? x : best), null);
    if (!p) throw none(`at or before ${new Date(t).toISOString()}`);
    return p;
  }
  const p = points.find((x) => x.label === at);
  if (!p) throw none(`labelled "${at}"`);
  return p;
}
