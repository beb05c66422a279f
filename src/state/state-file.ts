// Checks the state database's file before LMDB maps it. LMDB trusts the
// file's meta pages: one overwritten with garbage crashed the process with a
// segmentation fault and no word of what was wrong. The check reads the
// first meta page (LMDB's layout, mdb.c: the page header, then MDB_meta with
// its magic, version and the page size in the free-list DB's md_pad) and
// refuses a file that cannot be an LMDB environment, saying how out.
import fs from 'node:fs';
import { DpsrError } from '../base/errors.js';

const MDB_MAGIC = 0xbeefc0de;
const P_META = 0x08;
// Where the meta page's fields sit: lmdb-js's LMDB (mdb.master, a 24-byte page header with the
// txnid) and classic LMDB 0.9 (16 bytes): flags, magic, page size.
const LAYOUTS = [{ flags: 18, magic: 24, pageSize: 48 }, { flags: 10, magic: 16, pageSize: 40 }];

/** Why `file` cannot be an LMDB environment, or null when it looks like one (or does not exist yet). */
export function stateFileProblem(file: string): string | null {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? null : `cannot be read: ${(err as Error).message}`;
  }
  try {
    const size = fs.fstatSync(fd).size;
    if (size === 0) return null; // LMDB sets up an empty file as a new environment (as another process may be doing now)
    const head = Buffer.alloc(64);
    if (fs.readSync(fd, head, 0, head.length, 0) < head.length) return `is ${size} bytes long: too short for a database (truncated)`;
    const layout = LAYOUTS.find((l) => head.readUInt32LE(l.magic) === MDB_MAGIC && (head.readUInt16LE(l.flags) & P_META) !== 0);
    if (!layout) return 'does not start with a database header (damaged or overwritten)';
    const pageSize = head.readUInt32LE(layout.pageSize);
    if (pageSize < 512 || pageSize > 65536 || (pageSize & (pageSize - 1)) !== 0) return `names a page size of ${pageSize} bytes (damaged)`;
    if (size < 2 * pageSize) return `is ${size} bytes long, shorter than its two header pages (truncated)`;
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

/** Throws a one-line error naming the file, what is wrong and the way out, when stateFileProblem finds one. */
export function checkStateFile(file: string): void {
  const problem = stateFileProblem(file);
  if (problem !== null) throw stateDamaged(file, problem);
}

/** The state database `file` is damaged (`problem` says how): one line with the way out. */
export function stateDamaged(file: string, problem: string): DpsrError {
  return new DpsrError(`the state database ${file} ${problem}; nothing was written. Move it aside (mv ${file} ${file}.damaged): ` +
    'dpsr then knows no pair, each DPSR drive keeps its image and label (dpsr status --drive DEV), and dpsr pair SOURCE DRIVE --force pairs again', 'ESTATE');
}
