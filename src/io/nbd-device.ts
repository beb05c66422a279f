// An NBD export behind the BlockIo seam, through the addon's libnbd client:
// a DPSR drive on another machine. The export has no BLKROSET (read-only
// between dpsr's writes is a local device's protection; a server's is its
// own --readonly) and discards are writes of zeros the server may
// deallocate, so a discarded range reads as zeros as on a local drive.
import { DpsrError, RefusedError } from '../base/errors.js';
import { type ErrnoError, type NbdClient, native } from '../base/native.js';
import type { IoOp } from './batch-io.js';
import type { BlockIo, IoKind } from './block-io.js';
import type { Counters } from './direct-io.js';
import { checkNbdSecurity, redactUri } from './nbd-uri.js';

const DEPTH = 16; // requests in flight per batch
let connectTimeoutMs = 30_000; // a host that never answers: long before TCP gives up (minutes)

/** How long a connection may take before it fails (the CLI sets it from DPSR_NBD_CONNECT_TIMEOUT). */
export function useNbdConnectTimeout(ms: number): void {
  connectTimeoutMs = ms;
}
const GONE = new Set(['ENOTCONN', 'ECONNRESET', 'EPIPE', 'ESHUTDOWN']);
const goneHint = (err: { code?: string }): string =>
  (GONE.has(err.code ?? '') ? ' (the NBD server went away: nothing committed is lost; run the command again, or the next sync, once it is back)' : '');

/** Whether a failure says the NBD server cannot be reached or went away (not that it refused something, or failed one I/O). */
export function serverUnreachable(err: unknown): boolean {
  const e = err as { code?: string; errno?: unknown };
  // A batch's failure carries the errno's name as errno; a single read or write's, straight from the addon, as code.
  return e.code === 'ENBDCONNECT' || GONE.has(String(e.errno)) || GONE.has(e.code ?? '');
}

export class NbdDevice implements BlockIo {
  constructor(private readonly client: NbdClient, readonly uri: string) {}

  where(): string { return ` ${redactUri(this.uri)}`; }
  sizeBytes(): number { return this.client.size(); }
  readOnly(): boolean { return this.client.readOnly(); }

  readSync(buf: Buffer, bufferOffset: number, length: number, position: number): number {
    return this.client.pread(buf, bufferOffset, this.clip(length, position), position);
  }
  writeSync(buf: Buffer, bufferOffset: number, length: number, position: number): number {
    return this.client.pwrite(buf, bufferOffset, length, position);
  }
  async io(kind: IoKind, side: string, buf: Buffer, bufferOffset: number, length: number, position: number, counters?: Counters): Promise<void> {
    await this.batch(kind, side, buf, [{ bufferOffset, length, position }]);
    if (!counters) return;
    counters.ios++;
    if (kind === 'read') counters.bytesRead += length;
    else counters.bytesWritten += length;
  }
  async batch(kind: IoKind, side: string, buf: Buffer, ops: readonly IoOp[]): Promise<void> {
    if (ops.length === 0) return;
    const flat = new Float64Array(ops.length * 3);
    ops.forEach((o, i) => { flat[i * 3] = o.bufferOffset; flat[i * 3 + 1] = o.length; flat[i * 3 + 2] = o.position; });
    try {
      await this.client.batch(kind === 'write', buf, flat, DEPTH);
    } catch (err) {
      const e = err as ErrnoError & { position?: number };
      const at = e.position ?? 0;
      const op = ops.find((o) => at >= o.position && at < o.position + o.length);
      throw this.ioError(kind, side, at, op ? op.position + op.length - at : 0, e);
    }
  }
  ioError(kind: IoKind, side: string, position: number, length: number, err: NodeJS.ErrnoException): DpsrError {
    return new DpsrError(`${kind === 'read' ? 'reading' : 'writing'} the ${side}${this.where()} at byte ${position} (${length} bytes) failed: ` +
      `${err.message}${goneHint(err)}`, 'EIO', { errno: err.code ?? 'EIO', cause: err });
  }
  flushSync(what: string, then: string): void {
    try {
      this.client.flush();
    } catch (err) {
      throw this.flushError(what, then, err as ErrnoError);
    }
  }
  async flush(what: string, then: string): Promise<void> {
    try {
      await this.client.flushAsync();
    } catch (err) {
      throw this.flushError(what, then, err as ErrnoError);
    }
  }
  discard(position: number, length: number): void {
    if (!this.client.canZero()) throw Object.assign(new Error('the export cannot zero'), { code: 'EOPNOTSUPP' });
    this.client.zero(position, length);
  }
  setReadOnly(): void { /* no such switch on an export */ }
  close(): void { this.client.close(); }

  /** A read that would run past the export's end stops there, as a local read does. */
  private clip(length: number, position: number): number {
    return Math.max(0, Math.min(length, this.client.size() - position));
  }

  private flushError(what: string, then: string, err: ErrnoError): DpsrError {
    return new DpsrError(`flushing ${what}${this.where()} failed: ${err.message}${goneHint(err)}; ${then}`, 'EIO', { errno: err.code, cause: err });
  }
}

export interface NbdOpenOptions {
  write: boolean;
  /** Plain TCP to a host that is not loopback is refused without it. */
  insecure?: boolean;
}

/** Connects to the export at `uri` after the security checks; a failure as one line saying which case it is. */
export function openNbdDevice(uri: string, opts: NbdOpenOptions): NbdDevice {
  checkNbdSecurity(uri, opts.insecure ?? false);
  let client: NbdClient;
  try {
    client = new (native().NbdClient)(uri, connectTimeoutMs);
  } catch (err) {
    throw connectError(uri, err as ErrnoError);
  }
  const device = new NbdDevice(client, uri);
  if (opts.write && device.readOnly()) {
    device.close();
    throw new RefusedError(`the NBD export ${redactUri(uri)} is read-only (the server exports it so): the DPSR drive must be writable; nothing written`, 'EREADONLY');
  }
  return device;
}

/** libnbd's handshake failures sorted into what the user must change. */
function connectError(uri: string, err: ErrnoError): DpsrError {
  const where = redactUri(uri);
  const text = err.message.replace(/^connect: /, '');
  if (err.code === 'ETIMEDOUT' && text === 'timed out') {
    return new DpsrError(`cannot connect to ${where}: no answer within ${connectTimeoutMs / 1000} s (the host is down, or a firewall drops the packets)`, 'ENBDCONNECT', { errno: err.code, cause: err });
  }
  if (/tls|gnutls|psk|certificate/i.test(text)) {
    return new RefusedError(`cannot connect to ${where}: TLS failed (${text}): check the key or certificates and that the server uses TLS too`, 'ENBDTLS', { errno: err.code, cause: err });
  }
  if (/export|NBD_REP_ERR_UNKNOWN|unknown/i.test(text) && !/connect\(\)|connection refused/i.test(text)) {
    return new RefusedError(`cannot connect to ${where}: the server has no such export (${text})`, 'ENBDEXPORT', { errno: err.code, cause: err });
  }
  return new DpsrError(`cannot connect to ${where}: ${text}`, 'ENBDCONNECT', { errno: err.code, cause: err });
}
