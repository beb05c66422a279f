// dpsr restore NAME PATH... [--to DIR] [--overwrite] [--content] [--dry-run]: copies
// files and folders back out of the DPSR drive's image (mounted read-only),
// to their place on the source or under DIR. Refuses, changing nothing, to
// replace anything newer than the image's copy unless --overwrite.
import fs from 'node:fs';
import path from 'node:path';
import type { Settings } from '../../base/defaults.js';
import { withDriveLock } from '../../base/locks.js';
import { DpsrError, ExitStatus, type ExitStatusValue, RefusedError, UsageError } from '../../base/errors.js';
import { pathInside } from '../../restore/file-diff.js';
import { type PlannedEntry, type RestoreItem, planRestore, runRestore } from '../../restore/file-restore.js';
import { committedImage, describeFs, locate, mountReadOnly, surroundingsOf, withMounts } from '../../restore/image-mount.js';
import { formatBytes } from '../../base/units.js';
import { jsonMeta, localTime } from './diff.js';
import { withImageAt } from '../../restore/point-image.js';
import { driveNameOf } from '../../drive/remote-drive.js';
import type { PairRecord } from '../../state/records.js';

export interface RestoreOptions {
  name: string;
  paths: string[];
  to?: string;
  overwrite: boolean;
  content: boolean;
  dryRun: boolean;
  inPartition?: number;
  force: boolean;
  json: boolean;
  /** A restore point to restore from instead of the current image (dpsr history). */
  at?: string;
}

const WORDS: Record<PlannedEntry['action'], string> = { create: 'create', replace: 'replace', attributes: 'attributes', keep: 'keep' };

function describeEntry(e: PlannedEntry): string {
  const m = e.image ?? e.existing!;
  const what = m.type === 'dir' ? `${e.dest}/` : e.dest;
  const size = m.files !== undefined ? ` (${m.files} file${m.files === 1 ? '' : 's'}, ${formatBytes(m.bytes ?? 0)})` : m.type === 'file' ? ` (${formatBytes(m.sizeBytes)})` : '';
  const detail = e.action === 'keep' ? 'only at the destination: left alone'
    : e.action === 'create' ? '' : e.why.join(', ');
  const newer = e.newer && e.existing && e.image
    ? `; NEWER at the destination (${localTime(Number(e.existing.mtimeNs / 1_000_000n))}, image ${localTime(Number(e.image.mtimeNs / 1_000_000n))}): needs --overwrite`
    : '';
  return `  ${WORDS[e.action].padEnd(10)} ${what}${size}${detail ? `  ${detail}` : ''}${newer}`;
}

export async function restoreCommand(opts: RestoreOptions, settings: Settings, log: (s: string) => void): Promise<ExitStatusValue> {
  if (opts.paths.length === 0) throw new UsageError('dpsr restore: name the files or folders to restore (or --partition N / --whole)');
  const tell = opts.json ? (s: string) => process.stderr.write(`${s}\n`) : log;
  return withDriveLock(settings, opts.name, async () => {
    const startedMs = Date.now();
    const current = await committedImage(settings, opts.name, { force: opts.force, doing: 'restore from it', log: tell, anyState: opts.at !== undefined });
    return withImageAt(current, opts.at, { force: opts.force, doing: 'restore from it', log: tell }, (pair) => restoreFrom(pair, opts, startedMs, log, tell));
  }, { onWait: () => tell(`waiting: pair ${opts.name}'s DPSR drive is in use by another dpsr command`) });
}

async function restoreFrom(pair: PairRecord, opts: RestoreOptions, startedMs: number, log: (s: string) => void, tell: (s: string) => void): Promise<ExitStatusValue> {
  const around = surroundingsOf(pair);
  const locs = opts.paths.map((p) => ({ given: p, loc: locate(pair, p, opts.inPartition, around) }));
  const fsOf = new Set(locs.map((l) => l.loc.partition));
  if (fsOf.size > 1) throw new UsageError(`the PATHs are in different partitions (${[...fsOf].join(', ')}): restore one file system per command`);
  const loc = locs[0].loc;

  let destRoot: string;
  if (opts.to) {
    destRoot = path.resolve(opts.to);
    if (fs.existsSync(destRoot) && !fs.statSync(destRoot).isDirectory()) throw new UsageError(`--to ${opts.to}: not a directory`);
    const names = locs.map((l) => path.posix.basename(l.loc.relPath));
    const twice = names.find((n, i) => names.indexOf(n) !== i);
    if (twice !== undefined) throw new UsageError(`two PATHs are both called "${twice || '/'}": under --to they would land on each other; restore them one at a time`);
  } else {
    const src = loc.source;
    if (!src) throw new RefusedError(`pair ${pair.name}: the source ${pair.source.path} is not there (or is another device now); restore with --to DIR`, 'ENOSOURCE');
    if (!src.mount) {
      throw new RefusedError(`the source's ${describeFs(loc)} is not mounted${src.otherMounts.length ? ` (only subdirectories of it, on ${src.otherMounts.join(', ')})` : ''}: mount it and run again, or restore with --to DIR`, 'ENOTMOUNTED');
    }
    if (src.mount.readOnly) throw new RefusedError(`the source's ${describeFs(loc)} is mounted read-only on ${src.mount.mountPoint}: nothing can be restored into it; use --to DIR`, 'EREADONLY');
    destRoot = src.mount.mountPoint;
  }

  return withMounts([() => mountReadOnly(pair.drive.path, loc.image, `pair ${pair.name}'s image`)], async ([image]) => {
    const items: RestoreItem[] = locs.map(({ given, loc: l }) => {
      if (!entryExists(pathInside(image.mountPoint, l.relPath, 'the image'))) {
        throw new DpsrError(`${given}: not in the image (${describeFs(l)}, path /${l.relPath})`, 'ENOTINIMAGE');
      }
      return opts.to
        ? { imageBase: path.join(image.mountPoint, path.posix.dirname(l.relPath)), destBase: destRoot, name: path.posix.basename(l.relPath) }
        : { imageBase: image.mountPoint, destBase: destRoot, name: l.relPath };
    });
    const plan = planRestore(items, { content: opts.content });
    const count = (a: PlannedEntry['action']) => plan.entries.filter((e) => e.action === a).length;
    const summary = { create: count('create'), replace: count('replace'), attributes: count('attributes'), keep: count('keep'), newer: plan.conflicts.length };
    if (!opts.json) {
      log(`${pair.name}: ${opts.dryRun ? 'would restore' : 'restoring'} from ${opts.at !== undefined ? `restore point ${pair.generation}${pair.imageLabel ? ` (${pair.imageLabel})` : ''}, ` : ''}the image ${pair.image}${pair.imageTimeMs ? ` of ${localTime(pair.imageTimeMs)}` : ''} into ${destRoot}${opts.to ? '' : ' (the source)'}`);
      for (const e of plan.entries) log(describeEntry(e));
      if (plan.entries.length === 0) log('  nothing to do: the destination already matches the image');
    }
    if (!opts.dryRun) {
      if (opts.to && (plan.conflicts.length === 0 || opts.overwrite)) fs.mkdirSync(destRoot, { recursive: true });
      await runRestore(plan, { overwrite: opts.overwrite });
    }
    const durationMs = Date.now() - startedMs;
    if (opts.json) {
      process.stdout.write(`${JSON.stringify({
        name: pair.name,
        image: { state: pair.image, time: pair.imageTimeMs ? new Date(pair.imageTimeMs).toISOString() : null, drive: driveNameOf(pair) },
        partition: loc.partition, to: destRoot, dryRun: opts.dryRun,
        entries: plan.entries.map((e) => ({ path: e.dest, action: e.action, why: e.why, newer: e.newer, image: jsonMeta(e.image), existing: jsonMeta(e.existing) })),
        summary, durationMs,
      })}\n`);
    } else {
      const kept = `${summary.attributes} attributes only, ${summary.keep} kept (only at the destination)`;
      log(opts.dryRun
        ? `dry run, nothing written: ${summary.create} to create, ${summary.replace} to replace, ${kept}` +
          `${summary.newer ? `; ${summary.newer} newer at the destination (need --overwrite)` : ''}`
        : `restored in ${(durationMs / 1000).toFixed(2)} s: ${summary.create} created, ${summary.replace} replaced, ${kept}`);
    }
    return ExitStatus.ok;
  });
}

function entryExists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}
