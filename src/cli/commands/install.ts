// dpsr install [--root DIR] [--dry-run] and dpsr uninstall [--root DIR]: put
// the systemd units, the shutdown hook, the udev rule, the initramfs hook, a wrapper that runs
// this dpsr, the manual page and the Cockpit page in place, and take away exactly those again
// (a manifest of what was written, with checksums). An admin's config and dpsr's state are never
// touched; a file install did not write, or that was changed since, is never
// overwritten or removed. Bad input changes nothing: every check comes first.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { writeFileAtomic } from '../../base/atomic-write.js';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RefusedError } from '../../base/errors.js';
import { PROBE_PATH } from '../../drive/udev-probe.js';

/** The dpsr tree this module runs from (dist/src/cli/commands → the top). */
const HOME = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');

const WRAPPER_PATH = '/usr/local/sbin/dpsr';
/** A copy, not a link into this tree: udevd and the initramfs run it wherever this tree lives (a 0700 home, say). */
const PROBE_INSTALL_PATH = '/usr/local/sbin/dpsr-udev-probe';
const UNIT_PATH = '/etc/systemd/system/dpsr.service';
/** Early in a boot: tracking attached, pairs resumed from their shutdown records (dpsr.service wants it). */
const BOOT_UNIT_PATH = '/etc/systemd/system/dpsr-boot.service';
/** systemd-shutdown runs what is here just before the final reboot(2): `dpsr shutdown`. */
const SHUTDOWN_HOOK_PATH = '/usr/lib/systemd/system-shutdown/dpsr';
const RULES_PATH = '/etc/udev/rules.d/60-dpsr.rules';
const INITRAMFS_HOOK_PATH = '/etc/initramfs-tools/hooks/dpsr';
/** Before the root is checked and mounted: a sync committed on a booted DPSR drive applied, or `dpsr boot`. */
const INITRAMFS_PREMOUNT_PATH = '/etc/initramfs-tools/scripts/local-premount/dpsr';
const MAN_PAGE_PATH = '/usr/local/share/man/man8/dpsr.8';
/** Where Cockpit finds pages of local software (XDG_DATA_DIRS/cockpit/NAME); the page is packaging/cockpit/. */
const COCKPIT_PAGE_DIR = '/usr/local/share/cockpit/dpsr';
const CONFIG_PATH = '/etc/dpsr/dpsr.toml';
const MANIFEST_PATH = '/var/lib/dpsr/install-manifest.json';
/** Where `systemctl enable` puts the unit (its [Install] WantedBy=). */
const ENABLED_LINK = '/etc/systemd/system/sysinit.target.wants/dpsr.service';

const EXAMPLE_CONFIG = `# dpsr daemon configuration (dpsr install wrote this example; it is yours now:
# dpsr uninstall leaves it). Pairs not named here are "manual": their DPSR
# drive is written only when you run dpsr sync. SIGHUP (systemctl reload dpsr)
# reloads this file; a bad file makes the daemon exit 2 naming the key.
#
# tick = "1s"                    # how often the kernel's records are drained and persisted
# scrub_every = "7d"             # compare what the tracker holds clean, a full round this often ("off": never)
# scrub_bandwidth = "16M"        # the scrub reads at most this much per second
# on_failure = "mail -s \\"dpsr: $DPSR_EVENT on $DPSR_PAIR\\" root"
#                                # run with /bin/sh -c on a failed sync, a scrub mismatch, a gap:
#                                # DPSR_PAIR, DPSR_EVENT, DPSR_REASON, DPSR_TIME, and JSON on stdin
# metrics_file = "/var/lib/prometheus/node-exporter/dpsr.prom"
#                                # Prometheus text format, for node_exporter's textfile collector
#
# [pairs.system]                 # the system disk: an image you can roll back to
# policy = "scheduled"
# every = "1h"
#
# [pairs.data]                   # a data disk: never older than rpo
# policy = "continuous"
# rpo = "30s"
# min_interval = "10s"
`;

interface ManifestEntry { path: string; sha256: string }
interface Manifest { format: 1; home: string; files: ManifestEntry[] }

interface Planned { path: string; content: string | Buffer; mode: number; what: string; tracked: boolean }

const sha256 = (s: string | Buffer) => crypto.createHash('sha256').update(s).digest('hex');
const under = (root: string, p: string) => path.join(root, p);

function isLink(file: string): boolean {
  try {
    return fs.lstatSync(file).isSymbolicLink();
  } catch {
    return false;
  }
}

function readManifest(root: string): Manifest | null {
  try {
    return JSON.parse(fs.readFileSync(under(root, MANIFEST_PATH), 'utf8')) as Manifest;
  } catch {
    return null;
  }
}

function fileSha(file: string): string | null {
  try {
    return sha256(fs.readFileSync(file));
  } catch {
    return null;
  }
}

/** A shell script that runs this dpsr with this node; the initramfs hook reads the two paths back. */
export function wrapperScript(nodePath: string, home: string): string {
  for (const p of [nodePath, home]) {
    if (/['\n\\]/.test(p)) throw new RefusedError(`${JSON.stringify(p)}: a path with a quote, backslash or newline cannot be installed; move dpsr or node`, 'EPATH');
  }
  return `#!/bin/sh
# dpsr, as put here by \`dpsr install\` (\`dpsr uninstall\` removes it): runs
# the dpsr in DPSR_HOME with this node. The udev rule and the unit run it.
DPSR_NODE='${nodePath}'
DPSR_HOME='${home}'
exec "$DPSR_NODE" "$DPSR_HOME/bin/dpsr.js" "$@"
`;
}

function packaged(name: string): string {
  const file = path.join(HOME, 'packaging', name);
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    throw new RefusedError(`${file}: missing from this dpsr: reinstall it`, 'ENOPACKAGING');
  }
}

/** The compiled udev probe of this tree. */
function builtProbe(): Buffer {
  try {
    return fs.readFileSync(PROBE_PATH);
  } catch {
    throw new RefusedError(`${PROBE_PATH}: missing: build dpsr first (tools/build.sh)`, 'ENOPROBE');
  }
}

/** The Cockpit page: every file of packaging/cockpit/ (plain files, no build step). */
function cockpitPage(): Planned[] {
  const dir = path.join(HOME, 'packaging', 'cockpit');
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => fs.statSync(path.join(dir, n)).isFile()).sort();
  } catch {
    throw new RefusedError(`${dir}: missing from this dpsr: reinstall it`, 'ENOPACKAGING');
  }
  return names.map((n) => ({
    path: path.posix.join(COCKPIT_PAGE_DIR, n), content: fs.readFileSync(path.join(dir, n)), mode: 0o644,
    what: n === 'manifest.json' ? 'the Cockpit page (Cockpit lists it as "DPSR drives")' : 'the Cockpit page', tracked: true,
  }));
}

function plan(root: string, manPage: string): Planned[] {
  const files: Planned[] = [
    { path: WRAPPER_PATH, content: wrapperScript(process.execPath, HOME), mode: 0o755, what: 'the dpsr command the unit runs', tracked: true },
    { path: PROBE_INSTALL_PATH, content: builtProbe(), mode: 0o755, what: 'the udev probe the udev rule runs', tracked: true },
    { path: UNIT_PATH, content: packaged('dpsr.service'), mode: 0o644, what: 'the systemd unit', tracked: true },
    { path: BOOT_UNIT_PATH, content: packaged('dpsr-boot.service'), mode: 0o644, what: 'the boot unit (dpsr boot, before the file systems are written)', tracked: true },
    { path: SHUTDOWN_HOOK_PATH, content: packaged('systemd-shutdown-hook'), mode: 0o755, what: 'the shutdown hook (dpsr shutdown, after every file system is read-only)', tracked: true },
    { path: RULES_PATH, content: packaged('60-dpsr.rules'), mode: 0o644, what: 'the udev rule', tracked: true },
    { path: MAN_PAGE_PATH, content: manPage, mode: 0o644, what: 'the manual page (man 8 dpsr)', tracked: true },
    ...cockpitPage(),
  ];
  if (fs.existsSync(under(root, '/etc/initramfs-tools'))) {
    files.push({ path: INITRAMFS_HOOK_PATH, content: packaged('initramfs-hook'), mode: 0o755, what: 'the initramfs hook', tracked: true });
    files.push({
      path: INITRAMFS_PREMOUNT_PATH, content: packaged('initramfs-premount'), mode: 0o755,
      what: 'the initramfs script (before the root is mounted: a committed sync applied on a booted DPSR drive, dpsr boot)', tracked: true,
    });
  }
  if (!fs.existsSync(under(root, CONFIG_PATH))) {
    files.push({ path: CONFIG_PATH, content: EXAMPLE_CONFIG, mode: 0o644, what: 'an example configuration (all commented)', tracked: false });
  }
  return files;
}

/** Writes a file whole or not at all: a temporary file beside it, then rename. */
function writeAtomic(file: string, content: string | Buffer, mode: number): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomic(file, content, mode);
}

export interface InstallOptions { root: string; dryRun: boolean; manPage: string }

export function installCommand(opts: InstallOptions, log: (s: string) => void): void {
  const root = path.resolve(opts.root);
  const files = plan(root, opts.manPage);
  const manifest = readManifest(root);
  const known = new Map((manifest?.files ?? []).map((e) => [e.path, e.sha256]));

  // Each file hashed once: what is there now, and what install would write.
  const hashes = new Map(files.map((f) => [f, { current: fileSha(under(root, f.path)), wanted: sha256(f.content) }]));

  // Every refusal before the first write.
  for (const f of files.filter((x) => x.tracked)) {
    const { current, wanted } = hashes.get(f)!;
    if (current === null || current === wanted) continue;
    const recorded = known.get(f.path);
    if (recorded === undefined) {
      throw new RefusedError(`${under(root, f.path)} exists and was not written by dpsr install: move it away first`, 'EEXIST');
    }
    if (recorded !== current) {
      throw new RefusedError(`${under(root, f.path)} was changed since dpsr install wrote it: move your version away (or use a drop-in), then install again`, 'ECHANGED');
    }
  }

  const verb = opts.dryRun ? 'would write' : 'wrote';
  for (const f of files) {
    const target = under(root, f.path);
    if (hashes.get(f)!.current === hashes.get(f)!.wanted) {
      log(`unchanged ${target}: ${f.what}`);
      continue;
    }
    if (!opts.dryRun) writeAtomic(target, f.content, f.mode);
    log(`${verb} ${target}: ${f.what}`);
  }
  if (fs.existsSync(under(root, CONFIG_PATH)) && !files.some((f) => f.path === CONFIG_PATH)) {
    log(`kept ${under(root, CONFIG_PATH)}: your configuration`);
  }
  const tracked = files.filter((f) => f.tracked);
  // Files an older install wrote that this one no longer does stay listed, so uninstall still removes them.
  const entries = new Map((manifest?.files ?? []).map((e) => [e.path, e.sha256]));
  for (const f of tracked) entries.set(f.path, hashes.get(f)!.wanted);
  const next: Manifest = { format: 1, home: HOME, files: [...entries].map(([p, s]) => ({ path: p, sha256: s })) };
  if (!opts.dryRun) writeAtomic(under(root, MANIFEST_PATH), `${JSON.stringify(next, null, 2)}\n`, 0o600);
  log(`${verb} ${under(root, MANIFEST_PATH)}: what dpsr uninstall removes`);

  const inTarget = root === '/' ? '' : ` (on the system under ${root})`;
  log(`next${inTarget}:`);
  log('  systemctl daemon-reload && systemctl enable --now dpsr');
  log('  udevadm control --reload && udevadm trigger --subsystem-match=block --action=change');
  if (files.some((f) => f.path === INITRAMFS_HOOK_PATH)) log('  update-initramfs -u');
  if (!fs.existsSync(under(root, '/usr/share/cockpit'))) log('  apt-get install cockpit   (for the page in Cockpit: "DPSR drives")');
}

export function uninstallCommand(opts: { root: string }, log: (s: string) => void): void {
  const root = path.resolve(opts.root);
  const manifest = readManifest(root);
  if (!manifest) throw new RefusedError(`${under(root, MANIFEST_PATH)}: no record of a dpsr install here: nothing to remove`, 'ENOTINSTALLED');
  if (isLink(under(root, ENABLED_LINK))) {
    throw new RefusedError('the dpsr service is enabled: run systemctl disable --now dpsr first', 'EENABLED');
  }
  for (const e of manifest.files) {
    const target = under(root, e.path);
    const current = fileSha(target);
    if (current === null) log(`already gone ${target}`);
    else if (current !== e.sha256) log(`left ${target}: changed since dpsr install wrote it`);
    else {
      fs.rmSync(target);
      log(`removed ${target}`);
    }
  }
  // The page's own folder goes with its files (only when empty: anything else in it is not ours).
  try { fs.rmdirSync(under(root, COCKPIT_PAGE_DIR)); } catch { /* not there, or not empty */ }
  fs.rmSync(under(root, MANIFEST_PATH));
  log(`removed ${under(root, MANIFEST_PATH)}; kept ${under(root, CONFIG_PATH)} and dpsr's state in ${under(root, '/var/lib/dpsr')}`);
  const inTarget = root === '/' ? '' : ` (on the system under ${root})`;
  log(`next${inTarget}:`);
  log('  systemctl daemon-reload && udevadm control --reload');
  if (manifest.files.some((f) => f.path === INITRAMFS_HOOK_PATH)) log('  update-initramfs -u');
}
