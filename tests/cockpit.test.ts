// The Cockpit page in a real browser: headless Chromium (playwright-core)
// against cockpit-ws started here on 127.0.0.1 (no TLS, a local session),
// the page and the dpsr wrapper put in place by `dpsr install --root`, on a
// real ext4 pair of loop devices. It sees the pair, opens the side-by-side
// view, expands a folder, sees ≠ on a changed file and a deleted file in the
// image panel only, restores by clicking (sha256 on disk), by keyboard alone
// (replacing a newer file after the page asks) and into another folder; runs
// "Sync now" and sees its progress and the age drop; finds the history after
// a daemon restart; offers the choices for an image that is not one point in
// time; rolls back through the typed confirmation once the source is
// unmounted (sha256 of both devices); and says so when dpsr is missing or
// cannot run as root.
// Screenshots of each view go to build/screenshots/ (out of git).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { AS_NOBODY, DPSR_BIN, Fixture, ddDirect, freshCliFixture, publicCli, publicDir, runDpsr, runDpsrOk, sh, sha256Of, testAsNobody } from './helpers/fixture.js';
import { type Cockpit, launchBrowser, missingForBrowserTest, startCockpit } from './helpers/cockpit.js';

const SCREENSHOTS = path.resolve(path.dirname(DPSR_BIN), '../build/screenshots');
const WAIT_MS = 60_000; // an upper bound on page states, never a pause: every wait ends as soon as the state is there

let fx: Fixture;
let env: NodeJS.ProcessEnv;
let root: string; // the install root: page and wrapper as dpsr install puts them
let binDir: string; // on cockpit's PATH: dpsr, a link to the installed wrapper
let cockpit: Cockpit;
let browser: Browser;
let page: Page;
let daemon: ChildProcess | null = null;
let source: string;
let drive: string;
let mnt: string;
let goneSha: string;
let changeSha: string;

const sha256File = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
const write = (file: string, data: string | Buffer) => {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, data);
};

async function shot(name: string, on: Page = page): Promise<void> {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  await on.locator('body').screenshot({ path: path.join(SCREENSHOTS, `cockpit-${name}.png`) }); // the page's content, not the empty viewport
}

async function startDaemon(): Promise<void> {
  const child = spawn(process.execPath, [DPSR_BIN, 'daemon', '--tick', '0.5'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  fx.defer('stop daemon', () => { if (child.exitCode === null) child.kill('SIGKILL'); });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => { out += d; if (out.includes('listening')) resolve(); });
    child.stderr!.on('data', (d) => { out += d; });
    child.once('exit', () => reject(new Error(`daemon exited: ${out}`)));
  });
  daemon = child;
}

async function stopDaemon(): Promise<void> {
  const d = daemon!;
  const exited = new Promise((resolve) => d.once('exit', resolve));
  d.kill('SIGTERM');
  await exited;
  daemon = null;
}

/** The card of pair p. */
const card = () => page.locator('article.pair-card[data-pair="p"]');
const row = (p: string) => page.locator(`#files-view .sbs-row[data-path="${p}"]`);

// uvu does not print what a hook threw: say it, then fail every test.
test.before(async () => {
  try {
    await setUp();
  } catch (err) {
    console.log(`  setup failed: ${(err as Error).stack}`);
    throw err;
  }
});

async function setUp(): Promise<void> {
  const missing = missingForBrowserTest();
  if (missing) throw new Error(`the Cockpit page test needs Cockpit and Chromium: ${missing}`);
  ({ fx, env } = freshCliFixture());
  root = path.join(fx.dir, 'root');
  runDpsrOk(env, ['install', '--root', root]);
  binDir = path.join(fx.dir, 'bin');
  fs.mkdirSync(binDir);
  fs.symlinkSync(path.join(root, 'usr/local/sbin/dpsr'), path.join(binDir, 'dpsr'));

  // A real ext4 pair: synced once, then a file changed, one deleted, one added.
  source = fx.loop(96);
  drive = fx.loop(96 + 64);
  sh('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', source]);
  mnt = fx.mount(source, ['-o', 'noatime']);
  for (const name of ['keep.txt', 'change.txt', 'gone.txt']) write(path.join(mnt, 'docs', name), `${name}: ${crypto.randomBytes(600).toString('hex')}\n`);
  for (let i = 0; i < 3; i++) write(path.join(mnt, 'docs/old', `f${i}.bin`), crypto.randomBytes(20_000 + i));
  runDpsrOk(env, ['pair', source, drive, '--name', 'p']);
  runDpsrOk(env, ['sync', 'p']);
  goneSha = sha256File(path.join(mnt, 'docs/gone.txt'));
  changeSha = sha256File(path.join(mnt, 'docs/change.txt'));
  fs.rmSync(path.join(mnt, 'docs/gone.txt'));
  fs.appendFileSync(path.join(mnt, 'docs/change.txt'), 'changed after the sync\n');
  write(path.join(mnt, 'docs/new.txt'), 'new after the sync\n');

  cockpit = await startCockpit(fx, {
    ...env,
    PATH: `${binDir}:${process.env.PATH}`,
    XDG_DATA_DIRS: `${path.join(root, 'usr/local/share')}:/usr/share`,
    LANG: 'C.UTF-8',
  });
  browser = await launchBrowser(fx);
  page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  page.setDefaultTimeout(WAIT_MS);
  page.on('pageerror', (err) => console.log(`  page error: ${err.message}`));
  page.on('console', (m) => { if (m.type() === 'error') console.log(`  console: ${m.text()}`); });
}

test.after(async () => {
  await browser?.close().catch(() => {});
  fx?.cleanup();
});

test('the pairs view shows the pair, its state and age, and says no daemon runs', async () => {
  await page.goto(cockpit.pageUrl('dpsr'));
  await card().locator('.state').filter({ hasText: 'consistent' }).waitFor();
  assert.match(await card().locator('.devices').innerText(), new RegExp(`${source} → ${drive}`));
  assert.ok(Number(await card().locator('.age').getAttribute('data-seconds')) >= 0);
  await page.locator('#daemon-state[data-daemon="stopped"]').waitFor();
  assert.match(await card().locator('.notes').innerText(), /changed since the image; the pair is manual/);
  await shot('pairs-no-daemon');
  await startDaemon();
  await page.locator('#daemon-state[data-daemon="running"]').waitFor();
});

test('side by side: a folder expands; ≠ on the changed file, the deleted one only in the image, the new one only on the source', async () => {
  await card().locator('.open-files').click();
  await row('docs').waitFor();
  assert.is(await row('docs').locator('.col-mark').innerText(), '•', 'differences inside docs');
  await row('docs').locator('.expander').click();
  await row('docs/gone.txt').waitFor();
  assert.is(await row('docs/change.txt').locator('.col-mark').innerText(), '≠');
  assert.is(await row('docs/keep.txt').locator('.col-mark').innerText(), '');
  const cells = (p: string) => row(p).locator('.col-side');
  assert.ok(await cells('docs/gone.txt').nth(0).evaluate((e) => e.classList.contains('absent')), 'not in the source panel');
  assert.match(await cells('docs/gone.txt').nth(1).innerText(), /gone\.txt/);
  assert.match(await cells('docs/new.txt').nth(0).innerText(), /new\.txt/);
  assert.ok(await cells('docs/new.txt').nth(1).evaluate((e) => e.classList.contains('absent')), 'not in the image panel');
  assert.ok(await row('docs/new.txt').locator('input.select').isDisabled(), 'nothing to restore for a new file');
  await shot('side-by-side');
});

test('restore by clicking: the deleted file is back with its bytes (sha256 on disk)', async () => {
  await row('docs/gone.txt').locator('input.select').check();
  await page.locator('#files-view .restore-button').click();
  await page.locator('#files-view .restore-result.ok').waitFor();
  assert.match(await page.locator('#files-view .restore-result').innerText(), /1 created/);
  assert.is(sha256File(path.join(mnt, 'docs/gone.txt')), goneSha);
  // Listed again as it is now: on both sides, the same.
  await page.locator('#files-view .sbs-row[data-path="docs/gone.txt"][data-change="same"]').waitFor();
  await shot('restored');
});

test('keyboard alone reaches Restore; a newer file is replaced only after the page asks', async () => {
  const focused = () => page.evaluate(() => {
    const e = document.activeElement as HTMLElement | null;
    return `${e?.tagName}.${e?.className}|${e?.getAttribute('aria-label') ?? e?.textContent ?? ''}`;
  });
  const tabTo = async (want: RegExp) => {
    for (let i = 0; i < 200; i++) {
      if (want.test(await focused())) return;
      await page.keyboard.press('Tab');
    }
    assert.unreachable(`Tab never reached ${want}`);
  };
  await page.locator('#files-view .back').focus();
  await tabTo(/Select docs\/change\.txt/);
  await page.keyboard.press('Space');
  assert.ok(await row('docs/change.txt').locator('input.select').isChecked());
  await tabTo(/restore-button/);
  await page.keyboard.press('Enter');
  await page.locator('#confirm-dialog[open]').waitFor();
  assert.match(await page.locator('#confirm-dialog').innerText(), /newer at the destination/);
  assert.match(await focused(), /confirm-no/, 'the safe answer has the focus');
  await shot('confirm-newer');
  await page.keyboard.press('Shift+Tab');
  assert.match(await focused(), /confirm-yes/);
  await page.keyboard.press('Enter');
  await page.locator('#files-view .restore-result.ok').filter({ hasText: /1 replaced/ }).waitFor();
  assert.is(sha256File(path.join(mnt, 'docs/change.txt')), changeSha);
});

test('restore into another folder', async () => {
  const to = path.join(fx.dir, 'restored');
  await row('docs/old').locator('input.select').check();
  await page.locator('#files-view .to-other-check').check();
  await page.locator('#files-view .to-dir').fill(to);
  await page.locator('#files-view .restore-button').click();
  await page.locator('#files-view .restore-result.ok').filter({ hasText: to }).waitFor();
  for (let i = 0; i < 3; i++) assert.is(fs.statSync(path.join(to, 'old', `f${i}.bin`)).size, 20_000 + i);
  assert.is(sha256File(path.join(to, 'old/f0.bin')), sha256File(path.join(mnt, 'docs/old/f0.bin')));
});

test('Sync now streams progress and the image age drops', async () => {
  await page.locator('#files-view .back').click();
  const age = async () => Number(await card().locator('.age').getAttribute('data-seconds'));
  // An image at least 2 s old, so that the drop is seen whatever the machine's speed.
  await page.waitForFunction(() => Number(document.querySelector('article[data-pair="p"] .age')?.getAttribute('data-seconds')) >= 2);
  const before = await age();
  await card().locator('.sync-now').click();
  await card().locator('.result.ok').filter({ hasText: /Synced: generation 2/ }).waitFor();
  assert.ok(Number(await card().locator('.activity').getAttribute('data-progress-events')) >= 1, 'progress reached the page');
  await page.waitForFunction((b) => Number(document.querySelector('article[data-pair="p"] .age')?.getAttribute('data-seconds')) < b, before);
  assert.ok(Number(await card().locator('.chart-box').getAttribute('data-points')) >= 3, 'samples before and after the sync, and now');
  await shot('pairs');
});

test('the history survives a daemon restart', async () => {
  const history = () => (JSON.parse(runDpsrOk(env, ['status', 'p', '--json', '-l'])).pairs[0].history as Array<{ atMs: number }>);
  const kept = history();
  assert.ok(kept.length >= 2, `${kept.length} samples`);
  await stopDaemon();
  await startDaemon();
  const after = history();
  assert.equal(after.slice(0, kept.length), kept);
});

test('an image that is not one point in time says why and offers a sync, or to look anyway (--force)', async () => {
  runDpsrOk(env, ['sync', 'p', '--no-freeze']); // mounted and not frozen: crash-consistent
  await page.locator('#refresh').click();
  await card().locator('.devices').filter({ hasText: 'image crash-consistent' }).waitFor();
  await card().locator('.open-files').click();
  const caveat = page.locator('#files-view .files-caveat');
  await caveat.filter({ hasText: /without a freeze \(crash-consistent\)/ }).waitFor();
  assert.is(await page.locator('#files-view .sbs-row').count(), 0, 'nothing shown unasked');
  await shot('not-point-in-time');
  await caveat.locator('.force').click();
  await row('docs').waitFor();
  await page.locator('#files-view .back').click();
  await card().locator('.open-files').click();
  await caveat.locator('button', { hasText: /Sync now/ }).click(); // the other choice: back to the pairs, synced
  await card().locator('.result.ok').filter({ hasText: /Synced: generation 4,.*image point-in-time/ }).waitFor();
});

test('rollback: refused with the reason while the source is mounted; after the pair\'s name is typed, it runs (sha256 of both devices)', async () => {
  await card().locator('.open-device').click();
  await page.locator('#device-view .device-plan.danger').filter({ hasText: /mounted/ }).waitFor();
  await page.locator('#device-view .confirm-input').fill('p');
  assert.ok(await page.locator('#device-view .device-run').isDisabled(), 'disabled while mounted');
  await shot('device-refused');
  fx.unmount(mnt);
  ddDirect(source, 2048, 64); // changed after the image: the rollback takes it back
  // The page asks again with each poll: the refusal gives way to the plan by itself.
  await page.locator('#device-view .device-plan.ok').filter({ hasText: /Writes back/ }).waitFor();
  await page.locator('#device-view .confirm-input').fill('q');
  assert.ok(await page.locator('#device-view .device-run').isDisabled(), 'disabled until the pair\'s name is typed');
  await page.locator('#device-view .confirm-input').fill('p');
  await page.locator('#device-view .device-run:enabled').click();
  await page.locator('#device-view .device-result.ok').filter({ hasText: /Rolled back/ }).waitFor();
  const bytes = 96 * 2 ** 20;
  assert.is(sha256Of(source, bytes), sha256Of(drive, bytes));
  await shot('device-done');
});

test('dpsr missing: the page says so instead of a blank panel', async () => {
  fs.rmSync(path.join(binDir, 'dpsr'));
  await page.reload();
  await page.locator('#banner').filter({ hasText: /dpsr is not installed/ }).waitFor();
  assert.match(await page.locator('#pairs-view').innerText(), /not installed/);
  await shot('not-installed');
});

testAsNobody(test, 'without root (no administrative access), the page says dpsr needs it', async () => {
  // Cockpit as a user who is not root: its bridge runs dpsr as that user. The page and a
  // dpsr that user can read and run; the pair's state stays root's.
  const pub = publicDir(fx);
  runDpsrOk(env, ['install', '--root', path.join(pub, 'root')]);
  fs.mkdirSync(path.join(pub, 'bin'));
  fs.writeFileSync(path.join(pub, 'bin/dpsr'), `#!/bin/sh\nexec ${process.execPath} ${publicCli()} "$@"\n`, { mode: 0o755 });
  const user = await startCockpit(fx, {
    ...env, PATH: `${path.join(pub, 'bin')}:${process.env.PATH}`, XDG_DATA_DIRS: `${path.join(pub, 'root/usr/local/share')}:/usr/share`, LANG: 'C.UTF-8', HOME: pub,
  }, AS_NOBODY);
  const other = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  other.setDefaultTimeout(WAIT_MS);
  await other.goto(user.pageUrl('dpsr'));
  await other.locator('#banner').filter({ hasText: /dpsr needs administrative access/ }).waitFor();
  assert.match(await other.locator('#pairs-view').innerText(), /without administrative access/);
  await shot('not-admin', other);
});

test('dpsr uninstall takes the page away with the rest', () => {
  if (daemon) daemon.kill('SIGKILL');
  const r = runDpsr(env, ['uninstall', '--root', root]);
  assert.is(r.status, 0, r.stderr);
  assert.not.ok(fs.existsSync(path.join(root, 'usr/local/share/cockpit/dpsr')), 'the page folder is gone');
});

test.run();
