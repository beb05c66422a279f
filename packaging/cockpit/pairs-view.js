// The pairs view: a card per pair with its state, image age, changed data,
// last and next sync, what needs an admin, the history chart, and "Sync now"
// (the flush: dpsr sync NAME --json) with its streamed progress and result.
// Cards are made once and updated in place, so a poll never moves the focus.
import { dpsr } from './dpsr-api.js';
import { renderChart } from './chart.js';
import { chartPoints, describeState, formatAge, formatBytes, formatTime, pairNotes, stateLevel } from './model.js';

const CARD_HTML = `
  <header class="card-header">
    <h2 class="pair-name"></h2>
    <span class="badge state"></span>
  </header>
  <p class="devices"></p>
  <dl class="numbers">
    <div><dt>Image age</dt><dd class="age"></dd></div>
    <div><dt>Changed since</dt><dd class="dirty"></dd></div>
    <div><dt>Last sync</dt><dd class="last-sync"></dd></div>
    <div><dt>Next sync</dt><dd class="next-sync"></dd></div>
    <div><dt>Policy</dt><dd class="policy"></dd></div>
  </dl>
  <ul class="notes"></ul>
  <figure class="chart"><figcaption>Image age <span class="key key-age"></span> and changed data <span class="key key-dirty"></span></figcaption><div class="chart-box"></div></figure>
  <div class="actions">
    <button type="button" class="btn btn-primary sync-now">Sync now</button>
    <button type="button" class="btn btn-secondary open-files">Files…</button>
    <button type="button" class="btn btn-secondary open-device">Roll back or restore…</button>
  </div>
  <div class="activity" hidden><progress></progress> <span class="activity-text"></span></div>
  <div class="result notice" role="status" hidden></div>`;

export class PairsView {
  constructor(root, { onFiles, onDevice, afterSync }) {
    this.root = root;
    this.on = { onFiles, onDevice, afterSync };
    this.cards = new Map();
    this.compare = new Map(); // name → {maxBytes}: for the progress of a background compare
    this.empty = document.createElement('p');
    this.empty.className = 'empty';
  }

  /** A status document: cards for its pairs, in its order. */
  update(doc) {
    this.root.querySelector('.loading')?.remove();
    for (const [name, card] of this.cards) {
      if (!doc.pairs.some((p) => p.name === name)) {
        card.remove();
        this.cards.delete(name);
      }
    }
    for (const pair of doc.pairs) {
      let card = this.cards.get(pair.name);
      if (!card) {
        card = this.makeCard(pair.name);
        this.cards.set(pair.name, card);
      }
      this.root.append(card); // in the document's order
      this.fill(card, pair);
    }
    this.empty.textContent = 'No pairs yet. Pair a disk with its DPSR drive on the command line: dpsr pair SOURCE DPSR_DRIVE --name NAME.';
    if (doc.pairs.length === 0) this.root.append(this.empty);
    else this.empty.remove();
  }

  /** dpsr could not answer: say so where the pairs would be, never a blank page. */
  failed(text) {
    this.root.querySelector('.loading')?.remove();
    if (this.cards.size > 0) return; // the last answer stays, the banner says what is wrong
    this.empty.textContent = text;
    this.root.append(this.empty);
  }

  focusCard(name) {
    this.cards.get(name)?.querySelector('.sync-now')?.focus();
  }

  makeCard(name) {
    const card = document.createElement('article');
    card.className = 'pair-card';
    card.dataset.pair = name;
    card.innerHTML = CARD_HTML;
    card.querySelector('.pair-name').textContent = name;
    card.setAttribute('aria-label', `Pair ${name}`);
    card.querySelector('.sync-now').addEventListener('click', () => this.sync(name));
    card.querySelector('.open-files').addEventListener('click', () => this.on.onFiles(name));
    card.querySelector('.open-device').addEventListener('click', () => this.on.onDevice(name));
    return card;
  }

  fill(card, pair) {
    const q = (sel) => card.querySelector(sel);
    const badge = q('.state');
    badge.textContent = pair.state;
    badge.title = describeState(pair.state);
    badge.className = `badge state ${stateLevel(pair.state)}`;
    card.dataset.state = pair.state;
    q('.devices').textContent = `${pair.source} → ${pair.drive} · image ${pair.image}${pair.imageTime ? ` of ${formatTime(Date.parse(pair.imageTime))}` : ''} · generation ${pair.generation}`;
    const age = q('.age');
    age.textContent = formatAge(pair.rpoSeconds);
    age.dataset.seconds = pair.rpoSeconds ?? '';
    const changed = pair.dirtyBytes === null ? null : pair.dirtyBytes + (pair.suspectBytes ?? 0);
    q('.dirty').textContent = changed === null ? 'unknown (another dpsr process holds the numbers)' : formatBytes(changed);
    q('.dirty').dataset.bytes = changed ?? '';
    const last = pair.lastSync;
    q('.last-sync').textContent = last
      ? `${formatTime(last.atMs)}: copied ${formatBytes(last.copiedBytes)} in ${(last.durationMs / 1000).toFixed(1)} s`
      : 'never';
    q('.next-sync').textContent = pair.nextSync ? formatTime(Date.parse(pair.nextSync)) : pair.policy === 'manual' ? 'when you sync' : 'none planned';
    q('.policy').textContent = pair.policy;

    const compare = this.compare.get(pair.name) ?? { maxBytes: 0 };
    compare.maxBytes = pair.state === 'needs-compare' ? Math.max(compare.maxBytes, pair.suspectBytes ?? 0) : 0;
    this.compare.set(pair.name, compare);
    const notes = q('.notes');
    notes.replaceChildren(...pairNotes(pair, compare).map((n) => {
      const li = document.createElement('li');
      li.className = `note ${n.level}`;
      li.textContent = n.text;
      if (n.percent !== undefined) {
        const bar = document.createElement('progress');
        bar.max = 100;
        bar.value = n.percent;
        li.append(' ', bar);
      }
      return li;
    }));
    renderChart(q('.chart-box'), chartPoints(pair, Date.now()), Date.now());
  }

  /** Sync now: the flush, with its progress as it comes and its result. */
  async sync(name) {
    const card = this.cards.get(name);
    if (!card) return;
    const q = (sel) => card.querySelector(sel);
    const button = q('.sync-now');
    const activity = q('.activity');
    const bar = activity.querySelector('progress');
    const text = q('.activity-text');
    const result = q('.result');
    button.disabled = true;
    result.hidden = true;
    activity.hidden = false;
    bar.removeAttribute('value');
    text.textContent = 'Syncing…';
    let events = 0;
    try {
      const doc = await dpsr(['sync', name, '--json'], {
        onProgress: (p) => {
          activity.dataset.progressEvents = String(++events);
          bar.max = Math.max(1, p.totalBytes);
          bar.value = p.doneBytes;
          text.textContent = `${p.label}: ${formatBytes(p.doneBytes)} of ${formatBytes(p.totalBytes)}`;
        },
      });
      const r = (doc.syncs ?? [])[0];
      result.className = `result notice ${r?.image === 'point-in-time' ? 'ok' : 'warning'}`;
      result.textContent = r
        ? `Synced: generation ${r.generation}, copied ${formatBytes(r.copiedBytes)} of ${formatBytes(r.dataBytes)} in ${(r.durationMs / 1000).toFixed(1)} s; image ${r.image}${r.notConsistent ? ` (${r.notConsistent})` : ''}.`
        : 'Synced.';
    } catch (err) {
      result.className = 'result notice danger';
      result.textContent = `The sync failed: ${err.message}`;
    } finally {
      result.hidden = false;
      activity.hidden = true;
      button.disabled = false;
      await this.on.afterSync();
    }
  }
}
