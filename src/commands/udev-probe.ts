// dpsr udev-probe DEVNAME: what packaging/60-dpsr.rules runs (IMPORT{program})
// for each block device. Prints KEY=value lines, or nothing; never fails the
// udev event: any error prints nothing and exits 0.
import { formatProperties, probeDevice } from '../udev-probe.js';

export function udevProbeCommand(opts: { device: string; setReadOnly: boolean }, write: (s: string) => void): void {
  let out = '';
  try {
    out = formatProperties(probeDevice(opts.device, { setReadOnly: opts.setReadOnly }).properties);
  } catch {
    // A device that vanished, a read error, no addon: udev carries on without dpsr's properties.
  }
  if (out) write(out);
}
