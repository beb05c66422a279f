// A one-line progress bar on stderr, drawn only on a terminal so pipes, logs and tests stay clean;
// and the same progress as events for a reporter (--json's lines, the daemon's client).

const REDRAW_MS = 100; // at most 10 redraws a second
const REPORT_MS = 250; // at most 4 events a second: a web page redraws from them
const MiB = 1024 * 1024;

export interface ProgressEvent { label: string; doneBytes: number; totalBytes: number; done: boolean }
export type ProgressReporter = (e: ProgressEvent) => void;

let reporter: ProgressReporter | null = null;

/** Sends the progress of every bar made while fn runs to `to` as well (null: to nobody). */
export async function withProgressReporter<T>(to: ProgressReporter | null, fn: () => Promise<T>): Promise<T> {
  const before = reporter;
  reporter = to;
  try {
    return await fn();
  } finally {
    reporter = before;
  }
}

/** One event to the current reporter only (no bar): a step of work that has no bar of its own. */
export function reportProgress(e: ProgressEvent): void {
  reporter?.(e);
}

/** --json's progress: one `{"progress": ProgressEvent}` line each on stderr (stdout keeps the one document). */
export const jsonProgressLines = (stream: NodeJS.WritableStream = process.stderr): ProgressReporter =>
  (e) => { stream.write(`${JSON.stringify({ progress: e })}\n`); };

export interface ProgressBar {
  update(doneBytes: number): void;
  /** Ends the bar; prints `summary` on its own line if given (also when not on a terminal). */
  done(summary?: string): void;
}

export function progressBar(label: string, totalBytes: number,
  opts: { stream?: NodeJS.WriteStream; nowMs?: () => number } = {}): ProgressBar {
  const stream = opts.stream ?? process.stderr;
  const now = opts.nowMs ?? Date.now;
  const tty = stream.isTTY === true;
  const report = reporter; // the reporter of the work this bar belongs to
  const startMs = now();
  let lastDrawMs = -Infinity;
  let lastReportMs = -Infinity;
  let doneBytes = 0;
  let drawn = false;
  let finished = false;

  const draw = (): void => {
    const elapsedS = Math.max((now() - startMs) / 1000, 1e-3);
    const fraction = totalBytes > 0 ? Math.min(doneBytes / totalBytes, 1) : 1;
    const rate = doneBytes / elapsedS;
    const eta = fraction >= 1 ? '00:00' : rate > 0 ? clock((totalBytes - doneBytes) / rate) : '--:--';
    const tail = ` ${(fraction * 100).toFixed(1).padStart(5)}%  ${(rate / MiB).toFixed(1).padStart(7)} MiB/s  ETA ${eta}`;
    const columns = stream.columns || 80;
    const barWidth = Math.max(0, Math.min(40, columns - 1 - label.length - tail.length - 3));
    const filled = Math.round(fraction * barWidth);
    const bar = barWidth > 0 ? ` [${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]` : '';
    const line = `${label}${bar}${tail}`.slice(0, columns - 1);
    stream.write(`\r${line.padEnd(columns - 1)}`);
    drawn = true;
  };

  return {
    update(bytes: number): void {
      doneBytes = bytes;
      if (finished) return;
      const t = now();
      if (report && t - lastReportMs >= REPORT_MS) {
        lastReportMs = t;
        report({ label, doneBytes, totalBytes, done: false });
      }
      if (!tty || t - lastDrawMs < REDRAW_MS) return;
      lastDrawMs = t;
      draw();
    },
    done(summary?: string): void {
      if (finished) return;
      finished = true;
      report?.({ label, doneBytes, totalBytes, done: true });
      if (tty) {
        if (summary !== undefined) {
          if (drawn) stream.write(`\r${' '.repeat((stream.columns || 80) - 1)}\r`);
        } else if (drawn) {
          draw(); // the final state, left on screen
          stream.write('\n');
        }
      }
      if (summary !== undefined) stream.write(`${summary}\n`);
    },
  };
}

function clock(seconds: number): string {
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const mmss = `${String(m).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  return h > 0 ? `${h}:${mmss}` : mmss;
}
