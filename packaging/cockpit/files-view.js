// The side-by-side view: the source's tree and the image's tree in two
// panels, aligned by path, folders expanded one at a time (dpsr diff NAME
// PATH --json); select files or folders and Restore (dpsr restore ... --json),
// asking before anything newer is replaced, optionally into another folder.
import { dpsr } from './dpsr-api.js';
import { folderRows, formatBytes, formatTime, imageCaveat, markOf, restorable } from './model.js';

const MARK_TITLES = { '≠': 'differs', '−': 'deleted since the sync: only in the image', '+': 'new since the sync: only on the source', '•': 'differences inside' };

function sideCell(row, meta, depth, expander) {
  const cell = document.createElement('span');
  cell.setAttribute('role', 'gridcell');
  cell.className = 'col-side';
  if (!meta) {
    cell.classList.add('absent');
    return cell;
  }
  cell.style.setProperty('--depth', String(depth));
  if (expander) cell.append(expander);
  else {
    const spacer = document.createElement('span');
    spacer.className = 'expander-spacer';
    cell.append(spacer);
  }
  const name = document.createElement('span');
  name.className = `name type-${meta.type}`;
  name.textContent = meta.type === 'dir' ? `${row.name}/` : meta.type === 'symlink' ? `${row.name} → ${meta.target}` : row.name;
  const size = document.createElement('span');
  size.className = 'size';
  size.textContent = meta.type === 'file' ? formatBytes(meta.size) : meta.type === 'dir' ? '' : meta.type;
  const time = document.createElement('span');
  time.className = 'mtime';
  time.textContent = formatTime(Date.parse(meta.mtime));
  cell.append(name, size, time);
  return cell;
}

export class FilesView {
  constructor(section, { onBack, syncNow }) {
    this.section = section;
    this.syncNow = syncNow;
    this.body = section.querySelector('.sbs-body');
    this.selected = new Set();
    this.pair = null;
    this.force = false;
    this.inPartition = null;
    section.querySelector('.back').addEventListener('click', onBack);
    this.toOther = section.querySelector('.to-other-check');
    this.toDir = section.querySelector('.to-dir');
    this.restoreButton = section.querySelector('.restore-button');
    this.toOther.addEventListener('change', () => {
      this.toDir.disabled = !this.toOther.checked;
      if (this.toOther.checked) this.toDir.focus();
      this.updateBar();
    });
    this.toDir.addEventListener('input', () => this.updateBar());
    this.restoreButton.addEventListener('click', () => this.restore());
  }

  q(sel) {
    return this.section.querySelector(sel);
  }

  /** Opens the view on a pair (its status): the root folder, unless the image is no point in time. */
  open(pair) {
    this.pair = pair;
    this.force = false;
    this.inPartition = null;
    this.selected.clear();
    this.body.replaceChildren();
    this.toOther.checked = false; // each visit restores to the files' places unless asked again
    this.toDir.disabled = true;
    this.q('.restore-result').hidden = true;
    this.q('.files-error').hidden = true;
    this.updatePair(pair);
    this.updateBar();
    const caveat = this.q('.files-caveat');
    const why = pair ? imageCaveat(pair.image) : 'No such pair.';
    caveat.hidden = !why;
    caveat.replaceChildren();
    if (why && pair) {
      // The documented choice: a sync makes a point in time; --force looks anyway.
      const p = document.createElement('p');
      p.textContent = `${why} dpsr refuses to show or restore from it unless forced.`;
      const sync = Object.assign(document.createElement('button'), { type: 'button', className: 'btn btn-primary', textContent: 'Sync now for a point-in-time image' });
      sync.addEventListener('click', () => this.syncNow(pair.name));
      const force = Object.assign(document.createElement('button'), { type: 'button', className: 'btn btn-secondary force', textContent: 'Show it anyway (--force)' });
      force.addEventListener('click', () => {
        this.force = true;
        caveat.hidden = true;
        this.loadRoot();
      });
      caveat.append(p, sync, ' ', force);
      force.disabled = pair.image === 'none'; // no image at all: nothing to look at
      return;
    }
    if (pair) this.loadRoot();
  }

  updatePair(pair) {
    this.pair = pair;
    this.q('#files-title').textContent = pair ? `Files of pair ${pair.name}` : 'Files';
    this.q('.source-head').textContent = pair ? `Source ${pair.source}, now` : 'Source, now';
    this.q('.image-head').textContent = pair ? `DPSR drive ${pair.drive}, image of ${formatTime(Date.parse(pair.imageTime)) || 'no time'}` : 'DPSR drive, image';
  }

  /** dpsr CMD NAME OPTIONS --json ... -- PATHS: paths relative to the file system's root, after `--` (a name may start with -). */
  args(cmd, options, paths) {
    const a = [cmd, this.pair.name, ...options, '--json'];
    if (this.force) a.push('--force');
    if (this.inPartition !== null) a.push('--in-partition', String(this.inPartition));
    return [...a, '--', ...paths];
  }

  showError(err) {
    const box = this.q('.files-error');
    box.replaceChildren(document.createTextNode(err.message));
    box.hidden = false;
    // A whole disk with several file systems: dpsr asks which; offer the choice it names.
    if (/--in-partition/.test(err.message)) {
      const label = document.createElement('label');
      label.textContent = ' Partition: ';
      const input = Object.assign(document.createElement('input'), { type: 'number', min: '1', value: '1', className: 'partition-pick' });
      const go = Object.assign(document.createElement('button'), { type: 'button', className: 'btn btn-secondary', textContent: 'Open' });
      go.addEventListener('click', () => {
        this.inPartition = Number(input.value);
        box.hidden = true;
        this.loadRoot();
      });
      label.append(input);
      box.append(label, ' ', go);
    }
  }

  async loadRoot() {
    this.body.replaceChildren();
    this.selected.clear();
    this.updateBar();
    await this.expandInto(null, '', 0);
  }

  /** Lists the folder `path` ('' the root) below `after` (a row, or null for the top). */
  async expandInto(after, path, depth) {
    const loading = document.createElement('div');
    loading.className = 'sbs-loading';
    loading.setAttribute('role', 'row');
    loading.textContent = 'Comparing…';
    if (after) after.after(loading);
    else this.body.append(loading);
    try {
      const diff = await dpsr(this.args('diff', [], path === '' ? [] : [path]));
      this.q('.files-error').hidden = true;
      const rows = folderRows(diff).map((r) => this.makeRow(r, depth));
      if (rows.length === 0) {
        const empty = document.createElement('div');
        empty.className = 'sbs-empty';
        empty.setAttribute('role', 'row');
        empty.dataset.path = `${path}/`; // collapsed with its folder
        empty.style.setProperty('--depth', String(depth));
        empty.textContent = 'empty on both sides';
        rows.push(empty);
      }
      loading.replaceWith(...rows);
      return true;
    } catch (err) {
      loading.remove();
      this.showError(err);
      return false;
    }
  }

  makeRow(r, depth) {
    const row = document.createElement('div');
    row.setAttribute('role', 'row');
    row.setAttribute('aria-level', String(depth + 1));
    row.className = `sbs-row${r.change ? ` change-${r.change}` : ''}${r.differsInside ? ' differs-inside' : ''}`;
    row.dataset.path = r.path;
    row.dataset.change = r.change ?? 'same';

    const select = document.createElement('span');
    select.setAttribute('role', 'gridcell');
    select.className = 'col-select';
    const box = Object.assign(document.createElement('input'), { type: 'checkbox', className: 'select' });
    box.setAttribute('aria-label', `Select ${r.path}`);
    box.disabled = !restorable(r);
    box.title = box.disabled ? 'Only on the source: nothing to restore from the image' : `Select ${r.path}`;
    box.addEventListener('change', () => {
      if (box.checked) this.selected.add(r.path);
      else this.selected.delete(r.path);
      this.updateBar();
    });
    select.append(box);

    let expander = null;
    if (r.isDir) {
      expander = Object.assign(document.createElement('button'), { type: 'button', className: 'expander', textContent: '▸' });
      expander.setAttribute('aria-expanded', 'false');
      expander.setAttribute('aria-label', `Expand ${r.path}`);
      expander.addEventListener('click', () => this.toggle(row, r, depth, expander));
    }
    const mark = document.createElement('span');
    mark.setAttribute('role', 'gridcell');
    mark.className = 'col-mark';
    const m = markOf(r);
    mark.textContent = m;
    if (m) mark.title = r.change === 'changed' ? `differs: ${r.why.join(', ')}` : MARK_TITLES[m];
    // The expander sits in the panel that has the folder (the source's when both do).
    row.append(select, sideCell(r, r.source, depth, r.source ? expander : null), mark, sideCell(r, r.image, depth, r.source ? null : expander));
    return row;
  }

  async toggle(row, r, depth, expander) {
    const open = expander.getAttribute('aria-expanded') === 'true';
    if (open) {
      for (const child of [...this.body.children]) {
        if (!(child.dataset.path ?? '').startsWith(`${r.path}/`)) continue;
        child.remove();
        this.selected.delete(child.dataset.path);
      }
      expander.setAttribute('aria-expanded', 'false');
      expander.textContent = '▸';
      this.updateBar();
      return;
    }
    expander.setAttribute('aria-expanded', 'true');
    expander.textContent = '▾';
    if (!(await this.expandInto(row, r.path, depth + 1))) {
      expander.setAttribute('aria-expanded', 'false');
      expander.textContent = '▸';
    }
  }

  updateBar() {
    const n = this.selected.size;
    this.q('.selection-count').textContent = n === 0 ? 'Nothing selected' : `${n} selected`;
    const toOk = !this.toOther.checked || this.toDir.value.trim().startsWith('/');
    this.restoreButton.disabled = n === 0 || !toOk;
  }

  /** Asks whether to replace what is newer at the destination; resolves true to go on. */
  confirmNewer(newer) {
    const dialog = document.getElementById('confirm-dialog');
    const body = dialog.querySelector('.confirm-body');
    const p = document.createElement('p');
    p.textContent = `${newer.length} ${newer.length === 1 ? 'entry is' : 'entries are'} newer at the destination than the image's copy. Restoring replaces ${newer.length === 1 ? 'it' : 'them'}; what ${newer.length === 1 ? 'it holds' : 'they hold'} now is lost.`;
    const ul = document.createElement('ul');
    for (const e of newer) {
      const li = document.createElement('li');
      li.textContent = `${e.path} (now ${formatTime(Date.parse(e.existing?.mtime))}, image ${formatTime(Date.parse(e.image?.mtime))})`;
      ul.append(li);
    }
    body.replaceChildren(p, ul);
    return new Promise((resolve) => {
      const yes = dialog.querySelector('.confirm-yes');
      const no = dialog.querySelector('.confirm-no');
      const done = (answer) => {
        yes.removeEventListener('click', onYes);
        no.removeEventListener('click', onNo);
        dialog.removeEventListener('cancel', onNo);
        dialog.close();
        resolve(answer);
      };
      const onYes = () => done(true);
      const onNo = () => done(false);
      yes.addEventListener('click', onYes);
      no.addEventListener('click', onNo);
      dialog.addEventListener('cancel', onNo);
      dialog.showModal();
      no.focus(); // the safe answer first
    });
  }

  async restore() {
    const paths = [...this.selected];
    const to = this.toOther.checked ? ['--to', this.toDir.value.trim()] : [];
    const result = this.q('.restore-result');
    const progress = this.q('.restore-progress');
    result.hidden = true;
    this.restoreButton.disabled = true;
    progress.hidden = false;
    progress.querySelector('span').textContent = `Checking ${paths.length} ${paths.length === 1 ? 'entry' : 'entries'} against the destination…`;
    try {
      const plan = await dpsr(this.args('restore', [...to, '--dry-run'], paths));
      const newer = plan.entries.filter((e) => e.newer);
      let overwrite = [];
      if (newer.length > 0) {
        progress.hidden = true;
        if (!(await this.confirmNewer(newer))) {
          result.className = 'restore-result notice';
          result.textContent = 'Nothing restored: cancelled.';
          return;
        }
        overwrite = ['--overwrite'];
        progress.hidden = false;
      }
      progress.querySelector('span').textContent = 'Restoring…';
      const done = await dpsr(this.args('restore', [...to, ...overwrite], paths));
      const s = done.summary;
      result.className = 'restore-result notice ok';
      result.replaceChildren(document.createTextNode(
        `Restored into ${done.to} in ${(done.durationMs / 1000).toFixed(1)} s: ${s.create} created, ${s.replace} replaced, ${s.attributes} with attributes set, ${s.keep} kept.`));
      const ul = document.createElement('ul');
      for (const e of done.entries.filter((x) => x.action !== 'keep')) {
        const li = document.createElement('li');
        li.textContent = `${e.action} ${e.path}`;
        ul.append(li);
      }
      result.append(ul);
      await this.reload();
    } catch (err) {
      result.className = 'restore-result notice danger';
      result.textContent = `Nothing restored: ${err.message}`;
    } finally {
      progress.hidden = true;
      result.hidden = false;
      this.updateBar();
    }
  }

  /** Lists again what is open, so restored entries show as they are now. */
  async reload() {
    const open = [...this.body.querySelectorAll('.expander[aria-expanded="true"]')].map((b) => b.closest('.sbs-row').dataset.path);
    await this.loadRoot();
    for (const path of open) {
      const row = [...this.body.querySelectorAll('.sbs-row')].find((r) => r.dataset.path === path);
      const expander = row?.querySelector('.expander');
      if (expander) await this.toggle(row, { path }, Number(row.getAttribute('aria-level')) - 1, expander);
    }
  }
}
