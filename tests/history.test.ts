// The daemon's history for the page's chart: a sample a minute (or forced at a sync),
// bounded by its span and count, kept across a restart in its file, an unreadable file
// an empty history; and progress events reach a reporter, throttled, ending with done.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HISTORY_SPAN_MS, History, readHistory } from '../src/daemon/history.js';
import { type ProgressEvent, progressBar, withProgressReporter } from '../src/base/progress.js';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-history-'));
const at = (atMs: number, ageSeconds: number | null = 1, dirtyBytes = 0) => ({ atMs, ageSeconds, dirtyBytes });

test('one sample a minute unless forced; a restart (load) keeps them; other pairs forgotten on keep()', () => {
  const dir = tmp();
  try {
    const file = path.join(dir, 'history.json');
    const h = History.load(file);
    assert.equal(h.samples('p'), []);
    assert.ok(h.add('p', at(0)));
    assert.not.ok(h.add('p', at(59_999)), 'under a minute: dropped');
    assert.ok(h.add('p', at(59_999), true), 'forced (a sync): kept');
    assert.ok(h.add('p', at(120_000, 5, 4096)));
    h.add('gone', at(0));
    h.keep(['p']);
    h.save();
    const again = History.load(file);
    assert.equal(again.samples('p'), [at(0), at(59_999), at(120_000, 5, 4096)]);
    assert.equal(again.samples('gone'), []);
    assert.equal(readHistory(file), { p: [at(0), at(59_999), at(120_000, 5, 4096)] });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bounded: nothing older than the span, at most 720 samples a pair', () => {
  const h = History.load('/nonexistent/history.json');
  for (let t = 0; t <= HISTORY_SPAN_MS + 10 * 60_000; t += 60_000) h.add('p', at(t));
  const s = h.samples('p');
  assert.ok(s[0].atMs >= s.at(-1)!.atMs - HISTORY_SPAN_MS, 'the oldest is within the span');
  for (let i = 0; i < 2000; i++) h.add('p', at(HISTORY_SPAN_MS + 11 * 60_000 + i), true);
  assert.is(h.samples('p').length, 720);
  assert.is(h.samples('p').at(-1)!.atMs, HISTORY_SPAN_MS + 11 * 60_000 + 1999, 'the newest kept');
});

test('an unreadable or foreign file is an empty history, and bad samples are skipped', () => {
  const dir = tmp();
  try {
    const file = path.join(dir, 'history.json');
    fs.writeFileSync(file, '{"pairs": {"p": [');
    assert.equal(readHistory(file), {});
    fs.writeFileSync(file, JSON.stringify({ pairs: { p: [at(1), { atMs: 'x' }, at(2, null)], q: 'no' } }));
    assert.equal(readHistory(file), { p: [at(1), at(2, null)] });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('progress reaches the reporter of the work it belongs to, throttled, and ends with done', async () => {
  const events: ProgressEvent[] = [];
  let now = 0;
  const quiet = { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream;
  await withProgressReporter((e) => events.push(e), async () => {
    const bar = progressBar('p: sync pass 1', 1000, { stream: quiet, nowMs: () => now });
    for (let done = 100; done <= 1000; done += 100) {
      bar.update(done);
      now += 100; // four updates a second pass the 250 ms throttle
    }
    bar.done();
  });
  assert.ok(events.length >= 3 && events.length <= 6, `${events.length} events`);
  assert.equal(events.at(-1), { label: 'p: sync pass 1', doneBytes: 1000, totalBytes: 1000, done: true });
  const outside = progressBar('other', 10, { stream: quiet });
  outside.update(5);
  outside.done();
  assert.is(events.length, events.filter((e) => e.label === 'p: sync pass 1').length, 'a bar made outside reports nowhere');
});

test.run();
