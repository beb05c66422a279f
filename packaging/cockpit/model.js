// What the page shows, computed from dpsr's JSON without touching the DOM
// or Cockpit: sizes and ages in words, a pair's state and what needs an
// admin, a command's output split into progress and its document, and the
// rows of the side-by-side view. Pure, so the tests run it under node.

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return '?';
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${UNITS[u]}`;
}

/** An age as people say it: 45 s, 12 min, 3 h, 2 days. */
export function formatAge(seconds) {
  if (seconds === null || seconds === undefined) return 'none';
  const s = Math.max(0, Math.round(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86_400)} days`;
}

export function formatTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** green, yellow or red, as `dpsr status` colours the state. */
export function stateLevel(state) {
  if (state === 'consistent') return 'ok';
  if (state === 'inconsistent' || state === 'error') return 'danger';
  return 'warning';
}

const STATE_WORDS = {
  consistent: 'consistent: the DPSR drive holds one point in time',
  'crash-consistent': 'crash-consistent: taken without a freeze',
  fuzzy: 'fuzzy: the source was written while it was copied',
  copying: 'copying: the first full copy is not finished',
  syncing: 'syncing: a sync is running, or was interrupted and is taken again by the next one',
  'needs-compare': 'needs compare: regions that may differ unseen are being compared',
  gap: 'gap: writes may have gone unseen since the last sync',
  'awaiting-drive': 'awaiting its DPSR drive: it was missing when this boot began; its shutdown record is judged when it is back',
  inconsistent: 'inconsistent: no whole image yet',
  error: 'error: the pair cannot be used now; the reason is below',
};

export const describeState = (state) => STATE_WORDS[state] ?? state;

/**
 * What a pair's card says beside its numbers, most urgent first: each {level, text}.
 * `compare` is {maxBytes}: the most to compare seen since the page opened, for a progress.
 */
export function pairNotes(pair, compare) {
  const notes = [];
  if (pair.problem) notes.push({ level: 'danger', text: pair.problem });
  if (pair.lastError) notes.push({ level: 'danger', text: `The last sync failed: ${pair.lastError}` });
  if (!pair.usable && !pair.problem) notes.push({ level: 'danger', text: 'The DPSR drive holds no usable image right now.' });
  if (pair.state === 'needs-compare' && pair.suspectBytes !== null) {
    const max = Math.max(compare?.maxBytes ?? 0, pair.suspectBytes);
    const done = max > 0 ? Math.round((100 * (max - pair.suspectBytes)) / max) : 0;
    notes.push({ level: 'warning', text: `Comparing: ${formatBytes(pair.suspectBytes)} left to compare (${done}% of ${formatBytes(max)} done).`, percent: done });
  }
  if (pair.state === 'syncing') notes.push({ level: 'warning', text: 'A sync is running (or was cut short: the next sync takes it again).' });
  for (const g of pair.gapsSinceSync ?? []) notes.push({ level: 'warning', text: `Gap (${g.cause}): ${g.detail}` });
  for (const w of pair.warnings ?? []) notes.push({ level: 'warning', text: w });
  return notes;
}

/** An image that is not one point in time: why, or null when it is one. */
export function imageCaveat(image) {
  if (image === 'point-in-time') return null;
  if (image === 'crash-consistent') return 'The image was taken without a freeze (crash-consistent): its file system journal is not replayed when dpsr mounts it, so what it shows can be stale.';
  if (image === 'fuzzy') return 'The image is fuzzy: the source was written while it was copied, so it is no single point in time and what it shows can be stale.';
  if (image === 'partial') return 'The image is partial: a sync written in place was cut short, so it mixes two points in time.';
  return `The DPSR drive holds no image to look at (${image}).`;
}

/**
 * A dpsr command's output (stdout and stderr together): progress lines ({"progress": ...}),
 * its one JSON document, and the rest (messages, "dpsr: why it failed").
 */
export function splitOutput(text) {
  const out = { progress: [], document: null, messages: [] };
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    let parsed = null;
    if (line.startsWith('{')) {
      try { parsed = JSON.parse(line); } catch { parsed = null; }
    }
    if (parsed && parsed.progress) out.progress.push(parsed.progress);
    else if (parsed) out.document = parsed;
    else out.messages.push(line.replace(/^dpsr: /, ''));
  }
  return out;
}

/** Why a dpsr command could not run or failed, in one of a few kinds the page words differently. */
export function classifyFailure({ problem, exitStatus, messages }) {
  const text = messages.join('\n');
  if (problem === 'not-found' || exitStatus === 127) {
    return { kind: 'not-installed', text: text || 'The dpsr command was not found on this machine.' };
  }
  if (problem === 'access-denied' || (exitStatus === 3 && /permission denied|needs root|root only/i.test(text))) {
    return { kind: 'not-admin', text: text || 'Not permitted.' };
  }
  if (problem) return { kind: 'failed', text: text || problem };
  return { kind: exitStatus === 3 ? 'refused' : 'failed', text: text || `dpsr exited with status ${exitStatus}` };
}

/** The daemon's samples and the pair now, as the chart's points: {t (ms), age (s), dirty (bytes)}. */
export function chartPoints(pair, nowMs) {
  const points = (pair.history ?? []).map((s) => ({ t: s.atMs, age: s.ageSeconds, dirty: s.dirtyBytes }));
  if (pair.rpoSeconds !== null || pair.dirtyBytes !== null) {
    points.push({ t: nowMs, age: pair.rpoSeconds, dirty: (pair.dirtyBytes ?? 0) + (pair.suspectBytes ?? 0) });
  }
  return points;
}

/**
 * The rows of one folder in the side-by-side view, from `dpsr diff NAME PATH --json`:
 * each child on both sides (aligned by name), its change, and for a folder on both
 * sides whether anything under it differs (from the diff's entries below PATH).
 */
export function folderRows(diff) {
  const base = diff.path === '/' ? '' : diff.path.replace(/^\//, '');
  const prefix = base === '' ? '' : `${base}/`;
  return (diff.children ?? []).map((c) => {
    const path = prefix + c.name;
    const isDir = (c.source ?? c.image).type === 'dir';
    const inside = isDir && diff.entries.some((e) => e.path.startsWith(`${path}/`));
    return { path, name: c.name, change: c.change, why: c.why, source: c.source, image: c.image, isDir, differsInside: inside };
  });
}

/** What the mark column shows for a row. */
export function markOf(row) {
  if (row.change === 'changed') return '≠';
  if (row.change === 'deleted') return '−';
  if (row.change === 'added') return '+';
  return row.differsInside ? '•' : '';
}

/** A row can be restored when the image has it (a file only on the source has nothing to come back from). */
export const restorable = (row) => row.image !== null;
