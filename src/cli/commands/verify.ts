// dpsr verify NAME: compare the source with the DPSR drive, sector for sector.
import type { Settings } from '../../base/defaults.js';
import { DpsrError, ExitStatus, type ExitStatusValue } from '../../base/errors.js';
import { compareExtents } from '../../io/copy.js';
import { openLocalDevice } from '../../io/local-device.js';
import { driveNameOf, openDriveIo } from '../../drive/remote-drive.js';
import { resolveBlockDevice } from '../../devices/devices.js';
import { ExtentSet } from '../../base/extents.js';
import { mountsOf } from '../../devices/mounts.js';
import { progressBar } from '../../base/progress.js';
import { Store } from '../../state/store.js';
import { SECTOR, formatBytes } from '../../base/units.js';

export async function verifyCommand(opts: { name: string; json: boolean }, settings: Settings, log: (s: string) => void): Promise<ExitStatusValue> {
  const store = Store.open(settings.stateDir);
  let pair;
  try {
    pair = store.pair(opts.name);
  } finally {
    await store.close();
  }
  if (!pair) throw new DpsrError(`no pair named ${opts.name}`, 'ENOPAIR');
  const mounted = mountsOf(resolveBlockDevice(pair.source.path));
  if (mounted.length > 0 && !opts.json) log(`warning: ${pair.source.path} is mounted on ${mounted.join(', ')}: differences may be writes since the last sync`);
  const src = openLocalDevice(pair.source.path, false);
  const dst = openDriveIo(pair, false);
  try {
    const bar = progressBar(`${pair.name}: verify`, pair.dataSectors * SECTOR);
    const r = await compareExtents(src, dst, ExtentSet.from([[0, pair.dataSectors]]), {
      limitSectors: pair.dataSectors, write: false, onProgress: (p) => bar.update(p.doneSectors * SECTOR),
    });
    bar.done();
    const differing = r.differing.toArray();
    if (opts.json) {
      process.stdout.write(`${JSON.stringify({ name: pair.name, equal: differing.length === 0, comparedBytes: r.comparedSectors * SECTOR, differing })}\n`);
    } else if (differing.length === 0) {
      log(`${pair.name}: ${pair.source.path} and ${driveNameOf(pair)} are identical over ${formatBytes(pair.dataSectors * SECTOR)}`);
    } else {
      log(`${pair.name}: ${r.differing.totalSectors * SECTOR} bytes differ in ${differing.length} extents (512-byte sectors): ` +
        differing.slice(0, 8).map(([s, e]) => `[${s}, ${e})`).join(' ') + (differing.length > 8 ? ' …' : ''));
    }
    return differing.length === 0 ? ExitStatus.ok : ExitStatus.failure;
  } finally {
    src.close();
    dst.close();
  }
}
