// Every error a user can see: one code per condition, kept in one table
// with the exit status the CLI maps it to. A failed system call keeps its
// errno on the error (`errno`), never as the code: the code says what dpsr
// was doing, so no caller mistakes one condition for another.
export const ExitStatus = {
  ok: 0,
  failure: 1,
  usage: 2,
  refused: 3,
  notUsable: 4,
} as const;

export type ExitStatusValue = (typeof ExitStatus)[keyof typeof ExitStatus];
type Status = keyof typeof ExitStatus;

/** Code → [exit status, what it means]. The manual page lists the table. */
export const ERRORS = {
  // The command line or the configuration.
  EUSAGE: ['usage', 'the command line is wrong'],
  ECONFIG: ['usage', 'the configuration file is wrong'],
  ENAME: ['refused', 'a pair name with characters dpsr does not allow'],
  EEXIST: ['refused', 'a pair of that name exists already'],
  ENOPAIR: ['failure', 'no pair of that name'],
  ECANCELED: ['failure', 'the user said no at the confirmation'],
  // Privilege and kernel support.
  EPERM: ['refused', 'dpsr needs root'],
  ENOBTF: ['refused', 'the kernel has no BTF: the programs cannot load'],
  EBIOBASED: ['refused', 'a bio-based device (dm, md, zram): its writes cannot be tracked'],
  EIOSTATS: ['refused', 'I/O accounting is off on the device: writes cannot be reconciled'],
  // Devices: which device, and whether it may be used.
  ENODEV: ['refused', 'no such device, no medium, or it went away'],
  ENOTBLK: ['refused', 'not a block device'],
  EOPEN: ['refused', 'a device cannot be opened as dpsr needs (errno attached)'],
  EREADONLY: ['refused', 'the device or file system is read-only'],
  ESAMEDEV: ['refused', 'the source and the DPSR drive are one device'],
  EOVERLAP: ['refused', 'the DPSR drive overlaps or stacks on the source'],
  ESYSDISK: ['refused', "the device is the disk the running system's / is on"],
  EMOUNTED: ['refused', 'the device, a partition or its disk is mounted'],
  ESWAP: ['refused', 'the device or a partition is active swap'],
  EHELD: ['refused', 'the device is held by device mapper or md'],
  EINUSE: ['refused', 'something holds the device open exclusively'],
  ESECTORSIZE: ['refused', 'the logical sector sizes differ'],
  ETOOSMALL: ['refused', 'the DPSR drive is too small'],
  ENOIDENTITY: ['refused', 'nothing could prove later that the device is the paired one'],
  ESIGNATURE: ['refused', 'the DPSR drive carries data (use --force)'],
  ESOURCECHANGED: ['refused', 'the source is not the paired device any more'],
  EDRIVECHANGED: ['refused', 'the DPSR drive is not the paired device any more'],
  ELABEL: ['refused', "the DPSR drive does not carry this pair's label"],
  ENOLABEL: ['notUsable', 'the device carries no dpsr label'],
  EPAIR: ['refused', 'the pair has a problem found when the session opened'],
  ESTATE: ['failure', "the state directory's database is damaged or truncated"],
  // Who holds what.
  EOWNED: ['failure', 'another dpsr process owns tracking'],
  EDRIVELOCKED: ['failure', 'another dpsr command uses the DPSR drive'],
  EDAEMONRUNNING: ['failure', 'a daemon already listens on the control socket'],
  ESLOTSFULL: ['failure', 'every tracking slot is in use'],
  ECONSUMERSFULL: ['failure', 'every tracking consumer is in use'],
  ESTALE: ['failure', 'tracking was detached meanwhile'],
  // Syncing.
  EJOURNALFULL: ['refused', 'the sync does not fit the journal: nothing written'],
  EJOURNAL: ['failure', 'a journal transaction is malformed'],
  ELABELSIZE: ['failure', 'the label does not fit its slot'],
  EFREEZE: ['failure', 'freezing or thawing a file system failed'],
  EFROZEN: ['failure', 'the file system was frozen already, by another program'],
  EWATCHDOG: ['failure', 'the freeze watchdog did not start'],
  EUNREACHABLE: ['failure', "a writable file system of the source is not reachable from dpsr's mount namespace"],
  ENOTQUIESCENT: ['failure', 'the source never became quiet enough for one point in time'],
  EPENDING: ['refused', 'an interrupted sync must be finished first'],
  ETIMEDOUT: ['failure', 'the command did not finish in time (--timeout)'],
  EIO: ['failure', 'a read, write, discard or flush failed (errno attached)'],
  ESHORT: ['failure', 'a device ended before the copy expected'],
  // A DPSR drive on an NBD export.
  ENBDCONNECT: ['failure', 'the NBD server cannot be reached or dropped the connection'],
  ENBDEXPORT: ['refused', 'the NBD server has no such export'],
  ENBDTLS: ['refused', 'the TLS handshake with the NBD server failed'],
  EINSECURE: ['refused', 'plain NBD to a host that is not loopback (use nbds://, or --insecure)'],
  ECREDENTIALS: ['refused', 'a TLS key or certificate directory is not root-only'],
  // Reading and restoring the image.
  ENOTUSABLE: ['notUsable', 'the image is no whole point in time to return to'],
  ENOTPOINTINTIME: ['refused', 'the image is not one point in time (use --force)'],
  ENOSOURCE: ['refused', 'the source is not there'],
  ENOFS: ['refused', 'no file system found in the image'],
  EBTRFS: ['refused', "a btrfs copy cannot be mounted beside its source"],
  EBINDONLY: ['refused', 'the file system is mounted only as a subdirectory'],
  ENOTMOUNTED: ['refused', 'the file system is not mounted'],
  ENOTINIMAGE: ['failure', 'the path is not in the image'],
  ESYMLINKPATH: ['refused', 'the path goes through a symbolic link'],
  ENEWER: ['refused', 'entries on the destination are newer than in the image'],
  ENOPART: ['refused', 'no such partition'],
  EPARTGEOMETRY: ['refused', 'the partition tables differ'],
  EPARTITIONPAIR: ['refused', 'the source is a partition: restore --whole restores it'],
  EMOUNT: ['failure', 'mounting the image failed'],
  ENOHISTORY: ['refused', 'the pair keeps no restore points (pair it with --history)'],
  ENOPOINT: ['failure', 'no restore point matches --at (or --drop)'],
  ENOJOURNAL: ['refused', 'the pair has no journal (paired with --no-reserve): a revert needs one to be crash-safe'],
  EHISTORY: ['failure', 'an undo record of a restore point is damaged'],
  EHISTORYFULL: ['refused', 'keeping the undo would drop a labelled restore point the configuration keeps'],
  ERSYNC: ['failure', 'rsync failed'],
  // The daemon's control socket.
  EACCES: ['refused', 'the control socket is for root only'],
  EPIPE: ['failure', 'the daemon closed the connection'],
  EPROTO: ['failure', 'a malformed message on the control socket'],
  EVERSION: ['failure', 'the daemon speaks another protocol version'],
  // Install.
  EPATH: ['refused', 'a path that cannot be written into the unit or wrapper'],
  ECHANGED: ['refused', 'an installed file was changed by someone else'],
  ENOPACKAGING: ['refused', 'a packaging file is missing from this dpsr'],
  ENOPROBE: ['refused', 'the udev probe is not built'],
  ENOTINSTALLED: ['refused', 'no record of a dpsr install here'],
  EENABLED: ['refused', 'the service is enabled: disable it first'],
  // Anything else (a bug, or a failure nobody foresaw).
  EFAIL: ['failure', 'an unexpected failure'],
} as const satisfies Record<string, readonly [Status, string]>;

export type ErrorCode = keyof typeof ERRORS;

export const isErrorCode = (code: unknown): code is ErrorCode => typeof code === 'string' && Object.hasOwn(ERRORS, code);

export class DpsrError extends Error {
  readonly exitStatus: ExitStatusValue;
  /** The system's errno name ('EIO', 'ENOSPC', ...) when a system call failed. */
  readonly errno?: string;

  constructor(message: string, readonly code: ErrorCode, opts: { errno?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'DpsrError';
    this.exitStatus = ExitStatus[ERRORS[code][0]];
    if (opts.errno !== undefined) this.errno = opts.errno;
  }
}

/** Unsafe or unsuitable device, missing privilege or kernel support: nothing was changed. */
export class RefusedError extends DpsrError {
  constructor(message: string, code: ErrorCode, opts?: { errno?: string; cause?: unknown }) {
    super(message, code, opts);
    this.name = 'RefusedError';
  }
}

export class UsageError extends DpsrError {
  constructor(message: string) {
    super(message, 'EUSAGE');
    this.name = 'UsageError';
  }
}

/** Refuses with a one-line message: nothing was changed. */
export function refuse(message: string, code: ErrorCode): never {
  throw new RefusedError(message, code);
}

/** The errno name of a failed system call, for `DpsrError`'s `errno`. */
export const errnoOf = (err: unknown): string | undefined => (err as NodeJS.ErrnoException | undefined)?.code ?? undefined;
