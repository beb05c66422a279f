// A sync's start and end as progress events for whoever asked for them
// (--json's lines, the Cockpit page): a journaled sync draws no progress of
// its own, so the page at least sees it begin, with what it has to copy,
// and end. Passes that do report (a full copy, a sync in place) come between.
import { reportProgress } from '../base/progress.js';
import type { RangeState } from '../kernel/tracker.js';
import { behindBytes } from './pair-status.js';

export async function withSyncProgress<T>(name: string, range: RangeState | undefined, sync: () => Promise<T>): Promise<T> {
  const label = `${name}: sync`;
  const totalBytes = range ? behindBytes(range) : 0;
  reportProgress({ label, doneBytes: 0, totalBytes, done: false });
  const result = await sync();
  reportProgress({ label, doneBytes: totalBytes, totalBytes, done: true });
  return result;
}
