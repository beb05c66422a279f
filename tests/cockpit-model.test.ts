// The Cockpit page's model (packaging/cockpit/model.js, plain JavaScript run
// by the browser) under node: every state a pair can be in is said in words,
// never left blank (a failed sync's reason, a compare's progress, a running
// sync); dpsr's output is split into progress, document and messages; a
// failure is told apart (not installed, no administrative access, refused);
// a folder's rows align both sides and mark what differs inside.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { DPSR_BIN } from './helpers/fixture.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const model: any = await import(pathToFileURL(path.resolve(path.dirname(DPSR_BIN), '../packaging/cockpit/model.js')).href);

const pair = (over: Record<string, unknown> = {}) => ({
  name: 'p', state: 'consistent', usable: true, image: 'point-in-time', rpoSeconds: 30, dirtyBytes: 0, suspectBytes: 0,
  gapsSinceSync: [], warnings: [], lastError: null, history: [], ...over,
});

test('every state says something: a failed sync\'s reason, a compare with its progress, a running sync, a gap, no image', () => {
  assert.equal(model.pairNotes(pair(), { maxBytes: 0 }), []);
  const failed = model.pairNotes(pair({ lastError: 'pair p: the source is frozen already, by another program' }), { maxBytes: 0 });
  assert.equal(failed, [{ level: 'danger', text: 'The last sync failed: pair p: the source is frozen already, by another program' }]);
  const comparing = model.pairNotes(pair({ state: 'needs-compare', suspectBytes: 25 << 20, usable: false }), { maxBytes: 100 << 20 });
  assert.ok(comparing.some((n: { text: string; percent?: number }) => n.percent === 75 && /25 MiB left to compare \(75% of 100 MiB done\)/.test(n.text)), JSON.stringify(comparing));
  assert.ok(model.pairNotes(pair({ state: 'syncing' }), {}).some((n: { text: string }) => /A sync is running/.test(n.text)));
  const gap = model.pairNotes(pair({ state: 'gap', gapsSinceSync: [{ cause: 'ring-drops', atMs: 1, detail: '12 records lost' }] }), {});
  assert.equal(gap.map((n: { text: string }) => n.text), ['Gap (ring-drops): 12 records lost']);
  assert.equal(model.pairNotes(pair({ state: 'error', usable: false, problem: 'pair p: /dev/sdb is gone' }), {})[0], { level: 'danger', text: 'pair p: /dev/sdb is gone' });
  for (const state of ['consistent', 'crash-consistent', 'fuzzy', 'copying', 'syncing', 'needs-compare', 'gap', 'awaiting-drive', 'inconsistent', 'error']) {
    assert.ok(model.describeState(state).length > state.length, state);
    assert.ok(['ok', 'warning', 'danger'].includes(model.stateLevel(state)), state);
  }
  assert.is(model.imageCaveat('point-in-time'), null);
  for (const image of ['crash-consistent', 'fuzzy', 'partial', 'none']) assert.ok(model.imageCaveat(image), image);
});

test('output: progress lines, the document, and messages without "dpsr: "', () => {
  const out = model.splitOutput([
    '{"progress":{"label":"p: sync","doneBytes":0,"totalBytes":10,"done":false}}',
    'dpsr: waiting: pair p\'s DPSR drive is in use by another dpsr command',
    '{"syncs":[{"generation":2}]}',
    '',
  ].join('\n'));
  assert.equal(out.progress, [{ label: 'p: sync', doneBytes: 0, totalBytes: 10, done: false }]);
  assert.equal(out.document, { syncs: [{ generation: 2 }] });
  assert.equal(out.messages, ['waiting: pair p\'s DPSR drive is in use by another dpsr command']);
});

test('failures told apart: not installed, no administrative access, refused, failed', () => {
  assert.is(model.classifyFailure({ problem: 'not-found', exitStatus: null, messages: [] }).kind, 'not-installed');
  assert.is(model.classifyFailure({ problem: null, exitStatus: 127, messages: ['exec: node: not found'] }).kind, 'not-installed');
  assert.is(model.classifyFailure({ problem: null, exitStatus: 3, messages: ['EACCES: permission denied, mkdir \'/var/lib/dpsr\': permission denied; dpsr needs root (CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN)'] }).kind, 'not-admin');
  assert.is(model.classifyFailure({ problem: 'access-denied', exitStatus: null, messages: [] }).kind, 'not-admin');
  const refused = model.classifyFailure({ problem: null, exitStatus: 3, messages: ['the source /dev/sda is in use: it is mounted on /'] });
  assert.equal(refused, { kind: 'refused', text: 'the source /dev/sda is in use: it is mounted on /' });
  assert.is(model.classifyFailure({ problem: null, exitStatus: 1, messages: [] }).text, 'dpsr exited with status 1');
});

test('a folder\'s rows: both sides by name, the change, differences inside a folder, what can be restored', () => {
  const meta = (type: string) => ({ type, size: 1, mtime: '2025-01-01T00:00:00.000Z', mode: '0644', uid: 0, gid: 0 });
  const rows = model.folderRows({
    path: '/docs',
    entries: [{ path: 'docs/sub/deep.txt', change: 'deleted' }, { path: 'docs/new.txt', change: 'added' }],
    children: [
      { name: 'new.txt', change: 'added', why: [], source: meta('file'), image: null },
      { name: 'same', change: null, why: [], source: meta('dir'), image: meta('dir') },
      { name: 'sub', change: null, why: [], source: meta('dir'), image: meta('dir') },
    ],
  });
  assert.equal(rows.map((r: { path: string }) => r.path), ['docs/new.txt', 'docs/same', 'docs/sub']);
  assert.equal(rows.map(model.markOf), ['+', '', '•']);
  assert.equal(rows.map(model.restorable), [false, true, true]);
  const top = model.folderRows({ path: '/', entries: [], children: [{ name: 'gone', change: 'deleted', why: [], source: null, image: meta('file') }] });
  assert.is(top[0].path, 'gone');
  assert.is(model.markOf(top[0]), '−');
});

test('chart points: the daemon\'s samples and the pair now', () => {
  const points = model.chartPoints(pair({ history: [{ atMs: 1000, ageSeconds: 5, dirtyBytes: 7 }], rpoSeconds: 9, dirtyBytes: 3, suspectBytes: 1 }), 2000);
  assert.equal(points, [{ t: 1000, age: 5, dirty: 7 }, { t: 2000, age: 9, dirty: 4 }]);
  assert.is(model.formatBytes(1536), '1.5 KiB');
  assert.is(model.formatAge(7200), '2 h');
});

test.run();
