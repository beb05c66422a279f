// The boot this process runs in: the kernel's random boot id, which tells a
// record written in this boot from one left by the previous one. Tests of a
// simulated reboot give another one (DPSR_BOOT_ID_FILE, through the CLI).
import fs from 'node:fs';

let bootIdFile = '/proc/sys/kernel/random/boot_id';

/** Reads the boot id from another file from now on (tests that simulate a reboot). */
export function useBootIdFile(file: string): void {
  bootIdFile = file;
}

/** This boot's id, or null where the kernel does not say. */
export function bootId(): string | null {
  try {
    const id = fs.readFileSync(bootIdFile, 'utf8').trim();
    return id === '' ? null : id;
  } catch {
    return null;
  }
}
