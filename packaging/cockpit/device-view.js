// Rollback and device restore: write the DPSR drive's image back onto the
// source (dpsr rollback NAME, dpsr restore NAME --whole | --partition N).
// A dry run first shows what would be written, or why it cannot be now (a
// mounted source above all), and the button stays disabled with that reason;
// it runs only once the pair's name is typed, with its progress streamed.
import { dpsr } from './dpsr-api.js';
import { formatBytes, formatTime } from './model.js';

function describePlan(r) {
  const verb = r.scope === 'rollback' ? 'Roll back' : r.partition !== null ? `Restore partition ${r.partition} of` : 'Restore the whole of';
  const lines = [`${verb} ${r.source} from the image ${r.image}${r.imageTimeMs ? ` of ${formatTime(r.imageTimeMs)}` : ''}.`];
  if (r.journalSeq !== null) lines.push(`First applies the committed journal transaction ${r.journalSeq} on the DPSR drive.`);
  if (r.mode === 'full') lines.push(`Writes ${formatBytes(r.copyBytes)}.`);
  else if (r.mode === 'compare') lines.push(`${r.why}; writes only what differs (at most ${formatBytes(r.compareBytes)}).`);
  else if (r.copyBytes === 0 && r.compareBytes === 0) lines.push('Nothing to write: the source is the image already, as far as the tracker knows.');
  else lines.push(`Writes back ${formatBytes(r.copyBytes)} changed since the image${r.compareBytes ? ` and compares ${formatBytes(r.compareBytes)} where writes may have gone unseen` : ''}.`);
  for (const w of r.warnings) lines.push(`Warning: ${w}`);
  return lines;
}

export class DeviceView {
  constructor(section, { onBack, afterRun }) {
    this.section = section;
    this.afterRun = afterRun;
    this.pair = null;
    this.planned = null; // the dry run's report, when the write is possible now
    this.running = false;
    this.planning = false;
    this.seq = 0;
    section.querySelector('.back').addEventListener('click', onBack);
    for (const radio of section.querySelectorAll('input[name="scope"]')) radio.addEventListener('change', () => this.plan());
    this.q('.partition-number').addEventListener('change', () => {
      this.q('input[value="partition"]').checked = true;
      this.plan();
    });
    this.q('.confirm-input').addEventListener('input', () => this.updateButton());
    this.q('.device-run').addEventListener('click', () => this.run());
  }

  q(sel) {
    return this.section.querySelector(sel);
  }

  open(pair) {
    this.pair = pair;
    this.q('.confirm-input').value = '';
    this.q('.device-result').hidden = true;
    this.showPair(pair);
    this.plan();
  }

  /** A poll's news of the pair. */
  updatePair(pair) {
    this.showPair(pair);
    // Refused now (a mounted source, say): ask again with each poll, so it shows when it becomes possible.
    if (!this.planned && !this.running && !this.planning) this.plan();
  }

  showPair(pair) {
    this.pair = pair;
    if (!pair) return;
    this.q('#device-title').textContent = `Roll back or restore the source of pair ${pair.name}`;
    this.q('.device-intro').textContent = `Writes the DPSR drive's image (${pair.image}${pair.imageTime ? ` of ${formatTime(Date.parse(pair.imageTime))}` : ''}) back onto ${pair.source}. ` +
      'The source must not be mounted or in use. What it holds now is lost wherever the image is written.';
    this.q('.confirm-name').textContent = pair.name;
  }

  scopeArgs() {
    const scope = this.q('input[name="scope"]:checked').value;
    if (scope === 'rollback') return ['rollback', this.pair.name];
    if (scope === 'whole') return ['restore', this.pair.name, '--whole'];
    return ['restore', this.pair.name, '--partition', String(Number(this.q('.partition-number').value) || 1)];
  }

  /** The dry run: what would be written, or why it cannot be now. */
  async plan() {
    if (!this.pair) return;
    const seq = ++this.seq;
    const box = this.q('.device-plan');
    this.planned = null;
    this.planning = true;
    this.updateButton();
    if (!box.classList.contains('danger')) {
      box.className = 'device-plan notice';
      box.textContent = 'Checking the source and the image…';
    }
    try {
      const doc = await dpsr([...this.scopeArgs(), '--dry-run', '--json']);
      if (seq !== this.seq) return;
      const report = doc.rollback ?? doc.restore;
      this.planned = report;
      box.replaceChildren(...describePlan(report).map((l) => Object.assign(document.createElement('p'), { textContent: l })));
      box.className = `device-plan notice ${report.warnings.length ? 'warning' : 'ok'}`;
    } catch (err) {
      if (seq !== this.seq) return;
      box.className = 'device-plan notice danger';
      box.textContent = `Not possible now: ${err.message}`;
    } finally {
      if (seq === this.seq) this.planning = false;
    }
    this.updateButton();
  }

  updateButton() {
    const button = this.q('.device-run');
    const typed = this.q('.confirm-input').value === this.pair?.name;
    button.disabled = this.running || !this.planned || !typed;
    button.title = !this.planned ? this.q('.device-plan').textContent : !typed ? `Type ${this.pair?.name ?? 'the pair name'} to confirm` : '';
    this.section.dataset.ready = String(!button.disabled);
  }

  async run() {
    const progress = this.q('.device-progress');
    const bar = progress.querySelector('progress');
    const text = progress.querySelector('span');
    const result = this.q('.device-result');
    this.running = true;
    this.updateButton();
    result.hidden = true;
    progress.hidden = false;
    bar.removeAttribute('value');
    text.textContent = 'Writing…';
    try {
      const doc = await dpsr([...this.scopeArgs(), '--yes', '--json'], {
        onProgress: (p) => {
          bar.max = Math.max(1, p.totalBytes);
          bar.value = p.doneBytes;
          text.textContent = `${p.label}: ${formatBytes(p.doneBytes)} of ${formatBytes(p.totalBytes)}`;
        },
      });
      const r = doc.rollback ?? doc.restore;
      result.className = `device-result notice ${r.notClean ? 'warning' : 'ok'}`;
      result.textContent = `${r.scope === 'rollback' ? 'Rolled back' : 'Restored'} ${r.source}: wrote ${formatBytes(r.writtenBytes)}, read ${formatBytes(r.readBytes)} in ${(r.durationMs / 1000).toFixed(1)} s.` +
        `${r.notClean ? ` Note: ${r.notClean}.` : ''}`;
    } catch (err) {
      result.className = 'device-result notice danger';
      result.textContent = `Failed: ${err.message}`;
    } finally {
      progress.hidden = true;
      result.hidden = false;
      this.running = false;
      this.q('.confirm-input').value = '';
      await this.afterRun();
      await this.plan();
    }
  }
}
