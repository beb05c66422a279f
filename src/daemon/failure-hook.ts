// The admin's failure hook (config on_failure): a command run when a sync
// fails, a scrub finds a difference or a gap appears, for mail or alerts.
// It is a shell command line, as systemd's ExecStart or cron's are what admins
// write ("mail -s 'dpsr' root"), run with /bin/sh -c; the event comes in
// environment variables and as one JSON document on stdin. A broken, slow or
// missing hook never breaks what reported the event: it is bounded by a
// timeout (its whole process group is killed) and runFailureHook never throws.
import { spawn, type ChildProcess } from 'node:child_process';

export type HookEventKind = 'sync-failed' | 'scrub-mismatch' | 'gap' | 'compare-failed' | 'drive-unusable';

export interface HookEvent {
  pair: string;
  kind: HookEventKind;
  /** One line, for a person. */
  reason: string;
  atMs: number;
}

export interface HookResult {
  /** The hook's exit status; null when it did not exit by itself (killed, not started). */
  status: number | null;
  /** Why the hook failed, one line; null when it exited 0. */
  error: string | null;
  durationMs: number;
}

/** What the hook may print that is kept, for the daemon's log. */
const OUTPUT_TAIL_BYTES = 2048;
const REASON_ENV_CHARS = 4096;

/** The event as the hook sees it: environment variables (on top of the daemon's) and stdin. */
export function hookEnvironment(event: HookEvent): Record<string, string> {
  return {
    DPSR_PAIR: event.pair,
    DPSR_EVENT: event.kind,
    // One variable may hold at most 128 KiB (MAX_ARG_STRLEN): stdin has the whole reason.
    DPSR_REASON: event.reason.length > REASON_ENV_CHARS ? `${event.reason.slice(0, REASON_ENV_CHARS)}...` : event.reason,
    DPSR_TIME: new Date(event.atMs).toISOString(),
  };
}

function hookInput(event: HookEvent): string {
  return `${JSON.stringify({ pair: event.pair, event: event.kind, reason: event.reason, time: new Date(event.atMs).toISOString(), atMs: event.atMs })}\n`;
}

const lastLine = (s: string) => s.trim().split('\n').pop()?.slice(0, 200) ?? '';

/** Runs `command` with /bin/sh -c for the event; resolves when it ends or is killed at `timeoutMs`. Never rejects. */
export function runFailureHook(command: string, event: HookEvent, timeoutMs: number): Promise<HookResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    let output = '';
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    let child: ChildProcess | undefined;
    const done = (status: number | null, error: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // What a background process of the hook still holds open is no concern of the daemon's.
      child?.stdout?.destroy();
      child?.stderr?.destroy();
      resolve({ status, error, durationMs: Date.now() - started });
    };
    try {
      // Its own process group, so a timeout also ends what the shell started (mail, curl).
      child = spawn('/bin/sh', ['-c', command], {
        env: { ...process.env, ...hookEnvironment(event) },
        stdio: ['pipe', 'pipe', 'pipe'],
        detached: true,
      });
    } catch (err) {
      done(null, `the failure hook could not be started: ${(err as Error).message}`);
      return;
    }
    let exited: { code: number | null; signal: NodeJS.Signals | null } | null = null;
    const finish = () => {
      const { code, signal } = exited!;
      if (code === 0) done(0, null);
      else if (code !== null) done(code, `the failure hook exited ${code}${lastLine(output) ? `: ${lastLine(output)}` : ''}`);
      else done(null, `the failure hook was killed by ${signal}`);
    };
    // The bound, also when the hook exited but something it started in the background holds its output open.
    timer = setTimeout(() => {
      if (exited) {
        finish();
        return;
      }
      try {
        process.kill(-child!.pid!, 'SIGKILL');
      } catch { /* already gone */ }
      done(null, `the failure hook was killed after ${timeoutMs} ms`);
    }, timeoutMs);
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-OUTPUT_TAIL_BYTES);
    };
    const c = child;
    c.stdout!.on('data', keep);
    c.stderr!.on('data', keep);
    // A hook that does not read stdin closes it: EPIPE is no failure of the hook.
    c.stdin!.on('error', () => {});
    c.stdin!.end(hookInput(event));
    c.on('error', (err) => done(null, `the failure hook could not be started: ${err.message}`));
    c.on('exit', (code, signal) => { exited = { code, signal }; });
    // After 'exit' and the end of its output, for the last line of an error.
    c.on('close', (code, signal) => {
      exited ??= { code, signal };
      finish();
    });
  });
}
