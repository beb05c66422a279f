// dpsr udev-probe DEVNAME: what the compiled probe (dpsr-udev-probe, which
// packaging/60-dpsr.rules runs) says about a device, for an admin's look.
// Prints KEY=value lines, or nothing; like the probe, never fails.
import { runProbe } from '../../drive/udev-probe.js';

export function udevProbeCommand(opts: { device: string; setReadOnly: boolean }, write: (s: string) => void): void {
  let out = '';
  try {
    out = runProbe(opts.device, { setReadOnly: opts.setReadOnly });
  } catch {
    // No probe built: nothing to say, as for a device that is no DPSR drive.
  }
  if (out) write(out);
}
