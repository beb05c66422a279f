// Cockpit for the page's browser test: cockpit-ws on 127.0.0.1 with no TLS
// and a local session (cockpit-bridge runs as this user, root here), pages
// from the XDG_DATA_DIRS given, commands spawned with the environment given;
// and headless Chromium (Debian's chromium) driven by playwright-core, the
// one module that imports it. Both are stopped by the fixture, also when a
// test fails. Missing programs fail with what to install, never a skip.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { type Browser, chromium } from 'playwright-core';
import type { Fixture } from './fixture.js';

export const COCKPIT_WS = '/usr/lib/cockpit/cockpit-ws';
export const CHROMIUM = '/usr/bin/chromium';

/** What is missing to run the page's test, as one sentence (null: nothing). */
export function missingForBrowserTest(): string | null {
  const missing = [[COCKPIT_WS, 'cockpit-ws'], ['/usr/bin/cockpit-bridge', 'cockpit-bridge'], [CHROMIUM, 'chromium']]
    .filter(([file]) => !fs.existsSync(file)).map(([file, pkg]) => `${file} (apt-get install ${pkg})`);
  return missing.length ? `missing ${missing.join(', ')}: tools/setup.sh installs them` : null;
}

/** A port nobody listens on now (the kernel's pick); cockpit-ws binds it next. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host: '127.0.0.1', port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

export interface Cockpit {
  /** The address of a page's file, e.g. pageUrl('dpsr') for dpsr/index.html. */
  pageUrl(page: string): string;
  output(): string;
}

/**
 * Starts cockpit-ws with `env` (PATH, XDG_DATA_DIRS, DPSR_*), as root or through `asUser`
 * (a command prefix such as setpriv's: its bridge, and what the page spawns, run as that user);
 * resolves once it accepts connections.
 */
export async function startCockpit(fx: Fixture, env: NodeJS.ProcessEnv, asUser: string[] = []): Promise<Cockpit> {
  const port = await freePort();
  const args = ['--no-tls', '--address', '127.0.0.1', '--port', String(port), '--local-session=cockpit-bridge'];
  const [cmd, ...rest] = [...asUser, COCKPIT_WS, ...args];
  const ws = spawn(cmd, rest, {
    env, stdio: ['ignore', 'pipe', 'pipe'], detached: true, // its own group: the bridge and what it spawned go with it
  });
  let out = '';
  ws.stdout.on('data', (d) => { out += d; });
  ws.stderr.on('data', (d) => { out += d; });
  fx.defer('stop cockpit-ws', () => {
    try { process.kill(-ws.pid!, 'SIGKILL'); } catch { /* gone */ }
  });
  let exited = false;
  ws.once('exit', () => { exited = true; });
  // Waits on its state: listening, or exited (with what it said).
  while (!(await accepts(port))) {
    if (exited) throw new Error(`cockpit-ws exited: ${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { pageUrl: (page) => `http://127.0.0.1:${port}/cockpit/@localhost/${page}/index.html`, output: () => out };
}

/** Headless Chromium, killed with its helpers by the fixture (synchronously: also on a failed test's exit). */
export async function launchBrowser(fx: Fixture): Promise<Browser> {
  const server = await chromium.launchServer({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  const pid = server.process().pid!;
  fx.defer('stop chromium', () => {
    // playwright starts it as a process group leader: its renderers go with it.
    try { process.kill(-pid, 'SIGKILL'); } catch { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  });
  return chromium.connect(server.wsEndpoint());
}
