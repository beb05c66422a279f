// dpsr diff NAME [PATH]: the files that differ between the source's file
// system now and the DPSR drive's image, side by side: changed (≠), new
// since the sync (only on the source), deleted since the sync (only in the
// image). Never writes a byte to the DPSR drive.
import fs from 'node:fs';
import path from 'node:path';
import type { Settings } from '../../base/defaults.js';
import { withDriveLock } from '../../base/locks.js';
import { ExitStatus, type ExitStatusValue, RefusedError, UsageError } from '../../base/errors.js';
import { type DiffEntry, type FileMeta, diffTrees, listBoth, pathInside } from '../../restore/file-diff.js';
import { withImageAt } from '../../restore/point-image.js';
import { driveNameOf } from '../../drive/remote-drive.js';
import type { PairRecord } from '../../state/records.js';
import { bindReadOnly, committedImage, describeFs, locate, mountReadOnly, type PrivateMount, surroundingsOf, withMounts } from '../../restore/image-mount.js';
import { formatBytes } from '../../base/units.js';

export interface DiffOptions {
  name: string;
  path?: string;
  inPartition?: number;
  content: boolean;
  force: boolean;
  json: boolean;
  exitCode: boolean;
  /** A restore point to compare with instead of the current image (dpsr history). */
  at?: string;
}

/** --json: one entry's side. */
export interface JsonMeta {
  type: FileMeta['type'];
  size: number;
  mtime: string; // ISO 8601, ms
  mtimeNs: string; // nanoseconds since the epoch, exact
  mode: string; // octal, e.g. "0644"
  uid: number;
  gid: number;
  target?: string;
  files?: number; // a directory on one side only: files under it
  bytes?: number; // and their bytes
}

export const jsonMeta = (m: FileMeta | null): JsonMeta | null => m && {
  type: m.type, size: m.sizeBytes, mtime: new Date(Number(m.mtimeNs / 1_000_000n)).toISOString(), mtimeNs: m.mtimeNs.toString(),
  mode: m.mode.toString(8).padStart(4, '0'), uid: m.uid, gid: m.gid,
  ...(m.target !== undefined ? { target: m.target } : {}),
  ...(m.files !== undefined ? { files: m.files, bytes: m.bytes } : {}),
};

const pad2 = (n: number) => String(n).padStart(2, '0');

/** Local time, "2025-03-01 14:05:09". */
export function localTime(ms: number): string {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

const CHANGE_WORDS: Record<DiffEntry['change'], string> = { changed: 'changed', deleted: 'deleted since the sync', added: 'new since the sync' };
const MARK: Record<DiffEntry['change'], string> = { changed: '≠', deleted: '-', added: '+' };
const MAX_PATH_WIDTH = 40;
const TIME_WIDTH = 19;
const SIZE_WIDTH = 10;

function fit(text: string, width: number): string {
  return text.length <= width ? text.padEnd(width) : `…${text.slice(text.length - width + 1)}`;
}

function sizeText(m: FileMeta): string {
  if (m.type === 'dir') return 'dir';
  if (m.type === 'symlink') return 'link';
  if (m.type === 'other') return 'special';
  return formatBytes(m.sizeBytes);
}

function note(e: DiffEntry): string {
  const m = e.image ?? e.source!;
  const parts: string[] = [e.change === 'changed' ? `${CHANGE_WORDS.changed}: ${e.why.join(', ')}` : CHANGE_WORDS[e.change]];
  if (m.files !== undefined) parts.push(`${m.files} file${m.files === 1 ? '' : 's'}, ${formatBytes(m.bytes ?? 0)}`);
  if (e.why.includes('target')) parts.push(`→ ${e.source!.target} / ${e.image!.target}`);
  else if (e.why.includes('mode')) parts.push(`mode ${e.source!.mode.toString(8)} / ${e.image!.mode.toString(8)}`);
  return parts.join('; ');
}

/** The two-panel view: the source now on the left, the image on the right, one line per entry. */
function formatPanels(entries: DiffEntry[], imageTimeMs: number | null): string[] {
  const pathWidth = Math.min(MAX_PATH_WIDTH, Math.max(8, ...entries.map((e) => e.path.length + 1)));
  const panelWidth = pathWidth + 1 + SIZE_WIDTH + 2 + TIME_WIDTH;
  const side = (e: DiffEntry, m: FileMeta | null) => m === null ? ' '.repeat(panelWidth)
    : `${fit(m.type === 'dir' ? `${e.path}/` : e.path, pathWidth)} ${sizeText(m).padStart(SIZE_WIDTH)}  ${localTime(Number(m.mtimeNs / 1_000_000n))}`;
  const lines = [
    `  ${'SOURCE, now'.padEnd(panelWidth)}     ${`DPSR DRIVE, image of ${imageTimeMs ? localTime(imageTimeMs) : 'unknown time'}`}`,
  ];
  for (const e of entries) lines.push(`${MARK[e.change]} ${side(e, e.source)}  ${MARK[e.change]}  ${side(e, e.image)}  ${note(e)}`);
  return lines;
}

export function summarize(entries: DiffEntry[]): { changed: number; deleted: number; added: number } {
  const count = (c: DiffEntry['change']) => entries.filter((e) => e.change === c).length;
  return { changed: count('changed'), deleted: count('deleted'), added: count('added') };
}

export async function diffCommand(opts: DiffOptions, settings: Settings, log: (s: string) => void): Promise<ExitStatusValue> {
  const tell = opts.json ? (s: string) => process.stderr.write(`${s}\n`) : log;
  return withDriveLock(settings, opts.name, async () => {
    const current = await committedImage(settings, opts.name, { force: opts.force, doing: 'look', log: tell, anyState: opts.at !== undefined });
    return withImageAt(current, opts.at, { force: opts.force, doing: 'look', log: tell }, (pair) => diffWith(pair, opts, log));
  }, { onWait: () => tell(`waiting: pair ${opts.name}'s DPSR drive is in use by another dpsr command`) });
}

async function diffWith(pair: PairRecord, opts: DiffOptions, log: (s: string) => void): Promise<ExitStatusValue> {
  const loc = locate(pair, opts.path, opts.inPartition, surroundingsOf(pair));
  const src = loc.source;
  if (!src) {
    throw new RefusedError(`pair ${pair.name}: the source ${pair.source.path} is not there (or is another device now): nothing to compare; dpsr restore --to DIR still copies files out of the image`, 'ENOSOURCE');
  }
  if (!src.mount && src.otherMounts.length > 0) {
    throw new RefusedError(`the source's ${describeFs(loc)} is mounted only as a subdirectory (${src.otherMounts.join(', ')}): mount its root somewhere to compare`, 'EBINDONLY');
  }
  const sourceMount = (): PrivateMount => src.mount
    ? bindReadOnly(src.mount.mountPoint, src.mount.fsType)
    : mountReadOnly(src.device, src, `the source ${src.device}`, 'source');
  return withMounts([() => mountReadOnly(pair.drive.path, loc.image, `pair ${pair.name}'s image`), sourceMount], async ([image, source]) => {
    const inImage = pathInside(image.mountPoint, loc.relPath, 'the image');
    const onSource = pathInside(source.mountPoint, loc.relPath, 'the source');
    if (!fs.existsSync(inImage) && !fs.existsSync(onSource) && !isLink(inImage) && !isLink(onSource)) {
      throw new UsageError(`${opts.path}: neither on the source nor in the image (${describeFs(loc)}, path /${loc.relPath})`);
    }
    const entries = diffTrees(source.mountPoint, image.mountPoint, loc.relPath, { content: opts.content });
    const summary = summarize(entries);
    if (opts.json) {
      process.stdout.write(`${JSON.stringify({
        name: pair.name,
        image: { state: pair.image, time: pair.imageTimeMs ? new Date(pair.imageTimeMs).toISOString() : null, drive: driveNameOf(pair), fsType: image.fsType },
        source: { device: src.device, mountPoint: src.mount?.mountPoint ?? null },
        partition: loc.partition,
        path: `/${loc.relPath}`,
        entries: entries.map((e) => ({ path: e.path, change: e.change, why: e.why, source: jsonMeta(e.source), image: jsonMeta(e.image) })),
        summary,
        // PATH's own entries on both sides, unchanged ones too (a folder's listing for the Cockpit page).
        children: listBoth(source.mountPoint, image.mountPoint, loc.relPath, { content: opts.content })
          .map((e) => ({ name: e.name, change: e.change, why: e.why, source: jsonMeta(e.source), image: jsonMeta(e.image) })),
      })}\n`);
    } else {
      const where = src.mount ? `mounted on ${src.mount.mountPoint}` : 'not mounted';
      log(`${pair.name}: ${src.device}${loc.partition !== null ? ` partition ${loc.partition}` : ''} (${where}) against the DPSR drive ${driveNameOf(pair)}, ` +
        `${opts.at !== undefined ? `restore point ${pair.generation}${pair.imageLabel ? ` (${pair.imageLabel})` : ''}, ` : ''}image ${pair.image}${pair.imageTimeMs ? ` of ${localTime(pair.imageTimeMs)}` : ''}; path ${path.posix.join('/', loc.relPath)}`);
      if (entries.length === 0) log('no differences');
      else {
        for (const line of formatPanels(entries, pair.imageTimeMs)) log(line);
        log(`${entries.length} difference${entries.length === 1 ? '' : 's'}: ${summary.changed} changed, ${summary.deleted} deleted since the sync, ${summary.added} new since the sync`);
      }
    }
    return opts.exitCode && entries.length > 0 ? ExitStatus.failure : ExitStatus.ok;
  });
}

function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
