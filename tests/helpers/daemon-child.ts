// A `dpsr daemon` run by a test: started, awaited until it listens, its
// output kept, killed by the fixture if the test leaves it running; and the
// status it answers, read without blocking the test's event loop (the
// daemon's pipes are read here).
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { DPSR_BIN, type Fixture } from './fixture.js';
import type { PairStatus } from '../../src/daemon/pair-status.js';

export type DaemonChild = ChildProcess & { output(): string; stop(): Promise<void> };

export async function startDaemon(fx: Fixture, env: NodeJS.ProcessEnv, ...args: string[]): Promise<DaemonChild> {
  const child = spawn(process.execPath, [DPSR_BIN, 'daemon', ...args], { env });
  fx.defer('stop daemon', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '';
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => { out += d; if (out.includes('listening')) resolve(); });
    child.stderr!.on('data', (d) => { out += d; });
    child.on('exit', () => reject(new Error(`daemon exited: ${out}`)));
  });
  const stop = async () => { child.kill('SIGTERM'); await exited; };
  return Object.assign(child, { output: () => out, stop });
}

/** `dpsr status NAME --json` (through the daemon when one runs): the pair's status and the exit status. */
export async function statusOf(env: NodeJS.ProcessEnv, name: string): Promise<PairStatus> {
  const { stdout } = await promisify(execFile)(process.execPath, [DPSR_BIN, 'status', name, '--json'], { env }).catch((e) => e);
  return JSON.parse(stdout).pairs[0];
}

/** Polls `probe` until it returns a truthy value (a wait on an event, with a deadline only against a hang). */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false | null>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
