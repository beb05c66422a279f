// The command line: parses, dispatches, and maps every error to an exit
// status in one place. User-facing errors print one line, no stack.
import { Command, CommanderError } from 'commander';
import { useNbdConnectTimeout } from '../io/nbd-device.js';
import { DEFAULT_RESERVE, PIN_DIR, settingsFromEnv } from '../base/defaults.js';
import { DpsrError, ERRORS, ExitStatus, UsageError } from '../base/errors.js';
import { manPage } from './man-page.js';
import { parseDuration, parseSize } from '../base/units.js';
import type { ErrnoError } from '../base/native.js';
import { useBootIdFile } from '../devices/boot-id.js';

const EXIT_STATUSES = [
  ['0', 'ok'],
  ['1', 'failure'],
  ['2', 'usage error'],
  ['3', 'refused: unsafe or unsuitable device, missing privilege or kernel support (nothing was changed)'],
  ['4', 'the DPSR drive is not a usable image right now, or older than --max-age'],
] as const;

const ENVIRONMENT = [
  ['DPSR_STATE_DIR', 'state directory (default /var/lib/dpsr)'],
  ['DPSR_SOCKET', 'control socket (default /run/dpsr/dpsr.sock); the owner lock sits beside it'],
  ['DPSR_LOCK', 'the one-owner lock (default owner.lock beside the socket)'],
  ['DPSR_CONFIG', 'the daemon\'s configuration (default /etc/dpsr/dpsr.toml)'],
  ['DPSR_BPF_DIR', `where the tracking programs are pinned (default ${PIN_DIR})`],
  ['DPSR_BOOT_ID_FILE', 'read the boot id from this file (tests that simulate a reboot; default the kernel\'s)'],
  ['DPSR_NBD_CONNECT_TIMEOUT', 'seconds a connection to a DPSR drive on an NBD export may take before it fails (default 30)'],
] as const;

const EXIT_CODES_HELP = `
Exit status:
${EXIT_STATUSES.map(([code, text]) => `  ${code}  ${text}`).join('\n')}

Environment:
${ENVIRONMENT.map(([name, text]) => `  ${name.padEnd(16)} ${text}`).join('\n')}`;

/** The manual's DESCRIPTION: what --help's one line cannot say. */
const MAN_DESCRIPTION = `dpsr keeps a second disk, the DPSR drive, as an identical, bootable,
sector-by-sector copy of a system disk or partition (a pair), and keeps it
current by copying only what changed. An eBPF program on the block layer
records the sectors of every completed write; dpsr keeps them in its state
directory, so neither a restart of dpsr nor a full re-read is ever needed
to know what to copy. Writes that could have gone unseen (a reboot, a full
ring, counts that do not add up) are a gap: dpsr says so and compares
instead of trusting.

A sync brings the DPSR drive to a new point-in-time image: for a mounted
source the last pass runs under a brief freeze (FIFREEZE) of its file
systems, and everything a sync writes goes first through a redo journal in
the drive's reserved tail, so the drive holds the previous image or the new
one, never a mix, whatever crashes. dpsr sync returns when the image is
committed: the flush before a risky change (dpsr sync --all && apt upgrade).

dpsr daemon (the dpsr.service unit) owns tracking while it runs and syncs
each pair by its policy from /etc/dpsr/dpsr.toml: continuous (within an RPO),
scheduled (an OnCalendar= calendar) or manual (only when asked). It compares
in the background after a gap and scrubs what it holds clean. The other
commands talk to it through its control socket, and work alone when none
runs.

A clean reboot needs no compare: the systemd-shutdown hook runs dpsr
shutdown, which leaves a shutdown record in each DPSR drive, and dpsr boot
(dpsr-boot.service, before anything writes) resumes each pair from it when
the kernel's counts prove that nothing wrote to the source meanwhile; a
DPSR drive missing then makes the pair wait, and its record is judged when
it is back.

When the system disk dies, boot the DPSR drive. When an upgrade went wrong,
dpsr rollback writes back only the sectors changed since the image. Single
files and folders come back with dpsr diff and dpsr restore.`;

const FILES = [
  ['/etc/dpsr/dpsr.toml', 'the daemon\'s configuration (policies, scrub, failure hook, metrics file)'],
  ['/var/lib/dpsr', 'the state: pairs and tracked sectors (LMDB), drive locks, the install manifest'],
  ['/run/dpsr/dpsr.sock', 'the daemon\'s control socket (root only) and, beside it, the owner lock'],
  ['/run/dpsr/boot', 'this boot\'s verdicts of dpsr boot (resumed, the gap, or waiting for a missing DPSR drive), for the daemon; initramfs-said: what dpsr boot said in the initramfs'],
  ['/sys/fs/bpf/dpsr', 'the pinned tracking programs and maps (they keep tracking across restarts of dpsr)'],
  ['/etc/systemd/system/dpsr.service, /etc/udev/rules.d/60-dpsr.rules', 'what dpsr install puts in place'],
  ['/etc/systemd/system/dpsr-boot.service', 'runs dpsr boot early in each boot (dpsr install)'],
  ['/usr/lib/systemd/system-shutdown/dpsr', 'runs dpsr shutdown at the end of each clean shutdown (dpsr install)'],
] as const;

function program(): Command {
  const settings = settingsFromEnv(process.env);
  if (settings.bootIdFile) useBootIdFile(settings.bootIdFile);
  if (settings.nbdConnectTimeoutMs) useNbdConnectTimeout(settings.nbdConnectTimeoutMs);
  const cli = new Command('dpsr')
    .description('Keep a second disk, the DPSR drive, as an identical bootable copy of a system disk, copying only the sectors written since the last sync (tracked by eBPF in the block layer).')
    .version(process.env.npm_package_version ?? '0.1.0')
    // A usage error is one line, as every other error is: the hint goes on it.
    .configureOutput({ outputError: (message, write) => write(`dpsr: ${message.trim().replace(/\s*\n\s*/g, ' ')} (run dpsr --help for usage)\n`) })
    .addHelpText('after', EXIT_CODES_HELP)
    .exitOverride();

  const log = (line: string) => console.log(line);

  // --reserve and --no-reserve set one value (the last wins): which were given is seen as they are parsed.
  const reserveChoices = new Set<string>();
  cli.command('pair')
    .on('option:reserve', () => reserveChoices.add('--reserve'))
    .on('option:no-reserve', () => reserveChoices.add('--no-reserve'))
    .description('check both devices, label the DPSR drive, start tracking, and copy the whole source')
    .argument('<SOURCE>', 'the disk or partition to protect')
    .argument('<DPSR_DRIVE>', 'the disk that becomes its copy (everything on it is overwritten)')
    .option('--name <NAME>', 'the pair\'s name (default: the source\'s kernel name)')
    .option('--force', 'overwrite a DPSR drive that carries a file system or partition table')
    .option('--reserve <SIZE>', 'the least room after the copy for dpsr\'s label and journal (the journal takes the whole tail; an apt upgrade changes 1-2 GiB)', DEFAULT_RESERVE)
    .option('--no-reserve', 'no tail: for a drive exactly the source\'s size with a hardware identity (WWN/serial); not with --reserve')
    .option('--history <SIZE|all>', 'keep restore points (earlier images, dpsr history) in SIZE of the tail, or in all the space beyond the source and the reserve')
    .option('--insecure', 'allow a DPSR drive on plain nbd:// to a host that is not loopback (unencrypted)')
    .addHelpText('after', `
Refuses (exit 3, nothing written) a drive that is mounted, swap, the running
system's disk, smaller than the source plus the reserve (and history), of another sector
size, or that carries data (without --force). Tracking starts before the copy,
so writes during it are caught; an interrupted copy resumes when the same
command is run again (or at the next sync). The drive is left read-only.
The DPSR drive may be an NBD export: nbd://HOST[:PORT]/EXPORT (loopback
only, unless --insecure), nbds://HOST/EXPORT?tls-psk-file=FILE (or
tls-certificates=DIR; root-only files), nbd+unix:///EXPORT?socket=PATH.`)
    .action(async (source: string, drive: string, opts: { name?: string; force?: boolean; reserve: string | boolean; history?: string; insecure?: boolean }) => {
      const { pairCommand } = await import('./commands/pair.js');
      if (reserveChoices.size > 1) throw new UsageError('dpsr pair: --reserve SIZE or --no-reserve, not both');
      const noReserve = opts.reserve === false;
      await pairCommand({
        source, drive, name: opts.name, force: opts.force === true, noReserve,
        reserveBytes: noReserve ? 0 : parseSize(String(opts.reserve)),
        historyBytes: opts.history === undefined ? 0 : opts.history === 'all' ? 'all' : parseSize(opts.history),
        insecure: opts.insecure === true,
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
    .option('--quiet-period <SECONDS>', 'an unmounted source must be idle this long (since the last write dpsr saw) before the final pass', '2')
    .option('--timeout <DURATION>', 'give up waiting after this long (e.g. 90s, 10m): exit 1; the DPSR drive keeps a whole image either way')
    .option('--in-place', 'write this sync in place instead of through the journal (for one too big for it): the DPSR drive is no whole image until it ends')
    .option('--point <LABEL>', 'name the image this sync makes: a restore point found by that name (dpsr history, --at LABEL), kept until dropped')
    .addHelpText('after', `
Everything a sync writes goes first into the redo journal in the DPSR
drive's reserved tail, so the drive always holds one whole image. A sync with
more changes than the journal holds is refused (exit 3, nothing written)
unless --in-place is given: then it is written in place, and until it ends
the drive holds a mix (its label says "partial"). Pairs without a journal
(--no-reserve) always write in place.

A mounted source is copied in converging passes, then its file systems are
frozen (FIFREEZE, at most 5 s, a watchdog process thaws them whatever happens)
for the final pass: the image is then one point in time. An unmounted source
must be idle for the quiet period; the final pass is accepted only if nothing
was written meanwhile, else retried, then the sync fails "not quiescent" and
the DPSR drive keeps its previous image.`)
    .action(async (name: string | undefined, opts: { all?: boolean; json?: boolean; freeze: boolean; quietPeriod: string; timeout?: string; inPlace?: boolean; point?: string }) => {
      const { syncCommand } = await import('./commands/sync.js');
      const quietMs = Number(opts.quietPeriod) * 1000;
      if (!Number.isFinite(quietMs) || quietMs < 0) throw new UsageError(`--quiet-period ${opts.quietPeriod}: seconds, e.g. 2 or 0.5`);
      const timeoutMs = opts.timeout !== undefined ? parseDuration(opts.timeout, '--timeout') : undefined;
      if (timeoutMs === 0) throw new UsageError(`--timeout ${opts.timeout}: a duration above 0 (e.g. 10m)`);
      await syncCommand({ name, all: opts.all === true, json: opts.json === true, freeze: opts.freeze, quietMs, timeoutMs, inPlace: opts.inPlace === true, point: pointLabel(opts.point) }, settings, log);
    });

  cli.command('status')
    .description('per pair: state, the image\'s point in time and age (RPO), dirty data, gaps')
    .argument('[NAME]')
    .option('--json', 'one JSON document on stdout')
    .option('--max-age <AGE>', 'exit 4 if an image is older than AGE (e.g. 15m, 1h, 2d)')
    .option('-l, --long', 'every detail, a block per pair')
    .option('--drive <DEV>', 'read a DPSR drive\'s own label, without the state directory')
    .addHelpText('after', `
One line per pair: STATE (consistent, crash-consistent, fuzzy, copying, syncing,
needs-compare, gap, awaiting-drive, inconsistent, error), AGE of the image (the RPO), DIRTY data
since it, LAST and NEXT SYNC, GAPS since the last sync, JOURNAL (tail: crash-safe),
FREEZE p99 over recent syncs, POLICY; then warnings. Colour on a terminal only
(NO_COLOR turns it off). --json: {"daemon": true|false, "pairs": [PairStatus...]},
see the README; with -l each pair also has "history" (the daemon's samples).
Exit 4 when any image is not usable or older than --max-age (for monitoring).
A configuration file the daemon cannot read is said on stderr (one warning line).`)
    .action(async (name: string | undefined, opts: { json?: boolean; long?: boolean; maxAge?: string; drive?: string }) => {
      const { statusCommand } = await import('./commands/status.js');
      process.exitCode = await statusCommand({ name, json: opts.json === true, long: opts.long === true, maxAge: opts.maxAge, drive: opts.drive }, settings, log);
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
    .description('own tracking, answer the control socket (dpsr sync through it returns when committed), sync pairs by their policy, compare and scrub in the background')
    .option('--interval <SECONDS>', 'every pair continuous, synced at most this often (overrides the config file)')
    .option('--tick <SECONDS>', 'how often the kernel\'s records are drained and persisted (default: the config\'s, 1 s)')
    .addHelpText('after', `
Policies per pair come from /etc/dpsr/dpsr.toml (DPSR_CONFIG overrides):
  [pairs.NAME] policy = "continuous", rpo = "30s", min_interval = "10s"
  [pairs.NAME] policy = "scheduled", on_calendar = "Mon..Sat 03:00"   (systemd OnCalendar=; or every = "1h")
  [pairs.NAME] policy = "manual"          (the default: never written behind your back)
  compare_bandwidth, scrub_every, scrub_bandwidth, on_failure, metrics_file (see the README)
Regions that may differ unseen (after a reboot, a gap) are compared in the
background within compare_bandwidth; the scrub compares what is held clean.
Both only read; a difference is written by the next sync.
Continuous replication protects against a dying disk, not against a broken
system it faithfully copies: keep the system disk's pair scheduled or manual.
A bad file exits 2 with the key at fault; SIGHUP reloads it. Stops cleanly on
SIGTERM or SIGINT.`)
    .action(async (opts: { interval?: string; tick?: string }) => {
      const { runDaemon } = await import('../daemon/daemon.js');
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

  cli.command('diff')
    .description('the files that differ between the source\'s file system now and the DPSR drive\'s image: changed, deleted and new since the sync')
    .argument('<NAME>')
    .argument('[PATH]', 'a file or folder: absolute under the source\'s mount point, or relative to its file system\'s root (default: all of it)')
    .option('--in-partition <N>', 'a whole-disk pair: the partition whose file system to compare (default: the one PATH is mounted from, or the only one)')
    .option('--content', 'also compare the bytes of files whose size and mtime are equal')
    .option('--force', 'look at an image that is not one point in time (crash-consistent, fuzzy, partial)')
    .option('--exit-code', 'exit 1 when there are differences (else 0 whenever the comparison ran)')
    .option('--json', 'one JSON document on stdout: {name, image, source, partition, path, entries: [{path, change, why, source, image}], summary}')
    .option('--at <POINT>', 'compare with a restore point instead of the current image: a generation, a time ("2h ago", ISO 8601) or a label (dpsr history)')
    .addHelpText('after', `
Left, the source now; right, the image: ≠ changed (type, size, mtime, mode,
owner, symlink target; with --content also the bytes), - deleted since the sync
(only in the image), + new since the sync (only on the source). Directories
are compared by type, mode and owner; one on one side only is listed once,
with what it holds. The image is mounted read-only (a read-only loop device;
ext4 noload, xfs norecovery,nouuid) in a private directory and unmounted
after; nothing is written to the DPSR drive. The pair's drive lock keeps a
sync from changing the image meanwhile, and a committed journal transaction
of an interrupted sync is applied first (refused while a daemon owns the pair).
Refuses (exit 3) an image that is not one point in time (crash-consistent,
fuzzy, partly applied: without replaying its journal, noload can show stale
metadata) unless --force; and a source that is gone.`)
    .action(async (name: string, pathArg: string | undefined,
      opts: { inPartition?: string; content?: boolean; force?: boolean; exitCode?: boolean; json?: boolean; at?: string }) => {
      const { diffCommand } = await import('./commands/diff.js');
      process.exitCode = await diffCommand({
        name, path: pathArg, inPartition: partitionNumber(opts.inPartition, '--in-partition'), content: opts.content === true,
        force: opts.force === true, json: opts.json === true, exitCode: opts.exitCode === true, at: opts.at,
      }, settings, log);
    });

  /** A partition number option (1, 2, ...), or undefined when not given. */
  const partitionNumber = (text: string | undefined, option: string): number | undefined => {
    if (text === undefined) return undefined;
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new UsageError(`${option} ${text}: a partition number, e.g. 2`);
    return n;
  };

  cli.command('restore')
    .description('copy files or folders back from the DPSR drive\'s image (owner, mode, times, xattrs, ACLs, links kept); with --partition or --whole, write the image back to the source device')
    .argument('<NAME>')
    .argument('[PATH...]', 'files or folders: absolute under the source\'s mount point, or relative to its file system\'s root')
    .option('--to <DIR>', 'restore under DIR (each PATH as DIR/its name) instead of to its place on the source')
    .option('--overwrite', 'replace files that are newer at the destination than the image\'s copy')
    .option('--content', 'also compare the bytes of files whose size and mtime are equal, and replace those that differ (finds damage that kept both; reads every such file twice)')
    .option('--dry-run', 'list what would be created or replaced (with --partition/--whole: what would be written), write nothing')
    .option('--in-partition <N>', 'a whole-disk pair: the partition whose file system PATH is in (default: the one PATH is mounted from, or the only one)')
    .option('--force', 'restore files from an image that is not one point in time (crash-consistent, fuzzy, partial); with --onto: overwrite a disk that carries a partition table or file system')
    .option('--json', 'one JSON document on stdout: {name, image, partition, to, dryRun, entries: [{path, action, why, newer, image, existing}], summary, durationMs}')
    .option('--partition <N>', 'device restore: write partition N of the image back to the (unmounted) source partition')
    .option('--whole', 'device restore: write the whole image back to the (unmounted) source disk')
    .option('--onto <DEV>', 'with --whole: write the whole image onto DEV, another disk (a new one), instead of the source; DEV must be unused, big enough and blank unless --force')
    .option('--yes', 'device restore: do not ask for confirmation')
    .option('--at <POINT>', 'restore from a restore point instead of the current image (files, or with --partition/--whole the device): a generation, a time ("2h ago", ISO 8601) or a label (dpsr history)')
    .addHelpText('after', `
Files are copied with rsync -aHAX --numeric-ids from the image, mounted
read-only in a private directory (nothing is written to the DPSR drive).
To the original place the source's file system must be mounted read-write.
Files only at the destination are kept. Refuses (exit 3, nothing written)
when anything at the destination is newer than the image's copy (naming
each) unless --overwrite; an image that is not one point in time unless
--force. PATH and --partition/--whole exclude each other (exit 2).
A file whose size and modification time equal the image's copy counts as
unchanged unless --content, which compares the bytes as well.
--whole --onto DEV writes the image (or --at a restore point) onto another
disk, a new one when the source died: refused (exit 3, nothing written)
when DEV is a pair's source or DPSR drive, in use, smaller than the image,
or carries a partition table or file system (unless --force). The tracker
is not touched; from a remote drive it reads the export, never writes it.`)
    .action(async (name: string, paths: string[], opts: {
      to?: string; overwrite?: boolean; content?: boolean; dryRun?: boolean; inPartition?: string; force?: boolean; json?: boolean;
      partition?: string; whole?: boolean; yes?: boolean; at?: string; onto?: string;
    }) => {
      const device = opts.partition !== undefined || opts.whole === true;
      if (device) {
        if (paths.length > 0) throw new UsageError('dpsr restore: give PATHs (files and folders) or --partition/--whole (a device), not both');
        if (opts.partition !== undefined && opts.whole) throw new UsageError('dpsr restore: --partition or --whole, not both');
        const fileOnly = (['to', 'overwrite', 'content', 'inPartition'] as const).filter((k) => opts[k] !== undefined);
        if (fileOnly.length > 0) throw new UsageError(`dpsr restore: ${fileOnly.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} restore files, not a device`);
        const { restoreDeviceCommand } = await import('./commands/restore-device.js');
        await restoreDeviceCommand({
          name, partition: partitionNumber(opts.partition, '--partition'), whole: opts.whole === true, yes: opts.yes === true, json: opts.json === true,
          dryRun: opts.dryRun === true, at: opts.at, onto: opts.onto, force: opts.force,
        }, settings, log);
        return;
      }
      if (opts.yes) throw new UsageError('dpsr restore: --yes is for --partition/--whole');
      if (opts.onto !== undefined) throw new UsageError('dpsr restore: --onto DEV goes with --whole (the whole image onto another disk)');
      const { restoreCommand } = await import('./commands/restore.js');
      process.exitCode = await restoreCommand({
        name, paths, to: opts.to, overwrite: opts.overwrite === true, content: opts.content === true, dryRun: opts.dryRun === true,
        inPartition: partitionNumber(opts.inPartition, '--in-partition'), force: opts.force === true, json: opts.json === true, at: opts.at,
      }, settings, log);
    });

  cli.command('history')
    .description('the restore points kept on the DPSR drive (earlier images): generation, time, consistency, label, space held')
    .argument('<NAME>')
    .option('--json', 'one JSON document on stdout: {name, historyBytes, usedBytes, points: [{generation, time, image, label, bytes, current}], dropped}')
    .option('--drop <GEN>', 'drop restore point GEN alone: says what it freed and what an older point keeps because its image needs it, its records rewritten without the blocks that point holds already (--json: freedBytes, carriedBytes, carriedBy, shadowedKeptBytes)')
    .addHelpText('after', `
A pair keeps restore points when paired with --history SIZE (or all): before
a sync overwrites blocks of the image, their old content is saved in the
DPSR drive's history region, durably and before the first block is written.
Point GEN is the image generation GEN made; the newest is the current image.
restore --at and diff --at read a point read-only (the drive is not written).
When the region (or its 64 KiB index) is full the oldest points go first;
status lists what was dropped. A sync written in place (--in-place) drops
every point.

The configuration (/etc/dpsr/dpsr.toml, a pair's table or [default]) bounds
what is kept: keep = "7d" drops points older than that at the next sync,
keep_points = N keeps at most N. A point labelled by sync --point is kept by
both until it is dropped here; a sync that would need its space is refused
(when_full = "drop-labelled" drops it instead, and status says so).`)
    .action(async (name: string, opts: { json?: boolean; drop?: string }) => {
      const { historyCommand } = await import('./commands/history.js');
      let drop: number | undefined;
      if (opts.drop !== undefined) {
        drop = Number(opts.drop);
        if (!/^\d+$/.test(opts.drop) || !Number.isSafeInteger(drop)) throw new UsageError(`--drop ${opts.drop}: a generation number (dpsr history ${name})`);
      }
      await historyCommand({ name, json: opts.json === true, drop }, settings, log);
    });

  /** A restore point's name (sync --point): no spaces or control characters, not a number (those are generations). */
  const pointLabel = (text: string | undefined): string | undefined => {
    if (text === undefined) return undefined;
    if (!/^[A-Za-z][A-Za-z0-9._:+-]{0,63}$/.test(text)) throw new UsageError(`--point ${text}: a name starting with a letter (letters, digits, . _ : + -), e.g. before-upgrade`);
    return text;
  };

  cli.command('rollback')
    .description('return the source to the DPSR drive\'s image, writing back only what changed since it (the source must be unmounted)')
    .argument('[NAME]')
    .option('--yes', 'do not ask for confirmation (scripts)')
    .option('--dry-run', 'print what it would write, and how (tracked or compare), and write nothing')
    .option('--json', 'one JSON document on stdout: {rollback: {name, source, drive, mode, why, copyBytes, compareBytes, writtenBytes, readBytes, journalSeq, clean, ...}}')
    .option('--drive <DEV>', 'without the state directory (a rescue system): the pair from the local drive\'s label (not an NBD export); compares the whole source')
    .option('--source <DEV>', 'with --drive: the source, if it is not at the path the label records (checked against its identity)')
    .option('--at <POINT>', 'return to a restore point instead of the current image: a generation, a time ("2h ago", ISO 8601) or a label (dpsr history)')
    .addHelpText('after', `
Copies back from the DPSR drive the sectors the tracker recorded since the
image (after a gap that leaves history unknown, or with --drive, it reads both
and writes only what differs, and says so). A committed journal transaction is
applied to the drive first. Asks on a terminal (y/N); without one, --yes is
needed (exit 2). Refuses (exit 3, nothing written) a source that is mounted,
swap, in use (exclusive open), or the running system's disk (run it from a
rescue system), and a DPSR drive that is mounted or runs the system (its image
would change while copied: pair in reverse instead). Exit 4: the image is
partial or none. Interrupted, the same command run again completes it.
With --at, the source returns to a restore point: it writes what the tracker
recorded plus every block a later sync changed, read from the point's image
(read-only, the drive is not written); those blocks stay dirty, so the next
sync makes that image the current one (the replaced image stays a point).
With --drive DEV --at, the points are those the drive's label names; the
whole source is compared with the point's image and what differs written.`)
    .action(async (name: string | undefined, opts: { yes?: boolean; dryRun?: boolean; json?: boolean; drive?: string; source?: string; at?: string }) => {
      const { rollbackCommand } = await import('./commands/rollback.js');
      await rollbackCommand({
        name, drive: opts.drive, source: opts.source, at: opts.at, yes: opts.yes === true, dryRun: opts.dryRun === true, json: opts.json === true,
      }, settings, log);
    });

  cli.command('revert')
    .description('turn the DPSR drive itself back to a restore point (to boot it), crash-safe through its journal')
    .argument('<NAME>')
    .requiredOption('--at <POINT>', 'the restore point: a generation, a time ("2h ago", ISO 8601) or a label (dpsr history)')
    .option('--drop-newer', 'drop the points newer than it (and the image it replaces) instead of keeping them')
    .option('--yes', 'with --drop-newer: do not ask for confirmation (scripts)')
    .option('--dry-run', 'print what it would write and which points it keeps or drops, and write nothing')
    .option('--json', 'one JSON document on stdout: {revert: {name, point, fromGeneration, generation, writeBytes, keepNewer, newer, journalSeq, warnings}}')
    .addHelpText('after', `
Writes, through one journal transaction, the point's content of every block a
later sync changed (read from the undo records, checked first): killed at any
moment, the drive holds the old image or the reverted one, and the next dpsr
command finishes it. The image it replaces is kept as a restore point, as every
newer one is, unless --drop-newer (asks on a terminal, else needs --yes). The
source is not written: those blocks are dirty, so the next sync copies the
source again (the reverted image then stays a point); boot the DPSR drive
before that. The daemon's policy holds the pair meanwhile: it syncs it again
only after a manual dpsr sync NAME (status says so). Refuses (exit 3, nothing written) a pair
without history or journal, a revert larger than the journal, a mounted drive.`)
    .action(async (name: string, opts: { at: string; dropNewer?: boolean; yes?: boolean; dryRun?: boolean; json?: boolean }) => {
      const { revertCommand } = await import('./commands/revert.js');
      await revertCommand({ name, at: opts.at, keepNewer: opts.dropNewer !== true, yes: opts.yes === true, dryRun: opts.dryRun === true, json: opts.json === true },
        settings, log);
    });

  cli.command('shutdown')
    .description('at the end of a clean shutdown: write each pair\'s shutdown record into its DPSR drive, so the next boot needs no compare')
    .option('--json', 'one JSON document on stdout')
    .addHelpText('after', `
Run by the systemd-shutdown hook (/usr/lib/systemd/system-shutdown/dpsr, put in
place by dpsr install) after every service has stopped and every file system
is read-only; other init systems call it from their last script. For each pair
it drains what the kernel recorded, judges the counts, and writes into the
drive's reserved tail: the changed, discarded and suspect regions, a cut but
uncommitted generation, the source's write counter, this boot's id and a
fingerprint of the source's file-system superblocks; it reads the counter
again afterwards and voids the record if anything wrote meanwhile. Nothing
is released from the kernel: run again, it writes the same. One line per pair;
exit 0 when every pair got its record, 1 otherwise (that pair is compared after
the boot: a DPSR drive missing, a tail with no room for the record, a source
still mounted read-write, a pair still waiting for its drive since the boot).
Refused while the daemon owns tracking (stop it first).`)
    .action(async (opts: { json?: boolean }) => {
      const { shutdownCommand } = await import('./commands/shutdown.js');
      process.exitCode = await shutdownCommand({ json: opts.json === true }, settings, log);
    });

  cli.command('boot')
    .description('early in a boot: attach tracking before anything writes, and resume each pair from its shutdown record with no gap')
    .option('--json', 'one JSON document on stdout')
    .option('--wait <DURATION>', 'wait this long for a source device to appear', '10s')
    .addHelpText('after', `
Run by the initramfs script before the root is checked and mounted (with
DPSR_STATE_DIR on the root mounted read-only for that moment), then by
dpsr-boot.service (no default dependencies, before systemd-fsck-root,
systemd-remount-fs and the local file systems), which prints what dpsr boot
said in the initramfs or runs it where it did not run or failed there. It
attaches the programs, tracks every pair's source, then judges: when the
kernel counted no write to the source before tracking began, the record was
written by the previous boot for this pair at its current generation, and the
superblock fingerprint matches, the pair resumes with the record's regions
and no gap. Otherwise a gap with its cause: unclean-shutdown (no record, or
one that cannot be trusted), written-before-attach, changed-offline; the
daemon then compares in the background. Each record is erased durably as it
is read. A DPSR drive that is missing makes the pair wait: the source is
tracked, what was proved at that moment is kept, status says awaiting-drive,
nothing is synced, and the record is judged with those values when the drive
is back (the next dpsr command or the daemon's tick; dpsr boot run again).
The state directory may be read-only: the verdicts are kept in
/run/dpsr/boot for the daemon, which runs the same adoption itself when
dpsr boot did not. Exit 0 whatever the verdicts.`)
    .action(async (opts: { json?: boolean; wait: string }) => {
      const { bootCommand } = await import('./commands/boot.js');
      process.exitCode = await bootCommand({ json: opts.json === true, waitMs: parseDuration(opts.wait, '--wait') }, settings, log);
    });

  cli.command('install')
    .description('put the systemd unit, the udev rule (and initramfs hook), a /usr/local/sbin/dpsr wrapper for this dpsr, the manual page and the Cockpit page in place')
    .option('--root <DIR>', 'install into the system under DIR (an image, a chroot)', '/')
    .option('--dry-run', 'print what would be written; write nothing')
    .addHelpText('after', `
Writes /usr/local/sbin/dpsr, /etc/systemd/system/dpsr.service,
/etc/systemd/system/dpsr-boot.service (dpsr boot early in each boot; pulled
in by dpsr.service), /usr/lib/systemd/system-shutdown/dpsr (dpsr shutdown at
the end of each clean shutdown), /etc/udev/rules.d/60-dpsr.rules, /etc/initramfs-tools/hooks/dpsr and
/etc/initramfs-tools/scripts/local-premount/dpsr (when /etc/initramfs-tools exists: node and dpsr in the
initramfs, which applies a sync committed on a booted DPSR drive, or runs dpsr boot, before the root is
mounted), /usr/local/share/man/man8/dpsr.8, the Cockpit
page in /usr/local/share/cockpit/dpsr ("DPSR drives" in Cockpit), an example
/etc/dpsr/dpsr.toml when there is none (never over yours), and a manifest in /var/lib/dpsr for dpsr uninstall;
then prints the commands to run next. Refuses (exit 3, nothing written) to
overwrite a file it did not write, or that was changed since it wrote it.`)
    .action(async (opts: { root: string; dryRun?: boolean }) => {
      const { installCommand } = await import('./commands/install.js');
      installCommand({ root: opts.root, dryRun: opts.dryRun === true, manPage: manual(cli) }, log);
    });

  cli.command('uninstall')
    .description('remove what dpsr install put in place; keeps the configuration and the state')
    .option('--root <DIR>', 'the system under DIR', '/')
    .addHelpText('after', `
Removes exactly the files in install's manifest that are as it wrote them
(a changed one is left and named). Refuses (exit 3, nothing removed) while the
service is enabled (systemctl disable --now dpsr first) or without a manifest.`)
    .action(async (opts: { root: string }) => {
      const { uninstallCommand } = await import('./commands/install.js');
      uninstallCommand({ root: opts.root }, log);
    });

  cli.command('udev-probe')
    .description('what the udev rule runs for a block device: KEY=value lines when it is a DPSR drive or a partition of one')
    .argument('<DEVNAME>', 'the device node, e.g. /dev/sdb or /dev/sdb1')
    .option('--set-readonly', 'make a DPSR drive read-only (BLKROSET), as the rule does on "add"')
    .addHelpText('after', `
Prints DPSR_DRIVE=1, DPSR_PAIR=NAME, DPSR_SOURCE_PRESENT=0|1, and while the
source is present the properties that hide the copy (UDISKS_IGNORE=1,
UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG=1: no by-uuid links, ...). Never
for the disk the running system's / is on (DPSR_BOOTED=1). Prints nothing for
any other device, and on any error: it always exits 0.`)
    .action((device: string, opts: { setReadonly?: boolean }) => {
      return import('./commands/udev-probe.js').then(({ udevProbeCommand }) =>
        udevProbeCommand({ device, setReadOnly: opts.setReadonly === true }, (s) => process.stdout.write(s)));
    });

  cli.command('recover')
    .description('finish, from the DPSR drive alone, a sync that was committed but not completely applied when the source died')
    .argument('<DRIVE>', 'the DPSR drive')
    .option('--json', 'one JSON document on stdout')
    .addHelpText('after', `
For a rescue system whose state directory died with the source: dpsr status
--drive DRIVE exits 4 and says so when this is needed. It applies the last
committed journal transaction (it needs only the drive) and records it in the
drive's label; the drive then holds the image that sync made. Refuses a mounted
drive (exit 3).`)
    .action(async (drive: string, opts: { json?: boolean }) => {
      const { recoverCommand } = await import('./commands/recover.js');
      await recoverCommand({ drive, json: opts.json === true }, settings, log);
    });

  cli.command('man', { hidden: true })
    .description('print this manual page (roff): dpsr man | man -l -')
    .action(() => { process.stdout.write(manual(cli)); });

  cli.command('demo')
    .description('the built-in demo: a loop-backed disk, tracked with the real programs, a workload, what was seen vs written; cleans up after itself')
    .action(async () => {
      const { demoCommand } = await import('./commands/demo.js');
      if (!(await demoCommand(settings))) process.exitCode = ExitStatus.failure;
    });

  return cli;
}


/** dpsr(8), from the command definitions above. */
function manual(cli: Command): string {
  return manPage(cli, {
    version: cli.version() ?? '', description: MAN_DESCRIPTION, exitStatuses: EXIT_STATUSES,
    errors: Object.entries(ERRORS).map(([code, [status, meaning]]) => [code, `${meaning} (exit ${ExitStatus[status]})`] as const), environment: ENVIRONMENT, files: FILES,
    seeAlso: ['systemd.time(7)', 'fsfreeze(8)', 'losetup(8)', 'udev(7)', 'bpftool(8)'],
  });
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
  // `dpsr status | head`: a reader that went away is not an error worth a stack trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  try {
    await program().parseAsync(argv, { from: 'user' });
  } catch (err) {
    process.exitCode = report(err);
  }
}
