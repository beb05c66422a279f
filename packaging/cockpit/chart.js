// The small chart of a pair's card: the image's age and the data changed
// since it over the last hours, from the daemon's history, as an SVG (no
// library). Age on the left axis, changed data on the right.
import { formatAge, formatBytes } from './model.js';

const W = 1000; // viewBox units; stretched to the card's width (lines keep their pixel width)
const H = 100;
const MIN_SPAN_MS = 10 * 60_000; // a young history is not squashed into the right edge
const MAX_SPAN_MS = 6 * 3_600_000;
const NS = 'http://www.w3.org/2000/svg';

function svgEl(name, attrs) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function labels(className, left, right) {
  const row = document.createElement('div');
  row.className = className;
  for (const text of [left, right]) row.append(Object.assign(document.createElement('span'), { textContent: text }));
  return row;
}

/** Draws points ({t, age, dirty}) into container; says so in words when there is nothing to draw. */
export function renderChart(container, points, nowMs) {
  container.replaceChildren();
  const usable = points.filter((p) => p.t >= nowMs - MAX_SPAN_MS);
  container.dataset.points = String(usable.length);
  if (usable.length < 2) {
    const p = document.createElement('p');
    p.className = 'chart-empty';
    p.textContent = 'No history yet: the daemon records the image age and the changed data once a minute and at every sync.';
    container.append(p);
    return;
  }
  const span = Math.min(MAX_SPAN_MS, Math.max(MIN_SPAN_MS, nowMs - usable[0].t));
  const from = nowMs - span;
  const maxAge = Math.max(1, ...usable.map((p) => p.age ?? 0));
  const maxDirty = Math.max(1, ...usable.map((p) => p.dirty ?? 0));
  const x = (t) => ((t - from) / span) * W;
  const y = (v, max) => H - 2 - ((v ?? 0) / max) * (H - 4);
  const polyline = (value, max, cls) => svgEl('polyline', {
    points: usable.map((p) => `${x(p.t).toFixed(1)},${y(value(p), max).toFixed(1)}`).join(' '), class: cls, fill: 'none',
  });
  const last = usable[usable.length - 1];
  const summary = `Over the last ${formatAge(span / 1000)}: image age now ${formatAge(last.age)} (at most ${formatAge(maxAge)}), ` +
    `changed data now ${formatBytes(last.dirty)} (at most ${formatBytes(maxDirty)}).`;
  const svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': summary, class: 'chart-svg' });
  svg.append(svgEl('line', { x1: 0, x2: W, y1: H - 1, y2: H - 1, class: 'chart-axis' }));
  svg.append(polyline((p) => p.dirty, maxDirty, 'chart-dirty'));
  svg.append(polyline((p) => p.age, maxAge, 'chart-age'));
  container.append(
    labels('chart-labels', `age, up to ${formatAge(maxAge)}`, `changed, up to ${formatBytes(maxDirty)}`),
    svg,
    labels('chart-labels', `${formatAge(span / 1000)} ago`, 'now'),
  );
}
