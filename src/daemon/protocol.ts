// The control socket's wire protocol: length-prefixed msgpack frames
// (msgpackr), every message keyed by a literal `command`, replies matched by
// id, a version check in the first exchange, and every pending request
// failed when the peer goes away. The only module that imports msgpackr.
import net from 'node:net';
import { pack, unpack } from 'msgpackr';
import { DpsrError, type ExitStatusValue, isErrorCode } from '../base/errors.js';
import type { RestoreScope } from '../restore/rollback.js';
import type { ProgressEvent } from '../base/progress.js';

// 4: restore onto another disk (scope onto): a daemon of 3 would take it for a restore of the source, so it must refuse
export const PROTOCOL_VERSION = 4; // 2: status replies are PairStatus[], rollback requests; 3: rollback to a restore point (at), revert
const MAX_FRAME_BYTES = 64 << 20;

export interface HelloRequest { command: 'hello'; version: number }
/** `progress`: the client wants progress frames ({id, progress}) before the reply. */
export interface SyncRequest { command: 'sync'; names: string[]; all: boolean; freeze?: boolean; quietMs?: number; inPlace?: boolean; point?: string; progress?: boolean }
export interface StatusRequest { command: 'status'; name?: string }
/** Rollback or device restore by the owner; a dry run plans only (the CLI asks, then sends it again). */
export interface RollbackRequest { command: 'rollback'; name: string; scope: RestoreScope; dryRun: boolean; at?: string; force?: boolean; progress?: boolean }
/** The DPSR drive turned back to a restore point (dpsr revert). */
export interface RevertRequest { command: 'revert'; name: string; at: string; keepNewer: boolean; dryRun: boolean }
export type Request = HelloRequest | SyncRequest | StatusRequest | RollbackRequest | RevertRequest;

export interface WireError { message: string; code: string; exitStatus: ExitStatusValue }
export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: WireError };
/** Sent, only to a client that asked, while its request runs. */
export interface ProgressFrame { id: number; progress: ProgressEvent }

/** A request as the daemon received it: its id (0 when it had none) and the request, checked. */
export interface Received { id: number; req: Request }

const isString = (v: unknown): v is string => typeof v === 'string';
const optional = (v: unknown, check: (v: unknown) => boolean) => v === undefined || check(v);
const isBool = (v: unknown) => typeof v === 'boolean';
const isCount = (v: unknown) => typeof v === 'number' && Number.isFinite(v) && v >= 0;

/** The shape each request must have: a client is not trusted to send what it should. */
const SHAPES: Record<Request['command'], (m: Record<string, unknown>) => boolean> = {
  hello: (m) => typeof m.version === 'number',
  sync: (m) => Array.isArray(m.names) && m.names.every(isString) && isBool(m.all) && optional(m.freeze, isBool) &&
    optional(m.quietMs, isCount) && optional(m.inPlace, isBool) && optional(m.point, isString) && optional(m.progress, isBool),
  status: (m) => optional(m.name, isString),
  rollback: (m) => isString(m.name) && isBool(m.dryRun) && optional(m.at, isString) && optional(m.progress, isBool) && isScope(m.scope) && optional(m.force, isBool),
  revert: (m) => isString(m.name) && isString(m.at) && isBool(m.keepNewer) && isBool(m.dryRun),
};

function isScope(v: unknown): boolean {
  const s = v as { kind?: unknown; number?: unknown; device?: unknown } | null;
  if (typeof s !== 'object' || s === null) return false;
  return s.kind === 'rollback' || s.kind === 'whole' || (s.kind === 'partition' && Number.isInteger(s.number) && (s.number as number) > 0) ||
    (s.kind === 'onto' && isString(s.device));
}

/** Checks a decoded frame; throws EPROTO (with the id it carried, if any, to answer to) when it is not a request. */
export function parseRequest(msg: unknown): Received {
  const m = (typeof msg === 'object' && msg !== null && !Array.isArray(msg) ? msg : {}) as Record<string, unknown>;
  const id = Number.isSafeInteger(m.id) && (m.id as number) >= 0 ? m.id as number : 0;
  const fail = (why: string) => { throw Object.assign(new DpsrError(`control socket: ${why}`, 'EPROTO'), { id }); };
  if (m !== msg) fail(`a frame that is not a map (${msg === null ? 'null' : Array.isArray(msg) ? 'an array' : typeof msg})`);
  if (id !== m.id) fail('a request without a numeric id');
  const command = m.command;
  if (!isString(command) || !Object.hasOwn(SHAPES, command)) fail(`unknown request ${JSON.stringify(command)?.slice(0, 40)}`);
  if (!SHAPES[command as Request['command']](m)) fail(`a malformed ${command as string} request`);
  const { id: _, ...req } = m;
  return { id, req: req as unknown as Request };
}

/** Splits a byte stream into frames and hands each decoded message on. */
export function frameReader(onMessage: (msg: unknown) => void, onError: (err: Error) => void): (chunk: Buffer) => void {
  let buf = Buffer.alloc(0);
  return (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    while (buf.length >= 4) {
      const len = buf.readUInt32LE(0);
      if (len > MAX_FRAME_BYTES) return onError(new DpsrError(`control socket: a ${len}-byte frame is too large`, 'EPROTO'));
      if (buf.length < 4 + len) return;
      const body = buf.subarray(4, 4 + len);
      buf = buf.subarray(4 + len);
      let msg: unknown;
      try {
        msg = unpack(body);
      } catch (err) {
        return onError(new DpsrError(`control socket: undecodable frame: ${(err as Error).message}`, 'EPROTO'));
      }
      onMessage(msg);
    }
  };
}

export function writeFrame(sock: net.Socket, msg: unknown): void {
  const body = pack(msg);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length);
  sock.write(Buffer.concat([head, body]));
}

/** A client connection: request() resolves with the result or rejects with the daemon's error. */
export class ControlClient {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; onProgress?: (e: ProgressEvent) => void }>();

  private constructor(private readonly sock: net.Socket) {
    sock.on('data', frameReader((msg) => this.onFrame(msg as Reply | ProgressFrame), (err) => this.failAll(err)));
    sock.on('close', () => this.failAll(new DpsrError('the dpsr daemon closed the connection', 'EPIPE')));
    sock.on('error', (err) => this.failAll(err));
  }

  /** Connects and checks versions; null when no daemon listens. */
  static async connect(socketPath: string): Promise<ControlClient | null> {
    const sock = await new Promise<net.Socket | null>((resolve, reject) => {
      const s = net.createConnection(socketPath);
      s.once('connect', () => resolve(s));
      s.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') resolve(null);
        else if (err.code === 'EACCES') reject(new DpsrError(`cannot connect to the dpsr daemon at ${socketPath}: permission denied (root only)`, 'EACCES'));
        else reject(err);
      });
    });
    if (!sock) return null;
    const client = new ControlClient(sock);
    const hello = await client.request({ command: 'hello', version: PROTOCOL_VERSION }) as { version: number };
    if (hello.version !== PROTOCOL_VERSION) {
      client.close();
      throw new DpsrError(`the running dpsr daemon speaks protocol ${hello.version}, this dpsr ${PROTOCOL_VERSION}: restart the daemon`, 'EVERSION');
    }
    return client;
  }

  /** onProgress: the daemon's progress frames for this request (asked for with `progress: true`). */
  request(req: Request, onProgress?: (e: ProgressEvent) => void): Promise<unknown> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onProgress });
      writeFrame(this.sock, { id, ...req });
    });
  }

  close(): void {
    this.sock.end();
  }

  private onFrame(reply: Reply | ProgressFrame): void {
    const p = this.pending.get(reply.id);
    if (!p) return;
    if ('progress' in reply) {
      p.onProgress?.(reply.progress);
      return;
    }
    this.pending.delete(reply.id);
    if (reply.ok) p.resolve(reply.result);
    else p.reject(new DpsrError(reply.error.message, isErrorCode(reply.error.code) ? reply.error.code : 'EFAIL'));
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
