// dpsr daemon: the one owner while it runs. It keeps draining the ring
// (flip, persist, clear every tick), answers the control socket (a flush:
// `dpsr sync` returns when the image is committed), and, with an interval,
// syncs every pair that has changed, at most that often.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Settings } from './defaults.js';
import { DpsrError, ExitStatus } from './errors.js';
import { ControlClient, PROTOCOL_VERSION, type Reply, type Request, frameReader, writeFrame } from './protocol.js';
import { type DaemonConfig, type Policy, due, loadConfig } from './config.js';
import { closeSession, openSession, type Session } from './session.js';
import { type SyncReport, syncPair } from './sync.js';

export interface DaemonOptions {
  tickMs: number | null; // how often the ring is drained and persisted (null: the config's)
  intervalMs: number | null; // every pair continuous, synced at most this often (overrides the config)
  quietMs?: number;
}

/** Runs one piece of work on the session at a time: ticks, syncs and requests never overlap. */
function serializer() {
  let chain: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const next = chain.then(fn, fn);
    chain = next.catch(() => {});
    return next;
  };
}

async function syncNames(s: Session, names: string[], opts: { freeze?: boolean; quietMs?: number }): Promise<SyncReport[]> {
  const reports: SyncReport[] = [];
  for (const name of names) reports.push(await syncPair(s, name, opts));
  return reports;
}

async function listen(socketPath: string): Promise<net.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  if (fs.existsSync(socketPath)) {
    const other = await ControlClient.connect(socketPath).catch(() => null);
    if (other) {
      other.close();
      throw new DpsrError(`a dpsr daemon already listens on ${socketPath}`, 'EBUSY');
    }
    fs.unlinkSync(socketPath); // left by a daemon that died
  }
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Root only: the socket is created inside a 0700 directory and then made 0600.
    server.listen(socketPath, () => resolve());
  });
  fs.chmodSync(socketPath, 0o600);
  return server;
}

function withOverrides(config: DaemonConfig, opts: DaemonOptions): DaemonConfig {
  const c = { ...config, tickMs: opts.tickMs ?? config.tickMs };
  if (opts.intervalMs) {
    const every: Policy = { policy: 'continuous', rpoMs: 2 * opts.intervalMs, minIntervalMs: opts.intervalMs };
    return { ...c, pairs: {}, defaultPolicy: every };
  }
  return c;
}

export async function runDaemon(settings: Settings, opts: DaemonOptions, log: (line: string) => void): Promise<void> {
  let config = withOverrides(loadConfig(settings.configPath), opts); // bad config: exit 2 before anything
  const s = await openSession(settings, { waitMs: 0 });
  const serial = serializer();
  let server: net.Server;
  try {
    server = await listen(settings.socketPath);
  } catch (err) {
    await closeSession(s);
    throw err;
  }
  const describe = (c: DaemonConfig) => s.store.pairs().map((p) => `${p.name} ${(c.pairs[p.name] ?? c.defaultPolicy).policy}`).join(', ');
  log(`dpsr daemon: listening on ${settings.socketPath}; pairs: ${describe(config) || 'none'}`);

  const handle = async (req: Request): Promise<unknown> => {
    switch (req.command) {
      case 'hello':
        return { version: PROTOCOL_VERSION };
      case 'sync': {
        const names = req.all ? s.store.pairs().map((p) => p.name) : req.names;
        for (const n of names) if (!s.store.pair(n)) throw new DpsrError(`no pair named ${n}`, 'ENOPAIR');
        return serial(() => syncNames(s, names, { freeze: req.freeze, quietMs: req.quietMs ?? opts.quietMs }));
      }
      case 'status':
        return serial(async () => s.store.pairs().filter((p) => !req.name || p.name === req.name).map((p) => ({
          name: p.name, image: p.image, imageTimeMs: p.imageTimeMs, generation: p.generation,
          dirtyBytes: (s.ranges.get(p.name)?.dirty.totalSectors ?? 0) * 512,
        })));
      default:
        throw new DpsrError(`unknown request ${(req as { command: string }).command}`, 'EPROTO');
    }
  };

  server.on('connection', (sock) => {
    sock.on('data', frameReader((msg) => {
      const { id, ...req } = msg as { id: number } & Request;
      handle(req as Request).then(
        (result) => writeFrame(sock, { id, ok: true, result } satisfies Reply),
        (err: DpsrError) => writeFrame(sock, {
          id, ok: false,
          error: { message: err.message, code: err.code ?? 'EFAIL', exitStatus: err.exitStatus ?? ExitStatus.failure },
        } satisfies Reply),
      );
    }, () => sock.destroy()));
    sock.on('error', () => {});
  });

  const lastSyncStart = new Map<string, number>();
  const syncDue = async () => {
    for (const [name, range] of s.ranges) {
      const pair = s.store.pair(name);
      if (!pair) continue;
      const changed = !range.dirty.isEmpty || !range.suspect.isEmpty || !range.discarded.isEmpty;
      const state = { changed, lastSyncStartMs: lastSyncStart.get(name) ?? pair.lastSync?.atMs ?? 0, imageTimeMs: pair.imageTimeMs };
      if (!due(config.pairs[name] ?? config.defaultPolicy, state, Date.now())) continue;
      lastSyncStart.set(name, Date.now());
      const r = await syncPair(s, name, { quietMs: opts.quietMs });
      log(`dpsr daemon: ${name}: generation ${r.generation}, ${r.copiedBytes} bytes, image ${r.image}`);
    }
  };
  const tick = setInterval(() => {
    void serial(async () => {
      await s.tracker.cycle();
      await syncDue();
    }).catch((e) => log(`dpsr daemon: ${e.message}`));
  }, config.tickMs);
  process.on('SIGHUP', () => {
    try {
      config = withOverrides(loadConfig(settings.configPath), opts);
      log(`dpsr daemon: reloaded ${settings.configPath}; pairs: ${describe(config) || 'none'}`);
    } catch (err) {
      log(`dpsr daemon: ${(err as Error).message}; keeping the previous configuration`);
    }
  });

  await new Promise<void>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
  });
  log('dpsr daemon: stopping');
  clearInterval(tick);
  server.close();
  await serial(() => closeSession(s));
  fs.rmSync(settings.socketPath, { force: true });
}
