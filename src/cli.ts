// The command line: parses, dispatches, and maps every error to an exit
// status in one place. User-facing errors print one line, no stack.
import { Command, CommanderError } from 'commander';
import { settingsFromEnv } from './defaults.js';
import { DpsrError, ExitStatus } from './errors.js';
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
  DPSR_BPF_DIR     where the tracking programs are pinned (default /sys/fs/bpf/dpsr/v1)`;

function program(): Command {
  const settings = settingsFromEnv(process.env);
  const cli = new Command('dpsr')
    .description('Keep a second disk, the DPSR drive, as an identical bootable copy of a system disk, copying only the sectors written since the last sync (tracked by eBPF in the block layer).')
    .version(process.env.npm_package_version ?? '0.1.0')
    .showHelpAfterError('(run dpsr --help for usage)')
    .addHelpText('after', EXIT_CODES_HELP)
    .exitOverride();

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

  cli.command('demo')
    .description('the built-in demo: a loop-backed disk, tracked with the real programs, a workload, what was seen vs written; cleans up after itself')
    .action(async () => {
      const { demoCommand } = await import('./commands/demo.js');
      if (!(await demoCommand(settings))) process.exitCode = ExitStatus.failure;
    });

  return cli;
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
