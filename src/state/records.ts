// The records dpsr persists about a pair (in the state directory's store,
// and in part in the drive's label): plain types, and the one rule that
// keeps a record's history bounded.
import type { DeviceIdentity } from '../devices/identity.js';
import type { Baseline } from '../kernel/reconcile.js';
import type { Gap } from '../kernel/tracker.js';

/** What the image on the drive is. */
export type ImageState =
  | 'none' // never completely copied
  | 'partial' // a copy or sync was interrupted: a mix of old and new
  | 'fuzzy' // whole, but the source was written while it was copied
  | 'crash-consistent' // whole, copied from a mounted file system without a freeze
  | 'point-in-time'; // exactly the source at imageTimeMs

/** Where the scrub of a pair stands; persisted with the pair. */
export interface ScrubProgress {
  cursorSector: number; // the next sector of the round
  roundStartedMs: number | null; // null: no round running
  lastRoundDoneMs: number | null;
  mismatchesTotal: number;
}

export interface SyncRecord {
  generation: number;
  atMs: number;
  durationMs: number;
  copiedBytes: number;
  comparedBytes: number;
  repairedBytes: number;
  image: ImageState;
  passBytes?: number[];
  freezeMs?: number | null;
  journaled?: boolean;
}

/** A generation cut but not yet completely applied: a later sync redoes it. */
export interface PendingGeneration {
  generation: number;
  cutMs: number;
  copy: Buffer; // ExtentSet.toBuffer()
  compare: Buffer;
  discard?: Buffer;
}

/**
 * A pair whose DPSR drive was missing when a boot judged it across the
 * reboot (drive/boot-adoption.ts): what was proved when tracking began,
 * judged against the drive's shutdown record when the drive returns. Until
 * then the pair's range holds only what was written since tracking began,
 * and its earlier state waits here.
 */
export interface AwaitingRecord {
  /** The boot it waits in. */
  bootId: string | null;
  atMs: number;
  /** The boot the pair was last tracked in before this one: the record must extend that boot's state. */
  savedBootId: string | null;
  /** The kernel's count of the source's disk when tracking began (exact and 0: nothing written before). */
  baseline: Baseline | null;
  /** The source's file-system superblocks when tracking began (devices/fingerprint.ts). */
  fingerprint: string;
  /** The tracker's state as saved in that earlier boot (sets as ExtentSet.toBuffer()). */
  past: { dirty: Buffer; suspect: Buffer; discarded: Buffer; unreconciled: Buffer; receivedSectors: number; gaps: Gap[] };
}

/** A restore point that was dropped, and why. */
export interface DroppedPoint { generation: number; timeMs: number | null; label: string | null; reason: string; atMs: number }

export interface PairRecord {
  name: string;
  id: string;
  createdMs: number;
  source: DeviceIdentity;
  drive: DeviceIdentity; // an NBD export's: its URI as path (remote-drive.ts)
  /** A drive on plain NBD to a host that is not loopback, allowed at pair time with --insecure. */
  driveInsecure?: boolean;
  dataSectors: number;
  reservedSectors: number;
  labelSeq: number;
  fullCopy: { doneSectors: number; complete: boolean };
  generation: number; // the last generation applied completely
  pending: PendingGeneration | null;
  image: ImageState;
  imageTimeMs: number | null;
  lastGoodTimeMs: number | null;
  lastSync: SyncRecord | null;
  journalSeq?: number; // the last journal transaction applied to the drive
  pendingTxn?: PendingTxn | null; // being written
  /** The history region's size (restore points; 0 or absent: none), chosen at pair time. */
  historySectors?: number;
  /** The name `dpsr sync --point LABEL` gave the current image. */
  imageLabel?: string | null;
  /** Restore points dropped lately (space, --drop, a sync in place), newest last: status says so. */
  historyDropped?: DroppedPoint[];
  /** Set by dpsr revert: the daemon's policy does not sync the reverted drive back until a manual dpsr sync clears it. */
  heldAfterRevert?: { toGeneration: number; atMs: number } | null;
  scrub?: ScrubProgress;
  /** Freeze durations of the last syncs (ms), newest last: status shows their p99. */
  freezeHistoryMs?: number[];
  /** Set while the boot's judgement waits for the DPSR drive: no sync, rollback or compare until it is judged. */
  awaitingRecord?: AwaitingRecord | null;
}

/** A journal transaction being written, and the image it makes once committed (replayed from the pair record or the drive's label). */
export interface PendingTxn {
  seq: number;
  image: ImageState;
  imageTimeMs: number;
  label?: string | null;
  /** dpsr revert: the generation the image becomes, the point it returns to, and whether the newer points stay. */
  revert?: RevertOf;
}

export interface RevertOf { generation: number; toGeneration: number; keepNewer: boolean }

const FREEZE_HISTORY = 100;

/** Remembers a sync's freeze duration for the p99 in status. */
export function recordFreeze(pair: PairRecord, freezeMs: number | null): void {
  if (freezeMs === null) return;
  pair.freezeHistoryMs = [...(pair.freezeHistoryMs ?? []), Math.round(freezeMs * 10) / 10].slice(-FREEZE_HISTORY);
}

/** Why a value read back as a pair record cannot be one (damaged, or written by hand), or null. */
export function pairRecordProblem(v: unknown): string | null {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return 'not a record';
  const p = v as Record<string, unknown>;
  for (const k of ['name', 'id', 'image']) if (typeof p[k] !== 'string') return `its ${k} is not text`;
  for (const k of ['createdMs', 'dataSectors', 'reservedSectors', 'labelSeq', 'generation']) {
    if (typeof p[k] !== 'number' || !Number.isFinite(p[k])) return `its ${k} is not a number`;
  }
  for (const k of ['source', 'drive']) {
    const d = p[k] as Record<string, unknown> | null;
    if (typeof d !== 'object' || d === null || typeof d.path !== 'string' || typeof d.sizeSectors !== 'number') return `its ${k} is no device`;
  }
  if (typeof p.fullCopy !== 'object' || p.fullCopy === null) return 'it has no full-copy state';
  return null;
}
