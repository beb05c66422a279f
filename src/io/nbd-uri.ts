// NBD export URIs (nbd://HOST[:PORT]/EXPORT, nbds:// with TLS,
// nbd+unix:///EXPORT?socket=PATH) and the rules dpsr holds them to before
// it connects: secure by default. Plain TCP leaves the host only with
// --insecure, and a TLS key file must be readable by its owner (root) alone.
import fs from 'node:fs';
import { RefusedError } from '../base/errors.js';

const SCHEMES = new Set(['nbd:', 'nbds:', 'nbd+unix:', 'nbds+unix:']);

/** Whether a DPSR drive argument names an NBD export rather than a local device. */
export function isNbdUri(s: string): boolean {
  return /^nbds?(\+unix)?:\/\//.test(s);
}

/** The URI without its query (key file paths and the like), for messages. */
export function redactUri(uri: string): string {
  const q = uri.indexOf('?');
  if (q < 0) return uri;
  const socket = /[?&]socket=([^&]*)/.exec(uri);
  return uri.slice(0, q) + (socket ? `?socket=${socket[1]}` : '');
}

function parse(uri: string): URL {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new RefusedError(`${uri}: not an NBD URI (nbd://HOST[:PORT]/EXPORT, nbds://… for TLS, nbd+unix:///EXPORT?socket=PATH)`, 'EUSAGE');
  }
  if (!SCHEMES.has(u.protocol)) throw new RefusedError(`${uri}: dpsr speaks nbd://, nbds://, nbd+unix:// and nbds+unix:// only`, 'EUSAGE');
  return u;
}

function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * Refuses what would expose the drive's data or keys: plain TCP to a host
 * that is not loopback (unless `insecure`), a key file or certificate
 * directory others may read or write.
 */
export function checkNbdSecurity(uri: string, insecure: boolean): void {
  const u = parse(uri);
  const tls = u.protocol.startsWith('nbds');
  if (u.protocol === 'nbd:' && !isLoopback(u.hostname) && !insecure) {
    throw new RefusedError(`${redactUri(uri)}: plain NBD would send the disk's data unencrypted to ${u.hostname}: use nbds:// (TLS, with tls-psk-file= or tls-certificates=), or --insecure on a network you trust`, 'EINSECURE');
  }
  const psk = u.searchParams.get('tls-psk-file');
  const certs = u.searchParams.get('tls-certificates');
  if ((psk || certs) && !tls) throw new RefusedError(`${redactUri(uri)}: a TLS key is given but the scheme is not nbds: use nbds://`, 'EUSAGE');
  if (psk) checkPrivate(psk, 'the TLS PSK file');
  if (certs) {
    checkPrivate(certs, 'the TLS certificate directory', true);
    for (const key of ['client-key.pem', 'key.pem']) if (fs.existsSync(`${certs}/${key}`)) checkPrivate(`${certs}/${key}`, 'the TLS private key');
  }
}

/** A credential must belong to root and be closed to others (a directory: not writable by them). */
function checkPrivate(path: string, what: string, directory = false): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch (err) {
    throw new RefusedError(`${what} ${path} cannot be read: ${(err as Error).message}`, 'ECREDENTIALS');
  }
  const open = directory ? st.mode & 0o022 : st.mode & 0o077;
  if (st.uid !== 0 || open) {
    throw new RefusedError(`${what} ${path} must belong to root and be ${directory ? 'writable by root alone (chmod go-w)' : 'readable by root alone (chmod 600)'}: ` +
      `it is owned by uid ${st.uid} with mode ${(st.mode & 0o777).toString(8)}`, 'ECREDENTIALS');
  }
}
