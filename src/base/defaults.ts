// Every default in one place. Only the CLI reads the environment, through here.
export interface Settings {
  stateDir: string;
  socketPath: string;
  ownerLockPath: string;
  pinDir: string; // versioned: a dpsr whose maps change shape pins elsewhere
  kernelBtfPath: string;
  configPath: string;
  /** Where the boot id is read (tests that simulate a reboot); undefined: the kernel's. */
  bootIdFile?: string;
  /** How long a connection to an NBD export may take before it fails (DPSR_NBD_CONNECT_TIMEOUT, seconds); undefined: 30 s. */
  nbdConnectTimeoutMs?: number;
}

/** Where this version pins its programs: a dpsr whose maps change shape pins under a new name. */
export const PIN_DIR = '/sys/fs/bpf/dpsr/v5';

export function settingsFromEnv(env: NodeJS.ProcessEnv): Settings {
  const socketPath = env.DPSR_SOCKET ?? '/run/dpsr/dpsr.sock';
  return {
    stateDir: env.DPSR_STATE_DIR ?? '/var/lib/dpsr',
    socketPath,
    ownerLockPath: env.DPSR_LOCK ?? socketPath.replace(/[^/]*$/, 'owner.lock'),
    pinDir: env.DPSR_BPF_DIR ?? PIN_DIR,
    kernelBtfPath: env.DPSR_KERNEL_BTF ?? '/sys/kernel/btf/vmlinux',
    configPath: env.DPSR_CONFIG ?? '/etc/dpsr/dpsr.toml',
    ...(env.DPSR_BOOT_ID_FILE ? { bootIdFile: env.DPSR_BOOT_ID_FILE } : {}),
    ...(Number(env.DPSR_NBD_CONNECT_TIMEOUT) > 0 ? { nbdConnectTimeoutMs: Number(env.DPSR_NBD_CONNECT_TIMEOUT) * 1000 } : {}),
  };
}

export const WATCH_RING_BYTES = 4 << 20;
// The owner releases ring space only after persisting, once a tick (1 s):
// 32 MiB holds a million records, three ticks at 300k writes/s.
export const OWNER_RING_BYTES = 32 << 20;

// The journal's size, from what a Debian 12 system disk changes (tools/bench/apt-week.sh; README,
// "How big a journal"): an `apt upgrade` from the bookworm point release to its security and
// updates suites, with a new kernel, changed 1.0-1.1 GiB of a server and 2.1 GiB of a desktop
// (Xfce, Firefox, Chromium, LibreOffice); a simulated week of the desktop's use 1.9 GiB more.
/** What one apt upgrade may change: the 2.1 GiB measured on a desktop, rounded up. */
export const UPGRADE_BYTES = 2.5 * 2 ** 30;
/** `pair --reserve` unless given: twice the desktop's week with its upgrade (4.0 GiB) in one sync. */
export const DEFAULT_RESERVE = '8G';
