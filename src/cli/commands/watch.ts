// dpsr watch DEVICE: prints every completed write on a disk or partition as
// it arrives, like biosnoop, sharing the kernel's tracking with other users.
import { checkTrackable, formatDev, resolveBlockDevice } from '../../devices/devices.js';
import { type Settings, WATCH_RING_BYTES } from '../../base/defaults.js';
import { OpNames, REC_ERROR, REC_UNKNOWN, forEachRecord } from '../../kernel/kernel-abi.js';
import { checkTrackingSupport } from '../../kernel/preflight.js';
import { KernelTracking } from '../../kernel/tracking.js';

export interface WatchOptions {
  device: string;
  json: boolean;
}

export async function watchCommand(opts: WatchOptions, settings: Settings): Promise<void> {
  const dev = resolveBlockDevice(opts.device);
  checkTrackable(dev);
  checkTrackingSupport(settings.kernelBtfPath);

  const kt = KernelTracking.open({ pinDir: settings.pinDir });
  let ring = -1;
  let slot = -1;
  const out: string[] = [];
  const flush = () => {
    if (out.length === 0) return;
    process.stdout.write(`${out.join('\n')}\n`);
    out.length = 0;
  };
  const started = process.hrtime.bigint();
  const seconds = () => (Number(process.hrtime.bigint() - started) / 1e9).toFixed(6);
  const line = (fields: Record<string, unknown>, human: string) => {
    out.push(opts.json ? JSON.stringify(fields) : human);
  };

  const stop = new Promise<void>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => resolve());
    process.stdout.on('error', () => resolve()); // EPIPE: the reader went away
  });

  try {
    ring = kt.registerConsumer({ ringBytes: WATCH_RING_BYTES });
    const end = dev.startSector + dev.sizeSectors;
    slot = kt.addSlot({ diskDev: dev.diskDev, startSector: dev.startSector, endSector: end }, ring).index;
    const bit = 1 << slot;
    let lastDrops = 0;
    const checkDrops = () => {
      const { drops } = kt.ringStats(ring);
      if (drops > lastDrops) {
        const lost = drops - lastDrops;
        line({ time: Number(seconds()), event: 'drops', records: lost },
          `${seconds().padEnd(12)} LOST ${lost} records: the ring was full (this display only; other users are unaffected)`);
        lastDrops = drops;
      }
    };
    const reader = kt.reader(ring, (batch) => {
      forEachRecord(batch, (r) => {
        if (!(r.slotMask & bit)) return;
        const time = seconds();
        if (r.flags & REC_UNKNOWN) {
          line({ time: Number(time), device: dev.name, dev: formatDev(dev.diskDev), event: 'unknown-write', op: OpNames[r.op] ?? `op${r.op}` },
            `${time.padEnd(12)} ${dev.name.padEnd(10)} UNKNOWN WRITE (${OpNames[r.op] ?? `op ${r.op}`}): no range; a sync would have to compare the whole device`);
          return;
        }
        const start = Math.max(r.startSector, dev.startSector) - dev.startSector;
        const stop = Math.min(r.endSector, end) - dev.startSector;
        const op = OpNames[r.op] ?? `op${r.op}`;
        const error = (r.flags & REC_ERROR) !== 0;
        line({ time: Number(time), device: dev.name, dev: formatDev(dev.diskDev), op, start, end: stop, sectors: stop - start, ...(error ? { error } : {}) },
          `${time.padEnd(12)} ${dev.name.padEnd(10)} ${op.padEnd(12)} ${String(start).padStart(12)} ${String(stop).padStart(12)} ${String(stop - start).padStart(8)}${error ? '  (failed; may still have changed the media)' : ''}`);
      });
      checkDrops();
      flush();
    }, 100);
    if (!opts.json) {
      process.stdout.write(`${'TIME(s)'.padEnd(12)} ${'DEVICE'.padEnd(10)} ${'OP'.padEnd(12)} ${'START'.padStart(12)} ${'END'.padStart(12)} ${'SECTORS'.padStart(8)}\n`);
    }
    process.stderr.write(`dpsr: watching ${dev.path} (${dev.name}, disk ${dev.disk} ${formatDev(dev.diskDev)}, ${dev.sizeSectors} sectors; start/end are ${dev.isPartition ? 'partition-relative ' : ''}512-byte sectors, end exclusive). Ctrl-C to stop.\n`);
    await stop;
    reader.consume();
    checkDrops();
    flush();
    reader.close();
  } finally {
    // Remove only what this process added; detach only if nobody else uses tracking.
    if (ring >= 0) kt.unregisterConsumer(ring);
    kt.detachIfUnused();
    kt.close();
  }
}
