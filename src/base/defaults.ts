// Every default in one place. Only the CLI reads the environment, through here.
export interface Settings {
  stateDir: string;
  socketPath: string;
  ownerLockPath: string;
  pinDir: string; // versioned: a dpsr whose maps change shape pins elsewhere
  kernelBtfPath: string;
  configPath: string;
}

export function settingsFromEnv(env: NodeJS.ProcessEnv): Settings {
  const socketPath = env.DPSR_SOCKET ?? '/run/dpsr/dpsr.sock';
  return {
    stateDir: env.DPSR_STATE_DIR ?? '/var/lib/dpsr',
    socketPath,
    ownerLockPath: env.DPSR_LOCK ?? socketPath.replace(/[^/]*$/, 'owner.lock'),
    pinDir: env.DPSR_BPF_DIR ?? '/sys/fs/bpf/dpsr/v3',
    kernelBtfPath: env.DPSR_KERNEL_BTF ?? '/sys/kernel/btf/vmlinux',
    configPath: env.DPSR_CONFIG ?? '/etc/dpsr/dpsr.toml',
  };
}

export const WATCH_RING_BYTES = 4 << 20;
// The owner releases ring space only after persisting, once a tick (1 s):
// 32 MiB holds a million records, three ticks at 300k writes/s.
export const OWNER_RING_BYTES = 32 << 20;
