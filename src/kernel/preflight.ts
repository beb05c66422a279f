// What tracking needs from the kernel and the caller, checked before
// anything is loaded, each failure one line that says what to do.
import fs from 'node:fs';
import { RefusedError } from '../base/errors.js';

const CAP_SYS_ADMIN = 21n;
const CAP_PERFMON = 38n;
const CAP_BPF = 39n;

function effectiveCaps(): bigint {
  const status = fs.readFileSync('/proc/self/status', 'utf8');
  const hex = status.match(/^CapEff:\s*([0-9a-f]+)/m)?.[1] ?? '0';
  return BigInt(`0x${hex}`);
}

export function checkPrivileges(): void {
  const caps = effectiveCaps();
  const has = (cap: bigint) => (caps >> cap) & 1n;
  // tp_btf programs need CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN); block devices need root anyway.
  if (!(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) || process.geteuid?.() !== 0) {
    throw new RefusedError('dpsr needs root (with CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): run it with sudo', 'EPERM');
  }
}

export function checkKernelBtf(btfPath: string): void {
  if (!fs.existsSync(btfPath)) {
    throw new RefusedError(`the kernel exposes no BTF (${btfPath} is missing): dpsr needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.17 or later)`, 'ENOBTF');
  }
}

export function checkTrackingSupport(btfPath: string): void {
  checkPrivileges();
  checkKernelBtf(btfPath);
}
