// The udev probe, seen from dpsr: it is a small compiled program
// (probe/udev-probe.c, built to build/probe/dpsr-udev-probe), because
// systemd-udevd runs it in a sandbox where node cannot run
// (MemoryDenyWriteExecute=yes aborts V8) and the initramfs should not carry
// node. Its decision (hide the copy, make it read-only) lives there alone;
// this module runs it, and gives the tests its decision table and its view of
// the source and of / through the program's test entry points.
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RefusedError } from '../base/errors.js';
import type { DeviceIdentity } from '../devices/identity.js';
import type { DriveLabel } from './label.js';

/** The compiled probe in this dpsr tree (dist/src/drive → the top). */
export const PROBE_PATH = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../build/probe/dpsr-udev-probe');

/** What the decision needs to know about a device. */
export interface ProbeFacts {
  pairName: string;
  /** The label is on the parent disk: the device is a partition of a DPSR drive (it carries the source's UUIDs). */
  labelOnParent: boolean;
  /** A device matching the label's source identity is present. */
  sourcePresent: boolean;
  /** The labelled drive holds the running system's /; null when unknown (an initramfs, before / is mounted). */
  holdsRoot: boolean | null;
}

export interface ProbeDecision {
  /** udev properties, printed as KEY=value lines for IMPORT{program}. */
  properties: Record<string, string>;
  /** Set the labelled device read-only (BLKROSET). */
  setReadOnly: boolean;
}

function run(args: string[]): string {
  try {
    return execFileSync(PROBE_PATH, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new RefusedError(`${PROBE_PATH}: missing: build dpsr (tools/build.sh)`, 'ENOPROBE');
    throw err;
  }
}

/** KEY=value lines as a map. */
export function parseProperties(text: string): Record<string, string> {
  const props: Record<string, string> = {};
  for (const line of text.split('\n').filter(Boolean)) {
    const eq = line.indexOf('=');
    props[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return props;
}

/** The probe's output for a device (KEY=value lines, or nothing); with `setReadOnly` (the rule's "add") it protects the drive. */
export function runProbe(device: string, opts: { setReadOnly: boolean }): string {
  return run([...(opts.setReadOnly ? ['--set-readonly'] : []), device]);
}

/** What the rule does with a device, given what was found (the probe's --decide). */
export function decideProbe(facts: ProbeFacts | null): ProbeDecision {
  if (!facts) return { properties: {}, setReadOnly: false };
  const flag = (b: boolean | null) => (b === null ? '-' : b ? '1' : '0');
  const props = parseProperties(run(['--decide', facts.pairName, flag(facts.labelOnParent), flag(facts.sourcePresent), flag(facts.holdsRoot)]));
  const setReadOnly = props.SET_READONLY === '1';
  delete props.SET_READONLY;
  return { properties: props, setReadOnly };
}

/** Whether the probe takes `candidate` for the label's source (its --is-source). */
export function isRecordedSource(recorded: DriveLabel['source'], candidate: DeviceIdentity): boolean {
  const arg = (v: string | null | undefined) => (v === null || v === undefined ? '-' : v);
  const ids = (i: { sizeSectors: number; name: string; wwid: string | null; serial: string | null; loopBackingFile: string | null }) =>
    [String(i.sizeSectors), i.name, arg(i.wwid), arg(i.serial), arg(i.loopBackingFile)];
  return run(['--is-source', ...ids(recorded), ...ids(candidate)]).trim() === 'yes';
}

/** The kernel names of the devices / is on, as the probe sees them; null when / is on no block device. */
export function rootDeviceNames(): Set<string> | null {
  const names = run(['--root-devices']).split('\n').filter(Boolean);
  return names.length === 0 ? null : new Set(names);
}
