// The page's wiring: polls `dpsr status --json -l`, shows the pairs view or
// one pair's files or device view, and says in the banner when dpsr cannot
// answer at all (not installed, no administrative access), so no panel is
// ever left blank.
import { dpsr } from './dpsr-api.js';
import { PairsView } from './pairs-view.js';
import { FilesView } from './files-view.js';
import { DeviceView } from './device-view.js';

const POLL_MS = 5000; // each poll runs node once: often enough for a page a person watches

const BANNERS = {
  'not-installed': (text) => `dpsr is not installed on this machine: Cockpit could not run the dpsr command (${text}). Install dpsr and run “dpsr install”, which puts /usr/local/sbin/dpsr and this page in place.`,
  'not-admin': (text) => `dpsr needs administrative access: it reads block devices and its state as root. Turn on administrative access in Cockpit's top bar, or log in as an administrator, then Refresh. (dpsr said: ${text})`,
  refused: (text) => `dpsr refused: ${text}`,
  failed: (text) => `dpsr status failed: ${text}`,
};

const $ = (sel) => document.querySelector(sel);

const state = {
  doc: null, // the last status document
  view: 'pairs',
  pairName: null,
  polling: null,
  again: false, // asked while a poll ran: poll once more after it (its answer may predate the change)
};

function showBanner(text) {
  const b = $('#banner');
  b.textContent = text ?? '';
  b.hidden = !text;
}

function showDaemonState(doc) {
  const el = $('#daemon-state');
  if (!doc) {
    el.textContent = '';
    return;
  }
  el.textContent = doc.daemon
    ? 'Daemon running: pairs sync by their policy.'
    : 'No daemon running: nothing syncs by policy and there is no history; Sync now still works (systemctl enable --now dpsr).';
  el.className = `daemon-state ${doc.daemon ? 'ok' : 'warning'}`;
  el.dataset.daemon = doc.daemon ? 'running' : 'stopped';
}

function pairOf(name) {
  return state.doc?.pairs.find((p) => p.name === name) ?? null;
}

function show(view, pairName = null) {
  state.view = view;
  state.pairName = pairName;
  $('#pairs-view').hidden = view !== 'pairs';
  $('#files-view').hidden = view !== 'files';
  $('#device-view').hidden = view !== 'device';
  const pair = pairOf(pairName);
  if (view === 'files') files.open(pair);
  if (view === 'device') device.open(pair);
  if (view === 'pairs') pairs.focusCard(pairName);
}

async function refresh() {
  if (state.polling) {
    state.again = true;
    return state.polling;
  }
  state.polling = (async () => {
    try {
      const doc = await dpsr(['status', '--json', '-l']);
      state.doc = doc;
      showBanner(null);
      showDaemonState(doc);
      pairs.update(doc);
      const pair = pairOf(state.pairName);
      if (state.view === 'files' && pair) files.updatePair(pair);
      if (state.view === 'device' && pair) device.updatePair(pair);
    } catch (err) {
      const text = (BANNERS[err.kind] ?? BANNERS.failed)(err.message);
      showBanner(text);
      showDaemonState(null);
      pairs.failed(err.kind === 'not-installed' ? 'No pairs to show: dpsr is not installed (see above).'
        : err.kind === 'not-admin' ? 'No pairs to show without administrative access (see above).' : 'No pairs to show: dpsr did not answer (see above).');
    } finally {
      $('#pairs-view').setAttribute('aria-busy', 'false');
      state.polling = null;
      if (state.again) {
        state.again = false;
        refresh();
      }
    }
  })();
  return state.polling;
}

const pairs = new PairsView($('#pairs-view'), {
  onFiles: (name) => show('files', name),
  onDevice: (name) => show('device', name),
  afterSync: () => refresh(),
});
const files = new FilesView($('#files-view'), {
  onBack: () => show('pairs', state.pairName),
  syncNow: (name) => {
    show('pairs', name); // where the sync's progress and result are shown
    return pairs.sync(name);
  },
});
const device = new DeviceView($('#device-view'), {
  onBack: () => show('pairs', state.pairName),
  afterRun: () => refresh(),
});

$('#refresh').addEventListener('click', () => refresh());
// Administrative access turned on or off in Cockpit's top bar: ask again at once.
try {
  cockpit.dbus(null, { bus: 'internal' }).proxy('cockpit.Superuser', '/superuser')
    .addEventListener('changed', () => refresh());
} catch { /* an older Cockpit: the next poll sees it */ }
refresh();
setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
