// The command line: parses, dispatches, and maps every error to an exit
// status in one place. User-facing errors print one line, no stack.
import { Command, CommanderError } from 'commander';
import { settingsFromEnv } from './defaults.js';
import { DpsrError, ExitStatus, UsageError } from './errors.js';
import type { ErrnoError } from './native.js';

const EXIT_CODES_HELP = `
Exit status:
  0  ok
  1  failure
  2  usage error
  3  refused: unsafe or unsuitable device, missing privilege or kernel support (nothing was changed)
  4  the DPSR drive is not a usable image right now, or older than --max-age

Environment:
  DPSR_STATE_DIR   state directory (default /var/lib/dpsr)
  DPSR_SOCKET      control socket (default /run/dpsr/dpsr.sock); the owner lock sits beside it
  DPSR_LOCK        the one-owner lock (default owner.lock beside the socket)
  DPSR_CONFIG      the daemon's configuration (default /etc/dpsr/dpsr.toml)
  DPSR_BPF_DIR     where the tracking programs are pinned (default /sys/fs/bpf/dpsr/v1)`;

function program(): Command {
  const settings = settingsFromEnv(process.env);
  const cli = new Command('dpsr')
    .description('Keep a second disk, the DPSR drive, as an identical bootable copy of a system disk, copying only the sectors written since the last sync (tracked by eBPF in the block layer).')
    .version(process.env.npm_package_version ?? '0.1.0')
    .showHelpAfterError('(run dpsr --help for usage)')
    .addHelpText('after', EXIT_CODES_HELP)
    .exitOverride();

  const log = (line: string) => console.log(line);

  cli.command('pair')
    .description('check both devices, label the DPSR drive, start tracking, and copy the whole source')
    .argument('<SOURCE>', 'the disk or partition to protect')
    .argument('<DPSR_DRIVE>', 'the disk that becomes its copy (everything on it is overwritten)')
    .option('--name <NAME>', 'the pair\'s name (default: the source\'s kernel name)')
    .option('--force', 'overwrite a DPSR drive that carries a file system or partition table')
    .option('--reserve <SIZE>', 'room after the copy for dpsr\'s label and journal, e.g. 64M, 1G', '64M')
    .option('--no-reserve', 'no tail: for a drive exactly the source\'s size with a hardware identity (WWN/serial)')
    .addHelpText('after', `
Refuses (exit 3, nothing written) a drive that is mounted, swap, the running
system's disk, smaller than the source plus the reserve, of another sector
size, or that carries data (without --force). Tracking starts before the copy,
so writes during it are caught; an interrupted copy resumes when the same
command is run again (or at the next sync). The drive is left read-only.`)
    .action(async (source: string, drive: string, opts: { name?: string; force?: boolean; reserve: string | boolean }) => {
      const { pairCommand } = await import('./commands/pair.js');
      const noReserve = opts.reserve === false;
      await pairCommand({
        source, drive, name: opts.name, force: opts.force === true, noReserve,
        reserveBytes: noReserve ? 0 : parseSize(String(opts.reserve)),
      }, settings, log);
    });

  cli.command('unpair')
    .description('stop tracking a pair, make its DPSR drive writable again and remove its label')
    .argument('<NAME>')
    .action(async (name: string) => {
      const { unpairCommand } = await import('./commands/unpair.js');
      await unpairCommand({ name }, settings, log);
    });

  cli.command('sync')
    .description('bring the DPSR drive up to date, copying only what changed; returns when done (a flush)')
    .argument('[NAME]')
    .option('--all', 'every pair')
    .option('--json', 'one JSON document on stdout')
    .option('--no-freeze', 'do not freeze a mounted source for the final pass (the image is then crash-consistent at best)')
    .option('--quiet-period <SECONDS>', 'an unmounted source must be idle this long before the final pass', '2')
    .addHelpText('after', `
A mounted source is copied in converging passes, then its file systems are
frozen (FIFREEZE, at most 5 s, a watchdog process thaws them whatever happens)
for the final pass: the image is then one point in time. An unmounted source
must be idle for the quiet period; the final pass is accepted only if nothing
was written meanwhile, else retried, then the sync fails "not quiescent" and
the DPSR drive keeps its previous image.`)
    .action(async (name: string | undefined, opts: { all?: boolean; json?: boolean; freeze: boolean; quietPeriod: string }) => {
      const { syncCommand } = await import('./commands/sync.js');
      const quietMs = Number(opts.quietPeriod) * 1000;
      if (!Number.isFinite(quietMs) || quietMs < 0) throw new UsageError(`--quiet-period ${opts.quietPeriod}: seconds, e.g. 2 or 0.5`);
      await syncCommand({ name, all: opts.all === true, json: opts.json === true, freeze: opts.freeze, quietMs }, settings, log);
    });

  cli.command('status')
    .description('per pair: state, the image\'s point in time and age (RPO), dirty data, gaps')
    .argument('[NAME]')
    .option('--json', 'one JSON document on stdout')
    .option('--max-age <AGE>', 'exit 4 if an image is older than AGE (e.g. 15m, 1h, 2d)')
    .option('--drive <DEV>', 'read a DPSR drive\'s own label, without the state directory')
    .action(async (name: string | undefined, opts: { json?: boolean; maxAge?: string; drive?: string }) => {
      const { statusCommand } = await import('./commands/status.js');
      process.exitCode = await statusCommand({ name, json: opts.json === true, maxAge: opts.maxAge, drive: opts.drive }, settings, log);
    });

  cli.command('verify')
    .description('compare the source with its DPSR drive, sector for sector; exit 1 if they differ')
    .argument('<NAME>')
    .option('--json', 'one JSON document on stdout')
    .action(async (name: string, opts: { json?: boolean }) => {
      const { verifyCommand } = await import('./commands/verify.js');
      process.exitCode = await verifyCommand({ name, json: opts.json === true }, settings, log);
    });

  cli.command('watch')
    .description('print every completed write on DEVICE as it happens, until Ctrl-C')
    .argument('<DEVICE>', 'a disk or partition, e.g. /dev/sda or /dev/nvme0n1p2')
    .option('--json', 'one JSON object per line: {time, device, dev, op, start, end, sectors}; start/end are half-open 512-byte sectors, relative to DEVICE')
    .addHelpText('after', `
Shares tracking with other dpsr users: on exit it removes only what it added.
Records lost because this display fell behind are printed as LOST (event "drops");
writes without a range (SG_IO, NVMe passthrough) as UNKNOWN WRITE (event "unknown-write").`)
    .action(async (device: string, opts: { json?: boolean }) => {
      const { watchCommand } = await import('./commands/watch.js');
      await watchCommand({ device, json: opts.json === true }, settings);
    });

  cli.command('daemon')
    .description('own tracking, answer the control socket (dpsr sync through it returns when committed), sync changed pairs')
    .option('--interval <SECONDS>', 'every pair continuous, synced at most this often (overrides the config file)')
    .option('--tick <SECONDS>', 'how often the kernel\'s records are drained and persisted (default: the config\'s, 1 s)')
    .addHelpText('after', `
Policies per pair come from /etc/dpsr/dpsr.toml (DPSR_CONFIG overrides):
  [pairs.NAME] policy = "continuous", rpo = "30s", min_interval = "10s"
  [pairs.NAME] policy = "scheduled", every = "1h"
  [pairs.NAME] policy = "manual"          (the default: never written behind your back)
Continuous replication protects against a dying disk, not against a broken
system it faithfully copies: keep the system disk's pair scheduled or manual.
A bad file exits 2 with the key at fault; SIGHUP reloads it. Stops cleanly on
SIGTERM or SIGINT.`)
    .action(async (opts: { interval?: string; tick?: string }) => {
      const { runDaemon } = await import('./daemon.js');
      const seconds = (v: string, what: string) => {
        const n = Number(v);
        if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${what} ${v}: seconds, e.g. 30`);
        return n * 1000;
      };
      await runDaemon(settings, {
        tickMs: opts.tick !== undefined ? seconds(opts.tick, '--tick') : null,
        intervalMs: opts.interval !== undefined ? seconds(opts.interval, '--interval') : null,
      }, log);
    });

  cli.command('demo')
    .description('the built-in demo: a loop-backed disk, tracked with the real programs, a workload, what was seen vs written; cleans up after itself')
    .action(async () => {
      const { demoCommand } = await import('./commands/demo.js');
      if (!(await demoCommand(settings))) process.exitCode = ExitStatus.failure;
    });

  return cli;
}

/** "64M", "1G", "512K" or bytes. */
export function parseSize(text: string): number {
  const m = text.trim().match(/^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?$/i);
  if (!m) throw new UsageError(`size "${text}": use a number with K, M, G or T (e.g. 64M)`);
  const exp = ' KMGT'.indexOf((m[2] || ' ').toUpperCase());
  return Math.round(Number(m[1]) * 1024 ** exp);
}

/** Maps an error to its exit status and one line on stderr. */
function report(err: unknown): number {
  if (err instanceof CommanderError) {
    // Help and version exit 0; everything else commander rejects is usage.
    return err.exitCode === 0 ? ExitStatus.ok : ExitStatus.usage;
  }
  if (err instanceof DpsrError) {
    process.stderr.write(`dpsr: ${err.message}\n`);
    return err.exitStatus;
  }
  const e = err as ErrnoError;
  if (e?.code === 'EPERM' || e?.code === 'EACCES') {
    process.stderr.write(`dpsr: ${e.message}: permission denied; dpsr needs root (CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN)\n`);
    return ExitStatus.refused;
  }
  process.stderr.write(`dpsr: ${e?.message ?? String(err)}\n`);
  if (process.env.DPSR_DEBUG) process.stderr.write(`${e?.stack}\n`);
  return ExitStatus.failure;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await program().parseAsync(argv, { from: 'user' });
  } catch (err) {
    process.exitCode = report(err);
  }
}
