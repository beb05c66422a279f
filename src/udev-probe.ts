// What the udev rule asks about each block device as it appears: is it a
// DPSR drive (or a partition of one), and must it be hidden? The copy
// carries the source's file system, partition and LVM/md UUIDs: while the
// source is present, /dev/disk/by-uuid (root=UUID=..., fstab) and desktop
// auto-mount must never pick the copy. The rule is copied onto the DPSR drive
// with the system, so the disk the machine runs from is never hidden nor made
// read-only (DESIGN.md invariant 7; "The copy carries the source's UUIDs").
import fs from 'node:fs';
import path from 'node:path';
import { openDirect } from './copy.js';
import { readSysOrNull, resolveBlockDevice, type BlockDevice } from './devices.js';
import { identify, type DeviceIdentity } from './identity.js';
import { labelAt, type DriveLabel } from './label.js';
import { partitionsOf, rootDeviceName } from './mounts.js';
import { native } from './native.js';

/** What the decision needs to know about a device, read from the system (or given by a test). */
export interface ProbeFacts {
  pairName: string;
  /** The label is on the parent disk: the device is a partition of a DPSR drive (it carries the source's UUIDs). */
  labelOnParent: boolean;
  /** A device matching the label's source identity is present. */
  sourcePresent: boolean;
  /**
   * The labelled drive holds the running system's / (or what / is built on).
   * null when that cannot be known: in an initramfs, before the root is mounted.
   */
  holdsRoot: boolean | null;
}

export interface ProbeDecision {
  /** udev properties, printed as KEY=value lines for IMPORT{program}. */
  properties: Record<string, string>;
  /** Set the labelled device read-only (BLKROSET). */
  setReadOnly: boolean;
}

/** What the probe reports for a device that is no DPSR drive: nothing. */
const NOTHING: ProbeDecision = { properties: {}, setReadOnly: false };

/**
 * udev properties that hide a device: udisks (desktop auto-mount and file
 * managers; UDISKS_PRESENTATION_HIDE is udisks1's name) and systemd's
 * 60-persistent-storage.rules, which then skips its blkid probe: no ID_FS_*,
 * so no by-uuid, by-label or by-partuuid links, and no md, LVM or btrfs
 * auto-assembly, which key on ID_FS_TYPE (the links by-id and by-path name
 * the hardware and stay). The rule file sorts before 60-persistent-storage.
 */
const HIDE: Record<string, string> = {
  DPSR_HIDDEN: '1',
  UDISKS_IGNORE: '1',
  UDISKS_AUTO: '0',
  UDISKS_PRESENTATION_HIDE: '1',
  UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG: '1',
};

/** Pure: what the rule does with a device, given what was found. */
export function decideProbe(facts: ProbeFacts | null): ProbeDecision {
  if (!facts) return NOTHING;
  const properties: Record<string, string> = {
    DPSR_DRIVE: '1',
    DPSR_PAIR: facts.pairName,
    DPSR_SOURCE_PRESENT: facts.sourcePresent ? '1' : '0',
  };
  // The machine runs from this drive (the source died and it was booted): it is the system now.
  if (facts.holdsRoot === true) return { properties: { ...properties, DPSR_BOOTED: '1' }, setReadOnly: false };
  // Only the labelled device itself is made read-only: a disk's flag covers its partitions,
  // and `dpsr unpair` clears it on that device alone.
  const mayProtect = !facts.labelOnParent;
  if (facts.sourcePresent) return { properties: { ...properties, ...HIDE }, setReadOnly: mayProtect };
  // Source absent and / not mounted yet (initramfs): this may be the disk about to become /.
  if (facts.holdsRoot === null) return { properties, setReadOnly: false };
  return { properties, setReadOnly: mayProtect };
}

/** KEY=value lines as IMPORT{program} reads them. */
export function formatProperties(props: Record<string, string>): string {
  return Object.entries(props).map(([k, v]) => `${k}=${v}\n`).join('');
}

const PAIR_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const isIdOrNull = (v: unknown) => v === null || v === undefined || typeof v === 'string';

/**
 * The label, when it is one dpsr could have written: any drive can be plugged
 * in, and what the probe prints becomes udev properties.
 */
function plausible(label: DriveLabel | null): DriveLabel | null {
  if (!label || typeof label.pairName !== 'string' || !PAIR_NAME.test(label.pairName)) return null;
  const s = label.source as Partial<DriveLabel['source']> | undefined;
  if (!s || typeof s !== 'object' || !Number.isSafeInteger(s.sizeSectors) || typeof s.name !== 'string') return null;
  if (!isIdOrNull(s.wwid) || !isIdOrNull(s.serial) || !isIdOrNull(s.loopBackingFile)) return null;
  return label;
}

/** Whether a device is the label's source: same size and the strongest identity recorded. */
export function isRecordedSource(recorded: DriveLabel['source'], candidate: DeviceIdentity): boolean {
  if (candidate.sizeSectors !== recorded.sizeSectors) return false;
  if (recorded.wwid) return candidate.wwid === recorded.wwid;
  if (recorded.serial) return candidate.serial === recorded.serial;
  if (recorded.loopBackingFile) return candidate.loopBackingFile === recorded.loopBackingFile;
  return candidate.name === recorded.name; // no identity recorded: the kernel name, the best there is
}


/**
 * Whether the label's source is present: block devices of its size (cheap,
 * sysfs), then their identity. The drive itself and its partitions are not
 * candidates.
 */
function sourcePresent(label: DriveLabel, drive: BlockDevice): boolean {
  let names: string[];
  try {
    names = fs.readdirSync('/sys/class/block');
  } catch {
    return false;
  }
  const own = new Set([drive.name, ...(drive.isPartition ? [] : partitionsOf(drive.name))]);
  for (const name of names) {
    if (own.has(name)) continue;
    if (Number(readSysOrNull(`/sys/class/block/${name}/size`)) !== label.source.sizeSectors) continue;
    try {
      if (isRecordedSource(label.source, identify(resolveBlockDevice(`/dev/${name}`)))) return true;
    } catch {
      // no node, or it went away meanwhile: not present
    }
  }
  return false;
}


/** A block device's kernel name, the names it is built on (dm/md slaves), and the disks of the partitions among them. */
function withUnderlying(name: string, into: Set<string>): Set<string> {
  if (into.has(name)) return into;
  let dir: string;
  try {
    dir = fs.realpathSync(`/sys/class/block/${name}`);
  } catch {
    return into;
  }
  into.add(name);
  if (fs.existsSync(path.join(dir, 'partition'))) into.add(path.basename(path.dirname(dir)));
  let slaves: string[] = [];
  try {
    slaves = fs.readdirSync(path.join(dir, 'slaves'));
  } catch { /* not stacked */ }
  for (const s of slaves) withUnderlying(s, into);
  return into;
}

/**
 * Kernel names of the block devices the running system's / lives on (the
 * partition, its disk, what a dm/md device is built on); null when / is on
 * no block device: an initramfs before the root is mounted (or a network root).
 */
export function rootDeviceNames(): Set<string> | null {
  const name = rootDeviceName();
  return name === null ? null : withUnderlying(name, new Set());
}

/** Reads what the decision needs about a device; null when it is no DPSR drive. Only reads. */
function probeFacts(devPath: string): { facts: ProbeFacts; labelled: BlockDevice } | null {
  const dev = resolveBlockDevice(devPath);
  let labelled = dev;
  let label = plausible(labelAt(dev.path));
  if (!label && dev.isPartition) {
    labelled = resolveBlockDevice(`/dev/${dev.disk}`);
    label = plausible(labelAt(labelled.path));
  }
  if (!label) return null;
  const roots = rootDeviceNames();
  return {
    labelled,
    facts: {
      pairName: label.pairName,
      labelOnParent: labelled !== dev,
      sourcePresent: sourcePresent(label, labelled),
      holdsRoot: roots === null ? null : roots.has(labelled.name),
    },
  };
}

/**
 * The probe: decides, and with `setReadOnly` (the rule passes it on "add")
 * makes the DPSR drive read-only. Only "add": a "change" event follows every
 * close of a writable fd (udev's inotify watch), also dpsr's own, mid-sync.
 */
export function probeDevice(devPath: string, opts: { setReadOnly: boolean }): ProbeDecision {
  const found = probeFacts(devPath);
  const decision = decideProbe(found?.facts ?? null);
  if (found && decision.setReadOnly && opts.setReadOnly) {
    const fd = openDirect(found.labelled.path, false);
    try {
      if (!native().blkRoGet(fd)) native().blkRoSet(fd, true);
    } finally {
      fs.closeSync(fd);
    }
  }
  return decision;
}
