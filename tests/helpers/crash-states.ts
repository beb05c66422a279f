// Crash states of a disk, the CrashMonkey way, from a write log
// (write-log.ts): a disk with a volatile cache keeps, at a power cut, every
// write completed before its last completed flush, and any subset of the
// writes after it, landed in any order, a write torn at any 512-byte sector.
// So each state is a prefix of the log up to a flush (the "epoch" it ends)
// plus a chosen piece of the next epoch. States are applied to image files,
// never re-run: replaying one costs a file copy and its writes.
import fs from 'node:fs';
import type { LogEntry } from './write-log.js';

const SECTOR = 512;

/** One write as it lands: `data` null means zeros. */
export interface Piece { offset: number; length: number; data: Buffer | null }

export interface CrashState {
  /** The flushes completed before the power cut: every piece of the epochs before it landed. */
  flushes: number;
  /** What landed of the epoch after it, in the order it landed. */
  extra: Piece[];
  /** How the extra pieces were chosen, for a failure message. */
  how: string;
}

/** The log cut at its flushes: epoch k is what was written after flush k (epoch 0: before the first). */
export function epochs(log: LogEntry[]): Piece[][] {
  const out: Piece[][] = [[]];
  for (const e of log) {
    if (e.kind === 'flush') out.push([]);
    else if (e.kind === 'write') out[out.length - 1].push({ offset: e.offset, length: e.data.length, data: e.data });
    else out[out.length - 1].push({ offset: e.offset, length: e.length, data: null });
  }
  return out;
}

function shuffled<T>(items: T[], random: () => number): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** The 512-byte sectors of pieces, each kept or lost at random: writes torn inside. */
function torn(pieces: Piece[], random: () => number): Piece[] {
  const out: Piece[] = [];
  for (const p of pieces) {
    for (let at = 0; at < p.length; at += SECTOR) {
      if (random() < 0.5) out.push({ offset: p.offset + at, length: Math.min(SECTOR, p.length - at), data: p.data ? p.data.subarray(at, at + SECTOR) : null });
    }
  }
  return out;
}

/**
 * The crash states of a log: at each flush, nothing of the next epoch, `subsets` random
 * subsets of its writes (in the log's order or shuffled) and one with every write torn at
 * random sectors; and the end of the log, everything landed. Duplicates are left out.
 */
export function crashStates(log: LogEntry[], random: () => number, subsets: number): CrashState[] {
  const all = epochs(log);
  const states: CrashState[] = [];
  const seen = new Set<string>();
  const add = (flushes: number, extra: Piece[], how: string, key: string) => {
    if (seen.has(key)) return;
    seen.add(key);
    states.push({ flushes, extra, how });
  };
  for (let k = 0; k < all.length; k++) {
    const next = all[k];
    add(k, [], `after flush ${k}, nothing of the ${next.length} writes after it`, `${k}:none`);
    if (next.length === 0) continue;
    if (k === all.length - 1) add(k, next, `after flush ${k}, all ${next.length} writes after it`, `${k}:all`);
    if (next.length < 2) continue;
    for (let i = 0; i < subsets; i++) {
      const picked = next.map((_, j) => j).filter(() => random() < 0.5);
      if (picked.length === 0 || picked.length === next.length) continue;
      const inOrder = random() < 0.5;
      const order = inOrder ? picked : shuffled(picked, random);
      add(k, order.map((j) => next[j]), `after flush ${k}, writes ${order.join(',')} of ${next.length} after it`, `${k}:${order.join(',')}`);
    }
    add(k, torn(next, random), `after flush ${k}, the ${next.length} writes after it torn at random sectors`, `${k}:torn:${states.length}`);
  }
  return states;
}

function writePieces(fd: number, pieces: Piece[]): void {
  for (const p of pieces) fs.writeSync(fd, p.data ?? Buffer.alloc(p.length), 0, p.length, p.offset);
}

/**
 * Builds each state of `states` (sorted by `flushes`, as crashStates returns them) as a copy
 * of `before` with its writes applied, at `file`, and calls `check` on it before the next.
 * The landed epochs accumulate in one working copy, so each state costs one copy of the image.
 */
export async function replayStates(log: LogEntry[], before: string, states: CrashState[], file: string,
  check: (state: CrashState) => Promise<void>): Promise<void> {
  const all = epochs(log);
  const landed = `${file}.landed`;
  fs.copyFileSync(before, landed);
  let flushes = 0;
  try {
    for (const state of [...states].sort((a, b) => a.flushes - b.flushes)) {
      if (state.flushes > flushes) {
        const fd = fs.openSync(landed, 'r+');
        try { for (; flushes < state.flushes; flushes++) writePieces(fd, all[flushes]); } finally { fs.closeSync(fd); }
      }
      fs.copyFileSync(landed, file);
      const fd = fs.openSync(file, 'r+');
      try { writePieces(fd, state.extra); } finally { fs.closeSync(fd); }
      await check(state);
    }
  } finally {
    fs.rmSync(landed, { force: true });
  }
}
