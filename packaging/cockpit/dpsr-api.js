// The page's one door to dpsr: cockpit.spawn(["dpsr", ..., "--json"]). The
// CLI's JSON is the API. superuser "try": with administrative access the
// command runs as root; a session that is root already (a local one) runs
// it as it is; without either it runs as the user, and the failure says so.
// stdout and stderr come as one stream, so progress lines arrive as they are
// written; the document and the messages are told apart by model.js.
import { classifyFailure, splitOutput } from './model.js';

/** A dpsr command that did not run or failed: kind is not-installed, not-admin, refused or failed. */
export class DpsrFailure extends Error {
  constructor({ kind, text }, exitStatus) {
    super(text);
    this.kind = kind;
    this.exitStatus = exitStatus;
  }
}

/**
 * Runs dpsr with args (which include --json); resolves with its JSON document, calls
 * onProgress with each progress event on the way; rejects with a DpsrFailure.
 */
export function dpsr(args, { onProgress } = {}) {
  return new Promise((resolve, reject) => {
    let text = '';
    let seen = 0; // up to here, progress was passed on already
    const proc = cockpit.spawn(['dpsr', ...args], { superuser: 'try', err: 'out' });
    proc.stream((data) => {
      text += data;
      const end = text.lastIndexOf('\n') + 1;
      if (end <= seen) return;
      for (const p of splitOutput(text.slice(seen, end)).progress) onProgress?.(p);
      seen = end;
    });
    proc.then(() => {
      const out = splitOutput(text);
      resolve(out.document ?? {});
    }).catch((ex) => {
      const out = splitOutput(text);
      const exitStatus = ex.exit_status ?? null;
      reject(new DpsrFailure(classifyFailure({ problem: ex.problem ?? null, exitStatus, messages: out.messages.length ? out.messages : ex.message ? [ex.message] : [] }), exitStatus));
    });
  });
}
