// A disk that records every write, zeroing and flush it completes, in
// order and with the data: the place of dm-log-writes, on the nbd stack of
// nbd-disk.ts (nbdkit's log filter logs no data). The log is what crash
// states are built from (crash-states.ts).
//
// The log file, integers little-endian: records of kind (u8: 1 write,
// 2 flush, 3 zero: a trim or write-zeroes, read back as zeros), byte offset
// (u64), length (u32), then `length` bytes of data for a write. A record is
// appended once the request is done on the image, before nbdkit replies, so
// the log holds every request the device completed. A FUA write is a write
// followed by a flush.
import fs from 'node:fs';
import type { Fixture } from './fixture.js';
import { type NbdDisk, nbdDisk, pythonPlugin } from './nbd-disk.js';

const PLUGIN = `import os, struct
import nbdkit
API_VERSION = 2
cfg = {}
def config(key, value): cfg[key] = value
def config_complete():
    cfg['log_fd'] = os.open(cfg['log'], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
def open(readonly): return os.open(cfg['file'], os.O_RDONLY if readonly else os.O_RDWR)
def get_size(h): return os.fstat(h).st_size
def can_write(h): return True
def can_flush(h): return True
def can_trim(h): return True
def can_zero(h): return True
def can_fua(h): return nbdkit.FUA_NATIVE
def record(kind, offset, length, data=b''):
    os.write(cfg['log_fd'], struct.pack('<BQI', kind, offset, length) + data)
def pread(h, buf, offset, flags): buf[:] = os.pread(h, len(buf), offset)
def pwrite(h, buf, offset, flags):
    os.pwrite(h, buf, offset)
    record(1, offset, len(buf), bytes(buf))
    if flags & nbdkit.FLAG_FUA: flush(h, 0)
def flush(h, flags):
    os.fdatasync(h)
    record(2, 0, 0)
def zero(h, count, offset, flags):
    os.pwrite(h, bytes(count), offset)
    record(3, offset, count)
    if flags & nbdkit.FLAG_FUA: flush(h, 0)
def trim(h, count, offset, flags): zero(h, count, offset, flags)
`;

export type LogEntry =
  | { kind: 'write'; offset: number; data: Buffer }
  | { kind: 'zero'; offset: number; length: number }
  | { kind: 'flush' };

const KINDS = { 1: 'write', 2: 'flush', 3: 'zero' } as const;
const RECORD_HEADER = 13;

export interface RecordingDisk extends NbdDisk {
  /** Where the log ends now: take it between commands, read the entries after it with entriesSince. */
  mark(): number;
  entriesSince(mark: number, until?: number): LogEntry[];
}

let disks = 0;

export function recordingDisk(fx: Fixture, sizeMiB: number): RecordingDisk {
  const name = `write-log-${++disks}`;
  const plugin = pythonPlugin(fx, name, PLUGIN);
  const log = `${plugin.slice(0, -3)}.log`;
  const disk = nbdDisk(fx, sizeMiB, (image) => ['python', plugin, `file=${image}`, `log=${log}`]);
  const size = () => (fs.existsSync(log) ? fs.statSync(log).size : 0);
  return {
    ...disk,
    mark: size,
    entriesSince: (mark, until = size()) => {
      const buf = Buffer.alloc(until - mark);
      const fd = fs.openSync(log, 'r');
      try { fs.readSync(fd, buf, 0, buf.length, mark); } finally { fs.closeSync(fd); }
      return parseWriteLog(buf);
    },
  };
}

/** The entries of a write log (a whole number of records). */
export function parseWriteLog(buf: Buffer): LogEntry[] {
  const entries: LogEntry[] = [];
  for (let at = 0; at < buf.length;) {
    if (at + RECORD_HEADER > buf.length) throw new Error(`write log: a torn record at byte ${at}`);
    const kind = KINDS[buf.readUInt8(at) as keyof typeof KINDS];
    const offset = Number(buf.readBigUInt64LE(at + 1));
    const length = buf.readUInt32LE(at + 9);
    at += RECORD_HEADER;
    if (kind === 'write') {
      entries.push({ kind, offset, data: Buffer.from(buf.subarray(at, at + length)) });
      at += length;
    } else if (kind === 'zero') entries.push({ kind, offset, length });
    else if (kind === 'flush') entries.push({ kind });
    else throw new Error(`write log: unknown record kind ${buf.readUInt8(at - RECORD_HEADER)}`);
  }
  return entries;
}
